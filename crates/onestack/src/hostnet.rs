//! Host networking from the config (single NIC or two): which interfaces exist, what addresses
//! they hold, checked before `up` changes anything.

use crate::config::Config;
use anyhow::{bail, Result};
use std::net::Ipv4Addr;
use std::path::Path;

/// The IPv4 addresses of interface `name`.
pub fn interface_ipv4s(name: &str) -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| a.interface_name == name)
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .collect()
}

pub fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    interface_ipv4s(name).into_iter().next()
}

/// The source address the kernel picks toward the rest of the world (the default route's), found
/// by connecting a UDP socket, which sends nothing; None without a default route.
pub fn primary_ipv4() -> Option<Ipv4Addr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // Any address outside the host's own networks selects the default route; no packet is sent.
    sock.connect(("198.18.0.1", 9)).ok()?;
    match sock.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(a) if !a.is_unspecified() && !a.is_loopback() => Some(a),
        _ => None,
    }
}

fn exists(name: &str) -> bool {
    !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
}

/// The configured interfaces must exist; the public one must be dedicated (its addresses would
/// stop working once it is a bridge port) and the flat one must have an address to tunnel from.
pub fn check(cfg: &Config) -> Result<()> {
    let n = &cfg.network;
    for (key, name) in [
        ("network.public_interface", &n.public_interface),
        ("network.flat_interface", &n.flat_interface),
    ] {
        if !name.is_empty() && !exists(name) {
            bail!("{key} = {name:?}: no such interface on this host");
        }
    }
    if !n.public_interface.is_empty() {
        if n.public_interface == n.flat_interface {
            bail!(
                "network.public_interface and network.flat_interface are both {:?}: two NICs \
                 means two interfaces (leave both empty for one)",
                n.public_interface
            );
        }
        let held = interface_ipv4s(&n.public_interface);
        if !held.is_empty() {
            bail!(
                "network.public_interface = {:?} has addresses ({}): it must be a dedicated \
                 interface, which becomes a port of the external network's bridge",
                n.public_interface,
                held.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if !n.flat_interface.is_empty()
        && cfg.compute.my_ip.is_empty()
        && interface_ipv4(&n.flat_interface).is_none()
    {
        bail!(
            "network.flat_interface = {:?} has no IPv4 address to carry tenant traffic from \
             (give it one, or set compute.my_ip)",
            n.flat_interface
        );
    }
    Ok(())
}
