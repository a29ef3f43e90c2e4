//! The web dashboard. It holds no privileges of its own: every page is one or more calls to the
//! public OpenStack APIs with the signed-in user's token, so the dashboard sees and may do exactly
//! what that user's CLI may (same policy, same errors). Pages are rendered on the server, every
//! user-provided string escaped; sessions live in memory (a restart signs users out) and expire
//! with their token; every form carries a per-session CSRF token; nothing secret is ever in a URL.

mod html;
mod session;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use html::{escape, page};
use serde_json::{json, Value};
use session::{Session, Sessions};
use std::sync::Arc;
use std::time::Duration;

/// Where the dashboard finds the APIs (the catalog's public URLs).
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// e.g. `http://198.18.0.1:5000/v3`
    pub identity_url: String,
    /// e.g. `http://198.18.0.1:8774/v2.1`
    pub compute_url: String,
}

#[derive(Clone)]
struct Dash {
    cfg: Arc<DashboardConfig>,
    http: reqwest::Client,
    sessions: Sessions,
}

pub fn router(cfg: DashboardConfig) -> Router {
    let state = Dash {
        cfg: Arc::new(cfg),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default(),
        sessions: Sessions::default(),
    };
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/project/instances", get(instances))
        .route("/admin/hypervisors", get(hypervisors))
        .route("/static/onestack.css", get(stylesheet))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// No framing (clickjacking), no inline script, no caching of pages that hold tenant data.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; script-src 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::STYLE,
    )
        .into_response()
}

fn form(body: &Bytes) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn home(State(d): State<Dash>, headers: HeaderMap) -> Response {
    match d.sessions.get(&headers) {
        Some(_) => Redirect::to("/project/instances").into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

fn login_page(error: Option<&str>, csrf: &str, user: &str, project: &str) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        "Sign in",
        None,
        &format!(
            "<h1>Sign in to OneStack</h1>{err}\
             <form method=\"post\" action=\"/login\" class=\"card\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>User <input name=\"username\" value=\"{}\" autocomplete=\"username\" required></label>\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <label>Project <input name=\"project\" value=\"{}\" placeholder=\"(your first project)\"></label>\
             <button type=\"submit\">Sign in</button></form>",
            escape(user),
            escape(project)
        ),
    )
}

/// The login form carries a double-submit token (cookie + field), so another site cannot sign a
/// browser into an account of its choosing.
async fn login_form() -> Response {
    let csrf = session::random_token();
    let mut resp = html_response(StatusCode::OK, login_page(None, &csrf, "", ""));
    set_cookie(&mut resp, session::LOGIN_COOKIE, &csrf, 600);
    resp
}

async fn login(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    let (user, password, project) = (field("username"), field("password"), field("project"));
    let cookie_csrf = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or_default();
    if cookie_csrf.is_empty() || !session::same(&cookie_csrf, field("csrf")) {
        return html_response(
            StatusCode::FORBIDDEN,
            login_page(
                Some("The form expired; please sign in again."),
                &cookie_csrf,
                user,
                project,
            ),
        );
    }
    match d.authenticate(user, password, project).await {
        Ok(s) => {
            let id = d.sessions.insert(s);
            let mut resp = Redirect::to("/project/instances").into_response();
            set_cookie(&mut resp, session::SESSION_COOKIE, &id, 0);
            set_cookie(&mut resp, session::LOGIN_COOKIE, "", -1);
            resp
        }
        Err(msg) => html_response(
            StatusCode::UNAUTHORIZED,
            login_page(Some(&msg), &cookie_csrf, user, project),
        ),
    }
}

async fn logout(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let Some((id, s)) = d.sessions.get(&headers) else {
        return Redirect::to("/login").into_response();
    };
    if !session::same(&s.csrf, form(&body).get("csrf").map_or("", String::as_str)) {
        return html_response(StatusCode::FORBIDDEN, error_page(&s, "Invalid form token."));
    }
    d.sessions.remove(&id);
    // Revoke the token too: signing out ends the session everywhere.
    let _ = d
        .http
        .delete(format!("{}/auth/tokens", d.cfg.identity_url))
        .header("x-auth-token", &s.token)
        .header("x-subject-token", &s.token)
        .send()
        .await;
    let mut resp = Redirect::to("/login").into_response();
    set_cookie(&mut resp, session::SESSION_COOKIE, "", -1);
    resp
}

fn set_cookie(resp: &mut Response, name: &str, value: &str, max_age: i64) {
    let age = if max_age != 0 {
        format!("; Max-Age={}", max_age.max(0))
    } else {
        String::new()
    };
    let v = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{age}");
    if let Ok(h) = HeaderValue::from_str(&v) {
        resp.headers_mut().append(header::SET_COOKIE, h);
    }
}

fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn error_page(s: &Session, msg: &str) -> String {
    page(
        "Error",
        Some(s),
        &format!("<p class=\"error\" role=\"alert\">{}</p>", escape(msg)),
    )
}

/// An API's error message (`{"<kind>": {"message": …}}`, keystone's `{"error": {…}}`).
fn api_message(v: &Value) -> Option<String> {
    v.as_object()?
        .values()
        .find_map(|inner| inner.get("message")?.as_str().map(str::to_string))
}

