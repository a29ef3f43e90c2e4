//! Runs the controller's API services (identity, image, compute, network, block storage), the
//! dashboard and `/metrics` in this process until SIGTERM or Ctrl-C.

use crate::config::Config;
use crate::paths::DataDir;
use anyhow::{Context, Result};
use onestack_api::compute::ComputeState;
use onestack_api::image::ImageState;
use onestack_api::network::NetworkApiState;
use onestack_api::AppState;
use onestack_core::compute::{scheduler::Ratios, ComputeConfig, ComputeService};
use onestack_core::identity::IdentityService;
use onestack_core::image::ImageService;
use onestack_core::network::NetworkService;
use std::net::SocketAddr;
use std::sync::Arc;
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
        store.clone(),
        dd.fernet_keys(),
        Duration::from_secs(cfg.identity.token_lifetime),
    )
    .await
    .context("cannot start the identity service")?;
    identity.set_lockout(onestack_core::identity::Lockout {
        failure_attempts: cfg.security_compliance.lockout_failure_attempts,
        duration: Duration::from_secs(cfg.security_compliance.lockout_duration),
    });
    // Picks up key rotation and changes written by other processes.
    identity.spawn_refresher(Duration::from_secs(10));
    let state = AppState {
        identity,
        identity_url: cfg.identity_url().into(),
    };
    let name = crate::agent::local_host(&cfg);
    let images = ImageService::new_for(store.clone(), dd.images(), cfg.image.size_cap, &name)
        .await
        .context("cannot start the image service")?;
    // Image data on every controller: copy what is missing here from the others (on demand and
    // every 30 s), drop the files of deleted images. See onestack_core::image::replicate.
    images.enable_replication(
        name.clone(),
        dd.secret("agent-token")?,
        onestack_api::image::HttpPeers::new(),
    );
    images.spawn_replicator(Duration::from_secs(30));
    let network = Arc::new(NetworkService::new(store.clone(), network_config(&cfg)));
    // Ports of a cloud from before attachments were recorded: mark them before any request.
    let marked = network
        .backfill_attachments()
        .await
        .context("cannot record which device each port is attached to")?;
    if marked > 0 {
        tracing::info!(ports = marked, "recorded the attachments of existing ports");
    }
    let compute = ComputeService::new(
        store,
        images.clone(),
        ComputeConfig {
            ratios: Ratios {
                cpu: cfg.compute.cpu_allocation_ratio,
                ram: cfg.compute.ram_allocation_ratio,
                disk: cfg.compute.disk_allocation_ratio,
                reserved_ram_mb: cfg.compute.reserved_host_memory_mb,
            },
            force_config_drive: cfg.compute.force_config_drive,
            service_down_time: Duration::from_secs(cfg.compute.service_down_time),
            live_migration_bandwidth_mib: cfg.compute.live_migration_bandwidth,
            ..ComputeConfig::default()
        },
    )
    .await
    .context("cannot start the compute service")?;
    compute.attach_network(network.clone());
    let volumes = onestack_core::volume::VolumeService::new(
        compute.store().clone(),
        images.clone(),
        dd.volumes(),
        onestack_core::volume::VolumeConfig::default(),
    )
    .await
    .context("cannot start the block storage service")?;
    compute.attach_volumes(volumes.clone());
    let volume_state = onestack_api::volume::VolumeApiState {
        app: state.clone(),
        volumes,
        base_url: cfg.volume_url().into(),
    };
    let metrics_state = onestack_api::metrics::MetricsState {
        compute: compute.clone(),
    };
    let cluster = onestack_core::cluster::Cluster::new(
        compute.store().clone(),
        &name,
        &cluster_endpoints(&cfg),
    );
    state.identity.set_cluster(cluster.clone());
    cluster.spawn(singleton_work(&compute, &images));
    let controller_join = controller_join(&cfg, &dd)?.map(Arc::new);
    let compute_state = ComputeState {
        app: state.clone(),
        cluster: Some(cluster),
        controller_join,
        compute,
        images: images.clone(),
        base_url: cfg.compute_url().into(),
        image_url: cfg.image_url().into(),
        agent_token: dd.secret("agent-token")?.into(),
        http: reqwest::Client::new(),
    };
    let image_state = ImageState {
        app: state.clone(),
        images,
        base_url: cfg.image_url().into(),
    };
    let network_state = NetworkApiState {
        app: state.clone(),
        net: network,
        base_url: cfg.network_url().into(),
    };
    let identity_listener = bind(&cfg, cfg.api.identity_port, "identity").await?;
    let network_listener = bind(&cfg, cfg.api.network_port, "network").await?;
    tracing::info!(url = %cfg.network_url(), "network API listening");
    let image_listener = bind(&cfg, cfg.api.image_port, "image").await?;
    let compute_listener = bind(&cfg, cfg.api.compute_port, "compute").await?;
    let volume_listener = bind(&cfg, cfg.api.volume_port, "block storage").await?;
    tracing::info!(url = %cfg.volume_url(), "block storage API listening");
    let dashboard_listener = bind(&cfg, cfg.api.dashboard_port, "dashboard").await?;
    tracing::info!(url = %cfg.dashboard_url(), "dashboard listening");
    let metrics_listener = match cfg.api.metrics_port {
        0 => None,
        port => {
            let l = bind(&cfg, port, "metrics").await?;
            tracing::info!(url = %format!("http://{}:{port}/metrics", cfg.public_host()), "metrics listening");
            Some(l)
        }
    };
    tracing::info!(url = %cfg.compute_url(), "compute API listening");
    tracing::info!(url = %cfg.identity_url(), "identity API listening");
    tracing::info!(url = %cfg.image_url(), "image API listening");
    // One shutdown signal stops every listener; the first server to fail stops the process.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let identity_server = onestack_api::serve(
        identity_listener,
        onestack_api::identity::router(state),
        stopped(),
    );
    let image_server = onestack_api::serve(
        image_listener,
        onestack_api::image::router(image_state),
        stopped(),
    );
    let compute_server = onestack_api::serve(
        compute_listener,
        onestack_api::compute::router(compute_state),
        stopped(),
    );
    let network_server = onestack_api::serve(
        network_listener,
        onestack_api::network::router(network_state),
        stopped(),
    );
    let volume_server = onestack_api::serve(
        volume_listener,
        onestack_api::volume::router(volume_state),
        stopped(),
    );
    let drain_deadline = {
        let mut rx = stop_tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
            tokio::time::sleep(DRAIN).await;
        }
    };
    // The dashboard crate knows nothing of metrics; its requests are counted like the APIs'.
    let dashboard = onestack_api::metrics::tracked(
        onestack_dashboard::router(onestack_dashboard::DashboardConfig {
            identity_url: cfg.identity_url() + "/v3",
            compute_url: cfg.compute_url() + "/v2.1",
            network_url: cfg.network_url() + "/v2.0",
            image_url: cfg.image_url() + "/v2",
            volume_url: cfg.volume_url() + "/v3",
        }),
        "dashboard",
    );
    let dashboard_server = onestack_api::serve(dashboard_listener, dashboard, stopped());
    let metrics_server = {
        let stop = stopped();
        async move {
            match metrics_listener {
                Some(l) => {
                    onestack_api::serve(l, onestack_api::metrics::router(metrics_state), stop).await
                }
                None => Ok(()),
            }
        }
    };
    let signal = async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    let servers = async {
        tokio::join!(
            identity_server,
            image_server,
            compute_server,
            network_server,
            dashboard_server,
            volume_server,
            metrics_server,
            signal
        )
    };
    // In-flight requests get DRAIN to finish; what is still open then is mostly agents' long
    // polls (idempotent reads they repeat), which would otherwise hold the stop for 30 s.
    let (a, b, c, d, e, f, g, ()) = tokio::select! {
        r = servers => r,
        () = drain_deadline => {
            tracing::info!(drain_secs = DRAIN.as_secs(), "stopped; requests still open were cut");
            return Ok(());
        }
    };
    d.context("network API server failed")?;
    e.context("dashboard server failed")?;
    f.context("block storage API server failed")?;
    g.context("metrics server failed")?;
    a.context("identity API server failed")?;
    b.context("image API server failed")?;
    c.context("compute API server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Where this controller's services answer, by catalog service type (identity rewrites other
/// controllers' URLs in the catalogs it issues to these).
fn cluster_endpoints(cfg: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("identity", cfg.identity_url()),
        ("compute", cfg.compute_url()),
        ("image", cfg.image_url()),
        ("network", cfg.network_url()),
        ("volumev3", cfg.volume_url()),
        ("block-storage", cfg.volume_url()),
        ("dashboard", cfg.dashboard_url()),
    ]
}

