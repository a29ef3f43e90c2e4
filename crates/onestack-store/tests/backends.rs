//! The same scenario against every back end: SQLite always, PostgreSQL when
//! `ONESTACK_TEST_POSTGRES_URL` names a server (the test script starts one).

use onestack_store::*;

fn project(id: &str, name: &str, enabled: bool) -> Project {
    Project {
        id: id.into(),
        domain_id: "default".into(),
        name: name.into(),
        description: String::new(),
        enabled,
    }
}

async fn scenario(s: &Store) {
    s.create_domain(&Domain {
        id: "default".into(),
        name: "Default".into(),
        description: String::new(),
        enabled: true,
    })
    .await
    .expect("domain");
    s.create_project(&project("p1", "p1", true))
        .await
        .expect("p1");
    s.create_project(&project("p2", "p2", false))
        .await
        .expect("p2");
    assert!(matches!(
        s.create_project(&project("p3", "p1", true)).await,
        Err(StoreError::Conflict(_))
    ));
    let off = Filter {
        enabled: Some(false),
        ..Filter::default()
    };
    let got = s.list_projects(&off).await.expect("list");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "p2");
    assert!(!got[0].enabled);
    let mut p1 = s.get_project("p1").await.expect("get");
    p1.enabled = false;
    s.update_project(&p1).await.expect("update");
    assert!(!s.get_project("p1").await.expect("get").enabled);
    assert!(matches!(
        s.get_project("zz").await,
        Err(StoreError::NotFound)
    ));

    s.create_user(&User {
        id: "u".into(),
        domain_id: "default".into(),
        name: "u".into(),
        enabled: true,
        password_hash: Some("h".into()),
        default_project_id: Some("p1".into()),
        description: None,
        email: None,
    })
    .await
    .expect("user");
    s.create_role(&Role {
        id: "r".into(),
        name: "member".into(),
        description: None,
    })
    .await
    .expect("role");
    let a = Assignment {
        role_id: "r".into(),
        user_id: "u".into(),
        target_type: "project".into(),
        target_id: "p1".into(),
    };
    s.grant(&a).await.expect("grant");
    s.grant(&a).await.expect("idempotent grant");
    assert_eq!(s.list_user_projects("u").await.expect("projects").len(), 1);
    s.delete_project("p1").await.expect("delete project");
    assert!(s
        .list_assignments(Some("u"), None)
        .await
        .expect("a")
        .is_empty());
    assert_eq!(
        s.get_user("u").await.expect("user").default_project_id,
        None
    );
    let on_domain = Assignment {
        target_type: "domain".into(),
        target_id: "default".into(),
        ..a.clone()
    };
    s.grant(&on_domain).await.expect("domain grant");
    s.delete_user("u").await.expect("delete user");
    assert!(s
        .list_assignments(Some("u"), None)
        .await
        .expect("a")
        .is_empty());
    assert!(matches!(
        s.delete_user("u").await,
        Err(StoreError::NotFound)
    ));

    s.create_region(&Region {
        id: "R".into(),
        description: String::new(),
        parent_region_id: None,
    })
    .await
    .expect("region");
    s.create_service(&Service {
        id: "s".into(),
        service_type: "identity".into(),
        name: "keystone".into(),
        description: String::new(),
        enabled: true,
    })
    .await
    .expect("service");
    s.create_endpoint(&Endpoint {
        id: "e".into(),
        service_id: "s".into(),
        interface: "public".into(),
        region_id: Some("R".into()),
        url: "http://198.18.0.1:5000/v3".into(),
        enabled: true,
    })
    .await
    .expect("endpoint");
    assert!(matches!(
        s.delete_region("R").await,
        Err(StoreError::Conflict(_))
    ));
    s.delete_service("s")
        .await
        .expect("service delete cascades endpoints");
    s.delete_region("R").await.expect("region");

    s.add_revocation(&Revocation {
        id: "x".into(),
        audit_id: Some("a".into()),
        user_id: None,
        project_id: None,
        issued_before: 1,
        expires_at: 100,
    })
    .await
    .expect("revocation");
    assert_eq!(s.active_revocations(50).await.expect("active").len(), 1);
    assert!(s.active_revocations(101).await.expect("pruned").is_empty());
}

