//! The host's real figures, as the agent registers them (os-hypervisors shows these).

use serde_json::{json, Value};
use std::path::Path;

pub fn vcpus() -> i64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1)
}

pub fn memory_mb() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// Size of the filesystem holding `dir`, in GiB.
pub fn disk_gb(dir: &Path) -> i64 {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => (s.blocks() as u128 * s.fragment_size() as u128 / (1u128 << 30)) as i64,
        Err(_) => 0,
    }
}

pub fn cpu_info() -> Value {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "arch": std::env::consts::ARCH,
        "model": field("model name"),
        "vendor": field("vendor_id"),
        "topology": {"cells": 1, "sockets": 1, "cores": vcpus(), "threads": 1},
        "features": field("flags").split_whitespace().take(64).collect::<Vec<_>>(),
    })
}

/// QEMU's version as Nova encodes it: major * 1_000_000 + minor * 1_000 + micro.
pub fn qemu_version(binary: &str) -> i64 {
    let out = std::process::Command::new(binary).arg("--version").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let v = text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or("");
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let mut n = 0i64;
    for scale in [1_000_000, 1_000, 1] {
        n += parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .unwrap_or(0)
            * scale;
    }
    n
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
