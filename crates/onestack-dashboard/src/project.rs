//! Project views: overview (usage against quota), instances (list with live status, launch
//! wizard, detail with actions, console log and the interactive console), images (upload with
//! progress), key pairs.

use crate::api::{seg, text, Failure, Svc};
use crate::html::{button_form, escape, options, page, post_form, quota_chart, table, usage_chart};
use crate::{error_page, form, form_all, html_response, Ctx, Dash};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;

pub fn routes() -> Router<Dash> {
    Router::new()
        .route("/project/overview", get(overview))
        .route("/project/instances", get(instances))
        .route("/project/instances/status", get(instance_status))
        .route("/project/instances/launch", get(launch_form).post(launch))
        .route("/project/instances/{id}", get(instance_detail))
        .route("/project/instances/{id}/action", post(instance_action))
        .route("/project/images", get(images))
        .route("/project/images/create", post(image_create))
        .route("/project/images/{id}/file", put(image_upload))
        .route("/project/images/{id}/delete", post(image_delete))
        .route("/project/key_pairs", get(key_pairs))
        .route("/project/key_pairs/create", post(key_pair_create))
        .route("/project/key_pairs/import", post(key_pair_import))
        .route("/project/key_pairs/{name}/delete", post(key_pair_delete))
}

/// The page for an API refusal, with the API's status and message.
pub(crate) fn failed(ctx: &Ctx, f: Failure) -> Response {
    html_response(f.status, error_page(&ctx.s, &f.message))
}

fn ok_page(ctx: &Ctx, title: &str, body: &str) -> Response {
    html_response(StatusCode::OK, page(title, Some(&ctx.s), body))
}

// ---- overview -------------------------------------------------------------------------------

/// The charts of one group of a usage series (`os-onestack-usage-series`): instance-hours,
/// vCPU-hours and RAM GB-hours per bucket, each bar labelled with its bucket's day (or time).
pub(crate) fn series_charts(series: &Value, group: &Value, title: &str) -> String {
    let buckets: Vec<String> = series["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let t = b.as_str().unwrap_or("");
            // Days show as dates; shorter steps keep the time.
            if series["step"].as_i64().unwrap_or(86_400) >= 86_400 {
                t.get(..10).unwrap_or(t).to_string()
            } else {
                t.get(..16).unwrap_or(t).replace('T', " ")
            }
        })
        .collect();
    let bars = |key: &str, scale: f64| -> Vec<(String, f64)> {
        buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (b.clone(), group[key][i].as_f64().unwrap_or(0.0) * scale))
            .collect()
    };
    format!(
        "<section class=\"usage-group\" data-key=\"{}\"><h3>{}</h3><div class=\"usage-charts\">{}{}{}</div></section>",
        escape(group["key"].as_str().unwrap_or("")),
        escape(title),
        usage_chart("Instance-hours", " h", &bars("total_hours", 1.0)),
        usage_chart("vCPU-hours", " h", &bars("total_vcpus_usage", 1.0)),
        usage_chart(
            "RAM GB-hours",
            " GB·h",
            &bars("total_memory_mb_usage", 1.0 / 1024.0)
        ),
    )
}

