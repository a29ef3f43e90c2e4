//! Network API integration tests: the real identity and network routers over a temporary SQLite
//! store, driven over HTTP as the clients drive them. Addresses are from 198.18.0.0/15 (no traffic
//! is sent anywhere: this is the control plane only).

mod common;

use common::{ADMIN_PW, DEMO_PW};
use onestack_core::network::NetworkService;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

struct Cloud {
    identity_url: String,
    url: String,
    http: reqwest::Client,
    net: Arc<NetworkService>,
    _dir: tempfile::TempDir,
}

async fn start() -> Cloud {
    let cp = common::start().await;
    Cloud {
        identity_url: cp.identity,
        url: cp.network,
        http: reqwest::Client::new(),
        net: cp.net,
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
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("x-auth-token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn ok(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Value,
        want: StatusCode,
    ) -> Value {
        let (st, v) = self.call(method, path, token, Some(body)).await;
        assert_eq!(st, want, "{path}: {v}");
        v
    }

    async fn network(&self, token: &str, body: Value) -> String {
        let v = self
            .ok(
                Method::POST,
                "/v2.0/networks",
                token,
                json!({"network": body}),
                StatusCode::CREATED,
            )
            .await;
        v["network"]["id"].as_str().expect("id").to_string()
    }

    async fn subnet(&self, token: &str, network: &str, cidr: &str, extra: Value) -> Value {
        let mut body = json!({"network_id": network, "cidr": cidr, "ip_version": 4});
        if let (Some(o), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        self.ok(
            Method::POST,
            "/v2.0/subnets",
            token,
            json!({"subnet": body}),
            StatusCode::CREATED,
        )
        .await["subnet"]
            .clone()
    }

    async fn port(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v2.0/ports",
            token,
            Some(json!({"port": body})),
        )
        .await
    }
}

fn neutron_type(v: &Value) -> &str {
    v["NeutronError"]["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn discovery_errors_and_bad_input() {
    let c = start().await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let (st, v) = c.call(Method::GET, "/", &demo, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["versions"][0]["id"], "v2.0");
    let (_, v) = c.call(Method::GET, "/v2.0/extensions", &demo, None).await;
    let aliases: Vec<&str> = v["extensions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["alias"].as_str())
        .collect();
    for a in [
        "security-group",
        "router",
        "external-net",
        "allowed-address-pairs",
        "port-security",
        "quotas",
    ] {
        assert!(aliases.contains(&a), "{a} missing");
    }
    // Not implemented, so not advertised.
    assert!(!aliases.contains(&"extraroute") && !aliases.contains(&"dns-integration"));
    let (st, v) = c
        .call(Method::GET, "/v2.0/extensions/qos", &demo, None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(v["NeutronError"]["message"].is_string());

    // Error bodies: typed, with the resource named.
    let (st, v) = c
        .call(Method::GET, "/v2.0/networks/nope", &demo, None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(neutron_type(&v), "NetworkNotFound");
    assert_eq!(v["NeutronError"]["detail"], "");
    let (st, _) = c
        .call(Method::GET, "/v2.0/networks", "bad-token", None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Malformed JSON, wrong types, unknown attributes, missing wrapper, oversize body.
    let resp = c
        .http
        .post(format!("{}/v2.0/networks", c.url))
        .header("x-auth-token", &demo)
        .header("content-type", "application/json")
        .body("{\"network\": {")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(neutron_type(&body), "HTTPBadRequest");
    for bad in [
        json!({"network": {"name": 5}}),
        json!({"network": {"admin_state_up": "maybe"}}),
        json!({"network": {"mtu": "big"}}),
        json!({"network": {"bogus": 1}}),
        json!({"net": {}}),
        json!([1, 2]),
    ] {
        let (st, v) = c
            .call(Method::POST, "/v2.0/networks", &demo, Some(bad.clone()))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let huge = json!({"network": {"name": "x".repeat(200_000)}});
    let (st, _) = c
        .call(Method::POST, "/v2.0/networks", &demo, Some(huge))
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing was created by any of that.
    let (_, v) = c.call(Method::GET, "/v2.0/networks", &demo, None).await;
    assert_eq!(v["networks"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn subnets_pools_overlaps_and_addresses() {
    let c = start().await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let n1 = c.network(&demo, json!({"name": "n1"})).await;
    let s1 = c.subnet(&demo, &n1, "198.18.20.0/28", json!({"dns_nameservers": ["198.18.0.53"], "host_routes": [{"destination": "198.18.30.0/24", "nexthop": "198.18.20.14"}]})).await;
    assert_eq!(s1["gateway_ip"], "198.18.20.1");
    assert_eq!(
        s1["allocation_pools"],
        json!([{"start": "198.18.20.2", "end": "198.18.20.14"}])
    );
    assert_eq!(s1["enable_dhcp"], true);
    let sid = s1["id"].as_str().expect("id").to_string();
    // The network shows its subnet; a DHCP port took the first pool address.
    let (_, v) = c
        .call(Method::GET, &format!("/v2.0/networks/{n1}"), &demo, None)
        .await;
    assert_eq!(v["network"]["subnets"], json!([sid]));
    let (_, v) = c
        .call(
            Method::GET,
            &format!("/v2.0/ports?network_id={n1}&device_owner=network:dhcp"),
            &demo,
            None,
        )
        .await;
    assert_eq!(v["ports"][0]["fixed_ips"][0]["ip_address"], "198.18.20.2");

    // Overlap inside one network is refused; the same CIDR in another network (or tenant) is fine.
    let (st, v) = c
        .call(
            Method::POST,
            "/v2.0/subnets",
            &demo,
            Some(json!({"subnet": {"network_id": n1, "cidr": "198.18.20.0/29", "ip_version": 4}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let n2 = c.network(&demo, json!({"name": "n2"})).await;
    c.subnet(&demo, &n2, "198.18.20.0/28", json!({})).await;
    let n3 = c.network(&admin, json!({"name": "admin-net"})).await;
    c.subnet(&admin, &n3, "198.18.20.0/28", json!({})).await;
    // Bad subnets.
    for (cidr, extra) in [
        ("198.18.21.5/24", json!({})),
        ("nonsense", json!({})),
        ("198.18.21.0/24", json!({"gateway_ip": "198.18.99.1"})),
        (
            "198.18.21.0/24",
            json!({"allocation_pools": [{"start": "198.18.21.1", "end": "198.18.21.9"}]}),
        ),
        ("198.18.21.0/24", json!({"ip_version": 6})),
        ("198.18.21.0/24", json!({"dns_nameservers": ["x"]})),
    ] {
        let mut body = json!({"network_id": n2, "cidr": cidr, "ip_version": 4});
        if let (Some(o), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let (st, v) = c
            .call(
                Method::POST,
                "/v2.0/subnets",
                &demo,
                Some(json!({"subnet": body})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{cidr} {extra}: {v}");
    }

    // A specific address once; twice is a conflict.
    let (st, p) = c
        .port(
            &demo,
            json!({"network_id": n1, "fixed_ips": [{"ip_address": "198.18.20.9"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    assert!(p["port"]["mac_address"]
        .as_str()
        .expect("mac")
        .starts_with("fa:16:3e:"));
    assert_eq!(p["port"]["tenant_id"], p["port"]["project_id"]);
    let (st, v) = c
        .port(
            &demo,
            json!({"network_id": n1, "fixed_ips": [{"ip_address": "198.18.20.9"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(neutron_type(&v), "IpAddressAlreadyAllocated");
    let (st, _) = c
        .port(
            &demo,
            json!({"network_id": n1, "fixed_ips": [{"ip_address": "198.18.99.9"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = c
        .port(&demo, json!({"network_id": n1, "mac_address": "not-a-mac"}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Exhaust the pool: 13 addresses, DHCP has one, 198.18.20.9 another → 11 more, then 409.
    let mut ips = HashSet::new();
    for _ in 0..11 {
        let (st, v) = c.port(&demo, json!({"network_id": n1})).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert!(ips.insert(
            v["port"]["fixed_ips"][0]["ip_address"]
                .as_str()
                .expect("ip")
                .to_string()
        ));
    }
    let (st, v) = c.port(&demo, json!({"network_id": n1})).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(neutron_type(&v), "IpAddressGenerationFailure");
    assert!(
        !ips.contains("198.18.20.1")
            && !ips.contains("198.18.20.2")
            && !ips.contains("198.18.20.9")
    );

    // In use: neither the network nor the subnet can go.
    let (st, v) = c
        .call(Method::DELETE, &format!("/v2.0/networks/{n1}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(neutron_type(&v), "NetworkInUse");
    let (st, v) = c
        .call(Method::DELETE, &format!("/v2.0/subnets/{sid}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(neutron_type(&v), "SubnetInUse");
    // Free the ports: then both delete, the DHCP port with them.
    let (_, v) = c
        .call(
            Method::GET,
            &format!("/v2.0/ports?network_id={n1}"),
            &demo,
            None,
        )
        .await;
    for p in v["ports"].as_array().expect("ports") {
        if p["device_owner"] != "network:dhcp" {
            let (st, _) = c
                .call(
                    Method::DELETE,
                    &format!("/v2.0/ports/{}", p["id"].as_str().expect("id")),
                    &demo,
                    None,
                )
                .await;
            assert_eq!(st, StatusCode::NO_CONTENT);
        }
    }
    let (st, _) = c
        .call(Method::DELETE, &format!("/v2.0/networks/{n1}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, v) = c
        .call(
            Method::GET,
            &format!("/v2.0/ports?network_id={n1}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(v["ports"].as_array().map(Vec::len), Some(0));
    let (st, _) = c
        .call(Method::GET, &format!("/v2.0/subnets/{sid}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn concurrent_port_creates_never_share_an_address() {
    let c = Arc::new(start().await);
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let n = c.network(&demo, json!({"name": "n"})).await;
    // /28 without DHCP: 13 pool addresses for 20 concurrent creates.
    c.subnet(&demo, &n, "198.18.22.0/28", json!({"enable_dhcp": false}))
        .await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, demo, n) = (c.clone(), demo.clone(), n.clone());
        tasks.push(tokio::spawn(async move {
            c.port(&demo, json!({"network_id": n})).await
        }));
    }
    let mut ips = HashSet::new();
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        let (st, v) = t.await.expect("task");
        match st {
            StatusCode::CREATED => {
                ok += 1;
                assert!(
                    ips.insert(
                        v["port"]["fixed_ips"][0]["ip_address"]
                            .as_str()
                            .expect("ip")
                            .to_string()
                    ),
                    "duplicate address"
                );
            }
            StatusCode::CONFLICT => {
                full += 1;
                assert_eq!(neutron_type(&v), "IpAddressGenerationFailure");
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((ok, full), (13, 7));
    let (_, v) = c.call(Method::GET, "/v2.0/ports", &demo, None).await;
    assert_eq!(v["ports"].as_array().map(Vec::len), Some(13));
}

#[tokio::test]
async fn tenants_see_and_touch_only_their_own() {
    let c = start().await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let private = c.network(&admin, json!({"name": "admin-only"})).await;
    c.subnet(&admin, &private, "198.18.23.0/24", json!({}))
        .await;
    let shared = c
        .network(&admin, json!({"name": "shared", "shared": true}))
        .await;
    c.subnet(&admin, &shared, "198.18.24.0/24", json!({})).await;
    let public = c
        .network(&admin, json!({"name": "public", "router:external": true}))
        .await;
    c.subnet(
        &admin,
        &public,
        "198.18.25.0/24",
        json!({"enable_dhcp": false}),
    )
    .await;

    let (_, v) = c.call(Method::GET, "/v2.0/networks", &demo, None).await;
    let names: HashSet<&str> = v["networks"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, HashSet::from(["shared", "public"]));
    // Another tenant's network is invisible: 404, also for ports, subnets and updates on it.
    let (st, _) = c
        .call(
            Method::GET,
            &format!("/v2.0/networks/{private}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = c.port(&demo, json!({"network_id": private})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = c
        .call(
            Method::PUT,
            &format!("/v2.0/networks/{private}"),
            &demo,
            Some(json!({"network": {"name": "mine"}})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = c
        .call(
            Method::DELETE,
            &format!("/v2.0/networks/{private}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // A shared network takes the tenant's ports, which the admin's listing shows and the tenant's
    // owns; the tenant may not change or delete the network itself.
    let (st, p) = c
        .port(&demo, json!({"network_id": shared, "name": "on-shared"}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    let (st, _) = c
        .call(
            Method::DELETE,
            &format!("/v2.0/networks/{shared}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Only an admin makes shared or external networks, or acts for another project.
    for body in [
        json!({"shared": true}),
        json!({"router:external": true}),
        json!({"project_id": "someone-else"}),
    ] {
        let (st, v) = c
            .call(
                Method::POST,
                "/v2.0/networks",
                &demo,
                Some(json!({"network": body})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    }
    // The admin's own port on its private network is invisible to the tenant.
    let (_, ap) = c.port(&admin, json!({"network_id": private})).await;
    let apid = ap["port"]["id"].as_str().expect("id");
    for m in [Method::GET, Method::DELETE] {
        let (st, _) = c.call(m, &format!("/v2.0/ports/{apid}"), &demo, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
    let (_, v) = c.call(Method::GET, "/v2.0/ports", &demo, None).await;
    assert!(v["ports"]
        .as_array()
        .expect("list")
        .iter()
        .all(|p| p["id"] != apid));
    // Security groups: each project has its own default; another's is 404.
    let demo_project = p["port"]["project_id"]
        .as_str()
        .expect("project")
        .to_string();
    let (_, v) = c
        .call(Method::GET, "/v2.0/security-groups", &admin, None)
        .await;
    let admin_sg = v["security_groups"]
        .as_array()
        .expect("list")
        .iter()
        .find(|g| g["project_id"] != demo_project.as_str())
        .and_then(|g| g["id"].as_str())
        .expect("admin's group")
        .to_string();
    let (st, _) = c
        .call(
            Method::GET,
            &format!("/v2.0/security-groups/{admin_sg}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = c
        .port(
            &demo,
            json!({"network_id": shared, "security_groups": [admin_sg]}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = c.call(Method::POST, "/v2.0/security-group-rules", &demo, Some(json!({"security_group_rule": {"security_group_id": admin_sg, "direction": "ingress"}}))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn routers_and_floating_ips() {
    let c = start().await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let public = c
        .network(&admin, json!({"name": "public", "router:external": true}))
        .await;
    c.subnet(
        &admin,
        &public,
        "198.18.64.0/24",
        json!({"enable_dhcp": false}),
    )
    .await;
    let n = c.network(&demo, json!({"name": "private"})).await;
    let s = c.subnet(&demo, &n, "198.18.1.0/24", json!({})).await;
    let sid = s["id"].as_str().expect("id").to_string();
    let other = c.network(&demo, json!({"name": "isolated"})).await;
    c.subnet(&demo, &other, "198.18.2.0/24", json!({})).await;

    // A gateway only on an external network.
    let (st, v) = c
        .call(
            Method::POST,
            "/v2.0/routers",
            &demo,
            Some(json!({"router": {"name": "r", "external_gateway_info": {"network_id": n}}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let r = c
        .ok(
            Method::POST,
            "/v2.0/routers",
            &demo,
            json!({"router": {"name": "r", "external_gateway_info": {"network_id": public}}}),
            StatusCode::CREATED,
        )
        .await;
    let rid = r["router"]["id"].as_str().expect("id").to_string();
    let gw_ip = r["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .expect("gw")
        .to_string();
    assert!(gw_ip.starts_with("198.18.64."));
    assert_eq!(r["router"]["external_gateway_info"]["enable_snat"], true);
    // Interface on the subnet takes its gateway address.
    let info = c
        .ok(
            Method::PUT,
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &demo,
            json!({"subnet_id": sid}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(info["subnet_id"], sid.as_str());
    let ip_port = info["port_id"].as_str().expect("port").to_string();
    let (_, v) = c
        .call(Method::GET, &format!("/v2.0/ports/{ip_port}"), &demo, None)
        .await;
    assert_eq!(v["port"]["fixed_ips"][0]["ip_address"], "198.18.1.1");
    assert_eq!(v["port"]["device_owner"], "network:router_interface");
    let (st, _) = c
        .call(
            Method::PUT,
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &demo,
            Some(json!({"subnet_id": sid})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, v) = c
        .call(
            Method::DELETE,
            &format!("/v2.0/ports/{ip_port}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");

    // Floating IPs: from the external network only; associate with a port behind the router.
    let (_, vm) = c
        .port(
            &demo,
            json!({"network_id": n, "device_owner": "compute:nova", "device_id": "vm1"}),
        )
        .await;
    let vm_port = vm["port"]["id"].as_str().expect("id").to_string();
    let vm_ip = vm["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .expect("ip")
        .to_string();
    let (st, _) = c
        .call(
            Method::POST,
            "/v2.0/floatingips",
            &demo,
            Some(json!({"floatingip": {"floating_network_id": n}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let f = c
        .ok(
            Method::POST,
            "/v2.0/floatingips",
            &demo,
            json!({"floatingip": {"floating_network_id": public}}),
            StatusCode::CREATED,
        )
        .await;
    let fid = f["floatingip"]["id"].as_str().expect("id").to_string();
    assert_eq!(f["floatingip"]["status"], "DOWN");
    assert!(f["floatingip"]["port_id"].is_null());
    let fip = f["floatingip"]["floating_ip_address"]
        .as_str()
        .expect("fip")
        .to_string();
    assert_ne!(fip, gw_ip);
    let v = c
        .ok(
            Method::PUT,
            &format!("/v2.0/floatingips/{fid}"),
            &demo,
            json!({"floatingip": {"port_id": vm_port}}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(v["floatingip"]["fixed_ip_address"], vm_ip.as_str());
    assert_eq!(v["floatingip"]["router_id"], rid.as_str());
    assert_eq!(v["floatingip"]["status"], "ACTIVE");
    assert_eq!(v["floatingip"]["port_details"]["device_id"], "vm1");
    // A second floating IP on the same fixed IP conflicts; a port no router reaches is 404.
    let f2 = c
        .ok(
            Method::POST,
            "/v2.0/floatingips",
            &demo,
            json!({"floatingip": {"floating_network_id": public}}),
            StatusCode::CREATED,
        )
        .await;
    let f2id = f2["floatingip"]["id"].as_str().expect("id").to_string();
    let (st, v) = c
        .call(
            Method::PUT,
            &format!("/v2.0/floatingips/{f2id}"),
            &demo,
            Some(json!({"floatingip": {"port_id": vm_port}})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (_, iso) = c.port(&demo, json!({"network_id": other})).await;
    let (st, v) = c
        .call(
            Method::PUT,
            &format!("/v2.0/floatingips/{f2id}"),
            &demo,
            Some(json!({"floatingip": {"port_id": iso["port"]["id"]}})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(neutron_type(&v), "ExternalGatewayForFloatingIPNotFound");

    // The router cannot lose what a floating IP needs, nor go while it has interfaces.
    let (st, v) = c
        .call(
            Method::PUT,
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            &demo,
            Some(json!({"subnet_id": sid})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, v) = c
        .call(
            Method::PUT,
            &format!("/v2.0/routers/{rid}"),
            &demo,
            Some(json!({"router": {"external_gateway_info": {}}})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, v) = c
        .call(Method::DELETE, &format!("/v2.0/routers/{rid}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(neutron_type(&v), "RouterInUse");

    // What the network node must build: the router with its NAT, DHCP with the VM's lease.
    let state = c.net.host_state("node1", true).await.expect("state");
    let hr = state
        .routers
        .iter()
        .find(|r| r.id == rid)
        .expect("router in state");
    assert_eq!(
        hr.floating_ips,
        vec![onestack_core::network::proto::FloatingNat {
            floating_ip: fip.clone(),
            fixed_ip: vm_ip.clone()
        }]
    );
    assert_eq!(hr.interfaces[0].address, "198.18.1.1/24");
    assert!(hr
        .gateway
        .as_ref()
        .is_some_and(|g| g.address == format!("{gw_ip}/24")
            && g.default_gateway.as_deref() == Some("198.18.64.1")));
    let dhcp = state.dhcp.iter().find(|d| d.network_id == n).expect("dhcp");
    assert!(dhcp.hosts.iter().any(|h| h.ip == vm_ip));
    let public_net = state
        .networks
        .iter()
        .find(|x| x.id == public)
        .expect("public");
    assert_eq!(public_net.host_address.as_deref(), Some("198.18.64.1/24"));
    // A compute host that has no port sees nothing of it.
    let empty = c.net.host_state("node2", false).await.expect("state");
    assert!(empty.networks.is_empty() && empty.routers.is_empty() && empty.dhcp.is_empty());

    // Deleting the port disassociates; then everything comes apart cleanly.
    let (st, _) = c
        .call(
            Method::DELETE,
            &format!("/v2.0/ports/{vm_port}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, v) = c
        .call(
            Method::GET,
            &format!("/v2.0/floatingips/{fid}"),
            &demo,
            None,
        )
        .await;
    assert!(v["floatingip"]["port_id"].is_null());
    for path in [
        format!("/v2.0/floatingips/{fid}"),
        format!("/v2.0/floatingips/{f2id}"),
    ] {
        let (st, _) = c.call(Method::DELETE, &path, &demo, None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
    }
    c.ok(
        Method::PUT,
        &format!("/v2.0/routers/{rid}/remove_router_interface"),
        &demo,
        json!({"subnet_id": sid}),
        StatusCode::OK,
    )
    .await;
    let (st, _) = c
        .call(Method::DELETE, &format!("/v2.0/routers/{rid}"), &demo, None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // The gateway and floating addresses went back to the pool.
    let (_, v) = c
        .call(
            Method::GET,
            &format!("/v2.0/ports?network_id={public}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(v["ports"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn security_groups_rules_and_quotas() {
    let c = start().await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    // The default group appears on first listing, with Neutron's four rules.
    let (_, v) = c
        .call(Method::GET, "/v2.0/security-groups", &demo, None)
        .await;
    let groups = v["security_groups"].as_array().expect("list");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "default");
    let default_id = groups[0]["id"].as_str().expect("id").to_string();
    let rules = groups[0]["security_group_rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 4);
    assert_eq!(
        rules
            .iter()
            .filter(|r| r["direction"] == "ingress" && r["remote_group_id"] == default_id.as_str())
            .count(),
        2
    );
    // Listing again makes no second default.
    let (_, v) = c
        .call(
            Method::GET,
            "/v2.0/security-groups?name=default",
            &demo,
            None,
        )
        .await;
    assert_eq!(v["security_groups"].as_array().map(Vec::len), Some(1));

    // A new group has the two egress rules.
    let g = c
        .ok(
            Method::POST,
            "/v2.0/security-groups",
            &demo,
            json!({"security_group": {"name": "web"}}),
            StatusCode::CREATED,
        )
        .await;
    let gid = g["security_group"]["id"].as_str().expect("id").to_string();
    assert_eq!(
        g["security_group"]["security_group_rules"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let rule = json!({"security_group_rule": {"security_group_id": gid, "direction": "ingress", "protocol": "tcp", "port_range_min": 80, "port_range_max": 80, "remote_ip_prefix": "198.18.0.0/15"}});
    let r = c
        .ok(
            Method::POST,
            "/v2.0/security-group-rules",
            &demo,
            rule.clone(),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(r["security_group_rule"]["protocol"], "tcp");
    let (st, v) = c
        .call(
            Method::POST,
            "/v2.0/security-group-rules",
            &demo,
            Some(rule),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(neutron_type(&v), "SecurityGroupRuleExists");
    for bad in [
        json!({"direction": "sideways"}),
        json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80}),
        json!({"direction": "ingress", "protocol": "icmp", "port_range_min": 300}),
        json!({"direction": "ingress", "protocol": "bogus"}),
        json!({"direction": "ingress", "port_range_min": 22, "port_range_max": 22}),
        json!({"direction": "ingress", "remote_ip_prefix": "198.18.0.0/15", "remote_group_id": gid}),
        json!({"direction": "ingress", "ethertype": "IPv6", "remote_ip_prefix": "198.18.0.0/15"}),
        json!({"direction": "ingress", "remote_ip_prefix": "not-a-cidr"}),
    ] {
        let mut b = bad.clone();
        if let Some(o) = b.as_object_mut() {
            o.insert("security_group_id".into(), json!(gid));
        }
        let (st, v) = c
            .call(
                Method::POST,
                "/v2.0/security-group-rules",
                &demo,
                Some(json!({"security_group_rule": b})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    // In use by a port → 409; the default group cannot be removed or renamed.
    let n = c.network(&demo, json!({"name": "n"})).await;
    c.subnet(&demo, &n, "198.18.3.0/24", json!({})).await;
    let (_, p) = c
        .port(&demo, json!({"network_id": n, "security_groups": [gid]}))
        .await;
    assert_eq!(p["port"]["security_groups"], json!([gid]));
    let (st, v) = c
        .call(
            Method::DELETE,
            &format!("/v2.0/security-groups/{gid}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(neutron_type(&v), "SecurityGroupInUse");
    let (st, _) = c
        .call(
            Method::DELETE,
            &format!("/v2.0/security-groups/{default_id}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    // Port security off needs no groups; with groups it is refused.
    let (st, _) = c
        .port(
            &demo,
            json!({"network_id": n, "port_security_enabled": false, "security_groups": [gid]}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, v) = c
        .port(
            &demo,
            json!({"network_id": n, "port_security_enabled": false}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(v["port"]["security_groups"], json!([]));
    // A port without groups given gets the default one; allowed address pairs round-trip.
    let (_, v) = c
        .port(
            &demo,
            json!({"network_id": n, "allowed_address_pairs": [{"ip_address": "198.18.3.200/32"}]}),
        )
        .await;
    assert_eq!(v["port"]["security_groups"], json!([default_id]));
    assert_eq!(
        v["port"]["allowed_address_pairs"][0]["mac_address"],
        v["port"]["mac_address"]
    );

    // Quotas: shown with defaults and usage; an admin lowers one and it is enforced.
    let project = p["port"]["project_id"]
        .as_str()
        .expect("project")
        .to_string();
    let (_, v) = c
        .call(
            Method::GET,
            &format!("/v2.0/quotas/{project}/details.json"),
            &demo,
            None,
        )
        .await;
    assert_eq!(v["quota"]["network"]["limit"], 100);
    assert_eq!(v["quota"]["network"]["used"], 1);
    let (st, _) = c
        .call(
            Method::PUT,
            &format!("/v2.0/quotas/{project}"),
            &demo,
            Some(json!({"quota": {"network": 1}})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let v = c
        .ok(
            Method::PUT,
            &format!("/v2.0/quotas/{project}"),
            &admin,
            json!({"quota": {"network": 1}}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(v["quota"]["network"], 1);
    let (st, v) = c
        .call(
            Method::POST,
            "/v2.0/networks",
            &demo,
            Some(json!({"network": {"name": "two"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(neutron_type(&v), "OverQuota");
    let (st, _) = c
        .call(
            Method::DELETE,
            &format!("/v2.0/quotas/{project}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    c.network(&demo, json!({"name": "two"})).await;
}

/// Tenant networks are VXLAN segments (50 bytes of the physical MTU go to the encapsulation),
/// external ones flat; the MTU a network can carry is enforced, the VNI is OneStack's to choose.
#[tokio::test]
async fn mtu_and_provider_attributes_follow_the_segment_type() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let (st, v) = c
        .call(
            Method::POST,
            "/v2.0/networks",
            &admin,
            Some(json!({"network": {"name": "t"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let n = &v["network"];
    assert_eq!(n["mtu"], 1450);
    assert_eq!(n["provider:network_type"], "vxlan");
    let vni = n["provider:segmentation_id"].as_u64().expect("vni");
    assert!((1..=0xFF_FFFF).contains(&vni), "{n}");
    let (st, v) = c
        .call(
            Method::POST,
            "/v2.0/networks",
            &admin,
            Some(json!({"network": {"name": "e", "router:external": true}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["network"]["mtu"], 1500);
    assert_eq!(v["network"]["provider:network_type"], "flat");
    // Members see no provider attributes.
    let (_, v) = c
        .call(
            Method::POST,
            "/v2.0/networks",
            &demo,
            Some(json!({"network": {"name": "d", "mtu": 1400}})),
        )
        .await;
    assert_eq!(v["network"]["mtu"], 1400);
    assert!(v["network"].get("provider:network_type").is_none(), "{v}");
    let id = v["network"]["id"].as_str().expect("id").to_string();
    for (method, path, body) in [
        (
            Method::POST,
            "/v2.0/networks".to_string(),
            json!({"network": {"mtu": 1451}}),
        ),
        (
            Method::PUT,
            format!("/v2.0/networks/{id}"),
            json!({"network": {"mtu": 1500}}),
        ),
    ] {
        let (st, v) = c.call(method, &path, &demo, Some(body)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains("maximum is 1450"), "{v}");
    }
    let (st, v) = c
        .call(Method::POST, "/v2.0/networks", &admin,
            Some(json!({"network": {"provider:network_type": "vxlan", "provider:segmentation_id": 5}})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = c
        .call(
            Method::POST,
            "/v2.0/networks",
            &admin,
            Some(json!({"network": {"provider:network_type": "vlan"}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

/// Neutron's quota checks are serialized with the writes they guard: N concurrent creates
/// against room for N-1 give exactly N-1 (the last gets 409 OverQuota and nothing is made),
/// for networks and for security group rules alike.
#[tokio::test]
async fn concurrent_creates_stay_within_the_quota() {
    let c = start().await;
    let admin = c.token("admin", ADMIN_PW, "admin").await;
    let demo = c.token("demo", DEMO_PW, "demo").await;
    let (_, groups) = c
        .call(Method::GET, "/v2.0/security-groups", &demo, None)
        .await;
    let project = groups["security_groups"][0]["project_id"]
        .as_str()
        .expect("the default group's project")
        .to_string();
    let default_sg = groups["security_groups"][0]["id"]
        .as_str()
        .expect("default group")
        .to_string();
    let count = |kind: &'static str| {
        let c = &c;
        let demo = demo.clone();
        async move {
            let (_, v) = c
                .call(Method::GET, &format!("/v2.0/{kind}"), &demo, None)
                .await;
            v[kind.replace('-', "_")].as_array().map_or(0, Vec::len)
        }
    };
    const N: usize = 8;
    let rules_before = count("security-group-rules").await;
    c.ok(
        Method::PUT,
        &format!("/v2.0/quotas/{project}"),
        &admin,
        json!({"quota": {"network": N - 1, "security_group_rule": rules_before + N - 1}}),
        StatusCode::OK,
    )
    .await;
    let creates = (0..N).map(|i| {
        c.call(
            Method::POST,
            "/v2.0/networks",
            &demo,
            Some(json!({"network": {"name": format!("race-{i}")}})),
        )
    });
    let results = futures_util::future::join_all(creates).await;
    let made = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::CREATED)
        .count();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::CONFLICT)
        .map(|(_, v)| v)
        .collect();
    assert_eq!((made, refused.len()), (N - 1, 1), "{results:?}");
    assert_eq!(refused[0]["NeutronError"]["type"], "OverQuota");
    assert_eq!(count("networks").await, N - 1);

    let rules = (0..N).map(|i| {
        c.call(
            Method::POST,
            "/v2.0/security-group-rules",
            &demo,
            Some(
                json!({"security_group_rule": {"security_group_id": default_sg,
                "direction": "ingress", "protocol": "tcp", "ethertype": "IPv4",
                "port_range_min": 1000 + i, "port_range_max": 1000 + i}}),
            ),
        )
    });
    let results = futures_util::future::join_all(rules).await;
    let made = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::CREATED)
        .count();
    assert_eq!(made, N - 1, "{results:?}");
    assert_eq!(count("security-group-rules").await, rules_before + N - 1);
}
