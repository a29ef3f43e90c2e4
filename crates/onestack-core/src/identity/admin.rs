//! Identity administration: the application layer between the Keystone handlers and the store.
//! Each operation checks policy first, validates input, writes, then refreshes the snapshot so
//! the next request (token validation included) sees the change.

use super::IdentityService;
use crate::policy::{forbidden, AuthContext};
use crate::{new_id, password, CoreError, CoreResult};
use onestack_store::{
    Assignment, Domain, Endpoint, Filter, ImpliedRole, Project, Region, Role, Service, StoreError,
    TargetType, User,
};
use serde::Deserialize;

pub const DEFAULT_DOMAIN_ID: &str = "default";
const MAX_NAME: usize = 255;
const MAX_PASSWORD: usize = 4096;

fn check_name(what: &str, name: &str, max: usize) -> CoreResult<()> {
    let len = name.chars().count();
    if name.trim().is_empty() || len > max || name.chars().any(char::is_control) {
        return Err(CoreError::BadRequest(format!(
            "Invalid input for field '{what}': must be 1 to {max} printable characters."
        )));
    }
    Ok(())
}

fn check_password(p: &str) -> CoreResult<()> {
    if p.len() > MAX_PASSWORD {
        return Err(CoreError::BadRequest(format!(
            "Invalid input for field 'password': longer than {MAX_PASSWORD} bytes."
        )));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
pub struct DomainInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ProjectInput {
    pub name: Option<String>,
    pub domain_id: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub parent_id: Option<String>,
    pub is_domain: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct UserInput {
    pub name: Option<String>,
    pub domain_id: Option<String>,
    pub password: Option<String>,
    pub enabled: Option<bool>,
    /// `Some(None)` clears it (JSON null).
    #[serde(default, deserialize_with = "double_option")]
    pub default_project_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub email: Option<Option<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RoleInput {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    pub domain_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RegionInput {
    pub id: Option<String>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub parent_region_id: Option<Option<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ServiceInput {
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct EndpointInput {
    pub service_id: Option<String>,
    pub interface: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub region_id: Option<Option<String>>,
    /// Deprecated alias of region_id that keystoneclient still sends.
    #[serde(default, deserialize_with = "double_option")]
    pub region: Option<Option<String>>,
    pub url: Option<String>,
    pub enabled: Option<bool>,
}

/// Distinguishes an absent field (None) from an explicit null (Some(None)).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Filters of `GET /v3/role_assignments`.
#[derive(Debug, Default, Clone)]
pub struct AssignmentQuery {
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub domain_id: Option<String>,
    pub role_id: Option<String>,
    /// Expand implied roles (Keystone's `effective`).
    pub effective: bool,
}

/// One row of a role assignment listing; `prior_role_id` is set for roles reached by implication.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentView {
    pub role_id: String,
    pub user_id: String,
    pub target_type: TargetType,
    pub target_id: String,
    pub prior_role_id: Option<String>,
}

fn not_found<'a>(what: &'a str, id: &'a str) -> impl FnOnce(StoreError) -> CoreError + 'a {
    move |e| CoreError::from_store(e, what, id)
}

impl IdentityService {
    // ---------------- domains ----------------
    pub async fn create_domain(&self, ctx: &AuthContext, i: DomainInput) -> CoreResult<Domain> {
        ctx.require_admin("identity:create_domain")?;
        let name = i
            .name
            .ok_or_else(|| CoreError::BadRequest("'name' is a required property.".into()))?;
        check_name("name", &name, 64)?;
        let d = Domain {
            id: new_id(),
            name,
            description: i.description.unwrap_or_default(),
            enabled: i.enabled.unwrap_or(true),
        };
        self.store
            .create_domain(&d)
            .await
            .map_err(not_found("domain", &d.id))?;
        self.refresh().await?;
        Ok(d)
    }

    pub async fn get_domain(&self, ctx: &AuthContext, id: &str) -> CoreResult<Domain> {
        let own =
            ctx.user_domain.id == id || ctx.project.as_ref().is_some_and(|p| p.domain.id == id);
        if !ctx.is_admin() && !own {
            return Err(forbidden("identity:get_domain"));
        }
        self.store
            .get_domain(id)
            .await
            .map_err(not_found("domain", id))
    }

    pub async fn list_domains(&self, ctx: &AuthContext, f: &Filter) -> CoreResult<Vec<Domain>> {
        ctx.require_admin("identity:list_domains")?;
        Ok(self.store.list_domains(f).await?)
    }

    pub async fn update_domain(
        &self,
        ctx: &AuthContext,
        id: &str,
        i: DomainInput,
    ) -> CoreResult<Domain> {
        ctx.require_admin("identity:update_domain")?;
        let mut d = self
            .store
            .get_domain(id)
            .await
            .map_err(not_found("domain", id))?;
        if let Some(n) = i.name {
            check_name("name", &n, 64)?;
            d.name = n;
        }
        if let Some(v) = i.description {
            d.description = v;
        }
        if let Some(v) = i.enabled {
            if !v && id == DEFAULT_DOMAIN_ID {
                return Err(CoreError::Forbidden(
                    "The default domain cannot be disabled.".into(),
                ));
            }
            d.enabled = v;
        }
        self.store
            .update_domain(&d)
            .await
            .map_err(not_found("domain", id))?;
        // A disabled domain ends the tokens of its users and of its projects.
        if i.enabled == Some(false) {
            let of_domain = Filter {
                domain_id: Some(id.to_string()),
                ..Default::default()
            };
            for u in self.store.list_users(&of_domain).await? {
                self.revoke_user_tokens(&u.id).await?;
            }
            for p in self.store.list_projects(&of_domain).await? {
                self.revoke_project_tokens(&p.id, None).await?;
            }
        }
        self.refresh().await?;
        Ok(d)
    }

    /// As in Keystone, a domain must be disabled before it can be deleted.
    pub async fn delete_domain(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        ctx.require_admin("identity:delete_domain")?;
        let d = self
            .store
            .get_domain(id)
            .await
            .map_err(not_found("domain", id))?;
        if d.enabled {
            return Err(CoreError::Forbidden(
                "Cannot delete a domain that is enabled, please disable it first.".into(),
            ));
        }
        self.store
            .delete_domain(id)
            .await
            .map_err(not_found("domain", id))?;
        self.refresh().await
    }

    // ---------------- projects ----------------
    pub async fn create_project(&self, ctx: &AuthContext, i: ProjectInput) -> CoreResult<Project> {
        ctx.require_admin("identity:create_project")?;
        let name = i
            .name
            .ok_or_else(|| CoreError::BadRequest("'name' is a required property.".into()))?;
        check_name("name", &name, 64)?;
        if i.is_domain == Some(true) {
            return Err(CoreError::BadRequest(
                "Projects acting as domains are not supported.".into(),
            ));
        }
        let domain_id = i.domain_id.unwrap_or_else(|| DEFAULT_DOMAIN_ID.to_string());
        if let Some(parent) = &i.parent_id {
            if parent != &domain_id {
                return Err(CoreError::BadRequest(
                    "Nested projects are not supported.".into(),
                ));
            }
        }
        self.store
            .get_domain(&domain_id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => {
                    CoreError::BadRequest(format!("Could not find domain: {domain_id}."))
                }
                other => other.into(),
            })?;
        let p = Project {
            id: new_id(),
            domain_id,
            name: name.clone(),
            description: i.description.unwrap_or_default(),
            enabled: i.enabled.unwrap_or(true),
        };
        self.store.create_project(&p).await.map_err(|e| match e {
            StoreError::Conflict(_) => CoreError::Conflict(format!(
                "Conflict occurred attempting to store project - it is not permitted to have two projects with the same name in the same domain : {name}."
            )),
            other => other.into(),
        })?;
        self.refresh().await?;
        Ok(p)
    }

    /// A user sees the projects it is assigned to (an earlier issue's requirement; Keystone's
    /// `identity:get_project` wants a token scoped to the project, `list_projects` an admin).
    fn can_see_project(&self, ctx: &AuthContext, id: &str) -> bool {
        ctx.is_admin() || !self.snapshot().effective_roles(&ctx.user.id, id).is_empty()
    }

    pub async fn get_project(&self, ctx: &AuthContext, id: &str) -> CoreResult<Project> {
        if !self.can_see_project(ctx, id) {
            return Err(forbidden("identity:get_project"));
        }
        self.store
            .get_project(id)
            .await
            .map_err(not_found("project", id))
    }

    /// Admins see every project; other users only those they hold a role on (Keystone's
    /// `identity:list_projects` is the admin's: a deliberate difference, see
    /// docs/architecture.md).
    pub async fn list_projects(&self, ctx: &AuthContext, f: &Filter) -> CoreResult<Vec<Project>> {
        let all = self.store.list_projects(f).await?;
        if ctx.is_admin() {
            return Ok(all);
        }
        Ok(all
            .into_iter()
            .filter(|p| self.can_see_project(ctx, &p.id))
            .collect())
    }

    pub async fn list_user_projects(
        &self,
        ctx: &AuthContext,
        user_id: &str,
    ) -> CoreResult<Vec<Project>> {
        ctx.require_admin_or_self("identity:list_user_projects", user_id)?;
        self.store
            .get_user(user_id)
            .await
            .map_err(not_found("user", user_id))?;
        Ok(self.store.list_user_projects(user_id).await?)
    }

    pub async fn update_project(
        &self,
        ctx: &AuthContext,
        id: &str,
        i: ProjectInput,
    ) -> CoreResult<Project> {
        ctx.require_admin("identity:update_project")?;
        let mut p = self
            .store
            .get_project(id)
            .await
            .map_err(not_found("project", id))?;
        if i.domain_id.as_ref().is_some_and(|d| *d != p.domain_id) {
            return Err(CoreError::BadRequest(
                "Update of `domain_id` is not allowed.".into(),
            ));
        }
        if let Some(n) = i.name {
            check_name("name", &n, 64)?;
            p.name = n;
        }
        if let Some(v) = i.description {
            p.description = v;
        }
        let disabling = i.enabled == Some(false);
        if let Some(v) = i.enabled {
            p.enabled = v;
        }
        self.store
            .update_project(&p)
            .await
            .map_err(not_found("project", id))?;
        // Re-enabling it later must not bring its old tokens back.
        if disabling {
            self.revoke_project_tokens(id, None).await?;
        }
        self.refresh().await?;
        Ok(p)
    }

    pub async fn delete_project(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        ctx.require_admin("identity:delete_project")?;
        self.store
            .delete_project(id)
            .await
            .map_err(not_found("project", id))?;
        self.refresh().await
    }

    // ---------------- users ----------------
    pub async fn create_user(&self, ctx: &AuthContext, i: UserInput) -> CoreResult<User> {
        ctx.require_admin("identity:create_user")?;
        let name = i
            .name
            .ok_or_else(|| CoreError::BadRequest("'name' is a required property.".into()))?;
        check_name("name", &name, MAX_NAME)?;
        let domain_id = i.domain_id.unwrap_or_else(|| DEFAULT_DOMAIN_ID.to_string());
        if !self.snapshot().domains.contains_key(&domain_id) {
            return Err(CoreError::BadRequest(format!(
                "Could not find domain: {domain_id}."
            )));
        }
        let default_project_id = i.default_project_id.flatten();
        if let Some(pid) = &default_project_id {
            self.store.get_project(pid).await.map_err(|e| match e {
                StoreError::NotFound => {
                    CoreError::BadRequest(format!("Could not find project: {pid}."))
                }
                other => other.into(),
            })?;
        }
        let password_hash = match i.password {
            Some(p) => {
                check_password(&p)?;
                Some(password::hash_async(p).await?)
            }
            None => None,
        };
        let u = User {
            id: new_id(),
            domain_id,
            name: name.clone(),
            enabled: i.enabled.unwrap_or(true),
            password_hash,
            default_project_id,
            description: i.description.flatten(),
            email: i.email.flatten(),
        };
        self.store.create_user(&u).await.map_err(|e| match e {
            StoreError::Conflict(_) => CoreError::Conflict(format!(
                "Conflict occurred attempting to store user - Duplicate entry found with name {name} at domain ID {}.",
                u.domain_id
            )),
            other => other.into(),
        })?;
        self.refresh().await?;
        Ok(u)
    }

    pub async fn get_user(&self, ctx: &AuthContext, id: &str) -> CoreResult<User> {
        ctx.require_admin_or_self("identity:get_user", id)?;
        self.store.get_user(id).await.map_err(not_found("user", id))
    }

    pub async fn list_users(&self, ctx: &AuthContext, f: &Filter) -> CoreResult<Vec<User>> {
        ctx.require_admin("identity:list_users")?;
        Ok(self.store.list_users(f).await?)
    }

    /// A password set here revokes every token the user holds.
    pub async fn update_user(&self, ctx: &AuthContext, id: &str, i: UserInput) -> CoreResult<User> {
        ctx.require_admin("identity:update_user")?;
        let mut u = self
            .store
            .get_user(id)
            .await
            .map_err(not_found("user", id))?;
        if i.domain_id.as_ref().is_some_and(|d| *d != u.domain_id) {
            return Err(CoreError::BadRequest(
                "Update of `domain_id` is not allowed.".into(),
            ));
        }
        if let Some(n) = i.name {
            check_name("name", &n, MAX_NAME)?;
            u.name = n;
        }
        if let Some(v) = i.enabled {
            u.enabled = v;
        }
        if let Some(v) = i.default_project_id {
            u.default_project_id = v;
        }
        if let Some(v) = i.description {
            u.description = v;
        }
        if let Some(v) = i.email {
            u.email = v;
        }
        // A new password or a disabled account ends every token so far; re-enabling the
        // account later must not bring them back.
        let new_password = i.password.is_some();
        let lifts_lockout = new_password || i.enabled == Some(true);
        let password_changed = new_password || i.enabled == Some(false);
        if let Some(p) = i.password {
            check_password(&p)?;
            u.password_hash = Some(password::hash_async(p).await?);
        }
        self.store.update_user(&u).await.map_err(|e| match e {
            StoreError::Conflict(_) => CoreError::Conflict(format!(
                "Conflict occurred attempting to store user - Duplicate entry found with name {}.",
                u.name
            )),
            other => CoreError::from_store(other, "user", id),
        })?;
        if password_changed {
            self.revoke_user_tokens(id).await?;
        }
        // An admin who sets a password or enables the account also lifts a lockout (Keystone).
        if lifts_lockout {
            self.store.clear_login_failures(id).await?;
        }
        self.refresh().await?;
        Ok(u)
    }

    /// `POST /v3/users/{id}/password`: a user changes its own password, proving the old one.
    pub async fn change_password(
        &self,
        ctx: &AuthContext,
        id: &str,
        original: String,
        new: String,
    ) -> CoreResult<()> {
        if ctx.user.id != id {
            return Err(forbidden("identity:change_password"));
        }
        check_password(&new)?;
        let mut u = self
            .store
            .get_user(id)
            .await
            .map_err(not_found("user", id))?;
        if !password::verify_async(original, u.password_hash.clone()).await {
            return Err(CoreError::Unauthorized(super::AUTH_FAILED.into()));
        }
        u.password_hash = Some(password::hash_async(new).await?);
        self.store
            .update_user(&u)
            .await
            .map_err(not_found("user", id))?;
        self.store.clear_login_failures(id).await?;
        self.revoke_user_tokens(id).await?;
        self.refresh().await
    }

    pub async fn delete_user(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        ctx.require_admin("identity:delete_user")?;
        self.store
            .delete_user(id)
            .await
            .map_err(not_found("user", id))?;
        self.refresh().await
    }

    // ---------------- roles ----------------
    pub async fn create_role(&self, ctx: &AuthContext, i: RoleInput) -> CoreResult<Role> {
        ctx.require_admin("identity:create_role")?;
        if i.domain_id.is_some() {
            return Err(CoreError::BadRequest(
                "Domain-specific roles are not supported.".into(),
            ));
        }
        let name = i
            .name
            .ok_or_else(|| CoreError::BadRequest("'name' is a required property.".into()))?;
        check_name("name", &name, MAX_NAME)?;
        let r = Role {
            id: new_id(),
            name: name.clone(),
            description: i.description.flatten(),
        };
        self.store.create_role(&r).await.map_err(|e| match e {
            StoreError::Conflict(_) => CoreError::Conflict(format!(
                "Conflict occurred attempting to store role - Duplicate entry found with name {name}."
            )),
            other => other.into(),
        })?;
        self.refresh().await?;
        Ok(r)
    }

    /// Keystone's `identity:get_role` (admin; a system reader or a domain manager upstream,
    /// neither of which OneStack has).
    pub async fn get_role(&self, ctx: &AuthContext, id: &str) -> CoreResult<Role> {
        ctx.require_admin("identity:get_role")?;
        self.store.get_role(id).await.map_err(not_found("role", id))
    }

    /// Keystone's `identity:list_roles` (admin).
    pub async fn list_roles(&self, ctx: &AuthContext, name: Option<&str>) -> CoreResult<Vec<Role>> {
        ctx.require_admin("identity:list_roles")?;
        Ok(self.store.list_roles(name).await?)
    }

    pub async fn update_role(&self, ctx: &AuthContext, id: &str, i: RoleInput) -> CoreResult<Role> {
        ctx.require_admin("identity:update_role")?;
        let mut r = self
            .store
            .get_role(id)
            .await
            .map_err(not_found("role", id))?;
        if let Some(n) = i.name {
            check_name("name", &n, MAX_NAME)?;
            r.name = n;
        }
        if let Some(d) = i.description {
            r.description = d;
        }
        self.store
            .update_role(&r)
            .await
            .map_err(not_found("role", id))?;
        self.refresh().await?;
        Ok(r)
    }

    pub async fn delete_role(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        ctx.require_admin("identity:delete_role")?;
        self.store
            .delete_role(id)
            .await
            .map_err(not_found("role", id))?;
        self.refresh().await
    }

    // ---------------- implied roles ----------------
    pub async fn add_implied_role(
        &self,
        ctx: &AuthContext,
        prior: &str,
        implied: &str,
    ) -> CoreResult<(Role, Role)> {
        ctx.require_admin("identity:create_implied_role")?;
        let p = self
            .store
            .get_role(prior)
            .await
            .map_err(not_found("role", prior))?;
        let i = self
            .store
            .get_role(implied)
            .await
            .map_err(not_found("role", implied))?;
        // Refuse rules that would make a role imply itself.
        if self
            .snapshot()
            .expand_roles(std::slice::from_ref(&i.id))
            .iter()
            .any(|r| r.id == p.id)
        {
            return Err(CoreError::BadRequest(format!(
                "Implied role {} would create a cycle with {}.",
                i.id, p.id
            )));
        }
        match self.store.add_implied_role(prior, implied).await {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.refresh().await?;
        Ok((p, i))
    }

    /// Keystone's `identity:get_implied_role` and `check_implied_role` (admin).
    pub async fn get_implied_role(
        &self,
        ctx: &AuthContext,
        prior: &str,
        implied: &str,
    ) -> CoreResult<(Role, Role)> {
        ctx.require_admin("identity:get_implied_role")?;
        let p = self
            .store
            .get_role(prior)
            .await
            .map_err(not_found("role", prior))?;
        let i = self
            .store
            .get_role(implied)
            .await
            .map_err(not_found("role", implied))?;
        let snap = self.snapshot();
        if !snap
            .implied
            .get(prior)
            .is_some_and(|v| v.iter().any(|x| x == implied))
        {
            return Err(CoreError::NotFound(format!(
                "{implied} is not an implied role of {prior}."
            )));
        }
        Ok((p, i))
    }

    pub async fn remove_implied_role(
        &self,
        ctx: &AuthContext,
        prior: &str,
        implied: &str,
    ) -> CoreResult<()> {
        ctx.require_admin("identity:delete_implied_role")?;
        self.store
            .remove_implied_role(prior, implied)
            .await
            .map_err(|_| {
                CoreError::NotFound(format!("{implied} is not an implied role of {prior}."))
            })?;
        self.refresh().await
    }

    /// Keystone's `identity:list_implied_roles` and `list_role_inference_rules` (admin).
    pub async fn list_implied_roles(&self, ctx: &AuthContext) -> CoreResult<Vec<ImpliedRole>> {
        ctx.require_admin("identity:list_role_inference_rules")?;
        Ok(self.store.list_implied_roles().await?)
    }

    // ---------------- assignments ----------------
    async fn check_grant_parts(&self, a: &Assignment) -> CoreResult<()> {
        self.store
            .get_role(&a.role_id)
            .await
            .map_err(not_found("role", &a.role_id))?;
        self.store
            .get_user(&a.user_id)
            .await
            .map_err(not_found("user", &a.user_id))?;
        if a.target_type == TargetType::Project.as_str() {
            self.store
                .get_project(&a.target_id)
                .await
                .map_err(not_found("project", &a.target_id))?;
        } else {
            self.store
                .get_domain(&a.target_id)
                .await
                .map_err(not_found("domain", &a.target_id))?;
        }
        Ok(())
    }

    pub async fn grant(&self, ctx: &AuthContext, a: Assignment) -> CoreResult<()> {
        ctx.require_admin("identity:create_grant")?;
        self.check_grant_parts(&a).await?;
        self.store.grant(&a).await?;
        self.refresh().await
    }

    pub async fn revoke_grant(&self, ctx: &AuthContext, a: Assignment) -> CoreResult<()> {
        ctx.require_admin("identity:revoke_grant")?;
        self.check_grant_parts(&a).await?;
        let is_project = a.target_type == TargetType::Project.as_str();
        let held_before = self.snapshot().effective_roles(&a.user_id, &a.target_id);
        self.store.revoke(&a).await.map_err(|_| {
            CoreError::NotFound(format!(
                "Could not find role assignment with role: {}, user or group: {}, project, domain, or system: {}.",
                a.role_id, a.user_id, a.target_id
            ))
        })?;
        self.refresh().await?;
        // When the user lost a role on the project (not one still implied by another), the
        // tokens issued before end: a later grant makes only new ones good (as Keystone's
        // revocation event for a removed grant).
        if is_project {
            let held_after = self.snapshot().effective_roles(&a.user_id, &a.target_id);
            if held_before.iter().any(|r| !held_after.contains(r)) {
                self.revoke_project_tokens(&a.target_id, Some(&a.user_id))
                    .await?;
                self.refresh().await?;
            }
        }
        Ok(())
    }

    /// Keystone's `identity:check_grant` (admin; a system or domain reader upstream).
    pub async fn check_grant(&self, ctx: &AuthContext, a: Assignment) -> CoreResult<()> {
        ctx.require_admin("identity:check_grant")?;
        self.check_grant_parts(&a).await?;
        let rows = self
            .store
            .list_assignments(Some(&a.user_id), Some(&a.target_id))
            .await?;
        if rows
            .iter()
            .any(|r| r.role_id == a.role_id && r.target_type == a.target_type)
        {
            Ok(())
        } else {
            Err(CoreError::NotFound(format!(
                "Could not find role assignment with role: {}, user or group: {}, project, domain, or system: {}.",
                a.role_id, a.user_id, a.target_id
            )))
        }
    }

    /// Keystone's `identity:list_role_assignments` and `list_grants` (admin; a system or
    /// domain reader upstream): a user learns its own roles from its token.
    pub async fn list_assignments(
        &self,
        ctx: &AuthContext,
        q: &AssignmentQuery,
    ) -> CoreResult<Vec<AssignmentView>> {
        ctx.require_admin("identity:list_role_assignments")?;
        let target = q.project_id.as_deref().or(q.domain_id.as_deref());
        let rows = self
            .store
            .list_assignments(q.user_id.as_deref(), target)
            .await?;
        let snap = self.snapshot();
        let mut out = Vec::new();
        for r in rows {
            let tt = if r.target_type == "domain" {
                TargetType::Domain
            } else {
                TargetType::Project
            };
            if q.project_id.is_some() && tt != TargetType::Project
                || q.domain_id.is_some() && tt != TargetType::Domain
            {
                continue;
            }
            let mut push = |role_id: String, prior: Option<String>| {
                if q.role_id.as_ref().is_none_or(|x| *x == role_id) {
                    out.push(AssignmentView {
                        role_id,
                        user_id: r.user_id.clone(),
                        target_type: tt,
                        target_id: r.target_id.clone(),
                        prior_role_id: prior,
                    });
                }
            };
            if q.effective {
                for role in snap.expand_roles(std::slice::from_ref(&r.role_id)) {
                    let prior = (role.id != r.role_id).then(|| r.role_id.clone());
                    push(role.id, prior);
                }
            } else {
                push(r.role_id.clone(), None);
            }
        }
        if q.effective {
            // A role reached both directly and by implication is listed once.
            out.sort_by(|a, b| {
                (
                    &a.user_id,
                    &a.target_id,
                    &a.role_id,
                    a.prior_role_id.is_some(),
                )
                    .cmp(&(
                        &b.user_id,
                        &b.target_id,
                        &b.role_id,
                        b.prior_role_id.is_some(),
                    ))
            });
            out.dedup_by(|a, b| {
                a.user_id == b.user_id && a.target_id == b.target_id && a.role_id == b.role_id
            });
        }
        Ok(out)
    }

    // ---------------- catalog: regions, services, endpoints ----------------
    pub async fn create_region(&self, ctx: &AuthContext, i: RegionInput) -> CoreResult<Region> {
        ctx.require_admin("identity:create_region")?;
        let id = i.id.unwrap_or_else(new_id);
        check_name("id", &id, 255)?;
        let parent = i.parent_region_id.flatten();
        if let Some(p) = &parent {
            self.store
                .get_region(p)
                .await
                .map_err(|_| CoreError::BadRequest(format!("Could not find region: {p}.")))?;
        }
        let r = Region {
            id: id.clone(),
            description: i.description.unwrap_or_default(),
            parent_region_id: parent,
        };
        self.store.create_region(&r).await.map_err(|e| match e {
            StoreError::Conflict(_) => CoreError::Conflict(format!(
                "Conflict occurred attempting to store region - Duplicate ID, {id}."
            )),
            other => other.into(),
        })?;
        self.refresh().await?;
        Ok(r)
    }

    pub async fn get_region(&self, id: &str) -> CoreResult<Region> {
        self.store
            .get_region(id)
            .await
            .map_err(not_found("region", id))
    }

    pub async fn list_regions(&self) -> CoreResult<Vec<Region>> {
        Ok(self.store.list_regions().await?)
    }

    pub async fn update_region(
        &self,
        ctx: &AuthContext,
        id: &str,
        i: RegionInput,
    ) -> CoreResult<Region> {
        ctx.require_admin("identity:update_region")?;
        let mut r = self
            .store
            .get_region(id)
            .await
            .map_err(not_found("region", id))?;
        if let Some(d) = i.description {
            r.description = d;
        }
        if let Some(p) = i.parent_region_id {
            if p.as_deref() == Some(id) {
                return Err(CoreError::BadRequest(
                    "A region cannot be its own parent.".into(),
                ));
            }
            r.parent_region_id = p;
        }
        self.store
            .update_region(&r)
            .await
            .map_err(not_found("region", id))?;
        self.refresh().await?;
        Ok(r)
    }

    pub async fn delete_region(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        ctx.require_admin("identity:delete_region")?;
        self.store.delete_region(id).await.map_err(|e| match e {
            StoreError::Conflict(m) => {
                CoreError::Forbidden(format!("Unable to delete region {id}: {m}."))
            }
            other => CoreError::from_store(other, "region", id),
        })?;
        self.refresh().await
    }

    pub async fn create_service(&self, ctx: &AuthContext, i: ServiceInput) -> CoreResult<Service> {
        ctx.require_admin("identity:create_service")?;
        let t = i
            .service_type
            .ok_or_else(|| CoreError::BadRequest("'type' is a required property.".into()))?;
        check_name("type", &t, 255)?;
        let s = Service {
            id: new_id(),
            service_type: t,
            name: i.name.unwrap_or_default(),
            description: i.description.unwrap_or_default(),
            enabled: i.enabled.unwrap_or(true),
        };
        self.store.create_service(&s).await?;
        self.refresh().await?;
        Ok(s)
    }

    /// Keystone's `identity:get_service` (admin; a system reader upstream). Tenants read the
    /// services from their token's catalog.
    pub async fn get_service(&self, ctx: &AuthContext, id: &str) -> CoreResult<Service> {
        ctx.require_admin("identity:get_service")?;
        self.store
            .get_service(id)
            .await
            .map_err(not_found("service", id))
    }

    /// Keystone's `identity:list_services` (admin).
    pub async fn list_services(&self, ctx: &AuthContext) -> CoreResult<Vec<Service>> {
        ctx.require_admin("identity:list_services")?;
        Ok(self.store.list_services().await?)
    }

    pub async fn update_service(
        &self,
        ctx: &AuthContext,
        id: &str,
        i: ServiceInput,
    ) -> CoreResult<Service> {
        ctx.require_admin("identity:update_service")?;
        let mut s = self
            .store
            .get_service(id)
            .await
            .map_err(not_found("service", id))?;
        if let Some(t) = i.service_type {
            check_name("type", &t, 255)?;
            s.service_type = t;
        }
        if let Some(v) = i.name {
            s.name = v;
        }
        if let Some(v) = i.description {
            s.description = v;
        }
        if let Some(v) = i.enabled {
            s.enabled = v;
        }
        self.store
            .update_service(&s)
            .await
            .map_err(not_found("service", id))?;
        self.refresh().await?;
        Ok(s)
    }

    pub async fn delete_service(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        ctx.require_admin("identity:delete_service")?;
        self.store
            .delete_service(id)
            .await
            .map_err(not_found("service", id))?;
        self.refresh().await
    }

    async fn check_endpoint(&self, e: &Endpoint) -> CoreResult<()> {
        if !["public", "internal", "admin"].contains(&e.interface.as_str()) {
            return Err(CoreError::BadRequest(format!(
                "Invalid input for field 'interface': '{}' is not one of public, internal, admin.",
                e.interface
            )));
        }
        if !(e.url.starts_with("http://") || e.url.starts_with("https://")) || e.url.len() > 1024 {
            return Err(CoreError::BadRequest(
                "Invalid input for field 'url': must be an http(s) URL.".into(),
            ));
        }
        self.store.get_service(&e.service_id).await.map_err(|_| {
            CoreError::BadRequest(format!("Could not find service: {}.", e.service_id))
        })?;
        if let Some(r) = &e.region_id {
            self.store
                .get_region(r)
                .await
                .map_err(|_| CoreError::BadRequest(format!("Could not find region: {r}.")))?;
        }
        Ok(())
    }

    pub async fn create_endpoint(
        &self,
        ctx: &AuthContext,
        i: EndpointInput,
    ) -> CoreResult<Endpoint> {
        ctx.require_admin("identity:create_endpoint")?;
        let e = Endpoint {
            id: new_id(),
            service_id: i.service_id.ok_or_else(|| {
                CoreError::BadRequest("'service_id' is a required property.".into())
            })?,
            interface: i.interface.ok_or_else(|| {
                CoreError::BadRequest("'interface' is a required property.".into())
            })?,
            region_id: i.region_id.or(i.region).flatten(),
            url: i
                .url
                .ok_or_else(|| CoreError::BadRequest("'url' is a required property.".into()))?,
            enabled: i.enabled.unwrap_or(true),
        };
        self.check_endpoint(&e).await?;
        self.store.create_endpoint(&e).await?;
        self.refresh().await?;
        Ok(e)
    }

    /// Keystone's `identity:get_endpoint` (admin; a system reader upstream).
    pub async fn get_endpoint(&self, ctx: &AuthContext, id: &str) -> CoreResult<Endpoint> {
        ctx.require_admin("identity:get_endpoint")?;
        self.store
            .get_endpoint(id)
            .await
            .map_err(not_found("endpoint", id))
    }

    /// Keystone's `identity:list_endpoints` (admin).
    pub async fn list_endpoints(&self, ctx: &AuthContext) -> CoreResult<Vec<Endpoint>> {
        ctx.require_admin("identity:list_endpoints")?;
        Ok(self.store.list_endpoints().await?)
    }

    pub async fn update_endpoint(
        &self,
        ctx: &AuthContext,
        id: &str,
        i: EndpointInput,
    ) -> CoreResult<Endpoint> {
        ctx.require_admin("identity:update_endpoint")?;
        let mut e = self
            .store
            .get_endpoint(id)
            .await
            .map_err(not_found("endpoint", id))?;
        if let Some(v) = i.service_id {
            e.service_id = v;
        }
        if let Some(v) = i.interface {
            e.interface = v;
        }
        if let Some(v) = i.region_id.or(i.region) {
            e.region_id = v;
        }
        if let Some(v) = i.url {
            e.url = v;
        }
        if let Some(v) = i.enabled {
            e.enabled = v;
        }
        self.check_endpoint(&e).await?;
        self.store
            .update_endpoint(&e)
            .await
            .map_err(not_found("endpoint", id))?;
        self.refresh().await?;
        Ok(e)
    }

    pub async fn delete_endpoint(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        ctx.require_admin("identity:delete_endpoint")?;
        self.store
            .delete_endpoint(id)
            .await
            .map_err(not_found("endpoint", id))?;
        self.refresh().await
    }
}
