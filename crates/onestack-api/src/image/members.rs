//! `/v2/images/{id}/members`: sharing an image with other projects.

use super::ImageState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use onestack_store::ImageMember;
use serde_json::{json, Value};

fn render(m: &ImageMember) -> Value {
    json!({
        "image_id": m.image_id, "member_id": m.member_id, "status": m.status,
        "created_at": m.created_at, "updated_at": m.updated_at,
        "schema": "/v2/schemas/member",
    })
}

fn string_field(body: &Value, key: &str) -> ApiResult<String> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::bad_request(format!("The request body must contain a string '{key}'."))
        })
}

pub async fn list(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let members = state.images.list_members(&ctx, &id).await?;
    Ok(Json(json!({
        "members": members.iter().map(render).collect::<Vec<_>>(),
        "schema": "/v2/schemas/members",
    })))
}

pub async fn create(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let member = string_field(&body, "member")?;
    Ok(Json(render(
        &state.images.add_member(&ctx, &id, &member).await?,
    )))
}

pub async fn show(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(render(
        &state.images.get_member(&ctx, &id, &member).await?,
    )))
}

pub async fn update(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path((id, member)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let status = string_field(&body, "status")?;
    Ok(Json(render(
        &state
            .images
            .set_member_status(&ctx, &id, &member, &status)
            .await?,
    )))
}

pub async fn delete(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.images.remove_member(&ctx, &id, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}
