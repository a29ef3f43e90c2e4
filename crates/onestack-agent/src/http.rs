//! The agent's own endpoint: what only the host has — console output, and the interactive serial
//! console as a websocket (the URL the compute API hands out carries a signed, expiring token) —
//! and `/metrics` for Prometheus (unauthenticated, as scrape targets are; no tenant data).

use crate::metrics::AgentMetrics;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
struct HttpState {
    token: String,
    instances: PathBuf,
    metrics: Arc<AgentMetrics>,
}

pub fn router(token: String, instances: PathBuf, metrics: Arc<AgentMetrics>) -> Router {
    let state = HttpState {
        token,
        instances,
        metrics,
    };
    let internal = Router::new()
        .route("/v1/instances/{id}/console", get(console))
        .route("/v1/host/uptime", get(uptime))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/v1/serial", get(serial))
        .route("/v1/instances/{id}/disk", get(disk))
        .route("/metrics", get(scrape))
        .merge(internal)
        .layer(axum::middleware::from_fn(count))
        .with_state(state)
}

async fn count(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    crate::metrics::count_request(&method, resp.status());
    resp
}

async fn scrape(State(s): State<HttpState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            onestack_core::metrics::CONTENT_TYPE,
        )],
        s.metrics.text(),
    )
        .into_response()
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

/// `GET /v1/host/uptime`: this host's `uptime(1)` line, which Nova's hypervisor uptime carries
/// (`10:00:00 up 3 days,  2:01,  0 users,  load average: 0.10, 0.20, 0.30`).
async fn uptime() -> Response {
    let (Ok(up), Ok(load)) = (
        tokio::fs::read_to_string("/proc/uptime").await,
        tokio::fs::read_to_string("/proc/loadavg").await,
    ) else {
        return StatusCode::NOT_IMPLEMENTED.into_response();
    };
    let time_of_day = (chrono_now().max(0) as u64) % 86_400;
    match uptime_line(&up, &load, time_of_day) {
        Some(line) => line.into_response(),
        None => StatusCode::NOT_IMPLEMENTED.into_response(),
    }
}

/// Formats `/proc/uptime` and `/proc/loadavg` as `uptime(1)` does, at `now` seconds into the
/// (UTC) day. Logged-in users are not counted (no utmp is read): 0.
fn uptime_line(up: &str, load: &str, now: u64) -> Option<String> {
    let secs = up.split_whitespace().next()?.parse::<f64>().ok()? as u64;
    let loads: Vec<&str> = load.split_whitespace().take(3).collect();
    if loads.len() != 3 {
        return None;
    }
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    let since = match (days, hours) {
        (0, 0) => format!("{mins} min"),
        (0, _) => format!("{hours:2}:{mins:02}"),
        (1, _) => format!("1 day, {hours:2}:{mins:02}"),
        _ => format!("{days} days, {hours:2}:{mins:02}"),
    };
    Some(format!(
        " {:02}:{:02}:{:02} up {since},  0 users,  load average: {}, {}, {}",
        now / 3600,
        now % 3600 / 60,
        now % 60,
        loads[0],
        loads[1],
        loads[2]
    ))
}

/// `GET /v1/instances/{id}/disk?token=…`: the instance's disk (its qcow2 overlay) for a cold
/// migration's target host; the token is the controller's, for this instance's disk, and
/// expires.
async fn disk(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let granted = q
        .get("token")
        .and_then(|t| onestack_core::compute::console::verify(&s.token, t, chrono_now()));
    if uuid::Uuid::parse_str(&id).is_err() || granted.as_deref() != Some(&format!("disk-{id}")) {
        return (StatusCode::UNAUTHORIZED, "invalid or expired disk token").into_response();
    }
    match tokio::fs::File::open(s.instances.join(&id).join("disk")).await {
        Ok(f) => {
            axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20))
                .into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /v1/serial?token=…`: a websocket bridged to the VM's serial console socket.
async fn serial(
    State(s): State<HttpState>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let now = chrono_now();
    let Some(id) = q
        .get("token")
        .and_then(|t| onestack_core::compute::console::verify(&s.token, t, now))
    else {
        return (StatusCode::UNAUTHORIZED, "invalid or expired console token").into_response();
    };
    if uuid::Uuid::parse_str(&id).is_err() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let sock = s.instances.join(&id).join("console.sock");
    let stream = match tokio::net::UnixStream::connect(&sock).await {
        Ok(st) => st,
        Err(_) => {
            return (
                StatusCode::CONFLICT,
                "the server's console is not available (is it running?)",
            )
                .into_response()
        }
    };
    ws.protocols(["binary", "base64"])
        .on_upgrade(move |socket| bridge(socket, stream))
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn bridge(socket: WebSocket, stream: tokio::net::UnixStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = stream.into_split();
    let to_vm = async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_str().as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    };
    let from_vm = async move {
        let mut buf = vec![0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    // Either side closing ends the session (QEMU then accepts the next client).
    tokio::select! {
        _ = to_vm => {},
        _ = from_vm => {},
    }
}

#[cfg(test)]
mod uptime_tests {
    #[test]
    fn reads_like_uptime() {
        let t = 10 * 3600;
        assert_eq!(
            super::uptime_line("266460.5 1000.0\n", "0.10 0.20 0.30 1/100 42\n", t).as_deref(),
            Some(" 10:00:00 up 3 days,  2:01,  0 users,  load average: 0.10, 0.20, 0.30")
        );
        assert_eq!(
            super::uptime_line("300.2 1.0", "1.00 0.50 0.25 1/1 1", t).as_deref(),
            Some(" 10:00:00 up 5 min,  0 users,  load average: 1.00, 0.50, 0.25")
        );
        assert_eq!(super::uptime_line("x", "1 2 3", t), None);
    }
}
