//! The controller's view of the cloud, computed at scrape time from the store: servers by state,
//! volumes by status, and each compute host's capacity, allocation and liveness (the figures
//! `openstack hypervisor show` gives).

use super::{Exposition, Kind};
use crate::compute::state::{VmState, ALL_VM_STATES};
use crate::compute::ComputeService;
use crate::CoreResult;
use std::collections::BTreeMap;

/// Writes the cloud's gauges. Nothing is written unless every query answered, so a scrape never
/// shows half a picture.
pub async fn render(compute: &ComputeService, out: &mut Exposition) -> CoreResult<()> {
    let store = compute.store();
    let by_state = store.count_instances_by_vm_state().await?;
    let volumes = store.count_volumes_by_status().await?;
    let hosts = compute.list_hosts().await?;
    let usage = compute.host_usage().await?;

    // Every state is shown, at 0 when empty, so a series does not vanish with its last server.
    let mut states: BTreeMap<String, i64> = ALL_VM_STATES
        .iter()
        .filter(|s| **s != VmState::Deleted)
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for (state, n) in by_state {
        *states.entry(state).or_default() += n;
    }
    out.family(
        "onestack_instances",
        "Servers that are not deleted, by vm_state.",
        Kind::Gauge,
    );
    for (state, n) in &states {
        out.sample("onestack_instances", &[("vm_state", state)], *n as f64);
    }

    out.family("onestack_volumes", "Volumes by status.", Kind::Gauge);
    for (status, n) in &volumes {
        out.sample("onestack_volumes", &[("status", status)], *n as f64);
    }

    let empty = onestack_store::HostUsage::default();
    type Figure = fn(&onestack_store::HostRecord, &onestack_store::HostUsage, bool) -> f64;
    let per_host: [(&str, &str, Figure); 9] = [
        (
            "onestack_host_up",
            "1 when the compute host heartbeats and is not forced down (the hypervisor's state).",
            |_, _, up| f64::from(u8::from(up)),
        ),
        (
            "onestack_host_enabled",
            "1 when the compute service of the host is enabled (the scheduler may place on it).",
            |h, _, _| f64::from(u8::from(h.enabled)),
        ),
        (
            "onestack_host_vcpus",
            "Physical CPUs the host reported.",
            |h, _, _| h.vcpus as f64,
        ),
        (
            "onestack_host_vcpus_used",
            "vCPUs of the host's servers.",
            |_, u, _| u.vcpus as f64,
        ),
        (
            "onestack_host_memory_mb",
            "Memory the host reported, in MiB.",
            |h, _, _| h.memory_mb as f64,
        ),
        (
            "onestack_host_memory_mb_used",
            "Memory of the host's servers, in MiB.",
            |_, u, _| u.memory_mb as f64,
        ),
        (
            "onestack_host_disk_gb",
            "Local disk the host reported, in GiB.",
            |h, _, _| h.local_gb as f64,
        ),
        (
            "onestack_host_disk_gb_used",
            "Root and ephemeral disk of the host's servers, in GiB.",
            |_, u, _| u.disk_gb as f64,
        ),
        (
            "onestack_host_instances",
            "Servers placed on the host.",
            |_, u, _| u.instances as f64,
        ),
    ];
    for (name, help, figure) in per_host {
        out.family(name, help, Kind::Gauge);
        for h in &hosts {
            let u = usage.get(&h.host).unwrap_or(&empty);
            out.sample(
                name,
                &[("host", &h.host)],
                figure(h, u, compute.host_alive(h)),
            );
        }
    }
    Ok(())
}
