//! Neutron's resources as stored (the JSON body of a `net_resources` row). Field names are the
//! API's, so rendering adds only what is computed (`tenant_id`, a network's `subnets`, a group's
//! rules, revision and timestamps from the row).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub admin_state_up: bool,
    pub shared: bool,
    #[serde(rename = "router:external")]
    pub external: bool,
    pub mtu: u32,
    pub port_security_enabled: bool,
    /// Conntrack zone / small id (unique among networks).
    pub zone: u16,
}

impl Network {
    /// The VXLAN network identifier of a tenant network between hosts: its zone, which is
    /// already unique among networks.
    pub fn vni(&self) -> u32 {
        u32::from(self.zone)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocationPool {
    pub start: String,
    pub end: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub network_id: String,
    pub ip_version: u8,
    pub cidr: String,
    pub gateway_ip: Option<String>,
    pub enable_dhcp: bool,
    pub allocation_pools: Vec<AllocationPool>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    pub ip_address: String,
    pub mac_address: String,
}

pub const OWNER_COMPUTE: &str = "compute:nova";
pub const OWNER_DHCP: &str = "network:dhcp";
pub const OWNER_ROUTER_INTERFACE: &str = "network:router_interface";
pub const OWNER_ROUTER_GATEWAY: &str = "network:router_gateway";
pub const OWNER_FLOATINGIP: &str = "network:floatingip";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub network_id: String,
    pub mac_address: String,
    pub fixed_ips: Vec<FixedIp>,
    pub device_id: String,
    pub device_owner: String,
    pub admin_state_up: bool,
    pub security_groups: Vec<String>,
    pub port_security_enabled: bool,
    pub allowed_address_pairs: Vec<AddressPair>,
    /// `binding:host_id`: the compute host whose agent plugs it ("" when unbound).
    pub host: String,
    /// Created by compute for a server (deleted with it), not handed in by the user.
    #[serde(default)]
    pub compute_owned: bool,
    /// A live migration's target host: plugged there too (an inactive binding) until the
    /// server moves.
    #[serde(default)]
    pub migrating_to: String,
    /// The device OneStack itself attached this port to (a server's NIC, a router's leg, a
    /// network's DHCP server, a floating IP's address); "" when `device_id` was set by a user.
    /// `device_id` is free text a port's owner may set (as in Neutron), so only this ties a port
    /// to its device. `None` on records from before it was kept (filled in at start-up,
    /// `NetworkService::backfill_attachments`).
    #[serde(default)]
    pub bound_device: Option<String>,
}

impl Port {
    pub fn ipv4s(&self) -> impl Iterator<Item = &str> {
        self.fixed_ips.iter().map(|f| f.ip_address.as_str())
    }

    /// Whether this port really is `device_id`'s: the service attached it there. A port a user
    /// pointed at some device (another project's server or router, say) belongs to nothing.
    pub fn attached_to(&self, device_id: &str) -> bool {
        !device_id.is_empty()
            && self.device_id == device_id
            && self.bound_device.as_deref() == Some(device_id)
    }

    /// Attached by the service to the device it names.
    pub fn is_attached(&self) -> bool {
        self.attached_to(&self.device_id)
    }

    /// A server's NIC, as compute attached it.
    pub fn is_server_nic(&self, server_id: &str) -> bool {
        self.device_owner.starts_with("compute:") && self.attached_to(server_id)
    }

    /// The DHCP port the service made for its network.
    pub fn is_dhcp_server(&self) -> bool {
        self.device_owner == OWNER_DHCP && self.attached_to(&dhcp_device(&self.network_id))
    }

    /// One of `router_id`'s interfaces.
    pub fn is_router_interface(&self, router_id: &str) -> bool {
        self.device_owner == OWNER_ROUTER_INTERFACE && self.attached_to(router_id)
    }
}

/// The `device_id` of a network's DHCP port.
pub fn dhcp_device(network_id: &str) -> String {
    format!("dhcp-{network_id}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub network_id: String,
    pub enable_snat: bool,
    /// The gateway port (not shown by the API; its fixed IPs are).
    pub port_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Router {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub admin_state_up: bool,
    pub gateway: Option<GatewayInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FloatingIp {
    pub id: String,
    pub description: String,
    pub project_id: String,
    pub floating_network_id: String,
    pub floating_ip_address: String,
    /// The port on the external network that holds the address.
    pub floating_port_id: String,
    pub port_id: Option<String>,
    pub fixed_ip_address: Option<String>,
    pub router_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub stateful: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: String,
    pub project_id: String,
    pub security_group_id: String,
    pub direction: String,
    pub ethertype: String,
    /// As the user gave it (a name like `tcp` or a number as text); None = any.
    pub protocol: Option<String>,
    pub port_range_min: Option<u16>,
    pub port_range_max: Option<u16>,
    pub remote_ip_prefix: Option<String>,
    pub remote_group_id: Option<String>,
    pub description: String,
}

impl SecurityGroupRule {
    /// The fields that make two rules the same rule (Neutron's duplicate check).
    pub fn same_as(&self, o: &SecurityGroupRule) -> bool {
        self.security_group_id == o.security_group_id
            && self.direction == o.direction
            && self.ethertype == o.ethertype
            && protocol_number(self.protocol.as_deref()) == protocol_number(o.protocol.as_deref())
            && self.port_range_min == o.port_range_min
            && self.port_range_max == o.port_range_max
            && self.remote_ip_prefix == o.remote_ip_prefix
            && self.remote_group_id == o.remote_group_id
    }
}

/// IANA protocol number of a rule's protocol (name or number); None for any.
pub fn protocol_number(p: Option<&str>) -> Option<u8> {
    let p = p?;
    Some(match p.to_ascii_lowercase().as_str() {
        "any" | "" => return None,
        "icmp" => 1,
        "igmp" => 2,
        "tcp" => 6,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" => 58,
        "sctp" => 132,
        "dccp" => 33,
        "ospf" => 89,
        "vrrp" => 112,
        other => return other.parse::<u8>().ok(),
    })
}

/// Per-project limits (Neutron's defaults) with the number in use.
pub const QUOTA_DEFAULTS: &[(&str, i64)] = &[
    ("network", 100),
    ("subnet", 100),
    ("port", 500),
    ("router", 10),
    ("floatingip", 50),
    ("security_group", 10),
    ("security_group_rule", 100),
];
