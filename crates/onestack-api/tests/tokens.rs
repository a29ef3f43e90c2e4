//! Token lifetime and revocation as Keystone keeps them: a rescoped token never outlives its
//! chain's first, revoking any token of a chain ends all of it, a revocation outlives every token
//! it covers, and disabling a user or project or removing a role ends the tokens issued before —
//! for good, whatever is re-enabled or re-granted later. Only identity serves unscoped tokens.

mod common;

use common::{ADMIN_PW, DEMO_PW};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Cloud {
    cp: common::ControlPlane,
    http: reqwest::Client,
}

/// An issued token: its id and its body.
struct Token {
    id: String,
    body: Value,
}

impl Token {
    fn expires_at(&self) -> &str {
        self.body["token"]["expires_at"]
            .as_str()
            .expect("expires_at")
    }
    fn audit_ids(&self) -> Vec<String> {
        self.body["token"]["audit_ids"]
            .as_array()
            .expect("audit_ids")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect()
    }
}

impl Cloud {
    async fn start() -> Cloud {
        Cloud {
            cp: common::start().await,
            http: reqwest::Client::new(),
        }
    }

    async fn issue(&self, auth: Value) -> (StatusCode, Option<Token>) {
        let resp = self
            .http
            .post(format!("{}/v3/auth/tokens", self.cp.identity))
            .json(&json!({ "auth": auth }))
            .send()
            .await
            .expect("send");
        let status = resp.status();
        let id = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status, id.map(|id| Token { id, body }))
    }

    async fn password(&self, user: &str, pw: &str, project: Option<&str>) -> Token {
        let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": pw}}}});
        auth["scope"] = match project {
            Some(p) => json!({"project": {"name": p, "domain": {"id": "default"}}}),
            None => json!("unscoped"),
        };
        let (st, t) = self.issue(auth).await;
        assert_eq!(st, StatusCode::CREATED, "login {user}");
        t.expect("token")
    }

    async fn rescope(&self, from: &Token, project: &str) -> (StatusCode, Option<Token>) {
        self.issue(
            json!({"identity": {"methods": ["token"], "token": {"id": from.id}},
                          "scope": {"project": {"name": project, "domain": {"id": "default"}}}}),
        )
        .await
    }

    /// Whether `subject` is valid, asked with the admin's token.
    async fn valid(&self, admin: &Token, subject: &Token) -> bool {
        let st = self
            .http
            .get(format!("{}/v3/auth/tokens", self.cp.identity))
            .header("x-auth-token", &admin.id)
            .header("x-subject-token", &subject.id)
            .send()
            .await
            .expect("send")
            .status();
        match st {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            other => panic!("validation answered {other}"),
        }
    }

    async fn call(
        &self,
        method: Method,
        url: String,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, url).header("x-auth-token", token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("send");
        let st = resp.status();
        (st, resp.json().await.unwrap_or(Value::Null))
    }

    async fn revoke(&self, caller: &Token, subject: &Token) {
        let st = self
            .http
            .delete(format!("{}/v3/auth/tokens", self.cp.identity))
            .header("x-auth-token", &caller.id)
            .header("x-subject-token", &subject.id)
            .send()
            .await
            .expect("send")
            .status();
        assert_eq!(st, StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn a_chain_of_rescopes_keeps_the_first_expiry_and_dies_whole() {
    let c = Cloud::start().await;
    let admin = c.password("admin", ADMIN_PW, Some("admin")).await;
    let root = c.password("demo", DEMO_PW, None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, child) = c.rescope(&root, "demo").await;
    assert_eq!(st, StatusCode::CREATED);
    let child = child.expect("child");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, grandchild) = c.rescope(&child, "demo").await;
    let grandchild = grandchild.expect("grandchild");
    // However often it is rescoped, a chain ends when its first token does (Keystone).
    assert_eq!(child.expires_at(), root.expires_at());
    assert_eq!(grandchild.expires_at(), root.expires_at());
    // Each carries its own audit id and the chain's (the first token's).
    let chain = root.audit_ids()[0].clone();
    assert_eq!(child.audit_ids().len(), 2);
    assert_eq!(child.audit_ids()[1], chain);
    assert_eq!(grandchild.audit_ids()[1], chain);
    assert_ne!(grandchild.audit_ids()[0], child.audit_ids()[0]);

    // Revoking the first revokes two steps down.
    c.revoke(&admin, &root).await;
    assert!(
        !c.valid(&admin, &grandchild).await,
        "the grandchild outlived its root's revocation"
    );
    assert!(!c.valid(&admin, &child).await);
    let (st, _) = c.rescope(&grandchild, "demo").await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "a revoked chain makes no new token"
    );

    // A revocation outlives every token it covers (it was pruned at the revoked token's own
    // expiry, before its rescoped children's).
    let root2 = c.password("demo", DEMO_PW, None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, child2) = c.rescope(&root2, "demo").await;
    let child2 = child2.expect("child");
    c.revoke(&admin, &child2).await;
    assert!(
        !c.valid(&admin, &root2).await,
        "revoking a link ends its whole chain"
    );
    let newest_expiry = [&root2, &child2]
        .iter()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t.expires_at())
                .expect("time")
                .timestamp()
        })
        .max()
        .expect("max");
    let rows = c.cp.store.active_revocations(0).await.expect("revocations");
    let kept = rows
        .iter()
        .map(|r| r.expires_at)
        .max()
        .expect("a revocation");
    assert!(
        kept >= newest_expiry,
        "revocation kept until {kept}, a covered token lives until {newest_expiry}"
    );
    // Others' tokens are untouched.
    assert!(c.valid(&admin, &admin).await);
}

