//! The role table: every route of the five APIs (identity, compute, image, network, block
//! storage — the agents' internal routes included), as anonymous, as a `reader` of the owning
//! project, as a `member` of another project, as a `member` of the owning project and as the cloud
//! admin, against the status the upstream default policies give (keystone/common/policies,
//! nova/policies, glance/policies, neutron/conf/policies, cinder/policies). Resources are the
//! owning project's member's, made in the fixture; the test plays the compute agent.
//!
//! A route served without an entry here fails `every_route_has_an_entry`: add the route's rows
//! (method and path) with the upstream rule they follow.

mod common;

use common::{ADMIN_PW, AGENT_TOKEN, DEMO_PW};
use onestack_api::compute::AGENT_TOKEN_HEADER;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Svc {
    Identity,
    Compute,
    Image,
    Network,
    Volume,
}

/// Who asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    /// No token.
    Anon,
    /// `reader` only, on the owning project (project-scoped token).
    Reader,
    /// `member` of another project.
    Other,
    /// `member` of the owning project: the resources are its.
    Member,
    /// `admin` (on its own project: the cloud admin).
    Admin,
}

const WHO: [Who; 5] = [Who::Anon, Who::Reader, Who::Other, Who::Member, Who::Admin];

/// What a caller gets: exactly this status, or `Pass`: the policy let it through (anything but
/// 401, 403, 404 and a server error — the state of a resource an earlier row changed may
/// answer 409 or 400).
#[derive(Clone, Copy, Debug)]
enum W {
    Is(u16),
    Pass,
}

use W::Pass;

const fn is(n: u16) -> W {
    W::Is(n)
}

/// Everyone, even without a token (version documents, health checks).
const fn public(n: u16) -> [W; 5] {
    [is(n), is(n), is(n), is(n), is(n)]
}
/// Any authenticated caller.
const fn any_user(n: u16) -> [W; 5] {
    [is(401), is(n), is(n), is(n), is(n)]
}
/// The cloud admin only; the policy is checked before anything is looked up.
const fn admin_only(n: u16) -> [W; 5] {
    [is(401), is(403), is(403), is(403), is(n)]
}
/// `project_reader_or_admin` on one of the project's resources: other projects do not see it.
const fn read(n: u16) -> [W; 5] {
    [is(401), is(n), is(404), is(n), is(n)]
}
/// `project_member_or_admin` on one of the project's resources.
const fn write(n: u16) -> [W; 5] {
    [is(401), is(403), is(404), is(n), is(n)]
}
/// `project_member_or_admin` on a resource whose state earlier rows change.
const WRITE_PASS: [W; 5] = [is(401), is(403), is(404), Pass, Pass];
/// Admin-only on one of the project's resources: others do not see it, the owner may not.
const fn admin_on_resource(n: u16) -> [W; 5] {
    [is(401), is(403), is(404), is(403), is(n)]
}
/// `project_member_or_admin` create in the caller's own project.
const fn create(n: u16) -> [W; 5] {
    [is(401), is(403), is(n), is(n), is(n)]
}
/// A project-level read (quotas, usage) named by project id: its readers and admins.
const fn project_read(n: u16) -> [W; 5] {
    [is(401), is(n), is(403), is(n), is(n)]
}

struct Row {
    svc: Svc,
    method: Method,
    /// With `{placeholders}` resolved per caller (see `Fixtures`).
    path: String,
    body: Option<Value>,
    raw: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    /// `X-Subject-Token` (Keystone's token routes).
    subject: Option<&'static str>,
    want: [W; 5],
}

fn row(svc: Svc, method: Method, path: &str, want: [W; 5]) -> Row {
    Row {
        svc,
        method,
        path: path.to_string(),
        body: None,
        raw: None,
        content_type: None,
        subject: None,
        want,
    }
}

impl Row {
    fn json(mut self, v: Value) -> Row {
        self.body = Some(v);
        self
    }
    fn raw(mut self, b: Vec<u8>, content_type: &'static str) -> Row {
        self.raw = Some(b);
        self.content_type = Some(content_type);
        self
    }
    fn patch(mut self, v: Value) -> Row {
        self.body = Some(v);
        self.content_type = Some("application/openstack-images-v2.1-json-patch");
        self
    }
    fn subject(mut self, s: &'static str) -> Row {
        self.subject = Some(s);
        self
    }
}

/// Values of `{placeholders}`: one for everyone, or one per caller (the victims of deletes and
/// other one-shot writes: the member and the admin each get their own; the others are given the
/// member's, so a wrongly allowed call would destroy it and fail the member's row too).
#[derive(Default)]
struct Fixtures {
    global: HashMap<String, String>,
    per: HashMap<(Who, String), String>,
}

impl Fixtures {
    fn set(&mut self, k: &str, v: impl Into<String>) {
        let old = self.global.insert(k.to_string(), v.into());
        assert!(old.is_none(), "fixture {{{k}}} set twice");
    }
    fn set_for(&mut self, who: Who, k: &str, v: impl Into<String>) {
        self.per.insert((who, k.to_string()), v.into());
    }
    fn get(&self, who: Who, k: &str) -> String {
        if let Some(v) = self.per.get(&(who, k.to_string())) {
            return v.clone();
        }
        if matches!(who, Who::Anon | Who::Reader | Who::Other) {
            if let Some(v) = self.per.get(&(Who::Member, k.to_string())) {
                return v.clone();
            }
        }
        self.global
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("no fixture {{{k}}}"))
    }
    fn resolve(&self, who: Who, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let Some(j) = rest[i..].find('}') else {
                out.push_str(&rest[i..]);
                return out;
            };
            let key = &rest[i + 1..i + j];
            // JSON's own braces are not placeholders.
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.push('{');
                rest = &rest[i + 1..];
                continue;
            }
            out.push_str(&self.get(who, key));
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        out
    }
}

struct Cloud {
    cp: common::ControlPlane,
    http: reqwest::Client,
    tokens: HashMap<Who, String>,
    fx: Fixtures,
}

impl Cloud {
    fn base(&self, svc: Svc) -> &str {
        match svc {
            Svc::Identity => &self.cp.identity,
            Svc::Compute => &self.cp.compute,
            Svc::Image => &self.cp.image,
            Svc::Network => &self.cp.network,
            Svc::Volume => &self.cp.volume,
        }
    }

    async fn call(
        &self,
        svc: Svc,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base(svc)));
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A fixture call as `who` that must succeed; its body.
    async fn ok(&self, who: Who, svc: Svc, method: Method, path: &str, body: Value) -> Value {
        let body = (!body.is_null()).then_some(body);
        let (st, v) = self
            .call(
                svc,
                method.clone(),
                path,
                self.tokens.get(&who).map(String::as_str),
                body.as_ref(),
            )
            .await;
        assert!(
            (200..300).contains(&st),
            "fixture {method} {path} as {who:?}: {st} {v}"
        );
        v
    }

    async fn agent(&self, method: Method, path: &str, body: Value) -> u16 {
        let mut req = self
            .http
            .request(method, format!("{}/internal/v1{path}", self.cp.compute))
            .header(AGENT_TOKEN_HEADER, AGENT_TOKEN);
        if !body.is_null() {
            req = req.json(&body);
        }
        req.send().await.expect("agent call").status().as_u16()
    }

    async fn login(&self, user: &str, pw: &str, project: &str) -> String {
        common::login_to(&self.http, &self.cp.identity, user, pw, project)
            .await
            .0
    }

    /// Polls a volume or snapshot (as the member) until its status is `want`.
    async fn wait_status(&self, path: &str, key: &str, want: &str) {
        for _ in 0..200 {
            let (_, v) = self
                .call(
                    Svc::Volume,
                    Method::GET,
                    path,
                    self.tokens.get(&Who::Member).map(String::as_str),
                    None,
                )
                .await;
            if v[key]["status"] == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{path} never became {want}");
    }
}

fn id(v: &Value, key: &str) -> String {
    v[key]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no {key}.id in {v}"))
        .to_string()
}

impl Cloud {
    /// Creates with a POST as `who`; the new resource's `key.id`.
    async fn make(&self, who: Who, svc: Svc, path: &str, body: Value, key: &str) -> String {
        id(&self.ok(who, svc, Method::POST, path, body).await, key)
    }

    /// The id of the first `key` a GET as the admin lists.
    async fn first(&self, path: &str, key: &str) -> String {
        let v = self
            .ok(Who::Admin, Svc::Identity, Method::GET, path, Value::Null)
            .await;
        v[key][0]["id"].as_str().expect("id").to_string()
    }

    async fn user(&self, name: &str) -> String {
        let body = json!({"user": {"name": name, "domain_id": "default", "password": "pw-123456"}});
        self.make(Who::Admin, Svc::Identity, "/v3/users", body, "user")
            .await
    }

    async fn grant(&self, target: &str, user: &str, role: &str) {
        let path = format!("/v3/{target}/users/{user}/roles/{role}");
        self.ok(Who::Admin, Svc::Identity, Method::PUT, &path, Value::Null)
            .await;
    }

    /// A queued image of the member's.
    async fn queued(&self, body: Value) -> String {
        let v = self
            .ok(Who::Member, Svc::Image, Method::POST, "/v2/images", body)
            .await;
        v["id"].as_str().expect("id").to_string()
    }