async fn overview(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    let quota_path = format!("/quotas/{}/details", seg(&ctx.s.project_id));
    let volume_limits = format!("/{}/limits", seg(&ctx.s.project_id));
    // The last seven days, today included, a bar a day (UTC).
    let today = chrono::Utc::now().date_naive();
    let usage_path = format!(
        "/os-onestack-usage-series?start={}T00:00:00&end={}T00:00:00&step=86400&group_by=project",
        (today - chrono::Duration::days(6)).format("%Y-%m-%d"),
        (today + chrono::Duration::days(1)).format("%Y-%m-%d"),
    );
    let (limits, net, vol, usage) = tokio::join!(
        d.get(&ctx.s, Svc::Compute, "/limits"),
        d.get(&ctx.s, Svc::Network, &quota_path),
        d.get(&ctx.s, Svc::Volume, &volume_limits),
        d.get(&ctx.s, Svc::Compute, &usage_path),
    );
    let limits = match limits {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let a = &limits["limits"]["absolute"];
    let n = |k: &str| a[k].as_i64().unwrap_or(0);
    let mut charts = vec![
        quota_chart(
            "Instances",
            n("totalInstancesUsed"),
            n("maxTotalInstances"),
            "",
        ),
        quota_chart("vCPUs", n("totalCoresUsed"), n("maxTotalCores"), ""),
        quota_chart("RAM", n("totalRAMUsed"), n("maxTotalRAMSize"), " MB"),
    ];
    let mut notes = String::new();
    match net {
        Ok(v) => {
            let q = &v["quota"];
            for (key, label) in [
                ("floatingip", "Floating IPs"),
                ("network", "Networks"),
                ("port", "Ports"),
                ("security_group", "Security groups"),
            ] {
                charts.push(quota_chart(
                    label,
                    q[key]["used"].as_i64().unwrap_or(0),
                    q[key]["limit"].as_i64().unwrap_or(-1),
                    "",
                ));
            }
        }
        Err(f) => notes.push_str(&crate::html::notice(&f.message, false)),
    }
    match vol {
        Ok(v) => {
            let a = &v["limits"]["absolute"];
            let n = |k: &str| a[k].as_i64().unwrap_or(0);
            charts.push(quota_chart(
                "Volumes",
                n("totalVolumesUsed"),
                n("maxTotalVolumes"),
                "",
            ));
            charts.push(quota_chart(
                "Volume storage",
                n("totalGigabytesUsed"),
                n("maxTotalVolumeGigabytes"),
                " GB",
            ));
        }
        Err(f) => notes.push_str(&crate::html::notice(&f.message, false)),
    }
    let history = match usage {
        Ok(v) => {
            let series = &v["usage_series"];
            // An admin's token sees every project's series; the overview is this project's.
            let mine = series["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["key"].as_str() == Some(ctx.s.project_id.as_str()));
            let empty = json!({"key": ctx.s.project_id});
            series_charts(
                series,
                mine.unwrap_or(&empty),
                "This project, the last 7 days",
            )
        }
        Err(f) => crate::html::notice(&f.message, false),
    };
    ok_page(
        &ctx,
        "Overview",
        &format!(
            "<h1>Overview</h1>{}<h2>Usage against quota</h2><div class=\"charts\">{}</div>{notes}\
             <h2>Usage over time</h2>{history}\
             <p class=\"actions\"><a href=\"/project/instances/launch\">Launch an instance</a></p>",
            ctx.notice("switch"),
            charts.concat()
        ),
    )
}

// ---- instances ------------------------------------------------------------------------------

/// Addresses of a server as "net: addr (floating)" items.
fn addresses(srv: &Value) -> Vec<String> {
    srv["addresses"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(net, list)| {
            list.as_array().into_iter().flatten().filter_map(move |a| {
                let kind = if a["OS-EXT-IPS:type"].as_str() == Some("floating") {
                    " (floating)"
                } else {
                    ""
                };
                Some(format!("{net}: {}{kind}", a["addr"].as_str()?))
            })
        })
        .collect()
}

fn status_cell(srv: &Value) -> String {
    let status = text(srv, "status");
    let task = srv["OS-EXT-STS:task_state"].as_str().unwrap_or_default();
    format!(
        "<span class=\"status status-{}\" data-status-of=\"{}\">{}{}</span>",
        escape(status),
        escape(text(srv, "id")),
        escape(status),
        if task.is_empty() {
            String::new()
        } else {
            format!(" ({})", escape(task))
        }
    )
}

async fn instances(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    let (servers, flavors) = tokio::join!(
        d.get(&ctx.s, Svc::Compute, "/servers/detail"),
        d.list(&ctx.s, Svc::Compute, "/flavors", "flavors"),
    );
    let servers = match servers {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let flavor_names: HashMap<&str, &str> = flavors
        .iter()
        .map(|f| (text(f, "id"), text(f, "name")))
        .collect();
    let rows: Vec<Vec<String>> = servers["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|srv| {
            let id = text(srv, "id");
            let flavor = text(&srv["flavor"], "id");
            vec![
                format!(
                    "<a class=\"name\" href=\"/project/instances/{}\">{}</a>",
                    escape(&seg(id)),
                    escape(text(srv, "name"))
                ),
                status_cell(srv),
                escape(&addresses(srv).join(", ")),
                escape(flavor_names.get(flavor).copied().unwrap_or(flavor)),
                post_form(
                    &ctx.s,
                    "",
                    &format!("/project/instances/{}/action", seg(id)),
                    "inline",
                    "<input type=\"hidden\" name=\"action\" value=\"delete\">\
                     <button type=\"submit\" class=\"danger\">Delete</button>",
                ),
            ]
        })
        .collect();
    ok_page(
        &ctx,
        "Instances",
        &format!(
            "<h1>Instances</h1>{}<p class=\"actions\"><a href=\"/project/instances/launch\">Launch instance</a></p>\
             <div data-poll=\"/project/instances/status\" data-poll-all>{}</div>",
            ctx.notice("instances"),
            table(
                &["Name", "Status", "Addresses", "Flavor", "Actions"],
                &rows,
                "No instances."
            )
        ),
    )
}

/// JSON for the list's live status: id → status and task.
async fn instance_status(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = match d.scripted(&headers, false) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    match d.get(&ctx.s, Svc::Compute, "/servers/detail").await {
        Ok(v) => {
            let servers: Vec<Value> = v["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    json!({"id": s["id"], "status": s["status"],
                           "task": s["OS-EXT-STS:task_state"]})
                })
                .collect();
            Json(json!({"servers": servers})).into_response()
        }
        Err(f) => (f.status, Json(json!({"error": f.message}))).into_response(),
    }
}