#[tokio::test]
async fn disabling_or_removing_a_role_ends_old_tokens_for_good() {
    let c = Cloud::start().await;
    let admin = c.password("admin", ADMIN_PW, Some("admin")).await;
    let id = &c.cp.identity;
    let demo = c.password("demo", DEMO_PW, Some("demo")).await;
    let user = demo.body["token"]["user"]["id"]
        .as_str()
        .expect("user")
        .to_string();
    let project = demo.body["token"]["project"]["id"]
        .as_str()
        .expect("project")
        .to_string();
    let (_, roles) = c
        .call(
            Method::GET,
            format!("{id}/v3/roles?name=member"),
            &admin.id,
            None,
        )
        .await;
    let member = roles["roles"][0]["id"]
        .as_str()
        .expect("member")
        .to_string();

    // User disabled, then enabled again: the old token stays dead, a new one works.
    let old = c.password("demo", DEMO_PW, Some("demo")).await;
    for enabled in [false, true] {
        let (st, v) = c
            .call(
                Method::PATCH,
                format!("{id}/v3/users/{user}"),
                &admin.id,
                Some(json!({"user": {"enabled": enabled}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    assert!(
        !c.valid(&admin, &old).await,
        "re-enabling the user revived its old token"
    );
    assert!(
        c.valid(&admin, &c.password("demo", DEMO_PW, Some("demo")).await)
            .await
    );

    // Project disabled, then enabled.
    let old = c.password("demo", DEMO_PW, Some("demo")).await;
    for enabled in [false, true] {
        let (st, v) = c
            .call(
                Method::PATCH,
                format!("{id}/v3/projects/{project}"),
                &admin.id,
                Some(json!({"project": {"enabled": enabled}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    assert!(
        !c.valid(&admin, &old).await,
        "re-enabling the project revived its old token"
    );
    assert!(
        c.valid(&admin, &c.password("demo", DEMO_PW, Some("demo")).await)
            .await
    );

    // Role removed, then granted again.
    let old = c.password("demo", DEMO_PW, Some("demo")).await;
    let grant = format!("{id}/v3/projects/{project}/users/{user}/roles/{member}");
    let (st, _) = c.call(Method::DELETE, grant.clone(), &admin.id, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = c.call(Method::PUT, grant, &admin.id, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(
        !c.valid(&admin, &old).await,
        "re-granting the role revived the old token"
    );
    assert!(
        c.valid(&admin, &c.password("demo", DEMO_PW, Some("demo")).await)
            .await
    );
    // The admin's own tokens were never touched.
    assert!(c.valid(&admin, &admin).await);
}

#[tokio::test]
async fn only_identity_serves_an_unscoped_token() {
    let c = Cloud::start().await;
    let unscoped = c.password("demo", DEMO_PW, None).await;
    assert!(unscoped.body["token"].get("project").is_none());
    let cp = &c.cp;
    let project = "any";
    for (method, url, body) in [
        (
            Method::POST,
            format!("{}/v2.1/os-keypairs", cp.compute),
            Some(json!({"keypair": {"name": "k"}})),
        ),
        (
            Method::GET,
            format!("{}/v2.1/os-keypairs", cp.compute),
            None,
        ),
        (Method::GET, format!("{}/v2.1/servers", cp.compute), None),
        (Method::GET, format!("{}/v2/images", cp.image), None),
        (
            Method::POST,
            format!("{}/v2/images", cp.image),
            Some(json!({"name": "i"})),
        ),
        (Method::GET, format!("{}/v2.0/networks", cp.network), None),
        (
            Method::GET,
            format!("{}/v3/{project}/volumes", cp.volume),
            None,
        ),
    ] {
        let (st, v) = c
            .call(method.clone(), url.clone(), &unscoped.id, body)
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{method} {url}: {v}");
    }
    // Identity serves it (what projects may I scope to?), and a scoped token does the rest.
    let (st, _) = c
        .call(
            Method::GET,
            format!("{}/v3/auth/projects", cp.identity),
            &unscoped.id,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let scoped = c.password("demo", DEMO_PW, Some("demo")).await;
    let (st, v) = c
        .call(
            Method::POST,
            format!("{}/v2.1/os-keypairs", cp.compute),
            &scoped.id,
            Some(json!({"keypair": {"name": "k"}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}