    /// Plays a compute agent registering `host`; its agent URL refuses connections at once
    /// (console output, uptime: "the host does not answer").
    async fn register(&self, host: &str, vcpus: i64, memory_mb: i64) {
        let body = json!({"host": host, "host_ip": "198.18.0.2", "agent_url": "http://127.0.0.1:9",
            "vcpus": vcpus, "memory_mb": memory_mb, "local_gb": 1000, "cpu_info": {},
            "hypervisor_type": "QEMU", "hypervisor_version": 7002000, "virt_type": "qemu",
            "availability_zone": null});
        assert_eq!(
            self.agent(Method::POST, "/hosts", body).await,
            200,
            "register {host}"
        );
    }

    /// An available 1 GB volume of the member's.
    async fn volume(&self, project: &str) -> String {
        let path = format!("/v3/{project}/volumes");
        let body = json!({"volume": {"size": 1, "name": "v",
            "metadata": {"k": "v", "km": "1", "ka": "1"}}});
        let vid = self
            .make(Who::Member, Svc::Volume, &path, body, "volume")
            .await;
        self.wait_status(&format!("{path}/{vid}"), "volume", "available")
            .await;
        vid
    }

    /// An available snapshot of the member's `volume`.
    async fn snapshot(&self, project: &str, volume: &str) -> String {
        let path = format!("/v3/{project}/snapshots");
        let body = json!({"snapshot": {"volume_id": volume}});
        let sid = self
            .make(Who::Member, Svc::Volume, &path, body, "snapshot")
            .await;
        self.wait_status(&format!("{path}/{sid}"), "snapshot", "available")
            .await;
        sid
    }
}

