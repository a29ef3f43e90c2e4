//! The Linux data plane that realises a [`NetworkState`] on a host: bridges, VM taps, DHCP
//! namespaces with dnsmasq, router namespaces with NAT, and nftables for anti-spoofing and
//! security groups.
//!
//! Design (the kernel has no conntrack in the bridge family, but bridge netfilter is built in):
//! - Anti-spoofing is stateless, in `table bridge onestack`, where the VM's port is visible.
//! - Security groups are stateful, in `table inet onestack`, reached by bridged IPv4 through
//!   br_netfilter (`net.bridge.bridge-nf-call-iptables=1`). There the in/out interface is the
//!   bridge, not the port, so ports are told apart by address: `bridge . IP` keys dispatch to
//!   per-port chains (anti-spoofing guarantees a source IP belongs to its port). Each bridge gets
//!   its own conntrack zone, so overlapping tenant CIDRs never share connection state.
//! - Egress and ingress are two forward base chains: an accept in one ends only that stage, so
//!   group chains can use plain `accept` and a packet between two VMs meets both ports' rules.
//! - Changes are incremental: one apply is one nft transaction holding only what changed (a new
//!   port adds its chains and map elements; a rule change rewrites one group chain; a membership
//!   change adds/removes set elements). Only the first apply after start rebuilds the tables
//!   (atomically, so established connections keep flowing).
//! - Links via rtnetlink, in other namespaces from a thread that entered them (see `netns`).
//!
//! Address pairs that overlap another port's addresses on the same bridge cannot be dispatch
//! keys (the maps refuse overlapping intervals): the port that claimed the prefix first keeps it.

mod check;
pub mod dhcp;
mod l2;
pub mod link;
pub mod model;
pub mod netns;
pub mod nft;
mod tap;
pub mod validate;

use crate::retry::Backoff;
use anyhow::{Context, Result};
use model::{KeyRange, Plan, PortFilter};
use nft::{Nft, Script};
use onestack_core::network::proto::NetworkState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use validate::{Ident, IfName, NsName};

#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Operate in this named network namespace instead of the agent's own (tests).
    pub host_netns: Option<String>,
    /// The record of what was applied, and each dnsmasq's pid, lease and log files
    /// (`dhcp/<network id>/…`, opened by dnsmasq while it is still root): root's alone.
    pub state_dir: PathBuf,
    /// The files dnsmasq re-reads as its own user on every SIGHUP (`dhcp/<network id>/hosts`,
    /// `opts`): in a directory that user reaches without passing through `state_dir` (which
    /// may sit in a data directory only root can enter), readable by that user's group only.
    pub shared_dir: PathBuf,
    /// The unprivileged user dnsmasq drops to (`--user`, `--group`).
    pub dnsmasq_user: crate::access::Identity,
    /// Owner of created TAPs: the uid QEMU runs as.
    pub tap_owner: Option<u32>,
    pub dnsmasq: PathBuf,
    /// The host interface joined to the external network's bridge (`network.public_interface`
    /// on a two-NIC network node): floating IPs answer on it.
    pub uplink: Option<String>,
    /// The host's TCP ports guests may reach (the public APIs); the rest of the host is closed
    /// to them (`nft::guest_guard`).
    pub guest_open_ports: Vec<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

#[derive(Clone, Debug, Default)]
pub struct ApplyStats {
    /// The nft tables were rebuilt from scratch (first apply, or after a failed transaction).
    pub full_rebuild: bool,
    pub networks: Counts,
    pub ports: Counts,
    pub security_groups: Counts,
    pub dhcp: Counts,
    pub routers: Counts,
    /// Lines of the host nft transaction (0: nothing to change).
    pub nft_lines: usize,
    /// Time spent in that transaction (`nft -f -`, including nft's own cache fill).
    pub nft_elapsed: Duration,
    /// Time spent on links, namespaces and dnsmasq.
    pub l2_elapsed: Duration,
    /// Entries of the state left out because a field failed validation.
    pub rejected: Vec<String>,
    /// Objects that could not be realised; they are retried on the next apply or heal.
    pub errors: Vec<String>,
    /// What a heal found drifted (`<object>: <why>`).
    pub drift: Vec<String>,
    /// Time a heal spent looking (its self-check).
    pub check_elapsed: Duration,
    pub elapsed: Duration,
}

/// The nft side of what is applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Firewall {
    zones: BTreeMap<IfName, u16>,
    sets: BTreeMap<Ident, BTreeSet<Ipv4Addr>>,
    groups: BTreeMap<String, model::Group>,
    /// Port id → filter and the dispatch keys it holds.
    ports: BTreeMap<String, (PortFilter, Vec<KeyRange>)>,
}

