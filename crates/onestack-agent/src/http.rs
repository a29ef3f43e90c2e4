//! The agent's own endpoint: what only the host has — console output.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::path::PathBuf;

#[derive(Clone)]
struct HttpState {
    token: String,
    instances: PathBuf,
}

pub fn router(token: String, instances: PathBuf) -> Router {
    let state = HttpState { token, instances };
    Router::new()
        .route("/v1/instances/{id}/console", get(console))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn auth(State(s): State<HttpState>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(crate::client::TOKEN_HEADER)
        .is_some_and(|v| {
            let (a, b) = (v.as_bytes(), s.token.as_bytes());
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        });
    if !ok || s.token.is_empty() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    next.run(req).await
}

async fn console(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    if uuid::Uuid::parse_str(&id).is_err() {
        return StatusCode::NOT_FOUND.into_response();
    }
    match tokio::fs::read(s.instances.join(&id).join("console.log")).await {
        Ok(bytes) => bytes.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
