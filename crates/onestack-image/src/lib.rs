//! Builds `onestack-tiny`, OneStack's default guest image, from Debian packages only: the Debian
//! cloud kernel, busybox, dropbear (SSH) and syslinux, packed as a partitioned disk that boots
//! from BIOS firmware like any cloud image. The whole system runs from its initramfs; the boot
//! script (`guest/rc`) does what CirrOS does — DHCP, config drive or metadata service, SSH keys,
//! user-data, SSH, a login banner on the serial console.
//!
//! The build is cached by a recipe hash (package files + guest files + builder version) and is
//! reproducible: fixed timestamps, owners and ids everywhere, so the same packages give the same
//! bytes. Nothing but Debian's package registry is contacted, and only when a package is missing.

mod cpio;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const IMAGE_NAME: &str = "onestack-tiny";
pub const LOGIN_USER: &str = "onestack";
/// Bump when the build steps change, so cached images are rebuilt.
const BUILDER_VERSION: &str = "onestack-tiny builder 1";
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// Runs inside the guest.
const GUEST_PACKAGES: &[&str] = &[
    "busybox-static",
    "dropbear-bin",
    "libc6",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
    "zlib1g",
    "libgmp10",
];
/// Used by the build on the host, from the same registry (no host install needed).
const TOOL_PACKAGES: &[&str] = &["syslinux", "syslinux-common", "mtools", "dosfstools"];
/// Drivers the guest loads (with their dependencies): virtio devices, the config-drive CD-ROM
/// (IDE and AHCI) and file systems.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "virtio_rng",
    "ata_piix",
    "ahci",
    "sr_mod",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859_1",
];

/// (path in the initramfs, mode, contents)
const GUEST_FILES: &[(&str, u32, &str)] = &[
    ("etc/rc", 0o755, include_str!("../guest/rc")),
    (
        "etc/udhcpc.script",
        0o755,
        include_str!("../guest/udhcpc.script"),
    ),
    ("etc/inittab", 0o644, include_str!("../guest/inittab")),
    ("etc/passwd", 0o644, include_str!("../guest/passwd")),
    ("etc/group", 0o644, include_str!("../guest/group")),
    ("etc/shells", 0o644, include_str!("../guest/shells")),
    (
        "usr/share/onestack/json.awk",
        0o644,
        include_str!("../guest/json.awk"),
    ),
];
const SYSLINUX_CFG: &str = include_str!("../guest/syslinux.cfg");

/// Fixed timestamp for every file the build writes (reproducibility).
const EPOCH: u64 = 1_577_836_800; // 2020-01-01T00:00:00Z

/// The built image and what Glance should record about it.
#[derive(Debug, Clone)]
pub struct DefaultImage {
    pub path: PathBuf,
    pub name: &'static str,
    pub disk_format: &'static str,
    pub container_format: &'static str,
    pub properties: Vec<(String, String)>,
}

/// `$ONESTACK_IMAGE_CACHE`, else `/var/cache/onestack/images` for root, else the user's cache.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ONESTACK_IMAGE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let is_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::env::var("HOME").map(|h| h == "/root").unwrap_or(false);
    if is_root {
        return PathBuf::from("/var/cache/onestack/images");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("onestack/images")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Package {
    name: String,
    file: String,
    sha256: String,
}

/// The exact package files apt would fetch now (from the local package lists; no network).
fn resolve_packages(names: &[String]) -> Result<Vec<Package>> {
    let out = run(Command::new("apt-get")
        .args(["download", "--print-uris", "-q"])
        .args(names))
    .context("cannot resolve Debian packages (is this a Debian system? run `apt-get update`)")?;
    let mut pkgs = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 4 && f[0].starts_with('\'') {
            let sha = f[3].strip_prefix("SHA256:").unwrap_or(f[3]).to_string();
            let name = f[1].split('_').next().unwrap_or_default().to_string();
            pkgs.push(Package {
                name,
                file: f[1].to_string(),
                sha256: sha,
            });
        }
    }
    if pkgs.len() != names.len() {
        bail!(
            "apt resolved {} of {} packages ({names:?}); run `apt-get update`",
            pkgs.len(),
            names.len()
        );
    }
    Ok(pkgs)
}

fn kernel_package() -> Result<String> {
    let out = run(Command::new("apt-cache").args(["depends", KERNEL_META]))
        .context("cannot look up the Debian cloud kernel (run `apt-get update`)")?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| format!("{KERNEL_META} names no kernel package"))
}

fn sha256_file(path: &Path) -> Result<String> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&data)))
}

