//! `onestack doctor`: the usual causes of a broken cloud, each checked and said plainly — KVM,
//! QEMU and the tools the data plane needs, kernel features, API ports taken by someone else,
//! disk space, and the services, compute hosts and host networking of a running cloud.

use crate::config::Config;
use crate::ops;
use crate::paths::DataDir;
use anyhow::Result;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    worst: Level,
}

impl Report {
    fn line(&mut self, level: Level, what: &str, detail: impl AsRef<str>) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("[{tag}] {what:<22} {}", detail.as_ref());
        if level == Level::Fail || (level == Level::Warn && self.worst == Level::Ok) {
            self.worst = level;
        }
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(Into::into))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn free_gib(dir: &Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as f64 * st.fragment_size() as f64 / (1u64 << 30) as f64)
}

/// The TCP ports a controller listens on, by what they serve.
pub fn ports(cfg: &Config) -> Vec<(&'static str, u16)> {
    let mut ports = vec![
        ("identity port", cfg.api.identity_port),
        ("dashboard port", cfg.api.dashboard_port),
        ("image port", cfg.api.image_port),
        ("compute port", cfg.api.compute_port),
        ("network port", cfg.api.network_port),
        ("volume port", cfg.api.volume_port),
        ("agent port", cfg.compute.agent_port),
    ];
    if cfg.api.metrics_port != 0 {
        ports.push(("metrics port", cfg.api.metrics_port));
    }
    ports
}

/// What `up` tells about the host in one line (CPU, memory, disk, acceleration, kernel
/// features), and the findings that stop it.
pub fn host_summary(dd: &DataDir) -> (String, Vec<String>) {
    let mut blockers = Vec::new();
    let (_, accel) = onestack_agent::qemu::choose_accel(onestack_agent::driver::VirtType::Auto);
    let disk = free_gib(&dd.root).or_else(|| dd.root.parent().and_then(free_gib));
    if let Some(g) = disk.filter(|g| *g < 1.0) {
        blockers.push(format!(
            "only {g:.2} GiB free under {}: the disk is (nearly) full",
            dd.root.display()
        ));
    }
    let features: Vec<String> = [
        ("/dev/net/tun", "TAP"),
        (
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
            "br_netfilter",
        ),
    ]
    .iter()
    .map(|(path, name)| {
        format!(
            "{name} {}",
            if Path::new(path).exists() {
                "ok"
            } else {
                "MISSING"
            }
        )
    })
    .collect();
    let line = format!(
        "host: {} CPUs, {:.1} GiB RAM, {} free; {}; {}",
        onestack_agent::host::vcpus(),
        onestack_agent::host::memory_mb() as f64 / 1024.0,
        disk.map_or("unknown disk space".into(), |g| format!("{g:.1} GiB")),
        features.join(", "),
        accel
    );
    (line, blockers)
}

pub fn port_free(cfg: &Config, port: u16) -> bool {
    std::net::TcpListener::bind(SocketAddr::new(cfg.api.listen, port)).is_ok()
}

