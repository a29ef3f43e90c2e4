//! Compute (Nova v2.1) application logic: flavors, keypairs, servers and their actions, the
//! scheduler call, and the controller side of the agent protocol. Desired state lives in the
//! database; agents reconcile their host to it and report back (see `proto`).

pub mod console;
pub mod join;
pub mod keypair;
pub mod metadata;
pub mod migrate;
pub mod proto;
pub mod quota;
pub mod recovery;
pub mod resize;
pub mod scheduler;
pub mod state;
pub mod usage;
pub mod volumes;

use crate::image::{now, ImageService};
use crate::policy::{forbidden, AuthContext};
use crate::{CoreError, CoreResult};
use base64::Engine;
use onestack_store::{
    Changes, Expect, FlavorRecord, HostRecord, InstanceRecord, KeypairRecord, SqlValue, Store,
    StoreError,
};
use serde_json::json;
use state::{Action, TaskState, VmState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Nova's default quotas (per project) until per-project quotas arrive.
#[derive(Clone, Copy, Debug)]
pub struct Quota {
    pub instances: i64,
    pub cores: i64,
    pub ram_mb: i64,
    pub key_pairs: i64,
    pub metadata_items: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            instances: 10,
            cores: 20,
            ram_mb: 51200,
            key_pairs: 100,
            metadata_items: 128,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ComputeConfig {
    pub ratios: scheduler::Ratios,
    pub quota: Quota,
    /// A host is down when it has not heartbeaten for this long (Nova's `service_down_time`).
    pub service_down_time: Duration,
    /// Always attach a config drive (Nova's force_config_drive; off: the metadata service).
    pub force_config_drive: bool,
    pub default_availability_zone: String,
    /// Live migration's memory bandwidth cap in MiB/s, 0 for none (Nova's
    /// `live_migration_bandwidth`).
    pub live_migration_bandwidth_mib: u64,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            ratios: scheduler::Ratios::default(),
            quota: Quota::default(),
            service_down_time: Duration::from_secs(60),
            force_config_drive: false,
            default_availability_zone: "nova".into(),
            live_migration_bandwidth_mib: 0,
        }
    }
}

pub struct ComputeService {
    store: Store,
    images: Arc<ImageService>,
    cfg: ComputeConfig,
    /// Wakes long-polling agents when this controller changes desired state.
    changed: tokio::sync::Notify,
    /// Ports, addresses and security groups of servers (absent in control-plane-only tests).
    network: std::sync::OnceLock<Arc<crate::network::NetworkService>>,
    /// Volumes for servers (absent in compute-only tests).
    volumes: std::sync::OnceLock<Arc<crate::volume::VolumeService>>,
}

/// A server create request, validated for types by the API layer.
#[derive(Clone, Debug, Default)]
pub struct ServerCreate {
    pub name: String,
    pub image_ref: String,
    pub flavor_ref: String,
    pub key_name: Option<String>,
    pub user_data: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub availability_zone: Option<String>,
    pub security_groups: Vec<String>,
    /// None: the default (auto); Some(empty): `none`.
    pub networks: Option<Vec<RequestedNetwork>>,
    pub config_drive: bool,
    pub min_count: i64,
    pub max_count: i64,
    pub description: Option<String>,
    pub access_ipv4: Option<String>,
    pub access_ipv6: Option<String>,
    /// `block_device_mapping_v2`; a boot device (boot_index 0) of destination `volume` boots
    /// the server from a volume.
    pub block_devices: Vec<volumes::BlockDevice>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RequestedNetwork {
    pub uuid: Option<String>,
    pub port: Option<String>,
    pub fixed_ip: Option<String>,
}

/// Server list parameters.
#[derive(Clone, Debug, Default)]
pub struct ServerQuery {
    pub all_tenants: bool,
    pub project_id: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub image: Option<String>,
    pub flavor: Option<String>,
    pub host: Option<String>,
    pub reservation_id: Option<String>,
    pub changes_since: Option<String>,
    pub deleted: bool,
    pub marker: Option<String>,
    pub limit: Option<usize>,
    pub sort_key: String,
    pub sort_desc: bool,
}

pub const MAX_USER_DATA: usize = 65535;

fn flavor_not_found(id: &str) -> CoreError {
    CoreError::NotFound(format!("Flavor {id} could not be found."))
}

fn server_not_found(id: &str) -> CoreError {
    CoreError::NotFound(format!("Instance {id} could not be found."))
}

/// The last path segment of an id or a link (`http://…/flavors/1` → `1`).
pub fn ref_id(r: &str) -> &str {
    r.trim_end_matches('/').rsplit('/').next().unwrap_or(r)
}

/// A host name derived from the display name, as Nova's `sanitize_hostname`.
pub fn sanitize_hostname(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c.to_ascii_lowercase());
        } else if (c == ' ' || c == '_' || c == '.') && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(63).collect();
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "server".into()
    } else {
        out
    }
}

impl ComputeService {
    pub async fn new(
        store: Store,
        images: Arc<ImageService>,
        cfg: ComputeConfig,
    ) -> CoreResult<Arc<ComputeService>> {
        let svc = ComputeService {
            store,
            images,
            cfg,
            changed: tokio::sync::Notify::new(),
            network: std::sync::OnceLock::new(),
            volumes: std::sync::OnceLock::new(),
        };
        svc.ensure_default_flavors().await?;
        Ok(Arc::new(svc))
    }

    pub fn config(&self) -> &ComputeConfig {
        &self.cfg
    }

    /// Gives servers NICs from the network service.
    pub fn attach_network(&self, network: Arc<crate::network::NetworkService>) {
        let _ = self.network.set(network);
    }

    pub fn network(&self) -> Option<&Arc<crate::network::NetworkService>> {
        self.network.get()
    }

