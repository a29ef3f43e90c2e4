//! An immutable, in-memory copy of the identity records that token validation reads.

use super::{DomainSelector, ProjectSelector, UserSelector};
use crate::policy::{NamedRef, RoleRef};
use crate::token::TokenPayload;
use crate::CoreResult;
use onestack_store::{Domain, Project, Revocation, Role, Store, User};
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Debug, PartialEq)]
pub struct CatalogEndpoint {
    pub id: String,
    pub interface: String,
    pub region_id: Option<String>,
    pub url: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CatalogService {
    pub id: String,
    pub service_type: String,
    pub name: String,
    pub endpoints: Vec<CatalogEndpoint>,
}

#[derive(Default)]
pub struct Snapshot {
    pub domains: HashMap<String, Domain>,
    pub projects: HashMap<String, Project>,
    pub users: HashMap<String, User>,
    pub roles: HashMap<String, Role>,
    /// prior role id → directly implied role ids.
    pub implied: HashMap<String, Vec<String>>,
    /// (user id, project id) → directly assigned role ids.
    pub project_grants: HashMap<(String, String), Vec<String>>,
    pub catalog: Vec<CatalogService>,
    pub revocations: Vec<Revocation>,
}

impl Snapshot {
    pub async fn load(store: &Store) -> CoreResult<Snapshot> {
        let all = onestack_store::Filter::default();
        let mut s = Snapshot {
            domains: by_id(store.list_domains(&all).await?, |d| &d.id),
            projects: by_id(store.list_projects(&all).await?, |p| &p.id),
            users: by_id(store.list_users(&all).await?, |u| &u.id),
            roles: by_id(store.list_roles(None).await?, |r| &r.id),
            ..Snapshot::default()
        };
        for ir in store.list_implied_roles().await? {
            s.implied
                .entry(ir.prior_role_id)
                .or_default()
                .push(ir.implied_role_id);
        }
        for a in store.list_assignments(None, None).await? {
            if a.target_type == "project" {
                s.project_grants
                    .entry((a.user_id, a.target_id))
                    .or_default()
                    .push(a.role_id);
            }
        }
        let endpoints = store.list_endpoints().await?;
        for svc in store.list_services().await? {
            if !svc.enabled {
                continue;
            }
            let eps: Vec<CatalogEndpoint> = endpoints
                .iter()
                .filter(|e| e.service_id == svc.id && e.enabled)
                .map(|e| CatalogEndpoint {
                    id: e.id.clone(),
                    interface: e.interface.clone(),
                    region_id: e.region_id.clone(),
                    url: e.url.clone(),
                })
                .collect();
            s.catalog.push(CatalogService {
                id: svc.id,
                service_type: svc.service_type,
                name: svc.name,
                endpoints: eps,
            });
        }
        s.revocations = store
            .active_revocations(chrono::Utc::now().timestamp())
            .await?;
        Ok(s)
    }

    pub fn domain_enabled(&self, id: &str) -> bool {
        self.domains.get(id).is_some_and(|d| d.enabled)
    }

    pub fn domain_ref(&self, id: &str) -> Option<NamedRef> {
        self.domains.get(id).map(|d| NamedRef {
            id: d.id.clone(),
            name: d.name.clone(),
        })
    }

    fn domain_id(&self, sel: &DomainSelector) -> Option<String> {
        match sel {
            DomainSelector::Id(id) => self.domains.get(id).map(|d| d.id.clone()),
            DomainSelector::Name(n) => self
                .domains
                .values()
                .find(|d| &d.name == n)
                .map(|d| d.id.clone()),
        }
    }

    pub fn find_user(&self, sel: &UserSelector) -> Option<&User> {
        match sel {
            UserSelector::Id(id) => self.users.get(id),
            UserSelector::Name { name, domain } => {
                let did = self.domain_id(domain)?;
                self.users
                    .values()
                    .find(|u| &u.name == name && u.domain_id == did)
            }
        }
    }

    pub fn find_project(&self, sel: &ProjectSelector) -> Option<&Project> {
        match sel {
            ProjectSelector::Id(id) => self.projects.get(id),
            ProjectSelector::Name { name, domain } => {
                let did = self.domain_id(domain)?;
                self.projects
                    .values()
                    .find(|p| &p.name == name && p.domain_id == did)
            }
        }
    }

