//! Admin views (admin role only): hypervisors and compute services, every project's instances,
//! projects, users and their role assignments, flavors, and usage per project. The dashboard
//! checks the role to show a clear page; the APIs' own policy refuses a non-admin token anyway.

use crate::api::{seg, text, Failure, Svc};
use crate::html::{button_form, escape, notice, options, page, post_form, table};
use crate::{error_page, form, html_response, Ctx, Dash};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub fn routes() -> Router<Dash> {
    Router::new()
        .route("/admin/hypervisors", get(hypervisors))
        .route("/admin/instances", get(instances))
        .route("/admin/instances/{id}/delete", post(instance_delete))
        .route("/admin/projects", get(projects))
        .route("/admin/projects/create", post(project_create))
        .route("/admin/projects/{id}/delete", post(project_delete))
        .route("/admin/users", get(users))
        .route("/admin/users/create", post(user_create))
        .route("/admin/users/assign", post(role_assign))
        .route("/admin/users/revoke", post(role_revoke))
        .route("/admin/flavors", get(flavors))
        .route("/admin/flavors/create", post(flavor_create))
        .route("/admin/flavors/{id}/delete", post(flavor_delete))
        .route("/admin/usage", get(usage))
}

const ADMINS_ONLY: &str = "This page is for administrators only.";

fn forbidden(ctx: &Ctx) -> Response {
    html_response(StatusCode::FORBIDDEN, error_page(&ctx.s, ADMINS_ONLY))
}

/// The signed-in admin, or the page to show instead (sign-in redirect or 403).
macro_rules! admin {
    ($d:expr, $headers:expr) => {{
        let ctx = match $d.signed_in(&$headers) {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        if !ctx.s.is_admin() {
            return forbidden(&ctx);
        }
        ctx
    }};
}

/// A signed-in form submission with a valid CSRF field, by an admin; else the refusal (sign-in
/// redirect, expired form, or 403) — checked before the form is read or any API is called.
macro_rules! admin_posted {
    ($d:expr, $headers:expr, $body:expr) => {{
        let ctx = match $d.posted(&$headers, &$body) {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        if !ctx.s.is_admin() {
            return forbidden(&ctx);
        }
        ctx
    }};
}

/// The page for an API refusal, with the API's status and message.
fn failed(ctx: &Ctx, f: Failure) -> Response {
    html_response(f.status, error_page(&ctx.s, &f.message))
}

fn ok_page(ctx: &Ctx, title: &str, body: &str) -> Response {
    html_response(StatusCode::OK, page(title, Some(&ctx.s), body))
}

/// A form field, trimmed ("" when absent).
fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> &'a str {
    f.get(k).map(String::as_str).unwrap_or_default().trim()
}

/// id → name of a list answer's items.
fn names_by_id(items: &[Value]) -> HashMap<String, String> {
    items
        .iter()
        .map(|i| (text(i, "id").to_string(), text(i, "name").to_string()))
        .collect()
}

/// (id, name) pairs sorted by name, for `<select>`s.
fn choices(items: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = items
        .iter()
        .map(|i| (text(i, "id").to_string(), text(i, "name").to_string()))
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

/// A one-button POST form whose target is named by hidden fields (ids that do not fit one path).
fn hidden_form(ctx: &Ctx, action: &str, hidden: &[(&str, &str)], label: &str) -> String {
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
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}{inputs}\
         <button type=\"submit\" class=\"danger\">{}</button></form>",
        escape(action),
        crate::html::csrf_field(&ctx.s),
        escape(label)
    )
}

// ---- hypervisors and compute services ---------------------------------------------------------

