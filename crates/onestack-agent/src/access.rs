//! Who may reach which file. The agent runs as root; the helpers it starts drop to unprivileged
//! users — QEMU (`-runas`) and dnsmasq (`--user`) — and get exactly the files they use, by
//! ownership or by their group, never through "other" bits. This module names such a user, sets
//! a file's owner, group and mode, and tells whether a user can reach a file: the check the agent
//! runs before handing a file to a helper, and that `onestack doctor` and `status` run too.
//!
//! The model is the kernel's discretionary access control (owner, group and other bits, with
//! root passing them all); ACLs and mandatory access control (AppArmor, SELinux) are not read.

use std::fmt;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Read permission (on a file).
pub const READ: u32 = 4;
/// Write permission (on a file).
pub const WRITE: u32 = 2;
/// Search permission (on a directory: passing through it to a name inside).
pub const SEARCH: u32 = 1;

/// A user a helper runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The name the helper is given (QEMU's `-runas` also takes `uid:gid`).
    pub name: String,
    /// The primary group's name, where it has one (dnsmasq's `--group` takes a name).
    pub group: Option<String>,
    pub uid: u32,
    /// The primary group: the group the files shared with this user get.
    pub gid: u32,
    /// Every group the user is in, the primary one included.
    pub gids: Vec<u32>,
}

impl Identity {
    /// Looks a user up by name, or takes QEMU's numeric `uid:gid`.
    pub fn resolve(user: &str) -> Result<Identity, String> {
        if let Some((u, g)) = user.split_once(':') {
            if let (Ok(uid), Ok(gid)) = (u.parse(), g.parse()) {
                return Ok(Identity {
                    name: user.to_string(),
                    group: None,
                    uid,
                    gid,
                    gids: vec![gid],
                });
            }
        }
        let pw = nix::unistd::User::from_name(user)
            .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
            .ok_or_else(|| format!("no such user {user:?}"))?;
        let mut gids = vec![pw.gid.as_raw()];
        if let Ok(name) = std::ffi::CString::new(user) {
            if let Ok(list) = nix::unistd::getgrouplist(&name, pw.gid) {
                gids.extend(list.iter().map(|g| g.as_raw()));
            }
        }
        gids.sort_unstable();
        gids.dedup();
        let group = nix::unistd::Group::from_gid(pw.gid)
            .ok()
            .flatten()
            .map(|g| g.name);
        Ok(Identity {
            name: user.to_string(),
            group,
            uid: pw.uid.as_raw(),
            gid: pw.gid.as_raw(),
            gids,
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// A path's owner, group and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub is_dir: bool,
}

impl Meta {
    /// The path's metadata, following symbolic links (as opening it does).
    pub fn of(path: &Path) -> Option<Meta> {
        std::fs::metadata(path).ok().map(|m| Meta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            is_dir: m.is_dir(),
        })
    }
}

/// Whether `who` holds every permission in `want` on a path with `m`: the owner's bits if it
/// owns it, else the group's if it is in the group, else the others' (the kernel's order: an
/// owner without a bit does not fall back to the group's). Root passes.
pub fn permits(m: &Meta, who: &Identity, want: u32) -> bool {
    if who.is_root() {
        return true;
    }
    let class = if m.uid == who.uid {
        (m.mode >> 6) & 7
    } else if who.gids.contains(&m.gid) {
        (m.mode >> 3) & 7
    } else {
        m.mode & 7
    };
    class & want == want
}

/// Why a user cannot reach a file: the first path on the way that stops it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub who: String,
    pub path: PathBuf,
    /// None: the path does not exist.
    pub meta: Option<Meta>,
    pub want: u32,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(m) = self.meta else {
            return write!(f, "{} does not exist", self.path.display());
        };
        let what = match self.want {
            SEARCH => "search (pass through)",
            READ => "read",
            w if w == READ | WRITE => "read and write",
            _ => "use",
        };
        write!(
            f,
            "user {} cannot {what} {} (mode {:04o}, owner uid {}, group gid {})",
            self.who,
            self.path.display(),
            m.mode,
            m.uid,
            m.gid
        )
    }
}

/// The first path on the way to `file` that `who` cannot pass — a directory it cannot search,
/// or `file` itself without `want` — with `stat` giving each path's metadata.
pub fn check_with(
    file: &Path,
    who: &Identity,
    want: u32,
    stat: impl Fn(&Path) -> Option<Meta>,
) -> Option<Blocked> {
    let blocked = |path: &Path, meta: Option<Meta>, want: u32| Blocked {
        who: who.name.clone(),
        path: path.to_path_buf(),
        meta,
        want,
    };
    let mut chain: Vec<&Path> = file
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    chain.reverse();
    for dir in chain {
        match stat(dir) {
            Some(m) if permits(&m, who, SEARCH) => {}
            m => return Some(blocked(dir, m, SEARCH)),
        }
    }
    match stat(file) {
        Some(m) if permits(&m, who, want) => None,
        m => Some(blocked(file, m, want)),
    }
}

/// [`check_with`] on the real file system.
pub fn check(file: &Path, who: &Identity, want: u32) -> Option<Blocked> {
    check_with(file, who, want, Meta::of)
}

