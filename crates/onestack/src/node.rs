//! Compute nodes (addComputeNode.sh): `onestack join` turns this host into a compute node of a
//! controller elsewhere, `onestack leave` takes it out again, and `onestack join-token` mints the
//! one-time token a join needs. A node runs only its compute agent; the agent reaches the
//! controller's internal API with the credentials the join token bought.

use crate::config::Config;
use crate::paths::{self, DataDir};
use crate::{ops, supervisor};
use anyhow::{bail, Context, Result};
use onestack_core::compute::join::JoinRole;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Header of the internal API's shared secret (the agent's own client sends the same).
const AGENT_TOKEN_HEADER: &str = "x-onestack-agent-token";

/// Lifetime of a join token `up` prints.
pub const JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_default()
}

/// The message of an API error body (`{"computeFault": {"message": …}}` and the like), or the
/// body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.as_object()?
                .values()
                .find_map(|inner| inner.get("message")?.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| body.trim().chars().take(300).collect())
}

/// The local address this host uses toward `url`'s host: a connected UDP socket sends nothing.
fn local_address_toward(url: &str) -> Result<String> {
    let u = reqwest::Url::parse(url).with_context(|| format!("invalid controller URL {url:?}"))?;
    let host = u
        .host_str()
        .with_context(|| format!("no host in the controller URL {url:?}"))?;
    let port = u.port_or_known_default().unwrap_or(80);
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    sock.connect((host, port))
        .with_context(|| format!("no route to the controller {host}"))?;
    Ok(sock.local_addr()?.ip().to_string())
}

pub struct JoinArgs<'a> {
    pub controller: &'a str,
    pub token: &'a str,
    pub host: Option<&'a str>,
    pub my_ip: Option<&'a str>,
    pub config: Option<&'a Path>,
}

/// Who is joining what: the controller's URL, this host's settings, name and address.
struct Joiner {
    controller: String,
    cfg: Config,
    host: String,
    my_ip: String,
}

impl Joiner {
    fn from_args(a: &JoinArgs<'_>) -> Result<Joiner> {
        let controller = a.controller.trim_end_matches('/').to_string();
        let cfg = match a.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let host = match a.host {
            Some(h) => h.to_string(),
            None if !cfg.compute.host.is_empty() => cfg.compute.host.clone(),
            None => onestack_agent::host::hostname(),
        };
        crate::hostnet::check(&cfg).context("host networking; nothing was changed")?;
        let my_ip = match a.my_ip {
            Some(ip) => ip.to_string(),
            None if !cfg.compute.my_ip.is_empty() || !cfg.network.flat_interface.is_empty() => {
                cfg.my_ip()
            }
            None => local_address_toward(&controller)?,
        };
        Ok(Joiner {
            controller,
            cfg,
            host,
            my_ip,
        })
    }
}

/// Trades a join token at `controller` for what a host of `role` needs.
async fn redeem(controller: &str, token: &str, host: &str, role: JoinRole) -> Result<Value> {
    let resp = http()
        .post(format!("{controller}/internal/v1/join"))
        .json(&serde_json::json!({"token": token, "host": host, "role": role.as_str()}))
        .send()
        .await
        .with_context(|| format!("cannot reach the controller at {controller}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the controller refused the join ({status}): {}",
            error_message(&body)
        );
    }
    serde_json::from_str(&body).context("unexpected join answer")
}

