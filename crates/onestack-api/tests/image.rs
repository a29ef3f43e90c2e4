//! Image API integration tests: the real identity and image routers on ephemeral ports over a
//! temporary SQLite store and image directory, driven over HTTP (and raw TCP for broken uploads).

mod common;

use md5::Digest;
use onestack_api::image::ImageState;
use onestack_api::AppState;
use onestack_core::identity::bootstrap::{self, BootstrapParams};
use onestack_core::identity::IdentityService;
use onestack_core::image::ImageService;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const ADMIN_PW: &str = "admin-secret";
const DEMO_PW: &str = "demo-secret";
const PATCH: &str = "application/openstack-images-v2.1-json-patch";

struct Cloud {
    identity_url: String,
    url: String,
    http: reqwest::Client,
    images_dir: PathBuf,
    db_url: String,
    _dir: tempfile::TempDir,
}

async fn start_in(dir: tempfile::TempDir, images_dir: PathBuf, size_cap: u64) -> Cloud {
    let db_url = common::store_url(dir.path()).await;
    let store = onestack_store::Store::open(&db_url).await.expect("store");
    let id_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let img_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let identity_url = format!("http://{}", id_listener.local_addr().expect("addr"));
    let url = format!("http://{}", img_listener.local_addr().expect("addr"));
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
    let identity = IdentityService::new(
        store.clone(),
        dir.path().join("keys"),
        Duration::from_secs(3600),
    )
    .await
    .expect("identity");
    let app = AppState {
        identity,
        identity_url: identity_url.clone().into(),
    };
    let images = ImageService::new(store, images_dir.clone(), size_cap)
        .await
        .expect("images");
    let image_state = ImageState {
        app: app.clone(),
        images,
        base_url: url.clone().into(),
    };
    tokio::spawn(onestack_api::serve(
        id_listener,
        onestack_api::identity::router(app),
        std::future::pending(),
    ));
    tokio::spawn(onestack_api::serve(
        img_listener,
        onestack_api::image::router(image_state),
        std::future::pending(),
    ));
    Cloud {
        identity_url,
        url,
        http: reqwest::Client::new(),
        images_dir,
        db_url,
        _dir: dir,
    }
}

async fn start_with_cap(size_cap: u64) -> Cloud {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images");
    start_in(dir, images, size_cap).await
}