/// Returns false when something is broken.
pub async fn run(dd: DataDir, config: Option<&Path>) -> Result<bool> {
    // Read-only: a given file is checked, not installed into the data dir.
    let cfg: Config = match config {
        Some(p) => Config::load(p)?,
        None => ops::load_config(&dd, None)?,
    };
    let mut r = Report { worst: Level::Ok };

    let (accel, notice) =
        onestack_agent::qemu::choose_accel(onestack_agent::driver::VirtType::Auto);
    let level = if accel == onestack_agent::qemu::Accel::Kvm {
        Level::Ok
    } else {
        Level::Warn
    };
    r.line(level, "hardware acceleration", notice);
    for (tool, why, required) in [
        ("qemu-system-x86_64", "runs the VMs", true),
        ("qemu-img", "makes instance disks", true),
        ("genisoimage", "writes config drives", false),
        ("nft", "security groups, anti-spoofing, NAT", true),
        ("dnsmasq", "DHCP for guests", true),
        ("ip", "network namespaces", true),
    ] {
        match which(tool) {
            Some(p) => r.line(Level::Ok, tool, p.display().to_string()),
            None => r.line(
                if required { Level::Fail } else { Level::Warn },
                tool,
                format!("not installed ({why})"),
            ),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        r.line(
            Level::Fail,
            "privileges",
            "not root: host networking and QEMU's own user need root",
        );
    }
    for (path, what) in [
        ("/dev/net/tun", "TAP devices for VM NICs"),
        (
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
            "stateful security groups on bridges (br_netfilter)",
        ),
    ] {
        if Path::new(path).exists() {
            r.line(Level::Ok, path, what);
        } else {
            r.line(Level::Fail, path, format!("missing: {what}"));
        }
    }
    match free_gib(&dd.root).or_else(|| dd.root.parent().and_then(free_gib)) {
        Some(g) if g < 2.0 => r.line(
            Level::Fail,
            "disk space",
            format!("{g:.1} GiB free under {}", dd.root.display()),
        ),
        Some(g) if g < 10.0 => r.line(
            Level::Warn,
            "disk space",
            format!("{g:.1} GiB free under {}", dd.root.display()),
        ),
        Some(g) => r.line(Level::Ok, "disk space", format!("{g:.1} GiB free")),
        None => r.line(Level::Warn, "disk space", "cannot tell"),
    }

    // Who may read what in the data directory, and whether QEMU and dnsmasq reach their files.
    for c in crate::perms::checks(&dd, &cfg) {
        let level = match c.severity {
            crate::perms::Severity::Ok => Level::Ok,
            crate::perms::Severity::Warn => Level::Warn,
            crate::perms::Severity::Fail => Level::Fail,
        };
        r.line(level, c.what, c.detail);
    }

    // Ports: ours when the cloud runs, someone else's when it does not and they are taken.
    let running = crate::supervisor::running_pid(&dd, "supervisor").is_some();
    for (name, port) in ports(&cfg) {
        let free = port_free(&cfg, port);
        match (free, running) {
            (true, false) | (false, true) => r.line(Level::Ok, name, format!("{port}")),
            (false, false) => r.line(
                Level::Fail,
                name,
                format!("{port} is in use by another program"),
            ),
            (true, true) => r.line(
                Level::Fail,
                name,
                format!("{port}: nothing listens although OneStack runs"),
            ),
        }
    }
    if running {
        let healthy = ops::status_quiet(&dd, &cfg).await;
        r.line(
            if healthy { Level::Ok } else { Level::Fail },
            "services",
            if healthy {
                "running and answering"
            } else {
                "not all running or answering (see `onestack status`)"
            },
        );
    } else {
        r.line(Level::Warn, "services", "not running (`onestack up`)");
    }
    println!(
        "{}",
        match r.worst {
            Level::Ok => "Everything looks right.",
            Level::Warn => "Works, with the warnings above.",
            Level::Fail => "Broken: see the FAIL lines above.",
        }
    );
    Ok(r.worst != Level::Fail)
}

/// `up --dry-run`: the plan, with what this host has; nothing is written or started.
pub async fn plan(dd: DataDir, config: Option<&Path>, no_demo: bool) -> Result<()> {
    let cfg: Config = match config {
        Some(p) => Config::load(p)?,
        None => ops::load_config(&dd, None)?,
    };
    println!("Plan for `onestack up` (dry run: nothing is changed)");
    let running = crate::supervisor::running_pid(&dd, "supervisor");
    if let Some(pid) = running {
        println!(
            "  OneStack already runs from {} (supervisor pid {pid}): `up` would change nothing.",
            dd.root.display()
        );
        return Ok(());
    }
    let exists = dd.root.join("onestack.db").exists() || dd.config().exists();
    println!(
        "  data directory   {} ({})",
        dd.root.display(),
        if exists {
            "exists: its state is kept"
        } else {
            "new: created, secrets generated"
        }
    );
    println!(
        "  state store      {}",
        crate::serve::database_url(&cfg, &dd)
    );
    let (_, notice) = onestack_agent::qemu::choose_accel(onestack_agent::driver::VirtType::Auto);
    println!(
        "  virtualisation   virt_type = {}; this host: {notice}",
        cfg.compute.virt_type
    );
    let tools: Vec<String> = [
        "qemu-system-x86_64",
        "qemu-img",
        "nft",
        "dnsmasq",
        "ip",
        "genisoimage",
    ]
    .iter()
    .map(|t| format!("{t} {}", if which(t).is_some() { "ok" } else { "MISSING" }))
    .collect();
    println!("  host tools       {}", tools.join(", "));
    let nics = if cfg.network.public_interface.is_empty() && cfg.network.flat_interface.is_empty() {
        "single NIC".to_string()
    } else {
        format!(
            "public_interface {:?}, flat_interface {:?}",
            cfg.network.public_interface, cfg.network.flat_interface
        )
    };
    match crate::hostnet::check(&cfg) {
        Ok(()) => println!(
            "  host networking  {nics}; this host's address for others {}",
            cfg.my_ip()
        ),
        Err(e) => println!("  host networking  {nics}: PROBLEM: {e:#}"),
    }
    let missing = crate::packages::missing(|p| which(p).is_some());
    if !missing.is_empty() {
        println!(
            "  host packages    would install: {} (apt-get; recorded for uninstall --purge-packages)",
            missing.join(" ")
        );
    }
    let ports: Vec<String> = ports(&cfg)
        .iter()
        .map(|(n, p)| {
            format!(
                "{} {p}{}",
                n.trim_end_matches(" port"),
                if port_free(&cfg, *p) { "" } else { " (IN USE)" }
            )
        })
        .collect();
    println!("  ports on {}  {}", cfg.api.listen, ports.join(", "));
    println!("  steps");
    println!(
        "    1. identity: domain Default, projects admin and demo, users, roles, catalog (once)"
    );
    if cfg.image.default_image {
        println!(
            "    2. default image {} (built from Debian packages, cached; registered once)",
            onestack_image::IMAGE_NAME
        );
    } else {
        println!("    2. no default image (image.default_image = false)");
    }
    println!(
        "    3. networks: public (external, {}), private for demo ({}), router1, ping and SSH allowed in (once)",
        cfg.network.floating_range, cfg.network.fixed_range
    );
    println!("    4. write clouds.yaml, openrc, openrc-demo; start the supervisor with: api (identity, image, compute, network), compute agent");
    if no_demo {
        println!("    5. no demo server (--no-demo)");
    } else {
        println!("    5. demo server: keypair, server from the default image on private, floating IP, wait for SSH");
    }
    Ok(())
}