/// What the launch form shows: the choices and the values already entered.
struct LaunchChoices {
    images: Vec<(String, String)>,
    flavors: Vec<(String, String)>,
    networks: Vec<(String, String)>,
    key_pairs: Vec<(String, String)>,
    groups: Vec<(String, String)>,
}

async fn launch_choices(d: &Dash, ctx: &Ctx) -> LaunchChoices {
    let groups_path = format!("/security-groups?project_id={}", seg(&ctx.s.project_id));
    let (images, flavors, networks, keys, groups) = tokio::join!(
        d.list(&ctx.s, Svc::Image, "/images?status=active", "images"),
        d.list(&ctx.s, Svc::Compute, "/flavors/detail", "flavors"),
        d.list(&ctx.s, Svc::Network, "/networks", "networks"),
        d.list(&ctx.s, Svc::Compute, "/os-keypairs", "keypairs"),
        d.list(&ctx.s, Svc::Network, &groups_path, "security_groups"),
    );
    let mut flavors: Vec<&Value> = flavors.iter().collect();
    flavors.sort_by_key(|f| (f["vcpus"].as_i64(), f["ram"].as_i64()));
    LaunchChoices {
        images: images
            .iter()
            .map(|i| (text(i, "id").into(), text(i, "name").into()))
            .collect(),
        flavors: flavors
            .iter()
            .map(|f| {
                (
                    text(f, "id").to_string(),
                    format!(
                        "{} — {} vCPU, {} MB RAM, {} GB disk",
                        text(f, "name"),
                        f["vcpus"].as_i64().unwrap_or(0),
                        f["ram"].as_i64().unwrap_or(0),
                        f["disk"].as_i64().unwrap_or(0)
                    ),
                )
            })
            .collect(),
        // External networks take floating IPs, not instances (unless shared with the project).
        networks: networks
            .iter()
            .filter(|n| n["router:external"] != json!(true) || n["shared"] == json!(true))
            .map(|n| (text(n, "id").into(), text(n, "name").into()))
            .collect(),
        key_pairs: keys
            .iter()
            .map(|k| {
                let name = text(&k["keypair"], "name").to_string();
                (name.clone(), name)
            })
            .collect(),
        groups: groups
            .iter()
            .map(|g| (text(g, "name").into(), text(g, "name").into()))
            .collect(),
    }
}

fn checkboxes(name: &str, items: &[(String, String)], checked: &[String]) -> String {
    if items.is_empty() {
        return "<p class=\"note\">None available.</p>".into();
    }
    items
        .iter()
        .map(|(v, l)| {
            let c = if checked.contains(v) { " checked" } else { "" };
            format!(
                "<label class=\"check\"><input type=\"checkbox\" name=\"{name}\" value=\"{}\"{c}> {}</label>",
                escape(v),
                escape(l)
            )
        })
        .collect()
}

/// The launch wizard: one form in steps (details, source, flavor, networks, access, configuration).
fn launch_page(
    ctx: &Ctx,
    c: &LaunchChoices,
    values: &HashMap<String, String>,
    networks: &[String],
    groups: &[String],
    error: Option<&str>,
) -> String {
    let v = |k: &str| values.get(k).map(String::as_str).unwrap_or_default();
    let count = if v("count").is_empty() {
        "1"
    } else {
        v("count")
    };
    let mut keys = vec![(String::new(), "(none)".to_string())];
    keys.extend(c.key_pairs.iter().cloned());
    let err = error
        .map(|e| crate::html::notice(e, false))
        .unwrap_or_default();
    let inner = format!(
        "{err}<fieldset><legend>1. Details</legend>\
         <label>Instance name <input name=\"name\" value=\"{}\" required maxlength=\"255\"></label>\
         <label>Count <input name=\"count\" type=\"number\" min=\"1\" max=\"100\" value=\"{}\"></label></fieldset>\
         <fieldset><legend>2. Source</legend><label>Image <select name=\"image\">{}</select></label></fieldset>\
         <fieldset><legend>3. Flavor</legend><label>Flavor <select name=\"flavor\">{}</select></label></fieldset>\
         <fieldset><legend>4. Networks</legend>{}</fieldset>\
         <fieldset><legend>5. Access</legend><label>Key pair <select name=\"key_name\">{}</select></label>\
         <p>Security groups</p>{}</fieldset>\
         <fieldset><legend>6. Configuration</legend><label>User data (cloud-init) \
         <textarea name=\"user_data\" rows=\"5\">{}</textarea></label></fieldset>\
         <button type=\"submit\">Launch</button>",
        escape(v("name")),
        escape(count),
        options(&c.images, v("image")),
        options(&c.flavors, v("flavor")),
        checkboxes("network", &c.networks, networks),
        options(&keys, v("key_name")),
        checkboxes("security_group", &c.groups, groups),
        escape(v("user_data")),
    );
    page(
        "Launch instance",
        Some(&ctx.s),
        &format!(
            "<h1>Launch instance</h1>{}",
            post_form(
                &ctx.s,
                "launch",
                "/project/instances/launch",
                "card wide",
                &inner
            )
        ),
    )
}

