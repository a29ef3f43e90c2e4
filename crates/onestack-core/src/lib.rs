//! OneStack's domain logic, free of HTTP: identity (users, projects, roles, tokens), password
//! hashing, and the authorization context every API call carries.

pub mod cluster;
pub mod compute;
pub mod error;
pub mod fsutil;
pub mod identity;
pub mod image;
pub mod metrics;
pub mod network;
pub mod password;
pub mod policy;
pub mod token;
pub mod volume;

pub use error::{CoreError, CoreResult};

/// Keystone-style ids: 32 lowercase hex digits.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Current time as microseconds since the epoch (token issue/revocation precision).
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
