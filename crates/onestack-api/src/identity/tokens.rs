//! `/v3/auth/*`: issue, validate and revoke tokens; what a token can reach.

use super::{list_body, render};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use onestack_core::identity::{Credentials, DomainSelector, ProjectSelector, UserSelector};
use onestack_core::policy::AuthContext;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Deserialize)]
pub struct AuthRequest {
    auth: AuthBody,
}

#[derive(Deserialize)]
struct AuthBody {
    identity: IdentityBody,
    #[serde(default)]
    scope: Option<Value>,
}

#[derive(Deserialize)]
struct IdentityBody {
    methods: Vec<String>,
    password: Option<PasswordBody>,
    token: Option<TokenBody>,
}

#[derive(Deserialize)]
struct PasswordBody {
    user: PasswordUser,
}

#[derive(Deserialize)]
struct PasswordUser {
    id: Option<String>,
    name: Option<String>,
    domain: Option<DomainRef>,
    password: String,
}

#[derive(Deserialize)]
struct DomainRef {
    id: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    id: String,
}

#[derive(Deserialize)]
struct ProjectRef {
    id: Option<String>,
    name: Option<String>,
    domain: Option<DomainRef>,
}

fn domain_selector(d: Option<DomainRef>, what: &str) -> ApiResult<DomainSelector> {
    match d {
        Some(DomainRef { id: Some(id), .. }) => Ok(DomainSelector::Id(id)),
        Some(DomainRef { name: Some(n), .. }) => Ok(DomainSelector::Name(n)),
        _ => Err(ApiError::bad_request(format!(
            "Expecting to find domain in {what}. The server could not comply with the request since it is either malformed or otherwise incorrect. The client is assumed to be in error."
        ))),
    }
}

fn parse_scope(scope: Option<Value>) -> ApiResult<Option<Option<ProjectSelector>>> {
    // Outer None: no scope given (use the default project); Some(None): explicitly unscoped.
    let Some(scope) = scope else { return Ok(None) };
    if scope.as_str() == Some("unscoped") {
        return Ok(Some(None));
    }
    let obj = scope
        .as_object()
        .ok_or_else(|| ApiError::bad_request("Invalid input for field 'scope'."))?;
    if let Some(p) = obj.get("project") {
        let p: ProjectRef = serde_json::from_value(p.clone()).map_err(|e| {
            ApiError::bad_request(format!("Invalid input for field 'scope.project': {e}"))
        })?;
        let sel = match (p.id, p.name) {
            (Some(id), _) => ProjectSelector::Id(id),
            (None, Some(name)) => ProjectSelector::Name {
                name,
                domain: domain_selector(p.domain, "project")?,
            },
            _ => {
                return Err(ApiError::bad_request(
                    "Project scope needs an id or a name.",
                ))
            }
        };
        return Ok(Some(Some(sel)));
    }
    if obj.contains_key("domain")
        || obj.contains_key("system")
        || obj.contains_key("OS-TRUST:trust")
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Only project-scoped and unscoped tokens are supported by this cloud.",
        ));
    }
    Err(ApiError::bad_request("Invalid input for field 'scope'."))
}

pub async fn issue(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    JsonBody(req): JsonBody<AuthRequest>,
) -> ApiResult<Response> {
    let identity = req.auth.identity;
    let creds = if identity.methods.iter().any(|m| m == "password") {
        let u = identity
            .password
            .ok_or_else(|| ApiError::bad_request("'password' is a required property."))?
            .user;
        let user = match (u.id, u.name) {
            (Some(id), _) => UserSelector::Id(id),
            (None, Some(name)) => UserSelector::Name {
                name,
                domain: domain_selector(u.domain, "user")?,
            },
            _ => return Err(ApiError::bad_request("A user id or name is required.")),
        };
        Credentials::Password {
            user,
            password: u.password,
        }
    } else if identity.methods.iter().any(|m| m == "token") {
        let t = identity
            .token
            .ok_or_else(|| ApiError::bad_request("'token' is a required property."))?;
        Credentials::Token(t.id)
    } else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Attempted to authenticate with an unsupported method.",
        ));
    };
    let scope = match parse_scope(req.auth.scope)? {
        Some(explicit) => explicit,
        None => default_scope(&state, &creds),
    };
    let issued = state.identity.authenticate(creds, scope).await?;
    let snap = state.identity.snapshot();
    let with_catalog = !q.contains_key("nocatalog");
    let body = render::token(&issued.context, &snap, with_catalog, &|t, u| {
        state.identity.catalog_url(t, u)
    });
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&issued.token) {
        resp.headers_mut().insert("x-subject-token", v);
    }
    Ok(resp)
}

