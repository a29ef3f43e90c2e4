//! Cinder v3 (block storage): version discovery, volumes, volume actions, snapshots, types,
//! quotas, limits and availability zones under `/v3/{project_id}`. Errors use Cinder's bodies,
//! which are Nova's shape (`{"itemNotFound": {"code": 404, "message": …}}`).

use crate::error::{error_body, ApiError, ApiResult, ErrorFlavor};
use crate::extract::{Auth, JsonBody};
use crate::routes::Listed;
use crate::AppState;
use axum::body::Body;
use axum::extract::{FromRef, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use onestack_core::policy::AuthContext;
use onestack_core::volume::{
    VolumeCreate, VolumeQuota, VolumeService, VolumeUpdate, DEFAULT_TYPE_ID, DEFAULT_TYPE_NAME,
    QUOTA_RESOURCES,
};
use onestack_store::{SnapshotRecord, VolumeRecord};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The microversions honoured: 3.0 exactly (each later step changes shapes or behaviour).
pub const MAX_VERSION: (u32, u32) = (3, 0);

#[derive(Clone)]
pub struct VolumeApiState {
    pub app: AppState,
    pub volumes: Arc<VolumeService>,
    /// Public base URL, e.g. `http://198.18.0.1:8776`.
    pub base_url: Arc<str>,
}

impl FromRef<VolumeApiState> for AppState {
    fn from_ref(s: &VolumeApiState) -> AppState {
        s.app.clone()
    }
}

/// The path templates this API serves (the role table checks that each has an entry).
pub fn route_paths() -> Vec<String> {
    routes().paths()
}

fn routes() -> Listed<VolumeApiState> {
    let api = Listed::new()
        .route("/volumes", get(list_volumes).post(create_volume))
        .route("/volumes/detail", get(list_volumes_detail))
        .route(
            "/volumes/{id}",
            get(show_volume).put(update_volume).delete(delete_volume),
        )
        .route("/volumes/{id}/action", post(volume_action))
        .route(
            "/volumes/{id}/metadata",
            get(volume_metadata)
                .post(merge_volume_metadata)
                .put(replace_volume_metadata),
        )
        .route(
            "/volumes/{id}/metadata/{key}",
            get(volume_metadata_item)
                .put(put_volume_metadata_item)
                .delete(delete_volume_metadata_item),
        )
        .route("/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/snapshots/detail", get(list_snapshots_detail))
        .route(
            "/snapshots/{id}",
            get(show_snapshot)
                .put(update_snapshot)
                .delete(delete_snapshot),
        )
        .route("/types", get(list_types))
        .route("/types/default", get(default_type))
        .route("/types/{id}", get(show_type))
        .route(
            "/os-quota-sets/{project}",
            get(show_quota).put(update_quota).delete(delete_quota),
        )
        .route("/os-quota-sets/{project}/defaults", get(default_quota))
        .route("/limits", get(limits))
        .route("/os-availability-zone", get(availability_zones))
        .route("/extensions", get(extensions))
        .map(|r| r.layer(axum::middleware::from_fn(microversion)));
    Listed::new()
        .route("/", get(versions))
        .route("/v3", get(version_v3))
        .route("/v3/", get(version_v3))
        .nest("/v3/{project_id}", api)
}

pub fn router(state: VolumeApiState) -> Router {
    routes()
        .into_router()
        .fallback(|| async { ApiError::not_found("The resource could not be found.") })
        .layer(axum::middleware::from_fn_with_state(
            (state.app.clone(), ErrorFlavor::Nova),
            crate::middleware::request_context,
        ))
        .layer(axum::middleware::from_fn_with_state(
            "volume",
            crate::metrics::track,
        ))
        .with_state(state)
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v3.0",
        "status": "CURRENT",
        "version": format!("{}.{}", MAX_VERSION.0, MAX_VERSION.1),
        "min_version": "3.0",
        "updated": "2023-08-31T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{base}/v3/")}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.volume+json;version=3"}],
    })
}

async fn versions(State(s): State<VolumeApiState>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({"versions": [version_doc(&s.base_url)]})),
    )
        .into_response()
}

async fn version_v3(State(s): State<VolumeApiState>) -> Json<Value> {
    Json(json!({"versions": [version_doc(&s.base_url)]}))
}

