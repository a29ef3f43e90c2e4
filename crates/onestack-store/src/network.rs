//! Network records (Neutron v2.0). Every resource kind shares one table: the columns that queries
//! select on (kind, project, network, device, name) plus the resource itself as a JSON body that the
//! network service owns. Fixed and floating addresses live in `ip_allocations`, whose primary key
//! (network, address) makes handing out one address twice impossible, even across controllers.
//!
//! All writes go through a `NetTx`, which starts by bumping the network generation: that takes
//! SQLite's write lock (and PostgreSQL's row lock) at once, so network writes are serialized and a
//! read-check-write inside one transaction cannot race another.
//!
//! A write is best run by `Store::net_write`, which runs it again, whole, when its transaction
//! failed transiently (a deadlock, a busy database): a `NetTx` that saw such a failure never
//! commits, whatever its caller made of the error.

use crate::retry::{failed_attempt, TRANSIENT_ATTEMPTS};
use crate::{require_row, Result, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub struct NetResource {
    pub id: String,
    /// `network`, `subnet`, `port`, `router`, `floatingip`, `security_group`,
    /// `security_group_rule`, `quota`.
    pub kind: String,
    pub project_id: String,
    pub network_id: Option<String>,
    pub device_id: Option<String>,
    pub name: String,
    /// Anything that must be unique across the cloud (e.g. a project's `default` group).
    pub unique_key: Option<String>,
    /// A small per-kind number (a network's conntrack zone).
    pub seq: Option<i64>,
    /// The resource as JSON.
    pub body: String,
    pub revision: i64,
    pub created_at: String,
    pub updated_at: String,
}

row_struct!(NetResource {
    id: "id" => val, kind: "kind" => val, project_id: "project_id" => val,
    network_id: "network_id" => val, device_id: "device_id" => val, name: "name" => val,
    unique_key: "unique_key" => val, seq: "seq" => val, body: "body" => val,
    revision: "revision" => val, created_at: "created_at" => val, updated_at: "updated_at" => val,
});

const COLUMNS: &str = "id, kind, project_id, network_id, device_id, name, unique_key, seq, body, \
    revision, created_at, updated_at";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpAllocation {
    pub network_id: String,
    pub ip_address: String,
    pub subnet_id: String,
    pub port_id: String,
}

impl FromRow<'_, AnyRow> for IpAllocation {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(IpAllocation {
            network_id: row.try_get("network_id")?,
            ip_address: row.try_get("ip_address")?,
            subnet_id: row.try_get("subnet_id")?,
            port_id: row.try_get("port_id")?,
        })
    }
}

/// Which resources to list; None means any.
#[derive(Clone, Debug, Default)]
pub struct NetFilter<'a> {
    pub kind: &'a str,
    pub project_id: Option<&'a str>,
    pub network_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
}

impl<'a> NetFilter<'a> {
    /// Every resource of a kind; narrow with the methods below.
    pub fn of(kind: &'a str) -> Self {
        NetFilter {
            kind,
            ..Default::default()
        }
    }
    pub fn project(mut self, id: &'a str) -> Self {
        self.project_id = Some(id);
        self
    }
    pub fn network(mut self, id: &'a str) -> Self {
        self.network_id = Some(id);
        self
    }
    pub fn device(mut self, id: &'a str) -> Self {
        self.device_id = Some(id);
        self
    }
}

