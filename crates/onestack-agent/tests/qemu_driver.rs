//! The QEMU driver against real QEMU and the real default guest (onestack-tiny), no networking.
//! Needs root and qemu-system-x86_64; skipped (with a message) otherwise. Accelerator from
//! `ONESTACK_TEST_ACCEL` (`tcg` by default, `kvm`).

use anyhow::{bail, ensure, Context, Result};
use onestack_agent::driver::{Driver, PowerState, VmSpec};
use onestack_agent::qemu::{Accel, QemuDriver};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BANNER: &str = "=== onestack-tiny login banner ===";
const READY: &str = "onestack-tiny: ready";
/// TCG boots this guest in ~10-20 s; leave room for a loaded 2-core CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn cached_image(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("onestack-tiny-") && n.ends_with(".qcow2"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The default guest image, or why the test cannot run.
fn prerequisites() -> std::result::Result<PathBuf, String> {
    if !is_root() {
        return Err("needs root (tap-less VMs still need /dev/kvm or QEMU's sandbox)".into());
    }
    for p in ["qemu-system-x86_64", "qemu-img"] {
        if !runs(p) {
            return Err(format!("{p} is not installed"));
        }
    }
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("ONESTACK_IMAGE_CACHE").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("/var/cache/onestack/images"));
    if let Some(img) = dirs.iter().find_map(|d| cached_image(d)) {
        return Ok(img);
    }
    let cache = onestack_image::default_cache_dir();
    onestack_image::build_default(&cache)
        .map(|i| i.path)
        .map_err(|e| format!("cannot build the default guest image: {e:#}"))
}

fn accel() -> Accel {
    match std::env::var("ONESTACK_TEST_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

macro_rules! require {
    () => {
        match prerequisites() {
            Ok(img) => img,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return Ok(());
            }
        }
    };
}

/// Kills whatever QEMU the test left behind, even when an assertion failed half-way.
struct Reaper {
    dir: PathBuf,
    ids: Vec<String>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for id in &self.ids {
            if let Some(pid) = pid_of(&self.dir, id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let deadline = Instant::now() + Duration::from_secs(5);
                while alive(pid, id) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// This instance's live QEMU pid (the pidfile's pid, if its command line names the instance).
fn pid_of(dir: &Path, id: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(id).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid, id).then_some(pid)
}

fn alive(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(id))
}

fn new_vm(dir: &Path, image: &Path, name: &str) -> Result<VmSpec> {
    let id = uuid::Uuid::new_v4().to_string();
    let idir = dir.join(&id);
    std::fs::create_dir_all(&idir)?;
    let disk = idir.join("disk");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image)
        .arg(&disk)
        .output()?;
    ensure!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(VmSpec {
        id,
        name: name.into(),
        vcpus: 1,
        memory_mb: 256,
        disk,
        base: None,
        config_drive: None,
        nics: Vec::new(),
        volumes: Vec::new(),
    })
}

fn count(log: &Path, needle: &str) -> usize {
    std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).matches(needle).count())
        .unwrap_or(0)
}

