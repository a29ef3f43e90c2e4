//! `/v3/roles`, implied roles and `/v3/role_inferences`.

use super::{list_body, render};
use crate::error::ApiResult;
use crate::extract::{Auth, JsonBody};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use onestack_core::identity::RoleInput;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Deserialize)]
pub struct RoleBody {
    role: RoleInput,
}

pub async fn list(
    State(s): State<AppState>,
    Auth(c): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let items = s
        .identity
        .list_roles(&c, q.get("name").map(String::as_str))
        .await?;
    Ok(list_body(
        &s,
        "roles",
        "roles",
        items.iter().map(|r| render::role(&s, r)).collect(),
    ))
}

pub async fn create(
    State(s): State<AppState>,
    Auth(c): Auth,
    JsonBody(b): JsonBody<RoleBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let r = s.identity.create_role(&c, b.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"role": render::role(&s, &r)})),
    ))
}

pub async fn get(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let r = s.identity.get_role(&c, &id).await?;
    Ok(Json(json!({"role": render::role(&s, &r)})))
}

pub async fn update(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RoleBody>,
) -> ApiResult<Json<Value>> {
    let r = s.identity.update_role(&c, &id, b.role).await?;
    Ok(Json(json!({"role": render::role(&s, &r)})))
}

pub async fn delete(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity.delete_role(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_implied(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let prior = s.identity.get_role(&c, &id).await?;
    let snap = s.identity.snapshot();
    let implies: Vec<Value> = snap
        .implied
        .get(&id)
        .into_iter()
        .flatten()
        .filter_map(|i| snap.roles.get(i))
        .map(|r| render::role_ref(&s, r))
        .collect();
    Ok(Json(
        json!({"role_inference": {"prior_role": render::role_ref(&s, &prior), "implies": implies}}),
    ))
}

pub async fn add_implied(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((prior, implied)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (p, i) = s.identity.add_implied_role(&c, &prior, &implied).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"role_inference": {"prior_role": render::role_ref(&s, &p), "implies": render::role_ref(&s, &i)}}),
        ),
    ))
}

pub async fn get_implied(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((prior, implied)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (p, i) = s.identity.get_implied_role(&c, &prior, &implied).await?;
    Ok(Json(
        json!({"role_inference": {"prior_role": render::role_ref(&s, &p), "implies": render::role_ref(&s, &i)}}),
    ))
}

pub async fn check_implied(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((prior, implied)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.identity.get_implied_role(&c, &prior, &implied).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_implied(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((prior, implied)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.identity.remove_implied_role(&c, &prior, &implied).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn inferences(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<Json<Value>> {
    let snap = s.identity.snapshot();
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ir in s.identity.list_implied_roles(&c).await? {
        grouped
            .entry(ir.prior_role_id)
            .or_default()
            .push(ir.implied_role_id);
    }
    let items: Vec<Value> = grouped
        .iter()
        .filter_map(|(prior, implied)| {
            let p = snap.roles.get(prior)?;
            let i: Vec<Value> = implied
                .iter()
                .filter_map(|x| snap.roles.get(x))
                .map(|r| render::role_ref(&s, r))
                .collect();
            Some(json!({"prior_role": render::role_ref(&s, p), "implies": i}))
        })
        .collect();
    Ok(Json(
        json!({"role_inferences": items, "links": {"self": format!("{}/v3/role_inferences", s.identity_url), "previous": null, "next": null}}),
    ))
}
