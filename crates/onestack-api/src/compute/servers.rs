//! `/servers`: create (202), list and detail with filters and paging, show, update, delete
//! (204), actions, addresses and metadata — Nova v2.1's shapes and status codes.

use super::{render, ComputeState};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use onestack_core::compute::state::Action;
use onestack_core::compute::{RequestedNetwork, ServerCreate, ServerQuery};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Deserialize)]
pub struct ServerPath {
    id: String,
}

#[derive(Deserialize)]
pub struct MetaPath {
    id: String,
    key: String,
}

fn bool_param(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "1" | "true" | "t" | "yes" | "y" | "on"
    )
}

fn query(q: &HashMap<String, String>) -> ApiResult<ServerQuery> {
    let limit = match q.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("Invalid limit [{l}]")))?,
        ),
        None => None,
    };
    Ok(ServerQuery {
        all_tenants: q
            .get("all_tenants")
            .is_some_and(|v| v.is_empty() || bool_param(v)),
        project_id: q.get("project_id").or(q.get("tenant_id")).cloned(),
        name: q.get("name").cloned(),
        status: q.get("status").cloned(),
        image: q.get("image").cloned(),
        flavor: q.get("flavor").cloned(),
        host: q.get("host").cloned(),
        reservation_id: q.get("reservation_id").cloned(),
        changes_since: q.get("changes-since").cloned(),
        deleted: q.get("deleted").is_some_and(|v| bool_param(v)),
        marker: q.get("marker").cloned(),
        limit,
        sort_key: q
            .get("sort_key")
            .cloned()
            .unwrap_or_else(|| "created_at".into()),
        sort_desc: q.get("sort_dir").is_none_or(|d| d != "asc"),
    })
}

fn next_link(
    s: &ComputeState,
    detail: bool,
    list: &[Value],
    limit: Option<usize>,
) -> Option<Value> {
    let l = limit?;
    if list.len() < l || l == 0 {
        return None;
    }
    let last = list.last()?.get("id")?.as_str()?;
    let path = if detail { "servers/detail" } else { "servers" };
    Some(
        json!([{"rel": "next", "href": format!("{}/v2.1/{path}?limit={l}&marker={last}", s.base_url)}]),
    )
}

pub async fn list(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let sq = query(&q)?;
    let list = s.compute.list_servers(&ctx, &sq).await?;
    let v: Vec<Value> = list.iter().map(|i| render::server_brief(&s, i)).collect();
    let mut out = json!({"servers": v});
    if let (Some(links), Some(o)) = (next_link(&s, false, &v, sq.limit), out.as_object_mut()) {
        o.insert("servers_links".into(), links);
    }
    Ok(Json(out))
}

pub async fn list_detail(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let sq = query(&q)?;
    let list = s.compute.list_servers(&ctx, &sq).await?;
    let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
    let mut addrs = s.compute.addresses(&ids).await?;
    let mut v: Vec<Value> = list
        .iter()
        .map(|i| {
            render::server(
                &s,
                &ctx,
                i,
                addrs.remove(&i.id).unwrap_or_else(|| json!({})),
            )
        })
        .collect();
    for (doc, i) in v.iter_mut().zip(&list) {
        with_volumes(&s, doc, &i.id).await?;
    }
    let mut out = json!({"servers": v});
    if let (Some(links), Some(o)) = (next_link(&s, true, &v, sq.limit), out.as_object_mut()) {
        o.insert("servers_links".into(), links);
    }
    Ok(Json(out))
}

pub async fn show(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<ServerPath>,
) -> ApiResult<Json<Value>> {
    let i = s.compute.get_server(&ctx, &p.id).await?;
    let mut doc = render::server(&s, &ctx, &i, addresses_of(&s, &i.id).await?);
    with_volumes(&s, &mut doc, &i.id).await?;
    Ok(Json(json!({"server": doc})))
}

/// `os-extended-volumes:volumes_attached`: the server's volumes, root volume first.
async fn with_volumes(s: &ComputeState, doc: &mut Value, id: &str) -> ApiResult<()> {
    let vols = s.compute.volumes_of(id).await?;
    if let Some(o) = doc.as_object_mut() {
        o.insert(
            "os-extended-volumes:volumes_attached".into(),
            vols.iter().map(|v| json!({"id": v.id})).collect(),
        );
    }
    Ok(())
}