/// Builds the cloud: the callers, and the owning project's resources (and the victims).
async fn cloud() -> Cloud {
    let cp = common::start().await;
    // Servers get ports, as in a whole controller.
    cp.compute_service.attach_network(cp.net.clone());
    let http = reqwest::Client::new();
    let mut c = Cloud {
        cp,
        http,
        tokens: HashMap::new(),
        fx: Fixtures::default(),
    };
    use Method as M;
    use Svc::*;
    use Who::*;
    let admin = c.login("admin", ADMIN_PW, "admin").await;
    c.tokens.insert(Admin, admin);
    let member = c.login("demo", DEMO_PW, "demo").await;
    c.tokens.insert(Member, member.clone());

    // ---- identity: the reader, the other project's member, and what the admin rows change.
    let demo_pid = c.first("/v3/projects?name=demo", "projects").await;
    let admin_pid = c.first("/v3/projects?name=admin", "projects").await;
    let demo_uid = c.first("/v3/users?name=demo", "users").await;
    let reader_rid = c.first("/v3/roles?name=reader", "roles").await;
    let member_rid = c.first("/v3/roles?name=member", "roles").await;
    let watcher = c.user("watcher").await;
    c.grant(&format!("projects/{demo_pid}"), &watcher, &reader_rid)
        .await;
    let other_pid = c
        .make(
            Admin,
            Identity,
            "/v3/projects",
            json!({"project": {"name": "other"}}),
            "project",
        )
        .await;
    let outsider = c.user("outsider").await;
    c.grant(&format!("projects/{other_pid}"), &outsider, &member_rid)
        .await;
    let reader = c.login("watcher", "pw-123456", "demo").await;
    c.tokens.insert(Reader, reader);
    let other = c.login("outsider", "pw-123456", "other").await;
    c.tokens.insert(Other, other);
    for (who, p) in [
        (Anon, &demo_pid),
        (Reader, &demo_pid),
        (Other, &other_pid),
        (Member, &demo_pid),
        (Admin, &admin_pid),
    ] {
        c.fx.set_for(who, "me", p.clone());
    }
    c.fx.set("demo_pid", demo_pid.clone());
    c.fx.set("other_pid", other_pid.clone());
    c.fx.set("demo_uid", demo_uid);
    c.fx.set("reader_rid", reader_rid.clone());
    c.fx.set("member_rid", member_rid.clone());
    c.fx.set("default_domain", "default");
    c.fx.set("member_token", member);
    let tok_m = c.login("demo", DEMO_PW, "demo").await;
    c.fx.set_for(Member, "tok_del", tok_m);
    let tok_a = c.login("demo", DEMO_PW, "demo").await;
    c.fx.set_for(Admin, "tok_del", tok_a);
    let domain_del = c
        .make(
            Admin,
            Identity,
            "/v3/domains",
            json!({"domain": {"name": "d-victim", "enabled": false}}),
            "domain",
        )
        .await;
    c.fx.set("domain_del", domain_del);
    let project_del = c
        .make(
            Admin,
            Identity,
            "/v3/projects",
            json!({"project": {"name": "p-victim"}}),
            "project",
        )
        .await;
    c.fx.set("project_del", project_del);
    let user_del = c.user("u-victim").await;
    c.fx.set("user_del", user_del);
    let pw_user = c.user("u-password").await;
    c.fx.set("pw_user", pw_user);
    let grant_user = c.user("u-grant").await;
    c.grant("domains/default", &grant_user, &reader_rid).await;
    c.fx.set("grant_user", grant_user);
    let grant_del = c.user("u-revoke").await;
    c.grant(&format!("projects/{demo_pid}"), &grant_del, &reader_rid)
        .await;
    c.grant("domains/default", &grant_del, &member_rid).await;
    c.fx.set("grant_del_user", grant_del);
    let mut roles = Vec::new();
    for name in ["r-fixture", "r-victim", "r-prior", "r-implied"] {
        let body = json!({"role": {"name": name}});
        roles.push(c.make(Admin, Identity, "/v3/roles", body, "role").await);
    }
    let imply = format!("/v3/roles/{}/implies/{}", roles[2], roles[3]);
    c.ok(Admin, Identity, M::PUT, &imply, Value::Null).await;
    for (k, v) in ["role_fix", "role_del", "imp_prior", "imp_implied"]
        .iter()
        .zip(roles)
    {
        c.fx.set(k, v);
    }
    c.fx.set("region", "RegionOne");
    c.ok(
        Admin,
        Identity,
        M::POST,
        "/v3/regions",
        json!({"region": {"id": "R-victim"}}),
    )
    .await;
    c.fx.set("region_del", "R-victim");
    let service = c
        .make(
            Admin,
            Identity,
            "/v3/services",
            json!({"service": {"type": "t-fixture"}}),
            "service",
        )
        .await;
    let service_del = c
        .make(
            Admin,
            Identity,
            "/v3/services",
            json!({"service": {"type": "t-victim"}}),
            "service",
        )
        .await;
    c.fx.set("service_del", service_del);
    for k in ["endpoint", "endpoint_del"] {
        let body = json!({"endpoint": {"service_id": service, "interface": "internal",
                                       "url": "http://198.18.0.1:1/"}});
        let e = c
            .make(Admin, Identity, "/v3/endpoints", body, "endpoint")
            .await;
        c.fx.set(k, e);
    }
    c.fx.set("service", service);

    // ---- images.
    let public_image = common::raw_image(&c.http, &c.cp.image, &c.tokens[&Admin], 1024, true).await;
    c.fx.set("public_image", public_image.clone());
    for k in ["image", "image_act"] {
        let i = common::raw_image(&c.http, &c.cp.image, &c.tokens[&Member], 1024, false).await;
        c.fx.set(k, i);
    }
    let plain = json!({"name": "q", "disk_format": "raw", "container_format": "bare"});
    let spare = c.queued(plain.clone()).await;
    c.fx.set("image_spare", spare);
    for who in [Member, Admin] {
        let del = c.queued(plain.clone()).await;
        c.fx.set_for(who, "image_del", del);
        let up = c.queued(plain.clone()).await;
        c.fx.set_for(who, "image_up", up);
    }
    let shared = c
        .queued(
            json!({"name": "sh", "disk_format": "raw", "container_format": "bare",
                       "visibility": "shared"}),
        )
        .await;
    for m in [other_pid.as_str(), "proj-dm", "proj-da"] {
        let path = format!("/v2/images/{shared}/members");
        c.ok(Member, Image, M::POST, &path, json!({"member": m}))
            .await;
    }
    c.fx.set("image_shared", shared);
    c.fx.set_for(Member, "member_del", "proj-dm");
    c.fx.set_for(Admin, "member_del", "proj-da");
    c.fx.set_for(Member, "new_member", "proj-nm");
    c.fx.set_for(Admin, "new_member", "proj-na");
    let image = c.fx.get(Member, "image");
    for t in ["t-m", "t-a"] {
        let path = format!("/v2/images/{image}/tags/{t}");
        c.ok(Member, Image, M::PUT, &path, Value::Null).await;
    }
    c.fx.set_for(Member, "tag_del", "t-m");
    c.fx.set_for(Admin, "tag_del", "t-a");
    c.fx.set("tag", "t-new");

    // ---- network: the external network (admin), the member's network and what hangs on it.
    let ext = c
        .make(
            Admin,
            Network,
            "/v2.0/networks",
            json!({"network": {"name": "public", "router:external": true}}),
            "network",
        )
        .await;
    let body = json!({"subnet": {"network_id": ext, "cidr": "198.18.100.0/24", "ip_version": 4}});
    c.ok(Admin, Network, M::POST, "/v2.0/subnets", body).await;
    c.fx.set("ext_net", ext.clone());
    c.fx.set("fip_addr", "198.18.100.77");
    let nets = "/v2.0/networks";
    let net = c
        .make(
            Member,
            Network,
            nets,
            json!({"network": {"name": "net"}}),
            "network",
        )
        .await;
    let subnet_body = |net: &str, cidr: &str| json!({"subnet": {"network_id": net, "cidr": cidr, "ip_version": 4}});
    let subnets = "/v2.0/subnets";
    let subnet = c
        .make(
            Member,
            Network,
            subnets,
            subnet_body(&net, "10.0.0.0/24"),
            "subnet",
        )
        .await;
    c.fx.set("subnet", subnet);
    for (who, cidr) in [(Member, "10.0.1.0/24"), (Admin, "10.0.2.0/24")] {
        let s = c
            .make(Member, Network, subnets, subnet_body(&net, cidr), "subnet")
            .await;
        c.fx.set_for(who, "subnet_if", s);
    }
    c.fx.set_for(Member, "cidr", "10.0.10.0/24");
    c.fx.set_for(Admin, "cidr", "10.0.11.0/24");
    c.fx.set("net", net.clone());
    let spare = c
        .make(
            Member,
            Network,
            nets,
            json!({"network": {"name": "spare"}}),
            "network",
        )
        .await;
    c.fx.set("net_spare", spare);
    let victims = c
        .make(
            Member,
            Network,
            nets,
            json!({"network": {"name": "victims"}}),
            "network",
        )
        .await;
    for (who, cidr) in [(Member, "10.9.1.0/24"), (Admin, "10.9.2.0/24")] {
        let s = c
            .make(
                Member,
                Network,
                subnets,
                subnet_body(&victims, cidr),
                "subnet",
            )
            .await;
        c.fx.set_for(who, "subnet_del", s);
    }
    for who in [Member, Admin] {
        let n = c
            .make(
                Member,
                Network,
                nets,
                json!({"network": {"name": "victim"}}),
                "network",
            )
            .await;
        c.fx.set_for(who, "net_del", n);
    }
    let port_body = json!({"port": {"network_id": net}});
    let port = c
        .make(Member, Network, "/v2.0/ports", port_body.clone(), "port")
        .await;
    c.fx.set("port", port);
    for who in [Member, Admin] {
        let p = c
            .make(Member, Network, "/v2.0/ports", port_body.clone(), "port")
            .await;
        c.fx.set_for(who, "port_del", p);
    }
    let router_body = json!({"router": {"name": "r"}});
    let router = c
        .make(
            Member,
            Network,
            "/v2.0/routers",
            router_body.clone(),
            "router",
        )
        .await;
    c.fx.set("router", router);
    for who in [Member, Admin] {
        let r = c
            .make(
                Member,
                Network,
                "/v2.0/routers",
                router_body.clone(),
                "router",
            )
            .await;
        c.fx.set_for(who, "router_del", r);
    }
    let fip_body = json!({"floatingip": {"floating_network_id": ext}});
    let fip = c
        .make(
            Member,
            Network,
            "/v2.0/floatingips",
            fip_body.clone(),
            "floatingip",
        )
        .await;
    c.fx.set("fip", fip);
    for who in [Member, Admin] {
        let f = c
            .make(
                Member,
                Network,
                "/v2.0/floatingips",
                fip_body.clone(),
                "floatingip",
            )
            .await;
        c.fx.set_for(who, "fip_del", f);
    }
    let sgs = "/v2.0/security-groups";
    let sg = c
        .make(
            Member,
            Network,
            sgs,
            json!({"security_group": {"name": "sg"}}),
            "security_group",
        )
        .await;
    for who in [Member, Admin] {
        let g = c
            .make(
                Member,
                Network,
                sgs,
                json!({"security_group": {"name": "victim"}}),
                "security_group",
            )
            .await;
        c.fx.set_for(who, "sg_del", g);
    }
    let rule_body = |prefix: &str| {
        json!({"security_group_rule": {"security_group_id": sg, "direction": "ingress",
               "protocol": "tcp", "remote_ip_prefix": prefix}})
    };
    let rules = "/v2.0/security-group-rules";
    let rule = c
        .make(
            Member,
            Network,
            rules,
            rule_body("10.20.0.0/24"),
            "security_group_rule",
        )
        .await;
    c.fx.set("rule", rule);
    for (who, prefix) in [(Member, "10.20.1.0/24"), (Admin, "10.20.2.0/24")] {
        let r = c
            .make(
                Member,
                Network,
                rules,
                rule_body(prefix),
                "security_group_rule",
            )
            .await;
        c.fx.set_for(who, "rule_del", r);
    }
    for who in [Member, Admin] {
        let g = c
            .make(
                Member,
                Network,
                sgs,
                json!({"security_group": {"name": "added"}}),
                "security_group",
            )
            .await;
        c.fx.set_for(who, "sg_add", g);
    }
    c.fx.set_for(Member, "rule_prefix", "10.21.1.0/24");
    c.fx.set_for(Admin, "rule_prefix", "10.21.2.0/24");
    c.fx.set("sg", sg);
    c.fx.set("alias", "router");

    // ---- compute: a host (the test is its agent), flavors, keypairs, servers.
    c.register("h1", 64, 262_144).await;
    // Too small for any flavor: the service the admin deletes.
    c.register("h-victim", 1, 1).await;
    let services = c
        .ok(Admin, Compute, M::GET, "/v2.1/os-services", Value::Null)
        .await;
    for s in services["services"].as_array().expect("services") {
        let key = if s["host"] == "h1" {
            "hypervisor"
        } else {
            "host_del"
        };
        c.fx.set(key, s["id"].to_string());
    }
    c.fx.set("svc_action", "enable");
    c.fx.set("host", "h1");
    c.fx.set("ip", "10.0.0.3");
    c.fx.set("flavor", "1");
    for (fid, public) in [("priv", false), ("f-victim", true)] {
        let body = json!({"flavor": {"name": fid, "id": fid, "ram": 512, "vcpus": 1, "disk": 1,
                                     "os-flavor-access:is_public": public}});
        c.ok(Admin, Compute, M::POST, "/v2.1/flavors", body).await;
    }
    c.fx.set("flavor_priv", "priv");
    c.fx.set("flavor_del", "f-victim");
    let specs = json!({"extra_specs": {"k": "v", "dm": "1", "da": "1"}});
    c.ok(
        Admin,
        Compute,
        M::POST,
        "/v2.1/flavors/1/os-extra_specs",
        specs,
    )
    .await;
    c.fx.set("spec", "k");
    c.fx.set_for(Member, "spec_del", "dm");
    c.fx.set_for(Admin, "spec_del", "da");
    for (who, name) in [(Member, "kp"), (Member, "kp-dm"), (Admin, "kp-da")] {
        let body = json!({"keypair": {"name": name}});
        c.ok(who, Compute, M::POST, "/v2.1/os-keypairs", body).await;
    }
    c.fx.set("keypair", "kp");
    c.fx.set_for(Member, "keypair_del", "kp-dm");
    c.fx.set_for(Admin, "keypair_del", "kp-da");
    let server_body = json!({"server": {"name": "s", "imageRef": public_image, "flavorRef": "1",
        "networks": [{"uuid": net}], "metadata": {"k": "v", "km": "1", "ka": "1"}}});
    let mut servers = Vec::new();
    for _ in 0..4 {
        let body = server_body.clone();
        servers.push(
            c.make(Member, Compute, "/v2.1/servers", body, "server")
                .await,
        );
    }
    for sid in &servers[..2] {
        let report = format!("/hosts/h1/instances/{sid}/report");
        let body = json!({"task": "spawning", "ok": true, "power_state": 1, "fault": null});
        assert_eq!(
            c.agent(M::POST, &report, body).await,
            204,
            "the server becomes active"
        );
    }
    let s = servers[0].clone();
    c.fx.set("server", s.clone());
    c.fx.set("server_act", servers[1].clone());
    c.fx.set_for(Member, "server_del", servers[2].clone());
    c.fx.set_for(Admin, "server_del", servers[3].clone());
    c.fx.set("meta", "k");
    c.fx.set_for(Member, "meta_del", "km");
    c.fx.set_for(Admin, "meta_del", "ka");

    // ---- block storage (the member's quota raised for the victims).
    let quota = format!("/v3/{admin_pid}/os-quota-sets/{demo_pid}");
    let body = json!({"quota_set": {"volumes": 40, "gigabytes": 400, "snapshots": 20}});
    c.ok(Admin, Volume, M::PUT, &quota, body).await;
    for k in ["vol", "vol_act", "vol_snap", "vol_show"] {
        let v = c.volume(&demo_pid).await;
        c.fx.set(k, v);
    }
    for who in [Member, Admin] {
        for k in ["vol_del", "vol_att", "vol_det"] {
            let v = c.volume(&demo_pid).await;
            c.fx.set_for(who, k, v);
        }
    }
    let attached = [
        c.fx.get(Member, "vol_show"),
        c.fx.get(Member, "vol_det"),
        c.fx.get(Admin, "vol_det"),
    ];
    for v in &attached {
        let path = format!("/v2.1/servers/{s}/os-volume_attachments");
        let body = json!({"volumeAttachment": {"volumeId": v}});
        c.ok(Member, Compute, M::POST, &path, body).await;
        let report = format!("/hosts/h1/instances/{s}/volumes/{v}");
        let body = json!({"op": "attach", "error": null});
        assert_eq!(c.agent(M::POST, &report, body).await, 204);
        c.wait_status(&format!("/v3/{demo_pid}/volumes/{v}"), "volume", "in-use")
            .await;
    }
    let vol_snap = c.fx.get(Member, "vol_snap");
    let snap = c.snapshot(&demo_pid, &vol_snap).await;
    c.fx.set("snap", snap);
    for who in [Member, Admin] {
        let v = c.snapshot(&demo_pid, &vol_snap).await;
        c.fx.set_for(who, "snap_del", v);
    }
    c.fx.set("vtype", onestack_core::volume::DEFAULT_TYPE_ID);
    c
}