/// Downloads the packages not yet in `dir` and checks every file against apt's hash.
fn fetch(dir: &Path, pkgs: &[Package]) -> Result<()> {
    fs::create_dir_all(dir)?;
    let missing: Vec<&String> = pkgs
        .iter()
        .filter(|p| !dir.join(&p.file).exists())
        .map(|p| &p.name)
        .collect();
    if !missing.is_empty() {
        tracing::info!(?missing, "downloading Debian packages");
        run(Command::new("apt-get")
            .current_dir(dir)
            .args(["download", "-q"])
            .args(&missing))
        .context("cannot download Debian packages")?;
    }
    for p in pkgs {
        let got = sha256_file(&dir.join(&p.file))?;
        if got != p.sha256 {
            let _ = fs::remove_file(dir.join(&p.file));
            bail!("{}: SHA256 {got} does not match apt's {}", p.file, p.sha256);
        }
    }
    Ok(())
}

/// Builds the image, or returns the cached one for the same recipe.
pub fn build_default(cache: &Path) -> Result<DefaultImage> {
    let kernel = kernel_package()?;
    let mut names: Vec<String> = vec![kernel];
    names.extend(GUEST_PACKAGES.iter().map(|s| s.to_string()));
    names.extend(TOOL_PACKAGES.iter().map(|s| s.to_string()));
    let mut pkgs = resolve_packages(&names)?;

    let mut recipe = Sha256::new();
    recipe.update(BUILDER_VERSION);
    pkgs.sort_by(|a, b| a.name.cmp(&b.name));
    for p in &pkgs {
        recipe.update(format!("{} {}\n", p.file, p.sha256));
    }
    for (path, mode, text) in GUEST_FILES {
        recipe.update(format!("{path} {mode:o} {}\n", text.len()));
        recipe.update(text);
    }
    recipe.update(SYSLINUX_CFG);
    recipe.update(MODULES.join(","));
    let recipe = hex::encode(recipe.finalize());
    let out = cache.join(format!("{IMAGE_NAME}-{}.qcow2", &recipe[..16]));
    let image = DefaultImage {
        path: out.clone(),
        name: IMAGE_NAME,
        disk_format: "qcow2",
        container_format: "bare",
        properties: vec![
            ("os_admin_user".into(), LOGIN_USER.into()),
            ("os_type".into(), "linux".into()),
            ("os_distro".into(), IMAGE_NAME.into()),
            ("hw_rng_model".into(), "virtio".into()),
            ("onestack_recipe".into(), recipe[..16].to_string()),
        ],
    };
    if out.exists() {
        return Ok(image);
    }

    let debs = cache.join("debs");
    fetch(&debs, &pkgs)?;
    let work = cache.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let result = build_in(&work, &debs, &pkgs, &out);
    let _ = fs::remove_dir_all(&work);
    result?;
    Ok(image)
}