async fn launch_form(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    let c = launch_choices(&d, &ctx).await;
    // Sensible defaults: the only network, the default group, the smallest flavor that exists.
    let networks: Vec<String> = if c.networks.len() == 1 {
        vec![c.networks[0].0.clone()]
    } else {
        Vec::new()
    };
    let groups = vec!["default".to_string()];
    html_response(
        StatusCode::OK,
        launch_page(&ctx, &c, &HashMap::new(), &networks, &groups, None),
    )
}

async fn launch(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let networks = form_all(&body, "network");
    let groups = form_all(&body, "security_group");
    let v = |k: &str| f.get(k).map(String::as_str).unwrap_or_default().trim();
    // A refused launch shows the form again with what was entered and the reason on top.
    let again = |status: StatusCode, msg: String| {
        let (d, ctx, f, networks, groups) = (&d, &ctx, &f, &networks, &groups);
        async move {
            let c = launch_choices(d, ctx).await;
            html_response(
                status,
                launch_page(ctx, &c, f, networks, groups, Some(&msg)),
            )
        }
    };
    let count = match v("count") {
        "" => 1,
        n => match n.parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                let msg = "Count must be a whole number from 1 to 100.".to_string();
                return again(StatusCode::BAD_REQUEST, msg).await;
            }
        },
    };
    let mut server = json!({
        "name": v("name"),
        "imageRef": v("image"),
        "flavorRef": v("flavor"),
        "min_count": count,
        "max_count": count,
    });
    if !networks.is_empty() {
        server["networks"] = networks.iter().map(|n| json!({"uuid": n})).collect();
    }
    if !groups.is_empty() {
        server["security_groups"] = groups.iter().map(|g| json!({"name": g})).collect();
    }
    if !v("key_name").is_empty() {
        server["key_name"] = json!(v("key_name"));
    }
    let user_data = f.get("user_data").map(String::as_str).unwrap_or_default();
    if !user_data.trim().is_empty() {
        // Browsers send CRLF line ends; cloud-init wants the script as typed.
        let ud = user_data.replace("\r\n", "\n");
        server["user_data"] = json!(base64::engine::general_purpose::STANDARD.encode(ud));
    }
    match d
        .post(
            &ctx.s,
            Svc::Compute,
            "/servers",
            &json!({ "server": server }),
        )
        .await
    {
        Ok(_) => {
            let what = if count == 1 {
                format!("Launching {}.", v("name"))
            } else {
                format!("Launching {count} instances named {}.", v("name"))
            };
            d.flash(&ctx, "instances", Ok(what), "/project/instances")
        }
        Err(fail) => again(fail.status, fail.message).await,
    }
}

/// The ports of a server (for floating IP association).
async fn ports_of(d: &Dash, ctx: &Ctx, server: &str) -> Vec<Value> {
    d.list(
        &ctx.s,
        Svc::Network,
        &format!("/ports?device_id={}", seg(server)),
        "ports",
    )
    .await
}