/// The expectations, grouped by service and resource, each group with the upstream rule.
fn table() -> Vec<Row> {
    use Method as M;
    use Svc::*;
    let mut t = vec![
        // ===== Keystone (keystone/common/policies) =====
        // Version documents and the health check need no token.
        row(Identity, M::GET, "/", public(300)),
        row(Identity, M::GET, "/v3", public(200)),
        row(Identity, M::GET, "/v3/", public(200)),
        row(Identity, M::GET, "/healthcheck", public(200)),
        // Issuing a token needs no token (the password authenticates).
        row(Identity, M::POST, "/v3/auth/tokens", public(201)).json(
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": "demo", "domain": {"id": "default"}, "password": DEMO_PW}}},
                "scope": {"project": {"name": "demo", "domain": {"id": "default"}}}}}),
        ),
        // token.py: validate_token / revoke_token are admin or the token's subject.
        row(Identity, M::GET, "/v3/auth/tokens", [is(401), is(403), is(403), is(200), is(200)])
            .subject("{member_token}"),
        row(Identity, M::DELETE, "/v3/auth/tokens", [is(401), is(403), is(403), is(204), is(204)])
            .subject("{tok_del}"),
        // auth.py: get_auth_catalog/projects/domains are '' (any token).
        row(Identity, M::GET, "/v3/auth/projects", any_user(200)),
        row(Identity, M::GET, "/v3/auth/domains", any_user(200)),
        row(Identity, M::GET, "/v3/auth/catalog", any_user(200)),
        // domain.py: get_domain is admin or the token's (project's) domain; the rest admin.
        row(Identity, M::GET, "/v3/domains", admin_only(200)),
        row(Identity, M::POST, "/v3/domains", admin_only(201))
            .json(json!({"domain": {"name": "d-new"}})),
        row(Identity, M::GET, "/v3/domains/{default_domain}", any_user(200)),
        row(Identity, M::PATCH, "/v3/domains/{default_domain}", admin_only(200))
            .json(json!({"domain": {"description": "x"}})),
        row(Identity, M::DELETE, "/v3/domains/{domain_del}", admin_only(204)),
        // project.py: changes admin. A deliberate difference (docs/architecture.md): a user
        // lists and reads the projects it holds a role on (Keystone: list_projects admin,
        // get_project a token scoped to it) — another project's member is still refused.
        row(Identity, M::GET, "/v3/projects", any_user(200)),
        row(Identity, M::POST, "/v3/projects", admin_only(201))
            .json(json!({"project": {"name": "p-new"}})),
        row(Identity, M::GET, "/v3/projects/{demo_pid}", project_read(200)),
        row(Identity, M::PATCH, "/v3/projects/{demo_pid}", admin_only(200))
            .json(json!({"project": {"description": "x"}})),
        row(Identity, M::DELETE, "/v3/projects/{project_del}", admin_only(204)),
        // user.py: get_user and list_user_projects are admin or the user itself; the rest admin.
        row(Identity, M::GET, "/v3/users", admin_only(200)),
        row(Identity, M::POST, "/v3/users", admin_only(201))
            .json(json!({"user": {"name": "u-new"}})),
        row(Identity, M::GET, "/v3/users/{demo_uid}", [is(401), is(403), is(403), is(200), is(200)]),
        row(Identity, M::PATCH, "/v3/users/{demo_uid}", admin_only(200))
            .json(json!({"user": {"email": "d@example.org"}})),
        row(Identity, M::DELETE, "/v3/users/{user_del}", admin_only(204)),
        row(
            Identity,
            M::GET,
            "/v3/users/{demo_uid}/projects",
            [is(401), is(403), is(403), is(200), is(200)],
        ),
        // Stricter than Keystone, whose password change is unenforced (the original password is
        // the proof): OneStack wants the user's own token.
        row(Identity, M::POST, "/v3/users/{pw_user}/password", [is(401), is(403), is(403), is(403), is(403)])
            .json(json!({"user": {"original_password": "pw-123456", "password": "pw-654321"}})),
        // role.py, implied_role.py: admin (or a system reader / domain manager, which OneStack
        // does not have).
        row(Identity, M::GET, "/v3/roles", admin_only(200)),
        row(Identity, M::POST, "/v3/roles", admin_only(201)).json(json!({"role": {"name": "r-new"}})),
        row(Identity, M::GET, "/v3/roles/{reader_rid}", admin_only(200)),
        row(Identity, M::PATCH, "/v3/roles/{role_fix}", admin_only(200))
            .json(json!({"role": {"description": "x"}})),
        row(Identity, M::DELETE, "/v3/roles/{role_del}", admin_only(204)),
        row(Identity, M::GET, "/v3/roles/{member_rid}/implies", admin_only(200)),
        row(Identity, M::PUT, "/v3/roles/{member_rid}/implies/{reader_rid}", admin_only(201)),
        row(Identity, M::GET, "/v3/roles/{member_rid}/implies/{reader_rid}", admin_only(200)),
        row(Identity, M::HEAD, "/v3/roles/{member_rid}/implies/{reader_rid}", admin_only(204)),
        row(Identity, M::DELETE, "/v3/roles/{imp_prior}/implies/{imp_implied}", admin_only(204)),
        row(Identity, M::GET, "/v3/role_inferences", admin_only(200)),
        // role_assignment.py, grant.py: admin (system or domain readers upstream); a user learns
        // its roles from its token.
        row(Identity, M::GET, "/v3/role_assignments", admin_only(200)),
        row(Identity, M::GET, "/v3/role_assignments?user.id={demo_uid}", admin_only(200)),
        row(Identity, M::GET, "/v3/projects/{demo_pid}/users/{demo_uid}/roles", admin_only(200)),
        row(
            Identity,
            M::PUT,
            "/v3/projects/{demo_pid}/users/{grant_user}/roles/{reader_rid}",
            admin_only(204),
        ),
        row(
            Identity,
            M::GET,
            "/v3/projects/{demo_pid}/users/{demo_uid}/roles/{member_rid}",
            admin_only(204),
        ),
        row(
            Identity,
            M::HEAD,
            "/v3/projects/{demo_pid}/users/{demo_uid}/roles/{member_rid}",
            admin_only(204),
        ),
        row(
            Identity,
            M::DELETE,
            "/v3/projects/{demo_pid}/users/{grant_del_user}/roles/{reader_rid}",
            admin_only(204),
        ),
        row(Identity, M::GET, "/v3/domains/{default_domain}/users/{grant_user}/roles", admin_only(200)),
        row(
            Identity,
            M::PUT,
            "/v3/domains/{default_domain}/users/{grant_user}/roles/{member_rid}",
            admin_only(204),
        ),
        row(
            Identity,
            M::GET,
            "/v3/domains/{default_domain}/users/{grant_user}/roles/{reader_rid}",
            admin_only(204),
        ),
        row(
            Identity,
            M::DELETE,
            "/v3/domains/{default_domain}/users/{grant_del_user}/roles/{member_rid}",
            admin_only(204),
        ),
        // region.py: reads are '' (any token), changes admin.
        row(Identity, M::GET, "/v3/regions", any_user(200)),
        row(Identity, M::POST, "/v3/regions", admin_only(201)).json(json!({"region": {"id": "R-new"}})),
        row(Identity, M::GET, "/v3/regions/{region}", any_user(200)),
        row(Identity, M::PATCH, "/v3/regions/{region}", admin_only(200))
            .json(json!({"region": {"description": "x"}})),
        row(Identity, M::DELETE, "/v3/regions/{region_del}", admin_only(204)),
        // service.py, endpoint.py: admin (or a system reader); tenants read the token's catalog.
        row(Identity, M::GET, "/v3/services", admin_only(200)),
        row(Identity, M::POST, "/v3/services", admin_only(201))
            .json(json!({"service": {"type": "t-new"}})),
        row(Identity, M::GET, "/v3/services/{service}", admin_only(200)),
        row(Identity, M::PATCH, "/v3/services/{service}", admin_only(200))
            .json(json!({"service": {"description": "x"}})),
        row(Identity, M::DELETE, "/v3/services/{service_del}", admin_only(204)),
        row(Identity, M::GET, "/v3/endpoints", admin_only(200)),
        row(Identity, M::POST, "/v3/endpoints", admin_only(201)).json(
            json!({"endpoint": {"service_id": "{service}", "interface": "admin", "url": "http://198.18.0.1:2/"}}),
        ),
        row(Identity, M::GET, "/v3/endpoints/{endpoint}", admin_only(200)),
        row(Identity, M::PATCH, "/v3/endpoints/{endpoint}", admin_only(200))
            .json(json!({"endpoint": {"enabled": true}})),
        row(Identity, M::DELETE, "/v3/endpoints/{endpoint_del}", admin_only(204)),
    ];
    t.extend(compute_rows());
    t.extend(image_rows());
    t.extend(network_rows());
    t.extend(volume_rows());
    t
}

