//! nftables: the scripts (pure functions of checked state, so they are unit-tested as text) and
//! [`Nft`], which pipes one script to `nft -f -` in a namespace. A script is one transaction: the
//! kernel applies all of it or none.
//!
//! Layout (see the module docs of `net` for why):
//! - `table bridge onestack`: stateless anti-spoofing. `os-pre` dispatches `iifname vmap @spoof` to
//!   one chain `ps-<tap>` per VM port with port security.
//! - `table inet onestack`: `os-zone-pre`/`os-zone-out` put each bridge's traffic into its
//!   conntrack zone (`@zones`); `os-egress` and `os-ingress` are two forward base chains, so an
//!   `accept` in the egress stage ends only that stage and the packet still meets the destination's
//!   ingress stage. They dispatch `bridge . source IP` (`@egress`) and `bridge . destination IP`
//!   (`@ingress`) to `po-<tap>` / `pi-<tap>`, which jump to the groups' `sg-<id>-out` /
//!   `sg-<id>-in` and end in drop. `sgm-<id>` holds a group's member IPs.
//!   `os-guest-guard` (input) keeps guests off the host itself: whatever arrives on a OneStack
//!   bridge (`brq…`: a guest's own network, or the external one its router reaches the host
//!   through) may reach only the TCP ports in `@guest-open` (the public APIs) and answer pings.
//! - `table ip onestack-nat` (in each router namespace): floating IP DNAT/SNAT maps and the
//!   gateway SNAT.

use super::model::{Dir, Group, KeyRange, PortFilter, Router, Rule};
use super::netns;
use super::validate::{nft_prefix, Ident, IfName};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub const TABLE: &str = "onestack";
pub const NAT_TABLE: &str = "onestack-nat";

/// A script under construction: one nft command per line.
#[derive(Default, Debug, Clone)]
pub struct Script(String);