async fn addresses_of(s: &ComputeState, id: &str) -> ApiResult<Value> {
    Ok(s.compute
        .addresses(&[id])
        .await?
        .remove(id)
        .unwrap_or_else(|| json!({})))
}

fn bad_field(name: &str) -> ApiError {
    ApiError::bad_request(format!("Invalid input for field/attribute {name}."))
}

fn opt_string(o: &Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_field(key)),
    }
}

fn count(o: &Map<String, Value>, key: &str) -> ApiResult<Option<i64>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| bad_field(key)),
        Some(Value::String(t)) => t
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| bad_field(key)),
        Some(_) => Err(bad_field(key)),
    }
}

pub fn string_map(v: Option<&Value>, what: &str) -> ApiResult<BTreeMap<String, String>> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(ApiError::bad_request(format!(
                    "Invalid input for field/attribute {what}: values must be strings."
                ))),
            })
            .collect(),
        Some(_) => Err(bad_field(what)),
    }
}

const CREATE_KEYS: &[&str] = &[
    "name",
    "imageRef",
    "flavorRef",
    "adminPass",
    "metadata",
    "networks",
    "OS-DCF:diskConfig",
    "accessIPv4",
    "accessIPv6",
    "personality",
    "key_name",
    "user_data",
    "availability_zone",
    "security_groups",
    "min_count",
    "max_count",
    "return_reservation_id",
    "config_drive",
    "block_device_mapping_v2",
    "block_device_mapping",
];

fn parse_create(body: &Value) -> ApiResult<(ServerCreate, bool)> {
    let o = body
        .get("server")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Invalid input: 'server' is a required property"))?;
    if let Some(k) = o.keys().find(|k| !CREATE_KEYS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute server. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let name = opt_string(o, "name")?.ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute server. 'name' is a required property",
        )
    })?;
    let flavor_ref = match o.get("flavorRef") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute flavorRef.",
            ))
        }
    };
    let mut image_ref = opt_string(o, "imageRef")?.unwrap_or_default();
    // OSC sends the image both as imageRef and as a local-disk image mapping; a boot device
    // of destination `volume` boots from a volume (an existing one, or one made from an image).
    let mut block_devices = Vec::new();
    if let Some(bdms) = o.get("block_device_mapping_v2").filter(|v| !v.is_null()) {
        let list = bdms
            .as_array()
            .ok_or_else(|| bad_field("block_device_mapping_v2"))?;
        for b in list {
            let bd = block_device(b)?;
            if bd.source_type == "image" && bd.destination_type == "local" {
                if image_ref.is_empty() {
                    image_ref = bd.uuid.clone().unwrap_or_default();
                }
            } else if bd.destination_type == "volume" && bd.boot_index == Some(0) {
                block_devices.push(bd);
            } else {
                return Err(ApiError::bad_request(
                    "Block Device Mapping is Invalid: only the boot device (an image on the local disk, or a volume with boot_index 0) is supported; attach other volumes after the server is created.",
                ));
            }
        }
    }
    if o.get("block_device_mapping").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request(
            "Legacy block device mappings are not supported.",
        ));
    }
    let networks = match o.get("networks") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for n in list {
                let n: RequestedNetwork =
                    serde_json::from_value(n.clone()).map_err(|_| bad_field("networks"))?;
                if n.uuid.is_none() && n.port.is_none() {
                    return Err(ApiError::bad_request(
                        "Bad networks format: network uuid is not in proper format",
                    ));
                }
                out.push(n);
            }
            Some(out)
        }
        // "auto" and "none" exist from microversion 2.37.
        Some(_) => return Err(bad_field("networks")),
    };
    let security_groups = match o.get("security_groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|g| {
                g.get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad_field("security_groups"))
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => return Err(bad_field("security_groups")),
    };
    let config_drive = match o.get("config_drive") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty() && bool_param(s),
        Some(_) => return Err(bad_field("config_drive")),
    };
    let min_count = count(o, "min_count")?.unwrap_or(1);
    let max_count = count(o, "max_count")?.unwrap_or(min_count);
    let return_reservation = match o.get("return_reservation_id") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => bool_param(s),
        Some(_) => return Err(bad_field("return_reservation_id")),
    };
    if let Some(d) = o.get("OS-DCF:diskConfig") {
        if !matches!(d.as_str(), Some("AUTO") | Some("MANUAL")) {
            return Err(bad_field("OS-DCF:diskConfig"));
        }
    }
    if o.get("personality")
        .is_some_and(|p| p.as_array().is_some_and(|a| !a.is_empty()))
    {
        return Err(ApiError::bad_request(
            "Personality files are not supported; use user_data.",
        ));
    }
    Ok((
        ServerCreate {
            name,
            image_ref,
            flavor_ref,
            key_name: opt_string(o, "key_name")?,
            user_data: opt_string(o, "user_data")?,
            metadata: string_map(o.get("metadata"), "metadata")?,
            availability_zone: opt_string(o, "availability_zone")?.filter(|z| !z.is_empty()),
            security_groups,
            networks,
            config_drive,
            min_count,
            max_count,
            description: None,
            access_ipv4: opt_string(o, "accessIPv4")?,
            access_ipv6: opt_string(o, "accessIPv6")?,
            block_devices,
        },
        return_reservation,
    ))
}

