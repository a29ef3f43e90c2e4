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
