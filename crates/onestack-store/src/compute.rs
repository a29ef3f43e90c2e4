//! Compute records (Nova v2.1): flavors with extra specs and project access, keypairs, compute
//! hosts, and instances with their metadata. Instance state changes made on behalf of an agent
//! are conditional on the task the caller expects, so a delete that arrives mid-boot always wins.

use crate::{require_row, retry_transient, Result, Store};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug, PartialEq)]
pub struct FlavorRecord {
    pub id: String,
    pub name: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub swap_mb: i64,
    pub is_public: bool,
    pub disabled: bool,
    pub description: Option<String>,
    pub created_at: String,
    pub extra_specs: BTreeMap<String, String>,
}

row_struct!(FlavorRecord {
    id: "id" => val, name: "name" => val, vcpus: "vcpus" => val, memory_mb: "memory_mb" => val,
    root_gb: "root_gb" => val, ephemeral_gb: "ephemeral_gb" => val, swap_mb: "swap_mb" => val,
    is_public: "is_public" => flag, disabled: "disabled" => flag,
    description: "description" => val, created_at: "created_at" => val,
    extra_specs: "" => default,
});

const FLAVOR_COLUMNS: &str = "id, name, vcpus, memory_mb, root_gb, ephemeral_gb, swap_mb, \
    is_public, disabled, description, created_at";

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct KeypairRecord {
    pub user_id: String,
    pub name: String,
    pub key_type: String,
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: String,
}

/// A compute host as its agent registered it.
#[derive(Clone, Debug, PartialEq)]
pub struct HostRecord {
    pub id: String,
    /// Integer id (hypervisor and service ids before microversion 2.53).
    pub num: i64,
    pub host: String,
    pub host_ip: String,
    /// Where the controller reaches the agent (console output, serial console).
    pub agent_url: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub local_gb: i64,
    pub cpu_info: String,
    pub hypervisor_type: String,
    pub hypervisor_version: i64,
    pub virt_type: String,
    pub availability_zone: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub forced_down: bool,
    /// Last heartbeat, microseconds since the epoch.
    pub last_seen: i64,
    /// Bumped whenever the desired state of one of the host's instances changes.
    pub generation: i64,
    pub created_at: String,
    pub updated_at: String,
}

row_struct!(HostRecord {
    id: "id" => val, num: "num" => val, host: "host" => val, host_ip: "host_ip" => val, agent_url: "agent_url" => val, vcpus: "vcpus" => val,
    memory_mb: "memory_mb" => val, local_gb: "local_gb" => val, cpu_info: "cpu_info" => val,
    hypervisor_type: "hypervisor_type" => val, hypervisor_version: "hypervisor_version" => val,
    virt_type: "virt_type" => val, availability_zone: "availability_zone" => val,
    enabled: "enabled" => flag, disabled_reason: "disabled_reason" => val,
    forced_down: "forced_down" => flag, last_seen: "last_seen" => val,
    generation: "generation" => val, created_at: "created_at" => val,
    updated_at: "updated_at" => val,
});

const HOST_COLUMNS: &str =
    "id, num, host, host_ip, agent_url, vcpus, memory_mb, local_gb, cpu_info, \
    hypervisor_type, hypervisor_version, virt_type, availability_zone, enabled, disabled_reason, \
    forced_down, last_seen, generation, created_at, updated_at";

/// Resources the live instances on one host hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostUsage {
    pub instances: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_gb: i64,
}

/// One server. The flavor is copied in at creation (Nova embeds it), so deleting or editing a
/// flavor never changes a running server.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRecord {
    pub id: String,
    /// Per-cloud sequence number: `instance-%08x` and the EC2 id `i-%08x`.
    pub seq: i64,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub image_id: String,
    pub flavor_id: String,
    pub flavor_name: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub swap_mb: i64,
    /// JSON object.
    pub flavor_extra_specs: String,
    pub key_name: Option<String>,
    pub key_data: Option<String>,
    /// Base64, as the client sent it.
    pub user_data: Option<String>,
    pub config_drive: bool,
    pub availability_zone: Option<String>,
    pub host: Option<String>,
    pub node: Option<String>,
    pub reservation_id: String,
    pub launch_index: i64,
    pub hostname: String,
    pub vm_state: String,
    pub task_state: Option<String>,
    pub power_state: i64,
    pub locked: bool,
    pub locked_by: Option<String>,
    pub description: Option<String>,
    pub access_ipv4: String,
    pub access_ipv6: String,
    /// JSON array of security group names.
    pub security_groups: String,
    /// JSON: what the client asked for in `networks`.
    pub requested_networks: String,
    pub fault_code: Option<i64>,
    pub fault_message: Option<String>,
    pub fault_details: Option<String>,
    pub fault_created: Option<String>,
    /// The image a running createImage writes to.
    pub snapshot_image_id: Option<String>,
    /// createBackup: how many backups of this kind to keep once the running one is uploaded.
    pub backup_rotation: Option<i64>,
    /// A resize waiting for confirmation: the flavor to go back to (JSON), as Nova keeps it.
    pub old_flavor: Option<String>,
    /// A live migration's target host while it runs.
    pub migration_host: Option<String>,
    /// The live migration's progress (JSON, the compute service's).
    pub migration_info: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub launched_at: Option<String>,
    pub terminated_at: Option<String>,
    pub deleted: bool,
    pub metadata: BTreeMap<String, String>,
}

