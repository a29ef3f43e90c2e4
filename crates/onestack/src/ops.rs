//! The operator commands: `up`, `down`, `status`, `openrc`, `rotate-keys`.

use crate::config::Config;
use crate::paths::{self, DataDir, Login};
use crate::{serve, supervisor, sys};
use anyhow::{bail, Context, Result};
use onestack_core::identity::bootstrap::{self, BootstrapParams, ServiceEndpoints};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Loads the configuration: `--config FILE` (copied into the data directory so every later
/// command and the supervisor use the same), else the data directory's copy, else defaults.
pub fn load_config(dd: &DataDir, explicit: Option<&Path>) -> Result<Config> {
    Ok(load_config_tracked(dd, explicit)?.0)
}

/// As `load_config`, also telling whether the data directory's copy changed.
fn load_config_tracked(dd: &DataDir, explicit: Option<&Path>) -> Result<(Config, bool)> {
    match explicit {
        Some(p) => {
            let mut cfg = Config::load(p)?;
            let mut text = std::fs::read_to_string(p)?;
            // The store is part of the cloud: a file that does not name one keeps the one the
            // data directory records (`up --database`, `db migrate-from-sqlite`).
            let recorded = dd
                .config()
                .exists()
                .then(|| Config::load(&dd.config()).ok())
                .flatten()
                .map(|c| c.database.url)
                .unwrap_or_default();
            if cfg.database.url.is_empty() && !recorded.is_empty() {
                text = crate::db::with_database_url(&text, &recorded)?;
                cfg.database.url = recorded;
            }
            let changed = paths::write_private(&dd.config(), &text)?;
            Ok((cfg, changed))
        }
        None if dd.config().exists() => Ok((Config::load(&dd.config())?, false)),
        None => Ok((Config::default(), false)),
    }
}

/// Every service OneStack serves today, with its catalog URLs.
fn services(cfg: &Config) -> Vec<ServiceEndpoints> {
    let endpoint =
        |service_type: &str, name: &str, description: &str, url: String| ServiceEndpoints {
            service_type: service_type.into(),
            name: name.into(),
            description: description.into(),
            public_url: url.clone(),
            internal_url: url.clone(),
            admin_url: url,
        };
    vec![
        endpoint(
            "identity",
            "keystone",
            "OneStack Identity Service",
            cfg.identity_url() + "/v3",
        ),
        // Unversioned: clients append /v2 themselves (gophercloud does).
        endpoint("image", "glance", "OneStack Image Service", cfg.image_url()),
        endpoint(
            "compute",
            "nova",
            "OneStack Compute Service",
            cfg.compute_url() + "/v2.1",
        ),
        // Unversioned: openstacksdk and gophercloud append /v2.0.
        endpoint(
            "network",
            "neutron",
            "OneStack Network Service",
            cfg.network_url(),
        ),
        // Cinder registers both types; clients look for either.
        endpoint(
            "block-storage",
            "cinder",
            "OneStack Block Storage Service",
            cfg.volume_url() + "/v3/$(project_id)s",
        ),
        endpoint(
            "volumev3",
            "cinderv3",
            "OneStack Block Storage Service",
            cfg.volume_url() + "/v3/$(project_id)s",
        ),
    ]
}

/// Builds (or finds cached) onestack-tiny and registers it as a public image. A failure is
/// reported and `up` goes on: the cloud works without it, and the next `up` retries.
async fn register_default_image(
    store: &onestack_store::Store,
    cfg: &Config,
    dd: &DataDir,
    t0: Instant,
) {
    let result: Result<Option<String>> = async {
        let cache = onestack_image::default_cache_dir();
        // Built from public packages into a shared cache: not under the private umask.
        let built = tokio::task::spawn_blocking(move || {
            crate::sys::with_umask(0o022, || onestack_image::build_default(&cache))
        })
        .await??;
        let admin = store
            .find_project(onestack_core::identity::DEFAULT_DOMAIN_ID, "admin")
            .await
            .context("no admin project")?;
        let images =
            onestack_core::image::ImageService::new(store.clone(), dd.images(), cfg.image.size_cap)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        let recipe = built
            .properties
            .iter()
            .find(|(k, _)| k == "onestack_recipe")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let props: Vec<(String, String)> = built
            .properties
            .iter()
            .filter(|(k, _)| k != "onestack_recipe")
            .cloned()
            .collect();
        let registered = images
            .register_file(
                &admin.id,
                &onestack_core::image::SystemImage {
                    name: built.name,
                    file: &built.path,
                    disk_format: built.disk_format,
                    container_format: built.container_format,
                    properties: &props,
                    marker: ("onestack_recipe", &recipe),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(registered.map(|i| i.id))
    }
    .await;
    match result {
        Ok(Some(id)) => step(
            t0,
            &format!("registered image {} ({id})", onestack_image::IMAGE_NAME),
        ),
        Ok(None) => step(
            t0,
            &format!("image {} already registered", onestack_image::IMAGE_NAME),
        ),
        Err(e) => eprintln!(
            "warning: the default image {} is not available: {e:#}",
            onestack_image::IMAGE_NAME
        ),
    }
}

/// `public`, `private`, `router1` and the demo project's default group rules (once).
async fn bootstrap_networks(
    store: &onestack_store::Store,
    cfg: &Config,
    t0: Instant,
) -> Result<()> {
    let domain = onestack_core::identity::DEFAULT_DOMAIN_ID;
    let admin = store
        .find_project(domain, "admin")
        .await
        .context("no admin project")?;
    let demo = store.find_project(domain, "demo").await.ok();
    let net =
        onestack_core::network::NetworkService::new(store.clone(), serve::network_config(cfg));
    let created = net
        .bootstrap(&onestack_core::network::bootstrap::BootstrapNetworks {
            admin_project: &admin.id,
            demo_project: demo.as_ref().map(|p| p.id.as_str()),
            fixed_range: &cfg.network.fixed_range,
            floating_range: &cfg.network.floating_range,
            dns_nameservers: &cfg.network.dns_nameservers,
        })
        .await
        .map_err(|e| anyhow::anyhow!("network bootstrap failed: {e}"))?;
    if created.is_empty() {
        step(t0, "network bootstrap: everything already in place");
    } else {
        step(t0, &format!("network bootstrap: {}", created.join(", ")));
    }
    Ok(())
}

async fn healthy(cfg: &Config) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return false;
    };
    let url = format!("http://{}:{}/v3", cfg.public_host(), cfg.api.identity_port);
    matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
}

pub fn step(t0: Instant, msg: &str) {
    println!("[{:>5.1}s] {msg}", t0.elapsed().as_secs_f64());
}

pub async fn up(
    dd: DataDir,
    config: Option<&Path>,
    database: Option<&str>,
    foreground: bool,
    no_demo: bool,
) -> Result<()> {
    let t0 = Instant::now();
    let (host, blockers) = crate::doctor::host_summary(&dd);
    if let Some(b) = blockers.first() {
        bail!("{b}; nothing was changed");
    }
    dd.create()?;
    let (mut cfg, mut config_changed) = load_config_tracked(&dd, config)?;
    // An install from before secrets and state were root's alone (or one changed by hand).
    match crate::perms::fix_install(&dd, &cfg) {
        Ok(Some(line)) => step(t0, &line),
        Ok(None) => {}
        Err(e) => eprintln!("warning: cannot set the data directory's modes: {e:#}"),
    }
    if let Some(url) = database {
        if crate::db::choose_for_up(&dd, &cfg, url)? {
            cfg = load_config(&dd, None)?;
            config_changed = true;
            step(t0, &format!("state store: {}", crate::db::redact(url)));
        }
    }
    if cfg.is_compute_node() {
        // A joined compute host: no store, no bootstrap, only its agent (what boot runs).
        return crate::node::start(&dd, &cfg, t0).await;
    }
    if cfg.database.joined {
        // Another controller of a cloud bootstrapped elsewhere: only its services.
        return start_joined_controller(&dd, &cfg, t0).await;
    }
    if !foreground {
        if let Some(pid) = supervisor::running_pid(&dd, "supervisor") {
            if config_changed {
                println!(
                    "The configuration changed; the running services still use the old one. \
                     Apply it with `onestack down` then `onestack up`."
                );
            }
            let health = if healthy(&cfg).await {
                "healthy"
            } else {
                "NOT answering"
            };
            println!(
                "OneStack is already running from {} (supervisor pid {pid}); nothing changed.",
                dd.root.display()
            );
            println!("Identity API: {}/v3 ({health})", cfg.identity_url());
            print_login(&dd);
            print_join(&cfg, &dd, None);
            return Ok(());
        }
    }
    // A port another program holds would only show as "services did not answer" much later.
    require_free_ports(&cfg)?;
    crate::hostnet::check(&cfg).context("host networking; nothing was changed")?;
    step(t0, &host);
    step(t0, &format!("data directory {}", dd.root.display()));
    ensure_packages(&dd, t0)?;
    let admin_password = if cfg.identity.admin_password.is_empty() {
        dd.secret("admin-password")?
    } else {
        cfg.identity.admin_password.clone()
    };
    let demo_password = dd.secret("demo-password")?;
    // Shared by the controller and its agents; made here so both read the same one.
    dd.secret("agent-token")?;
    let store = onestack_store::Store::open(&serve::database_url(&cfg, &dd))
        .await
        .context("cannot open the state store")?;
    step(t0, &format!("state store ready ({:?})", store.backend()));
    // The token keys, in the store for every controller (an older key directory imported).
    onestack_core::token::ensure_in_store(&store, &dd.fernet_keys())
        .await
        .map_err(|e| anyhow::anyhow!("token keys: {e}"))?;
    let report = bootstrap::run(
        &store,
        &BootstrapParams {
            admin_password: admin_password.clone(),
            demo_password: demo_password.clone(),
            region: cfg.api.region.clone(),
            services: services(&cfg),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("bootstrap failed: {e}"))?;
    if cfg.image.default_image {
        register_default_image(&store, &cfg, &dd, t0).await;
    }
    // The demo project's network is part of the cloud (FlatDHCP in the original); --no-demo
    // skips only the demo server.
    bootstrap_networks(&store, &cfg, t0).await?;
    let join_cmd = crate::node::join_command(&store, &cfg, crate::node::JOIN_TOKEN_TTL).await;
    drop(store);
    if report.created.is_empty() {
        step(t0, "identity bootstrap: everything already in place");
    } else {
        step(
            t0,
            &format!("identity bootstrap: {}", report.created.join(", ")),
        );
    }
    let auth_url = cfg.identity_url() + "/v3";
    write_client_files(&dd, &cfg, &admin_password, &demo_password)?;
    step(t0, "wrote clouds.yaml, openrc and openrc-demo");
    if no_demo {
        step(t0, "demo server skipped (--no-demo)");
    }
    if foreground {
        step(
            t0,
            &format!("serving in the foreground; identity API at {auth_url}"),
        );
        return serve::run(cfg, dd).await;
    }

    start_supervisor(&dd)?;
    wait_until_serving(&dd, &cfg, t0).await?;
    let ssh = if no_demo {
        None
    } else {
        match crate::demo::run(&dd, &cfg, t0).await {
            Ok(cmd) => Some(cmd),
            Err(e) => bail!(
                "step `demo server` failed: {e:#}\n  the cloud itself is up; see {} and {} \
                 (retry with `onestack demo`, or skip with `up --no-demo`)",
                dd.log_file("api").display(),
                dd.log_file("compute").display()
            ),
        }
    };
    println!();
    println!("OneStack is up.");
    println!("  Dashboard:     {}", cfg.dashboard_url());
    println!("  Identity API:  {auth_url}");
    print_login(&dd);
    if let Some(cmd) = ssh {
        println!("  Demo server:   {cmd}");
    }
    print_join(&cfg, &dd, join_cmd.ok());
    Ok(())
}

/// `clouds.yaml`, `openrc` and `openrc-demo` for this controller's identity API.
pub fn write_client_files(
    dd: &DataDir,
    cfg: &Config,
    admin_password: &str,
    demo_password: &str,
) -> Result<()> {
    let auth_url = cfg.identity_url() + "/v3";
    let region = &cfg.api.region;
    let admin = Login {
        cloud: "onestack-admin",
        user: "admin",
        project: "admin",
        password: admin_password,
    };
    let demo = Login {
        cloud: "onestack",
        user: "demo",
        project: "demo",
        password: demo_password,
    };
    let clouds = paths::clouds_yaml(&auth_url, region, &[&demo, &admin]);
    paths::write_private(&dd.root.join("clouds.yaml"), &clouds)?;
    if dd.root == Path::new(paths::DEFAULT_DATA_DIR) {
        install_system_clouds_yaml(&clouds);
    }
    paths::write_private(
        &dd.root.join("openrc"),
        &paths::openrc(&auth_url, region, &admin),
    )?;
    paths::write_private(
        &dd.root.join("openrc-demo"),
        &paths::openrc(&auth_url, region, &demo),
    )?;
    Ok(())
}

/// Refuses when another program holds one of the ports the services need.
pub fn require_free_ports(cfg: &Config) -> Result<()> {
    for (name, port) in crate::doctor::ports(cfg) {
        if !crate::doctor::port_free(cfg, port) {
            bail!(
                "{name} {port} on {} is in use by another program; no service was started \
                 (choose another in the [api]/[compute] config, or stop that program)",
                cfg.api.listen
            );
        }
    }
    Ok(())
}

/// Waits (up to 60 s) until the APIs answer, then until this host's compute agent is up.
async fn wait_until_serving(dd: &DataDir, cfg: &Config, t0: Instant) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !healthy(cfg).await {
        if Instant::now() > deadline {
            bail!(
                "the services did not answer within 60 s; see {} and {}",
                dd.log_file("supervisor").display(),
                dd.log_file("api").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step(t0, "services answer");
    let host = crate::agent::local_host(cfg);
    crate::node::wait_until_up(dd, cfg, &host).await?;
    step(t0, &format!("compute host {host} is up"));
    Ok(())
}

/// Starts the services of a controller that joined a cloud another controller bootstrapped
/// (or finds them running), and waits until its APIs answer and its compute host is up.
pub async fn start_joined_controller(dd: &DataDir, cfg: &Config, t0: Instant) -> Result<()> {
    if let Some(pid) = supervisor::running_pid(dd, "supervisor") {
        step(
            t0,
            &format!("controller already running (supervisor pid {pid})"),
        );
    } else {
        require_free_ports(cfg)?;
        crate::hostnet::check(cfg).context("host networking; nothing was changed")?;
        start_supervisor(dd)?;
        step(t0, "controller services started");
    }
    wait_until_serving(dd, cfg, t0).await?;
    println!();
    println!(
        "This host is a controller of the cloud in {}.",
        crate::db::redact(&cfg.database.url)
    );
    println!("  Dashboard:     {}", cfg.dashboard_url());
    println!("  Identity API:  {}/v3", cfg.identity_url());
    print_login(dd);
    Ok(())
}

/// Installs the host packages OneStack needs that are missing (apt, as root), recording them for
/// `uninstall --purge-packages`; elsewhere says what is missing and goes on.
pub fn ensure_packages(dd: &DataDir, t0: Instant) -> Result<()> {
    use crate::packages;
    let missing = packages::missing(|p| packages::which(p).is_some());
    if missing.is_empty() {
        step(t0, "host packages: all present");
        return Ok(());
    }
    let list = missing.join(" ");
    if !nix::unistd::geteuid().is_root() || !packages::Apt::available() {
        println!(
            "  warning: missing host packages: {list} (not root or no apt-get: install them \
             yourself; servers need them)"
        );
        return Ok(());
    }
    step(t0, &format!("installing host packages: {list}"));
    dd.create()?;
    let installed = packages::install_and_record(&packages::Apt, &dd.root, &missing)
        .map_err(|e| anyhow::anyhow!("step `host packages` failed: {e:#}"))?;
    step(
        t0,
        &format!(
            "installed {} (recorded in {})",
            if installed.is_empty() {
                "nothing new".to_string()
            } else {
                installed.join(" ")
            },
            crate::packages::record_file(&dd.root).display()
        ),
    );
    Ok(())
}

/// Starts the supervisor of `dd` in the background (its own process group: a Ctrl-C in this
/// terminal must not stop the cloud).
pub fn start_supervisor(dd: &DataDir) -> Result<()> {
    // Where systemd is init, through a unit, so the cloud also starts at boot.
    if crate::systemd::is_init() {
        let unit = crate::systemd::install_and_start(dd)?;
        println!("  systemd unit {unit} enabled and started");
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dd.log_file("supervisor"))?;
    std::process::Command::new(exe)
        .arg("supervise")
        .arg("--data-dir")
        .arg(&dd.root)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start the supervisor")?;
    Ok(())
}

/// `onestack demo`: boots (or finds) the demo server and prints how to reach it.
pub async fn demo(dd: DataDir) -> Result<()> {
    let t0 = Instant::now();
    let cfg = load_config(&dd, None)?;
    if supervisor::running_pid(&dd, "supervisor").is_none() && !healthy(&cfg).await {
        bail!(
            "OneStack is not running from {}; start it with `onestack up`",
            dd.root.display()
        );
    }
    let cmd = crate::demo::run(&dd, &cfg, t0).await?;
    println!();
    println!("Demo server ready:");
    println!("  {cmd}");
    Ok(())
}

/// The system cloud's credentials in /etc/openstack/clouds.yaml, where the openstack CLI looks
/// without any environment, so `openstack --os-cloud onestack-admin …` works at once. A file
/// OneStack did not write is left alone.
fn install_system_clouds_yaml(content: &str) {
    let path = Path::new("/etc/openstack/clouds.yaml");
    let ours = std::fs::read_to_string(path).map_or(true, |t| t.starts_with(paths::CLOUDS_MARKER));
    if !ours {
        println!(
            "  note: {} exists and was not written by OneStack; left unchanged",
            path.display()
        );
        return;
    }
    let result = std::fs::create_dir_all("/etc/openstack")
        .map_err(anyhow::Error::from)
        .and_then(|_| paths::write_private(path, content));
    if let Err(e) = result {
        println!("  note: could not write {}: {e:#}", path.display());
    }
}

/// How to add a compute host: the join command (token valid an hour, once), or how to get one.
fn print_join(cfg: &Config, dd: &DataDir, cmd: Option<String>) {
    match cmd {
        Some(cmd) => {
            println!("  Compute host:  on another host run (token valid 1 h, once):");
            println!("                 {cmd}");
        }
        None => println!(
            "  Compute host:  `onestack join-token --data-dir {}` prints a join command",
            dd.root.display()
        ),
    }
    if !crate::node::reachable_by_others(cfg) {
        println!(
            "                 (note: the controller's address {} is local to this host; set \
             api.public_host to one other hosts reach)",
            cfg.public_host()
        );
    }
}

fn print_login(dd: &DataDir) {
    let d = dd.root.display();
    println!(
        "  Credentials:   {d}/clouds.yaml (clouds 'onestack' = demo, 'onestack-admin' = admin)"
    );
    println!("                 {d}/openrc (admin), {d}/openrc-demo (demo)");
    println!("  Try:           export OS_CLIENT_CONFIG_FILE={d}/clouds.yaml");
    println!("                 openstack --os-cloud onestack-admin token issue");
}

pub async fn down(dd: DataDir) -> Result<()> {
    let Some(pid) = supervisor::running_pid(&dd, "supervisor") else {
        println!("OneStack is not running from {}.", dd.root.display());
        return Ok(());
    };
    if !crate::systemd::stop(&dd)? {
        sys::signal(pid, sys::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while supervisor::running_pid(&dd, "supervisor").is_some() {
        if Instant::now() > deadline {
            bail!("the supervisor (pid {pid}) did not stop within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("OneStack stopped; all data kept in {}.", dd.root.display());
    Ok(())
}

/// Prints what runs and whether it answers; exits non-zero unless everything is healthy.
/// Every service runs and the APIs answer (no output).
pub async fn status_quiet(dd: &DataDir, cfg: &Config) -> bool {
    supervisor::services_of(dd)
        .iter()
        .all(|(name, _)| supervisor::running_pid(dd, name).is_some())
        && healthy(cfg).await
}

pub async fn status(dd: DataDir) -> Result<bool> {
    let cfg = load_config(&dd, None)?;
    println!("data directory: {}", dd.root.display());
    let sup = supervisor::running_pid(&dd, "supervisor");
    let mut ok = sup.is_some();
    match sup {
        Some(pid) => println!("supervisor      running   pid {pid}"),
        None => println!("supervisor      stopped"),
    }
    for (name, _) in supervisor::services_of(&dd) {
        match supervisor::running_pid(&dd, name) {
            Some(pid) => println!(
                "{name:<15} running   pid {pid}   log {}",
                dd.log_file(name).display()
            ),
            None => {
                ok = false;
                println!(
                    "{name:<15} stopped             log {}",
                    dd.log_file(name).display()
                );
            }
        }
    }
    // Who may read what: secrets and state root's alone, the helpers' files reachable by them.
    for c in crate::perms::checks(&dd, &cfg) {
        let tag = match c.severity {
            crate::perms::Severity::Ok => "",
            crate::perms::Severity::Warn => "warning: ",
            crate::perms::Severity::Fail => "PROBLEM: ",
        };
        ok &= c.severity != crate::perms::Severity::Fail;
        println!("{:<15} {tag}{}", c.what, c.detail);
    }
    if cfg.is_compute_node() {
        match crate::node::host_state(&dd, &cfg, &cfg.compute.host).await {
            Ok(h) => {
                let state = h["state"].as_str().unwrap_or("unknown");
                ok &= state == "up";
                println!(
                    "controller      {}   this host ({}) is {state}, {} server(s)",
                    cfg.compute.controller_url, cfg.compute.host, h["instances"]
                );
            }
            Err(e) => {
                ok = false;
                println!("controller      {}   {e:#}", cfg.compute.controller_url);
            }
        }
    } else {
        let answers = healthy(&cfg).await;
        ok &= answers;
        println!(
            "identity API    {}/v3   {}",
            cfg.identity_url(),
            if answers { "healthy" } else { "not answering" }
        );
        ok &= print_hosts(&cfg, &dd).await;
    }
    println!(
        "overall         {}",
        if ok { "healthy" } else { "NOT healthy" }
    );
    Ok(ok)
}

/// The compute hosts as the store records them; false when an enabled host is down.
async fn print_hosts(cfg: &Config, dd: &DataDir) -> bool {
    let Ok(store) = onestack_store::Store::open(&serve::database_url(cfg, dd)).await else {
        println!("compute hosts   (state store not readable)");
        return false;
    };
    let hosts = store.list_hosts().await.unwrap_or_default();
    let usage = store.host_usage().await.unwrap_or_default();
    let controllers = store.list_controllers().await.unwrap_or_default();
    store.pool().close().await;
    let now = onestack_core::now_micros();
    for c in &controllers {
        let up = onestack_core::cluster::is_live(c, now);
        println!(
            "controller      {:<15} {:<28} {:<5} {}",
            c.name,
            c.endpoint("compute").unwrap_or_default(),
            if up { "up" } else { "DOWN" },
            if c.leader_since_us.is_some() && up {
                "leader"
            } else {
                ""
            }
        );
    }
    let down_after = i64::try_from(cfg.compute.service_down_time)
        .unwrap_or(i64::MAX / 2_000_000)
        .saturating_mul(1_000_000);
    let mut ok = true;
    if hosts.is_empty() {
        println!("compute hosts   none registered");
    }
    for h in &hosts {
        let up = !h.forced_down && now - h.last_seen <= down_after;
        ok &= up || !h.enabled;
        println!(
            "compute host    {:<15} {:<15} {:<5} {:<9} {} server(s)",
            h.host,
            h.host_ip,
            if up { "up" } else { "DOWN" },
            if h.enabled { "enabled" } else { "disabled" },
            usage.get(&h.host).map_or(0, |u| u.instances)
        );
    }
    ok
}

pub async fn rotate_keys(dd: DataDir) -> Result<()> {
    let cfg = load_config(&dd, None)?;
    if cfg.is_compute_node() {
        bail!("the token keys are the controllers'; rotate them there");
    }
    let store = onestack_store::Store::open(&serve::database_url(&cfg, &dd))
        .await
        .context("cannot open the state store")?;
    onestack_core::token::ensure_in_store(&store, &dd.fernet_keys())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    onestack_core::token::rotate_in_store(&store)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.pool().close().await;
    println!(
        "Rotated the token keys in the state store; every controller loads them within 10 s \
         (tokens stay valid through one rotation)."
    );
    Ok(())
}