fn admin_pass() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// One `block_device_mapping_v2` entry, types checked.
fn block_device(b: &Value) -> ApiResult<onestack_core::compute::volumes::BlockDevice> {
    let o = b
        .as_object()
        .ok_or_else(|| bad_field("block_device_mapping_v2"))?;
    let text = |k: &str| -> ApiResult<Option<String>> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad_field(k)),
        }
    };
    let int = |k: &str| -> ApiResult<Option<i64>> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| bad_field(k)),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad_field(k)),
            Some(_) => Err(bad_field(k)),
        }
    };
    let delete_on_termination = match o.get("delete_on_termination") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => bool_param(s),
        Some(_) => return Err(bad_field("delete_on_termination")),
    };
    Ok(onestack_core::compute::volumes::BlockDevice {
        source_type: text("source_type")?.unwrap_or_default(),
        destination_type: text("destination_type")?.unwrap_or_else(|| "local".into()),
        uuid: text("uuid")?,
        volume_size: int("volume_size")?,
        boot_index: int("boot_index")?,
        delete_on_termination,
    })
}

pub async fn create(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    let (req, return_reservation) = parse_create(&body)?;
    let created = s.compute.create_servers(&ctx, req).await?;
    let first = created
        .first()
        .ok_or_else(|| ApiError::bad_request("No server was created."))?;
    if return_reservation {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"reservation_id": first.reservation_id})),
        )
            .into_response());
    }
    let groups: Vec<String> = serde_json::from_str(&first.security_groups).unwrap_or_default();
    let body = json!({"server": {
        "id": first.id,
        "links": render::server_brief(&s, first)["links"],
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": groups.iter().map(|g| json!({"name": g})).collect::<Vec<_>>(),
        "adminPass": admin_pass(),
    }});
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{}/v2.1/servers/{}", s.base_url, first.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

