//! Transient database failures and the retry of whole transactions.
//!
//! Some failures say nothing about the request, only about its timing: PostgreSQL aborts one of
//! two transactions that deadlock (SQLSTATE 40P01) or that cannot be serialized (40001), and
//! SQLite refuses a write while another connection holds the lock past the busy timeout
//! (SQLITE_BUSY, with its extended codes such as BUSY_SNAPSHOT) or a table is locked
//! (SQLITE_LOCKED). In each case the database rolled the transaction back, or cannot commit it,
//! so running the whole transaction again from its `BEGIN` is safe and usually succeeds.
//!
//! The unit of a retry is always one whole transaction that did not commit: a store method that
//! begins and commits its own transaction wraps that in `retry_transient`; a network write is one
//! `NetTx` run by `Store::net_write`. Nothing that may have committed part of its work is run again.

use crate::{Result, StoreError};
use std::future::Future;
use std::time::Duration;

/// How many times in all a transaction is tried before its last error is returned.
pub const TRANSIENT_ATTEMPTS: u32 = 5;

/// The wait before the second attempt; it doubles for each further one (with jitter).
const FIRST_BACKOFF: Duration = Duration::from_millis(8);

/// PostgreSQL's serialization_failure and deadlock_detected (class 40, transaction rollback).
fn postgres_transient(sqlstate: &str) -> bool {
    matches!(sqlstate, "40001" | "40P01")
}

/// SQLite's BUSY (5) and LOCKED (6), whatever their extended code (BUSY_RECOVERY 261,
/// BUSY_SNAPSHOT 517, BUSY_TIMEOUT 773, LOCKED_SHAREDCACHE 262, …): the primary result code is
/// the low byte of the extended one.
fn sqlite_transient(code: &str) -> bool {
    const SQLITE_BUSY: i64 = 5;
    const SQLITE_LOCKED: i64 = 6;
    code.parse::<i64>()
        .is_ok_and(|c| matches!(c & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
}

/// Whether a database error is a transient one (see the module comment), by back end.
pub(crate) fn is_transient_db(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        postgres_transient(&code)
    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        sqlite_transient(&code)
    } else {
        false
    }
}

impl StoreError {
    /// A failure of timing, not of the request: the whole transaction may be run again.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }
}

/// A random fraction in [0.5, 1.0) of the exponential backoff for `attempt` (1-based, the attempt
/// that failed), so that two transactions that failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    use std::hash::BuildHasher;
    let full = FIRST_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1).min(8));
    // Each RandomState has fresh keys: a cheap random number without a dependency.
    let r = std::collections::hash_map::RandomState::new().hash_one(attempt);
    let frac = 0.5 + (r % 1000) as f64 / 2000.0;
    full.mul_f64(frac)
}

/// Logs the failed attempt; returns how long to wait before the next one. (Synchronous, so
/// that no `&dyn Display` lives across the wait: callers' futures stay `Send`.)
pub(crate) fn failed_attempt(what: &str, attempt: u32, error: &dyn std::fmt::Display) -> Duration {
    let wait = backoff(attempt);
    tracing::warn!(
        what,
        attempt,
        of = TRANSIENT_ATTEMPTS,
        wait_ms = wait.as_millis() as u64,
        %error,
        "transient database failure, the transaction is run again"
    );
    wait
}