impl Script {
    pub fn new() -> Self {
        Self::default()
    }
    fn line(&mut self, l: impl AsRef<str>) {
        self.0.push_str(l.as_ref());
        self.0.push('\n');
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn append(&mut self, other: Script) {
        self.0.push_str(&other.0);
    }
}

fn group_chain(id: &Ident, dir: Dir) -> String {
    match dir {
        Dir::Ingress => format!("sg-{id}-in"),
        Dir::Egress => format!("sg-{id}-out"),
    }
}
fn member_set(id: &Ident) -> String {
    format!("sgm-{id}")
}
fn spoof_chain(dev: &IfName) -> String {
    format!("ps-{dev}")
}
fn in_chain(dev: &IfName) -> String {
    format!("pi-{dev}")
}
fn out_chain(dev: &IfName) -> String {
    format!("po-{dev}")
}

// ---- host tables ----------------------------------------------------------------------------

/// Replaces both host tables with empty ones holding only the base chains and maps. The leading
/// `add table` makes the `delete table` valid whether or not the table exists, so this is one
/// transaction either way (used at startup only: it drops every port's rules until re-added in
/// the same script).
pub fn recreate_host_tables(s: &mut Script, guest_open: &[u16]) {
    s.line(format!("add table bridge {TABLE}"));
    s.line(format!("delete table bridge {TABLE}"));
    s.line(format!("add table inet {TABLE}"));
    s.line(format!("delete table inet {TABLE}"));
    create_host_tables(s, guest_open);
}

/// Removes both host tables (teardown), whether or not they exist.
pub fn drop_host_tables(s: &mut Script) {
    for family in ["bridge", "inet"] {
        s.line(format!("add table {family} {TABLE}"));
        s.line(format!("delete table {family} {TABLE}"));
    }
}

fn create_host_tables(s: &mut Script, guest_open: &[u16]) {
    // Bridge family: the port (not the bridge) is iifname here.
    s.line(format!("add table bridge {TABLE}"));
    s.line(format!(
        "add map bridge {TABLE} spoof {{ type ifname : verdict; }}"
    ));
    s.line(format!(
        "add chain bridge {TABLE} os-pre {{ type filter hook prerouting priority -200; policy accept; }}"
    ));
    s.line(format!(
        "add rule bridge {TABLE} os-pre iifname vmap @spoof"
    ));

    // inet family, reached by bridged IPv4 through br_netfilter: iifname/oifname are the bridge.
    s.line(format!("add table inet {TABLE}"));
    s.line(format!(
        "add map inet {TABLE} zones {{ typeof iifname : ct zone; }}"
    ));
    for map in ["egress", "ingress"] {
        s.line(format!(
            "add map inet {TABLE} {map} {{ type ifname . ipv4_addr : verdict; flags interval; }}"
        ));
    }
    // Zones must be set before conntrack sees the packet (priority -200).
    s.line(format!(
        "add chain inet {TABLE} os-zone-pre {{ type filter hook prerouting priority -300; policy accept; }}"
    ));
    s.line(format!(
        "add rule inet {TABLE} os-zone-pre ct zone set iifname map @zones"
    ));
    // The host's own packets onto a bridge (external networks' host_address) join its zone too,
    // or their replies would not match.
    s.line(format!(
        "add chain inet {TABLE} os-zone-out {{ type filter hook output priority -300; policy accept; }}"
    ));
    s.line(format!(
        "add rule inet {TABLE} os-zone-out ct zone set oifname map @zones"
    ));
    let stages = [
        (
            "os-egress",
            "forward",
            "0",
            "iifname . ip saddr vmap @egress",
        ),
        (
            "os-ingress",
            "forward",
            "1",
            "oifname . ip daddr vmap @ingress",
        ),
        // Between a VM and the host itself (a host address on an external bridge).
        (
            "os-host-in",
            "input",
            "0",
            "iifname . ip saddr vmap @egress",
        ),
        (
            "os-host-out",
            "output",
            "0",
            "oifname . ip daddr vmap @ingress",
        ),
    ];
    for (chain, hook, prio, dispatch) in stages {
        s.line(format!(
            "add chain inet {TABLE} {chain} {{ type filter hook {hook} priority {prio}; policy accept; }}"
        ));
        s.line(format!(
            "add rule inet {TABLE} {chain} ct state established,related accept"
        ));
        s.line(format!(
            "add rule inet {TABLE} {chain} ct state invalid drop"
        ));
        s.line(format!("add rule inet {TABLE} {chain} {dispatch}"));
    }
    guest_guard(s, guest_open);
}

/// Guests reach the host's public APIs, and nothing else of it: not the metrics endpoints, the
/// agent's endpoint, the dashboard, SSH or a database. Bridges are `brq…` (`proto::bridge_name`);
/// a guest reaches the host on its own network's bridge (the host answers ARP for any of its
/// addresses) or, through its router, on the external network's.
fn guest_guard(s: &mut Script, guest_open: &[u16]) {
    s.line(format!(
        "add set inet {TABLE} guest-open {{ type inet_service; }}"
    ));
    if !guest_open.is_empty() {
        let ports: Vec<String> = guest_open.iter().map(u16::to_string).collect();
        s.line(format!(
            "add element inet {TABLE} guest-open {{ {} }}",
            ports.join(", ")
        ));
    }
    // After `os-host-in` (priority 0), which applies the guest port's own rules.
    let chain = "os-guest-guard";
    s.line(format!(
        "add chain inet {TABLE} {chain} {{ type filter hook input priority 10; policy accept; }}"
    ));
    let mark = format!(
        "meta mark set {:#x}",
        onestack_core::network::proto::GUEST_MARK
    );
    for rule in [
        "iifname != \"brq*\" accept",
        // Handed to the accepted socket (`tcp_fwmark_accept`): the compute port's internal API
        // refuses what guests send it.
        mark.as_str(),
        "ct state established,related accept",
        "icmp type echo-request accept",
        "tcp dport @guest-open accept",
        "counter drop",
    ] {
        s.line(format!("add rule inet {TABLE} {chain} {rule}"));
    }
}

pub fn add_zone(s: &mut Script, bridge: &IfName, zone: u16) {
    s.line(format!(
        "add element inet {TABLE} zones {{ \"{bridge}\" : {zone} }}"
    ));
}

pub fn del_zone(s: &mut Script, bridge: &IfName, zone: u16) {
    s.line(format!(
        "delete element inet {TABLE} zones {{ \"{bridge}\" : {zone} }}"
    ));
}

fn addr_list(addrs: &BTreeSet<Ipv4Addr>) -> String {
    let v: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    v.join(", ")
}

pub fn add_member_set(s: &mut Script, id: &Ident, members: &BTreeSet<Ipv4Addr>) {
    let set = member_set(id);
    s.line(format!("add set inet {TABLE} {set} {{ type ipv4_addr; }}"));
    if !members.is_empty() {
        s.line(format!(
            "add element inet {TABLE} {set} {{ {} }}",
            addr_list(members)
        ));
    }
}

pub fn update_member_set(
    s: &mut Script,
    id: &Ident,
    old: &BTreeSet<Ipv4Addr>,
    new: &BTreeSet<Ipv4Addr>,
) {
    let set = member_set(id);
    let gone: BTreeSet<Ipv4Addr> = old.difference(new).copied().collect();
    let added: BTreeSet<Ipv4Addr> = new.difference(old).copied().collect();
    if !gone.is_empty() {
        s.line(format!(
            "delete element inet {TABLE} {set} {{ {} }}",
            addr_list(&gone)
        ));
    }
    if !added.is_empty() {
        s.line(format!(
            "add element inet {TABLE} {set} {{ {} }}",
            addr_list(&added)
        ));
    }
}

pub fn del_member_set(s: &mut Script, id: &Ident) {
    s.line(format!("delete set inet {TABLE} {}", member_set(id)));
}

/// The match part of one rule (without the verdict); empty for "everything".
pub fn rule_match(r: &Rule) -> String {
    let mut m = String::new();
    // The remote end: the source of ingress traffic, the destination of egress traffic.
    let addr_field = match r.direction {
        Dir::Ingress => "saddr",
        Dir::Egress => "daddr",
    };
    if let Some(p) = &r.remote_prefix {
        if p.prefix_len() != 0 {
            let _ = write!(m, "ip {addr_field} {} ", nft_prefix(p));
        }
    }
    if let Some(g) = &r.remote_group {
        let _ = write!(m, "ip {addr_field} @{} ", member_set(g));
    }
    let range = |min: Option<u16>, max: Option<u16>| match (min, max) {
        (Some(a), Some(b)) if a == b => Some(a.to_string()),
        (Some(a), Some(b)) => Some(format!("{a}-{b}")),
        (Some(a), None) => Some(a.to_string()),
        (None, Some(b)) => Some(format!("0-{b}")),
        (None, None) => None,
    };
    match r.protocol {
        None => {}
        Some(1) => {
            let _ = write!(m, "ip protocol icmp ");
            if let Some(t) = r.port_min {
                let _ = write!(m, "icmp type {t} ");
                // Neutron: the code only counts together with a type.
                if let Some(c) = r.port_max {
                    let _ = write!(m, "icmp code {c} ");
                }
            }
        }
        Some(p @ (6 | 17 | 132)) => {
            let name = match p {
                6 => "tcp",
                17 => "udp",
                _ => "sctp",
            };
            match range(r.port_min, r.port_max) {
                Some(ports) => {
                    let _ = write!(m, "{name} dport {ports} ");
                }
                None => {
                    let _ = write!(m, "meta l4proto {name} ");
                }
            }
        }
        Some(p) => {
            let _ = write!(m, "meta l4proto {p} ");
        }
    }
    m
}

fn group_rules(s: &mut Script, g: &Group, dir: Dir) {
    let chain = group_chain(&g.id, dir);
    for r in g.rules.iter().filter(|r| r.direction == dir) {
        s.line(format!(
            "add rule inet {TABLE} {chain} {}accept",
            rule_match(r)
        ));
    }
}

/// Creates a group's two chains. Its member set must exist (or be created earlier in the script).
pub fn add_group(s: &mut Script, g: &Group) {
    for dir in [Dir::Ingress, Dir::Egress] {
        s.line(format!(
            "add chain inet {TABLE} {}",
            group_chain(&g.id, dir)
        ));
        group_rules(s, g, dir);
    }
}

/// A rule change rewrites only this group's chains; ports keep jumping to them.
pub fn update_group(s: &mut Script, g: &Group) {
    for dir in [Dir::Ingress, Dir::Egress] {
        s.line(format!(
            "flush chain inet {TABLE} {}",
            group_chain(&g.id, dir)
        ));
        group_rules(s, g, dir);
    }
}

pub fn del_group(s: &mut Script, id: &Ident) {
    for dir in [Dir::Ingress, Dir::Egress] {
        let chain = group_chain(id, dir);
        s.line(format!("flush chain inet {TABLE} {chain}"));
        s.line(format!("delete chain inet {TABLE} {chain}"));
    }
}

fn key_elements(bridge: &IfName, keys: &[KeyRange], verdict: &str) -> String {
    let v: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{bridge}\" . {k} : {verdict}"))
        .collect();
    v.join(", ")
}

