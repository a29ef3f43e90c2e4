//! Project network views: networks and subnets, routers, floating IPs, security groups and rules.
//! Every page is a handful of Neutron (and, for instance names, Nova) calls with the user's token;
//! every change is a form that posts, redirects back and shows the API's answer next to itself.

use crate::api::{seg, text, ApiResult, Failure, Svc};
use crate::html::{button_form, escape, options, page, post_form, table};
use crate::{error_page, form, html_response, Ctx, Dash};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;

pub fn routes() -> Router<Dash> {
    Router::new()
        .route("/project/networks", get(networks))
        .route("/project/networks/create", post(network_create))
        .route("/project/networks/{id}/delete", post(network_delete))
        .route("/project/subnets/create", post(subnet_create))
        .route("/project/subnets/{id}/delete", post(subnet_delete))
        .route("/project/routers", get(routers))
        .route("/project/routers/create", post(router_create))
        .route("/project/routers/add_interface", post(router_add_interface))
        .route("/project/routers/{id}/delete", post(router_delete))
        .route(
            "/project/routers/{id}/remove_interface",
            post(router_remove_interface),
        )
        .route("/project/floating_ips", get(floating_ips))
        .route("/project/floating_ips/allocate", post(fip_allocate))
        .route("/project/floating_ips/associate", post(fip_associate))
        .route(
            "/project/floating_ips/{id}/disassociate",
            post(fip_disassociate),
        )
        .route("/project/floating_ips/{id}/release", post(fip_release))
        .route("/project/security_groups", get(security_groups))
        .route("/project/security_groups/create", post(group_create))
        .route("/project/security_groups/{id}", get(group_detail))
        .route("/project/security_groups/{id}/delete", post(group_delete))
        .route("/project/security_groups/{id}/rules", post(rule_create))
        .route(
            "/project/security_groups/{id}/rules/{rule}/delete",
            post(rule_delete),
        )
}

// ---- helpers --------------------------------------------------------------------------------

fn failed(ctx: &Ctx, f: Failure) -> Response {
    html_response(f.status, error_page(&ctx.s, &f.message))
}

fn ok_page(ctx: &Ctx, title: &str, body: &str) -> Response {
    html_response(StatusCode::OK, page(title, Some(&ctx.s), body))
}

/// A submitted field, trimmed ("" when absent).
fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> &'a str {
    f.get(k).map_or("", |v| v.trim())
}

/// The `key` array of an answer.
fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A resource's name, or its id when it has none (Neutron names are optional).
fn label(v: &Value) -> &str {
    match text(v, "name") {
        "" => text(v, "id"),
        n => n,
    }
}

/// id → label of each resource.
fn names(list: &[Value]) -> HashMap<&str, &str> {
    list.iter().map(|v| (text(v, "id"), label(v))).collect()
}

fn mine(ctx: &Ctx, v: &Value) -> bool {
    text(v, "project_id") == ctx.s.project_id
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// The outcome of an API call as a notice text.
fn outcome(r: ApiResult, ok: impl FnOnce(&Value) -> String) -> Result<String, String> {
    r.map(|v| ok(&v)).map_err(|e| e.message)
}

/// A POST form of one button with hidden fields (the table rows' actions).
fn hidden_button(ctx: &Ctx, action: &str, hidden: &[(&str, &str)], label: &str) -> String {
    let inputs: String = hidden
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(k),
                escape(v)
            )
        })
        .collect();
    post_form(
        &ctx.s,
        "",
        action,
        "inline",
        &format!(
            "{inputs}<button type=\"submit\" class=\"plain\">{}</button>",
            escape(label)
        ),
    )
}

/// A form whose choices may be empty: then a note stands in for its inputs, and the form (with
/// the notice of its last use above it) stays where the user expects it.
fn form_or_note(
    ctx: &Ctx,
    id: &str,
    action: &str,
    choices: bool,
    inner: &str,
    note: &str,
) -> String {
    let inner = if choices {
        inner.to_string()
    } else {
        format!("<p class=\"note\">{}</p>", escape(note))
    };
    post_form(&ctx.s, id, action, "card", &inner)
}

/// "ip (subnet name)" items of a port's or router gateway's fixed IPs.
fn fixed_ips(list: &Value, subnets: &HashMap<&str, &str>) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|ip| {
            let subnet = text(ip, "subnet_id");
            match subnets.get(subnet) {
                Some(name) => format!("{} ({name})", text(ip, "ip_address")),
                None => text(ip, "ip_address").to_string(),
            }
        })
        .collect()
}