impl Store {
    /// Begins a network write; see the module comment.
    pub async fn net_tx(&self) -> Result<NetTx> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE net_generation SET value = value + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        Ok(NetTx {
            tx,
            transient: Arc::default(),
        })
    }

    /// Runs one network write: `f` gets a new `NetTx` and commits it. When that transaction
    /// failed transiently (so it did not commit) the whole write runs again on a new one, after
    /// a short backoff, up to `TRANSIENT_ATTEMPTS` times in all; otherwise `f`'s result is
    /// returned as is. `f` must do nothing that outlives a rolled-back attempt (no other
    /// transaction, no side effect outside the database).
    pub async fn net_write<T, E, F, Fut>(&self, what: &str, mut f: F) -> Result<T, E>
    where
        E: From<StoreError> + std::fmt::Display,
        F: FnMut(NetTx) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            let tx = match self.net_tx().await {
                Ok(tx) => tx,
                Err(e) if e.is_transient() && attempt < TRANSIENT_ATTEMPTS => {
                    let wait = failed_attempt(what, attempt, &e);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let transient = tx.transient.clone();
            match f(tx).await {
                Err(e) if transient.load(Ordering::SeqCst) && attempt < TRANSIENT_ATTEMPTS => {
                    let wait = failed_attempt(what, attempt, &e);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Bumped by every network write; hosts long-poll on it.
    pub async fn net_generation(&self) -> Result<i64> {
        let (v,): (i64,) = sqlx::query_as("SELECT value FROM net_generation WHERE id = 1")
            .fetch_one(self.pool())
            .await?;
        Ok(v)
    }

    pub async fn net_get(&self, id: &str) -> Result<NetResource> {
        get(self.pool(), id).await
    }

    pub async fn net_list(&self, f: &NetFilter<'_>) -> Result<Vec<NetResource>> {
        list(self.pool(), f).await
    }

    pub async fn net_allocations(&self, network_id: Option<&str>) -> Result<Vec<IpAllocation>> {
        allocations(self.pool(), network_id).await
    }
}

async fn get<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    e: E,
    id: &str,
) -> Result<NetResource> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM net_resources WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(e)
    .await?
    .ok_or(StoreError::NotFound)
}

async fn list<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    e: E,
    f: &NetFilter<'_>,
) -> Result<Vec<NetResource>> {
    let mut sql = format!("SELECT {COLUMNS} FROM net_resources WHERE kind = $1");
    let mut binds: Vec<&str> = vec![f.kind];
    for (col, v) in [
        ("project_id", f.project_id),
        ("network_id", f.network_id),
        ("device_id", f.device_id),
    ] {
        if let Some(v) = v {
            binds.push(v);
            sql.push_str(&format!(" AND {col} = ${}", binds.len()));
        }
    }
    sql.push_str(" ORDER BY created_at, id");
    let mut q = sqlx::query_as(&sql);
    for b in binds {
        q = q.bind(b);
    }
    Ok(q.fetch_all(e).await?)
}

async fn allocations<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    e: E,
    network_id: Option<&str>,
) -> Result<Vec<IpAllocation>> {
    let q = match network_id {
        Some(n) => sqlx::query_as(
            "SELECT network_id, ip_address, subnet_id, port_id FROM ip_allocations \
             WHERE network_id = $1",
        )
        .bind(n.to_string()),
        None => {
            sqlx::query_as("SELECT network_id, ip_address, subnet_id, port_id FROM ip_allocations")
        }
    };
    Ok(q.fetch_all(e).await?)
}

/// One serialized network write. Dropping it without `commit` rolls everything back.
pub struct NetTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// Set when a statement failed transiently (shared with `net_write`, which retries).
    transient: Arc<AtomicBool>,
}

impl NetTx {
    /// Remembers a transient failure (the transaction must not commit) and passes `r` on.
    fn seen<T>(transient: &AtomicBool, r: Result<T>) -> Result<T> {
        if r.as_ref().is_err_and(StoreError::is_transient) {
            transient.store(true, Ordering::SeqCst);
        }
        r
    }

    /// Commits, unless a statement failed transiently: then it rolls back and fails (on
    /// PostgreSQL such a transaction is aborted anyway; on SQLite the rest would commit).
    pub async fn commit(self) -> Result<()> {
        if self.transient.load(Ordering::SeqCst) {
            return Err(StoreError::Transient(
                "a statement of this network write failed transiently; rolled back".into(),
            ));
        }
        let r = self.tx.commit().await.map_err(StoreError::from);
        Self::seen(&self.transient, r)
    }

    pub async fn get(&mut self, id: &str) -> Result<NetResource> {
        Self::seen(&self.transient, get(&mut *self.tx, id).await)
    }

    pub async fn list(&mut self, f: &NetFilter<'_>) -> Result<Vec<NetResource>> {
        Self::seen(&self.transient, list(&mut *self.tx, f).await)
    }

    pub async fn allocations(&mut self, network_id: Option<&str>) -> Result<Vec<IpAllocation>> {
        Self::seen(
            &self.transient,
            allocations(&mut *self.tx, network_id).await,
        )
    }

    /// The next free `seq` of a kind (1-based).
    pub async fn next_seq(&mut self, kind: &str) -> Result<i64> {
        let r = sqlx::query_as("SELECT MAX(seq) FROM net_resources WHERE kind = $1")
            .bind(kind)
            .fetch_one(&mut *self.tx)
            .await
            .map(|(max,): (Option<i64>,)| max.unwrap_or(0) + 1)
            .map_err(StoreError::from);
        Self::seen(&self.transient, r)
    }

    pub async fn insert(&mut self, r: &NetResource) -> Result<()> {
        let res = insert(&mut self.tx, r).await;
        Self::seen(&self.transient, res)
    }