/// `onestack join`: trades the token for the agent credentials, writes this node's
/// configuration, starts its agent and waits until the controller reports the host up.
pub async fn join(dd: DataDir, a: JoinArgs<'_>) -> Result<()> {
    let t0 = Instant::now();
    if dd.config().exists() {
        let existing = Config::load(&dd.config())?;
        if existing.is_compute_node() {
            bail!(
                "{} is already a compute node of {}; run `onestack up --data-dir {}` to start it, \
                 or `onestack leave` first",
                dd.root.display(),
                existing.compute.controller_url,
                dd.root.display()
            );
        }
        if dd.database().exists() {
            bail!(
                "{} holds a controller's data; join from an empty data directory",
                dd.root.display()
            );
        }
    }
    let Joiner {
        controller,
        mut cfg,
        host,
        my_ip,
    } = Joiner::from_args(&a)?;
    ops::step(
        t0,
        &format!("joining {controller} as compute host {host} ({my_ip})"),
    );
    for (name, port) in [("compute.agent_port", cfg.compute.agent_port)] {
        if !crate::doctor::port_free(&cfg, port) {
            bail!(
                "{name} {port} is in use by another program; nothing was changed (choose \
                 another in the [compute] section of --config)"
            );
        }
    }
    ops::ensure_packages(&dd, t0)?;
    let granted = redeem(&controller, a.token, &host, JoinRole::Compute).await?;
    let agent_token = granted["agent_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .context("the controller sent no agent credentials")?;
    cfg.compute.controller_url = controller.clone();
    cfg.compute.host = host.clone();
    cfg.compute.my_ip = my_ip;
    if let Some(s) = granted["service_down_time"].as_u64() {
        cfg.compute.service_down_time = s;
    }
    if let Some(p) = granted["namespace_prefix"].as_str() {
        cfg.network.namespace_prefix = p.to_string();
    }
    // DHCP, metadata and routers stay with the controller.
    cfg.network.network_node = false;
    cfg.validate()?;
    dd.create()?;
    paths::write_private(&dd.secrets().join("agent-token"), agent_token)?;
    paths::write_private(
        &dd.config(),
        &format!(
            "# Written by onestack join: this host is a compute node of {controller}.\n{}",
            toml::to_string(&cfg).context("cannot write the configuration")?
        ),
    )?;
    ops::step(
        t0,
        &format!("configuration written to {}", dd.config().display()),
    );
    start(&dd, &cfg, t0).await?;
    println!();
    println!("This host is a compute node of {controller}.");
    println!(
        "  Check on the controller: openstack compute service list; openstack hypervisor list"
    );
    println!(
        "  Leave the cloud:         onestack leave --data-dir {}",
        dd.root.display()
    );
    Ok(())
}

/// Starts a node's agent (or finds it running) and waits until the controller reports it up.
pub async fn start(dd: &DataDir, cfg: &Config, t0: Instant) -> Result<()> {
    if let Some(pid) = supervisor::running_pid(dd, "supervisor") {
        ops::step(
            t0,
            &format!("compute agent already running (supervisor pid {pid})"),
        );
    } else {
        dd.create()?;
        ops::start_supervisor(dd)?;
        ops::step(t0, "compute agent started");
    }
    wait_until_up(dd, cfg, &cfg.compute.host).await?;
    ops::step(
        t0,
        &format!(
            "compute host {} is up at the controller {}",
            cfg.compute.host, cfg.compute.controller_url
        ),
    );
    Ok(())
}

/// Waits (up to 60 s) until the controller reports `host`'s agent registered and up: a server
/// created before that finds no valid host.
pub async fn wait_until_up(dd: &DataDir, cfg: &Config, host: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match host_state(dd, cfg, host).await {
            Ok(h) if h["state"] == "up" => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(h) => bail!(
                "the controller reports compute host {host} {} after 60 s; see {}",
                h["state"].as_str().unwrap_or("unknown"),
                dd.log_file("compute").display()
            ),
            Err(e) => bail!(
                "the compute agent of {host} did not register within 60 s ({e:#}); see {}",
                dd.log_file("compute").display()
            ),
        }
    }
}

/// Sends `make(base)` to each controller in turn until one can be reached.
async fn to_a_controller(
    cfg: &Config,
    make: impl Fn(&str) -> reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let urls = if cfg.is_compute_node() {
        cfg.controller_urls()
    } else {
        vec![cfg.controller_url()]
    };
    let mut last = None;
    for u in &urls {
        match make(u).send().await {
            Err(e) if e.is_connect() => last = Some(e),
            other => return other,
        }
    }
    match last {
        Some(e) => Err(e),
        None => make("").send().await,
    }
}

/// What the controller knows of this node (`GET /internal/v1/hosts/{host}`).
pub async fn host_state(dd: &DataDir, cfg: &Config, host: &str) -> Result<Value> {
    let token = std::fs::read_to_string(dd.secrets().join("agent-token"))
        .context("no agent credentials in the data directory")?;
    let client = http();
    let resp = to_a_controller(cfg, |base| {
        client
            .get(format!("{base}/internal/v1/hosts/{host}"))
            .header(AGENT_TOKEN_HEADER, token.trim())
    })
    .await
    .context("cannot reach the controller")?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("controller answered {status}: {}", error_message(&body));
    }
    Ok(serde_json::from_str(&body)?)
}

