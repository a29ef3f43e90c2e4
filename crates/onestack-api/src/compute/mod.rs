//! Nova v2.1: routes (with and without the project id in the path), version discovery,
//! microversion negotiation, and the internal API compute agents use. Errors use Nova's bodies.

mod attachments;
mod flavors;
mod internal;
mod keypairs;
mod os;
mod render;
mod servers;

use crate::error::{error_body, ErrorFlavor};
use crate::routes::Listed;
use crate::AppState;
use axum::body::Body;
use axum::extract::{FromRef, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use onestack_core::compute::ComputeService;
use onestack_core::image::ImageService;
use serde_json::{json, Value};
use std::sync::Arc;

pub use internal::AGENT_TOKEN_HEADER;

/// The newest microversion this API honours, field for field. Raise it only together with the
/// behaviour each step adds.
pub const MAX_VERSION: (u32, u32) = (2, 1);
pub const MIN_VERSION: (u32, u32) = (2, 1);

#[derive(Clone)]
pub struct ComputeState {
    pub app: AppState,
    pub compute: Arc<ComputeService>,
    pub images: Arc<ImageService>,
    /// Public base URL, e.g. `http://198.18.0.1:8774`.
    pub base_url: Arc<str>,
    /// The image API's public URL (links to images).
    pub image_url: Arc<str>,
    /// Shared secret of the internal agent API.
    pub agent_token: Arc<str>,
    pub http: reqwest::Client,
    /// This controller among the cloud's controllers (None: a test's lone controller).
    pub cluster: Option<Arc<onestack_core::cluster::Cluster>>,
    /// What `onestack join --role controller` receives besides the shared secret (the
    /// database URL, the bootstrap passwords); None: this controller admits no others.
    pub controller_join: Option<Arc<serde_json::Value>>,
}

impl FromRef<ComputeState> for AppState {
    fn from_ref(s: &ComputeState) -> AppState {
        s.app.clone()
    }
}

/// The negotiated microversion of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Microversion(pub u32, pub u32);

fn api_routes() -> Listed<ComputeState> {
    Listed::new()
        .route("/", get(version_v21))
        .route("/flavors", get(flavors::list).post(flavors::create))
        .route("/flavors/detail", get(flavors::list_detail))
        .route(
            "/flavors/{id}",
            get(flavors::show)
                .delete(flavors::delete)
                .put(flavors::update),
        )
        .route("/flavors/{id}/action", post(flavors::action))
        .route("/flavors/{id}/os-flavor-access", get(flavors::access))
        .route(
            "/flavors/{id}/os-extra_specs",
            get(flavors::specs).post(flavors::set_specs),
        )
        .route(
            "/flavors/{id}/os-extra_specs/{key}",
            get(flavors::spec)
                .put(flavors::put_spec)
                .delete(flavors::delete_spec),
        )
        .route("/os-keypairs", get(keypairs::list).post(keypairs::create))
        .route(
            "/os-keypairs/{name}",
            get(keypairs::show).delete(keypairs::delete),
        )
        .route("/servers", get(servers::list).post(servers::create))
        .route("/servers/detail", get(servers::list_detail))
        .route(
            "/servers/{id}",
            get(servers::show)
                .put(servers::update)
                .delete(servers::delete),
        )
        .route("/servers/{id}/action", post(servers::action))
        .route("/servers/{id}/ips", get(servers::ips))
        .route(
            "/servers/{id}/os-volume_attachments",
            get(attachments::list).post(attachments::create),
        )
        .route(
            "/servers/{id}/os-volume_attachments/{volume}",
            get(attachments::show).delete(attachments::delete),
        )
        .route(
            "/servers/{id}/metadata",
            get(servers::metadata)
                .post(servers::merge_metadata)
                .put(servers::replace_metadata),
        )
        .route(
            "/servers/{id}/metadata/{key}",
            get(servers::metadata_item)
                .put(servers::put_metadata_item)
                .delete(servers::delete_metadata_item),
        )
        .route("/os-hypervisors", get(os::hypervisors))
        .route("/os-hypervisors/detail", get(os::hypervisors_detail))
        .route("/os-hypervisors/statistics", get(os::hypervisor_statistics))
        .route("/os-hypervisors/{id}", get(os::hypervisor))
        .route("/os-hypervisors/{id}/uptime", get(os::hypervisor_uptime))
        .route("/os-availability-zone", get(os::availability_zones))
        .route(
            "/os-availability-zone/detail",
            get(os::availability_zones_detail),
        )
        .route("/os-services", get(os::services))
        .route(
            "/os-services/{id}",
            put(os::service_update).delete(os::service_delete),
        )
        .route("/limits", get(os::limits))
        .route(
            "/os-quota-sets/{project}",
            get(os::quota_show)
                .put(os::quota_update)
                .delete(os::quota_delete),
        )
        .route("/os-quota-sets/{project}/defaults", get(os::quota_defaults))
        .route("/os-quota-sets/{project}/detail", get(os::quota_detail))
        .route("/os-simple-tenant-usage", get(os::usage_list))
        .route("/os-simple-tenant-usage/{project}", get(os::usage_show))
        .route("/os-onestack-host-usage", get(os::host_usage_list))
        .route("/os-onestack-usage-series", get(os::usage_series))
        .route("/os-aggregates", get(os::aggregate_list))
}

/// The path templates this API serves, the agents' internal ones included (the role table
/// checks that each has an entry).
pub fn route_paths() -> Vec<String> {
    routes(|r| r).paths()
}

/// Every route; `agent_auth` wraps the internal routes that need an agent's credential.
fn routes(
    agent_auth: impl FnOnce(Router<ComputeState>) -> Router<ComputeState>,
) -> Listed<ComputeState> {
    let api = || api_routes().map(|r| r.layer(axum::middleware::from_fn(microversion)));
    Listed::new()
        .route("/", get(versions))
        .route("/v2.1/", get(version_v21))
        .nest("/v2.1/{project_id}", api())
        .nest("/v2.1", api())
        .nest("/internal/v1", internal::routes(agent_auth))
}

pub fn router(state: ComputeState) -> Router {
    let agent_state = state.clone();
    routes(move |r| {
        r.layer(axum::middleware::from_fn_with_state(
            agent_state,
            internal::require_agent,
        ))
    })
    .into_router()
    .fallback(|| async { crate::error::ApiError::not_found("The resource could not be found.") })
    .layer(axum::middleware::from_fn_with_state(
        (state.app.clone(), ErrorFlavor::Nova),
        crate::middleware::request_context,
    ))
    .layer(axum::middleware::from_fn_with_state(
        "compute",
        crate::metrics::track,
    ))
    .with_state(state)
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": format!("{}.{}", MAX_VERSION.0, MAX_VERSION.1),
        "min_version": format!("{}.{}", MIN_VERSION.0, MIN_VERSION.1),
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{base}/v2.1/")}],
    })
}

