//! Compute API integration tests (control plane only): the real identity, image and compute
//! routers over a temporary SQLite store, with compute hosts registered through the internal
//! agent API — no hypervisor, the test plays the agent.

mod common;

use common::{ADMIN_PW, AGENT_TOKEN, DEMO_PW};
use onestack_api::compute::AGENT_TOKEN_HEADER;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

struct Cloud {
    store: onestack_store::Store,
    db_url: String,
    identity_url: String,
    image_url: String,
    url: String,
    volume_url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start() -> Cloud {
    let cp = common::start().await;
    Cloud {
        store: cp.store,
        db_url: cp.db_url,
        identity_url: cp.identity,
        image_url: cp.image,
        url: cp.compute,
        volume_url: cp.volume,
        http: reqwest::Client::new(),
        _dir: cp.dir,
    }
}

impl Cloud {
    async fn token(&self, user: &str, pw: &str, project: &str) -> String {
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": pw}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
        let resp = self
            .http
            .post(format!("{}/v3/auth/tokens", self.identity_url))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.headers()["x-subject-token"]
            .to_str()
            .expect("header")
            .to_string()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.url)
        };
        let mut req = self.http.request(method, url).header("x-auth-token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            headers,
        )
    }

    /// Plays a compute agent: registers a host with the given capacity.
    async fn register_host(&self, host: &str, vcpus: i64, memory_mb: i64, disk_gb: i64) {
        common::register_host(&self.http, &self.url, host, vcpus, memory_mb, disk_gb).await;
    }

    /// An active raw image of `size` bytes, public.
    async fn image(&self, admin: &str, size: usize) -> String {
        common::raw_image(&self.http, &self.image_url, admin, size, true).await
    }
}

fn server_body(image: &str, flavor: &str) -> Value {
    json!({"server": {"name": "s", "imageRef": image, "flavorRef": flavor}})
}