    /// Role ids reachable from `roles` through implied-role rules (cycle-safe), sorted by name.
    pub fn expand_roles(&self, roles: &[String]) -> Vec<RoleRef> {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut stack: Vec<String> = roles.to_vec();
        while let Some(r) = stack.pop() {
            if seen.insert(r.clone()) {
                if let Some(next) = self.implied.get(&r) {
                    stack.extend(next.iter().cloned());
                }
            }
        }
        let mut out: Vec<RoleRef> = seen
            .into_iter()
            .filter_map(|id| {
                self.roles.get(&id).map(|r| RoleRef {
                    id: r.id.clone(),
                    name: r.name.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn effective_roles(&self, user_id: &str, project_id: &str) -> Vec<RoleRef> {
        match self
            .project_grants
            .get(&(user_id.to_string(), project_id.to_string()))
        {
            Some(direct) => self.expand_roles(direct),
            None => Vec::new(),
        }
    }

    /// A token is revoked by its audit chain, or by a user/project-wide revocation issued after it.
    pub fn is_revoked(&self, t: &TokenPayload) -> bool {
        self.revocations.iter().any(|r| {
            if let Some(a) = &r.audit_id {
                return t.audit_ids.iter().any(|x| x == a);
            }
            let user_match = r.user_id.as_ref().is_none_or(|u| *u == t.user_id);
            let project_match = r
                .project_id
                .as_ref()
                .is_none_or(|p| Some(p) == t.project_id.as_ref());
            (r.user_id.is_some() || r.project_id.is_some())
                && user_match
                && project_match
                && t.issued_at <= r.issued_before
        })
    }
}

fn by_id<T>(items: Vec<T>, key: impl Fn(&T) -> &String) -> HashMap<String, T> {
    items.into_iter().map(|i| (key(&i).clone(), i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn role(id: &str) -> Role {
        Role {
            id: id.into(),
            name: id.into(),
            description: None,
        }
    }

    fn snap_with(edges: &[(usize, usize)], n: usize) -> Snapshot {
        let mut s = Snapshot::default();
        for i in 0..n {
            s.roles.insert(format!("r{i}"), role(&format!("r{i}")));
        }
        for (a, b) in edges {
            s.implied
                .entry(format!("r{a}"))
                .or_default()
                .push(format!("r{b}"));
        }
        s
    }

    #[test]
    fn admin_implies_member_implies_reader() {
        let s = snap_with(&[(0, 1), (1, 2)], 3);
        let names: Vec<String> = s
            .expand_roles(&["r0".into()])
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, vec!["r0", "r1", "r2"]);
        assert_eq!(s.expand_roles(&["r2".into()]).len(), 1);
    }

    proptest! {
        /// Any implied-role graph, cycles included, expands to a finite closure that contains the
        /// direct roles and is closed under implication.
        #[test]
        fn expansion_is_a_closure(edges in proptest::collection::vec((0usize..6, 0usize..6), 0..20),
                                  start in 0usize..6) {
            let s = snap_with(&edges, 6);
            let got: BTreeSet<String> = s.expand_roles(&[format!("r{start}")]).into_iter().map(|r| r.id).collect();
            let want = format!("r{}", start);
            prop_assert!(got.contains(&want));
            for (a, b) in &edges {
                if got.contains(&format!("r{a}")) {
                    let want = format!("r{}", b);
                    prop_assert!(got.contains(&want));
                }
            }
        }
    }

    #[test]
    fn revocation_rules() {
        let mut s = Snapshot::default();
        let t = TokenPayload {
            user_id: "u".into(),
            project_id: Some("p".into()),
            methods: vec![],
            issued_at: 100,
            expires_at: 1000,
            audit_ids: vec!["a1".into(), "a0".into()],
        };
        assert!(!s.is_revoked(&t));
        s.revocations.push(Revocation {
            id: "x".into(),
            audit_id: None,
            user_id: Some("u".into()),
            project_id: None,
            issued_before: 99,
            expires_at: 0,
        });
        assert!(!s.is_revoked(&t), "issued after the user revocation");
        s.revocations[0].issued_before = 100;
        assert!(s.is_revoked(&t));
        s.revocations[0] = Revocation {
            id: "y".into(),
            audit_id: Some("a0".into()),
            user_id: None,
            project_id: None,
            issued_before: 0,
            expires_at: 0,
        };
        assert!(
            s.is_revoked(&t),
            "revoking the parent revokes rescoped tokens"
        );
    }
}