row_struct!(InstanceRecord {
    id: "id" => val, seq: "seq" => val, name: "name" => val, project_id: "project_id" => val,
    user_id: "user_id" => val, image_id: "image_id" => val, flavor_id: "flavor_id" => val,
    flavor_name: "flavor_name" => val, vcpus: "vcpus" => val, memory_mb: "memory_mb" => val,
    root_gb: "root_gb" => val, ephemeral_gb: "ephemeral_gb" => val, swap_mb: "swap_mb" => val,
    flavor_extra_specs: "flavor_extra_specs" => val, key_name: "key_name" => val,
    key_data: "key_data" => val, user_data: "user_data" => val,
    config_drive: "config_drive" => flag, availability_zone: "availability_zone" => val,
    host: "host" => val, node: "node" => val, reservation_id: "reservation_id" => val,
    launch_index: "launch_index" => val, hostname: "hostname" => val,
    vm_state: "vm_state" => val, task_state: "task_state" => val,
    power_state: "power_state" => val, locked: "locked" => flag, locked_by: "locked_by" => val,
    description: "description" => val, access_ipv4: "access_ipv4" => val,
    access_ipv6: "access_ipv6" => val, security_groups: "security_groups" => val,
    requested_networks: "requested_networks" => val, fault_code: "fault_code" => val,
    fault_message: "fault_message" => val, fault_details: "fault_details" => val,
    fault_created: "fault_created" => val, snapshot_image_id: "snapshot_image_id" => val,
    backup_rotation: "backup_rotation" => val, old_flavor: "old_flavor" => val,
    migration_host: "migration_host" => val, migration_info: "migration_info" => val,
    created_at: "created_at" => val, updated_at: "updated_at" => val,
    launched_at: "launched_at" => val, terminated_at: "terminated_at" => val,
    deleted: "deleted" => flag, metadata: "" => default,
});

const INSTANCE_COLUMNS: &[&str] = &[
    "id",
    "seq",
    "name",
    "project_id",
    "user_id",
    "image_id",
    "flavor_id",
    "flavor_name",
    "vcpus",
    "memory_mb",
    "root_gb",
    "ephemeral_gb",
    "swap_mb",
    "flavor_extra_specs",
    "key_name",
    "key_data",
    "user_data",
    "config_drive",
    "availability_zone",
    "host",
    "node",
    "reservation_id",
    "launch_index",
    "hostname",
    "vm_state",
    "task_state",
    "power_state",
    "locked",
    "locked_by",
    "description",
    "access_ipv4",
    "access_ipv6",
    "security_groups",
    "requested_networks",
    "fault_code",
    "fault_message",
    "fault_details",
    "fault_created",
    "snapshot_image_id",
    "backup_rotation",
    "old_flavor",
    "migration_host",
    "migration_info",
    "created_at",
    "updated_at",
    "launched_at",
    "terminated_at",
    "deleted",
];

/// A value for a dynamically built update.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Text(Option<String>),
    Int(Option<i64>),
}

impl From<&str> for SqlValue {
    fn from(s: &str) -> Self {
        SqlValue::Text(Some(s.to_string()))
    }
}
impl From<String> for SqlValue {
    fn from(s: String) -> Self {
        SqlValue::Text(Some(s))
    }
}
impl From<Option<String>> for SqlValue {
    fn from(s: Option<String>) -> Self {
        SqlValue::Text(s)
    }
}
impl From<Option<&str>> for SqlValue {
    fn from(s: Option<&str>) -> Self {
        SqlValue::Text(s.map(str::to_string))
    }
}
impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Int(Some(v))
    }
}
impl From<bool> for SqlValue {
    fn from(v: bool) -> Self {
        SqlValue::Int(Some(v as i64))
    }
}

/// A project's instance limits (-1: unlimited), for `create_instance_within`.
#[derive(Clone, Copy, Debug)]
pub struct InstanceLimits {
    pub instances: i64,
    pub cores: i64,
    pub ram_mb: i64,
}

/// The limit a create would have exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub resource: &'static str,
    pub used: i64,
    pub requested: i64,
    pub limit: i64,
}

