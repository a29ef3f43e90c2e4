//! Identity (Keystone v3 semantics): authentication, token issue/validation/revocation, and the
//! administration of domains, projects, users, roles, assignments and the service catalog.
//!
//! Token validation sits on the path of every API call, so it never touches the database: it reads
//! an in-memory snapshot of the identity records, rebuilt after every identity write (and
//! periodically, so that several controllers sharing one database converge).

mod admin;
pub mod bootstrap;
mod snapshot;

pub use admin::*;
pub use snapshot::{CatalogEndpoint, CatalogService, Snapshot};

use crate::policy::{AuthContext, NamedRef, ProjectScope};
use crate::token::{new_audit_id, TokenCodec, TokenPayload};
use crate::{now_micros, password, CoreError, CoreResult};
use onestack_store::{Revocation, Store};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Keystone's one message for every failed authentication, so callers cannot probe for users.
pub const AUTH_FAILED: &str = "The request you have made requires authentication.";

/// Keystone's `[security_compliance]` account lockout: after `failure_attempts` wrong passwords
/// in a row an account takes no password for `duration` (0 attempts: off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lockout {
    pub failure_attempts: u32,
    pub duration: Duration,
}

impl Default for Lockout {
    /// On by default: ten guesses, then ten minutes of refusal — brute force gets a few thousand
    /// guesses a day instead of a few million, and an attacker locking a known name out costs
    /// its owner at most ten minutes at a time.
    fn default() -> Self {
        Lockout {
            failure_attempts: 10,
            duration: Duration::from_secs(600),
        }
    }
}

pub struct IdentityService {
    store: Store,
    lockout: RwLock<Lockout>,
    codec: RwLock<Arc<TokenCodec>>,
    snapshot: RwLock<Arc<Snapshot>>,
    refresh_lock: tokio::sync::Mutex<()>,
    token_ttl: Duration,
    /// With several controllers: catalogs issued here point at this controller.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// How a caller proves who it is.
pub enum Credentials {
    Password {
        user: UserSelector,
        password: String,
    },
    Token(String),
}

/// A user by id, or by name within a domain given by id or name.
#[derive(Clone, Debug)]
pub enum UserSelector {
    Id(String),
    Name {
        name: String,
        domain: DomainSelector,
    },
}

#[derive(Clone, Debug)]
pub enum DomainSelector {
    Id(String),
    Name(String),
}

#[derive(Clone, Debug)]
pub enum ProjectSelector {
    Id(String),
    Name {
        name: String,
        domain: DomainSelector,
    },
}

/// A freshly issued token and what it says.
pub struct Issued {
    pub token: String,
    pub context: AuthContext,
}

impl IdentityService {
    /// Makes the catalogs this controller issues name its own URLs for the cloud's services.
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// A catalog URL as a client of this controller should see it.
    pub fn catalog_url(&self, service_type: &str, url: &str) -> String {
        match self.cluster.get() {
            Some(c) => c.localize(service_type, url),
            None => url.to_string(),
        }
    }

