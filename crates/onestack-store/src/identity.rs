//! Identity records: domains, projects, users, roles, implied roles, assignments, the catalog
//! (regions, services, endpoints) and token revocations.

use crate::{require_row, retry_transient, Result, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Clone, Debug, PartialEq)]
pub struct Domain {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    pub id: String,
    pub domain_id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: String,
    pub domain_id: String,
    pub name: String,
    pub enabled: bool,
    pub password_hash: Option<String>,
    pub default_project_id: Option<String>,
    pub description: Option<String>,
    pub email: Option<String>,
}

row_struct!(Domain { id: "id" => val, name: "name" => val, description: "description" => val, enabled: "enabled" => flag });
row_struct!(Project { id: "id" => val, domain_id: "domain_id" => val, name: "name" => val, description: "description" => val, enabled: "enabled" => flag });
row_struct!(User { id: "id" => val, domain_id: "domain_id" => val, name: "name" => val, enabled: "enabled" => flag, password_hash: "password_hash" => val, default_project_id: "default_project_id" => val, description: "description" => val, email: "email" => val });
row_struct!(Service { id: "id" => val, service_type: "type" => val, name: "name" => val, description: "description" => val, enabled: "enabled" => flag });
row_struct!(Endpoint { id: "id" => val, service_id: "service_id" => val, interface: "interface" => val, region_id: "region_id" => val, url: "url" => val, enabled: "enabled" => flag });

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct Role {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct ImpliedRole {
    pub prior_role_id: String,
    pub implied_role_id: String,
}

/// What a role is granted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetType {
    Project,
    Domain,
}

impl TargetType {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::Project => "project",
            TargetType::Domain => "domain",
        }
    }
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct Assignment {
    pub role_id: String,
    pub user_id: String,
    pub target_type: String,
    pub target_id: String,
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct Region {
    pub id: String,
    pub description: String,
    pub parent_region_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub id: String,
    pub service_type: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub service_id: String,
    pub interface: String,
    pub region_id: Option<String>,
    pub url: String,
    pub enabled: bool,
}

#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct Revocation {
    pub id: String,
    pub audit_id: Option<String>,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    /// Tokens issued at or before this unix time that match are revoked.
    pub issued_before: i64,
    /// The record may be dropped after this unix time (no matching token outlives it).
    pub expires_at: i64,
}

/// Optional equality filters used by list calls.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub name: Option<String>,
    pub domain_id: Option<String>,
    pub enabled: Option<bool>,
}

/// Builds ` WHERE a = $1 AND b = $2` from present filters; values are bound by the caller in order.
struct Where {
    clauses: Vec<String>,
}