/// `GET /`: v2.0 (deprecated) and v2.1, as Nova lists them.
async fn versions(State(s): State<ComputeState>) -> Json<Value> {
    Json(json!({"versions": [
        {"id": "v2.0", "status": "DEPRECATED", "version": "", "min_version": "",
         "updated": "2025-07-04T12:00:00Z",
         "links": [{"rel": "self", "href": format!("{}/v2/", s.base_url)}]},
        version_doc(&s.base_url),
    ]}))
}

async fn version_v21(State(s): State<ComputeState>) -> Json<Value> {
    let mut v = version_doc(&s.base_url);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "media-types".into(),
            json!([{"base": "application/json",
                    "type": "application/vnd.openstack.compute+json;version=2.1"}]),
        );
    }
    Json(json!({"version": v}))
}

/// Parses `OpenStack-API-Version: compute X.Y` (or the legacy Nova header); `latest` is the max,
/// none is 2.1, anything outside [min, max] is 406.
pub fn negotiate(headers: &axum::http::HeaderMap) -> Result<Microversion, String> {
    let raw = headers
        .get_all("openstack-api-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|part| {
            let mut it = part.split_whitespace();
            match (it.next(), it.next()) {
                (Some(svc), Some(ver)) if svc.eq_ignore_ascii_case("compute") => {
                    Some(ver.to_string())
                }
                _ => None,
            }
        })
        .or_else(|| {
            headers
                .get("x-openstack-nova-api-version")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
        });
    let Some(raw) = raw else {
        return Ok(Microversion(MIN_VERSION.0, MIN_VERSION.1));
    };
    if raw.eq_ignore_ascii_case("latest") {
        return Ok(Microversion(MAX_VERSION.0, MAX_VERSION.1));
    }
    let parsed = raw
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    match parsed {
        Some(v) if v >= MIN_VERSION && v <= MAX_VERSION => Ok(Microversion(v.0, v.1)),
        Some(_) => Err(format!(
            "Version {raw} is not supported by the API. Minimum is {}.{} and maximum is {}.{}.",
            MIN_VERSION.0, MIN_VERSION.1, MAX_VERSION.0, MAX_VERSION.1
        )),
        None => Err(format!("Invalid API version request string {raw}")),
    }
}

async fn microversion(mut req: Request<Body>, next: Next) -> Response {
    let v = match negotiate(req.headers()) {
        Ok(v) => v,
        Err(msg) => {
            let status = if msg.starts_with("Invalid") {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::NOT_ACCEPTABLE
            };
            return (status, Json(error_body(ErrorFlavor::Nova, status, &msg))).into_response();
        }
    };
    req.extensions_mut().insert(v);
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(val) = HeaderValue::from_str(&format!("compute {}.{}", v.0, v.1)) {
        h.insert("openstack-api-version", val);
    }
    if let Ok(val) = HeaderValue::from_str(&format!("{}.{}", v.0, v.1)) {
        h.insert("x-openstack-nova-api-version", val);
    }
    h.insert(
        axum::http::header::VARY,
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    resp
}
