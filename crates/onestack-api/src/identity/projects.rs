//! `/v3/domains` and `/v3/projects`.

use super::{list_body, query_flag, render};
use crate::error::ApiResult;
use crate::extract::{Auth, JsonBody};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use onestack_core::identity::{DomainInput, ProjectInput};
use onestack_store::Filter;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

pub(super) fn filter(q: &HashMap<String, String>) -> ApiResult<Filter> {
    Ok(Filter {
        name: q.get("name").cloned(),
        domain_id: q.get("domain_id").cloned(),
        enabled: query_flag(q, "enabled")?,
    })
}

#[derive(Deserialize)]
pub struct DomainBody {
    domain: DomainInput,
}

#[derive(Deserialize)]
pub struct ProjectBody {
    project: ProjectInput,
}

pub async fn list_domains(
    State(s): State<AppState>,
    Auth(c): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let items = s.identity.list_domains(&c, &filter(&q)?).await?;
    Ok(list_body(
        &s,
        "domains",
        "domains",
        items.iter().map(|d| render::domain(&s, d)).collect(),
    ))
}

pub async fn create_domain(
    State(s): State<AppState>,
    Auth(c): Auth,
    JsonBody(b): JsonBody<DomainBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let d = s.identity.create_domain(&c, b.domain).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"domain": render::domain(&s, &d)})),
    ))
}

pub async fn get_domain(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = s.identity.get_domain(&c, &id).await?;
    Ok(Json(json!({"domain": render::domain(&s, &d)})))
}

pub async fn update_domain(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<DomainBody>,
) -> ApiResult<Json<Value>> {
    let d = s.identity.update_domain(&c, &id, b.domain).await?;
    Ok(Json(json!({"domain": render::domain(&s, &d)})))
}

pub async fn delete_domain(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity.delete_domain(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(
    State(s): State<AppState>,
    Auth(c): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let items = s.identity.list_projects(&c, &filter(&q)?).await?;
    Ok(list_body(
        &s,
        "projects",
        "projects",
        items.iter().map(|p| render::project(&s, p)).collect(),
    ))
}

pub async fn create(
    State(s): State<AppState>,
    Auth(c): Auth,
    JsonBody(b): JsonBody<ProjectBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = s.identity.create_project(&c, b.project).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"project": render::project(&s, &p)})),
    ))
}

pub async fn get(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = s.identity.get_project(&c, &id).await?;
    Ok(Json(json!({"project": render::project(&s, &p)})))
}

pub async fn update(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ProjectBody>,
) -> ApiResult<Json<Value>> {
    let p = s.identity.update_project(&c, &id, b.project).await?;
    Ok(Json(json!({"project": render::project(&s, &p)})))
}

pub async fn delete(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity.delete_project(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
