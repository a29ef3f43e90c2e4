//! Live migration between hosts without shared storage, the way libvirt does it: the target
//! starts QEMU paused with `-incoming defer` on a fresh overlay and exports that disk over NBD;
//! the source mirrors its disk into the export (`drive-mirror`, only what the overlay holds: the
//! image underneath is the same, verified, on both hosts), migrates memory once the mirror is in
//! step, and ends the mirror while the guest is paused; only then is the target resumed.

use super::{failed, query_status, Files, QemuDriver, POLL};
use crate::driver::{DriverResult, VmSpec};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The root disk's block device (QEMU names the first `if=virtio` drive so).
const ROOT_DRIVE: &str = "virtio0";
const MIRROR_JOB: &str = "onestack-mirror";
/// How long the disk copy may take to get in step, and memory to converge.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A free TCP port on `ip` (the OS picks; QEMU binds it right after).
fn free_port(ip: &str) -> DriverResult<u16> {
    let l = std::net::TcpListener::bind((ip, 0))
        .map_err(|e| failed(format!("cannot find a free port on {ip}: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| failed(format!("cannot find a free port on {ip}: {e}")))
}

/// What a finished outgoing migration measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct MigrationStats {
    /// The guest's pause, as QEMU measured it (ms).
    pub downtime_ms: u64,
    pub total_ms: u64,
}

impl QemuDriver {
    /// Target side: a paused VM waiting for memory on `ip:mig_port`, its disk exported on
    /// `ip:nbd_port`. Returns (nbd_port, mig_port).
    pub(crate) async fn do_prepare_incoming(
        &self,
        spec: &VmSpec,
        ip: &str,
    ) -> DriverResult<(u16, u16)> {
        let f = self.files(&spec.id)?;
        if let Some(pid) = self.live_pid(&f, &spec.id) {
            // A leftover of an earlier attempt.
            Self::hard_stop(&f, &spec.id, pid).await?;
        }
        let (pid, mut q) = self.launch(spec, true).await?;
        let r = async {
            let nbd_port = free_port(ip)?;
            q.execute(
                "nbd-server-start",
                Some(json!({"addr": {"type": "inet",
                                     "data": {"host": ip, "port": nbd_port.to_string()}}})),
            )
            .await?;
            q.execute(
                "nbd-server-add",
                Some(json!({"device": ROOT_DRIVE, "writable": true})),
            )
            .await?;
            let mig_port = free_port(ip)?;
            q.execute(
                "migrate-incoming",
                Some(json!({"uri": format!("tcp:{ip}:{mig_port}")})),
            )
            .await?;
            Ok((nbd_port, mig_port))
        }
        .await;
        match r {
            Ok(p) => Ok(p),
            Err(e) => {
                drop(q);
                Err(Self::abandon(&f, &spec.id, pid, e).await)
            }
        }
    }

    /// Target side, once the source has handed over: stop exporting and let the guest run.
    pub(crate) async fn do_finish_incoming(&self, id: &str) -> DriverResult<()> {
        let f = self.files(id)?;
        let pid = self.require_pid(&f, id)?;
        let _ = Self::exec(&f, pid, "nbd-server-stop", None).await;
        match Self::status(&f, pid).await?.as_str() {
            "running" => Ok(()),
            "inmigrate" => Err(failed("the incoming migration has not finished")),
            _ => {
                Self::exec(&f, pid, "cont", None).await?;
                Ok(())
            }
        }
    }

    /// Source side: mirror the disk into the target's export, migrate memory, end the mirror
    /// with the guest paused. On any failure the guest keeps running here.
    pub(crate) async fn do_migrate_out(
        &self,
        id: &str,
        target_ip: &str,
        nbd_port: u16,
        mig_port: u16,
        max_bandwidth_mib: u64,
    ) -> DriverResult<MigrationStats> {
        let f = self.files(id)?;
        let pid = self.require_pid(&f, id)?;
        let started = Instant::now();
        let r = self
            .migrate_steps(&f, pid, target_ip, nbd_port, mig_port, max_bandwidth_mib)
            .await;
        if r.is_err() {
            // Undo: no mirror, no migration, and the guest runs here.
            let _ = Self::exec(&f, pid, "migrate_cancel", None).await;
            let _ = Self::exec(
                &f,
                pid,
                "block-job-cancel",
                Some(json!({"device": MIRROR_JOB, "force": true})),
            )
            .await;
            let _ = Self::exec(
                &f,
                pid,
                "blockdev-del",
                Some(json!({"node-name": "onestack-mirror-target"})),
            )
            .await;
            if let Ok(s) = Self::status(&f, pid).await {
                if s != "running" {
                    let _ = Self::exec(&f, pid, "cont", None).await;
                }
            }
        }
        r.map(|downtime_ms| MigrationStats {
            downtime_ms,
            total_ms: started.elapsed().as_millis() as u64,
        })
    }

    async fn migrate_steps(
        &self,
        f: &Files,
        pid: i32,
        target_ip: &str,
        nbd_port: u16,
        mig_port: u16,
        max_bandwidth_mib: u64,
    ) -> DriverResult<u64> {
        let mut q = Self::connect(f, pid).await?;
        q.execute(
            "drive-mirror",
            Some(json!({
                "job-id": MIRROR_JOB,
                "device": ROOT_DRIVE,
                "target": format!("nbd://{target_ip}:{nbd_port}/{ROOT_DRIVE}"),
                "format": "raw",
                "mode": "existing",
                "sync": "top",
            })),
        )
        .await?;
        // In step: every block copied; from now on writes are mirrored as they happen.
        let deadline = Instant::now() + MIRROR_TIMEOUT;
        loop {
            let jobs = q.execute("query-block-jobs", None).await?;
            let job = jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["device"] == MIRROR_JOB).cloned());
            match job {
                Some(j) if j["ready"] == Value::Bool(true) => break,
                Some(_) => {}
                None => return Err(failed("the disk copy to the target stopped")),
            }
            if Instant::now() >= deadline {
                return Err(failed("the disk copy to the target did not get in step"));
            }
            tokio::time::sleep(POLL).await;
        }
        if max_bandwidth_mib > 0 {
            q.execute(
                "migrate-set-parameters",
                Some(json!({"max-bandwidth": max_bandwidth_mib << 20})),
            )
            .await?;
        }
        q.execute(
            "migrate",
            Some(json!({"uri": format!("tcp:{target_ip}:{mig_port}")})),
        )
        .await?;
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        let downtime = loop {
            let m = q.execute("query-migrate", None).await?;
            match m["status"].as_str().unwrap_or("") {
                "completed" => break m["downtime"].as_u64().unwrap_or(0),
                "failed" | "cancelled" => {
                    let why = m["error-desc"].as_str().unwrap_or("the target went away");
                    return Err(failed(format!("memory migration failed: {why}")));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(failed("memory migration did not converge"));
            }
            tokio::time::sleep(POLL).await;
        };
        // The guest is paused here: cancelling a job in step writes what is left and ends it.
        q.execute("block-job-cancel", Some(json!({"device": MIRROR_JOB})))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let jobs = q.execute("query-block-jobs", None).await?;
            if !jobs
                .as_array()
                .is_some_and(|a| a.iter().any(|j| j["device"] == MIRROR_JOB))
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(failed("the disk copy did not finish"));
            }
            tokio::time::sleep(POLL).await;
        }
        let status = query_status(&mut q).await?;
        if status != "postmigrate" {
            return Err(failed(format!(
                "unexpected status {status} after migrating"
            )));
        }
        Ok(downtime)
    }
}