async fn instance_detail(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = signed_in!(d, headers);
    let path = format!("/servers/{}", seg(&id));
    let srv = match d.get(&ctx.s, Svc::Compute, &path).await {
        Ok(v) => v["server"].clone(),
        Err(f) => return failed(&ctx, f),
    };
    let status = text(&srv, "status").to_string();
    let console_log = async {
        if status == "BUILD" {
            return Err("The console log appears once the instance runs.".to_string());
        }
        d.post(
            &ctx.s,
            Svc::Compute,
            &format!("{path}/action"),
            &json!({"os-getConsoleOutput": {"length": 200}}),
        )
        .await
        .map(|v| text(&v, "output").to_string())
        .map_err(|f| f.message)
    };
    let image_path = format!("/images/{}", seg(text(&srv["image"], "id")));
    let flavor_path = format!("/flavors/{}", seg(text(&srv["flavor"], "id")));
    let fips_path = format!("/floatingips?project_id={}", seg(&ctx.s.project_id));
    let (log, flavor, image, ports, fips, externals) = tokio::join!(
        console_log,
        d.get(&ctx.s, Svc::Compute, &flavor_path),
        d.get(&ctx.s, Svc::Image, &image_path),
        ports_of(&d, &ctx, &id),
        d.list(&ctx.s, Svc::Network, &fips_path, "floatingips"),
        d.list(
            &ctx.s,
            Svc::Network,
            "/networks?router:external=true",
            "networks"
        ),
    );
    let flavor = flavor
        .map(|f| {
            format!(
                "{} ({} vCPU, {} MB RAM, {} GB disk)",
                text(&f["flavor"], "name"),
                f["flavor"]["vcpus"].as_i64().unwrap_or(0),
                f["flavor"]["ram"].as_i64().unwrap_or(0),
                f["flavor"]["disk"].as_i64().unwrap_or(0)
            )
        })
        .unwrap_or_else(|_| text(&srv["flavor"], "id").to_string());
    let image = image
        .map(|i| text(&i, "name").to_string())
        .unwrap_or_else(|_| text(&srv["image"], "id").to_string());
    let groups: Vec<&str> = srv["security_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| text(g, "name"))
        .collect();
    let port_ids: Vec<&str> = ports.iter().map(|p| text(p, "id")).collect();
    let fault = srv["fault"]["message"]
        .as_str()
        .map(|m| crate::html::notice(m, false))
        .unwrap_or_default();
    let facts = format!(
        "<dl class=\"facts\" data-poll=\"/project/instances/status\"><dt>Status</dt><dd>{}</dd><dt>Addresses</dt><dd class=\"addresses\">{}</dd>\
         <dt>Flavor</dt><dd>{}</dd><dt>Image</dt><dd>{}</dd><dt>Key pair</dt><dd>{}</dd>\
         <dt>Security groups</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd><dt>ID</dt><dd><code>{}</code></dd></dl>",
        status_cell(&srv),
        escape(&addresses(&srv).join(", ")),
        escape(&flavor),
        escape(&image),
        escape(srv["key_name"].as_str().unwrap_or("(none)")),
        escape(&groups.join(", ")),
        escape(text(&srv, "created")),
        escape(&id),
    );
    let action_url = format!("/project/instances/{}/action", seg(&id));
    // Only the actions the server's state allows (the API would refuse the others with 409).
    let allowed: &[(&str, &str)] = match status.as_str() {
        "ACTIVE" => &[
            ("stop", "Stop"),
            ("reboot", "Reboot"),
            ("hard_reboot", "Hard reboot"),
            ("pause", "Pause"),
            ("suspend", "Suspend"),
        ],
        "SHUTOFF" => &[("start", "Start")],
        "PAUSED" => &[("unpause", "Unpause")],
        "SUSPENDED" => &[("resume", "Resume")],
        "ERROR" => &[("hard_reboot", "Hard reboot")],
        _ => &[],
    };
    let mut buttons = String::new();
    for (action, label) in allowed {
        buttons.push_str(&format!(
            "<button type=\"submit\" name=\"action\" value=\"{action}\" class=\"plain\">{label}</button>"
        ));
    }
    // Delete is allowed in every state (Nova deletes even a building or errored server).
    buttons.push_str(
        "<button type=\"submit\" name=\"action\" value=\"delete\" class=\"danger\">Delete</button>",
    );
    let actions = post_form(&ctx.s, "actions", &action_url, "actions", &buttons);
    let snapshot = post_form(
        &ctx.s,
        "snapshot",
        &action_url,
        "row",
        &format!(
            "<input type=\"hidden\" name=\"action\" value=\"snapshot\">\
             <label>Snapshot name <input name=\"snapshot_name\" value=\"{}-snapshot\" required></label>\
             <button type=\"submit\">Create snapshot</button>",
            escape(text(&srv, "name"))
        ),
    );
    // Floating IPs: the project's unassociated ones, or a new one from an external network.
    let mut fip_choices: Vec<(String, String)> = fips
        .iter()
        .filter(|f| f["port_id"].is_null())
        .map(|f| {
            (
                text(f, "id").to_string(),
                text(f, "floating_ip_address").to_string(),
            )
        })
        .collect();
    for n in &externals {
        fip_choices.push((
            format!("new:{}", text(n, "id")),
            format!("Allocate a new one from {}", text(n, "name")),
        ));
    }
    let port_choices: Vec<(String, String)> = ports
        .iter()
        .map(|p| {
            let ips: Vec<&str> = p["fixed_ips"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|ip| text(ip, "ip_address"))
                .collect();
            (text(p, "id").to_string(), ips.join(", "))
        })
        .collect();
    let attached: Vec<Vec<String>> = fips
        .iter()
        .filter(|f| port_ids.contains(&text(f, "port_id")))
        .map(|f| {
            vec![
                escape(text(f, "floating_ip_address")),
                escape(text(f, "fixed_ip_address")),
                post_form(
                    &ctx.s,
                    "",
                    &action_url,
                    "inline",
                    &format!(
                        "<input type=\"hidden\" name=\"action\" value=\"disassociate\">\
                         <input type=\"hidden\" name=\"floating_ip\" value=\"{}\">\
                         <button type=\"submit\" class=\"plain\">Disassociate</button>",
                        escape(text(f, "id"))
                    ),
                ),
            ]
        })
        .collect();
    let associate = if port_choices.is_empty() {
        "<p class=\"note\">The instance has no port to associate a floating IP with.</p>".into()
    } else {
        post_form(
            &ctx.s,
            "associate",
            &action_url,
            "row",
            &format!(
                "<input type=\"hidden\" name=\"action\" value=\"associate\">\
                 <label>Floating IP <select name=\"floating_ip\">{}</select></label>\
                 <label>Port <select name=\"port\">{}</select></label>\
                 <button type=\"submit\">Associate</button>",
                options(&fip_choices, ""),
                options(&port_choices, "")
            ),
        )
    };
    let log_html = match log {
        Ok(text) => format!(
            "<pre class=\"log\" id=\"console-log\">{}</pre>",
            escape(&printable(&text))
        ),
        Err(msg) => crate::html::notice(&msg, false),
    };
    let console = format!(
        "<p>Click the console and type; keys go to the instance's serial port.</p>\
         <div class=\"terminal\" id=\"console\" tabindex=\"0\" data-ws=\"/project/instances/{}/console\" \
         aria-label=\"Interactive serial console\"></div><p class=\"console-state\" id=\"console-state\"></p>",
        escape(&seg(&id))
    );
    ok_page(
        &ctx,
        text(&srv, "name"),
        &format!(
            "<h1>Instance {}</h1>{fault}{}{facts}<h2>Actions</h2>{}{actions}{}{snapshot}\
             <h2>Floating IPs</h2>{}{}{associate}\
             <h2>Console log</h2><p><a href=\"/project/instances/{}#console-log\">Reload</a></p>{log_html}\
             <h2>Console</h2>{console}",
            escape(text(&srv, "name")),
            ctx.notice("detail"),
            ctx.notice("actions"),
            ctx.notice("snapshot"),
            ctx.notice("associate"),
            table(
                &["Floating IP", "Fixed IP", ""],
                &attached,
                "No floating IP."
            ),
            escape(&seg(&id)),
        ),
    )
}

async fn instance_action(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let action = field("action");
    let path = format!("/servers/{}", seg(&id));
    let detail = format!("/project/instances/{}", seg(&id));
    let simple = match action {
        "start" => Some(json!({"os-start": null})),
        "stop" => Some(json!({"os-stop": null})),
        "reboot" => Some(json!({"reboot": {"type": "SOFT"}})),
        "hard_reboot" => Some(json!({"reboot": {"type": "HARD"}})),
        "pause" => Some(json!({"pause": null})),
        "unpause" => Some(json!({"unpause": null})),
        "suspend" => Some(json!({"suspend": null})),
        "resume" => Some(json!({"resume": null})),
        _ => None,
    };
    if let Some(body) = simple {
        let r = d
            .post(&ctx.s, Svc::Compute, &format!("{path}/action"), &body)
            .await;
        let msg = r
            .map(|_| format!("Requested: {}.", action.replace('_', " ")))
            .map_err(|e| e.message);
        return d.flash(&ctx, "actions", msg, &detail);
    }
    match action {
        "delete" => {
            // From the list or the detail page: the outcome shows on the list.
            let r = d.delete(&ctx.s, Svc::Compute, &path).await;
            let msg = r
                .map(|_| "Deleting the instance.".to_string())
                .map_err(|e| e.message);
            d.flash(&ctx, "instances", msg, "/project/instances")
        }
        "snapshot" => {
            let name = field("snapshot_name").trim();
            let r = d
                .post(
                    &ctx.s,
                    Svc::Compute,
                    &format!("{path}/action"),
                    &json!({"createImage": {"name": name}}),
                )
                .await;
            let msg = r
                .map(|_| format!("Snapshot {name} is being created (see Images)."))
                .map_err(|e| e.message);
            d.flash(&ctx, "snapshot", msg, &detail)
        }
        "associate" => {
            let msg = associate(&d, &ctx, &id, field("floating_ip"), field("port")).await;
            d.flash(&ctx, "associate", msg, &detail)
        }
        "disassociate" => {
            let r = d
                .put(
                    &ctx.s,
                    Svc::Network,
                    &format!("/floatingips/{}", seg(field("floating_ip"))),
                    &json!({"floatingip": {"port_id": null}}),
                )
                .await;
            let msg = r
                .map(|_| "Floating IP disassociated.".to_string())
                .map_err(|e| e.message);
            d.flash(&ctx, "associate", msg, &detail)
        }
        _ => d.flash(
            &ctx,
            "actions",
            Err(format!("There is no action {action:?}.")),
            &detail,
        ),
    }
}

/// Associates a floating IP (an existing one, or `new:<external network>`) with one of the
/// server's ports.
async fn associate(
    d: &Dash,
    ctx: &Ctx,
    server: &str,
    choice: &str,
    port: &str,
) -> Result<String, String> {
    // The port must be this server's: the form's value is not trusted to say so.
    let ports = ports_of(d, ctx, server).await;
    if !ports.iter().any(|p| text(p, "id") == port) {
        return Err("Choose one of the instance's ports.".into());
    }
    let v = if let Some(net) = choice.strip_prefix("new:") {
        d.post(
            &ctx.s,
            Svc::Network,
            "/floatingips",
            &json!({"floatingip": {"floating_network_id": net, "port_id": port}}),
        )
        .await
    } else if choice.is_empty() {
        return Err("Choose a floating IP.".into());
    } else {
        d.put(
            &ctx.s,
            Svc::Network,
            &format!("/floatingips/{}", seg(choice)),
            &json!({"floatingip": {"port_id": port}}),
        )
        .await
    }
    .map_err(|e| e.message)?;
    Ok(format!(
        "Floating IP {} associated.",
        text(&v["floatingip"], "floating_ip_address")
    ))
}

/// Console text as a page can show it: terminal control sequences (colours, cursor queries) and
/// other control characters removed, lines and tabs kept.
fn printable(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            chars.next();
                            break;
                        }
                    }
                }
                Some('(') | Some(')') => {
                    chars.next();
                }
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

