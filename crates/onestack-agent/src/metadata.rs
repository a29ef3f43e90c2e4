//! The metadata service at 169.254.169.254, as guests reach it: one listener inside each network's
//! DHCP namespace (where 169.254.169.254/32 sits on the DHCP port, and DHCP routes guests to it).
//! The listener knows its network; the connection's source address names the port, which
//! anti-spoofing guarantees belongs to the sender. The controller resolves (network, address) to
//! the one server holding it and answers only about that server.

use crate::client::Controller;
use anyhow::Result;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use onestack_core::compute::metadata::{serve_path, MetaAnswer};
use onestack_core::network::proto::{DhcpServer, METADATA_IP};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
struct ProxyState {
    ctl: Arc<Controller>,
    network_id: Arc<str>,
}

/// Running listeners by DHCP namespace.
pub struct MetadataProxies {
    ctl: Arc<Controller>,
    running: HashMap<String, tokio::task::JoinHandle<()>>,
    port: u16,
}

impl MetadataProxies {
    pub fn new(ctl: Arc<Controller>) -> Self {
        MetadataProxies {
            ctl,
            running: HashMap::new(),
            port: 80,
        }
    }

    /// Starts a listener for each DHCP server that has none, stops those whose server is gone.
    /// A listener that cannot bind yet (its namespace is being built) is retried on the next sync;
    /// returns false while any is missing.
    pub async fn sync(&mut self, servers: &[DhcpServer]) -> bool {
        let mut complete = true;
        let wanted: HashMap<&str, &DhcpServer> =
            servers.iter().map(|d| (d.namespace.as_str(), d)).collect();
        self.running.retain(|ns, task| {
            let keep = wanted.contains_key(ns.as_str()) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (ns, d) in wanted {
            if self.running.contains_key(ns) {
                continue;
            }
            match self.start(ns, &d.network_id).await {
                Ok(task) => {
                    self.running.insert(ns.to_string(), task);
                }
                Err(e) => {
                    complete = false;
                    tracing::warn!(namespace = ns, error = %e, "metadata listener not started yet");
                }
            }
        }
        complete
    }

    async fn start(&self, ns: &str, network_id: &str) -> Result<tokio::task::JoinHandle<()>> {
        let addr: SocketAddr = format!("{METADATA_IP}:{}", self.port).parse()?;
        let path = PathBuf::from(crate::net::netns::NETNS_DIR).join(ns);
        // The socket is made inside the namespace and keeps it; the thread that made it ends.
        let std_listener = crate::net::netns::run_in(Some(path), move || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .await?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let state = ProxyState {
            ctl: self.ctl.clone(),
            network_id: network_id.into(),
        };
        let router = axum::Router::new().fallback(answer).with_state(state);
        tracing::info!(namespace = ns, "metadata service listening on {addr}");
        Ok(tokio::spawn(async move {
            let svc = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::error!(error = %e, "metadata listener failed");
            }
        }))
    }

    pub fn stop_all(&mut self) {
        for (_, t) in self.running.drain() {
            t.abort();
        }
    }
}

async fn answer(
    State(s): State<ProxyState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
) -> Response {
    let ip = match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    let data = match s.ctl.metadata(&s.network_id, &ip).await {
        Ok(Some(d)) => d,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metadata lookup failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    match serve_path(&data, uri.path()) {
        MetaAnswer::Text(t) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], t).into_response()
        }
        MetaAnswer::Json(v) => {
            ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
        }
        MetaAnswer::Bytes(b) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response()
        }
        MetaAnswer::NotFound => StatusCode::NOT_FOUND.into_response(),
    }
}