fn key_list(bridge: &IfName, keys: &[KeyRange]) -> String {
    let v: Vec<String> = keys.iter().map(|k| format!("\"{bridge}\" . {k}")).collect();
    v.join(", ")
}

fn port_rules(s: &mut Script, f: &PortFilter) {
    let dev = &f.device;
    let spoof = spoof_chain(dev);
    let macs: Vec<String> = f.macs.iter().map(|m| m.to_string()).collect();
    let macs = macs.join(", ");
    let ips: Vec<String> = f.prefixes.iter().map(nft_prefix).collect();
    let ips = ips.join(", ");
    let b = format!("add rule bridge {TABLE} {spoof}");
    s.line(format!("{b} ether saddr != {{ {macs} }} drop"));
    s.line(format!(
        "{b} ether type arp arp saddr ether != {{ {macs} }} drop"
    ));
    // 0.0.0.0 is an ARP probe (RFC 5227), sent before a DHCP-given address is used.
    if ips.is_empty() {
        s.line(format!("{b} ether type arp arp saddr ip != 0.0.0.0 drop"));
    } else {
        s.line(format!(
            "{b} ether type arp arp saddr ip != {{ 0.0.0.0, {ips} }} drop"
        ));
    }
    s.line(format!("{b} ether type arp accept"));
    // A VM must not answer DHCP (rogue server).
    s.line(format!("{b} ether type ip udp sport 67 drop"));
    s.line(format!(
        "{b} ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept"
    ));
    if ips.is_empty() {
        s.line(format!("{b} ether type ip drop"));
    } else {
        s.line(format!("{b} ether type ip ip saddr != {{ {ips} }} drop"));
        s.line(format!("{b} ether type ip accept"));
    }
    // IPv6 and every other ethertype (VLAN tags included).
    s.line(format!("{b} drop"));

    let o = format!("add rule inet {TABLE} {}", out_chain(dev));
    // DHCP renewals go to the server's address.
    s.line(format!("{o} udp sport 68 udp dport 67 accept"));
    for g in &f.groups {
        s.line(format!("{o} jump {}", group_chain(g, Dir::Egress)));
    }
    s.line(format!("{o} drop"));

    let i = format!("add rule inet {TABLE} {}", in_chain(dev));
    s.line(format!("{i} udp sport 67 udp dport 68 accept"));
    for g in &f.groups {
        s.line(format!("{i} jump {}", group_chain(g, Dir::Ingress)));
    }
    s.line(format!("{i} drop"));
}