// ---- images ---------------------------------------------------------------------------------

fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn images(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    let v = match d.get(&ctx.s, Svc::Image, "/images").await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let rows: Vec<Vec<String>> = v["images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let mine = text(i, "owner") == ctx.s.project_id;
            vec![
                format!("<span class=\"name\">{}</span>", escape(text(i, "name"))),
                escape(text(i, "status")),
                escape(text(i, "visibility")),
                escape(text(i, "disk_format")),
                i["size"].as_i64().map(human_size).unwrap_or_default(),
                if mine || ctx.s.is_admin() {
                    button_form(
                        &ctx.s,
                        &format!("/project/images/{}/delete", seg(text(i, "id"))),
                        "Delete",
                        "danger",
                    )
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let formats: Vec<(String, String)> = ["qcow2", "raw", "iso", "vmdk", "vdi", "vhd"]
        .iter()
        .map(|f| (f.to_string(), f.to_string()))
        .collect();
    let upload = format!(
        "<form id=\"upload\" class=\"card\" data-csrf=\"{}\">\
         <label>Name <input name=\"name\" required maxlength=\"255\"></label>\
         <label>Disk format <select name=\"disk_format\">{}</select></label>\
         <label>File <input name=\"file\" type=\"file\" required></label>\
         <progress id=\"upload-progress\" max=\"100\" value=\"0\" hidden></progress>\
         <p id=\"upload-state\" role=\"status\"></p>\
         <button type=\"submit\">Upload</button>\
         <noscript><p class=\"error\">Uploading from the browser needs JavaScript.</p></noscript></form>",
        escape(&ctx.s.csrf),
        options(&formats, "qcow2")
    );
    ok_page(
        &ctx,
        "Images",
        &format!(
            "<h1>Images</h1>{}{}<h2>Upload an image</h2>{}{upload}",
            ctx.notice("images"),
            table(
                &["Name", "Status", "Visibility", "Format", "Size", ""],
                &rows,
                "No images."
            ),
            ctx.notice("upload"),
        ),
    )
}

/// Step one of a browser upload (script): the image record. Answers `{"id": …}`.
async fn image_create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = match d.scripted(&headers, true) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let name = req["name"].as_str().unwrap_or_default().trim();
    if name.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Give the image a name."})),
        )
            .into_response();
    }
    let disk_format = req["disk_format"].as_str().unwrap_or("qcow2");
    let r = d
        .post(
            &ctx.s,
            Svc::Image,
            "/images",
            &json!({"name": name, "disk_format": disk_format, "container_format": "bare"}),
        )
        .await;
    match r {
        Ok(v) => Json(json!({"id": v["id"]})).into_response(),
        Err(f) => (f.status, Json(json!({"error": f.message}))).into_response(),
    }
}

