//! Fernet tokens (AES-128-CBC + HMAC-SHA256: authenticated and encrypted), Keystone style.
//!
//! Keys live in a key repository directory, one file per key named by an integer, as
//! keystone-manage lays them out: the highest number is the primary (signs new tokens), `0` is the
//! staged key (next primary), the rest are secondary (still validate). Rotation promotes the staged
//! key and drops the oldest beyond `max_active`, so tokens survive one rotation cycle.

use crate::{CoreError, CoreResult};
use base64::Engine;
use fernet::{Fernet, MultiFernet};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a token carries. Roles and catalog are not in it: they are recomputed at validation, so a
/// revoked role takes effect at once (as with Keystone's fernet tokens).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenPayload {
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(rename = "m")]
    pub methods: Vec<String>,
    /// Microseconds since the epoch.
    #[serde(rename = "i")]
    pub issued_at: i64,
    /// Microseconds since the epoch.
    #[serde(rename = "e")]
    pub expires_at: i64,
    /// This token's audit id first, then the audit id of the token it was rescoped from.
    #[serde(rename = "a")]
    pub audit_ids: Vec<String>,
}

/// A random 16-byte audit id, url-safe base64 without padding (22 characters), as Keystone's.
pub fn new_audit_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

pub struct KeyRepository {
    dir: PathBuf,
}

impl KeyRepository {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KeyRepository { dir: dir.into() }
    }

    /// Creates the repository with a primary and a staged key unless keys exist already.
    pub fn ensure(&self, max_active: usize) -> CoreResult<()> {
        fs::create_dir_all(&self.dir).map_err(io_err)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        if self.indices()?.is_empty() {
            write_key(&self.dir.join("0"))?;
            self.rotate(max_active)?;
        }
        Ok(())
    }

    /// Promotes the staged key to primary, stages a new key, prunes old secondaries.
    pub fn rotate(&self, max_active: usize) -> CoreResult<()> {
        let mut idx = self.indices()?;
        let next = idx.last().copied().unwrap_or(0) + 1;
        if idx.contains(&0) {
            fs::rename(self.dir.join("0"), self.dir.join(next.to_string())).map_err(io_err)?;
        } else {
            write_key(&self.dir.join(next.to_string()))?;
        }
        write_key(&self.dir.join("0"))?;
        idx = self.indices()?;
        // Keep the staged key plus the newest (max_active - 1) others.
        let keep = max_active.max(2) - 1;
        let others: Vec<u64> = idx.into_iter().filter(|i| *i != 0).collect();
        if others.len() > keep {
            for old in &others[..others.len() - keep] {
                fs::remove_file(self.dir.join(old.to_string())).map_err(io_err)?;
            }
        }
        Ok(())
    }

    fn indices(&self) -> CoreResult<Vec<u64>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Every key of the directory by index (none when there is no directory).
    pub fn read_all(&self) -> CoreResult<Vec<(i64, String)>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for i in self.indices()? {
            let text = fs::read_to_string(self.dir.join(i.to_string())).map_err(io_err)?;
            out.push((i as i64, text.trim().to_string()));
        }
        Ok(out)
    }

    /// Loads every key, primary first.
    pub fn load(&self) -> CoreResult<TokenCodec> {
        codec_of(&self.read_all()?)
    }
}

/// Keys kept at once: the staged key, the primary and one older (a token outlives one
/// rotation).
pub const MAX_ACTIVE_KEYS: usize = 3;

/// The codec of `(index, key)` pairs: the highest index encrypts, every key decrypts.
pub fn codec_of(keys: &[(i64, String)]) -> CoreResult<TokenCodec> {
    let mut sorted: Vec<&(i64, String)> = keys.iter().collect();
    // Primary = highest index; 0 (staged) last.
    sorted.sort_unstable_by(|a, b| match (a.0, b.0) {
        (0, 0) => std::cmp::Ordering::Equal,
        (0, _) => std::cmp::Ordering::Greater,
        (_, 0) => std::cmp::Ordering::Less,
        (x, y) => y.cmp(&x),
    });
    let mut fernets = Vec::new();
    for (i, k) in sorted {
        fernets.push(
            Fernet::new(k.trim())
                .ok_or_else(|| CoreError::Internal(format!("fernet key {i} is malformed")))?,
        );
    }
    if fernets.is_empty() {
        return Err(CoreError::Internal("there are no token keys".into()));
    }
    Ok(TokenCodec {
        fernet: MultiFernet::new(fernets),
    })
}

