//! Records → Keystone JSON, field for field as Keystone's api-ref shows them.

use crate::AppState;
use onestack_core::identity::Snapshot;
use onestack_core::policy::AuthContext;
use onestack_store::{Domain, Endpoint, Project, Region, Role, Service, User};
use serde_json::{json, Map, Value};

fn link(state: &AppState, path: &str) -> Value {
    json!({"self": format!("{}/v3/{}", state.identity_url, path)})
}

pub fn domain(state: &AppState, d: &Domain) -> Value {
    json!({
        "id": d.id, "name": d.name, "description": d.description, "enabled": d.enabled,
        "tags": [], "options": {}, "links": link(state, &format!("domains/{}", d.id)),
    })
}

pub fn project(state: &AppState, p: &Project) -> Value {
    json!({
        "id": p.id, "name": p.name, "domain_id": p.domain_id, "description": p.description,
        "enabled": p.enabled, "parent_id": p.domain_id, "is_domain": false, "tags": [],
        "options": {}, "links": link(state, &format!("projects/{}", p.id)),
    })
}

pub fn user(state: &AppState, u: &User) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(u.id));
    m.insert("name".into(), json!(u.name));
    m.insert("domain_id".into(), json!(u.domain_id));
    m.insert("enabled".into(), json!(u.enabled));
    m.insert("password_expires_at".into(), Value::Null);
    m.insert("options".into(), json!({}));
    m.insert("links".into(), link(state, &format!("users/{}", u.id)));
    // Optional attributes appear only when set, as in Keystone.
    for (k, v) in [
        ("default_project_id", &u.default_project_id),
        ("description", &u.description),
        ("email", &u.email),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

pub fn role(state: &AppState, r: &Role) -> Value {
    json!({
        "id": r.id, "name": r.name, "domain_id": null, "description": r.description,
        "options": {}, "links": link(state, &format!("roles/{}", r.id)),
    })
}

pub fn role_ref(state: &AppState, r: &Role) -> Value {
    json!({"id": r.id, "name": r.name, "links": link(state, &format!("roles/{}", r.id))})
}

pub fn region(state: &AppState, r: &Region) -> Value {
    json!({
        "id": r.id, "description": r.description, "parent_region_id": r.parent_region_id,
        "links": link(state, &format!("regions/{}", r.id)),
    })
}

pub fn service(state: &AppState, s: &Service) -> Value {
    json!({
        "id": s.id, "type": s.service_type, "name": s.name, "description": s.description,
        "enabled": s.enabled, "links": link(state, &format!("services/{}", s.id)),
    })
}

pub fn endpoint(state: &AppState, e: &Endpoint) -> Value {
    json!({
        "id": e.id, "interface": e.interface, "region": e.region_id, "region_id": e.region_id,
        "service_id": e.service_id, "url": e.url, "enabled": e.enabled,
        "links": link(state, &format!("endpoints/{}", e.id)),
    })
}

/// Keystone's timestamp form, e.g. `2026-11-24T21:00:00.000000Z`.
pub fn timestamp(micros: i64) -> String {
    chrono_like(micros)
}

fn chrono_like(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The service catalog as tokens carry it; project-id templates in URLs are filled in, and
/// `url_of` (service type, URL) says where this controller's clients find the service.
pub fn catalog(
    snap: &Snapshot,
    project_id: Option<&str>,
    url_of: &dyn Fn(&str, &str) -> String,
) -> Value {
    let pid = project_id.unwrap_or("");
    Value::Array(
        snap.catalog
            .iter()
            .map(|s| {
                let eps: Vec<Value> = s
                    .endpoints
                    .iter()
                    .map(|e| {
                        let url = e
                            .url
                            .replace("$(project_id)s", pid)
                            .replace("%(project_id)s", pid)
                            .replace("$(tenant_id)s", pid)
                            .replace("%(tenant_id)s", pid);
                        let url = url_of(&s.service_type, &url);
                        json!({"id": e.id, "interface": e.interface, "region": e.region_id,
                               "region_id": e.region_id, "url": url})
                    })
                    .collect();
                json!({"id": s.id, "type": s.service_type, "name": s.name, "endpoints": eps})
            })
            .collect(),
    )
}

/// The body of `POST/GET /v3/auth/tokens`.
pub fn token(
    ctx: &AuthContext,
    snap: &Snapshot,
    with_catalog: bool,
    url_of: &dyn Fn(&str, &str) -> String,
) -> Value {
    let t = &ctx.token;
    let mut m = Map::new();
    m.insert("methods".into(), json!(t.methods));
    m.insert(
        "user".into(),
        json!({
            "domain": {"id": ctx.user_domain.id, "name": ctx.user_domain.name},
            "id": ctx.user.id, "name": ctx.user.name, "password_expires_at": null,
        }),
    );
    m.insert("audit_ids".into(), json!(t.audit_ids));
    m.insert("expires_at".into(), json!(timestamp(t.expires_at)));
    m.insert("issued_at".into(), json!(timestamp(t.issued_at)));
    if let Some(p) = &ctx.project {
        m.insert(
            "project".into(),
            json!({"domain": {"id": p.domain.id, "name": p.domain.name}, "id": p.id, "name": p.name}),
        );
        m.insert("is_domain".into(), json!(false));
        m.insert(
            "roles".into(),
            Value::Array(
                ctx.roles
                    .iter()
                    .map(|r| json!({"id": r.id, "name": r.name}))
                    .collect(),
            ),
        );
        if with_catalog {
            m.insert("catalog".into(), catalog(snap, Some(&p.id), url_of));
        }
    }
    json!({"token": Value::Object(m)})
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_match_keystone_format() {
        assert_eq!(super::timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            super::timestamp(1_709_251_199_123_456),
            "2024-02-29T23:59:59.123456Z"
        );
        assert_eq!(
            super::timestamp(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
