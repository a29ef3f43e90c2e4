//! Two controllers on one PostgreSQL database (the test script's second pass sets
//! `ONESTACK_TEST_STORE=postgres`; on SQLite — one controller by nature — this is skipped): a
//! token one issues is good on the other, and servers created through both at once never book
//! a host's capacity twice.

mod common;

use common::{AGENT_TOKEN, DEMO_PW};
use onestack_api::compute::AGENT_TOKEN_HEADER;
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
    let st = http
        .post(format!("{}/internal/v1/hosts", b.compute))
        .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
        .json(
            &json!({"host": "h1", "host_ip": "198.18.0.2", "agent_url": "http://198.18.0.2:1",
            "vcpus": 64, "memory_mb": 512 + 6 * 512, "local_gb": 1000, "cpu_info": {},
            "hypervisor_type": "QEMU", "hypervisor_version": 7002000, "virt_type": "qemu",
            "availability_zone": null}),
        )
        .send()
        .await
        .expect("host")
        .status();
    assert_eq!(st, StatusCode::OK);
    let image: Value = http
        .post(format!("{}/v2/images", a.image))
        .header("x-auth-token", &token)
        .json(&json!({"name": "img", "disk_format": "raw", "container_format": "bare"}))
        .send()
        .await
        .expect("image")
        .json()
        .await
        .expect("json");
    let image_id = image["id"].as_str().expect("id").to_string();
    let st = http
        .put(format!("{}/v2/images/{image_id}/file", b.image))
        .header("x-auth-token", &token)
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 4096])
        .send()
        .await
        .expect("upload")
        .status();
    assert_eq!(st, StatusCode::NO_CONTENT);

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