/// `OpenStack-API-Version: volume X.Y`: none or `latest` or 3.0 is 3.0; above is 406.
async fn microversion(req: Request<Body>, next: Next) -> Response {
    let asked = req
        .headers()
        .get_all("openstack-api-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|part| {
            let mut it = part.split_whitespace();
            match (it.next(), it.next()) {
                (Some(svc), Some(ver)) if svc.eq_ignore_ascii_case("volume") => {
                    Some(ver.to_string())
                }
                _ => None,
            }
        });
    if let Some(raw) = asked.filter(|r| !r.eq_ignore_ascii_case("latest")) {
        let parsed = raw
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        let (status, msg) = match parsed {
            Some(v) if v == MAX_VERSION => (None, String::new()),
            Some(_) => (
                Some(StatusCode::NOT_ACCEPTABLE),
                format!(
                    "Version {raw} is not supported by the API. Minimum is 3.0 and maximum is 3.0."
                ),
            ),
            None => (
                Some(StatusCode::BAD_REQUEST),
                format!("Invalid API version request string {raw}"),
            ),
        };
        if let Some(status) = status {
            return (status, Json(error_body(ErrorFlavor::Nova, status, &msg))).into_response();
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        "openstack-api-version",
        HeaderValue::from_static("volume 3.0"),
    );
    h.insert(
        axum::http::header::VARY,
        HeaderValue::from_static("OpenStack-API-Version"),
    );
    resp
}

fn links(s: &VolumeApiState, project: &str, kind: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{}/v3/{project}/{kind}/{id}", s.base_url)},
        {"rel": "bookmark", "href": format!("{}/{project}/{kind}/{id}", s.base_url)},
    ])
}

fn render_volume(s: &VolumeApiState, ctx: &AuthContext, v: &VolumeRecord) -> Value {
    let (meta, image_meta) = VolumeService::metadata_of(v);
    let mut o = json!({
        "id": v.id,
        "name": v.name,
        "description": v.description,
        "size": v.size_gb,
        "status": v.status,
        "availability_zone": v.availability_zone,
        "bootable": if v.bootable { "true" } else { "false" },
        "encrypted": false,
        "multiattach": false,
        "replication_status": null,
        "consistencygroup_id": null,
        "source_volid": v.source_volid,
        "snapshot_id": v.snapshot_id,
        "volume_type": v.volume_type,
        "user_id": v.user_id,
        "os-vol-tenant-attr:tenant_id": v.project_id,
        "metadata": meta,
        "attachments": VolumeService::attachments(v, None),
        "links": links(s, &v.project_id, "volumes", &v.id),
        "created_at": v.created_at,
        "updated_at": v.updated_at,
    });
    if let Some(obj) = o.as_object_mut() {
        if !image_meta.is_empty() {
            obj.insert("volume_image_metadata".into(), Value::Object(image_meta));
        }
        if ctx.is_admin() {
            obj.insert(
                "os-vol-host-attr:host".into(),
                json!(format!("onestack@file#{}", DEFAULT_TYPE_NAME)),
            );
            obj.insert("os-vol-mig-status-attr:migstat".into(), Value::Null);
            obj.insert("os-vol-mig-status-attr:name_id".into(), Value::Null);
        }
        if let Some(e) = &v.error {
            // Why the last operation failed (a refused detach, a failed copy).
            obj.insert("error".into(), json!(e));
        }
    }
    o
}

fn render_snapshot(s: &SnapshotRecord) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "volume_id": s.volume_id,
        "size": s.size_gb,
        "status": s.status,
        "metadata": VolumeService::snapshot_metadata(s),
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "os-extended-snapshot-attributes:progress": if s.status == "available" { "100%" } else { "0%" },
        "os-extended-snapshot-attributes:project_id": s.project_id,
    })
}

fn default_type_doc() -> Value {
    json!({
        "id": DEFAULT_TYPE_ID,
        "name": DEFAULT_TYPE_NAME,
        "description": "Default Volume Type",
        "is_public": true,
        "os-volume-type-access:is_public": true,
        "extra_specs": {},
        "qos_specs_id": null,
    })
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "" | "1" | "true" | "t" | "yes" | "y" | "on"
        )
    })
}

