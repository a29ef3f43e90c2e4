//! Calls to the public OpenStack APIs with the signed-in user's token. The dashboard has no other
//! way in: whatever the API refuses, the dashboard shows as the API's own message.

use crate::session::Session;
use crate::Dash;
use axum::http::StatusCode;
use reqwest::Method;
use serde_json::Value;

/// Which API a call goes to.
#[derive(Clone, Copy, Debug)]
pub enum Svc {
    Identity,
    Compute,
    Network,
    Image,
    /// Block storage; paths start with the project id.
    Volume,
}

impl Svc {
    fn label(self) -> &'static str {
        match self {
            Svc::Identity => "identity",
            Svc::Compute => "compute",
            Svc::Network => "network",
            Svc::Image => "image",
            Svc::Volume => "block storage",
        }
    }
}

/// An API's refusal: its status and its readable message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

pub type ApiResult = Result<Value, Failure>;

/// The readable message of an error body in any of the services' shapes: Keystone's
/// `{"error": {"message"}}`, Nova's `{"itemNotFound": {"message"}}`, Neutron's
/// `{"NeutronError": {"message"}}`, Glance's `{"message"}`.
pub fn message_of(v: &Value) -> Option<String> {
    if let Some(m) = v.get("message").and_then(Value::as_str) {
        return Some(m.to_string());
    }
    v.as_object()?
        .values()
        .find_map(|inner| inner.get("message")?.as_str().map(str::to_string))
}

impl Dash {
    fn base(&self, svc: Svc) -> &str {
        match svc {
            Svc::Identity => &self.cfg.identity_url,
            Svc::Compute => &self.cfg.compute_url,
            Svc::Network => &self.cfg.network_url,
            Svc::Image => &self.cfg.image_url,
            Svc::Volume => &self.cfg.volume_url,
        }
    }

    pub(crate) fn url(&self, svc: Svc, path: &str) -> String {
        format!("{}{path}", self.base(svc))
    }

    /// One JSON call as the user. A 2xx answer's body (Null when empty) or the API's refusal.
    pub async fn call(
        &self,
        s: &Session,
        svc: Svc,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> ApiResult {
        let mut req = self
            .http
            .request(method, self.url(svc, path))
            .header("x-auth-token", &s.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|_| Failure {
            status: StatusCode::BAD_GATEWAY,
            message: format!("The {} service does not answer.", svc.label()),
        })?;
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let bytes = resp.bytes().await.unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            let text = String::from_utf8_lossy(&bytes);
            Err(Failure {
                status,
                message: message_of(&v).unwrap_or_else(|| {
                    if !text.trim().is_empty() && text.len() < 300 && v.is_null() {
                        text.trim().to_string()
                    } else {
                        format!("The {} service answered {status}.", svc.label())
                    }
                }),
            })
        }
    }

    pub async fn get(&self, s: &Session, svc: Svc, path: &str) -> ApiResult {
        self.call(s, svc, Method::GET, path, None).await
    }

    pub async fn post(&self, s: &Session, svc: Svc, path: &str, body: &Value) -> ApiResult {
        self.call(s, svc, Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, s: &Session, svc: Svc, path: &str, body: &Value) -> ApiResult {
        self.call(s, svc, Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, s: &Session, svc: Svc, path: &str) -> ApiResult {
        self.call(s, svc, Method::DELETE, path, None).await
    }

    /// The `key` array of a list answer (empty when the call failed: callers that must show the
    /// failure use `get`).
    pub async fn list(&self, s: &Session, svc: Svc, path: &str, key: &str) -> Vec<Value> {
        match self.get(s, svc, path).await {
            Ok(v) => v[key].as_array().cloned().unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

/// `v[k]` as a string ("" when absent).
pub fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

/// Percent-encodes a path segment (names of key pairs, ids from a form).
pub fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_services_error_shape() {
        let nova =
            json!({"itemNotFound": {"code": 404, "message": "Instance x could not be found."}});
        let neutron =
            json!({"NeutronError": {"type": "NetworkInUse", "message": "in use", "detail": ""}});
        let keystone = json!({"error": {"code": 401, "title": "Unauthorized", "message": "no"}});
        let glance =
            json!({"message": "409 Conflict", "code": "409 Conflict", "title": "Conflict"});
        assert_eq!(
            message_of(&nova).as_deref(),
            Some("Instance x could not be found.")
        );
        assert_eq!(message_of(&neutron).as_deref(), Some("in use"));
        assert_eq!(message_of(&keystone).as_deref(), Some("no"));
        assert_eq!(message_of(&glance).as_deref(), Some("409 Conflict"));
        assert_eq!(message_of(&json!({"x": 1})), None);
    }

    #[test]
    fn path_segments_cannot_escape_their_place() {
        assert_eq!(seg("a b/../c?d#e"), "a%20b%2F..%2Fc%3Fd%23e");
    }
}
