//! The QEMU process: its command line, spawning it detached, and checking, signalling and waiting
//! for a pid without ever touching a process that is not this instance's QEMU.

use super::{failed, Accel};
use crate::access::{self, Identity};
use crate::driver::{DriverResult, VmSpec};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub(crate) const QEMU: &str = "qemu-system-x86_64";
/// qemu.log is appended to across starts; past this it starts afresh.
const MAX_QEMU_LOG: u64 = 1 << 20;

/// Whether `pid` is alive and is QEMU for instance `id` (its command line names the id, via the
/// pidfile path and SMBIOS serial). Zombies have an empty command line, so count as gone.
pub(crate) fn pid_matches(pid: i32, id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let is_qemu = args.next().is_some_and(|a| {
        Path::new(OsStr::from_bytes(a))
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"qemu-system"))
    });
    is_qemu && args.any(|a| a.windows(id.len()).any(|w| w == id.as_bytes()))
}

/// Sends `sig`; a process that is already gone is not an error.
pub(crate) fn signal(pid: i32, sig: Signal) -> nix::Result<()> {
    match nix::sys::signal::kill(Pid::from_raw(pid), sig) {
        Err(nix::errno::Errno::ESRCH) => Ok(()),
        r => r,
    }
}

/// Waits up to `timeout` for the process to be gone; true if it is.
pub(crate) async fn wait_gone(pid: i32, id: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pid_matches(pid, id) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `cache=none` needs O_DIRECT, which some file systems (older tmpfs) refuse with EINVAL.
pub(crate) fn direct_io_supported(disk: &Path) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(disk)
    {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(libc::EINVAL),
    }
}

/// The last lines QEMU printed, for error messages.
pub(crate) fn log_tail(log: &Path) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
        let _ = f.read_to_end(&mut text);
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        format!("nothing in {}", log.display())
    } else {
        tail
    }
}

/// Joins option text with a value QEMU must take literally: `,` separates options, `,,` is a comma.
fn opt(prefix: &str, value: &OsStr, suffix: &str) -> OsString {
    let mut v = prefix.as_bytes().to_vec();
    for &b in value.as_bytes() {
        if b == b',' {
            v.extend_from_slice(b",,");
        } else {
            v.push(b);
        }
    }
    v.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(v)
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(crate) struct ArgPaths<'a> {
    pub qmp: &'a Path,
    pub console_sock: &'a Path,
    pub console_log: &'a Path,
    pub pidfile: &'a Path,
}

/// The sandbox: no obsolete syscalls, no exec/fork, no scheduler/affinity changes. `-runas`
/// switches user after the filter is in place, so it needs `elevateprivileges=allow`; once QEMU is
/// that user it cannot regain root anyway.
fn sandbox(run_as: bool) -> &'static str {
    if run_as {
        "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
    } else {
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    }
}