/// Cinder's list filters and paging over records already scoped to the caller.
fn page<T, F: Fn(&T) -> (&str, Option<&str>, &str, &str)>(
    mut list: Vec<T>,
    q: &HashMap<String, String>,
    fields: F,
) -> ApiResult<Vec<T>> {
    if let Some(n) = q.get("name") {
        list.retain(|x| fields(x).1 == Some(n.as_str()));
    }
    if let Some(st) = q.get("status") {
        list.retain(|x| fields(x).2.eq_ignore_ascii_case(st));
    }
    let desc = q
        .get("sort_dir")
        .map(|d| d.as_str())
        .or_else(|| {
            q.get("sort")
                .and_then(|s| s.split_once(':').map(|(_, d)| d))
        })
        .is_none_or(|d| d != "asc");
    // Newest first by default, as Cinder lists.
    list.sort_by(|a, b| {
        fields(a)
            .3
            .cmp(fields(b).3)
            .then(fields(a).0.cmp(fields(b).0))
    });
    if desc {
        list.reverse();
    }
    if let Some(m) = q.get("marker") {
        match list.iter().position(|x| fields(x).0 == m) {
            Some(i) => {
                list.drain(..=i);
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: marker [{m}] not found"
                )))
            }
        }
    }
    if let Some(l) = q.get("limit") {
        let l: usize = l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("Invalid input received: limit {l}")))?;
        list.truncate(l);
    }
    Ok(list)
}

fn volume_fields(v: &VolumeRecord) -> (&str, Option<&str>, &str, &str) {
    (&v.id, v.name.as_deref(), &v.status, &v.created_at)
}

fn snapshot_fields(s: &SnapshotRecord) -> (&str, Option<&str>, &str, &str) {
    (&s.id, s.name.as_deref(), &s.status, &s.created_at)
}

async fn volumes_for(
    s: &VolumeApiState,
    ctx: &AuthContext,
    project: &str,
    q: &HashMap<String, String>,
) -> ApiResult<Vec<VolumeRecord>> {
    let list = s
        .volumes
        .list_in(ctx, project, flag(q, "all_tenants"))
        .await?;
    page(list, q, volume_fields)
}

async fn list_volumes(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let list = volumes_for(&s, &ctx, &project, &q).await?;
    let out: Vec<Value> = list
        .iter()
        .map(|v| json!({"id": v.id, "name": v.name, "links": links(&s, &v.project_id, "volumes", &v.id)}))
        .collect();
    Ok(Json(json!({"volumes": out})))
}

async fn list_volumes_detail(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let list = volumes_for(&s, &ctx, &project, &q).await?;
    let out: Vec<Value> = list.iter().map(|v| render_volume(&s, &ctx, v)).collect();
    Ok(Json(json!({"volumes": out})))
}

fn opt_string(o: &Map<String, Value>, k: &str) -> ApiResult<Option<String>> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {k}. Value must be a string."
        ))),
    }
}

/// Sizes arrive as numbers or numeric strings (the CLI sends numbers, some tools strings).
fn opt_size(o: &Map<String, Value>, k: &str) -> ApiResult<Option<i64>> {
    let bad = || {
        ApiError::bad_request(format!(
            "Invalid input received: {k} must be an integer and greater than 0."
        ))
    };
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(bad),
        Some(Value::String(t)) => t.trim().parse::<i64>().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

fn metadata_arg(v: Option<&Value>) -> ApiResult<Option<BTreeMap<String, String>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    return Err(ApiError::bad_request(
                        "Invalid input for field/attribute metadata. Values must be strings.",
                    ));
                };
                out.insert(k.clone(), v.to_string());
            }
            Ok(Some(out))
        }
        Some(_) => Err(ApiError::bad_request(
            "Invalid input for field/attribute metadata. Value must be an object.",
        )),
    }
}

fn object<'a>(body: &'a Value, key: &str) -> ApiResult<&'a Map<String, Value>> {
    body.get(key).and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad_request(format!("Missing required element '{key}' in request body."))
    })
}

async fn create_volume(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    s.volumes.check_url_project(&ctx, &project)?;
    let o = object(&body, "volume")?;
    let req = VolumeCreate {
        size: opt_size(o, "size")?,
        name: opt_string(o, "name")?.or(opt_string(o, "display_name")?),
        description: opt_string(o, "description")?.or(opt_string(o, "display_description")?),
        volume_type: opt_string(o, "volume_type")?,
        image_ref: opt_string(o, "imageRef")?.or(opt_string(o, "image_id")?),
        snapshot_id: opt_string(o, "snapshot_id")?,
        source_volid: opt_string(o, "source_volid")?,
        availability_zone: opt_string(o, "availability_zone")?,
        metadata: metadata_arg(o.get("metadata"))?.unwrap_or_default(),
    };
    let v = s.volumes.create(&ctx, req).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"volume": render_volume(&s, &ctx, &v)})),
    )
        .into_response())
}

