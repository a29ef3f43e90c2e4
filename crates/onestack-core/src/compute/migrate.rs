//! Live migration (`os-migrateLive`) between compute hosts without shared storage. The
//! controller only moves the record through the phases; the two agents do the work:
//!
//! 1. `prepare`: the server is `migrating`, the target host named in `migration_host`, its
//!    ports bound there too (inactive binding); the target's agent starts a paused VM waiting
//!    for memory, with a fresh disk exported over NBD, and reports `ready` with its ports.
//! 2. `transfer`: the source's agent copies disk and memory and reports `done` (the server is
//!    then the target's: host and port bindings move) or `failed` (it stays on the source,
//!    running, and the target's leftovers are reaped).
//! 3. `resume`: the target's agent lets the guest run and reports `resumed`.

use super::proto::{self, MigrationReport};
use super::state::{self, Action, TaskState, VmState};
use super::{server_not_found, ComputeService};
use crate::image::now;
use crate::policy::AuthContext;
use crate::{CoreError, CoreResult};
use onestack_store::{Changes, Expect, InstanceRecord, SqlValue};
use serde::{Deserialize, Serialize};

/// A running live migration, as the instance record keeps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// `live` (os-migrateLive) or `cold` (migrate: off, moved, on, VERIFY_RESIZE).
    #[serde(default = "live")]
    pub kind: String,
    #[serde(default)]
    pub was_running: bool,
    /// Cold: the source agent's URL of the disk, with a token it checks.
    #[serde(default)]
    pub disk_url: String,
    pub source: String,
    pub target: String,
    pub source_ip: String,
    pub target_ip: String,
    pub phase: String,
    pub nbd_port: u16,
    pub mig_port: u16,
}

fn live() -> String {
    "live".into()
}

/// How long a target gets to be ready before the source gives up.
pub const PREPARE_TIMEOUT_SECS: u64 = 120;

impl ComputeService {
    fn migration_of(inst: &InstanceRecord) -> Option<MigrationInfo> {
        inst.migration_info
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
    }

    /// `os-migrateLive` (admin): to `host`, or one the scheduler picks among the others.
    pub async fn live_migrate(
        &self,
        ctx: &AuthContext,
        id: &str,
        host: Option<&str>,
    ) -> CoreResult<()> {
        // Others' servers are 404 before the role is looked at, as in Nova.
        self.get_server(ctx, id).await?;
        ctx.require_admin("os_compute_api:os-migrate-server:migrate_live")?;
        let inst = self
            .get_server_for_update(
                ctx,
                id,
                "os_compute_api:os-migrate-server:migrate_live",
                true,
            )
            .await?;
        let vm = VmState::parse(&inst.vm_state).unwrap_or(VmState::Error);
        let task = inst.task_state.as_deref().and_then(TaskState::parse);
        state::request(vm, task, Action::LiveMigrate).map_err(|c| CoreError::Conflict(c.0))?;
        if inst.power_state != 1 {
            return Err(CoreError::Conflict(format!(
                "Instance {id} is not running; only running servers are live-migrated (cold migration moves the others)."
            )));
        }
        if !self.volumes_of(id).await?.is_empty() {
            return Err(CoreError::BadRequest(
                "Live migration of a server with volumes is not supported yet: volume data is served by the controller's host only. Detach them first."
                    .into(),
            ));
        }
        let source = inst
            .host
            .clone()
            .ok_or_else(|| CoreError::Conflict(format!("Instance {id} has no host")))?;
        let target = self.migration_target(&inst, &source, host).await?;
        let ip_of = |name: &str, hosts: &[onestack_store::HostRecord]| {
            hosts
                .iter()
                .find(|h| h.host == name)
                .map(|h| h.host_ip.clone())
                .unwrap_or_default()
        };
        let hosts = self.store.list_hosts().await?;
        let info = MigrationInfo {
            kind: "live".into(),
            source: source.clone(),
            target: target.clone(),
            source_ip: ip_of(&source, &hosts),
            target_ip: ip_of(&target, &hosts),
            phase: "prepare".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&info).map_err(|e| CoreError::Internal(e.to_string()))?;
        if let Some(net) = self.network.get() {
            net.set_migration_binding(id, Some(&target)).await?;
        }
        let ok = self
            .store
            .update_instance(
                id,
                &Expect::TaskIn(vec![None]),
                &vec![
                    ("task_state", TaskState::Migrating.as_str().into()),
                    ("migration_host", target.clone().into()),
                    ("migration_info", json.into()),
                    ("updated_at", now().into()),
                ],
            )
            .await?;
        if !ok {
            if let Some(net) = self.network.get() {
                let _ = net.set_migration_binding(id, None).await;
            }
            return Err(CoreError::Conflict(format!(
                "Cannot 'os-migrateLive' instance {id} while it is changing state"
            )));
        }
        self.wake_host(&target).await;
        tracing::info!(instance = %id, %source, %target, "live migration started");
        self.notify();
        Ok(())
    }

