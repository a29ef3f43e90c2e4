//! Ordered, append-only schema history. Each step runs in one transaction together with the row
//! that records it, so a crash mid-migration leaves the previous schema intact.

use crate::{Result, Store};

/// Never edit a released step; append a new one.
const STEPS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE domains (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    enabled BIGINT NOT NULL
);
CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    domain_id TEXT NOT NULL REFERENCES domains(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    enabled BIGINT NOT NULL,
    UNIQUE (domain_id, name)
);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    domain_id TEXT NOT NULL REFERENCES domains(id),
    name TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    password_hash TEXT,
    default_project_id TEXT,
    description TEXT,
    email TEXT,
    UNIQUE (domain_id, name)
);
CREATE TABLE roles (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT
);
CREATE TABLE implied_roles (
    prior_role_id TEXT NOT NULL REFERENCES roles(id),
    implied_role_id TEXT NOT NULL REFERENCES roles(id),
    PRIMARY KEY (prior_role_id, implied_role_id)
);
CREATE TABLE assignments (
    role_id TEXT NOT NULL REFERENCES roles(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    PRIMARY KEY (role_id, user_id, target_type, target_id)
);
CREATE INDEX assignments_user ON assignments (user_id);
CREATE INDEX assignments_target ON assignments (target_id);
CREATE TABLE regions (
    id TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    parent_region_id TEXT REFERENCES regions(id)
);
CREATE TABLE services (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    enabled BIGINT NOT NULL
);
CREATE TABLE endpoints (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES services(id),
    interface TEXT NOT NULL,
    region_id TEXT REFERENCES regions(id),
    url TEXT NOT NULL,
    enabled BIGINT NOT NULL
);
CREATE TABLE revocations (
    id TEXT PRIMARY KEY,
    audit_id TEXT,
    user_id TEXT,
    project_id TEXT,
    issued_before BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    name TEXT,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    visibility TEXT NOT NULL,
    protected BIGINT NOT NULL,
    os_hidden BIGINT NOT NULL,
    disk_format TEXT,
    container_format TEXT,
    min_disk BIGINT NOT NULL,
    min_ram BIGINT NOT NULL,
    size BIGINT,
    virtual_size BIGINT,
    checksum TEXT,
    os_hash_algo TEXT,
    os_hash_value TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX images_owner ON images (owner);
CREATE TABLE image_properties (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (image_id, name)
);
CREATE TABLE image_tags (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (image_id, tag)
);
CREATE TABLE image_members (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    member_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (image_id, member_id)
);
CREATE INDEX image_members_member ON image_members (member_id)
"#,
    ),
];

pub(crate) async fn apply(store: &Store) -> Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
        .execute(store.pool())
        .await?;
    for (version, sql) in STEPS {
        let mut tx = store.pool().begin().await?;
        let done: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_some() {
            continue;
        }
        for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(*version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}