impl Where {
    fn new() -> Self {
        Where {
            clauses: Vec::new(),
        }
    }
    fn add(&mut self, column: &str) {
        let n = self.clauses.len() + 1;
        self.clauses.push(format!("{column} = ${n}"));
    }
    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

macro_rules! filtered_list {
    ($store:expr, $ty:ty, $base:expr, $order:expr, $filter:expr) => {{
        let f: &Filter = $filter;
        let mut w = Where::new();
        if f.name.is_some() {
            w.add("name");
        }
        if f.domain_id.is_some() {
            w.add("domain_id");
        }
        if f.enabled.is_some() {
            w.add("enabled");
        }
        let sql = format!("{}{} ORDER BY {}", $base, w.sql(), $order);
        let mut q = sqlx::query_as::<_, $ty>(&sql);
        if let Some(v) = &f.name {
            q = q.bind(v.clone());
        }
        if let Some(v) = &f.domain_id {
            q = q.bind(v.clone());
        }
        if let Some(v) = f.enabled {
            q = q.bind(i64::from(v));
        }
        Ok(q.fetch_all(&$store.pool).await?)
    }};
}

impl Store {
    // ---- domains ----
    pub async fn create_domain(&self, d: &Domain) -> Result<()> {
        sqlx::query("INSERT INTO domains (id, name, description, enabled) VALUES ($1, $2, $3, $4)")
            .bind(&d.id)
            .bind(&d.name)
            .bind(&d.description)
            .bind(i64::from(d.enabled))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_domain(&self, id: &str) -> Result<Domain> {
        Ok(sqlx::query_as("SELECT * FROM domains WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn list_domains(&self, f: &Filter) -> Result<Vec<Domain>> {
        let f = Filter {
            domain_id: None,
            ..f.clone()
        };
        filtered_list!(self, Domain, "SELECT * FROM domains", "name", &f)
    }

    pub async fn update_domain(&self, d: &Domain) -> Result<()> {
        require_row(
            sqlx::query(
                "UPDATE domains SET name = $1, description = $2, enabled = $3 WHERE id = $4",
            )
            .bind(&d.name)
            .bind(&d.description)
            .bind(i64::from(d.enabled))
            .bind(&d.id)
            .execute(&self.pool)
            .await?,
        )
    }

    /// Deletes a domain with everything it owns, in one transaction.
    pub async fn delete_domain(&self, id: &str) -> Result<()> {
        retry_transient("delete domain", || async move {
            let mut tx = self.pool.begin().await?;
            for sql in [
                "DELETE FROM assignments WHERE target_type = 'project' AND target_id IN (SELECT id FROM projects WHERE domain_id = $1)",
                "DELETE FROM assignments WHERE user_id IN (SELECT id FROM users WHERE domain_id = $1)",
                "DELETE FROM assignments WHERE target_type = 'domain' AND target_id = $1",
                "DELETE FROM projects WHERE domain_id = $1",
                "DELETE FROM users WHERE domain_id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
            require_row(
                sqlx::query("DELETE FROM domains WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?,
            )?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    // ---- projects ----
    pub async fn create_project(&self, p: &Project) -> Result<()> {
        sqlx::query(
            "INSERT INTO projects (id, domain_id, name, description, enabled) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&p.id)
        .bind(&p.domain_id)
        .bind(&p.name)
        .bind(&p.description)
        .bind(i64::from(p.enabled))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_project(&self, id: &str) -> Result<Project> {
        Ok(sqlx::query_as("SELECT * FROM projects WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn find_project(&self, domain_id: &str, name: &str) -> Result<Project> {
        Ok(
            sqlx::query_as("SELECT * FROM projects WHERE domain_id = $1 AND name = $2")
                .bind(domain_id)
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn list_projects(&self, f: &Filter) -> Result<Vec<Project>> {
        filtered_list!(self, Project, "SELECT * FROM projects", "name", f)
    }

    /// Projects on which the user holds at least one role.
    pub async fn list_user_projects(&self, user_id: &str) -> Result<Vec<Project>> {
        Ok(sqlx::query_as(
            "SELECT * FROM projects WHERE id IN \
             (SELECT target_id FROM assignments WHERE user_id = $1 AND target_type = 'project') \
             ORDER BY name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn update_project(&self, p: &Project) -> Result<()> {
        require_row(
            sqlx::query(
                "UPDATE projects SET name = $1, description = $2, enabled = $3 WHERE id = $4",
            )
            .bind(&p.name)
            .bind(&p.description)
            .bind(i64::from(p.enabled))
            .bind(&p.id)
            .execute(&self.pool)
            .await?,
        )
    }

    pub async fn delete_project(&self, id: &str) -> Result<()> {
        retry_transient("delete project", || async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM assignments WHERE target_type = 'project' AND target_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE users SET default_project_id = NULL WHERE default_project_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            require_row(
                sqlx::query("DELETE FROM projects WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?,
            )?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    // ---- users ----
    pub async fn create_user(&self, u: &User) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, domain_id, name, enabled, password_hash, default_project_id, description, email) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&u.id)
        .bind(&u.domain_id)
        .bind(&u.name)
        .bind(i64::from(u.enabled))
        .bind(&u.password_hash)
        .bind(&u.default_project_id)
        .bind(&u.description)
        .bind(&u.email)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_user(&self, id: &str) -> Result<User> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn find_user(&self, domain_id: &str, name: &str) -> Result<User> {
        Ok(
            sqlx::query_as("SELECT * FROM users WHERE domain_id = $1 AND name = $2")
                .bind(domain_id)
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn list_users(&self, f: &Filter) -> Result<Vec<User>> {
        filtered_list!(self, User, "SELECT * FROM users", "name", f)
    }

    pub async fn update_user(&self, u: &User) -> Result<()> {
        require_row(
            sqlx::query(
                "UPDATE users SET name = $1, enabled = $2, password_hash = $3, default_project_id = $4, \
                 description = $5, email = $6 WHERE id = $7",
            )
            .bind(&u.name)
            .bind(i64::from(u.enabled))
            .bind(&u.password_hash)
            .bind(&u.default_project_id)
            .bind(&u.description)
            .bind(&u.email)
            .bind(&u.id)
            .execute(&self.pool)
            .await?,
        )
    }

    pub async fn delete_user(&self, id: &str) -> Result<()> {
        retry_transient("delete user", || async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM assignments WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            require_row(
                sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?,
            )?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    // ---- roles ----
    pub async fn create_role(&self, r: &Role) -> Result<()> {
        sqlx::query("INSERT INTO roles (id, name, description) VALUES ($1, $2, $3)")
            .bind(&r.id)
            .bind(&r.name)
            .bind(&r.description)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_role(&self, id: &str) -> Result<Role> {
        Ok(sqlx::query_as("SELECT * FROM roles WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn list_roles(&self, name: Option<&str>) -> Result<Vec<Role>> {
        let f = Filter {
            name: name.map(str::to_string),
            ..Filter::default()
        };
        filtered_list!(self, Role, "SELECT * FROM roles", "name", &f)
    }

    pub async fn update_role(&self, r: &Role) -> Result<()> {
        require_row(
            sqlx::query("UPDATE roles SET name = $1, description = $2 WHERE id = $3")
                .bind(&r.name)
                .bind(&r.description)
                .bind(&r.id)
                .execute(&self.pool)
                .await?,
        )
    }

    pub async fn delete_role(&self, id: &str) -> Result<()> {
        retry_transient("delete role", || async move {
            let mut tx = self.pool.begin().await?;
            for sql in [
                "DELETE FROM assignments WHERE role_id = $1",
                "DELETE FROM implied_roles WHERE prior_role_id = $1 OR implied_role_id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
            require_row(
                sqlx::query("DELETE FROM roles WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?,
            )?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    // ---- implied roles ----
    pub async fn add_implied_role(&self, prior: &str, implied: &str) -> Result<()> {
        sqlx::query("INSERT INTO implied_roles (prior_role_id, implied_role_id) VALUES ($1, $2)")
            .bind(prior)
            .bind(implied)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn remove_implied_role(&self, prior: &str, implied: &str) -> Result<()> {
        require_row(
            sqlx::query(
                "DELETE FROM implied_roles WHERE prior_role_id = $1 AND implied_role_id = $2",
            )
            .bind(prior)
            .bind(implied)
            .execute(&self.pool)
            .await?,
        )
    }

    pub async fn list_implied_roles(&self) -> Result<Vec<ImpliedRole>> {
        Ok(
            sqlx::query_as("SELECT * FROM implied_roles ORDER BY prior_role_id, implied_role_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    // ---- assignments ----
    /// Grants a role; granting one that exists already is not an error (Keystone's PUT is idempotent).
    pub async fn grant(&self, a: &Assignment) -> Result<()> {
        match sqlx::query(
            "INSERT INTO assignments (role_id, user_id, target_type, target_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(&a.role_id)
        .bind(&a.user_id)
        .bind(&a.target_type)
        .bind(&a.target_id)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from)
        {
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn revoke(&self, a: &Assignment) -> Result<()> {
        require_row(
            sqlx::query(
                "DELETE FROM assignments WHERE role_id = $1 AND user_id = $2 AND target_type = $3 AND target_id = $4",
            )
            .bind(&a.role_id)
            .bind(&a.user_id)
            .bind(&a.target_type)
            .bind(&a.target_id)
            .execute(&self.pool)
            .await?,
        )
    }

    /// All direct assignments, optionally narrowed; filtering on the small result is done by callers.
    pub async fn list_assignments(
        &self,
        user_id: Option<&str>,
        target_id: Option<&str>,
    ) -> Result<Vec<Assignment>> {
        let mut w = Where::new();
        if user_id.is_some() {
            w.add("user_id");
        }
        if target_id.is_some() {
            w.add("target_id");
        }
        let sql = format!(
            "SELECT * FROM assignments{} ORDER BY user_id, target_id, role_id",
            w.sql()
        );
        let mut q = sqlx::query_as::<_, Assignment>(&sql);
        if let Some(v) = user_id {
            q = q.bind(v);
        }
        if let Some(v) = target_id {
            q = q.bind(v);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    // ---- catalog ----
    pub async fn create_region(&self, r: &Region) -> Result<()> {
        sqlx::query("INSERT INTO regions (id, description, parent_region_id) VALUES ($1, $2, $3)")
            .bind(&r.id)
            .bind(&r.description)
            .bind(&r.parent_region_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_region(&self, id: &str) -> Result<Region> {
        Ok(sqlx::query_as("SELECT * FROM regions WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn list_regions(&self) -> Result<Vec<Region>> {
        Ok(sqlx::query_as("SELECT * FROM regions ORDER BY id")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn update_region(&self, r: &Region) -> Result<()> {
        require_row(
            sqlx::query("UPDATE regions SET description = $1, parent_region_id = $2 WHERE id = $3")
                .bind(&r.description)
                .bind(&r.parent_region_id)
                .bind(&r.id)
                .execute(&self.pool)
                .await?,
        )
    }

    /// Refuses to delete a region that endpoints or child regions still use.
    pub async fn delete_region(&self, id: &str) -> Result<()> {
        let (used,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM endpoints WHERE region_id = $1) + \
                    (SELECT COUNT(*) FROM regions WHERE parent_region_id = $1)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        if used > 0 {
            return Err(StoreError::Conflict(format!(
                "region {id} is still referenced by endpoints or child regions"
            )));
        }
        require_row(
            sqlx::query("DELETE FROM regions WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?,
        )
    }

    pub async fn create_service(&self, s: &Service) -> Result<()> {
        sqlx::query(
            "INSERT INTO services (id, type, name, description, enabled) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&s.id)
        .bind(&s.service_type)
        .bind(&s.name)
        .bind(&s.description)
        .bind(i64::from(s.enabled))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_service(&self, id: &str) -> Result<Service> {
        Ok(sqlx::query_as("SELECT * FROM services WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn list_services(&self) -> Result<Vec<Service>> {
        Ok(sqlx::query_as("SELECT * FROM services ORDER BY type, name")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn update_service(&self, s: &Service) -> Result<()> {
        require_row(
            sqlx::query(
                "UPDATE services SET type = $1, name = $2, description = $3, enabled = $4 WHERE id = $5",
            )
            .bind(&s.service_type)
            .bind(&s.name)
            .bind(&s.description)
            .bind(i64::from(s.enabled))
            .bind(&s.id)
            .execute(&self.pool)
            .await?,
        )
    }

    /// Deleting a service deletes its endpoints too, as Keystone does.
    pub async fn delete_service(&self, id: &str) -> Result<()> {
        retry_transient("delete service", || async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM endpoints WHERE service_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            require_row(
                sqlx::query("DELETE FROM services WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?,
            )?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn create_endpoint(&self, e: &Endpoint) -> Result<()> {
        sqlx::query(
            "INSERT INTO endpoints (id, service_id, interface, region_id, url, enabled) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&e.id)
        .bind(&e.service_id)
        .bind(&e.interface)
        .bind(&e.region_id)
        .bind(&e.url)
        .bind(i64::from(e.enabled))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_endpoint(&self, id: &str) -> Result<Endpoint> {
        Ok(sqlx::query_as("SELECT * FROM endpoints WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn list_endpoints(&self) -> Result<Vec<Endpoint>> {
        Ok(
            sqlx::query_as("SELECT * FROM endpoints ORDER BY service_id, interface")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn update_endpoint(&self, e: &Endpoint) -> Result<()> {
        require_row(
            sqlx::query(
                "UPDATE endpoints SET service_id = $1, interface = $2, region_id = $3, url = $4, enabled = $5 WHERE id = $6",
            )
            .bind(&e.service_id)
            .bind(&e.interface)
            .bind(&e.region_id)
            .bind(&e.url)
            .bind(i64::from(e.enabled))
            .bind(&e.id)
            .execute(&self.pool)
            .await?,
        )
    }

    pub async fn delete_endpoint(&self, id: &str) -> Result<()> {
        require_row(
            sqlx::query("DELETE FROM endpoints WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?,
        )
    }

    // ---- token revocations ----
    pub async fn add_revocation(&self, r: &Revocation) -> Result<()> {
        sqlx::query(
            "INSERT INTO revocations (id, audit_id, user_id, project_id, issued_before, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.id)
        .bind(&r.audit_id)
        .bind(&r.user_id)
        .bind(&r.project_id)
        .bind(r.issued_before)
        .bind(r.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Revocations still relevant at `now`; older ones are pruned as a side effect.
    pub async fn active_revocations(&self, now: i64) -> Result<Vec<Revocation>> {
        sqlx::query("DELETE FROM revocations WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_as("SELECT * FROM revocations")
            .fetch_all(&self.pool)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let s = Store::open(&url).await.expect("open");
        (dir, s)
    }

    #[tokio::test]
    async fn roundtrip_and_unique_names() {
        let (_d, s) = store().await;
        let d = Domain {
            id: "default".into(),
            name: "Default".into(),
            description: String::new(),
            enabled: true,
        };
        s.create_domain(&d).await.expect("create");
        assert_eq!(s.get_domain("default").await.expect("get"), d);
        let dup = Domain {
            id: "other".into(),
            ..d.clone()
        };
        assert!(matches!(
            s.create_domain(&dup).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.get_domain("nope").await,
            Err(StoreError::NotFound)
        ));
        let f = Filter {
            enabled: Some(false),
            ..Filter::default()
        };
        assert!(s.list_domains(&f).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/t.db", dir.path().display());
        Store::open(&url).await.expect("first");
        Store::open(&url)
            .await
            .expect("second open re-applies nothing");
    }
}