async fn hypervisors(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = admin!(d, headers);
    let (hv, services) = tokio::join!(
        d.get(&ctx.s, Svc::Compute, "/os-hypervisors/detail"),
        d.get(&ctx.s, Svc::Compute, "/os-services"),
    );
    let v = match hv {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let rows: Vec<Vec<String>> = v["hypervisors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let num = |k: &str| h[k].as_i64().unwrap_or(0);
            vec![
                escape(text(h, "hypervisor_hostname")),
                escape(text(h, "host_ip")),
                escape(text(h, "state")),
                format!("{} / {}", num("vcpus_used"), num("vcpus")),
                format!("{} / {} MB", num("memory_mb_used"), num("memory_mb")),
                num("running_vms").to_string(),
            ]
        })
        .collect();
    // The services table is secondary: its failure is a notice, not a lost page.
    let services = match services {
        Ok(v) => {
            let rows: Vec<Vec<String>> = v["services"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let status = text(s, "status");
                    let reason = text(s, "disabled_reason");
                    vec![
                        escape(text(s, "binary")),
                        escape(text(s, "host")),
                        escape(text(s, "zone")),
                        if reason.is_empty() {
                            escape(status)
                        } else {
                            format!("{} ({})", escape(status), escape(reason))
                        },
                        escape(text(s, "state")),
                        escape(text(s, "updated_at")),
                    ]
                })
                .collect();
            table(
                &["Binary", "Host", "Zone", "Status", "State", "Updated"],
                &rows,
                "No compute services.",
            )
        }
        Err(f) => notice(&f.message, false),
    };
    ok_page(
        &ctx,
        "Hypervisors",
        &format!(
            "<h1>Hypervisors</h1>{}<h2>Compute services</h2>{services}",
            table(
                &["Host", "IP", "State", "vCPUs used", "RAM used", "Instances"],
                &rows,
                "No hypervisors."
            )
        ),
    )
}

// ---- all instances ----------------------------------------------------------------------------

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

async fn instances(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = admin!(d, headers);
    let (servers, projects) = tokio::join!(
        d.get(&ctx.s, Svc::Compute, "/servers/detail?all_tenants=1"),
        d.list(&ctx.s, Svc::Identity, "/projects", "projects"),
    );
    let servers = match servers {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let project_names = names_by_id(&projects);
    let mut list: Vec<&Value> = servers["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    // Grouped by project, then by name: the order an operator scans in.
    let project_of = |srv: &Value| {
        let id = text(srv, "tenant_id");
        project_names
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    };
    list.sort_by_cached_key(|srv| (project_of(srv), text(srv, "name").to_string()));
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|srv| {
            let id = text(srv, "id");
            let task = srv["OS-EXT-STS:task_state"].as_str().unwrap_or_default();
            let status = if task.is_empty() {
                escape(text(srv, "status"))
            } else {
                format!("{} ({})", escape(text(srv, "status")), escape(task))
            };
            vec![
                format!(
                    "<span class=\"name\" title=\"{}\">{}</span>",
                    escape(id),
                    escape(text(srv, "name"))
                ),
                escape(&project_of(srv)),
                escape(srv["OS-EXT-SRV-ATTR:host"].as_str().unwrap_or_default()),
                status,
                escape(&addresses(srv).join(", ")),
                button_form(
                    &ctx.s,
                    &format!("/admin/instances/{}/delete", seg(id)),
                    "Delete",
                    "danger",
                ),
            ]
        })
        .collect();
    ok_page(
        &ctx,
        "All instances",
        &format!(
            "<h1>All instances</h1>{}{}",
            ctx.notice("admin-instances"),
            table(
                &["Name", "Project", "Host", "Status", "Addresses", ""],
                &rows,
                "No instances in any project."
            )
        ),
    )
}

async fn instance_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = admin_posted!(d, headers, body);
    let r = d
        .delete(&ctx.s, Svc::Compute, &format!("/servers/{}", seg(&id)))
        .await;
    let msg = r
        .map(|_| "Deleting the instance.".to_string())
        .map_err(|e| e.message);
    d.flash(&ctx, "admin-instances", msg, "/admin/instances")
}

// ---- projects ---------------------------------------------------------------------------------