fn build_in(work: &Path, debs: &Path, pkgs: &[Package], out: &Path) -> Result<()> {
    let root = work.join("root");
    let tools = work.join("tools");
    fs::create_dir_all(&root)?;
    fs::create_dir_all(&tools)?;
    for p in pkgs {
        let dest = if TOOL_PACKAGES.contains(&p.name.as_str()) {
            &tools
        } else {
            &root
        };
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(debs.join(&p.file))
            .arg(dest))?;
    }
    let vmlinuz = find_prefixed(&root.join("boot"), "vmlinuz-")?;
    let modules_root = fs::read_dir(root.join("lib/modules"))?
        .flatten()
        .map(|e| e.path())
        .next()
        .context("the kernel package has no modules")?;

    let initrd = work.join("initrd.img");
    write_initramfs(&root, &modules_root, &initrd)?;

    // The FAT partition: kernel, initramfs, syslinux.
    let part = work.join("part.img");
    let payload = fs::metadata(&vmlinuz)?.len() + fs::metadata(&initrd)?.len();
    let part_mib = ((payload >> 20) + 6).max(32);
    let part_bytes = part_mib << 20;
    fs::File::create(&part)?.set_len(part_bytes)?;
    let path_env = format!(
        "{}:{}:{}",
        tools.join("sbin").display(),
        tools.join("usr/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let tool = |name: &str| -> Command {
        let mut c = Command::new(name);
        c.env("PATH", &path_env)
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env("TZ", "UTC");
        c
    };
    run(tool("mkfs.fat")
        .args([
            "-F",
            "16",
            "-n",
            "ONESTACK",
            "-i",
            "4f4e4553",
            "--invariant",
            "-h",
            "2048",
        ])
        .arg(&part))?;
    let staging = work.join("fat");
    fs::create_dir_all(&staging)?;
    let files: [(&str, PathBuf); 4] = [
        ("vmlinuz", vmlinuz.clone()),
        ("initrd.img", initrd.clone()),
        (
            "ldlinux.c32",
            tools.join("usr/lib/syslinux/modules/bios/ldlinux.c32"),
        ),
        ("syslinux.cfg", {
            let p = staging.join("syslinux.cfg.src");
            fs::write(&p, SYSLINUX_CFG)?;
            p
        }),
    ];
    for (name, src) in &files {
        let dst = staging.join(name);
        fs::copy(src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        set_mtime(&dst)?;
        run(tool("mcopy")
            .args(["-m", "-o", "-i"])
            .arg(&part)
            .arg(&dst)
            .arg(format!("::/{name}")))?;
    }
    run(tool("syslinux").args(["--install"]).arg(&part))?;

    // The disk: MBR boot code, one active FAT16 (LBA) partition at 1 MiB.
    let disk = work.join("disk.raw");
    let mbr = fs::read(tools.join("usr/lib/syslinux/mbr/mbr.bin"))?;
    let part_data = fs::read(&part)?;
    let mut raw = vec![0u8; (1 << 20) + part_data.len()];
    raw[..mbr.len().min(440)].copy_from_slice(&mbr[..mbr.len().min(440)]);
    raw[446..462].copy_from_slice(&partition_entry(2048, (part_bytes / 512) as u32));
    raw[510] = 0x55;
    raw[511] = 0xaa;
    raw[1 << 20..].copy_from_slice(&part_data);
    fs::write(&disk, &raw)?;

    let tmp = out.with_extension("qcow2.partial");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&disk)
        .arg(&tmp))
    .context("qemu-img convert failed (install qemu-utils)")?;
    fs::rename(&tmp, out)?;
    Ok(())
}

/// An MBR partition table entry: active, type 0x0e (FAT16 LBA), addressed by LBA only.
fn partition_entry(start: u32, sectors: u32) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0] = 0x80;
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = 0x0e;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    e
}

fn set_mtime(path: &Path) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(EPOCH);
    fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(t)?;
    Ok(())
}

fn find_prefixed(dir: &Path, prefix: &str) -> Result<PathBuf> {
    fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

/// Modules by name (`-` and `_` are the same), with the dependencies their `.modinfo` names.
fn module_index(modules_root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![modules_root.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) {
                if let Some(stem) = name.strip_suffix(".ko") {
                    index.insert(stem.replace('-', "_"), p);
                }
            }
        }
    }
    Ok(index)
}

