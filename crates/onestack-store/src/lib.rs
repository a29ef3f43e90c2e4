//! The OneStack state store: one schema, one migration history and one set of queries that serve
//! both SQLite (the embedded default) and PostgreSQL (several controllers).
//!
//! Queries go through sqlx's `Any` driver with `$N` placeholders, which both back ends accept, so
//! there is a single code path. Column types are limited to what both share: TEXT and BIGINT (flags are 0/1).

/// SQLite booleans are integers, and sqlx's `Any` driver cannot decode them as `bool`; flags are
/// therefore BIGINT 0/1 on both back ends, converted here.
macro_rules! row_struct {
    ($ty:ident { $($field:ident : $col:literal => $kind:ident),* $(,)? }) => {
        impl<'r> FromRow<'r, AnyRow> for $ty {
            fn from_row(row: &'r AnyRow) -> std::result::Result<Self, sqlx::Error> {
                Ok($ty { $($field: row_struct!(@get row, $col, $kind)),* })
            }
        }
    };
    (@get $row:ident, $col:literal, flag) => { $row.try_get::<i64, _>($col)? != 0 };
    (@get $row:ident, $col:literal, val) => { $row.try_get($col)? };
    (@get $row:ident, $col:literal, default) => { Default::default() };
}

mod audit;
mod compute;
mod controllers;
mod identity;
mod image;
mod keys;
mod lockout;
mod locks;
mod migrations;
mod network;
mod retry;
mod stats;
mod usage;
mod volume;

pub use audit::*;
pub use compute::*;
pub use controllers::*;
pub use identity::*;
pub use image::*;
pub use lockout::FailureCount;
pub use locks::{LockName, StoreLock};
pub use network::*;
pub use retry::{retry_transient, TRANSIENT_ATTEMPTS};
pub use usage::*;
pub use volume::*;

use sqlx::any::{AnyPoolOptions, AnyQueryResult};
use sqlx::AnyPool;
use std::path::Path;
use std::time::Duration;

/// Errors of the store layer. Callers map them to API errors; `Db` detail never reaches a user.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// A deadlock, serialization failure or busy database: the transaction did not commit and
    /// may be run again whole (`retry_transient`); see `is_transient`.
    #[error("transient database failure: {0}")]
    Transient(String),
    #[error("database error: {0}")]
    Db(#[source] sqlx::Error),
    #[error("unsupported database url: {0}")]
    BadUrl(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_string())
            }
            sqlx::Error::Database(db) if retry::is_transient_db(db.as_ref()) => {
                let code = db.code().unwrap_or_default();
                StoreError::Transient(format!("{} (code {code})", db.message()))
            }
            _ => StoreError::Db(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Creates the empty database `name` on the PostgreSQL server `admin_url` connects to (a database
/// that allows CREATE DATABASE) and returns its URL. For tests and tooling; `name` is letters,
/// digits and `_` only, as it cannot be a bound parameter.
pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(StoreError::BadUrl(format!("database name {name:?}")));
    }
    sqlx::any::install_default_drivers();
    let admin = AnyPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    // The same server and credentials, the new database (any query string is kept).
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin_url, String::new()),
    };
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    Ok(format!("{server}/{name}{query}"))
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    locks: std::sync::Arc<locks::LocalLocks>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Creates the SQLite file (empty: a valid empty database) readable by its owner only, or makes
/// an existing one so, with its `-wal` and `-shm` files (SQLite gives those the database file's
/// mode when it makes them, but older versions left them readable by everyone).
fn restrict_sqlite_files(db: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if db.as_os_str().is_empty() || db.starts_with(":memory:") {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        // A directory that does not exist yet and the like: SQLite reports it better.
        Err(_) => return Ok(()),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies pending migrations.
    /// `sqlite:///path/to/file.db` or `postgresql://user:pass@host/db`.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            // The store holds password hashes and the token keys: root's alone, it and the
            // WAL and shared-memory files SQLite makes with the same mode.
            restrict_sqlite_files(Path::new(path.split('?').next().unwrap_or(path)))?;
            // Create the file when missing; WAL is set below and persists in the file.
            let sep = if path.contains('?') { '&' } else { '?' };
            (Backend::Sqlite, format!("sqlite://{path}{sep}mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        if backend == Backend::Sqlite {
            opts = opts.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let store = Store {
            pool,
            backend,
            locks: Default::default(),
        };
        migrations::apply(&store).await?;
        store.backfill_usage_events().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Drops every table of this store (`onestack reset` on PostgreSQL; SQLite simply loses its
    /// file). The next `open` migrates an empty schema again.
    pub async fn drop_all(&self) -> Result<()> {
        let tables: Vec<(String,)> = match self.backend {
            Backend::Postgres => {
                sqlx::query_as(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
                )
                .fetch_all(&self.pool)
                .await?
            }
            Backend::Sqlite => sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .fetch_all(&self.pool)
            .await?,
        };
        // One connection: SQLite ignores `foreign_keys` inside a transaction, so the pragma is
        // set on the connection first (PostgreSQL drops with CASCADE in one transaction).
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA foreign_keys = OFF")
                .execute(&mut *conn)
                .await?;
        }
        let cascade = if self.backend == Backend::Postgres {
            " CASCADE"
        } else {
            ""
        };
        sqlx::query("BEGIN").execute(&mut *conn).await?;
        for (t,) in &tables {
            // Names come from the catalog, quoted as identifiers.
            let q = format!(
                "DROP TABLE IF EXISTS \"{}\"{cascade}",
                t.replace('"', "\"\"")
            );
            if let Err(e) = sqlx::query(&q).execute(&mut *conn).await {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e.into());
            }
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA foreign_keys = ON")
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Verifies the database answers (health checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Turns "no row changed" into NotFound for updates and deletes by id.
fn require_row(r: AnyQueryResult) -> Result<()> {
    if r.rows_affected() == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    /// The store (token keys, password hashes) is its owner's alone, whatever the umask, with
    /// its WAL and shared-memory files; an older world-readable one is closed on open.
    #[tokio::test]
    async fn sqlite_files_are_private() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("onestack.db");
        let url = format!("sqlite://{}", db.display());
        let store = Store::open(&url).await.expect("open");
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(store.pool())
            .await
            .expect("write");
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.path().join(format!("onestack.db{suffix}"));
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        store.pool().close().await;
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.path().join(format!("onestack.db{suffix}"));
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod");
            }
        }
        let store = Store::open(&url).await.expect("reopen");
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.path().join(format!("onestack.db{suffix}"));
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
            }
        }
        store.pool().close().await;
    }
}
