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

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .expect("open");
    assert_eq!(s.backend(), Backend::Sqlite);
    scenario(&s).await;
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
        Store::open(&url).await.expect("migrations are idempotent");
        s.pool().close().await;
    }
    sqlx::query(&format!("DROP DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("drop");
}
