//! The control plane the API tests drive: every service's real router (identity, compute,
//! image, network, block storage, metrics) on its own loopback port over one temporary SQLite
//! store, bootstrapped with an admin and a demo user. No hypervisor: tests play the agents.

// Each test binary uses its own part of this.
#![allow(dead_code)]

use onestack_api::compute::ComputeState;
use onestack_api::image::ImageState;
use onestack_api::network::NetworkApiState;
use onestack_api::volume::VolumeApiState;
use onestack_api::AppState;
use onestack_core::compute::{ComputeConfig, ComputeService};
use onestack_core::identity::bootstrap::{self, BootstrapParams};
use onestack_core::identity::IdentityService;
use onestack_core::image::ImageService;
use onestack_core::network::{NetworkConfig, NetworkService};
use onestack_store::Store;
use std::sync::Arc;
use std::time::Duration;

pub const ADMIN_PW: &str = "admin-secret";
pub const DEMO_PW: &str = "demo-secret";
pub const AGENT_TOKEN: &str = "agent-secret-for-tests";

pub struct ControlPlane {
    pub store: Store,
    /// The identity service behind `identity` (tests set its lockout).
    pub identity_service: Arc<IdentityService>,
    /// What `store` was opened with (to open it again, as a restarted controller would).
    pub db_url: String,
    pub net: Arc<NetworkService>,
    /// The image service behind `image` (and the internal API's image routes).
    pub images: Arc<ImageService>,
    /// The compute service behind `compute` (the leader's recovery work is called on it).
    pub compute_service: Arc<ComputeService>,
    /// Base URLs, `http://127.0.0.1:PORT`.
    pub identity: String,
    pub compute: String,
    pub image: String,
    pub network: String,
    pub volume: String,
    pub metrics: String,
    pub dir: tempfile::TempDir,
}

/// The store the tests use: SQLite in `dir`, or — with `ONESTACK_TEST_STORE=postgres` — a fresh
/// database on the PostgreSQL server `ONESTACK_TEST_POSTGRES_URL` names (the test script runs
/// the whole API suite both ways). The server is the test script's own, removed with it.
pub async fn store_url(dir: &std::path::Path) -> String {
    if std::env::var("ONESTACK_TEST_STORE").as_deref() != Ok("postgres") {
        return format!("sqlite://{}/t.db", dir.display());
    }
    let admin = std::env::var("ONESTACK_TEST_POSTGRES_URL")
        .expect("ONESTACK_TEST_STORE=postgres needs ONESTACK_TEST_POSTGRES_URL");
    let name = format!("onestack_api_{}", uuid_like());
    onestack_store::create_postgres_database(&admin, &name)
        .await
        .expect("create the test database")
}

/// A name no other test of any process picks.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

pub async fn start() -> ControlPlane {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = store_url(dir.path()).await;
    let keys = dir.path().join("keys");
    start_on(db_url, keys, dir).await
}

/// Another controller of `first`'s cloud: its own routers, ports and directories, the same
/// database (and so the same token keys: a token one issues validates on the other).
pub async fn second_controller(first: &ControlPlane) -> ControlPlane {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    start_on(first.db_url.clone(), keys, dir).await
}

