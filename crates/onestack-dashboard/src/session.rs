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
    /// The token of the sign-in, which every other token of the session is rescoped from:
    /// revoking it at sign-out revokes them all.
    pub first_token: String,
    pub user: String,
    pub project: String,
    pub project_id: String,
    /// The user's projects (id, name), for the project switcher.
    pub projects: Vec<(String, String)>,
    pub roles: Vec<String>,
    pub expires: chrono::DateTime<chrono::Utc>,
    /// Every form of this session carries it.
    pub csrf: String,
    /// The outcome of the last form, shown once next to that form (post/redirect/get).
    pub flash: Option<Flash>,
}

#[derive(Clone, Debug)]
pub struct Flash {
    /// The id of the form it belongs to.
    pub form: String,
    pub text: String,
    pub ok: bool,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
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

    /// Takes the session's pending flash (it shows once).
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        self.0.lock().ok()?.get_mut(id)?.flash.take()
    }

    pub fn set_flash(&self, id: &str, flash: Flash) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(s) = m.get_mut(id) {
                s.flash = Some(flash);
            }
        }
    }

    /// Replaces the session's token and scope (project switch), keeping its id and CSRF token.
    pub fn rescope(&self, id: &str, new: Session) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(s) = m.get_mut(id) {
                let csrf = std::mem::take(&mut s.csrf);
                *s = Session { csrf, ..new };
            }
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
    }
}
