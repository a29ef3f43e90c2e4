//! The metadata service at 169.254.169.254, as guests reach it: one listener inside each network's
//! DHCP namespace (where 169.254.169.254/32 sits on the DHCP port, and DHCP routes guests to it).
//! The listener knows its network; the connection's source address names the port, which
//! anti-spoofing guarantees belongs to the sender. The controller resolves (network, address) to
//! the one server holding it and answers only about that server.

use crate::client::Controller;
use crate::retry::Backoff;
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
use std::time::Duration;

#[derive(Clone)]
struct ProxyState {
    ctl: Arc<Controller>,
    network_id: Arc<str>,
}

/// Running listeners by DHCP namespace.
pub struct MetadataProxies {
    ctl: Arc<Controller>,
    running: HashMap<String, Listener>,
    /// Listeners that failed to start: when to try again.
    retry: HashMap<String, Failing>,
    port: u16,
}

struct Listener {
    task: tokio::task::JoinHandle<()>,
    /// The namespace the socket lives in: a namespace made again under the same name (its
    /// mount was lost, or it was deleted) needs a new listener.
    ns: Option<(u64, u64)>,
}

struct Failing {
    backoff: Backoff,
    /// The namespace at the failure; another one there now is worth a try at once.
    ns: Option<(u64, u64)>,
}

fn ns_path(ns: &str) -> PathBuf {
    PathBuf::from(crate::net::netns::NETNS_DIR).join(ns)
}

impl MetadataProxies {
    pub fn new(ctl: Arc<Controller>) -> Self {
        MetadataProxies {
            ctl,
            running: HashMap::new(),
            retry: HashMap::new(),
            port: 80,
        }
    }

    /// Starts a listener for each DHCP server that has none (or whose listener ended, or lives
    /// in a namespace that is no longer the named one), stops those whose server is gone. A
    /// listener that cannot start (its namespace is being built) is retried by a later sync
    /// after a backoff (1 s doubling to 30 s); returns false while any is missing. Call it
    /// every few seconds: this is how a lost listener comes back.
    pub async fn sync(&mut self, servers: &[DhcpServer]) -> bool {
        let mut complete = true;
        let wanted: HashMap<&str, &DhcpServer> =
            servers.iter().map(|d| (d.namespace.as_str(), d)).collect();
        self.retry.retain(|ns, _| wanted.contains_key(ns.as_str()));
        self.running.retain(|ns, l| {
            let current = crate::net::netns::identity(&ns_path(ns));
            let keep = wanted.contains_key(ns.as_str()) && !l.task.is_finished() && current == l.ns;
            if !keep {
                if wanted.contains_key(ns.as_str()) {
                    tracing::warn!(namespace = %ns, "metadata listener lost (it ended, or its \
                        namespace was made again); starting it again");
                }
                l.task.abort();
            }
            keep
        });
        let now = std::time::Instant::now();
        for (ns, d) in wanted {
            if self.running.contains_key(ns) {
                continue;
            }
            let current = crate::net::netns::identity(&ns_path(ns));
            if let Some(f) = self.retry.get(ns) {
                if f.ns == current && !f.backoff.ready(now) {
                    complete = false;
                    continue;
                }
            }
            match self.start(ns, &d.network_id).await {
                Ok(task) => {
                    if let Some(mut f) = self.retry.remove(ns) {
                        let n = f.backoff.succeeded();
                        tracing::info!(
                            namespace = ns,
                            failures = n,
                            "metadata listener started after failures"
                        );
                    }
                    self.running
                        .insert(ns.to_string(), Listener { task, ns: current });
                }
                Err(e) => {
                    complete = false;
                    let f = self.retry.entry(ns.to_string()).or_insert_with(|| Failing {
                        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
                        ns: current,
                    });
                    f.ns = current;
                    let r = f.backoff.failed(now);
                    if let Some(unsaid) = r.log {
                        tracing::warn!(namespace = ns, error = %format!("{e:#}"), attempt = r.attempt,
                            retry_in_s = r.retry_in.as_secs(), unsaid, "metadata listener not started yet");
                    }
                }
            }
        }
        complete
    }

    async fn start(&self, ns: &str, network_id: &str) -> Result<tokio::task::JoinHandle<()>> {
        let addr: SocketAddr = format!("{METADATA_IP}:{}", self.port).parse()?;
        let path = ns_path(ns);
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
        for (_, l) in self.running.drain() {
            l.task.abort();
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
