//! The cross-project matrix: every request field that names another resource, sent by a member of
//! one project with the id (or name) of another project's resource, is refused — and nothing in
//! either project changed. The entries are generated from one table of reference fields; a field
//! of the API code that looks like a reference (`…_id`, `…Ref`, `…Id`, `…_uuid`, `…_volid`) and
//! has no entry nor a stated reason to have none fails `every_reference_field_has_an_entry`.
//!
//! Path segments naming another project's resource (`GET /servers/{id}` …) are the "member of
//! another project" column of the role table (`policy.rs`); here the attack is the id in a body.

mod common;

use common::{ADMIN_PW, DEMO_PW};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Reference fields a member can send, each with the requests that carry it (`entries`).
const REFERENCE_FIELDS: &[&str] = &[
    "network_id",
    "subnet_id",
    "port_id",
    "device_id",
    "security_group_id",
    "remote_group_id",
    "floating_network_id",
    "router_id",
    "imageRef",
    "flavorRef",
    "volumeId",
    "volume_id",
    "snapshot_id",
    "source_volid",
    "image_id",
    "member_id",
    "server_id",
];

/// Fields the scan finds that a member cannot use to name another project's resource, and why.
const NOT_MEMBER_REFERENCES: &[(&str, &str)] = &[
    (
        "project_id",
        "owner of a new resource: admin only (tests/network.rs, identity.rs)",
    ),
    ("tenant_id", "as project_id"),
    ("default_project_id", "identity: admin only"),
    ("domain_id", "identity: admin only"),
    ("parent_id", "identity: admin only"),
    (
        "user_id",
        "in answers; keypairs of another user: admin only",
    ),
    ("role_id", "identity: admin only"),
    ("region_id", "identity catalog: admin only"),
    ("parent_region_id", "identity catalog: admin only"),
    ("service_id", "identity catalog: admin only"),
    ("binding:host_id", "a host, admin only"),
    ("create_port:binding:host_id", "a policy rule name"),
    ("update_port:binding:host_id", "a policy rule name"),
    ("provider:segmentation_id", "admin only, and refused"),
    ("segment_id", "refused: no routed networks"),
    ("subnetpool_id", "refused: no subnet pools"),
    ("qos_policy_id", "accepted and ignored: no QoS"),
    ("qos_specs_id", "in answers only"),
    ("consistencygroup_id", "in answers only"),
    ("remote_address_group_id", "in answers only"),
    (
        "os-extended-snapshot-attributes:project_id",
        "in answers only",
    ),
    ("os-vol-mig-status-attr:name_id", "in answers only"),
    ("os-vol-tenant-attr:tenant_id", "in answers only"),
    ("attachment_id", "in answers only"),
    ("audit_ids", "token payload"),
    (
        "flavor_id",
        "in answers (router flavors; server's embedded flavor)",
    ),
    ("hostId", "in answers only"),
    ("instance_id", "in answers only (usage)"),
    ("instance_uuid", "in answers only (attachments)"),
    ("kernel_id", "an image property the image's owner sets"),
    ("ramdisk_id", "an image property the image's owner sets"),
    ("reservation_id", "in answers only"),
    ("return_reservation_id", "accepted, names nothing"),
    ("serverId", "in answers only (attachments)"),
    ("snapshot_image_id", "in answers only"),
    ("subnet_ids", "in answers only (router interface info)"),
    ("vif_id", "in answers only"),
];

struct Cloud {
    cp: common::ControlPlane,
    http: reqwest::Client,
}

/// A member's token and ids, and the resources of its project the matrix uses.
#[derive(Default)]
struct Tenant {
    token: String,
    project: String,
    user: String,
    ids: BTreeMap<&'static str, String>,
}

impl Tenant {
    fn id(&self, key: &str) -> &str {
        self.ids.get(key).unwrap_or_else(|| panic!("no {key} made"))
    }
}

