//! Signed-in sessions, in memory: a random id in an HttpOnly, SameSite=Strict cookie maps to the
//! user's token, which never reaches the browser. A session ends at logout or when its token
//! expires.

use axum::http::{header, HeaderMap};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const SESSION_COOKIE: &str = "onestack_session";
pub const LOGIN_COOKIE: &str = "onestack_login";

#[derive(Clone, Debug)]
pub struct Session {
    pub token: String,
    pub user: String,
    pub project: String,
    pub roles: Vec<String>,
    pub expires: chrono::DateTime<chrono::Utc>,
    /// Every form of this session carries it.
    pub csrf: String,
}

#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Session>>>);

/// 256 random bits, hex.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Constant-time comparison of two tokens.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

impl Sessions {
    pub fn insert(&self, s: Session) -> String {
        let id = random_token();
        if let Ok(mut m) = self.0.lock() {
            // Expired sessions go when new ones come.
            let now = chrono::Utc::now();
            m.retain(|_, s| s.expires > now);
            m.insert(id.clone(), s);
        }
        id
    }

    /// The live session named by the request's cookie.
    pub fn get(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut m = self.0.lock().ok()?;
        let s = m.get(&id)?.clone();
        if s.expires <= chrono::Utc::now() {
            m.remove(&id);
            return None;
        }
        Some((id, s))
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
    }
}
