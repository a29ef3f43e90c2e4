//! Where systemd is PID 1, the cloud starts at boot from a unit that runs OneStack's supervisor;
//! elsewhere `up` starts the supervisor itself (and boot is the operator's `onestack up`).
//! The unit stops only the supervisor's main process (`KillMode=process`): the supervisor stops
//! its services itself, and VMs outlive a service restart as they do without systemd.

use crate::paths::{DataDir, DEFAULT_DATA_DIR};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT_DIR: &str = "/etc/systemd/system";

/// Whether systemd runs this machine (not a container's or a namespace's own init).
pub fn is_init() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
        && Path::new("/run/systemd/system").is_dir()
}

/// `onestack.service` for the default data directory; `onestack-<hash>.service` for others, so
/// several clouds on one host get a unit each.
pub fn unit_name(dd: &DataDir) -> String {
    if dd.root == Path::new(DEFAULT_DATA_DIR) {
        "onestack.service".into()
    } else {
        let h = Sha256::digest(dd.root.as_os_str().as_encoded_bytes());
        format!("onestack-{}.service", &hex::encode(h)[..8])
    }
}

fn quote(p: &Path) -> String {
    // systemd's own quoting for ExecStart arguments.
    format!(
        "\"{}\"",
        p.to_string_lossy()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
    )
}

pub fn unit_text(exe: &Path, dd: &DataDir) -> String {
    format!(
        "# Written by onestack up; removed by onestack uninstall.\n\
         [Unit]\n\
         Description=OneStack cloud ({data})\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exe} supervise --data-dir {data}\n\
         KillMode=process\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         TimeoutStopSec=30\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        exe = quote(exe),
        data = quote(&dd.root),
    )
}

fn unit_path(dd: &DataDir) -> PathBuf {
    Path::new(UNIT_DIR).join(unit_name(dd))
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("cannot run systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes (when changed), enables and starts the unit.
pub fn install_and_start(dd: &DataDir) -> Result<String> {
    let exe = std::env::current_exe()?;
    let name = unit_name(dd);
    let changed = crate::paths::write_private(&unit_path(dd), &unit_text(&exe, dd))?;
    if changed {
        systemctl(&["daemon-reload"])?;
    }
    systemctl(&["enable", "--now", &name])?;
    Ok(name)
}

/// Stops and removes the unit if there is one (uninstall).
pub fn remove(dd: &DataDir) -> Result<bool> {
    let path = unit_path(dd);
    if !path.exists() {
        return Ok(false);
    }
    let name = unit_name(dd);
    if is_init() {
        let _ = systemctl(&["disable", "--now", &name]);
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    if is_init() {
        let _ = systemctl(&["daemon-reload"]);
    }
    Ok(true)
}

/// Stops the unit so systemd does not count the stop as a failure (down).
pub fn stop(dd: &DataDir) -> Result<bool> {
    if !is_init() || !unit_path(dd).exists() {
        return Ok(false);
    }
    systemctl(&["stop", &unit_name(dd)])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_named_per_data_dir_and_quote_paths() {
        let default = DataDir::new(DEFAULT_DATA_DIR).expect("dd");
        assert_eq!(unit_name(&default), "onestack.service");
        let other = DataDir::new("/srv/cloud \"two\"%").expect("dd");
        let name = unit_name(&other);
        assert!(name.starts_with("onestack-") && name.ends_with(".service") && name.len() == 25);
        assert_ne!(name, unit_name(&DataDir::new("/srv/cloud3").expect("dd")));
        let text = unit_text(Path::new("/usr/local/bin/onestack"), &other);
        assert!(
            text.contains(
                "ExecStart=\"/usr/local/bin/onestack\" supervise --data-dir \"/srv/cloud \\\"two\\\"%%\""
            ),
            "{text}"
        );
        assert!(text.contains("KillMode=process"));
        assert!(text.contains("WantedBy=multi-user.target"));
    }
}
