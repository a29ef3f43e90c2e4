//! `keystone-manage bootstrap`, OneStack style: makes sure the records a fresh cloud needs exist.
//! Idempotent: running it again creates nothing new, keeps generated passwords, and only brings
//! endpoint URLs up to date with the configuration.

use super::DEFAULT_DOMAIN_ID;
use crate::{new_id, password, CoreResult};
use onestack_store::{
    Assignment, Domain, Endpoint, Filter, Project, Region, Role, Service, Store, StoreError, User,
};

/// One service OneStack serves, and where.
#[derive(Clone, Debug)]
pub struct ServiceEndpoints {
    pub service_type: String,
    pub name: String,
    pub description: String,
    pub public_url: String,
    pub internal_url: String,
    pub admin_url: String,
}

#[derive(Clone, Debug)]
pub struct BootstrapParams {
    /// Set (or reset) the admin password to this.
    pub admin_password: String,
    /// Used only when the demo user is first created.
    pub demo_password: String,
    pub region: String,
    pub services: Vec<ServiceEndpoints>,
}

/// What bootstrap found or made, for the caller's report.
#[derive(Clone, Debug, Default)]
pub struct BootstrapReport {
    pub created: Vec<String>,
}

pub async fn run(store: &Store, p: &BootstrapParams) -> CoreResult<BootstrapReport> {
    let mut report = BootstrapReport::default();
    let r = &mut report;

    if let Err(StoreError::NotFound) = store.get_domain(DEFAULT_DOMAIN_ID).await {
        store
            .create_domain(&Domain {
                id: DEFAULT_DOMAIN_ID.into(),
                name: "Default".into(),
                description: "The default domain".into(),
                enabled: true,
            })
            .await?;
        r.created.push("domain Default".into());
    }

    // Roles, with Keystone's implications admin => member => reader.
    let mut role_ids = std::collections::HashMap::new();
    for name in ["admin", "member", "reader"] {
        let id = match store.list_roles(Some(name)).await?.into_iter().next() {
            Some(role) => role.id,
            None => {
                let role = Role {
                    id: new_id(),
                    name: name.into(),
                    description: None,
                };
                store.create_role(&role).await?;
                r.created.push(format!("role {name}"));
                role.id
            }
        };
        role_ids.insert(name, id);
    }
    let existing = store.list_implied_roles().await?;
    for (prior, implied) in [("admin", "member"), ("member", "reader")] {
        let (pi, ii) = (&role_ids[prior], &role_ids[implied]);
        if !existing
            .iter()
            .any(|e| &e.prior_role_id == pi && &e.implied_role_id == ii)
        {
            store.add_implied_role(pi, ii).await?;
            r.created.push(format!("implied role {prior} => {implied}"));
        }
    }

    for (project, user, role, pw) in [
        ("admin", "admin", "admin", Some(&p.admin_password)),
        ("demo", "demo", "member", None),
    ] {
        let project_id = ensure_project(store, project, r).await?;
        let user_id = match store.find_user(DEFAULT_DOMAIN_ID, user).await {
            Ok(mut u) => {
                // The admin password follows the configuration, as keystone-manage bootstrap does.
                if let Some(pw) = pw {
                    if !password::verify_async(pw.clone(), u.password_hash.clone()).await {
                        u.password_hash = Some(password::hash_async(pw.clone()).await?);
                        store.update_user(&u).await?;
                        r.created.push(format!("password of user {user} reset"));
                    }
                }
                u.id
            }
            Err(StoreError::NotFound) => {
                let pw = pw.unwrap_or(&p.demo_password);
                let u = User {
                    id: new_id(),
                    domain_id: DEFAULT_DOMAIN_ID.into(),
                    name: user.into(),
                    enabled: true,
                    password_hash: Some(password::hash_async(pw.clone()).await?),
                    default_project_id: Some(project_id.clone()),
                    description: None,
                    email: None,
                };
                store.create_user(&u).await?;
                r.created.push(format!("user {user}"));
                u.id
            }
            Err(e) => return Err(e.into()),
        };
        let a = Assignment {
            role_id: role_ids[role].clone(),
            user_id,
            target_type: "project".into(),
            target_id: project_id,
        };
        if store
            .list_assignments(Some(&a.user_id), Some(&a.target_id))
            .await?
            .iter()
            .all(|x| x.role_id != a.role_id)
        {
            store.grant(&a).await?;
            r.created
                .push(format!("role {role} for {user} on {project}"));
        }
    }

    if let Err(StoreError::NotFound) = store.get_region(&p.region).await {
        store
            .create_region(&Region {
                id: p.region.clone(),
                description: String::new(),
                parent_region_id: None,
            })
            .await?;
        r.created.push(format!("region {}", p.region));
    }

    let services = store.list_services().await?;
    let endpoints = store.list_endpoints().await?;
    for s in &p.services {
        let service_id = match services.iter().find(|x| x.service_type == s.service_type) {
            Some(x) => x.id.clone(),
            None => {
                let svc = Service {
                    id: new_id(),
                    service_type: s.service_type.clone(),
                    name: s.name.clone(),
                    description: s.description.clone(),
                    enabled: true,
                };
                store.create_service(&svc).await?;
                r.created.push(format!("service {}", s.name));
                svc.id
            }
        };
        for (interface, url) in [
            ("public", &s.public_url),
            ("internal", &s.internal_url),
            ("admin", &s.admin_url),
        ] {
            let found = endpoints.iter().find(|e| {
                e.service_id == service_id
                    && e.interface == interface
                    && e.region_id.as_deref() == Some(p.region.as_str())
            });
            match found {
                Some(e) if &e.url == url => {}
                Some(e) => {
                    let mut e = e.clone();
                    e.url = url.clone();
                    store.update_endpoint(&e).await?;
                    r.created
                        .push(format!("{} {interface} endpoint moved to {url}", s.name));
                }
                None => {
                    store
                        .create_endpoint(&Endpoint {
                            id: new_id(),
                            service_id: service_id.clone(),
                            interface: interface.into(),
                            region_id: Some(p.region.clone()),
                            url: url.clone(),
                            enabled: true,
                        })
                        .await?;
                    r.created
                        .push(format!("{} {interface} endpoint {url}", s.name));
                }
            }
        }
    }
    Ok(report)
}