async fn wait_count(log: &Path, needle: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while count(log, needle) < n {
        if Instant::now() > deadline {
            bail!("{needle:?} not seen {n} times in {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Types a command on the serial console until the guest's shell answers: proof that the guest
/// itself (not just QEMU) is alive.
async fn shell_answers(sock: &Path) -> Result<()> {
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .with_context(|| format!("connect {}", sock.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        // The shell prints 42; the echoed input only shows the expression.
        s.write_all(b"\necho onestack-$((6*7))-ok\n").await?;
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) => bail!("console closed"),
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {}
            }
            if String::from_utf8_lossy(&seen).contains("onestack-42-ok") {
                return Ok(());
            }
        }
    }
    bail!(
        "the guest shell did not answer; console said: {}",
        String::from_utf8_lossy(&seen)
    )
}

fn backing_of(img: &Path) -> Result<Option<String>> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(img)
        .output()?;
    ensure!(
        out.status.success(),
        "qemu-img info: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(v["format"] == "qcow2", "not qcow2: {v}");
    Ok(v.get("backing-filename")
        .and_then(|b| b.as_str())
        .map(str::to_string))
}

/// One VM through its whole life: every operation the agent uses, in as few boots as possible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle() -> Result<()> {
    let image = require!();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let spec = new_vm(&dir, &image, "instance-00000001")?;
    let id = spec.id.clone();
    let _reaper = Reaper {
        dir: dir.clone(),
        ids: vec![id.clone()],
    };
    let drv = QemuDriver::new(dir.clone(), accel(), None);
    let log = drv.console_log(&id);
    assert_eq!(log, dir.join(&id).join("console.log"));
    assert_eq!(drv.console_socket(&id), dir.join(&id).join("console.sock"));

    assert_eq!(drv.power_state(&id).await, PowerState::NoState);
    assert_eq!(drv.power_state("no-such-vm").await, PowerState::NoState);
    assert!(drv.pause(&id).await.is_err());
    drv.destroy(&id).await?; // nothing to destroy: fine

    // A start that QEMU refuses reports QEMU's own words and leaves no process behind.
    let mut broken = spec.clone();
    broken.disk = dir.join(&id).join("missing.qcow2");
    match drv.start(&broken).await {
        Err(e) => assert!(e.to_string().contains("missing.qcow2"), "{e}"),
        Ok(()) => bail!("QEMU started without its disk"),
    }
    assert!(drv.running().await.is_empty());

    // start → the guest boots to its banner
    drv.start(&spec).await?;
    assert_eq!(drv.power_state(&id).await, PowerState::Running);
    drv.start(&spec).await?; // already running: no-op
    wait_count(&log, READY, 1).await?;
    println!("booted in {:?}", t0.elapsed());
    assert_eq!(count(&log, BANNER), 1);

    // pause / unpause
    drv.pause(&id).await?;
    assert_eq!(drv.power_state(&id).await, PowerState::Paused);
    drv.unpause(&id).await?;
    assert_eq!(drv.power_state(&id).await, PowerState::Running);

    // hard reboot → the guest boots again
    drv.reboot(&id, true, Duration::from_secs(1)).await?;
    assert_eq!(drv.power_state(&id).await, PowerState::Running);
    wait_count(&log, READY, 2).await?;
    assert_eq!(count(&log, BANNER), 2);
    println!("hard reboot done at {:?}", t0.elapsed());

    // soft reboot: this guest has no ACPI daemon, so after the grace it is reset hard
    drv.reboot(&id, false, Duration::from_secs(3)).await?;
    assert_eq!(drv.power_state(&id).await, PowerState::Running);
    wait_count(&log, READY, 3).await?;

    // stop → no process
    let pid = pid_of(&dir, &id).context("no pid while running")?;
    drv.stop(&id, Duration::from_secs(2)).await?;
    assert!(!alive(pid, &id), "QEMU still alive after stop");
    assert_eq!(drv.power_state(&id).await, PowerState::Shutdown);
    assert!(drv.running().await.is_empty());
    drv.stop(&id, Duration::from_secs(2)).await?; // already stopped: fine
    println!("stopped at {:?}", t0.elapsed());

    // start again, and let the guest boot fully before suspending it
    let banners = count(&log, BANNER);
    drv.start(&spec).await?;
    assert_eq!(drv.power_state(&id).await, PowerState::Running);
    wait_count(&log, READY, count(&log, READY).max(banners) + 1).await?;
    shell_answers(&drv.console_socket(&id)).await?;
    let banners = count(&log, BANNER);
    println!("second boot done at {:?}", t0.elapsed());

    // suspend → state on disk, no process
    let pid = pid_of(&dir, &id).context("no pid while running")?;
    drv.suspend(&id).await?;
    assert!(!alive(pid, &id), "QEMU still alive after suspend");
    let state = dir.join(&id).join("suspend.state");
    assert!(state.exists(), "no saved state");
    assert_eq!(drv.power_state(&id).await, PowerState::Suspended);
    assert!(drv.running().await.is_empty());
    drv.suspend(&id).await?; // already suspended: fine
    println!("suspended at {:?}", t0.elapsed());

    // resume → the same guest carries on, without booting
    drv.resume(&spec).await?;
    assert_eq!(drv.power_state(&id).await, PowerState::Running);
    assert!(!state.exists(), "saved state left behind");
    shell_answers(&drv.console_socket(&id)).await?;
    assert_eq!(count(&log, BANNER), banners, "the guest rebooted on resume");
    drv.resume(&spec).await?; // already resumed: fine
    println!("resumed at {:?}", t0.elapsed());

    // adoption: a fresh driver (as after an agent restart) finds the VM
    let again = QemuDriver::new(dir.clone(), accel(), None);
    assert_eq!(again.running().await, vec![id.clone()]);
    assert_eq!(again.power_state(&id).await, PowerState::Running);

    // snapshot → standalone qcow2, VM still running
    let snap = dir.join("snapshot.qcow2");
    again.snapshot(&id, &spec.disk, &snap).await?;
    assert_eq!(backing_of(&snap)?, None, "snapshot has a backing file");
    assert!(
        backing_of(&spec.disk)?.is_some(),
        "the overlay lost its backing file?"
    );
    assert_eq!(again.power_state(&id).await, PowerState::Running);
    shell_answers(&drv.console_socket(&id)).await?;

    // destroy, twice
    let pid = pid_of(&dir, &id).context("no pid while running")?;
    again.destroy(&id).await?;
    assert!(!alive(pid, &id), "QEMU still alive after destroy");
    let st = again.power_state(&id).await;
    assert!(
        matches!(st, PowerState::Shutdown | PowerState::NoState),
        "{st:?}"
    );
    again.destroy(&id).await?;
    assert!(again.running().await.is_empty());
    println!("lifecycle took {:?}", t0.elapsed());
    let qemu_log = std::fs::read_to_string(dir.join(&id).join("qemu.log")).unwrap_or_default();
    println!("qemu.log:\n{qemu_log}");
    Ok(())
}

fn uid_of(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
}

fn pgrp_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp …; comm may contain spaces, so split after its ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

fn nobody_uid() -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| l.split(':').nth(2).map(str::to_string))
}

