//! Choosing between KVM and software emulation (TCG), with a notice the operator can read.

use crate::driver::VirtType;
use std::path::Path;

/// How QEMU executes guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation: slow but works everywhere.
    Tcg,
}

impl Accel {
    /// The value of `-machine …,accel=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// `host` passes the real CPU through; TCG emulates the richest model it knows.
    pub(crate) fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

/// Picks the accelerator for `requested` and explains the choice in one line.
///
/// `Auto` uses KVM only when it would actually work: `/dev/kvm` opens read-write and the CPU
/// advertises vmx/svm (a nested guest may have `/dev/kvm` without either, and then every VM fails).
/// An explicit `Kvm` is honoured even when unusable (the notice says so); `Qemu` means TCG.
pub fn choose_accel(requested: VirtType) -> (Accel, String) {
    choose_with(requested, Path::new("/dev/kvm"), Path::new("/proc/cpuinfo"))
}

pub(crate) fn choose_with(requested: VirtType, kvm: &Path, cpuinfo: &Path) -> (Accel, String) {
    match requested {
        VirtType::Qemu => (
            Accel::Tcg,
            "virt_type=qemu: using software emulation (TCG)".to_string(),
        ),
        VirtType::Kvm => match kvm_problem(kvm, cpuinfo) {
            None => (Accel::Kvm, "virt_type=kvm: using KVM".to_string()),
            Some(p) => (
                Accel::Kvm,
                format!("virt_type=kvm forces KVM although {p}: VMs are likely to fail to start"),
            ),
        },
        VirtType::Auto => match kvm_problem(kvm, cpuinfo) {
            None => (
                Accel::Kvm,
                "/dev/kvm is usable and the CPU has vmx/svm: using KVM".to_string(),
            ),
            Some(p) => (Accel::Tcg, format!("{p}: using software emulation (TCG)")),
        },
    }
}

/// Why KVM cannot be used, or `None` when it can.
fn kvm_problem(kvm: &Path, cpuinfo: &Path) -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        return Some(if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{} does not exist (kvm module not loaded or no hardware virtualisation)",
                kvm.display()
            )
        } else {
            format!("{} cannot be opened read-write ({e})", kvm.display())
        });
    }
    match std::fs::read_to_string(cpuinfo) {
        Ok(text) if has_virt_flag(&text) => None,
        Ok(_) => Some(format!(
            "{} exists but the CPU shows no vmx/svm flag (nested virtualisation without hardware \
             support)",
            kvm.display()
        )),
        Err(e) => Some(format!("cannot read {} ({e})", cpuinfo.display())),
    }
}

/// Whether any `flags` line of /proc/cpuinfo names Intel VT-x (vmx) or AMD-V (svm).
fn has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "flags")
        .any(|(_, v)| v.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parsed() {
        assert!(has_virt_flag(
            "processor\t: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(has_virt_flag("flags : fpu svm\n"));
        assert!(!has_virt_flag(
            "flags\t\t: fpu vmxe sse\nvmx flags\t: ept\n"
        ));
    }

    #[test]
    fn auto_falls_back_to_tcg_with_a_reason() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let kvm = dir.path().join("kvm");
        let cpuinfo = dir.path().join("cpuinfo");
        std::fs::write(&cpuinfo, "flags\t: fpu sse\n")?;

        let (a, why) = choose_with(VirtType::Auto, &kvm, &cpuinfo);
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("does not exist"), "{why}");

        std::fs::write(&kvm, "")?;
        let (a, why) = choose_with(VirtType::Auto, &kvm, &cpuinfo);
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("no vmx/svm"), "{why}");

        std::fs::write(&cpuinfo, "flags\t: fpu vmx sse\n")?;
        assert_eq!(choose_with(VirtType::Auto, &kvm, &cpuinfo).0, Accel::Kvm);
        assert_eq!(choose_with(VirtType::Qemu, &kvm, &cpuinfo).0, Accel::Tcg);

        let (a, why) = choose_with(VirtType::Kvm, &dir.path().join("none"), &cpuinfo);
        assert_eq!(a, Accel::Kvm);
        assert!(why.contains("forces KVM"), "{why}");
        Ok(())
    }
}
