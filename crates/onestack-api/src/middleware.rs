//! Cross-cutting HTTP behaviour: a request id on every response and in every log line, the
//! identity URL on every 401, and error bodies in the service's own shape — for handler errors
//! and for those the router itself produces (unknown route, 405, 413).

use crate::error::{error_body, error_body_typed, ErrorFlavor, ErrorInfo};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-openstack-request-id";

pub async fn request_context(
    State((state, flavor)): State<(AppState, ErrorFlavor)>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let id = format!("req-{}", uuid::Uuid::new_v4());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %id);
    let mut resp = async move {
        let resp = next.run(req).await;
        tracing::info!(%method, %path, status = resp.status().as_u16(), "handled");
        resp
    }
    .instrument(span)
    .await;
    let status = resp.status();
    // Errors produced by the router or framework (404 route, 405, 413) have no JSON body yet.
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.is_client_error() || status.is_server_error() {
        let info = resp.extensions().get::<ErrorInfo>().cloned();
        if let Some(info) = info.filter(|_| flavor != ErrorFlavor::Keystone) {
            let headers = resp.headers().clone();
            resp = (
                status,
                axum::Json(error_body_typed(flavor, status, &info.message, info.kind)),
            )
                .into_response();
            for (k, v) in &headers {
                if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                    resp.headers_mut().insert(k, v.clone());
                }
            }
        } else if !is_json {
            let msg = match status {
                StatusCode::NOT_FOUND => "The resource could not be found.",
                StatusCode::METHOD_NOT_ALLOWED => {
                    "The method is not allowed for the requested URL."
                }
                StatusCode::PAYLOAD_TOO_LARGE => "Request Entity Too Large",
                _ => status.canonical_reason().unwrap_or("Error"),
            };
            resp = (status, axum::Json(error_body(flavor, status, msg))).into_response();
        }
    }
    if status == StatusCode::UNAUTHORIZED {
        if let Ok(v) = HeaderValue::from_str(&format!("Keystone uri=\"{}\"", state.identity_url)) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}