    /// Replaces the selectable columns and the body of an existing record.
    pub async fn update(&mut self, r: &NetResource) -> Result<()> {
        let res = update(&mut self.tx, r).await;
        Self::seen(&self.transient, res)
    }

    /// Deletes a record and any addresses held by it.
    pub async fn delete(&mut self, id: &str) -> Result<()> {
        let res = delete(&mut self.tx, id).await;
        Self::seen(&self.transient, res)
    }

    /// Claims an address; `Conflict` when someone holds it already.
    pub async fn allocate(&mut self, a: &IpAllocation) -> Result<()> {
        let res = allocate(&mut self.tx, a).await;
        Self::seen(&self.transient, res)
    }

    pub async fn release_port(&mut self, port_id: &str) -> Result<()> {
        let res = release_port(&mut self.tx, port_id).await;
        Self::seen(&self.transient, res)
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

async fn insert(tx: &mut Tx, r: &NetResource) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO net_resources ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)"
    ))
    .bind(&r.id)
    .bind(&r.kind)
    .bind(&r.project_id)
    .bind(&r.network_id)
    .bind(&r.device_id)
    .bind(&r.name)
    .bind(&r.unique_key)
    .bind(r.seq)
    .bind(&r.body)
    .bind(r.revision)
    .bind(&r.created_at)
    .bind(&r.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn update(tx: &mut Tx, r: &NetResource) -> Result<()> {
    let res = sqlx::query(
        "UPDATE net_resources SET project_id = $2, network_id = $3, device_id = $4, \
         name = $5, body = $6, revision = $7, updated_at = $8 WHERE id = $1",
    )
    .bind(&r.id)
    .bind(&r.project_id)
    .bind(&r.network_id)
    .bind(&r.device_id)
    .bind(&r.name)
    .bind(&r.body)
    .bind(r.revision)
    .bind(&r.updated_at)
    .execute(&mut **tx)
    .await?;
    require_row(res)
}

async fn delete(tx: &mut Tx, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM ip_allocations WHERE port_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let res = sqlx::query("DELETE FROM net_resources WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    require_row(res)
}

async fn allocate(tx: &mut Tx, a: &IpAllocation) -> Result<()> {
    sqlx::query(
        "INSERT INTO ip_allocations (network_id, ip_address, subnet_id, port_id) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&a.network_id)
    .bind(&a.ip_address)
    .bind(&a.subnet_id)
    .bind(&a.port_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn release_port(tx: &mut Tx, port_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM ip_allocations WHERE port_id = $1")
        .bind(port_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn port(id: &str) -> NetResource {
        NetResource {
            id: id.into(),
            kind: "port".into(),
            project_id: "p1".into(),
            network_id: None,
            device_id: None,
            name: id.into(),
            unique_key: None,
            seq: None,
            body: "{}".into(),
            revision: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    /// A write that made something else of a transient failure (here: ignored it, as a caller
    /// mapping any error of a lookup to "not found" would) cannot commit the rest: the commit
    /// refuses, and `net_write` runs the write again, whole.
    #[tokio::test]
    async fn a_transient_failure_is_never_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&format!("sqlite://{}/n.db", dir.path().display()))
            .await
            .expect("open");
        let g0 = s.net_generation().await.expect("generation");
        let attempts = &AtomicU32::new(0);
        let r: Result<()> = s
            .net_write("test write", |mut tx| async move {
                let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
                tx.insert(&port(if first { "half" } else { "whole" }))
                    .await?;
                if first {
                    let busy: Result<()> = Err(StoreError::Transient("busy".into()));
                    let _ = NetTx::seen(&tx.transient, busy);
                }
                tx.commit().await
            })
            .await;
        r.expect("second attempt");
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert!(matches!(s.net_get("half").await, Err(StoreError::NotFound)));
        s.net_get("whole").await.expect("the second attempt's port");
        assert_eq!(s.net_generation().await.expect("generation"), g0 + 1);

        // Outside `net_write` the refusal is the caller's error; nothing is written.
        let mut tx = s.net_tx().await.expect("tx");
        tx.insert(&port("lost")).await.expect("insert");
        tx.transient.store(true, Ordering::SeqCst);
        assert!(tx.commit().await.is_err_and(|e| e.is_transient()));
        assert!(matches!(s.net_get("lost").await, Err(StoreError::NotFound)));
        // A failure that is not transient is returned as is, once.
        let attempts = &AtomicU32::new(0);
        let r: Result<()> = s
            .net_write("test conflict", |mut tx| async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                tx.insert(&port("whole")).await?;
                tx.commit().await
            })
            .await;
        assert!(matches!(r, Err(StoreError::Conflict(_))));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }
}
