//! File writes that secrets and credentials need: owner-only, atomic, durable.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `content` to `path` with mode 0600 through a temporary file and a rename, so a crash
/// leaves the old file or the new one, never half of one. Unchanged content is not rewritten.
/// Returns whether the file changed.
pub fn write_private(path: &Path, content: &[u8]) -> io::Result<bool> {
    if fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(true)
}

/// Creates `dir` and any missing parents with mode 0700 (root-only state). Existing directories
/// are left as they are: their modes are `onestack up`'s to check and fix.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dirs_and_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).expect("mkdir");
        for d in [tmp.path().join("a"), dir.clone()] {
            let mode = fs::metadata(&d).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        let f = dir.join("f");
        assert!(write_private(&f, b"x").expect("write"));
        assert!(!write_private(&f, b"x").expect("again"));
        let mode = fs::metadata(&f).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