async fn start_on(
    db_url: String,
    keys: std::path::PathBuf,
    dir: tempfile::TempDir,
) -> ControlPlane {
    let store = Store::open(&db_url).await.expect("store");
    let mut listeners = Vec::new();
    for _ in 0..6 {
        listeners.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().expect("addr")))
        .collect();
    bootstrap::run(
        &store,
        &BootstrapParams {
            admin_password: ADMIN_PW.into(),
            demo_password: DEMO_PW.into(),
            region: "RegionOne".into(),
            services: vec![],
        },
    )
    .await
    .expect("bootstrap");
    let identity = IdentityService::new(store.clone(), keys, Duration::from_secs(3600))
        .await
        .expect("identity");
    let identity_service = identity.clone();
    let app = AppState {
        identity,
        identity_url: urls[0].clone().into(),
    };
    let images = ImageService::new(store.clone(), dir.path().join("images"), 1 << 40)
        .await
        .expect("images");
    let image_service = images.clone();
    let compute = ComputeService::new(store.clone(), images.clone(), ComputeConfig::default())
        .await
        .expect("compute");
    let volumes = onestack_core::volume::VolumeService::new(
        store.clone(),
        images.clone(),
        dir.path().join("volumes"),
        onestack_core::volume::VolumeConfig::default(),
    )
    .await
    .expect("volumes");
    compute.attach_volumes(volumes.clone());
    let net = Arc::new(NetworkService::new(store.clone(), NetworkConfig::default()));
    let routers = vec![
        onestack_api::identity::router(app.clone()),
        onestack_api::compute::router(ComputeState {
            app: app.clone(),
            compute: compute.clone(),
            images: images.clone(),
            base_url: urls[1].clone().into(),
            image_url: urls[2].clone().into(),
            agent_token: AGENT_TOKEN.into(),
            http: reqwest::Client::new(),
            cluster: None,
            controller_join: None,
        }),
        onestack_api::image::router(ImageState {
            app: app.clone(),
            images,
            base_url: urls[2].clone().into(),
        }),
        onestack_api::network::router(NetworkApiState {
            app: app.clone(),
            net: net.clone(),
            base_url: urls[3].clone().into(),
        }),
        onestack_api::volume::router(VolumeApiState {
            app,
            volumes,
            base_url: urls[4].clone().into(),
        }),
        onestack_api::metrics::router(onestack_api::metrics::MetricsState {
            compute: compute.clone(),
        }),
    ];
    for (l, r) in listeners.into_iter().zip(routers) {
        tokio::spawn(onestack_api::serve(l, r, std::future::pending()));
    }
    ControlPlane {
        store,
        identity_service,
        db_url,
        net,
        images: image_service,
        compute_service: compute,
        identity: urls[0].clone(),
        compute: urls[1].clone(),
        image: urls[2].clone(),
        network: urls[3].clone(),
        volume: urls[4].clone(),
        metrics: urls[5].clone(),
        dir,
    }
}

/// A project-scoped token for `user` (whose project has the user's name: admin, demo).
pub async fn login(http: &reqwest::Client, identity: &str, user: &str, password: &str) -> String {
    login_to(http, identity, user, password, user).await.0
}

/// Plays a compute agent: registers `host` with this capacity on the compute API at `compute`.
pub async fn register_host(
    http: &reqwest::Client,
    compute: &str,
    host: &str,
    vcpus: i64,
    memory_mb: i64,
    disk_gb: i64,
) {
    let st = http
        .post(format!("{compute}/internal/v1/hosts"))
        .header(onestack_api::compute::AGENT_TOKEN_HEADER, AGENT_TOKEN)
        .json(&serde_json::json!({"host": host, "host_ip": "198.18.0.2",
            "agent_url": "http://198.18.0.2:1", "vcpus": vcpus, "memory_mb": memory_mb,
            "local_gb": disk_gb, "cpu_info": {}, "hypervisor_type": "QEMU",
            "hypervisor_version": 7002000, "virt_type": "qemu", "availability_zone": null}))
        .send()
        .await
        .expect("register the host")
        .status();
    assert_eq!(st, reqwest::StatusCode::OK, "register {host}");
}

/// An active raw image of `size` bytes (public when `public`), made with `token`; its id.
pub async fn raw_image(
    http: &reqwest::Client,
    image: &str,
    token: &str,
    size: usize,
    public: bool,
) -> String {
    let mut body = serde_json::json!({"name": "img", "disk_format": "raw",
                                      "container_format": "bare"});
    if public {
        body["visibility"] = "public".into();
    }
    let r = http
        .post(format!("{image}/v2/images"))
        .header("x-auth-token", token)
        .json(&body)
        .send()
        .await
        .expect("image create");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.expect("image json");
    let id = v["id"].as_str().expect("image id").to_string();
    let st = http
        .put(format!("{image}/v2/images/{id}/file"))
        .header("x-auth-token", token)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; size])
        .send()
        .await
        .expect("upload")
        .status();
    assert_eq!(st, reqwest::StatusCode::NO_CONTENT);
    id
}