fn compute_rows() -> Vec<Row> {
    use Method as M;
    use Svc::Compute as C;
    let action = |name: &str, arg: Value, want: [W; 5]| {
        row(C, M::POST, "/v2.1/servers/{server_act}/action", want).json(json!({ name: arg }))
    };
    let mut t = vec![
        // ===== Nova (nova/policies) =====
        row(C, M::GET, "/", public(200)),
        row(C, M::GET, "/v2.1/", public(200)),
        row(C, M::GET, "/v2.1", public(200)),
        // flavors.py (none: any token), flavor_manage.py (admin); PUT /flavors/{id} exists
        // from 2.55 only (404 at 2.1, after authentication).
        row(C, M::GET, "/v2.1/flavors", any_user(200)),
        row(C, M::GET, "/v2.1/flavors/detail", any_user(200)),
        row(C, M::POST, "/v2.1/flavors", admin_only(200)).json(
            json!({"flavor": {"name": "f-new", "id": "f-new", "ram": 512, "vcpus": 1, "disk": 1}}),
        ),
        row(C, M::GET, "/v2.1/flavors/{flavor}", any_user(200)),
        row(C, M::PUT, "/v2.1/flavors/{flavor}", any_user(404))
            .json(json!({"flavor": {"description": "x"}})),
        row(C, M::DELETE, "/v2.1/flavors/{flavor_del}", admin_only(202)),
        // flavor_access.py: admin.
        row(
            C,
            M::POST,
            "/v2.1/flavors/{flavor_priv}/action",
            admin_only(200),
        )
        .json(json!({"addTenantAccess": {"tenant": "{demo_pid}"}})),
        row(
            C,
            M::GET,
            "/v2.1/flavors/{flavor_priv}/os-flavor-access",
            admin_only(200),
        ),
        // flavor_extra_specs.py: index/show project_reader_or_admin, changes admin.
        row(
            C,
            M::GET,
            "/v2.1/flavors/{flavor}/os-extra_specs",
            any_user(200),
        ),
        row(
            C,
            M::POST,
            "/v2.1/flavors/{flavor}/os-extra_specs",
            admin_only(200),
        )
        .json(json!({"extra_specs": {"n": "1"}})),
        row(
            C,
            M::GET,
            "/v2.1/flavors/{flavor}/os-extra_specs/{spec}",
            any_user(200),
        ),
        row(
            C,
            M::PUT,
            "/v2.1/flavors/{flavor}/os-extra_specs/{spec}",
            admin_only(200),
        )
        .json(json!({"k": "v2"})),
        row(
            C,
            M::DELETE,
            "/v2.1/flavors/{flavor}/os-extra_specs/{spec_del}",
            admin_only(200),
        ),
        // keypairs.py: admin or user_id:%(user_id)s — a keypair is its user's, whatever the role.
        row(C, M::GET, "/v2.1/os-keypairs", any_user(200)),
        row(C, M::POST, "/v2.1/os-keypairs", any_user(200))
            .json(json!({"keypair": {"name": "kp-new"}})),
        row(
            C,
            M::GET,
            "/v2.1/os-keypairs/{keypair}",
            [is(401), is(404), is(404), is(200), is(404)],
        ),
        row(
            C,
            M::DELETE,
            "/v2.1/os-keypairs/{keypair_del}",
            [is(401), is(404), is(404), is(202), is(202)],
        ),
        // servers.py: index/detail/show project_reader_or_admin; all_tenants admin; create,
        // update, delete project_member_or_admin. Another project's network is not found (400).
        row(C, M::GET, "/v2.1/servers", any_user(200)),
        row(C, M::GET, "/v2.1/servers?all_tenants=1", admin_only(200)),
        row(C, M::GET, "/v2.1/servers/detail", any_user(200)),
        row(
            C,
            M::GET,
            "/v2.1/servers/detail?all_tenants=1",
            admin_only(200),
        ),
        row(
            C,
            M::POST,
            "/v2.1/servers",
            [is(401), is(403), is(400), is(202), is(202)],
        )
        .json(
            json!({"server": {"name": "n", "imageRef": "{public_image}", "flavorRef": "1",
                   "networks": [{"uuid": "{net}"}]}}),
        ),
        // servers.py create:forced_host: admin (checked before the network is looked at).
        row(
            C,
            M::POST,
            "/v2.1/servers",
            [is(401), is(403), is(403), is(403), is(202)],
        )
        .json(
            json!({"server": {"name": "n", "imageRef": "{public_image}", "flavorRef": "1",
                   "availability_zone": "nova:h1", "networks": [{"uuid": "{net}"}]}}),
        ),
        // network:attach_external_network (admin).
        row(
            C,
            M::POST,
            "/v2.1/servers",
            [is(401), is(403), is(403), is(403), is(202)],
        )
        .json(
            json!({"server": {"name": "n", "imageRef": "{public_image}", "flavorRef": "1",
                   "networks": [{"uuid": "{ext_net}"}]}}),
        ),
        row(C, M::GET, "/v2.1/servers/{server}", read(200)),
        row(C, M::PUT, "/v2.1/servers/{server}", write(200))
            .json(json!({"server": {"name": "s2"}})),
        row(C, M::DELETE, "/v2.1/servers/{server_del}", write(204)),
        // ips.py: project_reader_or_admin.
        row(C, M::GET, "/v2.1/servers/{server}/ips", read(200)),
        // server_metadata.py: index/show reader, changes member.
        row(C, M::GET, "/v2.1/servers/{server}/metadata", read(200)),
        row(C, M::POST, "/v2.1/servers/{server}/metadata", write(200))
            .json(json!({"metadata": {"a": "1"}})),
        row(C, M::PUT, "/v2.1/servers/{server}/metadata", write(200))
            .json(json!({"metadata": {"k": "v", "km": "1", "ka": "1"}})),
        row(
            C,
            M::GET,
            "/v2.1/servers/{server}/metadata/{meta}",
            read(200),
        ),
        row(
            C,
            M::PUT,
            "/v2.1/servers/{server}/metadata/{meta}",
            write(200),
        )
        .json(json!({"meta": {"k": "v2"}})),
        row(
            C,
            M::DELETE,
            "/v2.1/servers/{server}/metadata/{meta_del}",
            write(204),
        ),
        // volumes_attachments.py: index/show reader, create/delete member.
        row(
            C,
            M::GET,
            "/v2.1/servers/{server}/os-volume_attachments",
            read(200),
        ),
        row(
            C,
            M::POST,
            "/v2.1/servers/{server}/os-volume_attachments",
            write(200),
        )
        .json(json!({"volumeAttachment": {"volumeId": "{vol_att}"}})),
        row(
            C,
            M::GET,
            "/v2.1/servers/{server}/os-volume_attachments/{vol_show}",
            read(200),
        ),
        row(
            C,
            M::DELETE,
            "/v2.1/servers/{server}/os-volume_attachments/{vol_det}",
            write(202),
        ),
        // Server actions: project_member_or_admin (servers.py, pause_server.py,
        // suspend_server.py, security_groups.py add/remove, create_backup.py, console_output.py,
        // remote_consoles.py — a reader gets neither the boot log nor a shell); migrations
        // admin (migrate_server.py: project_manager_or_admin, and OneStack has no manager).
        action("os-getConsoleOutput", json!({"length": 10}), WRITE_PASS),
        action("os-getSerialConsole", json!({"type": "serial"}), WRITE_PASS),
        action(
            "os-getVNCConsole",
            json!({"type": "novnc"}),
            [is(401), is(403), is(404), is(400), is(400)],
        ),
        action("os-stop", Value::Null, WRITE_PASS),
        action("os-start", Value::Null, WRITE_PASS),
        action("pause", Value::Null, WRITE_PASS),
        action("unpause", Value::Null, WRITE_PASS),
        action("suspend", Value::Null, WRITE_PASS),
        action("resume", Value::Null, WRITE_PASS),
        action("reboot", json!({"type": "SOFT"}), WRITE_PASS),
        action("addSecurityGroup", json!({"name": "{sg_add}"}), WRITE_PASS),
        action(
            "removeSecurityGroup",
            json!({"name": "{sg_add}"}),
            WRITE_PASS,
        ),
        action("createImage", json!({"name": "snap"}), WRITE_PASS),
        action(
            "createBackup",
            json!({"name": "b", "backup_type": "daily", "rotation": 1}),
            WRITE_PASS,
        ),
        action("resize", json!({"flavorRef": "2"}), WRITE_PASS),
        action("confirmResize", Value::Null, WRITE_PASS),
        action("revertResize", Value::Null, WRITE_PASS),
        action("rebuild", json!({"imageRef": "{public_image}"}), WRITE_PASS),
        action(
            "migrate",
            Value::Null,
            [is(401), is(403), is(404), is(403), Pass],
        ),
        action(
            "os-migrateLive",
            json!({"host": null, "block_migration": "auto"}),
            [is(401), is(403), is(404), is(403), Pass],
        ),
        // lock_server.py: lock/unlock member (unlock_override admin).
        action("unlock", Value::Null, WRITE_PASS),
        action("lock", Value::Null, WRITE_PASS),
        // hypervisors.py, services.py, availability_zone.py detail, aggregates.py: admin.
        row(C, M::GET, "/v2.1/os-hypervisors", admin_only(200)),
        row(C, M::GET, "/v2.1/os-hypervisors/detail", admin_only(200)),
        row(
            C,
            M::GET,
            "/v2.1/os-hypervisors/statistics",
            admin_only(200),
        ),
        row(
            C,
            M::GET,
            "/v2.1/os-hypervisors/{hypervisor}",
            admin_only(200),
        ),
        // The host's agent does not answer here: Nova's 501 when uptime is unknown.
        row(
            C,
            M::GET,
            "/v2.1/os-hypervisors/{hypervisor}/uptime",
            admin_only(501),
        ),
        row(C, M::GET, "/v2.1/os-availability-zone", any_user(200)),
        row(
            C,
            M::GET,
            "/v2.1/os-availability-zone/detail",
            admin_only(200),
        ),
        row(C, M::GET, "/v2.1/os-services", admin_only(200)),
        row(C, M::PUT, "/v2.1/os-services/{svc_action}", admin_only(200))
            .json(json!({"host": "h1", "binary": "nova-compute"})),
        row(
            C,
            M::DELETE,
            "/v2.1/os-services/{host_del}",
            admin_only(204),
        ),
        row(C, M::GET, "/v2.1/os-aggregates", admin_only(200)),
        // limits.py: any; quota_sets.py: show/detail project_reader_or_admin, defaults any,
        // update/delete admin.
        row(C, M::GET, "/v2.1/limits", any_user(200)),
        row(
            C,
            M::GET,
            "/v2.1/limits?tenant_id={demo_pid}",
            admin_only(200),
        ),
        row(
            C,
            M::GET,
            "/v2.1/os-quota-sets/{demo_pid}",
            project_read(200),
        ),
        row(C, M::PUT, "/v2.1/os-quota-sets/{demo_pid}", admin_only(200))
            .json(json!({"quota_set": {"instances": 20}})),
        row(
            C,
            M::DELETE,
            "/v2.1/os-quota-sets/{demo_pid}",
            admin_only(202),
        ),
        row(
            C,
            M::GET,
            "/v2.1/os-quota-sets/{demo_pid}/defaults",
            any_user(200),
        ),
        row(
            C,
            M::GET,
            "/v2.1/os-quota-sets/{demo_pid}/detail",
            project_read(200),
        ),
        // simple_tenant_usage.py: list admin, show project_reader_or_admin; OneStack's own
        // reports follow the same split (per host: admin; per project: one's own).
        row(C, M::GET, "/v2.1/os-simple-tenant-usage", admin_only(200)),
        row(
            C,
            M::GET,
            "/v2.1/os-simple-tenant-usage/{demo_pid}",
            project_read(200),
        ),
        row(C, M::GET, "/v2.1/os-onestack-host-usage", admin_only(200)),
        row(C, M::GET, "/v2.1/os-onestack-usage-series", any_user(200)),
        row(
            C,
            M::GET,
            "/v2.1/os-onestack-usage-series?group_by=host",
            admin_only(200),
        ),
    ];
    // The agents' API: a Keystone token, whoever's, is no agent credential.
    let agent = [is(401); 5];
    for (m, p) in [
        (M::POST, "/internal/v1/hosts"),
        (M::GET, "/internal/v1/hosts/{host}"),
        (M::DELETE, "/internal/v1/hosts/{host}"),
        (M::POST, "/internal/v1/hosts/{host}/heartbeat"),
        (M::GET, "/internal/v1/hosts/{host}/desired"),
        (M::GET, "/internal/v1/hosts/{host}/network"),
        (M::GET, "/internal/v1/metadata/{net}/{ip}"),
        (
            M::POST,
            "/internal/v1/hosts/{host}/instances/{server}/report",
        ),
        (
            M::POST,
            "/internal/v1/hosts/{host}/instances/{server}/volumes/{vol_show}",
        ),
        (
            M::POST,
            "/internal/v1/hosts/{host}/instances/{server}/migration",
        ),
        (M::GET, "/internal/v1/images/{image}/file"),
        (M::PUT, "/internal/v1/images/{image}/file"),
    ] {
        t.push(row(C, m, p, agent).json(json!({})));
    }
    // Joining needs a join token; a Keystone token is none.
    t.push(
        row(C, M::POST, "/internal/v1/join", [is(401); 5])
            .json(json!({"token": "not-a-join-token", "host": "h9"})),
    );
    t
}

