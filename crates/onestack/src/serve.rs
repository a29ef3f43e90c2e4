//! Runs the controller's API services in this process until SIGTERM or Ctrl-C.

use crate::config::Config;
use crate::paths::DataDir;
use anyhow::{Context, Result};
use onestack_api::AppState;
use onestack_core::identity::IdentityService;
use std::net::SocketAddr;
use std::time::Duration;

pub fn database_url(cfg: &Config, dd: &DataDir) -> String {
    if cfg.database.url.is_empty() {
        format!("sqlite://{}", dd.database().display())
    } else {
        cfg.database.url.clone()
    }
}

pub async fn run(cfg: Config, dd: DataDir) -> Result<()> {
    let store = onestack_store::Store::open(&database_url(&cfg, &dd))
        .await
        .context("cannot open the state store")?;
    let identity = IdentityService::new(
        store,
        dd.fernet_keys(),
        Duration::from_secs(cfg.identity.token_lifetime),
    )
    .await
    .context("cannot start the identity service")?;
    // Picks up key rotation and changes written by other processes.
    identity.spawn_refresher(Duration::from_secs(10));
    let state = AppState {
        identity,
        identity_url: cfg.identity_url().into(),
    };
    let addr = SocketAddr::new(cfg.api.listen, cfg.api.identity_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (identity API)"))?;
    tracing::info!(%addr, url = %cfg.identity_url(), "identity API listening");
    onestack_api::serve(
        listener,
        onestack_api::identity::router(state),
        shutdown_signal(),
    )
    .await
    .context("identity API server failed")?;
    tracing::info!("stopped");
    Ok(())
}

pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