async fn show_volume(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    s.volumes.check_url_project(&ctx, &project)?;
    let v = s.volumes.get(&ctx, &id).await?;
    Ok(Json(json!({"volume": render_volume(&s, &ctx, &v)})))
}

fn update_arg(o: &Map<String, Value>) -> ApiResult<VolumeUpdate> {
    let text = |k: &str, alt: &str| -> ApiResult<Option<Option<String>>> {
        let key = if o.contains_key(k) { k } else { alt };
        match o.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
            Some(_) => Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {k}. Value must be a string."
            ))),
        }
    };
    Ok(VolumeUpdate {
        name: text("name", "display_name")?,
        description: text("description", "display_description")?,
        metadata: metadata_arg(o.get("metadata"))?,
    })
}

async fn update_volume(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    s.volumes.check_url_project(&ctx, &project)?;
    let u = update_arg(object(&body, "volume")?)?;
    let v = s.volumes.update(&ctx, &id, u).await?;
    Ok(Json(json!({"volume": render_volume(&s, &ctx, &v)})))
}

async fn delete_volume(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    s.volumes.check_url_project(&ctx, &project)?;
    s.volumes.delete(&ctx, &id, flag(&q, "cascade")).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn volume_action(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    s.volumes.check_url_project(&ctx, &project)?;
    let Some((name, args)) = body.as_object().and_then(|o| o.iter().next()) else {
        return Err(ApiError::bad_request("There is no such action."));
    };
    let empty = Map::new();
    let a = args.as_object().unwrap_or(&empty);
    match name.as_str() {
        "os-extend" => {
            let size = opt_size(a, "new_size")?.ok_or_else(|| {
                ApiError::bad_request("Invalid input received: new_size is required.")
            })?;
            s.volumes.extend(&ctx, &id, size).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        "os-volume_upload_image" => {
            let image_name = opt_string(a, "image_name")?.ok_or_else(|| {
                ApiError::bad_request("Invalid input received: image_name is required.")
            })?;
            let disk_format = opt_string(a, "disk_format")?.unwrap_or_else(|| "qcow2".into());
            let force = match a.get("force") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(t)) => {
                    matches!(t.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
                }
                _ => false,
            };
            let (v, img) = s
                .volumes
                .upload_to_image(&ctx, &id, &image_name, &disk_format, force)
                .await?;
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"os-volume_upload_image": {
                    "id": v.id,
                    "updated_at": v.updated_at,
                    "status": v.status,
                    "display_description": v.description,
                    "size": v.size_gb,
                    "volume_type": default_type_doc(),
                    "image_id": img.id,
                    "container_format": img.container_format,
                    "disk_format": img.disk_format,
                    "image_name": img.name,
                    "protected": img.protected,
                    "visibility": img.visibility,
                }})),
            )
                .into_response())
        }
        "os-set_bootable" => {
            let b = match a.get("bootable") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(t)) => match t.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(ApiError::bad_request("Invalid value for bootable.")),
                },
                _ => return Err(ApiError::bad_request("Must specify bootable in request.")),
            };
            s.volumes.set_bootable(&ctx, &id, b).await?;
            Ok(StatusCode::OK.into_response())
        }
        "os-reset_status" => {
            let status = opt_string(a, "status")?
                .ok_or_else(|| ApiError::bad_request("Must specify 'status'"))?;
            s.volumes.reset_status(&ctx, &id, &status).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        other => Err(ApiError::bad_request(format!(
            "There is no such action: {other}"
        ))),
    }
}

async fn volume_metadata(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    s.volumes.check_url_project(&ctx, &project)?;
    let v = s.volumes.get(&ctx, &id).await?;
    Ok(Json(json!({"metadata": VolumeService::metadata_of(&v).0})))
}

