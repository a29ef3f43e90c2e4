//! The leader's singleton work for compute: finishing what a controller that died in the middle
//! of a request left behind. A create first allocates the server's ports, then inserts its
//! record, then places it; a controller killed between those steps leaves ports bound to no
//! server, or a server no one will place. A delete cut after the record went leaves ports too.

use super::state::{TaskState, VmState};
use super::ComputeService;
use crate::CoreResult;
use onestack_store::{Expect, SqlValue};
use std::collections::HashSet;
use std::time::Duration;

/// How long a step may look unfinished before the leader takes it for abandoned: far longer than
/// a live request takes between its steps (milliseconds), so a request still running is never
/// overtaken.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(30);

fn older_than(stamp: &str, age: Duration) -> bool {
    match chrono::DateTime::parse_from_rfc3339(stamp) {
        Ok(t) => {
            chrono::Utc::now().signed_duration_since(t)
                > chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
        }
        Err(_) => false,
    }
}

impl ComputeService {
    /// Servers still waiting for a host `grace` after their last change. An image-backed one is
    /// placed now, as its create would have done; a volume-backed one (its root volume was
    /// being prepared by the controller that stopped) goes to ERROR with a fault saying why.
    /// Returns how many were handled.
    pub async fn recover_unscheduled(&self, grace: Duration) -> CoreResult<usize> {
        let mut n = 0;
        for inst in self.store.list_instances(None, false).await? {
            let waiting = inst.host.is_none()
                && inst.task_state.as_deref() == Some(TaskState::Scheduling.as_str());
            if !waiting || !older_than(&inst.updated_at, grace) {
                continue;
            }
            let volume_backed = !self.store.instance_volumes(&inst.id).await?.is_empty();
            if volume_backed {
                let t = crate::image::now();
                let changed = self
                    .store
                    .update_instance(
                        &inst.id,
                        &Expect::TaskIn(vec![Some(TaskState::Scheduling.as_str().into())]),
                        &vec![
                            ("vm_state", VmState::Error.as_str().into()),
                            ("task_state", SqlValue::Text(None)),
                            ("fault_code", 500i64.into()),
                            (
                                "fault_message",
                                "Build of instance aborted: the controller that accepted it \
                                 stopped while preparing its root volume."
                                    .into(),
                            ),
                            ("fault_details", "".into()),
                            ("fault_created", t.clone().into()),
                            ("updated_at", t.into()),
                        ],
                    )
                    .await;
                if changed.is_ok() {
                    tracing::warn!(instance = %inst.id, "abandoned volume-backed create set to ERROR");
                    n += 1;
                }
                continue;
            }
            tracing::warn!(instance = %inst.id, "placing a server whose create was cut off");
            let mut inst = inst;
            let zone = inst.availability_zone.clone();
            self.schedule(&mut inst, zone, None).await?;
            n += 1;
        }
        if n > 0 {
            self.notify();
        }
        Ok(n)
    }

    /// Ports bound to servers that do not exist (or are deleted) and have not changed for
    /// `grace`: released as a delete of those servers would release them (ports the server
    /// made go, the user's are unbound). Returns how many servers' ports were released.
    pub async fn reap_orphan_ports(&self, grace: Duration) -> CoreResult<usize> {
        let Some(net) = self.network.get() else {
            return Ok(0);
        };
        // Bindings first, then the servers: a server created in between is then known.
        let bindings = net.compute_port_bindings().await?;
        if bindings.is_empty() {
            return Ok(0);
        }
        let live: HashSet<String> = self
            .store
            .list_instances(None, false)
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        let orphans: HashSet<String> = bindings
            .into_iter()
            .filter(|(server, changed)| !live.contains(server) && older_than(changed, grace))
            .map(|(server, _)| server)
            .collect();
        for server in &orphans {
            tracing::warn!(server = %server, "releasing the ports of a server that does not exist");
            net.release_server_ports(server).await?;
        }
        Ok(orphans.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_read_from_the_stored_stamps() {
        let old = (chrono::Utc::now() - chrono::Duration::seconds(60))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        assert!(older_than(&old, Duration::from_secs(30)));
        assert!(!older_than(&crate::image::now(), Duration::from_secs(30)));
        assert!(
            !older_than("garbage", Duration::ZERO),
            "unknown is never old"
        );
    }
}