/// What is (or may be) realised: the last applied version of each object. Each object is also
/// saved to disk ([`Record`]) so that after a restart the agent still removes what the controller
/// dropped meanwhile.
#[derive(Clone, Debug, Default)]
struct Applied {
    plan: Plan,
    /// Keys of objects whose last realisation failed or that drifted: converged again by the
    /// next apply or heal once their backoff has passed.
    dirty: BTreeSet<String>,
    firewall: Option<Firewall>,
    /// Failed objects' retry schedules, by key.
    retry: BTreeMap<String, Backoff>,
}

/// One small JSON file per realised object (`<state_dir>/net-record/<kind>/<id>.json`), written
/// or removed with that object only, so recording a change costs the same whatever the number of
/// other objects. Ids are checked identifiers, hence safe file names.
struct Record {
    dir: PathBuf,
}

impl Record {
    fn path(&self, kind: &str, id: &str) -> PathBuf {
        self.dir.join(kind).join(format!("{id}.json"))
    }

    fn put<T: Serialize>(&self, kind: &str, id: &str, v: &T) -> Result<()> {
        let path = self.path(kind, id);
        let dir = self.dir.join(kind);
        onestack_core::fsutil::create_private_dir(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec(v).context("encoding a network record")?;
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("saving {}", path.display()))
    }

    fn del(&self, kind: &str, id: &str) -> Result<()> {
        let path = self.path(kind, id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    fn load_kind<T: serde::de::DeserializeOwned>(&self, kind: &str) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join(kind)) else {
            return out;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice(&b).map_err(anyhow::Error::from))
            {
                Ok(v) => {
                    out.insert(id.to_owned(), v);
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "ignoring an unreadable network record"),
            }
        }
        out
    }

    fn load(&self) -> Plan {
        Plan {
            networks: self.load_kind("networks"),
            ports: self.load_kind("ports"),
            groups: BTreeMap::new(),
            dhcp: self.load_kind("dhcp"),
            routers: self.load_kind("routers"),
        }
    }
}

pub struct HostNetworking {
    cfg: NetConfig,
    host_ns: Option<PathBuf>,
    links: Option<link::Links>,
    nft: Nft,
    applied: Option<Applied>,
    /// The last plan asked for: what [`Self::heal`] converges back to.
    desired: Option<Plan>,
    /// The schedule of a whole apply that failed before any object was realised.
    apply_retry: Backoff,
    /// Drift reports by object key, so an object that keeps drifting is told once a minute.
    drift_log: BTreeMap<String, Backoff>,
}

/// A failed object is tried again after 1 s, 2 s, 4 s… up to 30 s.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(30);

fn backoff() -> Backoff {
    Backoff::new(RETRY_BASE, RETRY_CAP)
}

/// The host sysctls the data plane needs; checked by [`HostNetworking::heal`] too.
const HOST_SYSCTLS: [(&str, &str); 2] = [
    // Bridged IPv4 must traverse the inet hooks, or security groups see nothing.
    ("net/bridge/bridge-nf-call-iptables", "bridge netfilter"),
    // Accepted sockets carry their first packet's mark: the APIs tell guests' connections
    // (`GUEST_MARK`) from the hosts'.
    ("net/ipv4/tcp_fwmark_accept", "marks on accepted sockets"),
];

impl HostNetworking {
    pub fn new(cfg: NetConfig) -> Self {
        let host_ns = cfg.host_netns.as_ref().map(|n| {
            // Checked when used (`apply` fails with the reason); the path is only built here.
            PathBuf::from(netns::NETNS_DIR).join(n)
        });
        Self {
            nft: Nft::new(host_ns.clone()),
            host_ns,
            cfg,
            links: None,
            applied: None,
            desired: None,
            apply_retry: backoff(),
            drift_log: BTreeMap::new(),
        }
    }

