//! `/os-keypairs` at microversion 2.1: import or generate (200, private key returned once),
//! list, show, delete (202). Keypairs belong to a user, not a project.

use super::render;
use super::ComputeState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub struct KeyPath {
    name: String,
}

pub async fn list(State(s): State<ComputeState>, Auth(ctx): Auth) -> ApiResult<Json<Value>> {
    let list = s.compute.list_keypairs(&ctx, None).await?;
    let v: Vec<Value> = list
        .iter()
        .map(|k| json!({"keypair": {"name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint}}))
        .collect();
    Ok(Json(json!({"keypairs": v})))
}

pub async fn show(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<KeyPath>,
) -> ApiResult<Json<Value>> {
    let k = s.compute.get_keypair(&ctx, &p.name, None).await?;
    // A stable small integer id, as Nova shows its database id.
    let d = Md5::digest(format!("{}/{}", k.user_id, k.name).as_bytes());
    let id = i64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) >> 1);
    Ok(Json(json!({"keypair": render::keypair_detail(&k, id)})))
}

pub async fn create(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let o = body
        .get("keypair")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Invalid input: 'keypair' is a required property"))?;
    for k in o.keys() {
        if k != "name" && k != "public_key" {
            return Err(ApiError::bad_request(format!(
                "Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
    }
    let name = o
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute name."))?;
    let public_key = match o.get("public_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute public_key.",
            ))
        }
    };
    let (k, private) = s
        .compute
        .create_keypair(&ctx, name, "ssh", public_key, None)
        .await?;
    Ok(Json(
        json!({"keypair": render::keypair(&k, private.as_deref())}),
    ))
}

pub async fn delete(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<KeyPath>,
) -> ApiResult<StatusCode> {
    s.compute.delete_keypair(&ctx, &p.name, None).await?;
    Ok(StatusCode::ACCEPTED)
}
