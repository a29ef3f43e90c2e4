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

/// What a join token lets its holder become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinRole {
    /// A compute node: its agent's credential.
    Compute,
    /// Another controller of the same database: the cloud's shared secrets.
    Controller,
}

impl JoinRole {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRole::Compute => "compute",
            JoinRole::Controller => "controller",
        }
    }
}

/// A fresh compute-node token (32 alphanumerics, ~190 bits) valid for `ttl`.
pub async fn issue(store: &Store, ttl: Duration) -> CoreResult<String> {
    issue_for(store, ttl, JoinRole::Compute).await
}

/// A fresh token for `role`, valid for `ttl`.
pub async fn issue_for(store: &Store, ttl: Duration, role: JoinRole) -> CoreResult<String> {
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
            role.as_str(),
        )
        .await?;
    Ok(token)
}

/// A compute node's credential: `<host>:<key>` with key = HMAC-SHA256(the controller's agent
/// secret, host and a per-join nonce). The controller recomputes it whenever it needs it (to check
/// the node, to call the node's agent, to sign its console tokens), so nothing secret is stored;
/// the nonce makes each join's credential new, and deleting it revokes the node.
fn derive(shared: &str, host: &str, nonce: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(shared.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(format!("onestack-node\0{host}\0{nonce}").as_bytes());
    format!("{host}:{}", hex::encode(mac.finalize().into_bytes()))
}

/// A new credential for compute node `host`, replacing any earlier one.
pub async fn node_credential(store: &Store, shared: &str, host: &str) -> CoreResult<String> {
    use rand::distributions::{Alphanumeric, DistString};
    let nonce = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
    store
        .put_node_credential(host, &nonce, &crate::image::now())
        .await?;
    Ok(derive(shared, host, &nonce))
}

/// The current credential of node `host`; None for a host that did not join (the controller's
/// own agent, which holds the shared secret).
pub async fn credential_for(store: &Store, shared: &str, host: &str) -> CoreResult<Option<String>> {
    Ok(store
        .node_credential_nonce(host)
        .await?
        .map(|nonce| derive(shared, host, &nonce)))
}

/// The host a node credential belongs to, if it is currently valid.
pub async fn node_of(store: &Store, shared: &str, given: &str) -> CoreResult<Option<String>> {
    let Some((host, _)) = given.split_once(':') else {
        return Ok(None);
    };
    let Some(expected) = credential_for(store, shared, host).await? else {
        return Ok(None);
    };
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    Ok(same.then(|| host.to_string()))
}

/// Uses up `token`, minted for `role`, for `host`; unknown, used, expired and other-role
/// tokens are refused alike.
pub async fn redeem(store: &Store, token: &str, host: &str, role: JoinRole) -> CoreResult<()> {
    if token.is_empty() || token.len() > 128 {
        return Err(CoreError::Unauthorized("invalid join token".into()));
    }
    if store
        .redeem_join_token(&hash(token), host, crate::now_micros(), role.as_str())
        .await?
    {
        Ok(())
    } else {
        let mint = match role {
            JoinRole::Compute => "`onestack join-token`",
            JoinRole::Controller => "`onestack join-token --role controller`",
        };
        Err(CoreError::Unauthorized(format!(
            "the join token is unknown, expired or already used, or was minted for another \
             role; mint another with {mint} on the controller"
        )))
    }
}