impl Cloud {
    async fn call(
        &self,
        method: Method,
        url: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        // Glance takes patches in its own media type.
        let media = if method == Method::PATCH {
            "application/openstack-images-v2.1-json-patch"
        } else {
            "application/json"
        };
        let mut req = self.http.request(method, url).header("x-auth-token", token);
        if let Some(b) = body {
            req = req.header("content-type", media).body(b.to_string());
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A service's base URL by name.
    fn base(&self, service: &str, t: &Tenant) -> String {
        match service {
            "network" => self.cp.network.clone(),
            "compute" => format!("{}/v2.1", self.cp.compute),
            "volume" => format!("{}/v3/{}", self.cp.volume, t.project),
            "image" => self.cp.image.clone(),
            "identity" => self.cp.identity.clone(),
            other => panic!("no service {other}"),
        }
    }

    async fn ok(
        &self,
        t: &Tenant,
        service: &str,
        method: Method,
        path: &str,
        body: Value,
    ) -> Value {
        let url = format!("{}{path}", self.base(service, t));
        let (st, v) = self.call(method, &url, &t.token, Some(&body)).await;
        assert!(st.is_success(), "{path}: {st} {v}");
        v
    }

    async fn login(&self, user: &str, pw: &str, project: &str) -> Tenant {
        let (token, v) = common::login_to(&self.http, &self.cp.identity, user, pw, project).await;
        Tenant {
            token,
            project: v["token"]["project"]["id"]
                .as_str()
                .expect("project")
                .into(),
            user: v["token"]["user"]["id"].as_str().expect("user").into(),
            ids: BTreeMap::new(),
        }
    }

    async fn new_member(&self, admin: &Tenant, name: &str) -> Tenant {
        common::new_project_user(
            &self.http,
            &self.cp.identity,
            &admin.token,
            name,
            "pw-of-the-attacker",
            "member",
        )
        .await;
        self.login(name, "pw-of-the-attacker", name).await
    }

    /// One of everything in `t`'s project, on its own network `cidr`.
    async fn furnish(&self, t: &mut Tenant, cidr: &str, external: &str, image: &str) {
        let n = self
            .ok(
                t,
                "network",
                Method::POST,
                "/v2.0/networks",
                json!({"network": {"name": "n"}}),
            )
            .await;
        let net = n["network"]["id"].as_str().expect("net").to_string();
        let s = self
            .ok(
                t,
                "network",
                Method::POST,
                "/v2.0/subnets",
                json!({"subnet": {"network_id": net, "cidr": cidr, "ip_version": 4}}),
            )
            .await;
        let subnet = s["subnet"]["id"].as_str().expect("subnet").to_string();
        let g = self
            .ok(
                t,
                "network",
                Method::POST,
                "/v2.0/security-groups",
                json!({"security_group": {"name": "g"}}),
            )
            .await;
        let sg = g["security_group"]["id"].as_str().expect("sg").to_string();
        let p = self
            .ok(
                t,
                "network",
                Method::POST,
                "/v2.0/ports",
                json!({"port": {"network_id": net, "name": "spare"}}),
            )
            .await;
        let port = p["port"]["id"].as_str().expect("port").to_string();
        let r = self
            .ok(
                t,
                "network",
                Method::POST,
                "/v2.0/routers",
                json!({"router": {"name": "r", "external_gateway_info": {"network_id": external}}}),
            )
            .await;
        let router = r["router"]["id"].as_str().expect("router").to_string();
        self.ok(
            t,
            "network",
            Method::PUT,
            &format!("/v2.0/routers/{router}/add_router_interface"),
            json!({"subnet_id": subnet}),
        )
        .await;
        let f = self
            .ok(
                t,
                "network",
                Method::POST,
                "/v2.0/floatingips",
                json!({"floatingip": {"floating_network_id": external}}),
            )
            .await;
        let fip = f["floatingip"]["id"].as_str().expect("fip").to_string();
        let sv = self
            .ok(t, "compute", Method::POST, "/servers",
                json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1", "networks": [{"uuid": net}]}}))
            .await;
        let server = sv["server"]["id"].as_str().expect("server").to_string();
        let v = self
            .ok(
                t,
                "volume",
                Method::POST,
                "/volumes",
                json!({"volume": {"size": 1, "name": "v"}}),
            )
            .await;
        let volume = v["volume"]["id"].as_str().expect("volume").to_string();
        self.wait_volume(t, &volume).await;
        let sn = self
            .ok(
                t,
                "volume",
                Method::POST,
                "/snapshots",
                json!({"snapshot": {"volume_id": volume}}),
            )
            .await;
        let snapshot = sn["snapshot"]["id"].as_str().expect("snapshot").to_string();
        let private = common::raw_image(&self.http, &self.cp.image, &t.token, 512, false).await;
        let k = self
            .ok(
                t,
                "compute",
                Method::POST,
                "/os-keypairs",
                json!({"keypair": {"name": format!("key-{}", t.project)}}),
            )
            .await;
        let key = k["keypair"]["name"].as_str().expect("key").to_string();
        for (name, id) in [
            ("network", net),
            ("subnet", subnet),
            ("security_group", sg),
            ("port", port),
            ("router", router),
            ("floatingip", fip),
            ("server", server),
            ("volume", volume),
            ("snapshot", snapshot),
            ("image", private),
            ("keypair", key),
        ] {
            t.ids.insert(name, id);
        }
    }

    async fn wait_volume(&self, t: &Tenant, id: &str) {
        for _ in 0..200 {
            let url = format!("{}/volumes/{id}", self.base("volume", t));
            let (_, v) = self.call(Method::GET, &url, &t.token, None).await;
            if v["volume"]["status"] == "available" {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("volume {id} never became available");
    }

    /// Everything both projects hold, as the admin sees it: what must not change.
    async fn state(&self, admin: &Tenant, victim: &Tenant) -> Value {
        let mut out = serde_json::Map::new();
        for path in [
            "/v2.0/networks",
            "/v2.0/subnets",
            "/v2.0/ports",
            "/v2.0/routers",
            "/v2.0/floatingips",
            "/v2.0/security-groups",
            "/v2.0/security-group-rules",
        ] {
            let (_, v) = self
                .call(
                    Method::GET,
                    &format!("{}{path}", self.cp.network),
                    &admin.token,
                    None,
                )
                .await;
            out.insert(path.into(), v);
        }
        for (service, path) in [
            ("compute", "/servers/detail?all_tenants=1"),
            ("volume", "/volumes/detail?all_tenants=1"),
            ("volume", "/snapshots/detail?all_tenants=1"),
            ("image", "/v2/images"),
        ] {
            let (_, v) = self
                .call(
                    Method::GET,
                    &format!("{}{path}", self.base(service, admin)),
                    &admin.token,
                    None,
                )
                .await;
            out.insert(path.into(), v);
        }
        let image = victim.id("image");
        let (_, v) = self
            .call(
                Method::GET,
                &format!("{}/v2/images/{image}/members", self.cp.image),
                &admin.token,
                None,
            )
            .await;
        out.insert("members".into(), v);
        for server in [victim.id("server")] {
            let url = format!(
                "{}/servers/{server}/os-volume_attachments",
                self.base("compute", admin)
            );
            let (_, v) = self.call(Method::GET, &url, &admin.token, None).await;
            out.insert(format!("attachments-{server}"), v);
        }
        let (_, v) = self
            .call(
                Method::GET,
                &format!("{}/v3/role_assignments", self.cp.identity),
                &admin.token,
                None,
            )
            .await;
        out.insert("role_assignments".into(), v);
        Value::Object(out)
    }
}

/// One attack: `field` of `attacker`'s otherwise valid request names `victim`'s resource.
struct Entry {
    field: &'static str,
    service: &'static str,
    method: Method,
    path: String,
    body: Value,
}

/// The matrix, generated from each request's body with its reference field pointed at the
/// victim's resource. `a`: the attacker's ids, `v`: the victim's.
fn entries(a: &Tenant, v: &Tenant, external: &str) -> Vec<Entry> {
    let net = |field, body: Value| Entry {
        field,
        service: "network",
        method: Method::POST,
        path: String::new(),
        body,
    };
    let mut out = vec![
        Entry {
            path: "/v2.0/ports".into(),
            ..net(
                "network_id",
                json!({"port": {"network_id": v.id("network")}}),
            )
        },
        Entry {
            path: "/v2.0/ports".into(),
            ..net(
                "subnet_id",
                json!({"port": {"network_id": a.id("network"), "fixed_ips": [{"subnet_id": v.id("subnet")}]}}),
            )
        },
        Entry {
            path: "/v2.0/ports".into(),
            ..net(
                "security_group_id",
                json!({"port": {"network_id": a.id("network"), "security_groups": [v.id("security_group")]}}),
            )
        },
        Entry {
            path: "/v2.0/ports".into(),
            ..net(
                "device_id",
                json!({"port": {"network_id": a.id("network"), "device_id": v.id("server"), "device_owner": "compute:nova"}}),
            )
        },
        Entry {
            path: "/v2.0/ports".into(),
            ..net(
                "device_id",
                json!({"port": {"network_id": a.id("network"), "device_id": v.id("router"), "device_owner": "network:router_interface"}}),
            )
        },
        Entry {
            method: Method::PUT,
            path: format!("/v2.0/ports/{}", a.id("port")),
            ..net(
                "security_group_id",
                json!({"port": {"security_groups": [v.id("security_group")]}}),
            )
        },
        Entry {
            method: Method::PUT,
            path: format!("/v2.0/ports/{}", a.id("port")),
            ..net(
                "device_id",
                json!({"port": {"device_id": v.id("server"), "device_owner": "compute:nova"}}),
            )
        },
        Entry {
            path: "/v2.0/subnets".into(),
            ..net(
                "network_id",
                json!({"subnet": {"network_id": v.id("network"), "cidr": "198.18.99.0/24", "ip_version": 4}}),
            )
        },
        Entry {
            path: "/v2.0/routers".into(),
            ..net(
                "network_id",
                json!({"router": {"name": "x", "external_gateway_info": {"network_id": v.id("network")}}}),
            )
        },
        Entry {
            method: Method::PUT,
            path: format!("/v2.0/routers/{}", a.id("router")),
            ..net(
                "network_id",
                json!({"router": {"external_gateway_info": {"network_id": v.id("network")}}}),
            )
        },
        Entry {
            method: Method::PUT,
            path: format!("/v2.0/routers/{}/add_router_interface", a.id("router")),
            ..net("subnet_id", json!({"subnet_id": v.id("subnet")}))
        },
        Entry {
            method: Method::PUT,
            path: format!("/v2.0/routers/{}/add_router_interface", a.id("router")),
            ..net("port_id", json!({"port_id": v.id("port")}))
        },
        Entry {
            method: Method::PUT,
            path: format!("/v2.0/routers/{}/remove_router_interface", a.id("router")),
            ..net("subnet_id", json!({"subnet_id": v.id("subnet")}))
        },
        Entry {
            method: Method::PUT,
            path: format!("/v2.0/routers/{}/remove_router_interface", v.id("router")),
            ..net("router_id", json!({"subnet_id": v.id("subnet")}))
        },
        Entry {
            path: "/v2.0/floatingips".into(),
            ..net(
                "port_id",
                json!({"floatingip": {"floating_network_id": external, "port_id": v.id("port")}}),
            )
        },
        Entry {
            path: "/v2.0/floatingips".into(),
            ..net(
                "floating_network_id",
                json!({"floatingip": {"floating_network_id": v.id("network")}}),
            )
        },
        Entry {
            method: Method::PUT,
            path: format!("/v2.0/floatingips/{}", a.id("floatingip")),
            ..net("port_id", json!({"floatingip": {"port_id": v.id("port")}}))
        },
        Entry {
            method: Method::PUT,
            path: format!("/v2.0/floatingips/{}", v.id("floatingip")),
            ..net("port_id", json!({"floatingip": {"port_id": a.id("port")}}))
        },
        Entry {
            path: "/v2.0/security-group-rules".into(),
            ..net(
                "security_group_id",
                json!({"security_group_rule": {"security_group_id": v.id("security_group"), "direction": "ingress"}}),
            )
        },
        Entry {
            path: "/v2.0/security-group-rules".into(),
            ..net(
                "remote_group_id",
                json!({"security_group_rule": {"security_group_id": a.id("security_group"), "direction": "ingress", "remote_group_id": v.id("security_group")}}),
            )
        },
    ];
    let server = |image: &str, extra: Value| {
        let mut s = json!({"name": "x", "imageRef": image, "flavorRef": "1", "networks": [{"uuid": a.id("network")}]});
        if let (Some(o), Some(e)) = (s.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        json!({"server": s})
    };
    let nova = |field, path: String, body| Entry {
        field,
        service: "compute",
        method: Method::POST,
        path,
        body,
    };
    let a_image = a.id("image");
    out.extend([
        nova("imageRef", "/servers".into(), server(v.id("image"), json!({}))),
        nova("network_id", "/servers".into(), server(a_image, json!({"networks": [{"uuid": v.id("network")}]}))),
        nova("port_id", "/servers".into(), server(a_image, json!({"networks": [{"port": v.id("port")}]}))),
        nova("security_group_id", "/servers".into(), server(a_image, json!({"security_groups": [{"name": v.id("security_group")}]}))),
        nova("security_group_id", "/servers".into(), server(a_image, json!({"security_groups": [{"name": "g"}, {"name": v.id("security_group")}]}))),
        nova("imageRef", "/servers".into(), server(a_image, json!({"key_name": v.id("keypair")}))),
        nova("volume_id", "/servers".into(), server("", json!({"block_device_mapping_v2": [{"uuid": v.id("volume"), "source_type": "volume", "destination_type": "volume", "boot_index": 0}]}))),
        nova("snapshot_id", "/servers".into(), server("", json!({"block_device_mapping_v2": [{"uuid": v.id("snapshot"), "source_type": "snapshot", "destination_type": "volume", "boot_index": 0, "volume_size": 1}]}))),
        nova("image_id", "/servers".into(), server("", json!({"block_device_mapping_v2": [{"uuid": v.id("image"), "source_type": "image", "destination_type": "volume", "boot_index": 0, "volume_size": 1}]}))),
        nova("volumeId", format!("/servers/{}/os-volume_attachments", a.id("server")), json!({"volumeAttachment": {"volumeId": v.id("volume")}})),
        nova("server_id", format!("/servers/{}/os-volume_attachments", v.id("server")), json!({"volumeAttachment": {"volumeId": a.id("volume")}})),
        nova("security_group_id", format!("/servers/{}/action", a.id("server")), json!({"addSecurityGroup": {"name": v.id("security_group")}})),
        nova("imageRef", format!("/servers/{}/action", a.id("server")), json!({"rebuild": {"imageRef": v.id("image")}})),
        nova("server_id", format!("/servers/{}/action", v.id("server")), json!({"os-stop": null})),
    ]);
    let cinder = |field, path: &str, body| Entry {
        field,
        service: "volume",
        method: Method::POST,
        path: path.into(),
        body,
    };
    out.extend([
        cinder(
            "snapshot_id",
            "/volumes",
            json!({"volume": {"size": 1, "snapshot_id": v.id("snapshot")}}),
        ),
        cinder(
            "source_volid",
            "/volumes",
            json!({"volume": {"size": 1, "source_volid": v.id("volume")}}),
        ),
        cinder(
            "imageRef",
            "/volumes",
            json!({"volume": {"size": 1, "imageRef": v.id("image")}}),
        ),
        cinder(
            "image_id",
            "/volumes",
            json!({"volume": {"size": 1, "image_id": v.id("image")}}),
        ),
        cinder(
            "volume_id",
            "/snapshots",
            json!({"snapshot": {"volume_id": v.id("volume")}}),
        ),
        cinder(
            "volume_id",
            &format!("/volumes/{}/action", v.id("volume")),
            json!({"os-extend": {"new_size": 2}}),
        ),
    ]);
    out.extend([
        Entry {
            field: "member_id",
            service: "image",
            method: Method::POST,
            path: format!("/v2/images/{}/members", v.id("image")),
            body: json!({"member": a.project}),
        },
        Entry {
            field: "image_id",
            service: "image",
            method: Method::PATCH,
            path: format!("/v2/images/{}", v.id("image")),
            body: json!([{"op": "replace", "path": "/name", "value": "mine"}]),
        },
        Entry {
            field: "flavorRef",
            service: "compute",
            method: Method::POST,
            path: "/servers".into(),
            body: server(a_image, json!({"flavorRef": "private-flavor"})),
        },
    ]);
    out
}

async fn cloud() -> (Cloud, Tenant, Tenant, Tenant, String) {
    let cp = common::start().await;
    cp.compute_service.attach_network(cp.net.clone());
    let c = Cloud {
        cp,
        http: reqwest::Client::new(),
    };
    let admin = c.login("admin", ADMIN_PW, "admin").await;
    common::register_host(&c.http, &c.cp.compute, "h1", 64, 65536, 1000).await;
    let ext = c
        .ok(
            &admin,
            "network",
            Method::POST,
            "/v2.0/networks",
            json!({"network": {"name": "public", "router:external": true}}),
        )
        .await;
    let external = ext["network"]["id"].as_str().expect("ext").to_string();
    c.ok(
        &admin,
        "network",
        Method::POST,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": external, "cidr": "198.18.90.0/24", "enable_dhcp": false}}),
    )
    .await;
    let image = common::raw_image(&c.http, &c.cp.image, &admin.token, 512, true).await;
    let mut victim = c.login("demo", DEMO_PW, "demo").await;
    c.furnish(&mut victim, "198.18.91.0/24", &external, &image)
        .await;
    let mut attacker = c.new_member(&admin, "mallory").await;
    c.furnish(&mut attacker, "198.18.92.0/24", &external, &image)
        .await;
    // A flavor only the victim's project may use.
    c.ok(&admin, "compute", Method::POST, "/flavors",
        json!({"flavor": {"name": "private", "id": "private-flavor", "ram": 64, "vcpus": 1, "disk": 0,
                          "os-flavor-access:is_public": false}}))
        .await;
    c.ok(
        &admin,
        "compute",
        Method::POST,
        "/flavors/private-flavor/action",
        json!({"addTenantAccess": {"tenant": victim.project}}),
    )
    .await;
    (c, admin, victim, attacker, external)
}

#[tokio::test]
async fn another_projects_ids_in_request_bodies_are_refused_and_change_nothing() {
    let (c, admin, victim, attacker, external) = cloud().await;
    let matrix = entries(&attacker, &victim, &external);
    let mut failures = Vec::new();
    for e in &matrix {
        let before = c.state(&admin, &victim).await;
        let url = format!("{}{}", c.base(e.service, &attacker), e.path);
        let (st, v) = c
            .call(e.method.clone(), &url, &attacker.token, Some(&e.body))
            .await;
        let refused = matches!(st.as_u16(), 400 | 403 | 404 | 409);
        let after = c.state(&admin, &victim).await;
        if !refused || before != after {
            failures.push(format!(
                "{} {} ({}): {st} {v}{}",
                e.method,
                e.path,
                e.field,
                if before != after {
                    " — and something changed"
                } else {
                    ""
                }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} attacks got through:\n{}",
        failures.len(),
        matrix.len(),
        failures.join("\n")
    );
    // Every reference field has at least one attack.
    let covered: BTreeSet<&str> = matrix.iter().map(|e| e.field).collect();
    let missing: Vec<&&str> = REFERENCE_FIELDS
        .iter()
        .filter(|f| !covered.contains(**f))
        .collect();
    assert!(
        missing.is_empty(),
        "reference fields without an attack: {missing:?}"
    );
    // The victim's own requests still work after it all.
    let (st, _) = c
        .call(
            Method::GET,
            &format!(
                "{}/servers/{}",
                c.base("compute", &victim),
                victim.id("server")
            ),
            &victim.token,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let _ = attacker.user;
}

/// Each field of the API code that looks like a reference has an attack or a reason.
#[test]
fn every_reference_field_has_an_entry() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pattern = regex::Regex::new(r#""([a-zA-Z][a-zA-Z_:.-]*(?:_id|_ids|Id|Ref|_uuid|_volid))""#)
        .expect("regex");
    let mut found = BTreeSet::new();
    for dir in ["onestack-api/src", "onestack-core/src"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read_dir") {
                let p = entry.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&p).expect("read");
                    for c in pattern.captures_iter(&text) {
                        found.insert(c[1].to_string());
                    }
                }
            }
        }
    }
    let known: BTreeSet<&str> = REFERENCE_FIELDS
        .iter()
        .copied()
        .chain(NOT_MEMBER_REFERENCES.iter().map(|(f, _)| *f))
        .collect();
    let unknown: Vec<&String> = found
        .iter()
        .filter(|f| !known.contains(f.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "fields that look like references to another resource, with no attack in the matrix \
         (REFERENCE_FIELDS) and no reason (NOT_MEMBER_REFERENCES): {unknown:?}"
    );
}
