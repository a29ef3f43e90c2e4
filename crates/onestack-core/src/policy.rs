//! Who is asking, and what they may do. Every API handler receives an `AuthContext` built from a
//! validated token before it reads any data; checks here are the one place policy lives.

use crate::token::TokenPayload;
use crate::{CoreError, CoreResult};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRef {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedRef {
    pub id: String,
    pub name: String,
}

/// The project a token is scoped to, with its domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectScope {
    pub id: String,
    pub name: String,
    pub domain: NamedRef,
}

#[derive(Clone, Debug)]
pub struct AuthContext {
    pub token: TokenPayload,
    pub user: NamedRef,
    pub user_domain: NamedRef,
    pub project: Option<ProjectScope>,
    /// Effective roles on the scope, implied roles included.
    pub roles: Vec<RoleRef>,
}

impl AuthContext {
    /// OneStack itself acting as admin on `project_id` (bootstrap, internal calls); never made
    /// from a request.
    pub fn service(project_id: &str) -> AuthContext {
        let none = NamedRef {
            id: String::new(),
            name: "onestack".into(),
        };
        AuthContext {
            token: TokenPayload {
                user_id: String::new(),
                project_id: Some(project_id.to_string()),
                methods: Vec::new(),
                issued_at: 0,
                expires_at: 0,
                audit_ids: Vec::new(),
            },
            user: none.clone(),
            user_domain: none.clone(),
            project: Some(ProjectScope {
                id: project_id.to_string(),
                name: String::new(),
                domain: none,
            }),
            roles: ["admin", "member", "reader"]
                .iter()
                .map(|r| RoleRef {
                    id: String::new(),
                    name: (*r).into(),
                })
                .collect(),
        }
    }

    pub fn has_role(&self, name: &str) -> bool {
        self.roles.iter().any(|r| r.name == name)
    }

    /// Keystone's `admin_required`: the admin role on the token's scope.
    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }

    pub fn project_id(&self) -> Option<&str> {
        self.project.as_ref().map(|p| p.id.as_str())
    }

    /// The upstream default `project_member_or_admin` (Nova, Cinder, Neutron, Glance): the
    /// `member` role on the token's project (`admin` implies it), or the cloud admin. A `reader`
    /// only reads. Which project the resource belongs to is the caller's check (others' are 404).
    pub fn is_member(&self) -> bool {
        self.is_admin() || self.has_role("member")
    }

    /// Fails unless [`is_member`](Self::is_member), naming the policy rule.
    pub fn require_member(&self, action: &str) -> CoreResult<()> {
        if self.is_member() {
            Ok(())
        } else {
            Err(forbidden(action))
        }
    }

    /// Fails with Keystone's 403 message naming the policy rule.
    pub fn require_admin(&self, action: &str) -> CoreResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(forbidden(action))
        }
    }

    /// Admin, or the user acting on itself.
    pub fn require_admin_or_self(&self, action: &str, user_id: &str) -> CoreResult<()> {
        if self.is_admin() || self.user.id == user_id {
            Ok(())
        } else {
            Err(forbidden(action))
        }
    }
}

pub fn forbidden(action: &str) -> CoreError {
    CoreError::Forbidden(format!(
        "You are not authorized to perform the requested action: {action}."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_roles(roles: &[&str]) -> AuthContext {
        let mut c = AuthContext::service("p1");
        c.roles = roles
            .iter()
            .map(|r| RoleRef {
                id: String::new(),
                name: (*r).into(),
            })
            .collect();
        c
    }

    #[test]
    fn members_and_admins_write_readers_only_read() {
        assert!(with_roles(&["member", "reader"])
            .require_member("x")
            .is_ok());
        // The admin role on any project is the cloud admin, whatever else it holds.
        assert!(with_roles(&["admin"]).require_member("x").is_ok());
        let reader = with_roles(&["reader"]);
        match reader.require_member("os_compute_api:servers:create") {
            Err(CoreError::Forbidden(m)) => assert!(m.contains("os_compute_api:servers:create")),
            other => panic!("a reader passed: {other:?}"),
        }
        assert!(with_roles(&[]).require_member("x").is_err());
        assert!(with_roles(&["member"]).require_admin("x").is_err());
    }
}
