//! The desired state, checked: [`Plan::from_state`] turns the controller's [`NetworkState`] into
//! typed objects keyed by id, rejecting (and reporting) any entry with a malformed field, so that
//! one bad entry never blocks the rest of the host. Equality on these types is what the
//! incremental apply diffs.

use super::validate::{
    aggregate, ipv4, ipv4_iface, ipv4_prefix, HostName, Ident, IfName, Mac, NsName,
};
use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use onestack_core::network::proto::{self, NetworkState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: Ident,
    pub bridge: IfName,
    pub mtu: u32,
    pub external: bool,
    pub zone: u16,
    pub host_address: Option<Ipv4Net>,
    /// The VXLAN segment to the other hosts (tenant networks on a multi-host cloud).
    #[serde(default)]
    pub tunnel: Option<Tunnel>,
    /// A host interface enslaved to this (external) network's bridge.
    #[serde(default)]
    pub uplink: Option<IfName>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub device: IfName,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub peers: BTreeSet<Ipv4Addr>,
}

impl Tunnel {
    /// What the device itself is made of (peers change without recreating it).
    pub fn same_device(&self, other: &Tunnel) -> bool {
        (&self.device, self.vni, self.local) == (&other.device, other.vni, other.local)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Vm,
    Dhcp,
    Router,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub id: Ident,
    pub network_id: Ident,
    pub kind: Kind,
    pub device: IfName,
    pub mac: Mac,
    pub ips: Vec<Ipv4Addr>,
    pub admin_up: bool,
    pub port_security: bool,
    pub groups: Vec<Ident>,
    pub pairs: Vec<(Ipv4Net, Mac)>,
    /// Resolved from the network: the bridge the device is enslaved to, and its MTU.
    pub bridge: IfName,
    pub mtu: u32,
}

/// What the filter of one VM port with port security consists of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFilter {
    pub device: IfName,
    pub bridge: IfName,
    /// The port's MAC and its address pairs' MACs.
    pub macs: Vec<Mac>,
    /// Fixed IPs (/32) and address pairs, aggregated (no overlaps): what the port may send from.
    pub prefixes: Vec<Ipv4Net>,
    /// The fixed IPs alone (they take precedence as dispatch keys).
    pub fixed: Vec<Ipv4Addr>,
    /// Groups whose chains the port's chains jump to (only groups present in the state).
    pub groups: Vec<Ident>,
}

