//! Project volumes: list with status and attachments, create (empty or from an image), extend,
//! attach to and detach from an instance, delete — Cinder and Nova calls with the user's token,
//! each change a form that shows the API's answer next to itself.

use crate::api::{seg, text, Svc};
use crate::html::{button_form, escape, options, page, post_form, table};
use crate::{form, html_response, Ctx, Dash};
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
        .route("/project/volumes", get(volumes))
        .route("/project/volumes/create", post(create))
        .route("/project/volumes/attach", post(attach))
        .route("/project/volumes/{id}/detach", post(detach))
        .route("/project/volumes/extend", post(extend))
        .route("/project/volumes/{id}/delete", post(delete))
}

fn base(ctx: &Ctx) -> String {
    format!("/{}", seg(&ctx.s.project_id))
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

async fn volumes(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = signed_in!(d, headers);
    let detail = format!("{}/volumes/detail", base(&ctx));
    let (vols, servers, images) = tokio::join!(
        d.get(&ctx.s, Svc::Volume, &detail),
        d.get(&ctx.s, Svc::Compute, "/servers"),
        d.get(&ctx.s, Svc::Image, "/images"),
    );
    let vols = match vols {
        Ok(v) => v,
        Err(f) => return crate::project::failed(&ctx, f),
    };
    let servers = servers.unwrap_or_default();
    let names: HashMap<&str, &str> = list(&servers, "servers")
        .iter()
        .map(|s| (text(s, "id"), text(s, "name")))
        .collect();
    let rows: Vec<Vec<String>> = list(&vols, "volumes")
        .iter()
        .map(|v| {
            let id = text(v, "id");
            let attached: Vec<String> = v["attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let sid = text(a, "server_id");
                    format!(
                        "<a href=\"/project/instances/{}\">{}</a> on {}",
                        seg(sid),
                        escape(names.get(sid).copied().unwrap_or(sid)),
                        escape(text(a, "device"))
                    )
                })
                .collect();
            let mut actions = String::new();
            if v["attachments"].as_array().is_some_and(|a| !a.is_empty()) {
                actions.push_str(&button_form(
                    &ctx.s,
                    &format!("/project/volumes/{}/detach", seg(id)),
                    "Detach",
                    "plain",
                ));
            } else {
                actions.push_str(&button_form(
                    &ctx.s,
                    &format!("/project/volumes/{}/delete", seg(id)),
                    "Delete",
                    "danger",
                ));
            }
            let error = v["error"]
                .as_str()
                .map(|e| format!("<br><small class=\"error\">{}</small>", escape(e)))
                .unwrap_or_default();
            vec![
                format!(
                    "<span class=\"name\">{}</span>",
                    escape(v["name"].as_str().filter(|n| !n.is_empty()).unwrap_or(id))
                ),
                format!("{} GB", v["size"].as_i64().unwrap_or(0)),
                format!(
                    "<span class=\"status-{}\">{}</span>{error}",
                    escape(text(v, "status")),
                    escape(text(v, "status"))
                ),
                if v["bootable"] == "true" { "yes" } else { "no" }.into(),
                attached.join(", "),
                actions,
            ]
        })
        .collect();
    let available: Vec<(String, String)> = list(&vols, "volumes")
        .iter()
        .filter(|v| v["status"] == "available")
        .map(|v| {
            (
                text(v, "id").to_string(),
                v["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(text(v, "id"))
                    .to_string(),
            )
        })
        .collect();
    let server_choices: Vec<(String, String)> = list(&servers, "servers")
        .iter()
        .map(|s| (text(s, "id").to_string(), text(s, "name").to_string()))
        .collect();
    let mut image_choices = vec![(String::new(), "(empty volume)".to_string())];
    image_choices.extend(
        images
            .unwrap_or_default()
            .get("images")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|i| i["status"] == "active")
            .map(|i| (text(i, "id").to_string(), text(i, "name").to_string())),
    );
    let create = post_form(
        &ctx.s,
        "create-volume",
        "/project/volumes/create",
        "card",
        &format!(
            "<label>Name <input name=\"name\" required maxlength=\"255\"></label>\
             <label>Size (GB) <input name=\"size\" type=\"number\" min=\"1\" value=\"1\" required></label>\
             <label>Source image <select name=\"image\">{}</select></label>\
             <button type=\"submit\">Create volume</button>",
            options(&image_choices, "")
        ),
    );
    let attach = if available.is_empty() || server_choices.is_empty() {
        "<p class=\"note\">An available volume and an instance are needed to attach.</p>".into()
    } else {
        post_form(
            &ctx.s,
            "attach-volume",
            "/project/volumes/attach",
            "row",
            &format!(
                "<label>Volume <select name=\"volume\">{}</select></label>\
                 <label>Instance <select name=\"server\">{}</select></label>\
                 <button type=\"submit\">Attach</button>",
                options(&available, ""),
                options(&server_choices, "")
            ),
        )
    };
    let extend = if available.is_empty() {
        String::new()
    } else {
        post_form(
            &ctx.s,
            "extend-volume",
            "/project/volumes/extend",
            "row",
            &format!(
                "<label>Volume <select name=\"volume\">{}</select></label>\
                 <label>New size (GB) <input name=\"size\" type=\"number\" min=\"2\" required></label>\
                 <button type=\"submit\">Extend</button>",
                options(&available, "")
            ),
        )
    };
    html_response(
        StatusCode::OK,
        page(
            "Volumes",
            Some(&ctx.s),
            &format!(
                "<h1>Volumes</h1>{}{}<h2>Create a volume</h2>{}{create}\
                 <h2>Attach to an instance</h2>{}{attach}<h2>Extend</h2>{}{extend}",
                ctx.notice("volumes"),
                table(
                    &["Name", "Size", "Status", "Bootable", "Attached to", ""],
                    &rows,
                    "No volumes."
                ),
                ctx.notice("create-volume"),
                ctx.notice("attach-volume"),
                ctx.notice("extend-volume"),
            ),
        ),
    )
}

