//! The controller → agent wire format for host networking: everything one host must realise of
//! Neutron's model (bridges, taps, DHCP, routers, floating IPs, security groups). The agent turns it
//! into Linux state; it never needs the database. Served at `/internal/v1/hosts/{id}/network`.
//!
//! Naming follows Neutron's Linux bridge agent so operators recognise it: a network's bridge is
//! `brq` + the first 11 characters of its id, every port's host-side device is `tap` + the first 11
//! characters of the port id (a TAP for VMs, the host end of a veth for DHCP and router ports), and
//! the namespace ends of veths are `ns-…` (DHCP), `qr-…` (router interface) and `qg-…` (gateway).

use serde::{Deserialize, Serialize};

/// The firewall mark the agent puts on everything that reaches the host from a OneStack bridge
/// (a guest's own network, or the external network its router reaches the host through). With
/// `net.ipv4.tcp_fwmark_accept` the kernel hands it to the accepted socket, so an API can tell a
/// guest's connection from a host's (`onestack_api::Peer`).
pub const GUEST_MARK: u32 = 0x4f53;

/// Interface-name budget: IFNAMSIZ is 16 including the NUL.
pub const DEVICE_ID_CHARS: usize = 11;

pub fn bridge_name(network_id: &str) -> String {
    format!("brq{}", short(network_id))
}

pub fn tap_name(port_id: &str) -> String {
    format!("tap{}", short(port_id))
}

/// The namespace end of a DHCP port's veth.
pub fn dhcp_device(port_id: &str) -> String {
    format!("ns-{}", short(port_id))
}

/// The namespace end of a router interface port's veth.
pub fn router_interface_device(port_id: &str) -> String {
    format!("qr-{}", short(port_id))
}

/// The namespace end of a router gateway port's veth.
pub fn router_gateway_device(port_id: &str) -> String {
    format!("qg-{}", short(port_id))
}

fn short(id: &str) -> String {
    id.chars()
        .filter(|c| *c != '-')
        .take(DEVICE_ID_CHARS)
        .collect()
}

/// The metadata service address every guest asks.
pub const METADATA_IP: &str = "169.254.169.254";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkState {
    /// Changes whenever anything here changes; poll with `?after=<generation>`.
    pub generation: i64,
    /// Networks this host needs a bridge for: those with a port here, and on the network node all.
    pub networks: Vec<HostNetwork>,
    /// Ports whose host-side device lives here: VM taps, and on the network node the host ends of
    /// DHCP and router veths. Anti-spoofing and security groups apply to those with
    /// `port_security`.
    pub ports: Vec<HostPort>,
    /// Every group that a port here uses or that such a group's rules name as remote group.
    pub security_groups: Vec<HostSecurityGroup>,
    /// DHCP + metadata, one per network with a DHCP-enabled subnet (network node only).
    pub dhcp: Vec<DhcpServer>,
    /// Routers (network node only).
    pub routers: Vec<HostRouter>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostNetwork {
    pub id: String,
    /// `brq…`
    pub bridge: String,
    pub mtu: u32,
    /// `router:external`
    pub external: bool,
    /// Conntrack zone for the network's traffic, unique per host (overlapping CIDRs in different
    /// networks must not share connection state).
    pub zone: u16,
    /// On an external network, the address the host itself takes on the bridge (`a.b.c.d/len`, the
    /// subnet's gateway) so floating IPs are reachable from the host.
    pub host_address: Option<String>,
    pub subnets: Vec<HostSubnet>,
    /// A tenant network's VXLAN segment to the other hosts; None for external networks and while
    /// this host is the only one.
    #[serde(default)]
    pub tunnel: Option<Tunnel>,
}

/// VXLAN (UDP 4789) with head-end replication: broadcast and unknown unicast are copied to every
/// peer; the bridge learns where each MAC lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tunnel {
    /// `vxlan-<vni>`, Neutron's Linux bridge agent's name.
    pub device: String,
    pub vni: u32,
    /// This host's tunnel endpoint address.
    pub local_ip: String,
    /// Every other host's endpoint.
    pub peers: Vec<String>,
}

pub fn vxlan_device(vni: u32) -> String {
    format!("vxlan-{vni}")
}