/// Adds one port: its three chains, and its elements in the dispatch maps. `keys` are the
/// prefixes it owns in `@egress`/`@ingress` (its own, minus any another port on the bridge
/// already holds: the maps refuse overlaps).
pub fn add_port(s: &mut Script, f: &PortFilter, keys: &[KeyRange]) {
    let dev = &f.device;
    s.line(format!("add chain bridge {TABLE} {}", spoof_chain(dev)));
    s.line(format!("add chain inet {TABLE} {}", out_chain(dev)));
    s.line(format!("add chain inet {TABLE} {}", in_chain(dev)));
    port_rules(s, f);
    port_elements(s, f, keys, "add");
}

fn port_elements(s: &mut Script, f: &PortFilter, keys: &[KeyRange], op: &str) {
    let dev = &f.device;
    let with_verdict = op == "add";
    if with_verdict {
        s.line(format!(
            "add element bridge {TABLE} spoof {{ \"{dev}\" : goto {} }}",
            spoof_chain(dev)
        ));
    } else {
        s.line(format!(
            "delete element bridge {TABLE} spoof {{ \"{dev}\" }}"
        ));
    }
    if keys.is_empty() {
        return;
    }
    for (map, chain) in [("egress", out_chain(dev)), ("ingress", in_chain(dev))] {
        let elems = if with_verdict {
            key_elements(&f.bridge, keys, &format!("goto {chain}"))
        } else {
            key_list(&f.bridge, keys)
        };
        s.line(format!("{op} element inet {TABLE} {map} {{ {elems} }}"));
    }
}

/// First half of changing a port in place: its elements go and its chains are emptied (other
/// ports never reference them). Done before any port claims keys in the same transaction.
pub fn clear_port(s: &mut Script, old: &PortFilter, old_keys: &[KeyRange]) {
    port_elements(s, old, old_keys, "delete");
    let dev = &old.device;
    s.line(format!("flush chain bridge {TABLE} {}", spoof_chain(dev)));
    s.line(format!("flush chain inet {TABLE} {}", out_chain(dev)));
    s.line(format!("flush chain inet {TABLE} {}", in_chain(dev)));
}

