//! What the first bytes of an uploaded disk say about it: its real format, the virtual size of a
//! qcow2, and whether a qcow2 points at other files (a backing file or an external data file),
//! which a guest-supplied image must never do: QEMU would open that host path for the guest.

/// Bytes of the image head kept for inspection.
pub const HEAD_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Qcow2,
    Vmdk,
    Vhdx,
    Vdi,
    /// No known header: raw data (possibly an ISO or a partitioned disk).
    Raw,
}

impl Detected {
    pub fn name(self) -> &'static str {
        match self {
            Detected::Qcow2 => "qcow2",
            Detected::Vmdk => "vmdk",
            Detected::Vhdx => "vhdx",
            Detected::Vdi => "vdi",
            Detected::Raw => "raw",
        }
    }
}

pub fn detect(head: &[u8]) -> Detected {
    if head.starts_with(b"QFI\xfb") {
        Detected::Qcow2
    } else if head.starts_with(b"KDMV") {
        Detected::Vmdk
    } else if head.starts_with(b"vhdxfile") {
        Detected::Vhdx
    } else if head.len() >= 68 && head[64..68] == [0x7f, 0x10, 0xda, 0xbe] {
        Detected::Vdi
    } else {
        Detected::Raw
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Checks that the data is what `disk_format` claims and is safe to hand to QEMU, and returns the
/// virtual size where the format defines one. `Err` carries the message for the user.
pub fn check(disk_format: Option<&str>, head: &[u8], size: u64) -> Result<Option<u64>, String> {
    let detected = detect(head);
    match disk_format {
        Some("qcow2") => {
            if detected != Detected::Qcow2 {
                return Err(format!(
                    "Image content does not match disk_format qcow2 (found {}).",
                    detected.name()
                ));
            }
            let version = be_u32(head, 4).unwrap_or(0);
            let backing_offset = be_u64(head, 8).unwrap_or(0);
            let virtual_size =
                be_u64(head, 24).ok_or_else(|| "The qcow2 header is truncated.".to_string())?;
            if !(2..=3).contains(&version) {
                return Err(format!("Unsupported qcow2 version {version}."));
            }
            if backing_offset != 0 {
                return Err("qcow2 images with a backing file are not accepted.".into());
            }
            // Incompatible feature bit 2: the data lives in an external file.
            if version >= 3 && be_u64(head, 72).unwrap_or(0) & 0b100 != 0 {
                return Err("qcow2 images with an external data file are not accepted.".into());
            }
            Ok(Some(virtual_size))
        }
        Some(f @ ("vmdk" | "vhdx" | "vdi")) => {
            if detected.name() != f {
                return Err(format!(
                    "Image content does not match disk_format {f} (found {}).",
                    detected.name()
                ));
            }
            Ok(None)
        }
        Some(f @ ("raw" | "iso")) => {
            if detected != Detected::Raw {
                return Err(format!(
                    "Image content is {}, not {f}; set disk_format to {}.",
                    detected.name(),
                    detected.name()
                ));
            }
            Ok(Some(size))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_header(version: u32, backing: u64, size: u64, incompatible: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEAD_LEN];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_virtual_size_and_unsafe_features() {
        let gib = 1 << 30;
        assert_eq!(
            check(Some("qcow2"), &qcow2_header(3, 0, gib, 0), 4096),
            Ok(Some(gib))
        );
        assert!(check(Some("qcow2"), &qcow2_header(3, 0x200, gib, 0), 4096).is_err());
        assert!(check(Some("qcow2"), &qcow2_header(3, 0, gib, 0b100), 4096).is_err());
        assert!(check(Some("qcow2"), &qcow2_header(7, 0, gib, 0), 4096).is_err());
    }

    #[test]
    fn declared_format_must_match_content() {
        let raw = vec![0u8; HEAD_LEN];
        assert_eq!(check(Some("raw"), &raw, 1234), Ok(Some(1234)));
        assert!(check(Some("qcow2"), &raw, 1234).is_err());
        // A qcow2 uploaded as raw would let QEMU treat guest data as a header: refused.
        assert!(check(Some("raw"), &qcow2_header(3, 0, 1, 0), 1234).is_err());
        assert_eq!(check(Some("ami"), &raw, 1234), Ok(None));
        assert!(check(Some("qcow2"), b"QF", 2).is_err());
    }
}
