//! API throughput of one controller on its store (SQLite, or PostgreSQL with
//! `ONESTACK_TEST_STORE=postgres`): reads, network creates and server creates (each placed on
//! a host, under the placement lock), with 8 clients at once. A benchmark, not a test: ignored
//! unless asked for — `scripts/bench-api.sh` runs it both ways and prints the ratios.

mod common;

use common::{ADMIN_PW, DEMO_PW};
use serde_json::{json, Value};
use std::time::Instant;

const CLIENTS: usize = 8;

/// `total` calls of `call(i)` spread over CLIENTS tasks; calls per second.
async fn rate<F, Fut>(total: usize, call: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < total {
                call(i).await;
                i += CLIENTS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark: scripts/bench-api.sh"]
async fn api_throughput() {
    let cp = common::start().await;
    // With ONESTACK_BENCH_CONTROLLERS=2 (PostgreSQL), a second controller of the same cloud in
    // this process takes every other call.
    let two = std::env::var("ONESTACK_BENCH_CONTROLLERS").as_deref() == Ok("2");
    let second = if two {
        Some(common::second_controller(&cp).await)
    } else {
        None
    };
    let pick = |i: usize, a: &str, b: Option<&str>| -> String {
        match b {
            Some(b) if i % 2 == 1 => b.to_string(),
            _ => a.to_string(),
        }
    };
    let http = reqwest::Client::new();
    let demo = common::login(&http, &cp.identity, "demo", DEMO_PW).await;
    let admin = common::login(&http, &cp.identity, "admin", ADMIN_PW).await;
    common::register_host(&http, &cp.compute, "h1", 4096, 4 << 20, 1 << 20).await;
    // Room for the creates.
    let project: Value = http
        .get(format!("{}/v3/auth/tokens", cp.identity))
        .header("x-auth-token", &admin)
        .header("x-subject-token", &demo)
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let pid = project["token"]["project"]["id"]
        .as_str()
        .expect("project")
        .to_string();
    let st = http
        .put(format!("{}/v2.1/os-quota-sets/{pid}", cp.compute))
        .header("x-auth-token", &admin)
        .json(&json!({"quota_set": {"instances": -1, "cores": -1, "ram": -1}}))
        .send()
        .await
        .expect("quota")
        .status();
    assert!(st.is_success());
    let st = http
        .put(format!("{}/v2.0/quotas/{pid}", cp.network))
        .header("x-auth-token", &admin)
        .json(&json!({"quota": {"network": -1}}))
        .send()
        .await
        .expect("network quota")
        .status();
    assert!(st.is_success());
    let image_id = common::raw_image(&http, &cp.image, &admin, 1 << 16, true).await;

    let ok = |r: reqwest::Response| assert!(r.status().is_success(), "{} {}", r.status(), r.url());
    let compute_b = second.as_ref().map(|b| b.compute.clone());
    let network_b = second.as_ref().map(|b| b.network.clone());
    let reads = {
        let (http, a, b, t) = (
            http.clone(),
            cp.compute.clone(),
            compute_b.clone(),
            demo.clone(),
        );
        rate(2000, move |i| {
            let (http, url, t) = (http.clone(), pick(i, &a, b.as_deref()), t.clone());
            async move {
                ok(http
                    .get(format!("{url}/v2.1/flavors/detail"))
                    .header("x-auth-token", t)
                    .send()
                    .await
                    .expect("get"));
            }
        })
        .await
    };
    let networks = {
        let (http, a, b, t) = (http.clone(), cp.network.clone(), network_b, demo.clone());
        rate(400, move |i| {
            let (http, url, t) = (http.clone(), pick(i, &a, b.as_deref()), t.clone());
            async move {
                ok(http
                    .post(format!("{url}/v2.0/networks"))
                    .header("x-auth-token", t)
                    .json(&json!({"network": {"name": format!("n{i}")}}))
                    .send()
                    .await
                    .expect("post"));
            }
        })
        .await
    };
    let servers = {
        let (http, a, b, t, img) = (
            http.clone(),
            cp.compute.clone(),
            compute_b,
            demo.clone(),
            image_id,
        );
        rate(400, move |i| {
            let (http, url, t, img) = (
                http.clone(),
                pick(i, &a, b.as_deref()),
                t.clone(),
                img.clone(),
            );
            async move {
                ok(http
                    .post(format!("{url}/v2.1/servers"))
                    .header("x-auth-token", t)
                    .json(&json!({"server": {"name": format!("s{i}"), "imageRef": img,
                                             "flavorRef": "1"}}))
                    .send()
                    .await
                    .expect("post"));
            }
        })
        .await
    };
    // Every create was placed, once.
    let detail: Value = http
        .get(format!("{}/v2.1/servers/detail?limit=1000", cp.compute))
        .header("x-auth-token", &demo)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let placed = detail["servers"]
        .as_array()
        .map_or(0, |l| l.iter().filter(|s| s["status"] != "ERROR").count());
    assert_eq!(placed, 400);
    let backend = std::env::var("ONESTACK_TEST_STORE").unwrap_or_else(|_| "sqlite".into());
    let backend = if two {
        format!("{backend}-2-controllers")
    } else {
        backend
    };
    println!(
        "BENCH backend={backend} reads_per_s={reads:.0} network_creates_per_s={networks:.0} \
         server_creates_per_s={servers:.0}"
    );
}
