//! `/servers/{id}/os-volume_attachments`: list, attach (200 with the attachment), show and
//! detach (202) — Nova 2.1's shapes. The agent hot-plugs asynchronously; the volume shows
//! `attaching`/`detaching` until it has.

use super::ComputeState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use onestack_store::VolumeRecord;
use serde_json::{json, Value};

/// `/servers/{id}/os-volume_attachments[/{volume}]` (also under `/v2.1/{project_id}`).
#[derive(serde::Deserialize)]
pub struct AttachmentPath {
    id: String,
    #[serde(default)]
    volume: String,
}

fn attachment(server: &str, v: &VolumeRecord) -> Value {
    json!({
        "id": v.id,
        "serverId": server,
        "volumeId": v.id,
        "device": v.device,
    })
}

pub async fn list(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(AttachmentPath { id: server, .. }): Path<AttachmentPath>,
) -> ApiResult<Json<Value>> {
    let vols = s.compute.server_volumes(&ctx, &server).await?;
    let out: Vec<Value> = vols.iter().map(|v| attachment(&server, v)).collect();
    Ok(Json(json!({"volumeAttachments": out})))
}

pub async fn create(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(AttachmentPath { id: server, .. }): Path<AttachmentPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let a = body
        .get("volumeAttachment")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute volumeAttachment. Value must be an object.",
            )
        })?;
    let volume = a.get("volumeId").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute volumeId. 'volumeId' is a required property",
        )
    })?;
    let device = match a.get("device") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.as_str()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute device.",
            ))
        }
    };
    let v = s
        .compute
        .attach_volume(&ctx, &server, volume, device)
        .await?;
    Ok(Json(json!({"volumeAttachment": attachment(&server, &v)})))
}

pub async fn show(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(AttachmentPath { id: server, volume }): Path<AttachmentPath>,
) -> ApiResult<Json<Value>> {
    let vols = s.compute.server_volumes(&ctx, &server).await?;
    let v = vols.iter().find(|v| v.id == volume).ok_or_else(|| {
        ApiError::not_found(format!(
            "Volume {volume} is not attached to the instance {server}."
        ))
    })?;
    Ok(Json(json!({"volumeAttachment": attachment(&server, v)})))
}

pub async fn delete(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(AttachmentPath { id: server, volume }): Path<AttachmentPath>,
) -> ApiResult<StatusCode> {
    s.compute.detach_volume(&ctx, &server, &volume).await?;
    Ok(StatusCode::ACCEPTED)
}
