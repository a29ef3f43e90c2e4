//! `onestack agent`: the compute agent of this host, talking to the controller's internal API.

use crate::config::Config;
use crate::paths::DataDir;
use anyhow::{Context, Result};
use onestack_agent::agent::{AgentConfig, AgentNetwork};
use onestack_agent::driver::VirtType;
use onestack_agent::qemu::{choose_accel, Accel, QemuDriver};
use std::net::SocketAddr;
use std::time::Duration;

/// The name this host's agent registers under: `compute.host`, or the hostname.
pub fn local_host(cfg: &Config) -> String {
    if cfg.compute.host.is_empty() {
        onestack_agent::host::hostname()
    } else {
        cfg.compute.host.clone()
    }
}

pub async fn run(cfg: Config, dd: DataDir) -> Result<()> {
    let requested = match cfg.compute.virt_type.as_str() {
        "kvm" => VirtType::Kvm,
        "qemu" => VirtType::Qemu,
        _ => VirtType::Auto,
    };
    let (accel, notice) = choose_accel(requested);
    tracing::info!("{notice}");
    let host = local_host(&cfg);
    let host_ip = cfg.my_ip();
    let state_dir = dd.root.join("compute");
    let agent_cfg = AgentConfig {
        controller_url: cfg.controller_url(),
        token: dd
            .secret("agent-token")
            .context("cannot read the agent token")?,
        host,
        host_ip: host_ip.clone(),
        availability_zone: None,
        listen: SocketAddr::new(cfg.api.listen, cfg.compute.agent_port),
        public_url: format!("http://{host_ip}:{}", cfg.compute.agent_port),
        state_dir: state_dir.clone(),
        volumes_dir: dd.volumes(),
        virt_type: match accel {
            Accel::Kvm => "kvm".into(),
            Accel::Tcg => "qemu".into(),
        },
        stop_grace: Duration::from_secs(cfg.compute.shutdown_timeout),
        // Several heartbeats fit in the time after which the controller calls the host down.
        heartbeat: Duration::from_millis(
            (cfg.compute.service_down_time * 1000 / 4).clamp(1000, 10_000),
        ),
        network: None,
        resume_guests: std::env::var(crate::supervisor::RESUME_GUESTS_ENV).is_ok_and(|v| v == "1"),
    };
    let mut agent_cfg = agent_cfg;
    let run_as = qemu_user(&cfg.compute.qemu_user, &agent_cfg.instances_dir());
    agent_cfg.network = host_networking(&cfg, run_as.as_deref());
    let driver = QemuDriver::new(agent_cfg.instances_dir(), accel, run_as);
    onestack_agent::agent::run(agent_cfg, driver, crate::serve::shutdown_signal()).await
}

/// Host networking needs root (netlink, nftables, namespaces) and dnsmasq for DHCP.
fn host_networking(cfg: &Config, qemu_user: Option<&str>) -> Option<AgentNetwork> {
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!("not root: host networking is off, servers get no working NICs");
        return None;
    }
    let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            tracing::warn!("dnsmasq not found: guests get no DHCP (install dnsmasq-base)");
            std::path::PathBuf::from("/usr/sbin/dnsmasq")
        });
    let tap_owner = qemu_user
        .and_then(|u| nix::unistd::User::from_name(u).ok().flatten())
        .map(|u| u.uid.as_raw());
    // DHCP, metadata and routers live with the controller.
    let network_node = cfg.network.network_node && !cfg.is_compute_node();
    Some(AgentNetwork {
        network_node,
        tap_owner,
        dnsmasq,
        public_interface: (network_node && !cfg.network.public_interface.is_empty())
            .then(|| cfg.network.public_interface.clone()),
        guest_open_ports: guest_open_ports(cfg),
    })
}

/// The TCP ports of this host a guest may reach: the public APIs, where this host serves them
/// (as in any cloud); never the metrics, the agent's endpoint, the dashboard or anything else.
fn guest_open_ports(cfg: &Config) -> Vec<u16> {
    if cfg.is_compute_node() {
        return Vec::new();
    }
    let a = &cfg.api;
    vec![
        a.identity_port,
        a.compute_port,
        a.image_port,
        a.network_port,
        a.volume_port,
    ]
}

/// The dedicated user QEMU drops to when the agent runs as root and nothing else is configured.
pub const QEMU_USER: &str = "onestack-qemu";

/// Which user QEMU runs as. `auto`: as root, a dedicated unprivileged system user (created on
/// first use) whenever it can reach the instance files; otherwise, and as non-root, the agent's
/// own user. `root` or empty: the agent's user. Anything else: that user.
fn qemu_user(setting: &str, instances: &std::path::Path) -> Option<String> {
    match setting {
        "" | "root" => return None,
        "auto" => {}
        user => return Some(user.to_string()),
    }
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    if let Err(e) = ensure_system_user(QEMU_USER) {
        tracing::warn!("QEMU runs as root: cannot create the {QEMU_USER} user ({e:#})");
        return None;
    }
    if let Some(blocked) = unsearchable_ancestor(instances) {
        tracing::warn!(
            "QEMU runs as root: {} is not searchable by other users, so {QEMU_USER} could not \
             reach the instance files (chmod o+x it to run QEMU unprivileged)",
            blocked.display()
        );
        return None;
    }
    tracing::info!("QEMU runs as the unprivileged user {QEMU_USER}");
    Some(QEMU_USER.to_string())
}

fn ensure_system_user(name: &str) -> Result<()> {
    if nix::unistd::User::from_name(name)?.is_some() {
        return Ok(());
    }
    let out = std::process::Command::new("useradd")
        .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
        .args(["--shell", "/usr/sbin/nologin", name])
        .output()
        .context("cannot run useradd")?;
    if !out.status.success() && nix::unistd::User::from_name(name)?.is_none() {
        anyhow::bail!(
            "useradd failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The first directory on the way to `dir` (itself included) that others cannot traverse.
fn unsearchable_ancestor(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut chain: Vec<&std::path::Path> = dir.ancestors().collect();
    chain.reverse();
    chain
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(|p| p.to_path_buf())
}