/// Beats controller `name`'s heartbeat (compute API at `compute`) every second, as a
/// controller's cluster loop would, until the task is aborted.
pub async fn beat_as_controller(
    store: &Store,
    name: &str,
    compute: &str,
) -> tokio::task::JoinHandle<()> {
    let (store, name) = (store.clone(), name.to_string());
    let endpoints = serde_json::json!({ "compute": compute }).to_string();
    let beat = move || {
        let (store, name, endpoints) = (store.clone(), name.clone(), endpoints.clone());
        async move {
            let now = chrono::Utc::now().timestamp_micros();
            store
                .controller_heartbeat(&name, &endpoints, "test", now, false)
                .await
                .expect("controller heartbeat");
        }
    };
    // On record before the caller goes on (a peer must be found from the first request).
    beat().await;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            beat().await;
        }
    })
}

/// Makes `cp` controller `name` of its cloud for image replication: it copies missing image
/// data from the other controllers over HTTP, and beats its heartbeat so they find it.
pub async fn replicate_images(cp: &ControlPlane, name: &str) -> tokio::task::JoinHandle<()> {
    assert!(cp
        .images
        .enable_replication(name, AGENT_TOKEN, onestack_api::image::HttpPeers::new()));
    beat_as_controller(&cp.store, name, &cp.compute).await
}

/// A password login scoped to `project` (by name, in the default domain): the token and the
/// token's body.
pub async fn login_to(
    http: &reqwest::Client,
    identity: &str,
    user: &str,
    password: &str,
    project: &str,
) -> (String, serde_json::Value) {
    let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
    let r = http
        .post(format!("{identity}/v3/auth/tokens"))
        .json(&body)
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED, "login as {user}");
    let token = r.headers()["x-subject-token"]
        .to_str()
        .expect("token")
        .to_string();
    (token, r.json().await.expect("token body"))
}

/// A new project `name` and a user `name` (password `password`) holding `role` on it, made with
/// the admin's token.
pub async fn new_project_user(
    http: &reqwest::Client,
    identity: &str,
    admin: &str,
    name: &str,
    password: &str,
    role: &str,
) {
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{identity}{path}"))
            .header("x-auth-token", admin)
            .json(&body)
            .send()
    };
    let r = post(
        "/v3/projects",
        serde_json::json!({"project": {"name": name, "domain_id": "default"}}),
    )
    .await
    .expect("project");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let p: serde_json::Value = r.json().await.expect("project json");
    let r = post(
        "/v3/users",
        serde_json::json!({"user": {"name": name, "password": password, "domain_id": "default",
                                    "default_project_id": p["project"]["id"]}}),
    )
    .await
    .expect("user");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let u: serde_json::Value = r.json().await.expect("user json");
    let roles: serde_json::Value = http
        .get(format!("{identity}/v3/roles?name={role}"))
        .header("x-auth-token", admin)
        .send()
        .await
        .expect("roles")
        .json()
        .await
        .expect("roles json");
    let st = http
        .put(format!(
            "{identity}/v3/projects/{}/users/{}/roles/{}",
            p["project"]["id"].as_str().expect("project id"),
            u["user"]["id"].as_str().expect("user id"),
            roles["roles"][0]["id"].as_str().expect("role id")
        ))
        .header("x-auth-token", admin)
        .send()
        .await
        .expect("grant")
        .status();
    assert_eq!(st, reqwest::StatusCode::NO_CONTENT, "grant {role}");
}
