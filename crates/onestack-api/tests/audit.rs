//! The audit log, as a table over the mutating endpoints of every service: each call — whether
//! it succeeded, was refused or was not even authenticated — leaves exactly one record under the
//! `X-Openstack-Request-Id` its caller got, saying who, in which project, what, on what, and the
//! result. Reads leave none. Control plane only: the real routers over a temporary SQLite store.

mod common;

use common::{ADMIN_PW, DEMO_PW};
use onestack_store::{AuditQuery, AuditRecord, Store};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;

struct Cloud {
    store: Store,
    identity: String,
    compute: String,
    image: String,
    network: String,
    volume: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start() -> Cloud {
    let cp = common::start().await;
    Cloud {
        store: cp.store,
        identity: cp.identity,
        compute: cp.compute,
        image: cp.image,
        network: cp.network,
        volume: cp.volume,
        http: reqwest::Client::new(),
        _dir: cp.dir,
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
    request_id: String,
    subject_token: Option<String>,
}

impl Cloud {
    async fn call(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method.clone(), url);
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        if let Some(b) = body {
            let ct = if method == Method::PATCH && url.contains("/v2/images/") {
                "application/openstack-images-v2.1-json-patch"
            } else {
                "application/json"
            };
            req = req.header("content-type", ct).body(b.to_string());
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header("x-openstack-request-id").unwrap_or_default();
        let subject_token = header("x-subject-token");
        let text = resp.text().await.expect("body");
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            request_id,
            subject_token,
        }
    }

    async fn login(&self, user: &str, pw: &str, project: &str) -> Answer {
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": pw}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
        self.call(
            Method::POST,
            &format!("{}/v3/auth/tokens", self.identity),
            None,
            Some(body),
        )
        .await
    }

    async fn record(&self, request_id: &str) -> Option<AuditRecord> {
        let q = AuditQuery {
            request_id: Some(request_id.to_string()),
            ..AuditQuery::default()
        };
        let mut rows = self.store.list_audit(&q).await.expect("audit");
        assert!(rows.len() <= 1, "{rows:?}");
        rows.pop()
    }
}

/// What one row of the table expects of its record.
struct Expect<'a> {
    service: &'a str,
    user: Option<&'a str>,
    project: Option<&'a str>,
    action: Option<&'a str>,
    target: Option<String>,
}