/// Second half: the new rules and elements into the (same-named, emptied) chains.
pub fn refill_port(s: &mut Script, new: &PortFilter, new_keys: &[KeyRange]) {
    port_rules(s, new);
    port_elements(s, new, new_keys, "add");
}

/// Dispatch keys that moved (another port's address pair gave way or took over): deletions first
/// for every port, then additions, so a key can move between ports in one transaction.
pub fn del_keys(s: &mut Script, f: &PortFilter, keys: &[KeyRange]) {
    if keys.is_empty() {
        return;
    }
    for map in ["egress", "ingress"] {
        s.line(format!(
            "delete element inet {TABLE} {map} {{ {} }}",
            key_list(&f.bridge, keys)
        ));
    }
}

pub fn add_keys(s: &mut Script, f: &PortFilter, keys: &[KeyRange]) {
    if keys.is_empty() {
        return;
    }
    let dev = &f.device;
    for (map, chain) in [("egress", out_chain(dev)), ("ingress", in_chain(dev))] {
        s.line(format!(
            "add element inet {TABLE} {map} {{ {} }}",
            key_elements(&f.bridge, keys, &format!("goto {chain}"))
        ));
    }
}

pub fn del_port(s: &mut Script, f: &PortFilter, keys: &[KeyRange]) {
    port_elements(s, f, keys, "delete");
    let dev = &f.device;
    for (family, chain) in [
        ("bridge", spoof_chain(dev)),
        ("inet", out_chain(dev)),
        ("inet", in_chain(dev)),
    ] {
        s.line(format!("flush chain {family} {TABLE} {chain}"));
        s.line(format!("delete chain {family} {TABLE} {chain}"));
    }
}

/// Everything at once (startup): fresh tables, zones, member sets, groups, ports.
pub fn full_host_script(
    zones: &BTreeMap<IfName, u16>,
    sets: &BTreeMap<Ident, BTreeSet<Ipv4Addr>>,
    groups: &BTreeMap<String, Group>,
    ports: &[(&PortFilter, &[KeyRange])],
    guest_open: &[u16],
) -> Script {
    let mut s = Script::new();
    recreate_host_tables(&mut s, guest_open);
    for (bridge, zone) in zones {
        add_zone(&mut s, bridge, *zone);
    }
    for (id, members) in sets {
        add_member_set(&mut s, id, members);
    }
    for g in groups.values() {
        add_group(&mut s, g);
    }
    for (f, keys) in ports {
        add_port(&mut s, f, keys);
    }
    s
}

// ---- router NAT -----------------------------------------------------------------------------

/// A router's NAT table from scratch (creation and startup).
pub fn nat_create(r: &Router) -> Script {
    let t = format!("ip {NAT_TABLE}");
    let mut s = Script::new();
    s.line(format!("add table {t}"));
    s.line(format!("delete table {t}"));
    s.line(format!("add table {t}"));
    s.line(format!(
        "add map {t} fip-dnat {{ type ipv4_addr : ipv4_addr; }}"
    ));
    s.line(format!(
        "add map {t} fip-snat {{ type ipv4_addr : ipv4_addr; }}"
    ));
    s.line(format!(
        "add set {t} internal {{ type ipv4_addr; flags interval; }}"
    ));
    s.line(format!(
        "add chain {t} os-pre {{ type nat hook prerouting priority -100; policy accept; }}"
    ));
    // A lookup miss ends the rule, so other traffic passes untouched.
    s.line(format!(
        "add rule {t} os-pre dnat to ip daddr map @fip-dnat"
    ));
    s.line(format!(
        "add chain {t} os-post {{ type nat hook postrouting priority 100; policy accept; }}"
    ));
    nat_post_rules(&mut s, r);
    nat_fip_diff(&mut s, &BTreeMap::new(), &r.floating);
    s
}