/// QEMU's arguments for `spec` (without the program name). No shell is ever involved.
pub(crate) fn qemu_args(
    spec: &VmSpec,
    p: &ArgPaths<'_>,
    accel: Accel,
    run_as: Option<&str>,
    cache: &str,
    incoming: bool,
) -> DriverResult<Vec<OsString>> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    let id = spec.id.as_str();
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-no-shutdown", "-msg", "timestamp=on"]);
    a.push("-pidfile".into());
    a.push(p.pidfile.into());
    a.push("-qmp".into());
    a.push(opt("unix:", p.qmp.as_os_str(), ",server=on,wait=off"));
    a.push("-name".into());
    a.push(opt("guest=", OsStr::new(&spec.name), ",debug-threads=on"));
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["-machine", &format!("pc,accel={}", accel.as_str())]);
    push(&["-cpu", accel.cpu_model()]);
    push(&["-m", &spec.memory_mb.to_string()]);
    push(&["-smp", &spec.vcpus.max(1).to_string()]);
    push(&[
        "-smbios",
        &format!(
            "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,serial={id},\
             uuid={id},family=Virtual Machine"
        ),
    ]);
    a.push("-drive".into());
    a.push(opt(
        "file=",
        spec.disk.as_os_str(),
        &format!(",if=virtio,format=qcow2,cache={cache}"),
    ));
    for v in &spec.volumes {
        let (node, serial) = volume_names(v)?;
        a.push("-blockdev".into());
        a.push(opt(
            &format!("driver=qcow2,node-name={node},file.driver=file,file.filename="),
            v.path.as_os_str(),
            "",
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-pci,drive={node},id={node},serial={serial}").into());
    }
    if let Some(cd) = &spec.config_drive {
        a.push("-drive".into());
        a.push(opt(
            "file=",
            cd.as_os_str(),
            ",media=cdrom,readonly=on,if=ide,format=raw",
        ));
    }
    a.push("-chardev".into());
    let log = opt("", p.console_log.as_os_str(), ",logappend=on");
    let mut chardev = opt(
        "socket,id=serial0,path=",
        p.console_sock.as_os_str(),
        ",server=on,wait=off,logfile=",
    );
    chardev.push(log);
    a.push(chardev);
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["-serial", "chardev:serial0"]);
    push(&["-device", "virtio-rng-pci"]);
    for (n, nic) in spec.nics.iter().enumerate() {
        if !valid_mac(&nic.mac) {
            return Err(failed(format!("invalid MAC address {:?}", nic.mac)));
        }
        a.push("-netdev".into());
        a.push(opt(
            &format!("tap,id=n{n},ifname="),
            OsStr::new(&nic.tap),
            ",script=no,downscript=no",
        ));
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=n{n},mac={}", nic.mac).into());
    }
    a.push("-sandbox".into());
    a.push(sandbox(run_as.is_some()).into());
    if let Some(user) = run_as {
        a.push("-runas".into());
        a.push(user.into());
    }
    if incoming {
        // Paused once the state is in: the caller decides when the guest runs again (a live
        // migration's disk copy must finish first).
        a.push("-S".into());
        a.push("-incoming".into());
        a.push("defer".into());
    }
    Ok(a)
}

/// A volume's node name and serial, checked to be plain (they go into QEMU option strings).
pub(crate) fn volume_names(v: &crate::driver::VolumeSpec) -> DriverResult<(&str, &str)> {
    let plain = |s: &str| {
        !s.is_empty() && s.len() <= 31 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !plain(&v.node)
        || !plain(&v.serial)
        || !v.node.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return Err(failed(format!(
            "invalid volume name {:?}/{:?}",
            v.node, v.serial
        )));
    }
    Ok((&v.node, &v.serial))
}

/// `-runas`'s user (a name, or QEMU's numeric `uid:gid`).
pub(crate) fn resolve_user(user: &str) -> DriverResult<Identity> {
    Identity::resolve(user).map_err(|e| failed(format!("{e} (run_as)")))
}

/// Lets `-runas`'s user reach the VM's files, and nothing more. QEMU opens them as root, but
/// reopens them as that user when an incoming migration (resume) activates the disk, and a
/// hot-plugged volume is opened as that user from the start. Like libvirt's DAC driver, with
/// groups instead of "other" bits:
/// - the instance directory stays root's (so QEMU cannot plant files or symlinks for the agent
///   to follow), in the user's group, searchable by that group only (0710);
/// - `owned` (the VM's own disk, config drive, volumes) are given to the user (0600);
/// - `shared` (the cached image the disk is an overlay on, read by every VM of that image) stay
///   root's, readable by the user's group (0640), never writable by it.
///
/// Then every file is checked as that user would open it, so a directory on the way that it
/// cannot pass is said plainly here rather than found by QEMU later.
pub(crate) fn grant_access(
    user: &Identity,
    dir: &Path,
    owned: &[&Path],
    shared: &[&Path],
) -> DriverResult<()> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        failed(format!("cannot {what} {}: {e}", p.display()))
    };
    access::set_group_mode(dir, Some(user.gid), 0o710).map_err(|e| io("chmod", dir, e))?;
    for img in owned {
        access::set_owner_mode(img, user.uid, user.gid, 0o600).map_err(|e| io("chown", img, e))?;
    }
    for img in shared {
        access::set_group_mode(img, Some(user.gid), 0o640).map_err(|e| io("chgrp", img, e))?;
    }
    for img in owned.iter().chain(shared) {
        if let Some(blocked) = access::check(img, user, access::READ) {
            return Err(failed(format!(
                "QEMU runs as {:?} but cannot reach {}: {blocked} (`onestack up` sets the data \
                 directory's modes; a directory above it must be searchable by that user)",
                user.name,
                img.display(),
            )));
        }
    }
    Ok(())
}

