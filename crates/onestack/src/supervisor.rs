//! OneStack's own supervisor, for hosts without systemd: starts each service as a child process
//! (pid and log files in the data directory), restarts it with backoff when it dies, and stops
//! them all on SIGTERM.

use crate::paths::DataDir;
use crate::sys;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The services a controller runs (name, subcommand); later subsystems add theirs here.
/// The compute agent is its own process, as it is on a compute-only host.
pub const SERVICES: &[(&str, &str)] = &[("api", "serve"), ("compute", "agent")];

/// What a compute-only host (joined to a controller) runs.
pub const NODE_SERVICES: &[(&str, &str)] = &[("compute", "agent")];

/// The services of the cloud in `dd`, by its role.
pub fn services_of(dd: &DataDir) -> &'static [(&'static str, &'static str)] {
    match crate::ops::load_config(dd, None) {
        Ok(cfg) if cfg.is_compute_node() => NODE_SERVICES,
        _ => SERVICES,
    }
}

struct Supervised {
    name: &'static str,
    subcommand: &'static str,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
}

/// Set for the services a fresh supervisor starts (what boot does), not for restarts after a
/// crash: the compute agent then starts the guests that were running (Nova's
/// `resume_guests_state_on_host_boot`), where a mere agent restart must leave them as they are.
pub const RESUME_GUESTS_ENV: &str = "ONESTACK_RESUME_GUESTS";

fn spawn(
    exe: &PathBuf,
    dd: &DataDir,
    name: &str,
    subcommand: &str,
    first_start: bool,
) -> Result<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dd.log_file(name))
        .with_context(|| format!("cannot open log for {name}"))?;
    let mut cmd = Command::new(exe);
    if first_start {
        cmd.env(RESUME_GUESTS_ENV, "1");
    } else {
        cmd.env_remove(RESUME_GUESTS_ENV);
    }
    let child = cmd
        .arg(subcommand)
        .arg("--data-dir")
        .arg(&dd.root)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    if let Some(pid) = child.id() {
        fs::write(dd.pid_file(name), format!("{pid}\n"))?;
    }
    tracing::info!(service = name, pid = child.id(), "started");
    Ok(child)
}

pub async fn run(dd: DataDir) -> Result<()> {
    // One supervisor per data directory: the lock is held for the process's life.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dd.run().join("supervisor.lock"))?;
    if lock.try_lock().is_err() {
        bail!(
            "another supervisor is already running for {}",
            dd.root.display()
        );
    }
    fs::write(
        dd.pid_file("supervisor"),
        format!("{}\n", std::process::id()),
    )?;
    let exe = std::env::current_exe()?;
    let mut services: Vec<Supervised> = Vec::new();
    for (name, subcommand) in services_of(&dd) {
        services.push(Supervised {
            name,
            subcommand,
            child: Some(spawn(&exe, &dd, name, subcommand, true)?),
            started: Instant::now(),
            backoff: Duration::from_secs(1),
            restart_at: None,
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        for s in services.iter_mut() {
            if let Some(child) = s.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    // A service that ran a minute is healthy again: reset its backoff.
                    if s.started.elapsed() > Duration::from_secs(60) {
                        s.backoff = Duration::from_secs(1);
                    }
                    tracing::warn!(service = s.name, %status, backoff = ?s.backoff, "exited; restarting");
                    s.child = None;
                    s.restart_at = Some(Instant::now() + s.backoff);
                    s.backoff = (s.backoff * 2).min(Duration::from_secs(30));
                }
            } else if s.restart_at.is_some_and(|t| Instant::now() >= t) {
                match spawn(&exe, &dd, s.name, s.subcommand, false) {
                    Ok(c) => {
                        s.child = Some(c);
                        s.started = Instant::now();
                        s.restart_at = None;
                    }
                    Err(e) => {
                        tracing::error!(service = s.name, error = %e, "restart failed");
                        s.restart_at = Some(Instant::now() + s.backoff);
                    }
                }
            }
        }
    }
    tracing::info!("stopping services");
    for s in services.iter_mut() {
        if let Some(pid) = s.child.as_ref().and_then(Child::id) {
            sys::signal(pid, sys::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in services.iter_mut() {
        if let Some(child) = s.child.as_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                tracing::warn!(service = s.name, "did not stop in time; killing");
                let _ = child.kill().await;
            }
        }
        let _ = fs::remove_file(dd.pid_file(s.name));
    }
    let _ = fs::remove_file(dd.pid_file("supervisor"));
    tracing::info!("supervisor stopped");
    Ok(())
}

/// The pid in a pid file, if that process is alive and is a OneStack process.
pub fn running_pid(dd: &DataDir, name: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(dd.pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // Guards against a recycled pid belonging to something else.
    let is_ours = String::from_utf8_lossy(&cmdline).contains("onestack");
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state
        .rsplit(')')
        .next()
        .is_some_and(|s| s.trim_start().starts_with('Z'));
    (is_ours && !zombie).then_some(pid)
}