/// Without a scope, Keystone scopes to the user's default project when the user has a role there.
fn default_scope(state: &AppState, creds: &Credentials) -> Option<ProjectSelector> {
    let snap = state.identity.snapshot();
    let user = match creds {
        Credentials::Password { user, .. } => snap.find_user(user)?,
        Credentials::Token(_) => return None,
    };
    let pid = user.default_project_id.as_ref()?;
    (!snap.effective_roles(&user.id, pid).is_empty()).then(|| ProjectSelector::Id(pid.clone()))
}

/// The subject token a caller may inspect or revoke: its own, or any if admin.
fn subject(
    state: &AppState,
    caller: &AuthContext,
    headers: &HeaderMap,
) -> ApiResult<(String, AuthContext)> {
    let missing = || ApiError::not_found("Could not find token.");
    let token = headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?
        .to_string();
    let ctx = state.identity.validate(&token).map_err(|_| missing())?;
    if !caller.is_admin() && !caller.has_role("service") && caller.user.id != ctx.user.id {
        return Err(onestack_core::policy::forbidden("identity:validate_token").into());
    }
    Ok((token, ctx))
}

pub async fn validate(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (token, ctx) = subject(&state, &caller, &headers)?;
    let snap = state.identity.snapshot();
    let body = render::token(&ctx, &snap, !q.contains_key("nocatalog"), &|t, u| {
        state.identity.catalog_url(t, u)
    });
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        resp.headers_mut().insert("x-subject-token", v);
    }
    Ok(resp)
}

pub async fn revoke(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let (_, ctx) = subject(&state, &caller, &headers)?;
    state.identity.revoke_token(&ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn auth_projects(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> ApiResult<Json<Value>> {
    let projects = state
        .identity
        .store()
        .list_user_projects(&caller.user.id)
        .await
        .map_err(onestack_core::CoreError::from)?;
    let items = projects
        .iter()
        .filter(|p| p.enabled)
        .map(|p| render::project(&state, p))
        .collect();
    Ok(list_body(&state, "projects", "auth/projects", items))
}

pub async fn auth_domains(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> ApiResult<Json<Value>> {
    let snap = state.identity.snapshot();
    let grants = state
        .identity
        .store()
        .list_assignments(Some(&caller.user.id), None)
        .await
        .map_err(onestack_core::CoreError::from)?;
    let mut items = Vec::new();
    for g in grants.iter().filter(|g| g.target_type == "domain") {
        if let Some(d) = snap.domains.get(&g.target_id) {
            let v = render::domain(&state, d);
            if !items.contains(&v) {
                items.push(v);
            }
        }
    }
    Ok(list_body(&state, "domains", "auth/domains", items))
}

pub async fn auth_catalog(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> ApiResult<Json<Value>> {
    let Some(pid) = caller.project_id() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "A project-scoped token is required to produce a service catalog.",
        ));
    };
    let snap = state.identity.snapshot();
    Ok(Json(json!({
        "catalog": render::catalog(&snap, Some(pid), &|t, u| state.identity.catalog_url(t, u)),
        "links": {"self": format!("{}/v3/auth/catalog", state.identity_url), "previous": null, "next": null},
    })))
}
