//! The usage record: one row each time an instance's metered state changes (it is launched,
//! resized, moved, stopped or started, deleted). Written in the same transaction as the change
//! itself, so the record is exactly as durable as the instance and metering never samples.

use crate::{retry_transient, Result, Store};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

/// One transition. The figures hold from `at_us` until the instance's next event.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageEvent {
    pub instance_id: String,
    /// 1, 2, … per instance: the order of its events.
    pub seq: i64,
    pub project_id: String,
    pub user_id: String,
    /// Microseconds since the epoch.
    pub at_us: i64,
    /// `create`, `resize`, `move`, `stop`, `start`, `state` or `delete`.
    pub event: String,
    pub vm_state: String,
    pub host: Option<String>,
    pub flavor: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_gb: i64,
}

row_struct!(UsageEvent {
    instance_id: "instance_id" => val,
    seq: "seq" => val,
    project_id: "project_id" => val,
    user_id: "user_id" => val,
    at_us: "at_us" => val,
    event: "event" => val,
    vm_state: "vm_state" => val,
    host: "host" => val,
    flavor: "flavor" => val,
    vcpus: "vcpus" => val,
    memory_mb: "memory_mb" => val,
    disk_gb: "disk_gb" => val,
});

const COLUMNS: &str = "instance_id, seq, project_id, user_id, at_us, event, vm_state, host, \
                       flavor, vcpus, memory_mb, disk_gb";

/// Instance columns whose change may change what is metered.
pub(crate) const METERED_COLUMNS: &[&str] = &[
    "vm_state",
    "vcpus",
    "memory_mb",
    "root_gb",
    "ephemeral_gb",
    "host",
    "launched_at",
    "deleted",
    "flavor_name",
];

/// States in which the guest runs (the others still hold the host's resources).
pub fn is_running(vm_state: &str) -> bool {
    matches!(vm_state, "active" | "rescued" | "resized")
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Parses the store's timestamps (`2026-12-01T10:00:00Z`, optionally with a fraction).
pub fn parse_timestamp_us(t: &str) -> Option<i64> {
    let t = t.trim().trim_end_matches('Z');
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(t, f).ok())
        .map(|d| d.and_utc().timestamp_micros())
}

#[derive(Clone)]
struct Current {
    project_id: String,
    user_id: String,
    launched_at: Option<String>,
    vm_state: String,
    host: Option<String>,
    flavor: String,
    vcpus: i64,
    memory_mb: i64,
    disk_gb: i64,
    deleted: bool,
}

async fn current(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> Result<Option<Current>> {
    let row = sqlx::query(
        "SELECT project_id, user_id, launched_at, vm_state, host, flavor_name, vcpus, memory_mb, \
         root_gb + ephemeral_gb AS disk_gb, deleted FROM instances WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Current {
        project_id: row.try_get("project_id")?,
        user_id: row.try_get("user_id")?,
        launched_at: row.try_get("launched_at")?,
        vm_state: row.try_get("vm_state")?,
        host: row.try_get("host")?,
        flavor: row.try_get("flavor_name")?,
        vcpus: row.try_get("vcpus")?,
        memory_mb: row.try_get("memory_mb")?,
        disk_gb: row.try_get("disk_gb")?,
        deleted: row.try_get::<i64, _>("deleted")? != 0,
    }))
}

/// What changed since `last`, if anything that is metered.
fn next_event(last: Option<&UsageEvent>, cur: &Current) -> Option<&'static str> {
    Some(match last {
        // Never launched (still building, or failed before it ran): nothing was used.
        None if cur.launched_at.is_none() || cur.deleted => return None,
        None => "create",
        Some(l) if l.event == "delete" => return None,
        Some(_) if cur.deleted => "delete",
        Some(l) if (l.vcpus, l.memory_mb, l.disk_gb) != (cur.vcpus, cur.memory_mb, cur.disk_gb) => {
            "resize"
        }
        Some(l) if l.host != cur.host => "move",
        Some(l) if is_running(&l.vm_state) != is_running(&cur.vm_state) => {
            if is_running(&cur.vm_state) {
                "start"
            } else {
                "stop"
            }
        }
        Some(l) if l.vm_state != cur.vm_state => "state",
        Some(_) => return None,
    })
}

