//! Who may read what. Everything OneStack keeps is root's alone — the state store (and its WAL
//! and shared-memory files), secrets, logs, pid files, images, volumes, instance disks, console
//! logs, config drives — except exactly what the unprivileged helpers must open by name, which
//! they reach through their own group, never through "other" bits:
//!
//! | in the data directory                                   | mode               |
//! |---------------------------------------------------------|--------------------|
//! | the data directory, `compute/`, `compute/instances/`, `compute/instances/<id>/`, `compute/images/`, `volumes/` | root:`onestack-qemu` 0710: QEMU's user passes through, lists nothing |
//! | `compute/images/<image id>` (the cached base image)     | root:`onestack-qemu` 0640: read by every VM's overlay, written by none |
//! | `compute/instances/<id>/disk`, `disk.config`, `volumes/volume-<id>` | 0600, root's or given to QEMU's user while its VM uses it |
//! | everything else (`onestack.db*`, `secrets/`, `logs/`, `run/`, `images/`, `compute/network/`, console logs, sockets, …) | 0600 files, 0700 directories |
//!
//! Where QEMU runs as root (`compute.qemu_user = root`, or its user cannot reach the data
//! directory) the QEMU rows are root's alone too (0700, 0600).
//!
//! dnsmasq re-reads its host and option lists as its own user (`onestack-dnsmasq`) on every
//! SIGHUP, so they live outside the data directory (which may sit where only root can go, as
//! `mktemp -d` makes it): `/run/onestack/<cloud>/dhcp/<network>/{hosts,opts}`, root:
//! `onestack-dnsmasq` 0640 in 0710 directories, under 0711 ones (see [`DataDir::helper_dir`]).
//! Its pid, lease and log files it opens while still root, so they stay in the data directory.
//!
//! `up` (and the agent, when it starts) sets these modes on what exists ([`fix`]); `doctor` and
//! `status` report what differs ([`checks`]).

use crate::config::Config;
use crate::paths::{DataDir, HELPER_ROOT};
use anyhow::{bail, Context, Result};
use onestack_agent::access::{self, Identity, Meta};
use std::path::{Path, PathBuf};

/// The dedicated user QEMU drops to when the agent runs as root (`compute.qemu_user = auto`).
pub const QEMU_USER: &str = "onestack-qemu";
/// The dedicated user dnsmasq drops to.
pub const DNSMASQ_USER: &str = "onestack-dnsmasq";

/// What a path in the data directory is, for who may use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Secrets and state: root's alone.
    Private,
    /// A directory QEMU's user passes through to its VMs' files.
    QemuDir,
    /// A cached image under the overlays of every VM started from it: read-only to QEMU.
    QemuShared,
    /// A VM's own disk, config drive or volume: root's, or QEMU's user's while its VM runs.
    QemuOwned,
}

/// The class of `rel` (a path relative to the data directory).
pub fn class_of(rel: &Path, is_dir: bool) -> Class {
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    if parts.len() != rel.iter().count() {
        return Class::Private; // a name that is not UTF-8 is nothing OneStack made
    }
    match (parts.as_slice(), is_dir) {
        ([], true)
        | (["compute"], true)
        | (["compute", "instances"], true)
        | (["compute", "instances", _], true)
        | (["compute", "images"], true)
        | (["volumes"], true) => Class::QemuDir,
        (["compute", "instances", _, "disk" | "disk.config"], false) => Class::QemuOwned,
        (["compute", "images", name], false) if !name.ends_with(".part") => Class::QemuShared,
        (["volumes", name], false) if name.starts_with("volume-") && !name.ends_with(".tmp") => {
            Class::QemuOwned
        }
        _ => Class::Private,
    }
}

/// The permission bits and group a path of `class` should have; `qemu_gid` is the group of
/// QEMU's user (None: QEMU runs as root, and nothing is shared). A None group is left as it is.
pub fn wanted(class: Class, is_dir: bool, qemu_gid: Option<u32>) -> (u32, Option<u32>) {
    match (class, qemu_gid) {
        (Class::QemuDir, Some(g)) => (0o710, Some(g)),
        (Class::QemuShared, Some(g)) => (0o640, Some(g)),
        _ if is_dir => (0o700, None),
        _ => (0o600, None),
    }
}

