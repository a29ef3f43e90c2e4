//! Two controllers on one PostgreSQL database (the test script's second pass sets
//! `ONESTACK_TEST_STORE=postgres`; on SQLite — one controller by nature — this is skipped): a
//! token one issues is good on the other, and servers created through both at once never book
//! a host's capacity twice.

mod common;

use common::DEMO_PW;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn two_controllers_share_tokens_and_never_double_book_a_host() {
    if std::env::var("ONESTACK_TEST_STORE").as_deref() != Ok("postgres") {
        eprintln!("two controllers need PostgreSQL (ONESTACK_TEST_STORE=postgres): skipped");
        return;
    }
    let a = common::start().await;
    let b = common::second_controller(&a).await;
    let http = reqwest::Client::new();
    let token = common::login(&http, &a.identity, "demo", DEMO_PW).await;
    // Issued by a, good on b.
    let r = http
        .get(format!("{}/v2.1/servers", b.compute))
        .header("x-auth-token", &token)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), StatusCode::OK);

    // Room for exactly six m1.tiny (512 MB each over the 512 MB the host keeps).
    common::register_host(&http, &b.compute, "h1", 64, 512 + 6 * 512, 1000).await;
    let image_id = common::raw_image(&http, &a.image, &token, 4096, false).await;

    // Ten creates at once (the project's quota), half through each controller.
    let creates = (0..10).map(|i| {
        let url = if i % 2 == 0 { &a.compute } else { &b.compute };
        http.post(format!("{url}/v2.1/servers"))
            .header("x-auth-token", &token)
            .json(
                &json!({"server": {"name": format!("s{i}"), "imageRef": image_id,
                                     "flavorRef": "1"}}),
            )
            .send()
    });
    for r in futures_util::future::join_all(creates).await {
        assert_eq!(r.expect("create").status(), StatusCode::ACCEPTED);
    }
    // Each is placed or refused once the scheduling is done.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (placed, refused) = loop {
        let list: Value = http
            .get(format!("{}/v2.1/servers/detail", a.compute))
            .header("x-auth-token", &token)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let servers = list["servers"].as_array().cloned().unwrap_or_default();
        let refused = servers.iter().filter(|s| s["status"] == "ERROR").count();
        let placed = servers
            .iter()
            .filter(|s| s["status"] != "ERROR" && s["OS-EXT-STS:task_state"] != "scheduling")
            .count();
        if placed + refused == 10 || Instant::now() > deadline {
            break (placed, refused);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((placed, refused), (6, 4));
    let h: Value = http
        .get(format!("{}/v2.1/os-hypervisors/detail", b.compute))
        .header(
            "x-auth-token",
            common::login(&http, &b.identity, "admin", common::ADMIN_PW).await,
        )
        .send()
        .await
        .expect("hypervisors")
        .json()
        .await
        .expect("json");
    assert_eq!(h["hypervisors"][0]["memory_mb_used"], 6 * 512);
}

fn on_postgres() -> bool {
    let yes = std::env::var("ONESTACK_TEST_STORE").as_deref() == Ok("postgres");
    if !yes {
        eprintln!("two controllers need PostgreSQL (ONESTACK_TEST_STORE=postgres): skipped");
    }
    yes
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(131).wrapping_add(seed) % 253) as u8)
        .collect()
}