async fn set_meta(
    s: &VolumeApiState,
    ctx: &AuthContext,
    project: &str,
    id: &str,
    body: &Value,
    replace: bool,
) -> ApiResult<Json<Value>> {
    s.volumes.check_url_project(ctx, project)?;
    let m = metadata_arg(body.get("metadata"))?
        .ok_or_else(|| ApiError::bad_request("Malformed request body: metadata is required."))?;
    let all = s.volumes.set_metadata(ctx, id, m, replace).await?;
    Ok(Json(json!({"metadata": all})))
}

async fn merge_volume_metadata(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    set_meta(&s, &ctx, &project, &id, &body, false).await
}

async fn replace_volume_metadata(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    set_meta(&s, &ctx, &project, &id, &body, true).await
}

async fn volume_metadata_item(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id, key)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    s.volumes.check_url_project(&ctx, &project)?;
    let v = s.volumes.get(&ctx, &id).await?;
    let (meta, _) = VolumeService::metadata_of(&v);
    match meta.get(&key) {
        Some(val) => Ok(Json(json!({"meta": {key: val}}))),
        None => Err(ApiError::not_found(format!(
            "Volume {id} has no metadata with key {key}."
        ))),
    }
}

async fn put_volume_metadata_item(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id, key)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    s.volumes.check_url_project(&ctx, &project)?;
    let m = metadata_arg(body.get("meta"))?
        .ok_or_else(|| ApiError::bad_request("Malformed request body: meta is required."))?;
    if m.len() != 1 || !m.contains_key(&key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    s.volumes.set_metadata(&ctx, &id, m.clone(), false).await?;
    Ok(Json(json!({"meta": m})))
}

async fn delete_volume_metadata_item(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id, key)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    s.volumes.check_url_project(&ctx, &project)?;
    s.volumes.delete_metadata_key(&ctx, &id, &key).await?;
    Ok(StatusCode::OK)
}

// ---- snapshots ----

async fn snapshots_for(
    s: &VolumeApiState,
    ctx: &AuthContext,
    project: &str,
    q: &HashMap<String, String>,
) -> ApiResult<Vec<SnapshotRecord>> {
    s.volumes.check_url_project(ctx, project)?;
    let mut list = s
        .volumes
        .list_snapshots(ctx, flag(q, "all_tenants"))
        .await?;
    if let Some(v) = q.get("volume_id") {
        list.retain(|x| &x.volume_id == v);
    }
    page(list, q, snapshot_fields)
}

async fn list_snapshots(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let list = snapshots_for(&s, &ctx, &project, &q).await?;
    let out: Vec<Value> = list.iter().map(render_snapshot).collect();
    Ok(Json(json!({"snapshots": out})))
}

async fn list_snapshots_detail(
    state: State<VolumeApiState>,
    auth: Auth,
    project: Path<String>,
    q: Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list_snapshots(state, auth, project, q).await
}

async fn create_snapshot(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    s.volumes.check_url_project(&ctx, &project)?;
    let o = object(&body, "snapshot")?;
    let volume_id = opt_string(o, "volume_id")?
        .ok_or_else(|| ApiError::bad_request("Invalid input received: volume_id is required."))?;
    let force = match o.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(t)) => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "y" | "on" => true,
            "false" | "0" | "no" | "n" | "off" => false,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Invalid value '{t}' for force."
                )))
            }
        },
        Some(_) => return Err(ApiError::bad_request("Invalid value for force.")),
    };
    let snap = s
        .volumes
        .create_snapshot(
            &ctx,
            &volume_id,
            opt_string(o, "name")?.or(opt_string(o, "display_name")?),
            opt_string(o, "description")?.or(opt_string(o, "display_description")?),
            force,
            metadata_arg(o.get("metadata"))?.unwrap_or_default(),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"snapshot": render_snapshot(&snap)})),
    )
        .into_response())
}

async fn show_snapshot(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    s.volumes.check_url_project(&ctx, &project)?;
    let snap = s.volumes.get_snapshot(&ctx, &id).await?;
    Ok(Json(json!({"snapshot": render_snapshot(&snap)})))
}

async fn update_snapshot(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    s.volumes.check_url_project(&ctx, &project)?;
    let u = update_arg(object(&body, "snapshot")?)?;
    let snap = s.volumes.update_snapshot(&ctx, &id, u).await?;
    Ok(Json(json!({"snapshot": render_snapshot(&snap)})))
}

