//! The internal API compute agents use: register, heartbeat, long-poll desired state, report,
//! fetch images and upload snapshots. Authenticated by a secret in a header, compared in constant
//! time: the controller's own agent holds the shared secret; each joined compute node holds its
//! own credential (`<host>:<secret>`, from `POST /join`), which reaches only that host's routes and
//! is revoked when the host is removed. Never in the catalog.

use super::ComputeState;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::Listed;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use onestack_core::compute::proto;
use onestack_core::policy::AuthContext;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

pub const AGENT_TOKEN_HEADER: &str = "x-onestack-agent-token";

/// Largest console output returned (Nova's `MAX_CONSOLE_BYTES`).
const MAX_CONSOLE_BYTES: i64 = 100 * 1024;

/// The agents' routes; `agent_auth` puts the credential check over all but `/join`.
pub fn routes(
    agent_auth: impl FnOnce(Router<ComputeState>) -> Router<ComputeState>,
) -> Listed<ComputeState> {
    Listed::new()
        .route("/hosts", post(register))
        .route("/hosts/{host}", get(host_status).delete(host_leave))
        .route("/hosts/{host}/heartbeat", post(heartbeat))
        .route("/hosts/{host}/desired", get(desired))
        .route("/hosts/{host}/network", get(network_state))
        .route("/metadata/{network}/{ip}", get(metadata))
        .route("/hosts/{host}/instances/{id}/report", post(report))
        .route(
            "/hosts/{host}/instances/{id}/volumes/{volume}",
            post(volume_report),
        )
        .route(
            "/hosts/{host}/instances/{id}/migration",
            post(migration_report),
        )
        .route("/images/{id}/file", get(image_file).put(snapshot_upload))
        .map(agent_auth)
        // The one route a host without credentials may call: it proves itself with a join token.
        .route("/join", post(join))
        .map(|r| r.layer(axum::middleware::from_fn(refuse_guests)))
}

/// The internal API shares the compute port, which guests may reach (it is public); a guest's
/// connection finds no internal API there, as with any path compute does not have.
async fn refuse_guests(req: Request<Body>, next: Next) -> Response {
    let from_guest = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::Peer>>()
        .is_some_and(|c| c.0.from_guest);
    if from_guest {
        return ApiError::not_found("The resource could not be found.").into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The compute node a request comes from when it used a node credential (not the controller's
/// own agent's shared secret).
#[derive(Clone, Debug)]
pub struct NodeIdentity(pub String);

pub(super) async fn require_agent(
    State(s): State<ComputeState>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(AGENT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !s.agent_token.is_empty() && constant_time_eq(given.as_bytes(), s.agent_token.as_bytes()) {
        return next.run(req).await;
    }
    let node = match onestack_core::compute::join::node_of(
        s.compute.store(),
        &s.agent_token,
        &given,
    )
    .await
    {
        Ok(n) => n,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(host) = node else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "agent authentication failed")
            .into_response();
    };
    if !node_may(&host, req.method(), req.uri().path()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("compute node {host} may not do that"),
        )
        .into_response();
    }
    req.extensions_mut().insert(NodeIdentity(host));
    next.run(req).await
}

/// What a joined compute node may reach: its own host's routes, registration (of itself, checked
/// by the handler) and image data; not other hosts, nor the metadata lookups of the network node.
fn node_may(host: &str, method: &axum::http::Method, path: &str) -> bool {
    let path = path.strip_prefix("/internal/v1").unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["hosts"] => method == axum::http::Method::POST,
        ["hosts", h, ..] => *h == host,
        ["images", _, "file"] => true,
        _ => false,
    }
}

async fn register(
    State(s): State<ComputeState>,
    node: Option<axum::Extension<NodeIdentity>>,
    JsonBody(body): JsonBody<proto::RegisterHost>,
) -> ApiResult<Json<proto::Registered>> {
    if let Some(axum::Extension(NodeIdentity(me))) = node {
        if me != body.host {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("compute node {me} cannot register as {}", body.host),
            ));
        }
    }
    let h = s.compute.register_host(body).await?;
    Ok(Json(proto::Registered { id: h.id }))
}

/// What `onestack join` sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    token: String,
    host: String,
    /// `compute` (the default) or `controller`; the token must have been minted for it.
    #[serde(default)]
    role: Option<String>,
}