/// Step two (script): the file, streamed through to the image service as it arrives (never held
/// in memory). A truncated upload leaves the image `queued`, as Glance does.
async fn image_upload(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let ctx = match d.scripted(&headers, true) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let mut req = d
        .http
        .put(d.url(Svc::Image, &format!("/images/{}/file", seg(&id))))
        .header("x-auth-token", &ctx.s.token)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .timeout(std::time::Duration::from_secs(3600))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        req = req.header(header::CONTENT_LENGTH, len.clone());
    }
    let outcome = match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            Err((
                status,
                crate::api::message_of(&v)
                    .unwrap_or_else(|| format!("The image service answered {status}.")),
            ))
        }
        Err(_) => Err((
            StatusCode::BAD_GATEWAY,
            "The upload did not reach the image service.".to_string(),
        )),
    };
    match outcome {
        Ok(()) => {
            d.sessions.set_flash(
                &ctx.id,
                crate::session::Flash {
                    form: "upload".into(),
                    text: "Image uploaded.".into(),
                    ok: true,
                },
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Err((status, msg)) => (status, Json(json!({"error": msg}))).into_response(),
    }
}

async fn image_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let r = d
        .delete(&ctx.s, Svc::Image, &format!("/images/{}", seg(&id)))
        .await;
    let msg = r
        .map(|_| "Image deleted.".to_string())
        .map_err(|e| e.message);
    d.flash(&ctx, "images", msg, "/project/images")
}