/// Runs `f` again, after a short jittered backoff, while it fails transiently, up to
/// `TRANSIENT_ATTEMPTS` times in all; the last error is returned as is.
///
/// `f` must be one whole transaction from its `BEGIN` to its `COMMIT` (a transient error means
/// that it did not commit): never a sequence of transactions, or work after a commit.
pub async fn retry_transient<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < TRANSIENT_ATTEMPTS => {
                let wait = failed_attempt(what, attempt, &e);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    #[test]
    fn codes() {
        for c in ["40001", "40P01"] {
            assert!(postgres_transient(c), "{c}");
        }
        // unique_violation, lock_not_available, query_canceled, in_failed_sql_transaction
        for c in ["23505", "55P03", "57014", "25P02", "5", "6"] {
            assert!(!postgres_transient(c), "{c}");
        }
        // BUSY, BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT, LOCKED, LOCKED_SHAREDCACHE
        for c in ["5", "261", "517", "773", "6", "262"] {
            assert!(sqlite_transient(c), "{c}");
        }
        // ERROR, READONLY, IOERR, CORRUPT, FULL, CONSTRAINT_UNIQUE, not a number
        for c in ["1", "8", "10", "11", "13", "2067", "40001", ""] {
            assert!(!sqlite_transient(c), "{c}");
        }
    }

    #[test]
    fn backoff_grows_and_stays_short() {
        for attempt in 1..TRANSIENT_ATTEMPTS {
            let full = FIRST_BACKOFF * 2u32.pow(attempt - 1);
            let b = backoff(attempt);
            assert!(b >= full / 2 && b < full, "attempt {attempt}: {b:?}");
        }
        assert!(backoff(u32::MAX) <= FIRST_BACKOFF * 256);
    }

    async fn sqlite_conn(path: &std::path::Path) -> sqlx::SqliteConnection {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut c = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        // Fail at once instead of waiting for the lock.
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut c)
            .await
            .expect("pragma");
        c
    }

    fn classified(e: sqlx::Error) -> StoreError {
        let e = StoreError::from(e);
        assert!(e.is_transient(), "{e:?}");
        e
    }

    /// Real SQLite failures: BUSY while another connection writes, BUSY_SNAPSHOT when a read
    /// transaction's snapshot went stale before it writes.
    #[tokio::test]
    async fn sqlite_busy_is_transient() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("busy.db");
        let mut a = sqlite_conn(&path).await;
        let mut b = sqlite_conn(&path).await;
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&mut a)
            .await
            .expect("wal");
        sqlx::query("CREATE TABLE t (v BIGINT)")
            .execute(&mut a)
            .await
            .expect("create");

        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut a)
            .await
            .expect("a writes");
        let e = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut b)
            .await
            .expect_err("b is refused");
        let e = classified(e);
        assert!(e.to_string().contains("code 5"), "{e}");
        sqlx::query("COMMIT").execute(&mut a).await.expect("commit");

        // b reads (its snapshot), a writes and commits, b's write cannot use its snapshot.
        sqlx::query("BEGIN").execute(&mut b).await.expect("begin");
        sqlx::query("SELECT COUNT(*) FROM t")
            .execute(&mut b)
            .await
            .expect("read");
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut a)
            .await
            .expect("a inserts");
        let e = sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&mut b)
            .await
            .expect_err("stale snapshot");
        let e = classified(e);
        assert!(e.to_string().contains("code 517"), "{e}");
        sqlx::query("ROLLBACK")
            .execute(&mut b)
            .await
            .expect("rollback");

        // Other failures are not transient.
        let e = sqlx::query("INSERT INTO nope VALUES (1)")
            .execute(&mut a)
            .await
            .expect_err("no table");
        assert!(!StoreError::from(e).is_transient());
    }

    /// `retry_transient` runs a transaction that hit BUSY_SNAPSHOT again, whole, and it commits
    /// once; a permanent error is returned at once, and a transient one after the last attempt.
    #[tokio::test]
    async fn retries_whole_transactions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("retry.db");
        let url = format!("sqlite://{}", path.display());
        let store = crate::Store::open(&url).await.expect("open");
        sqlx::query("CREATE TABLE t (v BIGINT)")
            .execute(store.pool())
            .await
            .expect("create");
        let attempts = &std::sync::atomic::AtomicU32::new(0);
        let store = &store;
        let n = retry_transient("test insert", || async move {
            let first = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            // A read first: the transaction's snapshot, which another connection's write
            // makes stale before this one writes.
            let mut tx = store.pool().begin().await?;
            let (n,): (i64,) = sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT) FROM t")
                .fetch_one(&mut *tx)
                .await?;
            if first {
                sqlx::query("INSERT INTO t VALUES (10)")
                    .execute(store.pool())
                    .await?;
            }
            sqlx::query("INSERT INTO t VALUES ($1)")
                .bind(n)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
        .expect("retried");
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(n, 1, "the second attempt saw the other connection's row");
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT v FROM t ORDER BY v")
            .fetch_all(store.pool())
            .await
            .expect("rows");
        assert_eq!(rows, vec![(1,), (10,)], "the first attempt left nothing");

        let calls = &std::sync::atomic::AtomicU32::new(0);
        let r: Result<()> = retry_transient("test permanent", || async move {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(StoreError::Conflict("taken".into()))
        })
        .await;
        assert!(matches!(r, Err(StoreError::Conflict(_))));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

        let calls = &std::sync::atomic::AtomicU32::new(0);
        let r: Result<()> = retry_transient("test busy", || async move {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(StoreError::Transient("busy".into()))
        })
        .await;
        assert!(matches!(r, Err(StoreError::Transient(m)) if m == "busy"));
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            TRANSIENT_ATTEMPTS
        );
    }

    /// Real PostgreSQL errors of each SQLSTATE, raised by the server (a genuine deadlock is
    /// provoked in tests/backends.rs), when `ONESTACK_TEST_POSTGRES_URL` names a server.
    #[tokio::test]
    async fn postgres_sqlstates() {
        let Some(url) = std::env::var("ONESTACK_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("ONESTACK_TEST_POSTGRES_URL not set: PostgreSQL errors not classified");
            return;
        };
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&url).await.expect("connect");
        for (state, transient) in [
            ("40001", true),
            ("40P01", true),
            ("23505", false),
            ("55P03", false),
        ] {
            let e = sqlx::query(&format!(
                "DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{state}'; END $$"
            ))
            .execute(&mut c)
            .await
            .expect_err("raised");
            let code = e
                .as_database_error()
                .and_then(|d| d.code())
                .map(|c| c.to_string());
            assert_eq!(code.as_deref(), Some(state));
            assert_eq!(StoreError::from(e).is_transient(), transient, "{state}");
        }
    }
}
