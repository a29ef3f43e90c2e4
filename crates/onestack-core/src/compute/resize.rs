//! Resize (Nova's `resize`, `confirmResize`, `revertResize`) on the server's own host: the new
//! flavor takes effect at once in the record (so quota and host capacity count it), the old one
//! is kept until the user confirms; the agent keeps a copy of the disk to go back to.

use super::state::{self, Action, TaskState, VmState};
use super::{ref_id, server_not_found, ComputeService};
use crate::image::now;
use crate::policy::AuthContext;
use crate::{CoreError, CoreResult};
use onestack_store::{Changes, Expect, FlavorRecord, InstanceRecord, SqlValue};
use serde::{Deserialize, Serialize};

/// The flavor fields a server carries, kept while a resize waits for confirmation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlavorCopy {
    pub id: String,
    pub name: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub swap_mb: i64,
    pub extra_specs: String,
}

impl FlavorCopy {
    pub(crate) fn of(i: &InstanceRecord) -> FlavorCopy {
        FlavorCopy {
            id: i.flavor_id.clone(),
            name: i.flavor_name.clone(),
            vcpus: i.vcpus,
            memory_mb: i.memory_mb,
            root_gb: i.root_gb,
            ephemeral_gb: i.ephemeral_gb,
            swap_mb: i.swap_mb,
            extra_specs: i.flavor_extra_specs.clone(),
        }
    }

    fn changes(&self) -> Changes {
        vec![
            ("flavor_id", self.id.clone().into()),
            ("flavor_name", self.name.clone().into()),
            ("vcpus", self.vcpus.into()),
            ("memory_mb", self.memory_mb.into()),
            ("root_gb", self.root_gb.into()),
            ("ephemeral_gb", self.ephemeral_gb.into()),
            ("swap_mb", self.swap_mb.into()),
            ("flavor_extra_specs", self.extra_specs.clone().into()),
        ]
    }
}

impl ComputeService {
    /// `resize`: checks the new flavor against the disk, the quota and the host, records it and
    /// asks the agent to stop the VM (if it runs), keep a copy of the disk, grow it and start
    /// the VM with the new size. The server is VERIFY_RESIZE when that is done.
    pub async fn resize(&self, ctx: &AuthContext, id: &str, flavor_ref: &str) -> CoreResult<()> {
        let inst = self
            .get_server_for_update(ctx, id, "os_compute_api:servers:resize", true)
            .await?;
        let vm = VmState::parse(&inst.vm_state).unwrap_or(VmState::Error);
        let task = inst.task_state.as_deref().and_then(TaskState::parse);
        state::request(vm, task, Action::Resize).map_err(|c| CoreError::Conflict(c.0))?;
        let fid = ref_id(flavor_ref).to_string();
        let flavor: FlavorRecord = match self.get_flavor(ctx, &fid).await {
            Ok(f) if !f.disabled => f,
            Ok(_) | Err(CoreError::NotFound(_)) => {
                return Err(CoreError::BadRequest(format!(
                    "Flavor {fid} could not be found."
                )))
            }
            Err(e) => return Err(e),
        };
        if flavor.id == inst.flavor_id {
            return Err(CoreError::BadRequest(
                "When resizing, instances must change flavor!".into(),
            ));
        }
        let volume_backed = inst.image_id.is_empty();
        let new_root = if volume_backed { 0 } else { flavor.root_gb };
        if !volume_backed
            && (flavor.root_gb < inst.root_gb || flavor.ephemeral_gb < inst.ephemeral_gb)
        {
            return Err(CoreError::BadRequest(
                "Resize error: Unable to resize disk down.".into(),
            ));
        }
        // Quota: the difference must fit.
        let q = self.quota(&inst.project_id).await?;
        let (_, cores, ram) = self.store.count_live_instances(&inst.project_id).await?;
        let (dc, dr) = (flavor.vcpus - inst.vcpus, flavor.memory_mb - inst.memory_mb);
        if dc > 0 && q.cores >= 0 && cores + dc > q.cores {
            return Err(CoreError::Forbidden(format!(
                "Quota exceeded for cores: Requested {dc}, but already used {cores} of {} cores",
                q.cores
            )));
        }
        if dr > 0 && q.ram_mb >= 0 && ram + dr > q.ram_mb {
            return Err(CoreError::Forbidden(format!(
                "Quota exceeded for ram: Requested {dr}, but already used {ram} of {} ram",
                q.ram_mb
            )));
        }
        let host = inst.host.clone().ok_or_else(|| {
            CoreError::Conflict(format!("Instance {id} has no host to resize on"))
        })?;
        // The server's host must have room for the growth (placement serialized as for creates).
        let _guard = self.store.lock(onestack_store::LockName::Placement).await?;
        let hosts = self.store.list_hosts().await?;
        let usage = self.store.host_usage().await?;
        let demand = super::scheduler::Demand {
            vcpus: dc.max(0),
            memory_mb: dr.max(0),
            disk_gb: (new_root - inst.root_gb).max(0),
            availability_zone: None,
            host: Some(host.clone()),
        };
        let picked = super::scheduler::pick(&hosts, &usage, &demand, &self.cfg.ratios, |h| {
            self.host_alive(h)
        });
        super::scheduler::count_decision("resize", picked.is_ok());
        if let Err(super::scheduler::NoValidHost(why)) = picked {
            tracing::warn!(instance = %id, reasons = ?why, "no room to resize");
            return Err(CoreError::BadRequest(format!(
                "{} (the server's host {host} has no room for flavor {})",
                super::scheduler::NO_VALID_HOST,
                flavor.name
            )));
        }
        let old = serde_json::to_string(&FlavorCopy::of(&inst))
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let mut changes = FlavorCopy {
            id: flavor.id.clone(),
            name: flavor.name.clone(),
            vcpus: flavor.vcpus,
            memory_mb: flavor.memory_mb,
            root_gb: new_root,
            ephemeral_gb: flavor.ephemeral_gb,
            swap_mb: flavor.swap_mb,
            extra_specs: serde_json::to_string(&flavor.extra_specs).unwrap_or_else(|_| "{}".into()),
        }
        .changes();
        changes.extend([
            ("old_flavor", old.into()),
            ("task_state", TaskState::ResizeMigrating.as_str().into()),
            ("updated_at", now().into()),
        ]);
        if !self
            .store
            .update_instance(id, &Expect::TaskIn(vec![None]), &changes)
            .await?
        {
            return Err(CoreError::Conflict(format!(
                "Cannot 'resize' instance {id} while it is changing state"
            )));
        }
        self.notify();
        Ok(())
    }

