//! Volume data on the storage host: one qcow2 file per volume (`volume-<id>`) and per snapshot
//! (`snapshot-<id>`) in the volumes directory, made and changed with `qemu-img`. Every file is
//! written under a temporary name and renamed into place, so a killed process leaves either no
//! file or a whole one. Arguments are passed as a vector, never through a shell.

use crate::{CoreError, CoreResult};
use std::path::{Path, PathBuf};

const QEMU_IMG: &str = "qemu-img";

#[derive(Clone, Debug)]
pub struct Backend {
    dir: PathBuf,
}

/// Glance's disk_format as qemu-img's format name.
pub fn qemu_format(disk_format: &str) -> &str {
    match disk_format {
        "qcow2" | "raw" | "vmdk" | "vdi" | "vhdx" => disk_format,
        "vhd" => "vpc",
        _ => "raw",
    }
}

async fn qemu_img(args: &[&std::ffi::OsStr]) -> CoreResult<()> {
    let out = tokio::process::Command::new(QEMU_IMG)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| CoreError::Internal(format!("cannot run {QEMU_IMG}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CoreError::Internal(format!(
            "{QEMU_IMG} {} failed: {}",
            args.first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Backend {
    /// A new directory is root's alone (0700); the compute agent of this host then lets its QEMU
    /// user's group pass through it (0710), so QEMU can open the volume files it is given
    /// (0600, given to it while attached) and nothing else. An existing directory's mode is
    /// left to them (`onestack up` checks it).
    pub fn new(dir: PathBuf) -> CoreResult<Backend> {
        crate::fsutil::create_private_dir(&dir)
            .map_err(|e| CoreError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Backend { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn volume_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("volume-{id}"))
    }

    pub fn snapshot_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("snapshot-{id}"))
    }

    fn tmp(&self, final_path: &Path) -> PathBuf {
        let mut s = final_path.as_os_str().to_owned();
        s.push(".tmp");
        PathBuf::from(s)
    }

    async fn finish(&self, tmp: &Path, dest: &Path, r: CoreResult<()>) -> CoreResult<()> {
        use std::os::unix::fs::PermissionsExt;
        // Volume data is the tenant's: readable by this service (and, while attached, by the
        // QEMU that uses it), by nobody else on the host.
        let r = r.and_then(|()| {
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| CoreError::Internal(format!("cannot chmod {}: {e}", tmp.display())))
        });
        match r {
            Ok(()) => tokio::fs::rename(tmp, dest)
                .await
                .map_err(|e| CoreError::Internal(format!("cannot rename {}: {e}", tmp.display()))),
            Err(e) => {
                let _ = tokio::fs::remove_file(tmp).await;
                Err(e)
            }
        }
    }

    /// An empty volume of `gb` GiB (sparse: creating it is instant whatever the size).
    pub async fn create_empty(&self, id: &str, gb: i64) -> CoreResult<()> {
        let dest = self.volume_path(id);
        let tmp = self.tmp(&dest);
        let size = format!("{gb}G");
        let r = qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            tmp.as_os_str(),
            size.as_ref(),
        ])
        .await;
        self.finish(&tmp, &dest, r).await
    }

    /// A standalone copy of `src` (an image, volume or snapshot file) grown to `gb` GiB.
    pub async fn create_from(
        &self,
        dest: &Path,
        src: &Path,
        format: &str,
        gb: i64,
    ) -> CoreResult<()> {
        let tmp = self.tmp(dest);
        let r = async {
            qemu_img(&[
                "convert".as_ref(),
                "-U".as_ref(),
                "-f".as_ref(),
                format.as_ref(),
                "-O".as_ref(),
                "qcow2".as_ref(),
                src.as_os_str(),
                tmp.as_os_str(),
            ])
            .await?;
            self.grow(&tmp, gb).await
        }
        .await;
        self.finish(&tmp, dest, r).await
    }

    /// A copy of a volume file in `format` (qcow2 or raw) at `dest`, for an image upload.
    pub async fn convert(&self, dest: &Path, src: &Path, format: &str) -> CoreResult<()> {
        let tmp = self.tmp(dest);
        let r = qemu_img(&[
            "convert".as_ref(),
            "-U".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            format.as_ref(),
            src.as_os_str(),
            tmp.as_os_str(),
        ])
        .await;
        self.finish(&tmp, dest, r).await
    }

    /// Grows a file to `gb` GiB if it is smaller (never shrinks).
    pub async fn grow(&self, path: &Path, gb: i64) -> CoreResult<()> {
        if virtual_size(path).await? >= (gb as u64) << 30 {
            return Ok(());
        }
        let size = format!("{gb}G");
        qemu_img(&[
            "resize".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ])
        .await
    }

    pub async fn remove(&self, path: &Path) -> CoreResult<()> {
        match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::Internal(format!(
                "cannot remove {}: {e}",
                path.display()
            ))),
        }
    }

    /// Takes a volume file back from the QEMU user it was given to while attached (libvirt's
    /// dynamic ownership): a detached volume is this service's alone again.
    pub fn reclaim(&self, id: &str) {
        use std::os::unix::fs::MetadataExt;
        let Ok(dir) = std::fs::metadata(&self.dir) else {
            return;
        };
        let path = self.volume_path(id);
        if std::fs::metadata(&path).is_ok_and(|m| m.uid() != dir.uid()) {
            if let Err(e) = std::os::unix::fs::chown(&path, Some(dir.uid()), Some(dir.gid())) {
                tracing::warn!(volume = %id, error = %e, "cannot take the volume file back");
            }
        }
    }

    /// Temporary files of operations a killed process did not finish.
    pub fn clean_partial(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// The virtual size in bytes, from `qemu-img info`.
pub async fn virtual_size(path: &Path) -> CoreResult<u64> {
    let out = tokio::process::Command::new(QEMU_IMG)
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| CoreError::Internal(format!("cannot run {QEMU_IMG}: {e}")))?;
    if !out.status.success() {
        return Err(CoreError::Internal(format!(
            "{QEMU_IMG} info failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| CoreError::Internal(format!("qemu-img info: {e}")))?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| CoreError::Internal("qemu-img info: no virtual-size".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[tokio::test]
    async fn volume_files_are_private_and_taken_back_after_use() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = Backend::new(dir.path().join("volumes")).expect("backend");
        b.create_empty("v1", 1).await.expect("create");
        let path = b.volume_path("v1");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(virtual_size(&path).await.expect("size"), 1 << 30);
        assert_eq!(
            std::fs::metadata(b.dir())
                .expect("dir")
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // Given to another user while attached (needs root to hand it over), then taken back.
        if std::os::unix::fs::chown(&path, Some(65534), Some(65534)).is_ok() {
            b.reclaim("v1");
            let owner = std::fs::metadata(b.dir()).expect("dir").uid();
            assert_eq!(std::fs::metadata(&path).expect("stat").uid(), owner);
        }
        // No half-written file survives a failed copy.
        let bad = b.volume_path("v2");
        assert!(b
            .create_from(&bad, &dir.path().join("missing"), "raw", 1)
            .await
            .is_err());
        assert!(!bad.exists());
        assert_eq!(std::fs::read_dir(b.dir()).expect("ls").count(), 1);
    }
}
