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
    let qemu = crate::perms::qemu_choice(&cfg, &dd, true)?;
    if qemu.degraded {
        tracing::warn!("{}", qemu.note);
    } else {
        tracing::info!("{}", qemu.note);
    }
    // The directories QEMU's user passes through exist and let only its group in; everything
    // else in the data directory is root's (what `up` does too, for a start without it).
    let mut qemu_dirs = vec![agent_cfg.instances_dir(), agent_cfg.images_dir()];
    if !cfg.is_compute_node() {
        // The storage host's volumes, made here too so they are opened to QEMU whichever of the
        // agent and the volume service starts first.
        qemu_dirs.push(dd.volumes());
    }
    for dir in qemu_dirs {
        onestack_core::fsutil::create_private_dir(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let fixed = crate::perms::fix(&dd.root, qemu.user.as_ref().map(|u| u.gid))?;
    if !fixed.is_empty() {
        tracing::info!(paths = fixed.len(), "set the modes of the data directory");
    }
    agent_cfg.network = host_networking(&cfg, &dd, qemu.user.as_ref().map(|u| u.uid));
    let driver = QemuDriver::new(
        agent_cfg.instances_dir(),
        accel,
        qemu.user.as_ref().map(|u| u.name.clone()),
    );
    onestack_agent::agent::run(agent_cfg, driver, crate::serve::shutdown_signal()).await
}

/// Host networking needs root (netlink, nftables, namespaces) and dnsmasq for DHCP. TAPs
/// belong to `tap_owner`, the user QEMU runs as.
fn host_networking(cfg: &Config, dd: &DataDir, tap_owner: Option<u32>) -> Option<AgentNetwork> {
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
    let dnsmasq_user = match crate::perms::dnsmasq_user(true) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!("host networking is off: {e:#}");
            return None;
        }
    };
    let shared_dir = match crate::perms::prepare_helper_dir(dd) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("host networking is off: {e:#}");
            return None;
        }
    };
    // DHCP, metadata and routers live with the controller.
    let network_node = cfg.network.network_node && !cfg.is_compute_node();
    Some(AgentNetwork {
        network_node,
        tap_owner,
        dnsmasq,
        shared_dir,
        dnsmasq_user,
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