async fn projects(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = admin!(d, headers);
    let v = match d.get(&ctx.s, Svc::Identity, "/projects").await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let mut list: Vec<&Value> = v["projects"].as_array().into_iter().flatten().collect();
    list.sort_by(|a, b| text(a, "name").cmp(text(b, "name")));
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let id = text(p, "id");
            vec![
                format!("<span class=\"name\">{}</span>", escape(text(p, "name"))),
                format!("<code>{}</code>", escape(id)),
                escape(text(p, "description")),
                yes_no(&p["enabled"]).to_string(),
                button_form(
                    &ctx.s,
                    &format!("/admin/projects/{}/delete", seg(id)),
                    "Delete",
                    "danger",
                ),
            ]
        })
        .collect();
    let create = post_form(
        &ctx.s,
        "create-project",
        "/admin/projects/create",
        "card",
        "<label>Name <input name=\"name\" required maxlength=\"64\"></label>\
         <label>Description <input name=\"description\" maxlength=\"255\"></label>\
         <button type=\"submit\">Create project</button>",
    );
    ok_page(
        &ctx,
        "Projects",
        &format!(
            "<h1>Projects</h1>{}{}<h2>Create a project</h2>{}{create}",
            ctx.notice("admin-projects"),
            table(
                &["Name", "ID", "Description", "Enabled", ""],
                &rows,
                "No projects."
            ),
            ctx.notice("create-project"),
        ),
    )
}

async fn project_create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = admin_posted!(d, headers, body);
    let f = form(&body);
    let (name, description) = (field(&f, "name"), field(&f, "description"));
    let back = "/admin/projects";
    if name.is_empty() {
        return d.flash(
            &ctx,
            "create-project",
            Err("Give the project a name.".into()),
            back,
        );
    }
    let r = d
        .post(
            &ctx.s,
            Svc::Identity,
            "/projects",
            &json!({"project": {"name": name, "description": description,
                                "domain_id": "default", "enabled": true}}),
        )
        .await;
    let msg = r
        .map(|_| format!("Project {name} created."))
        .map_err(|e| e.message);
    d.flash(&ctx, "create-project", msg, back)
}

async fn project_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = admin_posted!(d, headers, body);
    let back = "/admin/projects";
    // Deleting the project this session works in would leave it with a dead scope.
    if id == ctx.s.project_id {
        return d.flash(
            &ctx,
            "admin-projects",
            Err("This is the project you are working in; switch to another one first.".into()),
            back,
        );
    }
    let r = d
        .delete(&ctx.s, Svc::Identity, &format!("/projects/{}", seg(&id)))
        .await;
    let msg = r
        .map(|_| "Project deleted.".to_string())
        .map_err(|e| e.message);
    d.flash(&ctx, "admin-projects", msg, back)
}

// ---- users and role assignments ---------------------------------------------------------------