impl Dash {
    async fn auth_request(&self, body: Value) -> Result<(String, Value), String> {
        let resp = self
            .http
            .post(format!("{}/auth/tokens", self.cfg.identity_url))
            .json(&body)
            .send()
            .await
            .map_err(|_| "The identity service does not answer.".to_string())?;
        let status = resp.status();
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        match token {
            Some(t) if status.is_success() => Ok((t, v)),
            _ if status == reqwest::StatusCode::UNAUTHORIZED => {
                Err("Wrong user name, password or project.".into())
            }
            _ => Err(api_message(&v).unwrap_or_else(|| format!("Sign-in failed ({status})."))),
        }
    }

    /// Password sign-in, scoped to `project` or else to the user's first project.
    async fn authenticate(
        &self,
        user: &str,
        password: &str,
        project: &str,
    ) -> Result<Session, String> {
        let identity = json!({"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}});
        let project = if project.is_empty() {
            let (unscoped, _) = self
                .auth_request(json!({"auth": {"identity": identity}}))
                .await?;
            let v: Value = self
                .http
                .get(format!("{}/auth/projects", self.cfg.identity_url))
                .header("x-auth-token", &unscoped)
                .send()
                .await
                .map_err(|_| "The identity service does not answer.".to_string())?
                .json()
                .await
                .unwrap_or(Value::Null);
            v["projects"]
                .as_array()
                .and_then(|p| p.iter().find_map(|p| p["name"].as_str()))
                .map(str::to_string)
                .ok_or_else(|| "You have no role on any project.".to_string())?
        } else {
            project.to_string()
        };
        let (token, v) = self
            .auth_request(json!({"auth": {"identity": identity, "scope": {"project": {
                "name": project, "domain": {"id": "default"}}}}}))
            .await?;
        let t = &v["token"];
        let expires = t["expires_at"]
            .as_str()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
            .map(|e| e.with_timezone(&chrono::Utc))
            .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::hours(1));
        Ok(Session {
            token,
            user: t["user"]["name"].as_str().unwrap_or(user).to_string(),
            project: t["project"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            roles: t["roles"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|r| r["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            expires,
            csrf: session::random_token(),
        })
    }

    /// GET on the compute API as the signed-in user.
    async fn compute_get(&self, s: &Session, path: &str) -> Result<Value, (StatusCode, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.cfg.compute_url))
            .header("x-auth-token", &s.token)
            .send()
            .await
            .map_err(|_| {
                (
                    StatusCode::BAD_GATEWAY,
                    "The compute service does not answer.".to_string(),
                )
            })?;
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            Err((
                status,
                api_message(&v)
                    .unwrap_or_else(|| format!("The compute service answered {status}.")),
            ))
        }
    }
}

/// The signed-in session, or a redirect to the login page.
macro_rules! signed_in {
    ($d:expr, $headers:expr) => {
        match $d.sessions.get(&$headers) {
            Some((_, s)) => s,
            None => return Redirect::to("/login").into_response(),
        }
    };
}

async fn instances(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let s = signed_in!(d, headers);
    let v = match d.compute_get(&s, "/servers/detail").await {
        Ok(v) => v,
        Err((st, msg)) => return html_response(st, error_page(&s, &msg)),
    };
    let mut rows = String::new();
    for srv in v["servers"].as_array().into_iter().flatten() {
        let addresses: Vec<String> = srv["addresses"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(net, list)| {
                list.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(move |a| Some(format!("{net}: {}", a["addr"].as_str()?)))
            })
            .collect();
        let str_of = |k: &str| srv[k].as_str().unwrap_or_default().to_string();
        rows.push_str(&format!(
            "<tr><td class=\"name\">{}</td><td class=\"status\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(&str_of("name")),
            escape(&str_of("status")),
            escape(&addresses.join(", ")),
            escape(&str_of("id")),
        ));
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"4\">No instances.</td></tr>".into();
    }
    html_response(
        StatusCode::OK,
        page(
            "Instances",
            Some(&s),
            &format!(
                "<h1>Instances</h1><table><thead><tr><th>Name</th><th>Status</th>\
                 <th>Addresses</th><th>ID</th></tr></thead><tbody>{rows}</tbody></table>"
            ),
        ),
    )
}

/// Admin only: the dashboard checks the role for a clear page, and the API's own policy refuses
/// anyway (the list below comes from the admin-only hypervisor API with the user's token).
async fn hypervisors(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let s = signed_in!(d, headers);
    if !s.roles.iter().any(|r| r == "admin") {
        return html_response(
            StatusCode::FORBIDDEN,
            error_page(&s, "This page is for administrators only."),
        );
    }
    let v = match d.compute_get(&s, "/os-hypervisors/detail").await {
        Ok(v) => v,
        Err((st, msg)) => return html_response(st, error_page(&s, &msg)),
    };
    let mut rows = String::new();
    for h in v["hypervisors"].as_array().into_iter().flatten() {
        let num = |k: &str| h[k].as_i64().unwrap_or(0);
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{} / {} MB</td><td>{}</td></tr>",
            escape(h["hypervisor_hostname"].as_str().unwrap_or_default()),
            escape(h["host_ip"].as_str().unwrap_or_default()),
            escape(h["state"].as_str().unwrap_or_default()),
            num("vcpus_used"),
            num("vcpus"),
            num("memory_mb_used"),
            num("memory_mb"),
            num("running_vms"),
        ));
    }
    html_response(
        StatusCode::OK,
        page(
            "Hypervisors",
            Some(&s),
            &format!(
                "<h1>Hypervisors</h1><table><thead><tr><th>Host</th><th>IP</th><th>State</th>\
                 <th>vCPUs used</th><th>RAM used</th><th>Instances</th></tr></thead>\
                 <tbody>{rows}</tbody></table>"
            ),
        ),
    )
}