/// The work exactly one controller does at a time (the leader): finishing creates, deletes and
/// uploads a controller that died left half done.
fn singleton_work(
    compute: &Arc<ComputeService>,
    images: &Arc<ImageService>,
) -> Vec<onestack_core::cluster::SingletonWork> {
    use onestack_core::cluster::SingletonWork;
    use onestack_core::compute::recovery::ABANDONED_AFTER;
    let (a, b, img) = (compute.clone(), compute.clone(), images.clone());
    vec![
        SingletonWork::new("requeue uploads of stopped controllers", move || {
            let img = img.clone();
            async move { img.requeue_abandoned_uploads().await }
        }),
        SingletonWork::new("place abandoned creates", move || {
            let c = a.clone();
            async move { c.recover_unscheduled(ABANDONED_AFTER).await }
        }),
        SingletonWork::new("release orphaned ports", move || {
            let c = b.clone();
            async move { c.reap_orphan_ports(ABANDONED_AFTER).await }
        }),
    ]
}

/// What another controller receives when it joins (`join --role controller`): the database
/// and the bootstrap passwords (its own `openrc`). None on SQLite: one controller only.
fn controller_join(cfg: &Config, dd: &DataDir) -> Result<Option<serde_json::Value>> {
    let url = database_url(cfg, dd);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(None);
    }
    let admin_password = if cfg.identity.admin_password.is_empty() {
        dd.secret("admin-password")?
    } else {
        cfg.identity.admin_password.clone()
    };
    Ok(Some(serde_json::json!({
        "database_url": url,
        "admin_password": admin_password,
        "demo_password": dd.secret("demo-password")?,
        "region": cfg.api.region,
        "namespace_prefix": cfg.network.namespace_prefix,
        "token_lifetime": cfg.identity.token_lifetime,
    })))
}

/// How long a stopping API server lets in-flight requests finish.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

pub fn network_config(cfg: &Config) -> onestack_core::network::NetworkConfig {
    onestack_core::network::NetworkConfig {
        mtu: cfg.network.mtu,
        namespace_prefix: cfg.network.namespace_prefix.clone(),
        max_fixed_ips_per_port: cfg.network.max_fixed_ips_per_port,
        max_subnet_host_routes: cfg.network.max_subnet_host_routes,
        max_dns_nameservers: cfg.network.max_dns_nameservers,
    }
}

async fn bind(cfg: &Config, port: u16, what: &str) -> Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(cfg.api.listen, port);
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what} API)"))
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