async fn users(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = admin!(d, headers);
    let (users, projects, roles, assignments) = tokio::join!(
        d.get(&ctx.s, Svc::Identity, "/users"),
        d.list(&ctx.s, Svc::Identity, "/projects", "projects"),
        d.list(&ctx.s, Svc::Identity, "/roles", "roles"),
        d.list(
            &ctx.s,
            Svc::Identity,
            "/role_assignments?include_names=true",
            "role_assignments"
        ),
    );
    let users = match users {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let users: Vec<Value> = users["users"].as_array().cloned().unwrap_or_default();
    // include_names gives names; the id maps are the fallback for anything it left out.
    let (project_names, role_names) = (names_by_id(&projects), names_by_id(&roles));
    let name_of = |obj: &Value, ids: &HashMap<String, String>| {
        let id = text(obj, "id");
        match obj["name"].as_str() {
            Some(n) => n.to_string(),
            None => ids.get(id).cloned().unwrap_or_else(|| id.to_string()),
        }
    };
    let mut by_user: HashMap<&str, Vec<String>> = HashMap::new();
    for a in &assignments {
        let user = text(&a["user"], "id");
        let role = &a["role"];
        let role_name = name_of(role, &role_names);
        let item = if a["scope"]["project"].is_object() {
            let p = &a["scope"]["project"];
            format!(
                "<li class=\"assignment\">{} on {} {}</li>",
                escape(&role_name),
                escape(&name_of(p, &project_names)),
                hidden_form(
                    &ctx,
                    "/admin/users/revoke",
                    &[
                        ("user", user),
                        ("project", text(p, "id")),
                        ("role", text(role, "id")),
                    ],
                    "Revoke",
                )
            )
        } else {
            // Domain grants are shown; revoking them is the CLI's job.
            let dom = &a["scope"]["domain"];
            let dom_name = dom["name"].as_str().unwrap_or(text(dom, "id"));
            format!(
                "<li class=\"assignment\">{} on domain {}</li>",
                escape(&role_name),
                escape(dom_name)
            )
        };
        by_user.entry(user).or_default().push(item);
    }
    let mut sorted: Vec<&Value> = users.iter().collect();
    sorted.sort_by(|a, b| text(a, "name").cmp(text(b, "name")));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|u| {
            let id = text(u, "id");
            let assigned = by_user
                .get(id)
                .map(|items| format!("<ul class=\"assignments\">{}</ul>", items.concat()))
                .unwrap_or_default();
            vec![
                format!("<span class=\"name\">{}</span>", escape(text(u, "name"))),
                format!("<code>{}</code>", escape(id)),
                escape(text(u, "email")),
                yes_no(&u["enabled"]).to_string(),
                assigned,
            ]
        })
        .collect();
    let project_choices = choices(&projects);
    let role_choices = choices(&roles);
    let user_choices = choices(&users);
    let member = role_choices
        .iter()
        .find(|(_, n)| n == "member")
        .map(|(id, _)| id.as_str())
        .unwrap_or_default();
    let mut default_projects = vec![(String::new(), "(none)".to_string())];
    default_projects.extend(project_choices.iter().cloned());
    // The password field is never filled in: a password is not echoed into any page.
    let create = post_form(
        &ctx.s,
        "create-user",
        "/admin/users/create",
        "card",
        &format!(
            "<label>Name <input name=\"name\" required maxlength=\"255\" autocomplete=\"off\"></label>\
             <label>Password <input name=\"password\" type=\"password\" required autocomplete=\"new-password\"></label>\
             <label>Email (optional) <input name=\"email\" type=\"email\" maxlength=\"255\"></label>\
             <label>Project <select name=\"project\">{}</select></label>\
             <label>Role on it <select name=\"role\">{}</select></label>\
             <button type=\"submit\">Create user</button>",
            options(&default_projects, ""),
            options(&role_choices, member),
        ),
    );
    let assign = post_form(
        &ctx.s,
        "assign-role",
        "/admin/users/assign",
        "card",
        &format!(
            "<label>User <select name=\"user\">{}</select></label>\
             <label>Project <select name=\"project\">{}</select></label>\
             <label>Role <select name=\"role\">{}</select></label>\
             <button type=\"submit\">Assign role</button>",
            options(&user_choices, ""),
            options(&project_choices, ""),
            options(&role_choices, member),
        ),
    );
    ok_page(
        &ctx,
        "Users",
        &format!(
            "<h1>Users</h1>{}{}<h2>Create a user</h2>{}{create}<h2>Assign a role</h2>{}{assign}",
            ctx.notice("admin-users"),
            table(
                &["Name", "ID", "Email", "Enabled", "Roles"],
                &rows,
                "No users."
            ),
            ctx.notice("create-user"),
            ctx.notice("assign-role"),
        ),
    )
}

/// `PUT` (grant) or `DELETE` (revoke) of a role of a user on a project.
async fn grant(
    d: &Dash,
    ctx: &Ctx,
    method: reqwest::Method,
    project: &str,
    user: &str,
    role: &str,
) -> Result<(), String> {
    if project.is_empty() || user.is_empty() || role.is_empty() {
        return Err("Choose a user, a project and a role.".into());
    }
    let path = format!(
        "/projects/{}/users/{}/roles/{}",
        seg(project),
        seg(user),
        seg(role)
    );
    d.call(&ctx.s, Svc::Identity, method, &path, None)
        .await
        .map(|_| ())
        .map_err(|e| e.message)
}

