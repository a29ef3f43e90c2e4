//! The agent's `/metrics`: its reconcile loop (passes and how long each took to act on a
//! desired state), the tasks it ran on VMs, its own HTTP requests, its VMs by power state, and
//! its host networking's self-check (repairs, objects failing).
//!
//! VM states are the ones the workers last observed (every few seconds), kept here, rather than
//! asked of QEMU at scrape time: a scrape must never take a VM's monitor from an operation.

use crate::driver::PowerState;
use onestack_core::metrics::{self, Counter, Exposition, Gauge, Histogram, Kind};
use std::collections::HashMap;
use std::sync::Mutex;

pub static RECONCILE_DURATION: Histogram = Histogram::new(
    "onestack_agent_reconcile_duration_seconds",
    "Time a reconcile pass took to act on a desired state from the controller (dispatch to the \
     instance workers and reaping of orphans; the long poll before it is not counted).",
    metrics::LATENCY_BUCKETS,
);

pub static RECONCILE_PASSES: Counter = Counter::new(
    "onestack_agent_reconcile_passes_total",
    "Reconcile passes, by result (error: the desired state could not be fetched).",
);

pub static TASK_DURATION: Histogram = Histogram::new(
    "onestack_agent_task_duration_seconds",
    "Time a task on a VM (spawning, powering-off, rebooting, …) took on this host, by task and \
     result.",
    metrics::SLOW_BUCKETS,
);

pub static INSTANCES: Gauge = Gauge::new(
    "onestack_agent_instances",
    "Servers the controller assigns to this host (its last desired state).",
);

pub static NETWORK_REPAIRS: Counter = Counter::new(
    "onestack_agent_network_repairs_total",
    "Host networking objects the self-check found drifted (deleted, detached, flushed, dead) and \
     re-converged, by kind (network, port, dhcp, router, firewall, host).",
);

pub static NETWORK_FAILING: Gauge = Gauge::new(
    "onestack_agent_network_failing",
    "Host networking objects not realised at the last try, waiting for their retry.",
);

pub static NETWORK_CHECK_DURATION: Histogram = Histogram::new(
    "onestack_agent_network_check_duration_seconds",
    "Time the host networking self-check took to compare the host with what it realised.",
    metrics::LATENCY_BUCKETS,
);

/// The kinds of `onestack_agent_network_repairs_total`.
pub const NETWORK_KINDS: &[&str] = &["network", "port", "dhcp", "router", "firewall", "host"];

static HTTP_REQUESTS: Counter = Counter::new(
    "onestack_agent_http_requests_total",
    "Requests to the agent's own endpoint, by method and status code.",
);

const DOMAINS: &str = "onestack_agent_domains";

/// What every power state is called in `onestack_agent_domains{state=…}` (Nova's names).
const POWER_STATES: &[(PowerState, &str)] = &[
    (PowerState::NoState, "nostate"),
    (PowerState::Running, "running"),
    (PowerState::Paused, "paused"),
    (PowerState::Shutdown, "shutdown"),
    (PowerState::Crashed, "crashed"),
    (PowerState::Suspended, "suspended"),
];

/// The power state each managed VM was last seen in, by instance id.
#[derive(Default)]
pub struct AgentMetrics {
    power: Mutex<HashMap<String, PowerState>>,
}

impl AgentMetrics {
    pub fn saw(&self, id: &str, state: PowerState) {
        self.lock().insert(id.to_string(), state);
    }

    /// The VM is no longer this host's (deleted, migrated away, reaped).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PowerState>> {
        self.power.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process's registry, then the VMs by power state (every state, 0 when none).
    pub fn text(&self) -> String {
        let mut out = Exposition::default();
        metrics::global().render(&mut out);
        let mut counts: Vec<(&str, u64)> = POWER_STATES.iter().map(|(_, n)| (*n, 0)).collect();
        for state in self.lock().values() {
            if let Some(i) = POWER_STATES.iter().position(|(s, _)| s == state) {
                counts[i].1 += 1;
            }
        }
        out.family(
            DOMAINS,
            "VMs this agent manages, by the power state it last observed.",
            Kind::Gauge,
        );
        for (name, n) in counts {
            out.sample(DOMAINS, &[("state", name)], n as f64);
        }
        out.into_string()
    }
}

/// Counts a request to the agent's endpoint.
pub fn count_request(method: &axum::http::Method, status: axum::http::StatusCode) {
    let method = match *method {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::HEAD => "HEAD",
        _ => "other",
    };
    HTTP_REQUESTS.inc(&[("method", method), ("status", &status.as_u16().to_string())]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_counted_by_last_seen_state() {
        let m = AgentMetrics::default();
        m.saw("a", PowerState::Running);
        m.saw("b", PowerState::Running);
        m.saw("c", PowerState::Shutdown);
        m.saw("b", PowerState::Paused);
        m.forget("c");
        let text = m.text();
        for line in [
            "onestack_agent_domains{state=\"running\"} 1\n",
            "onestack_agent_domains{state=\"paused\"} 1\n",
            "onestack_agent_domains{state=\"shutdown\"} 0\n",
            "# TYPE onestack_agent_domains gauge\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