/// `onestack leave`: stops the agent, takes the host out of the controller (refused while it
/// still holds servers, and then the agent is started again), removes its VMs' leftovers and
/// host networking, and deletes the data directory.
pub async fn leave(dd: DataDir, yes: bool) -> Result<()> {
    let cfg = ops::load_config(&dd, None)?;
    if !cfg.is_compute_node() {
        bail!(
            "{} is not a compute node (it has no controller); use `onestack uninstall` for a \
             controller",
            dd.root.display()
        );
    }
    crate::teardown::confirm(
        &format!(
            "This takes compute host {} out of the cloud at {} and removes OneStack's data in {}.",
            cfg.compute.host,
            cfg.compute.controller_url,
            dd.root.display()
        ),
        yes,
    )?;
    let t0 = Instant::now();
    let token = dd.secret("agent-token")?;
    // The agent would register the host again if it ran on after the delete.
    let was_running = supervisor::running_pid(&dd, "supervisor").is_some();
    ops::down(dd.clone()).await?;
    let client = http();
    let resp = to_a_controller(&cfg, |base| {
        client
            .delete(format!("{base}/internal/v1/hosts/{}", cfg.compute.host))
            .header(AGENT_TOKEN_HEADER, &token)
    })
    .await;
    match resp {
        Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {
            ops::step(
                t0,
                &format!(
                    "compute host {} removed from the controller",
                    cfg.compute.host
                ),
            );
        }
        Ok(r) => {
            let status = r.status();
            let msg = error_message(&r.text().await.unwrap_or_default());
            if was_running {
                ops::start_supervisor(&dd)?;
            }
            bail!("the controller refused ({status}): {msg}; this host stays in the cloud");
        }
        Err(e) => {
            if was_running {
                ops::start_supervisor(&dd)?;
            }
            bail!("cannot reach the controller ({e}); this host stays in the cloud");
        }
    }
    crate::teardown::remove_node(&dd, &cfg, t0).await?;
    crate::systemd::remove(&dd)?;
    std::fs::remove_dir_all(&dd.root).with_context(|| format!("removing {}", dd.root.display()))?;
    ops::step(t0, &format!("removed {}", dd.root.display()));
    println!("This host has left the cloud.");
    Ok(())
}

/// `onestack join-token`: a fresh one-time token and the command that uses it.
pub async fn join_token(dd: DataDir, ttl: Duration, role: JoinRole) -> Result<()> {
    let cfg = ops::load_config(&dd, None)?;
    if cfg.is_compute_node() {
        bail!(
            "run this on the controller ({})",
            cfg.compute.controller_url
        );
    }
    let url = crate::serve::database_url(&cfg, &dd);
    if role == JoinRole::Controller && url.starts_with("sqlite:") {
        bail!(
            "this cloud keeps its state in SQLite on this host, so it cannot have another \
             controller; move it to PostgreSQL first (onestack db migrate-from-sqlite --to \
             postgresql://…)"
        );
    }
    let store = onestack_store::Store::open(&url)
        .await
        .context("cannot open the state store (run `onestack up` first)")?;
    let cmd = join_command_for(&store, &cfg, ttl, role).await?;
    store.pool().close().await;
    println!("{cmd}");
    Ok(())
}

/// `onestack join --controller … --token …` with a fresh compute-node token.
pub async fn join_command(
    store: &onestack_store::Store,
    cfg: &Config,
    ttl: Duration,
) -> Result<String> {
    join_command_for(store, cfg, ttl, JoinRole::Compute).await
}

async fn join_command_for(
    store: &onestack_store::Store,
    cfg: &Config,
    ttl: Duration,
    role: JoinRole,
) -> Result<String> {
    let token = onestack_core::compute::join::issue_for(store, ttl, role)
        .await
        .map_err(|e| anyhow::anyhow!("cannot mint a join token: {e}"))?;
    let role_arg = match role {
        JoinRole::Compute => "",
        JoinRole::Controller => " --role controller",
    };
    Ok(format!(
        "onestack join{role_arg} --controller {} --token {token}",
        cfg.compute_url()
    ))
}

