//! What the agent asks of a hypervisor. The QEMU driver is the real one; `FakeDriver` (tests of
//! the control plane only) keeps state in memory.

use std::path::PathBuf;
use std::time::Duration;

/// Everything needed to start one VM. Paths are created by the agent before `start`.
#[derive(Clone, Debug, PartialEq)]
pub struct VmSpec {
    /// Instance UUID (dashed); also the SMBIOS serial and uuid.
    pub id: String,
    /// Hypervisor-side name, `instance-%08x`.
    pub name: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    /// qcow2 overlay backed by the cached image.
    pub disk: PathBuf,
    /// The cached image `disk` is an overlay on (read-only, shared by every VM of that image);
    /// None when the disk stands alone (a boot volume).
    pub base: Option<PathBuf>,
    /// ISO9660 config drive (label `config-2`), attached read-only as a CD-ROM.
    pub config_drive: Option<PathBuf>,
    pub nics: Vec<NicSpec>,
    /// Data volumes, plugged after the root disk in this order.
    pub volumes: Vec<VolumeSpec>,
}

/// A volume as a virtio disk: its file on the storage host, the node/device name QEMU knows it
/// by, and the serial the guest sees (`/dev/disk/by-id/virtio-<serial>`).
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeSpec {
    pub node: String,
    pub path: PathBuf,
    pub serial: String,
}

impl VolumeSpec {
    /// QEMU's node and device id for a volume: short (QEMU allows 31 characters), starting
    /// with a letter, unique per volume.
    pub fn node_name(volume_id: &str) -> String {
        let hex: String = volume_id
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect();
        format!("vol{}", &hex[..hex.len().min(27)])
    }
}

/// One virtio NIC on a host tap device that host networking created.
#[derive(Clone, Debug, PartialEq)]
pub struct NicSpec {
    pub mac: String,
    pub tap: String,
}

/// Nova's power states, as the hypervisor observes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// No VM (never started, destroyed).
    NoState,
    Running,
    Paused,
    /// Process gone or guest powered off.
    Shutdown,
    /// The guest panicked or QEMU reported an internal error.
    Crashed,
    /// Memory saved to disk, no process.
    Suspended,
}

impl PowerState {
    /// Nova's numeric code (`nova/compute/power_state.py`).
    pub fn code(self) -> i64 {
        match self {
            PowerState::NoState => 0,
            PowerState::Running => 1,
            PowerState::Paused => 3,
            PowerState::Shutdown => 4,
            PowerState::Crashed => 6,
            PowerState::Suspended => 7,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtType {
    Auto,
    Kvm,
    Qemu,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("no such VM: {0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

pub type DriverResult<T> = Result<T, DriverError>;

/// The hypervisor operations the agent needs. Every method is idempotent where that makes sense
/// (destroying a VM that is gone succeeds), so a restarted agent can simply retry.
#[allow(async_fn_in_trait)]
pub trait Driver: Send + Sync + 'static {
    /// Starts the VM (daemonized: it outlives the agent) and returns once it runs.
    /// A leftover process of the same id in `Shutdown`/`Crashed` state is cleaned up first.
    fn start(&self, spec: &VmSpec) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    /// ACPI power button, then a hard stop after `grace`; returns when no process remains.
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    /// Hard: reset now. Soft: ACPI shutdown, then reset and continue (hard after `grace`).
    fn reboot(
        &self,
        id: &str,
        hard: bool,
        grace: Duration,
    ) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    fn pause(&self, id: &str) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    fn unpause(&self, id: &str) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    /// Saves memory and device state to the instance directory and ends the process.
    fn suspend(&self, id: &str) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    /// Starts the VM from its saved state, then removes the saved state.
    fn resume(&self, spec: &VmSpec) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    /// Kills the process if any (idempotent). Leaves files alone.
    fn destroy(&self, id: &str) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    fn power_state(&self, id: &str) -> impl std::future::Future<Output = PowerState> + Send;
    /// Ids of VMs whose process is alive (adoption after an agent restart).
    fn running(&self) -> impl std::future::Future<Output = Vec<String>> + Send;
    /// A consistent, standalone qcow2 copy of the VM's disk at `dest` (the VM keeps running).
    fn snapshot(
        &self,
        id: &str,
        disk: &std::path::Path,
        dest: &std::path::Path,
    ) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    /// Live migration, target side: a paused VM waiting for memory, its fresh disk exported
    /// over NBD on `ip`. Returns (NBD port, migration port).
    fn prepare_incoming(
        &self,
        spec: &VmSpec,
        ip: &str,
    ) -> impl std::future::Future<Output = DriverResult<(u16, u16)>> + Send;
    /// Live migration, source side: disk and memory to the target; the guest keeps running
    /// here if anything fails. Returns what it measured.
    fn migrate_out(
        &self,
        id: &str,
        target_ip: &str,
        nbd_port: u16,
        mig_port: u16,
        max_bandwidth_mib: u64,
    ) -> impl std::future::Future<Output = DriverResult<crate::qemu::MigrationStats>> + Send;
    /// Live migration, target side, after the source handed over: the guest runs here.
    fn finish_incoming(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    /// Hot-plugs a volume into a running (or paused) VM; plugged already is success.
    fn attach_volume(
        &self,
        id: &str,
        volume: &VolumeSpec,
    ) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    /// Asks the guest to release a volume and removes it once it has; fails after `timeout`
    /// when the guest does not let go. Not plugged is success.
    fn detach_volume(
        &self,
        id: &str,
        node: &str,
        timeout: Duration,
    ) -> impl std::future::Future<Output = DriverResult<()>> + Send;
    /// Serial console output captured so far.
    fn console_log(&self, id: &str) -> PathBuf;
    /// Unix socket of the interactive serial console.
    fn console_socket(&self, id: &str) -> PathBuf;
}
