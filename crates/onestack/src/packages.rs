//! Host packages: what OneStack runs (QEMU, dnsmasq, nftables, iproute2, genisoimage), installed
//! by `up` through the distribution's package manager when missing, and recorded in the data
//! directory so that `uninstall --purge-packages` removes exactly those — never a package that
//! was there before OneStack.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Each program OneStack runs, and the Debian/Ubuntu package that provides it.
pub const REQUIRED: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("dnsmasq", "dnsmasq-base"),
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("genisoimage", "genisoimage"),
];

/// The record of what `up` installed, one package per line.
pub fn record_file(data_dir: &Path) -> PathBuf {
    data_dir.join("installed-packages")
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(Into::into),
        )
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Packages for the programs `have` does not find, in order, without duplicates.
pub fn missing(have: impl Fn(&str) -> bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (program, package) in REQUIRED {
        if !have(program) && !out.contains(package) {
            out.push(*package);
        }
    }
    out
}

/// The distribution's package manager, as far as OneStack uses it.
pub trait PackageManager {
    fn is_installed(&self, package: &str) -> bool;
    fn install(&self, packages: &[&str]) -> Result<()>;
    fn purge(&self, packages: &[String]) -> Result<()>;
}

/// apt (Debian, Ubuntu), non-interactive.
pub struct Apt;

impl Apt {
    pub fn available() -> bool {
        which("apt-get").is_some() && which("dpkg-query").is_some()
    }

    fn apt_get(args: &[&str]) -> Result<()> {
        // Packages install files for everyone: not under OneStack's private umask.
        let out = crate::sys::with_umask(0o022, || {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
        })
        .context("cannot run apt-get")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!(
                "apt-get {} failed: {}",
                args.join(" "),
                err.lines().rev().take(3).collect::<Vec<_>>().join(" / ")
            );
        }
        Ok(())
    }
}

impl PackageManager for Apt {
    fn is_installed(&self, package: &str) -> bool {
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", package])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).ends_with("install ok installed"))
    }

    fn install(&self, packages: &[&str]) -> Result<()> {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend_from_slice(packages);
        // Stale or absent package lists are the usual cause of a failure: refresh once and retry.
        if Self::apt_get(&args).is_err() {
            Self::apt_get(&["update", "-q"])?;
            Self::apt_get(&args)?;
        }
        Ok(())
    }

    fn purge(&self, packages: &[String]) -> Result<()> {
        let mut args = vec!["purge", "-y", "-q"];
        args.extend(packages.iter().map(String::as_str));
        Self::apt_get(&args)
    }
}

fn read_record(data_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(record_file(data_dir))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Installs `wanted`, recording those that were not installed before. Returns what it
/// installed.
pub fn install_and_record(
    pm: &dyn PackageManager,
    data_dir: &Path,
    wanted: &[&str],
) -> Result<Vec<String>> {
    let new: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !pm.is_installed(p))
        .collect();
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let result = pm.install(&new);
    // Record what is installed now even after a partial failure, so uninstall can still undo it.
    let installed: Vec<String> = new
        .iter()
        .filter(|p| pm.is_installed(p))
        .map(|p| p.to_string())
        .collect();
    let mut all: BTreeSet<String> = read_record(data_dir).into_iter().collect();
    all.extend(installed.iter().cloned());
    let text = format!(
        "# Host packages onestack up installed; onestack uninstall --purge-packages removes them.\n{}",
        all.iter().map(|p| format!("{p}\n")).collect::<String>()
    );
    crate::paths::write_private(&record_file(data_dir), &text)?;
    result?;
    Ok(installed)
}

/// Purges what the record lists (and is still installed); returns what it removed.
pub fn purge_recorded(pm: &dyn PackageManager, data_dir: &Path) -> Result<Vec<String>> {
    let ours: Vec<String> = read_record(data_dir)
        .into_iter()
        .filter(|p| pm.is_installed(p))
        .collect();
    if !ours.is_empty() {
        pm.purge(&ours)?;
    }
    let _ = std::fs::remove_file(record_file(data_dir));
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A package manager over a set, failing on demand.
    struct Fake {
        installed: RefCell<BTreeSet<String>>,
        fail_on: Option<&'static str>,
        purged: RefCell<Vec<String>>,
    }

    impl Fake {
        fn with(pkgs: &[&str]) -> Fake {
            Fake {
                installed: RefCell::new(pkgs.iter().map(|p| p.to_string()).collect()),
                fail_on: None,
                purged: RefCell::new(Vec::new()),
            }
        }
    }

    impl PackageManager for Fake {
        fn is_installed(&self, p: &str) -> bool {
            self.installed.borrow().contains(p)
        }
        fn install(&self, pkgs: &[&str]) -> Result<()> {
            for p in pkgs {
                if Some(*p) == self.fail_on {
                    bail!("no such package {p}");
                }
                self.installed.borrow_mut().insert(p.to_string());
            }
            Ok(())
        }
        fn purge(&self, pkgs: &[String]) -> Result<()> {
            for p in pkgs {
                self.installed.borrow_mut().remove(p);
                self.purged.borrow_mut().push(p.clone());
            }
            Ok(())
        }
    }

    #[test]
    fn missing_programs_map_to_packages() {
        assert!(missing(|_| true).is_empty());
        assert_eq!(
            missing(|p| p != "dnsmasq" && p != "qemu-img"),
            vec!["qemu-utils", "dnsmasq-base"]
        );
        assert_eq!(missing(|_| false).len(), REQUIRED.len());
    }

    #[test]
    fn only_what_up_installed_is_purged() {
        let dir = tempfile::tempdir().expect("tmp");
        // nftables was there before OneStack: never recorded, never purged.
        let pm = Fake::with(&["nftables"]);
        let got =
            install_and_record(&pm, dir.path(), &["nftables", "dnsmasq-base"]).expect("install");
        assert_eq!(got, vec!["dnsmasq-base"]);
        // A second up adds to the record.
        install_and_record(&pm, dir.path(), &["qemu-utils"]).expect("install");
        assert_eq!(read_record(dir.path()), vec!["dnsmasq-base", "qemu-utils"]);
        // The user removed one meanwhile: only the rest is purged.
        pm.installed.borrow_mut().remove("qemu-utils");
        let purged = purge_recorded(&pm, dir.path()).expect("purge");
        assert_eq!(purged, vec!["dnsmasq-base"]);
        assert!(pm.is_installed("nftables"));
        assert!(!record_file(dir.path()).exists());
        assert!(purge_recorded(&pm, dir.path()).expect("again").is_empty());
    }

    #[test]
    fn a_failed_install_still_records_what_it_installed() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut pm = Fake::with(&[]);
        pm.fail_on = Some("genisoimage");
        let err = install_and_record(&pm, dir.path(), &["iproute2", "genisoimage"]);
        assert!(err.is_err());
        assert_eq!(read_record(dir.path()), vec!["iproute2"]);
    }
}
