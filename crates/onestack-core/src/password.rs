//! Password hashing with argon2id (a slow, memory-hard KDF). Verification runs on the blocking
//! pool so a burst of logins cannot stall the async workers.

use crate::{CoreError, CoreResult};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use std::sync::OnceLock;

/// Hashes a password into a PHC string (algorithm, parameters, salt and hash together).
pub fn hash(password: &str) -> CoreResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CoreError::Internal(format!("password hashing failed: {e}")))
}

/// True when `password` matches `phc`. A missing hash (user without password) verifies against a
/// dummy hash so that "no such user" and "wrong password" take the same time.
pub fn verify(password: &str, phc: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let (phc, real) = match phc {
        Some(p) => (p.to_string(), true),
        None => (
            DUMMY
                .get_or_init(|| hash("onestack-dummy-password").unwrap_or_default())
                .clone(),
            false,
        ),
    };
    let Ok(parsed) = PasswordHash::new(&phc) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && real
}

/// Each hash holds ~19 MiB for tens of milliseconds; bounding how many run at once keeps a login
/// flood from exhausting memory or the blocking pool.
fn kdf_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(n * 2)
    })
}

pub async fn hash_async(password: String) -> CoreResult<String> {
    let _slot = kdf_slots()
        .acquire()
        .await
        .map_err(|e| CoreError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|e| CoreError::Internal(e.to_string()))?
}

pub async fn verify_async(password: String, phc: Option<String>) -> bool {
    let Ok(_slot) = kdf_slots().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || verify(&password, phc.as_deref()))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_and_rejects() {
        let h = hash("s3cret").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("s3cret", Some(&h)));
        assert!(!verify("S3cret", Some(&h)));
        assert!(!verify("s3cret", None), "no hash never verifies");
        assert!(!verify("s3cret", Some("garbage")));
        assert_ne!(hash("s3cret").expect("hash"), h, "salted");
    }
}