    async fn wake_host(&self, host: &str) {
        // A no-op update of an instance bumps its host's generation; a host without instances
        // gets its bump from the migration_host lookup instead.
        let _ = self.store.bump_host_generation(host).await;
    }

    /// This host's part in the instance's live migration, for its desired state.
    pub(crate) fn desired_migration(
        &self,
        inst: &InstanceRecord,
        host: &str,
    ) -> Option<proto::Migration> {
        let m = Self::migration_of(inst)?;
        let source_active = match m.kind.as_str() {
            "cold" => true,
            _ => m.phase != "resume",
        };
        let (role, peer_ip, my_ip) = if m.source == host && source_active {
            ("source", m.target_ip.clone(), m.source_ip.clone())
        } else if m.target == host {
            ("target", m.source_ip.clone(), m.target_ip.clone())
        } else {
            return None;
        };
        Some(proto::Migration {
            kind: m.kind.clone(),
            was_running: m.was_running,
            disk_url: if role == "target" {
                m.disk_url.clone()
            } else {
                String::new()
            },
            role: role.into(),
            phase: m.phase.clone(),
            peer_ip,
            my_ip,
            nbd_port: m.nbd_port,
            mig_port: m.mig_port,
            max_bandwidth_mib: self.cfg.live_migration_bandwidth_mib,
        })
    }

    /// An agent's word on its part of a live migration; each event is taken only from the host
    /// whose part it is, and only in its phase.
    pub async fn migration_report(
        &self,
        host: &str,
        id: &str,
        r: MigrationReport,
    ) -> CoreResult<()> {
        let inst = self
            .store
            .get_instance(id)
            .await
            .map_err(|_| server_not_found(id))?;
        let Some(mut m) = Self::migration_of(&inst) else {
            return Ok(()); // over already (a late or repeated report)
        };
        if m.kind == "cold" {
            return self.cold_report(&inst, m, host, r).await;
        }
        let from_source = host == m.source;
        let from_target = host == m.target;
        if !from_source && !from_target {
            return Err(server_not_found(id));
        }
        let t = now();
        match (r.event.as_str(), m.phase.as_str()) {
            ("ready", "prepare") if from_target => {
                m.phase = "transfer".into();
                m.nbd_port = r.nbd_port.unwrap_or(0);
                m.mig_port = r.mig_port.unwrap_or(0);
                self.save_migration(id, &m, vec![]).await?;
                self.wake_host(&m.source).await;
            }
            ("done", "transfer") if from_source => {
                tracing::info!(instance = %id, downtime_ms = r.downtime_ms.unwrap_or(0), total_ms = r.total_ms.unwrap_or(0), target = %m.target, "live migration: memory and disk moved");
                if let Some(net) = self.network.get() {
                    net.bind_server_ports(id, &m.target).await?;
                }
                m.phase = "resume".into();
                self.save_migration(
                    id,
                    &m,
                    vec![
                        ("host", m.target.clone().into()),
                        ("node", m.target.clone().into()),
                    ],
                )
                .await?;
                self.wake_host(&m.target).await;
            }
            ("resumed", "resume") if from_target => {
                tracing::info!(instance = %id, host = %m.target, "live migration finished");
                self.end_migration(id, None, &t).await?;
            }
            ("failed", phase) => {
                let why = r.error.unwrap_or_else(|| "unknown error".into());
                tracing::warn!(instance = %id, %host, phase, error = %why, "live migration failed");
                if phase == "resume" {
                    // The guest left the source and did not start on the target.
                    self.end_migration(
                        id,
                        Some(format!(
                            "Live migration to {} failed to resume: {why}",
                            m.target
                        )),
                        &t,
                    )
                    .await?;
                } else {
                    if let Some(net) = self.network.get() {
                        net.set_migration_binding(id, None).await?;
                    }
                    self.end_migration(id, None, &t).await?;
                    self.wake_host(&m.target).await;
                }
            }
            _ => {
                tracing::info!(instance = %id, %host, event = %r.event, phase = %m.phase, "stale migration report ignored");
            }
        }
        self.notify();
        Ok(())
    }

