//! Block storage records (Cinder v3): volumes, their single attachment (no multiattach), volume
//! snapshots, and per-project quota limits.
//!
//! Creates that count against a quota run in one transaction that starts with a write (bumping
//! `volume_generation`), so SQLite takes its write lock and PostgreSQL its row lock at once:
//! two concurrent creates cannot both see the last free unit. Status changes are conditional on
//! the status the caller saw (`WHERE status IN (…)`), so two requests cannot both win a transition.

use crate::Changes;
use crate::{require_row, retry_transient, Result, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Clone, Debug, PartialEq, Default)]
pub struct VolumeRecord {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub size_gb: i64,
    /// creating, available, reserved, attaching, in-use, detaching, extending, uploading,
    /// deleting, error, error_deleting, error_extending
    pub status: String,
    pub volume_type: String,
    pub bootable: bool,
    pub availability_zone: String,
    pub source_image_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub source_volid: Option<String>,
    /// JSON object: the image's properties copied at creation (Cinder's volume_image_metadata).
    pub image_metadata: String,
    /// JSON object of user metadata.
    pub metadata: String,
    /// The one attachment: detached, attaching, attached, detaching.
    pub attach_status: String,
    pub attachment_id: Option<String>,
    pub instance_id: Option<String>,
    pub attached_host: Option<String>,
    pub device: Option<String>,
    pub attached_at: Option<String>,
    /// 0 for a server's root volume (boot from volume), None for a data volume.
    pub boot_index: Option<i64>,
    pub delete_on_termination: bool,
    /// Last error of an asynchronous operation (shown to users as the volume's message).
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

row_struct!(VolumeRecord {
    id: "id" => val, project_id: "project_id" => val, user_id: "user_id" => val,
    name: "name" => val, description: "description" => val, size_gb: "size_gb" => val,
    status: "status" => val, volume_type: "volume_type" => val, bootable: "bootable" => flag,
    availability_zone: "availability_zone" => val, source_image_id: "source_image_id" => val,
    snapshot_id: "snapshot_id" => val, source_volid: "source_volid" => val,
    image_metadata: "image_metadata" => val, metadata: "metadata" => val,
    attach_status: "attach_status" => val, attachment_id: "attachment_id" => val,
    instance_id: "instance_id" => val, attached_host: "attached_host" => val,
    device: "device" => val, attached_at: "attached_at" => val, boot_index: "boot_index" => val,
    delete_on_termination: "delete_on_termination" => flag, error: "error" => val,
    created_at: "created_at" => val, updated_at: "updated_at" => val,
});

const VOLUME_COLUMNS: &str = "id, project_id, user_id, name, description, size_gb, status, \
    volume_type, bootable, availability_zone, source_image_id, snapshot_id, source_volid, \
    image_metadata, metadata, attach_status, attachment_id, instance_id, attached_host, device, \
    attached_at, boot_index, delete_on_termination, error, created_at, updated_at";

#[derive(Clone, Debug, PartialEq, Default)]
pub struct SnapshotRecord {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub volume_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub size_gb: i64,
    /// creating, available, deleting, error, error_deleting
    pub status: String,
    pub metadata: String,
    pub created_at: String,
    pub updated_at: String,
}

row_struct!(SnapshotRecord {
    id: "id" => val, project_id: "project_id" => val, user_id: "user_id" => val,
    volume_id: "volume_id" => val, name: "name" => val, description: "description" => val,
    size_gb: "size_gb" => val, status: "status" => val, metadata: "metadata" => val,
    created_at: "created_at" => val, updated_at: "updated_at" => val,
});

const SNAPSHOT_COLUMNS: &str = "id, project_id, user_id, volume_id, name, description, size_gb, \
    status, metadata, created_at, updated_at";

/// What a project may hold, for the quota-checked creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeLimits {
    pub volumes: i64,
    pub gigabytes: i64,
    pub snapshots: i64,
}

/// A project's volume usage (snapshots count toward gigabytes, as in Cinder).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    pub volumes: i64,
    pub volume_gigabytes: i64,
    pub snapshots: i64,
    pub snapshot_gigabytes: i64,
}