/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSubnet {
    pub id: String,
    pub cidr: String,
    pub gateway_ip: Option<String>,
    pub enable_dhcp: bool,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRoute>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortKind {
    /// A VM NIC: a TAP device that QEMU opens by name.
    Vm,
    /// Host end of the veth into the network's DHCP namespace.
    Dhcp,
    /// Host end of the veth into a router namespace (interface or gateway).
    Router,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostPort {
    pub id: String,
    pub network_id: String,
    pub kind: PortKind,
    /// `tap…`
    pub device: String,
    /// `fa:16:3e:…`
    pub mac: String,
    /// Fixed IPv4 addresses.
    pub ips: Vec<String>,
    pub admin_state_up: bool,
    /// When false: no anti-spoofing and no security groups (Neutron's port_security_enabled).
    pub port_security: bool,
    pub security_groups: Vec<String>,
    pub allowed_address_pairs: Vec<AddressPair>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    /// An address or a CIDR.
    pub ip_address: String,
    pub mac_address: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSecurityGroup {
    pub id: String,
    /// IPv4 addresses of every port in the group, on any host (for `remote_group_id` rules).
    pub member_ips: Vec<String>,
    pub rules: Vec<HostRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRule {
    pub id: String,
    pub direction: Direction,
    /// `IPv4` or `IPv6` (IPv6 rules are accepted by the API; the IPv4-only data plane skips them).
    pub ethertype: String,
    /// IP protocol number, None = any.
    pub protocol: Option<u8>,
    /// TCP/UDP ports, or for ICMP the type (min) and code (max).
    pub port_range_min: Option<u16>,
    pub port_range_max: Option<u16>,
    pub remote_ip_prefix: Option<String>,
    pub remote_group_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DhcpServer {
    pub network_id: String,
    /// Named network namespace, e.g. `qdhcp-<network id>` (with the configured prefix).
    pub namespace: String,
    /// The DHCP port: its `tap…` host end is in the bridge, its `ns-…` end in the namespace holds
    /// the port's addresses plus 169.254.169.254/32 (the metadata service listens there).
    pub port_id: String,
    pub device: String,
    pub mac: String,
    /// `a.b.c.d/len` for each DHCP-enabled subnet.
    pub addresses: Vec<String>,
    pub mtu: u32,
    pub subnets: Vec<HostSubnet>,
    /// One entry per VM port on the network.
    pub hosts: Vec<DhcpHost>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpHost {
    pub mac: String,
    pub ip: String,
    /// DNS-safe host name (`host-198-18-1-5` when the instance has none).
    pub hostname: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRouter {
    pub id: String,
    /// `qrouter-<router id>` with the configured prefix.
    pub namespace: String,
    pub gateway: Option<RouterGateway>,
    pub interfaces: Vec<RouterInterface>,
    pub floating_ips: Vec<FloatingNat>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterGateway {
    pub port_id: String,
    pub network_id: String,
    /// Host end (`tap…`, in the external bridge) and namespace end (`qg-…`).
    pub host_device: String,
    pub device: String,
    pub mac: String,
    /// `a.b.c.d/len`
    pub address: String,
    /// The external subnet's gateway: the router's default route.
    pub default_gateway: Option<String>,
    pub enable_snat: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterInterface {
    pub port_id: String,
    pub network_id: String,
    pub host_device: String,
    /// `qr-…`
    pub device: String,
    pub mac: String,
    /// `a.b.c.d/len` (the subnet's gateway address)
    pub address: String,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingNat {
    pub floating_ip: String,
    pub fixed_ip: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_fit_ifnamsiz() {
        let id = "3f1c2b7e-9a4d-4c1e-8f00-123456789abc";
        for name in [
            bridge_name(id),
            tap_name(id),
            dhcp_device(id),
            router_interface_device(id),
            router_gateway_device(id),
        ] {
            assert!(name.len() <= 15, "{name}");
        }
        assert_eq!(tap_name(id), "tap3f1c2b7e9a4");
        assert_eq!(
            bridge_name("0123456789abcdef0123456789abcdef"),
            "brq0123456789a"
        );
    }
}