/// What is wrong with a path's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issue {
    /// Someone besides root (and QEMU's group where it is meant to) may read, write or enter it.
    Exposed,
    /// QEMU's user cannot pass or read where it must.
    Closed,
}

/// The issue of a path with metadata `m`, if any. Fewer owner bits than wanted are no issue.
pub fn issue(m: &Meta, class: Class, qemu_gid: Option<u32>) -> Option<Issue> {
    let (mode, gid) = wanted(class, m.is_dir, qemu_gid);
    let perm = m.mode & 0o777;
    let right_group = gid.is_none_or(|g| g == m.gid);
    let mut extra = perm & !mode;
    if !right_group {
        // Group bits are meant for QEMU's group only.
        extra |= perm & 0o070;
    }
    if extra & 0o077 != 0 {
        return Some(Issue::Exposed);
    }
    if gid.is_some() && (!right_group || perm & 0o070 != mode & 0o070) {
        return Some(Issue::Closed);
    }
    None
}

/// A path whose mode differs from what it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    pub is_dir: bool,
    pub mode: u32,
    pub gid: u32,
    pub issue: Issue,
    pub want_mode: u32,
    pub want_gid: Option<u32>,
}

impl Finding {
    fn short(&self) -> String {
        format!("{} ({:04o})", self.path.display(), self.mode & 0o7777)
    }
}

/// Every path under `root` (itself included; symbolic links are not followed) with an issue.
pub fn scan(root: &Path, qemu_gid: Option<u32>) -> Vec<Finding> {
    let mut out = Vec::new();
    walk(root, Path::new(""), qemu_gid, &mut out);
    out
}

fn walk(root: &Path, rel: &Path, qemu_gid: Option<u32>, out: &mut Vec<Finding>) {
    let path = root.join(rel);
    let Ok(md) = std::fs::symlink_metadata(&path) else {
        return;
    };
    if md.file_type().is_symlink() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let m = Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        is_dir: md.is_dir(),
    };
    let class = class_of(rel, m.is_dir);
    if let Some(issue) = issue(&m, class, qemu_gid) {
        let (want_mode, want_gid) = wanted(class, m.is_dir, qemu_gid);
        out.push(Finding {
            // The data directory itself, without the trailing slash `join("")` adds.
            path: if rel.as_os_str().is_empty() {
                root.to_path_buf()
            } else {
                path.clone()
            },
            is_dir: m.is_dir,
            mode: m.mode,
            gid: m.gid,
            issue,
            want_mode,
            want_gid,
        });
    }
    if m.is_dir {
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), qemu_gid, out);
        }
    }
}

/// Sets the wanted mode (and group) on every path under `root` that [`scan`] finds; returns
/// what it changed. Idempotent.
pub fn fix(root: &Path, qemu_gid: Option<u32>) -> Result<Vec<Finding>> {
    let found = scan(root, qemu_gid);
    for f in &found {
        access::set_group_mode(&f.path, f.want_gid, f.want_mode)
            .with_context(|| format!("cannot set the mode of {}", f.path.display()))?;
    }
    Ok(found)
}

// ---- the helpers' users ---------------------------------------------------------------------