impl Port {
    /// None when the port is trusted (DHCP/router) or has port security off: no chains at all.
    pub fn filter(&self, groups: &BTreeMap<String, Group>) -> Option<PortFilter> {
        if self.kind != Kind::Vm || !self.port_security {
            return None;
        }
        let mut macs = vec![self.mac];
        let mut prefixes: Vec<Ipv4Net> = self.ips.iter().map(|ip| Ipv4Net::from(*ip)).collect();
        for (p, m) in &self.pairs {
            if !macs.contains(m) {
                macs.push(*m);
            }
            prefixes.push(*p);
        }
        let mut seen = BTreeSet::new();
        let groups = self
            .groups
            .iter()
            .filter(|g| groups.contains_key(g.as_str()) && seen.insert(g.as_str()))
            .cloned()
            .collect();
        Some(PortFilter {
            device: self.device.clone(),
            bridge: self.bridge.clone(),
            macs,
            prefixes: aggregate(&prefixes),
            fixed: self.ips.clone(),
            groups,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dir {
    Ingress,
    Egress,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub direction: Dir,
    pub protocol: Option<u8>,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub remote_prefix: Option<Ipv4Net>,
    pub remote_group: Option<Ident>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: Ident,
    pub members: BTreeSet<Ipv4Addr>,
    /// IPv4 rules only.
    pub rules: Vec<Rule>,
}

impl Group {
    /// Group ids named by this group's rules as remote group.
    pub fn remote_groups(&self) -> impl Iterator<Item = &Ident> {
        self.rules.iter().filter_map(|r| r.remote_group.as_ref())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: Ident,
    pub cidr: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub enable_dhcp: bool,
    pub dns: Vec<Ipv4Addr>,
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpHost {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub hostname: HostName,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dhcp {
    pub network_id: Ident,
    pub namespace: NsName,
    pub port_id: Ident,
    /// Host end (in the bridge) and namespace end (`ns-…`).
    pub device: IfName,
    pub ns_device: IfName,
    pub mac: Mac,
    pub addresses: Vec<Ipv4Net>,
    pub mtu: u32,
    pub subnets: Vec<Subnet>,
    pub hosts: Vec<DhcpHost>,
    pub bridge: IfName,
}

impl Dhcp {
    /// Everything but the host list: a change here restarts dnsmasq, a host change only reloads.
    pub fn same_server(&self, other: &Dhcp) -> bool {
        let strip = |d: &Dhcp| Dhcp {
            hosts: Vec::new(),
            ..d.clone()
        };
        strip(self) == strip(other)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    pub port_id: Ident,
    pub network_id: Ident,
    pub host_device: IfName,
    pub device: IfName,
    pub mac: Mac,
    pub address: Ipv4Net,
    pub default_gateway: Option<Ipv4Addr>,
    pub enable_snat: bool,
    pub bridge: IfName,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub port_id: Ident,
    pub network_id: Ident,
    pub host_device: IfName,
    pub device: IfName,
    pub mac: Mac,
    pub address: Ipv4Net,
    pub mtu: u32,
    pub bridge: IfName,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    pub id: Ident,
    pub namespace: NsName,
    pub gateway: Option<Gateway>,
    pub interfaces: Vec<Interface>,
    /// floating → fixed
    pub floating: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

impl Router {
    /// What the router's SNAT chain depends on.
    pub fn snat_inputs(&self) -> (Option<(IfName, Ipv4Addr, bool)>, Vec<Ipv4Net>) {
        (
            self.gateway
                .as_ref()
                .map(|g| (g.device.clone(), g.address.addr(), g.enable_snat)),
            self.interfaces.iter().map(|i| i.address.trunc()).collect(),
        )
    }
}

/// The checked desired state, keyed by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub networks: BTreeMap<String, Network>,
    pub ports: BTreeMap<String, Port>,
    pub groups: BTreeMap<String, Group>,
    /// Keyed by network id.
    pub dhcp: BTreeMap<String, Dhcp>,
    pub routers: BTreeMap<String, Router>,
}

impl Plan {
    /// Checks every entry; the ones that fail are left out and described in the returned list.
    pub fn from_state(state: &NetworkState) -> (Plan, Vec<String>) {
        let mut plan = Plan::default();
        let mut rejected = Vec::new();
        // Interface names and namespaces are host-global: a second claim on one is refused.
        let mut devices = BTreeSet::new();
        let mut namespaces = BTreeSet::new();
        let mut zones = BTreeSet::new();

        for n in &state.networks {
            match network(n) {
                Ok(net) if !devices.insert(net.bridge.clone()) => rejected.push(format!(
                    "network {}: bridge {} used twice",
                    n.id, net.bridge
                )),
                Ok(net) if !zones.insert(net.zone) => {
                    rejected.push(format!("network {}: zone {} used twice", n.id, net.zone))
                }
                Ok(net) => {
                    plan.networks.insert(n.id.clone(), net);
                }
                Err(e) => rejected.push(format!("network {}: {e:#}", n.id)),
            }
        }
        for g in &state.security_groups {
            match group(g) {
                Ok(grp) => {
                    plan.groups.insert(g.id.clone(), grp);
                }
                Err(e) => rejected.push(format!("security group {}: {e:#}", g.id)),
            }
        }
        // DHCP and router ports' devices are created by their server/router, which claims the
        // name below; the port entry itself only says the device is trusted.
        for p in &state.ports {
            match port(p, &plan.networks) {
                Ok(port) if port.kind == Kind::Vm && !devices.insert(port.device.clone()) => {
                    rejected.push(format!("port {}: device {} used twice", p.id, port.device))
                }
                Ok(port) => {
                    plan.ports.insert(p.id.clone(), port);
                }
                Err(e) => rejected.push(format!("port {}: {e:#}", p.id)),
            }
        }
        for d in &state.dhcp {
            let checked = dhcp(d, &plan.networks).and_then(|dh| {
                for dev in [&dh.device, &dh.ns_device] {
                    if !devices.insert(dev.clone()) {
                        bail!("device {dev} used twice");
                    }
                }
                if !namespaces.insert(dh.namespace.clone()) {
                    bail!("namespace {} used twice", dh.namespace);
                }
                Ok(dh)
            });
            match checked {
                Ok(dh) => {
                    plan.dhcp.insert(d.network_id.clone(), dh);
                }
                Err(e) => rejected.push(format!("DHCP server of network {}: {e:#}", d.network_id)),
            }
        }
        for r in &state.routers {
            let checked = router(r, &plan.networks).and_then(|rt| {
                let ifaces = rt
                    .interfaces
                    .iter()
                    .map(|i| (&i.host_device, &i.device))
                    .chain(rt.gateway.iter().map(|g| (&g.host_device, &g.device)));
                for (host, inner) in ifaces {
                    if !devices.insert(host.clone()) {
                        bail!("device {host} used twice");
                    }
                    // Namespace ends only need to be unique within the namespace, but two
                    // identical ones would collide while being moved in.
                    if !devices.insert(inner.clone()) {
                        bail!("device {inner} used twice");
                    }
                }
                if !namespaces.insert(rt.namespace.clone()) {
                    bail!("namespace {} used twice", rt.namespace);
                }
                Ok(rt)
            });
            match checked {
                Ok(rt) => {
                    plan.routers.insert(r.id.clone(), rt);
                }
                Err(e) => rejected.push(format!("router {}: {e:#}", r.id)),
            }
        }
        (plan, rejected)
    }

    /// Member sets the nft rules need: every group here plus every remote group named by a rule.
    pub fn member_sets(&self) -> BTreeMap<Ident, BTreeSet<Ipv4Addr>> {
        let mut sets: BTreeMap<Ident, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        for g in self.groups.values() {
            sets.insert(g.id.clone(), g.members.clone());
        }
        for g in self.groups.values() {
            for r in g.remote_groups() {
                sets.entry(r.clone()).or_default();
            }
        }
        sets
    }

    /// Joins `interface` to the first-made external network (lowest zone): all external networks
    /// share the one physical network, so one bridge owns the interface.
    pub fn attach_uplink(&mut self, interface: &str) -> Result<()> {
        let name = IfName::parse(interface)?;
        if let Some(n) = self
            .networks
            .values_mut()
            .filter(|n| n.external)
            .min_by_key(|n| n.zone)
        {
            n.uplink = Some(name);
        }
        Ok(())
    }

    pub fn filters(&self) -> BTreeMap<String, PortFilter> {
        self.ports
            .iter()
            .filter_map(|(id, p)| p.filter(&self.groups).map(|f| (id.clone(), f)))
            .collect()
    }
}

fn network(n: &proto::HostNetwork) -> Result<Network> {
    Ok(Network {
        id: Ident::parse(&n.id)?,
        bridge: IfName::parse(&n.bridge)?,
        mtu: mtu(n.mtu)?,
        external: n.external,
        zone: n.zone,
        host_address: n.host_address.as_deref().map(ipv4_iface).transpose()?,
        tunnel: n.tunnel.as_ref().map(tunnel).transpose()?,
        uplink: None,
    })
}

fn tunnel(t: &proto::Tunnel) -> Result<Tunnel> {
    // 24-bit VNI; 0 is reserved.
    if !(1..=0xFF_FFFF).contains(&t.vni) {
        bail!("VNI {} out of range", t.vni);
    }
    let local = ipv4(&t.local_ip)?;
    let peers = t
        .peers
        .iter()
        .map(|p| ipv4(p))
        .collect::<Result<BTreeSet<_>>>()?;
    if peers.contains(&local) {
        bail!("tunnel peer {local} is this host's own address");
    }
    Ok(Tunnel {
        device: IfName::parse(&t.device)?,
        vni: t.vni,
        local,
        peers,
    })
}

fn mtu(m: u32) -> Result<u32> {
    if !(576..=65535).contains(&m) {
        bail!("MTU {m} out of range");
    }
    Ok(m)
}

fn lookup<'a>(networks: &'a BTreeMap<String, Network>, id: &str) -> Result<&'a Network> {
    networks
        .get(id)
        .with_context(|| format!("network {id} is not in the state (or was rejected)"))
}

fn port(p: &proto::HostPort, networks: &BTreeMap<String, Network>) -> Result<Port> {
    let net = lookup(networks, &p.network_id)?;
    let kind = match p.kind {
        proto::PortKind::Vm => Kind::Vm,
        proto::PortKind::Dhcp => Kind::Dhcp,
        proto::PortKind::Router => Kind::Router,
    };
    Ok(Port {
        id: Ident::parse(&p.id)?,
        network_id: net.id.clone(),
        kind,
        device: IfName::parse(&p.device)?,
        mac: Mac::parse(&p.mac)?,
        ips: p.ips.iter().map(|s| ipv4(s)).collect::<Result<_>>()?,
        admin_up: p.admin_state_up,
        port_security: p.port_security,
        groups: p
            .security_groups
            .iter()
            .map(|g| Ident::parse(g))
            .collect::<Result<_>>()?,
        pairs: p
            .allowed_address_pairs
            .iter()
            .map(|a| Ok((ipv4_prefix(&a.ip_address)?, Mac::parse(&a.mac_address)?)))
            .collect::<Result<_>>()?,
        bridge: net.bridge.clone(),
        mtu: net.mtu,
    })
}

fn group(g: &proto::HostSecurityGroup) -> Result<Group> {
    let mut rules = Vec::new();
    for r in &g.rules {
        // The data plane is IPv4-only; the API accepts IPv6 rules, which have nothing to match.
        if r.ethertype != "IPv4" {
            continue;
        }
        let check = || -> Result<Rule> {
            let (min, max) = (r.port_range_min, r.port_range_max);
            if let (Some(a), Some(b)) = (min, max) {
                if r.protocol != Some(1) && a > b {
                    bail!("port range {a}-{b} is reversed");
                }
            }
            if r.protocol == Some(1) && (min.unwrap_or(0) > 255 || max.unwrap_or(0) > 255) {
                bail!("ICMP type/code out of range");
            }
            Ok(Rule {
                direction: match r.direction {
                    proto::Direction::Ingress => Dir::Ingress,
                    proto::Direction::Egress => Dir::Egress,
                },
                protocol: r.protocol,
                port_min: min,
                port_max: max,
                remote_prefix: r.remote_ip_prefix.as_deref().map(ipv4_prefix).transpose()?,
                remote_group: r.remote_group_id.as_deref().map(Ident::parse).transpose()?,
            })
        };
        rules.push(check().with_context(|| format!("rule {}", r.id))?);
    }
    let mut members = BTreeSet::new();
    for m in &g.member_ips {
        // Members are IPv4 by contract; anything else is skipped rather than failing the group.
        if let Ok(ip) = ipv4(m) {
            members.insert(ip);
        }
    }
    Ok(Group {
        id: Ident::parse(&g.id)?,
        members,
        rules,
    })
}

fn subnet(s: &proto::HostSubnet) -> Result<Subnet> {
    Ok(Subnet {
        id: Ident::parse(&s.id)?,
        cidr: ipv4_prefix(&s.cidr)?,
        gateway: s.gateway_ip.as_deref().map(ipv4).transpose()?,
        enable_dhcp: s.enable_dhcp,
        dns: s
            .dns_nameservers
            .iter()
            .map(|d| ipv4(d))
            .collect::<Result<_>>()?,
        routes: s
            .host_routes
            .iter()
            .map(|r| Ok((ipv4_prefix(&r.destination)?, ipv4(&r.nexthop)?)))
            .collect::<Result<_>>()?,
    })
}

fn dhcp(d: &proto::DhcpServer, networks: &BTreeMap<String, Network>) -> Result<Dhcp> {
    let net = lookup(networks, &d.network_id)?;
    let port_id = Ident::parse(&d.port_id)?;
    Ok(Dhcp {
        network_id: net.id.clone(),
        namespace: NsName::parse(&d.namespace)?,
        ns_device: IfName::parse(&proto::dhcp_device(port_id.as_str()))?,
        port_id,
        device: IfName::parse(&d.device)?,
        mac: Mac::parse(&d.mac)?,
        addresses: d
            .addresses
            .iter()
            .map(|a| ipv4_iface(a))
            .collect::<Result<_>>()?,
        mtu: mtu(d.mtu)?,
        subnets: d.subnets.iter().map(subnet).collect::<Result<_>>()?,
        hosts: d
            .hosts
            .iter()
            .map(|h| {
                Ok(DhcpHost {
                    mac: Mac::parse(&h.mac)?,
                    ip: ipv4(&h.ip)?,
                    hostname: HostName::parse(&h.hostname)?,
                })
            })
            .collect::<Result<_>>()?,
        bridge: net.bridge.clone(),
    })
}

fn router(r: &proto::HostRouter, networks: &BTreeMap<String, Network>) -> Result<Router> {
    let gateway = match &r.gateway {
        None => None,
        Some(g) => {
            let net = lookup(networks, &g.network_id)?;
            Some(Gateway {
                port_id: Ident::parse(&g.port_id)?,
                network_id: net.id.clone(),
                host_device: IfName::parse(&g.host_device)?,
                device: IfName::parse(&g.device)?,
                mac: Mac::parse(&g.mac)?,
                address: ipv4_iface(&g.address)?,
                default_gateway: g.default_gateway.as_deref().map(ipv4).transpose()?,
                enable_snat: g.enable_snat,
                bridge: net.bridge.clone(),
                mtu: net.mtu,
            })
        }
    };
    let mut interfaces = Vec::new();
    for i in &r.interfaces {
        let net = lookup(networks, &i.network_id)?;
        interfaces.push(Interface {
            port_id: Ident::parse(&i.port_id)?,
            network_id: net.id.clone(),
            host_device: IfName::parse(&i.host_device)?,
            device: IfName::parse(&i.device)?,
            mac: Mac::parse(&i.mac)?,
            address: ipv4_iface(&i.address)?,
            mtu: mtu(i.mtu)?,
            bridge: net.bridge.clone(),
        });
    }
    let mut floating = BTreeMap::new();
    let mut fixed = BTreeSet::new();
    for f in &r.floating_ips {
        let (fl, fx) = (ipv4(&f.floating_ip)?, ipv4(&f.fixed_ip)?);
        // Both directions are maps: one floating per fixed address and vice versa.
        if floating.insert(fl, fx).is_some() || !fixed.insert(fx) {
            bail!("floating IP {fl} or fixed IP {fx} mapped twice");
        }
    }
    Ok(Router {
        id: Ident::parse(&r.id)?,
        namespace: NsName::parse(&r.namespace)?,
        gateway,
        interfaces,
        floating,
    })
}

/// A contiguous IPv4 range held as a dispatch key (`@egress`/`@ingress` are interval maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl KeyRange {
    pub fn host(ip: Ipv4Addr) -> Self {
        Self {
            first: ip,
            last: ip,
        }
    }
    fn bounds(&self) -> (u32, u32) {
        (u32::from(self.first), u32::from(self.last))
    }
    fn from_bounds((a, b): (u32, u32)) -> Self {
        Self {
            first: Ipv4Addr::from(a),
            last: Ipv4Addr::from(b),
        }
    }
}

impl std::fmt::Display for KeyRange {
    /// nft syntax: an address, a CIDR when the range is one, else `first-last`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b) = self.bounds();
        if a == b {
            return write!(f, "{}", self.first);
        }
        let size = u64::from(b) - u64::from(a) + 1;
        if size.is_power_of_two() && u64::from(a) % size == 0 {
            let len = 32 - size.trailing_zeros();
            return write!(f, "{}/{len}", self.first);
        }
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// `ranges` minus `held` (disjoint ranges keyed by start), as sorted disjoint ranges. Looks only
/// at the held ranges that overlap, so it costs O(k log n), not O(n).
fn subtract(ranges: &[(u32, u32)], held: &BTreeMap<u32, u32>) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        // The held range starting before `a` may reach into it.
        let before = held.range(..a).next_back().map(|(s, e)| (*s, *e));
        let mut cursor = u64::from(a);
        for (s, e) in before
            .into_iter()
            .chain(held.range(a..=b).map(|(s, e)| (*s, *e)))
        {
            if u64::from(e) < cursor {
                continue;
            }
            if u64::from(s) > cursor {
                out.push((cursor as u32, s - 1));
            }
            cursor = u64::from(e) + 1;
        }
        if cursor <= u64::from(b) {
            out.push((cursor as u32, b));
        }
    }
    out.sort_unstable();
    out
}

fn prefix_bounds(p: &Ipv4Net) -> (u32, u32) {
    (u32::from(p.network()), u32::from(p.broadcast()))
}

/// Dispatch keys of every filtered port, a pure function of the filters: per bridge, fixed IPs
/// first (each port owns its own addresses), then address pairs in port order, each only where
/// no other key is (the interval maps refuse overlaps).
pub fn dispatch_keys(filters: &BTreeMap<String, PortFilter>) -> BTreeMap<String, Vec<KeyRange>> {
    let mut held: BTreeMap<&IfName, BTreeMap<u32, u32>> = BTreeMap::new();
    let mut keys: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for (id, f) in filters {
        let h = held.entry(&f.bridge).or_default();
        let mine = keys.entry(id.clone()).or_default();
        for ip in &f.fixed {
            let x = u32::from(*ip);
            if let std::collections::btree_map::Entry::Vacant(v) = h.entry(x) {
                v.insert(x);
                mine.push((x, x));
            }
        }
    }
    for (id, f) in filters {
        let h = held.entry(&f.bridge).or_default();
        let pairs: Vec<(u32, u32)> = f.prefixes.iter().map(prefix_bounds).collect();
        let free = subtract(&pairs, h);
        h.extend(free.iter().copied());
        // (Disjoint by construction: `free` avoided everything held.)
        keys.entry(id.clone()).or_default().extend(free);
    }
    keys.into_iter()
        .map(|(id, mut k)| {
            k.sort_unstable();
            // Adjacent pieces (own address next to own pair) become one element.
            let mut merged: Vec<(u32, u32)> = Vec::new();
            for (a, b) in k {
                match merged.last_mut() {
                    Some(last) if u64::from(last.1) + 1 == u64::from(a) => last.1 = b,
                    _ => merged.push((a, b)),
                }
            }
            (id, merged.into_iter().map(KeyRange::from_bounds).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges() {
        let r = |a: &str, b: &str| KeyRange {
            first: a.parse().expect("ip"),
            last: b.parse().expect("ip"),
        };
        assert_eq!(r("198.18.1.5", "198.18.1.5").to_string(), "198.18.1.5");
        assert_eq!(r("198.18.1.0", "198.18.1.255").to_string(), "198.18.1.0/24");
        assert_eq!(
            r("198.18.1.12", "198.18.1.15").to_string(),
            "198.18.1.12/30"
        );
        assert_eq!(
            r("198.18.1.0", "198.18.1.9").to_string(),
            "198.18.1.0-198.18.1.9"
        );
        let held = |v: &[(u32, u32)]| v.iter().copied().collect::<BTreeMap<u32, u32>>();
        assert_eq!(
            subtract(&[(0, 15)], &held(&[(10, 10), (11, 11)])),
            vec![(0, 9), (12, 15)]
        );
        assert_eq!(subtract(&[(5, 5)], &held(&[(0, 15)])), vec![]);
        assert_eq!(
            subtract(&[(5, 20)], &held(&[(0, 6), (9, 9), (30, 40)])),
            vec![(7, 8), (10, 20)]
        );
        assert_eq!(
            subtract(&[(0, u32::MAX)], &held(&[(u32::MAX, u32::MAX)])),
            vec![(0, u32::MAX - 1)]
        );
    }
}
