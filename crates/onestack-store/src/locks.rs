//! Locks shared by every controller on one database. On PostgreSQL they are session advisory
//! locks held on a connection of their own: a controller that dies loses its connection, and
//! with it its locks, so another takes over within a connection timeout. On SQLite there is one
//! controller (the database is a local file), so they are only the process's own.

use crate::{Backend, Result, Store};
use sqlx::pool::PoolConnection;
use sqlx::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Named locks; the number is what PostgreSQL locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockName {
    /// Placing servers on hosts (boot, resize, migrate): capacity is never booked twice.
    Placement,
    /// The singleton work of the control plane (its leader).
    Leader,
    /// Writing the token keys (first start, rotation).
    TokenKeys,
}

impl LockName {
    fn key(self) -> i64 {
        match self {
            LockName::Placement => 0x0e57_ac00_0002,
            LockName::Leader => 0x0e57_ac00_0003,
            LockName::TokenKeys => 0x0e57_ac00_0004,
        }
    }
}

/// The process's side of the locks (SQLite's only side; on PostgreSQL it keeps one task of a
/// process from queueing on the database behind another of the same process).
#[derive(Debug, Default)]
pub(crate) struct LocalLocks(StdMutex<HashMap<LockName, Arc<Mutex<()>>>>);

impl LocalLocks {
    fn of(&self, name: LockName) -> Arc<Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name).or_default().clone()
    }
}

/// A held lock, released when dropped: on PostgreSQL by a task that unlocks and returns the
/// connection to the pool (or, outside a runtime, by closing the connection, which ends the
/// session and so frees the lock on the server).
pub struct StoreLock {
    name: LockName,
    conn: Option<PoolConnection<Any>>,
    local: Option<OwnedMutexGuard<()>>,
}

async fn unlock(key: i64, mut c: PoolConnection<Any>) {
    if sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *c)
        .await
        .is_err()
    {
        // Unknown state: never back into the pool holding a lock.
        drop(c.detach());
    }
}

impl StoreLock {
    /// Whether the lock is still ours (PostgreSQL: its session answers). A leader checks this
    /// before each round of singleton work.
    pub async fn alive(&mut self) -> bool {
        match self.conn.as_mut() {
            Some(c) => sqlx::query("SELECT 1").execute(&mut **c).await.is_ok(),
            None => true,
        }
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let local = self.local.take();
        let Some(c) = self.conn.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let key = self.name.key();
                // The process's waiters go on only once the server has let go.
                rt.spawn(async move {
                    unlock(key, c).await;
                    drop(local);
                });
            }
            Err(_) => drop(c.detach()),
        }
    }
}

impl Store {
    /// Waits for `name`, across every controller of this database.
    pub async fn lock(&self, name: LockName) -> Result<StoreLock> {
        let local = self.locks.of(name).lock_owned().await;
        let conn = match self.backend() {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let mut c = self.pool().acquire().await?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(name.key())
                    .execute(&mut *c)
                    .await?;
                Some(c)
            }
        };
        Ok(StoreLock {
            name,
            conn,
            local: Some(local),
        })
    }

    /// Takes `name` if nobody holds it, else None at once.
    pub async fn try_lock(&self, name: LockName) -> Result<Option<StoreLock>> {
        let Ok(local) = self.locks.of(name).try_lock_owned() else {
            return Ok(None);
        };
        let conn = match self.backend() {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let mut c = self.pool().acquire().await?;
                let (got,): (i64,) = sqlx::query_as(
                    "SELECT CAST(CASE WHEN pg_try_advisory_lock($1) THEN 1 ELSE 0 END AS BIGINT)",
                )
                .bind(name.key())
                .fetch_one(&mut *c)
                .await?;
                if got == 0 {
                    return Ok(None);
                }
                Some(c)
            }
        };
        Ok(Some(StoreLock {
            name,
            conn,
            local: Some(local),
        }))
    }
}