/// Trades a one-time join token for the agent credentials and the settings a compute node must
/// share with the controller.
async fn join(
    State(s): State<ComputeState>,
    JsonBody(body): JsonBody<JoinRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let host = body.host.trim();
    if host.is_empty()
        || host.len() > 63
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(ApiError::bad_request(
            "invalid host name: letters, digits, '-', '.' and '_' only (at most 63)",
        ));
    }
    // A live host of that name would be taken over by the newcomer.
    if let Ok(existing) = s.compute.store().get_host_by_name(host).await {
        if s.compute.host_alive(&existing) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a compute host named {host} is already up; choose another --host"),
            ));
        }
    }
    use onestack_core::compute::join::{redeem, JoinRole};
    let role = match body.role.as_deref() {
        None | Some("compute") => JoinRole::Compute,
        Some("controller") => JoinRole::Controller,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid role {other:?}: compute or controller"
            )))
        }
    };
    if role == JoinRole::Controller {
        // Another controller: the cloud's shared secret, its database and passwords. Refused
        // (token kept) when this controller has none to give, e.g. its state is in SQLite.
        let Some(extra) = s.controller_join.as_deref() else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "this cloud keeps its state in SQLite on its controller, so it cannot have \
                 another controller; move it to PostgreSQL first (onestack db \
                 migrate-from-sqlite --to postgresql://…)",
            ));
        };
        redeem(s.compute.store(), &body.token, host, role).await?;
        tracing::info!(host, "a controller joined");
        let mut answer = extra.clone();
        if let Some(o) = answer.as_object_mut() {
            o.insert("role".into(), "controller".into());
            o.insert("agent_secret".into(), s.agent_token.to_string().into());
            o.insert(
                "service_down_time".into(),
                s.compute.config().service_down_time.as_secs().into(),
            );
        }
        return Ok(Json(answer));
    }
    redeem(s.compute.store(), &body.token, host, role).await?;
    let credential =
        onestack_core::compute::join::node_credential(s.compute.store(), &s.agent_token, host)
            .await?;
    tracing::info!(host, "a compute node joined");
    let cfg = s.compute.config();
    let namespace_prefix = s
        .compute
        .network()
        .map(|n| n.config().namespace_prefix.clone())
        .unwrap_or_default();
    Ok(Json(serde_json::json!({
        "role": "compute",
        "agent_token": credential,
        "service_down_time": cfg.service_down_time.as_secs(),
        "namespace_prefix": namespace_prefix,
    })))
}

/// A host as the controller sees it (`onestack join` waits for it to be up).
async fn host_status(
    State(s): State<ComputeState>,
    Path(p): Path<HostPath>,
) -> ApiResult<Json<serde_json::Value>> {
    let h = s
        .compute
        .store()
        .get_host_by_name(&p.host)
        .await
        .map_err(|e| {
            ApiError::from(onestack_core::CoreError::from_store(
                e,
                "compute host",
                &p.host,
            ))
        })?;
    let usage = s.compute.host_usage().await?;
    Ok(Json(serde_json::json!({
        "host": h.host,
        "host_ip": h.host_ip,
        "state": if s.compute.host_alive(&h) { "up" } else { "down" },
        "status": if h.enabled { "enabled" } else { "disabled" },
        "instances": usage.get(&h.host).map_or(0, |u| u.instances),
    })))
}

