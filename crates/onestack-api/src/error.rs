//! The one place API errors become HTTP responses. Each service answers in its own project's
//! body shape (`ErrorFlavor`); the per-service middleware picks it. Internal detail is logged with
//! the request id and never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use onestack_core::CoreError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Identity URL for the `WWW-Authenticate` header on 401.
    pub auth_uri: Option<String>,
    /// Neutron's error type name (`NetworkNotFound`); derived from the status when None.
    pub kind: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            auth_uri: None,
            kind: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            onestack_core::identity::AUTH_FAILED,
        )
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        if let CoreError::Typed {
            status,
            kind,
            message,
        } = e
        {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return ApiError {
                kind: Some(kind),
                ..ApiError::new(status, message)
            };
        }
        let (status, message) = match e {
            CoreError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            CoreError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            CoreError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            CoreError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            CoreError::Conflict(m) => (StatusCode::CONFLICT, m),
            CoreError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            CoreError::Gone(m) => (StatusCode::GONE, m),
            // Typed errors returned above; kept total without a panic path.
            CoreError::Typed {
                status, message, ..
            } => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                message,
            ),
            CoreError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "An unexpected error prevented the server from fulfilling your request."
                        .to_string(),
                )
            }
        };
        ApiError::new(status, message)
    }
}

/// Which OpenStack project's error body a service uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorFlavor {
    /// `{"error": {"code": 404, "title": "Not Found", "message": "…"}}`
    Keystone,
    /// webob's JSON: `{"message": "…", "code": "404 Not Found", "title": "Not Found"}`
    Glance,
    /// `{"itemNotFound": {"code": 404, "message": "…"}}`, keyed by status.
    Nova,
    /// `{"NeutronError": {"type": "NetworkNotFound", "message": "…", "detail": ""}}`
    Neutron,
}

/// Carried in the response extensions so the middleware can re-render the body per flavor.
#[derive(Clone, Debug)]
pub struct ErrorInfo {
    pub message: String,
    pub kind: Option<&'static str>,
}

pub fn error_body(flavor: ErrorFlavor, status: StatusCode, message: &str) -> serde_json::Value {
    error_body_typed(flavor, status, message, None)
}

pub fn error_body_typed(
    flavor: ErrorFlavor,
    status: StatusCode,
    message: &str,
    kind: Option<&str>,
) -> serde_json::Value {
    let title = status.canonical_reason().unwrap_or("Error");
    match flavor {
        ErrorFlavor::Keystone => {
            json!({"error": {"code": status.as_u16(), "title": title, "message": message}})
        }
        ErrorFlavor::Nova => {
            let key = match status.as_u16() {
                400 => "badRequest",
                401 => "unauthorized",
                403 => "forbidden",
                404 => "itemNotFound",
                405 => "badMethod",
                406 => "notAcceptable",
                409 => "conflictingRequest",
                413 => "overLimit",
                415 => "badMediaType",
                501 => "notImplemented",
                _ => "computeFault",
            };
            json!({key: {"code": status.as_u16(), "message": message}})
        }
        ErrorFlavor::Neutron => {
            // webob's exception class names, as Neutron reports errors without a type of its own.
            let kind = kind.unwrap_or(match status.as_u16() {
                400 => "HTTPBadRequest",
                401 => "HTTPUnauthorized",
                403 => "HTTPForbidden",
                404 => "HTTPNotFound",
                405 => "HTTPMethodNotAllowed",
                409 => "HTTPConflict",
                413 => "HTTPRequestEntityTooLarge",
                415 => "HTTPUnsupportedMediaType",
                _ => "HTTPInternalServerError",
            });
            json!({"NeutronError": {"type": kind, "message": message, "detail": ""}})
        }
        ErrorFlavor::Glance => json!({
            "message": message,
            "code": format!("{} {title}", status.as_u16()),
            "title": title,
        }),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = error_body(ErrorFlavor::Keystone, self.status, &self.message);
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(ErrorInfo {
            message: self.message.clone(),
            kind: self.kind,
        });
        if self.status == StatusCode::UNAUTHORIZED {
            let uri = self.auth_uri.unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(&format!("Keystone uri=\"{uri}\"")) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
