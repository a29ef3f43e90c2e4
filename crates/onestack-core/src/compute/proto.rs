//! The controller ↔ agent wire format (the internal API): registration, heartbeat, the desired
//! state of a host's instances, and what an agent reports back. Versioned by path
//! (`/internal/v1/…`); both sides are this crate, so they cannot drift apart.

use super::state::{TaskState, VmState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterHost {
    pub host: String,
    pub host_ip: String,
    /// The agent's own HTTP endpoint (console output).
    pub agent_url: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub local_gb: i64,
    pub cpu_info: Value,
    pub hypervisor_type: String,
    pub hypervisor_version: i64,
    /// `kvm` or `qemu` (TCG), what the agent actually uses.
    pub virt_type: String,
    pub availability_zone: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registered {
    pub id: String,
}

/// The controller's answer to a heartbeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// The compute URLs of every live controller of the cloud (the agent fails over to them).
    #[serde(default)]
    pub controllers: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DesiredState {
    /// Changes whenever any instance of the host changes; poll with `?after=<generation>`.
    pub generation: i64,
    pub instances: Vec<DesiredInstance>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredInstance {
    pub id: String,
    /// `instance-%08x`
    pub name: String,
    pub vm_state: VmState,
    pub task_state: Option<TaskState>,
    pub power_state: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub root_gb: i64,
    pub image: Option<ImageRef>,
    pub config_drive: Option<ConfigDrive>,
    /// The image a running createImage uploads to.
    pub snapshot_image_id: Option<String>,
    /// NICs in order (the first is the guest's eth0).
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// Volumes: the root volume (boot from volume) and data volumes, in attach order.
    #[serde(default)]
    pub volumes: Vec<VolumeAttachment>,
    /// A live migration this host takes part in.
    #[serde(default)]
    pub migration: Option<Migration>,
}

/// This host's part in a live or cold migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    /// `live` or `cold`
    #[serde(default)]
    pub kind: String,
    /// Cold: the guest ran before it was moved (it runs again on the target).
    #[serde(default)]
    pub was_running: bool,
    /// Cold, target: where the disk is fetched from (the source agent, with a signed token).
    #[serde(default)]
    pub disk_url: String,
    /// `source` or `target`
    pub role: String,
    /// `prepare` (the target gets ready), `transfer` (the source sends), `resume` (the target
    /// lets the guest run).
    pub phase: String,
    /// The other host's address.
    pub peer_ip: String,
    /// This host's own address (the target listens on it).
    pub my_ip: String,
    pub nbd_port: u16,
    pub mig_port: u16,
    /// Memory copy bandwidth cap in MiB/s (0: none), Nova's `live_migration_bandwidth`.
    pub max_bandwidth_mib: u64,
}

/// An agent's word on its part of a live migration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MigrationReport {
    /// Live: `ready` (target), `done` (source), `resumed` (target) or `failed` (either).
    /// Cold: `ready` (source: stopped), `done` (target: running there), `reverted` (target:
    /// gone again) or `failed`.
    pub event: String,
    #[serde(default)]
    pub nbd_port: Option<u16>,
    #[serde(default)]
    pub mig_port: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    #[serde(default)]
    pub total_ms: Option<u64>,
}

/// A volume the agent plugs into (or, `detaching`, unplugs from) the VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    pub volume_id: String,
    /// What the guest sees as the disk's serial (Nova: the volume id's first 20 characters).
    pub serial: String,
    pub device: String,
    /// attaching, attached, detaching
    pub state: String,
    /// The server's root disk.
    pub boot: bool,
}

/// An agent's word on a volume it plugged or unplugged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeReport {
    /// `attach` or `detach`
    pub op: String,
    /// Why it failed; None: done.
    pub error: Option<String>,
}

/// One virtio NIC: a TAP device the agent's networking creates, named after the port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub port_id: String,
    pub network_id: String,
    pub mac: String,
    pub tap: String,
    pub ips: Vec<String>,
    pub mtu: u32,
    pub dns: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRef {
    pub id: String,
    pub disk_format: String,
    pub size: i64,
    pub virtual_size: i64,
    /// SHA-512 of the data (Glance's `os_hash_value`); the agent verifies its download.
    pub sha512: String,
}

/// The config drive's contents (the agent writes the ISO).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigDrive {
    pub meta_data: Value,
    pub network_data: Value,
    pub vendor_data: Value,
    pub ec2_meta_data: Value,
    /// Decoded user data, base64 as the client sent it.
    pub user_data: Option<String>,
}

/// What an agent observed or finished.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The task the agent completed (None: a power state observation only).
    pub task: Option<TaskState>,
    pub ok: bool,
    pub power_state: i64,
    pub fault: Option<Fault>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    pub code: i64,
    pub message: String,
    pub details: String,
}
