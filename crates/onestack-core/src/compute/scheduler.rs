//! Placement: filters (enabled, alive, availability zone, enough vCPU/RAM/disk under the
//! allocation ratios) and a spreading weigher (most free RAM wins), as Nova's filter scheduler
//! does by default. Pure: the caller serializes placements so capacity is never double-booked.

use onestack_store::{HostRecord, HostUsage};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug)]
pub struct Ratios {
    pub cpu: f64,
    pub ram: f64,
    pub disk: f64,
    /// Memory kept for the host itself (Nova's `reserved_host_memory_mb`).
    pub reserved_ram_mb: i64,
}

impl Default for Ratios {
    /// Nova's initial allocation ratios.
    fn default() -> Self {
        Ratios {
            cpu: 4.0,
            ram: 1.0,
            disk: 1.0,
            reserved_ram_mb: 512,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Demand {
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_gb: i64,
    pub availability_zone: Option<String>,
    /// Admin's `zone:host` forced placement.
    pub host: Option<String>,
}

/// Why no host fits, per host (logged; the user sees Nova's NoValidHost message).
#[derive(Clone, Debug, PartialEq)]
pub struct NoValidHost(pub Vec<String>);

pub const NO_VALID_HOST: &str = "No valid host was found. There are not enough hosts available.";

/// Placements decided, by what asked for one (`boot`, `resize`, `migrate`) and how it ended.
static DECISIONS: crate::metrics::Counter = crate::metrics::Counter::new(
    "onestack_scheduler_decisions_total",
    "Scheduling decisions, by kind (boot, resize, migrate) and result (placed, no_valid_host).",
);

/// Counts one placement decision.
pub fn count_decision(kind: &'static str, placed: bool) {
    let result = if placed { "placed" } else { "no_valid_host" };
    DECISIONS.inc(&[("kind", kind), ("result", result)]);
}

/// Makes every decision series exist at 0 from the process's start.
pub fn declare_metrics() {
    for kind in ["boot", "resize", "migrate"] {
        for result in ["placed", "no_valid_host"] {
            DECISIONS.declare(&[("kind", kind), ("result", result)]);
        }
    }
}

/// Picks a host for `demand`. `alive` says whether a host heartbeats recently.
pub fn pick(
    hosts: &[HostRecord],
    usage: &HashMap<String, HostUsage>,
    demand: &Demand,
    ratios: &Ratios,
    alive: impl Fn(&HostRecord) -> bool,
) -> Result<String, NoValidHost> {
    let mut reasons = Vec::new();
    let mut best: Option<(f64, &HostRecord)> = None;
    let empty = HostUsage::default();
    for h in hosts {
        let u = usage.get(&h.host).unwrap_or(&empty);
        let why = if !h.enabled {
            Some("disabled")
        } else if h.forced_down || !alive(h) {
            Some("not alive")
        } else if demand
            .availability_zone
            .as_deref()
            .is_some_and(|z| z != h.availability_zone)
        {
            Some("in another availability zone")
        } else if demand.host.as_deref().is_some_and(|x| x != h.host) {
            Some("not the requested host")
        } else {
            None
        };
        if let Some(w) = why {
            reasons.push(format!("{}: {w}", h.host));
            continue;
        }
        let free_cpu = h.vcpus as f64 * ratios.cpu - u.vcpus as f64;
        let free_ram =
            (h.memory_mb - ratios.reserved_ram_mb) as f64 * ratios.ram - u.memory_mb as f64;
        let free_disk = h.local_gb as f64 * ratios.disk - u.disk_gb as f64;
        if free_cpu < demand.vcpus as f64 {
            reasons.push(format!("{}: not enough vCPUs", h.host));
        } else if free_ram < demand.memory_mb as f64 {
            reasons.push(format!("{}: not enough RAM", h.host));
        } else if free_disk < demand.disk_gb as f64 {
            reasons.push(format!("{}: not enough disk", h.host));
        } else if best.is_none_or(|(w, b)| free_ram > w || (free_ram == w && h.host < b.host)) {
            best = Some((free_ram, h));
        }
    }
    best.map(|(_, h)| h.host.clone())
        .ok_or(NoValidHost(reasons))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(name: &str, vcpus: i64, mem: i64, disk: i64) -> HostRecord {
        HostRecord {
            id: name.into(),
            num: 1,
            host: name.into(),
            host_ip: "198.18.0.1".into(),
            agent_url: String::new(),
            vcpus,
            memory_mb: mem,
            local_gb: disk,
            cpu_info: "{}".into(),
            hypervisor_type: "QEMU".into(),
            hypervisor_version: 7002000,
            virt_type: "qemu".into(),
            availability_zone: "nova".into(),
            enabled: true,
            disabled_reason: None,
            forced_down: false,
            last_seen: 0,
            generation: 0,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn demand(vcpus: i64, mem: i64, disk: i64) -> Demand {
        Demand {
            vcpus,
            memory_mb: mem,
            disk_gb: disk,
            availability_zone: None,
            host: None,
        }
    }

    #[test]
    fn spreads_by_free_ram_and_filters() {
        let hosts = vec![host("a", 4, 8704, 100), host("b", 4, 4608, 100)];
        let mut usage = HashMap::new();
        let r = Ratios::default();
        assert_eq!(
            pick(&hosts, &usage, &demand(1, 512, 1), &r, |_| true),
            Ok("a".into())
        );
        usage.insert(
            "a".into(),
            HostUsage {
                instances: 1,
                vcpus: 1,
                memory_mb: 6000,
                disk_gb: 1,
            },
        );
        assert_eq!(
            pick(&hosts, &usage, &demand(1, 512, 1), &r, |_| true),
            Ok("b".into())
        );
        // Dead and disabled hosts are skipped.
        assert!(pick(&hosts, &usage, &demand(1, 512, 1), &r, |_| false).is_err());
        let mut az = demand(1, 512, 1);
        az.availability_zone = Some("other".into());
        assert!(pick(&hosts, &usage, &az, &r, |_| true).is_err());
        // Too big for either host.
        assert!(pick(&hosts, &usage, &demand(1, 9000, 1), &r, |_| true).is_err());
        assert!(pick(&hosts, &usage, &demand(17, 512, 1), &r, |_| true).is_err());
    }

    proptest! {
        /// Placing servers one after another (as the serialized scheduler does) never puts more
        /// on a host than its capacity under the ratios.
        #[test]
        fn never_oversubscribes(
            sizes in prop::collection::vec((1i64..5, 64i64..4096, 0i64..40), 1..80),
            caps in prop::collection::vec((1i64..9, 1024i64..16384, 10i64..200), 1..4),
        ) {
            let hosts: Vec<HostRecord> = caps.iter().enumerate()
                .map(|(i, (c, m, d))| host(&format!("h{i}"), *c, *m, *d)).collect();
            let r = Ratios::default();
            let mut usage: HashMap<String, HostUsage> = HashMap::new();
            for (c, m, d) in sizes {
                if let Ok(h) = pick(&hosts, &usage, &demand(c, m, d), &r, |_| true) {
                    let u = usage.entry(h).or_default();
                    u.instances += 1;
                    u.vcpus += c;
                    u.memory_mb += m;
                    u.disk_gb += d;
                }
            }
            for h in &hosts {
                if let Some(u) = usage.get(&h.host) {
                    prop_assert!(u.vcpus as f64 <= h.vcpus as f64 * r.cpu);
                    prop_assert!(u.memory_mb as f64 <= (h.memory_mb - r.reserved_ram_mb) as f64 * r.ram);
                    prop_assert!(u.disk_gb as f64 <= h.local_gb as f64 * r.disk);
                }
            }
        }
    }
}