fn image_rows() -> Vec<Row> {
    use Method as M;
    use Svc::Image as I;
    vec![
        // ===== Glance (glance/policies) =====
        row(I, M::GET, "/", public(300)),
        row(I, M::GET, "/versions", public(200)),
        row(I, M::GET, "/v2", public(300)),
        row(I, M::GET, "/v2/", public(300)),
        row(I, M::GET, "/healthcheck", public(200)),
        // Schemas are behind Keystone authentication (no policy).
        row(I, M::GET, "/v2/schemas/image", any_user(200)),
        row(I, M::GET, "/v2/schemas/images", any_user(200)),
        row(I, M::GET, "/v2/schemas/member", any_user(200)),
        row(I, M::GET, "/v2/schemas/members", any_user(200)),
        // image.py: get_images reader; add_image member (own project); publicize_image admin.
        row(I, M::GET, "/v2/images", any_user(200)),
        row(I, M::POST, "/v2/images", create(201))
            .json(json!({"name": "i-new", "disk_format": "raw", "container_format": "bare"})),
        row(I, M::POST, "/v2/images", admin_only(201)).json(
            json!({"name": "i-pub", "disk_format": "raw", "container_format": "bare", "visibility": "public"}),
        ),
        // get_image reader (or a member/public/community/shared image); modify_image,
        // delete_image, upload_image, deactivate/reactivate member; download_image wants
        // role:member even for a visible image.
        row(I, M::GET, "/v2/images/{image}", read(200)),
        row(I, M::PATCH, "/v2/images/{image}", write(200))
            .patch(json!([{"op": "replace", "path": "/name", "value": "n2"}])),
        row(I, M::PATCH, "/v2/images/{image_spare}", admin_on_resource(200))
            .patch(json!([{"op": "replace", "path": "/visibility", "value": "public"}])),
        row(I, M::DELETE, "/v2/images/{image_del}", write(204)),
        row(I, M::PUT, "/v2/images/{image_up}/file", write(204))
            .raw(vec![7u8; 1024], "application/octet-stream"),
        row(I, M::GET, "/v2/images/{image}/file", write(200)),
        row(I, M::PUT, "/v2/images/{image}/tags/{tag}", write(204)),
        row(I, M::DELETE, "/v2/images/{image}/tags/{tag_del}", write(204)),
        row(I, M::POST, "/v2/images/{image_act}/actions/deactivate", write(204)),
        row(I, M::POST, "/v2/images/{image_act}/actions/reactivate", write(204)),
        // Members of a shared image: get_member(s) reader of the owner or the member project;
        // add/delete the owner's member; modify_member admin or the member project itself.
        row(I, M::GET, "/v2/images/{image_shared}/members", any_user(200)),
        row(I, M::POST, "/v2/images/{image_shared}/members", [is(401), is(403), is(403), is(200), is(200)])
            .json(json!({"member": "{new_member}"})),
        row(I, M::GET, "/v2/images/{image_shared}/members/{other_pid}", any_user(200)),
        row(I, M::PUT, "/v2/images/{image_shared}/members/{other_pid}", [is(401), is(403), is(200), is(403), is(200)])
            .json(json!({"status": "accepted"})),
        row(
            I,
            M::DELETE,
            "/v2/images/{image_shared}/members/{member_del}",
            [is(401), is(403), is(403), is(204), is(204)],
        ),
    ]
}