async fn start() -> Cloud {
    start_with_cap(onestack_core::image::DEFAULT_SIZE_CAP).await
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
    async fn admin(&self) -> String {
        self.token("admin", ADMIN_PW, "admin").await
    }
    async fn demo(&self) -> String {
        self.token("demo", DEMO_PW, "demo").await
    }

    /// A user with only `role` on a new project; returns (token, project id).
    async fn user_with_role(&self, admin: &str, name: &str, role: &str) -> (String, String) {
        let post = |path: &str, body: Value| {
            self.http
                .post(format!("{}/v3/{path}", self.identity_url))
                .header("X-Auth-Token", admin)
                .json(&body)
                .send()
        };
        let p: Value = post(
            "projects",
            json!({"project": {"name": name, "domain_id": "default"}}),
        )
        .await
        .expect("project")
        .json()
        .await
        .expect("json");
        let project = p["project"]["id"].as_str().expect("id").to_string();
        let u: Value = post(
            "users",
            json!({"user": {"name": name, "domain_id": "default", "password": "pw-123456"}}),
        )
        .await
        .expect("user")
        .json()
        .await
        .expect("json");
        let user = u["user"]["id"].as_str().expect("id").to_string();
        let roles: Value = self
            .http
            .get(format!("{}/v3/roles?name={role}", self.identity_url))
            .header("X-Auth-Token", admin)
            .send()
            .await
            .expect("roles")
            .json()
            .await
            .expect("json");
        let role_id = roles["roles"][0]["id"].as_str().expect("role").to_string();
        let s = self
            .http
            .put(format!(
                "{}/v3/projects/{project}/users/{user}/roles/{role_id}",
                self.identity_url
            ))
            .header("X-Auth-Token", admin)
            .send()
            .await
            .expect("grant")
            .status();
        assert_eq!(s, StatusCode::NO_CONTENT);
        (self.token(name, "pw-123456", name).await, project)
    }

    async fn req(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-Auth-Token", token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn patch(&self, id: &str, token: &str, ops: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .patch(format!("{}/v2/images/{id}", self.url))
            .header("X-Auth-Token", token)
            .header("Content-Type", PATCH)
            .body(ops.to_string())
            .send()
            .await
            .expect("send");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, token: &str, body: Value) -> Value {
        let (s, img) = self
            .req(Method::POST, "/v2/images", token, Some(body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{img}");
        img
    }

    async fn upload(&self, id: &str, token: &str, data: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .http
            .put(format!("{}/v2/images/{id}/file", self.url))
            .header("X-Auth-Token", token)
            .header("Content-Type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .expect("send");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn status_of(&self, id: &str, token: &str) -> String {
        let (_, img) = self
            .req(Method::GET, &format!("/v2/images/{id}"), token, None)
            .await;
        img["status"].as_str().unwrap_or("?").to_string()
    }

    /// Files in the image directory (data and partial uploads).
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.images_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn assert_glance_error(body: &Value, code: u16) {
    let c = body["code"].as_str().unwrap_or_default();
    assert!(c.starts_with(&code.to_string()), "{body}");
    assert!(body["title"].is_string(), "{body}");
    assert!(body["message"].is_string(), "{body}");
}

fn qcow2(virtual_size: u64, total: usize) -> Vec<u8> {
    let mut h = vec![0u8; total];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&virtual_size.to_be_bytes());
    h
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 253) as u8).collect()
}

#[tokio::test]
async fn discovery_schemas_and_error_shape() {
    let c = start().await;
    let resp = c
        .http
        .get(format!("{}/", c.url))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::MULTIPLE_CHOICES);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["versions"][0]["status"], "CURRENT");
    assert_eq!(
        body["versions"][0]["links"][0]["href"],
        format!("{}/v2/", c.url)
    );
    let admin = c.admin().await;
    let (s, schema) = c.req(Method::GET, "/v2/schemas/image", &admin, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(schema["name"], "image");
    assert!(schema["properties"]["disk_format"]["enum"]
        .as_array()
        .expect("enum")
        .contains(&json!("qcow2")));
    let (s, _) = c.req(Method::GET, "/v2/schemas/images", &admin, None).await;
    assert_eq!(s, StatusCode::OK);
    // Unknown route, unknown id, no token: webob-shaped JSON errors.
    let (s, body) = c.req(Method::GET, "/v2/nothing", &admin, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_glance_error(&body, 404);
    let (s, body) = c
        .req(Method::GET, "/v2/images/not-an-id", &admin, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_glance_error(&body, 404);
    let resp = c
        .http
        .get(format!("{}/v2/images", c.url))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .expect("hdr")
        .contains(&c.identity_url));
    assert!(resp.headers().contains_key("x-openstack-request-id"));
    let body: Value = resp.json().await.expect("json");
    assert_glance_error(&body, 401);
}

#[tokio::test]
async fn create_show_and_validation() {
    let c = start().await;
    let admin = c.admin().await;
    let resp = c
        .http
        .post(format!("{}/v2/images", c.url))
        .header("X-Auth-Token", &admin)
        .json(
            &json!({"name": "cirros", "disk_format": "qcow2", "container_format": "bare",
            "min_ram": 64, "tags": ["a", "b"], "os_distro": "cirros",
            "kernel_id": "8c1c6b9e-6b2c-4d1f-9f0f-1f2e3d4c5b6a"}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let img: Value = resp.json().await.expect("json");
    let id = img["id"].as_str().expect("id").to_string();
    for (k, v) in [
        ("status", json!("queued")),
        ("visibility", json!("shared")),
        ("protected", json!(false)),
        ("os_hidden", json!(false)),
        ("checksum", Value::Null),
        ("os_hash_algo", Value::Null),
        ("os_hash_value", Value::Null),
        ("size", Value::Null),
        ("virtual_size", Value::Null),
        ("min_disk", json!(0)),
        ("min_ram", json!(64)),
        ("tags", json!(["a", "b"])),
        ("os_distro", json!("cirros")),
        ("kernel_id", json!("8c1c6b9e-6b2c-4d1f-9f0f-1f2e3d4c5b6a")),
        ("self", json!(format!("/v2/images/{id}"))),
        ("file", json!(format!("/v2/images/{id}/file"))),
        ("schema", json!("/v2/schemas/image")),
    ] {
        assert_eq!(img[k], v, "{k} in {img}");
    }
    assert!(img["created_at"].as_str().expect("ts").ends_with('Z'));
    let (s, shown) = c
        .req(Method::GET, &format!("/v2/images/{id}"), &admin, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(shown, img);

    // A chosen id works once.
    let fixed = "0b1d6c1e-7a5e-4c55-9d36-0f1c2a3b4c5d";
    c.create(&admin, json!({"id": fixed, "name": "fixed"}))
        .await;
    let (s, body) = c
        .req(
            Method::POST,
            "/v2/images",
            &admin,
            Some(json!({"id": fixed})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");

    let bad: &[(Value, StatusCode)] = &[
        (json!({"name": 5}), StatusCode::BAD_REQUEST),
        (json!({"name": "x".repeat(256)}), StatusCode::BAD_REQUEST),
        (json!({"disk_format": "exe"}), StatusCode::BAD_REQUEST),
        (json!({"container_format": "zip"}), StatusCode::BAD_REQUEST),
        (json!({"visibility": "everyone"}), StatusCode::BAD_REQUEST),
        (json!({"min_ram": -1}), StatusCode::BAD_REQUEST),
        (json!({"min_disk": "big"}), StatusCode::BAD_REQUEST),
        (json!({"protected": "yes"}), StatusCode::BAD_REQUEST),
        (json!({"tags": "a"}), StatusCode::BAD_REQUEST),
        (json!({"tags": [1]}), StatusCode::BAD_REQUEST),
        (json!({"id": "nope"}), StatusCode::BAD_REQUEST),
        (json!({"kernel_id": "nope"}), StatusCode::BAD_REQUEST),
        (json!({"custom": 1}), StatusCode::BAD_REQUEST),
        (json!({"custom": {"nested": "x"}}), StatusCode::BAD_REQUEST),
        (json!(["not", "an", "object"]), StatusCode::BAD_REQUEST),
        (json!({"status": "active"}), StatusCode::FORBIDDEN),
        (json!({"checksum": "abc"}), StatusCode::FORBIDDEN),
        (json!({"size": 10}), StatusCode::FORBIDDEN),
        (json!({"deleted": true}), StatusCode::FORBIDDEN),
        (json!({"locations": []}), StatusCode::FORBIDDEN),
        (
            json!({"tags": (0..200).map(|i| i.to_string()).collect::<Vec<_>>()}),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (body, want) in bad {
        let (s, err) = c
            .req(Method::POST, "/v2/images", &admin, Some(body.clone()))
            .await;
        assert_eq!(s, *want, "{body} -> {err}");
        assert_glance_error(&err, want.as_u16());
    }
    for raw in ["{not json", ""] {
        let resp = c
            .http
            .post(format!("{}/v2/images", c.url))
            .header("X-Auth-Token", &admin)
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{raw:?}");
    }
    let huge = json!({"name": "x", "description": "y".repeat(200_000)});
    let (s, _) = c.req(Method::POST, "/v2/images", &admin, Some(huge)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing of the rejected requests was stored.
    let (_, list) = c.req(Method::GET, "/v2/images", &admin, None).await;
    assert_eq!(list["images"].as_array().expect("images").len(), 2);
}

#[tokio::test]
async fn json_patch_updates() {
    let c = start().await;
    let admin = c.admin().await;
    let img = c
        .create(
            &admin,
            json!({"name": "a", "tags": ["x"], "disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let id = img["id"].as_str().expect("id");
    let (s, out) = c
        .patch(
            id,
            &admin,
            json!([
                {"op": "replace", "path": "/name", "value": "b"},
                {"op": "add", "path": "/os_distro", "value": "debian"},
                {"op": "add", "path": "/tags/1", "value": "y"},
                {"op": "add", "path": "/min_ram", "value": 128},
                {"op": "replace", "path": "/protected", "value": true},
            ]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(out["name"], "b");
    assert_eq!(out["os_distro"], "debian");
    assert_eq!(out["tags"], json!(["x", "y"]));
    assert_eq!(out["min_ram"], 128);
    assert_eq!(out["protected"], true);
    let (s, out) = c
        .patch(
            id,
            &admin,
            json!([{"op": "remove", "path": "/os_distro"}, {"op": "remove", "path": "/tags/0"}]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert!(out.get("os_distro").is_none());
    assert_eq!(out["tags"], json!(["y"]));

    let cases: &[(Value, StatusCode)] = &[
        (
            json!([{"op": "replace", "path": "/status", "value": "active"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "replace", "path": "/id", "value": "x"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "add", "path": "/deleted", "value": "x"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "remove", "path": "/name"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "remove", "path": "/missing"}]),
            StatusCode::CONFLICT,
        ),
        (
            json!([{"op": "replace", "path": "/missing", "value": "v"}]),
            StatusCode::CONFLICT,
        ),
        (
            json!([{"op": "add", "path": "/name", "value": 5}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "add", "path": "/custom", "value": 5}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "move", "path": "/name", "from": "/x"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "add", "path": "name", "value": "x"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "add", "path": "/a/b", "value": "x"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "add", "path": "/tags/9", "value": "x"}]),
            StatusCode::CONFLICT,
        ),
        (json!([{"op": "add"}]), StatusCode::BAD_REQUEST),
        (json!({"op": "add"}), StatusCode::BAD_REQUEST),
        (
            json!([{"op": "replace", "path": "/visibility", "value": "everyone"}]),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (ops, want) in cases {
        let (s, err) = c.patch(id, &admin, ops.clone()).await;
        assert_eq!(s, *want, "{ops} -> {err}");
        assert_glance_error(&err, want.as_u16());
    }
    // The failed patches changed nothing.
    let (_, now) = c
        .req(Method::GET, &format!("/v2/images/{id}"), &admin, None)
        .await;
    assert_eq!(now["name"], "b");
    assert_eq!(now["tags"], json!(["y"]));
    // Plain JSON is not a patch document.
    let resp = c
        .http
        .patch(format!("{}/v2/images/{id}", c.url))
        .header("X-Auth-Token", &admin)
        .json(&json!([]))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Tags API.
    let tag_url = format!("{}/v2/images/{id}/tags/blue", c.url);
    for _ in 0..2 {
        let s = c
            .http
            .put(&tag_url)
            .header("X-Auth-Token", &admin)
            .send()
            .await
            .expect("send")
            .status();
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    let s = c
        .http
        .delete(&tag_url)
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let s = c
        .http
        .delete(&tag_url)
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Protected: no delete until unprotected.
    let (s, err) = c
        .req(Method::DELETE, &format!("/v2/images/{id}"), &admin, None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{err}");
    c.patch(
        id,
        &admin,
        json!([{"op": "replace", "path": "/protected", "value": false}]),
    )
    .await;
    let (s, _) = c
        .req(Method::DELETE, &format!("/v2/images/{id}"), &admin, None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c
        .req(Method::GET, &format!("/v2/images/{id}"), &admin, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upload_download_hashes_ranges_and_states() {
    let c = start().await;
    let admin = c.admin().await;
    let img = c
        .create(
            &admin,
            json!({"name": "disk", "disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let id = img["id"].as_str().expect("id").to_string();
    // No data yet: 204.
    let resp = c
        .http
        .get(format!("{}/v2/images/{id}/file", c.url))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let data = pattern(5 * 1024 * 1024 + 17);
    let (s, body) = c.upload(&id, &admin, data.clone()).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (_, img) = c
        .req(Method::GET, &format!("/v2/images/{id}"), &admin, None)
        .await;
    let md5 = hex::encode(md5::Md5::digest(&data));
    let sha = hex::encode(sha2::Sha512::digest(&data));
    assert_eq!(img["status"], "active");
    assert_eq!(img["size"], json!(data.len()));
    assert_eq!(img["virtual_size"], json!(data.len()));
    assert_eq!(img["checksum"], json!(md5));
    assert_eq!(img["os_hash_algo"], "sha512");
    assert_eq!(img["os_hash_value"], json!(sha));
    assert_eq!(c.files(), vec![id.clone()]);

    let resp = c
        .http
        .get(format!("{}/v2/images/{id}/file", c.url))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-md5"], md5.as_str());
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.bytes().await.expect("bytes").as_ref(), &data[..]);

    let resp = c
        .http
        .get(format!("{}/v2/images/{id}/file", c.url))
        .header("X-Auth-Token", &admin)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 100-199/{}", data.len()).as_str()
    );
    assert_eq!(resp.bytes().await.expect("bytes").as_ref(), &data[100..200]);
    let resp = c
        .http
        .get(format!("{}/v2/images/{id}/file", c.url))
        .header("X-Auth-Token", &admin)
        .header("Range", "bytes=99999999-")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Data is immutable once uploaded; formats too.
    let (s, err) = c.upload(&id, &admin, vec![1, 2, 3]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    let (s, _) = c
        .patch(
            &id,
            &admin,
            json!([{"op": "replace", "path": "/disk_format", "value": "qcow2"}]),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // qcow2: virtual size from the header; content must match the declared format.
    let q = c
        .create(
            &admin,
            json!({"name": "q", "disk_format": "qcow2", "container_format": "bare"}),
        )
        .await;
    let qid = q["id"].as_str().expect("id");
    let (s, err) = c.upload(qid, &admin, pattern(4096)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(c.status_of(qid, &admin).await, "queued");
    let (s, _) = c.upload(qid, &admin, qcow2(1 << 30, 8192)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, q) = c
        .req(Method::GET, &format!("/v2/images/{qid}"), &admin, None)
        .await;
    assert_eq!(q["virtual_size"], json!(1u64 << 30));
    assert_eq!(q["size"], 8192);
    // A qcow2 declared as raw is refused (QEMU would otherwise trust its header).
    let r = c
        .create(
            &admin,
            json!({"name": "r", "disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let rid = r["id"].as_str().expect("id");
    let (s, _) = c.upload(rid, &admin, qcow2(1 << 20, 4096)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(c.status_of(rid, &admin).await, "queued");

    // Deactivated images: metadata visible, data only to admins.
    let demo = c.demo().await;
    c.patch(
        &id,
        &admin,
        json!([{"op": "replace", "path": "/visibility", "value": "public"}]),
    )
    .await;
    let s = c
        .http
        .post(format!("{}/v2/images/{id}/actions/deactivate", c.url))
        .header("X-Auth-Token", &demo)
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(s, StatusCode::FORBIDDEN);
    let s = c
        .http
        .post(format!("{}/v2/images/{id}/actions/deactivate", c.url))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let resp = c
        .http
        .get(format!("{}/v2/images/{id}/file", c.url))
        .header("X-Auth-Token", &demo)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let s = c
        .http
        .post(format!("{}/v2/images/{id}/actions/reactivate", c.url))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(c.status_of(&id, &demo).await, "active");

    // Delete removes the data file.
    let (s, _) = c
        .req(Method::DELETE, &format!("/v2/images/{id}"), &admin, None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!c.files().contains(&id));
}

#[tokio::test]
async fn failed_uploads_leave_the_image_queued_and_no_file() {
    let c = start_with_cap(1024 * 1024).await;
    let admin = c.admin().await;
    let img = c
        .create(
            &admin,
            json!({"name": "big", "disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let id = img["id"].as_str().expect("id").to_string();

    // Over the size cap, announced (Content-Length) and streamed without a length (chunked).
    let (s, err) = c.upload(&id, &admin, pattern(2 * 1024 * 1024)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_glance_error(&err, 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(pattern(512 * 1024))).collect();
    let resp = c
        .http
        .put(format!("{}/v2/images/{id}/file", c.url))
        .header("X-Auth-Token", &admin)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert_eq!(c.status_of(&id, &admin).await, "queued");
    assert!(c.files().is_empty(), "{:?}", c.files());

    // A client that disconnects mid-body.
    let addr = c.url.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "PUT /v2/images/{id}/file HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: {admin}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 900000\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.expect("write");
    sock.write_all(&pattern(300_000)).await.expect("write");
    sock.flush().await.expect("flush");
    drop(sock);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut status = String::new();
    for _ in 0..100 {
        status = c.status_of(&id, &admin).await;
        if status == "queued" && c.files().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "queued");
    assert!(c.files().is_empty(), "{:?}", c.files());

    // The service still works: the same image now uploads fine (once the server has noticed
    // the disconnect, which may lag the client's close a little).
    let data = pattern(700_000);
    let mut s = StatusCode::CONFLICT;
    for _ in 0..50 {
        s = c.upload(&id, &admin, data.clone()).await.0;
        if s != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, img) = c
        .req(Method::GET, &format!("/v2/images/{id}"), &admin, None)
        .await;
    assert_eq!(img["size"], json!(data.len()));
    assert_eq!(c.files(), vec![id.clone()]);
}

/// A real full disk: the image directory is a 4 MiB tmpfs. Needs root (as CI runs).
#[tokio::test]
async fn a_full_disk_is_a_clear_413_and_loses_nothing() {
    if unsafe_geteuid() != 0 {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("mkdir");
    let mount = Mount::tmpfs(&images, "4m");
    let c = start_in(dir, images.clone(), u64::MAX).await;
    let admin = c.admin().await;
    let small = c
        .create(
            &admin,
            json!({"name": "small", "disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let small_id = small["id"].as_str().expect("id").to_string();
    let (s, _) = c.upload(&small_id, &admin, pattern(1024 * 1024)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let big = c
        .create(
            &admin,
            json!({"name": "big", "disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let id = big["id"].as_str().expect("id").to_string();
    let (s, err) = c.upload(&id, &admin, pattern(6 * 1024 * 1024)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert!(
        err["message"].as_str().expect("msg").contains("full"),
        "{err}"
    );
    assert_eq!(c.status_of(&id, &admin).await, "queued");
    // The earlier image is intact, and no partial file remains.
    assert_eq!(c.files(), vec![small_id.clone()]);
    let body = c
        .http
        .get(format!("{}/v2/images/{small_id}/file", c.url))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .expect("send")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(body.as_ref(), &pattern(1024 * 1024)[..]);
    drop(c);
    drop(mount);
}

fn unsafe_geteuid() -> u32 {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(1)
}

struct Mount(PathBuf);
impl Mount {
    fn tmpfs(at: &std::path::Path, size: &str) -> Mount {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs failed");
        Mount(at.to_path_buf())
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn interrupted_uploads_are_requeued_on_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images");
    let c = start_in(dir, images.clone(), u64::MAX).await;
    let admin = c.admin().await;
    let img = c.create(&admin, json!({"name": "x"})).await;
    let id = img["id"].as_str().expect("id").to_string();
    // Simulate a process killed mid-upload: status saving and a partial file.
    let store = onestack_store::Store::open(&c.db_url).await.expect("store");
    assert!(store
        .transition_image(&id, &["queued"], "saving", "2026-01-01T00:00:00Z")
        .await
        .expect("transition"));
    std::fs::write(images.join(format!(".upload-{id}-abc")), b"partial").expect("write");
    ImageService::new(store.clone(), images.clone(), u64::MAX)
        .await
        .expect("restart");
    assert_eq!(store.get_image(&id).await.expect("get").status, "queued");
    assert!(c.files().is_empty(), "{:?}", c.files());
}

#[tokio::test]
async fn a_controller_restarting_leaves_the_uploads_of_others_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images");
    let c = start_in(dir, images.clone(), u64::MAX).await;
    let admin = c.admin().await;
    let store = onestack_store::Store::open(&c.db_url).await.expect("store");
    let t = "2026-01-01T00:00:00Z";
    // b runs throughout (and leads).
    let leader = ImageService::new_for(store.clone(), images.clone(), u64::MAX, "b")
        .await
        .expect("b");
    // Uploads under way on three controllers: a, b, and c (which stopped for good).
    let mut ids = Vec::new();
    for by in ["a", "b", "c"] {
        let img = c
            .create(&admin, json!({"name": format!("from-{by}")}))
            .await;
        let id = img["id"].as_str().expect("id").to_string();
        assert!(store.start_image_upload(&id, by, t).await.expect("start"));
        ids.push(id);
    }
    let status = |id: String| {
        let store = store.clone();
        async move { store.get_image(&id).await.expect("get").status }
    };
    // a starts again: its own upload died with it; b's and c's are not its to judge.
    ImageService::new_for(store.clone(), images.clone(), u64::MAX, "a")
        .await
        .expect("restart");
    assert_eq!(status(ids[0].clone()).await, "queued");
    assert_eq!(status(ids[1].clone()).await, "saving");
    assert_eq!(status(ids[2].clone()).await, "saving");
    // On record: a and b beat now, c stopped beating a minute ago; its upload never finishes.
    let now = chrono::Utc::now().timestamp_micros();
    for (name, at) in [("a", now), ("b", now), ("c", now - 60_000_000)] {
        store
            .controller_heartbeat(name, "{}", t, at, false)
            .await
            .expect("beat");
    }
    assert_eq!(leader.requeue_abandoned_uploads().await.expect("r"), 1);
    assert_eq!(status(ids[1].clone()).await, "saving");
    assert_eq!(status(ids[2].clone()).await, "queued");
}

#[tokio::test]
async fn list_filters_sorting_and_paging() {
    let c = start().await;
    let admin = c.admin().await;
    let mut ids = Vec::new();
    for (i, name) in ["delta", "alpha", "echo", "charlie", "bravo"]
        .iter()
        .enumerate()
    {
        let mut body = json!({"name": name, "disk_format": "raw", "container_format": "bare",
            "min_ram": i * 10, "tags": if i % 2 == 0 { vec!["even"] } else { vec!["odd"] }});
        if i == 0 {
            body["os_distro"] = json!("debian");
        }
        if i == 4 {
            body["os_hidden"] = json!(true);
        }
        ids.push(
            c.create(&admin, body).await["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    let names = |v: &Value| -> Vec<String> {
        v["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| i["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let get = |q: &str| {
        let c = &c;
        let admin = admin.clone();
        let q = q.to_string();
        async move {
            c.req(Method::GET, &format!("/v2/images{q}"), &admin, None)
                .await
        }
    };
    let (_, all) = get("?sort_key=name&sort_dir=asc").await;
    assert_eq!(names(&all), vec!["alpha", "charlie", "delta", "echo"]);
    assert_eq!(all["schema"], "/v2/schemas/images");
    assert!(all.get("next").is_none());
    let (_, hidden) = get("?os_hidden=true").await;
    assert_eq!(names(&hidden), vec!["bravo"]);
    let (_, desc) = get("?sort=name:desc").await;
    assert_eq!(names(&desc), vec!["echo", "delta", "charlie", "alpha"]);
    let (_, tagged) = get("?tag=even&sort_key=name&sort_dir=asc").await;
    assert_eq!(names(&tagged), vec!["delta", "echo"]);
    let (_, prop) = get("?os_distro=debian").await;
    assert_eq!(names(&prop), vec!["delta"]);
    let (_, by_name) = get("?name=charlie").await;
    assert_eq!(names(&by_name), vec!["charlie"]);
    let (_, by_in) = get("?name=in:alpha,echo&sort_key=name&sort_dir=asc").await;
    assert_eq!(names(&by_in), vec!["alpha", "echo"]);
    let (_, queued) = get("?status=active").await;
    assert!(names(&queued).is_empty());

    // Paging: follow `next` until it disappears; every image exactly once, in order.
    let mut seen = Vec::new();
    let mut path = "/v2/images?limit=2&sort_key=name&sort_dir=asc".to_string();
    loop {
        let (s, page) = c.req(Method::GET, &path, &admin, None).await;
        assert_eq!(s, StatusCode::OK);
        seen.extend(names(&page));
        match page.get("next").and_then(Value::as_str) {
            Some(next) => path = next.to_string(),
            None => break,
        }
        assert!(seen.len() <= 4, "paging does not end");
    }
    assert_eq!(seen, vec!["alpha", "charlie", "delta", "echo"]);
    for bad in [
        "?limit=-1",
        "?marker=nope",
        "?sort_key=secret",
        "?sort_dir=sideways",
        "?size_min=x",
    ] {
        let (s, err) = get(bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {err}");
    }
}

#[tokio::test]
async fn tenants_see_and_touch_only_what_they_may() {
    let c = start().await;
    let admin = c.admin().await;
    let demo = c.demo().await;
    let (reader, _) = c.user_with_role(&admin, "watcher", "reader").await;
    let (other, other_project) = c.user_with_role(&admin, "other", "member").await;

    let private = c
        .create(&admin, json!({"name": "private", "visibility": "private"}))
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let public = c
        .create(&admin, json!({"name": "public", "visibility": "public"}))
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let community = c
        .create(
            &demo,
            json!({"name": "community", "visibility": "community"}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let shared = c.create(&demo, json!({"name": "shared"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();

    // Another tenant's private image does not exist for demo; the public one is read-only.
    let (s, _) = c
        .req(Method::GET, &format!("/v2/images/{private}"), &demo, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = c
        .req(
            Method::DELETE,
            &format!("/v2/images/{private}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = c
        .req(Method::GET, &format!("/v2/images/{public}"), &demo, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = c
        .req(Method::DELETE, &format!("/v2/images/{public}"), &demo, None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = c
        .patch(
            &public,
            &demo,
            json!([{"op": "replace", "path": "/name", "value": "mine"}]),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = c.upload(&private, &demo, vec![0; 10]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Only admins publish.
    let (s, _) = c
        .req(
            Method::POST,
            "/v2/images",
            &demo,
            Some(json!({"visibility": "public"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = c
        .patch(
            &shared,
            &demo,
            json!([{"op": "replace", "path": "/visibility", "value": "public"}]),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Only admins give images away.
    let (s, _) = c
        .req(
            Method::POST,
            "/v2/images",
            &demo,
            Some(json!({"owner": other_project})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A reader reads but never writes.
    let (s, _) = c
        .req(Method::GET, &format!("/v2/images/{public}"), &reader, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = c
        .req(
            Method::POST,
            "/v2/images",
            &reader,
            Some(json!({"name": "r"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Community: visible by id to all, listed only when asked for.
    let (s, _) = c
        .req(
            Method::GET,
            &format!("/v2/images/{community}"),
            &other,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let list_names = |v: Value| -> Vec<String> {
        let mut n: Vec<String> = v["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| i["name"].as_str().unwrap_or("").to_string())
            .collect();
        n.sort();
        n
    };
    let (_, l) = c.req(Method::GET, "/v2/images", &other, None).await;
    assert_eq!(list_names(l), vec!["public"]);
    let (_, l) = c
        .req(Method::GET, "/v2/images?visibility=community", &other, None)
        .await;
    assert_eq!(list_names(l), vec!["community"]);

    // Shared: invisible until the owner adds the project; listed once accepted.
    let (s, _) = c
        .req(Method::GET, &format!("/v2/images/{shared}"), &other, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, m) = c
        .req(
            Method::POST,
            &format!("/v2/images/{shared}/members"),
            &demo,
            Some(json!({"member": other_project})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["status"], "pending");
    assert_eq!(m["schema"], "/v2/schemas/member");
    let (s, _) = c
        .req(
            Method::POST,
            &format!("/v2/images/{shared}/members"),
            &demo,
            Some(json!({"member": other_project})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = c
        .req(Method::GET, &format!("/v2/images/{shared}"), &other, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, l) = c.req(Method::GET, "/v2/images", &other, None).await;
    assert_eq!(list_names(l), vec!["public"]);
    // The owner cannot accept on the member's behalf; the member can.
    let member_path = format!("/v2/images/{shared}/members/{other_project}");
    let (s, _) = c
        .req(
            Method::PUT,
            &member_path,
            &demo,
            Some(json!({"status": "accepted"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = c
        .req(
            Method::PUT,
            &member_path,
            &other,
            Some(json!({"status": "maybe"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, m) = c
        .req(
            Method::PUT,
            &member_path,
            &other,
            Some(json!({"status": "accepted"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let (_, l) = c.req(Method::GET, "/v2/images", &other, None).await;
    assert_eq!(list_names(l), vec!["public", "shared"]);
    // The member still cannot change the image, nor add members.
    let (s, _) = c
        .req(
            Method::DELETE,
            &format!("/v2/images/{shared}"),
            &other,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, l) = c
        .req(
            Method::GET,
            &format!("/v2/images/{shared}/members"),
            &demo,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(l["members"].as_array().expect("members").len(), 1);
    let (s, _) = c.req(Method::DELETE, &member_path, &demo, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c
        .req(Method::GET, &format!("/v2/images/{shared}"), &other, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Admin sees every image except unrequested community ones.
    let (_, l) = c.req(Method::GET, "/v2/images", &admin, None).await;
    assert_eq!(list_names(l), vec!["private", "public", "shared"]);
}
