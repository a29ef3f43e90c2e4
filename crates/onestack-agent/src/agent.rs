//! The reconcile loop. One worker task per instance receives the latest desired state and makes
//! the host match it, one operation at a time; what it finishes (or finds) it reports. Local
//! instance directories with no desired instance are orphans (deleted while the agent was away)
//! and are reaped.

use crate::client::Controller;
use crate::driver::{Driver, PowerState, VmSpec, VolumeSpec};
use crate::metrics::{
    AgentMetrics, INSTANCES, NETWORK_CHECK_DURATION, NETWORK_FAILING, NETWORK_KINDS,
    NETWORK_REPAIRS, RECONCILE_DURATION, RECONCILE_PASSES, TASK_DURATION,
};
use crate::retry::Backoff;
use crate::{configdrive, host};
use anyhow::{bail, Context, Result};
use onestack_core::compute::proto::{self, DesiredInstance, Report};
use onestack_core::compute::state::{TaskState, VmState};
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The controller's compute API base URL.
    pub controller_url: String,
    pub token: String,
    pub host: String,
    pub host_ip: String,
    pub availability_zone: Option<String>,
    /// Where this agent's own HTTP endpoint listens, and how the controller reaches it.
    pub listen: SocketAddr,
    pub public_url: String,
    /// `instances/<id>/…` and `images/<image id>` live here.
    pub state_dir: PathBuf,
    /// Volume files (`volume-<id>`), where this host can reach them: the storage host's
    /// volumes directory. A volume whose file is not there cannot be plugged here.
    pub volumes_dir: PathBuf,
    /// `kvm` or `qemu`, as chosen.
    pub virt_type: String,
    /// How long a guest gets to shut down on stop / soft reboot before it is forced.
    pub stop_grace: Duration,
    pub heartbeat: Duration,
    /// Start the guests the controller still counts as running but whose VM is gone (the host
    /// booted, or everything was killed): set when the services start fresh, not on a restart.
    pub resume_guests: bool,
    /// Host networking (bridges, taps, rules, DHCP, routers, metadata); None: VMs get no NICs
    /// realised here (control-plane tests).
    pub network: Option<AgentNetwork>,
}

#[derive(Clone, Debug)]
pub struct AgentNetwork {
    /// This host also runs DHCP, the metadata service and routers for every network.
    pub network_node: bool,
    /// Owner of the TAPs (the user QEMU runs as).
    pub tap_owner: Option<u32>,
    pub dnsmasq: PathBuf,
    /// Where dnsmasq's user reads its host and option lists (see `NetConfig::shared_dir`).
    pub shared_dir: PathBuf,
    /// The unprivileged user dnsmasq drops to.
    pub dnsmasq_user: crate::access::Identity,
    /// The interface joined to the external network (two-NIC network node).
    pub public_interface: Option<String>,
    /// The host's TCP ports guests may reach (the public APIs); nothing else of the host is.
    pub guest_open_ports: Vec<u16>,
}

impl AgentConfig {
    pub fn instances_dir(&self) -> PathBuf {
        self.state_dir.join("instances")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
}

struct Shared<D: Driver> {
    cfg: AgentConfig,
    ctl: Controller,
    driver: D,
    /// One lock per cached image, so each is downloaded once.
    image_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    metrics: Arc<AgentMetrics>,
}

/// Runs the agent until `shutdown` resolves. VMs keep running after it returns.
pub async fn run<D: Driver>(
    cfg: AgentConfig,
    driver: D,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // Root's alone until the driver lets its QEMU user in (the instance files, the images).
    onestack_core::fsutil::create_private_dir(&cfg.instances_dir())?;
    onestack_core::fsutil::create_private_dir(&cfg.images_dir())?;
    clean_partial_images(&cfg.images_dir());
    let ctl = Controller::new(&cfg.controller_url, &cfg.token);
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        ctl,
        driver,
        image_locks: Mutex::new(HashMap::new()),
        metrics: Arc::new(AgentMetrics::default()),
    });
    for result in ["ok", "error"] {
        RECONCILE_PASSES.declare(&[("result", result)]);
    }
    if cfg.network.is_some() {
        for kind in NETWORK_KINDS {
            NETWORK_REPAIRS.declare(&[("kind", kind)]);
        }
        NETWORK_FAILING.set(&[], 0.0);
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (agent)", cfg.listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = {
        let router = crate::http::router(
            cfg.token.clone(),
            cfg.instances_dir(),
            shared.metrics.clone(),
        );
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        })
    };
    let main = tokio::spawn(reconcile_forever(shared.clone(), stop_rx.clone()));
    let networking = cfg
        .network
        .clone()
        .map(|n| tokio::spawn(network_forever(shared.clone(), n, stop_rx.clone())));
    shutdown.await;
    let _ = stop_tx.send(true);
    main.abort();
    if let Some(n) = networking {
        // Let an apply in progress finish (bounded), so its records match the host.
        if tokio::time::timeout(Duration::from_secs(8), n)
            .await
            .is_err()
        {
            tracing::warn!("host networking did not finish its apply in time");
        }
    }
    let _ = server.await;
    tracing::info!("agent stopped; VMs keep running");
    Ok(())
}

/// How often the host networking checks itself against what it realised and repairs drift
/// (and retries failed objects whose backoff has passed), and metadata listeners are checked.
pub const HEAL_EVERY: Duration = Duration::from_secs(3);