fn network_rows() -> Vec<Row> {
    use Method as M;
    use Svc::Network as N;
    vec![
        // ===== Neutron (neutron/conf/policies) =====
        // Only `/` is anonymous; /v2.0 is behind Keystone authentication.
        row(N, M::GET, "/", public(200)),
        row(N, M::GET, "/v2.0", any_user(200)),
        row(N, M::GET, "/v2.0/", any_user(200)),
        row(N, M::GET, "/v2.0/extensions", any_user(200)),
        row(N, M::GET, "/v2.0/extensions/{alias}", any_user(200)),
        // network.py: get_network admin_or_project_reader (or shared/external); create, update
        // and delete admin_or_project_member; shared, router:external, is_default admin.
        row(N, M::GET, "/v2.0/networks", any_user(200)),
        row(N, M::POST, "/v2.0/networks", create(201)).json(json!({"network": {"name": "n-new"}})),
        row(N, M::POST, "/v2.0/networks", admin_only(201))
            .json(json!({"network": {"name": "n-shared", "shared": true}})),
        row(N, M::POST, "/v2.0/networks", admin_only(201))
            .json(json!({"network": {"name": "n-ext", "router:external": true}})),
        row(N, M::POST, "/v2.0/networks", admin_only(201))
            .json(json!({"network": {"name": "n-default", "is_default": true}})),
        row(N, M::GET, "/v2.0/networks/{net}", read(200)),
        row(N, M::PUT, "/v2.0/networks/{net}", write(200)).json(json!({"network": {"name": "n2"}})),
        row(N, M::PUT, "/v2.0/networks/{net_spare}", admin_on_resource(200))
            .json(json!({"network": {"shared": true}})),
        row(N, M::PUT, "/v2.0/networks/{net}", admin_on_resource(200))
            .json(json!({"network": {"is_default": false}})),
        row(N, M::DELETE, "/v2.0/networks/{net_del}", write(204)),
        // subnet.py: get reader (or shared/external); create on the network owner's network;
        // update/delete the subnet's or network's owner member.
        row(N, M::GET, "/v2.0/subnets", any_user(200)),
        row(N, M::POST, "/v2.0/subnets", write(201))
            .json(json!({"subnet": {"network_id": "{net}", "cidr": "{cidr}", "ip_version": 4}})),
        row(N, M::GET, "/v2.0/subnets/{subnet}", read(200)),
        row(N, M::PUT, "/v2.0/subnets/{subnet}", write(200)).json(json!({"subnet": {"name": "s2"}})),
        row(N, M::DELETE, "/v2.0/subnets/{subnet_del}", write(204)),
        // port.py: create on the network owner's network (member); binding:host_id admin.
        row(N, M::GET, "/v2.0/ports", any_user(200)),
        row(N, M::POST, "/v2.0/ports", write(201)).json(json!({"port": {"network_id": "{net}"}})),
        row(N, M::POST, "/v2.0/ports", admin_on_resource(201))
            .json(json!({"port": {"network_id": "{net}", "binding:host_id": "h1"}})),
        row(N, M::GET, "/v2.0/ports/{port}", read(200)),
        row(N, M::PUT, "/v2.0/ports/{port}", write(200)).json(json!({"port": {"name": "p2"}})),
        row(N, M::PUT, "/v2.0/ports/{port}", admin_on_resource(200))
            .json(json!({"port": {"binding:host_id": "h1"}})),
        row(N, M::DELETE, "/v2.0/ports/{port_del}", write(204)),
        // router.py: admin_or_project_member (reader reads); enable_snat admin.
        row(N, M::GET, "/v2.0/routers", any_user(200)),
        row(N, M::POST, "/v2.0/routers", create(201)).json(json!({"router": {"name": "r-new"}})),
        row(N, M::POST, "/v2.0/routers", admin_only(201)).json(
            json!({"router": {"name": "r-snat", "external_gateway_info": {"network_id": "{ext_net}", "enable_snat": false}}}),
        ),
        row(N, M::GET, "/v2.0/routers/{router}", read(200)),
        row(N, M::PUT, "/v2.0/routers/{router}", write(200)).json(json!({"router": {"name": "r2"}})),
        row(N, M::DELETE, "/v2.0/routers/{router_del}", write(204)),
        row(N, M::PUT, "/v2.0/routers/{router}/add_router_interface", write(200))
            .json(json!({"subnet_id": "{subnet_if}"})),
        row(N, M::PUT, "/v2.0/routers/{router}/remove_router_interface", write(200))
            .json(json!({"subnet_id": "{subnet_if}"})),
        // floatingip.py: admin_or_project_member; a chosen address admin (project manager).
        row(N, M::GET, "/v2.0/floatingips", any_user(200)),
        row(N, M::POST, "/v2.0/floatingips", create(201))
            .json(json!({"floatingip": {"floating_network_id": "{ext_net}"}})),
        row(N, M::POST, "/v2.0/floatingips", admin_only(201)).json(
            json!({"floatingip": {"floating_network_id": "{ext_net}", "floating_ip_address": "{fip_addr}"}}),
        ),
        row(N, M::GET, "/v2.0/floatingips/{fip}", read(200)),
        row(N, M::PUT, "/v2.0/floatingips/{fip}", write(200))
            .json(json!({"floatingip": {"description": "x"}})),
        row(N, M::DELETE, "/v2.0/floatingips/{fip_del}", write(204)),
        // security_group.py: admin_or_project_member (reader reads); rules the group owner's.
        row(N, M::GET, "/v2.0/security-groups", any_user(200)),
        row(N, M::POST, "/v2.0/security-groups", create(201))
            .json(json!({"security_group": {"name": "sg-new"}})),
        row(N, M::GET, "/v2.0/security-groups/{sg}", read(200)),
        row(N, M::PUT, "/v2.0/security-groups/{sg}", write(200))
            .json(json!({"security_group": {"description": "x"}})),
        row(N, M::DELETE, "/v2.0/security-groups/{sg_del}", write(204)),
        row(N, M::GET, "/v2.0/security-group-rules", any_user(200)),
        row(N, M::POST, "/v2.0/security-group-rules", write(201)).json(
            json!({"security_group_rule": {"security_group_id": "{sg}", "direction": "ingress",
                   "protocol": "tcp", "remote_ip_prefix": "{rule_prefix}"}}),
        ),
        row(N, M::GET, "/v2.0/security-group-rules/{rule}", read(200)),
        row(N, M::DELETE, "/v2.0/security-group-rules/{rule_del}", write(204)),
        // quotas.py and quotasv2: one's own project unchecked, another's get_quota (admin or
        // project manager); update/delete admin.
        row(N, M::GET, "/v2.0/quotas", admin_only(200)),
        row(N, M::GET, "/v2.0/quotas/{demo_pid}", project_read(200)),
        row(N, M::PUT, "/v2.0/quotas/{demo_pid}", admin_only(200))
            .json(json!({"quota": {"network": 50}})),
        row(N, M::DELETE, "/v2.0/quotas/{demo_pid}", admin_only(204)),
        row(N, M::GET, "/v2.0/quotas/{demo_pid}/default", project_read(200)),
        row(N, M::GET, "/v2.0/quotas/{demo_pid}/details.json", project_read(200)),
        row(N, M::GET, "/v2.0/quotas/{demo_pid}/details", project_read(200)),
    ]
}

fn volume_rows() -> Vec<Row> {
    use Method as M;
    use Svc::Volume as V;
    vec![
        // ===== Cinder (cinder/policies); every caller names its own project in the URL =====
        row(V, M::GET, "/", public(300)),
        row(V, M::GET, "/v3", public(200)),
        row(V, M::GET, "/v3/", public(200)),
        // volumes.py: get/get_all reader, create/update/delete member.
        row(V, M::GET, "/v3/{me}/volumes", any_user(200)),
        row(V, M::GET, "/v3/{me}/volumes/detail", any_user(200)),
        row(V, M::POST, "/v3/{me}/volumes", create(202))
            .json(json!({"volume": {"size": 1, "name": "v-new"}})),
        row(V, M::GET, "/v3/{me}/volumes/{vol}", read(200)),
        row(V, M::PUT, "/v3/{me}/volumes/{vol}", write(200))
            .json(json!({"volume": {"name": "v2"}})),
        row(V, M::DELETE, "/v3/{me}/volumes/{vol_del}", write(202)),
        // volume_actions.py: extend, upload_image, set_bootable (volume:update) member;
        // reset_status admin.
        row(V, M::POST, "/v3/{me}/volumes/{vol_act}/action", write(200))
            .json(json!({"os-set_bootable": {"bootable": true}})),
        row(V, M::POST, "/v3/{me}/volumes/{vol_act}/action", WRITE_PASS)
            .json(json!({"os-extend": {"new_size": 2}})),
        row(V, M::POST, "/v3/{me}/volumes/{vol_act}/action", WRITE_PASS)
            .json(json!({"os-volume_upload_image": {"image_name": "from-volume"}})),
        row(
            V,
            M::POST,
            "/v3/{me}/volumes/{vol_act}/action",
            admin_on_resource(202),
        )
        .json(json!({"os-reset_status": {"status": "available"}})),
        // volume_metadata.py: get reader, create/update/delete member.
        row(V, M::GET, "/v3/{me}/volumes/{vol}/metadata", read(200)),
        row(V, M::POST, "/v3/{me}/volumes/{vol}/metadata", write(200))
            .json(json!({"metadata": {"a": "1"}})),
        row(V, M::PUT, "/v3/{me}/volumes/{vol}/metadata", write(200))
            .json(json!({"metadata": {"k": "v", "km": "1", "ka": "1"}})),
        row(
            V,
            M::GET,
            "/v3/{me}/volumes/{vol}/metadata/{meta}",
            read(200),
        ),
        row(
            V,
            M::PUT,
            "/v3/{me}/volumes/{vol}/metadata/{meta}",
            write(200),
        )
        .json(json!({"meta": {"k": "v2"}})),
        row(
            V,
            M::DELETE,
            "/v3/{me}/volumes/{vol}/metadata/{meta_del}",
            write(200),
        ),
        // snapshots.py: get/get_all reader, create/update/delete member.
        row(V, M::GET, "/v3/{me}/snapshots", any_user(200)),
        row(V, M::GET, "/v3/{me}/snapshots/detail", any_user(200)),
        row(V, M::POST, "/v3/{me}/snapshots", write(202))
            .json(json!({"snapshot": {"volume_id": "{vol_snap}", "name": "sn"}})),
        row(V, M::GET, "/v3/{me}/snapshots/{snap}", read(200)),
        row(V, M::PUT, "/v3/{me}/snapshots/{snap}", write(200))
            .json(json!({"snapshot": {"name": "s2"}})),
        row(V, M::DELETE, "/v3/{me}/snapshots/{snap_del}", write(202)),
        // volume_type.py: get/get_all reader.
        row(V, M::GET, "/v3/{me}/types", any_user(200)),
        row(V, M::GET, "/v3/{me}/types/default", any_user(200)),
        row(V, M::GET, "/v3/{me}/types/{vtype}", any_user(200)),
        // quotas.py: show (also of the defaults) reader of the named project; update/delete
        // admin.
        row(
            V,
            M::GET,
            "/v3/{me}/os-quota-sets/{demo_pid}",
            project_read(200),
        ),
        row(
            V,
            M::GET,
            "/v3/{me}/os-quota-sets/{demo_pid}/defaults",
            project_read(200),
        ),
        row(
            V,
            M::PUT,
            "/v3/{me}/os-quota-sets/{demo_pid}",
            admin_only(200),
        )
        .json(json!({"quota_set": {"volumes": 41}})),
        row(
            V,
            M::DELETE,
            "/v3/{me}/os-quota-sets/{demo_pid}",
            admin_only(200),
        ),
        // limits.py, availability zones, extensions: any token.
        row(V, M::GET, "/v3/{me}/limits", any_user(200)),
        row(V, M::GET, "/v3/{me}/os-availability-zone", any_user(200)),
        row(V, M::GET, "/v3/{me}/extensions", any_user(200)),
    ]
}

