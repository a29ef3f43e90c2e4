//! Role grants (`/v3/{projects,domains}/{id}/users/{id}/roles/{id}`) and `/v3/role_assignments`.

use super::{query_flag, render};
use crate::error::ApiResult;
use crate::extract::Auth;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use onestack_core::identity::{AssignmentQuery, AssignmentView};
use onestack_store::{Assignment, TargetType};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

fn assignment(t: TargetType, target: String, user: String, role: String) -> Assignment {
    Assignment {
        role_id: role,
        user_id: user,
        target_type: t.as_str().into(),
        target_id: target,
    }
}

async fn grant(
    s: &AppState,
    c: &onestack_core::policy::AuthContext,
    a: Assignment,
) -> ApiResult<StatusCode> {
    s.identity.grant(c, a).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn grant_project(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((t, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    grant(&s, &c, assignment(TargetType::Project, t, u, r)).await
}

pub async fn grant_domain(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((t, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    grant(&s, &c, assignment(TargetType::Domain, t, u, r)).await
}

pub async fn check_project(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((t, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    s.identity
        .check_grant(&c, assignment(TargetType::Project, t, u, r))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn check_domain(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((t, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    s.identity
        .check_grant(&c, assignment(TargetType::Domain, t, u, r))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn revoke_project(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((t, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    s.identity
        .revoke_grant(&c, assignment(TargetType::Project, t, u, r))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn revoke_domain(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((t, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    s.identity
        .revoke_grant(&c, assignment(TargetType::Domain, t, u, r))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_grants(
    s: AppState,
    c: onestack_core::policy::AuthContext,
    t: TargetType,
    target: String,
    user: String,
) -> ApiResult<Json<Value>> {
    let mut q = AssignmentQuery {
        user_id: Some(user.clone()),
        ..AssignmentQuery::default()
    };
    match t {
        TargetType::Project => q.project_id = Some(target.clone()),
        TargetType::Domain => q.domain_id = Some(target.clone()),
    }
    let rows = s.identity.list_assignments(&c, &q).await?;
    let snap = s.identity.snapshot();
    let roles: Vec<Value> = rows
        .iter()
        .filter_map(|a| snap.roles.get(&a.role_id))
        .map(|r| render::role(&s, r))
        .collect();
    let path = format!("{}s/{target}/users/{user}/roles", t.as_str());
    Ok(super::list_body(&s, "roles", &path, roles))
}

pub async fn list_project_grants(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((t, u)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    list_grants(s, c, TargetType::Project, t, u).await
}

pub async fn list_domain_grants(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((t, u)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    list_grants(s, c, TargetType::Domain, t, u).await
}

/// `GET /v3/role_assignments?user.id=&scope.project.id=&role.id=&effective&include_names`.
pub async fn list(
    State(s): State<AppState>,
    Auth(c): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let query = AssignmentQuery {
        user_id: q.get("user.id").cloned(),
        project_id: q.get("scope.project.id").cloned(),
        domain_id: q.get("scope.domain.id").cloned(),
        role_id: q.get("role.id").cloned(),
        effective: query_flag(&q, "effective")?.unwrap_or(false),
    };
    // Group assignments do not exist here, so a group filter matches nothing.
    let rows = if q.contains_key("group.id") {
        Vec::new()
    } else {
        s.identity.list_assignments(&c, &query).await?
    };
    let names = query_flag(&q, "include_names")?.unwrap_or(false);
    let items = rows
        .iter()
        .map(|a| render_assignment(&s, a, names))
        .collect();
    Ok(super::list_body(
        &s,
        "role_assignments",
        "role_assignments",
        items,
    ))
}

fn render_assignment(s: &AppState, a: &AssignmentView, names: bool) -> Value {
    let snap = s.identity.snapshot();
    let domain_of = |id: &str| {
        snap.domains
            .get(id)
            .map(|d| json!({"id": d.id, "name": d.name}))
            .unwrap_or(json!({"id": id}))
    };
    let mut role = Map::new();
    role.insert("id".into(), json!(a.role_id));
    let mut user = Map::new();
    user.insert("id".into(), json!(a.user_id));
    let mut target = Map::new();
    target.insert("id".into(), json!(a.target_id));
    if names {
        if let Some(r) = snap.roles.get(&a.role_id) {
            role.insert("name".into(), json!(r.name));
        }
        if let Some(u) = snap.users.get(&a.user_id) {
            user.insert("name".into(), json!(u.name));
            user.insert("domain".into(), domain_of(&u.domain_id));
        }
        match a.target_type {
            TargetType::Project => {
                if let Some(p) = snap.projects.get(&a.target_id) {
                    target.insert("name".into(), json!(p.name));
                    target.insert("domain".into(), domain_of(&p.domain_id));
                }
            }
            TargetType::Domain => {
                if let Some(d) = snap.domains.get(&a.target_id) {
                    target.insert("name".into(), json!(d.name));
                }
            }
        }
    }
    let base = format!(
        "{}/v3/{}s/{}/users/{}/roles",
        s.identity_url,
        a.target_type.as_str(),
        a.target_id,
        a.user_id
    );
    let mut links = Map::new();
    match &a.prior_role_id {
        Some(prior) => {
            links.insert("assignment".into(), json!(format!("{base}/{prior}")));
            links.insert(
                "prior_role".into(),
                json!(format!("{}/v3/roles/{prior}", s.identity_url)),
            );
        }
        None => {
            links.insert("assignment".into(), json!(format!("{base}/{}", a.role_id)));
        }
    }
    json!({
        "role": Value::Object(role),
        "user": Value::Object(user),
        "scope": {a.target_type.as_str(): Value::Object(target)},
        "links": Value::Object(links),
    })
}