/// A raw image holding `data`, uploaded through the image API at `image`; its id.
async fn upload(http: &reqwest::Client, image: &str, token: &str, data: &[u8]) -> String {
    let r = http
        .post(format!("{image}/v2/images"))
        .header("x-auth-token", token)
        .json(&json!({"name": "replicated", "disk_format": "raw", "container_format": "bare"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let st = http
        .put(format!("{image}/v2/images/{id}/file"))
        .header("x-auth-token", token)
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("upload")
        .status();
    assert_eq!(st, StatusCode::NO_CONTENT);
    id
}

async fn glance_download(
    http: &reqwest::Client,
    image: &str,
    token: &str,
    id: &str,
) -> (StatusCode, Vec<u8>) {
    let r = http
        .get(format!("{image}/v2/images/{id}/file"))
        .header("x-auth-token", token)
        .send()
        .await
        .expect("download");
    (r.status(), r.bytes().await.expect("body").to_vec())
}

fn image_files(cp: &common::ControlPlane) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cp.dir.path().join("images"))
        .expect("images dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn image_data_uploaded_to_one_controller_is_served_and_kept_by_the_other() {
    if !on_postgres() {
        return;
    }
    let a = common::start().await;
    let b = common::second_controller(&a).await;
    let beats = [
        common::replicate_images(&a, "ctl-a").await,
        common::replicate_images(&b, "ctl-b").await,
    ];
    let http = reqwest::Client::new();
    let token = common::login(&http, &a.identity, "demo", DEMO_PW).await;

    // Uploaded through a: the file is only there.
    let first = pattern(3 * 1024 * 1024 + 17, 1);
    let id = upload(&http, &a.image, &token, &first).await;
    let b_file = b.dir.path().join("images").join(&id);
    assert!(a.dir.path().join("images").join(&id).exists());
    assert!(!b_file.exists());

    // A peer's copy request is answered from b's own directory: 404, and b fetches nothing.
    let r = http
        .get(format!(
            "{}/internal/v1/images/{id}/file?local=1",
            b.compute
        ))
        .header(
            onestack_api::compute::AGENT_TOKEN_HEADER,
            common::AGENT_TOKEN,
        )
        .send()
        .await
        .expect("peer request");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!b_file.exists());

    // A Glance download through b: the same bytes, and b keeps the copy.
    let (st, got) = glance_download(&http, &b.image, &token, &id).await;
    assert_eq!(st, StatusCode::OK);
    assert!(got == first, "b served other bytes than a received");
    assert!(std::fs::read(&b_file).expect("b's copy") == first);
    assert!(
        image_files(&b).iter().all(|n| !n.starts_with('.')),
        "a temporary file is left: {:?}",
        image_files(&b)
    );

    // An agent asking a for an image uploaded through b gets it too (a copies it first).
    let second = pattern(1024 * 1024 + 5, 2);
    let id2 = upload(&http, &b.image, &token, &second).await;
    let r = http
        .get(format!("{}/internal/v1/images/{id2}/file", a.compute))
        .header(
            onestack_api::compute::AGENT_TOKEN_HEADER,
            common::AGENT_TOKEN,
        )
        .send()
        .await
        .expect("agent fetch");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.expect("body").to_vec() == second);
    assert!(a.dir.path().join("images").join(&id2).exists());

    // The sweep copies an image nobody asked b for.
    let sweep = b
        .images
        .spawn_replicator(Duration::from_millis(200))
        .expect("replication on");
    let third = pattern(2 * 1024 * 1024, 3);
    let id3 = upload(&http, &a.image, &token, &third).await;
    let b_file3 = b.dir.path().join("images").join(&id3);
    wait_for("b's sweep copies the third image", || b_file3.exists()).await;
    assert!(std::fs::read(&b_file3).expect("copy") == third);

    // Deleted through a: b's copy goes on its next sweep, and is not fetched back.
    let st = http
        .delete(format!("{}/v2/images/{id3}", a.image))
        .header("x-auth-token", &token)
        .send()
        .await
        .expect("delete")
        .status();
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(!a.dir.path().join("images").join(&id3).exists());
    wait_for("b's sweep removes the deleted image", || !b_file3.exists()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!b_file3.exists(), "the sweep brought a deleted image back");
    assert!(
        b_file.exists(),
        "the sweep removed an image still on record"
    );
    sweep.abort();
    for t in beats {
        t.abort();
    }
}

/// What the fake peer sends.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Bad {
    /// The right length, one byte flipped.
    Corrupt,
    /// Half the data, then the connection drops.
    Cut,
}