    async fn save_migration(
        &self,
        id: &str,
        m: &MigrationInfo,
        mut extra: Changes,
    ) -> CoreResult<()> {
        let json = serde_json::to_string(m).map_err(|e| CoreError::Internal(e.to_string()))?;
        extra.push(("migration_info", json.into()));
        extra.push(("updated_at", now().into()));
        self.store
            .update_instance(
                id,
                &Expect::TaskIn(vec![Some(TaskState::Migrating.as_str().into())]),
                &extra,
            )
            .await?;
        Ok(())
    }

    /// The migration is over: ACTIVE where the server now is, or ERROR with `fault`.
    async fn end_migration(&self, id: &str, fault: Option<String>, t: &str) -> CoreResult<()> {
        let mut changes: Changes = vec![
            ("task_state", SqlValue::Text(None)),
            ("migration_host", SqlValue::Text(None)),
            ("migration_info", SqlValue::Text(None)),
            ("updated_at", t.into()),
        ];
        if let Some(f) = fault {
            changes.extend([
                ("vm_state", VmState::Error.as_str().into()),
                ("fault_code", 500i64.into()),
                ("fault_message", f.into()),
                ("fault_details", "".into()),
                ("fault_created", t.into()),
            ]);
        }
        self.store
            .update_instance(
                id,
                &Expect::TaskIn(vec![Some(TaskState::Migrating.as_str().into())]),
                &changes,
            )
            .await?;
        Ok(())
    }
}

impl ComputeService {
    /// The host a migration goes to: `host`, or the scheduler's pick among the other hosts.
    async fn migration_target(
        &self,
        inst: &InstanceRecord,
        source: &str,
        host: Option<&str>,
    ) -> CoreResult<String> {
        if host == Some(source) {
            return Err(CoreError::BadRequest(format!(
                "The target host can't be the same one ({source})."
            )));
        }
        let _guard = self.store.lock(onestack_store::LockName::Placement).await?;
        let hosts: Vec<_> = self
            .store
            .list_hosts()
            .await?
            .into_iter()
            .filter(|h| h.host != source)
            .collect();
        let usage = self.store.host_usage().await?;
        let demand = super::scheduler::Demand {
            vcpus: inst.vcpus,
            memory_mb: inst.memory_mb,
            disk_gb: inst.root_gb + inst.ephemeral_gb,
            availability_zone: None,
            host: host.map(str::to_string),
        };
        let picked = super::scheduler::pick(&hosts, &usage, &demand, &self.cfg.ratios, |h| {
            self.host_alive(h)
        });
        super::scheduler::count_decision("migrate", picked.is_ok());
        picked.map_err(|super::scheduler::NoValidHost(why)| {
            tracing::warn!(instance = %inst.id, reasons = ?why, "no host to migrate to");
            CoreError::BadRequest(format!(
                "{} (no other host can take server {})",
                super::scheduler::NO_VALID_HOST,
                inst.id
            ))
        })
    }

