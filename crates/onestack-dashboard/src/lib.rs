//! The web dashboard. It holds no privileges of its own: every page is one or more calls to the
//! public OpenStack APIs with the signed-in user's token, so the dashboard sees and may do exactly
//! what that user's CLI may (same policy, same errors). Pages are rendered on the server, every
//! user-provided string escaped; sessions live in memory (a restart signs users out) and expire
//! with their token; every form carries a per-session CSRF token; nothing secret is ever in a URL.

/// The signed-in session of a page request, or the sign-in redirect.
macro_rules! signed_in {
    ($d:expr, $headers:expr) => {
        match $d.signed_in(&$headers) {
            Ok(c) => c,
            Err(resp) => return resp,
        }
    };
}

/// The session of a form post whose CSRF token checks out, or the refusal.
macro_rules! posted {
    ($d:expr, $headers:expr, $body:expr) => {
        match $d.posted(&$headers, &$body) {
            Ok(c) => c,
            Err(resp) => return resp,
        }
    };
}

mod admin;
mod api;
mod console;
mod html;
mod network;
mod project;
mod session;
mod volumes;

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
    /// e.g. `http://198.18.0.1:9696/v2.0`
    pub network_url: String,
    /// e.g. `http://198.18.0.1:9292/v2`
    pub image_url: String,
    /// e.g. `http://198.18.0.1:8776/v3` (the project id follows)
    pub volume_url: String,
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
        .route("/switch", axum::routing::post(switch_project))
        .route("/static/onestack.css", get(stylesheet))
        .route("/static/onestack.js", get(script))
        .merge(project::routes())
        .merge(network::routes())
        .merge(volumes::routes())
        .merge(admin::routes())
        .merge(console::routes())
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(server_timing))
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

/// `Server-Timing: app;dur=<ms>` on every answer: how long the dashboard (and the API calls it
/// made) took, visible in the browser's tools and checked by the browser test.
async fn server_timing(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let t0 = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.1}")) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/onestack.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/onestack.js"),
    )
        .into_response()
}