pub async fn update(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<ServerPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let o = body
        .get("server")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Invalid input: 'server' is a required property"))?;
    for k in o.keys() {
        if !["name", "accessIPv4", "accessIPv6", "OS-DCF:diskConfig"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
    }
    let name = opt_string(o, "name")?;
    let i = s.compute.update_server(&ctx, &p.id, name, None).await?;
    Ok(Json(
        json!({"server": render::server(&s, &ctx, &i, addresses_of(&s, &i.id).await?)}),
    ))
}

pub async fn delete(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<ServerPath>,
) -> ApiResult<StatusCode> {
    s.compute.delete_server(&ctx, &p.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn ips(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<ServerPath>,
) -> ApiResult<Json<Value>> {
    s.compute.get_server(&ctx, &p.id).await?;
    Ok(Json(json!({"addresses": addresses_of(&s, &p.id).await?})))
}

/// `POST /servers/{id}/action`: exactly one action key.
pub async fn action(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<ServerPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    let o = body
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| ApiError::bad_request("The action body must name exactly one action."))?;
    let Some((name, arg)) = o.iter().next() else {
        return Err(ApiError::bad_request(
            "The action body must name exactly one action.",
        ));
    };
    let simple = match name.as_str() {
        "os-stop" => Some(Action::Stop),
        "os-start" => Some(Action::Start),
        "pause" => Some(Action::Pause),
        "unpause" => Some(Action::Unpause),
        "suspend" => Some(Action::Suspend),
        "resume" => Some(Action::Resume),
        "reboot" => {
            let t = arg
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_field("type"))?;
            match t.to_ascii_uppercase().as_str() {
                "SOFT" => Some(Action::Reboot { hard: false }),
                "HARD" => Some(Action::Reboot { hard: true }),
                _ => return Err(ApiError::bad_request(format!(
                    "Invalid input for field/attribute type. Value: {t}. '{t}' is not one of ['HARD', 'Hard', 'hard', 'SOFT', 'Soft', 'soft']"
                ))),
            }
        }
        _ => None,
    };
    if let Some(a) = simple {
        s.compute.act(&ctx, &p.id, a).await?;
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    match name.as_str() {
        "lock" | "unlock" => {
            s.compute.set_locked(&ctx, &p.id, name == "lock").await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        "addSecurityGroup" | "removeSecurityGroup" => {
            let group = arg
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.trim().is_empty())
                .ok_or_else(|| bad_field("name"))?;
            s.compute
                .change_security_group(&ctx, &p.id, group, name == "addSecurityGroup")
                .await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        "createImage" => {
            let image_name = arg
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_field("name"))?;
            let meta = string_map(arg.get("metadata"), "metadata")?;
            let image_id = s
                .compute
                .create_image(&ctx, &p.id, image_name, meta)
                .await?;
            let mut resp = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("{}/v2/images/{image_id}", s.image_url)) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
        "resize" => {
            let flavor = match arg.get("flavorRef") {
                Some(Value::String(f)) if !f.is_empty() => f.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(bad_field("flavorRef")),
            };
            s.compute.resize(&ctx, &p.id, &flavor).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        "migrate" => {
            // At 2.1 the body is null; a target host (2.56) is taken too.
            let host = match arg.get("host") {
                None | Some(Value::Null) => None,
                Some(Value::String(h)) if !h.is_empty() => Some(h.as_str()),
                _ => return Err(bad_field("host")),
            };
            let url = super::internal::disk_url(&s, &ctx, &p.id).await?;
            s.compute.cold_migrate(&ctx, &p.id, host, url).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        "os-migrateLive" => {
            let host = match arg.get("host") {
                None | Some(Value::Null) => None,
                Some(Value::String(h)) if !h.is_empty() => Some(h.as_str()),
                _ => return Err(bad_field("host")),
            };
            // block_migration: "auto", true or false; without shared storage it always is one.
            match arg.get("block_migration") {
                None | Some(Value::Null) | Some(Value::Bool(_)) => {}
                Some(Value::String(v)) if v == "auto" || v == "true" || v == "false" => {}
                Some(_) => return Err(bad_field("block_migration")),
            }
            s.compute.live_migrate(&ctx, &p.id, host).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        "confirmResize" => {
            s.compute.confirm_resize(&ctx, &p.id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        "revertResize" => {
            s.compute.revert_resize(&ctx, &p.id).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        "createBackup" => {
            let o = arg.as_object().ok_or_else(|| bad_field("createBackup"))?;
            for k in o.keys() {
                if !matches!(k.as_str(), "name" | "backup_type" | "rotation" | "metadata") {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for field/attribute createBackup. Additional properties are not allowed ('{k}' was unexpected)"
                    )));
                }
            }
            let image_name = o
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_field("name"))?;
            let backup_type = o
                .get("backup_type")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_field("backup_type"))?;
            let rotation = match o.get("rotation") {
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::String(t)) => t.trim().parse().ok(),
                _ => None,
            }
            .ok_or_else(|| bad_field("rotation"))?;
            let meta = string_map(o.get("metadata"), "metadata")?;
            let image_id = s
                .compute
                .create_backup(&ctx, &p.id, image_name, backup_type, rotation, meta)
                .await?;
            let mut resp = StatusCode::ACCEPTED.into_response();
            // Below 2.45 the new image is in Location, and only when one is kept.
            if rotation > 0 {
                if let Ok(v) =
                    HeaderValue::from_str(&format!("{}/v2/images/{image_id}", s.image_url))
                {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
            }
            Ok(resp)
        }
        "os-getConsoleOutput" => {
            let length = match arg.get("length") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::String(t)) => t.parse::<i64>().ok(),
                Some(_) => return Err(bad_field("length")),
            };
            if length.is_some_and(|l| l < -1) {
                return Err(bad_field("length"));
            }
            let output = super::internal::console_output(&s, &ctx, &p.id, length).await?;
            Ok(Json(json!({"output": output})).into_response())
        }
        "rebuild" => {
            let image = arg
                .get("imageRef")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_field("imageRef"))?;
            let new_name = arg.get("name").and_then(Value::as_str).map(str::to_string);
            let i = s.compute.rebuild(&ctx, &p.id, image, new_name).await?;
            let mut v = render::server(&s, &ctx, &i, addresses_of(&s, &i.id).await?);
            if let Some(o) = v.as_object_mut() {
                o.insert("adminPass".into(), json!(admin_pass()));
            }
            Ok((StatusCode::ACCEPTED, Json(json!({"server": v}))).into_response())
        }
        "os-getSerialConsole" => {
            let t = arg.get("type").and_then(Value::as_str).unwrap_or("");
            if t != "serial" {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for field/attribute type. Value: {t}. '{t}' is not one of ['serial']"
                )));
            }
            let url = super::internal::serial_console_url(&s, &ctx, &p.id).await?;
            Ok(Json(json!({"console": {"type": "serial", "url": url}})).into_response())
        }
        "os-getVNCConsole" | "os-getSPICEConsole" | "os-getRDPConsole" => {
            // The policy and the server first (404, 403), as Nova answers, then the type.
            s.compute
                .console_host(&ctx, &p.id, "os_compute_api:os-remote-consoles")
                .await?;
            Err(ApiError::bad_request(
                "Unavailable console type: this cloud offers the serial console (os-getSerialConsole).",
            ))
        }
        other => Err(ApiError::bad_request(format!(
            "There is no such action: {other}"
        ))),
    }
}