async fn user_create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = admin_posted!(d, headers, body);
    let f = form(&body);
    let back = "/admin/users";
    let (name, email) = (field(&f, "name"), field(&f, "email"));
    let (project, role) = (field(&f, "project"), field(&f, "role"));
    // The password as typed: spaces may be part of it.
    let password = f.get("password").map(String::as_str).unwrap_or_default();
    if name.is_empty() || password.is_empty() {
        return d.flash(
            &ctx,
            "create-user",
            Err("A user needs a name and a password.".into()),
            back,
        );
    }
    let mut user = Map::new();
    user.insert("name".into(), json!(name));
    user.insert("password".into(), json!(password));
    user.insert("domain_id".into(), json!("default"));
    user.insert("enabled".into(), json!(true));
    if !email.is_empty() {
        user.insert("email".into(), json!(email));
    }
    if !project.is_empty() {
        user.insert("default_project_id".into(), json!(project));
    }
    let created = d
        .post(
            &ctx.s,
            Svc::Identity,
            "/users",
            &json!({"user": Value::Object(user)}),
        )
        .await;
    let user_id = match created {
        Ok(v) => text(&v["user"], "id").to_string(),
        Err(e) => return d.flash(&ctx, "create-user", Err(e.message), back),
    };
    if project.is_empty() {
        return d.flash(
            &ctx,
            "create-user",
            Ok(format!("User {name} created (no role on any project yet).")),
            back,
        );
    }
    // The user exists now: a refused grant says so rather than hiding the creation.
    let msg = match grant(&d, &ctx, reqwest::Method::PUT, project, &user_id, role).await {
        Ok(()) => Ok(format!("User {name} created, with a role on its project.")),
        Err(e) => Err(format!(
            "User {name} was created, but the role was not granted: {e}"
        )),
    };
    d.flash(&ctx, "create-user", msg, back)
}

async fn role_assign(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = admin_posted!(d, headers, body);
    let f = form(&body);
    let r = grant(
        &d,
        &ctx,
        reqwest::Method::PUT,
        field(&f, "project"),
        field(&f, "user"),
        field(&f, "role"),
    )
    .await;
    let msg = r.map(|_| "Role assigned.".to_string());
    d.flash(&ctx, "assign-role", msg, "/admin/users")
}

async fn role_revoke(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = admin_posted!(d, headers, body);
    let f = form(&body);
    let r = grant(
        &d,
        &ctx,
        reqwest::Method::DELETE,
        field(&f, "project"),
        field(&f, "user"),
        field(&f, "role"),
    )
    .await;
    let msg = r.map(|_| "Role revoked.".to_string());
    d.flash(&ctx, "admin-users", msg, "/admin/users")
}

// ---- flavors ----------------------------------------------------------------------------------

async fn flavors(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = admin!(d, headers);
    // `is_public=None`: an admin's listing of public and private flavors alike.
    let v = match d
        .get(&ctx.s, Svc::Compute, "/flavors/detail?is_public=None")
        .await
    {
        Ok(v) => v,
        Err(f) => return failed(&ctx, f),
    };
    let mut list: Vec<&Value> = v["flavors"].as_array().into_iter().flatten().collect();
    list.sort_by_key(|f| {
        (
            f["vcpus"].as_i64(),
            f["ram"].as_i64(),
            text(f, "name").to_string(),
        )
    });
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|f| {
            let num = |k: &str| f[k].as_i64().unwrap_or(0).to_string();
            let id = text(f, "id");
            vec![
                format!("<span class=\"name\">{}</span>", escape(text(f, "name"))),
                num("vcpus"),
                num("ram"),
                num("disk"),
                yes_no(&f["os-flavor-access:is_public"]).to_string(),
                format!("<code>{}</code>", escape(id)),
                button_form(
                    &ctx.s,
                    &format!("/admin/flavors/{}/delete", seg(id)),
                    "Delete",
                    "danger",
                ),
            ]
        })
        .collect();
    let create = post_form(
        &ctx.s,
        "create-flavor",
        "/admin/flavors/create",
        "card",
        "<label>Name <input name=\"name\" required maxlength=\"255\"></label>\
         <label>vCPUs <input name=\"vcpus\" type=\"number\" min=\"1\" value=\"1\" required></label>\
         <label>RAM (MB) <input name=\"ram\" type=\"number\" min=\"1\" value=\"512\" required></label>\
         <label>Disk (GB) <input name=\"disk\" type=\"number\" min=\"0\" value=\"1\" required></label>\
         <label class=\"check\"><input name=\"public\" type=\"checkbox\" value=\"1\" checked> Public</label>\
         <button type=\"submit\">Create flavor</button>",
    );
    ok_page(
        &ctx,
        "Flavors",
        &format!(
            "<h1>Flavors</h1>{}{}<h2>Create a flavor</h2>{}{create}",
            ctx.notice("admin-flavors"),
            table(
                &["Name", "vCPUs", "RAM (MB)", "Disk (GB)", "Public", "ID", ""],
                &rows,
                "No flavors."
            ),
            ctx.notice("create-flavor"),
        ),
    )
}