    /// The objects whose last attempt failed (`<kind>:<id>`), waiting for their retry.
    pub fn failing(&self) -> Vec<String> {
        self.applied
            .as_ref()
            .map(|a| {
                a.retry
                    .iter()
                    .filter(|(_, b)| b.failures() > 0)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The nft executor for the host namespace (tests read the ruleset through it).
    pub fn nft(&self) -> &Nft {
        &self.nft
    }

    async fn host_links(&mut self) -> Result<&link::Links> {
        if self.links.is_none() {
            if let Some(n) = &self.cfg.host_netns {
                NsName::parse(n).context("host_netns")?;
            }
            self.links = Some(link::Links::open(self.host_ns.clone()).await?);
        }
        self.links.as_ref().context("netlink handle")
    }

    fn record(&self) -> Record {
        Record {
            dir: self.cfg.state_dir.join("net-record"),
        }
    }

    /// Makes the host match `desired`, changing only what differs from the last apply. The first
    /// call (after start) converges everything, reusing what exists (VM taps, namespaces, a
    /// running dnsmasq) and removing what a previous run created that is no longer wanted.
    /// Objects that fail are retried by later applies and by [`Self::heal`], each on its own
    /// backoff (1 s doubling to 30 s), unless the controller changes them meanwhile.
    pub async fn apply(&mut self, desired: &NetworkState) -> Result<ApplyStats> {
        let (mut plan, mut rejected) = Plan::from_state(desired);
        if let Some(uplink) = &self.cfg.uplink {
            if let Err(e) = plan.attach_uplink(uplink) {
                rejected.push(format!("uplink {uplink:?}: {e:#}"));
            }
        }
        let stats = ApplyStats {
            rejected,
            ..Default::default()
        };
        for r in &stats.rejected {
            tracing::warn!(reason = %r, "network state entry rejected");
        }
        self.desired = Some(plan.clone());
        self.apply_plan(&plan, stats).await
    }

    async fn apply_plan(&mut self, plan: &Plan, mut stats: ApplyStats) -> Result<ApplyStats> {
        let started = Instant::now();
        let r = self.apply_inner(plan, &mut stats).await;
        match &r {
            Ok(()) => {
                self.apply_retry.succeeded();
            }
            Err(_) => {
                self.apply_retry.failed(Instant::now());
            }
        }
        r?;
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    async fn apply_inner(&mut self, plan: &Plan, stats: &mut ApplyStats) -> Result<()> {
        self.host_links().await?;
        let first = self.applied.is_none();
        let mut applied = match self.applied.take() {
            Some(a) => a,
            None => {
                self.host_sysctls(false).await?;
                Applied {
                    plan: self.record().load(),
                    ..Default::default()
                }
            }
        };
        let r = self.converge(plan, &mut applied, first, stats).await;
        self.applied = Some(applied);
        r
    }

    /// Sets the host sysctls the data plane needs; `check`: only those that are not set
    /// (returned, as drift).
    async fn host_sysctls(&self, check: bool) -> Result<Vec<String>> {
        let mut drift = Vec::new();
        for (key, what) in HOST_SYSCTLS {
            if check && netns::read_sysctl(self.host_ns.clone(), key).await? == "1" {
                continue;
            }
            netns::sysctl(self.host_ns.clone(), key, "1")
                .await
                .with_context(|| format!("enabling {what}"))?;
            if check {
                drift.push(format!("{key} was not 1"));
            }
        }
        Ok(drift)
    }

    /// The self-check: compares the host with what was realised (bridges, TAPs, veths,
    /// namespaces, dnsmasq and its files, routes, addresses, NAT and host nft tables, sysctls)
    /// and re-converges what drifted, whoever caused it, along with objects whose earlier
    /// attempts failed once their backoff has passed. Cheap when nothing drifted: a few dumps
    /// and reads, no change. Call it every few seconds. Running VMs are not disturbed: a TAP is
    /// recreated under its name and put back in its bridge (docs/architecture.md, "Self-healing",
    /// says what a guest sees).
    pub async fn heal(&mut self) -> Result<ApplyStats> {
        let started = Instant::now();
        let Some(plan) = self.desired.clone() else {
            return Ok(ApplyStats::default());
        };
        if self.applied.is_none() {
            // The last apply failed as a whole (no netlink, no sysctl): try it again when due.
            if !self.apply_retry.ready(Instant::now()) {
                return Ok(ApplyStats::default());
            }
            return self.apply_plan(&plan, ApplyStats::default()).await;
        }
        let mut stats = ApplyStats::default();
        let drift = self.check().await?;
        stats.check_elapsed = started.elapsed();
        let now = Instant::now();
        let Some(mut applied) = self.applied.take() else {
            return Ok(stats);
        };
        for (key, why) in &drift {
            if key != HOST {
                applied.dirty.insert(key.clone());
            }
            let log = self
                .drift_log
                .entry(key.clone())
                .or_insert_with(backoff)
                .failed(now)
                .log;
            if let Some(unsaid) = log {
                tracing::warn!(object = %key, drift = %why, unsaid, "host networking drifted; repairing");
            }
        }
        stats.drift = drift.iter().map(|(k, w)| format!("{k}: {w}")).collect();
        // Objects that are gone need no drift log any more.
        let p = &applied.plan;
        self.drift_log.retain(|k, _| match k.split_once(':') {
            Some(("network", id)) => p.networks.contains_key(id),
            Some(("port", id)) => p.ports.contains_key(id),
            Some(("dhcp", id)) => p.dhcp.contains_key(id),
            Some(("router", id)) => p.routers.contains_key(id),
            _ => true,
        });
        let due = applied.dirty.iter().any(|k| due(&applied.retry, k, now))
            || (applied.firewall.is_none() && due(&applied.retry, FIREWALL, now));
        let r = if due {
            self.converge(&plan, &mut applied, false, &mut stats).await
        } else {
            Ok(())
        };
        self.applied = Some(applied);
        r?;
        let repaired: Vec<&String> = drift
            .iter()
            .map(|(k, _)| k)
            .filter(|k| {
                !stats
                    .errors
                    .iter()
                    .any(|e| e.starts_with(&format!("{k}: ")))
            })
            .collect();
        if !repaired.is_empty() {
            tracing::info!(objects = ?repaired, elapsed_ms = started.elapsed().as_millis() as u64,
                "host networking repaired");
        }
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    /// What drifted, as (object key, why). Objects already marked for a retry are not looked at.
    async fn check(&mut self) -> Result<Vec<(String, String)>> {
        let mut drift: Vec<(String, String)> = Vec::new();
        // Repaired here and now (nothing to converge); a failure is told, and the rest of the
        // check goes on.
        match self.host_sysctls(true).await {
            Ok(found) => drift.extend(found.into_iter().map(|d| (HOST.to_owned(), d))),
            Err(e) => {
                let log = self
                    .drift_log
                    .entry(format!("{HOST}-error"))
                    .or_insert_with(backoff)
                    .failed(Instant::now())
                    .log;
                if let Some(unsaid) = log {
                    tracing::error!(error = %format!("{e:#}"), unsaid, "cannot set the host's sysctls");
                }
            }
        }
        let links = self.host_links().await?;
        let view = check::View::read(links).await?;
        let Some(applied) = self.applied.as_ref() else {
            return Ok(drift);
        };
        let clean = |key: &String| !applied.dirty.contains(key);
        for (id, n) in &applied.plan.networks {
            let key = format!("network:{id}");
            if let Some(why) = check::network(&view, n).filter(|_| clean(&key)) {
                drift.push((key, why));
            }
        }
        for (id, p) in &applied.plan.ports {
            let key = format!("port:{id}");
            if let Some(why) = check::port(&view, p).filter(|_| clean(&key)) {
                drift.push((key, why));
            }
        }
        for (id, d) in &applied.plan.dhcp {
            let key = format!("dhcp:{id}");
            if !clean(&key) {
                continue;
            }
            let files = dhcp::Files::new(&self.cfg.state_dir, &self.cfg.shared_dir, d);
            let args = dhcp::args(d, &files, &self.cfg.dnsmasq_user);
            if let Some(why) = check::dhcp(&view, d, &files, &args).await {
                drift.push((key, why));
            }
        }
        for (id, r) in &applied.plan.routers {
            let key = format!("router:{id}");
            if !clean(&key) {
                continue;
            }
            if let Some(why) = check::router(&view, r).await {
                drift.push((key, why));
            }
        }
        if applied.firewall.is_some() {
            let tables = self.nft.tables().await?;
            for family in ["bridge", "inet"] {
                if !tables
                    .iter()
                    .any(|t| t == &format!("{family} {}", nft::TABLE))
                {
                    drift.push((
                        FIREWALL.into(),
                        format!("nft table {family} {} is missing", nft::TABLE),
                    ));
                    break;
                }
            }
        }
        let firewall_drift = drift.iter().any(|(k, _)| k == FIREWALL);
        if firewall_drift {
            if let Some(a) = self.applied.as_mut() {
                // Unknown what is left of it: rebuilt from scratch, in one transaction.
                a.firewall = None;
            }
        }
        Ok(drift)
    }

    async fn converge(
        &self,
        plan: &Plan,
        applied: &mut Applied,
        first: bool,
        stats: &mut ApplyStats,
    ) -> Result<()> {
        let links = self.links.as_ref().context("netlink handle")?;
        let ctx = l2::Ctx {
            host_ns: self.host_ns.clone(),
            host: links,
            state_dir: &self.cfg.state_dir,
            shared_dir: &self.cfg.shared_dir,
            dnsmasq_user: &self.cfg.dnsmasq_user,
            tap_owner: self.cfg.tap_owner,
            dnsmasq: &self.cfg.dnsmasq,
        };
        let rec = self.record();
        let old = applied.plan.clone();
        let l2_started = Instant::now();
        let now = Instant::now();
        // An object is (re)converged when it is new or changed, on the first apply, or when it
        // is marked (failed or drifted) and its backoff has passed.
        let skip = |applied: &Applied, key: &str, unchanged: bool| {
            !first && unchanged && (!applied.dirty.contains(key) || !due(&applied.retry, key, now))
        };
        // A removal is made at once, unless it failed before and its backoff has not passed.
        let wait = |applied: &Applied, key: &str| {
            !first && applied.dirty.contains(key) && !due(&applied.retry, key, now)
        };

        // Removals first (routers and DHCP before the bridges their veths sit in).
        for (id, r) in &old.routers {
            if !plan.routers.contains_key(id) {
                let key = format!("router:{id}");
                if wait(applied, &key) {
                    continue;
                }
                match l2::remove_router(&ctx, r).await {
                    Ok(()) => {
                        applied.plan.routers.remove(id);
                        let r = rec.del("routers", id);
                        stored(stats, &mut applied.retry, r);
                        done(applied, &key);
                        stats.routers.removed += 1;
                    }
                    Err(e) => failed(stats, applied, &key, e),
                }
            }
        }
        for (id, d) in &old.dhcp {
            if !plan.dhcp.contains_key(id) {
                let key = format!("dhcp:{id}");
                if wait(applied, &key) {
                    continue;
                }
                match l2::remove_dhcp(&ctx, d).await {
                    Ok(()) => {
                        applied.plan.dhcp.remove(id);
                        let r = rec.del("dhcp", id);
                        stored(stats, &mut applied.retry, r);
                        done(applied, &key);
                        stats.dhcp.removed += 1;
                    }
                    Err(e) => failed(stats, applied, &key, e),
                }
            }
        }
        for (id, p) in &old.ports {
            if !plan.ports.contains_key(id) {
                let key = format!("port:{id}");
                if wait(applied, &key) {
                    continue;
                }
                match l2::remove_port(&ctx, p).await {
                    Ok(()) => {
                        applied.plan.ports.remove(id);
                        let r = rec.del("ports", id);
                        stored(stats, &mut applied.retry, r);
                        done(applied, &key);
                        stats.ports.removed += 1;
                    }
                    Err(e) => failed(stats, applied, &key, e),
                }
            }
        }
        for (id, n) in &old.networks {
            if !plan.networks.contains_key(id) {
                let key = format!("network:{id}");
                if wait(applied, &key) {
                    continue;
                }
                match l2::remove_network(&ctx, n).await {
                    Ok(()) => {
                        applied.plan.networks.remove(id);
                        let r = rec.del("networks", id);
                        stored(stats, &mut applied.retry, r);
                        done(applied, &key);
                        stats.networks.removed += 1;
                    }
                    Err(e) => failed(stats, applied, &key, e),
                }
            }
        }

        // Additions and changes: bridges first, then what plugs into them.
        for (id, n) in &plan.networks {
            let key = format!("network:{id}");
            let prev = old.networks.get(id);
            if skip(applied, &key, prev == Some(n)) {
                continue;
            }
            let r = l2::converge_network(&ctx, prev, n).await;
            record(
                (&rec, "networks"),
                applied,
                |a| &mut a.plan.networks,
                (id, &key),
                prev,
                n,
                r,
                stats,
            );
            count(&mut stats.networks, prev, n);
        }
        for (id, p) in &plan.ports {
            let key = format!("port:{id}");
            let prev = old.ports.get(id);
            if skip(applied, &key, prev == Some(p)) {
                continue;
            }
            let r = l2::converge_port(&ctx, prev, p).await;
            record(
                (&rec, "ports"),
                applied,
                |a| &mut a.plan.ports,
                (id, &key),
                prev,
                p,
                r,
                stats,
            );
            count(&mut stats.ports, prev, p);
        }
        for (id, d) in &plan.dhcp {
            let key = format!("dhcp:{id}");
            let prev = old.dhcp.get(id);
            if skip(applied, &key, prev == Some(d)) {
                continue;
            }
            let full = first || applied.dirty.contains(&key);
            let r = l2::converge_dhcp(&ctx, prev, d, full).await;
            record(
                (&rec, "dhcp"),
                applied,
                |a| &mut a.plan.dhcp,
                (id, &key),
                prev,
                d,
                r,
                stats,
            );
            count(&mut stats.dhcp, prev, d);
        }
        for (id, rt) in &plan.routers {
            let key = format!("router:{id}");
            let prev = old.routers.get(id);
            if skip(applied, &key, prev == Some(rt)) {
                continue;
            }
            let full = first || applied.dirty.contains(&key);
            let r = l2::converge_router(&ctx, prev, rt, full).await;
            record(
                (&rec, "routers"),
                applied,
                |a| &mut a.plan.routers,
                (id, &key),
                prev,
                rt,
                r,
                stats,
            );
            count(&mut stats.routers, prev, rt);
        }

        stats.l2_elapsed = l2_started.elapsed();

        // Groups are nft-only.
        for (id, g) in &plan.groups {
            count(&mut stats.security_groups, old.groups.get(id), g);
        }
        stats.security_groups.removed = old
            .groups
            .keys()
            .filter(|k| !plan.groups.contains_key(*k))
            .count();
        applied.plan.groups = plan.groups.clone();

        // The host firewall: one transaction (a rebuild waits for its backoff after a failure).
        let want = firewall(plan);
        let (script, full) = match &applied.firewall {
            Some(have) => (incremental(have, &want), false),
            None if first || due(&applied.retry, FIREWALL, now) => {
                (full_script(&want, &self.cfg.guest_open_ports), true)
            }
            None => return Ok(()),
        };
        stats.full_rebuild = full;
        stats.nft_lines = script.as_str().lines().count();
        let t = Instant::now();
        let r = self.nft.apply(&script).await;
        stats.nft_elapsed = t.elapsed();
        match r {
            Ok(()) => {
                applied.firewall = Some(want);
                done(applied, FIREWALL);
            }
            Err(e) => {
                // Unknown what the kernel holds now: rebuild from scratch next time.
                applied.firewall = None;
                failed(stats, applied, FIREWALL, e);
            }
        }
        Ok(())
    }

    /// Removes everything this data plane created: namespaces (with their dnsmasq), VM taps,
    /// bridges and the nft tables. Best effort: every step is tried, failures are logged.
    pub async fn teardown_all(&mut self) {
        self.desired = None;
        let mut applied = self.applied.take().unwrap_or_else(|| Applied {
            plan: self.record().load(),
            ..Default::default()
        });
        if let Err(e) = self.host_links().await {
            tracing::warn!(error = %format!("{e:#}"), "teardown: no netlink handle");
            return;
        }
        let Some(links) = self.links.as_ref() else {
            return;
        };
        let ctx = l2::Ctx {
            host_ns: self.host_ns.clone(),
            host: links,
            state_dir: &self.cfg.state_dir,
            shared_dir: &self.cfg.shared_dir,
            dnsmasq_user: &self.cfg.dnsmasq_user,
            tap_owner: self.cfg.tap_owner,
            dnsmasq: &self.cfg.dnsmasq,
        };
        let plan = std::mem::take(&mut applied.plan);
        let warn = |what: &str, e: anyhow::Error| {
            tracing::warn!(object = what, error = %format!("{e:#}"), "teardown step failed");
        };
        for r in plan.routers.values() {
            if let Err(e) = l2::remove_router(&ctx, r).await {
                warn(r.id.as_str(), e);
            }
        }
        for d in plan.dhcp.values() {
            if let Err(e) = l2::remove_dhcp(&ctx, d).await {
                warn(d.network_id.as_str(), e);
            }
        }
        for p in plan.ports.values() {
            if let Err(e) = l2::remove_port(&ctx, p).await {
                warn(p.id.as_str(), e);
            }
        }
        for n in plan.networks.values() {
            if let Err(e) = l2::remove_network(&ctx, n).await {
                warn(n.id.as_str(), e);
            }
        }
        let mut s = Script::new();
        nft::drop_host_tables(&mut s);
        if let Err(e) = self.nft.apply(&s).await {
            warn("nft tables", e);
        }
        let _ = std::fs::remove_dir_all(self.record().dir);
        let _ = std::fs::remove_dir(self.cfg.state_dir.join("dhcp"));
        let _ = std::fs::remove_dir(self.cfg.shared_dir.join("dhcp"));
        self.applied = None;
    }
}

/// The key of the host firewall (both host nft tables) in `dirty` and `retry`.
const FIREWALL: &str = "firewall";
/// The key of the host's own settings (sysctls) in drift reports.
const HOST: &str = "host";

/// Whether the object `key` may be tried now (never failed, or its backoff has passed).
fn due(retry: &BTreeMap<String, Backoff>, key: &str, now: Instant) -> bool {
    retry.get(key).is_none_or(|b| b.ready(now))
}

/// `key` is realised: no longer marked, its failures (if any) over.
fn done(applied: &mut Applied, key: &str) {
    applied.dirty.remove(key);
    if let Some(mut b) = applied.retry.remove(key) {
        let n = b.succeeded();
        if n > 0 {
            tracing::info!(
                object = key,
                failures = n,
                "network object realised after failures"
            );
        }
    }
}

/// `key` failed: marked for a retry after its backoff; logged once per interval.
fn failed(stats: &mut ApplyStats, applied: &mut Applied, key: &str, e: anyhow::Error) {
    applied.dirty.insert(key.to_owned());
    fail(stats, &mut applied.retry, key, e);
}

fn fail(
    stats: &mut ApplyStats,
    retry: &mut BTreeMap<String, Backoff>,
    key: &str,
    e: anyhow::Error,
) {
    let f = retry
        .entry(key.to_owned())
        .or_insert_with(backoff)
        .failed(Instant::now());
    if let Some(unsaid) = f.log {
        tracing::warn!(object = key, error = %format!("{e:#}"), attempt = f.attempt,
            retry_in_s = f.retry_in.as_secs(), unsaid, "network object not realised");
    }
    stats.errors.push(format!("{key}: {e:#}"));
}

fn count<T: PartialEq>(c: &mut Counts, prev: Option<&T>, new: &T) {
    match prev {
        None => c.added += 1,
        Some(p) if p != new => c.changed += 1,
        Some(_) => {}
    }
}

/// Records the outcome of converging one object: on success the new version; on failure the
/// version that may exist (the new one if it was being created, else the old one, so the retry
/// also removes what the old one had), marked for retry.
#[allow(clippy::too_many_arguments)]
fn record<T: Clone + Serialize>(
    (rec, kind): (&Record, &str),
    applied: &mut Applied,
    map: impl Fn(&mut Applied) -> &mut BTreeMap<String, T>,
    (id, key): (&str, &str),
    prev: Option<&T>,
    new: &T,
    r: Result<()>,
    stats: &mut ApplyStats,
) {
    let kept = match r {
        Ok(()) => {
            done(applied, key);
            new
        }
        Err(e) => {
            failed(stats, applied, key, e);
            prev.unwrap_or(new)
        }
    };
    map(applied).insert(id.to_owned(), kept.clone());
    let r = rec.put(kind, id, kept);
    stored(stats, &mut applied.retry, r);
}

/// A record that cannot be written only weakens cleanup after a restart: reported, not fatal.
fn stored(stats: &mut ApplyStats, retry: &mut BTreeMap<String, Backoff>, r: Result<()>) {
    match r {
        Ok(()) => {
            retry.remove("record");
        }
        Err(e) => fail(stats, retry, "record", e),
    }
}

/// The firewall for `plan` (dispatch keys included: a pure function of the plan).
fn firewall(plan: &Plan) -> Firewall {
    let filters = plan.filters();
    let mut keys = model::dispatch_keys(&filters);
    let ports = filters
        .into_iter()
        .map(|(id, f)| {
            let k = keys.remove(&id).unwrap_or_default();
            (id, (f, k))
        })
        .collect();
    Firewall {
        zones: plan
            .networks
            .values()
            .map(|n| (n.bridge.clone(), n.zone))
            .collect(),
        sets: plan.member_sets(),
        groups: plan.groups.clone(),
        ports,
    }
}

fn full_script(want: &Firewall, guest_open: &[u16]) -> Script {
    let ports: Vec<(&PortFilter, &[KeyRange])> = want
        .ports
        .values()
        .map(|(f, k)| (f, k.as_slice()))
        .collect();
    nft::full_host_script(&want.zones, &want.sets, &want.groups, &ports, guest_open)
}

/// Only what differs, ordered so every reference is valid at each step of the transaction.
fn incremental(have: &Firewall, want: &Firewall) -> Script {
    let mut s = Script::new();
    // 1. Ports going or changing let go of their elements and jumps; keys that move let go first.
    let mut refill = Vec::new();
    let mut more_keys = Vec::new();
    for (id, (of, ok)) in &have.ports {
        match want.ports.get(id) {
            Some((nf, nk)) if nf == of => {
                if nk != ok {
                    let gone: Vec<KeyRange> =
                        ok.iter().filter(|k| !nk.contains(k)).copied().collect();
                    let new: Vec<KeyRange> =
                        nk.iter().filter(|k| !ok.contains(k)).copied().collect();
                    nft::del_keys(&mut s, of, &gone);
                    more_keys.push((nf, new));
                }
            }
            Some((nf, nk)) if nf.device == of.device => {
                nft::clear_port(&mut s, of, ok);
                refill.push((nf, nk));
            }
            _ => nft::del_port(&mut s, of, ok),
        }
    }
    // 2. Member sets, 3. group chains (which reference sets).
    for (id, members) in &want.sets {
        match have.sets.get(id) {
            None => nft::add_member_set(&mut s, id, members),
            Some(old) if old != members => nft::update_member_set(&mut s, id, old, members),
            Some(_) => {}
        }
    }
    for (id, g) in &want.groups {
        match have.groups.get(id) {
            None => nft::add_group(&mut s, g),
            Some(old) if old.rules != g.rules => nft::update_group(&mut s, g),
            Some(_) => {}
        }
    }
    // 4. Ports (which jump to group chains).
    for (nf, nk) in refill {
        nft::refill_port(&mut s, nf, nk);
    }
    for (nf, nk) in more_keys {
        nft::add_keys(&mut s, nf, &nk);
    }
    for (id, (nf, nk)) in &want.ports {
        let existing = have
            .ports
            .get(id)
            .is_some_and(|(of, _)| of.device == nf.device);
        if !existing {
            nft::add_port(&mut s, nf, nk);
        }
    }
    // 5. Unreferenced groups, then sets.
    for (id, g) in &have.groups {
        if !want.groups.contains_key(id) {
            nft::del_group(&mut s, &g.id);
        }
    }
    for id in have.sets.keys() {
        if !want.sets.contains_key(id) {
            nft::del_member_set(&mut s, id);
        }
    }
    // 6. Zones.
    for (b, z) in &have.zones {
        if want.zones.get(b) != Some(z) {
            nft::del_zone(&mut s, b, *z);
        }
    }
    for (b, z) in &want.zones {
        if have.zones.get(b) != Some(z) {
            nft::add_zone(&mut s, b, *z);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use onestack_core::network::proto;

    fn state(n_ports: usize) -> NetworkState {
        let ports = (0..n_ports)
            .map(|i| proto::HostPort {
                id: format!("port{i}"),
                network_id: "net1".into(),
                kind: proto::PortKind::Vm,
                device: format!("tapport{i}"),
                mac: format!("fa:16:3e:00:01:{i:02x}"),
                ips: vec![format!("198.18.1.{}", 10 + i)],
                admin_state_up: true,
                port_security: true,
                security_groups: vec!["g1".into()],
                allowed_address_pairs: vec![],
            })
            .collect();
        NetworkState {
            generation: 1,
            networks: vec![proto::HostNetwork {
                id: "net1".into(),
                bridge: "brqnet1".into(),
                mtu: 1500,
                external: false,
                zone: 1,
                host_address: None,
                subnets: vec![],
                tunnel: None,
            }],
            ports,
            security_groups: vec![proto::HostSecurityGroup {
                id: "g1".into(),
                member_ips: (0..n_ports)
                    .map(|i| format!("198.18.1.{}", 10 + i))
                    .collect(),
                rules: vec![proto::HostRule {
                    id: "r1".into(),
                    direction: proto::Direction::Egress,
                    ethertype: "IPv4".into(),
                    protocol: None,
                    port_range_min: None,
                    port_range_max: None,
                    remote_ip_prefix: None,
                    remote_group_id: None,
                }],
            }],
            dhcp: vec![],
            routers: vec![],
        }
    }

    fn fw(n: usize) -> Firewall {
        let (plan, rejected) = Plan::from_state(&state(n));
        assert!(rejected.is_empty(), "{rejected:?}");
        firewall(&plan)
    }

    #[test]
    fn adding_a_port_is_local_and_constant_size() {
        let one = fw(1);
        let two = fw(2);
        let s = incremental(&one, &two);
        let text = s.as_str();
        assert!(!text.contains("port0"), "untouched port appears:\n{text}");
        assert!(text.contains("add chain inet onestack pi-tapport1"));
        assert!(text.contains("add element inet onestack sgm-g1 { 198.18.1.11 }"));
        // The script for port #101 is as long as the one for port #2.
        let hundred = fw(100);
        let more = fw(101);
        let s101 = incremental(&hundred, &more);
        assert_eq!(s101.as_str().lines().count(), text.lines().count());
        assert!(incremental(&more, &more).is_empty());
    }

    #[test]
    fn removing_a_port_deletes_only_its_objects() {
        let two = fw(2);
        let one = fw(1);
        let text = incremental(&two, &one).as_str().to_owned();
        assert!(text.contains("delete chain inet onestack pi-tapport1"));
        assert!(text.contains("delete element inet onestack sgm-g1 { 198.18.1.11 }"));
        assert!(!text.contains("port0"));
        assert!(!text.contains("table"));
    }

    #[test]
    fn overlapping_pairs_are_not_dispatched_twice() {
        let mut st = state(2);
        st.ports[0].allowed_address_pairs = vec![proto::AddressPair {
            ip_address: "198.18.1.0/28".into(),
            mac_address: "fa:16:3e:00:02:01".into(),
        }];
        let (plan, _) = Plan::from_state(&st);
        let before = firewall(&plan);
        // Each port owns its fixed IP; port0's pair gets the rest of the /28.
        let keys = |f: &Firewall, p: &str| -> Vec<String> {
            f.ports[p].1.iter().map(|k| k.to_string()).collect()
        };
        assert_eq!(
            keys(&before, "port0"),
            ["198.18.1.0-198.18.1.10", "198.18.1.12/30"]
        );
        assert_eq!(keys(&before, "port1"), ["198.18.1.11"]);
        // Deleting port1 hands .11 to port0's pair: delete first, then add, one transaction.
        st.ports.pop();
        let (plan, _) = Plan::from_state(&st);
        let after = firewall(&plan);
        assert_eq!(keys(&after, "port0"), ["198.18.1.0/28"]);
        let text = incremental(&before, &after).as_str().to_owned();
        let del = text.find("delete element inet onestack egress { \"brqnet1\" . 198.18.1.11 }");
        let add = text.find(
            "add element inet onestack egress { \"brqnet1\" . 198.18.1.0/28 : goto po-tapport0 }",
        );
        assert!(del.is_some() && add.is_some() && del < add, "{text}");
    }

    #[test]
    fn bad_entries_are_rejected_not_fatal() {
        let mut st = state(2);
        st.ports[0].device = "tap0; flush ruleset".into();
        st.ports[1].mac = "zz".into();
        st.security_groups[0].rules[0].remote_ip_prefix = Some("1.2.3.4/40".into());
        let (plan, rejected) = Plan::from_state(&st);
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        assert!(plan.ports.is_empty());
        assert_eq!(plan.networks.len(), 1);
    }
}