async fn create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let get = |k: &str| f.get(k).map(|s| s.trim()).unwrap_or("");
    let name = get("name");
    let size = match get("size").parse::<i64>() {
        Ok(n) if n >= 1 => n,
        _ => {
            return d.flash(
                &ctx,
                "create-volume",
                Err(format!(
                    "The size must be a whole number of GB, at least 1 (not {:?}).",
                    get("size")
                )),
                "/project/volumes",
            )
        }
    };
    let mut v = json!({"size": size, "name": name});
    if !get("image").is_empty() {
        v["imageRef"] = json!(get("image"));
    }
    let r = d
        .post(
            &ctx.s,
            Svc::Volume,
            &format!("{}/volumes", base(&ctx)),
            &json!({ "volume": v }),
        )
        .await
        .map(|_| format!("Volume {name} is being created."))
        .map_err(|e| e.message);
    d.flash(&ctx, "create-volume", r, "/project/volumes")
}

async fn attach(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let volume = f.get("volume").cloned().unwrap_or_default();
    let server = f.get("server").cloned().unwrap_or_default();
    let r = d
        .post(
            &ctx.s,
            Svc::Compute,
            &format!("/servers/{}/os-volume_attachments", seg(&server)),
            &json!({"volumeAttachment": {"volumeId": volume}}),
        )
        .await
        .map(|v| {
            format!(
                "Attaching as {}.",
                v["volumeAttachment"]["device"]
                    .as_str()
                    .unwrap_or("a new disk")
            )
        })
        .map_err(|e| e.message);
    d.flash(&ctx, "attach-volume", r, "/project/volumes")
}

async fn detach(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let vol = d
        .get(
            &ctx.s,
            Svc::Volume,
            &format!("{}/volumes/{}", base(&ctx), seg(&id)),
        )
        .await;
    let r = match vol {
        Ok(v) => match v["volume"]["attachments"][0]["server_id"].as_str() {
            Some(server) => d
                .delete(
                    &ctx.s,
                    Svc::Compute,
                    &format!(
                        "/servers/{}/os-volume_attachments/{}",
                        seg(server),
                        seg(&id)
                    ),
                )
                .await
                .map(|_| "Detaching.".to_string())
                .map_err(|e| e.message),
            None => Err("The volume is not attached.".to_string()),
        },
        Err(e) => Err(e.message),
    };
    d.flash(&ctx, "volumes", r, "/project/volumes")
}

async fn extend(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = posted!(d, headers, body);
    let f = form(&body);
    let volume = f.get("volume").cloned().unwrap_or_default();
    let size = f
        .get("size")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let r = match size.parse::<i64>() {
        Ok(n) => d
            .post(
                &ctx.s,
                Svc::Volume,
                &format!("{}/volumes/{}/action", base(&ctx), seg(&volume)),
                &json!({"os-extend": {"new_size": n}}),
            )
            .await
            .map(|_| format!("Extending to {n} GB."))
            .map_err(|e| e.message),
        Err(_) => Err(format!(
            "The new size must be a whole number of GB (not {size:?})."
        )),
    };
    d.flash(&ctx, "extend-volume", r, "/project/volumes")
}

async fn delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = posted!(d, headers, body);
    let r = d
        .delete(
            &ctx.s,
            Svc::Volume,
            &format!("{}/volumes/{}", base(&ctx), seg(&id)),
        )
        .await
        .map(|_| "Volume deleted.".to_string())
        .map_err(|e| e.message);
    d.flash(&ctx, "volumes", r, "/project/volumes")
}