async fn ensure_project(store: &Store, name: &str, r: &mut BootstrapReport) -> CoreResult<String> {
    let f = Filter {
        name: Some(name.into()),
        domain_id: Some(DEFAULT_DOMAIN_ID.into()),
        enabled: None,
    };
    if let Some(p) = store.list_projects(&f).await?.into_iter().next() {
        return Ok(p.id);
    }
    let p = Project {
        id: new_id(),
        domain_id: DEFAULT_DOMAIN_ID.into(),
        name: name.into(),
        description: format!("Bootstrap project {name}"),
        enabled: true,
    };
    store.create_project(&p).await?;
    r.created.push(format!("project {name}"));
    Ok(p.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(admin_password: &str, port: u16) -> BootstrapParams {
        let url = format!("http://198.18.0.1:{port}/v3");
        BootstrapParams {
            admin_password: admin_password.into(),
            demo_password: "demo-pw".into(),
            region: "RegionOne".into(),
            services: vec![ServiceEndpoints {
                service_type: "identity".into(),
                name: "keystone".into(),
                description: String::new(),
                public_url: url.clone(),
                internal_url: url.clone(),
                admin_url: url,
            }],
        }
    }

    #[tokio::test]
    async fn bootstrap_is_idempotent_and_follows_config() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .expect("store");
        let first = run(&store, &params("pw1", 5000)).await.expect("first");
        assert!(first.created.len() > 10, "{:?}", first.created);
        let again = run(&store, &params("pw1", 5000)).await.expect("again");
        assert!(again.created.is_empty(), "{:?}", again.created);
        assert_eq!(store.list_endpoints().await.expect("eps").len(), 3);

        // A new admin password and a moved port update what exists, creating nothing else.
        let moved = run(&store, &params("pw2", 5001)).await.expect("moved");
        assert_eq!(moved.created.len(), 4, "{:?}", moved.created);
        let admin = store
            .find_user(DEFAULT_DOMAIN_ID, "admin")
            .await
            .expect("admin");
        assert!(password::verify("pw2", admin.password_hash.as_deref()));
        assert!(store
            .list_endpoints()
            .await
            .expect("eps")
            .iter()
            .all(|e| e.url.contains(":5001/")));
        // The demo password is never reset by bootstrap.
        let demo = store
            .find_user(DEFAULT_DOMAIN_ID, "demo")
            .await
            .expect("demo");
        assert!(password::verify("demo-pw", demo.password_hash.as_deref()));
        assert_eq!(
            store
                .list_users(&Filter::default())
                .await
                .expect("users")
                .len(),
            2
        );
    }
}