#[tokio::test]
async fn every_mutating_call_leaves_one_audit_record() {
    let c = start().await;
    let admin_login = c.login("admin", ADMIN_PW, "admin").await;
    let demo_login = c.login("demo", DEMO_PW, "demo").await;
    let admin = admin_login.subject_token.clone().expect("admin token");
    let demo = demo_login.subject_token.clone().expect("demo token");
    let demo_project = demo_login.body["token"]["project"]["id"]
        .as_str()
        .expect("project")
        .to_string();
    let admin_project = admin_login.body["token"]["project"]["id"]
        .as_str()
        .expect("project")
        .to_string();
    let demo_user = demo_login.body["token"]["user"]["id"]
        .as_str()
        .expect("user")
        .to_string();
    // A host, so servers are placed.
    common::register_host(&c.http, &c.compute, "h1", 8, 16384, 100).await;

    let mut seen_ids = HashSet::new();
    let mut checked = 0;
    let mut check = |a: &Answer, method: &str, e: Expect, rec: Option<AuditRecord>| {
        assert!(a.request_id.starts_with("req-"), "no request id");
        assert!(seen_ids.insert(a.request_id.clone()), "request id reused");
        let r = rec.unwrap_or_else(|| panic!("no audit record for {method} {}", a.request_id));
        assert_eq!(r.method, method);
        assert_eq!(r.status, i64::from(a.status.as_u16()), "{r:?}");
        assert_eq!(r.service, e.service, "{r:?}");
        assert_eq!(r.user_name.as_deref(), e.user, "{r:?}");
        assert_eq!(r.project_id.as_deref(), e.project, "{r:?}");
        assert_eq!(r.action.as_deref(), e.action, "{r:?}");
        if e.target.is_some() {
            assert_eq!(r.target, e.target, "{r:?}");
        }
        assert_eq!(r.remote_addr.as_deref(), Some("127.0.0.1"));
        checked += 1;
    };
    let as_demo = |target: Option<String>, service| Expect {
        service,
        user: Some("demo"),
        project: Some(demo_project.as_str()),
        action: None,
        target,
    };
    let as_admin = |target: Option<String>, service| Expect {
        service,
        user: Some("admin"),
        project: Some(admin_project.as_str()),
        action: None,
        target,
    };
    let id_of = |a: &Answer, key: &str| a.body[key]["id"].as_str().map(str::to_string);

    // Identity: logins (the user is the target), a failed login, creates, updates, deletes.
    let r = c.record(&demo_login.request_id).await;
    check(
        &demo_login,
        "POST",
        as_demo(Some(demo_user.clone()), "identity"),
        r,
    );
    let bad = c.login("demo", "wrong", "demo").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let r = c.record(&bad.request_id).await;
    check(
        &bad,
        "POST",
        Expect {
            service: "identity",
            user: Some("demo"),
            project: None,
            action: None,
            target: None,
        },
        r,
    );
    let a = c
        .call(
            Method::POST,
            &format!("{}/v3/projects", c.identity),
            Some(&admin),
            Some(json!({"project": {"name": "audited", "domain_id": "default"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let project = id_of(&a, "project").expect("project id");
    let r = c.record(&a.request_id).await;
    check(&a, "POST", as_admin(Some(project.clone()), "identity"), r);
    let a = c
        .call(
            Method::PATCH,
            &format!("{}/v3/projects/{project}", c.identity),
            Some(&admin),
            Some(json!({"project": {"description": "x"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let r = c.record(&a.request_id).await;
    check(&a, "PATCH", as_admin(Some(project.clone()), "identity"), r);
    // Refused: a member may not create projects. Still recorded, with its 403.
    let a = c
        .call(
            Method::POST,
            &format!("{}/v3/projects", c.identity),
            Some(&demo),
            Some(json!({"project": {"name": "nope"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let r = c.record(&a.request_id).await;
    check(&a, "POST", as_demo(None, "identity"), r);
    let a = c
        .call(
            Method::DELETE,
            &format!("{}/v3/projects/{project}", c.identity),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let r = c.record(&a.request_id).await;
    check(&a, "DELETE", as_admin(Some(project), "identity"), r);

    // Compute: keypair, server create, rename, an action (refused while building), delete.
    let a = c
        .call(
            Method::POST,
            &format!("{}/v2.1/os-keypairs", c.compute),
            Some(&demo),
            Some(json!({"keypair": {"name": "k1"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let r = c.record(&a.request_id).await;
    check(&a, "POST", as_demo(None, "compute"), r);

    // Image: create (Glance's bare object), patch, upload, later delete.
    let a = c
        .call(
            Method::POST,
            &format!("{}/v2/images", c.image),
            Some(&admin),
            Some(
                json!({"name": "img", "disk_format": "raw", "container_format": "bare",
                        "visibility": "public"}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let image = a.body["id"].as_str().expect("image").to_string();
    let r = c.record(&a.request_id).await;
    check(&a, "POST", as_admin(Some(image.clone()), "image"), r);
    let a = c
        .call(
            Method::PATCH,
            &format!("{}/v2/images/{image}", c.image),
            Some(&admin),
            Some(json!([{"op": "replace", "path": "/name", "value": "img2"}])),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let r = c.record(&a.request_id).await;
    check(&a, "PATCH", as_admin(Some(image.clone()), "image"), r);
    let resp = c
        .http
        .put(format!("{}/v2/images/{image}/file", c.image))
        .header("x-auth-token", &admin)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 1 << 20])
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let upload_id = resp.headers()["x-openstack-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let rec = c.record(&upload_id).await.expect("upload audited");
    assert_eq!(
        (rec.method.as_str(), rec.target.as_deref(), rec.status),
        ("PUT", Some(image.as_str()), 204)
    );

    let a = c
        .call(
            Method::POST,
            &format!("{}/v2.1/servers", c.compute),
            Some(&demo),
            Some(json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let server = id_of(&a, "server").expect("server id");
    let r = c.record(&a.request_id).await;
    check(&a, "POST", as_demo(Some(server.clone()), "compute"), r);
    let a = c
        .call(
            Method::PUT,
            &format!("{}/v2.1/servers/{server}", c.compute),
            Some(&demo),
            Some(json!({"server": {"name": "renamed"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let r = c.record(&a.request_id).await;
    check(&a, "PUT", as_demo(Some(server.clone()), "compute"), r);
    let a = c
        .call(
            Method::POST,
            &format!("{}/v2.1/servers/{server}/action", c.compute),
            Some(&demo),
            Some(json!({"os-stop": null})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let r = c.record(&a.request_id).await;
    let mut e = as_demo(Some(server.clone()), "compute");
    e.action = Some("os-stop");
    check(&a, "POST", e, r);
    let a = c
        .call(
            Method::PUT,
            &format!("{}/v2.1/os-quota-sets/{demo_project}", c.compute),
            Some(&admin),
            Some(json!({"quota_set": {"instances": 20}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let r = c.record(&a.request_id).await;
    check(&a, "PUT", as_admin(None, "compute"), r);
    let a = c
        .call(
            Method::DELETE,
            &format!("{}/v2.1/servers/{server}", c.compute),
            Some(&demo),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let r = c.record(&a.request_id).await;
    check(&a, "DELETE", as_demo(Some(server), "compute"), r);

    // Network: network, subnet, router, interface, security group.
    let a = c
        .call(
            Method::POST,
            &format!("{}/v2.0/networks", c.network),
            Some(&demo),
            Some(json!({"network": {"name": "n1"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let network = id_of(&a, "network").expect("network id");
    let r = c.record(&a.request_id).await;
    check(&a, "POST", as_demo(Some(network.clone()), "network"), r);
    let a = c
        .call(
            Method::POST,
            &format!("{}/v2.0/subnets", c.network),
            Some(&demo),
            Some(
                json!({"subnet": {"network_id": network, "cidr": "198.18.40.0/24",
                                   "ip_version": 4}}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let subnet = id_of(&a, "subnet").expect("subnet id");
    let r = c.record(&a.request_id).await;
    check(&a, "POST", as_demo(Some(subnet.clone()), "network"), r);
    let a = c
        .call(
            Method::POST,
            &format!("{}/v2.0/routers", c.network),
            Some(&demo),
            Some(json!({"router": {"name": "r1"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let router = id_of(&a, "router").expect("router id");
    let a = c
        .call(
            Method::PUT,
            &format!("{}/v2.0/routers/{router}/add_router_interface", c.network),
            Some(&demo),
            Some(json!({"subnet_id": subnet})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let r = c.record(&a.request_id).await;
    check(&a, "PUT", as_demo(Some(router), "network"), r);
    let a = c
        .call(
            Method::PUT,
            &format!("{}/v2.0/networks/{network}", c.network),
            Some(&demo),
            Some(json!({"network": {"name": "n2"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let r = c.record(&a.request_id).await;
    check(&a, "PUT", as_demo(Some(network), "network"), r);
    let a = c
        .call(
            Method::POST,
            &format!("{}/v2.0/security-groups", c.network),
            Some(&demo),
            Some(json!({"security_group": {"name": "web"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let sg = id_of(&a, "security_group").expect("sg id");
    let a = c
        .call(
            Method::DELETE,
            &format!("{}/v2.0/security-groups/{sg}", c.network),
            Some(&demo),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let r = c.record(&a.request_id).await;
    check(&a, "DELETE", as_demo(Some(sg), "network"), r);

    // Volume: create, an action, update, delete (under /v3/{project_id}).
    let base = format!("{}/v3/{demo_project}", c.volume);
    let a = c
        .call(
            Method::POST,
            &format!("{base}/volumes"),
            Some(&demo),
            Some(json!({"volume": {"size": 1, "name": "v1"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let volume = id_of(&a, "volume").expect("volume id");
    let r = c.record(&a.request_id).await;
    check(&a, "POST", as_demo(Some(volume.clone()), "volume"), r);
    let a = c
        .call(
            Method::PUT,
            &format!("{base}/volumes/{volume}"),
            Some(&demo),
            Some(json!({"volume": {"name": "v2"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let r = c.record(&a.request_id).await;
    check(&a, "PUT", as_demo(Some(volume.clone()), "volume"), r);
    let a = c
        .call(
            Method::POST,
            &format!("{base}/volumes/{volume}/action"),
            Some(&demo),
            Some(json!({"os-extend": {"new_size": 0}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let r = c.record(&a.request_id).await;
    let mut e = as_demo(Some(volume.clone()), "volume");
    e.action = Some("os-extend");
    check(&a, "POST", e, r);

    // Revoking a token is a mutation too; so is a call with no token at all (401, no user).
    let a = c
        .call(
            Method::POST,
            &format!("{}/v2.1/os-keypairs", c.compute),
            None,
            Some(json!({"keypair": {"name": "k2"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let r = c.record(&a.request_id).await;
    check(
        &a,
        "POST",
        Expect {
            service: "compute",
            user: None,
            project: None,
            action: None,
            target: None,
        },
        r,
    );
    // Reads leave nothing, but carry a request id.
    let a = c
        .call(
            Method::GET,
            &format!("{}/v2.1/servers", c.compute),
            Some(&demo),
            None,
        )
        .await;
    assert!(a.request_id.starts_with("req-"));
    assert!(c.record(&a.request_id).await.is_none());
    let a = c
        .call(
            Method::DELETE,
            &format!("{}/v2/images/{image}", c.image),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let r = c.record(&a.request_id).await;
    check(&a, "DELETE", as_admin(Some(image), "image"), r);
    assert_eq!(checked, 24);

    // The operator's queries: by user, failed only, by target.
    let failed = c
        .store
        .list_audit(&AuditQuery {
            failed_only: true,
            ..AuditQuery::default()
        })
        .await
        .expect("failed");
    assert!(failed.iter().all(|r| r.status >= 400));
    assert!(failed.len() >= 5, "{failed:?}");
    let by_admin = c
        .store
        .list_audit(&AuditQuery {
            user: Some("admin".into()),
            limit: 3,
            ..AuditQuery::default()
        })
        .await
        .expect("admin");
    assert_eq!(by_admin.len(), 3);
    assert!(by_admin.windows(2).all(|w| w[0].at_us >= w[1].at_us));
    assert!(by_admin
        .iter()
        .all(|r| r.user_name.as_deref() == Some("admin")));
}
