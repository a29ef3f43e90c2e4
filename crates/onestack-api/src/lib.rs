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

/// The other end of a connection: its address, and whether it came from a guest (the agent's
/// host firewall marks what arrives on OneStack's bridges with `GUEST_MARK`, and the kernel hands
/// the mark of the first packet to the accepted socket).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    pub from_guest: bool,
}

impl Peer {
    /// Reads the connection's mark; a socket that cannot say is not a guest's.
    pub fn of(stream: &tokio::net::TcpStream, addr: std::net::SocketAddr) -> Peer {
        use nix::sys::socket::{getsockopt, sockopt::Mark};
        let from_guest =
            getsockopt(stream, Mark).is_ok_and(|m| m == onestack_core::network::proto::GUEST_MARK);
        Peer { addr, from_guest }
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer::of(stream.io(), *stream.remote_addr())
    }
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
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{setsockopt, sockopt::Mark};

    /// A connection whose first packet carries `GUEST_MARK` is a guest's, others are not. Runs in
    /// a network namespace of its own (`tcp_fwmark_accept` is per namespace); needs root.
    #[test]
    fn a_connection_marked_by_the_host_firewall_is_a_guests() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root (a private network namespace)");
            return;
        }
        let seen = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip");
            assert!(up.success());
            std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "1").expect("sysctl");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let at = listener.local_addr().expect("addr");
                let mut seen = Vec::new();
                for mark in [onestack_core::network::proto::GUEST_MARK, 0, 7] {
                    let client = tokio::net::TcpSocket::new_v4().expect("socket");
                    if mark != 0 {
                        setsockopt(&client, Mark, &mark).expect("SO_MARK");
                    }
                    let _conn = client.connect(at).await.expect("connect");
                    let (stream, addr) = listener.accept().await.expect("accept");
                    seen.push(Peer::of(&stream, addr).from_guest);
                }
                seen
            })
        })
        .join()
        .expect("thread");
        assert_eq!(seen, vec![true, false, false]);
    }
}