    /// Nova's `addresses` per server id (empty objects without a network service).
    pub async fn addresses(
        &self,
        ids: &[&str],
    ) -> CoreResult<std::collections::HashMap<String, serde_json::Value>> {
        let Some(net) = self.network.get() else {
            return Ok(ids.iter().map(|i| (i.to_string(), json!({}))).collect());
        };
        Ok(net.server_addresses(ids).await?.into_iter().collect())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn notify(&self) {
        self.changed.notify_waiters();
    }

    // ---- flavors ----

    /// OpenStack's classic flavors, created once in an empty cloud.
    async fn ensure_default_flavors(&self) -> CoreResult<()> {
        if !self.store.list_flavors().await?.is_empty() {
            return Ok(());
        }
        let defaults = [
            ("1", "m1.tiny", 1, 512, 1),
            ("2", "m1.small", 1, 2048, 20),
            ("3", "m1.medium", 2, 4096, 40),
            ("4", "m1.large", 4, 8192, 80),
            ("5", "m1.xlarge", 8, 16384, 160),
        ];
        for (id, name, vcpus, ram, disk) in defaults {
            let f = FlavorRecord {
                id: id.into(),
                name: name.into(),
                vcpus,
                memory_mb: ram,
                root_gb: disk,
                ephemeral_gb: 0,
                swap_mb: 0,
                is_public: true,
                disabled: false,
                description: None,
                created_at: now(),
                extra_specs: BTreeMap::new(),
            };
            match self.store.create_flavor(&f).await {
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether the caller may see (and use) a flavor: public, admin, or granted access.
    async fn flavor_visible(&self, ctx: &AuthContext, f: &FlavorRecord) -> CoreResult<bool> {
        if f.is_public || ctx.is_admin() {
            return Ok(true);
        }
        let Some(p) = ctx.project_id() else {
            return Ok(false);
        };
        Ok(self
            .store
            .list_flavor_projects(&f.id)
            .await?
            .iter()
            .any(|x| x == p))
    }

    /// `is_public`: Some(true) public only, Some(false) private only (admin), None both.
    pub async fn list_flavors(
        &self,
        ctx: &AuthContext,
        is_public: Option<bool>,
        min_ram: Option<i64>,
        min_disk: Option<i64>,
    ) -> CoreResult<Vec<FlavorRecord>> {
        let mut out = Vec::new();
        let mine: Vec<String> = match ctx.project_id() {
            Some(p) => self.store.flavors_of_project(p).await?,
            None => Vec::new(),
        };
        for f in self.store.list_flavors().await? {
            let visible = f.is_public || ctx.is_admin() || mine.contains(&f.id);
            let wanted = match is_public {
                Some(p) => f.is_public == p,
                // Non-admins see public flavors and those granted to them.
                None => true,
            };
            if visible
                && wanted
                && !f.disabled
                && min_ram.is_none_or(|m| f.memory_mb >= m)
                && min_disk.is_none_or(|d| f.root_gb >= d)
            {
                out.push(f);
            }
        }
        // Nova sorts by flavorid by default; numeric ids sort numerically for readability.
        out.sort_by(|a, b| {
            (a.id.parse::<i64>().ok(), &a.id).cmp(&(b.id.parse::<i64>().ok(), &b.id))
        });
        Ok(out)
    }

    pub async fn get_flavor(&self, ctx: &AuthContext, id: &str) -> CoreResult<FlavorRecord> {
        let f = match self.store.get_flavor(id).await {
            Ok(f) => f,
            Err(StoreError::NotFound) => return Err(flavor_not_found(id)),
            Err(e) => return Err(e.into()),
        };
        if !self.flavor_visible(ctx, &f).await? {
            return Err(flavor_not_found(id));
        }
        Ok(f)
    }

    pub async fn create_flavor(
        &self,
        ctx: &AuthContext,
        f: FlavorRecord,
    ) -> CoreResult<FlavorRecord> {
        ctx.require_admin("os_compute_api:os-flavor-manage:create")?;
        if f.name.trim().is_empty() || f.name.len() > 255 {
            return Err(CoreError::BadRequest("Invalid flavor name.".into()));
        }
        if f.vcpus < 1 || f.memory_mb < 1 || f.root_gb < 0 || f.ephemeral_gb < 0 || f.swap_mb < 0 {
            return Err(CoreError::BadRequest(
                "Invalid input: vcpus and ram must be at least 1; disk, ephemeral and swap not negative."
                    .into(),
            ));
        }
        match self.store.create_flavor(&f).await {
            Ok(()) => Ok(f),
            Err(StoreError::Conflict(_)) => Err(CoreError::Conflict(format!(
                "Flavor with name {} or ID {} already exists.",
                f.name, f.id
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_flavor(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        ctx.require_admin("os_compute_api:os-flavor-manage:delete")?;
        self.store.delete_flavor(id).await.map_err(|e| match e {
            StoreError::NotFound => flavor_not_found(id),
            e => e.into(),
        })
    }

    pub async fn set_flavor_description(
        &self,
        ctx: &AuthContext,
        id: &str,
        description: Option<&str>,
    ) -> CoreResult<FlavorRecord> {
        ctx.require_admin("os_compute_api:os-flavor-manage:update")?;
        self.store
            .set_flavor_description(id, description)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => flavor_not_found(id),
                e => e.into(),
            })?;
        self.get_flavor(ctx, id).await
    }

    pub async fn set_extra_specs(
        &self,
        ctx: &AuthContext,
        id: &str,
        specs: &BTreeMap<String, String>,
    ) -> CoreResult<BTreeMap<String, String>> {
        ctx.require_admin("os_compute_api:os-flavor-extra-specs:create")?;
        self.get_flavor(ctx, id).await?;
        for (k, v) in specs {
            if k.is_empty() || k.len() > 255 || v.len() > 255 {
                return Err(CoreError::BadRequest(
                    "Extra spec keys and values must be 1 to 255 characters.".into(),
                ));
            }
        }
        self.store.set_flavor_extra_specs(id, specs).await?;
        Ok(self.get_flavor(ctx, id).await?.extra_specs)
    }

    pub async fn delete_extra_spec(
        &self,
        ctx: &AuthContext,
        id: &str,
        key: &str,
    ) -> CoreResult<()> {
        ctx.require_admin("os_compute_api:os-flavor-extra-specs:delete")?;
        self.get_flavor(ctx, id).await?;
        self.store
            .delete_flavor_extra_spec(id, key)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => {
                    CoreError::NotFound(format!("Flavor {id} has no extra specs with key {key}."))
                }
                e => e.into(),
            })
    }

    pub async fn flavor_access(&self, ctx: &AuthContext, id: &str) -> CoreResult<Vec<String>> {
        ctx.require_admin("os_compute_api:os-flavor-access")?;
        let f = self.get_flavor(ctx, id).await?;
        if f.is_public {
            return Err(CoreError::NotFound(
                "Access list not available for public flavors.".into(),
            ));
        }
        Ok(self.store.list_flavor_projects(id).await?)
    }

    pub async fn set_flavor_access(
        &self,
        ctx: &AuthContext,
        id: &str,
        project: &str,
        grant: bool,
    ) -> CoreResult<Vec<String>> {
        ctx.require_admin("os_compute_api:os-flavor-access:add_tenant_access")?;
        let f = self.get_flavor(ctx, id).await?;
        if f.is_public {
            return Err(CoreError::Conflict(
                "Can not add access to a public flavor.".into(),
            ));
        }
        let r = if grant {
            self.store.add_flavor_project(id, project).await
        } else {
            self.store.remove_flavor_project(id, project).await
        };
        match r {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(CoreError::Conflict(format!(
                "Flavor access already exists for flavor {id} and project {project} combination."
            )))
            }
            Err(StoreError::NotFound) => {
                return Err(CoreError::NotFound(format!(
                    "Flavor access not found for {id} / {project} combination."
                )))
            }
            Err(e) => return Err(e.into()),
        }
        Ok(self.store.list_flavor_projects(id).await?)
    }

    // ---- keypairs ----

    /// The user whose keypairs a call works on: the caller, or (admin) another user.
    fn keypair_owner(ctx: &AuthContext, user_id: Option<&str>) -> CoreResult<String> {
        match user_id {
            Some(u) if u != ctx.user.id => {
                ctx.require_admin("os_compute_api:os-keypairs")?;
                Ok(u.to_string())
            }
            _ => Ok(ctx.user.id.clone()),
        }
    }

    pub async fn list_keypairs(
        &self,
        ctx: &AuthContext,
        user_id: Option<&str>,
    ) -> CoreResult<Vec<KeypairRecord>> {
        let owner = Self::keypair_owner(ctx, user_id)?;
        Ok(self.store.list_keypairs(&owner).await?)
    }

    pub async fn get_keypair(
        &self,
        ctx: &AuthContext,
        name: &str,
        user_id: Option<&str>,
    ) -> CoreResult<KeypairRecord> {
        let owner = Self::keypair_owner(ctx, user_id)?;
        self.store
            .get_keypair(&owner, name)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => {
                    CoreError::NotFound(format!("Keypair {name} not found for user {owner}"))
                }
                e => e.into(),
            })
    }

    /// Imports `public_key`, or generates a keypair and returns its private key (once).
    pub async fn create_keypair(
        &self,
        ctx: &AuthContext,
        name: &str,
        key_type: &str,
        public_key: Option<&str>,
        user_id: Option<&str>,
    ) -> CoreResult<(KeypairRecord, Option<String>)> {
        // Keypairs are the user's own, whatever its role (Nova's `os-keypairs:create` is
        // `admin or user_id:%(user_id)s`): a reader imports its key like anyone else.
        let owner = Self::keypair_owner(ctx, user_id)?;
        keypair::validate_name(name)?;
        if key_type != "ssh" && key_type != "x509" {
            return Err(CoreError::BadRequest(format!(
                "Invalid input for field/attribute type. Value: {key_type}. '{key_type}' is not one of ['ssh', 'x509']"
            )));
        }
        if key_type == "x509" {
            return Err(CoreError::BadRequest(
                "x509 keypairs are not supported; use ssh.".into(),
            ));
        }
        // The limit is the caller's project's (Nova counts key pairs per user).
        let limit = match ctx.project_id() {
            Some(p) => self.quota(p).await?.key_pairs,
            None => self.cfg.quota.key_pairs,
        };
        let (public, private) = match public_key {
            Some(k) => (keypair::parse_public_key(k)?, None),
            None => {
                let (p, pem) = keypair::generate(name)?;
                (p, Some(pem))
            }
        };
        let rec = KeypairRecord {
            user_id: owner,
            name: name.to_string(),
            key_type: key_type.to_string(),
            public_key: public.openssh,
            fingerprint: public.fingerprint,
            created_at: now(),
        };
        match self.store.create_keypair_within(&rec, limit).await {
            Ok(None) => Ok((rec, private)),
            Ok(Some(_)) => Err(CoreError::Forbidden(
                "Quota exceeded, too many key pairs.".into(),
            )),
            Err(StoreError::Conflict(_)) => Err(CoreError::Conflict(format!(
                "Key pair '{name}' already exists."
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_keypair(
        &self,
        ctx: &AuthContext,
        name: &str,
        user_id: Option<&str>,
    ) -> CoreResult<()> {
        let owner = Self::keypair_owner(ctx, user_id)?;
        self.store
            .delete_keypair(&owner, name)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => {
                    CoreError::NotFound(format!("Keypair {name} not found for user {owner}"))
                }
                e => e.into(),
            })
    }

    // ---- hosts ----

    pub fn host_alive(&self, h: &HostRecord) -> bool {
        let age = crate::now_micros() - h.last_seen;
        !h.forced_down && age <= self.cfg.service_down_time.as_micros() as i64
    }

    pub async fn list_hosts(&self) -> CoreResult<Vec<HostRecord>> {
        Ok(self.store.list_hosts().await?)
    }

    pub async fn host_usage(
        &self,
    ) -> CoreResult<std::collections::HashMap<String, onestack_store::HostUsage>> {
        Ok(self.store.host_usage().await?)
    }

    pub async fn register_host(&self, r: proto::RegisterHost) -> CoreResult<HostRecord> {
        if r.host.is_empty() || r.host.len() > 255 {
            return Err(CoreError::BadRequest("invalid host name".into()));
        }
        let t = now();
        let rec = HostRecord {
            id: uuid::Uuid::new_v4().to_string(),
            num: 0,
            host: r.host,
            host_ip: r.host_ip,
            agent_url: r.agent_url,
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            local_gb: r.local_gb,
            cpu_info: r.cpu_info.to_string(),
            hypervisor_type: r.hypervisor_type,
            hypervisor_version: r.hypervisor_version,
            virt_type: r.virt_type,
            availability_zone: r
                .availability_zone
                .unwrap_or_else(|| self.cfg.default_availability_zone.clone()),
            enabled: true,
            disabled_reason: None,
            forced_down: false,
            last_seen: crate::now_micros(),
            generation: 1,
            created_at: t.clone(),
            updated_at: t,
        };
        let before = self.store.get_host_by_name(&rec.host).await.ok();
        let stored = self.store.upsert_host(&rec).await?;
        self.notify();
        // A new host, or one at a new address, changes every host's tunnels.
        if before.is_none_or(|b| b.host_ip != stored.host_ip) {
            if let Some(net) = self.network() {
                net.hosts_changed().await?;
            }
        }
        Ok(stored)
    }

    /// Removes a compute host that holds no servers (`compute service delete`, `onestack
    /// leave`); its agent registers again if it comes back.
    pub async fn remove_host(&self, host: &str) -> CoreResult<()> {
        let usage = self.store.host_usage().await?;
        if let Some(u) = usage.get(host).filter(|u| u.instances > 0) {
            return Err(CoreError::Conflict(format!(
                "Unable to delete compute service that is hosting instances: {host} \
                 ({} server(s); delete or migrate them first)",
                u.instances
            )));
        }
        self.store
            .delete_host(host)
            .await
            .map_err(|e| CoreError::from_store(e, "compute host", host))?;
        // A removed node's credential stops working (it joins again with a new token).
        self.store.delete_node_credential(host).await?;
        self.notify();
        if let Some(net) = self.network() {
            net.hosts_changed().await?;
        }
        Ok(())
    }

    pub async fn heartbeat(&self, host: &str) -> CoreResult<()> {
        self.store
            .heartbeat_host(host, crate::now_micros())
            .await
            .map_err(|e| CoreError::from_store(e, "compute host", host))
    }

    pub async fn set_host_enabled(
        &self,
        ctx: &AuthContext,
        host: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> CoreResult<HostRecord> {
        ctx.require_admin("os_compute_api:os-services:update")?;
        self.store
            .set_host_status(host, enabled, reason, &now())
            .await
            .map_err(|e| CoreError::from_store(e, "compute host", host))?;
        Ok(self.store.get_host_by_name(host).await?)
    }

    pub async fn set_host_forced_down(
        &self,
        ctx: &AuthContext,
        host: &str,
        down: bool,
    ) -> CoreResult<HostRecord> {
        ctx.require_admin("os_compute_api:os-services:update")?;
        self.store
            .set_host_forced_down(host, down)
            .await
            .map_err(|e| CoreError::from_store(e, "compute host", host))?;
        Ok(self.store.get_host_by_name(host).await?)
    }

    /// Availability zones that have at least one host, with the default zone always present.
    pub async fn availability_zones(&self) -> CoreResult<Vec<(String, bool, Vec<HostRecord>)>> {
        let hosts = self.store.list_hosts().await?;
        let mut zones: BTreeMap<String, Vec<HostRecord>> = BTreeMap::new();
        zones
            .entry(self.cfg.default_availability_zone.clone())
            .or_default();
        for h in hosts {
            zones
                .entry(h.availability_zone.clone())
                .or_default()
                .push(h);
        }
        Ok(zones
            .into_iter()
            .map(|(z, hs)| {
                let up = hs.iter().any(|h| h.enabled && self.host_alive(h));
                (z, up, hs)
            })
            .collect())
    }

    // ---- the operator's views of hosts (admin) ----

    /// The compute hosts with what they carry, for `os-hypervisors` and `os-services` (`rule`
    /// names the Nova policy, admin only: tenants never learn host names or capacity).
    pub async fn hosts_with_usage(
        &self,
        ctx: &AuthContext,
        rule: &str,
    ) -> CoreResult<Vec<(HostRecord, onestack_store::HostUsage)>> {
        ctx.require_admin(rule)?;
        let hosts = self.store.list_hosts().await?;
        let usage = self.store.host_usage().await?;
        Ok(hosts
            .into_iter()
            .map(|h| {
                let u = usage.get(&h.host).cloned().unwrap_or_default();
                (h, u)
            })
            .collect())
    }

    /// `os-availability-zone/detail` (admin): the zones with their hosts.
    pub async fn availability_zones_detail(
        &self,
        ctx: &AuthContext,
    ) -> CoreResult<Vec<(String, bool, Vec<HostRecord>)>> {
        ctx.require_admin("os_compute_api:os-availability-zone:detail")?;
        self.availability_zones().await
    }

    /// `DELETE /os-services/{id}` (admin): removes the host numbered `num` if it holds no servers.
    pub async fn delete_service(&self, ctx: &AuthContext, num: &str) -> CoreResult<()> {
        ctx.require_admin("os_compute_api:os-services:delete")?;
        let hosts = self.store.list_hosts().await?;
        let h = hosts
            .iter()
            .find(|h| h.num.to_string() == num)
            .ok_or_else(|| CoreError::NotFound(format!("Service {num} could not be found.")))?;
        self.remove_host(&h.host).await
    }

    /// `GET /os-aggregates` (admin): OneStack has no host aggregates (zones are set per host).
    pub fn list_aggregates(&self, ctx: &AuthContext) -> CoreResult<Vec<serde_json::Value>> {
        ctx.require_admin("os_compute_api:os-aggregates:index")?;
        Ok(Vec::new())
    }

    // ---- servers ----

    /// Loads a live server the caller may see; other projects' servers are "not found".
    pub async fn get_server(&self, ctx: &AuthContext, id: &str) -> CoreResult<InstanceRecord> {
        let inst = match self.store.get_instance(id).await {
            Ok(i) => i,
            Err(StoreError::NotFound) => return Err(server_not_found(id)),
            Err(e) => return Err(e.into()),
        };
        if inst.deleted || !(ctx.is_admin() || ctx.project_id() == Some(inst.project_id.as_str())) {
            return Err(server_not_found(id));
        }
        Ok(inst)
    }

    /// A server the caller may change: member of its project (or admin), and not locked by
    /// someone it cannot override.
    async fn get_server_for_update(
        &self,
        ctx: &AuthContext,
        id: &str,
        rule: &str,
        check_lock: bool,
    ) -> CoreResult<InstanceRecord> {
        let inst = self.get_server(ctx, id).await?;
        ctx.require_member(rule)?;
        if check_lock && inst.locked && !ctx.is_admin() {
            return Err(CoreError::Conflict(format!("Instance {id} is locked")));
        }
        Ok(inst)
    }

    pub async fn list_servers(
        &self,
        ctx: &AuthContext,
        q: &ServerQuery,
    ) -> CoreResult<Vec<InstanceRecord>> {
        let admin = ctx.is_admin();
        if q.all_tenants && !admin {
            // Nova's `servers:index:get_all_tenants` (admin): refused, not quietly narrowed.
            return Err(forbidden("os_compute_api:servers:index:get_all_tenants"));
        }
        if (q.deleted || q.host.is_some()) && !admin {
            // Nova ignores admin-only filters for others; being explicit is kinder.
            return Err(forbidden("os_compute_api:servers:index:get_all_tenants"));
        }
        // Admins see every project's servers with all_tenants, or one project's by filter.
        let project: Option<String> = if admin && (q.all_tenants || q.project_id.is_some()) {
            q.project_id.clone()
        } else {
            Some(
                ctx.project_id()
                    .ok_or_else(|| forbidden("os_compute_api:servers:index"))?
                    .to_string(),
            )
        };
        let name_re = match &q.name {
            Some(n) => Some(
                regex::RegexBuilder::new(n)
                    .size_limit(1 << 16)
                    .build()
                    .map_err(|_| CoreError::BadRequest(format!("Invalid name filter: {n}")))?,
            ),
            None => None,
        };
        let mut list = self
            .store
            .list_instances(project.as_deref(), q.deleted || q.changes_since.is_some())
            .await?;
        list.retain(|i| {
            let st = server_status(i);
            name_re.as_ref().is_none_or(|r| r.is_match(&i.name))
                && q.status
                    .as_deref()
                    .is_none_or(|s| s.eq_ignore_ascii_case(st))
                && q.image.as_deref().is_none_or(|x| ref_id(x) == i.image_id)
                && q.flavor.as_deref().is_none_or(|x| ref_id(x) == i.flavor_id)
                && q.host
                    .as_deref()
                    .is_none_or(|x| i.host.as_deref() == Some(x))
                && q.reservation_id
                    .as_deref()
                    .is_none_or(|x| x == i.reservation_id)
                && q.changes_since
                    .as_deref()
                    .is_none_or(|t| i.updated_at.as_str() >= t)
                && (!q.deleted || i.deleted)
        });
        let key = q.sort_key.as_str();
        list.sort_by(|a, b| {
            let o = match key {
                "display_name" | "name" => a.name.cmp(&b.name),
                "updated_at" => a.updated_at.cmp(&b.updated_at),
                "uuid" | "id" => a.id.cmp(&b.id),
                "vm_state" => a.vm_state.cmp(&b.vm_state),
                _ => a.created_at.cmp(&b.created_at).then(a.seq.cmp(&b.seq)),
            };
            if q.sort_desc {
                o.reverse()
            } else {
                o
            }
        });
        if let Some(m) = &q.marker {
            let pos = list
                .iter()
                .position(|i| &i.id == m)
                .ok_or_else(|| CoreError::BadRequest(format!("marker [{m}] not found")))?;
            list.drain(..=pos);
        }
        if let Some(l) = q.limit {
            list.truncate(l);
        }
        Ok(list)
    }

    /// Creates `max_count` servers (at least `min_count` within quota), schedules them, and
    /// returns them; scheduling failures leave a server in ERROR with Nova's fault.
    pub async fn create_servers(
        self: &Arc<Self>,
        ctx: &AuthContext,
        req: ServerCreate,
    ) -> CoreResult<Vec<InstanceRecord>> {
        ctx.require_member("os_compute_api:servers:create")?;
        let project = ctx
            .project_id()
            .ok_or_else(|| forbidden("os_compute_api:servers:create"))?
            .to_string();
        let name = req.name.trim();
        if name.is_empty() || req.name.len() > 255 {
            return Err(CoreError::BadRequest(
                "Invalid input for field/attribute name: it must be 1 to 255 characters.".into(),
            ));
        }
        if req.min_count < 1 || req.max_count < req.min_count {
            return Err(CoreError::BadRequest(
                "min_count must be at least 1 and not more than max_count.".into(),
            ));
        }
        // Flavor.
        let fid = ref_id(&req.flavor_ref).to_string();
        let flavor = match self.get_flavor(ctx, &fid).await {
            Ok(f) if !f.disabled => f,
            Ok(_) | Err(CoreError::NotFound(_)) => {
                return Err(CoreError::BadRequest(format!(
                    "Flavor {fid} could not be found."
                )))
            }
            Err(e) => return Err(e),
        };
        // Image: visible to the caller (tenancy is the image service's), active, and fitting.
        let iid = ref_id(&req.image_ref).to_string();
        let boot_volume = req
            .block_devices
            .iter()
            .find(|b| b.boot_index == Some(0) && b.destination_type == "volume")
            .cloned();
        if boot_volume.is_some() {
            if req.max_count > 1 {
                return Err(CoreError::BadRequest(
                    "Booting several servers from volumes at once is not supported; create them one by one."
                        .into(),
                ));
            }
        } else if iid.is_empty() {
            return Err(CoreError::BadRequest(
                "Block Device Mapping is Invalid: an image or a boot volume is required.".into(),
            ));
        }
        // Image: visible, active and fitting the flavor (a volume-backed server's disk is its
        // volume, checked when the volume is made).
        let image = match &boot_volume {
            Some(_) => None,
            None => Some(self.bootable_image(ctx, &iid, &flavor).await?),
        };
        // Keypair of the calling user.
        let key = match &req.key_name {
            Some(k) => Some(self.store.get_keypair(&ctx.user.id, k).await.map_err(
                |e| match e {
                    StoreError::NotFound => {
                        CoreError::BadRequest("Invalid key_name provided.".into())
                    }
                    e => e.into(),
                },
            )?),
            None => None,
        };
        if let Some(u) = &req.user_data {
            if u.len() > MAX_USER_DATA {
                return Err(CoreError::BadRequest(format!(
                    "User data too large. User data must be no larger than {MAX_USER_DATA} bytes once base64 encoded."
                )));
            }
            let compact: String = u.chars().filter(|c| !c.is_whitespace()).collect();
            if base64::engine::general_purpose::STANDARD
                .decode(compact)
                .is_err()
            {
                return Err(CoreError::BadRequest(
                    "User data needs to be valid base 64.".into(),
                ));
            }
        }
        if req.metadata.len() > self.cfg.quota.metadata_items {
            return Err(CoreError::Forbidden(format!(
                "Quota exceeded for metadata_items: Requested {}, but already used 0 of {} metadata_items",
                req.metadata.len(),
                self.cfg.quota.metadata_items
            )));
        }
        validate_metadata(&req.metadata)?;
        let mut groups = req.security_groups.clone();
        if groups.is_empty() {
            groups.push("default".into());
        }
        // NICs: the requested networks/ports, or (none asked) the project's only network.
        // An empty list means "pick for me" before microversion 2.37, as no list does.
        let requested = req.networks.as_ref().filter(|n| !n.is_empty());
        let nic_requests: Vec<(Option<String>, Option<String>, Option<String>)> =
            match (self.network.get(), requested) {
                (None, Some(nets)) => {
                    if let Some(n) = nets.first() {
                        let what = n.uuid.clone().or(n.port.clone()).unwrap_or_default();
                        return Err(CoreError::BadRequest(format!(
                            "Network {what} could not be found."
                        )));
                    }
                    Vec::new()
                }
                (None, None) => Vec::new(),
                (Some(_), Some(nets)) => nets
                    .iter()
                    .map(|n| (n.uuid.clone(), n.port.clone(), n.fixed_ip.clone()))
                    .collect(),
                (Some(net), None) => {
                    let nets = net.default_networks(ctx).await?;
                    if nets.len() > 1 {
                        return Err(CoreError::Conflict(
                        "Multiple possible networks found, use a Network ID to be more specific."
                            .into(),
                    ));
                    }
                    nets.into_iter().map(|n| (Some(n), None, None)).collect()
                }
            };
        if let Some(net) = self.network.get() {
            for id in nic_requests.iter().filter_map(|(n, _, _)| n.as_deref()) {
                net.check_server_network(ctx, id).await?;
            }
        }
        if req.max_count > 1
            && nic_requests
                .iter()
                .any(|(_, port, ip)| port.is_some() || ip.is_some())
        {
            return Err(CoreError::BadRequest(
                "Unable to launch multiple instances with a single configured port or fixed IP."
                    .into(),
            ));
        }
        if self.network.get().is_none() {
            if let Some(g) = groups.iter().find(|g| g.as_str() != "default") {
                return Err(CoreError::BadRequest(format!(
                    "Unable to find security_group with name or id '{g}'"
                )));
            }
        }
        // Availability zone, optionally `zone:host` (admin only).
        let (zone, forced_host) = match &req.availability_zone {
            Some(az) => match az.split_once(':') {
                Some((z, h)) => {
                    ctx.require_admin("os_compute_api:servers:create:forced_host")?;
                    (
                        Some(z.to_string()).filter(|z| !z.is_empty()),
                        Some(h.to_string()),
                    )
                }
                None => (Some(az.clone()), None),
            },
            None => (None, None),
        };
        if let Some(z) = &zone {
            let zones = self.availability_zones().await?;
            if !zones.iter().any(|(name, _, _)| name == z) {
                return Err(CoreError::BadRequest(
                    "The requested availability zone is not available".into(),
                ));
            }
        }
        // Quota: as many as fit between min_count and max_count (an estimate; each insert is
        // checked again atomically below, so concurrent creates cannot exceed it).
        let q = self.quota(&project).await?;
        let count = {
            let (n, cores, ram) = self.store.count_live_instances(&project).await?;
            // A negative limit is no limit (Nova's -1).
            let within = |used: i64, more: i64, limit: i64| limit < 0 || used + more <= limit;
            let fits = |k: i64| {
                within(n, k, q.instances)
                    && within(cores, k * flavor.vcpus, q.cores)
                    && within(ram, k * flavor.memory_mb, q.ram_mb)
            };
            if !fits(req.min_count) {
                let (res, used, limit, req_n) = if !within(n, req.min_count, q.instances) {
                    ("instances", n, q.instances, req.min_count)
                } else if !within(cores, req.min_count * flavor.vcpus, q.cores) {
                    ("cores", cores, q.cores, req.min_count * flavor.vcpus)
                } else {
                    ("ram", ram, q.ram_mb, req.min_count * flavor.memory_mb)
                };
                return Err(CoreError::Forbidden(format!(
                    "Quota exceeded for {res}: Requested {req_n}, but already used {used} of {limit} {res}"
                )));
            }
            let mut k = req.max_count;
            while !fits(k) {
                k -= 1;
            }
            k
        };
        // Shown by name, as Nova shows them, whichever way the client named them.
        let group_names = match self.network.get() {
            Some(net) => net.group_names(&project, &groups).await?,
            None => groups.clone(),
        };
        let reservation_id = format!("r-{}", &crate::new_id()[..8]);
        let specs = serde_json::to_string(&flavor.extra_specs).unwrap_or_else(|_| "{}".into());
        let mut created = Vec::new();
        for index in 0..count {
            let display = if count > 1 {
                format!("{name}-{}", index + 1)
            } else {
                name.to_string()
            };
            let t = now();
            let id = uuid::Uuid::new_v4().to_string();
            // Ports first: a bad network, port, address or group refuses the request before any
            // server record exists (later servers of a batch just stop the batch).
            if let Some(net) = self.network.get().filter(|_| !nic_requests.is_empty()) {
                if let Err(e) = net
                    .allocate_server_ports(ctx, &id, &nic_requests, &groups)
                    .await
                {
                    if created.is_empty() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "stopping a multi-server create early");
                    break;
                }
            }
            // The root volume next, for the same reason.
            let root = match &boot_volume {
                Some(bd) => match self.prepare_root_volume(ctx, &id, &project, bd, &iid).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        self.release_ports(&id).await;
                        return Err(e);
                    }
                },
                None => None,
            };
            let mut inst = InstanceRecord {
                id,
                seq: 0,
                name: display.clone(),
                project_id: project.clone(),
                user_id: ctx.user.id.clone(),
                image_id: image.as_ref().map(|i| i.id.clone()).unwrap_or_default(),
                flavor_id: flavor.id.clone(),
                flavor_name: flavor.name.clone(),
                vcpus: flavor.vcpus,
                memory_mb: flavor.memory_mb,
                // A volume-backed server's disk is its volume, not host storage.
                root_gb: if root.is_some() { 0 } else { flavor.root_gb },
                ephemeral_gb: flavor.ephemeral_gb,
                swap_mb: flavor.swap_mb,
                flavor_extra_specs: specs.clone(),
                key_name: key.as_ref().map(|k| k.name.clone()),
                key_data: key.as_ref().map(|k| k.public_key.clone()),
                user_data: req.user_data.clone(),
                config_drive: req.config_drive || self.cfg.force_config_drive,
                availability_zone: zone.clone(),
                host: None,
                node: None,
                reservation_id: reservation_id.clone(),
                launch_index: index,
                hostname: sanitize_hostname(&display),
                vm_state: VmState::Building.as_str().into(),
                task_state: Some(TaskState::Scheduling.as_str().into()),
                power_state: 0,
                locked: false,
                locked_by: None,
                description: req.description.clone(),
                access_ipv4: req.access_ipv4.clone().unwrap_or_default(),
                access_ipv6: req.access_ipv6.clone().unwrap_or_default(),
                security_groups: serde_json::to_string(&group_names)
                    .unwrap_or_else(|_| "[]".into()),
                requested_networks: serde_json::to_string(&req.networks)
                    .unwrap_or_else(|_| "null".into()),
                fault_code: None,
                fault_message: None,
                fault_details: None,
                fault_created: None,
                snapshot_image_id: None,
                backup_rotation: None,
                old_flavor: None,
                migration_host: None,
                migration_info: None,
                created_at: t.clone(),
                updated_at: t,
                launched_at: None,
                terminated_at: None,
                deleted: false,
                metadata: req.metadata.clone(),
            };
            let limits = onestack_store::InstanceLimits {
                instances: q.instances,
                cores: q.cores,
                ram_mb: q.ram_mb,
            };
            let over = match self
                .store
                .create_instance_within(&mut inst, Some(limits))
                .await
            {
                Ok(over) => over,
                Err(e) => {
                    self.release_ports(&inst.id).await;
                    self.release_volumes(&inst.id).await;
                    return Err(e.into());
                }
            };
            if let Some(o) = over {
                // Another create took the room meanwhile.
                self.release_ports(&inst.id).await;
                self.release_volumes(&inst.id).await;
                if (created.len() as i64) < req.min_count {
                    for done in &created {
                        let done: &InstanceRecord = done;
                        let _ = self.store.mark_instance_deleted(&done.id, &now()).await;
                        self.release_ports(&done.id).await;
                        self.release_volumes(&done.id).await;
                    }
                    self.notify();
                    return Err(CoreError::Forbidden(format!(
                        "Quota exceeded for {r}: Requested {}, but already used {} of {} {r}",
                        o.requested,
                        o.used,
                        o.limit,
                        r = o.resource
                    )));
                }
                break;
            }
            match root {
                Some(volumes::RootVolume::FromImage { volume_id }) => {
                    let delete = boot_volume
                        .as_ref()
                        .is_some_and(|b| b.delete_on_termination);
                    self.finish_boot_volume(
                        ctx.clone(),
                        inst.clone(),
                        volume_id,
                        delete,
                        zone.clone(),
                        forced_host.clone(),
                    );
                }
                Some(volumes::RootVolume::Existing(volume_id)) => {
                    self.schedule(&mut inst, zone.clone(), forced_host.clone())
                        .await?;
                    if let (Some(h), Some(v)) = (&inst.host, self.volumes.get()) {
                        v.set_attached_host(&volume_id, h).await?;
                    }
                }
                None => {
                    self.schedule(&mut inst, zone.clone(), forced_host.clone())
                        .await?;
                }
            }
            created.push(inst);
        }
        self.notify();
        Ok(created)
    }

    /// The image a server boots from: visible to the caller, active, fitting the flavor.
    async fn bootable_image(
        &self,
        ctx: &AuthContext,
        iid: &str,
        flavor: &FlavorRecord,
    ) -> CoreResult<crate::image::Image> {
        let image = match self.images.get(ctx, iid).await {
            Ok(i) => i,
            Err(CoreError::NotFound(_)) | Err(CoreError::Forbidden(_)) => {
                return Err(CoreError::BadRequest(format!(
                    "Image {iid} could not be found."
                )))
            }
            Err(e) => return Err(e),
        };
        if image.status != "active" {
            return Err(CoreError::BadRequest(format!("Image {iid} is not active.")));
        }
        let gib = 1i64 << 30;
        let image_bytes = image.virtual_size.or(image.size).unwrap_or(0);
        if flavor.root_gb > 0 && image_bytes > flavor.root_gb * gib {
            return Err(CoreError::BadRequest(format!(
                "Flavor's disk is too small for requested image. Flavor disk is {} bytes, image is {image_bytes} bytes.",
                flavor.root_gb * gib
            )));
        }
        if flavor.root_gb > 0 && image.min_disk > flavor.root_gb {
            return Err(CoreError::BadRequest(
                "Flavor's disk is too small for requested image.".into(),
            ));
        }
        if image.min_ram > flavor.memory_mb {
            return Err(CoreError::BadRequest(
                "Flavor's memory is too small for requested image.".into(),
            ));
        }
        Ok(image)
    }

    /// Puts a server that could not be built into ERROR with Nova's fault.
    pub(crate) async fn fail_build(&self, id: &str, message: &str) {
        let _ = self
            .store
            .update_instance(id, &Expect::Any, &build_fault(message))
            .await;
        self.notify();
    }

    /// Places one instance: host + `spawning`, or ERROR with NoValidHost.
    pub(crate) async fn schedule(
        &self,
        inst: &mut InstanceRecord,
        zone: Option<String>,
        host: Option<String>,
    ) -> CoreResult<()> {
        let _guard = self.store.lock(onestack_store::LockName::Placement).await?;
        // Under the lock, as the store has it: the leader's recovery and a create still running
        // never both place one server.
        let current = self.store.get_instance(&inst.id).await?;
        if current.host.is_some()
            || current.task_state.as_deref() != Some(TaskState::Scheduling.as_str())
        {
            *inst = current;
            return Ok(());
        }
        let hosts = self.store.list_hosts().await?;
        let usage = self.store.host_usage().await?;
        let demand = scheduler::Demand {
            vcpus: inst.vcpus,
            memory_mb: inst.memory_mb,
            disk_gb: inst.root_gb + inst.ephemeral_gb,
            availability_zone: zone,
            host,
        };
        let picked = scheduler::pick(&hosts, &usage, &demand, &self.cfg.ratios, |h| {
            self.host_alive(h)
        });
        scheduler::count_decision("boot", picked.is_ok());
        let t = now();
        if let (Ok(h), Some(net)) = (&picked, self.network.get()) {
            net.bind_server_ports(&inst.id, h).await?;
        }
        let changes: Changes = match &picked {
            Ok(h) => {
                let az = hosts
                    .iter()
                    .find(|x| &x.host == h)
                    .map(|x| x.availability_zone.clone());
                vec![
                    ("host", h.clone().into()),
                    ("node", h.clone().into()),
                    ("availability_zone", az.into()),
                    ("task_state", TaskState::Spawning.as_str().into()),
                    ("updated_at", t.clone().into()),
                ]
            }
            Err(scheduler::NoValidHost(why)) => {
                tracing::warn!(instance = %inst.id, reasons = ?why, "no valid host");
                build_fault(scheduler::NO_VALID_HOST)
            }
        };
        self.store
            .update_instance(
                &inst.id,
                &Expect::TaskIn(vec![Some(TaskState::Scheduling.as_str().into())]),
                &changes,
            )
            .await?;
        *inst = self.store.get_instance(&inst.id).await?;
        Ok(())
    }

    pub async fn update_server(
        &self,
        ctx: &AuthContext,
        id: &str,
        name: Option<String>,
        description: Option<Option<String>>,
    ) -> CoreResult<InstanceRecord> {
        let inst = self
            .get_server_for_update(ctx, id, "os_compute_api:servers:update", true)
            .await?;
        let mut changes: Changes = vec![("updated_at", now().into())];
        if let Some(n) = name {
            if n.trim().is_empty() || n.len() > 255 {
                return Err(CoreError::BadRequest(
                    "Invalid input for field/attribute name.".into(),
                ));
            }
            changes.push(("hostname", sanitize_hostname(&n).into()));
            changes.push(("name", n.into()));
        }
        if let Some(d) = description {
            changes.push(("description", d.into()));
        }
        self.store
            .update_instance(&inst.id, &Expect::Any, &changes)
            .await?;
        self.get_server(ctx, id).await
    }

    /// Starts an action: checks policy, lock and state, and records the task for the agent.
    pub async fn act(
        &self,
        ctx: &AuthContext,
        id: &str,
        action: Action,
    ) -> CoreResult<InstanceRecord> {
        let inst = self
            .get_server_for_update(
                ctx,
                id,
                &format!("os_compute_api:servers:{}", action.name()),
                true,
            )
            .await?;
        let vm = VmState::parse(&inst.vm_state).unwrap_or(VmState::Error);
        let task = inst.task_state.as_deref().and_then(TaskState::parse);
        let next = state::request(vm, task, action).map_err(|c| CoreError::Conflict(c.0))?;
        let expect = Expect::TaskIn(vec![inst.task_state.clone()]);
        let ok = self
            .store
            .update_instance(
                id,
                &expect,
                &vec![
                    ("task_state", next.as_str().into()),
                    ("updated_at", now().into()),
                ],
            )
            .await?;
        if !ok {
            return Err(CoreError::Conflict(format!(
                "Cannot '{}' instance {id} while it is changing state",
                action.name()
            )));
        }
        self.notify();
        self.get_server(ctx, id).await
    }

    /// Rebuild: same server, a fresh disk from `image_ref` (or the current image).
    pub async fn rebuild(
        &self,
        ctx: &AuthContext,
        id: &str,
        image_ref: &str,
        name: Option<String>,
    ) -> CoreResult<InstanceRecord> {
        let inst = self
            .get_server_for_update(ctx, id, "os_compute_api:servers:rebuild", true)
            .await?;
        let iid = ref_id(image_ref).to_string();
        let image = match self.images.get(ctx, &iid).await {
            Ok(i) if i.status == "active" => i,
            Ok(_) => return Err(CoreError::BadRequest(format!("Image {iid} is not active."))),
            Err(_) => {
                return Err(CoreError::BadRequest(format!(
                    "Image {iid} could not be found."
                )))
            }
        };
        let image_bytes = image.virtual_size.or(image.size).unwrap_or(0);
        if inst.root_gb > 0 && image_bytes > inst.root_gb << 30 {
            return Err(CoreError::BadRequest(
                "Flavor's disk is too small for requested image.".into(),
            ));
        }
        let vm = VmState::parse(&inst.vm_state).unwrap_or(VmState::Error);
        let task = inst.task_state.as_deref().and_then(TaskState::parse);
        let next =
            state::request(vm, task, Action::Rebuild).map_err(|c| CoreError::Conflict(c.0))?;
        let mut changes: Changes = vec![
            ("task_state", next.as_str().into()),
            ("image_id", image.id.clone().into()),
            ("updated_at", now().into()),
        ];
        if let Some(n) = name {
            changes.push(("hostname", sanitize_hostname(&n).into()));
            changes.push(("name", n.into()));
        }
        if !self
            .store
            .update_instance(id, &Expect::TaskIn(vec![None]), &changes)
            .await?
        {
            return Err(CoreError::Conflict(format!(
                "Instance {id} is changing state"
            )));
        }
        self.notify();
        self.get_server(ctx, id).await
    }

    /// createImage: a queued snapshot image now, its data when the agent has copied the disk.
    pub async fn create_image(
        &self,
        ctx: &AuthContext,
        id: &str,
        name: &str,
        metadata: BTreeMap<String, String>,
    ) -> CoreResult<String> {
        self.image_of_server(ctx, id, name, metadata, None).await
    }

    /// createBackup: a snapshot tagged as a backup of `backup_type`; once it is uploaded, only
    /// the `rotation` newest backups of this server and type are kept (Nova's rotation).
    pub async fn create_backup(
        &self,
        ctx: &AuthContext,
        id: &str,
        name: &str,
        backup_type: &str,
        rotation: i64,
        metadata: BTreeMap<String, String>,
    ) -> CoreResult<String> {
        if rotation < 0 {
            return Err(CoreError::BadRequest(
                "Invalid input for field/attribute rotation. Value must be 0 or more.".into(),
            ));
        }
        self.image_of_server(ctx, id, name, metadata, Some((backup_type, rotation)))
            .await
    }

    async fn image_of_server(
        &self,
        ctx: &AuthContext,
        id: &str,
        name: &str,
        metadata: BTreeMap<String, String>,
        backup: Option<(&str, i64)>,
    ) -> CoreResult<String> {
        let rule = if backup.is_some() {
            "os_compute_api:os-create-backup"
        } else {
            "os_compute_api:servers:create_image"
        };
        let inst = self.get_server_for_update(ctx, id, rule, true).await?;
        if backup.is_some() && inst.image_id.is_empty() {
            return Err(CoreError::BadRequest(
                "Backup is not supported for volume-backed instances.".into(),
            ));
        }
        if name.trim().is_empty() || name.len() > 255 {
            return Err(CoreError::BadRequest("Invalid image name.".into()));
        }
        let vm = VmState::parse(&inst.vm_state).unwrap_or(VmState::Error);
        let task = inst.task_state.as_deref().and_then(TaskState::parse);
        state::request(vm, task, Action::Snapshot).map_err(|c| CoreError::Conflict(c.0))?;
        let mut props: Vec<(String, String)> = metadata.into_iter().collect();
        props.extend([
            (
                "image_type".to_string(),
                if backup.is_some() {
                    "backup"
                } else {
                    "snapshot"
                }
                .to_string(),
            ),
            ("instance_uuid".into(), inst.id.clone()),
            ("base_image_ref".into(), inst.image_id.clone()),
            ("user_id".into(), ctx.user.id.clone()),
        ]);
        if let Some((kind, _)) = backup {
            props.push(("backup_type".into(), kind.to_string()));
        }
        let image = self
            .images
            .create_snapshot_record(&inst.project_id, name, &props, inst.root_gb, 0)
            .await?;
        let ok = self
            .store
            .update_instance(
                id,
                &Expect::TaskIn(vec![None]),
                &vec![
                    ("task_state", TaskState::ImageSnapshot.as_str().into()),
                    ("snapshot_image_id", image.id.clone().into()),
                    ("backup_rotation", SqlValue::Int(backup.map(|b| b.1))),
                    ("updated_at", now().into()),
                ],
            )
            .await?;
        if !ok {
            let _ = self.images.delete_system(&image.id).await;
            return Err(CoreError::Conflict(format!(
                "Instance {id} is changing state"
            )));
        }
        self.notify();
        Ok(image.id)
    }

    pub async fn set_locked(&self, ctx: &AuthContext, id: &str, locked: bool) -> CoreResult<()> {
        let inst = self
            .get_server_for_update(ctx, id, "os_compute_api:os-lock-server:lock", false)
            .await?;
        if !locked && inst.locked && inst.locked_by.as_deref() == Some("admin") && !ctx.is_admin() {
            return Err(forbidden(
                "os_compute_api:os-lock-server:unlock:unlock_override",
            ));
        }
        let by = if ctx.is_admin() { "admin" } else { "owner" };
        self.store
            .update_instance(
                id,
                &Expect::Any,
                &vec![
                    ("locked", locked.into()),
                    ("locked_by", if locked { Some(by) } else { None }.into()),
                    ("updated_at", now().into()),
                ],
            )
            .await?;
        Ok(())
    }

    /// Deletes a server: the agent tears it down, or — when it never reached a host or its host
    /// is down — the record goes now and the agent reaps the leftovers when it returns.
    pub async fn delete_server(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        let inst = self
            .get_server_for_update(ctx, id, "os_compute_api:servers:delete", true)
            .await?;
        let host_up = match &inst.host {
            Some(h) => match self.store.get_host_by_name(h).await {
                Ok(rec) => self.host_alive(&rec),
                Err(_) => false,
            },
            None => false,
        };
        if !host_up {
            self.store.mark_instance_deleted(id, &now()).await?;
            self.release_ports(id).await;
            self.release_volumes(id).await;
            self.cleanup_snapshot(&inst).await;
            self.notify();
            return Ok(());
        }
        if inst.task_state.as_deref() == Some(TaskState::Deleting.as_str()) {
            return Ok(());
        }
        self.store
            .update_instance(
                id,
                &Expect::Any,
                &vec![
                    ("task_state", TaskState::Deleting.as_str().into()),
                    ("updated_at", now().into()),
                ],
            )
            .await?;
        self.notify();
        Ok(())
    }

    /// `addSecurityGroup` / `removeSecurityGroup`: on every port of the server, and in the
    /// server's own list of group names.
    pub async fn change_security_group(
        &self,
        ctx: &AuthContext,
        id: &str,
        group: &str,
        add: bool,
    ) -> CoreResult<()> {
        let rule = if add {
            "os_compute_api:os-security-groups:add"
        } else {
            "os_compute_api:os-security-groups:remove"
        };
        let inst = self.get_server_for_update(ctx, id, rule, true).await?;
        let Some(net) = self.network.get() else {
            return Err(CoreError::NotFound(format!(
                "Security group {group} not found for project {}.",
                inst.project_id
            )));
        };
        let name = net
            .change_server_group(id, &inst.project_id, group, add)
            .await?;
        let mut groups: Vec<String> =
            serde_json::from_str(&inst.security_groups).unwrap_or_default();
        if add {
            if !groups.contains(&name) {
                groups.push(name);
            }
        } else {
            groups.retain(|g| g != &name && g != group);
        }
        self.store
            .update_instance(
                id,
                &Expect::Any,
                &vec![
                    (
                        "security_groups",
                        serde_json::to_string(&groups)
                            .unwrap_or_else(|_| "[]".into())
                            .into(),
                    ),
                    ("updated_at", now().into()),
                ],
            )
            .await?;
        Ok(())
    }

    /// Keeps the `keep` newest backups of the server of the just-uploaded backup's type, deleting
    /// older ones (errors are logged: a backup left over is better than a failed report).
    async fn rotate_backups(&self, inst: &InstanceRecord, uploaded: &str, keep: i64) {
        let Ok(new) = self.images.get_system(uploaded).await else {
            return;
        };
        let kind = new
            .properties
            .get("backup_type")
            .cloned()
            .unwrap_or_default();
        let mut backups: Vec<crate::image::Image> = match self.store.list_images().await {
            Ok(l) => l
                .into_iter()
                .filter(|i| {
                    let p = |k: &str| i.properties.get(k).map(String::as_str);
                    p("image_type") == Some("backup")
                        && p("instance_uuid") == Some(inst.id.as_str())
                        && p("backup_type") == Some(kind.as_str())
                })
                .collect(),
            Err(e) => {
                tracing::error!(instance = %inst.id, error = %e, "backup rotation: cannot list images");
                return;
            }
        };
        // Newest first; the one just made counts as the newest.
        backups.sort_by(|a, b| {
            (b.id == uploaded)
                .cmp(&(a.id == uploaded))
                .then(b.created_at.cmp(&a.created_at))
        });
        for old in backups.iter().skip(keep.max(0) as usize) {
            tracing::info!(instance = %inst.id, image = %old.id, "backup rotation: deleting an old backup");
            if let Err(e) = self.images.delete_system(&old.id).await {
                tracing::error!(image = %old.id, error = %e, "backup rotation: cannot delete");
            }
        }
    }

    /// Frees a deleted server's ports; a failure is logged (the ports stay, nothing breaks).
    async fn release_ports(&self, id: &str) {
        if let Some(net) = self.network.get() {
            if let Err(e) = net.release_server_ports(id).await {
                tracing::error!(instance = %id, error = %e, "cannot release the ports of a deleted server");
            }
        }
    }

    async fn cleanup_snapshot(&self, inst: &InstanceRecord) {
        if inst.task_state.as_deref() == Some(TaskState::ImageSnapshot.as_str()) {
            if let Some(img) = &inst.snapshot_image_id {
                let _ = self.images.delete_system(img).await;
            }
        }
    }

    pub async fn set_metadata(
        &self,
        ctx: &AuthContext,
        id: &str,
        meta: BTreeMap<String, String>,
        replace: bool,
    ) -> CoreResult<BTreeMap<String, String>> {
        let inst = self
            .get_server_for_update(ctx, id, "os_compute_api:server-metadata:update", true)
            .await?;
        validate_metadata(&meta)?;
        let total = if replace {
            meta.len()
        } else {
            let mut keys: std::collections::BTreeSet<&String> = inst.metadata.keys().collect();
            keys.extend(meta.keys());
            keys.len()
        };
        if total > self.cfg.quota.metadata_items {
            return Err(CoreError::Forbidden(format!(
                "Quota exceeded for metadata_items: Requested {total}, but already used 0 of {} metadata_items",
                self.cfg.quota.metadata_items
            )));
        }
        self.store
            .set_instance_metadata(id, &meta, replace, &now())
            .await?;
        Ok(self.store.instance_metadata(id).await?)
    }

    pub async fn delete_metadata(&self, ctx: &AuthContext, id: &str, key: &str) -> CoreResult<()> {
        self.get_server_for_update(ctx, id, "os_compute_api:server-metadata:delete", true)
            .await?;
        self.store
            .delete_instance_metadata_key(id, key)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => {
                    CoreError::NotFound(format!("Metadata item was not found: {key}"))
                }
                e => e.into(),
            })
    }

    // ---- the agent side ----

    /// The desired state of `host`'s instances, once its generation passes `after` (long poll,
    /// at most `wait`).
    pub async fn desired_state(
        &self,
        host: &str,
        after: i64,
        wait: Duration,
    ) -> CoreResult<proto::DesiredState> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            let rec = self
                .store
                .get_host_by_name(host)
                .await
                .map_err(|e| CoreError::from_store(e, "compute host", host))?;
            if rec.generation > after || tokio::time::Instant::now() >= deadline {
                let list = self.store.list_host_instances(host).await?;
                let mut out = Vec::with_capacity(list.len());
                // Servers share images: look each up once per answer.
                let mut images: std::collections::HashMap<String, Option<proto::ImageRef>> =
                    std::collections::HashMap::new();
                for inst in &list {
                    if !images.contains_key(&inst.image_id) {
                        let r = self.image_ref(&inst.image_id).await;
                        images.insert(inst.image_id.clone(), r);
                    }
                    let image = images.get(&inst.image_id).cloned().flatten();
                    let nics = self.nics(&inst.id).await?;
                    let mut d = self.desired_instance(inst, image, nics);
                    d.volumes = self.desired_volumes(inst).await?;
                    d.migration = self.desired_migration(inst, host);
                    out.push(d);
                }
                return Ok(proto::DesiredState {
                    generation: rec.generation,
                    instances: out,
                });
            }
            // Other controllers change the database too: re-check at least every second.
            let _ = tokio::time::timeout(
                Duration::from_secs(1).min(deadline - tokio::time::Instant::now()),
                notified,
            )
            .await;
        }
    }

    async fn image_ref(&self, id: &str) -> Option<proto::ImageRef> {
        let img = self.store.get_image(id).await.ok()?;
        Some(proto::ImageRef {
            id: img.id.clone(),
            disk_format: img.disk_format.clone().unwrap_or_else(|| "raw".into()),
            size: img.size.unwrap_or(0),
            virtual_size: img.virtual_size.or(img.size).unwrap_or(0),
            sha512: img.os_hash_value.clone().unwrap_or_default(),
        })
    }

    /// A server's NICs as the agent plugs them, in order.
    async fn nics(&self, id: &str) -> CoreResult<Vec<proto::Nic>> {
        let Some(net) = self.network.get() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for p in net.server_ports(id).await? {
            let mut dns = Vec::new();
            for s in net.subnets_of(&p.network_id).await? {
                if p.fixed_ips.iter().any(|f| f.subnet_id == s.id) {
                    dns.extend(s.dns_nameservers.clone());
                }
            }
            let mtu = net
                .network(&p.network_id)
                .await
                .map(|n| n.mtu)
                .unwrap_or(1500);
            out.push(proto::Nic {
                port_id: p.id.clone(),
                network_id: p.network_id.clone(),
                mac: p.mac_address.clone(),
                tap: crate::network::proto::tap_name(&p.id),
                ips: p.ipv4s().map(str::to_string).collect(),
                mtu,
                dns,
            });
        }
        Ok(out)
    }

    /// The metadata service's lookup: the live server owning `source_ip` on `network_id`, and
    /// what it may know of itself. None when no server has that address there.
    pub async fn metadata_for(
        &self,
        network_id: &str,
        source_ip: &str,
    ) -> CoreResult<Option<proto::ConfigDrive>> {
        let Some(net) = self.network.get() else {
            return Ok(None);
        };
        let Some(port) = net.port_by_address(network_id, source_ip).await? else {
            return Ok(None);
        };
        let inst = match self.store.get_instance(&port.device_id).await {
            Ok(i) if !i.deleted => i,
            Ok(_) | Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let nics = self.nics(&inst.id).await?;
        let public = net.floating_ip_of(&port.id).await?.unwrap_or_default();
        Ok(Some(self.instance_data(&inst, &nics, &public)))
    }

    /// What the config drive and the metadata service tell a server about itself.
    pub fn instance_data(
        &self,
        inst: &InstanceRecord,
        nics: &[proto::Nic],
        public_ipv4: &str,
    ) -> proto::ConfigDrive {
        let key = inst.key_name.as_deref().zip(inst.key_data.as_deref());
        let links: Vec<(String, String, String, u32)> = nics
            .iter()
            .map(|n| {
                (
                    n.port_id.clone(),
                    n.mac.clone(),
                    n.network_id.clone(),
                    n.mtu,
                )
            })
            .collect();
        let mut dns: Vec<String> = nics.iter().flat_map(|n| n.dns.clone()).collect();
        dns.dedup();
        let local_ipv4 = nics
            .first()
            .and_then(|n| n.ips.first())
            .cloned()
            .unwrap_or_default();
        let mut ec2 = metadata::ec2_meta_data(inst, key, &local_ipv4);
        if let Some(o) = ec2.as_object_mut() {
            o.insert("public-ipv4".into(), json!(public_ipv4));
        }
        proto::ConfigDrive {
            meta_data: metadata::meta_data(inst, key),
            network_data: metadata::network_data(&links, &dns),
            vendor_data: json!({}),
            ec2_meta_data: ec2,
            user_data: inst.user_data.clone(),
        }
    }

    fn desired_instance(
        &self,
        inst: &InstanceRecord,
        image: Option<proto::ImageRef>,
        nics: Vec<proto::Nic>,
    ) -> proto::DesiredInstance {
        let config_drive = inst
            .config_drive
            .then(|| self.instance_data(inst, &nics, ""));
        proto::DesiredInstance {
            id: inst.id.clone(),
            name: metadata::instance_name(inst.seq),
            vm_state: VmState::parse(&inst.vm_state).unwrap_or(VmState::Error),
            task_state: inst.task_state.as_deref().and_then(TaskState::parse),
            power_state: inst.power_state,
            vcpus: inst.vcpus,
            memory_mb: inst.memory_mb,
            root_gb: inst.root_gb,
            image,
            config_drive,
            snapshot_image_id: inst.snapshot_image_id.clone(),
            nics,
            volumes: Vec::new(),
            migration: None,
        }
    }

    /// Applies an agent's report. A finished task moves the state machine on, but only if the
    /// server is still in that task (a delete that came meanwhile wins); a bare observation
    /// syncs the power state, and a server whose VM vanished becomes SHUTOFF (Nova's sync).
    pub async fn report(&self, host: &str, id: &str, r: proto::Report) -> CoreResult<()> {
        let inst = match self.store.get_instance(id).await {
            Ok(i) if i.host.as_deref() == Some(host) => i,
            Ok(_) | Err(StoreError::NotFound) => return Err(server_not_found(id)),
            Err(e) => return Err(e.into()),
        };
        if inst.deleted {
            return Ok(());
        }
        let t = now();
        let vm = VmState::parse(&inst.vm_state).unwrap_or(VmState::Error);
        match r.task {
            Some(TaskState::Deleting) if r.ok => {
                self.store.mark_instance_deleted(id, &t).await?;
                self.release_ports(id).await;
                self.release_volumes(id).await;
            }
            Some(task) => {
                let mut next = state::complete(vm, task, r.ok);
                // A reverted resize of a server that was off leaves it off.
                if task == TaskState::ResizeReverting && r.ok && r.power_state == 4 {
                    next = VmState::Stopped;
                }
                let mut changes: Changes = vec![
                    ("vm_state", next.as_str().into()),
                    ("task_state", SqlValue::Text(None)),
                    ("power_state", r.power_state.into()),
                    ("updated_at", t.clone().into()),
                ];
                if task == TaskState::Spawning && r.ok {
                    changes.push(("launched_at", t.clone().into()));
                }
                if task == TaskState::ResizeMigrating && !r.ok {
                    changes.extend(Self::failed_resize_changes(&inst));
                }
                if task == TaskState::ImageSnapshot {
                    changes.push(("snapshot_image_id", SqlValue::Text(None)));
                    changes.push(("backup_rotation", SqlValue::Int(None)));
                }
                if let Some(f) = &r.fault {
                    changes.push(("fault_code", f.code.into()));
                    changes.push(("fault_message", f.message.clone().into()));
                    changes.push(("fault_details", f.details.clone().into()));
                    changes.push(("fault_created", t.clone().into()));
                }
                let applied = self
                    .store
                    .update_instance(
                        id,
                        &Expect::TaskIn(vec![Some(task.as_str().into())]),
                        &changes,
                    )
                    .await?;
                if task == TaskState::ImageSnapshot && !r.ok {
                    if let Some(img) = &inst.snapshot_image_id {
                        let _ = self.images.delete_system(img).await;
                    }
                }
                if task == TaskState::ImageSnapshot && r.ok && applied {
                    if let (Some(img), Some(keep)) = (&inst.snapshot_image_id, inst.backup_rotation)
                    {
                        self.rotate_backups(&inst, img, keep).await;
                    }
                }
                if !applied {
                    tracing::info!(instance = %id, task = task.as_str(), "stale report ignored");
                }
            }
            None => {
                let mut changes: Changes = vec![("power_state", r.power_state.into())];
                let gone = matches!(r.power_state, 0 | 4 | 6);
                if inst.task_state.is_none() && gone && vm == VmState::Active {
                    tracing::warn!(instance = %id, "VM is not running; marking the server SHUTOFF");
                    changes.push(("vm_state", VmState::Stopped.as_str().into()));
                    changes.push(("updated_at", t.clone().into()));
                }
                if r.power_state != inst.power_state || changes.len() > 1 {
                    self.store
                        .update_instance(id, &Expect::TaskIn(vec![None]), &changes)
                        .await?;
                }
            }
        }
        self.notify();
        Ok(())
    }

    /// Where a server runs, for the console proxy: (host record, instance).
    pub async fn server_host(
        &self,
        ctx: &AuthContext,
        id: &str,
    ) -> CoreResult<(HostRecord, InstanceRecord)> {
        let inst = self.get_server(ctx, id).await?;
        self.host_of(inst).await
    }

    /// The host of a server whose console the caller opens (`os-getConsoleOutput` under
    /// `os_compute_api:os-console-output`, `os-getSerialConsole` under
    /// `os_compute_api:os-remote-consoles`): both are Nova's `project_member_or_admin` — the
    /// boot log and a root shell are not for a reader. Others' servers are 404 first.
    pub async fn console_host(
        &self,
        ctx: &AuthContext,
        id: &str,
        rule: &str,
    ) -> CoreResult<(HostRecord, InstanceRecord)> {
        let inst = self.get_server(ctx, id).await?;
        ctx.require_member(rule)?;
        self.host_of(inst).await
    }

    /// The host a cold migration copies the server's disk from (admin only; others' servers
    /// are 404 before the role is looked at, as in Nova).
    pub async fn migration_source(
        &self,
        ctx: &AuthContext,
        id: &str,
    ) -> CoreResult<(HostRecord, InstanceRecord)> {
        let inst = self.get_server(ctx, id).await?;
        ctx.require_admin("os_compute_api:os-migrate-server:migrate")?;
        self.host_of(inst).await
    }

    async fn host_of(&self, inst: InstanceRecord) -> CoreResult<(HostRecord, InstanceRecord)> {
        let id = &inst.id;
        let host = inst
            .host
            .clone()
            .ok_or_else(|| CoreError::Conflict(format!("Instance {id} is not on a host yet")))?;
        let rec = self.store.get_host_by_name(&host).await?;
        Ok((rec, inst))
    }
}