/// A whole number of at least `min` from a form field, or a message naming the field.
fn whole(f: &HashMap<String, String>, key: &str, label: &str, min: i64) -> Result<i64, String> {
    let v = field(f, key);
    match v.parse::<i64>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(format!("{label} must be at least {min}.")),
        Err(_) if v.is_empty() => Err(format!("{label} is required.")),
        Err(_) => Err(format!("{label} must be a whole number, not \"{v}\".")),
    }
}

/// The flavor form's name check and (vCPUs, RAM MB, disk GB).
fn flavor_sizes(f: &HashMap<String, String>) -> Result<(i64, i64, i64), String> {
    if field(f, "name").is_empty() {
        return Err("Give the flavor a name.".into());
    }
    Ok((
        whole(f, "vcpus", "vCPUs", 1)?,
        whole(f, "ram", "RAM (MB)", 1)?,
        whole(f, "disk", "Disk (GB)", 0)?,
    ))
}

async fn flavor_create(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = admin_posted!(d, headers, body);
    let f = form(&body);
    let back = "/admin/flavors";
    let name = field(&f, "name");
    // Checked here so that a typo is a clear message and no API call.
    let (vcpus, ram, disk) = match flavor_sizes(&f) {
        Ok(s) => s,
        Err(e) => return d.flash(&ctx, "create-flavor", Err(e), back),
    };
    // An unchecked checkbox is absent from the form.
    let public = f.contains_key("public");
    let r = d
        .post(
            &ctx.s,
            Svc::Compute,
            "/flavors",
            &json!({"flavor": {"name": name, "vcpus": vcpus, "ram": ram, "disk": disk,
                               "os-flavor-access:is_public": public}}),
        )
        .await;
    let msg = r
        .map(|_| format!("Flavor {name} created."))
        .map_err(|e| e.message);
    d.flash(&ctx, "create-flavor", msg, back)
}

async fn flavor_delete(
    State(d): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = admin_posted!(d, headers, body);
    let r = d
        .delete(&ctx.s, Svc::Compute, &format!("/flavors/{}", seg(&id)))
        .await;
    let msg = r
        .map(|_| "Flavor deleted.".to_string())
        .map_err(|e| e.message);
    d.flash(&ctx, "admin-flavors", msg, "/admin/flavors")
}

// ---- usage ------------------------------------------------------------------------------------

/// A date from the usage form: the field's value, or `default` when it was left empty.
fn date_field(
    q: &HashMap<String, String>,
    key: &str,
    label: &str,
    default: chrono::NaiveDate,
) -> Result<chrono::NaiveDate, String> {
    let v = field(q, key);
    if v.is_empty() {
        return Ok(default);
    }
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .map_err(|_| format!("The {label} date \"{v}\" is not a date; use YYYY-MM-DD."))
}

