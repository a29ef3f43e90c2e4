//! Persistent TAP devices. The kernel creates them only through ioctls on /dev/net/tun (its
//! netlink "tun" kind refuses creation), and neither std nor nix wraps those, so this is the one
//! unsafe spot of the data plane: three ioctl(2) calls on a file we own, with a stack `ifreq`.
#![allow(unsafe_code)]

use super::validate::IfName;
use anyhow::{Context, Result};
use std::os::fd::AsRawFd;

/// Creates TAP `name` in the calling thread's network namespace, persistent (it outlives this
/// process, and QEMU later opens it by name with `-netdev tap,ifname=…`) and owned by `owner` so
/// an unprivileged QEMU may attach. Must run on a thread inside the target namespace.
pub fn create_persistent(name: &IfName, owner: Option<u32>) -> Result<()> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let fd = tun.as_raw_fd();

    let mut ifr = ifreq(name);
    // Same flags as QEMU uses when it attaches (vnet header on, single queue), so its TUNSETIFF
    // on the existing device is accepted.
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: fd is an open /dev/net/tun; TUNSETIFF reads and writes one `struct ifreq`, which
    // `ifr` is, alive for the whole call.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    if let Some(uid) = owner {
        // SAFETY: TUNSETOWNER takes the uid by value; no memory is passed.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(uid)) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("TUNSETOWNER {name} {uid}"));
        }
    }
    set_persist(fd, name, true)
}

/// Deletes a persistent TAP (netlink cannot: the tun driver has no dellink). Must run inside the
/// device's namespace.
pub fn delete_persistent(name: &IfName) -> Result<()> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let fd = tun.as_raw_fd();
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: as in create_persistent.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    // Not persistent any more: the device goes when `tun` is closed below.
    set_persist(fd, name, false)
}

fn set_persist(fd: libc::c_int, name: &IfName, on: bool) -> Result<()> {
    // SAFETY: TUNSETPERSIST takes a flag by value; no memory is passed.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, libc::c_ulong::from(on)) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("TUNSETPERSIST {name} {on}"));
    }
    Ok(())
}

fn ifreq(name: &IfName) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (arrays and a union of integers); all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // IfName is at most 15 ASCII bytes, so the NUL terminator from zeroing stays.
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_str().bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}
