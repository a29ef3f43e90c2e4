//! `onestack reset` (resetStack.sh) and `onestack uninstall` (delStack.sh): stop the services,
//! then remove what outlives them by design — VMs, dnsmasq, namespaces, bridges, TAPs and
//! OneStack's nft tables — and, for reset, the state, before a fresh `up`.

use crate::config::Config;
use crate::ops;
use crate::paths::DataDir;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Asks on the terminal unless `yes`.
pub(crate) fn confirm(question: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    print!("{question} Type 'yes' to go on: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("nothing changed");
    }
    Ok(())
}

/// Live processes whose command line names `needle` (the data directory or an instance id).
fn pids_naming(pid_file: &Path, needle: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let hit = cmdline
        .windows(needle.len().max(1))
        .any(|w| w == needle.as_bytes());
    hit.then_some(pid)
}

/// SIGKILLs every QEMU of this data dir (checked against its command line) and waits for them.
async fn kill_vms(dd: &DataDir) -> usize {
    let instances = dd.root.join("compute").join("instances");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(&instances)
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = entry.file_name().to_string_lossy().to_string();
        if let Some(pid) = pids_naming(&entry.path().join("qemu.pid"), &id) {
            crate::sys::signal(pid as u32, crate::sys::SIGKILL);
            pids.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pids.len()
}

/// Removes the host networking the agent built, from the agent's own records, then anything
/// named after this cloud's networks and routers that the records missed (an agent killed in the
/// middle of building it).
async fn remove_data_plane(dd: &DataDir, cfg: &Config) {
    let state_dir = dd.root.join("compute").join("network");
    if state_dir.exists() {
        teardown_recorded(state_dir.clone(), dd.helper_dir()).await;
    }
    // dnsmasq of this cloud, recorded or not: its command line names our DHCP directory.
    let dhcp_dir = state_dir.join("dhcp").to_string_lossy().to_string();
    let mut killed = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let hit = std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|c| c.windows(dhcp_dir.len()).any(|w| w == dhcp_dir.as_bytes()));
        if hit {
            crate::sys::signal(pid, crate::sys::SIGKILL);
            killed.push(pid);
        }
    }
    // Gone before their directory is removed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // dnsmasq's host lists, outside the data directory.
    let _ = std::fs::remove_dir_all(dd.helper_dir());
    // A compute node has no store (and must not grow one here).
    if cfg.is_compute_node() {
        return;
    }
    let Ok(store) = onestack_store::Store::open(&crate::serve::database_url(cfg, dd)).await else {
        return;
    };
    let prefix = &cfg.network.namespace_prefix;
    for (kind, ns) in [("network", "qdhcp"), ("router", "qrouter")] {
        let rows = store
            .net_list(&onestack_store::NetFilter::of(kind))
            .await
            .unwrap_or_default();
        for r in rows {
            // Names embed this cloud's own ids: nothing else on the host can match them.
            let name = format!("{prefix}{ns}-{}", r.id);
            if Path::new("/run/netns").join(&name).exists() {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &name])
                    .output();
            }
            if kind == "network" {
                let bridge = onestack_core::network::proto::bridge_name(&r.id);
                if Path::new("/sys/class/net").join(&bridge).exists() {
                    let _ = std::process::Command::new("ip")
                        .args(["link", "del", &bridge])
                        .output();
                }
            }
        }
    }
    store.pool().close().await;
}

async fn teardown_recorded(state_dir: PathBuf, shared_dir: PathBuf) {
    let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/dnsmasq"));
    let mut net = onestack_agent::net::HostNetworking::new(onestack_agent::net::NetConfig {
        host_netns: None,
        state_dir,
        shared_dir,
        // Nothing is started during a teardown: any user will do.
        dnsmasq_user: onestack_agent::access::Identity {
            name: "root".into(),
            group: None,
            uid: 0,
            gid: 0,
            gids: vec![0],
        },
        tap_owner: None,
        dnsmasq,
        uplink: None,
        guest_open_ports: Vec::new(),
    });
    net.teardown_all().await;
}

async fn stop_everything(dd: &DataDir, cfg: &Config, t0: Instant) -> Result<()> {
    ops::down(dd.clone()).await?;
    let vms = kill_vms(dd).await;
    ops::step(t0, &format!("stopped the services and {vms} VM(s)"));
    remove_data_plane(dd, cfg).await;
    ops::step(
        t0,
        "removed bridges, TAPs, namespaces, dnsmasq and nft tables",
    );
    Ok(())
}