/// A submitted form's fields (the last value of a repeated name wins; `form_all` has them all).
pub(crate) fn form(body: &Bytes) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Every value of a repeated form field (checkbox groups), in order.
pub(crate) fn form_all(body: &Bytes, name: &str) -> Vec<String> {
    form_urlencoded::parse(body)
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

async fn home(State(d): State<Dash>, headers: HeaderMap) -> Response {
    match d.sessions.get(&headers) {
        Some(_) => Redirect::to("/project/overview").into_response(),
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
            let mut resp = Redirect::to("/project/overview").into_response();
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
        return html_response(
            StatusCode::FORBIDDEN,
            error_page(&s, "The form expired; please try again."),
        );
    }
    d.sessions.remove(&id);
    // Revoke the tokens too: signing out ends the session everywhere. Revoking the sign-in's
    // token revokes every token rescoped from it, the current one included.
    let _ = d
        .http
        .delete(format!("{}/auth/tokens", d.cfg.identity_url))
        .header("x-auth-token", &s.token)
        .header("x-subject-token", &s.first_token)
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

pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

pub(crate) fn error_page(s: &Session, msg: &str) -> String {
    page(
        "Error",
        Some(s),
        &format!("<p class=\"error\" role=\"alert\">{}</p>", escape(msg)),
    )
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
            _ => Err(api::message_of(&v).unwrap_or_else(|| format!("Sign-in failed ({status})."))),
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
        self.session_of(token, &v).await
    }

    /// The user's projects (id, name) as `GET /auth/projects` lists them for `token`.
    async fn projects_of(&self, token: &str) -> Vec<(String, String)> {
        let v: Value = match self
            .http
            .get(format!("{}/auth/projects", self.cfg.identity_url))
            .header("x-auth-token", token)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let mut out: Vec<(String, String)> = v["projects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["id"].as_str()?.into(), p["name"].as_str()?.into())))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// A session for a scoped token and its token body.
    async fn session_of(&self, token: String, v: &Value) -> Result<Session, String> {
        let t = &v["token"];
        let expires = t["expires_at"]
            .as_str()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
            .map(|e| e.with_timezone(&chrono::Utc))
            .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::hours(1));
        let projects = self.projects_of(&token).await;
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Ok(Session {
            user: str_of(&t["user"]["name"]),
            project: str_of(&t["project"]["name"]),
            project_id: str_of(&t["project"]["id"]),
            projects,
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
            flash: None,
            first_token: token.clone(),
            token,
        })
    }
}

/// Switches the session to another of the user's projects: a token for that project from the
/// sign-in's token (Keystone's `token` method; revoking a token revokes those rescoped from
/// it, so the new one cannot come from the one it replaces), then the replaced token is revoked
/// unless it is the sign-in's.
async fn switch_project(State(d): State<Dash>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = match d.posted(&headers, &body) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let f = form(&body);
    let project_id = f.get("project").map(String::as_str).unwrap_or_default();
    let back = "/project/overview";
    let scoped = d
        .auth_request(json!({"auth": {
            "identity": {"methods": ["token"], "token": {"id": ctx.s.first_token}},
            "scope": {"project": {"id": project_id}}}}))
        .await;
    let new = match scoped {
        Ok((token, v)) => d.session_of(token, &v).await,
        Err(e) => Err(e),
    };
    match new {
        Ok(mut new) => {
            let old = ctx.s.token.clone();
            new.first_token = ctx.s.first_token.clone();
            let text = format!("Now working in project {}.", new.project);
            d.sessions.rescope(&ctx.id, new);
            if old != ctx.s.first_token {
                let _ = d
                    .http
                    .delete(format!("{}/auth/tokens", d.cfg.identity_url))
                    .header("x-auth-token", &old)
                    .header("x-subject-token", &old)
                    .send()
                    .await;
            }
            d.flash(&ctx, "switch", Ok(text), back)
        }
        Err(e) => d.flash(&ctx, "switch", Err(e), back),
    }
}

/// A signed-in request: the session id, the session, and the flash it had pending.
pub(crate) struct Ctx {
    pub id: String,
    pub s: Session,
    pub flash: Option<session::Flash>,
}

impl Ctx {
    /// The flash for form `form` as a notice next to it ("" when there is none).
    pub fn notice(&self, form: &str) -> String {
        match &self.flash {
            Some(f) if f.form == form => html::notice(&f.text, f.ok),
            _ => String::new(),
        }
    }
}

impl Dash {
    /// The signed-in session for a page, or a redirect to the sign-in page.
    // The error is the response to give instead (sign-in redirect, 403 page): built once per
    // request, so its size does not matter.
    #[allow(clippy::result_large_err)]
    pub(crate) fn signed_in(&self, headers: &HeaderMap) -> Result<Ctx, Response> {
        match self.sessions.get(headers) {
            Some((id, s)) => {
                let flash = self.sessions.take_flash(&id);
                Ok(Ctx { id, s, flash })
            }
            None => Err(Redirect::to("/login").into_response()),
        }
    }

    /// A signed-in form submission whose CSRF field matches the session's.
    // The error is the response to give instead (sign-in redirect, 403 page): built once per
    // request, so its size does not matter.
    #[allow(clippy::result_large_err)]
    pub(crate) fn posted(&self, headers: &HeaderMap, body: &Bytes) -> Result<Ctx, Response> {
        let Some((id, s)) = self.sessions.get(headers) else {
            return Err(Redirect::to("/login").into_response());
        };
        let f = form(body);
        if !session::same(&s.csrf, f.get("csrf").map_or("", String::as_str)) {
            return Err(html_response(
                StatusCode::FORBIDDEN,
                error_page(&s, "The form expired; please try again."),
            ));
        }
        Ok(Ctx { id, s, flash: None })
    }

    /// A signed-in script request (fetch/XHR/websocket): session cookie, same origin, and for
    /// anything but GET the session's CSRF token in `X-CSRF-Token`.
    // The error is the response to give instead (sign-in redirect, 403 page): built once per
    // request, so its size does not matter.
    #[allow(clippy::result_large_err)]
    pub(crate) fn scripted(&self, headers: &HeaderMap, mutating: bool) -> Result<Ctx, Response> {
        let Some((id, s)) = self.sessions.get(headers) else {
            return Err((StatusCode::UNAUTHORIZED, "Not signed in.").into_response());
        };
        if !same_origin(headers) {
            return Err((StatusCode::FORBIDDEN, "Cross-origin request refused.").into_response());
        }
        if mutating {
            let sent = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !session::same(&s.csrf, sent) {
                return Err((StatusCode::FORBIDDEN, "Invalid form token.").into_response());
            }
        }
        Ok(Ctx { id, s, flash: None })
    }

    /// Post/redirect/get: the outcome becomes a one-time notice next to form `form` on `back`.
    pub(crate) fn flash(
        &self,
        ctx: &Ctx,
        form: &str,
        outcome: Result<String, String>,
        back: &str,
    ) -> Response {
        let (text, ok) = match outcome {
            Ok(t) => (t, true),
            Err(t) => (t, false),
        };
        self.sessions.set_flash(
            &ctx.id,
            session::Flash {
                form: form.to_string(),
                text,
                ok,
            },
        );
        Redirect::to(back).into_response()
    }
}

/// A request whose `Origin` (when the browser sends one) is this dashboard's own host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest == host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("origin"));
        }
        h
    }

    #[test]
    fn script_requests_must_come_from_the_dashboard_itself() {
        assert!(same_origin(&headers(None, "198.18.0.1:8080")));
        assert!(same_origin(&headers(
            Some("http://198.18.0.1:8080"),
            "198.18.0.1:8080"
        )));
        assert!(!same_origin(&headers(
            Some("http://evil.example"),
            "198.18.0.1:8080"
        )));
        assert!(!same_origin(&headers(
            Some("http://198.18.0.1:8081"),
            "198.18.0.1:8080"
        )));
        assert!(!same_origin(&headers(Some("null"), "198.18.0.1:8080")));
    }
}