fn module_depends(data: &[u8]) -> Vec<String> {
    let key = b"depends=";
    data.windows(key.len())
        .position(|w| w == key)
        .map(|i| {
            let rest = &data[i + key.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Orders `wanted` and their dependencies so each module follows what it needs. Modules built
/// into the kernel (absent as files) are skipped.
fn module_load_order(
    index: &BTreeMap<String, PathBuf>,
    wanted: &[&str],
) -> Result<Vec<(String, Vec<u8>)>> {
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some(path) = index.get(name) else {
            return Ok(());
        };
        let data = fs::read(path)?;
        for dep in module_depends(&data) {
            visit(&dep, index, seen, out)?;
        }
        out.push((name.to_string(), data));
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for w in wanted {
        visit(w, index, &mut seen, &mut out)?;
    }
    Ok(out)
}

/// Shared libraries a binary needs, found in the extracted packages, recursively.
fn needed_libs(root: &Path, binary: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let dirs = [
        root.join("lib/x86_64-linux-gnu"),
        root.join("usr/lib/x86_64-linux-gnu"),
    ];
    let mut found = BTreeMap::new();
    let mut queue = vec![binary.to_path_buf()];
    while let Some(f) = queue.pop() {
        let out = run(Command::new("readelf").arg("-d").arg(&f))
            .context("readelf is needed to build the guest image (install binutils)")?;
        for line in out.lines().filter(|l| l.contains("(NEEDED)")) {
            let Some(lib) = line.split('[').nth(1).and_then(|s| s.split(']').next()) else {
                continue;
            };
            if found.contains_key(lib) {
                continue;
            }
            let path = dirs
                .iter()
                .map(|d| d.join(lib))
                .find(|p| p.exists())
                .with_context(|| format!("library {lib} is in no extracted package"))?;
            found.insert(lib.to_string(), fs::read(&path)?);
            queue.push(path);
        }
    }
    Ok(found)
}

fn write_initramfs(root: &Path, modules_root: &Path, dest: &Path) -> Result<()> {
    let busybox_path = root.join("bin/busybox");
    let busybox = fs::read(&busybox_path)?;
    let applets = run(Command::new(&busybox_path).arg("--list-full"))?;
    let dropbear_path = root.join("usr/sbin/dropbear");
    let dropbear = fs::read(&dropbear_path)?;
    let libs = needed_libs(root, &dropbear_path)?;
    let loader = fs::read(root.join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))?;
    let index = module_index(modules_root)?;
    let modules = module_load_order(&index, MODULES)?;
    let module_list: String = modules.iter().map(|(n, _)| format!("{n}\n")).collect();

    let mut files: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    files.insert("bin/busybox".into(), (0o755, busybox));
    for a in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if a != "bin/busybox" {
            links.insert(a.to_string(), "/bin/busybox".into());
        }
    }
    links.insert("init".into(), "/bin/busybox".into());
    files.insert("usr/sbin/dropbear".into(), (0o755, dropbear));
    for (name, data) in libs {
        files.insert(format!("lib/x86_64-linux-gnu/{name}"), (0o755, data));
    }
    files.insert(
        "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
        (0o755, loader),
    );
    links.insert(
        "lib64/ld-linux-x86-64.so.2".into(),
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
    );
    for (name, data) in modules {
        files.insert(format!("lib/modules/{name}.ko"), (0o644, data));
    }
    files.insert("etc/modules".into(), (0o644, module_list.into_bytes()));
    for (path, mode, text) in GUEST_FILES {
        files.insert(path.to_string(), (*mode, text.as_bytes().to_vec()));
    }
    files.insert(
        "etc/os-release".into(),
        (
            0o644,
            format!("NAME={IMAGE_NAME}\nID={IMAGE_NAME}\nPRETTY_NAME=\"OneStack tiny guest\"\n")
                .into_bytes(),
        ),
    );

    let mut dirs: BTreeSet<String> = [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "mnt",
        "var/log",
        "var/run",
        "etc/dropbear",
        "home/onestack",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in files.keys().chain(links.keys()) {
        let mut cur = Path::new(p).parent();
        while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            cur = d.parent();
        }
    }
    let all_dirs: BTreeSet<String> = dirs
        .iter()
        .flat_map(|d| {
            let mut v = vec![d.clone()];
            let mut cur = Path::new(d).parent();
            while let Some(p) = cur.filter(|p| !p.as_os_str().is_empty()) {
                v.push(p.to_string_lossy().into_owned());
                cur = p.parent();
            }
            v
        })
        .collect();

    let mut cpio = cpio::Writer::new(Vec::new());
    // BTreeSet order puts a parent before its children.
    for d in &all_dirs {
        let perm = if d == "tmp" { 0o1777 } else { 0o755 };
        cpio.dir(d, perm)?;
    }
    cpio.chardev("dev/console", 0o600, 5, 1)?;
    cpio.chardev("dev/null", 0o666, 1, 3)?;
    for (path, (mode, data)) in &files {
        cpio.file(path, *mode, data)?;
    }
    for (path, target) in &links {
        if !files.contains_key(path) {
            cpio.symlink(path, target)?;
        }
    }
    let archive = cpio.finish()?;
    let raw = dest.with_extension("cpio");
    fs::write(&raw, archive)?;
    // gzip -n: no name or timestamp in the header, so the output is reproducible.
    let gz = run(Command::new("gzip").args(["-n", "-9", "-f"]).arg(&raw))
        .map(|_| raw.with_extension("cpio.gz"))?;
    fs::rename(gz, dest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dependencies_are_read_from_modinfo() {
        let blob = b"\x7fELF....license=GPL\0depends=virtio,virtio_ring,net-failover\0vermagic=6.1";
        assert_eq!(
            module_depends(blob),
            vec!["virtio", "virtio_ring", "net_failover"]
        );
        assert!(module_depends(b"depends=\0").is_empty());
        assert!(module_depends(b"nothing").is_empty());
    }

    #[test]
    fn partition_entry_is_active_fat16_lba() {
        let e = partition_entry(2048, 65536);
        assert_eq!(e[0], 0x80);
        assert_eq!(e[4], 0x0e);
        assert_eq!(u32::from_le_bytes([e[8], e[9], e[10], e[11]]), 2048);
        assert_eq!(u32::from_le_bytes([e[12], e[13], e[14], e[15]]), 65536);
    }
}
