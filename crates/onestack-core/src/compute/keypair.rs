//! SSH keypairs: validating imported public keys, Nova's MD5 fingerprint, and generating a
//! keypair when the client brings none (the private key is returned once and never stored).

use crate::{CoreError, CoreResult};
use base64::Engine;
use md5::{Digest, Md5};

/// A checked public key in OpenSSH one-line form.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicKey {
    /// `ssh-ed25519 AAAA… comment`, trimmed.
    pub openssh: String,
    /// `aa:bb:…` — MD5 of the key blob, as Nova reports it.
    pub fingerprint: String,
}

/// Parses and validates an OpenSSH public key (RSA, ECDSA, Ed25519).
pub fn parse_public_key(text: &str) -> CoreResult<PublicKey> {
    let line = text.trim();
    let invalid =
        || CoreError::BadRequest("Keypair data is invalid: failed to generate fingerprint".into());
    if line.is_empty() || line.contains('\n') || line.len() > 16384 {
        return Err(invalid());
    }
    let key = ssh_key::PublicKey::from_openssh(line).map_err(|_| invalid())?;
    let blob = key.to_bytes().map_err(|_| invalid())?;
    Ok(PublicKey {
        openssh: line.to_string(),
        fingerprint: md5_fingerprint(&blob),
    })
}

fn md5_fingerprint(blob: &[u8]) -> String {
    let digest = Md5::digest(blob);
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A new Ed25519 keypair: (public key, private key in OpenSSH PEM form).
pub fn generate(comment: &str) -> CoreResult<(PublicKey, String)> {
    let mut private =
        ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
            .map_err(|e| CoreError::Internal(format!("key generation failed: {e}")))?;
    private.set_comment(comment);
    let pem = private
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| CoreError::Internal(format!("key encoding failed: {e}")))?;
    let public = private
        .public_key()
        .to_openssh()
        .map_err(|e| CoreError::Internal(format!("key encoding failed: {e}")))?;
    Ok((parse_public_key(&public)?, pem.to_string()))
}

/// Keypair names Nova accepts: printable, 1–255 characters of letters, digits, spaces, `.`,
/// `_`, `-` and `@`.
pub fn validate_name(name: &str) -> CoreResult<()> {
    let ok = !name.trim().is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::BadRequest(
            "Keypair name contains unsafe characters".into(),
        ))
    }
}

/// The base64 key blob, for callers that want to compare keys.
pub fn key_blob(openssh: &str) -> Option<Vec<u8>> {
    let b64 = openssh.split_whitespace().nth(1)?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real key made with `ssh-keygen -t ed25519`.
    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBYkCiyudL0fyUUiLdsQZnUmMjMKe4tt3PJLgP67yvMb test@host";

    #[test]
    fn fingerprint_is_md5_of_the_blob() {
        let k = parse_public_key(ED).expect("valid key");
        let blob = key_blob(ED).unwrap_or_default();
        assert_eq!(k.fingerprint, md5_fingerprint(&blob));
        // `ssh-keygen -l -E md5 -f key.pub`
        assert_eq!(
            k.fingerprint,
            "30:b2:32:b2:ec:c2:6f:16:51:c1:f2:06:55:4e:fa:bc"
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "ssh-rsa",
            "ssh-rsa !!!",
            "ssh-ed25519 AAAA",
            "hello world",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd3\nssh-rsa x",
        ] {
            assert!(parse_public_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let (a, pem) = generate("k1").expect("generate");
        let (b, _) = generate("k2").expect("generate");
        assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(a.openssh.starts_with("ssh-ed25519 "));
        assert_ne!(a.fingerprint, b.fingerprint);
        assert!(ssh_key::PrivateKey::from_openssh(&pem).is_ok());
    }

    #[test]
    fn names() {
        assert!(validate_name("my key-1.pub@x").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(256)).is_err());
    }
}
