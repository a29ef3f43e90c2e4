//! `/flavors`: list (brief and detail), show, create and delete (admin), description update,
//! private flavor access, and extra specs.

use super::render;
use super::ComputeState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use onestack_core::image::now;
use onestack_store::FlavorRecord;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Deserialize)]
pub struct FlavorPath {
    id: String,
}

#[derive(Deserialize)]
pub struct SpecPath {
    id: String,
    key: String,
}

/// `is_public`: absent → public only (admin; others also see flavors granted to them),
/// `None`/`none` → all, else a boolean. The SDK sends `None` literally.
fn parse_is_public(v: Option<&String>) -> ApiResult<Option<bool>> {
    match v.map(|s| s.to_ascii_lowercase()) {
        None => Ok(Some(true)),
        Some(s) if s == "none" => Ok(None),
        Some(s) if ["true", "t", "1", "yes", "y", "on"].contains(&s.as_str()) => Ok(Some(true)),
        Some(s) if ["false", "f", "0", "no", "n", "off"].contains(&s.as_str()) => Ok(Some(false)),
        Some(s) => Err(ApiError::bad_request(format!(
            "Invalid is_public filter [{s}]"
        ))),
    }
}

fn int_param(q: &HashMap<String, String>, name: &str) -> ApiResult<Option<i64>> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("Invalid {name} filter [{v}]"))),
    }
}

async fn listing(
    s: &ComputeState,
    ctx: &onestack_core::policy::AuthContext,
    q: &HashMap<String, String>,
) -> ApiResult<Vec<FlavorRecord>> {
    let is_public = if ctx.is_admin() {
        parse_is_public(q.get("is_public"))?
    } else {
        None
    };
    let mut list = s
        .compute
        .list_flavors(
            ctx,
            is_public,
            int_param(q, "minRam")?,
            int_param(q, "minDisk")?,
        )
        .await?;
    if let Some(m) = q.get("marker") {
        let pos = list
            .iter()
            .position(|f| &f.id == m)
            .ok_or_else(|| ApiError::bad_request(format!("marker [{m}] not found")))?;
        list.drain(..=pos);
    }
    if let Some(l) = int_param(q, "limit")? {
        if l < 0 {
            return Err(ApiError::bad_request("limit must be >= 0"));
        }
        list.truncate(l as usize);
    }
    Ok(list)
}

pub async fn list(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let list = listing(&s, &ctx, &q).await?;
    let v: Vec<Value> = list.iter().map(|f| render::flavor_brief(&s, f)).collect();
    Ok(Json(json!({"flavors": v})))
}

pub async fn list_detail(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let list = listing(&s, &ctx, &q).await?;
    let v: Vec<Value> = list.iter().map(|f| render::flavor(&s, f)).collect();
    Ok(Json(json!({"flavors": v})))
}

pub async fn show(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<FlavorPath>,
) -> ApiResult<Json<Value>> {
    let f = s.compute.get_flavor(&ctx, &p.id).await?;
    Ok(Json(json!({"flavor": render::flavor(&s, &f)})))
}

/// Nova accepts numbers or numeric strings for the sizes.
fn size_field(o: &Map<String, Value>, key: &str, default: Option<i64>) -> ApiResult<i64> {
    let bad = || ApiError::bad_request(format!("Invalid input for field/attribute {key}."));
    match o.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for field/attribute flavor. '{key}' is a required property"
            ))
        }),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(bad),
        Some(Value::String(t)) if t.is_empty() && key == "swap" => Ok(0),
        Some(Value::String(t)) => t.trim().parse::<i64>().map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

