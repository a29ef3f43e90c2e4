//! `onestack agent`: the compute agent of this host, talking to the controller's internal API.

use crate::config::Config;
use crate::paths::DataDir;
use anyhow::{Context, Result};
use onestack_agent::agent::AgentConfig;
use onestack_agent::driver::VirtType;
use onestack_agent::qemu::{choose_accel, Accel, QemuDriver};
use std::net::SocketAddr;
use std::time::Duration;

pub async fn run(cfg: Config, dd: DataDir) -> Result<()> {
    let requested = match cfg.compute.virt_type.as_str() {
        "kvm" => VirtType::Kvm,
        "qemu" => VirtType::Qemu,
        _ => VirtType::Auto,
    };
    let (accel, notice) = choose_accel(requested);
    tracing::info!("{notice}");
    let host = if cfg.compute.host.is_empty() {
        onestack_agent::host::hostname()
    } else {
        cfg.compute.host.clone()
    };
    let host_ip = cfg.public_host();
    let state_dir = dd.root.join("compute");
    let agent_cfg = AgentConfig {
        controller_url: cfg.compute_url(),
        token: dd
            .secret("agent-token")
            .context("cannot read the agent token")?,
        host,
        host_ip: host_ip.clone(),
        availability_zone: None,
        listen: SocketAddr::new(cfg.api.listen, cfg.compute.agent_port),
        public_url: format!("http://{host_ip}:{}", cfg.compute.agent_port),
        state_dir: state_dir.clone(),
        virt_type: match accel {
            Accel::Kvm => "kvm".into(),
            Accel::Tcg => "qemu".into(),
        },
        stop_grace: Duration::from_secs(cfg.compute.shutdown_timeout),
        heartbeat: Duration::from_secs(10),
    };
    let run_as = Some(cfg.compute.qemu_user.clone()).filter(|u| !u.is_empty());
    let driver = QemuDriver::new(agent_cfg.instances_dir(), accel, run_as);
    onestack_agent::agent::run(agent_cfg, driver, crate::serve::shutdown_signal()).await
}
