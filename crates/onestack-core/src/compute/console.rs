//! Console access tokens: the controller signs "this instance, until then" with the secret it
//! shares with the agents, and the agent serving the console checks it. Stateless, so any
//! controller can issue a token any agent accepts; it expires like Nova's (10 minutes).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TOKEN_TTL_SECS: i64 = 600;

fn mac(secret: &str, payload: &str) -> Option<String> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    m.update(payload.as_bytes());
    Some(hex::encode(m.finalize().into_bytes()))
}

/// A URL-safe token for `instance_id`, valid until `now + ttl` (seconds since the epoch).
pub fn issue(secret: &str, instance_id: &str, now: i64, ttl: i64) -> String {
    let payload = format!("{instance_id}:{}", now + ttl);
    let sig = mac(secret, &payload).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{payload}:{sig}"))
}

/// The instance a valid, unexpired token grants access to.
pub fn verify(secret: &str, token: &str, now: i64) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (payload, sig) = text.rsplit_once(':')?;
    let (id, expiry) = payload.rsplit_once(':')?;
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    m.update(payload.as_bytes());
    m.verify_slice(&hex::decode(sig).ok()?).ok()?;
    (expiry.parse::<i64>().ok()? > now).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let t = issue("s3cret", "abc-1", 1000, 600);
        assert_eq!(verify("s3cret", &t, 1599).as_deref(), Some("abc-1"));
        assert_eq!(verify("s3cret", &t, 1600), None, "expired");
        assert_eq!(verify("other", &t, 1000), None, "another secret");
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("abc-2:9999999999:00");
        assert_eq!(verify("s3cret", &forged, 1000), None);
        assert_eq!(verify("s3cret", "!!!", 1000), None);
    }
}