// ---- networks and subnets -------------------------------------------------------------------

async fn networks(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    let (nets, subnets) = tokio::join!(
        d.get(&ctx.s, Svc::Network, "/networks"),
        d.list(&ctx.s, Svc::Network, "/subnets", "subnets"),
    );
    let nets = match nets {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let nets = items(&nets, "networks");
    let net_names = names(nets);
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| {
            let id = text(n, "id");
            let subs: Vec<String> = subnets
                .iter()
                .filter(|s| text(s, "network_id") == id)
                .map(|s| format!("{} {}", escape(label(s)), escape(text(s, "cidr"))))
                .collect();
            vec![
                format!("<span class=\"name\">{}</span>", escape(label(n))),
                subs.join("<br>"),
                yes_no(&n["shared"]).into(),
                yes_no(&n["router:external"]).into(),
                escape(text(n, "status")),
                if mine(&ctx, n) {
                    button_form(
                        &ctx.s,
                        &format!("/project/networks/{}/delete", seg(id)),
                        "Delete",
                        "danger",
                    )
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let subnet_rows: Vec<Vec<String>> = subnets
        .iter()
        .map(|s| {
            let net = text(s, "network_id");
            vec![
                format!("<span class=\"name\">{}</span>", escape(label(s))),
                escape(net_names.get(net).copied().unwrap_or(net)),
                escape(text(s, "cidr")),
                escape(s["gateway_ip"].as_str().unwrap_or("(none)")),
                yes_no(&s["enable_dhcp"]).into(),
                if mine(&ctx, s) {
                    button_form(
                        &ctx.s,
                        &format!("/project/subnets/{}/delete", seg(text(s, "id"))),
                        "Delete",
                        "danger",
                    )
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let own_nets: Vec<(String, String)> = nets
        .iter()
        .filter(|n| mine(&ctx, n))
        .map(|n| (text(n, "id").to_string(), label(n).to_string()))
        .collect();
    let create = post_form(
        &ctx.s,
        "create-network",
        "/project/networks/create",
        "card",
        "<label>Name <input name=\"name\" required maxlength=\"255\"></label>\
         <fieldset><legend>Subnet (optional)</legend>\
         <label>Subnet name <input name=\"subnet_name\" maxlength=\"255\"></label>\
         <label>CIDR <input name=\"cidr\" placeholder=\"10.0.0.0/24\"></label>\
         <label>Gateway <input name=\"gateway_ip\" placeholder=\"(the first address)\"></label>\
         <label class=\"check\"><input type=\"checkbox\" name=\"enable_dhcp\" value=\"on\" checked> DHCP</label>\
         </fieldset><button type=\"submit\">Create network</button>",
    );
    let add_subnet = form_or_note(
            &ctx,
            "create-subnet",
            "/project/subnets/create",
            !own_nets.is_empty(),
            &format!(
                "<label>Network <select name=\"network_id\">{}</select></label>\
                 <label>Name <input name=\"name\" maxlength=\"255\"></label>\
                 <label>CIDR <input name=\"cidr\" required placeholder=\"10.0.1.0/24\"></label>\
                 <label>Gateway <input name=\"gateway_ip\" placeholder=\"(the first address)\"></label>\
                 <label class=\"check\"><input type=\"checkbox\" name=\"enable_dhcp\" value=\"on\" checked> DHCP</label>\
                 <button type=\"submit\">Add subnet</button>",
                options(&own_nets, "")
            ),
            "Create a network first.",
        );
    ok_page(
        &ctx,
        "Networks",
        &format!(
            "<h1>Networks</h1>{}{}<h2>Subnets</h2>{}{}\
             <h2>Create a network</h2>{}{create}<h2>Add a subnet</h2>{}{add_subnet}",
            ctx.notice("networks"),
            table(
                &["Name", "Subnets", "Shared", "External", "Status", ""],
                &rows,
                "No networks."
            ),
            ctx.notice("subnets"),
            table(
                &["Name", "Network", "CIDR", "Gateway", "DHCP", ""],
                &subnet_rows,
                "No subnets."
            ),
            ctx.notice("create-network"),
            ctx.notice("create-subnet"),
        ),
    )
}

/// The body of a subnet from the form's `name`, `cidr`, `gateway_ip`, `enable_dhcp`.
fn subnet_body(network: &str, name: &str, f: &HashMap<String, String>) -> Value {
    let cidr = field(f, "cidr");
    let mut subnet = json!({
        "network_id": network,
        "name": name,
        "cidr": cidr,
        "ip_version": if cidr.contains(':') { 6 } else { 4 },
        "enable_dhcp": !field(f, "enable_dhcp").is_empty(),
    });
    if !field(f, "gateway_ip").is_empty() {
        subnet["gateway_ip"] = json!(field(f, "gateway_ip"));
    }
    json!({ "subnet": subnet })
}

async fn network_create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let name = field(&f, "name");
    let back = "/project/networks";
    let net = match d
        .post(
            &ctx.s,
            Svc::Network,
            "/networks",
            &json!({"network": {"name": name}}),
        )
        .await
    {
        Ok(v) => v,
        Err(e) => return d.flash(&ctx, "create-network", Err(e.message), back),
    };
    let cidr = field(&f, "cidr");
    if cidr.is_empty() {
        let msg = format!("Network {name} created.");
        return d.flash(&ctx, "create-network", Ok(msg), back);
    }
    let net_id = text(&net["network"], "id").to_string();
    let sub = subnet_body(&net_id, field(&f, "subnet_name"), &f);
    let msg = match d.post(&ctx.s, Svc::Network, "/subnets", &sub).await {
        Ok(_) => Ok(format!("Network {name} created with subnet {cidr}.")),
        // One form, one outcome: a refused subnet takes its new network away again, so a
        // corrected resubmission does not leave a twin behind.
        Err(e) => {
            let path = format!("/networks/{}", seg(&net_id));
            match d.delete(&ctx.s, Svc::Network, &path).await {
                Ok(_) => Err(format!("Nothing was created: {}", e.message)),
                Err(_) => Err(format!(
                    "Network {name} was created, but not its subnet: {}",
                    e.message
                )),
            }
        }
    };
    d.flash(&ctx, "create-network", msg, back)
}

async fn network_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let r = d
        .delete(&ctx.s, Svc::Network, &format!("/networks/{}", seg(&id)))
        .await;
    let msg = outcome(r, |_| "Network deleted.".into());
    d.flash(&ctx, "networks", msg, "/project/networks")
}

async fn subnet_create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let back = "/project/networks";
    let network = field(&f, "network_id");
    if network.is_empty() {
        return d.flash(&ctx, "create-subnet", Err("Choose a network.".into()), back);
    }
    let sub = subnet_body(network, field(&f, "name"), &f);
    let r = d.post(&ctx.s, Svc::Network, "/subnets", &sub).await;
    let msg = outcome(r, |v| {
        format!("Subnet {} created.", text(&v["subnet"], "cidr"))
    });
    d.flash(&ctx, "create-subnet", msg, back)
}

async fn subnet_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let r = d
        .delete(&ctx.s, Svc::Network, &format!("/subnets/{}", seg(&id)))
        .await;
    let msg = outcome(r, |_| "Subnet deleted.".into());
    d.flash(&ctx, "subnets", msg, "/project/networks")
}

// ---- routers --------------------------------------------------------------------------------

async fn routers(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    // One port list for all routers: a member sees only the project's ports either way.
    let (routers, nets, subnets, ports) = tokio::join!(
        d.get(&ctx.s, Svc::Network, "/routers"),
        d.list(&ctx.s, Svc::Network, "/networks", "networks"),
        d.list(&ctx.s, Svc::Network, "/subnets", "subnets"),
        d.list(
            &ctx.s,
            Svc::Network,
            "/ports?device_owner=network:router_interface",
            "ports"
        ),
    );
    let routers = match routers {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let routers = items(&routers, "routers");
    let net_names = names(&nets);
    let subnet_labels: HashMap<&str, String> = subnets
        .iter()
        .map(|s| (text(s, "id"), format!("{} {}", label(s), text(s, "cidr"))))
        .collect();
    let subnet_names: HashMap<&str, &str> = subnet_labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let rows: Vec<Vec<String>> = routers
        .iter()
        .map(|r| {
            let id = text(r, "id");
            let gw = &r["external_gateway_info"];
            let gateway = if gw.is_object() {
                let net = text(gw, "network_id");
                let ips: Vec<&str> = gw["external_fixed_ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|ip| text(ip, "ip_address"))
                    .collect();
                format!(
                    "{}: {}",
                    escape(net_names.get(net).copied().unwrap_or(net)),
                    escape(&ips.join(", "))
                )
            } else {
                "(none)".into()
            };
            let remove = format!("/project/routers/{}/remove_interface", seg(id));
            let interfaces: Vec<String> = ports
                .iter()
                .filter(|p| text(p, "device_id") == id)
                .map(|p| {
                    format!(
                        "<span class=\"interface\">{}</span> {}",
                        escape(&fixed_ips(&p["fixed_ips"], &subnet_names).join(", ")),
                        hidden_button(&ctx, &remove, &[("port_id", text(p, "id"))], "Remove"),
                    )
                })
                .collect();
            vec![
                format!("<span class=\"name\">{}</span>", escape(label(r))),
                escape(text(r, "status")),
                gateway,
                interfaces.join("<br>"),
                button_form(
                    &ctx.s,
                    &format!("/project/routers/{}/delete", seg(id)),
                    "Delete",
                    "danger",
                ),
            ]
        })
        .collect();
    let mut externals = vec![(String::new(), "(none)".to_string())];
    externals.extend(
        nets.iter()
            .filter(|n| n["router:external"] == json!(true))
            .map(|n| (text(n, "id").to_string(), label(n).to_string())),
    );
    let own_routers: Vec<(String, String)> = routers
        .iter()
        .filter(|r| mine(&ctx, r))
        .map(|r| (text(r, "id").to_string(), label(r).to_string()))
        .collect();
    let own_subnets: Vec<(String, String)> = subnets
        .iter()
        .filter(|s| mine(&ctx, s))
        .map(|s| {
            let net = text(s, "network_id");
            (
                text(s, "id").to_string(),
                format!(
                    "{} {} ({})",
                    label(s),
                    text(s, "cidr"),
                    net_names.get(net).copied().unwrap_or(net)
                ),
            )
        })
        .collect();
    let create = post_form(
        &ctx.s,
        "create-router",
        "/project/routers/create",
        "card",
        &format!(
            "<label>Name <input name=\"name\" required maxlength=\"255\"></label>\
             <label>External network <select name=\"external_network\">{}</select></label>\
             <button type=\"submit\">Create router</button>",
            // The first external network is the usual choice.
            options(&externals, externals.get(1).map_or("", |e| e.0.as_str()))
        ),
    );
    let add = form_or_note(
        &ctx,
        "add-interface",
        "/project/routers/add_interface",
        !own_routers.is_empty() && !own_subnets.is_empty(),
        &format!(
            "<label>Router <select name=\"router\">{}</select></label>\
                 <label>Subnet <select name=\"subnet\">{}</select></label>\
                 <button type=\"submit\">Add interface</button>",
            options(&own_routers, ""),
            options(&own_subnets, "")
        ),
        "Adding an interface needs one of your routers and one of your subnets.",
    );
    ok_page(
        &ctx,
        "Routers",
        &format!(
            "<h1>Routers</h1>{}{}<h2>Create a router</h2>{}{create}<h2>Add an interface</h2>{}{add}",
            ctx.notice("routers"),
            table(
                &["Name", "Status", "External gateway", "Interfaces", ""],
                &rows,
                "No routers."
            ),
            ctx.notice("create-router"),
            ctx.notice("add-interface"),
        ),
    )
}

async fn router_create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let name = field(&f, "name");
    let mut router = json!({ "name": name });
    if !field(&f, "external_network").is_empty() {
        router["external_gateway_info"] = json!({"network_id": field(&f, "external_network")});
    }
    let r = d
        .post(
            &ctx.s,
            Svc::Network,
            "/routers",
            &json!({ "router": router }),
        )
        .await;
    let msg = outcome(r, |_| format!("Router {name} created."));
    d.flash(&ctx, "create-router", msg, "/project/routers")
}

async fn router_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    // A router with interfaces is refused by Neutron (409): its message is the notice, and the
    // user removes the interfaces deliberately.
    let r = d
        .delete(&ctx.s, Svc::Network, &format!("/routers/{}", seg(&id)))
        .await;
    let msg = outcome(r, |_| "Router deleted.".into());
    d.flash(&ctx, "routers", msg, "/project/routers")
}

async fn router_add_interface(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let back = "/project/routers";
    let (router, subnet) = (field(&f, "router"), field(&f, "subnet"));
    if router.is_empty() || subnet.is_empty() {
        let msg = Err("Choose a router and a subnet.".to_string());
        return d.flash(&ctx, "add-interface", msg, back);
    }
    let r = d
        .put(
            &ctx.s,
            Svc::Network,
            &format!("/routers/{}/add_router_interface", seg(router)),
            &json!({ "subnet_id": subnet }),
        )
        .await;
    let msg = outcome(r, |_| "Interface added.".into());
    d.flash(&ctx, "add-interface", msg, back)
}

async fn router_remove_interface(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let req = match (field(&f, "port_id"), field(&f, "subnet_id")) {
        ("", "") => {
            let msg = Err("Choose an interface.".to_string());
            return d.flash(&ctx, "routers", msg, "/project/routers");
        }
        ("", subnet) => json!({ "subnet_id": subnet }),
        (port, _) => json!({ "port_id": port }),
    };
    let r = d
        .put(
            &ctx.s,
            Svc::Network,
            &format!("/routers/{}/remove_router_interface", seg(&id)),
            &req,
        )
        .await;
    let msg = outcome(r, |_| "Interface removed.".into());
    d.flash(&ctx, "routers", msg, "/project/routers")
}

// ---- floating IPs ---------------------------------------------------------------------------

async fn floating_ips(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    let fips_path = format!("/floatingips?project_id={}", seg(&ctx.s.project_id));
    let ports_path = format!("/ports?project_id={}", seg(&ctx.s.project_id));
    let (fips, externals, servers, ports) = tokio::join!(
        d.get(&ctx.s, Svc::Network, &fips_path),
        d.list(
            &ctx.s,
            Svc::Network,
            "/networks?router:external=true",
            "networks"
        ),
        d.list(&ctx.s, Svc::Compute, "/servers/detail", "servers"),
        d.list(&ctx.s, Svc::Network, &ports_path, "ports"),
    );
    let fips = match fips {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let fips = items(&fips, "floatingips");
    let net_names = names(&externals);
    let server_names = names(&servers);
    let port_device: HashMap<&str, &str> = ports
        .iter()
        .map(|p| (text(p, "id"), text(p, "device_id")))
        .collect();
    let rows: Vec<Vec<String>> = fips
        .iter()
        .map(|f| {
            let id = text(f, "id");
            let port = text(f, "port_id");
            let instance = port_device
                .get(port)
                .filter(|dev| !dev.is_empty())
                .map(|dev| match server_names.get(dev) {
                    Some(name) => format!(
                        "<a href=\"/project/instances/{}\">{}</a>",
                        escape(&seg(dev)),
                        escape(name)
                    ),
                    None => escape(dev),
                })
                .unwrap_or_default();
            let net = text(f, "floating_network_id");
            let mut actions = String::new();
            if !port.is_empty() {
                actions.push_str(&button_form(
                    &ctx.s,
                    &format!("/project/floating_ips/{}/disassociate", seg(id)),
                    "Disassociate",
                    "plain",
                ));
            }
            actions.push_str(&button_form(
                &ctx.s,
                &format!("/project/floating_ips/{}/release", seg(id)),
                "Release",
                "danger",
            ));
            vec![
                format!(
                    "<span class=\"fip\">{}</span>",
                    escape(text(f, "floating_ip_address"))
                ),
                escape(text(f, "fixed_ip_address")),
                instance,
                escape(text(f, "status")),
                escape(net_names.get(net).copied().unwrap_or(net)),
                actions,
            ]
        })
        .collect();
    let external_choices: Vec<(String, String)> = externals
        .iter()
        .map(|n| (text(n, "id").to_string(), label(n).to_string()))
        .collect();
    let allocate = form_or_note(
        &ctx,
        "allocate",
        "/project/floating_ips/allocate",
        !external_choices.is_empty(),
        &format!(
            "<label>External network <select name=\"network\">{}</select></label>\
                 <button type=\"submit\">Allocate</button>",
            options(&external_choices, "")
        ),
        "There is no external network to allocate from.",
    );
    let free: Vec<(String, String)> = fips
        .iter()
        .filter(|f| text(f, "port_id").is_empty())
        .map(|f| {
            (
                text(f, "id").to_string(),
                text(f, "floating_ip_address").to_string(),
            )
        })
        .collect();
    let instance_ports: Vec<(String, String)> = ports
        .iter()
        .filter(|p| text(p, "device_owner").starts_with("compute:"))
        .map(|p| {
            let dev = text(p, "device_id");
            let ips: Vec<&str> = p["fixed_ips"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|ip| text(ip, "ip_address"))
                .collect();
            (
                text(p, "id").to_string(),
                format!(
                    "{}: {}",
                    server_names.get(dev).copied().unwrap_or(dev),
                    ips.join(", ")
                ),
            )
        })
        .collect();
    let associate = form_or_note(
        &ctx,
        "associate",
        "/project/floating_ips/associate",
        !free.is_empty() && !instance_ports.is_empty(),
        &format!(
            "<label>Floating IP <select name=\"floating_ip\">{}</select></label>\
                 <label>Instance port <select name=\"port\">{}</select></label>\
                 <button type=\"submit\">Associate</button>",
            options(&free, ""),
            options(&instance_ports, "")
        ),
        "Associating needs an unassociated floating IP and an instance.",
    );
    ok_page(
        &ctx,
        "Floating IPs",
        &format!(
            "<h1>Floating IPs</h1>{}{}<h2>Allocate a floating IP</h2>{}{allocate}\
             <h2>Associate a floating IP</h2>{}{associate}",
            ctx.notice("floating_ips"),
            table(
                &[
                    "Floating IP",
                    "Fixed IP",
                    "Instance",
                    "Status",
                    "Network",
                    ""
                ],
                &rows,
                "No floating IPs."
            ),
            ctx.notice("allocate"),
            ctx.notice("associate"),
        ),
    )
}

async fn fip_allocate(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let r = d
        .post(
            &ctx.s,
            Svc::Network,
            "/floatingips",
            &json!({"floatingip": {"floating_network_id": field(&f, "network")}}),
        )
        .await;
    let msg = outcome(r, |v| {
        format!(
            "Allocated floating IP {}.",
            text(&v["floatingip"], "floating_ip_address")
        )
    });
    d.flash(&ctx, "allocate", msg, "/project/floating_ips")
}

async fn fip_associate(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let back = "/project/floating_ips";
    let (fip, port) = (field(&f, "floating_ip"), field(&f, "port"));
    if fip.is_empty() || port.is_empty() {
        let msg = Err("Choose a floating IP and an instance port.".to_string());
        return d.flash(&ctx, "associate", msg, back);
    }
    let r = d
        .put(
            &ctx.s,
            Svc::Network,
            &format!("/floatingips/{}", seg(fip)),
            &json!({"floatingip": {"port_id": port}}),
        )
        .await;
    let msg = outcome(r, |v| {
        format!(
            "Floating IP {} associated.",
            text(&v["floatingip"], "floating_ip_address")
        )
    });
    d.flash(&ctx, "associate", msg, back)
}

async fn fip_disassociate(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let r = d
        .put(
            &ctx.s,
            Svc::Network,
            &format!("/floatingips/{}", seg(&id)),
            &json!({"floatingip": {"port_id": null}}),
        )
        .await;
    let msg = outcome(r, |_| "Floating IP disassociated.".into());
    d.flash(&ctx, "floating_ips", msg, "/project/floating_ips")
}

async fn fip_release(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let r = d
        .delete(&ctx.s, Svc::Network, &format!("/floatingips/{}", seg(&id)))
        .await;
    let msg = outcome(r, |_| "Floating IP released.".into());
    d.flash(&ctx, "floating_ips", msg, "/project/floating_ips")
}

// ---- security groups ------------------------------------------------------------------------

async fn security_groups(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    let path = format!("/security-groups?project_id={}", seg(&ctx.s.project_id));
    let groups = match d.get(&ctx.s, Svc::Network, &path).await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let rows: Vec<Vec<String>> = items(&groups, "security_groups")
        .iter()
        .map(|g| {
            let id = text(g, "id");
            vec![
                format!(
                    "<a class=\"name\" href=\"/project/security_groups/{}\">{}</a>",
                    escape(&seg(id)),
                    escape(label(g))
                ),
                escape(text(g, "description")),
                items(g, "security_group_rules").len().to_string(),
                // The project's default group cannot go; no button invites trying.
                if text(g, "name") == "default" {
                    String::new()
                } else {
                    button_form(
                        &ctx.s,
                        &format!("/project/security_groups/{}/delete", seg(id)),
                        "Delete",
                        "danger",
                    )
                },
            ]
        })
        .collect();
    let create = post_form(
        &ctx.s,
        "create-group",
        "/project/security_groups/create",
        "card",
        "<label>Name <input name=\"name\" required maxlength=\"255\"></label>\
         <label>Description <input name=\"description\" maxlength=\"255\"></label>\
         <button type=\"submit\">Create security group</button>",
    );
    ok_page(
        &ctx,
        "Security groups",
        &format!(
            "<h1>Security groups</h1>{}{}<h2>Create a security group</h2>{}{create}",
            ctx.notice("security_groups"),
            table(
                &["Name", "Description", "Rules", ""],
                &rows,
                "No security groups."
            ),
            ctx.notice("create-group"),
        ),
    )
}

async fn group_create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let name = field(&f, "name");
    let r = d
        .post(
            &ctx.s,
            Svc::Network,
            "/security-groups",
            &json!({"security_group": {"name": name, "description": field(&f, "description")}}),
        )
        .await;
    let msg = outcome(r, |_| format!("Security group {name} created."));
    d.flash(&ctx, "create-group", msg, "/project/security_groups")
}

async fn group_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let r = d
        .delete(
            &ctx.s,
            Svc::Network,
            &format!("/security-groups/{}", seg(&id)),
        )
        .await;
    let msg = outcome(r, |_| "Security group deleted.".into());
    d.flash(&ctx, "security_groups", msg, "/project/security_groups")
}

/// "22", "1000-2000" or "any"; for ICMP the type and code.
fn port_range(rule: &Value) -> String {
    let (min, max) = (
        rule["port_range_min"].as_i64(),
        rule["port_range_max"].as_i64(),
    );
    let proto = text(rule, "protocol");
    if proto == "icmp" || proto == "ipv6-icmp" || proto == "1" {
        return match (min, max) {
            (None, _) => "any".into(),
            (Some(t), None) => format!("type {t}"),
            (Some(t), Some(c)) => format!("type {t} code {c}"),
        };
    }
    match (min, max) {
        (None, None) => "any".into(),
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        (Some(a), None) | (None, Some(a)) => a.to_string(),
    }
}

async fn group_detail(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = signed_in!(d, headers);
    let group_path = format!("/security-groups/{}", seg(&id));
    let (group, all) = tokio::join!(
        d.get(&ctx.s, Svc::Network, &group_path),
        d.list(&ctx.s, Svc::Network, "/security-groups", "security_groups"),
    );
    let group = match group {
        Ok(v) => v["security_group"].clone(),
        Err(f) => return failed(&ctx, f),
    };
    let group_names = names(&all);
    let base = format!("/project/security_groups/{}", seg(&id));
    let rows: Vec<Vec<String>> = items(&group, "security_group_rules")
        .iter()
        .map(|r| {
            let remote = match (
                r["remote_ip_prefix"].as_str(),
                r["remote_group_id"].as_str(),
            ) {
                (Some(p), _) if !p.is_empty() => p.to_string(),
                (_, Some(g)) if !g.is_empty() => group_names.get(g).copied().unwrap_or(g).into(),
                _ => "any".into(),
            };
            vec![
                format!(
                    "<span class=\"rule\" data-rule=\"{}\">{}</span>",
                    escape(text(r, "id")),
                    escape(text(r, "direction"))
                ),
                escape(text(r, "ethertype")),
                escape(r["protocol"].as_str().unwrap_or("any")),
                escape(&port_range(r)),
                escape(&remote),
                button_form(
                    &ctx.s,
                    &format!("{base}/rules/{}/delete", seg(text(r, "id"))),
                    "Delete",
                    "danger",
                ),
            ]
        })
        .collect();
    let dirs: Vec<(String, String)> = ["ingress", "egress"]
        .iter()
        .map(|d| (d.to_string(), d.to_string()))
        .collect();
    let protos: Vec<(String, String)> = ["tcp", "udp", "icmp", "any"]
        .iter()
        .map(|p| (p.to_string(), p.to_string()))
        .collect();
    let mut remotes = vec![(String::new(), "(none)".to_string())];
    remotes.extend(
        all.iter()
            .map(|g| (text(g, "id").to_string(), label(g).to_string())),
    );
    let add = post_form(
        &ctx.s,
        "add-rule",
        &format!("{base}/rules"),
        "card",
        &format!(
            "<label>Direction <select name=\"direction\">{}</select></label>\
             <label>Protocol <select name=\"protocol\">{}</select></label>\
             <label>Port (or ICMP type) from <input name=\"port_min\" inputmode=\"numeric\"></label>\
             <label>Port (or ICMP code) to <input name=\"port_max\" inputmode=\"numeric\" placeholder=\"(same)\"></label>\
             <label>Remote CIDR <input name=\"remote_ip_prefix\" placeholder=\"0.0.0.0/0\"></label>\
             <label>or remote group <select name=\"remote_group_id\">{}</select></label>\
             <button type=\"submit\">Add rule</button>",
            options(&dirs, "ingress"),
            options(&protos, "tcp"),
            options(&remotes, ""),
        ),
    );
    let name = label(&group);
    ok_page(
        &ctx,
        name,
        &format!(
            "<h1>Security group {}</h1><p>{}</p><p><a href=\"/project/security_groups\">All security groups</a></p>\
             <h2>Rules</h2>{}<div id=\"rules\">{}</div><h2>Add a rule</h2>{}{add}",
            escape(name),
            escape(text(&group, "description")),
            ctx.notice("rules"),
            table(
                &["Direction", "Ether type", "Protocol", "Ports", "Remote", ""],
                &rows,
                "No rules: nothing is allowed."
            ),
            ctx.notice("add-rule"),
        ),
    )
}

/// A port (or ICMP type/code) field: empty, or a whole number.
fn port_field(v: &str, what: &str) -> Result<Option<u16>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("{what} must be a whole number from 0 to 65535, not {v:?}."))
}

async fn rule_create(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let back = format!("/project/security_groups/{}", seg(&id));
    let ports = port_field(field(&f, "port_min"), "The lowest port")
        .and_then(|min| Ok((min, port_field(field(&f, "port_max"), "The highest port")?)));
    // Checked here so that a typo never reaches the API as a half-made rule.
    let (min, max) = match ports {
        Ok((min, max)) => (min.or(max), max.or(min)),
        Err(e) => return d.flash(&ctx, "add-rule", Err(e), &back),
    };
    let prefix = field(&f, "remote_ip_prefix");
    let mut rule = json!({
        "security_group_id": id,
        "direction": field(&f, "direction"),
        "ethertype": if prefix.contains(':') { "IPv6" } else { "IPv4" },
    });
    match field(&f, "protocol") {
        "" | "any" => {}
        p => rule["protocol"] = json!(p),
    }
    if let Some(min) = min {
        rule["port_range_min"] = json!(min);
    }
    if let Some(max) = max {
        rule["port_range_max"] = json!(max);
    }
    if !prefix.is_empty() {
        rule["remote_ip_prefix"] = json!(prefix);
    }
    if !field(&f, "remote_group_id").is_empty() {
        rule["remote_group_id"] = json!(field(&f, "remote_group_id"));
    }
    let r = d
        .post(
            &ctx.s,
            Svc::Network,
            "/security-group-rules",
            &json!({ "security_group_rule": rule }),
        )
        .await;
    let msg = outcome(r, |v| {
        let r = &v["security_group_rule"];
        format!(
            "Rule added: {} {} {}.",
            text(r, "direction"),
            r["protocol"].as_str().unwrap_or("any"),
            port_range(r)
        )
    });
    d.flash(&ctx, "add-rule", msg, &back)
}

async fn rule_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path((id, rule)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let r = d
        .delete(
            &ctx.s,
            Svc::Network,
            &format!("/security-group-rules/{}", seg(&rule)),
        )
        .await;
    let msg = outcome(r, |_| "Rule deleted.".into());
    d.flash(
        &ctx,
        "rules",
        msg,
        &format!("/project/security_groups/{}", seg(&id)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_read_as_people_write_them() {
        let r = |v: Value| port_range(&v);
        assert_eq!(
            r(json!({"protocol": "tcp", "port_range_min": 22, "port_range_max": 22})),
            "22"
        );
        assert_eq!(
            r(json!({"protocol": "udp", "port_range_min": 1000, "port_range_max": 2000})),
            "1000-2000"
        );
        assert_eq!(r(json!({"protocol": null})), "any");
        assert_eq!(
            r(json!({"protocol": "icmp", "port_range_min": 8, "port_range_max": 0})),
            "type 8 code 0"
        );
    }

    #[test]
    fn port_fields_refuse_words() {
        assert_eq!(port_field("", "x"), Ok(None));
        assert_eq!(port_field("8080", "x"), Ok(Some(8080)));
        assert!(port_field("abc", "x").is_err());
        assert!(port_field("70000", "x").is_err());
    }
}