/// QEMU outlives the driver that started it (the agent restarting), and runs as an unprivileged
/// user (`-runas`) while the root-owned sockets and saved state keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_the_driver_and_runs_unprivileged() -> Result<()> {
    let image = require!();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let spec = new_vm(&dir, &image, "instance-00000002")?;
    let id = spec.id.clone();
    let _reaper = Reaper {
        dir: dir.clone(),
        ids: vec![id.clone()],
    };
    let nobody = nobody_uid();
    // Like an agent's instances directory: searchable, so the unprivileged QEMU can reach its disk.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    let run_as = nobody.as_ref().map(|_| "nobody".to_string());

    let drv = QemuDriver::new(dir.clone(), accel(), run_as.clone());
    drv.start(&spec).await?;
    let pid = pid_of(&dir, &id).context("no pid after start")?;
    if let Some(uid) = &nobody {
        assert_eq!(
            uid_of(pid).as_ref(),
            Some(uid),
            "QEMU does not run as nobody"
        );
    }
    // Its own process group: a signal to the agent's group (Ctrl-C, systemd) does not reach it.
    assert_eq!(
        pgrp_of(pid),
        Some(pid),
        "QEMU shares the agent's process group"
    );
    drop(drv);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(pid, &id), "QEMU died with its driver");

    let drv = QemuDriver::new(dir.clone(), accel(), run_as);
    assert_eq!(drv.running().await, vec![id.clone()]);
    assert_eq!(drv.power_state(&id).await, PowerState::Running);

    // Saving and restoring pass descriptors over QMP, which works whatever user QEMU runs as.
    drv.suspend(&id).await?;
    assert_eq!(drv.power_state(&id).await, PowerState::Suspended);
    drv.start(&spec).await?; // starting a suspended VM restores it
    assert_eq!(drv.power_state(&id).await, PowerState::Running);
    assert!(!dir.join(&id).join("suspend.state").exists());

    let pid = pid_of(&dir, &id).context("no pid after resume")?;
    drv.destroy(&id).await?;
    assert!(!alive(pid, &id));
    drv.destroy(&id).await?;
    println!("took {:?}", t0.elapsed());
    Ok(())
}
