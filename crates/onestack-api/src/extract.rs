//! Request extractors that fail with OpenStack error bodies instead of axum's plain text.

use crate::error::ApiError;
use crate::{AppState, MAX_BODY_BYTES};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use onestack_core::policy::AuthContext;
use serde::de::DeserializeOwned;

/// A JSON body, bounded in size. Malformed JSON or wrong types → 400; too large → 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
            })?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "The request body is empty; JSON was expected.",
            ));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a request's JSON. A NUL character (`\u0000`) in any string or key is refused: no
/// OpenStack service keeps one, PostgreSQL cannot store one, and a name that shows differently
/// than it compares is a way to deceive.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bad = |e: serde_json::Error| {
        ApiError::bad_request(format!("Invalid JSON in the request body: {e}"))
    };
    // Only an escape can put a NUL in a JSON string; skip the second parse when there is none.
    if !bytes.windows(5).any(|w| w.eq_ignore_ascii_case(b"u0000")) {
        return serde_json::from_slice(bytes).map_err(bad);
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
    if holds_nul(&value) {
        return Err(ApiError::bad_request(
            "Invalid input: a string in the request body contains a NUL character.",
        ));
    }
    serde_json::from_value(value).map_err(bad)
}

fn holds_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// A path or query holding an encoded NUL (`%00`): refused before routing, as no id, name or
/// filter can contain one.
pub fn uri_holds_nul(uri: &axum::http::Uri) -> bool {
    let has = |s: &str| s.as_bytes().windows(3).any(|w| w == b"%00");
    has(uri.path()) || uri.query().is_some_and(has)
}

/// The caller, authenticated by `X-Auth-Token`.
pub struct Auth(pub AuthContext);

impl<S> FromRequestParts<S> for Auth
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        let ctx = state
            .identity
            .validate(token)
            .map_err(|_| ApiError::unauthorized())?;
        // Only identity serves an unscoped token: the other services act within a project (as
        // their policies do with scopes enforced), so such a token makes no key pair or image.
        let identity = parts
            .extensions
            .get::<crate::error::ErrorFlavor>()
            .is_none_or(|f| *f == crate::error::ErrorFlavor::Keystone);
        if ctx.project.is_none() && !identity {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "A token scoped to a project is required.",
            ));
        }
        if let Some(slot) = parts.extensions.get::<crate::audit::CallerSlot>() {
            slot.set(&ctx);
        }
        Ok(Auth(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_refused_wherever_they_hide() {
        for body in [
            r#"{"name": "a\u0000b"}"#,
            r#"{"a": {"b": ["x", "\u0000"]}}"#,
            r#"{"k\u0000": 1}"#,
        ] {
            let r: Result<serde_json::Value, _> = parse_json(body.as_bytes());
            let e = r.expect_err(body);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains("NUL"), "{}", e.message);
        }
        // A literal backslash before u0000 is no NUL.
        let v: serde_json::Value =
            parse_json(br#"{"name": "\\u0000"}"#).expect("a backslash and text");
        assert_eq!(v["name"], "\\u0000");
        let uri: axum::http::Uri = "/v2.0/ports/x%00y?name=a".parse().expect("uri");
        assert!(uri_holds_nul(&uri));
        let uri: axum::http::Uri = "/v2.0/ports?name=%00".parse().expect("uri");
        assert!(uri_holds_nul(&uri));
        let uri: axum::http::Uri = "/v2.0/ports?name=%2500".parse().expect("uri");
        assert!(!uri_holds_nul(&uri));
    }
}
