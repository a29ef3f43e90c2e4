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
    (
        3,
        r#"
CREATE TABLE flavors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    vcpus BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    root_gb BIGINT NOT NULL,
    ephemeral_gb BIGINT NOT NULL,
    swap_mb BIGINT NOT NULL,
    is_public BIGINT NOT NULL,
    disabled BIGINT NOT NULL,
    description TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE flavor_extra_specs (
    flavor_id TEXT NOT NULL REFERENCES flavors(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (flavor_id, key)
);
CREATE TABLE flavor_projects (
    flavor_id TEXT NOT NULL REFERENCES flavors(id) ON DELETE CASCADE,
    project_id TEXT NOT NULL,
    PRIMARY KEY (flavor_id, project_id)
);
CREATE TABLE keypairs (
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, name)
);
CREATE TABLE compute_hosts (
    id TEXT PRIMARY KEY,
    num BIGINT NOT NULL UNIQUE,
    host TEXT NOT NULL UNIQUE,
    host_ip TEXT NOT NULL,
    agent_url TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    local_gb BIGINT NOT NULL,
    cpu_info TEXT NOT NULL,
    hypervisor_type TEXT NOT NULL,
    hypervisor_version BIGINT NOT NULL,
    virt_type TEXT NOT NULL,
    availability_zone TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    disabled_reason TEXT,
    forced_down BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    image_id TEXT NOT NULL,
    flavor_id TEXT NOT NULL,
    flavor_name TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    root_gb BIGINT NOT NULL,
    ephemeral_gb BIGINT NOT NULL,
    swap_mb BIGINT NOT NULL,
    flavor_extra_specs TEXT NOT NULL,
    key_name TEXT,
    key_data TEXT,
    user_data TEXT,
    config_drive BIGINT NOT NULL,
    availability_zone TEXT,
    host TEXT,
    node TEXT,
    reservation_id TEXT NOT NULL,
    launch_index BIGINT NOT NULL,
    hostname TEXT NOT NULL,
    vm_state TEXT NOT NULL,
    task_state TEXT,
    power_state BIGINT NOT NULL,
    locked BIGINT NOT NULL,
    locked_by TEXT,
    description TEXT,
    access_ipv4 TEXT NOT NULL,
    access_ipv6 TEXT NOT NULL,
    security_groups TEXT NOT NULL,
    requested_networks TEXT NOT NULL,
    fault_code BIGINT,
    fault_message TEXT,
    fault_details TEXT,
    fault_created TEXT,
    snapshot_image_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    launched_at TEXT,
    terminated_at TEXT,
    deleted BIGINT NOT NULL
);
CREATE INDEX instances_project ON instances (project_id, deleted);
CREATE INDEX instances_host ON instances (host, deleted);
CREATE TABLE instance_metadata (
    instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (instance_id, key)
)
"#,
    ),
    (
        4,
        r#"
CREATE TABLE net_resources (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    project_id TEXT NOT NULL,
    network_id TEXT,
    device_id TEXT,
    name TEXT NOT NULL,
    unique_key TEXT UNIQUE,
    seq BIGINT,
    body TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX net_resources_kind ON net_resources (kind, project_id);
CREATE INDEX net_resources_network ON net_resources (network_id, kind);
CREATE INDEX net_resources_device ON net_resources (device_id);
CREATE UNIQUE INDEX net_resources_seq ON net_resources (kind, seq);
CREATE TABLE ip_allocations (
    network_id TEXT NOT NULL,
    ip_address TEXT NOT NULL,
    subnet_id TEXT NOT NULL,
    port_id TEXT NOT NULL,
    PRIMARY KEY (network_id, ip_address)
);
CREATE INDEX ip_allocations_port ON ip_allocations (port_id);
CREATE INDEX ip_allocations_subnet ON ip_allocations (subnet_id);
CREATE TABLE net_generation (
    id BIGINT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO net_generation (id, value) VALUES (1, 1)
"#,
    ),
    (
        5,
        r#"
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    used_by TEXT,
    created_at TEXT NOT NULL
)
"#,
    ),
    (
        6,
        r#"
CREATE TABLE node_credentials (
    host TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"#,
    ),
    (
        7,
        r#"
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    name TEXT,
    description TEXT,
    size_gb BIGINT NOT NULL,
    status TEXT NOT NULL,
    volume_type TEXT NOT NULL,
    bootable BIGINT NOT NULL,
    availability_zone TEXT NOT NULL,
    source_image_id TEXT,
    snapshot_id TEXT,
    source_volid TEXT,
    image_metadata TEXT NOT NULL,
    metadata TEXT NOT NULL,
    attach_status TEXT NOT NULL,
    attachment_id TEXT,
    instance_id TEXT,
    attached_host TEXT,
    device TEXT,
    attached_at TEXT,
    boot_index BIGINT,
    delete_on_termination BIGINT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX volumes_project ON volumes (project_id);
CREATE INDEX volumes_instance ON volumes (instance_id);
CREATE TABLE volume_snapshots (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    name TEXT,
    description TEXT,
    size_gb BIGINT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX volume_snapshots_project ON volume_snapshots (project_id);
CREATE INDEX volume_snapshots_volume ON volume_snapshots (volume_id);
CREATE TABLE volume_generation (
    id BIGINT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO volume_generation (id, value) VALUES (1, 1);
CREATE TABLE quota_limits (
    project_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    hard_limit BIGINT NOT NULL,
    PRIMARY KEY (project_id, resource)
)
"#,
    ),
    (
        8,
        r#"
ALTER TABLE instances ADD COLUMN backup_rotation BIGINT;
ALTER TABLE instances ADD COLUMN old_flavor TEXT;
ALTER TABLE instances ADD COLUMN migration_host TEXT;
ALTER TABLE instances ADD COLUMN migration_info TEXT
"#,
    ),
    (
        9,
        r#"
CREATE TABLE quota_generation (
    id BIGINT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO quota_generation (id, value) VALUES (1, 1)
"#,
    ),
    (
        10,
        r#"
CREATE TABLE usage_events (
    instance_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    event TEXT NOT NULL,
    vm_state TEXT NOT NULL,
    host TEXT,
    flavor TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    disk_gb BIGINT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX usage_events_project ON usage_events (project_id, at_us);
CREATE INDEX usage_events_time ON usage_events (at_us)
"#,
    ),
    (
        11,
        r#"
CREATE TABLE audit_log (
    request_id TEXT PRIMARY KEY,
    at_us BIGINT NOT NULL,
    service TEXT NOT NULL,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    path TEXT NOT NULL,
    action TEXT,
    target TEXT,
    user_id TEXT,
    user_name TEXT,
    project_id TEXT,
    status BIGINT NOT NULL,
    remote_addr TEXT
);
CREATE INDEX audit_log_time ON audit_log (at_us);
CREATE INDEX audit_log_target ON audit_log (target)
"#,
    ),
    (
        12,
        r#"
CREATE TABLE token_keys (
    idx BIGINT PRIMARY KEY,
    key_material TEXT NOT NULL
)
"#,
    ),
    (
        13,
        r#"
CREATE TABLE controllers (
    name TEXT PRIMARY KEY,
    endpoints TEXT NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat_us BIGINT NOT NULL,
    leader_since_us BIGINT
);
ALTER TABLE join_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'compute'
"#,
    ),
    (
        14,
        r#"
ALTER TABLE images ADD COLUMN receiving_by TEXT
"#,
    ),
    (
        15,
        r#"
CREATE TABLE login_failures (
    user_id TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    last_failure_us BIGINT NOT NULL,
    locked_until_us BIGINT NOT NULL
)
"#,
    ),
];

/// The advisory lock (PostgreSQL) under which controllers that start together migrate one at a
/// time; any fixed number no other OneStack lock uses.
const MIGRATION_LOCK: i64 = 0x0e57_ac00_0001;

pub(crate) async fn apply(store: &Store) -> Result<()> {
    let postgres = store.backend() == crate::Backend::Postgres;
    {
        let mut tx = store.pool().begin().await?;
        if postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    for (version, sql) in STEPS {
        let mut tx = store.pool().begin().await?;
        if postgres {
            // Held to the end of this step's transaction: another controller waits, then finds
            // the step done.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
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
