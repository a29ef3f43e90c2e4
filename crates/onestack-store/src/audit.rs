//! The audit log: one row per mutating API call — who, in which project, what, on what, with
//! which result, under which request id, when.

use crate::{Result, Store};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditRecord {
    /// `req-<uuid>`, the `X-Openstack-Request-Id` the caller got.
    pub request_id: String,
    /// Microseconds since the epoch.
    pub at_us: i64,
    /// identity, compute, image, network, volume.
    pub service: String,
    pub method: String,
    /// The route, with `{placeholders}` (the concrete path when no route matched).
    pub route: String,
    pub path: String,
    /// For `…/action` calls, the action (`os-stop`, `resize`, …).
    pub action: Option<String>,
    /// The resource acted on: the last id in the path, or what a create made.
    pub target: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub project_id: Option<String>,
    pub status: i64,
    pub remote_addr: Option<String>,
}

row_struct!(AuditRecord {
    request_id: "request_id" => val,
    at_us: "at_us" => val,
    service: "service" => val,
    method: "method" => val,
    route: "route" => val,
    path: "path" => val,
    action: "action" => val,
    target: "target" => val,
    user_id: "user_id" => val,
    user_name: "user_name" => val,
    project_id: "project_id" => val,
    status: "status" => val,
    remote_addr: "remote_addr" => val,
});

const COLUMNS: &str = "request_id, at_us, service, method, route, path, action, target, \
                       user_id, user_name, project_id, status, remote_addr";

/// What an operator asks of the audit log; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub user: Option<String>,
    pub project_id: Option<String>,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub service: Option<String>,
    /// Only calls that failed (status ≥ 400).
    pub failed_only: bool,
    pub limit: i64,
}

impl Store {
    pub async fn insert_audit(&self, r: &AuditRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO audit_log ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13)"
        ))
        .bind(&r.request_id)
        .bind(r.at_us)
        .bind(&r.service)
        .bind(&r.method)
        .bind(&r.route)
        .bind(&r.path)
        .bind(r.action.as_deref())
        .bind(r.target.as_deref())
        .bind(r.user_id.as_deref())
        .bind(r.user_name.as_deref())
        .bind(r.project_id.as_deref())
        .bind(r.status)
        .bind(r.remote_addr.as_deref())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Newest first, at most `q.limit` (all when ≤ 0).
    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE 1 = 1");
        let mut ints: Vec<i64> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        // Integers are bound first, then texts: placeholders are numbered in that order.
        let mut conds_int: Vec<&str> = Vec::new();
        if let Some(s) = q.since_us {
            conds_int.push("at_us >= ");
            ints.push(s);
        }
        if let Some(u) = q.until_us {
            conds_int.push("at_us < ");
            ints.push(u);
        }
        let mut n = 0;
        for c in conds_int {
            n += 1;
            sql.push_str(&format!(" AND {c}${n}"));
        }
        let mut text = |cond: &str, v: &Option<String>, sql: &mut String| {
            if let Some(v) = v {
                n += 1;
                sql.push_str(&cond.replace("$?", &format!("${n}")));
                texts.push(v.clone());
            }
        };
        text(" AND (user_id = $? OR user_name = $?)", &q.user, &mut sql);
        text(" AND project_id = $?", &q.project_id, &mut sql);
        text(" AND target = $?", &q.target, &mut sql);
        text(" AND request_id = $?", &q.request_id, &mut sql);
        text(" AND service = $?", &q.service, &mut sql);
        if q.failed_only {
            sql.push_str(" AND status >= 400");
        }
        sql.push_str(" ORDER BY at_us DESC, request_id");
        if q.limit > 0 {
            sql.push_str(&format!(" LIMIT {}", q.limit));
        }
        let mut query = sqlx::query_as::<_, AuditRecord>(&sql);
        for i in ints {
            query = query.bind(i);
        }
        for t in texts {
            query = query.bind(t);
        }
        Ok(query.fetch_all(self.pool()).await?)
    }
}