async fn last_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
) -> Result<Option<UsageEvent>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM usage_events WHERE instance_id = $1 ORDER BY seq DESC LIMIT 1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Appends an event for `id` when its metered state differs from its last event. Called inside
/// the transaction that changed the instance.
pub(crate) async fn record_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
) -> Result<()> {
    let Some(cur) = current(tx, id).await? else {
        return Ok(());
    };
    let last = last_event(tx, id).await?;
    if let Some(event) = next_event(last.as_ref(), &cur) {
        append(tx, id, last.as_ref(), event, &cur, now_us()).await?;
    }
    Ok(())
}

async fn append(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    last: Option<&UsageEvent>,
    event: &str,
    cur: &Current,
    at_us: i64,
) -> Result<UsageEvent> {
    let e = UsageEvent {
        instance_id: id.to_string(),
        seq: last.map_or(1, |l| l.seq + 1),
        project_id: cur.project_id.clone(),
        user_id: cur.user_id.clone(),
        // Times never run backwards within one instance's record, whatever the clocks of
        // several controllers say.
        at_us: at_us.max(last.map_or(i64::MIN, |l| l.at_us)),
        event: event.into(),
        vm_state: if event == "delete" {
            "deleted".into()
        } else {
            cur.vm_state.clone()
        },
        host: cur.host.clone(),
        flavor: cur.flavor.clone(),
        vcpus: cur.vcpus,
        memory_mb: cur.memory_mb,
        disk_gb: cur.disk_gb,
    };
    insert(tx, &e).await?;
    Ok(e)
}

async fn insert(tx: &mut sqlx::Transaction<'_, sqlx::Any>, e: &UsageEvent) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO usage_events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12)"
    ))
    .bind(&e.instance_id)
    .bind(e.seq)
    .bind(&e.project_id)
    .bind(&e.user_id)
    .bind(e.at_us)
    .bind(&e.event)
    .bind(&e.vm_state)
    .bind(e.host.as_deref())
    .bind(&e.flavor)
    .bind(e.vcpus)
    .bind(e.memory_mb)
    .bind(e.disk_gb)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// The events that matter for `[start_us, end_us)`: those of every instance (of `project`,
    /// or all) that was not already deleted at `start_us`, up to `end_us`; ordered by instance
    /// and sequence.
    pub async fn usage_events(
        &self,
        project: Option<&str>,
        start_us: i64,
        end_us: i64,
    ) -> Result<Vec<UsageEvent>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM usage_events WHERE at_us < $1 AND ($2 = '' OR project_id = $2) \
             AND instance_id NOT IN (SELECT instance_id FROM usage_events \
             WHERE event = 'delete' AND at_us <= $3) ORDER BY instance_id, seq"
        );
        Ok(sqlx::query_as(&sql)
            .bind(end_us)
            .bind(project.unwrap_or(""))
            .bind(start_us)
            .fetch_all(self.pool())
            .await?)
    }

    /// Every event of one instance, oldest first.
    pub async fn instance_usage_events(&self, id: &str) -> Result<Vec<UsageEvent>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM usage_events WHERE instance_id = $1 ORDER BY seq"
        ))
        .bind(id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Gives instances launched before the record existed their `create` (and `delete`) events,
    /// from their launch and termination times. Runs at start-up; a no-op once done.
    pub(crate) async fn backfill_usage_events(&self) -> Result<()> {
        let ids: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT id, launched_at, terminated_at FROM instances WHERE launched_at IS NOT NULL \
             AND id NOT IN (SELECT instance_id FROM usage_events)",
        )
        .fetch_all(self.pool())
        .await?;
        for (id, launched, terminated) in ids {
            let (id, launched, terminated) = (&id, &launched, &terminated);
            retry_transient("backfill usage events", || async move {
                let mut tx = self.pool().begin().await?;
                let Some(cur) = current(&mut tx, id).await? else {
                    return Ok(());
                };
                if last_event(&mut tx, id).await?.is_some() {
                    return Ok(());
                }
                let launched = parse_timestamp_us(launched).unwrap_or_else(now_us);
                // A deleted instance ran until it was deleted (its last state is not kept).
                let mut live = cur.clone();
                if cur.deleted {
                    live.vm_state = "active".into();
                }
                let first = append(&mut tx, id, None, "create", &live, launched).await?;
                if cur.deleted {
                    let at = terminated.as_deref().and_then(parse_timestamp_us);
                    append(
                        &mut tx,
                        id,
                        Some(&first),
                        "delete",
                        &cur,
                        at.unwrap_or(launched),
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

impl UsageEvent {
    pub fn running(&self) -> bool {
        is_running(&self.vm_state)
    }
}