/// Makes sure the store holds token keys: those of `legacy_dir` (a cloud from before keys
/// lived in the store: its tokens stay valid), else a new primary and staged key.
pub async fn ensure_in_store(store: &onestack_store::Store, legacy_dir: &Path) -> CoreResult<()> {
    if !store.token_keys().await?.is_empty() {
        return Ok(());
    }
    let mut keys = KeyRepository::new(legacy_dir).read_all()?;
    if keys.is_empty() {
        keys = vec![(0, Fernet::generate_key()), (1, Fernet::generate_key())];
    }
    store.init_token_keys(&keys).await?;
    Ok(())
}

/// The store's keys as a codec.
pub async fn load_from_store(store: &onestack_store::Store) -> CoreResult<TokenCodec> {
    codec_of(&store.token_keys().await?)
}

/// Rotates the store's keys (every controller loads them on its next refresh).
pub async fn rotate_in_store(store: &onestack_store::Store) -> CoreResult<()> {
    store
        .rotate_token_keys(&Fernet::generate_key(), MAX_ACTIVE_KEYS - 1)
        .await?;
    Ok(())
}

fn write_key(path: &Path) -> CoreResult<()> {
    crate::fsutil::write_private(path, Fernet::generate_key().as_bytes())
        .map(|_| ())
        .map_err(io_err)
}

fn io_err(e: std::io::Error) -> CoreError {
    CoreError::Internal(format!("fernet key repository: {e}"))
}

/// Encrypts payloads with the primary key, decrypts with any active key.
pub struct TokenCodec {
    fernet: MultiFernet,
}

impl TokenCodec {
    pub fn encode(&self, p: &TokenPayload) -> String {
        // Serialising this plain struct cannot fail.
        let json = serde_json::to_vec(p).unwrap_or_default();
        self.fernet.encrypt(&json)
    }

    /// None for anything that is not a token we issued (tampered, foreign key, garbage).
    pub fn decode(&self, token: &str) -> Option<TokenPayload> {
        if token.is_empty() || token.len() > 1024 {
            return None;
        }
        let bytes = self.fernet.decrypt(token).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> TokenPayload {
        TokenPayload {
            user_id: crate::new_id(),
            project_id: Some(crate::new_id()),
            methods: vec!["password".into()],
            issued_at: 1,
            expires_at: 2,
            audit_ids: vec![new_audit_id()],
        }
    }

    #[test]
    fn roundtrip_and_tamper() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = KeyRepository::new(dir.path().join("keys"));
        repo.ensure(3).expect("ensure");
        let codec = repo.load().expect("load");
        let p = payload();
        let t = codec.encode(&p);
        assert_eq!(codec.decode(&t), Some(p));
        let mut bad = t.clone().into_bytes();
        let mid = bad.len() / 2;
        bad[mid] = if bad[mid] == b'A' { b'B' } else { b'A' };
        assert_eq!(codec.decode(&String::from_utf8(bad).expect("utf8")), None);
        assert_eq!(codec.decode("not-a-token"), None);
        assert_eq!(codec.decode(""), None);
        let mode = fs::metadata(dir.path().join("keys/0"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tokens_survive_one_rotation_but_not_max_active() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = KeyRepository::new(dir.path());
        repo.ensure(3).expect("ensure");
        let t = repo.load().expect("load").encode(&payload());
        repo.rotate(3).expect("rotate");
        assert!(
            repo.load().expect("load").decode(&t).is_some(),
            "after one rotation"
        );
        repo.rotate(3).expect("rotate");
        repo.rotate(3).expect("rotate");
        assert!(
            repo.load().expect("load").decode(&t).is_none(),
            "key pruned"
        );
        assert_eq!(repo.indices().expect("idx").len(), 3);
    }

    #[test]
    fn another_repository_cannot_read_tokens() {
        let a = tempfile::tempdir().expect("tmp");
        let b = tempfile::tempdir().expect("tmp");
        let ra = KeyRepository::new(a.path());
        let rb = KeyRepository::new(b.path());
        ra.ensure(3).expect("a");
        rb.ensure(3).expect("b");
        let t = ra.load().expect("a").encode(&payload());
        assert!(rb.load().expect("b").decode(&t).is_none());
    }
}
