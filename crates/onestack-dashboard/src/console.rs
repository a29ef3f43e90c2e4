//! The interactive serial console in the page: the browser opens a websocket to the dashboard
//! (same origin, session cookie), the dashboard asks the compute API for the server's console URL
//! with the user's token (so policy and tenancy are the API's) and bridges the two. The console
//! URL's signed token never reaches the browser.

use crate::api::{seg, text, Svc};
use crate::Dash;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as UpMessage;

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub fn routes() -> Router<Dash> {
    Router::new().route("/project/instances/{id}/console", get(console))
}

async fn console(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let ctx = match d.scripted(&headers, false) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let url = match d
        .post(
            &ctx.s,
            Svc::Compute,
            &format!("/servers/{}/action", seg(&id)),
            &json!({"os-getSerialConsole": {"type": "serial"}}),
        )
        .await
    {
        Ok(v) => text(&v["console"], "url").to_string(),
        Err(f) => return (f.status, f.message).into_response(),
    };
    // Connect before upgrading, so a console that is not there is an HTTP error the page shows.
    let upstream = match connect(&url).await {
        Ok(u) => u,
        Err(msg) => return (StatusCode::BAD_GATEWAY, msg).into_response(),
    };
    ws.protocols(["binary"])
        .on_upgrade(move |socket| bridge(socket, upstream))
}

async fn connect(url: &str) -> Result<Upstream, String> {
    let mut req = url
        .into_client_request()
        .map_err(|_| "The compute service gave an unusable console address.".to_string())?;
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
    let connecting = tokio_tungstenite::connect_async(req);
    match tokio::time::timeout(std::time::Duration::from_secs(10), connecting).await {
        Ok(Ok((stream, _))) => Ok(stream),
        Ok(Err(e)) => Err(format!("The instance's console is not available: {e}")),
        Err(_) => Err("The instance's console did not answer.".to_string()),
    }
}

/// Copies frames both ways until either side closes.
async fn bridge(browser: WebSocket, upstream: Upstream) {
    let (mut b_tx, mut b_rx) = browser.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let to_vm = async move {
        while let Some(Ok(msg)) = b_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => axum::body::Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            if u_tx.send(UpMessage::Binary(data)).await.is_err() {
                break;
            }
        }
        let _ = u_tx.close().await;
    };
    let from_vm = async move {
        while let Some(Ok(msg)) = u_rx.next().await {
            let data = match msg {
                UpMessage::Binary(b) => b,
                UpMessage::Text(t) => axum::body::Bytes::copy_from_slice(t.as_str().as_bytes()),
                UpMessage::Close(_) => break,
                _ => continue,
            };
            if b_tx.send(Message::Binary(data)).await.is_err() {
                break;
            }
        }
        let _ = b_tx.close().await;
    };
    tokio::select! {
        _ = to_vm => {},
        _ = from_vm => {},
    }
}
