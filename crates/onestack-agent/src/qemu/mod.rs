//! QEMU driven directly over QMP: no libvirt. The driver keeps no state of its own — everything
//! lives in `instances_dir/<id>/` (pidfile, sockets, logs, saved state) — so an agent that
//! restarts adopts its VMs by looking at the directory, and VMs outlive the agent.
//!
//! QEMU is not started with `-daemonize`: in QEMU 7.2 daemonizing forks and calls setsid after
//! the seccomp sandbox is installed, which `spawn=deny`/`elevateprivileges=deny` forbid. Instead the
//! agent spawns QEMU in its own process group (so signals to the agent's group never reach it),
//! with stdio on `qemu.log`, and a thread reaps it; when the agent exits QEMU is re-parented
//! and keeps running.

mod accel;
mod migrate;
mod process;
mod qmp;

pub use accel::{choose_accel, Accel};
pub use migrate::MigrationStats;

use crate::driver::{Driver, DriverError, DriverResult, PowerState, VmSpec, VolumeSpec};
use process::{pid_matches, signal, wait_gone};
use qmp::Qmp;
use serde_json::{json, Value};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const QEMU_IMG: &str = "qemu-img";
/// Per-instance file names (inside `instances_dir/<id>/`).
const QMP_SOCK: &str = "qmp.sock";
const CONSOLE_SOCK: &str = "console.sock";
const CONSOLE_LOG: &str = "console.log";
const PIDFILE: &str = "qemu.pid";
const QEMU_LOG: &str = "qemu.log";
const STATE: &str = "suspend.state";
/// The state being written; renamed to `STATE` only once complete, so a crash mid-save never
/// looks like a suspended VM.
const STATE_PARTIAL: &str = "suspend.state.partial";

/// Reading/writing one QMP message.
const QMP_TIMEOUT: Duration = Duration::from_secs(15);
/// `power_state` should answer quickly even if the monitor is busy.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// From spawn until QMP answers.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Saving or loading memory (large VMs on slow disks take a while).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const POLL: Duration = Duration::from_millis(100);

/// The real hypervisor driver. Cheap to create; holds no per-VM state.
pub struct QemuDriver {
    instances_dir: PathBuf,
    accel: Accel,
    run_as: Option<String>,
}

/// Paths of one instance's files.
struct Files {
    dir: PathBuf,
    qmp: PathBuf,
    console_sock: PathBuf,
    console_log: PathBuf,
    pidfile: PathBuf,
    qemu_log: PathBuf,
    state: PathBuf,
    state_partial: PathBuf,
}

fn failed(what: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(what.to_string())
}

/// Ids become path components and QEMU arguments: only accept what a UUID (or a test id) uses.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Maps QEMU's run state (`query-status`) to Nova's power state.
fn power_of(status: &str) -> PowerState {
    match status {
        "running" => PowerState::Running,
        "shutdown" => PowerState::Shutdown,
        "guest-panicked" | "internal-error" => PowerState::Crashed,
        // ACPI S3 inside the guest; Nova reports that as suspended too.
        "suspended" => PowerState::Suspended,
        // paused, prelaunch, inmigrate, postmigrate, io-error, watchdog, debug, …: vCPUs stopped.
        _ => PowerState::Paused,
    }
}

async fn query_status(q: &mut Qmp) -> DriverResult<String> {
    let r = q.execute("query-status", None).await?;
    r.get("status")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| failed(format!("query-status: unexpected answer {r}")))
}

impl QemuDriver {
    /// `run_as`: user QEMU switches to (`-runas`) once it has opened its files as root; the
    /// VM's disk, config drive and volumes are then given to it, and the image under the disk
    /// made readable to its group (see `process::grant_access`).
    pub fn new(instances_dir: PathBuf, accel: Accel, run_as: Option<String>) -> QemuDriver {
        QemuDriver {
            instances_dir,
            accel,
            run_as,
        }
    }

    fn files(&self, id: &str) -> DriverResult<Files> {
        if !valid_id(id) {
            return Err(failed(format!("invalid instance id {id:?}")));
        }
        let dir = self.instances_dir.join(id);
        Ok(Files {
            qmp: dir.join(QMP_SOCK),
            console_sock: dir.join(CONSOLE_SOCK),
            console_log: dir.join(CONSOLE_LOG),
            pidfile: dir.join(PIDFILE),
            qemu_log: dir.join(QEMU_LOG),
            state: dir.join(STATE),
            state_partial: dir.join(STATE_PARTIAL),
            dir,
        })
    }

