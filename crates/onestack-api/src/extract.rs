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
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON in the request body: {e}")))
    }
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
        if let Some(slot) = parts.extensions.get::<crate::audit::CallerSlot>() {
            slot.set(&ctx);
        }
        Ok(Auth(ctx))
    }
}
