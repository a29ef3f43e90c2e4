//! One-time join tokens: `onestack up` (or `onestack join-token`) mints one; `onestack join` on a
//! new host trades it, once and before it expires, for the agent credentials. Only a hash is
//! stored, so a copy of the database does not hold usable tokens.

use crate::{CoreError, CoreResult};
use onestack_store::Store;
use sha2::{Digest, Sha256};
use std::time::Duration;

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token (32 alphanumerics, ~190 bits) valid for `ttl`.
pub async fn issue(store: &Store, ttl: Duration) -> CoreResult<String> {
    use rand::distributions::{Alphanumeric, DistString};
    let token = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    let now = crate::now_micros();
    let ttl_micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
    store
        .create_join_token(
            &hash(&token),
            now.saturating_add(ttl_micros),
            now,
            &crate::image::now(),
        )
        .await?;
    Ok(token)
}

/// Uses up `token` for `host`; unknown, used and expired tokens are refused alike.
pub async fn redeem(store: &Store, token: &str, host: &str) -> CoreResult<()> {
    if token.is_empty() || token.len() > 128 {
        return Err(CoreError::Unauthorized("invalid join token".into()));
    }
    if store
        .redeem_join_token(&hash(token), host, crate::now_micros())
        .await?
    {
        Ok(())
    } else {
        Err(CoreError::Unauthorized(
            "the join token is unknown, expired or already used; mint another with \
             `onestack join-token` on the controller"
                .into(),
        ))
    }
}