/// Compute records: flavors with specs and access, keypairs, hosts, instances with conditional
/// task updates, host usage and generations.
async fn compute_scenario(s: &Store) {
    let mut specs = std::collections::BTreeMap::new();
    specs.insert("hw:cpu_policy".to_string(), "shared".to_string());
    let flavor = FlavorRecord {
        id: "f1".into(),
        name: "m1.test".into(),
        vcpus: 2,
        memory_mb: 512,
        root_gb: 1,
        ephemeral_gb: 0,
        swap_mb: 0,
        is_public: false,
        disabled: false,
        description: None,
        created_at: "2026-01-01T00:00:00Z".into(),
        extra_specs: specs,
    };
    s.create_flavor(&flavor).await.expect("flavor");
    assert_eq!(s.get_flavor("f1").await.expect("get"), flavor);
    assert!(matches!(
        s.create_flavor(&flavor).await,
        Err(StoreError::Conflict(_))
    ));
    s.add_flavor_project("f1", "p1").await.expect("access");
    assert_eq!(
        s.flavors_of_project("p1").await.expect("of"),
        vec!["f1".to_string()]
    );
    let key = KeypairRecord {
        user_id: "u1".into(),
        name: "k".into(),
        key_type: "ssh".into(),
        public_key: "ssh-ed25519 AAAA".into(),
        fingerprint: "00".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    s.create_keypair(&key).await.expect("key");
    assert!(matches!(
        s.create_keypair(&key).await,
        Err(StoreError::Conflict(_))
    ));
    let host = HostRecord {
        id: "h-1".into(),
        num: 0,
        host: "h1".into(),
        host_ip: "198.18.0.2".into(),
        agent_url: "http://198.18.0.2:8775".into(),
        vcpus: 4,
        memory_mb: 4096,
        local_gb: 100,
        cpu_info: "{}".into(),
        hypervisor_type: "QEMU".into(),
        hypervisor_version: 7002000,
        virt_type: "qemu".into(),
        availability_zone: "nova".into(),
        enabled: true,
        disabled_reason: None,
        forced_down: false,
        last_seen: 1,
        generation: 1,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    };
    let stored = s.upsert_host(&host).await.expect("host");
    assert_eq!(stored.num, 1);
    let again = s.upsert_host(&host).await.expect("re-register");
    assert_eq!((again.id.as_str(), again.num), ("h-1", 1));
    assert!(again.generation > stored.generation);
    let mut inst = InstanceRecord {
        id: "i-1".into(),
        seq: 0,
        name: "vm".into(),
        project_id: "p1".into(),
        user_id: "u1".into(),
        image_id: "img".into(),
        flavor_id: "f1".into(),
        flavor_name: "m1.test".into(),
        vcpus: 2,
        memory_mb: 512,
        root_gb: 1,
        ephemeral_gb: 0,
        swap_mb: 0,
        flavor_extra_specs: "{}".into(),
        key_name: None,
        key_data: None,
        user_data: None,
        config_drive: true,
        availability_zone: None,
        host: None,
        node: None,
        reservation_id: "r-1".into(),
        launch_index: 0,
        hostname: "vm".into(),
        vm_state: "building".into(),
        task_state: Some("scheduling".into()),
        power_state: 0,
        locked: false,
        locked_by: None,
        description: None,
        access_ipv4: String::new(),
        access_ipv6: String::new(),
        security_groups: "[\"default\"]".into(),
        requested_networks: "null".into(),
        fault_code: None,
        fault_message: None,
        fault_details: None,
        fault_created: None,
        snapshot_image_id: None,
        backup_rotation: None,
        old_flavor: None,
        migration_host: None,
        migration_info: None,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        launched_at: None,
        terminated_at: None,
        deleted: false,
        metadata: [("a".to_string(), "1".to_string())].into_iter().collect(),
    };
    s.create_instance(&mut inst).await.expect("instance");
    let mut second = inst.clone();
    second.id = "i-2".into();
    s.create_instance(&mut second).await.expect("second");
    assert_eq!((inst.seq, second.seq), (1, 2));
    let gen_before = s.get_host_by_name("h1").await.expect("h").generation;
    // Scheduling: only from the expected task.
    let wrong = Expect::TaskIn(vec![Some("spawning".into())]);
    let placed: Changes = vec![("host", "h1".into()), ("task_state", "spawning".into())];
    assert!(!s
        .update_instance("i-1", &wrong, &placed)
        .await
        .expect("update"));
    let right = Expect::TaskIn(vec![Some("scheduling".into())]);
    assert!(s
        .update_instance("i-1", &right, &placed)
        .await
        .expect("update"));
    assert!(s.get_host_by_name("h1").await.expect("h").generation > gen_before);
    let got = s.get_instance("i-1").await.expect("get");
    assert_eq!(got.host.as_deref(), Some("h1"));
    assert_eq!(got.metadata.get("a").map(String::as_str), Some("1"));
    let done: Changes = vec![
        ("vm_state", "active".into()),
        ("task_state", SqlValue::Text(None)),
        ("power_state", 1i64.into()),
    ];
    assert!(s
        .update_instance("i-1", &Expect::TaskIn(vec![Some("spawning".into())]), &done)
        .await
        .expect("u"));
    assert!(s
        .update_instance(
            "i-1",
            &Expect::TaskIn(vec![None]),
            &vec![("locked", true.into())]
        )
        .await
        .expect("u"));
    let usage = s.host_usage().await.expect("usage");
    assert_eq!(
        usage["h1"],
        HostUsage {
            instances: 1,
            vcpus: 2,
            memory_mb: 512,
            disk_gb: 1
        }
    );
    assert_eq!(s.list_host_instances("h1").await.expect("list").len(), 1);
    assert_eq!(
        s.count_instances_by_vm_state().await.expect("by state"),
        vec![("active".to_string(), 1), ("building".to_string(), 1)]
    );
    assert_eq!(
        s.count_live_instances("p1").await.expect("count"),
        (2, 4, 1024)
    );
    assert!(s
        .mark_instance_deleted("i-1", "2026-01-02T00:00:00Z")
        .await
        .expect("delete"));
    assert_eq!(
        s.count_instances_by_vm_state().await.expect("by state"),
        vec![("building".to_string(), 1)],
        "deleted servers are not counted"
    );
    assert_eq!(
        s.list_instances(Some("p1"), false)
            .await
            .expect("live")
            .len(),
        1
    );
    assert_eq!(
        s.list_instances(Some("p1"), true).await.expect("all").len(),
        2
    );
    assert!(s.list_host_instances("h1").await.expect("list").is_empty());
}

/// Network records: one table for every kind, addresses unique per network, writes serialized
/// and all-or-nothing, a generation that moves with every write.
async fn network_scenario(s: &Store) {
    use onestack_store::{IpAllocation, NetFilter, NetResource, StoreError};
    let rec = |id: &str, kind: &str, net: Option<&str>, device: Option<&str>| NetResource {
        id: id.into(),
        kind: kind.into(),
        project_id: "p1".into(),
        network_id: net.map(Into::into),
        device_id: device.map(Into::into),
        name: id.into(),
        unique_key: None,
        seq: None,
        body: format!("{{\"id\":\"{id}\"}}"),
        revision: 1,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    };
    let alloc = |ip: &str, port: &str| IpAllocation {
        network_id: "n1".into(),
        ip_address: ip.into(),
        subnet_id: "s1".into(),
        port_id: port.into(),
    };
    let g0 = s.net_generation().await.expect("generation");
    let mut tx = s.net_tx().await.expect("tx");
    let mut n = rec("n1", "network", Some("n1"), None);
    n.seq = Some(tx.next_seq("network").await.expect("seq"));
    assert_eq!(n.seq, Some(1));
    tx.insert(&n).await.expect("network");
    tx.insert(&rec("port-a", "port", Some("n1"), Some("vm1")))
        .await
        .expect("port");
    tx.allocate(&alloc("198.18.1.5", "port-a"))
        .await
        .expect("alloc");
    tx.commit().await.expect("commit");
    assert!(s.net_generation().await.expect("generation") > g0);

    // The same address twice is a conflict, and the failed transaction leaves nothing.
    let mut tx = s.net_tx().await.expect("tx");
    tx.insert(&rec("port-b", "port", Some("n1"), Some("vm2")))
        .await
        .expect("port");
    let err = tx.allocate(&alloc("198.18.1.5", "port-b")).await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    drop(tx);
    assert!(matches!(
        s.net_get("port-b").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.net_allocations(Some("n1")).await.expect("allocs").len(),
        1
    );
    // A unique key holds across the table (a project's default group).
    let mut tx = s.net_tx().await.expect("tx");
    let mut g1 = rec("g1", "security_group", None, None);
    g1.unique_key = Some("default-sg:p1".into());
    tx.insert(&g1).await.expect("group");
    let mut g2 = rec("g2", "security_group", None, None);
    g2.unique_key = Some("default-sg:p1".into());
    assert!(matches!(tx.insert(&g2).await, Err(StoreError::Conflict(_))));
    drop(tx);

    // Filters, update and delete (which frees the port's addresses).
    let ports = s
        .net_list(&NetFilter {
            kind: "port",
            device_id: Some("vm1"),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(ports.len(), 1);
    let mut tx = s.net_tx().await.expect("tx");
    let mut p = ports[0].clone();
    p.name = "renamed".into();
    p.revision = 2;
    tx.update(&p).await.expect("update");
    tx.delete("port-a").await.expect("delete");
    assert!(matches!(
        tx.delete("port-a").await,
        Err(StoreError::NotFound)
    ));
    tx.commit().await.expect("commit");
    assert!(s.net_allocations(None).await.expect("allocs").is_empty());
    assert_eq!(
        s.net_list(&NetFilter {
            kind: "network",
            ..Default::default()
        })
        .await
        .expect("list")
        .len(),
        1
    );
}

/// Volumes: quota-checked creates (also racing), conditional status changes, attachments by
/// server, snapshots in the gigabytes count, quota overrides.
async fn volume_scenario(s: &Store) {
    use onestack_store::{QuotaRefused, SnapshotRecord, VolumeLimits, VolumeRecord};
    let vol = |id: &str, gb: i64| VolumeRecord {
        id: id.into(),
        project_id: "p1".into(),
        user_id: "u1".into(),
        size_gb: gb,
        status: "creating".into(),
        volume_type: "__DEFAULT__".into(),
        availability_zone: "nova".into(),
        image_metadata: "{}".into(),
        metadata: "{}".into(),
        attach_status: "detached".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        ..Default::default()
    };
    let limits = VolumeLimits {
        volumes: 3,
        gigabytes: 10,
        snapshots: 1,
    };
    // Six racing creates of 1 GB against room for three: exactly three land.
    let results = futures_util::future::join_all((0..6).map(|i| {
        let v = vol(&format!("v{i}"), 1);
        async move { s.create_volume_within(&v, limits).await.expect("create") }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(QuotaRefused::Volumes { used: 3, limit: 3 }))));
    assert_eq!(s.list_volumes(Some("p1")).await.expect("list").len(), 3);
    assert_eq!(
        s.count_volumes_by_status().await.expect("by status"),
        vec![("creating".to_string(), 3)]
    );
    let ids: Vec<String> = s
        .list_volumes(Some("p1"))
        .await
        .expect("list")
        .into_iter()
        .map(|v| v.id)
        .collect();
    // Gigabytes: 3 used of 10; 8 more does not fit.
    let big = s
        .create_volume_within(
            &vol("big", 8),
            VolumeLimits {
                volumes: -1,
                ..limits
            },
        )
        .await
        .expect("create");
    assert!(
        matches!(big, Err(QuotaRefused::Gigabytes { used: 3, limit: 10 })),
        "{big:?}"
    );
    // Conditional status change: only from the status given.
    let a = &ids[0];
    let avail: onestack_store::Changes = vec![("status", "available".into())];
    assert!(!s
        .update_volume(a, &["deleting"], &avail, None)
        .await
        .expect("update"));
    assert!(s
        .update_volume(a, &["creating"], &avail, None)
        .await
        .expect("update"));
    assert_eq!(s.get_volume(a).await.expect("get").status, "available");
    // Attached to a server (and its host woken): listed for the server, root first.
    let attach: onestack_store::Changes = vec![
        ("status", "in-use".into()),
        ("instance_id", "srv-1".into()),
        ("boot_index", onestack_store::SqlValue::Int(None)),
        ("delete_on_termination", true.into()),
    ];
    assert!(s
        .update_volume(a, &["available"], &attach, Some("no-such-host"))
        .await
        .expect("attach"));
    let on = s.instance_volumes("srv-1").await.expect("by server");
    assert_eq!(on.len(), 1);
    assert!(on[0].delete_on_termination && on[0].boot_index.is_none());
    // Snapshots count toward gigabytes; their own limit holds.
    let snap = |id: &str| SnapshotRecord {
        id: id.into(),
        project_id: "p1".into(),
        user_id: "u1".into(),
        volume_id: a.clone(),
        size_gb: 1,
        status: "creating".into(),
        metadata: "{}".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        ..Default::default()
    };
    assert!(s
        .create_snapshot_within(&snap("s1"), limits)
        .await
        .expect("snap")
        .is_ok());
    assert!(matches!(
        s.create_snapshot_within(&snap("s2"), limits)
            .await
            .expect("snap"),
        Err(QuotaRefused::Snapshots { used: 1, limit: 1 })
    ));
    let u = s.volume_usage("p1").await.expect("usage");
    assert_eq!((u.volumes, u.gigabytes(), u.snapshots), (3, 4, 1));
    assert_eq!(s.volume_snapshot_count(a).await.expect("count"), 1);
    // Extend within the gigabytes limit only.
    let ext: onestack_store::Changes = vec![("size_gb", 7i64.into())];
    assert!(matches!(
        s.extend_volume_within(&ids[1], &["creating"], 8, 10, &ext)
            .await
            .expect("extend"),
        Err(QuotaRefused::Gigabytes { .. })
    ));
    assert!(matches!(
        s.extend_volume_within(&ids[1], &["creating"], 7, 10, &ext)
            .await
            .expect("extend"),
        Ok(true)
    ));
    // Quota overrides per project and service prefix.
    s.set_quota_limit("p1", "volume.volumes", 20)
        .await
        .expect("set");
    s.set_quota_limit("p1", "volume.volumes", 30)
        .await
        .expect("set again");
    s.set_quota_limit("p1", "other.cores", 5)
        .await
        .expect("set");
    assert_eq!(
        s.quota_limits("p1").await.expect("limits"),
        vec![
            ("other.cores".to_string(), 5),
            ("volume.volumes".to_string(), 30)
        ]
    );
    s.clear_quota_limits("p1", "volume.").await.expect("clear");
    assert_eq!(
        s.quota_limits("p1").await.expect("limits"),
        vec![("other.cores".to_string(), 5)]
    );
    s.delete_snapshot("s1").await.expect("delete snapshot");
    for id in &ids {
        s.delete_volume(id).await.expect("delete");
    }
    assert!(matches!(
        s.delete_volume(a).await,
        Err(onestack_store::StoreError::NotFound)
    ));
}

/// Token keys: written once (a second start keeps them), rotated as Keystone's repository is:
/// the staged key becomes the primary, a new one is staged, the oldest beyond `keep` go.
async fn token_keys_scenario(s: &Store) {
    assert!(s
        .init_token_keys(&[(0, "k0".into()), (1, "k1".into())])
        .await
        .expect("init"));
    assert!(!s.init_token_keys(&[(0, "x".into())]).await.expect("again"));
    s.rotate_token_keys("k2", 2).await.expect("rotate");
    assert_eq!(
        s.token_keys().await.expect("keys"),
        [(0, "k2".to_string()), (1, "k1".into()), (2, "k0".into())]
    );
    s.rotate_token_keys("k3", 2).await.expect("rotate");
    assert_eq!(
        s.token_keys().await.expect("keys"),
        [(0, "k3".to_string()), (2, "k0".into()), (3, "k2".into())]
    );
}

/// The usage record: an event in the same write as each metered change, none for changes
/// that meter nothing, and a period's query leaves out what was deleted before it.
async fn usage_scenario(s: &Store) {
    let mut inst = s.get_instance("i-1").await.expect("template");
    inst.id = "u-1".into();
    inst.project_id = "pu".into();
    inst.deleted = false;
    inst.launched_at = None;
    inst.terminated_at = None;
    inst.vm_state = "building".into();
    inst.host = None;
    s.create_instance(&mut inst).await.expect("instance");
    let any = Expect::Any;
    // Building and placed: nothing used yet.
    s.update_instance("u-1", &any, &vec![("host", "h1".into())])
        .await
        .expect("place");
    assert!(s.instance_usage_events("u-1").await.expect("e").is_empty());
    s.update_instance(
        "u-1",
        &any,
        &vec![
            ("vm_state", "active".into()),
            ("launched_at", "2026-01-01T00:00:00Z".into()),
        ],
    )
    .await
    .expect("launch");
    // A change that meters nothing (a lock) adds no event.
    s.update_instance("u-1", &any, &vec![("locked", true.into())])
        .await
        .expect("lock");
    s.update_instance("u-1", &any, &vec![("vcpus", 4i64.into())])
        .await
        .expect("resize");
    s.update_instance("u-1", &any, &vec![("vm_state", "stopped".into())])
        .await
        .expect("stop");
    assert!(s
        .mark_instance_deleted("u-1", "2026-01-02T00:00:00Z")
        .await
        .expect("delete"));
    let events = s.instance_usage_events("u-1").await.expect("events");
    let kinds: Vec<(&str, i64, i64)> = events
        .iter()
        .map(|e| (e.event.as_str(), e.seq, e.vcpus))
        .collect();
    assert_eq!(
        kinds,
        [
            ("create", 1, 2),
            ("resize", 2, 4),
            ("stop", 3, 4),
            ("delete", 4, 4)
        ]
    );
    assert!(events.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    assert_eq!(events[0].host.as_deref(), Some("h1"));
    let deleted_at = events[3].at_us;
    assert_eq!(
        s.usage_events(Some("pu"), 0, i64::MAX)
            .await
            .expect("period")
            .len(),
        4
    );
    assert!(s
        .usage_events(Some("pu"), deleted_at + 1, i64::MAX)
        .await
        .expect("after")
        .is_empty());
    assert!(s
        .usage_events(Some("other"), 0, i64::MAX)
        .await
        .expect("other")
        .is_empty());
    assert!(s
        .usage_events(None, 0, i64::MAX)
        .await
        .expect("all")
        .iter()
        .any(|e| e.instance_id == "u-1"));
}

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .expect("open");
    assert_eq!(s.backend(), Backend::Sqlite);
    scenario(&s).await;
    compute_scenario(&s).await;
    usage_scenario(&s).await;
    token_keys_scenario(&s).await;
    network_scenario(&s).await;
    volume_scenario(&s).await;
    emptied_by_drop_all(s, &format!("sqlite://{}/t.db", dir.path().display())).await;
}

/// `onestack reset` on a shared database: every table goes, the next open starts empty.
async fn emptied_by_drop_all(s: Store, url: &str) {
    assert!(!s
        .net_list(&onestack_store::NetFilter {
            kind: "network",
            ..Default::default()
        })
        .await
        .expect("list")
        .is_empty());
    s.drop_all().await.expect("drop all");
    s.pool().close().await;
    let fresh = Store::open(url).await.expect("reopen");
    assert!(fresh
        .net_list(&onestack_store::NetFilter {
            kind: "network",
            ..Default::default()
        })
        .await
        .expect("list")
        .is_empty());
    assert!(fresh.list_flavors().await.expect("flavors").is_empty());
    fresh.pool().close().await;
}

/// Two controllers on one database: a lock one holds, the other cannot take; released — or its
/// holder's connections gone, as when the process dies — the other takes it.
async fn locks_across_controllers(url: &str) {
    let a = Store::open(url).await.expect("a");
    let b = Store::open(url).await.expect("b");
    let held = a.lock(LockName::Leader).await.expect("lock");
    assert!(b.try_lock(LockName::Leader).await.expect("try").is_none());
    // Another name is another lock.
    let other = b.try_lock(LockName::Placement).await.expect("try");
    assert!(other.is_some());
    drop(other);
    drop(held);
    let mut taken = None;
    for _ in 0..50 {
        taken = b.try_lock(LockName::Leader).await.expect("try");
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut taken = taken.expect("released to b");
    assert!(taken.alive().await);
    // b "dies": the server loses b's session (as when its process is killed), and a, which
    // was waiting, takes over.
    let waiter = tokio::spawn({
        let a = a.clone();
        async move { a.lock(LockName::Leader).await.map(|_| ()) }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "a waits while b holds it");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()",
    )
    .execute(a.pool())
    .await
    .expect("terminate b's session");
    tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("a takes over within seconds")
        .expect("join")
        .expect("lock");
    assert!(!taken.alive().await, "b knows it lost the lock");
    drop(taken);
}

#[tokio::test]
async fn postgresql() {
    let Some(admin_url) = std::env::var("ONESTACK_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("ONESTACK_TEST_POSTGRES_URL not set: PostgreSQL back end not exercised");
        return;
    };
    let db = format!("onestack_test_{}", std::process::id());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&admin_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute(&admin)
        .await
        .expect("drop");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("create");
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b);
    let url = format!("{base}/{db}");
    {
        let s = Store::open(&url).await.expect("open");
        assert_eq!(s.backend(), Backend::Postgres);
        scenario(&s).await;
        compute_scenario(&s).await;
        usage_scenario(&s).await;
        token_keys_scenario(&s).await;
        network_scenario(&s).await;
        volume_scenario(&s).await;
        Store::open(&url).await.expect("migrations are idempotent");
        // Controllers starting together migrate one at a time.
        let (x, y) = tokio::join!(Store::open(&url), Store::open(&url));
        x.expect("x");
        y.expect("y");
        locks_across_controllers(&url).await;
        emptied_by_drop_all(s, &url).await;
    }
    sqlx::query(&format!("DROP DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("drop");
}

// ---- transient failures (deadlocks) are retried, whole --------------------------------------

fn retry_host(name: &str) -> HostRecord {
    HostRecord {
        id: format!("id-{name}"),
        num: 0,
        host: name.into(),
        host_ip: "198.18.0.9".into(),
        agent_url: "http://198.18.0.9:8775".into(),
        vcpus: 4,
        memory_mb: 4096,
        local_gb: 100,
        cpu_info: "{}".into(),
        hypervisor_type: "QEMU".into(),
        hypervisor_version: 7002000,
        virt_type: "qemu".into(),
        availability_zone: "nova".into(),
        enabled: true,
        disabled_reason: None,
        forced_down: false,
        last_seen: 1,
        generation: 1,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    }
}

fn retry_instance(id: &str, host: &str) -> InstanceRecord {
    InstanceRecord {
        id: id.into(),
        seq: 0,
        name: id.into(),
        project_id: "p1".into(),
        user_id: "u1".into(),
        image_id: "img".into(),
        flavor_id: "f1".into(),
        flavor_name: "m1.test".into(),
        vcpus: 1,
        memory_mb: 256,
        root_gb: 1,
        ephemeral_gb: 0,
        swap_mb: 0,
        flavor_extra_specs: "{}".into(),
        key_name: None,
        key_data: None,
        user_data: None,
        config_drive: false,
        availability_zone: None,
        host: Some(host.into()),
        node: Some(host.into()),
        reservation_id: "r-1".into(),
        launch_index: 0,
        hostname: id.into(),
        vm_state: "active".into(),
        task_state: None,
        power_state: 1,
        locked: false,
        locked_by: None,
        description: None,
        access_ipv4: String::new(),
        access_ipv6: String::new(),
        security_groups: "[]".into(),
        requested_networks: "null".into(),
        fault_code: None,
        fault_message: None,
        fault_details: None,
        fault_created: None,
        snapshot_image_id: None,
        backup_rotation: None,
        old_flavor: None,
        migration_host: None,
        migration_info: None,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        launched_at: None,
        terminated_at: None,
        deleted: false,
        metadata: Default::default(),
    }
}

const DEADLOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until `n` sessions of this database wait for a lock.
async fn lock_waiters(s: &Store, n: i64) {
    let deadline = tokio::time::Instant::now() + DEADLOCK_WAIT;
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(s.pool())
        .await
        .expect("pg_stat_activity");
        if waiting >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waiting} of {n} sessions wait for a lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A session of its own (not the store's pool), the third party that sets the deadlocks up.
async fn blocker(url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection;
    let mut c = sqlx::AnyConnection::connect(url).await.expect("connect");
    // Its own deadlock checks come late (where allowed: a superuser setting), so that the
    // store's transaction, which waits first, is the one PostgreSQL aborts.
    let _ = sqlx::query("SET deadlock_timeout = '20s'")
        .execute(&mut c)
        .await;
    c
}

/// Two servers move between two hosts in opposite directions at once. Each `update_instance`
/// locks its old host, then its server, then its new host: they deadlock (40P01), PostgreSQL
/// aborts one, and the store runs that one again, whole. Both moves succeed and each host's
/// generation goes up by exactly two (one bump per move, none from the aborted attempt).
async fn deadlocked_instance_updates(s: &Store, url: &str) {
    use sqlx::Connection;
    for h in ["dl-h1", "dl-h2"] {
        s.upsert_host(&retry_host(h)).await.expect("host");
    }
    for (id, host) in [("dl-x", "dl-h1"), ("dl-y", "dl-h2")] {
        s.create_instance(&mut retry_instance(id, host))
            .await
            .expect("instance");
    }
    let generations = || async {
        (
            s.get_host_by_name("dl-h1").await.expect("h1").generation,
            s.get_host_by_name("dl-h2").await.expect("h2").generation,
        )
    };
    let before = generations().await;
    // A third session holds both servers' rows: each move takes its old host's row, then waits.
    let mut third = blocker(url).await;
    sqlx::query("BEGIN")
        .execute(&mut third)
        .await
        .expect("begin");
    sqlx::query("SELECT id FROM instances WHERE id IN ('dl-x', 'dl-y') FOR UPDATE")
        .execute(&mut third)
        .await
        .expect("lock the servers");
    let moving = |id: &'static str, to: &'static str| {
        let s = s.clone();
        tokio::spawn(async move {
            s.update_instance(id, &Expect::Any, &vec![("host", to.into())])
                .await
        })
    };
    let x = moving("dl-x", "dl-h2");
    let y = moving("dl-y", "dl-h1");
    lock_waiters(s, 2).await;
    // Both hold their old host; released, each goes on to the other's: a deadlock.
    sqlx::query("COMMIT")
        .execute(&mut third)
        .await
        .expect("release");
    let (x, y) = tokio::time::timeout(DEADLOCK_WAIT, async { (x.await, y.await) })
        .await
        .expect("the deadlock is resolved");
    assert!(x
        .expect("join")
        .expect("x moved, retried if it was the victim"));
    assert!(y
        .expect("join")
        .expect("y moved, retried if it was the victim"));
    third.close().await.expect("close");
    let x = s.get_instance("dl-x").await.expect("x");
    let y = s.get_instance("dl-y").await.expect("y");
    assert_eq!(x.host.as_deref(), Some("dl-h2"));
    assert_eq!(y.host.as_deref(), Some("dl-h1"));
    assert_eq!(generations().await, (before.0 + 2, before.1 + 2));
}

/// A network write deadlocks with another session on its first attempt (40P01; the write is
/// PostgreSQL's victim, as it waited first): `net_write` runs it again on a new transaction, and
/// the result is that of exactly one write.
async fn deadlocked_network_write(s: &Store, url: &str) {
    use sqlx::Connection;
    use std::sync::atomic::{AtomicU32, Ordering};
    let port = NetResource {
        id: "dl-port".into(),
        kind: "port".into(),
        project_id: "p1".into(),
        network_id: None,
        device_id: None,
        name: "before".into(),
        unique_key: None,
        seq: None,
        body: "{}".into(),
        revision: 1,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    };
    let mut tx = s.net_tx().await.expect("tx");
    tx.insert(&port).await.expect("port");
    tx.commit().await.expect("commit");
    let g0 = s.net_generation().await.expect("generation");

    let mut third = blocker(url).await;
    sqlx::query("BEGIN")
        .execute(&mut third)
        .await
        .expect("begin");
    sqlx::query("UPDATE net_resources SET name = name WHERE id = 'dl-port'")
        .execute(&mut third)
        .await
        .expect("lock the port");
    let attempts = std::sync::Arc::new(AtomicU32::new(0));
    let write = tokio::spawn({
        let (s, attempts) = (s.clone(), attempts.clone());
        async move {
            let attempts = &attempts;
            s.net_write("rename port", |mut tx| async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                // Holds the network generation (its first statement), then waits for the port.
                let mut p = tx.get("dl-port").await?;
                p.name = "after".into();
                p.revision += 1;
                tx.update(&p).await?;
                tx.commit().await
            })
            .await
        }
    });
    lock_waiters(s, 1).await;
    // The other session now wants the generation the write holds: a deadlock.
    tokio::time::timeout(
        DEADLOCK_WAIT,
        sqlx::query("UPDATE net_generation SET value = value WHERE id = 1").execute(&mut third),
    )
    .await
    .expect("the deadlock is resolved")
    .expect("the other session is not the victim");
    sqlx::query("COMMIT")
        .execute(&mut third)
        .await
        .expect("commit");
    third.close().await.expect("close");
    tokio::time::timeout(DEADLOCK_WAIT, write)
        .await
        .expect("the write ends")
        .expect("join")
        .expect("the write succeeds on its second attempt");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let got = s.net_get("dl-port").await.expect("port");
    assert_eq!((got.name.as_str(), got.revision), ("after", 2));
    assert_eq!(s.net_generation().await.expect("generation"), g0 + 1);
}

#[tokio::test]
async fn postgresql_deadlocks_are_retried() {
    let Some(admin_url) = std::env::var("ONESTACK_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("ONESTACK_TEST_POSTGRES_URL not set: deadlock retries not exercised");
        return;
    };
    let db = format!("onestack_retry_{}", std::process::id());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&admin_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute(&admin)
        .await
        .expect("drop");
    let url = create_postgres_database(&admin_url, &db)
        .await
        .expect("create");
    let s = Store::open(&url).await.expect("open");
    deadlocked_instance_updates(&s, &url).await;
    deadlocked_network_write(&s, &url).await;
    s.pool().close().await;
    // A connection the pool was still giving back may linger: end it, then drop.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db)
    .execute(&admin)
    .await
    .expect("end the test's sessions");
    sqlx::query(&format!("DROP DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("drop");
}
