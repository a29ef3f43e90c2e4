//! The few process primitives std lacks. Kept tiny: the only unsafe code in OneStack.
#![allow(unsafe_code)]

/// Sends `sig` to `pid`; false if the process does not exist or cannot be signalled.
pub fn signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pid > 0 never targets a group.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// OneStack's file mode creation mask: what it (and every helper it starts: QEMU, dnsmasq,
/// qemu-img, genisoimage) creates is its owner's alone unless opened up on purpose.
pub const PRIVATE_UMASK: u32 = 0o077;

/// Sets the process's file mode creation mask; returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(mask)).bits()
}

/// Runs `f` under another umask (the usual 022 for what installs software for everyone: apt,
/// a virtualenv), then puts the previous one back. The mask is the process's: only for the
/// sequential steps of a command, while nothing else creates files.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    let old = set_umask(mask);
    let r = f();
    set_umask(old);
    r
}

pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGKILL: i32 = libc::SIGKILL;