/// Keeps the host's networking in step with the controller: long-polls the host's network
/// state (in its own task), applies what changed (incrementally), runs a metadata listener per
/// DHCP namespace, and every [`HEAL_EVERY`] repairs whatever drifted on the host (a crash, an
/// admin's `ip link del`, `nft flush ruleset`, a killed dnsmasq) and retries what failed, each
/// failing object on its own backoff. Running VMs are never disturbed: an apply after a restart
/// rebuilds rules atomically and keeps existing taps.
async fn network_forever<D: Driver>(
    s: Arc<Shared<D>>,
    n: AgentNetwork,
    mut stop: watch::Receiver<bool>,
) {
    let mut net = crate::net::HostNetworking::new(crate::net::NetConfig {
        host_netns: None,
        state_dir: s.cfg.state_dir.join("network"),
        shared_dir: n.shared_dir.clone(),
        dnsmasq_user: n.dnsmasq_user.clone(),
        tap_owner: n.tap_owner,
        dnsmasq: n.dnsmasq.clone(),
        uplink: n.public_interface.clone(),
        guest_open_ports: n.guest_open_ports.clone(),
    });
    let ctl = Arc::new(s.ctl.clone());
    let mut proxies = crate::metadata::MetadataProxies::new(ctl);
    let (tx, mut states) = watch::channel(None);
    let poller = tokio::spawn(poll_network_state(
        s.clone(),
        n.network_node,
        tx,
        stop.clone(),
    ));
    let mut tick = tokio::time::interval(HEAL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The DHCP servers of the last state: their metadata listeners are kept running.
    let mut dhcp: Option<Vec<onestack_core::network::proto::DhcpServer>> = None;
    // Whole-apply and self-check failures, logged once per interval (objects log their own).
    let mut apply_log = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut heal_log = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        // A stop ends the wait at once, but never an apply in progress (an apply cut short
        // would leave objects its records do not list yet): those run in the arms' bodies.
        tokio::select! {
            _ = stopped(&mut stop) => break,
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                let Some(state) = states.borrow_and_update().clone() else {
                    continue;
                };
                apply_state(&mut net, &state, &mut apply_log).await;
                NETWORK_FAILING.set(&[], net.failing().len() as f64);
                proxies.sync(&state.dhcp).await;
                dhcp = Some(state.dhcp.clone());
            }
            _ = tick.tick() => {
                match net.heal().await {
                    Ok(stats) => {
                        NETWORK_CHECK_DURATION.observe(&[], stats.check_elapsed.as_secs_f64());
                        for d in &stats.drift {
                            let kind = d.split(':').next().unwrap_or_default();
                            if let Some(k) = NETWORK_KINDS.iter().find(|k| **k == kind) {
                                NETWORK_REPAIRS.inc(&[("kind", k)]);
                            }
                        }
                        NETWORK_FAILING.set(&[], net.failing().len() as f64);
                        if heal_log.succeeded() > 0 {
                            tracing::info!("host networking self-check works again");
                        }
                        if !stats.errors.is_empty() {
                            tracing::debug!(errors = ?stats.errors, "host networking repairs failed; retrying");
                        }
                    }
                    Err(e) => {
                        if let Some(unsaid) = heal_log.failed(std::time::Instant::now()).log {
                            tracing::error!(error = %format!("{e:#}"), unsaid, "host networking self-check failed");
                        }
                    }
                }
                if let Some(d) = &dhcp {
                    proxies.sync(d).await;
                }
            }
        }
    }
    poller.abort();
    proxies.stop_all();
}

/// Resolves once `stop` says stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn apply_state(
    net: &mut crate::net::HostNetworking,
    state: &onestack_core::network::proto::NetworkState,
    log: &mut Backoff,
) {
    match net.apply(state).await {
        Ok(stats) => {
            if log.succeeded() > 0 {
                tracing::info!("host networking applies again");
            }
            if !stats.rejected.is_empty() {
                tracing::warn!(rejected = ?stats.rejected, "network state entries refused");
            }
            tracing::info!(
                generation = state.generation,
                elapsed_ms = stats.elapsed.as_millis() as u64,
                nft_lines = stats.nft_lines,
                full_rebuild = stats.full_rebuild,
                failed = stats.errors.len(),
                "host networking applied"
            );
        }
        Err(e) => {
            // Retried by the self-check, on a backoff.
            if let Some(unsaid) = log.failed(std::time::Instant::now()).log {
                tracing::error!(error = %format!("{e:#}"), unsaid, "cannot apply host networking; retrying");
            }
        }
    }
}

