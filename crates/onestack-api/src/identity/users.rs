//! `/v3/users`.

use super::{list_body, render};
use crate::error::ApiResult;
use crate::extract::{Auth, JsonBody};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use onestack_core::identity::UserInput;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Deserialize)]
pub struct UserBody {
    user: UserInput,
}

#[derive(Deserialize)]
pub struct PasswordChangeBody {
    user: PasswordChange,
}

#[derive(Deserialize)]
struct PasswordChange {
    original_password: String,
    password: String,
}

pub async fn list(
    State(s): State<AppState>,
    Auth(c): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let items = s
        .identity
        .list_users(&c, &super::projects::filter(&q)?)
        .await?;
    Ok(list_body(
        &s,
        "users",
        "users",
        items.iter().map(|u| render::user(&s, u)).collect(),
    ))
}

pub async fn create(
    State(s): State<AppState>,
    Auth(c): Auth,
    JsonBody(b): JsonBody<UserBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let u = s.identity.create_user(&c, b.user).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": render::user(&s, &u)})),
    ))
}

pub async fn get(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let u = s.identity.get_user(&c, &id).await?;
    Ok(Json(json!({"user": render::user(&s, &u)})))
}

pub async fn update(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<UserBody>,
) -> ApiResult<Json<Value>> {
    let u = s.identity.update_user(&c, &id, b.user).await?;
    Ok(Json(json!({"user": render::user(&s, &u)})))
}

pub async fn delete(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.identity.delete_user(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn change_password(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<PasswordChangeBody>,
) -> ApiResult<StatusCode> {
    s.identity
        .change_password(&c, &id, b.user.original_password, b.user.password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn projects(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let items = s.identity.list_user_projects(&c, &id).await?;
    Ok(list_body(
        &s,
        "projects",
        &format!("users/{id}/projects"),
        items.iter().map(|p| render::project(&s, p)).collect(),
    ))
}
