//! Identity API integration tests: the real router on an ephemeral port over a temporary SQLite
//! store, driven over HTTP.

mod common;

use onestack_api::AppState;
use onestack_core::identity::bootstrap::{self, BootstrapParams, ServiceEndpoints};
use onestack_core::identity::IdentityService;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const ADMIN_PW: &str = "admin-secret";
const DEMO_PW: &str = "demo-secret";

struct Cloud {
    url: String,
    http: reqwest::Client,
    identity: Arc<IdentityService>,
    _dir: tempfile::TempDir,
}

async fn start_with_ttl(ttl: Duration) -> Cloud {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = onestack_store::Store::open(&common::store_url(dir.path()).await)
        .await
        .expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    bootstrap::run(
        &store,
        &BootstrapParams {
            admin_password: ADMIN_PW.into(),
            demo_password: DEMO_PW.into(),
            region: "RegionOne".into(),
            services: vec![ServiceEndpoints {
                service_type: "identity".into(),
                name: "keystone".into(),
                description: String::new(),
                public_url: format!("{url}/v3"),
                internal_url: format!("{url}/v3"),
                admin_url: format!("{url}/v3"),
            }],
        },
    )
    .await
    .expect("bootstrap");
    let identity = IdentityService::new(store, dir.path().join("keys"), ttl)
        .await
        .expect("identity");
    let state = AppState {
        identity: identity.clone(),
        identity_url: url.clone().into(),
    };
    let router = onestack_api::identity::router(state);
    tokio::spawn(onestack_api::serve(
        listener,
        router,
        std::future::pending(),
    ));
    Cloud {
        url,
        http: reqwest::Client::new(),
        identity,
        _dir: dir,
    }
}

async fn start() -> Cloud {
    start_with_ttl(Duration::from_secs(3600)).await
}

fn password_auth(user: &str, pw: &str, project: Option<&str>) -> Value {
    let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": pw}}}});
    if let Some(p) = project {
        auth["scope"] = json!({"project": {"name": p, "domain": {"id": "default"}}});
    }
    json!({"auth": auth})
}

