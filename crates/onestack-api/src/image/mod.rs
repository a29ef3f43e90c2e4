//! Glance v2: routes, version discovery, and the JSON shapes `openstack image …` and openstacksdk
//! read. Errors use webob's JSON body, as Glance's do.

mod data;
mod images;
mod members;
mod peer;
mod schemas;

pub use peer::HttpPeers;

use crate::error::ErrorFlavor;
use crate::routes::Listed;
use crate::AppState;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use onestack_core::image::ImageService;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Clone)]
pub struct ImageState {
    pub app: AppState,
    pub images: Arc<ImageService>,
    /// Public base URL of this API, e.g. `http://198.18.0.1:9292`.
    pub base_url: Arc<str>,
}

impl FromRef<ImageState> for AppState {
    fn from_ref(s: &ImageState) -> AppState {
        s.app.clone()
    }
}

/// The path templates this API serves (the role table checks that each has an entry).
pub fn route_paths() -> Vec<String> {
    routes().paths()
}

fn routes() -> Listed<ImageState> {
    Listed::new()
        .route("/", get(versions_multiple))
        .route("/versions", get(versions_ok))
        .route("/v2", get(versions_multiple))
        .route("/v2/", get(versions_multiple))
        .route("/healthcheck", get(|| async { "OK" }))
        .route("/v2/schemas/image", get(schemas::image))
        .route("/v2/schemas/images", get(schemas::images))
        .route("/v2/schemas/member", get(schemas::member))
        .route("/v2/schemas/members", get(schemas::members))
        .route("/v2/images", get(images::list).post(images::create))
        .route(
            "/v2/images/{id}",
            get(images::show)
                .patch(images::update)
                .delete(images::delete),
        )
        .route(
            "/v2/images/{id}/file",
            put(data::upload).get(data::download),
        )
        .route(
            "/v2/images/{id}/tags/{tag}",
            put(images::add_tag).delete(images::remove_tag),
        )
        .route(
            "/v2/images/{id}/actions/deactivate",
            post(images::deactivate),
        )
        .route(
            "/v2/images/{id}/actions/reactivate",
            post(images::reactivate),
        )
        .route(
            "/v2/images/{id}/members",
            get(members::list).post(members::create),
        )
        .route(
            "/v2/images/{id}/members/{member}",
            get(members::show)
                .put(members::update)
                .delete(members::delete),
        )
}

pub fn router(state: ImageState) -> Router {
    routes()
        .into_router()
        .fallback(|| async {
            crate::error::ApiError::not_found("The resource could not be found.")
        })
        .layer(axum::middleware::from_fn_with_state(
            (state.app.clone(), ErrorFlavor::Glance),
            crate::middleware::request_context,
        ))
        .layer(axum::middleware::from_fn_with_state(
            "image",
            crate::metrics::track,
        ))
        .with_state(state)
}

/// Minor versions this API implements (Glance 2.0 … 2.16 share the wire format we serve).
const VERSIONS: &[&str] = &[
    "2.16", "2.15", "2.9", "2.8", "2.7", "2.6", "2.5", "2.4", "2.3", "2.2", "2.1", "2.0",
];

fn versions_doc(state: &ImageState) -> Value {
    let values: Vec<Value> = VERSIONS
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "id": format!("v{v}"),
                "status": if i == 0 { "CURRENT" } else { "SUPPORTED" },
                "links": [{"rel": "self", "href": format!("{}/v2/", state.base_url)}],
            })
        })
        .collect();
    json!({"versions": values})
}

/// `GET /`: 300 Multiple Choices, as Glance answers an unversioned request.
async fn versions_multiple(State(state): State<ImageState>) -> Response {
    (StatusCode::MULTIPLE_CHOICES, Json(versions_doc(&state))).into_response()
}

async fn versions_ok(State(state): State<ImageState>) -> Json<Value> {
    Json(versions_doc(&state))
}
