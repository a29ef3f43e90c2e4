//! `onestack audit`: the operator's view of the audit log (every mutating API call), read from
//! the state store, filtered, as a table or JSON lines.

use crate::paths::DataDir;
use crate::{ops, serve};
use anyhow::{Context, Result};
use onestack_store::{AuditQuery, AuditRecord};

pub struct Filters {
    /// `1h`, `30m`, `2d`, or a time (`2026-12-01T10:00:00`).
    pub since: Option<String>,
    pub user: Option<String>,
    pub project: Option<String>,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub service: Option<String>,
    pub failed: bool,
    pub limit: i64,
    pub json: bool,
}

/// `30m`, `2h`, `7d` ago, or an absolute UTC time.
pub fn parse_since(s: &str, now_us: i64) -> Result<i64> {
    let s = s.trim();
    let units = [('s', 1i64), ('m', 60), ('h', 3600), ('d', 86_400)];
    if let Some((n, unit)) = s.char_indices().last().and_then(|(i, c)| {
        units
            .iter()
            .find(|(u, _)| *u == c)
            .map(|(_, m)| (&s[..i], *m))
    }) {
        if let Ok(n) = n.parse::<i64>() {
            return Ok(now_us - n.saturating_mul(unit).saturating_mul(1_000_000));
        }
    }
    onestack_core::compute::usage::parse_time(s)
        .map(|t| t.and_utc().timestamp_micros())
        .with_context(|| format!("--since {s}: use 30m, 2h, 7d or YYYY-MM-DDTHH:MM:SS"))
}

pub async fn run(dd: DataDir, f: Filters) -> Result<()> {
    let cfg = ops::load_config(&dd, None)?;
    if cfg.is_compute_node() {
        anyhow::bail!("the audit log is kept by the controller; run this there");
    }
    let now = chrono::Utc::now().timestamp_micros();
    let query = AuditQuery {
        since_us: f
            .since
            .as_deref()
            .map(|s| parse_since(s, now))
            .transpose()?,
        until_us: None,
        user: f.user,
        project_id: f.project,
        target: f.target,
        request_id: f.request_id,
        service: f.service,
        failed_only: f.failed,
        limit: f.limit,
    };
    let store = onestack_store::Store::open(&serve::database_url(&cfg, &dd))
        .await
        .context("cannot open the state store")?;
    let rows = store.list_audit(&query).await?;
    store.pool().close().await;
    for r in rows.iter().rev() {
        if f.json {
            println!("{}", to_json(r));
        } else {
            println!("{}", line(r));
        }
    }
    Ok(())
}

fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

fn to_json(r: &AuditRecord) -> serde_json::Value {
    serde_json::json!({
        "time": time(r.at_us), "request_id": r.request_id, "service": r.service,
        "method": r.method, "route": r.route, "path": r.path, "action": r.action,
        "target": r.target, "user_id": r.user_id, "user_name": r.user_name,
        "project_id": r.project_id, "status": r.status, "remote_addr": r.remote_addr,
    })
}

fn line(r: &AuditRecord) -> String {
    let what = match &r.action {
        Some(a) => format!("{} {} [{a}]", r.method, r.route),
        None => format!("{} {}", r.method, r.route),
    };
    format!(
        "{}  {}  {:<8} {:<12} {:<34} {:<48} {:<36} {}",
        time(r.at_us),
        r.request_id,
        r.service,
        r.user_name.as_deref().unwrap_or("-"),
        r.project_id.as_deref().unwrap_or("-"),
        what,
        r.target.as_deref().unwrap_or("-"),
        r.status
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = 10_000_000_000_000;
        assert_eq!(parse_since("30m", now).ok(), Some(now - 1_800_000_000));
        assert_eq!(parse_since("2d", now).ok(), Some(now - 172_800_000_000));
        assert_eq!(
            parse_since("2026-12-01T00:00:00", now).ok(),
            Some(1_796_083_200_000_000)
        );
        assert!(parse_since("soon", now).is_err());
    }
}
