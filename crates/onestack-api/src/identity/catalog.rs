//! `/v3/regions`, `/v3/services`, `/v3/endpoints`. Any authenticated user may read them (the
//! token's catalog shows the same); only admins change them.

use super::{list_body, render};
use crate::error::ApiResult;
use crate::extract::{Auth, JsonBody};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use onestack_core::identity::{EndpointInput, RegionInput, ServiceInput};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Deserialize)]
pub struct RegionBody {
    region: RegionInput,
}
#[derive(Deserialize)]
pub struct ServiceBody {
    service: ServiceInput,
}
#[derive(Deserialize)]
pub struct EndpointBody {
    endpoint: EndpointInput,
}

type Q = Query<HashMap<String, String>>;

pub async fn list_regions(
    State(s): State<AppState>,
    Auth(_c): Auth,
    Query(q): Q,
) -> ApiResult<Json<Value>> {
    let items = s.identity.list_regions().await?;
    let items = items
        .iter()
        .filter(|r| {
            q.get("parent_region_id")
                .is_none_or(|p| r.parent_region_id.as_ref() == Some(p))
        })
        .map(|r| render::region(&s, r))
        .collect();
    Ok(list_body(&s, "regions", "regions", items))
}

pub async fn create_region(
    State(s): State<AppState>,
    Auth(c): Auth,
    JsonBody(b): JsonBody<RegionBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let r = s.identity.create_region(&c, b.region).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"region": render::region(&s, &r)})),
    ))
}

pub async fn get_region(
    State(s): State<AppState>,
    Auth(_c): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let r = s.identity.get_region(&id).await?;
    Ok(Json(json!({"region": render::region(&s, &r)})))
}

pub async fn update_region(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RegionBody>,
) -> ApiResult<Json<Value>> {
    let r = s.identity.update_region(&c, &id, b.region).await?;
    Ok(Json(json!({"region": render::region(&s, &r)})))
}

pub async fn delete_region(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity.delete_region(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_services(
    State(s): State<AppState>,
    Auth(c): Auth,
    Query(q): Q,
) -> ApiResult<Json<Value>> {
    let items = s.identity.list_services(&c).await?;
    let items = items
        .iter()
        .filter(|x| q.get("type").is_none_or(|t| &x.service_type == t))
        .filter(|x| q.get("name").is_none_or(|n| &x.name == n))
        .map(|x| render::service(&s, x))
        .collect();
    Ok(list_body(&s, "services", "services", items))
}

pub async fn create_service(
    State(s): State<AppState>,
    Auth(c): Auth,
    JsonBody(b): JsonBody<ServiceBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let x = s.identity.create_service(&c, b.service).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"service": render::service(&s, &x)})),
    ))
}

pub async fn get_service(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let x = s.identity.get_service(&c, &id).await?;
    Ok(Json(json!({"service": render::service(&s, &x)})))
}

pub async fn update_service(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ServiceBody>,
) -> ApiResult<Json<Value>> {
    let x = s.identity.update_service(&c, &id, b.service).await?;
    Ok(Json(json!({"service": render::service(&s, &x)})))
}

pub async fn delete_service(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity.delete_service(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_endpoints(
    State(s): State<AppState>,
    Auth(c): Auth,
    Query(q): Q,
) -> ApiResult<Json<Value>> {
    let items = s.identity.list_endpoints(&c).await?;
    let items = items
        .iter()
        .filter(|e| q.get("service_id").is_none_or(|v| &e.service_id == v))
        .filter(|e| q.get("interface").is_none_or(|v| &e.interface == v))
        .filter(|e| {
            q.get("region_id")
                .is_none_or(|v| e.region_id.as_ref() == Some(v))
        })
        .map(|e| render::endpoint(&s, e))
        .collect();
    Ok(list_body(&s, "endpoints", "endpoints", items))
}

pub async fn create_endpoint(
    State(s): State<AppState>,
    Auth(c): Auth,
    JsonBody(b): JsonBody<EndpointBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let e = s.identity.create_endpoint(&c, b.endpoint).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"endpoint": render::endpoint(&s, &e)})),
    ))
}

pub async fn get_endpoint(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = s.identity.get_endpoint(&c, &id).await?;
    Ok(Json(json!({"endpoint": render::endpoint(&s, &e)})))
}

pub async fn update_endpoint(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<EndpointBody>,
) -> ApiResult<Json<Value>> {
    let e = s.identity.update_endpoint(&c, &id, b.endpoint).await?;
    Ok(Json(json!({"endpoint": render::endpoint(&s, &e)})))
}

pub async fn delete_endpoint(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity.delete_endpoint(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
