//! Nova's per-project quotas (`os-quota-sets`): the defaults of the configuration, overridden
//! per project in the store (`quota_limits`, resources prefixed `compute.`). Creates are checked
//! against them atomically in the store (see `Store::create_instance_within`).

use super::{ComputeService, Quota};
use crate::policy::{forbidden, AuthContext};
use crate::{CoreError, CoreResult};
use std::collections::BTreeMap;

const PREFIX: &str = "compute.";

/// Nova's quota-set keys at 2.1, with whether OneStack enforces them (the others are reported
/// with Nova's defaults and accepted on update, as their resources live in Neutron or are not
/// offered).
pub const QUOTA_KEYS: [&str; 14] = [
    "instances",
    "cores",
    "ram",
    "key_pairs",
    "metadata_items",
    "injected_files",
    "injected_file_content_bytes",
    "injected_file_path_bytes",
    "server_groups",
    "server_group_members",
    "fixed_ips",
    "floating_ips",
    "security_groups",
    "security_group_rules",
];

impl Quota {
    pub fn get(&self, key: &str) -> Option<i64> {
        Some(match key {
            "instances" => self.instances,
            "cores" => self.cores,
            "ram" => self.ram_mb,
            "key_pairs" => self.key_pairs,
            "metadata_items" => self.metadata_items as i64,
            "injected_files" => 5,
            "injected_file_content_bytes" => 10240,
            "injected_file_path_bytes" => 255,
            "server_groups" | "server_group_members" | "security_groups" => 10,
            "fixed_ips" | "floating_ips" => -1,
            "security_group_rules" => 20,
            _ => return None,
        })
    }

    fn set(&mut self, key: &str, v: i64) {
        match key {
            "instances" => self.instances = v,
            "cores" => self.cores = v,
            "ram" => self.ram_mb = v,
            "key_pairs" => self.key_pairs = v,
            "metadata_items" => self.metadata_items = v.max(0) as usize,
            _ => {}
        }
    }
}

impl ComputeService {
    /// A project's limits: its overrides over the defaults.
    pub async fn quota(&self, project: &str) -> CoreResult<Quota> {
        let mut q = self.cfg.quota;
        for (res, limit) in self.store.quota_limits(project).await? {
            if let Some(r) = res.strip_prefix(PREFIX) {
                q.set(r, limit);
            }
        }
        Ok(q)
    }

    /// The project whose absolute limits `GET /limits` shows: the caller's, or with
    /// `tenant_id` any (Nova's `os_compute_api:limits:other_project`, admin — even naming
    /// one's own project).
    pub fn limits_project(
        &self,
        ctx: &AuthContext,
        tenant_id: Option<&str>,
    ) -> CoreResult<Option<String>> {
        match tenant_id {
            Some(t) => {
                ctx.require_admin("os_compute_api:limits:other_project")?;
                Ok(Some(t.to_string()))
            }
            None => Ok(ctx.project_id().map(str::to_string)),
        }
    }

    /// Reading a project's quota: admins any, others their own.
    pub fn check_quota_read(&self, ctx: &AuthContext, project: &str) -> CoreResult<()> {
        if ctx.is_admin() || ctx.project_id() == Some(project) {
            Ok(())
        } else {
            Err(forbidden("os_compute_api:os-quota-sets:show"))
        }
    }

    /// Sets limits (admin). Unknown keys, non-integers and values below -1 are refused before
    /// anything changes; a limit below what is in use needs `force`, as in Nova.
    pub async fn set_quota(
        &self,
        ctx: &AuthContext,
        project: &str,
        values: &BTreeMap<String, i64>,
        force: bool,
    ) -> CoreResult<Quota> {
        ctx.require_admin("os_compute_api:os-quota-sets:update")?;
        for (k, v) in values {
            if !QUOTA_KEYS.contains(&k.as_str()) {
                return Err(CoreError::BadRequest(format!(
                    "Invalid input for field/attribute quota_set. Additional properties are not allowed ('{k}' was unexpected)"
                )));
            }
            if *v < -1 {
                return Err(CoreError::BadRequest(format!(
                    "Invalid input for field/attribute {k}. Value: {v}. {v} is less than the minimum of -1"
                )));
            }
        }
        if !force {
            let (n, cores, ram) = self.store.count_live_instances(project).await?;
            for (k, used) in [("instances", n), ("cores", cores), ("ram", ram)] {
                if let Some(v) = values.get(k).filter(|v| **v >= 0 && **v < used) {
                    return Err(CoreError::BadRequest(format!(
                        "Quota limit {v} for {k} must be greater than or equal to already used and reserved {used}."
                    )));
                }
            }
        }
        for (k, v) in values {
            self.store
                .set_quota_limit(project, &format!("{PREFIX}{k}"), *v)
                .await?;
        }
        self.quota(project).await
    }

    /// Back to the defaults (admin).
    pub async fn delete_quota(&self, ctx: &AuthContext, project: &str) -> CoreResult<()> {
        ctx.require_admin("os_compute_api:os-quota-sets:delete")?;
        Ok(self.store.clear_quota_limits(project, PREFIX).await?)
    }
}