/// What `leave` removes on a compute node once its agent is stopped: VMs and host networking.
pub async fn remove_node(dd: &DataDir, cfg: &Config, t0: Instant) -> Result<()> {
    let vms = kill_vms(dd).await;
    remove_data_plane(dd, cfg).await;
    ops::step(
        t0,
        &format!("removed {vms} VM(s), bridges, tunnels, TAPs and nft tables"),
    );
    Ok(())
}

/// Empties the store: the SQLite file goes with the data dir; a PostgreSQL database is emptied.
async fn empty_store(cfg: &Config, dd: &DataDir) -> Result<()> {
    let url = crate::serve::database_url(cfg, dd);
    if url.starts_with("postgres") {
        let store = onestack_store::Store::open(&url)
            .await
            .context("cannot open the PostgreSQL store")?;
        store
            .drop_all()
            .await
            .context("cannot empty the PostgreSQL store")?;
    }
    Ok(())
}

/// Everything in the data dir but the configuration.
fn wipe_data_dir(dd: &DataDir) -> Result<()> {
    let keep = dd.config();
    for entry in std::fs::read_dir(&dd.root)?.flatten() {
        let p = entry.path();
        if p == keep {
            continue;
        }
        if p.is_dir() {
            // A process that was just killed may still be closing files in there: retry briefly.
            let mut tries = 0;
            while let Err(e) = std::fs::remove_dir_all(&p) {
                tries += 1;
                if tries >= 10 {
                    return Err(e).with_context(|| format!("removing {}", p.display()));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        } else {
            // SQLite's -wal/-shm files vanish on their own when the last connection closes.
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", p.display()));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

pub async fn reset(dd: DataDir, config: Option<&Path>, no_demo: bool, yes: bool) -> Result<()> {
    if ops::load_config(&dd, None).is_ok_and(|c| c.database.joined) {
        bail!(
            "this controller joined a cloud whose state every controller shares; a reset would \
             erase it for all of them. Run `onestack reset` on the controller that first \
             brought the cloud up, or `onestack uninstall` here to take only this one out"
        );
    }
    confirm(
        &format!(
            "This deletes every server, image, network and project resource of the cloud in {} \
             and starts it afresh.",
            dd.root.display()
        ),
        yes,
    )?;
    let t0 = Instant::now();
    let cfg = ops::load_config(&dd, config)?;
    stop_everything(&dd, &cfg, t0).await?;
    empty_store(&cfg, &dd).await?;
    wipe_data_dir(&dd)?;
    ops::step(
        t0,
        "emptied the store and the data directory (configuration kept)",
    );
    // The old services' sockets may take a moment to close.
    let deadline = Instant::now() + Duration::from_secs(15);
    while crate::doctor::ports(&cfg)
        .iter()
        .any(|(_, p)| !crate::doctor::port_free(&cfg, *p))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ops::up(dd, config, None, false, no_demo).await
}

pub async fn uninstall(dd: DataDir, purge: bool, purge_packages: bool, yes: bool) -> Result<()> {
    confirm(
        &format!(
            "This stops OneStack in {} and removes its services, VMs and host networking{}.",
            dd.root.display(),
            if purge {
                ", and the data directory"
            } else {
                " (data kept)"
            }
        ),
        yes,
    )?;
    let t0 = Instant::now();
    let cfg = ops::load_config(&dd, None)?;
    stop_everything(&dd, &cfg, t0).await?;
    if crate::systemd::remove(&dd)? {
        ops::step(t0, "removed the systemd unit");
    }
    if purge_packages {
        use crate::packages;
        if !packages::record_file(&dd.root).exists() {
            ops::step(
                t0,
                "no host packages were installed by OneStack; none removed",
            );
        } else if !packages::Apt::available() {
            bail!(
                "apt-get is not available to remove the packages listed in {}",
                packages::record_file(&dd.root).display()
            );
        } else {
            let removed = packages::purge_recorded(&packages::Apt, &dd.root)?;
            ops::step(
                t0,
                &format!(
                    "removed the host packages OneStack installed: {} (their dependencies \
                     stay; `apt-get autoremove` removes those)",
                    if removed.is_empty() {
                        "none left".into()
                    } else {
                        removed.join(" ")
                    }
                ),
            );
        }
    }
    if purge {
        std::fs::remove_dir_all(&dd.root)
            .with_context(|| format!("removing {}", dd.root.display()))?;
        ops::step(t0, &format!("removed {}", dd.root.display()));
    } else {
        ops::step(t0, &format!("kept the data in {}", dd.root.display()));
    }
    println!("OneStack is uninstalled.");
    Ok(())
}