    /// `migrate` (admin), Nova's cold migration: the server is stopped on its host, its disk
    /// fetched by the target host (from `disk_url`, the source agent's, with a signed token), and
    /// started there if it ran; it is then VERIFY_RESIZE until confirmed (the source's copy goes)
    /// or reverted (back to the source).
    pub async fn cold_migrate(
        &self,
        ctx: &AuthContext,
        id: &str,
        host: Option<&str>,
        disk_url: String,
    ) -> CoreResult<()> {
        self.get_server(ctx, id).await?;
        ctx.require_admin("os_compute_api:os-migrate-server:migrate")?;
        let inst = self
            .get_server_for_update(ctx, id, "os_compute_api:os-migrate-server:migrate", true)
            .await?;
        let vm = VmState::parse(&inst.vm_state).unwrap_or(VmState::Error);
        let task = inst.task_state.as_deref().and_then(TaskState::parse);
        state::request(vm, task, Action::Resize)
            .map_err(|c| CoreError::Conflict(c.0.replace("'resize'", "'migrate'")))?;
        if !self.volumes_of(id).await?.is_empty() {
            return Err(CoreError::BadRequest(
                "Migration of a server with volumes is not supported yet: volume data is served by the controller's host only. Detach them first."
                    .into(),
            ));
        }
        let source = inst
            .host
            .clone()
            .ok_or_else(|| CoreError::Conflict(format!("Instance {id} has no host")))?;
        let target = self.migration_target(&inst, &source, host).await?;
        let hosts = self.store.list_hosts().await?;
        let ip_of = |name: &str| {
            hosts
                .iter()
                .find(|h| h.host == name)
                .map(|h| h.host_ip.clone())
                .unwrap_or_default()
        };
        let info = MigrationInfo {
            kind: "cold".into(),
            was_running: inst.power_state == 1,
            disk_url,
            source: source.clone(),
            target: target.clone(),
            source_ip: ip_of(&source),
            target_ip: ip_of(&target),
            phase: "prepare".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&info).map_err(|e| CoreError::Internal(e.to_string()))?;
        let old = serde_json::to_string(&super::resize::FlavorCopy::of(&inst))
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        if let Some(net) = self.network.get() {
            net.set_migration_binding(id, Some(&target)).await?;
        }
        let ok = self
            .store
            .update_instance(
                id,
                &Expect::TaskIn(vec![None]),
                &vec![
                    ("task_state", TaskState::ResizeMigrating.as_str().into()),
                    ("old_flavor", old.into()),
                    ("migration_host", target.clone().into()),
                    ("migration_info", json.into()),
                    ("updated_at", now().into()),
                ],
            )
            .await?;
        if !ok {
            if let Some(net) = self.network.get() {
                let _ = net.set_migration_binding(id, None).await;
            }
            return Err(CoreError::Conflict(format!(
                "Cannot 'migrate' instance {id} while it is changing state"
            )));
        }
        self.wake_host(&target).await;
        tracing::info!(instance = %id, %source, %target, "cold migration started");
        self.notify();
        Ok(())
    }