impl Cloud {
    async fn req(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.header("X-Auth-Token", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn token(&self, user: &str, pw: &str, project: Option<&str>) -> String {
        let resp = self
            .http
            .post(format!("{}/v3/auth/tokens", self.url))
            .json(&password_auth(user, pw, project))
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
        self.token("admin", ADMIN_PW, Some("admin")).await
    }

    async fn demo(&self) -> String {
        self.token("demo", DEMO_PW, Some("demo")).await
    }

    async fn validate(&self, caller: &str, subject: &str) -> StatusCode {
        self.http
            .get(format!("{}/v3/auth/tokens", self.url))
            .header("X-Auth-Token", caller)
            .header("X-Subject-Token", subject)
            .send()
            .await
            .expect("send")
            .status()
    }
}

fn assert_keystone_error(body: &Value, code: u16) {
    assert_eq!(body["error"]["code"], json!(code), "{body}");
    assert!(body["error"]["title"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn version_discovery() {
    let c = start().await;
    let resp = c
        .http
        .get(format!("{}/", c.url))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::MULTIPLE_CHOICES);
    assert_eq!(
        resp.headers()["location"],
        format!("{}/v3/", c.url).as_str()
    );
    assert!(resp.headers()["x-openstack-request-id"]
        .to_str()
        .expect("id")
        .starts_with("req-"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["versions"]["values"][0]["id"], "v3.14");
    assert_eq!(body["versions"]["values"][0]["status"], "stable");
    let (s, body) = c.req(Method::GET, "/v3", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body["version"]["links"][0]["href"],
        format!("{}/v3/", c.url)
    );
}

#[tokio::test]
async fn scoped_token_carries_roles_and_catalog() {
    let c = start().await;
    let resp = c
        .http
        .post(format!("{}/v3/auth/tokens", c.url))
        .json(&password_auth("admin", ADMIN_PW, Some("admin")))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().contains_key("x-subject-token"));
    let body: Value = resp.json().await.expect("json");
    let t = &body["token"];
    assert_eq!(t["methods"], json!(["password"]));
    assert_eq!(t["user"]["name"], "admin");
    assert_eq!(
        t["user"]["domain"],
        json!({"id": "default", "name": "Default"})
    );
    assert_eq!(t["project"]["name"], "admin");
    assert_eq!(t["is_domain"], json!(false));
    let mut roles: Vec<&str> = t["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    roles.sort_unstable();
    assert_eq!(
        roles,
        vec!["admin", "member", "reader"],
        "implied roles are included"
    );
    assert!(t["expires_at"].as_str().expect("exp").ends_with("Z"));
    assert_eq!(t["audit_ids"].as_array().expect("audit").len(), 1);
    let cat = t["catalog"].as_array().expect("catalog");
    let ident = cat
        .iter()
        .find(|s| s["type"] == "identity")
        .expect("identity service");
    let eps = ident["endpoints"].as_array().expect("eps");
    assert_eq!(eps.len(), 3);
    assert!(eps
        .iter()
        .all(|e| e["region_id"] == "RegionOne" && e["region"] == "RegionOne"));

    // The demo member sees member and reader only.
    let (_, body) = c
        .req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(password_auth("demo", DEMO_PW, Some("demo"))),
        )
        .await;
    let roles: Vec<&str> = body["token"]["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .map(|r| r["name"].as_str().expect("n"))
        .collect();
    assert!(roles.contains(&"member") && roles.contains(&"reader") && !roles.contains(&"admin"));
}

#[tokio::test]
async fn unscoped_and_default_project_and_rescope() {
    let c = start().await;
    let mut body = password_auth("demo", DEMO_PW, None);
    body["auth"]["scope"] = json!("unscoped");
    let (s, b) = c
        .req(Method::POST, "/v3/auth/tokens", None, Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(b["token"].get("catalog").is_none() && b["token"].get("project").is_none());
    // No scope at all: Keystone scopes to the default project.
    let (_, b) = c
        .req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(password_auth("demo", DEMO_PW, None)),
        )
        .await;
    assert_eq!(b["token"]["project"]["name"], "demo");
    // Rescope an unscoped token to a project with the token method.
    let mut body = password_auth("demo", DEMO_PW, None);
    body["auth"]["scope"] = json!("unscoped");
    let resp = c
        .http
        .post(format!("{}/v3/auth/tokens", c.url))
        .json(&body)
        .send()
        .await
        .expect("send");
    let unscoped = resp.headers()["x-subject-token"]
        .to_str()
        .expect("h")
        .to_string();
    let (s, b) = c
        .req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(
                json!({"auth": {"identity": {"methods": ["token"], "token": {"id": unscoped}},
            "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        b["token"]["audit_ids"].as_array().expect("a").len(),
        2,
        "audit chain kept"
    );
    // A project the user has no role on.
    let (s, b) = c
        .req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(password_auth("demo", DEMO_PW, Some("admin"))),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_keystone_error(&b, 401);
}

#[tokio::test]
async fn wrong_user_and_wrong_password_look_the_same() {
    let c = start().await;
    let a = c
        .http
        .post(format!("{}/v3/auth/tokens", c.url))
        .json(&password_auth("admin", "nope", Some("admin")))
        .send()
        .await
        .expect("send");
    let b = c
        .http
        .post(format!("{}/v3/auth/tokens", c.url))
        .json(&password_auth("ghost", "nope", Some("admin")))
        .send()
        .await
        .expect("send");
    assert_eq!(a.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(b.status(), StatusCode::UNAUTHORIZED);
    assert!(a.headers()["www-authenticate"]
        .to_str()
        .expect("h")
        .starts_with("Keystone uri="));
    let (ba, bb): (Value, Value) = (a.json().await.expect("j"), b.json().await.expect("j"));
    assert_eq!(ba, bb);
    assert_keystone_error(&ba, 401);
}

#[tokio::test]
async fn validate_head_revoke() {
    let c = start().await;
    let admin = c.admin().await;
    let demo = c.demo().await;
    assert_eq!(c.validate(&admin, &demo).await, StatusCode::OK);
    assert_eq!(
        c.validate(&demo, &demo).await,
        StatusCode::OK,
        "a user may validate its own token"
    );
    assert_eq!(c.validate(&demo, &admin).await, StatusCode::FORBIDDEN);
    assert_eq!(c.validate(&admin, "garbage").await, StatusCode::NOT_FOUND);
    let head = c
        .http
        .head(format!("{}/v3/auth/tokens", c.url))
        .header("X-Auth-Token", &admin)
        .header("X-Subject-Token", &demo)
        .send()
        .await
        .expect("send");
    assert_eq!(head.status(), StatusCode::OK);
    let del = c
        .http
        .delete(format!("{}/v3/auth/tokens", c.url))
        .header("X-Auth-Token", &admin)
        .header("X-Subject-Token", &demo)
        .send()
        .await
        .expect("send");
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    assert_eq!(c.validate(&admin, &demo).await, StatusCode::NOT_FOUND);
    let (s, _) = c
        .req(Method::GET, "/v3/auth/projects", Some(&demo), None)
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a revoked token is refused everywhere"
    );
    // A new token for the same user still works.
    let demo2 = c.demo().await;
    assert_eq!(c.validate(&admin, &demo2).await, StatusCode::OK);
}

#[tokio::test]
async fn tokens_expire() {
    let c = start_with_ttl(Duration::from_millis(800)).await;
    let t = c.admin().await;
    let (s, _) = c
        .req(Method::GET, "/v3/auth/projects", Some(&t), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (s, b) = c
        .req(Method::GET, "/v3/auth/projects", Some(&t), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_keystone_error(&b, 401);
}

#[tokio::test]
async fn key_rotation_keeps_tokens_valid() {
    let c = start().await;
    let t = c.admin().await;
    c.identity.rotate_keys().await.expect("rotate");
    let (s, _) = c
        .req(Method::GET, "/v3/auth/projects", Some(&t), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let t2 = c.admin().await;
    assert_ne!(t, t2);
}

#[tokio::test]
async fn user_lifecycle_and_password_change_revokes_tokens() {
    let c = start().await;
    let admin = c.admin().await;
    let (s, p) = c
        .req(
            Method::POST,
            "/v3/projects",
            Some(&admin),
            Some(json!({"project": {"name": "p1"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let pid = p["project"]["id"].as_str().expect("id").to_string();
    assert_eq!(p["project"]["domain_id"], "default");
    let (s, _) = c
        .req(
            Method::POST,
            "/v3/projects",
            Some(&admin),
            Some(json!({"project": {"name": "p1"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "duplicate name");
    let (s, u) = c
        .req(
            Method::POST,
            "/v3/users",
            Some(&admin),
            Some(json!({"user": {"name": "u1", "password": "pw1", "default_project_id": pid}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(u["user"].get("password").is_none(), "never echo a password");
    let uid = u["user"]["id"].as_str().expect("id").to_string();
    let (s, roles) = c
        .req(Method::GET, "/v3/roles?name=member", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let member = roles["roles"][0]["id"]
        .as_str()
        .expect("member")
        .to_string();
    let grant = format!("/v3/projects/{pid}/users/{uid}/roles/{member}");
    assert_eq!(
        c.req(Method::PUT, &grant, Some(&admin), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.req(Method::HEAD, &grant, Some(&admin), None).await.0,
        StatusCode::NO_CONTENT
    );
    let u1 = c.token("u1", "pw1", Some("p1")).await;
    let (s, b) = c
        .req(
            Method::GET,
            &format!("/v3/role_assignments?user.id={uid}&include_names=True"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["role_assignments"][0]["role"]["name"], "member");
    assert_eq!(b["role_assignments"][0]["user"]["name"], "u1");
    assert_eq!(b["role_assignments"][0]["scope"]["project"]["name"], "p1");
    let (_, b) = c
        .req(
            Method::GET,
            &format!("/v3/role_assignments?user.id={uid}&effective"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        b["role_assignments"].as_array().expect("a").len(),
        2,
        "member and implied reader"
    );

    // Admin sets a new password: the old tokens die, the old password fails, the new works.
    let (s, _) = c
        .req(
            Method::PATCH,
            &format!("/v3/users/{uid}"),
            Some(&admin),
            Some(json!({"user": {"password": "pw2"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c.validate(&admin, &u1).await, StatusCode::NOT_FOUND);
    let (s, _) = c
        .req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(password_auth("u1", "pw1", Some("p1"))),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let u1 = c.token("u1", "pw2", Some("p1")).await;

    // The user changes its own password, proving the old one.
    let path = format!("/v3/users/{uid}/password");
    let (s, _) = c
        .req(
            Method::POST,
            &path,
            Some(&u1),
            Some(json!({"user": {"original_password": "bad", "password": "pw3"}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = c
        .req(
            Method::POST,
            &path,
            Some(&u1),
            Some(json!({"user": {"original_password": "pw2", "password": "pw3"}})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let u1 = c.token("u1", "pw3", Some("p1")).await;

    // Removing the only role makes the scoped token invalid.
    assert_eq!(
        c.req(Method::DELETE, &grant, Some(&admin), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(c.validate(&admin, &u1).await, StatusCode::NOT_FOUND);
    assert_eq!(
        c.req(Method::DELETE, &grant, Some(&admin), None).await.0,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        c.req(
            Method::DELETE,
            &format!("/v3/users/{uid}"),
            Some(&admin),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.req(Method::GET, &format!("/v3/users/{uid}"), Some(&admin), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.req(
            Method::DELETE,
            &format!("/v3/projects/{pid}"),
            Some(&admin),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.req(
            Method::DELETE,
            &format!("/v3/projects/{pid}"),
            Some(&admin),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn members_see_only_their_projects() {
    let c = start().await;
    let admin = c.admin().await;
    let demo = c.demo().await;
    c.req(
        Method::POST,
        "/v3/projects",
        Some(&admin),
        Some(json!({"project": {"name": "secret"}})),
    )
    .await;
    let (_, b) = c.req(Method::GET, "/v3/projects", Some(&demo), None).await;
    let names: Vec<&str> = b["projects"]
        .as_array()
        .expect("p")
        .iter()
        .map(|p| p["name"].as_str().expect("n"))
        .collect();
    assert_eq!(names, vec!["demo"]);
    let (_, b) = c.req(Method::GET, "/v3/projects", Some(&admin), None).await;
    assert_eq!(b["projects"].as_array().expect("p").len(), 3);
    let (_, b) = c
        .req(Method::GET, "/v3/auth/projects", Some(&demo), None)
        .await;
    assert_eq!(b["projects"].as_array().expect("p").len(), 1);
    let (_, b) = c
        .req(Method::GET, "/v3/projects?name=secret", Some(&admin), None)
        .await;
    let secret = b["projects"][0]["id"].as_str().expect("id").to_string();
    assert_eq!(
        c.req(
            Method::GET,
            &format!("/v3/projects/{secret}"),
            Some(&demo),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let c = start().await;
    let admin = c.admin().await;
    let url = format!("{}/v3/projects", c.url);
    let send = |body: Vec<u8>| {
        c.http
            .post(&url)
            .header("X-Auth-Token", &admin)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    for (body, code) in [
        (b"{not json".to_vec(), 400u16),
        (b"".to_vec(), 400),
        (br#"{"project": {"name": 5}}"#.to_vec(), 400),
        (br#"{"project": {"name": ""}}"#.to_vec(), 400),
        (br#"{"project": {"description": "no name"}}"#.to_vec(), 400),
        (
            br#"{"project": {"name": "x", "enabled": "yes"}}"#.to_vec(),
            400,
        ),
        (
            br#"{"project": {"name": "x", "domain_id": "nope"}}"#.to_vec(),
            400,
        ),
        (br#"[]"#.to_vec(), 400),
        (vec![b' '; 200_000], 413),
    ] {
        let resp = send(body.clone()).await.expect("send");
        assert_eq!(
            resp.status().as_u16(),
            code,
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
        let b: Value = resp.json().await.expect("json error body");
        assert_keystone_error(&b, code);
    }
    for (path, code) in [
        ("/v3/projects/does-not-exist", 404u16),
        ("/v3/users/admin", 404),
        ("/v3/roles/zzz", 404),
        ("/v3/regions/nowhere", 404),
        ("/v3/services/x", 404),
        ("/v3/endpoints/x", 404),
        ("/v3/domains/x", 404),
        ("/v3/no-such-thing", 404),
        ("/v3/projects?enabled=maybe", 400),
    ] {
        let (s, b) = c.req(Method::GET, path, Some(&admin), None).await;
        assert_eq!(s.as_u16(), code, "{path}");
        assert_keystone_error(&b, code);
    }
    let (s, b) = c.req(Method::PUT, "/v3/projects", Some(&admin), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_keystone_error(&b, 405);
    // Auth bodies with missing parts.
    for body in [
        json!({}),
        json!({"auth": {}}),
        json!({"auth": {"identity": {"methods": ["password"]}}}),
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "password": "x"}}}}}),
    ] {
        let (s, b) = c
            .req(Method::POST, "/v3/auth/tokens", None, Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_keystone_error(&b, 400);
    }
    // Grants naming things that do not exist.
    let (_, b) = c
        .req(Method::GET, "/v3/roles?name=member", Some(&admin), None)
        .await;
    let member = b["roles"][0]["id"].as_str().expect("id").to_string();
    let (s, _) = c
        .req(
            Method::PUT,
            &format!("/v3/projects/nope/users/nope/roles/{member}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn catalog_administration() {
    let c = start().await;
    let admin = c.admin().await;
    let (s, r) = c
        .req(
            Method::POST,
            "/v3/regions",
            Some(&admin),
            Some(json!({"region": {"id": "RegionTwo"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(r["region"]["id"], "RegionTwo");
    let (s, svc) = c
        .req(
            Method::POST,
            "/v3/services",
            Some(&admin),
            Some(json!({"service": {"type": "compute", "name": "nova"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let sid = svc["service"]["id"].as_str().expect("id").to_string();
    let (s, _) = c.req(Method::POST, "/v3/endpoints", Some(&admin), Some(json!({"endpoint": {"service_id": sid, "interface": "sideways", "url": "http://198.18.0.1:8774/v2.1"}}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, e) = c.req(Method::POST, "/v3/endpoints", Some(&admin), Some(json!({"endpoint": {"service_id": sid, "interface": "public", "region_id": "RegionTwo", "url": "http://198.18.0.1:8776/v3/$(project_id)s"}}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let eid = e["endpoint"]["id"].as_str().expect("id").to_string();
    // The new endpoint appears in the next token's catalog, with the project id filled in.
    let (_, t) = c
        .req(
            Method::POST,
            "/v3/auth/tokens",
            None,
            Some(password_auth("admin", ADMIN_PW, Some("admin"))),
        )
        .await;
    let pid = t["token"]["project"]["id"].as_str().expect("pid");
    let compute = t["token"]["catalog"]
        .as_array()
        .expect("c")
        .iter()
        .find(|s| s["type"] == "compute")
        .expect("compute")
        .clone();
    assert_eq!(
        compute["endpoints"][0]["url"],
        format!("http://198.18.0.1:8776/v3/{pid}")
    );
    let (s, _) = c
        .req(Method::DELETE, "/v3/regions/RegionTwo", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "region still in use");
    assert_eq!(
        c.req(
            Method::DELETE,
            &format!("/v3/endpoints/{eid}"),
            Some(&admin),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.req(
            Method::DELETE,
            &format!("/v3/services/{sid}"),
            Some(&admin),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.req(Method::DELETE, "/v3/regions/RegionTwo", Some(&admin), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
}

/// Every identity endpoint as anonymous, as a member and as an admin.
#[tokio::test]
async fn authorization_table() {
    let c = start().await;
    let admin = c.admin().await;
    let demo = c.demo().await;
    // Fixtures the table refers to.
    let (_, b) = c
        .req(Method::GET, "/v3/users?name=demo", Some(&admin), None)
        .await;
    let demo_uid = b["users"][0]["id"].as_str().expect("uid").to_string();
    let (_, b) = c
        .req(Method::GET, "/v3/users?name=admin", Some(&admin), None)
        .await;
    let admin_uid = b["users"][0]["id"].as_str().expect("uid").to_string();
    let (_, b) = c
        .req(Method::GET, "/v3/projects?name=demo", Some(&admin), None)
        .await;
    let demo_pid = b["projects"][0]["id"].as_str().expect("pid").to_string();
    let (_, b) = c
        .req(Method::GET, "/v3/roles?name=reader", Some(&admin), None)
        .await;
    let reader = b["roles"][0]["id"].as_str().expect("rid").to_string();
    let (_, b) = c
        .req(Method::GET, "/v3/roles?name=member", Some(&admin), None)
        .await;
    let member = b["roles"][0]["id"].as_str().expect("rid").to_string();
    let (_, b) = c.req(Method::GET, "/v3/services", Some(&admin), None).await;
    let sid = b["services"][0]["id"].as_str().expect("sid").to_string();
    let (_, b) = c
        .req(Method::GET, "/v3/endpoints", Some(&admin), None)
        .await;
    let eid = b["endpoints"][0]["id"].as_str().expect("eid").to_string();

    use Method as M;
    // (method, path, body, member status, admin status). Anonymous always gets 401. Keystone's
    // defaults keep the catalog's services and endpoints, the roles and every assignment
    // listing to admins (and system readers); a member reads its token.
    // Mutations by the member are refused before anything is read; the admin column uses
    // bodies that are valid, or names that do not exist, so nothing here changes the fixtures.
    let g = format!("/v3/projects/{demo_pid}/users/{demo_uid}/roles/{reader}");
    let table: Vec<(Method, String, Option<Value>, u16, u16)> = vec![
        (M::GET, "/v3/auth/projects".into(), None, 200, 200),
        (M::GET, "/v3/auth/domains".into(), None, 200, 200),
        (M::GET, "/v3/auth/catalog".into(), None, 200, 200),
        (M::GET, "/v3/domains".into(), None, 403, 200),
        (M::GET, "/v3/domains/default".into(), None, 200, 200),
        (
            M::POST,
            "/v3/domains".into(),
            Some(json!({"domain": {"name": "d-new"}})),
            403,
            201,
        ),
        (
            M::PATCH,
            "/v3/domains/default".into(),
            Some(json!({"domain": {"description": "x"}})),
            403,
            200,
        ),
        (M::DELETE, "/v3/domains/default".into(), None, 403, 403),
        (M::GET, "/v3/projects".into(), None, 200, 200),
        (M::GET, format!("/v3/projects/{demo_pid}"), None, 200, 200),
        (
            M::POST,
            "/v3/projects".into(),
            Some(json!({"project": {"name": "p-new"}})),
            403,
            201,
        ),
        (
            M::PATCH,
            format!("/v3/projects/{demo_pid}"),
            Some(json!({"project": {"description": "x"}})),
            403,
            200,
        ),
        (M::DELETE, "/v3/projects/missing".into(), None, 403, 404),
        (M::GET, "/v3/users".into(), None, 403, 200),
        (M::GET, format!("/v3/users/{demo_uid}"), None, 200, 200),
        (M::GET, format!("/v3/users/{admin_uid}"), None, 403, 200),
        (
            M::POST,
            "/v3/users".into(),
            Some(json!({"user": {"name": "u-new"}})),
            403,
            201,
        ),
        (
            M::PATCH,
            format!("/v3/users/{demo_uid}"),
            Some(json!({"user": {"email": "d@example.org"}})),
            403,
            200,
        ),
        (M::DELETE, "/v3/users/missing".into(), None, 403, 404),
        (
            M::GET,
            format!("/v3/users/{demo_uid}/projects"),
            None,
            200,
            200,
        ),
        (
            M::GET,
            format!("/v3/users/{admin_uid}/projects"),
            None,
            403,
            200,
        ),
        (M::GET, "/v3/roles".into(), None, 403, 200),
        (M::GET, format!("/v3/roles/{reader}"), None, 403, 200),
        (
            M::POST,
            "/v3/roles".into(),
            Some(json!({"role": {"name": "r-new"}})),
            403,
            201,
        ),
        (
            M::PATCH,
            format!("/v3/roles/{reader}"),
            Some(json!({"role": {"description": "x"}})),
            403,
            200,
        ),
        (M::DELETE, "/v3/roles/missing".into(), None, 403, 404),
        (
            M::GET,
            format!("/v3/roles/{member}/implies"),
            None,
            403,
            200,
        ),
        (
            M::GET,
            format!("/v3/roles/{member}/implies/{reader}"),
            None,
            403,
            200,
        ),
        (
            M::PUT,
            format!("/v3/roles/{member}/implies/{reader}"),
            None,
            403,
            201,
        ),
        (
            M::DELETE,
            format!("/v3/roles/missing/implies/{reader}"),
            None,
            403,
            404,
        ),
        (M::GET, "/v3/role_inferences".into(), None, 403, 200),
        (M::GET, "/v3/role_assignments".into(), None, 403, 200),
        (
            M::GET,
            format!("/v3/role_assignments?user.id={demo_uid}"),
            None,
            403,
            200,
        ),
        (
            M::GET,
            format!("/v3/projects/{demo_pid}/users/{demo_uid}/roles"),
            None,
            403,
            200,
        ),
        (M::HEAD, g.clone(), None, 403, 404),
        (M::PUT, g.clone(), None, 403, 204),
        (M::DELETE, g.clone(), None, 403, 204),
        (M::GET, "/v3/regions".into(), None, 200, 200),
        (M::GET, "/v3/regions/RegionOne".into(), None, 200, 200),
        (
            M::POST,
            "/v3/regions".into(),
            Some(json!({"region": {"id": "R-new"}})),
            403,
            201,
        ),
        (
            M::PATCH,
            "/v3/regions/RegionOne".into(),
            Some(json!({"region": {"description": "x"}})),
            403,
            200,
        ),
        (M::DELETE, "/v3/regions/missing".into(), None, 403, 404),
        (M::GET, "/v3/services".into(), None, 403, 200),
        (M::GET, format!("/v3/services/{sid}"), None, 403, 200),
        (
            M::POST,
            "/v3/services".into(),
            Some(json!({"service": {"type": "t-new"}})),
            403,
            201,
        ),
        (
            M::PATCH,
            format!("/v3/services/{sid}"),
            Some(json!({"service": {"description": "x"}})),
            403,
            200,
        ),
        (M::DELETE, "/v3/services/missing".into(), None, 403, 404),
        (M::GET, "/v3/endpoints".into(), None, 403, 200),
        (M::GET, format!("/v3/endpoints/{eid}"), None, 403, 200),
        (
            M::POST,
            "/v3/endpoints".into(),
            Some(
                json!({"endpoint": {"service_id": sid, "interface": "internal", "url": "http://198.18.0.1:1/v3"}}),
            ),
            403,
            201,
        ),
        (
            M::PATCH,
            format!("/v3/endpoints/{eid}"),
            Some(json!({"endpoint": {"enabled": true}})),
            403,
            200,
        ),
        (M::DELETE, "/v3/endpoints/missing".into(), None, 403, 404),
    ];
    for (method, path, body, as_member, as_admin) in table {
        let (s, b) = c.req(method.clone(), &path, None, body.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "anonymous {method} {path}");
        if method != M::HEAD {
            assert_keystone_error(&b, 401);
        }
        let (s, _) = c
            .req(method.clone(), &path, Some(&demo), body.clone())
            .await;
        assert_eq!(s.as_u16(), as_member, "member {method} {path}");
        let (s, _) = c.req(method.clone(), &path, Some(&admin), body).await;
        assert_eq!(s.as_u16(), as_admin, "admin {method} {path}");
    }
    // Token endpoints.
    let (s, _) = c.req(Method::GET, "/v3/auth/tokens", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(c.validate(&demo, &admin).await, StatusCode::FORBIDDEN);
    assert_eq!(c.validate(&admin, &demo).await, StatusCode::OK);
}