    /// The pid in the pidfile, if that process is alive and is this instance's QEMU (a recycled
    /// pid belonging to something else is never adopted or signalled).
    fn live_pid(&self, f: &Files, id: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&f.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (pid > 1 && pid_matches(pid, id)).then_some(pid)
    }

    async fn connect(f: &Files, pid: i32) -> DriverResult<Qmp> {
        Qmp::connect(&f.qmp, QMP_TIMEOUT, Some(pid)).await
    }

    /// One QMP command on its own connection.
    async fn exec(f: &Files, pid: i32, cmd: &str, args: Option<Value>) -> DriverResult<Value> {
        Self::connect(f, pid).await?.execute(cmd, args).await
    }

    async fn status(f: &Files, pid: i32) -> DriverResult<String> {
        query_status(&mut Self::connect(f, pid).await?).await
    }

    fn require_pid(&self, f: &Files, id: &str) -> DriverResult<i32> {
        self.live_pid(f, id)
            .ok_or_else(|| DriverError::NotFound(id.to_string()))
    }

    /// Spawns QEMU and returns its pid and a QMP connection once the monitor answers.
    async fn launch(&self, spec: &VmSpec, incoming: bool) -> DriverResult<(i32, Qmp)> {
        let f = self.files(&spec.id)?;
        onestack_core::fsutil::create_private_dir(&f.dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", f.dir.display())))?;
        let cache = if process::direct_io_supported(&spec.disk) {
            "none"
        } else {
            "writeback"
        };
        let args = process::qemu_args(
            spec,
            &process::ArgPaths {
                qmp: &f.qmp,
                console_sock: &f.console_sock,
                console_log: &f.console_log,
                pidfile: &f.pidfile,
            },
            self.accel,
            self.run_as.as_deref(),
            cache,
            incoming,
        )?;
        if let Some(user) = &self.run_as {
            let user = process::resolve_user(user)?;
            let mut owned = vec![spec.disk.as_path()];
            owned.extend(spec.config_drive.as_deref());
            owned.extend(spec.volumes.iter().map(|v| v.path.as_path()));
            let shared: Vec<&Path> = spec.base.as_deref().into_iter().collect();
            process::grant_access(&user, &f.dir, &owned, &shared)?;
        }
        let _ = std::fs::remove_file(&f.pidfile);
        let (pid, mut exited) = process::spawn_detached(&args, &f.dir, &f.qemu_log)?;
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        loop {
            if let Ok(status) = exited.try_recv() {
                return Err(failed(format!(
                    "QEMU exited while starting ({status}): {}",
                    process::log_tail(&f.qemu_log)
                )));
            }
            if f.qmp.exists() {
                if let Ok(q) = Qmp::connect(&f.qmp, QUERY_TIMEOUT, Some(pid)).await {
                    return Ok((pid, q));
                }
            }
            if Instant::now() >= deadline {
                let _ = signal(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(failed(format!(
                    "QEMU did not answer on {} within {LAUNCH_TIMEOUT:?}: {}",
                    f.qmp.display(),
                    process::log_tail(&f.qemu_log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends QEMU for good: `quit`, then SIGTERM, then SIGKILL; Ok once the process is gone.
    async fn hard_stop(f: &Files, id: &str, pid: i32) -> DriverResult<()> {
        if let Ok(q) = Qmp::connect(&f.qmp, QUERY_TIMEOUT, Some(pid)).await {
            if q.quit().await.is_ok() && wait_gone(pid, id, Duration::from_secs(10)).await {
                return Ok(());
            }
        }
        for (sig, wait) in [
            (nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5)),
            (nix::sys::signal::Signal::SIGKILL, Duration::from_secs(15)),
        ] {
            if !pid_matches(pid, id) {
                return Ok(());
            }
            signal(pid, sig).map_err(|e| failed(format!("cannot signal QEMU pid {pid}: {e}")))?;
            if wait_gone(pid, id, wait).await {
                return Ok(());
            }
        }
        Err(failed(format!(
            "QEMU pid {pid} does not exit even after SIGKILL"
        )))
    }

    /// Kills a QEMU that failed half-way through being set up, keeping the original error.
    async fn abandon(f: &Files, id: &str, pid: i32, err: DriverError) -> DriverError {
        if let Err(e) = Self::hard_stop(f, id, pid).await {
            tracing::warn!(id, pid, error = %e, "cannot clean up QEMU");
        }
        err
    }

    /// `system_reset`, then `cont` until the guest runs (after a reset from `shutdown` or a pause
    /// QEMU sits in `prelaunch`).
    async fn reset_and_run(f: &Files, pid: i32) -> DriverResult<()> {
        let mut q = Self::connect(f, pid).await?;
        q.execute("system_reset", None).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match query_status(&mut q).await?.as_str() {
                "running" => return Ok(()),
                // The reset request is handled by QEMU's main loop shortly after it is queued.
                "shutdown" | "guest-panicked" | "internal-error" => {}
                _ => {
                    q.execute("cont", None).await?;
                }
            }
            if Instant::now() >= deadline {
                return Err(failed("the VM does not run after system_reset"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until QEMU reports `want` (Ok(true)), the process is gone (Ok(false)) or `deadline`.
    async fn wait_status(
        f: &Files,
        id: &str,
        pid: i32,
        want: &str,
        deadline: Instant,
    ) -> DriverResult<bool> {
        loop {
            if !pid_matches(pid, id) {
                return Ok(false);
            }
            if let Ok(s) = Self::status(f, pid).await {
                if s == want {
                    return Ok(true);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(failed(format!("timed out waiting for status {want}")));
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    async fn do_start(&self, spec: &VmSpec) -> DriverResult<()> {
        let f = self.files(&spec.id)?;
        if let Some(pid) = self.live_pid(&f, &spec.id) {
            match Self::status(&f, pid).await.as_deref() {
                Ok("running") | Ok("paused") => return Ok(()),
                _ => Self::hard_stop(&f, &spec.id, pid).await?,
            }
        }
        if f.state.exists() {
            // Like libvirt's managed save: starting a suspended VM restores it, since booting
            // afresh would make the saved memory inconsistent with the disk.
            return self.do_resume(spec).await;
        }
        let (pid, mut q) = self.launch(spec, false).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match query_status(&mut q).await {
                Ok(s) if s == "running" => return Ok(()),
                Ok(s) if Instant::now() >= deadline => {
                    let e = failed(format!("QEMU started but its status is {s}"));
                    return Err(Self::abandon(&f, &spec.id, pid, e).await);
                }
                Ok(_) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    drop(q);
                    return Err(Self::abandon(&f, &spec.id, pid, e).await);
                }
            }
        }
    }

    async fn do_stop(&self, id: &str, grace: Duration) -> DriverResult<()> {
        let f = self.files(id)?;
        let Some(pid) = self.live_pid(&f, id) else {
            return Ok(());
        };
        let deadline = Instant::now() + grace;
        // A paused guest cannot act on the power button: only ask a running one.
        if Self::status(&f, pid).await.is_ok_and(|s| s == "running")
            && Self::exec(&f, pid, "system_powerdown", None).await.is_ok()
        {
            match Self::wait_status(&f, id, pid, "shutdown", deadline).await {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                Err(_) => tracing::info!(id, ?grace, "guest ignored ACPI shutdown; forcing"),
            }
        }
        Self::hard_stop(&f, id, pid).await
    }

    async fn do_reboot(&self, id: &str, hard: bool, grace: Duration) -> DriverResult<()> {
        let f = self.files(id)?;
        let pid = self.require_pid(&f, id)?;
        if !hard
            && Self::status(&f, pid).await.is_ok_and(|s| s == "running")
            && Self::exec(&f, pid, "system_powerdown", None).await.is_ok()
        {
            // -no-shutdown keeps QEMU alive in status `shutdown` once the guest powers off.
            match Self::wait_status(&f, id, pid, "shutdown", Instant::now() + grace).await {
                Ok(false) => return Err(failed("QEMU exited during a soft reboot")),
                Ok(true) => {}
                Err(_) => tracing::info!(id, ?grace, "guest ignored ACPI shutdown; resetting"),
            }
        }
        Self::reset_and_run(&f, pid).await
    }

    async fn do_suspend(&self, id: &str) -> DriverResult<()> {
        let f = self.files(id)?;
        let Some(pid) = self.live_pid(&f, id) else {
            return if f.state.exists() {
                Ok(())
            } else {
                Err(DriverError::NotFound(id.to_string()))
            };
        };
        let mut q = Self::connect(&f, pid).await?;
        let was = query_status(&mut q).await?;
        if matches!(power_of(&was), PowerState::Shutdown | PowerState::Crashed) {
            return Err(failed(format!("cannot suspend a VM in status {was}")));
        }
        q.execute("stop", None).await?;
        match Self::save_state(&f, &mut q).await {
            Ok(()) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&f.state_partial);
                if was == "running" {
                    if let Err(c) = q.execute("cont", None).await {
                        tracing::warn!(id, error = %c, "cannot continue the VM after a failed save");
                    }
                }
                return Err(e);
            }
        }
        let _ = q.quit().await;
        if wait_gone(pid, id, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Self::hard_stop(&f, id, pid).await
        }
    }

    /// Streams RAM and device state into `suspend.state` through a descriptor passed over QMP
    /// (`exec:` migration would need `spawn=allow`), then makes the file durable and final.
    async fn save_state(f: &Files, q: &mut Qmp) -> DriverResult<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&f.state_partial)
            .map_err(|e| failed(format!("cannot create {}: {e}", f.state_partial.display())))?;
        // The default migration bandwidth cap (32 MiB/s) is meant for networks, not a local file.
        q.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": 1u64 << 40 })),
        )
        .await?;
        q.execute_with_fd(
            "getfd",
            Some(json!({ "fdname": "onestack-save" })),
            file.as_fd(),
        )
        .await?;
        if let Err(e) = q
            .execute("migrate", Some(json!({ "uri": "fd:onestack-save" })))
            .await
        {
            let _ = q
                .execute("closefd", Some(json!({ "fdname": "onestack-save" })))
                .await;
            return Err(e);
        }
        let deadline = Instant::now() + MIGRATE_TIMEOUT;
        loop {
            let m = q.execute("query-migrate", None).await?;
            match m.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    let why = m.get("error-desc").and_then(Value::as_str).unwrap_or("");
                    return Err(failed(format!("saving the VM state failed: {why}")));
                }
                _ if Instant::now() >= deadline => {
                    let _ = q.execute("migrate_cancel", None).await;
                    return Err(failed("saving the VM state timed out"));
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(failed)?
            .map_err(|e| failed(format!("cannot sync the saved state: {e}")))?;
        std::fs::rename(&f.state_partial, &f.state)
            .map_err(|e| failed(format!("cannot rename the saved state: {e}")))
    }

    async fn do_resume(&self, spec: &VmSpec) -> DriverResult<()> {
        let id = spec.id.as_str();
        let f = self.files(id)?;
        if let Some(pid) = self.live_pid(&f, id) {
            let s = Self::status(&f, pid).await;
            if !f.state.exists() && matches!(s.as_deref(), Ok("running") | Ok("paused")) {
                return Ok(()); // already resumed
            }
            // A leftover from an interrupted resume (still `inmigrate`) or a dead guest.
            Self::hard_stop(&f, id, pid).await?;
        }
        let state = std::fs::File::open(&f.state).map_err(|e| {
            failed(format!(
                "no saved state to resume ({}: {e})",
                f.state.display()
            ))
        })?;
        let (pid, mut q) = self.launch(spec, true).await?;
        match Self::load_state(&mut q, &state).await {
            Ok(()) => {}
            Err(e) => {
                drop(q);
                let e = failed(format!("{e}; {}", process::log_tail(&f.qemu_log)));
                return Err(Self::abandon(&f, id, pid, e).await);
            }
        }
        if let Err(e) = std::fs::remove_file(&f.state) {
            tracing::warn!(id, error = %e, "cannot remove the saved state");
        }
        Ok(())
    }

    /// Feeds the saved state to a QEMU started with `-incoming defer` and lets the guest run.
    async fn load_state(q: &mut Qmp, state: &std::fs::File) -> DriverResult<()> {
        q.execute_with_fd(
            "getfd",
            Some(json!({ "fdname": "onestack-restore" })),
            state.as_fd(),
        )
        .await?;
        q.execute(
            "migrate-incoming",
            Some(json!({ "uri": "fd:onestack-restore" })),
        )
        .await?;
        q.set_timeout(MIGRATE_TIMEOUT);
        let deadline = Instant::now() + MIGRATE_TIMEOUT;
        loop {
            match query_status(q).await?.as_str() {
                "running" => return Ok(()),
                "inmigrate" => {
                    let m = q.execute("query-migrate", None).await?;
                    if m.get("status").and_then(Value::as_str) == Some("failed") {
                        let why = m.get("error-desc").and_then(Value::as_str).unwrap_or("");
                        return Err(failed(format!("restoring the VM state failed: {why}")));
                    }
                }
                // The state was saved from a stopped VM, so it is restored stopped.
                "paused" | "postmigrate" | "prelaunch" => {
                    q.execute("cont", None).await?;
                }
                s => return Err(failed(format!("unexpected status {s} while restoring"))),
            }
            if Instant::now() >= deadline {
                return Err(failed("restoring the VM state timed out"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn do_destroy(&self, id: &str) -> DriverResult<()> {
        let f = self.files(id)?;
        match self.live_pid(&f, id) {
            Some(pid) => Self::hard_stop(&f, id, pid).await,
            None => Ok(()),
        }
    }

    async fn do_power_state(&self, id: &str) -> PowerState {
        let Ok(f) = self.files(id) else {
            return PowerState::NoState;
        };
        if !f.dir.is_dir() {
            return PowerState::NoState;
        }
        if let Some(pid) = self.live_pid(&f, id) {
            let status = match Qmp::connect(&f.qmp, QUERY_TIMEOUT, Some(pid)).await {
                Ok(mut q) => query_status(&mut q).await,
                Err(e) => Err(e),
            };
            match status {
                Ok(s) => return power_of(&s),
                // Alive but the monitor is busy with another client: it is not shut down.
                Err(_) if pid_matches(pid, id) => return PowerState::Running,
                Err(_) => {}
            }
        }
        if f.state.exists() {
            PowerState::Suspended
        } else if f.console_log.exists() || f.pidfile.exists() {
            // It ran before (QEMU removes its pidfile on exit; the console log stays).
            PowerState::Shutdown
        } else {
            PowerState::NoState
        }
    }

    async fn do_running(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.instances_dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| {
                self.files(id)
                    .is_ok_and(|f| self.live_pid(&f, id).is_some())
            })
            .collect();
        ids.sort();
        ids
    }

    async fn do_snapshot(&self, id: &str, disk: &Path, dest: &Path) -> DriverResult<()> {
        let f = self.files(id)?;
        // Pausing flushes the guest's writes and keeps the disk still while it is copied.
        let mut paused_pid = None;
        if let Some(pid) = self.live_pid(&f, id) {
            if Self::status(&f, pid).await? == "running" {
                Self::exec(&f, pid, "stop", None).await?;
                paused_pid = Some(pid);
            }
        }
        let copied = convert(disk, dest).await;
        if let Some(pid) = paused_pid {
            // Always resume, even when the copy failed.
            let mut resumed = Self::exec(&f, pid, "cont", None).await;
            if resumed.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                resumed = Self::exec(&f, pid, "cont", None).await;
            }
            if let Err(e) = resumed {
                copied?;
                return Err(failed(format!(
                    "snapshot taken but the VM stays paused: {e}"
                )));
            }
        }
        copied
    }
}

impl QemuDriver {
    /// Device ids QEMU has plugged (`/machine/peripheral`).
    async fn peripherals(f: &Files, pid: i32) -> DriverResult<Vec<String>> {
        let list = Self::exec(
            f,
            pid,
            "qom-list",
            Some(json!({"path": "/machine/peripheral"})),
        )
        .await?;
        Ok(list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn do_attach_volume(&self, id: &str, v: &VolumeSpec) -> DriverResult<()> {
        let f = self.files(id)?;
        let pid = self.require_pid(&f, id)?;
        let (node, serial) = process::volume_names(v)?;
        if Self::peripherals(&f, pid).await?.iter().any(|n| n == node) {
            return Ok(());
        }
        if let Some(user) = &self.run_as {
            let user = process::resolve_user(user)?;
            process::grant_access(&user, &f.dir, &[v.path.as_path()], &[])?;
        }
        let path = v
            .path
            .to_str()
            .ok_or_else(|| failed("volume path is not UTF-8"))?;
        // A node left by an earlier attempt whose device_add failed.
        let _ = Self::exec(&f, pid, "blockdev-del", Some(json!({"node-name": node}))).await;
        Self::exec(
            &f,
            pid,
            "blockdev-add",
            Some(json!({"driver": "qcow2", "node-name": node,
                        "file": {"driver": "file", "filename": path}})),
        )
        .await?;
        if let Err(e) = Self::exec(
            &f,
            pid,
            "device_add",
            Some(json!({"driver": "virtio-blk-pci", "drive": node, "id": node, "serial": serial})),
        )
        .await
        {
            let _ = Self::exec(&f, pid, "blockdev-del", Some(json!({"node-name": node}))).await;
            return Err(e);
        }
        Ok(())
    }

    async fn do_detach_volume(&self, id: &str, node: &str, timeout: Duration) -> DriverResult<()> {
        let f = self.files(id)?;
        let Some(pid) = self.live_pid(&f, id) else {
            return Ok(());
        };
        if Self::peripherals(&f, pid).await?.iter().any(|n| n == node) {
            // The guest must acknowledge the unplug (ACPI eject); a guest that holds on keeps it.
            Self::exec(&f, pid, "device_del", Some(json!({"id": node}))).await?;
            let deadline = Instant::now() + timeout;
            while Self::peripherals(&f, pid).await?.iter().any(|n| n == node) {
                if Instant::now() >= deadline {
                    return Err(failed(format!(
                        "the guest did not release the disk within {} s",
                        timeout.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let _ = Self::exec(&f, pid, "blockdev-del", Some(json!({"node-name": node}))).await;
        Ok(())
    }
}

/// `qemu-img convert` into a standalone qcow2 (no backing file). `-U`: QEMU holds the image lock.
async fn convert(disk: &Path, dest: &Path) -> DriverResult<()> {
    let out = tokio::process::Command::new(QEMU_IMG)
        .args(["convert", "-U", "-O", "qcow2"])
        .arg(disk)
        .arg(dest)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed(format!("cannot run {QEMU_IMG}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "{QEMU_IMG} convert failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Driver for QemuDriver {
    async fn start(&self, spec: &VmSpec) -> DriverResult<()> {
        self.do_start(spec).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> DriverResult<()> {
        self.do_stop(id, grace).await
    }

    async fn reboot(&self, id: &str, hard: bool, grace: Duration) -> DriverResult<()> {
        self.do_reboot(id, hard, grace).await
    }

    async fn pause(&self, id: &str) -> DriverResult<()> {
        let f = self.files(id)?;
        let pid = self.require_pid(&f, id)?;
        Self::exec(&f, pid, "stop", None).await.map(drop)
    }

    async fn unpause(&self, id: &str) -> DriverResult<()> {
        let f = self.files(id)?;
        let pid = self.require_pid(&f, id)?;
        Self::exec(&f, pid, "cont", None).await.map(drop)
    }

    async fn suspend(&self, id: &str) -> DriverResult<()> {
        self.do_suspend(id).await
    }

    async fn resume(&self, spec: &VmSpec) -> DriverResult<()> {
        self.do_resume(spec).await
    }

    async fn destroy(&self, id: &str) -> DriverResult<()> {
        self.do_destroy(id).await
    }

    async fn power_state(&self, id: &str) -> PowerState {
        self.do_power_state(id).await
    }

    async fn running(&self) -> Vec<String> {
        self.do_running().await
    }

    async fn snapshot(&self, id: &str, disk: &Path, dest: &Path) -> DriverResult<()> {
        self.do_snapshot(id, disk, dest).await
    }

    async fn prepare_incoming(&self, spec: &VmSpec, ip: &str) -> DriverResult<(u16, u16)> {
        self.do_prepare_incoming(spec, ip).await
    }

    async fn migrate_out(
        &self,
        id: &str,
        target_ip: &str,
        nbd_port: u16,
        mig_port: u16,
        max_bandwidth_mib: u64,
    ) -> DriverResult<MigrationStats> {
        self.do_migrate_out(id, target_ip, nbd_port, mig_port, max_bandwidth_mib)
            .await
    }

    async fn finish_incoming(&self, id: &str) -> DriverResult<()> {
        self.do_finish_incoming(id).await
    }

    async fn attach_volume(&self, id: &str, volume: &VolumeSpec) -> DriverResult<()> {
        self.do_attach_volume(id, volume).await
    }

    async fn detach_volume(&self, id: &str, node: &str, timeout: Duration) -> DriverResult<()> {
        self.do_detach_volume(id, node, timeout).await
    }

    fn console_log(&self, id: &str) -> PathBuf {
        self.instances_dir.join(id).join(CONSOLE_LOG)
    }

    fn console_socket(&self, id: &str) -> PathBuf {
        self.instances_dir.join(id).join(CONSOLE_SOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("4b2c1a52-0f7e-4d7f-9a43-1f0e5b0f6d2a"));
        for bad in ["", "..", "a/b", "-x", "a,b", "a b"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn statuses_map_to_power_states() {
        assert_eq!(power_of("running"), PowerState::Running);
        assert_eq!(power_of("paused"), PowerState::Paused);
        assert_eq!(power_of("inmigrate"), PowerState::Paused);
        assert_eq!(power_of("shutdown"), PowerState::Shutdown);
        assert_eq!(power_of("guest-panicked"), PowerState::Crashed);
        assert_eq!(power_of("internal-error"), PowerState::Crashed);
    }
}