/// Creates a system user with a group of its own (no home, no shell) unless it exists.
pub fn ensure_system_user(name: &str) -> Result<()> {
    if nix::unistd::User::from_name(name)?.is_some() {
        return Ok(());
    }
    let out = std::process::Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home"])
        .args([
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output()
        .context("cannot run useradd")?;
    if !out.status.success() && nix::unistd::User::from_name(name)?.is_none() {
        bail!(
            "useradd failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Which user QEMU runs as, and why.
#[derive(Clone, Debug)]
pub struct QemuChoice {
    /// None: as the agent's own user (root, or the user running a non-root agent).
    pub user: Option<Identity>,
    pub note: String,
    /// QEMU runs as root although it was meant to run unprivileged.
    pub degraded: bool,
}

/// Which user QEMU runs as (`compute.qemu_user`). `auto`: as root, the dedicated user
/// [`QEMU_USER`] (created when `create`) whenever it can pass the directories above the data
/// directory (those in it are OneStack's to open to it); otherwise the agent's own user. `root`
/// or empty: the agent's user. Anything else: that user, which must exist.
pub fn qemu_choice(cfg: &Config, dd: &DataDir, create: bool) -> Result<QemuChoice> {
    let unprivileged = |user: Identity| QemuChoice {
        note: format!("QEMU runs as the unprivileged user {}", user.name),
        user: Some(user),
        degraded: false,
    };
    let as_root = |note: String, degraded: bool| QemuChoice {
        user: None,
        note,
        degraded,
    };
    match cfg.compute.qemu_user.as_str() {
        "" | "root" => {
            return Ok(as_root(
                "QEMU runs as the agent's user (compute.qemu_user = root)".into(),
                false,
            ))
        }
        "auto" => {}
        user => {
            let id =
                Identity::resolve(user).map_err(|e| anyhow::anyhow!("compute.qemu_user: {e}"))?;
            return Ok(unprivileged(id));
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Ok(as_root(
            "QEMU runs as the agent's own (unprivileged) user".into(),
            false,
        ));
    }
    if create {
        if let Err(e) = ensure_system_user(QEMU_USER) {
            return Ok(as_root(
                format!("QEMU runs as root: cannot create the user {QEMU_USER} ({e:#})"),
                true,
            ));
        }
    }
    let id = match Identity::resolve(QEMU_USER) {
        Ok(id) => id,
        Err(_) => {
            return Ok(as_root(
                format!("the user {QEMU_USER} does not exist yet (the agent creates it)"),
                false,
            ))
        }
    };
    if let Some(blocked) = dd
        .root
        .parent()
        .and_then(|p| access::check(p, &id, access::SEARCH))
    {
        return Ok(as_root(
            format!(
                "QEMU runs as root, not as {QEMU_USER}: {blocked}; put the data directory where \
                 that user can pass (e.g. under /var/lib), or let others pass through that \
                 directory (chmod o+x)"
            ),
            true,
        ));
    }
    Ok(unprivileged(id))
}

/// The user dnsmasq drops to: [`DNSMASQ_USER`] (created when `create`), else `nobody`.
pub fn dnsmasq_user(create: bool) -> Result<Identity> {
    if create && nix::unistd::geteuid().is_root() {
        if let Err(e) = ensure_system_user(DNSMASQ_USER) {
            tracing::warn!("dnsmasq runs as nobody: cannot create the user {DNSMASQ_USER} ({e:#})");
        }
    }
    Identity::resolve(DNSMASQ_USER)
        .or_else(|_| Identity::resolve("nobody"))
        .map_err(|e| anyhow::anyhow!("no user for dnsmasq: {e}"))
}

// ---- the helper directory (/run/onestack/<cloud>) -------------------------------------------

/// Makes `/run/onestack/<cloud>` (passable by anyone, listable by root) and records which data
/// directory it belongs to.
pub fn prepare_helper_dir(dd: &DataDir) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = dd.helper_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for d in [Path::new(HELPER_ROOT), dir.as_path()] {
        access::set_group_mode(d, None, 0o711)
            .with_context(|| format!("cannot set the mode of {}", d.display()))?;
    }
    crate::paths::write_private(&dir.join("data-dir"), &dd.root.to_string_lossy())?;
    Ok(dir)
}

/// The host and option lists dnsmasq reads, one pair per network served here.
fn dnsmasq_files(dd: &DataDir) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dd.helper_dir().join("dhcp"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| [e.path().join("hosts"), e.path().join("opts")])
        .filter(|p| p.exists())
        .collect();
    out.sort();
    out
}

/// What the agent sets on dnsmasq's directories and files, set again (after a change by hand).
fn fix_dnsmasq_files(dd: &DataDir, user: &Identity) -> Result<usize> {
    let gid = (!user.is_root()).then_some(user.gid);
    let mut changed = 0;
    let dhcp = dd.helper_dir().join("dhcp");
    if !dhcp.exists() {
        return Ok(0);
    }
    changed += usize::from(access::set_group_mode(&dhcp, gid, 0o710)?);
    for file in dnsmasq_files(dd) {
        if let Some(dir) = file.parent() {
            changed += usize::from(access::set_group_mode(dir, gid, 0o710)?);
        }
        changed += usize::from(access::set_group_mode(&file, gid, 0o640)?);
    }
    Ok(changed)
}

/// Sets every mode OneStack wants on an existing install (what `up` runs first): the data
/// directory's tree, and the dnsmasq files under the helper directory. Returns a line for the
/// operator when it changed anything.
pub fn fix_install(dd: &DataDir, cfg: &Config) -> Result<Option<String>> {
    if !dd.root.exists() {
        return Ok(None);
    }
    let qemu = qemu_choice(cfg, dd, true)?;
    if !cfg.is_compute_node() {
        // Made before the volume service would (root's alone), so it is opened to QEMU below.
        onestack_core::fsutil::create_private_dir(&dd.volumes())
            .with_context(|| format!("cannot create {}", dd.volumes().display()))?;
    }
    let mut fixed = fix(&dd.root, qemu.user.as_ref().map(|u| u.gid))?;
    fixed.sort_by_key(|f| f.is_dir);
    let mut changed: Vec<String> = fixed.iter().map(Finding::short).collect();
    if nix::unistd::geteuid().is_root() && dd.helper_dir().exists() {
        let mut n = 0;
        for d in [Path::new(HELPER_ROOT), dd.helper_dir().as_path()] {
            n += usize::from(access::set_group_mode(d, None, 0o711)?);
        }
        n += fix_dnsmasq_files(dd, &dnsmasq_user(true)?)?;
        if n > 0 {
            changed.push(format!(
                "{n} DHCP file(s) under {}",
                dd.helper_dir().display()
            ));
        }
    }
    Ok((!changed.is_empty()).then(|| format!("file modes set on {}", abbreviate(&changed, 6))))
}

fn abbreviate(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

// ---- checks for doctor and status -----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Ok,
    Warn,
    Fail,
}

/// One finding for the operator.
#[derive(Clone, Debug)]
pub struct Check {
    pub severity: Severity,
    pub what: &'static str,
    pub detail: String,
}

/// What `doctor` and `status` say about who may read what (changes nothing).
pub fn checks(dd: &DataDir, cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    if !dd.root.exists() {
        return out;
    }
    let qemu = match qemu_choice(cfg, dd, false) {
        Ok(q) => q,
        Err(e) => {
            out.push(Check {
                severity: Severity::Fail,
                what: "QEMU user",
                detail: format!("{e:#}"),
            });
            return out;
        }
    };
    out.push(Check {
        severity: if qemu.degraded {
            Severity::Warn
        } else {
            Severity::Ok
        },
        what: "QEMU user",
        detail: qemu.note.clone(),
    });
    let mut found = scan(&dd.root, qemu.user.as_ref().map(|u| u.gid));
    // Files first: they are what leaks; a directory others may enter shows only names.
    found.sort_by_key(|f| f.is_dir);
    let exposed: Vec<String> = found
        .iter()
        .filter(|f| f.issue == Issue::Exposed)
        .map(Finding::short)
        .collect();
    let closed: Vec<String> = found
        .iter()
        .filter(|f| f.issue == Issue::Closed)
        .map(Finding::short)
        .collect();
    if !exposed.is_empty() {
        out.push(Check {
            severity: Severity::Fail,
            what: "file modes",
            detail: format!(
                "{} path(s) in the data directory that others may read or enter: {}; \
                 `onestack up` sets the right modes (0600 files, 0700 directories)",
                exposed.len(),
                abbreviate(&exposed, 5)
            ),
        });
    }
    if !closed.is_empty() {
        let who = qemu.user.as_ref().map_or("QEMU", |u| u.name.as_str());
        out.push(Check {
            severity: Severity::Fail,
            what: "file modes",
            detail: format!(
                "{} path(s) {who} cannot pass or read although its VMs need them: {}; \
                 `onestack up` sets the right modes",
                closed.len(),
                abbreviate(&closed, 5)
            ),
        });
    }
    if found.is_empty() {
        out.push(Check {
            severity: Severity::Ok,
            what: "file modes",
            detail: "secrets and state are root's alone; QEMU reaches only its VMs' files".into(),
        });
    }
    out.extend(dnsmasq_check(dd));
    out
}

/// Whether dnsmasq's user can read its lists, and nobody else can (None: no DHCP server here).
pub fn dnsmasq_check(dd: &DataDir) -> Option<Check> {
    let files = dnsmasq_files(dd);
    if files.is_empty() {
        return None;
    }
    let user = match dnsmasq_user(false) {
        Ok(u) => u,
        Err(e) => {
            return Some(Check {
                severity: Severity::Fail,
                what: "DHCP files",
                detail: format!("{e:#}"),
            })
        }
    };
    let mut problems = Vec::new();
    for f in &files {
        if let Some(blocked) = access::check(f, &user, access::READ) {
            problems.push(format!(
                "dnsmasq (user {}) cannot read {}: {blocked}; guests get no address",
                user.name,
                f.display()
            ));
        } else if Meta::of(f).is_some_and(|m| m.mode & 0o007 != 0) {
            problems.push(format!("{} is readable by everyone", f.display()));
        }
    }
    for log in dnsmasq_logs(dd) {
        if let Some(line) = last_read_failure(&log) {
            problems.push(format!("dnsmasq logged: {line} ({})", log.display()));
        }
    }
    Some(if problems.is_empty() {
        Check {
            severity: if user.name == DNSMASQ_USER {
                Severity::Ok
            } else {
                Severity::Warn
            },
            what: "DHCP files",
            detail: format!(
                "{} host/option list(s) readable by dnsmasq's user {} and no one else",
                files.len(),
                user.name
            ),
        }
    } else {
        Check {
            severity: Severity::Fail,
            what: "DHCP files",
            detail: format!(
                "{}; `onestack up` sets the right modes",
                abbreviate(&problems, 3)
            ),
        }
    })
}

fn dnsmasq_logs(dd: &DataDir) -> Vec<PathBuf> {
    std::fs::read_dir(dd.root.join("compute/network/dhcp"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("dnsmasq.log"))
        .filter(|p| p.exists())
        .collect()
}

/// dnsmasq's last word on its host list, when that was a failure to read it.
fn last_read_failure(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))
        .ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    last_read_failure_in(&String::from_utf8_lossy(&buf))
}

/// Among the lines about reading the host list (`read …/hosts`, `cannot read …/hosts: …`),
/// the last, when it is a failure.
fn last_read_failure_in(log: &str) -> Option<String> {
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("/hosts") && (l.contains("cannot read") || l.contains(" read ")))?;
    last.split_once("cannot read")
        .map(|(_, rest)| format!("cannot read {}", rest.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn meta(mode: u32, gid: u32, is_dir: bool) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid,
            is_dir,
        }
    }

    #[test]
    fn classes() {
        let c = |p: &str, d: bool| class_of(Path::new(p), d);
        assert_eq!(c("", true), Class::QemuDir);
        assert_eq!(c("compute/instances/abc", true), Class::QemuDir);
        assert_eq!(c("compute/instances/abc/disk", false), Class::QemuOwned);
        assert_eq!(
            c("compute/instances/abc/disk.config", false),
            Class::QemuOwned
        );
        assert_eq!(c("compute/images/img1", false), Class::QemuShared);
        assert_eq!(c("volumes/volume-1", false), Class::QemuOwned);
        for private in [
            ("onestack.db", false),
            ("onestack.db-wal", false),
            ("onestack.db-shm", false),
            ("secrets", true),
            ("secrets/admin-password", false),
            ("logs/api.log", false),
            ("images/img1", false),
            ("compute/network", true),
            ("compute/network/dhcp/n1/leases", false),
            ("compute/instances/abc/console.log", false),
            ("compute/instances/abc/qmp.sock", false),
            ("compute/instances/abc/disk.part", false),
            ("compute/images/img1.part", false),
            ("volumes/snapshot-1", false),
            ("volumes/volume-1.tmp", false),
            ("demo-key", false),
            ("clouds.yaml", false),
        ] {
            assert_eq!(c(private.0, private.1), Class::Private, "{private:?}");
        }
    }

    #[test]
    fn issues() {
        let g = Some(900);
        // The state store as older versions left it: readable by everyone.
        assert_eq!(
            issue(&meta(0o644, 0, false), Class::Private, g),
            Some(Issue::Exposed)
        );
        assert_eq!(issue(&meta(0o600, 0, false), Class::Private, g), None);
        assert_eq!(issue(&meta(0o400, 0, false), Class::Private, g), None);
        // The data directory: world-searchable is exposed, 0700 keeps QEMU out.
        assert_eq!(
            issue(&meta(0o755, 0, true), Class::QemuDir, g),
            Some(Issue::Exposed)
        );
        assert_eq!(
            issue(&meta(0o711, 900, true), Class::QemuDir, g),
            Some(Issue::Exposed)
        );
        assert_eq!(
            issue(&meta(0o700, 0, true), Class::QemuDir, g),
            Some(Issue::Closed)
        );
        assert_eq!(
            issue(&meta(0o710, 0, true), Class::QemuDir, g),
            Some(Issue::Exposed),
            "group bits for a group that is not QEMU's"
        );
        assert_eq!(issue(&meta(0o710, 900, true), Class::QemuDir, g), None);
        // Without an unprivileged QEMU, nothing is shared.
        assert_eq!(issue(&meta(0o700, 0, true), Class::QemuDir, None), None);
        assert_eq!(
            issue(&meta(0o710, 900, true), Class::QemuDir, None),
            Some(Issue::Exposed)
        );
        // The cached image: QEMU's group reads it, nobody writes it.
        assert_eq!(issue(&meta(0o640, 900, false), Class::QemuShared, g), None);
        assert_eq!(
            issue(&meta(0o660, 900, false), Class::QemuShared, g),
            Some(Issue::Exposed)
        );
        assert_eq!(
            issue(&meta(0o600, 0, false), Class::QemuShared, g),
            Some(Issue::Closed)
        );
        // A VM's disk given to QEMU's user stays 0600.
        let disk = Meta {
            mode: 0o600,
            uid: 901,
            gid: 900,
            is_dir: false,
        };
        assert_eq!(issue(&disk, Class::QemuOwned, g), None);
        assert_eq!(
            issue(&meta(0o644, 0, false), Class::QemuOwned, g),
            Some(Issue::Exposed)
        );
    }

    /// An install as older versions left it (umask 022) is found, fixed, and found clean after.
    #[test]
    fn scan_and_fix_an_old_install() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("data");
        let gid = nix::unistd::getgid().as_raw();
        for d in [
            "secrets",
            "logs",
            "compute/instances/vm1",
            "compute/images",
            "compute/network",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for (f, mode) in [
            ("onestack.db", 0o644),
            ("onestack.db-wal", 0o644),
            ("secrets/agent-token", 0o600),
            ("logs/api.log", 0o644),
            ("compute/instances/vm1/disk", 0o644),
            ("compute/instances/vm1/console.log", 0o644),
            ("compute/images/img1", 0o644),
        ] {
            let p = root.join(f);
            std::fs::write(&p, "x").expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        for d in [
            "",
            "secrets",
            "logs",
            "compute",
            "compute/instances",
            "compute/instances/vm1",
        ] {
            std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).expect("symlink");
        let found = scan(&root, Some(gid));
        let paths: Vec<String> = found
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(&root)
                    .expect("inside")
                    .display()
                    .to_string()
            })
            .collect();
        for want in [
            "",
            "onestack.db",
            "onestack.db-wal",
            "secrets",
            "logs/api.log",
            "compute/instances/vm1/disk",
            "compute/instances/vm1/console.log",
            "compute/images/img1",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want:?} not in {paths:?}");
        }
        assert!(!paths
            .iter()
            .any(|p| p == "secrets/agent-token" || p == "link"));
        assert_eq!(fix(&root, Some(gid)).expect("fix").len(), found.len());
        assert_eq!(scan(&root, Some(gid)), Vec::new());
        assert!(fix(&root, Some(gid)).expect("again").is_empty());
        let mode = |p: &str| {
            let m = std::fs::metadata(root.join(p)).expect("stat");
            (m.mode() & 0o777, m.gid())
        };
        assert_eq!(mode(""), (0o710, gid));
        assert_eq!(mode("onestack.db").0, 0o600);
        assert_eq!(mode("secrets").0, 0o700);
        assert_eq!(mode("compute/images/img1"), (0o640, gid));
        assert_eq!(mode("compute/instances/vm1/disk").0, 0o600);
        // The link's target is left alone.
        assert_ne!(
            std::fs::metadata("/etc/passwd").expect("stat").mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn dnsmasq_read_failures_are_found_in_its_log() {
        let log = "dnsmasq-dhcp[7]: read /run/onestack/x/dhcp/n/hosts\n\
                   dnsmasq[7]: cannot read /run/onestack/x/dhcp/n/hosts: Permission denied\n";
        assert_eq!(
            last_read_failure_in(log).as_deref(),
            Some("cannot read /run/onestack/x/dhcp/n/hosts: Permission denied")
        );
        // A later successful read means it was fixed.
        let fixed = format!("{log}dnsmasq-dhcp[7]: read /run/onestack/x/dhcp/n/hosts\n");
        assert_eq!(last_read_failure_in(&fixed), None);
        assert_eq!(last_read_failure_in("dnsmasq[7]: started\n"), None);
    }
}