/// Column changes for `update_instance`; column names come from code, never from users.
pub type Changes = Vec<(&'static str, SqlValue)>;

/// Which task state an update expects the instance to be in.
#[derive(Clone, Debug)]
pub enum Expect {
    Any,
    /// One of these task states (`None` = no task).
    TaskIn(Vec<Option<String>>),
}

pub(crate) fn bind_value<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    v: &'q SqlValue,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match v {
        SqlValue::Text(t) => q.bind(t.as_deref()),
        SqlValue::Int(i) => q.bind(*i),
    }
}

impl Store {
    // ---- flavors ----

    pub async fn create_flavor(&self, f: &FlavorRecord) -> Result<()> {
        retry_transient("create flavor", || async move {
            let mut tx = self.pool().begin().await?;
            sqlx::query(&format!(
                "INSERT INTO flavors ({FLAVOR_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
            ))
            .bind(&f.id)
            .bind(&f.name)
            .bind(f.vcpus)
            .bind(f.memory_mb)
            .bind(f.root_gb)
            .bind(f.ephemeral_gb)
            .bind(f.swap_mb)
            .bind(f.is_public as i64)
            .bind(f.disabled as i64)
            .bind(&f.description)
            .bind(&f.created_at)
            .execute(&mut *tx)
            .await?;
            for (k, v) in &f.extra_specs {
                sqlx::query(
                    "INSERT INTO flavor_extra_specs (flavor_id, key, value) VALUES ($1,$2,$3)",
                )
                .bind(&f.id)
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn list_flavors(&self) -> Result<Vec<FlavorRecord>> {
        let mut flavors: Vec<FlavorRecord> =
            sqlx::query_as(&format!("SELECT {FLAVOR_COLUMNS} FROM flavors"))
                .fetch_all(self.pool())
                .await?;
        let specs: Vec<(String, String, String)> =
            sqlx::query_as("SELECT flavor_id, key, value FROM flavor_extra_specs")
                .fetch_all(self.pool())
                .await?;
        let index: HashMap<String, usize> = flavors
            .iter()
            .enumerate()
            .map(|(i, f)| (f.id.clone(), i))
            .collect();
        for (fid, k, v) in specs {
            if let Some(&i) = index.get(&fid) {
                flavors[i].extra_specs.insert(k, v);
            }
        }
        Ok(flavors)
    }

    pub async fn get_flavor(&self, id: &str) -> Result<FlavorRecord> {
        let mut f: FlavorRecord = sqlx::query_as(&format!(
            "SELECT {FLAVOR_COLUMNS} FROM flavors WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        let specs: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM flavor_extra_specs WHERE flavor_id = $1")
                .bind(id)
                .fetch_all(self.pool())
                .await?;
        f.extra_specs = specs.into_iter().collect();
        Ok(f)
    }

    pub async fn delete_flavor(&self, id: &str) -> Result<()> {
        retry_transient("delete flavor", || async move {
            let mut tx = self.pool().begin().await?;
            for table in ["flavor_extra_specs", "flavor_projects"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE flavor_id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            let r = sqlx::query("DELETE FROM flavors WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            require_row(r)?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn set_flavor_description(&self, id: &str, description: Option<&str>) -> Result<()> {
        let r = sqlx::query("UPDATE flavors SET description = $2 WHERE id = $1")
            .bind(id)
            .bind(description)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    /// Adds or replaces extra specs.
    pub async fn set_flavor_extra_specs(
        &self,
        id: &str,
        specs: &BTreeMap<String, String>,
    ) -> Result<()> {
        retry_transient("set flavor extra specs", || async move {
            let mut tx = self.pool().begin().await?;
            for (k, v) in specs {
                put_pair(&mut tx, "flavor_extra_specs", "flavor_id", id, k, v).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn delete_flavor_extra_spec(&self, id: &str, key: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM flavor_extra_specs WHERE flavor_id = $1 AND key = $2")
            .bind(id)
            .bind(key)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    pub async fn list_flavor_projects(&self, id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT project_id FROM flavor_projects WHERE flavor_id = $1 ORDER BY project_id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(p,)| p).collect())
    }

    /// Flavor ids a project was given access to.
    pub async fn flavors_of_project(&self, project_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT flavor_id FROM flavor_projects WHERE project_id = $1")
                .bind(project_id)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(|(p,)| p).collect())
    }

    /// Conflict when the project already has access.
    pub async fn add_flavor_project(&self, id: &str, project_id: &str) -> Result<()> {
        sqlx::query("INSERT INTO flavor_projects (flavor_id, project_id) VALUES ($1, $2)")
            .bind(id)
            .bind(project_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn remove_flavor_project(&self, id: &str, project_id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM flavor_projects WHERE flavor_id = $1 AND project_id = $2")
            .bind(id)
            .bind(project_id)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    // ---- keypairs ----

    /// Conflict when the user already has a keypair of that name.
    pub async fn create_keypair(&self, k: &KeypairRecord) -> Result<()> {
        self.create_keypair_within(k, -1).await.map(|_| ())
    }

    /// Inserts the keypair unless its user already has `limit` (< 0: no limit); the count and
    /// the insert are one serialized transaction, so racing creates cannot pass the limit.
    /// Returns the user's count when refused.
    pub async fn create_keypair_within(
        &self,
        k: &KeypairRecord,
        limit: i64,
    ) -> Result<Option<i64>> {
        retry_transient("create keypair", || async move {
            let mut tx = self.pool().begin().await?;
            if limit >= 0 {
                sqlx::query("UPDATE quota_generation SET value = value + 1 WHERE id = 1")
                    .execute(&mut *tx)
                    .await?;
                let (n,): (i64,) =
                    sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT) FROM keypairs WHERE user_id = $1")
                        .bind(&k.user_id)
                        .fetch_one(&mut *tx)
                        .await?;
                if n >= limit {
                    return Ok(Some(n));
                }
            }
            sqlx::query(
                "INSERT INTO keypairs (user_id, name, key_type, public_key, fingerprint, created_at) \
                 VALUES ($1,$2,$3,$4,$5,$6)",
            )
            .bind(&k.user_id)
            .bind(&k.name)
            .bind(&k.key_type)
            .bind(&k.public_key)
            .bind(&k.fingerprint)
            .bind(&k.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(None)
        })
        .await
    }

    pub async fn get_keypair(&self, user_id: &str, name: &str) -> Result<KeypairRecord> {
        Ok(sqlx::query_as(
            "SELECT user_id, name, key_type, public_key, fingerprint, created_at FROM keypairs \
             WHERE user_id = $1 AND name = $2",
        )
        .bind(user_id)
        .bind(name)
        .fetch_one(self.pool())
        .await?)
    }

    pub async fn list_keypairs(&self, user_id: &str) -> Result<Vec<KeypairRecord>> {
        Ok(sqlx::query_as(
            "SELECT user_id, name, key_type, public_key, fingerprint, created_at FROM keypairs \
             WHERE user_id = $1 ORDER BY name",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn delete_keypair(&self, user_id: &str, name: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM keypairs WHERE user_id = $1 AND name = $2")
            .bind(user_id)
            .bind(name)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    // ---- join tokens ----

    /// Stores a join token (by its hash) valid until `expires_at` (µs since the epoch); expired
    /// ones are dropped on the way.
    pub async fn create_join_token(
        &self,
        token_hash: &str,
        expires_at: i64,
        now_micros: i64,
        created_at: &str,
        role: &str,
    ) -> Result<()> {
        sqlx::query("DELETE FROM join_tokens WHERE expires_at < $1")
            .bind(now_micros)
            .execute(self.pool())
            .await?;
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, expires_at, used_by, created_at, role) \
             VALUES ($1, $2, NULL, $3, $4)",
        )
        .bind(token_hash)
        .bind(expires_at)
        .bind(created_at)
        .bind(role)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Uses up a join token minted for `role`: true once for a valid, unexpired token (one
    /// statement, so two concurrent joins cannot both succeed), false afterwards or when
    /// unknown, expired or for another role.
    pub async fn redeem_join_token(
        &self,
        token_hash: &str,
        host: &str,
        now_micros: i64,
        role: &str,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE join_tokens SET used_by = $2 \
             WHERE token_hash = $1 AND used_by IS NULL AND expires_at >= $3 AND role = $4",
        )
        .bind(token_hash)
        .bind(host)
        .bind(now_micros)
        .bind(role)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- node credentials ----

    /// Records the nonce of a joined compute node's credential, replacing an earlier one.
    pub async fn put_node_credential(
        &self,
        host: &str,
        nonce: &str,
        created_at: &str,
    ) -> Result<()> {
        retry_transient("put node credential", || async move {
            let mut tx = self.pool().begin().await?;
            sqlx::query("DELETE FROM node_credentials WHERE host = $1")
                .bind(host)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO node_credentials (host, nonce, created_at) VALUES ($1, $2, $3)",
            )
            .bind(host)
            .bind(nonce)
            .bind(created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn node_credential_nonce(&self, host: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT nonce FROM node_credentials WHERE host = $1")
                .bind(host)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn delete_node_credential(&self, host: &str) -> Result<()> {
        sqlx::query("DELETE FROM node_credentials WHERE host = $1")
            .bind(host)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    // ---- compute hosts ----

    /// Registers a host, or refreshes the figures of one that registered before (same name);
    /// returns the stored record (its id and generation survive re-registration).
    pub async fn upsert_host(&self, h: &HostRecord) -> Result<HostRecord> {
        let r = sqlx::query(
            "UPDATE compute_hosts SET host_ip = $2, vcpus = $3, memory_mb = $4, local_gb = $5, \
             cpu_info = $6, hypervisor_type = $7, hypervisor_version = $8, virt_type = $9, \
             availability_zone = $10, last_seen = $11, updated_at = $12, agent_url = $13, \
             generation = generation + 1 WHERE host = $1",
        )
        .bind(&h.host)
        .bind(&h.host_ip)
        .bind(h.vcpus)
        .bind(h.memory_mb)
        .bind(h.local_gb)
        .bind(&h.cpu_info)
        .bind(&h.hypervisor_type)
        .bind(h.hypervisor_version)
        .bind(&h.virt_type)
        .bind(&h.availability_zone)
        .bind(h.last_seen)
        .bind(&h.updated_at)
        .bind(&h.agent_url)
        .execute(self.pool())
        .await?;
        if r.rows_affected() == 0 {
            let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(num) FROM compute_hosts")
                .fetch_one(self.pool())
                .await?;
            sqlx::query(&format!(
                "INSERT INTO compute_hosts ({HOST_COLUMNS}) VALUES \
                 ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20)"
            ))
            .bind(&h.id)
            .bind(max.unwrap_or(0) + 1)
            .bind(&h.host)
            .bind(&h.host_ip)
            .bind(&h.agent_url)
            .bind(h.vcpus)
            .bind(h.memory_mb)
            .bind(h.local_gb)
            .bind(&h.cpu_info)
            .bind(&h.hypervisor_type)
            .bind(h.hypervisor_version)
            .bind(&h.virt_type)
            .bind(&h.availability_zone)
            .bind(h.enabled as i64)
            .bind(&h.disabled_reason)
            .bind(h.forced_down as i64)
            .bind(h.last_seen)
            .bind(h.generation)
            .bind(&h.created_at)
            .bind(&h.updated_at)
            .execute(self.pool())
            .await?;
        }
        self.get_host_by_name(&h.host).await
    }

    pub async fn get_host_by_name(&self, host: &str) -> Result<HostRecord> {
        Ok(sqlx::query_as(&format!(
            "SELECT {HOST_COLUMNS} FROM compute_hosts WHERE host = $1"
        ))
        .bind(host)
        .fetch_one(self.pool())
        .await?)
    }

    pub async fn get_host(&self, id: &str) -> Result<HostRecord> {
        Ok(sqlx::query_as(&format!(
            "SELECT {HOST_COLUMNS} FROM compute_hosts WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(self.pool())
        .await?)
    }

    pub async fn list_hosts(&self) -> Result<Vec<HostRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {HOST_COLUMNS} FROM compute_hosts ORDER BY host"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// Wakes a host's long poll (its desired state changed through another host's instance).
    pub async fn bump_host_generation(&self, host: &str) -> Result<()> {
        bump_generation(self.pool(), host).await
    }

    pub async fn heartbeat_host(&self, host: &str, now_micros: i64) -> Result<()> {
        let r = sqlx::query("UPDATE compute_hosts SET last_seen = $2 WHERE host = $1")
            .bind(host)
            .bind(now_micros)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    pub async fn set_host_status(
        &self,
        host: &str,
        enabled: bool,
        reason: Option<&str>,
        now: &str,
    ) -> Result<()> {
        let r = sqlx::query(
            "UPDATE compute_hosts SET enabled = $2, disabled_reason = $3, updated_at = $4 \
             WHERE host = $1",
        )
        .bind(host)
        .bind(enabled as i64)
        .bind(reason)
        .bind(now)
        .execute(self.pool())
        .await?;
        require_row(r)
    }

    pub async fn set_host_forced_down(&self, host: &str, down: bool) -> Result<()> {
        let r = sqlx::query("UPDATE compute_hosts SET forced_down = $2 WHERE host = $1")
            .bind(host)
            .bind(down as i64)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    pub async fn delete_host(&self, host: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM compute_hosts WHERE host = $1")
            .bind(host)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    /// Resources held on each host by instances that are not deleted.
    pub async fn host_usage(&self) -> Result<HashMap<String, HostUsage>> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT host, CAST(COUNT(*) AS BIGINT), CAST(SUM(vcpus) AS BIGINT), \
             CAST(SUM(memory_mb) AS BIGINT), \
             CAST(SUM(root_gb + ephemeral_gb) AS BIGINT) FROM instances \
             WHERE deleted = 0 AND host IS NOT NULL GROUP BY host",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(h, n, c, m, d)| {
                (
                    h,
                    HostUsage {
                        instances: n,
                        vcpus: c,
                        memory_mb: m,
                        disk_gb: d,
                    },
                )
            })
            .collect())
    }

    // ---- instances ----

    /// Inserts the instance and its metadata; `seq` is assigned here (the next free number).
    /// The number is computed inside the INSERT, so the transaction's first statement is a
    /// write (SQLite takes the write lock at once instead of failing a lock upgrade under
    /// concurrency); two PostgreSQL controllers racing for a number retry on the UNIQUE index.
    pub async fn create_instance(&self, inst: &mut InstanceRecord) -> Result<()> {
        match self.create_instance_within(inst, None).await? {
            None => Ok(()),
            Some(q) => Err(crate::StoreError::Conflict(format!(
                "quota exceeded for {}",
                q.resource
            ))),
        }
    }

    /// Inserts the instance if its project stays within `limits` (counted in the same
    /// transaction, which starts with a write so that concurrent creates are serialized: they
    /// cannot all see the last free unit). Returns what was exceeded instead, if anything.
    pub async fn create_instance_within(
        &self,
        inst: &mut InstanceRecord,
        limits: Option<InstanceLimits>,
    ) -> Result<Option<QuotaExceeded>> {
        let cols = INSTANCE_COLUMNS.join(", ");
        let mut n = 0;
        let params: Vec<String> = INSTANCE_COLUMNS
            .iter()
            .map(|c| {
                if *c == "seq" {
                    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM instances)".to_string()
                } else {
                    n += 1;
                    format!("${n}")
                }
            })
            .collect();
        let sql = format!("INSERT INTO instances ({cols}) SELECT {}", params.join(","));
        /// What one attempt came to.
        enum Outcome {
            Created(i64),
            Over(QuotaExceeded),
            /// Another controller took the number (the UNIQUE index refused it).
            NumberTaken(crate::StoreError),
        }
        let (sql, rec) = (&sql, &*inst);
        let mut attempts = 0;
        loop {
            // One attempt is one whole transaction, run again when it failed transiently.
            let outcome = retry_transient("create instance", || async move {
                let mut tx = self.pool().begin().await?;
                if let Some(l) = limits {
                    sqlx::query("UPDATE quota_generation SET value = value + 1 WHERE id = 1")
                        .execute(&mut *tx)
                        .await?;
                    let (n, c, m): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
                        "SELECT CAST(COUNT(*) AS BIGINT), CAST(SUM(vcpus) AS BIGINT), \
                         CAST(SUM(memory_mb) AS BIGINT) FROM instances \
                         WHERE project_id = $1 AND deleted = 0",
                    )
                    .bind(&rec.project_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let (c, m) = (c.unwrap_or(0), m.unwrap_or(0));
                    let over = [
                        ("instances", n, 1, l.instances),
                        ("cores", c, rec.vcpus, l.cores),
                        ("ram", m, rec.memory_mb, l.ram_mb),
                    ]
                    .into_iter()
                    .find(|(_, used, want, limit)| *limit >= 0 && used + want > *limit);
                    if let Some((resource, used, requested, limit)) = over {
                        return Ok(Outcome::Over(QuotaExceeded {
                            resource,
                            used,
                            requested,
                            limit,
                        }));
                    }
                }
                let values = instance_values(rec);
                let mut q = sqlx::query(sql);
                for (col, v) in INSTANCE_COLUMNS.iter().zip(&values) {
                    if *col != "seq" {
                        q = bind_value(q, v);
                    }
                }
                if let Err(e) = q.execute(&mut *tx).await {
                    return match crate::StoreError::from(e) {
                        e @ crate::StoreError::Conflict(_) => Ok(Outcome::NumberTaken(e)),
                        e => Err(e),
                    };
                }
                let (seq,): (i64,) = sqlx::query_as("SELECT seq FROM instances WHERE id = $1")
                    .bind(&rec.id)
                    .fetch_one(&mut *tx)
                    .await?;
                for (k, v) in &rec.metadata {
                    sqlx::query(
                        "INSERT INTO instance_metadata (instance_id, key, value) VALUES ($1,$2,$3)",
                    )
                    .bind(&rec.id)
                    .bind(k)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Outcome::Created(seq))
            })
            .await?;
            match outcome {
                Outcome::Created(seq) => {
                    inst.seq = seq;
                    return Ok(None);
                }
                Outcome::Over(q) => return Ok(Some(q)),
                Outcome::NumberTaken(e) => {
                    attempts += 1;
                    if attempts >= 5 {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// The instance, deleted or not.
    pub async fn get_instance(&self, id: &str) -> Result<InstanceRecord> {
        let cols = INSTANCE_COLUMNS.join(", ");
        let mut inst: InstanceRecord =
            sqlx::query_as(&format!("SELECT {cols} FROM instances WHERE id = $1"))
                .bind(id)
                .fetch_one(self.pool())
                .await?;
        inst.metadata = self.instance_metadata(id).await?;
        Ok(inst)
    }

    pub async fn instance_metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM instance_metadata WHERE instance_id = $1")
                .bind(id)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Instances of one project (or all when `project` is None), newest first. Deleted ones only
    /// when asked (usage and admin listings).
    pub async fn list_instances(
        &self,
        project: Option<&str>,
        include_deleted: bool,
    ) -> Result<Vec<InstanceRecord>> {
        let cols = INSTANCE_COLUMNS.join(", ");
        let mut sql = format!("SELECT {cols} FROM instances WHERE 1 = 1");
        if project.is_some() {
            sql.push_str(" AND project_id = $1");
        }
        if !include_deleted {
            sql.push_str(" AND deleted = 0");
        }
        sql.push_str(" ORDER BY created_at DESC, seq DESC");
        let mut q = sqlx::query_as::<_, InstanceRecord>(&sql);
        if let Some(p) = project {
            q = q.bind(p);
        }
        let mut list = q.fetch_all(self.pool()).await?;
        self.attach_metadata(&mut list).await?;
        Ok(list)
    }

    /// Instances not deleted that wait for a host (`scheduling`, no host), without metadata.
    pub async fn instances_awaiting_host(&self) -> Result<Vec<InstanceRecord>> {
        let cols = INSTANCE_COLUMNS.join(", ");
        Ok(sqlx::query_as(&format!(
            "SELECT {cols} FROM instances WHERE deleted = 0 AND host IS NULL \
             AND task_state = 'scheduling'"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// The ids of every instance not deleted.
    pub async fn live_instance_ids(&self) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM instances WHERE deleted = 0")
            .fetch_all(self.pool())
            .await?;
        Ok(ids.into_iter().map(|(i,)| i).collect())
    }

    /// The instances an agent must reconcile: assigned to `host` and not yet deleted.
    pub async fn list_host_instances(&self, host: &str) -> Result<Vec<InstanceRecord>> {
        let cols = INSTANCE_COLUMNS.join(", ");
        let mut list: Vec<InstanceRecord> = sqlx::query_as(&format!(
            "SELECT {cols} FROM instances WHERE (host = $1 OR migration_host = $1) AND deleted = 0 \
             ORDER BY seq"
        ))
        .bind(host)
        .fetch_all(self.pool())
        .await?;
        self.attach_metadata(&mut list).await?;
        Ok(list)
    }

    async fn attach_metadata(&self, list: &mut [InstanceRecord]) -> Result<()> {
        if list.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT instance_id, key, value FROM instance_metadata")
                .fetch_all(self.pool())
                .await?;
        let index: HashMap<String, usize> = list
            .iter()
            .enumerate()
            .map(|(i, x)| (x.id.clone(), i))
            .collect();
        for (id, k, v) in rows {
            if let Some(&i) = index.get(&id) {
                list[i].metadata.insert(k, v);
            }
        }
        Ok(())
    }

    /// Applies `changes` to a live (not deleted) instance if its task state is as expected, and
    /// bumps the generation of its host (old and new) so that agents see the change. Returns
    /// false when the instance was in another task state (or is gone).
    pub async fn update_instance(
        &self,
        id: &str,
        expect: &Expect,
        changes: &Changes,
    ) -> Result<bool> {
        if changes.is_empty() {
            return Ok(true);
        }
        retry_transient("update instance", || async move {
            let mut tx = self.pool().begin().await?;
            // A write first, so SQLite takes its write lock now (rolled back if nothing matches).
            sqlx::query(
                "UPDATE compute_hosts SET generation = generation + 1 WHERE host = \
                 (SELECT host FROM instances WHERE id = $1 AND deleted = 0)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let old_host: Option<(Option<String>,)> =
                sqlx::query_as("SELECT host FROM instances WHERE id = $1 AND deleted = 0")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((old_host,)) = old_host else {
                return Ok(false);
            };
            let mut sql = String::from("UPDATE instances SET ");
            let mut n = 1;
            for (i, (col, _)) in changes.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("{col} = ${n}"));
                n += 1;
            }
            sql.push_str(&format!(" WHERE id = ${n} AND deleted = 0"));
            n += 1;
            let mut expected: Vec<String> = Vec::new();
            if let Expect::TaskIn(states) = expect {
                let mut parts = Vec::new();
                for s in states {
                    match s {
                        None => parts.push("task_state IS NULL".to_string()),
                        Some(v) => {
                            parts.push(format!("task_state = ${n}"));
                            n += 1;
                            expected.push(v.clone());
                        }
                    }
                }
                if parts.is_empty() {
                    parts.push("1 = 0".into());
                }
                sql.push_str(&format!(" AND ({})", parts.join(" OR ")));
            }
            let mut q = sqlx::query(&sql);
            for (_, v) in changes {
                q = bind_value(q, v);
            }
            q = q.bind(id);
            for e in &expected {
                q = q.bind(e.as_str());
            }
            let r = q.execute(&mut *tx).await?;
            if r.rows_affected() == 0 {
                return Ok(false);
            }
            let new_host: Option<Option<String>> = changes.iter().find_map(|(c, v)| match (c, v) {
                (&"host", SqlValue::Text(t)) => Some(t.clone()),
                _ => None,
            });
            if let Some(h) = new_host.flatten().filter(|h| Some(h) != old_host.as_ref()) {
                bump_generation(&mut *tx, &h).await?;
            }
            if changes
                .iter()
                .any(|(c, _)| crate::usage::METERED_COLUMNS.contains(c))
            {
                crate::usage::record_change(&mut tx, id).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Replaces (`replace`) or merges instance metadata. NotFound when the instance is gone.
    pub async fn set_instance_metadata(
        &self,
        id: &str,
        meta: &BTreeMap<String, String>,
        replace: bool,
        now: &str,
    ) -> Result<()> {
        retry_transient("set instance metadata", || async move {
            let mut tx = self.pool().begin().await?;
            let r =
                sqlx::query("UPDATE instances SET updated_at = $2 WHERE id = $1 AND deleted = 0")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            require_row(r)?;
            if replace {
                sqlx::query("DELETE FROM instance_metadata WHERE instance_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            for (k, v) in meta {
                put_pair(&mut tx, "instance_metadata", "instance_id", id, k, v).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn delete_instance_metadata_key(&self, id: &str, key: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM instance_metadata WHERE instance_id = $1 AND key = $2")
            .bind(id)
            .bind(key)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    /// Marks the instance deleted (kept for usage metering), bumping its host's generation.
    pub async fn mark_instance_deleted(&self, id: &str, now: &str) -> Result<bool> {
        self.update_instance(
            id,
            &Expect::Any,
            &vec![
                ("deleted", SqlValue::Int(Some(1))),
                ("vm_state", "deleted".into()),
                ("task_state", SqlValue::Text(None)),
                ("power_state", SqlValue::Int(Some(0))),
                ("terminated_at", now.into()),
                ("updated_at", now.into()),
            ],
        )
        .await
    }

    pub async fn count_live_instances(&self, project: &str) -> Result<(i64, i64, i64)> {
        let (n, c, m): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT), CAST(SUM(vcpus) AS BIGINT), \
             CAST(SUM(memory_mb) AS BIGINT) FROM instances \
             WHERE project_id = $1 AND deleted = 0",
        )
        .bind(project)
        .fetch_one(self.pool())
        .await?;
        Ok((n, c.unwrap_or(0), m.unwrap_or(0)))
    }
}

/// Bumps a compute host's generation, which wakes its agent's long poll.
pub(crate) async fn bump_generation<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    e: E,
    host: &str,
) -> Result<()> {
    sqlx::query("UPDATE compute_hosts SET generation = generation + 1 WHERE host = $1")
        .bind(host)
        .execute(e)
        .await?;
    Ok(())
}

/// Sets `key = value` for one owner in a key/value table (flavor extra specs, server metadata).
/// Table and column names come from code, never from users.
async fn put_pair(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    table: &str,
    owner_col: &str,
    owner: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    sqlx::query(&format!(
        "DELETE FROM {table} WHERE {owner_col} = $1 AND key = $2"
    ))
    .bind(owner)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {table} ({owner_col}, key, value) VALUES ($1, $2, $3)"
    ))
    .bind(owner)
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn instance_values(i: &InstanceRecord) -> Vec<SqlValue> {
    vec![
        i.id.clone().into(),
        i.seq.into(),
        i.name.clone().into(),
        i.project_id.clone().into(),
        i.user_id.clone().into(),
        i.image_id.clone().into(),
        i.flavor_id.clone().into(),
        i.flavor_name.clone().into(),
        i.vcpus.into(),
        i.memory_mb.into(),
        i.root_gb.into(),
        i.ephemeral_gb.into(),
        i.swap_mb.into(),
        i.flavor_extra_specs.clone().into(),
        i.key_name.clone().into(),
        i.key_data.clone().into(),
        i.user_data.clone().into(),
        i.config_drive.into(),
        i.availability_zone.clone().into(),
        i.host.clone().into(),
        i.node.clone().into(),
        i.reservation_id.clone().into(),
        i.launch_index.into(),
        i.hostname.clone().into(),
        i.vm_state.clone().into(),
        i.task_state.clone().into(),
        i.power_state.into(),
        i.locked.into(),
        i.locked_by.clone().into(),
        i.description.clone().into(),
        i.access_ipv4.clone().into(),
        i.access_ipv6.clone().into(),
        i.security_groups.clone().into(),
        i.requested_networks.clone().into(),
        SqlValue::Int(i.fault_code),
        i.fault_message.clone().into(),
        i.fault_details.clone().into(),
        i.fault_created.clone().into(),
        i.snapshot_image_id.clone().into(),
        SqlValue::Int(i.backup_rotation),
        i.old_flavor.clone().into(),
        i.migration_host.clone().into(),
        i.migration_info.clone().into(),
        i.created_at.clone().into(),
        i.updated_at.clone().into(),
        i.launched_at.clone().into(),
        i.terminated_at.clone().into(),
        i.deleted.into(),
    ]
}