fn matches(w: W, got: u16) -> bool {
    match w {
        W::Is(n) => n == got,
        W::Pass => !matches!(got, 401 | 403 | 404) && got < 500,
    }
}

/// A path as a route template: no query, every `{…}` the same.
fn norm(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let mut out = String::new();
    let mut depth = false;
    for ch in path.chars() {
        match ch {
            '{' => {
                depth = true;
                out.push_str("{}");
            }
            '}' => depth = false,
            c if !depth => out.push(c),
            _ => {}
        }
    }
    out
}

/// Runs one row as `who`; the status and (the start of) the answer.
async fn run(c: &Cloud, r: &Row, who: Who, path: &str) -> (u16, String) {
    let path = c.fx.resolve(who, path);
    let mut req = c
        .http
        .request(r.method.clone(), format!("{}{path}", c.base(r.svc)));
    if let Some(t) = c.tokens.get(&who).filter(|_| who != Who::Anon) {
        req = req.header("x-auth-token", t);
    }
    if let Some(s) = r.subject {
        req = req.header("x-subject-token", c.fx.resolve(who, s));
    }
    if let Some(b) = &r.body {
        let text = c.fx.resolve(who, &b.to_string());
        req = req
            .header("content-type", r.content_type.unwrap_or("application/json"))
            .body(text);
    }
    if let Some(b) = &r.raw {
        req = req
            .header(
                "content-type",
                r.content_type.unwrap_or("application/octet-stream"),
            )
            .body(b.clone());
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let text: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    (status, text)
}

#[tokio::test]
async fn every_route_answers_each_role_as_upstream_policies_do() {
    let c = cloud().await;
    let mut wrong = Vec::new();
    for r in table() {
        for (i, who) in WHO.iter().enumerate() {
            let (got, answer) = run(&c, &r, *who, &r.path).await;
            if !matches(r.want[i], got) {
                let body = r.body.as_ref().map(Value::to_string).unwrap_or_default();
                wrong.push(format!(
                    "{:?} {} {} {body} as {who:?}: got {got}, want {:?} ({answer})",
                    r.svc, r.method, r.path, r.want[i]
                ));
            }
        }
    }
    // The compute API also answers under /v2.1/{project_id}: the same reads, the same answers.
    for r in table() {
        let Some(rest) = r.path.strip_prefix("/v2.1/").filter(|r| !r.is_empty()) else {
            continue;
        };
        if r.svc != Svc::Compute || r.method != Method::GET {
            continue;
        }
        let path = format!("/v2.1/{{me}}/{rest}");
        for (i, who) in WHO.iter().enumerate() {
            let (got, answer) = run(&c, &r, *who, &path).await;
            if !matches(r.want[i], got) {
                wrong.push(format!(
                    "Compute GET {path} as {who:?}: got {got}, want {:?} ({answer})",
                    r.want[i]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} answers differ from the role table:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Every (method, route) each router serves has a row, and every row names a served route.
#[tokio::test]
async fn every_route_has_an_entry() {
    let cp = common::start().await;
    let http = reqwest::Client::new();
    let rows: BTreeSet<(String, String, String)> = table()
        .iter()
        .map(|r| (format!("{:?}", r.svc), r.method.to_string(), norm(&r.path)))
        .collect();
    let mut served = BTreeSet::new();
    let mut missing = Vec::new();
    for (svc, base, paths) in [
        (
            Svc::Identity,
            &cp.identity,
            onestack_api::identity::route_paths(),
        ),
        (
            Svc::Compute,
            &cp.compute,
            onestack_api::compute::route_paths(),
        ),
        (Svc::Image, &cp.image, onestack_api::image::route_paths()),
        (
            Svc::Network,
            &cp.network,
            onestack_api::network::route_paths(),
        ),
        (Svc::Volume, &cp.volume, onestack_api::volume::route_paths()),
    ] {
        for template in paths {
            // Which methods the route has: any answer but 405. Internal routes are asked with
            // the agent's secret (their credential check answers before the method is looked at).
            let concrete = template
                .split('/')
                .map(|s| if s.starts_with('{') { "zz-probe" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            // The routes under /v2.1/{project_id} are those under /v2.1 (one router, nested twice).
            let listed = match template.strip_prefix("/v2.1/{project_id}") {
                Some(rest) if svc == Svc::Compute => format!("/v2.1{rest}"),
                _ => template.clone(),
            };
            for m in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ] {
                let mut req = http.request(m.clone(), format!("{base}{concrete}"));
                if template.starts_with("/internal/") {
                    req = req.header(AGENT_TOKEN_HEADER, AGENT_TOKEN);
                }
                let st = req.send().await.expect("probe").status().as_u16();
                if st == 405 {
                    continue;
                }
                let key = (format!("{svc:?}"), m.to_string(), norm(&listed));
                if !rows.contains(&key) {
                    missing.push(format!("{svc:?} {m} {template} (answered {st})"));
                }
                served.insert((key.0, norm(&listed)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes without a row in the role table:\n{}",
        missing.join("\n")
    );
    let unknown: Vec<String> = rows
        .iter()
        .filter(|(svc, _, path)| !served.contains(&(svc.clone(), path.clone())))
        .map(|(svc, m, path)| format!("{svc} {m} {path}"))
        .collect();
    assert!(unknown.is_empty(), "rows for no route: {unknown:?}");
}

/// Host and provider attributes are the admin's (Nova's extended_server_attributes, Neutron's
/// get_port:binding:* and get_network:provider:*, get_router:distributed/ha, Cinder's
/// volume_extension:volume_host_attribute): the owning project's member and reader see the
/// resource without them.
#[tokio::test]
async fn host_attributes_are_shown_to_the_admin_only() {
    let c = cloud().await;
    let checks: [(Svc, &str, &str, &[&str]); 5] = [
        (
            Svc::Compute,
            "/v2.1/servers/{server}",
            "server",
            &[
                "OS-EXT-SRV-ATTR:host",
                "OS-EXT-SRV-ATTR:hypervisor_hostname",
                "OS-EXT-SRV-ATTR:instance_name",
            ],
        ),
        (
            Svc::Network,
            "/v2.0/ports/{port}",
            "port",
            &["binding:host_id", "binding:vif_type", "binding:profile"],
        ),
        (
            Svc::Network,
            "/v2.0/networks/{net}",
            "network",
            &["provider:network_type", "provider:segmentation_id"],
        ),
        (
            Svc::Network,
            "/v2.0/routers/{router}",
            "router",
            &["distributed", "ha"],
        ),
        (
            Svc::Volume,
            "/v3/{me}/volumes/{vol}",
            "volume",
            &["os-vol-host-attr:host"],
        ),
    ];
    for (svc, path, key, attrs) in checks {
        for who in [Who::Reader, Who::Member, Who::Admin] {
            let p = c.fx.resolve(who, path);
            let (st, v) = c
                .call(
                    svc,
                    Method::GET,
                    &p,
                    c.tokens.get(&who).map(String::as_str),
                    None,
                )
                .await;
            assert_eq!(st, 200, "{who:?} {p}: {v}");
            for a in attrs {
                assert_eq!(
                    v[key].get(*a).is_some(),
                    who == Who::Admin,
                    "{a} of {p} as {who:?}: {v}"
                );
            }
        }
    }
}
