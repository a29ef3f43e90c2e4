//! Working inside other network namespaces without touching the agent's own threads: every
//! operation runs on a fresh OS thread that enters the namespace with setns(2) and then ends, so
//! no pooled runtime thread is ever left in a foreign namespace. A socket keeps the namespace it
//! was created in, and a child process inherits the creating thread's, which is all that is
//! needed for netlink, nft, sysctl writes and dnsmasq.

use super::validate::NsName;
use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Where `ip netns` keeps named namespaces (bind mounts of /proc/<pid>/ns/net).
pub const NETNS_DIR: &str = "/run/netns";

pub fn ns_path(name: &NsName) -> PathBuf {
    Path::new(NETNS_DIR).join(name.as_str())
}

/// Whether a live network namespace is mounted at `name`'s path. A path that is there but is not
/// a namespace (the empty file a lost mount leaves: a crash between `ip netns add`'s two steps,
/// or a mount namespace that ended) counts as missing: entering it fails with EINVAL.
pub fn exists(name: &NsName) -> bool {
    is_namespace(&ns_path(name))
}

/// The namespace file at `path` as (device, inode) if it is a namespace (nsfs, the same
/// filesystem as our own `/proc/self/ns/net`); the inode tells namespaces apart.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self/ns/net").ok()?;
    let m = std::fs::metadata(path).ok()?;
    (m.dev() == own.dev()).then(|| (m.dev(), m.ino()))
}

pub fn is_namespace(path: &Path) -> bool {
    identity(path).is_some()
}

/// Whether process `pid` lives in the namespace at `path` (false if either is gone).
pub fn process_in(pid: i32, path: &Path) -> bool {
    match (
        identity(Path::new(&format!("/proc/{pid}/ns/net"))),
        identity(path),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn enter(ns: Option<&Path>) -> Result<()> {
    if let Some(path) = ns {
        let f = std::fs::File::open(path)
            .with_context(|| format!("opening network namespace {}", path.display()))?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace {}", path.display()))?;
    }
    Ok(())
}

/// Runs `f` on a new thread inside the namespace at `ns` (None: the agent's own namespace).
pub async fn run_in<T, F>(ns: Option<PathBuf>, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let r = enter(ns.as_deref()).and_then(|()| f());
            let _ = tx.send(r);
        })
        .context("spawning a namespace thread")?;
    rx.await.context("namespace thread panicked")?
}

/// Runs `program args…` inside the namespace (args only: nothing goes through a shell), feeding
/// it `stdin`, and returns its output.
pub async fn command(
    ns: Option<PathBuf>,
    program: PathBuf,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
) -> Result<Output> {
    run_in(ns, move || {
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(&data)
                .with_context(|| format!("writing to {}", program.display()))?;
        }
        child
            .wait_with_output()
            .with_context(|| format!("waiting for {}", program.display()))
    })
    .await
}

/// A netlink route socket inside `ns`, driven by the current tokio runtime.
pub async fn netlink(ns: Option<PathBuf>) -> Result<rtnetlink::Handle> {
    let rt = tokio::runtime::Handle::current();
    run_in(ns, move || {
        // The socket is registered with the runtime's reactor, so create it inside it.
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        rt.spawn(conn);
        Ok(handle)
    })
    .await
}

/// Writes a sysctl of the namespace (e.g. `net/ipv4/ip_forward`): /proc/sys/net resolves to the
/// network namespace of the thread that opens it.
pub async fn sysctl(ns: Option<PathBuf>, key: &'static str, value: &'static str) -> Result<()> {
    run_in(ns, move || {
        let path = Path::new("/proc/sys").join(key);
        std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
    })
    .await
}

/// Reads a sysctl of the namespace (trimmed).
pub async fn read_sysctl(ns: Option<PathBuf>, key: &'static str) -> Result<String> {
    run_in(ns, move || {
        let path = Path::new("/proc/sys").join(key);
        std::fs::read_to_string(&path)
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("reading {}", path.display()))
    })
    .await
}

/// Creates the named namespace unless it exists (`ip netns add`: a bind mount under /run/netns);
/// true if it was made now (whatever lived in a namespace of that name before is gone). What
/// sits at the path without being a namespace is removed first (`ip netns del` unmounts and
/// unlinks).
pub async fn add(name: &NsName) -> Result<bool> {
    if exists(name) {
        return Ok(false);
    }
    let path = ns_path(name);
    if path.symlink_metadata().is_ok() {
        tracing::warn!(namespace = %name, "{} is not a network namespace (its mount is gone); \
            making it again", path.display());
        ip_netns("del", name).await?;
    }
    ip_netns("add", name).await?;
    Ok(true)
}

/// Deletes the named namespace if it exists; its interfaces go with it (a veth's peer too). A
/// path left without its namespace is removed as well.
pub async fn del(name: &NsName) -> Result<()> {
    if ns_path(name).symlink_metadata().is_err() {
        return Ok(());
    }
    ip_netns("del", name).await
}

async fn ip_netns(verb: &str, name: &NsName) -> Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(["netns", verb, name.as_str()])
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running ip netns {verb} {name}"))?;
    if !out.status.success() {
        bail!(
            "ip netns {verb} {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_mounted_namespace_is_one() {
        assert!(is_namespace(Path::new("/proc/self/ns/net")));
        // What a lost mount leaves: an empty file.
        let dir = tempfile::tempdir().expect("tmp");
        let stale = dir.path().join("qdhcp-x");
        std::fs::write(&stale, "").expect("file");
        assert!(!is_namespace(&stale));
        assert!(!is_namespace(&dir.path().join("missing")));
        let me = std::process::id() as i32;
        assert!(process_in(me, Path::new("/proc/self/ns/net")));
        assert!(!process_in(me, &stale));
    }
}