/// `onestack join --role controller`: trades the token for the cloud's shared secret, its
/// database and passwords, checks the database answers from here and holds the cloud, writes
/// this controller's configuration and starts its services (APIs, dashboard, and a compute
/// agent: a controller is a compute host too, as the first one is). DHCP, metadata and routers
/// stay with the first controller (the network node).
pub async fn join_controller(dd: DataDir, a: JoinArgs<'_>, database: Option<&str>) -> Result<()> {
    let t0 = Instant::now();
    if dd.config().exists() {
        bail!(
            "{} already holds a OneStack configuration; join from an empty data directory",
            dd.root.display()
        );
    }
    let Joiner {
        controller,
        mut cfg,
        host,
        my_ip,
    } = Joiner::from_args(&a)?;
    // Clients and the other controllers reach this one at its own address.
    if cfg.api.public_host.is_empty() {
        cfg.api.public_host = my_ip.clone();
    }
    ops::step(
        t0,
        &format!("joining {controller} as controller {host} ({my_ip})"),
    );
    ops::require_free_ports(&cfg)?;
    ops::ensure_packages(&dd, t0)?;
    let granted = redeem(&controller, a.token, &host, JoinRole::Controller).await?;
    let field = |k: &str| -> Result<String> {
        granted[k]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .with_context(|| format!("the controller sent no {k}"))
    };
    let secret = field("agent_secret")?;
    let url = match database {
        Some(u) => u.to_string(),
        None => field("database_url")?,
    };
    check_database_from_here(&url).await?;
    ops::step(
        t0,
        &format!(
            "database {} answers and holds the cloud",
            crate::db::redact(&url)
        ),
    );
    cfg.database.url = url;
    cfg.database.joined = true;
    cfg.compute.host = host.clone();
    cfg.compute.my_ip = my_ip;
    if let Some(r) = granted["region"].as_str() {
        cfg.api.region = r.to_string();
    }
    if let Some(p) = granted["namespace_prefix"].as_str() {
        cfg.network.namespace_prefix = p.to_string();
    }
    if let Some(s) = granted["service_down_time"].as_u64() {
        cfg.compute.service_down_time = s;
    }
    if let Some(s) = granted["token_lifetime"].as_u64() {
        cfg.identity.token_lifetime = s;
    }
    // One network node per cloud: the first controller's.
    cfg.network.network_node = false;
    cfg.validate()?;
    dd.create()?;
    paths::write_private(&dd.secrets().join("agent-token"), &secret)?;
    let admin_password = field("admin_password")?;
    let demo_password = field("demo_password")?;
    paths::write_private(&dd.secrets().join("admin-password"), &admin_password)?;
    paths::write_private(&dd.secrets().join("demo-password"), &demo_password)?;
    paths::write_private(
        &dd.config(),
        &format!(
            "# Written by onestack join --role controller: this host is a controller of the \
             cloud first brought up at {controller}.\n{}",
            toml::to_string(&cfg).context("cannot write the configuration")?
        ),
    )?;
    ops::write_client_files(&dd, &cfg, &admin_password, &demo_password)?;
    ops::step(
        t0,
        &format!("configuration written to {}", dd.config().display()),
    );
    ops::start_joined_controller(&dd, &cfg, t0).await
}

/// Connects to `url` from this host and checks it holds a cloud (its admin project).
async fn check_database_from_here(url: &str) -> Result<()> {
    let store = tokio::time::timeout(Duration::from_secs(30), onestack_store::Store::open(url))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the database {} did not answer within 30 s",
                crate::db::redact(url)
            )
        })?
        .with_context(|| {
            format!(
                "cannot reach the database {} from this host; nothing was written (mint another \
                 token, the join used this one, and pass --database with an address this host \
                 reaches)",
                crate::db::redact(url)
            )
        })?;
    let found = store
        .find_project(onestack_core::identity::DEFAULT_DOMAIN_ID, "admin")
        .await
        .is_ok();
    store.pool().close().await;
    if !found {
        bail!(
            "the database {} holds no cloud (no admin project)",
            crate::db::redact(url)
        );
    }
    Ok(())
}

/// Whether other hosts can reach the controller at its public address.
pub fn reachable_by_others(cfg: &Config) -> bool {
    let h = cfg.public_host();
    !(h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback() || a.is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_unwrapped() {
        assert_eq!(
            error_message(r#"{"conflictingRequest": {"code": 409, "message": "busy"}}"#),
            "busy"
        );
        assert_eq!(error_message("plain text\n"), "plain text");
    }

    #[test]
    fn loopback_controllers_are_not_reachable() {
        let mut cfg = Config::default();
        cfg.api.listen = "127.0.0.1".parse().expect("ip");
        assert!(!reachable_by_others(&cfg));
        cfg.api.public_host = "198.18.20.1".into();
        assert!(reachable_by_others(&cfg));
    }
}