fn nat_post_rules(s: &mut Script, r: &Router) {
    let t = format!("ip {NAT_TABLE}");
    let (gw, internal) = r.snat_inputs();
    let internal: Vec<String> = super::validate::aggregate(&internal)
        .iter()
        .map(nft_prefix)
        .collect();
    if !internal.is_empty() {
        s.line(format!(
            "add element {t} internal {{ {} }}",
            internal.join(", ")
        ));
    }
    if let Some((dev, addr, snat)) = gw {
        // A fixed IP with a floating IP leaves as its floating IP, SNAT or not.
        s.line(format!(
            "add rule {t} os-post oifname \"{dev}\" snat to ip saddr map @fip-snat"
        ));
        if snat {
            s.line(format!(
                "add rule {t} os-post oifname \"{dev}\" ip saddr @internal snat to {addr}"
            ));
        }
    }
}

/// Rewrites the SNAT chain and the internal-subnet set (gateway or interfaces changed).
pub fn nat_rewrite_post(r: &Router) -> Script {
    let t = format!("ip {NAT_TABLE}");
    let mut s = Script::new();
    s.line(format!("flush chain {t} os-post"));
    s.line(format!("flush set {t} internal"));
    nat_post_rules(&mut s, r);
    s
}

pub fn nat_fip_diff(
    s: &mut Script,
    old: &BTreeMap<Ipv4Addr, Ipv4Addr>,
    new: &BTreeMap<Ipv4Addr, Ipv4Addr>,
) {
    let t = format!("ip {NAT_TABLE}");
    for (fl, fx) in old {
        if new.get(fl) != Some(fx) {
            s.line(format!("delete element {t} fip-dnat {{ {fl} }}"));
            s.line(format!("delete element {t} fip-snat {{ {fx} }}"));
        }
    }
    for (fl, fx) in new {
        if old.get(fl) != Some(fx) {
            s.line(format!("add element {t} fip-dnat {{ {fl} : {fx} }}"));
            s.line(format!("add element {t} fip-snat {{ {fx} : {fl} }}"));
        }
    }
}

// ---- executor -------------------------------------------------------------------------------

/// Runs `nft` in one network namespace (None: the agent's own).
#[derive(Clone, Debug)]
pub struct Nft {
    netns: Option<PathBuf>,
}

impl Nft {
    pub fn new(netns: Option<PathBuf>) -> Self {
        Self { netns }
    }

    /// Applies `script` as one transaction.
    pub async fn apply(&self, script: &Script) -> Result<()> {
        if script.is_empty() {
            return Ok(());
        }
        let out = netns::command(
            self.netns.clone(),
            "nft".into(),
            vec!["-f".into(), "-".into()],
            Some(script.as_str().as_bytes().to_vec()),
        )
        .await
        .context("running nft")?;
        if !out.status.success() {
            bail!(
                "nft -f - failed ({}): {}\n--- script ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                truncate(script.as_str(), 4000)
            );
        }
        Ok(())
    }

