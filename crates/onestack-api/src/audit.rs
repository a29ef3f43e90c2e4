//! The audit trail of mutating API calls. `request_context` gives each request a `CallerSlot`;
//! the `Auth` extractor fills it with who called, and after the handler the call is written to
//! the store's audit log with its request id, target and status.

use crate::error::ErrorFlavor;
use axum::http::Method;
use onestack_core::policy::AuthContext;
use serde_json::Value;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub user_id: String,
    pub user_name: String,
    pub project_id: Option<String>,
}

/// Where the `Auth` extractor leaves the caller for the audit record.
#[derive(Clone, Default)]
pub struct CallerSlot(Arc<Mutex<Option<Caller>>>);

impl CallerSlot {
    pub fn set(&self, ctx: &AuthContext) {
        if let Ok(mut c) = self.0.lock() {
            *c = Some(Caller {
                user_id: ctx.user.id.clone(),
                user_name: ctx.user.name.clone(),
                project_id: ctx.project_id().map(str::to_string),
            });
        }
    }

    pub fn set_name(&self, user_name: String) {
        if let Ok(mut c) = self.0.lock() {
            if c.is_none() {
                *c = Some(Caller {
                    user_name,
                    ..Caller::default()
                });
            }
        }
    }

    pub fn get(&self) -> Option<Caller> {
        self.0.lock().ok().and_then(|c| c.clone())
    }
}

/// Calls that change something; agents' internal calls are not the API's users' and are left out.
pub fn is_audited(method: &Method, path: &str) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && !path.starts_with("/internal/")
}

/// The service a router serves. Cinder answers with Nova's error bodies, under `/v3/{project}`.
pub fn service_of(flavor: ErrorFlavor, path: &str) -> &'static str {
    match flavor {
        ErrorFlavor::Keystone => "identity",
        ErrorFlavor::Glance => "image",
        ErrorFlavor::Neutron => "network",
        ErrorFlavor::Nova if path.starts_with("/v3") => "volume",
        ErrorFlavor::Nova => "compute",
    }
}

/// Whether the body says what is done: server and volume actions.
pub fn wants_action(path: &str) -> bool {
    path.ends_with("/action")
}

/// The action of an `…/action` body: its only (or first) key.
pub fn action_of(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.as_object()?.keys().next().map(|k| truncate(k, 64))
}

/// The user a token request names (never anything else from it).
pub fn login_name(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let u = &v["auth"]["identity"]["password"]["user"];
    u["name"]
        .as_str()
        .or_else(|| u["id"].as_str())
        .map(|n| truncate(n, 255))
}

/// The last `{placeholder}` of the route that is not the project in the URL, read from the path.
pub fn target_of(route: &str, path: &str) -> Option<String> {
    let mut found = None;
    for (r, p) in route.split('/').zip(path.split('/')) {
        if r.starts_with('{') && r.ends_with('}') && !r.contains("project") && !p.is_empty() {
            found = Some(truncate(p, 255));
        }
    }
    found
}

/// The id of what a create returned: `{"server": {"id": …}}`, or Glance's `{"id": …}`.
pub fn created_id(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object()?;
    if let Some(id) = o.get("id").and_then(Value::as_str) {
        return Some(truncate(id, 255));
    }
    match o.values().collect::<Vec<_>>().as_slice() {
        [one] => one
            .get("id")
            .and_then(Value::as_str)
            .map(|id| truncate(id, 255)),
        _ => None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_and_on_what() {
        assert_eq!(
            target_of("/v2.1/servers/{id}/action", "/v2.1/servers/abc/action").as_deref(),
            Some("abc")
        );
        assert_eq!(
            target_of("/v3/{project_id}/volumes/{id}", "/v3/p1/volumes/v9").as_deref(),
            Some("v9")
        );
        assert_eq!(target_of("/v2.1/servers", "/v2.1/servers"), None);
        assert_eq!(
            action_of(br#"{"os-stop": null}"#).as_deref(),
            Some("os-stop")
        );
        assert_eq!(action_of(b"not json"), None);
        assert_eq!(
            created_id(br#"{"server": {"id": "s1", "links": []}}"#).as_deref(),
            Some("s1")
        );
        assert_eq!(created_id(br#"{"id": "img"}"#).as_deref(), Some("img"));
        assert_eq!(created_id(br#"{"a": {"id": "1"}, "b": {}}"#), None);
        assert_eq!(
            login_name(
                br#"{"auth": {"identity": {"password": {"user": {"name": "demo", "password": "x"}}}}}"#
            )
            .as_deref(),
            Some("demo")
        );
        assert!(is_audited(&Method::POST, "/v2.1/servers"));
        assert!(!is_audited(&Method::GET, "/v2.1/servers"));
        assert!(!is_audited(&Method::POST, "/internal/v1/hosts"));
        assert_eq!(service_of(ErrorFlavor::Nova, "/v3/p/volumes"), "volume");
        assert_eq!(service_of(ErrorFlavor::Nova, "/v2.1/servers"), "compute");
    }
}
