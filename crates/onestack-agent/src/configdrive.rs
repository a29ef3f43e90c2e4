//! The config drive: an ISO9660 image labelled `config-2` with the OpenStack and EC2 metadata
//! trees for every version, as Nova's `configdrive.py` writes it.

use anyhow::{bail, Context, Result};
use base64::Engine;
use onestack_core::compute::metadata::OPENSTACK_VERSIONS;
use onestack_core::compute::proto::ConfigDrive;
use std::path::Path;

const EC2_VERSIONS: &[&str] = &["2009-04-04"];

/// Writes the ISO at `dest` (atomically: a temporary file renamed into place).
pub fn build(cd: &ConfigDrive, dest: &Path) -> Result<()> {
    let staging = tempfile_dir(dest)?;
    let root = staging.as_path();
    let user_data = match &cd.user_data {
        Some(b64) => {
            let compact: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .context("user data is not base64")?,
            )
        }
        None => None,
    };
    let write = |rel: String, data: &[u8]| -> Result<()> {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))
    };
    let mut versions: Vec<&str> = OPENSTACK_VERSIONS.to_vec();
    versions.push("latest");
    for v in versions {
        write(
            format!("openstack/{v}/meta_data.json"),
            cd.meta_data.to_string().as_bytes(),
        )?;
        write(
            format!("openstack/{v}/network_data.json"),
            cd.network_data.to_string().as_bytes(),
        )?;
        write(
            format!("openstack/{v}/vendor_data.json"),
            cd.vendor_data.to_string().as_bytes(),
        )?;
        write(format!("openstack/{v}/vendor_data2.json"), b"{}")?;
        if let Some(u) = &user_data {
            write(format!("openstack/{v}/user_data"), u)?;
        }
    }
    for v in EC2_VERSIONS.iter().chain(&["latest"]) {
        write(
            format!("ec2/{v}/meta-data.json"),
            cd.ec2_meta_data.to_string().as_bytes(),
        )?;
        if let Some(u) = &user_data {
            write(format!("ec2/{v}/user-data"), u)?;
        }
    }
    let tmp = dest.with_extension("tmp");
    let out = std::process::Command::new("genisoimage")
        .args(["-o"])
        .arg(&tmp)
        .args([
            "-ldots",
            "-allow-lowercase",
            "-allow-multidot",
            "-l",
            "-J",
            "-r",
            "-V",
            "config-2",
            "-quiet",
        ])
        .arg(root)
        .output()
        .context("cannot run genisoimage (install the genisoimage package)")?;
    let _ = std::fs::remove_dir_all(root);
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "genisoimage failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

fn tempfile_dir(dest: &Path) -> Result<std::path::PathBuf> {
    let dir = dest.with_extension("staging");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