/// `onestack leave`: removes the host, refused (409) while it still holds servers.
async fn host_leave(
    State(s): State<ComputeState>,
    Path(p): Path<HostPath>,
) -> ApiResult<StatusCode> {
    s.compute.remove_host(&p.host).await?;
    tracing::info!(host = %p.host, "a compute node left");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct HostPath {
    host: String,
}

async fn heartbeat(
    State(s): State<ComputeState>,
    Path(p): Path<HostPath>,
) -> ApiResult<Json<proto::HeartbeatAnswer>> {
    s.compute.heartbeat(&p.host).await?;
    // Every live controller, so the agent can fail over to one it was not configured with.
    let controllers = match &s.cluster {
        Some(c) => c
            .live_controllers()
            .iter()
            .filter_map(|c| c.endpoint("compute"))
            .collect(),
        None => vec![s.base_url.to_string()],
    };
    Ok(Json(proto::HeartbeatAnswer { controllers }))
}

async fn desired(
    State(s): State<ComputeState>,
    Path(p): Path<HostPath>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<proto::DesiredState>> {
    let after = q
        .get("after")
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or(-1);
    let wait = q
        .get("wait")
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(0)
        .min(60);
    let d = s
        .compute
        .desired_state(&p.host, after, Duration::from_secs(wait))
        .await?;
    Ok(Json(d))
}

/// Long-polls the host's desired networking (`?after=<generation>&wait=<s>&network_node=1`).
async fn network_state(
    State(s): State<ComputeState>,
    Path(p): Path<HostPath>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<onestack_core::network::proto::NetworkState>> {
    let Some(net) = s.compute.network() else {
        return Ok(Json(Default::default()));
    };
    let after = q
        .get("after")
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or(-1);
    let wait = q
        .get("wait")
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(0)
        .min(60);
    let network_node = q
        .get("network_node")
        .is_some_and(|v| v == "1" || v == "true");
    net.wait_change(after, Duration::from_secs(wait)).await?;
    Ok(Json(net.host_state(&p.host, network_node).await?))
}

#[derive(Deserialize)]
struct MetadataPath {
    network: String,
    ip: String,
}

/// What the server at `ip` on `network` may know of itself (the agent's metadata proxy asks; the
/// source address it passes was checked by anti-spoofing on the way in).
async fn metadata(
    State(s): State<ComputeState>,
    Path(p): Path<MetadataPath>,
) -> ApiResult<Json<proto::ConfigDrive>> {
    s.compute
        .metadata_for(&p.network, &p.ip)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("No instance has that address on that network."))
}

#[derive(Deserialize)]
struct InstancePath {
    host: String,
    id: String,
}

async fn report(
    State(s): State<ComputeState>,
    Path(p): Path<InstancePath>,
    JsonBody(body): JsonBody<proto::Report>,
) -> ApiResult<StatusCode> {
    s.compute.report(&p.host, &p.id, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct VolumePath {
    host: String,
    id: String,
    volume: String,
}

async fn volume_report(
    State(s): State<ComputeState>,
    Path(p): Path<VolumePath>,
    JsonBody(body): JsonBody<proto::VolumeReport>,
) -> ApiResult<StatusCode> {
    s.compute
        .volume_report(&p.host, &p.id, &p.volume, &body.op, body.error)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn migration_report(
    State(s): State<ComputeState>,
    Path(p): Path<InstancePath>,
    JsonBody(body): JsonBody<proto::MigrationReport>,
) -> ApiResult<StatusCode> {
    s.compute.migration_report(&p.host, &p.id, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ImagePath {
    id: String,
}

#[derive(Deserialize)]
struct ImageFileQuery {
    /// `1`: another controller copying the data (`image::replicate`); answer from this
    /// controller's own directory only.
    local: Option<String>,
}

/// An image's data, for an agent or (with `?local=1`) a peer controller copying it. An agent's
/// request is served even when the data is on another controller only (it is copied here
/// first); a peer's never makes this controller ask a third, so two controllers missing a file
/// do not ask each other in turn. A peer holding the shared secret may copy a deactivated image.
async fn image_file(
    State(s): State<ComputeState>,
    Path(p): Path<ImagePath>,
    Query(q): Query<ImageFileQuery>,
    node: Option<axum::Extension<NodeIdentity>>,
) -> ApiResult<Response> {
    let img = s.images.get_system(&p.id).await?;
    let local_only = q.local.as_deref() == Some("1");
    let peer = local_only && node.is_none();
    if !(img.status == "active" || (peer && img.status == "deactivated")) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Image {} is not active.", p.id),
        ));
    }
    if !local_only {
        s.images.ensure_local(&img).await?;
    }
    let f = tokio::fs::File::open(s.images.data_path(&p.id))
        .await
        .map_err(|_| ApiError::not_found(format!("Image {} has no data.", p.id)))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    Ok(resp)
}

/// A snapshot's data from the agent that made it. Only queued snapshot images accept it.
async fn snapshot_upload(
    State(s): State<ComputeState>,
    Path(p): Path<ImagePath>,
    req: Request<Body>,
) -> ApiResult<StatusCode> {
    let img = s.images.get_system(&p.id).await?;
    let kind = img.properties.get("image_type").map(String::as_str);
    if !matches!(kind, Some("snapshot") | Some("backup")) || img.status != "queued" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Not a pending snapshot image.",
        ));
    }
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(|e| e.to_string());
    s.images.upload_system(&p.id, stream).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The secret the agent of `host` holds: a joined node's own credential, else the shared one.
async fn agent_secret(s: &ComputeState, host: &str) -> ApiResult<String> {
    Ok(
        onestack_core::compute::join::credential_for(s.compute.store(), &s.agent_token, host)
            .await?
            .unwrap_or_else(|| s.agent_token.to_string()),
    )
}

/// A host's `uptime(1)` line, asked of its agent; None when the agent does not answer.
pub async fn host_uptime(
    s: &ComputeState,
    host: &onestack_store::HostRecord,
) -> ApiResult<Option<String>> {
    let url = format!("{}/v1/host/uptime", host.agent_url.trim_end_matches('/'));
    let secret = agent_secret(s, &host.host).await?;
    let resp = s
        .http
        .get(&url)
        .header(AGENT_TOKEN_HEADER, secret)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match resp {
        Ok(r) if r.status().is_success() => Ok(r.text().await.ok()),
        _ => Ok(None),
    }
}

/// The agent-side address of a server's console output, fetched for `os-getConsoleOutput`.
pub async fn console_output(
    s: &ComputeState,
    ctx: &AuthContext,
    id: &str,
    length: Option<i64>,
) -> ApiResult<String> {
    let (host, _) = s
        .compute
        .console_host(ctx, id, "os_compute_api:os-console-output")
        .await?;
    let url = format!(
        "{}/v1/instances/{id}/console",
        host.agent_url.trim_end_matches('/')
    );
    let secret = agent_secret(s, &host.host).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = header::HeaderValue::from_str(&secret) {
        headers.insert(AGENT_TOKEN_HEADER, v);
    }
    let unavailable = || {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Instance {id} console output is unavailable: its compute host does not answer."
            ),
        )
    };
    let resp = s
        .http
        .get(&url)
        .headers(headers)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|_| unavailable())?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(ApiError::not_found(
            "Guest does not have a console available.",
        ));
    }
    if !resp.status().is_success() {
        return Err(unavailable());
    }
    let bytes = resp.bytes().await.map_err(|_| unavailable())?;
    let text = String::from_utf8_lossy(&bytes);
    // Nova keeps the last `length` lines (all for None or -1), within MAX_CONSOLE_BYTES.
    let start = text.len().saturating_sub(MAX_CONSOLE_BYTES as usize);
    let mut tail = &text[text
        .char_indices()
        .map(|(i, _)| i)
        .find(|i| *i >= start)
        .unwrap_or(0)..];
    if let Some(n) = length.filter(|n| *n >= 0) {
        let lines: Vec<&str> = tail.split_inclusive('\n').collect();
        let from = lines.len().saturating_sub(n as usize);
        let kept: usize = lines[..from].iter().map(|l| l.len()).sum();
        tail = &tail[kept..];
    }
    Ok(tail.to_string())
}

