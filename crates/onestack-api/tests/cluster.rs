//! The controllers' leader: its singleton work finishes what a controller killed mid-request
//! left (a server never placed, ports bound to no server), and its lease moves to another
//! controller when its database session dies (PostgreSQL only).

mod common;

use common::{ADMIN_PW, DEMO_PW};
use onestack_core::cluster::{Cluster, SingletonWork};
use onestack_core::compute::recovery::ABANDONED_AFTER;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = http.request(method, url).header("x-auth-token", token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("send");
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

/// Makes a row look untouched for an hour (what a controller killed long ago leaves).
async fn age(c: &common::ControlPlane, table: &str, id: &str) {
    sqlx::query(&format!(
        "UPDATE {table} SET updated_at = '2000-01-01T00:00:00Z' WHERE id = $1"
    ))
    .bind(id)
    .execute(c.store.pool())
    .await
    .expect("age the row");
}

/// What a server create does to a port the user handed in, before the server's record exists:
/// compute attaches it to the new server (`device_id`, owner, and the attachment mark).
async fn attach_as_compute(c: &common::ControlPlane, port_id: &str, server_id: &str) {
    let mut row = c.store.net_get(port_id).await.expect("port row");
    let mut body: Value = serde_json::from_str(&row.body).expect("port json");
    body["device_id"] = json!(server_id);
    body["device_owner"] = json!("compute:nova");
    body["bound_device"] = json!(server_id);
    row.body = body.to_string();
    row.device_id = Some(server_id.to_string());
    let mut tx = c.store.net_tx().await.expect("tx");
    tx.update(&row).await.expect("update");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn the_leader_finishes_creates_and_deletes_a_dead_controller_cut_short() {
    let c = common::start().await;
    c.compute_service.attach_network(c.net.clone());
    let http = reqwest::Client::new();
    let demo = common::login(&http, &c.identity, "demo", DEMO_PW).await;
    let admin = common::login(&http, &c.identity, "admin", ADMIN_PW).await;
    common::register_host(&http, &c.compute, "h1", 8, 8192, 100).await;
    let image = common::raw_image(&http, &c.image, &demo, 4096, false).await;
    let (st, net) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/v2.0/networks", c.network),
        &demo,
        Some(json!({"network": {"name": "private"}})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{net}");
    let net_id = net["network"]["id"].as_str().expect("id").to_string();
    let (st, v) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/v2.0/subnets", c.network),
        &demo,
        Some(json!({"subnet": {"network_id": net_id, "ip_version": 4,
                               "cidr": "198.18.5.0/24"}})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let create = |name: &str| {
        call(
            &http,
            reqwest::Method::POST,
            format!("{}/v2.1/servers", c.compute),
            &demo,
            Some(json!({"server": {"name": name, "imageRef": image, "flavorRef": "1"}})),
        )
    };
    let ports_of = |server: String| {
        let http = http.clone();
        let url = format!("{}/v2.0/ports?device_id={server}", c.network);
        let admin = admin.clone();
        async move {
            let (st, v) = call(&http, reqwest::Method::GET, url, &admin, None).await;
            assert_eq!(st, StatusCode::OK);
            v["ports"].as_array().cloned().unwrap_or_default()
        }
    };

    // 1. A create cut after its record: the server waits for a host no request will give it.
    let (st, s1) = create("cut-before-placement").await;
    assert_eq!(st, StatusCode::ACCEPTED, "{s1}");
    let s1 = s1["server"]["id"].as_str().expect("id").to_string();
    sqlx::query(
        "UPDATE instances SET host = NULL, node = NULL, task_state = 'scheduling' WHERE id = $1",
    )
    .bind(&s1)
    .execute(c.store.pool())
    .await
    .expect("unplace");
    // Recent: a request may still be placing it, so it is left alone.
    let svc = &c.compute_service;
    assert_eq!(
        svc.recover_unscheduled(ABANDONED_AFTER).await.expect("r"),
        0
    );
    age(&c, "instances", &s1).await;
    assert_eq!(
        svc.recover_unscheduled(ABANDONED_AFTER).await.expect("r"),
        1
    );
    let placed = c.store.get_instance(&s1).await.expect("get");
    assert_eq!(placed.host.as_deref(), Some("h1"));
    assert_eq!(placed.task_state.as_deref(), Some("spawning"));
    assert_eq!(
        svc.recover_unscheduled(ABANDONED_AFTER).await.expect("r"),
        0
    );

    // 2. A delete cut after its record: the server is gone, its port (made for it) is not.
    let (st, s2) = create("cut-mid-delete").await;
    assert_eq!(st, StatusCode::ACCEPTED, "{s2}");
    let s2 = s2["server"]["id"].as_str().expect("id").to_string();
    let s2_ports = ports_of(s2.clone()).await;
    assert_eq!(s2_ports.len(), 1, "{s2_ports:?}");
    assert!(c
        .store
        .mark_instance_deleted(&s2, "2000-01-01T00:00:00Z")
        .await
        .expect("mark"));

    // 3. A create cut between its ports and its record: the user's port is bound to a server
    // that never existed; another such port is recent (a create may be under way).
    let mut user_ports = Vec::new();
    for _ in 0..2 {
        let (st, p) = call(
            &http,
            reqwest::Method::POST,
            format!("{}/v2.0/ports", c.network),
            &admin,
            Some(json!({"port": {"network_id": net_id}})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{p}");
        let id = p["port"]["id"].as_str().expect("id").to_string();
        attach_as_compute(&c, &id, &uuid::Uuid::new_v4().to_string()).await;
        user_ports.push(id);
    }
    let port_id = |p: &Value| p["id"].as_str().unwrap_or_default().to_string();
    age(&c, "net_resources", &port_id(&s2_ports[0])).await;
    age(&c, "net_resources", &user_ports[0]).await;

    assert_eq!(
        svc.reap_orphan_ports(ABANDONED_AFTER).await.expect("reap"),
        2
    );
    // The server's own port is deleted (its address free again), the user's is unbound.
    let (st, _) = call(
        &http,
        reqwest::Method::GET,
        format!("{}/v2.0/ports/{}", c.network, port_id(&s2_ports[0])),
        &admin,
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let alloc = c.store.net_allocations(Some(&net_id)).await.expect("alloc");
    assert!(
        !alloc.iter().any(|a| a.port_id == port_id(&s2_ports[0])),
        "the deleted server's address is still held: {alloc:?}"
    );
    let (_, kept) = call(
        &http,
        reqwest::Method::GET,
        format!("{}/v2.0/ports/{}", c.network, user_ports[0]),
        &admin,
        None,
    )
    .await;
    assert_eq!(kept["port"]["device_id"], "", "{kept}");
    assert_eq!(kept["port"]["device_owner"], "", "{kept}");
    let (_, recent) = call(
        &http,
        reqwest::Method::GET,
        format!("{}/v2.0/ports/{}", c.network, user_ports[1]),
        &admin,
        None,
    )
    .await;
    assert_eq!(recent["port"]["device_owner"], "compute:nova", "{recent}");
    // The live server's port was never touched.
    assert_eq!(ports_of(s1).await.len(), 1);
    assert_eq!(
        svc.reap_orphan_ports(ABANDONED_AFTER).await.expect("reap"),
        0
    );
}

/// Counts the singleton rounds a controller runs.
fn counting(runs: &Arc<AtomicU64>) -> Vec<SingletonWork> {
    let runs = runs.clone();
    vec![SingletonWork {
        name: "count",
        run: Box::new(move || {
            let runs = runs.clone();
            Box::pin(async move {
                runs.fetch_add(1, Ordering::Relaxed);
            })
        }),
    }]
}

#[tokio::test]
async fn the_lease_moves_when_the_leaders_database_session_dies() {
    if std::env::var("ONESTACK_TEST_STORE").as_deref() != Ok("postgres") {
        eprintln!("several controllers need PostgreSQL (ONESTACK_TEST_STORE=postgres): skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let url = common::store_url(dir.path()).await;
    // Each controller its own pool, as separate processes would have.
    let sa = onestack_store::Store::open(&url).await.expect("a");
    let sb = onestack_store::Store::open(&url).await.expect("b");
    let a = Cluster::new(
        sa.clone(),
        "a",
        &[("compute", "http://198.18.0.1:8774".into())],
    );
    let (ra, rb) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let ta = a.spawn(counting(&ra));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.is_leader() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.is_leader(), "the first controller takes the lease");
    let b = Cluster::new(
        sb.clone(),
        "b",
        &[("compute", "http://198.18.0.2:8774".into())],
    );
    let tb = b.spawn(counting(&rb));
    // b keeps asking, a keeps leading: one leader, and only it works.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(a.is_leader() && !b.is_leader());
    assert!(ra.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        rb.load(Ordering::Relaxed),
        0,
        "the follower ran singleton work"
    );
    let leaders: Vec<String> = sb
        .list_controllers()
        .await
        .expect("list")
        .into_iter()
        .filter(|c| c.leader_since_us.is_some())
        .map(|c| c.name)
        .collect();
    assert_eq!(leaders, vec!["a".to_string()]);
    // a dies: its task stops and its sessions end (as a killed process's do).
    let died = Instant::now();
    ta.abort();
    let _ = ta.await;
    sa.pool().close().await;
    while !b.is_leader() && died.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = died.elapsed();
    assert!(b.is_leader(), "b did not take over");
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rb.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rb.load(Ordering::Relaxed) >= 1,
        "the new leader does the work"
    );
    let rec = sb.list_controllers().await.expect("list");
    let lead: Vec<&str> = rec
        .iter()
        .filter(|c| c.leader_since_us.is_some())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(lead, vec!["b"]);
    eprintln!("the lease moved in {took:?}");
    tb.abort();
}