/// Sets `path`'s group (when given) and permission bits, leaving its owner; does nothing when
/// they already are so. Returns whether it changed anything.
pub fn set_group_mode(path: &Path, gid: Option<u32>, mode: u32) -> io::Result<bool> {
    set(path, None, gid, mode)
}

/// Gives `path` to a user and group with `mode` (a helper's own file, e.g. a VM's disk).
pub fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<bool> {
    set(path, Some(uid), Some(gid), mode)
}

fn set(path: &Path, uid: Option<u32>, gid: Option<u32>, mode: u32) -> io::Result<bool> {
    let m = std::fs::symlink_metadata(path)?;
    if m.file_type().is_symlink() {
        // Never followed: whoever could plant it is not to choose what root changes.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a symbolic link", path.display()),
        ));
    }
    let mut changed = false;
    let new_uid = uid.filter(|u| *u != m.uid());
    let new_gid = gid.filter(|g| *g != m.gid());
    if new_uid.is_some() || new_gid.is_some() {
        std::os::unix::fs::chown(path, new_uid, new_gid)?;
        changed = true;
    }
    // chown clears set-id bits, so the mode is set after it.
    if m.mode() & 0o7777 != mode || changed {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        changed |= m.mode() & 0o7777 != mode;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn user(uid: u32, gids: &[u32]) -> Identity {
        Identity {
            name: format!("u{uid}"),
            group: None,
            uid,
            gid: gids[0],
            gids: gids.to_vec(),
        }
    }

    fn meta(mode: u32, uid: u32, gid: u32) -> Meta {
        Meta {
            mode,
            uid,
            gid,
            is_dir: true,
        }
    }

    #[test]
    fn classes_are_chosen_as_the_kernel_does() {
        let qemu = user(900, &[900]);
        // Others' bits only when neither owner nor in the group.
        assert!(permits(&meta(0o711, 0, 0), &qemu, SEARCH));
        assert!(!permits(&meta(0o700, 0, 0), &qemu, SEARCH));
        // The group's bits for a member.
        assert!(permits(&meta(0o710, 0, 900), &qemu, SEARCH));
        assert!(!permits(&meta(0o710, 0, 901), &qemu, SEARCH));
        assert!(permits(&meta(0o640, 0, 900), &qemu, READ));
        assert!(!permits(&meta(0o640, 0, 900), &qemu, READ | WRITE));
        // An owner without the bit does not fall back to the group's or others'.
        assert!(!permits(&meta(0o077, 900, 900), &qemu, READ));
        assert!(permits(&meta(0o600, 900, 0), &qemu, READ | WRITE));
        // Root passes everything.
        assert!(permits(&meta(0o000, 5, 5), &user(0, &[0]), READ | WRITE));
    }

    #[test]
    fn the_first_blocking_directory_is_named() {
        let fs: HashMap<PathBuf, Meta> = [
            ("/", meta(0o755, 0, 0)),
            ("/tmp", meta(0o1777, 0, 0)),
            ("/tmp/d", meta(0o700, 0, 0)),
            ("/tmp/d/net", meta(0o710, 0, 950)),
            ("/tmp/d/net/hosts", meta(0o640, 0, 950)),
        ]
        .into_iter()
        .map(|(p, m)| (PathBuf::from(p), m))
        .collect();
        let stat = |p: &Path| fs.get(p).copied();
        let dnsmasq = user(950, &[950]);
        let b = check_with(Path::new("/tmp/d/net/hosts"), &dnsmasq, READ, stat)
            .expect("blocked by the 0700 data dir");
        assert_eq!(b.path, Path::new("/tmp/d"));
        assert_eq!(b.want, SEARCH);
        let text = b.to_string();
        assert!(
            text.contains("cannot search") && text.contains("0700"),
            "{text}"
        );
        // Not blocked once the directory lets the group through.
        let mut fs2 = fs.clone();
        fs2.insert(PathBuf::from("/tmp/d"), meta(0o710, 0, 950));
        assert_eq!(
            check_with(Path::new("/tmp/d/net/hosts"), &dnsmasq, READ, |p| fs2
                .get(p)
                .copied()),
            None
        );
        // Someone else is still kept out, at the data dir.
        let other = user(65534, &[65534]);
        let b = check_with(Path::new("/tmp/d/net/hosts"), &other, READ, |p| {
            fs2.get(p).copied()
        })
        .expect("blocked");
        assert_eq!(b.path, Path::new("/tmp/d"));
        // A missing file is named as such.
        let b =
            check_with(Path::new("/tmp/d/net/opts"), &user(0, &[0]), READ, stat).expect("missing");
        assert_eq!(b.meta, None);
        assert!(b.to_string().contains("does not exist"));
    }

    #[test]
    fn modes_and_groups_are_set_and_symlinks_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = tmp.path().join("f");
        std::fs::write(&f, "x").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(set_group_mode(&f, None, 0o600).expect("set"));
        assert!(!set_group_mode(&f, None, 0o600).expect("again"));
        assert_eq!(Meta::of(&f).expect("meta").mode, 0o600);
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&f, &link).expect("symlink");
        assert!(set_group_mode(&link, None, 0o644).is_err());
        assert_eq!(Meta::of(&f).expect("meta").mode, 0o600);
    }
}
