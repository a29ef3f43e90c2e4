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
async fn a_chain_of_rescopes_keeps_the_first_expiry_and_dies_with_its_first() {
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
    let (_, sibling) = c.rescope(&root2, "demo").await;
    let sibling = sibling.expect("sibling");
    // Revoking a rescoped token ends that one only (Keystone): a client switching project may
    // revoke the token it replaces and keep working with the new one.
    c.revoke(&admin, &child2).await;
    assert!(!c.valid(&admin, &child2).await);
    assert!(
        c.valid(&admin, &root2).await,
        "revoking a rescoped token ended its chain's first"
    );
    assert!(
        c.valid(&admin, &sibling).await,
        "revoking a rescoped token ended its sibling"
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

/// Keystone's lockout: after N wrong passwords in a row the account refuses every password — the
/// right one too, with the same answer — until the lock runs out or an admin lifts it; a right
/// password before that resets the count; each lock leaves an audit row.
#[tokio::test]
async fn wrong_passwords_lock_the_account_for_a_while() {
    let c = Cloud::start().await;
    assert_eq!(
        c.cp.identity_service.lockout(),
        onestack_core::identity::Lockout {
            failure_attempts: 10,
            duration: std::time::Duration::from_secs(600)
        },
        "on by default"
    );
    c.cp.identity_service
        .set_lockout(onestack_core::identity::Lockout {
            failure_attempts: 3,
            duration: std::time::Duration::from_secs(2),
        });
    let admin = c.password("admin", ADMIN_PW, Some("admin")).await;
    let login = |pw: &'static str| {
        let c = &c;
        async move {
            let auth = json!({"identity": {"methods": ["password"], "password": {"user": {
                "name": "demo", "domain": {"id": "default"}, "password": pw}}},
                "scope": {"project": {"name": "demo", "domain": {"id": "default"}}}});
            let (st, t) = c.issue(auth).await;
            (st, t.map(|t| t.body).unwrap_or(Value::Null))
        }
    };
    // Two wrong, then the right one: the count starts again.
    for _ in 0..2 {
        assert_eq!(login("wrong").await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login(DEMO_PW).await.0, StatusCode::CREATED);
    for _ in 0..2 {
        assert_eq!(login("wrong").await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        login(DEMO_PW).await.0,
        StatusCode::CREATED,
        "the count was reset"
    );
    // Three wrong in a row: locked; the right password gets the same 401 a wrong one gets.
    let (_, wrong_body) = {
        let mut last = (StatusCode::OK, Value::Null);
        for _ in 0..3 {
            last = login("wrong").await;
        }
        last
    };
    let (st, locked_body) = login(DEMO_PW).await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "the right password while locked"
    );
    assert_eq!(
        locked_body, wrong_body,
        "a lock looks like a wrong password"
    );
    // One audit row for the lock.
    let rows =
        c.cp.store
            .list_audit(&onestack_store::AuditQuery::default())
            .await
            .expect("audit");
    let locks: Vec<_> = rows
        .iter()
        .filter(|r| r.action.as_deref() == Some("lockout"))
        .collect();
    assert_eq!(locks.len(), 1, "{rows:?}");
    assert_eq!(locks[0].user_name.as_deref(), Some("demo"));
    // More wrong passwords while locked take no second lock.
    assert_eq!(login("wrong").await.0, StatusCode::UNAUTHORIZED);
    // The lock runs out.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        login(DEMO_PW).await.0,
        StatusCode::CREATED,
        "after the lock ran out"
    );
    // Locked again, an admin lifts it by enabling the account.
    for _ in 0..3 {
        login("wrong").await;
    }
    assert_eq!(login(DEMO_PW).await.0, StatusCode::UNAUTHORIZED);
    let (_, u) = c
        .call(
            Method::GET,
            format!("{}/v3/users?name=demo", c.cp.identity),
            &admin.id,
            None,
        )
        .await;
    let uid = u["users"][0]["id"].as_str().expect("demo").to_string();
    let (st, _) = c
        .call(
            Method::PATCH,
            format!("{}/v3/users/{uid}", c.cp.identity),
            &admin.id,
            Some(json!({"user": {"enabled": true}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        login(DEMO_PW).await.0,
        StatusCode::CREATED,
        "an admin lifted the lock"
    );
    let rows =
        c.cp.store
            .list_audit(&onestack_store::AuditQuery::default())
            .await
            .expect("audit");
    assert_eq!(
        rows.iter()
            .filter(|r| r.action.as_deref() == Some("lockout"))
            .count(),
        2
    );
    // Others were never locked.
    assert!(
        c.valid(&admin, &c.password("admin", ADMIN_PW, Some("admin")).await)
            .await
    );
}

/// The brute force of the issue: many wrong passwords fast, then the right one — refused.
#[tokio::test]
async fn a_brute_force_is_stopped_by_the_default_lockout() {
    let c = Cloud::start().await;
    let auth = |pw: &str| {
        json!({"identity": {"methods": ["password"], "password": {"user": {
            "name": "demo", "domain": {"id": "default"}, "password": pw}}}})
    };
    let mut tries = Vec::new();
    for i in 0..40 {
        tries.push(c.issue(auth(&format!("guess-{i}"))));
    }
    for st in futures_util::future::join_all(tries).await {
        assert_eq!(st.0, StatusCode::UNAUTHORIZED);
    }
    let (st, _) = c.issue(auth(DEMO_PW)).await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "the right password after 40 guesses"
    );
}
