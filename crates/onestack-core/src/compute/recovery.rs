//! The leader's singleton work for compute: finishing what a controller that died in the middle
//! of a request left behind. A create first allocates the server's ports, then inserts its
//! record, then places it; a controller killed between those steps leaves ports bound to no
//! server, or a server no one will place. A delete cut after the record went leaves ports too.

use super::state::TaskState;
use super::ComputeService;
use crate::CoreResult;
use onestack_store::Expect;
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
        for mut inst in self.store.instances_awaiting_host().await? {
            if !older_than(&inst.updated_at, grace) {
                continue;
            }
            // One server that cannot be handled now does not hold up the others.
            let r = if self.store.instance_volumes(&inst.id).await?.is_empty() {
                tracing::warn!(instance = %inst.id, "placing a server whose create was cut off");
                let zone = inst.availability_zone.clone();
                self.schedule(&mut inst, zone, None).await
            } else {
                tracing::warn!(instance = %inst.id, "abandoned volume-backed create set to ERROR");
                let expect = Expect::TaskIn(vec![Some(TaskState::Scheduling.as_str().into())]);
                let fault = super::build_fault(
                    "Build of instance aborted: the controller that accepted it stopped while \
                     preparing its root volume.",
                );
                self.store
                    .update_instance(&inst.id, &expect, &fault)
                    .await
                    .map(|_| ())
                    .map_err(Into::into)
            };
            match r {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(instance = %inst.id, error = %e, "cannot recover it yet"),
            }
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
        let live: HashSet<String> = self.store.live_instance_ids().await?.into_iter().collect();
        let orphans: HashSet<String> = bindings
            .into_iter()
            .filter(|(server, changed)| !live.contains(server) && older_than(changed, grace))
            .map(|(server, _)| server)
            .collect();
        let mut n = 0;
        for server in &orphans {
            tracing::warn!(server = %server, "releasing the ports of a server that does not exist");
            match net.release_server_ports(server).await {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(server = %server, error = %e, "cannot release them yet"),
            }
        }
        Ok(n)
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