#[derive(Clone)]
struct FakePeer {
    /// Where the real data is (controller a's images).
    source: std::path::PathBuf,
    mode: std::sync::Arc<std::sync::Mutex<Bad>>,
    /// (query, authentication header) of each request.
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

async fn fake_peer_file(
    axum::extract::State(p): axum::extract::State<FakePeer>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let token = headers
        .get(onestack_api::compute::AGENT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    p.seen
        .lock()
        .expect("lock")
        .push((uri.query().unwrap_or_default().to_string(), token));
    let mut data = std::fs::read(p.source.join(&id)).expect("the real data");
    let len = data.len();
    let mode = *p.mode.lock().expect("lock");
    let body = match mode {
        Bad::Corrupt => {
            data[len / 2] ^= 0x40;
            axum::body::Body::from(data)
        }
        Bad::Cut => {
            data.truncate(len / 2);
            let parts: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
                Ok(data.into()),
                Err(std::io::Error::other("the peer died mid-transfer")),
            ];
            axum::body::Body::from_stream(futures_util::stream::iter(parts))
        }
    };
    axum::response::Response::builder()
        .header("content-length", len)
        .body(body)
        .expect("response")
}

#[tokio::test]
async fn a_peer_with_bad_data_leaves_no_file_and_the_next_peer_is_asked() {
    if !on_postgres() {
        return;
    }
    let a = common::start().await;
    let b = common::second_controller(&a).await;
    assert!(b.images.enable_replication(
        "ctl-b",
        common::AGENT_TOKEN,
        onestack_api::image::HttpPeers::new()
    ));
    let http = reqwest::Client::new();
    let token = common::login(&http, &a.identity, "demo", DEMO_PW).await;
    let data = pattern(2 * 1024 * 1024 + 3, 4);
    let id = upload(&http, &a.image, &token, &data).await;
    let b_file = b.dir.path().join("images").join(&id);

    // The only live peer sends bad data; a is not on record as up.
    let peer = FakePeer {
        source: a.dir.path().join("images"),
        mode: std::sync::Arc::new(std::sync::Mutex::new(Bad::Corrupt)),
        seen: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let evil_url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = axum::Router::new()
        .route(
            "/internal/v1/images/{id}/file",
            axum::routing::get(fake_peer_file),
        )
        .with_state(peer.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let evil_beat = common::beat_as_controller(&a.store, "ctl-evil", &evil_url).await;

    for mode in [Bad::Corrupt, Bad::Cut] {
        *peer.mode.lock().expect("lock") = mode;
        let (st, _) = glance_download(&http, &b.image, &token, &id).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{mode:?}");
        assert!(!b_file.exists(), "{mode:?}: a bad copy was kept");
        assert!(
            image_files(&b).is_empty(),
            "{mode:?}: files left: {:?}",
            image_files(&b)
        );
    }
    // The copy requests asked for the peer's own data, with the shared secret.
    let seen = peer.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|(q, t)| q == "local=1" && t == common::AGENT_TOKEN));

    // a comes up: the bad peer (fresher, so asked first) fails, a's copy is good.
    *peer.mode.lock().expect("lock") = Bad::Corrupt;
    let a_beat = common::beat_as_controller(&a.store, "ctl-a", &a.compute).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    evil_beat.abort();
    let now = chrono::Utc::now().timestamp_micros();
    let evil_ep = json!({ "compute": evil_url }).to_string();
    a.store
        .controller_heartbeat("ctl-evil", &evil_ep, "test", now, false)
        .await
        .expect("beat");
    let (st, got) = glance_download(&http, &b.image, &token, &id).await;
    assert_eq!(st, StatusCode::OK);
    assert!(got == data, "b served bad bytes");
    assert!(std::fs::read(&b_file).expect("b's copy") == data);
    assert_eq!(
        peer.seen.lock().expect("lock").len(),
        3,
        "the bad peer was asked first"
    );
    a_beat.abort();
    server.abort();
}