/// Long-polls the host's network state and hands each new generation to the network loop;
/// backs off (0.5 s doubling to 10 s) while the controller cannot be reached.
async fn poll_network_state<D: Driver>(
    s: Arc<Shared<D>>,
    network_node: bool,
    tx: watch::Sender<Option<onestack_core::network::proto::NetworkState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut after = -1;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let poll = s
            .ctl
            .network_state(&s.cfg.host, after, Duration::from_secs(30), network_node);
        let fetched = tokio::select! {
            r = poll => r,
            _ = stopped(&mut stop) => return,
        };
        match fetched {
            Ok(state) => {
                if backoff.succeeded() > 0 {
                    tracing::info!("network state reachable again");
                }
                if state.generation != after {
                    after = state.generation;
                    if tx.send(Some(state)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let f = backoff.failed(std::time::Instant::now());
                if let Some(unsaid) = f.log {
                    tracing::warn!(error = %format!("{e:#}"), unsaid, retry_in_ms = f.retry_in.as_millis() as u64,
                        "cannot fetch the network state; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(f.retry_in) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    }
}

fn registration(cfg: &AgentConfig) -> proto::RegisterHost {
    proto::RegisterHost {
        host: cfg.host.clone(),
        host_ip: cfg.host_ip.clone(),
        agent_url: cfg.public_url.clone(),
        vcpus: host::vcpus(),
        memory_mb: host::memory_mb(),
        local_gb: host::disk_gb(&cfg.state_dir),
        cpu_info: host::cpu_info(),
        hypervisor_type: "QEMU".into(),
        hypervisor_version: host::qemu_version("qemu-system-x86_64"),
        virt_type: cfg.virt_type.clone(),
        availability_zone: cfg.availability_zone.clone(),
    }
}

async fn reconcile_forever<D: Driver>(s: Arc<Shared<D>>, stop: watch::Receiver<bool>) {
    // Register, retrying while the controller is not there yet (a short cap: the agent has
    // nothing to do until then, and a controller that comes up is found within 5 s).
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match s.ctl.register(&registration(&s.cfg)).await {
            Ok(r) => {
                tracing::info!(host = %s.cfg.host, id = %r.id, virt_type = %s.cfg.virt_type, "registered with the controller");
                break;
            }
            Err(e) => {
                let f = backoff.failed(std::time::Instant::now());
                if let Some(unsaid) = f.log {
                    tracing::warn!(error = %e, unsaid, "cannot register yet; retrying");
                }
                tokio::time::sleep(f.retry_in).await;
            }
        }
    }
    {
        let s = s.clone();
        tokio::spawn(async move {
            // The period stays (the controller counts missed beats); failures are logged once
            // per interval.
            let mut log = Backoff::new(s.cfg.heartbeat, s.cfg.heartbeat);
            loop {
                tokio::time::sleep(s.cfg.heartbeat).await;
                match s.ctl.heartbeat(&s.cfg.host).await {
                    Ok(()) => {
                        if log.succeeded() > 0 {
                            tracing::info!("heartbeats reach the controller again");
                        }
                    }
                    Err(e) => {
                        if let Some(unsaid) = log.failed(std::time::Instant::now()).log {
                            tracing::warn!(error = %e, unsaid, "heartbeat failed");
                        }
                    }
                }
            }
        });
    }
    let mut desired_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut workers: HashMap<String, watch::Sender<DesiredInstance>> = HashMap::new();
    let mut generation = -1;
    loop {
        if *stop.borrow() {
            return;
        }
        let desired = match s
            .ctl
            .desired(&s.cfg.host, generation, Duration::from_secs(20))
            .await
        {
            Ok(d) => {
                if desired_backoff.succeeded() > 0 {
                    tracing::info!("desired state reachable again");
                }
                d
            }
            Err(e) => {
                RECONCILE_PASSES.inc(&[("result", "error")]);
                let f = desired_backoff.failed(std::time::Instant::now());
                if let Some(unsaid) = f.log {
                    tracing::warn!(error = %e, unsaid, "cannot fetch desired state; retrying");
                }
                tokio::time::sleep(f.retry_in).await;
                // A restarted controller may have lost our registration.
                let _ = s.ctl.register(&registration(&s.cfg)).await;
                generation = -1;
                continue;
            }
        };
        let pass = std::time::Instant::now();
        generation = desired.generation;
        let wanted: std::collections::HashSet<String> =
            desired.instances.iter().map(|i| i.id.clone()).collect();
        for inst in desired.instances {
            match workers.get(&inst.id) {
                Some(tx) if !tx.is_closed() => {
                    tx.send_replace(inst);
                }
                _ => {
                    let (tx, rx) = watch::channel(inst.clone());
                    tokio::spawn(worker(s.clone(), rx));
                    workers.insert(inst.id, tx);
                }
            }
        }
        workers.retain(|id, tx| wanted.contains(id) && !tx.is_closed());
        reap_orphans(&s, &wanted).await;
        INSTANCES.set(&[], wanted.len() as f64);
        RECONCILE_DURATION.observe(&[], pass.elapsed().as_secs_f64());
        RECONCILE_PASSES.inc(&[("result", "ok")]);
    }
}

/// Instance directories nobody wants any more: destroy the VM and remove the files.
async fn reap_orphans<D: Driver>(s: &Shared<D>, wanted: &std::collections::HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(s.cfg.instances_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().to_string();
        if wanted.contains(&id) {
            continue;
        }
        tracing::warn!(instance = %id, "reaping an instance the controller no longer has");
        if let Err(err) = s.driver.destroy(&id).await {
            tracing::error!(instance = %id, error = %err, "cannot destroy orphan");
            continue;
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// How often a worker checks its VM is still in the power state it should be in.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Drops a worker's VM from the power-state gauge when the worker ends, however it ends.
struct Forget<'a>(&'a AgentMetrics, String);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(&self.1);
    }
}

async fn worker<D: Driver>(s: Arc<Shared<D>>, mut rx: watch::Receiver<DesiredInstance>) {
    let _forget = Forget(&s.metrics, rx.borrow().id.clone());
    // The task this worker last finished: a stale copy of the desired state (from before the
    // controller applied our report) must not run it twice.
    let mut finished: Option<TaskState> = None;
    let mut first = true;
    let mut migration = MigrationProgress::default();
    // Volume operations reported, by volume: the same request is not run again while the
    // controller's answer is on its way.
    let mut volumes_done: HashMap<String, String> = HashMap::new();
    // A TAP cut off from its running QEMU is told once per interval.
    let mut tap_log = Backoff::new(WATCH_EVERY, WATCH_EVERY).log_every(Duration::from_secs(600));
    loop {
        let d = rx.borrow_and_update().clone();
        // A migration is not a task this host finishes alone: each side does its step and
        // says so; the controller moves the migration on.
        if let Some(m) = d.migration.as_ref().filter(|m| m.kind == "cold") {
            if cold_step(&s, &d, m, &mut migration).await {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return; },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        } else if d.task_state == Some(TaskState::Migrating) {
            if let Some(m) = &d.migration {
                migration_step(&s, &d, m, &mut migration).await;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return; },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        migration = MigrationProgress::default();
        if std::mem::take(&mut first) && s.cfg.resume_guests {
            resume_after_boot(&s, &d).await;
        }
        if d.task_state.is_none() || d.task_state != finished {
            finished = None;
        }
        match d.task_state {
            Some(task) if finished != Some(task) => {
                let picked_up = unix_ms();
                let started = std::time::Instant::now();
                let outcome = perform(&s, &d, task).await;
                TASK_DURATION.observe(
                    &[
                        ("task", task.as_str()),
                        ("result", if outcome.is_ok() { "ok" } else { "error" }),
                    ],
                    started.elapsed().as_secs_f64(),
                );
                let power = s.driver.power_state(&d.id).await;
                s.metrics.saw(&d.id, power);
                let report = match &outcome {
                    Ok(()) => Report {
                        task: Some(task),
                        ok: true,
                        power_state: power.code(),
                        fault: None,
                    },
                    Err(e) => {
                        tracing::error!(instance = %d.id, task = task.as_str(), error = %format!("{e:#}"), "task failed");
                        Report {
                            task: Some(task),
                            ok: false,
                            power_state: power.code(),
                            fault: Some(proto::Fault {
                                code: 500,
                                message: fault_message(task, &d.id, e),
                                details: format!("{e:#}"),
                            }),
                        }
                    }
                };
                send_report(&s, &d.id, &report).await;
                if task == TaskState::Spawning {
                    // Read by scripts/bench-compute.sh: the agent's share of a boot, by the clock.
                    tracing::info!(instance = %d.id, picked_up_unix_ms = picked_up, reported_unix_ms = unix_ms(), "spawn reported");
                }
                finished = Some(task);
                if task == TaskState::Deleting && outcome.is_ok() {
                    return;
                }
                continue;
            }
            _ => {}
        }
        if d.task_state.is_none() {
            observe(&s, &d).await;
            if s.cfg.network.is_some() {
                check_taps(&s, &d, &mut tap_log).await;
            }
            reconcile_volumes(&s, &d, &mut volumes_done).await;
            drop_resize_backup(&s, &d);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return; },
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

/// A server that was ACTIVE and running whose VM is gone comes back (its disk, config drive and
/// ports are all still there), before anything could report it SHUTOFF.
async fn resume_after_boot<D: Driver>(s: &Shared<D>, d: &DesiredInstance) {
    let running_before = d.vm_state == VmState::Active
        && d.task_state.is_none()
        && d.power_state == PowerState::Running.code();
    if !running_before {
        return;
    }
    let now = s.driver.power_state(&d.id).await;
    if matches!(now, PowerState::Running | PowerState::Paused) {
        return;
    }
    tracing::info!(instance = %d.id, "resuming a guest that was running before the services started");
    match start_vm(s, d).await {
        Ok(()) => tracing::info!(instance = %d.id, "guest resumed"),
        Err(e) => {
            tracing::error!(instance = %d.id, error = %format!("{e:#}"), "cannot resume the guest")
        }
    }
}

fn fault_message(task: TaskState, id: &str, e: &anyhow::Error) -> String {
    match task {
        TaskState::Spawning => format!("Build of instance {id} aborted: {e}"),
        _ => format!("{}: {e}", task.as_str()),
    }
}

/// Sends a report until the controller takes it, backing off (0.25 s doubling to 4 s), for at
/// most `within` (a controller away for longer gets the state again from the next
/// observation). The first failure is logged, then once per interval, and the last.
async fn retry_report<F, Fut>(what: &str, id: &str, within: Duration, mut send: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = std::time::Instant::now() + within;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(4))
        .log_every(Duration::from_secs(10));
    loop {
        match send().await {
            Ok(()) => return,
            Err(e) => {
                let now = std::time::Instant::now();
                let f = backoff.failed(now);
                if now + f.retry_in >= deadline {
                    tracing::warn!(instance = %id, attempts = f.attempt, error = %e, "{what} failed; giving up");
                    return;
                }
                if let Some(unsaid) = f.log {
                    tracing::warn!(instance = %id, attempt = f.attempt, unsaid, error = %e, "{what} failed; retrying");
                }
                tokio::time::sleep(f.retry_in).await;
            }
        }
    }
}

/// How long a report is retried.
const REPORT_WITHIN: Duration = Duration::from_secs(15);

async fn send_report<D: Driver>(s: &Shared<D>, id: &str, r: &Report) {
    retry_report("report", id, REPORT_WITHIN, || {
        s.ctl.report(&s.cfg.host, id, r)
    })
    .await;
}

/// Compares the VM with what the server should be and reports drift (a VM that died is
/// SHUTOFF, never a stale ACTIVE); a VM running that should be off is stopped.
async fn observe<D: Driver>(s: &Shared<D>, d: &DesiredInstance) {
    let power = s.driver.power_state(&d.id).await;
    s.metrics.saw(&d.id, power);
    if d.vm_state == VmState::Stopped && matches!(power, PowerState::Running | PowerState::Paused) {
        tracing::warn!(instance = %d.id, "VM runs but the server is stopped; stopping it");
        let _ = s.driver.stop(&d.id, s.cfg.stop_grace).await;
        return;
    }
    if power.code() != d.power_state {
        send_report(
            s,
            &d.id,
            &Report {
                task: None,
                ok: true,
                power_state: power.code(),
                fault: None,
            },
        )
        .await;
    }
}

/// The server's TAPs that exist without a carrier: no QEMU file is attached to them. For a
/// running VM that means the TAP was deleted under QEMU (`ip link del` works on it) and the host
/// networking made a new one, which QEMU's file is not attached to.
fn cut_taps(d: &DesiredInstance) -> Vec<String> {
    d.nics
        .iter()
        .filter(|n| {
            std::fs::read_to_string(Path::new("/sys/class/net").join(&n.tap).join("carrier"))
                .is_ok_and(|c| c.trim() == "0")
        })
        .map(|n| n.tap.clone())
        .collect()
}

/// A running VM whose TAP was made again under it has a silent NIC until a new QEMU opens the
/// TAP: a hard reboot does (see `perform`), a stop and start too. The agent does not impose
/// either on a running guest; it says so.
async fn check_taps<D: Driver>(s: &Shared<D>, d: &DesiredInstance, log: &mut Backoff) {
    if !matches!(s.driver.power_state(&d.id).await, PowerState::Running) {
        return;
    }
    let cut = cut_taps(d);
    if cut.is_empty() {
        log.succeeded();
        return;
    }
    if let Some(unsaid) = log.failed(std::time::Instant::now()).log {
        tracing::error!(instance = %d.id, taps = ?cut, unsaid,
            "the server's TAP was deleted under its running VM and made again; its NIC is cut \
             off until the server is hard-rebooted (openstack server reboot --hard)");
    }
}

fn volume_file(s: &Shared<impl Driver>, volume_id: &str) -> PathBuf {
    s.cfg.volumes_dir.join(format!("volume-{volume_id}"))
}

fn volume_spec(s: &Shared<impl Driver>, v: &proto::VolumeAttachment) -> VolumeSpec {
    VolumeSpec {
        node: VolumeSpec::node_name(&v.volume_id),
        path: volume_file(s, &v.volume_id),
        serial: v.serial.clone(),
    }
}

/// Plugs the volumes being attached and unplugs those being detached, then reports each. A
/// stopped VM needs nothing done now: its volumes are on the command line at the next start.
/// Runs only when no task does, so a boot volume is reported once the VM was spawned on it.
async fn reconcile_volumes<D: Driver>(
    s: &Shared<D>,
    d: &DesiredInstance,
    done: &mut HashMap<String, String>,
) {
    done.retain(|id, state| {
        d.volumes
            .iter()
            .any(|v| &v.volume_id == id && &v.state == state)
    });
    for v in &d.volumes {
        if done.get(&v.volume_id) == Some(&v.state) {
            continue;
        }
        let op = match v.state.as_str() {
            "attaching" => "attach",
            "detaching" => "detach",
            _ => continue,
        };
        let running = matches!(
            s.driver.power_state(&d.id).await,
            PowerState::Running | PowerState::Paused
        );
        let spec = volume_spec(s, v);
        let outcome: Result<()> = match (op, running) {
            ("attach", _) if !spec.path.exists() => Err(anyhow::anyhow!(
                "the volume's data is not reachable from host {} (volumes are served by the controller's host)",
                s.cfg.host
            )),
            // The root volume is the VM's disk from its start: nothing to plug.
            ("attach", _) if v.boot => Ok(()),
            ("attach", true) => s.driver.attach_volume(&d.id, &spec).await.map_err(Into::into),
            ("detach", true) => s
                .driver
                .detach_volume(&d.id, &spec.node, DETACH_TIMEOUT)
                .await
                .map_err(Into::into),
            _ => Ok(()),
        };
        if let Err(e) = &outcome {
            tracing::warn!(instance = %d.id, volume = %v.volume_id, op, error = %format!("{e:#}"), "volume operation failed");
        } else {
            tracing::info!(instance = %d.id, volume = %v.volume_id, op, device = %v.device, "volume done");
        }
        let report = proto::VolumeReport {
            op: op.into(),
            error: outcome.err().map(|e| format!("{e:#}")),
        };
        done.insert(v.volume_id.clone(), v.state.clone());
        retry_report("volume report", &d.id, Duration::from_secs(10), || {
            s.ctl
                .report_volume(&s.cfg.host, &d.id, &v.volume_id, &report)
        })
        .await;
    }
}

/// What this worker did of a live migration already (each step runs once).
#[derive(Default)]
struct MigrationProgress {
    done: Option<(String, String)>,
    waiting_since: Option<std::time::Instant>,
}

/// This host's step of a live migration (see `onestack_core::compute::migrate`).
async fn migration_step<D: Driver>(
    s: &Shared<D>,
    d: &DesiredInstance,
    m: &proto::Migration,
    progress: &mut MigrationProgress,
) {
    let step = (m.role.clone(), m.phase.clone());
    if progress.done.as_ref() == Some(&step) {
        return;
    }
    let report: Option<proto::MigrationReport> = match (m.role.as_str(), m.phase.as_str()) {
        ("target", "prepare") => {
            let r = async {
                prepare_disk(s, d, true).await?;
                wait_for_taps(d, Duration::from_secs(60)).await?;
                Ok::<_, anyhow::Error>(s.driver.prepare_incoming(&spec(s, d), &m.my_ip).await?)
            }
            .await;
            Some(match r {
                Ok((nbd, mig)) => {
                    tracing::info!(instance = %d.id, nbd, mig, "live migration: ready to receive");
                    proto::MigrationReport {
                        event: "ready".into(),
                        nbd_port: Some(nbd),
                        mig_port: Some(mig),
                        ..Default::default()
                    }
                }
                Err(e) => failed_migration(&d.id, &e),
            })
        }
        ("source", "prepare") => {
            // The target gets ready; give up if it takes too long (it may be gone).
            let since = *progress
                .waiting_since
                .get_or_insert_with(std::time::Instant::now);
            if since.elapsed().as_secs() < onestack_core::compute::migrate::PREPARE_TIMEOUT_SECS {
                return;
            }
            Some(failed_migration(
                &d.id,
                &anyhow::anyhow!("the target host did not get ready in time"),
            ))
        }
        ("source", "transfer") => {
            tracing::info!(instance = %d.id, target = %m.peer_ip, "live migration: sending");
            Some(
                match s
                    .driver
                    .migrate_out(
                        &d.id,
                        &m.peer_ip,
                        m.nbd_port,
                        m.mig_port,
                        m.max_bandwidth_mib,
                    )
                    .await
                {
                    Ok(stats) => {
                        // Read by scripts/bench-volume.sh: the guest's pause.
                        tracing::info!(instance = %d.id, downtime_ms = stats.downtime_ms, total_ms = stats.total_ms, "live migration: sent");
                        proto::MigrationReport {
                            event: "done".into(),
                            downtime_ms: Some(stats.downtime_ms),
                            total_ms: Some(stats.total_ms),
                            ..Default::default()
                        }
                    }
                    Err(e) => failed_migration(&d.id, &e.into()),
                },
            )
        }
        ("target", "resume") => Some(match s.driver.finish_incoming(&d.id).await {
            Ok(()) => proto::MigrationReport {
                event: "resumed".into(),
                ..Default::default()
            },
            Err(e) => failed_migration(&d.id, &e.into()),
        }),
        _ => None,
    };
    let Some(report) = report else {
        return;
    };
    retry_report("migration report", &d.id, REPORT_WITHIN, || {
        s.ctl.report_migration(&s.cfg.host, &d.id, &report)
    })
    .await;
    progress.done = Some(step);
}

/// This host's step of a cold migration; false when the instance is simply this host's now
/// (the target, waiting for confirmation) and the normal work applies.
async fn cold_step<D: Driver>(
    s: &Shared<D>,
    d: &DesiredInstance,
    m: &proto::Migration,
    progress: &mut MigrationProgress,
) -> bool {
    let step = (m.role.clone(), m.phase.clone());
    if m.role == "target" && m.phase == "verify" {
        return false;
    }
    if progress.done.as_ref() == Some(&step) {
        return true;
    }
    let report = match (m.role.as_str(), m.phase.as_str()) {
        ("source", "prepare") => Some(match s.driver.stop(&d.id, s.cfg.stop_grace).await {
            Ok(()) => proto::MigrationReport {
                event: "ready".into(),
                ..Default::default()
            },
            Err(e) => failed_migration(&d.id, &e.into()),
        }),
        ("target", "transfer") => Some(match receive_disk(s, d, m).await {
            Ok(()) => {
                tracing::info!(instance = %d.id, "cold migration: running here");
                proto::MigrationReport {
                    event: "done".into(),
                    ..Default::default()
                }
            }
            Err(e) => {
                let _ = s.driver.destroy(&d.id).await;
                let _ = std::fs::remove_dir_all(s.cfg.instances_dir().join(&d.id));
                failed_migration(&d.id, &e)
            }
        }),
        ("target", "revert") => {
            let r = async {
                s.driver.destroy(&d.id).await?;
                match std::fs::remove_dir_all(s.cfg.instances_dir().join(&d.id)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(anyhow::Error::from(e))
                    }
                    _ => Ok(()),
                }
            }
            .await;
            Some(match r {
                Ok(()) => proto::MigrationReport {
                    event: "reverted".into(),
                    ..Default::default()
                },
                Err(e) => failed_migration(&d.id, &e),
            })
        }
        // The source keeps its copy (for a revert) and does nothing until the end.
        _ => None,
    };
    if let Some(report) = report {
        retry_report("migration report", &d.id, REPORT_WITHIN, || {
            s.ctl.report_migration(&s.cfg.host, &d.id, &report)
        })
        .await;
        progress.done = Some(step);
    }
    true
}

/// Cold migration, target: the source's disk (its overlay) onto the image cached here, the
/// config drive, the NICs, and the guest started if it ran.
async fn receive_disk<D: Driver>(
    s: &Shared<D>,
    d: &DesiredInstance,
    m: &proto::Migration,
) -> Result<()> {
    let dir = s.cfg.instances_dir().join(&d.id);
    onestack_core::fsutil::create_private_dir(&dir)?;
    let part = dir.join("disk.part");
    s.ctl.fetch(&m.disk_url, &part).await?;
    if let Some(image) = &d.image {
        let base = cached_image(s, image).await?;
        let fmt = onestack_core::volume::backend::qemu_format(&image.disk_format);
        let out = tokio::process::Command::new("qemu-img")
            .args(["rebase", "-u", "-f", "qcow2", "-F", fmt, "-b"])
            .arg(&base)
            .arg(&part)
            .output()
            .await
            .context("cannot run qemu-img")?;
        if !out.status.success() {
            bail!(
                "qemu-img rebase failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    std::fs::rename(&part, dir.join("disk"))?;
    prepare_disk(s, d, false).await?;
    if m.was_running {
        start_vm(s, d).await?;
    }
    Ok(())
}

fn failed_migration(id: &str, e: &anyhow::Error) -> proto::MigrationReport {
    tracing::error!(instance = %id, error = %format!("{e:#}"), "live migration step failed");
    proto::MigrationReport {
        event: "failed".into(),
        error: Some(format!("{e:#}")),
        ..Default::default()
    }
}

/// How long a guest gets to release a volume being detached.
const DETACH_TIMEOUT: Duration = Duration::from_secs(20);

fn spec(s: &Shared<impl Driver>, d: &DesiredInstance) -> VmSpec {
    let dir = s.cfg.instances_dir().join(&d.id);
    let cd = dir.join("disk.config");
    let root = d
        .volumes
        .iter()
        .find(|v| v.boot)
        .map(|v| volume_file(s, &v.volume_id));
    // A disk of its own is an overlay on the cached image, which QEMU must read too.
    let base = match (&root, &d.image) {
        (None, Some(image)) => Some(s.cfg.images_dir().join(&image.id)),
        _ => None,
    };
    VmSpec {
        id: d.id.clone(),
        name: d.name.clone(),
        vcpus: d.vcpus.max(1) as u32,
        memory_mb: d.memory_mb.max(16) as u64,
        disk: root.unwrap_or_else(|| dir.join("disk")),
        base,
        volumes: d
            .volumes
            .iter()
            .filter(|v| !v.boot && v.state != "detaching")
            .map(|v| volume_spec(s, v))
            .collect(),
        config_drive: cd.exists().then_some(cd),
        nics: d
            .nics
            .iter()
            .map(|n| crate::driver::NicSpec {
                mac: n.mac.clone(),
                tap: n.tap.clone(),
            })
            .collect(),
    }
}

async fn start_vm<D: Driver>(s: &Shared<D>, d: &DesiredInstance) -> Result<()> {
    wait_for_taps(d, Duration::from_secs(60)).await?;
    Ok(s.driver.start(&spec(s, d)).await?)
}

/// Host networking creates a server's taps when its ports are bound here; QEMU opens them by
/// name, so a start waits (bounded) until they exist.
async fn wait_for_taps(d: &DesiredInstance, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for nic in &d.nics {
        let path = Path::new("/sys/class/net").join(&nic.tap);
        while !path.exists() {
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "network device {} for port {} did not appear",
                    nic.tap,
                    nic.port_id
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn perform<D: Driver>(s: &Shared<D>, d: &DesiredInstance, task: TaskState) -> Result<()> {
    let grace = s.cfg.stop_grace;
    match task {
        TaskState::Scheduling => Ok(()),
        TaskState::Spawning => {
            let t0 = std::time::Instant::now();
            prepare_disk(s, d, false).await?;
            let prepared = t0.elapsed();
            start_vm(s, d).await?;
            // Read by scripts/bench-compute.sh to split host time from control-plane time.
            tracing::info!(
                instance = %d.id,
                prepare_ms = prepared.as_secs_f64() * 1000.0,
                qemu_start_ms = (t0.elapsed() - prepared).as_secs_f64() * 1000.0,
                "spawned"
            );
            Ok(())
        }
        TaskState::Rebuilding => {
            s.driver.destroy(&d.id).await?;
            prepare_disk(s, d, true).await?;
            start_vm(s, d).await?;
            Ok(())
        }
        TaskState::PoweringOff => Ok(s.driver.stop(&d.id, grace).await?),
        TaskState::PoweringOn => Ok(start_vm(s, d).await?),
        TaskState::Rebooting | TaskState::RebootingHard => {
            let hard = task == TaskState::RebootingHard;
            let cut = cut_taps(d);
            if hard && !cut.is_empty() {
                // A reset would keep QEMU's file on a deleted TAP: a new QEMU opens the new one
                // (Nova's hard reboot also makes the domain and its VIFs again).
                tracing::info!(instance = %d.id, taps = ?cut, "hard reboot with a new QEMU: its TAP was made again");
                s.driver.destroy(&d.id).await?;
                return start_vm(s, d).await;
            }
            match s.driver.power_state(&d.id).await {
                PowerState::Running => Ok(s.driver.reboot(&d.id, hard, grace).await?),
                PowerState::Suspended => Ok(s.driver.resume(&spec(s, d)).await?),
                PowerState::Paused => {
                    s.driver.reboot(&d.id, true, grace).await?;
                    Ok(s.driver.unpause(&d.id).await?)
                }
                _ => Ok(start_vm(s, d).await?),
            }
        }
        TaskState::Pausing => Ok(s.driver.pause(&d.id).await?),
        TaskState::Unpausing => Ok(s.driver.unpause(&d.id).await?),
        TaskState::Suspending => Ok(s.driver.suspend(&d.id).await?),
        TaskState::Resuming => Ok(s.driver.resume(&spec(s, d)).await?),
        TaskState::ImageSnapshot => {
            let Some(image) = &d.snapshot_image_id else {
                bail!("no snapshot image to upload to");
            };
            let dir = s.cfg.instances_dir().join(&d.id);
            let tmp = dir.join("snapshot.qcow2");
            let r = async {
                s.driver.snapshot(&d.id, &spec(s, d).disk, &tmp).await?;
                s.ctl.upload_snapshot(image, &tmp).await
            }
            .await;
            let _ = std::fs::remove_file(&tmp);
            r
        }
        // Driven by `migration_step`, never as a task of its own.
        TaskState::Migrating => Ok(()),
        TaskState::ResizeMigrating => {
            let running = matches!(
                s.driver.power_state(&d.id).await,
                PowerState::Running | PowerState::Paused
            );
            if running {
                s.driver.stop(&d.id, grace).await?;
            }
            if !d.volumes.iter().any(|v| v.boot) {
                let dir = s.cfg.instances_dir().join(&d.id);
                let (disk, backup) = (dir.join("disk"), dir.join(RESIZE_BACKUP));
                // The overlay holds only what the guest wrote; a copy of it is the old disk.
                if !backup.exists() {
                    let tmp = dir.join("disk.resize-backup.tmp");
                    std::fs::copy(&disk, &tmp).context("keeping the disk for a revert")?;
                    std::fs::rename(&tmp, &backup)?;
                }
                grow_disk(&disk, d.root_gb << 30).await?;
            }
            if running {
                start_vm(s, d).await?;
            }
            Ok(())
        }
        TaskState::ResizeReverting => {
            let running = matches!(
                s.driver.power_state(&d.id).await,
                PowerState::Running | PowerState::Paused
            );
            if running {
                s.driver.stop(&d.id, grace).await?;
            }
            let dir = s.cfg.instances_dir().join(&d.id);
            let backup = dir.join(RESIZE_BACKUP);
            if backup.exists() {
                std::fs::rename(&backup, dir.join("disk")).context("restoring the disk")?;
            }
            if running {
                start_vm(s, d).await?;
            }
            Ok(())
        }
        TaskState::Deleting => {
            s.driver.destroy(&d.id).await?;
            let dir = s.cfg.instances_dir().join(&d.id);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
            }
        }
    }
}

/// The disk as it was before a resize, kept until the resize is confirmed or reverted.
const RESIZE_BACKUP: &str = "disk.resize-backup";

/// A confirmed resize needs its old disk no more.
fn drop_resize_backup(s: &Shared<impl Driver>, d: &DesiredInstance) {
    if d.vm_state != VmState::Resized {
        let backup = s.cfg.instances_dir().join(&d.id).join(RESIZE_BACKUP);
        if backup.exists() {
            tracing::info!(instance = %d.id, "resize confirmed; dropping the old disk");
            let _ = std::fs::remove_file(backup);
        }
    }
}

/// Grows a qcow2 disk to `bytes` if it is smaller (never shrinks).
async fn grow_disk(disk: &Path, bytes: i64) -> Result<()> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .await
        .context("cannot run qemu-img")?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if info["virtual-size"].as_i64().unwrap_or(0) >= bytes {
        return Ok(());
    }
    let out = tokio::process::Command::new("qemu-img")
        .args(["resize", "-q", "-f", "qcow2"])
        .arg(disk)
        .arg(bytes.to_string())
        .output()
        .await
        .context("cannot run qemu-img")?;
    if !out.status.success() {
        bail!(
            "qemu-img resize failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The instance's disk (a qcow2 overlay on the cached image) and config drive.
async fn prepare_disk<D: Driver>(s: &Shared<D>, d: &DesiredInstance, fresh: bool) -> Result<()> {
    let dir = s.cfg.instances_dir().join(&d.id);
    onestack_core::fsutil::create_private_dir(&dir)?;
    if let Some(root) = d.volumes.iter().find(|v| v.boot) {
        // Booted from a volume: its file is the disk.
        if !volume_file(s, &root.volume_id).exists() {
            bail!(
                "the boot volume's data is not reachable from host {} (volumes are served by the controller's host)",
                s.cfg.host
            );
        }
    } else {
        let image = d
            .image
            .as_ref()
            .context("the server's image no longer exists")?;
        image_overlay(s, d, image, &dir, fresh).await?;
    }
    let cd_path = dir.join("disk.config");
    match &d.config_drive {
        Some(cd) => {
            let cd = cd.clone();
            tokio::task::spawn_blocking(move || configdrive::build(&cd, &cd_path)).await??;
        }
        None => {
            let _ = std::fs::remove_file(&cd_path);
        }
    }
    Ok(())
}

/// The instance's own disk: a qcow2 overlay on the cached image.
async fn image_overlay<D: Driver>(
    s: &Shared<D>,
    d: &DesiredInstance,
    image: &proto::ImageRef,
    dir: &Path,
    fresh: bool,
) -> Result<()> {
    let base = cached_image(s, image).await?;
    let disk = dir.join("disk");
    if fresh || !disk.exists() {
        let _ = std::fs::remove_file(&disk);
        let fmt = match image.disk_format.as_str() {
            "qcow2" | "raw" | "vmdk" | "vdi" | "vhdx" => image.disk_format.as_str(),
            "vhd" => "vpc",
            _ => "raw",
        };
        let root = d.root_gb << 30;
        let size = root.max(image.virtual_size);
        let tmp = dir.join("disk.tmp");
        let out = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
            .arg(&base)
            .arg(&tmp)
            .arg(size.to_string())
            .output()
            .await
            .context("cannot run qemu-img")?;
        if !out.status.success() {
            bail!(
                "qemu-img create failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::fs::rename(&tmp, &disk)?;
    }
    Ok(())
}

/// The image file on this host, downloaded once and verified against its SHA-512.
async fn cached_image<D: Driver>(s: &Shared<D>, image: &proto::ImageRef) -> Result<PathBuf> {
    let lock = {
        let mut locks = s.image_locks.lock().await;
        locks.entry(image.id.clone()).or_default().clone()
    };
    let _held = lock.lock().await;
    let path = s.cfg.images_dir().join(&image.id);
    if path.exists() {
        return Ok(path);
    }
    let part = s.cfg.images_dir().join(format!("{}.part", image.id));
    s.ctl.download_image(&image.id, &part).await?;
    let p2 = part.clone();
    let got = tokio::task::spawn_blocking(move || sha512_file(&p2)).await??;
    if !image.sha512.is_empty() && got != image.sha512 {
        let _ = std::fs::remove_file(&part);
        bail!("image {} failed verification: SHA-512 mismatch", image.id);
    }
    std::fs::rename(&part, &path)?;
    tracing::info!(image = %image.id, "image cached");
    Ok(path)
}

fn sha512_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn clean_partial_images(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
