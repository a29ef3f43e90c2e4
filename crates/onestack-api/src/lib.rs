//! OneStack's HTTP APIs. Handlers parse requests into calls on the application layer
//! (`onestack-core`) and render OpenStack-shaped responses; they never touch the database.

pub mod audit;
pub mod compute;
pub mod error;
pub mod extract;
pub mod identity;
pub mod image;
pub mod metrics;
pub mod middleware;
pub mod network;
pub mod routes;
pub mod volume;

use onestack_core::identity::IdentityService;
use std::sync::Arc;

/// Keystone's default `max_request_body_size`.
pub const MAX_BODY_BYTES: usize = 114_688;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub identity: Arc<IdentityService>,
    /// Public base URL of the identity API, e.g. `http://198.18.0.1:5000` (links, WWW-Authenticate).
    pub identity_url: Arc<str>,
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer address goes into audit records.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