/// Nova's metadata rules: keys 1–255 characters, values up to 255.
fn validate_metadata(meta: &BTreeMap<String, String>) -> CoreResult<()> {
    for (k, v) in meta {
        if k.is_empty() || k.len() > 255 {
            return Err(CoreError::BadRequest(
                "Metadata property key must be 1 to 255 characters.".into(),
            ));
        }
        if v.len() > 255 {
            return Err(CoreError::BadRequest(
                "Metadata property value greater than 255 characters.".into(),
            ));
        }
    }
    Ok(())
}

/// The API status of a stored instance.
pub fn server_status(i: &InstanceRecord) -> &'static str {
    let vm = VmState::parse(&i.vm_state).unwrap_or(VmState::Error);
    let task = i.task_state.as_deref().and_then(TaskState::parse);
    state::status(vm, task)
}

/// The changes that put a server being built into ERROR with Nova's fault (code 500).
pub(crate) fn build_fault(message: &str) -> Changes {
    let t = now();
    vec![
        ("vm_state", VmState::Error.as_str().into()),
        ("task_state", SqlValue::Text(None)),
        ("fault_code", 500i64.into()),
        ("fault_message", message.into()),
        ("fault_details", "".into()),
        ("fault_created", t.clone().into()),
        ("updated_at", t.into()),
    ]
}