async fn delete_snapshot(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.volumes.check_url_project(&ctx, &project)?;
    s.volumes.delete_snapshot(&ctx, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

// ---- types, quotas, limits, zones ----

async fn list_types(Auth(_ctx): Auth) -> Json<Value> {
    Json(json!({"volume_types": [default_type_doc()]}))
}

async fn default_type(Auth(_ctx): Auth) -> Json<Value> {
    Json(json!({"volume_type": default_type_doc()}))
}

async fn show_type(
    Auth(_ctx): Auth,
    Path((_project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    if id == DEFAULT_TYPE_ID || id == DEFAULT_TYPE_NAME {
        Ok(Json(json!({"volume_type": default_type_doc()})))
    } else {
        Err(ApiError::not_found(format!(
            "Volume type {id} could not be found."
        )))
    }
}

fn quota_doc(project: &str, q: &VolumeQuota) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(project));
    for r in QUOTA_RESOURCES {
        o.insert(r.into(), json!(q.get(r)));
    }
    // Per-type quotas of the one type.
    o.insert(format!("volumes_{DEFAULT_TYPE_NAME}"), json!(-1));
    o.insert(format!("gigabytes_{DEFAULT_TYPE_NAME}"), json!(-1));
    o.insert(format!("snapshots_{DEFAULT_TYPE_NAME}"), json!(-1));
    Value::Object(o)
}

async fn show_quota(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((_project, target)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    s.volumes.check_quota_read(&ctx, &target)?;
    let quota = s.volumes.quota(&target).await?;
    if !flag(&q, "usage") {
        return Ok(Json(json!({"quota_set": quota_doc(&target, &quota)})));
    }
    let u = s.volumes.usage(&target).await?;
    let mut o = Map::new();
    o.insert("id".into(), json!(target));
    for r in QUOTA_RESOURCES {
        let in_use = match r {
            "volumes" => u.volumes,
            "gigabytes" => u.gigabytes(),
            "snapshots" => u.snapshots,
            _ => 0,
        };
        o.insert(
            r.into(),
            json!({"limit": quota.get(r), "in_use": in_use, "reserved": 0}),
        );
    }
    Ok(Json(json!({"quota_set": o})))
}

async fn default_quota(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((_project, target)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let q = s.volumes.default_quota_of(&ctx, &target)?;
    Ok(Json(json!({"quota_set": quota_doc(&target, &q)})))
}

async fn update_quota(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((_project, target)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let o = object(&body, "quota_set")?;
    let mut values = BTreeMap::new();
    for (k, v) in o {
        if k == "id" || k == "tenant_id" || k.contains(DEFAULT_TYPE_NAME) {
            continue;
        }
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(t) => t.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| ApiError::bad_request(format!("Quota value for {k} must be an integer.")))?;
        values.insert(k.clone(), n);
    }
    let q = s.volumes.set_quota(&ctx, &target, &values).await?;
    let mut doc = quota_doc(&target, &q);
    if let Some(m) = doc.as_object_mut() {
        m.remove("id");
    }
    Ok(Json(json!({"quota_set": doc})))
}

async fn delete_quota(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path((_project, target)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.volumes.delete_quota(&ctx, &target).await?;
    Ok(StatusCode::OK)
}

async fn limits(
    State(s): State<VolumeApiState>,
    Auth(ctx): Auth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    s.volumes.check_url_project(&ctx, &project)?;
    let q = s.volumes.quota(&project).await?;
    let u = s.volumes.usage(&project).await?;
    Ok(Json(json!({"limits": {"rate": [], "absolute": {
        "maxTotalVolumes": q.volumes,
        "maxTotalSnapshots": q.snapshots,
        "maxTotalVolumeGigabytes": q.gigabytes,
        "maxTotalBackups": q.backups,
        "maxTotalBackupGigabytes": q.backup_gigabytes,
        "totalVolumesUsed": u.volumes,
        "totalSnapshotsUsed": u.snapshots,
        "totalGigabytesUsed": u.gigabytes(),
        "totalBackupsUsed": 0,
        "totalBackupGigabytesUsed": 0,
    }}})))
}

async fn availability_zones(State(s): State<VolumeApiState>, Auth(_ctx): Auth) -> Json<Value> {
    Json(json!({"availabilityZoneInfo": [{
        "zoneName": s.volumes.config().availability_zone,
        "zoneState": {"available": true},
    }]}))
}

async fn extensions(Auth(_ctx): Auth) -> Json<Value> {
    Json(json!({"extensions": []}))
}