/// Where a cold migration's target fetches the server's disk: its host's agent, with a token
/// that host checks (signed with its secret, for this instance's disk, valid for an hour).
pub async fn disk_url(s: &ComputeState, ctx: &AuthContext, id: &str) -> ApiResult<String> {
    let (host, _) = s.compute.migration_source(ctx, id).await?;
    let secret = agent_secret(s, &host.host).await?;
    let token = onestack_core::compute::console::issue(
        &secret,
        &format!("disk-{id}"),
        chrono::Utc::now().timestamp(),
        3600,
    );
    Ok(format!(
        "{}/v1/instances/{id}/disk?token={token}",
        host.agent_url.trim_end_matches('/')
    ))
}

/// A websocket URL to the server's serial console on its host, with a signed token that
/// expires in 10 minutes. The server must be running.
pub async fn serial_console_url(
    s: &ComputeState,
    ctx: &AuthContext,
    id: &str,
) -> ApiResult<String> {
    let (host, inst) = s
        .compute
        .console_host(ctx, id, "os_compute_api:os-remote-consoles")
        .await?;
    // A running guest: active, or resized and waiting for confirmation.
    if !matches!(
        onestack_core::compute::server_status(&inst),
        "ACTIVE" | "VERIFY_RESIZE"
    ) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Instance {id} is not running; its console is unavailable."),
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let secret = agent_secret(s, &host.host).await?;
    let token = onestack_core::compute::console::issue(
        &secret,
        id,
        now,
        onestack_core::compute::console::TOKEN_TTL_SECS,
    );
    let base = host.agent_url.trim_end_matches('/');
    let ws = base
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| base.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .unwrap_or_else(|| base.to_string());
    Ok(format!("{ws}/v1/serial?token={token}"))
}