impl VolumeUsage {
    pub fn gigabytes(&self) -> i64 {
        self.volume_gigabytes + self.snapshot_gigabytes
    }
}

/// Why a quota-checked create did not happen.
#[derive(Debug)]
pub enum QuotaRefused {
    Volumes { used: i64, limit: i64 },
    Gigabytes { used: i64, limit: i64 },
    Snapshots { used: i64, limit: i64 },
}

async fn usage<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    e: E,
    project: &str,
) -> Result<VolumeUsage> {
    let (v, vg, s, sg): (i64, Option<i64>, i64, Option<i64>) = sqlx::query_as(
        "SELECT \
         (SELECT CAST(COUNT(*) AS BIGINT) FROM volumes WHERE project_id = $1), \
         (SELECT CAST(SUM(size_gb) AS BIGINT) FROM volumes WHERE project_id = $1), \
         (SELECT CAST(COUNT(*) AS BIGINT) FROM volume_snapshots WHERE project_id = $1), \
         (SELECT CAST(SUM(size_gb) AS BIGINT) FROM volume_snapshots WHERE project_id = $1)",
    )
    .bind(project)
    .fetch_one(e)
    .await?;
    Ok(VolumeUsage {
        volumes: v,
        volume_gigabytes: vg.unwrap_or(0),
        snapshots: s,
        snapshot_gigabytes: sg.unwrap_or(0),
    })
}

/// Applies `changes` to row `id` of `table` if it is in one of `statuses` (any, when empty);
/// whether it did.
async fn update_if(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    table: &str,
    id: &str,
    statuses: &[&str],
    changes: &Changes,
) -> Result<bool> {
    let sql = conditional_update(table, changes, statuses);
    let mut q = sqlx::query(&sql);
    for (_, v) in changes {
        q = crate::compute::bind_value(q, v);
    }
    q = q.bind(id);
    for s in statuses {
        q = q.bind(*s);
    }
    Ok(q.execute(&mut **tx).await?.rows_affected() > 0)
}

/// `UPDATE table SET … WHERE id = $k [AND status IN (…)]`; column names come from code.
fn conditional_update(table: &str, changes: &Changes, statuses: &[&str]) -> String {
    let mut sql = format!("UPDATE {table} SET ");
    let mut n = 1;
    for (i, (col, _)) in changes.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("{col} = ${n}"));
        n += 1;
    }
    sql.push_str(&format!(" WHERE id = ${n}"));
    n += 1;
    if !statuses.is_empty() {
        let marks: Vec<String> = (0..statuses.len()).map(|i| format!("${}", n + i)).collect();
        sql.push_str(&format!(" AND status IN ({})", marks.join(", ")));
    }
    sql
}

impl Store {
    pub async fn volume_usage(&self, project: &str) -> Result<VolumeUsage> {
        usage(self.pool(), project).await
    }

