//! The state store's back end: `up --database URL` for a new cloud, and
//! `onestack db migrate-from-sqlite --to URL`, which moves an all-in-one cloud's SQLite store
//! into a fresh PostgreSQL database, every row of every table in one transaction, checked.

use crate::config::Config;
use crate::paths::{self, DataDir};
use crate::{ops, serve, supervisor};
use anyhow::{bail, Context, Result};
use onestack_store::{Backend, Store};
use sqlx::Row;

/// Records `url` as `[database] url` in the data directory's configuration, keeping the rest
/// of the file (comments included) as it is.
pub fn set_database_url(dd: &DataDir, url: &str) -> Result<()> {
    let text = std::fs::read_to_string(dd.config()).unwrap_or_default();
    let text = with_database_url(&text, url)
        .with_context(|| format!("updating {}", dd.config().display()))?;
    paths::write_private(&dd.config(), &text)?;
    Ok(())
}

/// `text` (a configuration) with `[database] url` set to `url`, the rest as it was; checked as
/// a whole, so a bad URL never reaches a file.
pub fn with_database_url(text: &str, url: &str) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("not valid TOML")?;
    if !doc.contains_table("database") {
        doc["database"] = toml_edit::table();
    }
    doc["database"]["url"] = toml_edit::value(url);
    let out = doc.to_string();
    let cfg: Config = toml::from_str(&out).context("the new configuration")?;
    cfg.validate()?;
    Ok(out)
}

/// `up --database URL`: a new cloud's store. A cloud that already has its state in another
/// store is not silently started empty elsewhere.
pub fn choose_for_up(dd: &DataDir, cfg: &Config, url: &str) -> Result<bool> {
    if cfg.database.url == url {
        return Ok(false);
    }
    let has_sqlite_cloud = std::fs::metadata(dd.database()).is_ok_and(|m| m.len() > 0);
    if has_sqlite_cloud && cfg.database.url.is_empty() {
        bail!(
            "this cloud keeps its state in {}; move it with `onestack db migrate-from-sqlite --to \
             URL` instead (nothing was changed)",
            dd.database().display()
        );
    }
    if !cfg.database.url.is_empty() {
        bail!(
            "this cloud's state is in {}; `--database` chooses the store of a new cloud only \
             (nothing was changed)",
            redact(&cfg.database.url)
        );
    }
    set_database_url(dd, url)?;
    Ok(true)
}

/// A URL with its password hidden, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Every table of the SQLite store in the order it was created (so a table comes after those
/// it references), the migration history left out: the target has its own.
async fn tables(src: &Store) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> 'schema_migrations' ORDER BY rowid",
    )
    .fetch_all(src.pool())
    .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

