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