    /// Inserts `v` if the project stays within `limits`; serialized with every other
    /// quota-checked create (see the module comment).
    pub async fn create_volume_within(
        &self,
        v: &VolumeRecord,
        limits: VolumeLimits,
    ) -> Result<std::result::Result<(), QuotaRefused>> {
        retry_transient("create volume", || async move {
            let mut tx = self.pool().begin().await?;
            sqlx::query("UPDATE volume_generation SET value = value + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let u = usage(&mut *tx, &v.project_id).await?;
            if limits.volumes >= 0 && u.volumes + 1 > limits.volumes {
                return Ok(Err(QuotaRefused::Volumes {
                    used: u.volumes,
                    limit: limits.volumes,
                }));
            }
            if limits.gigabytes >= 0 && u.gigabytes() + v.size_gb > limits.gigabytes {
                return Ok(Err(QuotaRefused::Gigabytes {
                    used: u.gigabytes(),
                    limit: limits.gigabytes,
                }));
            }
            sqlx::query(&format!(
                "INSERT INTO volumes ({VOLUME_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)"
            ))
            .bind(&v.id)
            .bind(&v.project_id)
            .bind(&v.user_id)
            .bind(v.name.as_deref())
            .bind(v.description.as_deref())
            .bind(v.size_gb)
            .bind(&v.status)
            .bind(&v.volume_type)
            .bind(v.bootable as i64)
            .bind(&v.availability_zone)
            .bind(v.source_image_id.as_deref())
            .bind(v.snapshot_id.as_deref())
            .bind(v.source_volid.as_deref())
            .bind(&v.image_metadata)
            .bind(&v.metadata)
            .bind(&v.attach_status)
            .bind(v.attachment_id.as_deref())
            .bind(v.instance_id.as_deref())
            .bind(v.attached_host.as_deref())
            .bind(v.device.as_deref())
            .bind(v.attached_at.as_deref())
            .bind(v.boot_index)
            .bind(v.delete_on_termination as i64)
            .bind(v.error.as_deref())
            .bind(&v.created_at)
            .bind(&v.updated_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await
    }

    pub async fn get_volume(&self, id: &str) -> Result<VolumeRecord> {
        sqlx::query_as(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// Volumes of a project (None: all), oldest first.
    pub async fn list_volumes(&self, project: Option<&str>) -> Result<Vec<VolumeRecord>> {
        let q = match project {
            Some(_) => format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes WHERE project_id = $1 ORDER BY created_at, id"
            ),
            None => format!("SELECT {VOLUME_COLUMNS} FROM volumes ORDER BY created_at, id"),
        };
        let mut q = sqlx::query_as(&q);
        if let Some(p) = project {
            q = q.bind(p);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// Volumes attached (or being attached or detached) to a server, in attach order.
    pub async fn instance_volumes(&self, instance: &str) -> Result<Vec<VolumeRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE instance_id = $1 \
             ORDER BY COALESCE(boot_index, 1000), attached_at, id"
        ))
        .bind(instance)
        .fetch_all(self.pool())
        .await?)
    }

    /// Volumes in a status, across projects (the volume manager's work list after a restart).
    pub async fn volumes_in_status(&self, statuses: &[&str]) -> Result<Vec<VolumeRecord>> {
        let marks: Vec<String> = (1..=statuses.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE status IN ({}) ORDER BY created_at",
            marks.join(", ")
        );
        let mut q = sqlx::query_as(&sql);
        for s in statuses {
            q = q.bind(*s);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// Applies `changes` if the volume is in one of `statuses` (any, when empty). Returns whether
    /// it did. When `wake_host` is given, that compute host's generation is bumped in the same
    /// transaction (its agent's long poll wakes up to attach or detach).
    pub async fn update_volume(
        &self,
        id: &str,
        statuses: &[&str],
        changes: &Changes,
        wake_host: Option<&str>,
    ) -> Result<bool> {
        retry_transient("update volume", || async move {
            let mut tx = self.pool().begin().await?;
            let done = update_if(&mut tx, "volumes", id, statuses, changes).await?;
            if let Some(h) = wake_host.filter(|_| done) {
                crate::compute::bump_generation(&mut *tx, h).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
        .await
    }

    /// Extends a volume within the gigabytes quota, if it is in one of `statuses`.
    pub async fn extend_volume_within(
        &self,
        id: &str,
        statuses: &[&str],
        new_size: i64,
        gigabytes_limit: i64,
        changes: &Changes,
    ) -> Result<std::result::Result<bool, QuotaRefused>> {
        retry_transient("extend volume", || async move {
            let mut tx = self.pool().begin().await?;
            sqlx::query("UPDATE volume_generation SET value = value + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let v: VolumeRecord = sqlx::query_as(&format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            let u = usage(&mut *tx, &v.project_id).await?;
            let grow = new_size - v.size_gb;
            if gigabytes_limit >= 0 && grow > 0 && u.gigabytes() + grow > gigabytes_limit {
                return Ok(Err(QuotaRefused::Gigabytes {
                    used: u.gigabytes(),
                    limit: gigabytes_limit,
                }));
            }
            let done = update_if(&mut tx, "volumes", id, statuses, changes).await?;
            tx.commit().await?;
            Ok(Ok(done))
        })
        .await
    }

    /// Deletes the record (the volume manager removed its data first).
    pub async fn delete_volume(&self, id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM volumes WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    // ---- snapshots ----

    pub async fn create_snapshot_within(
        &self,
        s: &SnapshotRecord,
        limits: VolumeLimits,
    ) -> Result<std::result::Result<(), QuotaRefused>> {
        retry_transient("create snapshot", || async move {
            let mut tx = self.pool().begin().await?;
            sqlx::query("UPDATE volume_generation SET value = value + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let u = usage(&mut *tx, &s.project_id).await?;
            if limits.snapshots >= 0 && u.snapshots + 1 > limits.snapshots {
                return Ok(Err(QuotaRefused::Snapshots {
                    used: u.snapshots,
                    limit: limits.snapshots,
                }));
            }
            if limits.gigabytes >= 0 && u.gigabytes() + s.size_gb > limits.gigabytes {
                return Ok(Err(QuotaRefused::Gigabytes {
                    used: u.gigabytes(),
                    limit: limits.gigabytes,
                }));
            }
            sqlx::query(&format!(
                "INSERT INTO volume_snapshots ({SNAPSHOT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .bind(&s.id)
            .bind(&s.project_id)
            .bind(&s.user_id)
            .bind(&s.volume_id)
            .bind(s.name.as_deref())
            .bind(s.description.as_deref())
            .bind(s.size_gb)
            .bind(&s.status)
            .bind(&s.metadata)
            .bind(&s.created_at)
            .bind(&s.updated_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await
    }

    pub async fn get_snapshot(&self, id: &str) -> Result<SnapshotRecord> {
        sqlx::query_as(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound)
    }

    pub async fn list_snapshots(&self, project: Option<&str>) -> Result<Vec<SnapshotRecord>> {
        let q = match project {
            Some(_) => format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE project_id = $1 \
                 ORDER BY created_at, id"
            ),
            None => {
                format!("SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots ORDER BY created_at, id")
            }
        };
        let mut q = sqlx::query_as(&q);
        if let Some(p) = project {
            q = q.bind(p);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    pub async fn volume_snapshot_count(&self, volume: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM volume_snapshots WHERE volume_id = $1",
        )
        .bind(volume)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    pub async fn snapshots_in_status(&self, statuses: &[&str]) -> Result<Vec<SnapshotRecord>> {
        let marks: Vec<String> = (1..=statuses.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE status IN ({}) ORDER BY created_at",
            marks.join(", ")
        );
        let mut q = sqlx::query_as(&sql);
        for s in statuses {
            q = q.bind(*s);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    pub async fn update_snapshot(
        &self,
        id: &str,
        statuses: &[&str],
        changes: &Changes,
    ) -> Result<bool> {
        retry_transient("update snapshot", || async move {
            let mut tx = self.pool().begin().await?;
            let done = update_if(&mut tx, "volume_snapshots", id, statuses, changes).await?;
            tx.commit().await?;
            Ok(done)
        })
        .await
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM volume_snapshots WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        require_row(r)
    }

    // ---- quota limits (any service: the resource names are the service's own) ----

    /// A project's overrides, `(resource, limit)`; resources without one use the default.
    pub async fn quota_limits(&self, project: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT resource, hard_limit FROM quota_limits WHERE project_id = $1 ORDER BY resource",
        )
        .bind(project)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn set_quota_limit(&self, project: &str, resource: &str, limit: i64) -> Result<()> {
        retry_transient("set quota limit", || async move {
            let mut tx = self.pool().begin().await?;
            sqlx::query("DELETE FROM quota_limits WHERE project_id = $1 AND resource = $2")
                .bind(project)
                .bind(resource)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO quota_limits (project_id, resource, hard_limit) VALUES ($1, $2, $3)",
            )
            .bind(project)
            .bind(resource)
            .bind(limit)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Removes a project's overrides whose resource starts with `prefix` (one service's).
    pub async fn clear_quota_limits(&self, project: &str, prefix: &str) -> Result<()> {
        sqlx::query("DELETE FROM quota_limits WHERE project_id = $1 AND resource LIKE $2")
            .bind(project)
            .bind(format!("{prefix}%"))
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