async fn usage(
    State(d): State<Dash>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ctx = admin!(d, headers);
    let today = chrono::Utc::now().date_naive();
    // The last 30 days, today included.
    let default_start = today - chrono::Duration::days(29);
    let period = date_field(&q, "start", "start", default_start).and_then(|start| {
        let end = date_field(&q, "end", "end", today)?;
        if start > end {
            Err("The start date is after the end date.".to_string())
        } else {
            Ok((start, end))
        }
    });
    // The form shows what was entered (even when it was not a date), else the defaults.
    let shown = |k: &str, default: chrono::NaiveDate| match field(&q, k) {
        "" => default.format("%Y-%m-%d").to_string(),
        v => v.to_string(),
    };
    let usage_form = |error: Option<&str>| {
        format!(
            "<form method=\"get\" action=\"/admin/usage\" id=\"usage\" class=\"card\">{}\
             <label>From <input name=\"start\" type=\"date\" value=\"{}\" required></label>\
             <label>To <input name=\"end\" type=\"date\" value=\"{}\" required></label>\
             <button type=\"submit\">Show usage</button></form>",
            error.map(|e| notice(e, false)).unwrap_or_default(),
            escape(&shown("start", default_start)),
            escape(&shown("end", today)),
        )
    };
    let (start, end) = match period {
        Ok(p) => p,
        Err(e) => {
            return html_response(
                StatusCode::BAD_REQUEST,
                page(
                    "Usage",
                    Some(&ctx.s),
                    &format!("<h1>Usage</h1>{}", usage_form(Some(&e))),
                ),
            )
        }
    };
    // The dates were parsed above, so the query holds nothing but digits, dashes and colons.
    let path = format!(
        "/os-simple-tenant-usage?start={}T00:00:00&end={}T23:59:59&detailed=1",
        start.format("%Y-%m-%d"),
        end.format("%Y-%m-%d")
    );
    // Over time: a bar a day, or a bar per several days for long periods (at most 92 bars).
    let days = (end - start).num_days() + 1;
    let step_days = (days + 91) / 92;
    let series_path = |group: &str| {
        format!(
            "/os-onestack-usage-series?start={}T00:00:00&end={}T00:00:00&step={}&group_by={group}",
            start.format("%Y-%m-%d"),
            (end + chrono::Duration::days(1)).format("%Y-%m-%d"),
            step_days * 86_400
        )
    };
    let (by_project_path, by_host_path) = (series_path("project"), series_path("host"));
    let (v, projects, by_project, by_host) = tokio::join!(
        d.get(&ctx.s, Svc::Compute, &path),
        d.list(&ctx.s, Svc::Identity, "/projects", "projects"),
        d.get(&ctx.s, Svc::Compute, &by_project_path),
        d.get(&ctx.s, Svc::Compute, &by_host_path),
    );
    let v = match v {
        Ok(v) => v,
        // The API's refusal of the period belongs next to the form too.
        Err(f) => {
            return html_response(
                f.status,
                page(
                    "Usage",
                    Some(&ctx.s),
                    &format!("<h1>Usage</h1>{}", usage_form(Some(&f.message))),
                ),
            )
        }
    };
    let project_names = names_by_id(&projects);
    let mut rows: Vec<(String, Vec<String>)> = v["tenant_usages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let id = text(u, "tenant_id");
            let name = project_names
                .get(id)
                .cloned()
                .unwrap_or_else(|| id.to_string());
            let fig = |k: &str| format!("{:.2}", u[k].as_f64().unwrap_or(0.0));
            let count = u["server_usages"].as_array().map_or(0, Vec::len);
            let cells = vec![
                format!("<span class=\"name\">{}</span>", escape(&name)),
                count.to_string(),
                fig("total_vcpus_usage"),
                fig("total_memory_mb_usage"),
                fig("total_local_gb_usage"),
                fig("total_hours"),
            ];
            (name, cells)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
    let over_time = |answer: Result<Value, Failure>, what: &str| -> String {
        let v = match answer {
            Ok(v) => v,
            Err(f) => return notice(&f.message, false),
        };
        let series = &v["usage_series"];
        let groups = series["groups"].as_array().cloned().unwrap_or_default();
        if groups.is_empty() {
            return format!("<p class=\"empty\">No {what} used anything in this period.</p>");
        }
        groups
            .iter()
            .map(|g| {
                let key = text(g, "key");
                let title = match what {
                    "project" => project_names
                        .get(key)
                        .cloned()
                        .unwrap_or_else(|| key.to_string()),
                    _ => key.to_string(),
                };
                crate::project::series_charts(series, g, &format!("{title} ({what})"))
            })
            .collect()
    };
    let charts = format!(
        "<h2>Per project over time</h2>{}<h2>Per host over time</h2>{}",
        over_time(by_project, "project"),
        over_time(by_host, "host")
    );
    ok_page(
        &ctx,
        "Usage",
        &format!(
            "<h1>Usage</h1>{}<p class=\"note\">From {} 00:00 to {} 23:59 UTC.</p>{}{charts}",
            usage_form(None),
            start.format("%Y-%m-%d"),
            end.format("%Y-%m-%d"),
            table(
                &[
                    "Project",
                    "Instances",
                    "vCPU-hours",
                    "RAM MB-hours",
                    "Disk GB-hours",
                    "Hours"
                ],
                &rows,
                "No usage in this period."
            )
        ),
    )
}
