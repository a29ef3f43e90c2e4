//! Tenant isolation around the direct checks: ports that name another project's device, what a
//! project may do on a network another shares with it, and the input Neutron refuses. The test
//! plays the compute agent (desired state, metadata lookups) as the other API tests do.

mod common;

use common::{ADMIN_PW, AGENT_TOKEN, DEMO_PW};
use onestack_api::compute::AGENT_TOKEN_HEADER;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Cloud {
    cp: common::ControlPlane,
    http: reqwest::Client,
}

/// Who calls: a token and the project it is scoped to.
struct Caller {
    token: String,
    project: String,
}

impl Cloud {
    async fn start() -> Cloud {
        let cp = common::start().await;
        // Servers get their NICs from the network service, as `serve` wires it.
        cp.compute_service.attach_network(cp.net.clone());
        Cloud {
            cp,
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, url).header("x-auth-token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn net(
        &self,
        method: Method,
        path: &str,
        c: &Caller,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(
            method,
            &format!("{}{path}", self.cp.network),
            &c.token,
            body,
        )
        .await
    }

    async fn nova(
        &self,
        method: Method,
        path: &str,
        c: &Caller,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(
            method,
            &format!("{}{path}", self.cp.compute),
            &c.token,
            body,
        )
        .await
    }

    async fn caller(&self, user: &str, pw: &str, project: &str) -> Caller {
        let (token, v) = common::login_to(&self.http, &self.cp.identity, user, pw, project).await;
        Caller {
            token,
            project: v["token"]["project"]["id"]
                .as_str()
                .expect("project")
                .into(),
        }
    }

    /// A new project with a user holding `member` on it; that user, logged in.
    async fn new_member(&self, admin: &Caller, name: &str) -> Caller {
        common::new_project_user(
            &self.http,
            &self.cp.identity,
            &admin.token,
            name,
            "attacker-pw",
            "member",
        )
        .await;
        self.caller(name, "attacker-pw", name).await
    }

    /// A network with one subnet of `cidr`; the network's id and the subnet.
    async fn network(&self, c: &Caller, cidr: &str, extra: Value) -> (String, Value) {
        let mut body = json!({"name": format!("net-{cidr}")});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (st, n) = self
            .net(
                Method::POST,
                "/v2.0/networks",
                c,
                Some(json!({"network": body})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{n}");
        let nid = n["network"]["id"].as_str().expect("id").to_string();
        let (st, s) = self
            .net(
                Method::POST,
                "/v2.0/subnets",
                c,
                Some(json!({"subnet": {"network_id": nid, "cidr": cidr, "ip_version": 4}})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{s}");
        (nid, s["subnet"].clone())
    }

    async fn router_on(&self, c: &Caller, subnet: &str) -> String {
        let (st, r) = self
            .net(
                Method::POST,
                "/v2.0/routers",
                c,
                Some(json!({"router": {"name": "r"}})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        let rid = r["router"]["id"].as_str().expect("id").to_string();
        let (st, v) = self
            .net(
                Method::PUT,
                &format!("/v2.0/routers/{rid}/add_router_interface"),
                c,
                Some(json!({"subnet_id": subnet})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        rid
    }

    async fn agent_get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(format!("{}/internal/v1{path}", self.cp.compute))
            .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
            .send()
            .await
            .expect("send");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Every port id the network node's agent plugs, and the interfaces of each router there.
    async fn network_node_state(&self) -> Value {
        let (st, v) = self
            .agent_get("/hosts/h1/network?after=-1&network_node=1")
            .await;
        assert_eq!(st, StatusCode::OK);
        v
    }
}

/// Two projects on one host: the victim (demo) with a network, a router on it and a server
/// there, and mallory, a member of a project of its own with a network.
struct Scene {
    admin: Caller,
    victim: Caller,
    mallory: Caller,
    vnet: String,
    vsub: Value,
    vrouter: String,
    server: String,
    mnet: String,
}

impl Cloud {
    async fn scene(&self, victim_cidr: &str, mallory_cidr: &str) -> Scene {
        let admin = self.caller("admin", ADMIN_PW, "admin").await;
        let victim = self.caller("demo", DEMO_PW, "demo").await;
        let mallory = self.new_member(&admin, "mallory").await;
        common::register_host(&self.http, &self.cp.compute, "h1", 8, 8192, 100).await;
        let image = common::raw_image(&self.http, &self.cp.image, &admin.token, 1024, true).await;
        let (vnet, vsub) = self.network(&victim, victim_cidr, json!({})).await;
        let vrouter = self
            .router_on(&victim, vsub["id"].as_str().expect("subnet"))
            .await;
        let (st, s) = self
            .nova(
                Method::POST,
                "/v2.1/servers",
                &victim,
                Some(json!({"server": {
                "name": "victim", "imageRef": image, "flavorRef": "1",
                "networks": [{"uuid": vnet}], "user_data": "c2VjcmV0", "metadata": {"k": "v"}}})),
            )
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{s}");
        let server = id(&s, "server");
        let (mnet, _) = self.network(&mallory, mallory_cidr, json!({})).await;
        Scene {
            admin,
            victim,
            mallory,
            vnet,
            vsub,
            vrouter,
            server,
            mnet,
        }
    }
}

fn id(v: &Value, key: &str) -> String {
    v[key]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} id in {v}"))
        .to_string()
}

fn ports_in(state: &Value) -> Vec<String> {
    state["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect()
}

/// Issue 19, item 1: a port naming another project's server or router, whoever made it, is no
/// NIC or leg of that device — not in its addresses, its desired NICs, the metadata lookup, its
/// router namespace — and a member cannot even name it.
#[tokio::test]
async fn ports_naming_another_projects_device_attach_to_nothing() {
    let c = Cloud::start().await;
    let Scene {
        admin,
        victim,
        mallory,
        vnet,
        vsub,
        vrouter,
        server,
        mnet,
    } = c.scene("198.18.40.0/24", "198.18.41.0/24").await;

    // A member cannot name another project's server or router as its port's device (Neutron's
    // DeviceIDNotOwnedByTenant), on create or update; nothing is made.
    for (owner, device) in [
        ("compute:nova", &server),
        ("network:router_interface", &vrouter),
    ] {
        let (st, v) = c
            .net(
                Method::POST,
                "/v2.0/ports",
                &mallory,
                Some(json!({"port": {
                "network_id": mnet, "device_id": device, "device_owner": owner}})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{owner}: {v}");
        assert_eq!(v["NeutronError"]["type"], "DeviceIDNotOwnedByTenant", "{v}");
    }
    let (_, plain) = c
        .net(
            Method::POST,
            "/v2.0/ports",
            &mallory,
            Some(json!({"port": {"network_id": mnet}})),
        )
        .await;
    let plain_id = id(&plain, "port");
    let (st, v) = c
        .net(
            Method::PUT,
            &format!("/v2.0/ports/{plain_id}"),
            &mallory,
            Some(json!({"port": {
            "device_id": server, "device_owner": "compute:nova"}})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (_, ports) = c
        .net(
            Method::GET,
            &format!("/v2.0/ports?network_id={mnet}"),
            &mallory,
            None,
        )
        .await;
    assert_eq!(
        ports["ports"].as_array().map(Vec::len),
        Some(2),
        "only its own port and DHCP: {ports}"
    );

    // Admins may label a port so (Neutron lets them): the label still attaches nothing.
    let (st, rogue) = c
        .net(
            Method::POST,
            "/v2.0/ports",
            &admin,
            Some(json!({"port": {
            "network_id": mnet, "project_id": mallory.project,
            "device_id": server, "device_owner": "compute:nova"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{rogue}");
    let rogue_ip = rogue["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .expect("ip")
        .to_string();
    let (st, leg) = c
        .net(
            Method::POST,
            "/v2.0/ports",
            &admin,
            Some(json!({"port": {
            "network_id": mnet, "project_id": mallory.project,
            "device_id": vrouter, "device_owner": "network:router_interface"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{leg}");
    let leg_id = id(&leg, "port");

    // The victim's server: one address, on its own network only.
    let (_, s) = c
        .nova(
            Method::GET,
            &format!("/v2.1/servers/{server}"),
            &victim,
            None,
        )
        .await;
    let addrs = s["server"]["addresses"].as_object().expect("addresses");
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    assert!(addrs.contains_key("net-198.18.40.0/24"), "{addrs:?}");
    // The agent is told to plug only the server's own NIC.
    let (_, desired) = c.agent_get("/hosts/h1/desired?after=0").await;
    let nics = &desired["instances"][0]["nics"];
    assert_eq!(nics.as_array().map(Vec::len), Some(1), "{desired}");
    assert_eq!(nics[0]["network_id"], vnet.as_str());
    // The metadata service answers nothing to the rogue port's address.
    let (st, _) = c.agent_get(&format!("/metadata/{mnet}/{rogue_ip}")).await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "the metadata of another project's server"
    );
    // The victim's router gets no leg on mallory's network.
    let state = c.network_node_state().await;
    let router = state["routers"]
        .as_array()
        .expect("routers")
        .iter()
        .find(|r| r["id"] == vrouter.as_str())
        .expect("the victim's router")
        .clone();
    let legs: Vec<&str> = router["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .filter_map(|i| i["network_id"].as_str())
        .collect();
    assert_eq!(legs, vec![vnet.as_str()], "{router}");
    assert!(!ports_in(&state).contains(&leg_id));
    // The victim's router can still be listed and lose its interface; its server can be deleted,
    // and the labelled port stays mallory's (compute deletes only what it attached).
    let (st, v) = c
        .net(
            Method::PUT,
            &format!("/v2.0/routers/{vrouter}/remove_router_interface"),
            &victim,
            Some(json!({"subnet_id": vsub["id"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, _) = c
        .net(
            Method::DELETE,
            &format!("/v2.0/routers/{vrouter}"),
            &victim,
            None,
        )
        .await;
    assert_eq!(
        st,
        StatusCode::NO_CONTENT,
        "a labelled port does not keep the router in use"
    );
    let (st, _) = c
        .nova(
            Method::DELETE,
            &format!("/v2.1/servers/{server}"),
            &victim,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = c
        .net(
            Method::GET,
            &format!("/v2.0/ports/{}", id(&rogue, "port")),
            &mallory,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // A network device label mallory's admin-made port carries is mallory's to delete.
    let (st, v) = c
        .net(
            Method::DELETE,
            &format!("/v2.0/ports/{leg_id}"),
            &mallory,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
}

/// Issue 19, item 1 (DHCP): a port labelled as a network's DHCP server is not its DHCP server: the
/// network keeps its own, the agent serves DHCP from that one, and the label can be removed.
#[tokio::test]
async fn a_labelled_dhcp_port_takes_nothing_over() {
    let c = Cloud::start().await;
    let admin = c.caller("admin", ADMIN_PW, "admin").await;
    let demo = c.caller("demo", DEMO_PW, "demo").await;
    let (nid, _) = c.network(&demo, "198.18.42.0/24", json!({})).await;
    let (_, ports) = c
        .net(
            Method::GET,
            &format!("/v2.0/ports?network_id={nid}"),
            &demo,
            None,
        )
        .await;
    let genuine = ports["ports"][0]["id"]
        .as_str()
        .expect("dhcp port")
        .to_string();
    // The network's owner may make a network:* port on its own network (Neutron's policy).
    let (st, fake) = c
        .net(Method::POST, "/v2.0/ports", &demo, Some(json!({"port": {
            "network_id": nid, "device_owner": "network:dhcp", "device_id": format!("dhcp-{nid}")}})))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{fake}");
    let fake_id = id(&fake, "port");
    common::register_host(&c.http, &c.cp.compute, "h1", 8, 8192, 100).await;
    let state = c.network_node_state().await;
    let servers: Vec<&Value> = state["dhcp"]
        .as_array()
        .expect("dhcp")
        .iter()
        .filter(|d| d["network_id"] == nid.as_str())
        .collect();
    assert_eq!(servers.len(), 1, "{state}");
    assert_eq!(servers[0]["port_id"], genuine.as_str());
    // A new subnet still extends the genuine DHCP port.
    let (st, v) = c
        .net(
            Method::POST,
            "/v2.0/subnets",
            &demo,
            Some(json!({"subnet": {"network_id": nid, "cidr": "198.18.43.0/24", "ip_version": 4}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (_, g) = c
        .net(Method::GET, &format!("/v2.0/ports/{genuine}"), &demo, None)
        .await;
    assert_eq!(
        g["port"]["fixed_ips"].as_array().map(Vec::len),
        Some(2),
        "{g}"
    );
    // The label is the owner's to delete; the genuine DHCP port is not.
    let (st, _) = c
        .net(
            Method::DELETE,
            &format!("/v2.0/ports/{genuine}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = c
        .net(
            Method::DELETE,
            &format!("/v2.0/ports/{fake_id}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let _ = admin;
}

/// Issue 19, item 2: on a network shared with it, a project may take an address from a subnet
/// and nothing more; the owner (and admins) may do the rest.
#[tokio::test]
async fn on_a_shared_network_others_take_an_address_and_nothing_more() {
    let c = Cloud::start().await;
    let admin = c.caller("admin", ADMIN_PW, "admin").await;
    let demo = c.caller("demo", DEMO_PW, "demo").await;
    let (shared, sub) = c
        .network(&admin, "198.18.44.0/24", json!({"shared": true}))
        .await;
    let sid = sub["id"].as_str().expect("subnet").to_string();
    let (_, r) = c
        .net(
            Method::POST,
            "/v2.0/routers",
            &admin,
            Some(json!({"router": {"name": "ar"}})),
        )
        .await;
    let admin_router = id(&r, "router");
    let refused = [
        ("port security off", json!({"port_security_enabled": false})),
        ("port security on", json!({"port_security_enabled": true})),
        (
            "address pairs",
            json!({"allowed_address_pairs": [{"ip_address": "0.0.0.0/0"}]}),
        ),
        (
            "the gateway",
            json!({"fixed_ips": [{"ip_address": "198.18.44.1"}]}),
        ),
        (
            "outside the pool",
            json!({"fixed_ips": [{"subnet_id": sid, "ip_address": "198.18.44.254"}]}),
        ),
        (
            "a DHCP port",
            json!({"device_owner": "network:dhcp", "device_id": format!("dhcp-{shared}")}),
        ),
        (
            "a router leg",
            json!({"device_owner": "network:router_interface", "device_id": admin_router}),
        ),
        ("a MAC", json!({"mac_address": "fa:16:3e:00:00:01"})),
    ];
    for (what, extra) in &refused {
        let mut body = json!({"network_id": shared});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (st, v) = c
            .net(
                Method::POST,
                "/v2.0/ports",
                &demo,
                Some(json!({"port": body})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{what}: {v}");
    }
    // What a sharer may do: a port, with an address from a subnet it names.
    let (st, p) = c
        .net(
            Method::POST,
            "/v2.0/ports",
            &demo,
            Some(json!({"port": {
            "network_id": shared, "fixed_ips": [{"subnet_id": sid}]}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    let pid = id(&p, "port");
    // …and on that port of its own, the same refusals on update.
    for (what, body) in [
        ("port security off", json!({"port_security_enabled": false})),
        (
            "address pairs",
            json!({"allowed_address_pairs": [{"ip_address": "198.18.44.0/24"}]}),
        ),
        (
            "the gateway",
            json!({"fixed_ips": [{"ip_address": "198.18.44.1"}]}),
        ),
        ("a DHCP label", json!({"device_owner": "network:dhcp"})),
    ] {
        let (st, v) = c
            .net(
                Method::PUT,
                &format!("/v2.0/ports/{pid}"),
                &demo,
                Some(json!({"port": body})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{what}: {v}");
    }
    let (_, after) = c
        .net(Method::GET, &format!("/v2.0/ports/{pid}"), &demo, None)
        .await;
    assert_eq!(after["port"]["port_security_enabled"], true);
    assert_eq!(after["port"]["allowed_address_pairs"], json!([]));
    assert_eq!(after["port"]["device_owner"], "");
    // A router of the sharer's cannot take the shared subnet's gateway (Neutron: LP#1757482).
    let (_, r) = c
        .net(
            Method::POST,
            "/v2.0/routers",
            &demo,
            Some(json!({"router": {"name": "dr"}})),
        )
        .await;
    let demo_router = id(&r, "router");
    let (st, v) = c
        .net(
            Method::PUT,
            &format!("/v2.0/routers/{demo_router}/add_router_interface"),
            &demo,
            Some(json!({"subnet_id": sid})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    // A server of the sharer's asks for a fixed address there: refused as Neutron refuses Nova.
    common::register_host(&c.http, &c.cp.compute, "h1", 8, 8192, 100).await;
    let image = common::raw_image(&c.http, &c.cp.image, &admin.token, 1024, true).await;
    let (st, v) = c
        .nova(
            Method::POST,
            "/v2.1/servers",
            &demo,
            Some(json!({"server": {
            "name": "s", "imageRef": image, "flavorRef": "1",
            "networks": [{"uuid": shared, "fixed_ip": "198.18.44.250"}]}})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    // Whether a router translates addresses is the operator's choice (Neutron: admin only,
    // either value).
    let (_, ext) = c
        .net(
            Method::POST,
            "/v2.0/networks",
            &admin,
            Some(json!({"network": {"name": "ext", "router:external": true}})),
        )
        .await;
    let ext = id(&ext, "network");
    for snat in [true, false] {
        let (st, v) = c
            .net(
                Method::POST,
                "/v2.0/routers",
                &demo,
                Some(json!({"router": {"name": "snat",
                "external_gateway_info": {"network_id": ext, "enable_snat": snat}}})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "enable_snat {snat}: {v}");
    }
    // The owner does all of it on its network.
    let (st, v) = c
        .net(
            Method::POST,
            "/v2.0/ports",
            &admin,
            Some(json!({"port": {
            "network_id": shared, "port_security_enabled": false,
            "fixed_ips": [{"subnet_id": sid, "ip_address": "198.18.44.254"}]}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

/// Issue 19, item 8: what Neutron refuses, with its error shape; the caps are Neutron's defaults.
#[tokio::test]
async fn input_neutron_refuses() {
    let c = Cloud::start().await;
    let demo = c.caller("demo", DEMO_PW, "demo").await;
    let (nid, sub) = c.network(&demo, "198.18.45.0/24", json!({})).await;
    let sid = sub["id"].as_str().expect("subnet").to_string();
    for cidr in [
        "0.0.0.0/0",
        "127.0.0.0/24",
        "224.0.0.0/24",
        "169.254.0.0/24",
        "0.0.0.0/8",
        "240.0.0.0/24",
    ] {
        let (st, v) = c
            .net(
                Method::POST,
                "/v2.0/subnets",
                &demo,
                Some(json!({"subnet": {"network_id": nid, "cidr": cidr, "ip_version": 4}})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{cidr}: {v}");
        assert!(v["NeutronError"]["message"].is_string(), "{v}");
    }
    for mac in [
        "00:00:00:00:00:00",
        "ff:ff:ff:ff:ff:ff",
        "01:00:5e:00:00:01",
    ] {
        let (st, v) = c
            .net(
                Method::POST,
                "/v2.0/ports",
                &demo,
                Some(json!({"port": {"network_id": nid, "mac_address": mac}})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{mac}: {v}");
    }
    let routes: Vec<Value> = (0..21)
        .map(|i| json!({"destination": format!("198.19.{i}.0/24"), "nexthop": "198.18.45.9"}))
        .collect();
    let (st, v) = c
        .net(
            Method::PUT,
            &format!("/v2.0/subnets/{sid}"),
            &demo,
            Some(json!({"subnet": {"host_routes": routes}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = c
        .net(
            Method::PUT,
            &format!("/v2.0/subnets/{sid}"),
            &demo,
            Some(json!({"subnet": {"host_routes": routes[..20]}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "twenty routes are allowed: {v}");
    let dns: Vec<String> = (1..=6).map(|i| format!("198.19.0.{i}")).collect();
    let (st, v) = c
        .net(
            Method::PUT,
            &format!("/v2.0/subnets/{sid}"),
            &demo,
            Some(json!({"subnet": {"dns_nameservers": dns}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let six: Vec<Value> = (0..6).map(|_| json!({"subnet_id": sid})).collect();
    let (st, v) = c
        .net(
            Method::POST,
            "/v2.0/ports",
            &demo,
            Some(json!({"port": {"network_id": nid, "fixed_ips": six}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = c
        .net(
            Method::POST,
            "/v2.0/ports",
            &demo,
            Some(json!({"port": {"network_id": nid, "fixed_ips": six[..5]}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "five addresses are allowed: {v}");
    // Nothing half-made: the refused requests left one port besides DHCP.
    let (_, ports) = c
        .net(
            Method::GET,
            &format!("/v2.0/ports?network_id={nid}"),
            &demo,
            None,
        )
        .await;
    assert_eq!(ports["ports"].as_array().map(Vec::len), Some(2), "{ports}");
}

/// Ports of a cloud from before attachments were recorded are marked at start-up the way the
/// service would have made them: its own ports attached, a label naming another project's
/// device attached to nothing.
#[tokio::test]
async fn older_ports_are_marked_as_the_service_made_them() {
    let c = Cloud::start().await;
    let Scene {
        admin,
        victim,
        mallory,
        vnet,
        vrouter,
        server,
        mnet,
        ..
    } = c.scene("198.18.46.0/24", "198.18.47.0/24").await;
    let (st, rogue) = c
        .net(
            Method::POST,
            "/v2.0/ports",
            &admin,
            Some(json!({"port": {
            "network_id": mnet, "project_id": mallory.project,
            "device_id": server, "device_owner": "compute:nova"}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{rogue}");
    // Make every port look as an older release wrote it: no attachment recorded.
    let rows =
        c.cp.store
            .net_list(&onestack_store::NetFilter::of("port"))
            .await
            .expect("ports");
    let mut tx = c.cp.store.net_tx().await.expect("tx");
    for mut row in rows {
        let mut body: Value = serde_json::from_str(&row.body).expect("port json");
        body.as_object_mut().expect("object").remove("bound_device");
        row.body = body.to_string();
        tx.update(&row).await.expect("update");
    }
    tx.commit().await.expect("commit");
    // Unmarked, nothing is attached: the server has no NIC.
    let (_, s) = c
        .nova(
            Method::GET,
            &format!("/v2.1/servers/{server}"),
            &victim,
            None,
        )
        .await;
    assert_eq!(s["server"]["addresses"], json!({}), "{s}");

    let marked = c.cp.net.backfill_attachments().await.expect("backfill");
    assert!(
        marked >= 5,
        "server NIC, router leg, two DHCP ports, the label: {marked}"
    );
    assert_eq!(c.cp.net.backfill_attachments().await.expect("again"), 0);
    let (_, s) = c
        .nova(
            Method::GET,
            &format!("/v2.1/servers/{server}"),
            &victim,
            None,
        )
        .await;
    let addrs = s["server"]["addresses"].as_object().expect("addresses");
    assert_eq!(addrs.len(), 1, "only the server's own NIC: {addrs:?}");
    let state = c.network_node_state().await;
    let router = state["routers"]
        .as_array()
        .expect("routers")
        .iter()
        .find(|r| r["id"] == vrouter.as_str())
        .expect("router")
        .clone();
    assert_eq!(
        router["interfaces"].as_array().map(Vec::len),
        Some(1),
        "{router}"
    );
    assert_eq!(state["dhcp"].as_array().map(Vec::len), Some(2), "{state}");
    let rogue_ip = rogue["port"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .expect("ip");
    let (st, _) = c.agent_get(&format!("/metadata/{mnet}/{rogue_ip}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let vip = addrs.values().next().expect("net")[0]["addr"]
        .as_str()
        .expect("ip")
        .to_string();
    let (st, _) = c.agent_get(&format!("/metadata/{vnet}/{vip}")).await;
    assert_eq!(
        st,
        StatusCode::OK,
        "the server's own address still gets its metadata"
    );
}

/// Issue 19, item 8: a NUL character in a name, anywhere in a body, or in a path or query is
/// refused by every service with its own error shape, and nothing is made.
#[tokio::test]
async fn nul_characters_are_refused_by_every_service() {
    let c = Cloud::start().await;
    let demo = c.caller("demo", DEMO_PW, "demo").await;
    let admin = c.caller("admin", ADMIN_PW, "admin").await;
    let cp = &c.cp;
    let volume = format!("{}/v3/{}", cp.volume, demo.project);
    let cases = [
        (
            format!("{}/v2.0/networks", cp.network),
            json!({"network": {"name": "a\u{0}b"}}),
            "NeutronError",
        ),
        (
            format!("{}/v2.1/os-keypairs", cp.compute),
            json!({"keypair": {"name": "k\u{0}"}}),
            "badRequest",
        ),
        (
            format!("{}/v2.1/servers", cp.compute),
            json!({"server": {"name": "s\u{0}", "imageRef": "x", "flavorRef": "1"}}),
            "badRequest",
        ),
        (
            format!("{}/v2/images", cp.image),
            json!({"name": "i\u{0}", "disk_format": "raw", "container_format": "bare"}),
            "message",
        ),
        (
            format!("{volume}/volumes"),
            json!({"volume": {"size": 1, "name": "v", "metadata": {"k\u{0}": "v"}}}),
            "badRequest",
        ),
    ];
    for (url, body, key) in &cases {
        let (st, v) = c
            .call(Method::POST, url, &demo.token, Some(body.clone()))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{url}: {v}");
        assert!(
            !v[key].is_null(),
            "{url}: the service's own error shape: {v}"
        );
    }
    let (st, v) = c
        .call(
            Method::POST,
            &format!("{}/v3/projects", cp.identity),
            &admin.token,
            Some(json!({"project": {"name": "p\u{0}", "domain_id": "default"}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["code"].is_number(), "{v}");
    for url in [
        format!("{}/v2.0/networks/x%00y", cp.network),
        format!("{}/v2.0/networks?name=a%00", cp.network),
        format!("{}/v2.1/servers/x%00", cp.compute),
        format!("{}/v2/images/x%00", cp.image),
        format!("{volume}/volumes/x%00"),
        format!("{}/v3/users/x%00", cp.identity),
    ] {
        let (st, v) = c.call(Method::GET, &url, &admin.token, None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{url}: {v}");
    }
    // Nothing was made.
    let (_, nets) = c.net(Method::GET, "/v2.0/networks", &demo, None).await;
    assert!(
        nets["networks"]
            .as_array()
            .expect("list")
            .iter()
            .all(|n| n["project_id"] != demo.project.as_str()),
        "{nets}"
    );
    let (_, keys) = c.nova(Method::GET, "/v2.1/os-keypairs", &demo, None).await;
    assert_eq!(keys["keypairs"], json!([]));
}