pub async fn metadata(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<ServerPath>,
) -> ApiResult<Json<Value>> {
    let i = s.compute.get_server(&ctx, &p.id).await?;
    Ok(Json(json!({"metadata": i.metadata})))
}

pub async fn merge_metadata(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<ServerPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let meta = string_map(
        Some(body.get("metadata").unwrap_or(&Value::Bool(false))),
        "metadata",
    )?;
    let all = s.compute.set_metadata(&ctx, &p.id, meta, false).await?;
    Ok(Json(json!({"metadata": all})))
}

pub async fn replace_metadata(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<ServerPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let meta = string_map(
        Some(body.get("metadata").unwrap_or(&Value::Bool(false))),
        "metadata",
    )?;
    let all = s.compute.set_metadata(&ctx, &p.id, meta, true).await?;
    Ok(Json(json!({"metadata": all})))
}

pub async fn metadata_item(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<MetaPath>,
) -> ApiResult<Json<Value>> {
    let i = s.compute.get_server(&ctx, &p.id).await?;
    match i.metadata.get(&p.key) {
        Some(v) => Ok(Json(json!({"meta": {p.key.clone(): v}}))),
        None => Err(ApiError::not_found(format!(
            "Metadata item was not found: {}",
            p.key
        ))),
    }
}

pub async fn put_metadata_item(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<MetaPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let meta = string_map(
        Some(body.get("meta").unwrap_or(&Value::Bool(false))),
        "meta",
    )?;
    if meta.len() != 1 || !meta.contains_key(&p.key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    s.compute
        .set_metadata(&ctx, &p.id, meta.clone(), false)
        .await?;
    Ok(Json(json!({"meta": meta})))
}

pub async fn delete_metadata_item(
    State(s): State<ComputeState>,
    Auth(ctx): Auth,
    Path(p): Path<MetaPath>,
) -> ApiResult<StatusCode> {
    s.compute.delete_metadata(&ctx, &p.id, &p.key).await?;
    Ok(StatusCode::NO_CONTENT)
}