    /// The tables of the namespace, as `<family> <name>` (`nft list tables`).
    pub async fn tables(&self) -> Result<Vec<String>> {
        let out = netns::command(
            self.netns.clone(),
            "nft".into(),
            vec!["list".into(), "tables".into()],
            None,
        )
        .await
        .context("running nft list tables")?;
        if !out.status.success() {
            bail!(
                "nft list tables failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("table "))
            .map(str::to_owned)
            .collect())
    }

    /// `nft list table <family> <name>`; None if the table does not exist.
    pub async fn list_table(&self, family: &str, table: &str) -> Result<Option<String>> {
        if !matches!(family, "bridge" | "inet" | "ip") || !matches!(table, TABLE | NAT_TABLE) {
            bail!("unexpected nft table {family} {table}");
        }
        let out = netns::command(
            self.netns.clone(),
            "nft".into(),
            vec!["list".into(), "table".into(), family.into(), table.into()],
            None,
        )
        .await
        .context("running nft list")?;
        if out.status.success() {
            Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
        } else {
            Ok(None)
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::model::Rule;
    use crate::net::validate::{ipv4_prefix, Mac};
    use ipnet::Ipv4Net;

    fn id(s: &str) -> Ident {
        Ident::parse(s).expect("id")
    }
    fn dev(s: &str) -> IfName {
        IfName::parse(s).expect("dev")
    }
    fn pfx(s: &str) -> Ipv4Net {
        ipv4_prefix(s).expect("prefix")
    }

    fn filter() -> PortFilter {
        PortFilter {
            device: dev("tapaaaa"),
            bridge: dev("brqnet1"),
            macs: vec![Mac::parse("fa:16:3e:00:00:01").expect("mac")],
            prefixes: vec![pfx("198.18.1.5"), pfx("198.18.9.0/24")],
            fixed: vec![Ipv4Addr::new(198, 18, 1, 5)],
            groups: vec![id("g1")],
        }
    }

    fn keys(f: &PortFilter) -> Vec<KeyRange> {
        let filters = [("p".to_owned(), f.clone())].into();
        crate::net::model::dispatch_keys(&filters)
            .remove("p")
            .expect("keys")
    }

    fn rule(dir: Dir, proto: Option<u8>, min: Option<u16>, max: Option<u16>) -> Rule {
        Rule {
            direction: dir,
            protocol: proto,
            port_min: min,
            port_max: max,
            remote_prefix: None,
            remote_group: None,
        }
    }

    #[test]
    fn rule_matches() {
        let mut r = rule(Dir::Ingress, Some(6), Some(22), Some(22));
        assert_eq!(rule_match(&r), "tcp dport 22 ");
        r.port_max = Some(80);
        r.port_min = Some(20);
        r.remote_prefix = Some(pfx("198.18.0.0/16"));
        assert_eq!(rule_match(&r), "ip saddr 198.18.0.0/16 tcp dport 20-80 ");
        let mut r = rule(Dir::Egress, Some(1), Some(8), None);
        r.remote_group = Some(id("g2"));
        assert_eq!(
            rule_match(&r),
            "ip daddr @sgm-g2 ip protocol icmp icmp type 8 "
        );
        let r = rule(Dir::Ingress, Some(1), Some(3), Some(4));
        assert_eq!(rule_match(&r), "ip protocol icmp icmp type 3 icmp code 4 ");
        let mut r = rule(Dir::Egress, None, None, None);
        r.remote_prefix = Some(pfx("0.0.0.0/0"));
        assert_eq!(rule_match(&r), "");
        assert_eq!(
            rule_match(&rule(Dir::Egress, Some(47), None, None)),
            "meta l4proto 47 "
        );
        assert_eq!(
            rule_match(&rule(Dir::Egress, Some(17), None, None)),
            "meta l4proto udp "
        );
    }

    #[test]
    fn port_add_touches_only_that_port() {
        let f = filter();
        let mut s = Script::new();
        add_port(&mut s, &f, &keys(&f));
        let text = s.as_str();
        // Only this port's objects, no flush/delete of anything shared.
        assert!(!text.contains("flush"), "{text}");
        assert!(!text.contains("delete"), "{text}");
        assert!(!text.contains("add table"), "{text}");
        for l in text.lines() {
            assert!(
                l.contains("tapaaaa") || l.contains("ps-tapaaaa") || l.contains("po-tapaaaa"),
                "line not about the port: {l}"
            );
        }
        assert!(text.contains("add chain bridge onestack ps-tapaaaa\n"));
        assert!(text.contains(
            "add rule bridge onestack ps-tapaaaa ether saddr != { fa:16:3e:00:00:01 } drop"
        ));
        assert!(text.contains("arp saddr ip != { 0.0.0.0, 198.18.1.5, 198.18.9.0/24 } drop"));
        assert!(text.contains("ip saddr != { 198.18.1.5, 198.18.9.0/24 } drop"));
        assert!(text.contains("add rule inet onestack po-tapaaaa jump sg-g1-out"));
        assert!(text.contains("add rule inet onestack pi-tapaaaa jump sg-g1-in"));
        assert!(text.contains(
            "add element inet onestack egress { \"brqnet1\" . 198.18.1.5 : goto po-tapaaaa, \"brqnet1\" . 198.18.9.0/24 : goto po-tapaaaa }"
        ));
        assert!(
            text.contains("add element bridge onestack spoof { \"tapaaaa\" : goto ps-tapaaaa }")
        );
        assert_eq!(text.lines().filter(|l| l.ends_with(" drop")).count(), 8);
    }

    #[test]
    fn port_delete_mirrors_add() {
        let f = filter();
        let mut s = Script::new();
        del_port(&mut s, &f, &keys(&f)[..1]);
        let text = s.as_str();
        assert!(text.contains("delete element bridge onestack spoof { \"tapaaaa\" }"));
        assert!(text.contains("delete element inet onestack ingress { \"brqnet1\" . 198.18.1.5 }"));
        assert!(text.contains("delete chain inet onestack pi-tapaaaa"));
        assert!(text.contains("delete chain bridge onestack ps-tapaaaa"));
        assert!(!text.contains("198.18.9.0"), "only the keys it owns");
        assert!(!text.contains("table"), "{text}");
    }

    #[test]
    fn group_change_is_local() {
        let g = Group {
            id: id("g1"),
            members: [Ipv4Addr::new(198, 18, 1, 5)].into(),
            rules: vec![
                rule(Dir::Egress, None, None, None),
                Rule {
                    remote_group: Some(id("g1")),
                    ..rule(Dir::Ingress, None, None, None)
                },
            ],
        };
        let mut s = Script::new();
        update_group(&mut s, &g);
        assert_eq!(
            s.as_str(),
            "flush chain inet onestack sg-g1-in\n\
             add rule inet onestack sg-g1-in ip saddr @sgm-g1 accept\n\
             flush chain inet onestack sg-g1-out\n\
             add rule inet onestack sg-g1-out accept\n"
        );
        let mut s = Script::new();
        update_member_set(
            &mut s,
            &g.id,
            &g.members,
            &[Ipv4Addr::new(198, 18, 1, 6)].into(),
        );
        assert_eq!(
            s.as_str(),
            "delete element inet onestack sgm-g1 { 198.18.1.5 }\n\
             add element inet onestack sgm-g1 { 198.18.1.6 }\n"
        );
    }

    #[test]
    fn full_script_creates_tables_once() {
        let f = filter();
        let zones = [(dev("brqnet1"), 7u16)].into();
        let s = full_host_script(
            &zones,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &[(&f, &keys(&f))],
            &[5000, 8774],
        );
        let text = s.as_str();
        assert_eq!(text.matches("delete table").count(), 2);
        // Guests reach the public APIs and nothing else of the host.
        assert!(text.contains("add element inet onestack guest-open { 5000, 8774 }"));
        assert!(text.contains(
            "add chain inet onestack os-guest-guard { type filter hook input priority 10; policy accept; }\n\
             add rule inet onestack os-guest-guard iifname != \"brq*\" accept\n\
             add rule inet onestack os-guest-guard meta mark set 0x4f53\n"
        ));
        assert!(text.contains("add rule inet onestack os-guest-guard tcp dport @guest-open accept\nadd rule inet onestack os-guest-guard counter drop\n"));
        assert!(text.contains("add element inet onestack zones { \"brqnet1\" : 7 }"));
        assert!(text.starts_with("add table bridge onestack\ndelete table bridge onestack\n"));
    }

    #[test]
    fn nat_script() {
        use crate::net::model::{Gateway, Interface};
        let mac = Mac::parse("fa:16:3e:00:00:09").expect("mac");
        let r = Router {
            id: id("r1"),
            namespace: crate::net::validate::NsName::parse("qrouter-r1").expect("ns"),
            gateway: Some(Gateway {
                port_id: id("p1"),
                network_id: id("ext"),
                host_device: dev("tapg"),
                device: dev("qg-1"),
                mac,
                address: "198.18.64.10/24".parse().expect("addr"),
                default_gateway: Some(Ipv4Addr::new(198, 18, 64, 1)),
                enable_snat: true,
                bridge: dev("brqext"),
                mtu: 1500,
            }),
            interfaces: vec![Interface {
                port_id: id("p2"),
                network_id: id("n1"),
                host_device: dev("tapi"),
                device: dev("qr-1"),
                mac,
                address: "198.18.1.1/24".parse().expect("addr"),
                mtu: 1500,
                bridge: dev("brqnet1"),
            }],
            floating: [(Ipv4Addr::new(198, 18, 64, 20), Ipv4Addr::new(198, 18, 1, 5))].into(),
        };
        let text = nat_create(&r).0;
        assert!(text.contains("add element ip onestack-nat internal { 198.18.1.0/24 }"));
        assert!(text.contains("oifname \"qg-1\" ip saddr @internal snat to 198.18.64.10"));
        assert!(text.contains("add element ip onestack-nat fip-dnat { 198.18.64.20 : 198.18.1.5 }"));
        assert!(text.contains("add element ip onestack-nat fip-snat { 198.18.1.5 : 198.18.64.20 }"));
        let mut s = Script::new();
        nat_fip_diff(&mut s, &r.floating, &BTreeMap::new());
        assert_eq!(
            s.as_str(),
            "delete element ip onestack-nat fip-dnat { 198.18.64.20 }\n\
             delete element ip onestack-nat fip-snat { 198.18.1.5 }\n"
        );
    }
}