pub async fn create(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let o = body
        .get("flavor")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Invalid input: 'flavor' is a required property"))?;
    let name = o
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute name."))?;
    let id = match o.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(x)) if x == "auto" => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(x))
            if !x.is_empty()
                && x.len() <= 255
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c)) =>
        {
            x.clone()
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute id.",
            ))
        }
    };
    let is_public = match o.get("os-flavor-access:is_public") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute os-flavor-access:is_public.",
            ))
        }
    };
    if o.get("description").is_some() {
        return Err(ApiError::bad_request(
            "Additional properties are not allowed ('description' was unexpected)",
        ));
    }
    let f = FlavorRecord {
        id,
        name: name.to_string(),
        vcpus: size_field(o, "vcpus", None)?,
        memory_mb: size_field(o, "ram", None)?,
        root_gb: size_field(o, "disk", None)?,
        ephemeral_gb: size_field(o, "OS-FLV-EXT-DATA:ephemeral", Some(0))?,
        swap_mb: size_field(o, "swap", Some(0))?,
        is_public,
        disabled: false,
        description: None,
        created_at: now(),
        extra_specs: BTreeMap::new(),
    };
    let f = s.compute.create_flavor(&ctx, f).await?;
    Ok(Json(json!({"flavor": render::flavor(&s, &f)})))
}

/// `PUT /flavors/{id}` (description) exists from 2.55 only: 404 at 2.1, once authenticated.
pub async fn update(_auth: Auth) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "The resource could not be found.")
}

pub async fn delete(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<FlavorPath>,
) -> ApiResult<StatusCode> {
    s.compute.delete_flavor(&ctx, &p.id).await?;
    Ok(StatusCode::ACCEPTED)
}

fn access_doc(id: &str, projects: &[String]) -> Value {
    let list: Vec<Value> = projects
        .iter()
        .map(|p| json!({"flavor_id": id, "tenant_id": p}))
        .collect();
    json!({"flavor_access": list})
}

pub async fn access(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<FlavorPath>,
) -> ApiResult<Json<Value>> {
    let list = s.compute.flavor_access(&ctx, &p.id).await?;
    Ok(Json(access_doc(&p.id, &list)))
}

/// `addTenantAccess` / `removeTenantAccess`.
pub async fn action(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<FlavorPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let (grant, inner) = if let Some(v) = body.get("addTenantAccess") {
        (true, v)
    } else if let Some(v) = body.get("removeTenantAccess") {
        (false, v)
    } else {
        return Err(ApiError::bad_request("Invalid flavor action."));
    };
    let tenant = inner
        .get("tenant")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute tenant."))?;
    let list = s
        .compute
        .set_flavor_access(&ctx, &p.id, tenant, grant)
        .await?;
    Ok(Json(access_doc(&p.id, &list)))
}

pub async fn specs(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<FlavorPath>,
) -> ApiResult<Json<Value>> {
    let f = s.compute.get_flavor(&ctx, &p.id).await?;
    Ok(Json(json!({"extra_specs": f.extra_specs})))
}

fn string_map(v: Option<&Value>) -> ApiResult<BTreeMap<String, String>> {
    let o = v
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Invalid input: extra_specs must be an object."))?;
    let mut out = BTreeMap::new();
    for (k, v) in o {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for field/attribute {k}: values must be strings."
                )))
            }
        };
        out.insert(k.clone(), v);
    }
    Ok(out)
}

pub async fn set_specs(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<FlavorPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let specs = string_map(body.get("extra_specs"))?;
    s.compute.set_extra_specs(&ctx, &p.id, &specs).await?;
    Ok(Json(json!({"extra_specs": specs})))
}

pub async fn spec(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<SpecPath>,
) -> ApiResult<Json<Value>> {
    let f = s.compute.get_flavor(&ctx, &p.id).await?;
    match f.extra_specs.get(&p.key) {
        Some(v) => Ok(Json(json!({ p.key.clone(): v }))),
        None => Err(ApiError::not_found(format!(
            "Flavor {} has no extra specs with key {}.",
            p.id, p.key
        ))),
    }
}

pub async fn put_spec(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<SpecPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let specs = string_map(Some(&body))?;
    if specs.len() != 1 || !specs.contains_key(&p.key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    s.compute.set_extra_specs(&ctx, &p.id, &specs).await?;
    Ok(Json(json!(specs)))
}

pub async fn delete_spec(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<SpecPath>,
) -> ApiResult<Response> {
    s.compute.delete_extra_spec(&ctx, &p.id, &p.key).await?;
    Ok(StatusCode::OK.into_response())
}