// ---- key pairs ------------------------------------------------------------------------------

async fn key_pairs(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    let v = match d.get(&ctx.s, Svc::Compute, "/os-keypairs").await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let rows: Vec<Vec<String>> = v["keypairs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            let k = &k["keypair"];
            vec![
                format!("<span class=\"name\">{}</span>", escape(text(k, "name"))),
                format!("<code>{}</code>", escape(text(k, "fingerprint"))),
                escape(k["type"].as_str().unwrap_or("ssh")),
                button_form(
                    &ctx.s,
                    &format!("/project/key_pairs/{}/delete", seg(text(k, "name"))),
                    "Delete",
                    "danger",
                ),
            ]
        })
        .collect();
    let create = post_form(
        &ctx.s,
        "create-key",
        "/project/key_pairs/create",
        "card",
        "<label>Name <input name=\"name\" required maxlength=\"255\" pattern=\"[A-Za-z0-9 _.@-]+\"></label>\
         <p class=\"note\">The private key downloads once, now; OneStack keeps only the public key.</p>\
         <button type=\"submit\">Create and download</button>",
    );
    let import = post_form(
        &ctx.s,
        "import-key",
        "/project/key_pairs/import",
        "card wide",
        "<label>Name <input name=\"name\" required maxlength=\"255\"></label>\
         <label>Public key <textarea name=\"public_key\" rows=\"4\" required placeholder=\"ssh-ed25519 AAAA…\"></textarea></label>\
         <button type=\"submit\">Import</button>",
    );
    ok_page(
        &ctx,
        "Key pairs",
        &format!(
            "<h1>Key pairs</h1>{}{}<h2>Create a key pair</h2>{}{create}<h2>Import a public key</h2>{}{import}",
            ctx.notice("key_pairs"),
            table(&["Name", "Fingerprint", "Type", ""], &rows, "No key pairs."),
            ctx.notice("create-key"),
            ctx.notice("import-key"),
        ),
    )
}

/// Creates a key pair and answers with its private key as a download: the only time it exists
/// outside the user's machine (the dashboard keeps nothing).
async fn key_pair_create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let name = f.get("name").map(String::as_str).unwrap_or_default().trim();
    let r = d
        .post(
            &ctx.s,
            Svc::Compute,
            "/os-keypairs",
            &json!({"keypair": {"name": name}}),
        )
        .await;
    match r {
        Ok(v) => {
            let key = text(&v["keypair"], "private_key").to_string();
            // The file name is the key's name reduced to safe characters.
            let file: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let mut resp = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-pem-file")],
                key,
            )
                .into_response();
            if let Ok(h) = HeaderValue::from_str(&format!("attachment; filename=\"{file}.pem\"")) {
                resp.headers_mut().insert(header::CONTENT_DISPOSITION, h);
            }
            resp
        }
        Err(e) => d.flash(&ctx, "create-key", Err(e.message), "/project/key_pairs"),
    }
}

async fn key_pair_import(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or_default().trim();
    let r = d
        .post(
            &ctx.s,
            Svc::Compute,
            "/os-keypairs",
            &json!({"keypair": {"name": field("name"), "public_key": field("public_key")}}),
        )
        .await;
    let msg = r
        .map(|_| format!("Key pair {} imported.", field("name")))
        .map_err(|e| e.message);
    d.flash(&ctx, "import-key", msg, "/project/key_pairs")
}

async fn key_pair_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let r = d
        .delete(
            &ctx.s,
            Svc::Compute,
            &format!("/os-keypairs/{}", seg(&name)),
        )
        .await;
    let msg = r
        .map(|_| format!("Key pair {name} deleted."))
        .map_err(|e| e.message);
    d.flash(&ctx, "key_pairs", msg, "/project/key_pairs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_text_loses_terminal_controls_only() {
        assert_eq!(
            printable("/ # \x1b[6n\x1b[1;32mok\x1b[0m\r\n\x1b]0;title\x07\tdone\x1b(B"),
            "/ # ok\n\tdone"
        );
        assert_eq!(printable("<b>&</b>"), "<b>&</b>");
    }
}