    /// `confirmResize`: keeps the new flavor; the agent drops the copy of the old disk.
    pub async fn confirm_resize(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        let inst = self
            .get_server_for_update(ctx, id, "os_compute_api:servers:confirm_resize", true)
            .await?;
        let vm = VmState::parse(&inst.vm_state).unwrap_or(VmState::Error);
        let task = inst.task_state.as_deref().and_then(TaskState::parse);
        state::request(vm, task, Action::ConfirmResize).map_err(|c| CoreError::Conflict(c.0))?;
        let back = if inst.power_state == 4 {
            VmState::Stopped
        } else {
            VmState::Active
        };
        if !self
            .store
            .update_instance(
                id,
                &Expect::TaskIn(vec![None]),
                &vec![
                    ("vm_state", back.as_str().into()),
                    ("old_flavor", SqlValue::Text(None)),
                    // A cold migration's source drops its copy once it no longer sees it.
                    ("migration_host", SqlValue::Text(None)),
                    ("migration_info", SqlValue::Text(None)),
                    ("updated_at", now().into()),
                ],
            )
            .await?
        {
            return Err(server_not_found(id));
        }
        if let Some(source) = &inst.migration_host {
            let _ = self.store.bump_host_generation(source).await;
        }
        self.notify();
        Ok(())
    }

    /// `revertResize`: the old flavor again at once; the agent puts the old disk back and starts
    /// the VM with it.
    pub async fn revert_resize(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        let inst = self
            .get_server_for_update(ctx, id, "os_compute_api:servers:revert_resize", true)
            .await?;
        let vm = VmState::parse(&inst.vm_state).unwrap_or(VmState::Error);
        let task = inst.task_state.as_deref().and_then(TaskState::parse);
        state::request(vm, task, Action::RevertResize).map_err(|c| CoreError::Conflict(c.0))?;
        if let Some(m) = Self::cold_migration_of(&inst) {
            return self.start_cold_revert(&inst, m).await;
        }
        let old: FlavorCopy = inst
            .old_flavor
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok())
            .ok_or_else(|| CoreError::Conflict(format!("Instance {id} has no resize to revert")))?;
        let mut changes = old.changes();
        changes.extend([
            ("old_flavor", SqlValue::Text(None)),
            ("task_state", TaskState::ResizeReverting.as_str().into()),
            ("updated_at", now().into()),
        ]);
        if !self
            .store
            .update_instance(id, &Expect::TaskIn(vec![None]), &changes)
            .await?
        {
            return Err(CoreError::Conflict(format!(
                "Cannot 'revertResize' instance {id} while it is changing state"
            )));
        }
        self.notify();
        Ok(())
    }

    /// A resize the agent could not do: the old flavor again, and the server as it was.
    pub(crate) fn failed_resize_changes(inst: &InstanceRecord) -> Changes {
        let Some(old) = inst
            .old_flavor
            .as_deref()
            .and_then(|o| serde_json::from_str::<FlavorCopy>(o).ok())
        else {
            return Vec::new();
        };
        let mut c = old.changes();
        c.push(("old_flavor", SqlValue::Text(None)));
        c
    }
}