#[tokio::test]
async fn versions_microversions_and_nova_error_bodies() {
    let c = start().await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let (st, v, _) = c.call(Method::GET, "/", &demo, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["versions"][1]["id"], "v2.1");
    assert_eq!(v["versions"][1]["version"], "2.1");
    let resp = c
        .http
        .get(format!("{}/v2.1/flavors", c.url))
        .header("x-auth-token", &demo)
        .header("openstack-api-version", "compute 2.1")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["openstack-api-version"], "compute 2.1");
    assert_eq!(resp.headers()["x-openstack-nova-api-version"], "2.1");
    for (h, want) in [
        ("compute 2.90", 406),
        ("compute latest", 200),
        ("compute 3.0", 406),
        ("compute x.y", 400),
    ] {
        let resp = c
            .http
            .get(format!("{}/v2.1/flavors", c.url))
            .header("x-auth-token", &demo)
            .header("openstack-api-version", h)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), want, "{h}");
    }
    // Nova's error bodies, keyed by status; project id in the path works too.
    let (st, body, _) = c.call(Method::GET, "/v2.1/servers/nope", &demo, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(body["itemNotFound"]["code"], 404);
    let (st, body, _) = c
        .call(
            Method::GET,
            "/v2.1/0123456789abcdef0123456789abcdef/servers/nope",
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    let resp = c
        .http
        .post(format!("{}/v2.1/servers", c.url))
        .header("x-auth-token", &demo)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["badRequest"]["code"], 400);
    let (st, _, _) = c
        .call(Method::GET, "/v2.1/servers", "bogus-token", None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // The internal API refuses anyone without the agent secret.
    let resp = c
        .http
        .post(format!("{}/internal/v1/hosts", c.url))
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn create_validates_everything_and_leaks_nothing() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    c.register_host("h1", 8, 16384, 100).await;
    let image = c.image(&admin, 4 << 20).await;
    let cases: Vec<(Value, u16)> = vec![
        (
            json!({"server": {"name": "s", "imageRef": image, "flavorRef": "999"}}),
            400,
        ),
        (
            json!({"server": {"name": "s", "imageRef": "nope", "flavorRef": "1"}}),
            400,
        ),
        (
            json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1",
                            "networks": [{"uuid": "5d9ef4ce-2d3c-4e0e-bd31-9b8ad2c5f9a1"}]}}),
            400,
        ),
        (
            json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1", "networks": "auto"}}),
            400,
        ),
        (
            json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1", "key_name": "none"}}),
            400,
        ),
        (
            json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1", "user_data": "%%%"}}),
            400,
        ),
        (
            json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1", "min_count": 0}}),
            400,
        ),
        (
            json!({"server": {"name": "", "imageRef": image, "flavorRef": "1"}}),
            400,
        ),
        (
            json!({"server": {"name": 5, "imageRef": image, "flavorRef": "1"}}),
            400,
        ),
        (
            json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1", "bogus": 1}}),
            400,
        ),
        (
            json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1", "availability_zone": "mars"}}),
            400,
        ),
        (
            json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1", "min_count": 11, "max_count": 11}}),
            403,
        ),
        (json!({"nothing": 1}), 400),
    ];
    for (body, want) in cases {
        let (st, resp, _) = c
            .call(Method::POST, "/v2.1/servers", &demo, Some(body.clone()))
            .await;
        assert_eq!(st.as_u16(), want, "{body} → {resp}");
        assert!(
            resp.as_object().is_some_and(|o| o.len() == 1),
            "Nova error body: {resp}"
        );
    }
    // Another tenant's private image is "not found".
    let (_, img, _) = c
        .call(Method::POST, &format!("{}/v2/images", c.image_url), &admin,
            Some(json!({"name": "private", "disk_format": "raw", "container_format": "bare", "visibility": "private"})))
        .await;
    let (st, _, _) = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &demo,
            Some(server_body(img["id"].as_str().unwrap_or(""), "1")),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // A flavor whose disk is smaller than the image.
    let (st, _, _) = c
        .call(Method::POST, "/v2.1/flavors", &admin,
            Some(json!({"flavor": {"name": "small-disk", "ram": 64, "vcpus": 1, "disk": 1, "id": "sd"}})))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, big, _) = c
        .call(Method::POST, &format!("{}/v2/images", c.image_url), &admin,
            Some(json!({"name": "big", "disk_format": "raw", "container_format": "bare", "visibility": "public", "min_disk": 5})))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let big_id = big["id"].as_str().unwrap_or("").to_string();
    let resp = c
        .http
        .put(format!("{}/v2/images/{big_id}/file", c.image_url))
        .header("x-auth-token", &admin)
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; 4096])
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (st, err, _) = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &demo,
            Some(server_body(&big_id, "sd")),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        err["badRequest"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("too small"),
        "{err}"
    );
    let (_, list, _) = c.call(Method::GET, "/v2.1/servers", &demo, None).await;
    assert_eq!(list["servers"], json!([]), "nothing was created");
    // Over quota with min < max: as many as fit are created.
    let (st, _, _) = c
        .call(Method::POST, "/v2.1/servers", &demo,
            Some(json!({"server": {"name": "many", "imageRef": image, "flavorRef": "1", "min_count": 1, "max_count": 50}})))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, list, _) = c
        .call(Method::GET, "/v2.1/servers/detail", &demo, None)
        .await;
    let servers = list["servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers.len(), 10, "the default quota is 10 instances");
    assert!(servers
        .iter()
        .all(|s| s["name"].as_str().is_some_and(|n| n.starts_with("many-"))));
    // Non-admins see no admin-only fields; admins see the host.
    assert!(servers[0].get("OS-EXT-SRV-ATTR:host").is_none());
    let (_, one, _) = c
        .call(
            Method::GET,
            &format!("/v2.1/servers/{}", servers[0]["id"].as_str().unwrap_or("")),
            &admin,
            None,
        )
        .await;
    assert_eq!(one["server"]["OS-EXT-SRV-ATTR:host"], "h1");
    assert_eq!(one["server"]["status"], "BUILD");
    assert_eq!(one["server"]["OS-EXT-STS:task_state"], "spawning");
    // Paging: limit + marker walk the list exactly once.
    let mut seen = Vec::new();
    let mut marker = String::new();
    loop {
        let q = if marker.is_empty() {
            "/v2.1/servers?limit=3".to_string()
        } else {
            format!("/v2.1/servers?limit=3&marker={marker}")
        };
        let (_, page, _) = c.call(Method::GET, &q, &demo, None).await;
        let ids: Vec<String> = page["servers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["id"].as_str().map(String::from))
            .collect();
        if ids.is_empty() {
            break;
        }
        marker = ids.last().cloned().unwrap_or_default();
        seen.extend(ids);
    }
    assert_eq!(seen.len(), 10);
    // A tenant never sees or touches another's server.
    let other = servers[0]["id"].as_str().unwrap_or("");
    let (st, _, _) = c
        .call(Method::GET, &format!("/v2.1/servers/{other}"), &admin, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let admin_server = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &admin,
            Some(server_body(&image, "1")),
        )
        .await
        .1;
    let aid = admin_server["server"]["id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for (m, path, body) in [
        (Method::GET, format!("/v2.1/servers/{aid}"), None),
        (Method::DELETE, format!("/v2.1/servers/{aid}"), None),
        (
            Method::POST,
            format!("/v2.1/servers/{aid}/action"),
            Some(json!({"os-stop": null})),
        ),
    ] {
        let (st, _, _) = c.call(m, &path, &demo, body).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn concurrent_creates_never_oversubscribe() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    // Two hosts with room for exactly 6 m1.tiny (512 MB) servers in all, after the 512 MB reserve.
    c.register_host("a", 64, 512 + 3 * 512, 1000).await;
    c.register_host("b", 64, 512 + 3 * 512, 1000).await;
    let image = c.image(&admin, 1 << 20).await;
    let c = std::sync::Arc::new(c);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let c = c.clone();
        let admin = admin.clone();
        let image = image.clone();
        tasks.push(tokio::spawn(async move {
            c.call(Method::POST, "/v2.1/servers", &admin,
                Some(json!({"server": {"name": format!("p{i}"), "imageRef": image, "flavorRef": "1"}})))
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::ACCEPTED);
    }
    let (_, list, _) = c
        .call(Method::GET, "/v2.1/servers/detail", &admin, None)
        .await;
    let servers = list["servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers.len(), 10);
    let on = |h: &str| {
        servers
            .iter()
            .filter(|s| s["OS-EXT-SRV-ATTR:host"] == h)
            .count()
    };
    assert_eq!(on("a"), 3, "spread, and no more than fits");
    assert_eq!(on("b"), 3);
    let errors: Vec<&Value> = servers.iter().filter(|s| s["status"] == "ERROR").collect();
    assert_eq!(errors.len(), 4);
    for e in errors {
        assert_eq!(e["fault"]["code"], 500);
        assert!(e["fault"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("No valid host was found"));
    }
    // Hypervisor statistics add up to what was placed.
    let (_, stats, _) = c
        .call(Method::GET, "/v2.1/os-hypervisors/statistics", &admin, None)
        .await;
    assert_eq!(stats["hypervisor_statistics"]["running_vms"], 6);
    assert_eq!(stats["hypervisor_statistics"]["memory_mb_used"], 6 * 512);
    // Deleting a server on a host whose agent is alive waits for the agent (task deleting);
    // an ERROR server that never reached a host goes at once.
    let err_id = servers
        .iter()
        .find(|s| s["status"] == "ERROR")
        .and_then(|s| s["id"].as_str())
        .unwrap_or("")
        .to_string();
    let (st, _, _) = c
        .call(
            Method::DELETE,
            &format!("/v2.1/servers/{err_id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, _) = c
        .call(
            Method::GET,
            &format!("/v2.1/servers/{err_id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn actions_follow_the_state_machine_and_agent_reports() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    c.register_host("h1", 8, 16384, 100).await;
    let image = c.image(&admin, 1 << 20).await;
    let (st, created, headers) = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &demo,
            Some(server_body(&image, "1")),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert!(headers.contains_key("location"));
    assert!(created["server"]["adminPass"].is_string());
    let id = created["server"]["id"].as_str().unwrap_or("").to_string();
    let report = |task: Option<&str>, power: i64| {
        let c = &c;
        let id = id.clone();
        let body = json!({"task": task, "ok": true, "power_state": power, "fault": null});
        async move {
            let resp = c
                .http
                .post(format!(
                    "{}/internal/v1/hosts/h1/instances/{id}/report",
                    c.url
                ))
                .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        }
    };
    let status = |who: String| {
        let c = &c;
        let id = id.clone();
        async move {
            c.call(Method::GET, &format!("/v2.1/servers/{id}"), &who, None)
                .await
                .1["server"]
                .clone()
        }
    };
    let act = |body: Value| {
        let c = &c;
        let id = id.clone();
        let demo = demo.clone();
        async move {
            c.call(
                Method::POST,
                &format!("/v2.1/servers/{id}/action"),
                &demo,
                Some(body),
            )
            .await
            .0
        }
    };
    // While building, actions conflict.
    assert_eq!(act(json!({"os-stop": null})).await, StatusCode::CONFLICT);
    report(Some("spawning"), 1).await;
    let s = status(demo.clone()).await;
    assert_eq!(s["status"], "ACTIVE");
    assert!(s["OS-SRV-USG:launched_at"].is_string());
    assert_eq!(act(json!({"os-stop": null})).await, StatusCode::ACCEPTED);
    assert_eq!(
        status(demo.clone()).await["OS-EXT-STS:task_state"],
        "powering-off"
    );
    assert_eq!(act(json!({"pause": null})).await, StatusCode::CONFLICT);
    // A stale report (of a task no longer running) changes nothing.
    report(Some("pausing"), 3).await;
    report(Some("powering-off"), 4).await;
    assert_eq!(status(demo.clone()).await["status"], "SHUTOFF");
    assert_eq!(act(json!({"unpause": null})).await, StatusCode::CONFLICT);
    assert_eq!(
        act(json!({"reboot": {"type": "SOFT"}})).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        act(json!({"reboot": {"type": "sideways"}})).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(act(json!({"os-start": null})).await, StatusCode::ACCEPTED);
    report(Some("powering-on"), 1).await;
    assert_eq!(status(demo.clone()).await["status"], "ACTIVE");
    // A VM that vanished is SHUTOFF, never a stale ACTIVE.
    report(None, 4).await;
    assert_eq!(status(demo.clone()).await["status"], "SHUTOFF");
    // Locking: the owner's lock stops the owner's actions until unlocked.
    assert_eq!(act(json!({"lock": null})).await, StatusCode::ACCEPTED);
    assert_eq!(act(json!({"os-start": null})).await, StatusCode::CONFLICT);
    assert_eq!(act(json!({"unlock": null})).await, StatusCode::ACCEPTED);
    assert_eq!(
        act(json!({"no-such-action": null})).await,
        StatusCode::BAD_REQUEST
    );
    // Metadata round trip.
    let (st, m, _) = c
        .call(
            Method::POST,
            &format!("/v2.1/servers/{id}/metadata"),
            &demo,
            Some(json!({"metadata": {"a": "1"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(m["metadata"]["a"], "1");
    let (st, _, _) = c
        .call(
            Method::DELETE,
            &format!("/v2.1/servers/{id}/metadata/zz"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Delete: the agent is alive, so the server is deleting until the agent reports.
    let (st, _, _) = c
        .call(Method::DELETE, &format!("/v2.1/servers/{id}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        status(admin.clone()).await["OS-EXT-STS:task_state"],
        "deleting"
    );
    report(Some("deleting"), 0).await;
    let (st, _, _) = c
        .call(Method::GET, &format!("/v2.1/servers/{id}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn keypairs_and_flavors() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    // Generated: the private key comes back once.
    let (st, k, _) = c
        .call(
            Method::POST,
            "/v2.1/os-keypairs",
            &demo,
            Some(json!({"keypair": {"name": "gen"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(k["keypair"]["private_key"]
        .as_str()
        .unwrap_or("")
        .contains("PRIVATE KEY"));
    let (_, shown, _) = c
        .call(Method::GET, "/v2.1/os-keypairs/gen", &demo, None)
        .await;
    assert!(shown["keypair"].get("private_key").is_none());
    let (st, _, _) = c
        .call(
            Method::POST,
            "/v2.1/os-keypairs",
            &demo,
            Some(json!({"keypair": {"name": "gen"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _, _) = c
        .call(
            Method::POST,
            "/v2.1/os-keypairs",
            &demo,
            Some(json!({"keypair": {"name": "bad", "public_key": "ssh-rsa garbage"}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, _) = c
        .call(
            Method::POST,
            "/v2.1/os-keypairs",
            &demo,
            Some(json!({"keypair": {"name": "t", "type": "ssh"}})),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "type arrives with microversion 2.2"
    );
    // Keypairs are per user: the admin does not see demo's.
    let (_, list, _) = c.call(Method::GET, "/v2.1/os-keypairs", &admin, None).await;
    assert_eq!(list["keypairs"], json!([]));
    let (st, _, _) = c
        .call(Method::DELETE, "/v2.1/os-keypairs/gen", &demo, None)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    // Private flavors: invisible until access is granted.
    let (st, f, _) = c.call(Method::POST, "/v2.1/flavors", &admin,
        Some(json!({"flavor": {"name": "secret", "ram": "256", "vcpus": 1, "disk": 0, "os-flavor-access:is_public": false}}))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(f["flavor"]["ram"], 256);
    assert_eq!(f["flavor"]["swap"], "");
    let fid = f["flavor"]["id"].as_str().unwrap_or("").to_string();
    let (st, _, _) = c
        .call(Method::GET, &format!("/v2.1/flavors/{fid}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let demo_project = c.call(Method::GET, "/v2.1/limits", &demo, None).await;
    assert_eq!(
        demo_project.1["limits"]["absolute"]["maxTotalInstances"],
        10
    );
    let (st, all, _) = c
        .call(
            Method::GET,
            "/v2.1/flavors/detail?is_public=None",
            &admin,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(all["flavors"].as_array().map(Vec::len), Some(6));
    let (st, _, _) = c
        .call(
            Method::POST,
            "/v2.1/flavors",
            &demo,
            Some(json!({"flavor": {"name": "mine", "ram": 64, "vcpus": 1, "disk": 0}})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, specs, _) = c
        .call(
            Method::POST,
            &format!("/v2.1/flavors/{fid}/os-extra_specs"),
            &admin,
            Some(json!({"extra_specs": {"hw:cpu_policy": "shared"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(specs["extra_specs"]["hw:cpu_policy"], "shared");
    let (st, _, _) = c
        .call(
            Method::DELETE,
            &format!("/v2.1/flavors/{fid}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
}

/// `onestack join`'s exchange: a join token buys the agent credentials once, before it expires;
/// anything else is refused without touching the hosts; `leave` is refused while servers remain.
#[tokio::test]
async fn join_tokens_work_once_and_leave_needs_an_empty_host() {
    let c = start().await;
    let join = |body: Value| {
        let http = c.http.clone();
        let url = format!("{}/internal/v1/join", c.url);
        async move {
            let r = http.post(url).json(&body).send().await.expect("send");
            let st = r.status();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let token = onestack_core::compute::join::issue(&c.store, Duration::from_secs(60))
        .await
        .expect("token");
    for (body, want) in [
        (json!({"token": "x".repeat(32), "host": "n1"}), 401),
        (json!({"token": token, "host": "bad host; rm -rf /"}), 400),
        (json!({"token": token, "host": ""}), 400),
        (json!({"token": token, "host": "n1", "extra": 1}), 400),
        (json!({"token": 5, "host": "n1"}), 400),
    ] {
        let (st, v) = join(body.clone()).await;
        assert_eq!(st.as_u16(), want, "{body}: {v}");
    }
    let (st, v) = join(json!({"token": token, "host": "n1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["service_down_time"], 60);
    // The node gets a credential of its own, not the controller's agent secret.
    let node = v["agent_token"].as_str().expect("credential").to_string();
    assert!(
        node.starts_with("n1:") && !node.contains(AGENT_TOKEN),
        "{node}"
    );
    let as_node = |m: Method, path: &str| {
        c.http
            .request(m, format!("{}/internal/v1{path}", c.url))
            .header(AGENT_TOKEN_HEADER, node.clone())
    };
    let registration = |host: &str| {
        json!({"host": host, "host_ip": "198.18.0.9", "agent_url": "http://198.18.0.9:1",
            "vcpus": 4, "memory_mb": 8192, "local_gb": 50, "cpu_info": {},
            "hypervisor_type": "QEMU", "hypervisor_version": 7002000, "virt_type": "qemu",
            "availability_zone": null})
    };
    let r = as_node(Method::POST, "/hosts")
        .json(&registration("n1"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    // Only itself: not another host's routes or name, not the network node's metadata lookups.
    let r = as_node(Method::POST, "/hosts")
        .json(&registration("h-other"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for path in [
        "/hosts/h-other",
        "/hosts/h-other/desired",
        "/metadata/net/198.18.0.5",
    ] {
        let r = as_node(Method::GET, path).send().await.expect("send");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let r = as_node(Method::POST, "/hosts/n1/heartbeat")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    // The answer names the controllers the agent may fail over to (here the only one).
    let beat: Value = r.json().await.expect("json");
    assert_eq!(
        beat["controllers"].as_array().map(Vec::len),
        Some(1),
        "{beat}"
    );
    let forged = format!("n1:{}", "x".repeat(40));
    let r = c
        .http
        .get(format!("{}/internal/v1/hosts/n1", c.url))
        .header(AGENT_TOKEN_HEADER, forged)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (st, v) = join(json!({"token": token, "host": "n2"})).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "a token worked twice: {v}");
    assert!(v.to_string().contains("already used"), "{v}");
    // Expired tokens are refused too.
    let old = onestack_core::compute::join::issue(&c.store, Duration::ZERO)
        .await
        .expect("token");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (st, _) = join(json!({"token": old, "host": "n3"})).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // A live host's name cannot be taken over by a newcomer.
    let fresh = onestack_core::compute::join::issue(&c.store, Duration::from_secs(60))
        .await
        .expect("token");
    let (st, _) = join(json!({"token": fresh, "host": "n1"})).await;
    assert_eq!(st, StatusCode::CONFLICT);
    // Tokens are for one role: a compute token does not make a controller, nor the reverse,
    // and a cloud on SQLite admits no second controller (the token stays unspent).
    use onestack_core::compute::join::{issue_for, JoinRole};
    let (st, v) = join(json!({"token": fresh, "host": "n4", "role": "controller"})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("SQLite"), "{v}");
    let ctl = issue_for(&c.store, Duration::from_secs(60), JoinRole::Controller)
        .await
        .expect("token");
    let (st, v) = join(json!({"token": ctl, "host": "n4"})).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v.to_string().contains("another role"), "{v}");
    let (st, v) = join(json!({"token": fresh, "host": "n4", "role": "queen"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    // The compute token was not spent by any of that.
    let (st, v) = join(json!({"token": fresh, "host": "n4"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["role"], "compute");

    // The node's view of itself, and leave.
    let host = |m: Method| {
        c.http
            .request(m, format!("{}/internal/v1/hosts/n1", c.url))
            .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
    };
    let v: Value = host(Method::GET)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(v["state"], "up");
    assert_eq!(v["instances"], 0);
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let image = c.image(&admin, 1 << 20).await;
    let (st, srv, _) = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &admin,
            Some(json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1"}})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{srv}");
    let r = host(Method::DELETE).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // No agent plays along here: with the host forced down, the delete completes locally.
    let (st, v, _) = c
        .call(
            Method::PUT,
            "/v2.1/os-services/force-down",
            &admin,
            Some(json!({"host": "n1", "binary": "nova-compute", "forced_down": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, _, _) = c
        .call(
            Method::DELETE,
            &format!(
                "/v2.1/servers/{}",
                srv["server"]["id"].as_str().expect("id")
            ),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = host(Method::DELETE).send().await.expect("send");
        if r.status() == StatusCode::NO_CONTENT {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leave still refused: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        host(Method::GET).send().await.expect("send").status(),
        StatusCode::NOT_FOUND
    );
    // Without the agent secret, none of it.
    let r = c
        .http
        .get(format!("{}/internal/v1/hosts/n1", c.url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Polls a volume (as `token`) until `done` holds, or fails after 30 s.
async fn wait_volume(c: &Cloud, token: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let (st, v, _) = c.call(Method::GET, path, token, None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        if done(&v["volume"]) {
            return v["volume"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("volume at {path} never got there");
}

#[tokio::test]
async fn volumes_quotas_tenancy_and_the_attach_handshake() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let pid = c
        .store
        .find_project(onestack_core::identity::DEFAULT_DOMAIN_ID, "demo")
        .await
        .expect("demo project")
        .id;
    let admin_pid = c
        .store
        .find_project(onestack_core::identity::DEFAULT_DOMAIN_ID, "admin")
        .await
        .expect("admin project")
        .id;
    let v3 = format!("{}/v3/{pid}", c.volume_url);

    // Discovery: 300 at the root, the v3 document with an absolute self link.
    let resp = c.http.get(&c.volume_url).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 300);
    let (st, doc, _) = c
        .call(Method::GET, &format!("{}/v3/", c.volume_url), &demo, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        doc["versions"][0]["links"][0]["href"],
        format!("{}/v3/", c.volume_url)
    );
    // Microversions: 3.0 only; above is 406, garbage 400; errors in Cinder's shape.
    for (h, want) in [
        ("volume 3.0", 200),
        ("volume latest", 200),
        ("volume 3.71", 406),
        ("volume x", 400),
    ] {
        let resp = c
            .http
            .get(format!("{v3}/volumes"))
            .header("x-auth-token", &demo)
            .header("openstack-api-version", h)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), want, "{h}");
    }

    // Bad input: malformed JSON, wrong types, no size, unknown type, zero size; nothing made.
    let resp = c
        .http
        .post(format!("{v3}/volumes"))
        .header("x-auth-token", &demo)
        .header("content-type", "application/json")
        .body("{\"volume\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["badRequest"]["code"], 400);
    for bad in [
        json!({"volume": {"size": "big"}}),
        json!({"volume": {"name": "x"}}),
        json!({"volume": {"size": 0}}),
        json!({"volume": {"size": 1, "name": 7}}),
        json!({"volume": {"size": 1, "metadata": {"k": 1}}}),
        json!({"volume": {"size": 1, "imageRef": "no-such-image"}}),
        json!({"volume": []}),
    ] {
        let (st, body, _) = c
            .call(
                Method::POST,
                &format!("{v3}/volumes"),
                &demo,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad} -> {body}");
        assert!(body["badRequest"]["message"].is_string(), "{body}");
    }
    let (st, body, _) = c
        .call(
            Method::POST,
            &format!("{v3}/volumes"),
            &demo,
            Some(json!({"volume": {"size": 1, "volume_type": "ssd"}})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    let (_, list, _) = c
        .call(Method::GET, &format!("{v3}/volumes"), &demo, None)
        .await;
    assert_eq!(list["volumes"], json!([]));

    // Create → creating → available; fields as Cinder's.
    let (st, created, _) = c
        .call(Method::POST, &format!("{v3}/volumes"), &demo,
              Some(json!({"volume": {"size": 1, "name": "v1", "description": null, "metadata": {"a": "b"}}})))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{created}");
    let vid = created["volume"]["id"].as_str().expect("id").to_string();
    assert_eq!(created["volume"]["status"], "creating");
    let vpath = format!("{v3}/volumes/{vid}");
    let v = wait_volume(&c, &demo, &vpath, |v| v["status"] == "available").await;
    for k in [
        "bootable",
        "encrypted",
        "multiattach",
        "volume_type",
        "attachments",
        "links",
        "user_id",
        "os-vol-tenant-attr:tenant_id",
        "availability_zone",
        "created_at",
        "metadata",
    ] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    assert_eq!(v["bootable"], "false");
    assert_eq!(v["metadata"], json!({"a": "b"}));
    assert!(
        v.get("os-vol-host-attr:host").is_none(),
        "admin-only field shown to a member"
    );

    // Another tenant (admin's project, as a plain member would be) sees nothing of it; a reader
    // of the URL of another project is refused.
    let (st, _, _) = c
        .call(
            Method::GET,
            &format!("{}/v3/{admin_pid}/volumes/{vid}", c.volume_url),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, theirs, _) = c
        .call(
            Method::POST,
            &format!("{}/v3/{admin_pid}/volumes", c.volume_url),
            &admin,
            Some(json!({"volume": {"size": 1, "name": "admins"}})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let theirs = theirs["volume"]["id"].as_str().expect("id").to_string();
    let (st, body, _) = c
        .call(Method::GET, &format!("{v3}/volumes/{theirs}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    let (st, _, _) = c
        .call(
            Method::DELETE,
            &format!("{v3}/volumes/{theirs}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, list, _) = c
        .call(
            Method::GET,
            &format!("{v3}/volumes?all_tenants=1"),
            &demo,
            None,
        )
        .await;
    assert_eq!(list["volumes"].as_array().map(Vec::len), Some(1), "{list}");

    // Quota: 3 volumes; 6 concurrent creates with 2 left → exactly 2 succeed, 413 for the rest.
    let (st, q, _) = c
        .call(
            Method::PUT,
            &format!("{}/v3/{admin_pid}/os-quota-sets/{pid}", c.volume_url),
            &admin,
            Some(json!({"quota_set": {"volumes": 3}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{q}");
    assert_eq!(q["quota_set"]["volumes"], 3);
    let (st, _, _) = c
        .call(
            Method::PUT,
            &format!("{}/v3/{admin_pid}/os-quota-sets/{pid}", c.volume_url),
            &demo,
            Some(json!({"quota_set": {"volumes": 30}})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let creates = (0..6).map(|i| {
        let c = &c;
        let demo = demo.clone();
        let url = format!("{v3}/volumes");
        async move {
            c.call(
                Method::POST,
                &url,
                &demo,
                Some(json!({"volume": {"size": 1, "name": format!("r{i}")}})),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(creates).await;
    let ok = results
        .iter()
        .filter(|r| r.0 == StatusCode::ACCEPTED)
        .count();
    let over: Vec<&Value> = results
        .iter()
        .filter(|r| r.0 == StatusCode::PAYLOAD_TOO_LARGE)
        .map(|r| &r.1)
        .collect();
    assert_eq!((ok, over.len()), (2, 4), "{results:?}");
    assert!(over[0]["overLimit"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("VolumeLimitExceeded"));
    let (_, q, _) = c
        .call(
            Method::GET,
            &format!(
                "{}/v3/{admin_pid}/os-quota-sets/{pid}?usage=true",
                c.volume_url
            ),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        q["quota_set"]["volumes"],
        json!({"limit": 3, "in_use": 3, "reserved": 0})
    );
    let (_, lim, _) = c
        .call(Method::GET, &format!("{v3}/limits"), &demo, None)
        .await;
    assert_eq!(lim["limits"]["absolute"]["totalVolumesUsed"], 3);
    assert_eq!(lim["limits"]["absolute"]["maxTotalVolumes"], 3);

    // Extend: only larger, within quota.
    let act = |body: Value| {
        let c = &c;
        let demo = demo.clone();
        let url = format!("{vpath}/action");
        async move { c.call(Method::POST, &url, &demo, Some(body)).await }
    };
    assert_eq!(
        act(json!({"os-extend": {"new_size": 1}})).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        act(json!({"os-extend": {"new_size": 2000}})).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        act(json!({"os-frobnicate": {}})).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        act(json!({"os-extend": {"new_size": 2}})).await.0,
        StatusCode::ACCEPTED
    );
    wait_volume(&c, &demo, &vpath, |v| {
        v["status"] == "available" && v["size"] == 2
    })
    .await;

    // Attach to a server: reserved (attaching) until the host's agent reports it plugged.
    c.register_host("h1", 8, 16384, 100).await;
    let image = c.image(&admin, 1 << 20).await;
    let (_, srv, _) = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &demo,
            Some(server_body(&image, "1")),
        )
        .await;
    let sid = srv["server"]["id"].as_str().expect("id").to_string();
    let agent = |path: String, body: Value| {
        let c = &c;
        async move {
            c.http
                .post(format!("{}/internal/v1/hosts/h1/instances/{path}", c.url))
                .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("send")
                .status()
        }
    };
    assert_eq!(
        agent(
            format!("{sid}/report"),
            json!({"task": "spawning", "ok": true, "power_state": 1, "fault": null})
        )
        .await,
        StatusCode::NO_CONTENT
    );
    let attach_url = format!("/v2.1/servers/{sid}/os-volume_attachments");
    let (st, att, _) = c
        .call(
            Method::POST,
            &attach_url,
            &demo,
            Some(json!({"volumeAttachment": {"volumeId": vid, "device": null}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{att}");
    assert_eq!(
        att["volumeAttachment"],
        json!({"id": vid, "serverId": sid, "volumeId": vid, "device": "/dev/vdb"})
    );
    let (_, v, _) = c.call(Method::GET, &vpath, &demo, None).await;
    assert_eq!(v["volume"]["status"], "attaching");
    // A second attach of the same volume is refused; so is deleting it.
    let (st, _, _) = c
        .call(
            Method::POST,
            &attach_url,
            &demo,
            Some(json!({"volumeAttachment": {"volumeId": vid}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, _) = c.call(Method::DELETE, &vpath, &demo, None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // The desired state tells the agent to plug it.
    let resp = c
        .http
        .get(format!("{}/internal/v1/hosts/h1/desired?after=0", c.url))
        .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
        .send()
        .await
        .expect("send");
    let desired: Value = resp.json().await.expect("json");
    let vols = &desired["instances"][0]["volumes"];
    assert_eq!(vols[0]["volume_id"], vid.as_str(), "{desired}");
    assert_eq!(vols[0]["state"], "attaching");
    assert_eq!(vols[0]["serial"], &vid[..20]);
    assert_eq!(
        agent(
            format!("{sid}/volumes/{vid}"),
            json!({"op": "attach", "error": null})
        )
        .await,
        StatusCode::NO_CONTENT
    );
    let v = wait_volume(&c, &demo, &vpath, |v| v["status"] == "in-use").await;
    assert_eq!(v["attachments"][0]["server_id"], sid.as_str());
    let (_, s, _) = c
        .call(Method::GET, &format!("/v2.1/servers/{sid}"), &demo, None)
        .await;
    assert_eq!(
        s["server"]["os-extended-volumes:volumes_attached"],
        json!([{"id": vid}])
    );
    // Another host's credential cannot report for this server.
    let resp = c
        .http
        .post(format!(
            "{}/internal/v1/hosts/h2/instances/{sid}/volumes/{vid}",
            c.url
        ))
        .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
        .json(&json!({"op": "detach", "error": null}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // A detach the guest refuses: back to in-use, with the reason on the volume.
    let (st, _, _) = c
        .call(Method::DELETE, &format!("{attach_url}/{vid}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert_eq!(
        agent(
            format!("{sid}/volumes/{vid}"),
            json!({"op": "detach", "error": "the guest did not release the disk within 20 s"})
        )
        .await,
        StatusCode::NO_CONTENT
    );
    let v = wait_volume(&c, &demo, &vpath, |v| v["status"] == "in-use").await;
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("did not release"),
        "{v}"
    );
    // Then one it accepts: available, unattached.
    c.call(Method::DELETE, &format!("{attach_url}/{vid}"), &demo, None)
        .await;
    agent(
        format!("{sid}/volumes/{vid}"),
        json!({"op": "detach", "error": null}),
    )
    .await;
    let v = wait_volume(&c, &demo, &vpath, |v| v["status"] == "available").await;
    assert_eq!(v["attachments"], json!([]));

    // Snapshots: in quota gigabytes, a volume with one cannot be deleted, cascade can.
    let (st, snap, _) = c
        .call(
            Method::POST,
            &format!("{v3}/snapshots"),
            &demo,
            Some(json!({"snapshot": {"volume_id": vid, "name": "s1", "force": false}})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{snap}");
    let snap_id = snap["snapshot"]["id"].as_str().expect("id").to_string();
    for _ in 0..300 {
        let (_, s, _) = c
            .call(
                Method::GET,
                &format!("{v3}/snapshots/{snap_id}"),
                &demo,
                None,
            )
            .await;
        if s["snapshot"]["status"] == "available" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, _, _) = c.call(Method::DELETE, &vpath, &demo, None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, _) = c
        .call(
            Method::DELETE,
            &format!("{vpath}?cascade=true"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    for _ in 0..300 {
        if c.call(Method::GET, &vpath, &demo, None).await.0 == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, body, _) = c.call(Method::GET, &vpath, &demo, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        body["itemNotFound"]["message"],
        format!("Volume {vid} could not be found.")
    );
    let (st, _, _) = c
        .call(
            Method::GET,
            &format!("{v3}/snapshots/{snap_id}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn create_backup_keeps_the_newest_rotation_backups() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    c.register_host("h1", 8, 16384, 100).await;
    let image = c.image(&admin, 1 << 20).await;
    let (_, srv, _) = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &demo,
            Some(server_body(&image, "1")),
        )
        .await;
    let sid = srv["server"]["id"].as_str().expect("id").to_string();
    let report = |task: &str| {
        let c = &c;
        let body = json!({"task": task, "ok": true, "power_state": 1, "fault": null});
        let url = format!("{}/internal/v1/hosts/h1/instances/{sid}/report", c.url);
        async move {
            let st = c
                .http
                .post(url)
                .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("send")
                .status();
            assert_eq!(st, StatusCode::NO_CONTENT);
        }
    };
    report("spawning").await;
    let action = format!("/v2.1/servers/{sid}/action");
    // Bad bodies: missing rotation, a negative one, an unknown key.
    for bad in [
        json!({"createBackup": {"name": "b", "backup_type": "daily"}}),
        json!({"createBackup": {"name": "b", "backup_type": "daily", "rotation": -1}}),
        json!({"createBackup": {"name": "b", "backup_type": "daily", "rotation": 1, "x": 1}}),
    ] {
        let (st, body, _) = c
            .call(Method::POST, &action, &demo, Some(bad.clone()))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad} -> {body}");
    }
    // What an agent uploads: a real (empty) qcow2.
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("d.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&file)
        .arg("1M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let qcow2 = std::fs::read(&file).expect("read");
    let mut made = Vec::new();
    for n in 0..3 {
        let (st, body, headers) = c
            .call(Method::POST, &action, &demo,
                  Some(json!({"createBackup": {"name": format!("b{n}"), "backup_type": "daily", "rotation": 2}})))
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{body}");
        let loc = headers["location"].to_str().expect("location").to_string();
        let id = loc.rsplit('/').next().expect("id").to_string();
        // While it runs, a second one is refused.
        let (st, _, _) = c
            .call(
                Method::POST,
                &action,
                &demo,
                Some(json!({"createBackup": {"name": "x", "backup_type": "daily", "rotation": 2}})),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT);
        // The agent uploads the disk copy and reports.
        let st = c
            .http
            .put(format!("{}/internal/v1/images/{id}/file", c.url))
            .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
            .header("content-type", "application/octet-stream")
            .body(qcow2.clone())
            .send()
            .await
            .expect("upload")
            .status();
        assert!(st.is_success(), "{st}");
        report("image_snapshot").await;
        made.push(id);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let (_, list, _) = c
        .call(
            Method::GET,
            &format!("{}/v2/images?sort_key=created_at", c.image_url),
            &demo,
            None,
        )
        .await;
    let kept: Vec<&str> = list["images"]
        .as_array()
        .expect("images")
        .iter()
        .filter(|i| i["image_type"] == "backup")
        .map(|i| i["id"].as_str().unwrap_or(""))
        .collect();
    let mut want = vec![made[1].as_str(), made[2].as_str()];
    let mut got = kept.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{list}");
    let img = list["images"]
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["id"] == made[2].as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(img["backup_type"], "daily");
    assert_eq!(img["instance_uuid"], sid.as_str());
}

#[tokio::test]
async fn resize_confirm_and_revert_follow_nova() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    c.register_host("h1", 8, 16384, 100).await;
    let image = c.image(&admin, 1 << 20).await;
    let (_, srv, _) = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &demo,
            Some(server_body(&image, "1")),
        )
        .await;
    let sid = srv["server"]["id"].as_str().expect("id").to_string();
    let report = |task: &str, ok: bool, power: i64| {
        let c = &c;
        let body = json!({"task": task, "ok": ok, "power_state": power,
                          "fault": if ok { Value::Null } else { json!({"code": 500, "message": "resize failed", "details": ""}) }});
        let url = format!("{}/internal/v1/hosts/h1/instances/{sid}/report", c.url);
        async move {
            let st = c
                .http
                .post(url)
                .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("send")
                .status();
            assert_eq!(st, StatusCode::NO_CONTENT);
        }
    };
    let show = || {
        let c = &c;
        let demo = demo.clone();
        let url = format!("/v2.1/servers/{sid}");
        async move { c.call(Method::GET, &url, &demo, None).await.1["server"].clone() }
    };
    let act = |body: Value| {
        let c = &c;
        let demo = demo.clone();
        let url = format!("/v2.1/servers/{sid}/action");
        async move { c.call(Method::POST, &url, &demo, Some(body)).await.0 }
    };
    // Not while building; then the rules: another flavor, no smaller disk, a known flavor.
    assert_eq!(
        act(json!({"resize": {"flavorRef": "2"}})).await,
        StatusCode::CONFLICT
    );
    report("spawning", true, 1).await;
    assert_eq!(
        act(json!({"resize": {"flavorRef": "1"}})).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        act(json!({"resize": {"flavorRef": "nope"}})).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(act(json!({"resize": {}})).await, StatusCode::BAD_REQUEST);
    assert_eq!(
        act(json!({"confirmResize": null})).await,
        StatusCode::CONFLICT
    );
    // Too big for the host: refused, nothing changes.
    assert_eq!(
        act(json!({"resize": {"flavorRef": "5"}})).await,
        StatusCode::BAD_REQUEST
    );

    // Resize → RESIZE; the agent's success → VERIFY_RESIZE with the new flavor.
    assert_eq!(
        act(json!({"resize": {"flavorRef": "2"}})).await,
        StatusCode::ACCEPTED
    );
    let s = show().await;
    assert_eq!(s["status"], "RESIZE");
    assert_eq!(s["OS-EXT-STS:task_state"], "resize_migrating");
    report("resize_migrating", true, 1).await;
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["flavor"]["id"].as_str()),
        (Some("VERIFY_RESIZE"), Some("2")),
        "{s}"
    );
    // Revert → REVERT_RESIZE → ACTIVE with the old flavor.
    assert_eq!(
        act(json!({"revertResize": null})).await,
        StatusCode::ACCEPTED
    );
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["flavor"]["id"].as_str()),
        (Some("REVERT_RESIZE"), Some("1"))
    );
    report("resize_reverting", true, 1).await;
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["flavor"]["id"].as_str()),
        (Some("ACTIVE"), Some("1"))
    );
    // A resize the agent fails: back to ACTIVE, old flavor, with the fault recorded.
    assert_eq!(
        act(json!({"resize": {"flavorRef": "2"}})).await,
        StatusCode::ACCEPTED
    );
    report("resize_migrating", false, 1).await;
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["flavor"]["id"].as_str()),
        (Some("ACTIVE"), Some("1")),
        "{s}"
    );
    // Resize and confirm → ACTIVE with the new flavor (204 on confirm).
    assert_eq!(
        act(json!({"resize": {"flavorRef": "2"}})).await,
        StatusCode::ACCEPTED
    );
    report("resize_migrating", true, 1).await;
    assert_eq!(
        act(json!({"confirmResize": null})).await,
        StatusCode::NO_CONTENT
    );
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["flavor"]["id"].as_str()),
        (Some("ACTIVE"), Some("2"))
    );
    // The host's usage counts the new flavor.
    let (_, h, _) = c
        .call(Method::GET, "/v2.1/os-hypervisors/detail", &admin, None)
        .await;
    assert!(
        h["hypervisors"][0]["memory_mb_used"].as_i64().unwrap_or(0) >= 2048,
        "{h}"
    );
    // Down to a smaller disk is refused.
    assert_eq!(
        act(json!({"resize": {"flavorRef": "1"}})).await,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn live_and_cold_migration_follow_the_agents_reports() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    c.register_host("h1", 8, 16384, 100).await;
    let image = c.image(&admin, 1 << 20).await;
    let (_, srv, _) = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &demo,
            Some(server_body(&image, "1")),
        )
        .await;
    let sid = srv["server"]["id"].as_str().expect("id").to_string();
    let post = |host: &str, tail: &str, body: Value| {
        let c = &c;
        let url = format!("{}/internal/v1/hosts/{host}/instances/{sid}/{tail}", c.url);
        async move {
            c.http
                .post(url)
                .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("send")
                .status()
        }
    };
    post(
        "h1",
        "report",
        json!({"task": "spawning", "ok": true, "power_state": 1, "fault": null}),
    )
    .await;
    let act = |who: String, body: Value| {
        let c = &c;
        let url = format!("/v2.1/servers/{sid}/action");
        async move { c.call(Method::POST, &url, &who, Some(body)).await }
    };
    let show = || {
        let c = &c;
        let admin = admin.clone();
        let url = format!("/v2.1/servers/{sid}");
        async move { c.call(Method::GET, &url, &admin, None).await.1["server"].clone() }
    };
    let live = json!({"os-migrateLive": {"host": null, "block_migration": false, "disk_over_commit": false}});
    // Members may not; with one host there is nowhere to go.
    assert_eq!(
        act(demo.clone(), live.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        act(admin.clone(), live.clone()).await.0,
        StatusCode::BAD_REQUEST
    );
    c.register_host("h2", 8, 16384, 100).await;
    let (st, body, _) = act(
        admin.clone(),
        json!({"os-migrateLive": {"host": "h1", "block_migration": "auto"}}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");

    // Live: prepare (the target sees it) → ready → transfer → done (host moves) → resumed.
    assert_eq!(
        act(admin.clone(), live.clone()).await.0,
        StatusCode::ACCEPTED
    );
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["OS-EXT-SRV-ATTR:host"].as_str()),
        (Some("MIGRATING"), Some("h1"))
    );
    let desired = |host: &str| {
        let c = &c;
        let url = format!("{}/internal/v1/hosts/{host}/desired?after=0", c.url);
        async move {
            let v: Value = c
                .http
                .get(url)
                .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
                .send()
                .await
                .expect("send")
                .json()
                .await
                .expect("json");
            v["instances"][0]["migration"].clone()
        }
    };
    assert_eq!(desired("h2").await["role"], "target");
    assert_eq!(desired("h1").await["role"], "source");
    // Events only from the host whose step it is.
    post(
        "h1",
        "migration",
        json!({"event": "ready", "nbd_port": 1, "mig_port": 2}),
    )
    .await;
    assert_eq!(desired("h1").await["phase"], "prepare");
    post(
        "h2",
        "migration",
        json!({"event": "ready", "nbd_port": 10809, "mig_port": 49152}),
    )
    .await;
    let m = desired("h1").await;
    assert_eq!(
        (
            m["phase"].as_str(),
            m["nbd_port"].as_u64(),
            m["mig_port"].as_u64()
        ),
        (Some("transfer"), Some(10809), Some(49152))
    );
    post("h2", "migration", json!({"event": "done"})).await;
    assert_eq!(show().await["OS-EXT-SRV-ATTR:host"], "h1");
    post(
        "h1",
        "migration",
        json!({"event": "done", "downtime_ms": 40}),
    )
    .await;
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["OS-EXT-SRV-ATTR:host"].as_str()),
        (Some("MIGRATING"), Some("h2"))
    );
    post("h2", "migration", json!({"event": "resumed"})).await;
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["OS-EXT-SRV-ATTR:host"].as_str()),
        (Some("ACTIVE"), Some("h2"))
    );
    assert!(desired("h1").await.is_null());

    // A failed live migration leaves the server where it was, ACTIVE.
    assert_eq!(
        act(admin.clone(), live.clone()).await.0,
        StatusCode::ACCEPTED
    );
    post(
        "h1",
        "migration",
        json!({"event": "failed", "error": "target gone"}),
    )
    .await;
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["OS-EXT-SRV-ATTR:host"].as_str()),
        (Some("ACTIVE"), Some("h2"))
    );

    // Cold: the source stops it → ready, the target takes it → done: VERIFY_RESIZE there;
    // revert → the target lets go → back on the source, started again.
    let (st, _, _) = act(admin.clone(), json!({"migrate": null})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["OS-EXT-SRV-ATTR:host"].as_str()),
        (Some("RESIZE"), Some("h2"))
    );
    let m = desired("h1").await;
    assert_eq!(
        (m["kind"].as_str(), m["role"].as_str()),
        (Some("cold"), Some("target"))
    );
    assert!(
        m["disk_url"]
            .as_str()
            .unwrap_or("")
            .contains("/v1/instances/"),
        "{m}"
    );
    post("h2", "migration", json!({"event": "ready"})).await;
    post("h1", "migration", json!({"event": "done"})).await;
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["OS-EXT-SRV-ATTR:host"].as_str()),
        (Some("VERIFY_RESIZE"), Some("h1"))
    );
    assert_eq!(
        act(admin.clone(), json!({"revertResize": null})).await.0,
        StatusCode::ACCEPTED
    );
    post("h1", "migration", json!({"event": "reverted"})).await;
    let s = show().await;
    assert_eq!(
        (
            s["OS-EXT-STS:task_state"].as_str(),
            s["OS-EXT-SRV-ATTR:host"].as_str()
        ),
        (Some("powering-on"), Some("h2"))
    );
    post(
        "h2",
        "report",
        json!({"task": "powering-on", "ok": true, "power_state": 1, "fault": null}),
    )
    .await;
    assert_eq!(show().await["status"], "ACTIVE");
    // And confirmed: it stays on the target.
    act(admin.clone(), json!({"migrate": null})).await;
    post("h2", "migration", json!({"event": "ready"})).await;
    post("h1", "migration", json!({"event": "done"})).await;
    assert_eq!(
        act(admin.clone(), json!({"confirmResize": null})).await.0,
        StatusCode::NO_CONTENT
    );
    let s = show().await;
    assert_eq!(
        (s["status"].as_str(), s["OS-EXT-SRV-ATTR:host"].as_str()),
        (Some("ACTIVE"), Some("h1"))
    );
    assert!(desired("h2").await.is_null());
}

#[tokio::test]
async fn quota_sets_are_per_project_and_creates_race_within_them() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    c.register_host("h1", 64, 262144, 1000).await;
    let image = c.image(&admin, 1 << 20).await;
    let pid = c
        .store
        .find_project(onestack_core::identity::DEFAULT_DOMAIN_ID, "demo")
        .await
        .expect("demo")
        .id;
    let admin_pid = c
        .store
        .find_project(onestack_core::identity::DEFAULT_DOMAIN_ID, "admin")
        .await
        .expect("admin")
        .id;
    let qpath = format!("/v2.1/os-quota-sets/{pid}");
    // Defaults, Nova's keys; members read their own, not others'.
    let (st, q, _) = c.call(Method::GET, &qpath, &demo, None).await;
    assert_eq!(st, StatusCode::OK, "{q}");
    assert_eq!(
        (
            q["quota_set"]["instances"].as_i64(),
            q["quota_set"]["cores"].as_i64()
        ),
        (Some(10), Some(20))
    );
    assert_eq!(q["quota_set"]["id"], pid.as_str());
    let (st, _, _) = c
        .call(
            Method::GET,
            &format!("/v2.1/os-quota-sets/{admin_pid}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Only admins set; bad keys and values are refused whole.
    let (st, _, _) = c
        .call(
            Method::PUT,
            &qpath,
            &demo,
            Some(json!({"quota_set": {"instances": 50}})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    for bad in [
        json!({"quota_set": {"instances": -2}}),
        json!({"quota_set": {"bogus": 1}}),
        json!({"quota_set": {"instances": "x"}}),
        json!({"quota_set": 3}),
    ] {
        let (st, body, _) = c.call(Method::PUT, &qpath, &admin, Some(bad.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad} -> {body}");
    }
    let (st, q, _) = c
        .call(
            Method::PUT,
            &format!("/v2.1/{admin_pid}/os-quota-sets/{pid}"),
            &admin,
            Some(json!({"quota_set": {"instances": 4, "cores": 100}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{q}");
    assert_eq!(q["quota_set"]["instances"], 4);
    assert!(q["quota_set"].get("id").is_none());
    // Eight concurrent creates against room for four: exactly four, the rest 403.
    let creates = (0..8).map(|_| {
        let c = &c;
        let demo = demo.clone();
        let body = server_body(&image, "1");
        async move {
            c.call(Method::POST, "/v2.1/servers", &demo, Some(body))
                .await
        }
    });
    let results = futures_util::future::join_all(creates).await;
    let ok = results
        .iter()
        .filter(|r| r.0 == StatusCode::ACCEPTED)
        .count();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|r| r.0 == StatusCode::FORBIDDEN)
        .map(|r| &r.1)
        .collect();
    assert_eq!((ok, refused.len()), (4, 4), "{results:?}");
    assert!(
        refused[0]["forbidden"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("Quota exceeded for instances"),
        "{refused:?}"
    );
    let (_, list, _) = c.call(Method::GET, "/v2.1/servers", &demo, None).await;
    assert_eq!(list["servers"].as_array().map(Vec::len), Some(4));
    // Key pairs too: the project's limit, checked with the insert (five racing against three).
    let (st, _, _) = c
        .call(
            Method::PUT,
            &qpath,
            &admin,
            Some(json!({"quota_set": {"key_pairs": 3}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let creates = (0..5).map(|i| {
        let c = &c;
        let demo = demo.clone();
        async move {
            c.call(
                Method::POST,
                "/v2.1/os-keypairs",
                &demo,
                Some(json!({"keypair": {"name": format!("race-{i}")}})),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(creates).await;
    let made = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|r| r.0 == StatusCode::FORBIDDEN)
        .map(|r| &r.1)
        .collect();
    assert_eq!((made, refused.len()), (3, 2), "{results:?}");
    assert_eq!(
        refused[0]["forbidden"]["message"],
        "Quota exceeded, too many key pairs."
    );
    let (_, kps, _) = c.call(Method::GET, "/v2.1/os-keypairs", &demo, None).await;
    assert_eq!(kps["keypairs"].as_array().map(Vec::len), Some(3));
    // Detail and limits say the same.
    let (_, d, _) = c
        .call(Method::GET, &format!("{qpath}/detail"), &demo, None)
        .await;
    assert_eq!(
        d["quota_set"]["instances"],
        json!({"limit": 4, "in_use": 4, "reserved": 0})
    );
    let (_, lim, _) = c.call(Method::GET, "/v2.1/limits", &demo, None).await;
    assert_eq!(lim["limits"]["absolute"]["maxTotalInstances"], 4);
    assert_eq!(lim["limits"]["absolute"]["totalInstancesUsed"], 4);
    // Below what is in use needs force.
    let (st, _, _) = c
        .call(
            Method::PUT,
            &qpath,
            &admin,
            Some(json!({"quota_set": {"instances": 2}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, _) = c
        .call(
            Method::PUT,
            &qpath,
            &admin,
            Some(json!({"quota_set": {"instances": 2, "force": true}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // Deleted: the defaults again.
    let (st, _, _) = c.call(Method::DELETE, &qpath, &admin, None).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, q, _) = c
        .call(Method::GET, &format!("{qpath}/defaults"), &demo, None)
        .await;
    assert_eq!(q["quota_set"]["instances"], 10);
    let (_, q, _) = c.call(Method::GET, &qpath, &demo, None).await;
    assert_eq!(q["quota_set"]["instances"], 10);
    // The attachments routes answer under the project-id prefix too.
    let sid = list["servers"][0]["id"].as_str().expect("id");
    let (st, body, _) = c
        .call(
            Method::GET,
            &format!("/v2.1/{pid}/servers/{sid}/os-volume_attachments"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["volumeAttachments"], json!([]));
    // -1 is no limit: creates go on past any count.
    let (st, _, _) = c
        .call(
            Method::PUT,
            &qpath,
            &admin,
            Some(json!({"quota_set": {"instances": -1, "cores": -1, "ram": -1}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    for _ in 0..3 {
        let (st, v, _) = c
            .call(
                Method::POST,
                "/v2.1/servers",
                &demo,
                Some(server_body(&image, "1")),
            )
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    }
}

/// Usage from the usage record over a scripted timeline: create, resize (confirmed), stop,
/// a restart of the control plane (the store reopened), delete. Each event is stamped within
/// the call that caused it, and the figures equal the sum, worked out here, of each interval
/// at its own size; a period clips them; another tenant sees none of it.
#[tokio::test]
async fn usage_follows_the_record_of_each_change() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    c.register_host("h1", 8, 16384, 100).await;
    let image = c.image(&admin, 1 << 20).await;
    let (_, srv, _) = c
        .call(
            Method::POST,
            "/v2.1/servers",
            &demo,
            Some(server_body(&image, "1")),
        )
        .await;
    let sid = srv["server"]["id"].as_str().expect("id").to_string();
    let (_, shown, _) = c
        .call(Method::GET, &format!("/v2.1/servers/{sid}"), &demo, None)
        .await;
    let pid = shown["server"]["tenant_id"].as_str().map(str::to_string);
    let report = |task: &str, power: i64| {
        let c = &c;
        let body = json!({"task": task, "ok": true, "power_state": power, "fault": null});
        let url = format!("{}/internal/v1/hosts/h1/instances/{sid}/report", c.url);
        async move {
            let st = c
                .http
                .post(url)
                .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("send")
                .status();
            assert_eq!(st, StatusCode::NO_CONTENT);
        }
    };
    let act = |body: Value| {
        let c = &c;
        let demo = demo.clone();
        let url = format!("/v2.1/servers/{sid}/action");
        async move { c.call(Method::POST, &url, &demo, Some(body)).await.0 }
    };
    let now = || chrono::Utc::now().timestamp_micros();
    let pause = || tokio::time::sleep(Duration::from_millis(300));
    // Each step's window: the event must be stamped inside it.
    let mut windows = Vec::new();

    let t = now();
    report("spawning", 1).await; // launched: create
    windows.push((t, now()));
    pause().await;
    // The host holds the new size from the request on (the scheduler counts it), so that is
    // when it is metered; the agent's report makes it VERIFY_RESIZE.
    let t = now();
    assert_eq!(
        act(json!({"resize": {"flavorRef": "3"}})).await,
        StatusCode::ACCEPTED
    );
    report("resize_migrating", 1).await;
    windows.push((t, now()));
    pause().await;
    let t = now();
    assert_eq!(
        act(json!({"confirmResize": null})).await,
        StatusCode::NO_CONTENT
    );
    windows.push((t, now())); // resized → active: state
    pause().await;
    assert_eq!(act(json!({"os-stop": null})).await, StatusCode::ACCEPTED);
    let t = now();
    report("powering-off", 4).await; // stop
    windows.push((t, now()));
    pause().await;
    // The control plane restarts: the store is opened again (migrations, backfill).
    let reopened = onestack_store::Store::open(&c.db_url)
        .await
        .expect("reopen");
    drop(reopened);
    pause().await;
    let (st, _, _) = c
        .call(Method::DELETE, &format!("/v2.1/servers/{sid}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let t = now();
    report("deleting", 0).await; // delete
    windows.push((t, now()));

    let events = c.store.instance_usage_events(&sid).await.expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    // The resize: first the new size, then the state (VERIFY_RESIZE).
    assert_eq!(
        kinds,
        ["create", "resize", "state", "state", "stop", "delete"],
        "{events:?}"
    );
    let steps = [0, 1, 1, 2, 3, 4].map(|i| windows[i]);
    for (e, (from, to)) in events.iter().zip(&steps) {
        assert!(
            *from <= e.at_us && e.at_us <= *to,
            "{} at {} outside [{from}, {to}]",
            e.event,
            e.at_us
        );
    }
    assert_eq!(
        events
            .iter()
            .map(|e| (e.vcpus, e.memory_mb, e.disk_gb))
            .collect::<Vec<_>>(),
        [
            (1, 512, 1),
            (2, 4096, 40),
            (2, 4096, 40),
            (2, 4096, 40),
            (2, 4096, 40),
            (2, 4096, 40)
        ]
    );

    // By hand: m1.tiny from create to resize, m1.medium from resize to delete.
    // Hours since the create (small numbers keep every microsecond in an f64).
    let at = |i: usize| (events[i].at_us - events[0].at_us) as f64 / 3_600_000_000.0;
    let small = at(1) - at(0);
    let big = at(5) - at(1);
    let fmt = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .expect("time")
            .naive_utc()
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string()
    };
    let whole = format!(
        "/v2.1/os-simple-tenant-usage/{}?start={}&end={}",
        pid.as_deref().expect("project"),
        fmt(events[0].at_us - 3_600_000_000),
        fmt(events[5].at_us + 3_600_000_000)
    );
    let close = |a: &Value, b: f64| {
        let a = a.as_f64().unwrap_or(f64::NAN);
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} != {b}");
    };
    let (st, u, _) = c.call(Method::GET, &whole, &demo, None).await;
    assert_eq!(st, StatusCode::OK, "{u}");
    let u = &u["tenant_usage"];
    close(&u["total_hours"], small + big);
    close(&u["total_vcpus_usage"], small + 2.0 * big);
    close(&u["total_memory_mb_usage"], 512.0 * small + 4096.0 * big);
    close(&u["total_local_gb_usage"], small + 40.0 * big);
    let s = &u["server_usages"][0];
    assert_eq!(s["instance_id"], sid.as_str());
    assert_eq!(s["state"], "terminated");
    assert_eq!(
        (s["vcpus"].as_i64(), s["flavor"].as_str()),
        (Some(2), Some("m1.medium"))
    );
    assert!(s["ended_at"].is_string(), "{s}");

    // A period from the confirm to an hour later: m1.medium only, to the delete.
    let part = format!(
        "/v2.1/os-simple-tenant-usage/{}?start={}&end={}",
        pid.as_deref().expect("project"),
        fmt(events[3].at_us),
        fmt(events[5].at_us + 3_600_000_000)
    );
    let (_, u, _) = c.call(Method::GET, &part, &demo, None).await;
    close(
        &u["tenant_usage"]["total_vcpus_usage"],
        2.0 * (at(5) - at(3)),
    );

    // The same after another restart of the control plane: nothing is sampled.
    drop(
        onestack_store::Store::open(&c.db_url)
            .await
            .expect("reopen"),
    );
    let (_, again, _) = c.call(Method::GET, &whole, &demo, None).await;
    close(
        &again["tenant_usage"]["total_vcpus_usage"],
        small + 2.0 * big,
    );

    // Per host (admin): it all ran on h1; its guest ran from create to stop.
    let (st, hosts, _) = c
        .call(
            Method::GET,
            &format!(
                "/v2.1/os-onestack-host-usage?start={}&end={}",
                fmt(events[0].at_us - 3_600_000_000),
                fmt(events[5].at_us + 3_600_000_000)
            ),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{hosts}");
    assert_eq!(hosts["host_usages"][0]["host"], "h1");
    close(&hosts["host_usages"][0]["total_hours"], small + big);
    close(
        &hosts["host_usages"][0]["total_running_hours"],
        at(4) - at(0),
    );
    let (st, _, _) = c
        .call(Method::GET, "/v2.1/os-onestack-host-usage", &demo, None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // The series the dashboard draws: its buckets add up to the period's figures.
    let series = format!(
        "/v2.1/os-onestack-usage-series?start={}&end={}&step=3600",
        fmt(events[0].at_us - 3_600_000_000),
        fmt(events[5].at_us + 3_600_000_000)
    );
    let (st, v, _) = c.call(Method::GET, &series, &demo, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let g = &v["usage_series"]["groups"][0];
    assert_eq!(g["key"].as_str(), pid.as_deref());
    let buckets = v["usage_series"]["buckets"].as_array().map_or(0, Vec::len);
    assert!((2..=3).contains(&buckets), "{v}");
    let summed: f64 = g["total_vcpus_usage"]
        .as_array()
        .expect("figures")
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    close(&json!(summed), small + 2.0 * big);
    let (st, _, _) = c
        .call(Method::GET, &format!("{series}&group_by=host"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v, _) = c
        .call(
            Method::GET,
            &format!("{series}&group_by=host"),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["usage_series"]["groups"][0]["key"], "h1");
    for bad in ["&step=1", "&step=x", "&group_by=flavor"] {
        let (st, _, _) = c
            .call(Method::GET, &format!("{series}{bad}"), &admin, None)
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
    }

    // All projects' usage is the admin's to see, not a member's; bad times are 400.
    let (st, _, _) = c
        .call(Method::GET, "/v2.1/os-simple-tenant-usage", &demo, None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _, _) = c
        .call(
            Method::GET,
            &format!(
                "/v2.1/os-simple-tenant-usage/{}?start=yesterday",
                pid.as_deref().unwrap_or("")
            ),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, list, _) = c
        .call(
            Method::GET,
            &whole.replace(&format!("/{}", pid.as_deref().unwrap_or("")), ""),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    close(&list["tenant_usages"][0]["total_hours"], small + big);
}