    /// The cold migration's events; see `cold_migrate`.
    async fn cold_report(
        &self,
        inst: &InstanceRecord,
        mut m: MigrationInfo,
        host: &str,
        r: MigrationReport,
    ) -> CoreResult<()> {
        let id = inst.id.as_str();
        let (from_source, from_target) = (host == m.source, host == m.target);
        let t = now();
        let resizing = Expect::TaskIn(vec![Some(TaskState::ResizeMigrating.as_str().into())]);
        let reverting = Expect::TaskIn(vec![Some(TaskState::ResizeReverting.as_str().into())]);
        let json = |m: &MigrationInfo| serde_json::to_string(m).unwrap_or_default();
        match (r.event.as_str(), m.phase.as_str()) {
            ("ready", "prepare") if from_source => {
                m.phase = "transfer".into();
                self.store
                    .update_instance(id, &resizing, &vec![("migration_info", json(&m).into())])
                    .await?;
                self.wake_host(&m.target).await;
            }
            ("done", "transfer") if from_target => {
                if let Some(net) = self.network.get() {
                    net.bind_server_ports(id, &m.target).await?;
                }
                m.phase = "verify".into();
                let power: i64 = if m.was_running { 1 } else { 4 };
                self.store
                    .update_instance(
                        id,
                        &resizing,
                        &vec![
                            ("host", m.target.clone().into()),
                            ("node", m.target.clone().into()),
                            ("migration_host", m.source.clone().into()),
                            ("migration_info", json(&m).into()),
                            ("vm_state", VmState::Resized.as_str().into()),
                            ("task_state", SqlValue::Text(None)),
                            ("power_state", power.into()),
                            ("updated_at", t.clone().into()),
                        ],
                    )
                    .await?;
                self.wake_host(&m.target).await;
                tracing::info!(instance = %id, target = %m.target, "cold migration: moved, waiting for confirmation");
            }
            ("reverted", "revert") if from_target => {
                if let Some(net) = self.network.get() {
                    net.bind_server_ports(id, &m.source).await?;
                }
                let mut changes: Changes = vec![
                    ("host", m.source.clone().into()),
                    ("node", m.source.clone().into()),
                    ("migration_host", SqlValue::Text(None)),
                    ("migration_info", SqlValue::Text(None)),
                    ("old_flavor", SqlValue::Text(None)),
                    ("vm_state", VmState::Stopped.as_str().into()),
                    ("power_state", 4i64.into()),
                    ("updated_at", t.clone().into()),
                ];
                // Back to how it was: a server that ran starts again on its source.
                changes.push((
                    "task_state",
                    if m.was_running {
                        TaskState::PoweringOn.as_str().into()
                    } else {
                        SqlValue::Text(None)
                    },
                ));
                self.store.update_instance(id, &reverting, &changes).await?;
                self.wake_host(&m.source).await;
            }
            ("failed", phase) => {
                let why = r.error.unwrap_or_else(|| "unknown error".into());
                tracing::warn!(instance = %id, %host, phase, error = %why, "cold migration failed");
                if phase == "revert" {
                    self.store
                        .update_instance(
                            id,
                            &reverting,
                            &vec![
                                ("vm_state", VmState::Error.as_str().into()),
                                ("task_state", SqlValue::Text(None)),
                                ("fault_code", 500i64.into()),
                                (
                                    "fault_message",
                                    format!("Reverting the migration failed: {why}").into(),
                                ),
                                ("fault_details", "".into()),
                                ("fault_created", t.clone().into()),
                                ("updated_at", t.clone().into()),
                            ],
                        )
                        .await?;
                } else {
                    if let Some(net) = self.network.get() {
                        net.set_migration_binding(id, None).await?;
                    }
                    // Nothing moved: the server stays, and runs again if it ran.
                    self.store
                        .update_instance(
                            id,
                            &resizing,
                            &vec![
                                ("migration_host", SqlValue::Text(None)),
                                ("migration_info", SqlValue::Text(None)),
                                ("old_flavor", SqlValue::Text(None)),
                                ("vm_state", VmState::Stopped.as_str().into()),
                                (
                                    "task_state",
                                    if m.was_running {
                                        TaskState::PoweringOn.as_str().into()
                                    } else {
                                        SqlValue::Text(None)
                                    },
                                ),
                                ("updated_at", t.clone().into()),
                            ],
                        )
                        .await?;
                    self.wake_host(&m.target).await;
                }
            }
            _ => {
                tracing::info!(instance = %id, %host, event = %r.event, phase = %m.phase, "stale migration report ignored");
            }
        }
        self.notify();
        Ok(())
    }

    /// Confirming or reverting a cold migration (called by the resize actions).
    pub(crate) fn cold_migration_of(inst: &InstanceRecord) -> Option<MigrationInfo> {
        Self::migration_of(inst).filter(|m| m.kind == "cold")
    }

    pub(crate) async fn start_cold_revert(
        &self,
        inst: &InstanceRecord,
        mut m: MigrationInfo,
    ) -> CoreResult<()> {
        m.phase = "revert".into();
        let json = serde_json::to_string(&m).map_err(|e| CoreError::Internal(e.to_string()))?;
        let ok = self
            .store
            .update_instance(
                &inst.id,
                &Expect::TaskIn(vec![None]),
                &vec![
                    ("task_state", TaskState::ResizeReverting.as_str().into()),
                    ("migration_info", json.into()),
                    ("updated_at", now().into()),
                ],
            )
            .await?;
        if !ok {
            return Err(CoreError::Conflict(format!(
                "Cannot 'revertResize' instance {} while it is changing state",
                inst.id
            )));
        }
        self.notify();
        Ok(())
    }
}