    /// Opens the identity service over `store`; `key_dir` is where keys were kept before they
    /// moved into the store (imported when the store has none).
    pub async fn new(
        store: Store,
        key_dir: impl Into<std::path::PathBuf>,
        token_ttl: Duration,
    ) -> CoreResult<Arc<Self>> {
        // The keys live in the store, shared by every controller; a key directory from before
        // is imported once.
        crate::token::ensure_in_store(&store, &key_dir.into()).await?;
        let codec = crate::token::load_from_store(&store).await?;
        let snapshot = Snapshot::load(&store).await?;
        Ok(Arc::new(IdentityService {
            store,
            codec: RwLock::new(Arc::new(codec)),
            snapshot: RwLock::new(Arc::new(snapshot)),
            refresh_lock: tokio::sync::Mutex::new(()),
            lockout: RwLock::new(Lockout::default()),
            token_ttl,
            cluster: std::sync::OnceLock::new(),
        }))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn set_lockout(&self, l: Lockout) {
        if let Ok(mut g) = self.lockout.write() {
            *g = l;
        }
    }

    pub fn lockout(&self) -> Lockout {
        self.lockout.read().map(|g| *g).unwrap_or_default()
    }

    /// Whether a password login as `user_id` may go on: not while its account is locked.
    /// Counts a failure (locking at the threshold) or clears the count on success.
    async fn check_lockout(&self, user_id: &str, user_name: &str, ok: bool) -> CoreResult<bool> {
        let l = self.lockout();
        if l.failure_attempts == 0 {
            return Ok(ok);
        }
        let now = now_micros();
        if self.store.login_locked(user_id, now).await? {
            // The right password is refused too, with the same answer as a wrong one.
            return Ok(false);
        }
        if ok {
            self.store.clear_login_failures(user_id).await?;
            return Ok(true);
        }
        let count = self
            .store
            .record_login_failure(
                user_id,
                now,
                i64::from(l.failure_attempts),
                l.duration.as_micros() as i64,
            )
            .await?;
        if count.locked_now {
            tracing::warn!(user = %user_id, failures = count.failures, "account locked after failed logins");
            // One audit row per lock, beside the failed login that took it.
            let at = "/v3/auth/tokens".to_string();
            self.store
                .insert_audit(&onestack_store::AuditRecord {
                    request_id: format!("lockout-{}", uuid::Uuid::new_v4()),
                    at_us: now,
                    service: "identity".into(),
                    method: "POST".into(),
                    route: at.clone(),
                    path: at,
                    action: Some("lockout".into()),
                    target: Some(user_id.to_string()),
                    user_id: Some(user_id.to_string()),
                    user_name: Some(user_name.to_string()),
                    project_id: None,
                    status: 401,
                    remote_addr: None,
                })
                .await?;
        }
        Ok(false)
    }

    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    fn codec(&self) -> Arc<TokenCodec> {
        self.codec
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Re-reads identity records and fernet keys. Serialised, so the last refresh to finish has
    /// read the newest committed state.
    pub async fn refresh(&self) -> CoreResult<()> {
        let _guard = self.refresh_lock.lock().await;
        let snap = Snapshot::load(&self.store).await?;
        if let Ok(mut s) = self.snapshot.write() {
            *s = Arc::new(snap);
        }
        let codec = crate::token::load_from_store(&self.store).await?;
        if let Ok(mut c) = self.codec.write() {
            *c = Arc::new(codec);
        }
        Ok(())
    }

    /// Background refresh so changes made by another controller (or key rotation) are seen.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = me.refresh().await {
                    tracing::warn!(error = %e, "identity refresh failed");
                }
            }
        })
    }

    /// Authenticates and issues a token, scoped to `scope` when given.
    pub async fn authenticate(
        &self,
        creds: Credentials,
        scope: Option<ProjectSelector>,
    ) -> CoreResult<Issued> {
        let unauthorized = || CoreError::Unauthorized(AUTH_FAILED.to_string());
        // A token made from a token (rescoping) keeps its parent's expiry and carries the chain's
        // audit id (the first token's), as Keystone's: a chain never outlives its first token,
        // and revoking the first revokes the whole chain, however deep.
        let (user_id, methods, parent) = match creds {
            Credentials::Password { user, password } => {
                let snap = self.snapshot();
                let found = snap.find_user(&user);
                let hash = found.and_then(|u| u.password_hash.clone());
                // Always run the KDF, so a wrong user name costs the same as a wrong password.
                let ok = password::verify_async(password, hash).await;
                let Some(u) = found else {
                    return Err(unauthorized());
                };
                if !self.check_lockout(&u.id, &u.name, ok).await? {
                    return Err(unauthorized());
                }
                (u.id.clone(), vec!["password".to_string()], None)
            }
            Credentials::Token(t) => {
                let ctx = self.validate(&t).map_err(|_| unauthorized())?;
                let chain = ctx.token.audit_ids.last().cloned();
                (
                    ctx.user.id,
                    ctx.token.methods,
                    chain.map(|c| (c, ctx.token.expires_at)),
                )
            }
        };
        let snap = self.snapshot();
        let user = snap.users.get(&user_id).ok_or_else(unauthorized)?;
        if !user.enabled || !snap.domain_enabled(&user.domain_id) {
            return Err(unauthorized());
        }
        let project_id = match scope {
            None => None,
            Some(sel) => {
                let p = snap.find_project(&sel).ok_or_else(unauthorized)?;
                if !p.enabled || !snap.domain_enabled(&p.domain_id) {
                    return Err(unauthorized());
                }
                if snap.effective_roles(&user_id, &p.id).is_empty() {
                    return Err(CoreError::Unauthorized(format!(
                        "User {} has no access to project {}.",
                        user_id, p.id
                    )));
                }
                Some(p.id.clone())
            }
        };
        let now = now_micros();
        let fresh = now + self.token_ttl.as_micros() as i64;
        let mut audit_ids = vec![new_audit_id()];
        let mut expires_at = fresh;
        if let Some((chain, parent_expiry)) = parent {
            audit_ids.push(chain);
            expires_at = parent_expiry.min(fresh);
        }
        let payload = TokenPayload {
            user_id,
            project_id,
            methods,
            issued_at: now,
            expires_at,
            audit_ids,
        };
        let token = self.codec().encode(&payload);
        let context = self.context_for(&snap, payload)?;
        Ok(Issued { token, context })
    }

    /// Validates a token: authentic, unexpired, unrevoked, its user and project still enabled and
    /// the user still holding a role on the project. Never touches the database.
    pub fn validate(&self, token: &str) -> CoreResult<AuthContext> {
        let payload = self
            .codec()
            .decode(token)
            .ok_or_else(|| CoreError::Unauthorized(AUTH_FAILED.to_string()))?;
        if payload.expires_at <= now_micros() {
            return Err(CoreError::Unauthorized(AUTH_FAILED.to_string()));
        }
        let snap = self.snapshot();
        if snap.is_revoked(&payload) {
            return Err(CoreError::Unauthorized(AUTH_FAILED.to_string()));
        }
        self.context_for(&snap, payload)
    }

    fn context_for(&self, snap: &Snapshot, token: TokenPayload) -> CoreResult<AuthContext> {
        let bad = || CoreError::Unauthorized(AUTH_FAILED.to_string());
        let user = snap.users.get(&token.user_id).ok_or_else(bad)?;
        if !user.enabled || !snap.domain_enabled(&user.domain_id) {
            return Err(bad());
        }
        let user_domain = snap.domain_ref(&user.domain_id).ok_or_else(bad)?;
        let (project, roles) = match &token.project_id {
            None => (None, Vec::new()),
            Some(pid) => {
                let p = snap.projects.get(pid).ok_or_else(bad)?;
                if !p.enabled || !snap.domain_enabled(&p.domain_id) {
                    return Err(bad());
                }
                let roles = snap.effective_roles(&user.id, pid);
                if roles.is_empty() {
                    return Err(bad());
                }
                let domain = snap.domain_ref(&p.domain_id).ok_or_else(bad)?;
                (
                    Some(ProjectScope {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        domain,
                    }),
                    roles,
                )
            }
        };
        Ok(AuthContext {
            user: NamedRef {
                id: user.id.clone(),
                name: user.name.clone(),
            },
            user_domain,
            project,
            roles,
            token,
        })
    }

    /// Revokes one token by its audit id, as Keystone does: that token, and — when it is the
    /// first of its chain — every token rescoped from it, at any depth (they all carry its audit
    /// id as the chain's). A rescoped token's revocation leaves the rest of its chain alone, so a
    /// client that switches project (a new token from the first) may revoke the one it replaces.
    pub async fn revoke_token(&self, ctx: &AuthContext) -> CoreResult<()> {
        let own = ctx.token.audit_ids.first().cloned();
        self.add_revocation(own, None, None).await?;
        self.refresh().await
    }

    /// Revokes every token issued to a user so far (password change, disabled, as Keystone does).
    pub(crate) async fn revoke_user_tokens(&self, user_id: &str) -> CoreResult<()> {
        self.add_revocation(None, Some(user_id), None).await
    }

    /// Revokes every token scoped to a project so far (the project disabled), or — with a user —
    /// that user's tokens on it (a role on it removed). Keystone records the same events, so
    /// re-enabling or re-granting never brings an old token back.
    pub(crate) async fn revoke_project_tokens(
        &self,
        project_id: &str,
        user_id: Option<&str>,
    ) -> CoreResult<()> {
        self.add_revocation(None, user_id, Some(project_id)).await
    }

    /// Records a revocation of tokens issued until now. It is kept until every token it covers
    /// has expired: a token lives at most the token lifetime from its issue, and a rescoped one
    /// never beyond its chain's first (`authenticate`), so none it covers outlives now + the
    /// lifetime.
    async fn add_revocation(
        &self,
        audit_id: Option<String>,
        user_id: Option<&str>,
        project_id: Option<&str>,
    ) -> CoreResult<()> {
        let now = now_micros();
        let longest = self.token_ttl.as_micros() as i64;
        self.store
            .add_revocation(&Revocation {
                id: crate::new_id(),
                audit_id,
                user_id: user_id.map(str::to_string),
                project_id: project_id.map(str::to_string),
                issued_before: now,
                expires_at: (now + longest) / 1_000_000 + 1,
            })
            .await?;
        Ok(())
    }

    /// Rotates the fernet keys and loads them.
    pub async fn rotate_keys(&self) -> CoreResult<()> {
        crate::token::rotate_in_store(&self.store).await?;
        self.refresh().await
    }
}