/// Whether a column holds integers, from its declared type.
async fn integer_columns(src: &Store, table: &str) -> Result<Vec<(String, bool)>> {
    // The name comes from sqlite_master, quoted as an identifier.
    let rows = sqlx::query(&format!(
        "PRAGMA table_info(\"{}\")",
        table.replace('"', "\"\"")
    ))
    .fetch_all(src.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let name: String = r.try_get("name")?;
            let ty: String = r.try_get("type")?;
            let ty = ty.to_ascii_uppercase();
            Ok((name, ty.contains("INT")))
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub async fn migrate_from_sqlite(dd: DataDir, to: &str) -> Result<()> {
    let cfg = ops::load_config(&dd, None)?;
    if !cfg.database.url.is_empty() {
        bail!(
            "this cloud already uses {} (nothing was changed)",
            redact(&cfg.database.url)
        );
    }
    if !(to.starts_with("postgresql://") || to.starts_with("postgres://")) {
        bail!("--to {}: a postgresql:// URL is expected", redact(to));
    }
    if !dd.database().exists() {
        bail!(
            "no SQLite store at {} (nothing to move)",
            dd.database().display()
        );
    }
    if let Some(pid) = supervisor::running_pid(&dd, "supervisor") {
        bail!(
            "OneStack is running (supervisor pid {pid}); stop it with `onestack down` first, so \
             nothing changes during the move"
        );
    }
    let src = Store::open(&serve::database_url(&cfg, &dd))
        .await
        .context("cannot open the SQLite store")?;
    let dst = Store::open(to)
        .await
        .with_context(|| format!("cannot open {}", redact(to)))?;
    if dst.backend() != Backend::Postgres {
        bail!("--to {}: not a PostgreSQL database", redact(to));
    }
    // Only into an empty cloud: a database that already holds one is never overwritten.
    let (projects,): (i64,) = sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT) FROM projects")
        .fetch_one(dst.pool())
        .await?;
    if projects > 0 {
        bail!(
            "{} already holds a cloud ({projects} projects); use an empty database (nothing was \
             changed)",
            redact(to)
        );
    }
    let names = tables(&src).await?;
    let mut tx = dst.pool().begin().await?;
    let mut counts = Vec::new();
    // Rows the target's migrations seeded (generation counters) give way to the source's.
    for t in names.iter().rev() {
        sqlx::query(&format!("DELETE FROM {}", ident(t)))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("emptying {t} in the target"))?;
    }
    for t in &names {
        let cols = integer_columns(&src, t).await?;
        let list: Vec<String> = cols.iter().map(|(c, _)| ident(c)).collect();
        let rows = sqlx::query(&format!("SELECT {} FROM {}", list.join(", "), ident(t)))
            .fetch_all(src.pool())
            .await?;
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            ident(t),
            list.join(", "),
            placeholders.join(", ")
        );
        for row in &rows {
            let mut q = sqlx::query(&insert);
            for (i, (name, int)) in cols.iter().enumerate() {
                q = if *int {
                    let v: Option<i64> = row
                        .try_get(i)
                        .with_context(|| format!("{t}.{name} is not an integer"))?;
                    q.bind(v)
                } else {
                    let v: Option<String> = row
                        .try_get(i)
                        .with_context(|| format!("{t}.{name} is not text"))?;
                    q.bind(v)
                };
            }
            q.execute(&mut *tx)
                .await
                .with_context(|| format!("copying a row of {t}"))?;
        }
        counts.push((t.clone(), rows.len() as i64));
    }
    // Checked before it counts: every table holds exactly the source's rows.
    for (t, n) in &counts {
        let (got,): (i64,) = sqlx::query_as(&format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM {}",
            ident(t)
        ))
        .fetch_one(&mut *tx)
        .await?;
        if got != *n {
            bail!("{t}: {got} rows in the target, {n} in the source; nothing was changed");
        }
    }
    tx.commit().await?;
    src.pool().close().await;
    dst.pool().close().await;
    set_database_url(&dd, to)?;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    println!(
        "Moved {total} rows of {} tables to {}; the configuration now names it.",
        counts.len(),
        redact(to)
    );
    println!(
        "The SQLite file {} is kept as it was (remove it once the cloud runs well). Start the \
         cloud again with `onestack up`.",
        dd.database().display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_set_and_the_rest_kept() {
        let text = "# my cloud\n[api]\nidentity_port = 5001 # mine\n";
        let out = with_database_url(text, "postgresql://db/onestack").expect("set");
        assert!(out.contains("# my cloud") && out.contains("identity_port = 5001 # mine"));
        let cfg: Config = toml::from_str(&out).expect("parse");
        assert_eq!(cfg.database.url, "postgresql://db/onestack");
        let again = with_database_url(&out, "postgresql://db/other").expect("reset");
        assert_eq!(again.matches("url =").count(), 1);
        assert!(with_database_url(text, "mysql://x").is_err());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgresql://onestack:s3cret@db.example:5432/onestack"),
            "postgresql://onestack:***@db.example:5432/onestack"
        );
        assert_eq!(
            redact("postgresql://db/onestack"),
            "postgresql://db/onestack"
        );
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }
}