/// Starts QEMU in its own process group with stdio on `log`. A thread waits for it, so it never
/// lingers as a zombie while the agent runs; the receiver gets its exit status.
pub(crate) fn spawn_detached(
    args: &[OsString],
    dir: &Path,
    log: &Path,
) -> DriverResult<(i32, tokio::sync::oneshot::Receiver<String>)> {
    let too_big = std::fs::metadata(log).is_ok_and(|m| m.len() > MAX_QEMU_LOG);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(!too_big)
        .write(true)
        .truncate(too_big)
        .open(log)
        .map_err(|e| failed(format!("cannot open {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| failed(format!("cannot open {}: {e}", log.display())))?;
    let mut child = std::process::Command::new(QEMU)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| failed(format!("cannot run {QEMU}: {e}")))?;
    let pid = i32::try_from(child.id()).map_err(failed)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reaper = std::thread::Builder::new()
        .name(format!("qemu-{pid}"))
        .spawn(move || {
            let status = match child.wait() {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown status: {e}"),
            };
            let _ = tx.send(status);
        });
    if let Err(e) = reaper {
        let _ = signal(pid, Signal::SIGKILL);
        return Err(failed(format!("cannot start a thread to watch QEMU: {e}")));
    }
    Ok((pid, rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::NicSpec;
    use std::path::PathBuf;

    fn spec() -> VmSpec {
        VmSpec {
            id: "4b2c1a52-0f7e-4d7f-9a43-1f0e5b0f6d2a".into(),
            name: "instance-00000001".into(),
            vcpus: 2,
            memory_mb: 512,
            disk: PathBuf::from("/i/a,b/disk"),
            base: None,
            config_drive: Some(PathBuf::from("/i/disk.config")),
            nics: vec![NicSpec {
                mac: "fa:16:3e:00:00:01".into(),
                tap: "tap0".into(),
            }],
            volumes: vec![crate::driver::VolumeSpec {
                node: "vol0123abcd".into(),
                path: PathBuf::from("/v/volume-1,2"),
                serial: "0123abcd-0000-0000-0".into(),
            }],
        }
    }

    #[test]
    fn command_line() -> DriverResult<()> {
        let paths = ArgPaths {
            qmp: Path::new("/i/qmp.sock"),
            console_sock: Path::new("/i/console.sock"),
            console_log: Path::new("/i/console.log"),
            pidfile: Path::new("/i/qemu.pid"),
        };
        let args = qemu_args(&spec(), &paths, Accel::Tcg, Some("nobody"), "none", true)?;
        let line = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        for want in [
            "-qmp unix:/i/qmp.sock,server=on,wait=off",
            "-machine pc,accel=tcg -cpu max -m 512 -smp 2",
            "serial=4b2c1a52-0f7e-4d7f-9a43-1f0e5b0f6d2a,uuid=4b2c1a52",
            // A comma in a path is doubled, so it cannot inject options.
            "-drive file=/i/a,,b/disk,if=virtio,format=qcow2,cache=none",
            "-drive file=/i/disk.config,media=cdrom,readonly=on,if=ide,format=raw",
            "path=/i/console.sock,server=on,wait=off,logfile=/i/console.log,logappend=on",
            "-netdev tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device virtio-net-pci,netdev=n0,mac=fa:16:3e:00:00:01",
            "-blockdev driver=qcow2,node-name=vol0123abcd,file.driver=file,file.filename=/v/volume-1,,2",
            "-device virtio-blk-pci,drive=vol0123abcd,id=vol0123abcd,serial=0123abcd-0000-0000-0",
            "spawn=deny",
            "-runas nobody -S -incoming defer",
        ] {
            assert!(line.contains(want), "{want:?} not in {line}");
        }
        let mut bad = spec();
        bad.nics[0].mac = "fa:16:3e:00:00:01,x=y".into();
        assert!(qemu_args(&bad, &paths, Accel::Kvm, None, "none", false).is_err());
        let mut bad = spec();
        bad.volumes[0].serial = "x,file=/etc/shadow".into();
        assert!(qemu_args(&bad, &paths, Accel::Kvm, None, "none", false).is_err());
        Ok(())
    }

    #[test]
    fn own_process_is_not_qemu() {
        assert!(!pid_matches(std::process::id() as i32, "onestack"));
        assert!(!pid_matches(i32::MAX, "x"));
    }
}
