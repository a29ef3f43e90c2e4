//! Cross-cutting HTTP behaviour: a request id on every response and in every log line, an
//! audit record of every mutating call, the
//! identity URL on every 401, and error bodies in the service's own shape — for handler errors
//! and for those the router itself produces (unknown route, 405, 413).

use crate::audit::{self, CallerSlot};
use crate::error::{error_body, error_body_typed, ErrorFlavor, ErrorInfo};
use crate::{AppState, MAX_BODY_BYTES};
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use onestack_store::AuditRecord;
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-openstack-request-id";

pub async fn request_context(
    State((state, flavor)): State<(AppState, ErrorFlavor)>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    let id = format!("req-{}", uuid::Uuid::new_v4());
    if crate::extract::uri_holds_nul(req.uri()) {
        let resp = (
            StatusCode::BAD_REQUEST,
            axum::Json(error_body(
                flavor,
                StatusCode::BAD_REQUEST,
                "Invalid input: the request's path or query contains a NUL character.",
            )),
        )
            .into_response();
        return with_request_id(resp, &id);
    }
    // The service the request is for (the `Auth` extractor asks whether it takes unscoped tokens).
    req.extensions_mut().insert(flavor);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %id);
    let audited = audit::is_audited(&method, &path);
    let mut entry = None;
    if audited {
        let slot = CallerSlot::default();
        req.extensions_mut().insert(slot.clone());
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| path.clone(), |m| m.as_str().to_string());
        let service = audit::service_of(flavor, &path);
        let login = service == "identity" && path == "/v3/auth/tokens" && method == "POST";
        // What is done is in the body of `…/action` calls; who logs in, in a token request's.
        let mut action = None;
        if audit::wants_action(&path) || login {
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
                let resp = (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    axum::Json(error_body(
                        flavor,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Request Entity Too Large",
                    )),
                )
                    .into_response();
                return with_request_id(resp, &id);
            };
            if login {
                if let Some(name) = audit::login_name(&bytes) {
                    slot.set_name(name);
                }
            } else {
                action = audit::action_of(&bytes);
            }
            req = Request::from_parts(parts, Body::from(bytes));
        }
        let remote = req
            .extensions()
            .get::<ConnectInfo<crate::Peer>>()
            .map(|c| c.0.addr.ip().to_string());
        entry = Some((slot, route, service, action, remote, login));
    }
    let mut resp = async {
        let resp = next.run(req).await;
        tracing::info!(%method, %path, status = resp.status().as_u16(), "handled");
        resp
    }
    .instrument(span.clone())
    .await;
    if let Some((slot, route, service, action, remote_addr, login)) = entry {
        let status = resp.status();
        let mut target = audit::target_of(&route, &path);
        // A create: what it made is in the answer. Only a small answer whose whole length is
        // known is read (and handed on unchanged); a stream or a large body is left alone.
        let small = axum::body::HttpBody::size_hint(resp.body())
            .exact()
            .is_some_and(|n| n <= 1 << 20);
        if target.is_none() && method == "POST" && status.is_success() && small {
            let (parts, body) = resp.into_parts();
            match axum::body::to_bytes(body, 1 << 20).await {
                Ok(bytes) => {
                    target = audit::created_id(&bytes);
                    resp = Response::from_parts(parts, Body::from(bytes));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the answer could not be read for the audit log");
                    resp = (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
                }
            }
        }
        if login && status.is_success() {
            let token = resp
                .headers()
                .get("x-subject-token")
                .and_then(|v| v.to_str().ok());
            if let Some(ctx) = token.and_then(|t| state.identity.validate(t).ok()) {
                slot.set(&ctx);
                target = Some(ctx.user.id.clone());
            }
        }
        let caller = slot.get().unwrap_or_default();
        let record = AuditRecord {
            request_id: id.clone(),
            at_us: chrono::Utc::now().timestamp_micros(),
            service: service.into(),
            method: method.to_string(),
            route,
            path: path.clone(),
            action,
            target,
            user_id: Some(caller.user_id).filter(|u| !u.is_empty()),
            user_name: Some(caller.user_name).filter(|u| !u.is_empty()),
            project_id: caller.project_id,
            status: i64::from(status.as_u16()),
            remote_addr,
        };
        if let Err(e) = state.identity.store().insert_audit(&record).await {
            let _enter = span.enter();
            tracing::error!(error = %e, "could not write the audit record");
        }
    }
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
    with_request_id(resp, &id)
}

fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}
