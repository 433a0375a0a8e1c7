//! The values vmd's core speaks: its dependencies and settings, and what it reports about
//! VMs (state, health, status, events).

use std::sync::Arc;
use std::time::Duration;

use backroom_daemon::Backoff;

use crate::admission::{self, NodeFacts};
use crate::hypervisor::Hypervisor;
use crate::nics::NicSource;
use crate::storage::Storage;
use crate::virt_type::VirtTypeSetting;

/// The outside systems vmd works through.
#[derive(Clone)]
pub struct Deps {
    pub hypervisor: Arc<dyn Hypervisor>,
    pub storage: Arc<dyn Storage>,
    pub nics: Arc<dyn NicSource>,
}

/// Settings (the daemon's flags).
#[derive(Clone, Debug)]
pub struct Config {
    pub virt_type: VirtTypeSetting,
    pub qemu_binary: std::path::PathBuf,
    pub kvm_probe_timeout: Duration,
    /// The kernel the KVM probe boots after its boot sector (None: the sector only).
    pub kvm_probe_kernel: Option<std::path::PathBuf>,
    /// How long a guest has to power off after the ACPI request before it is destroyed.
    pub shutdown_timeout: Duration,
    /// How long an updated VM must keep running before the update counts as done.
    pub settle: Duration,
    /// How long an updated VM with a health check has to become healthy.
    pub update_timeout: Duration,
    /// QEMU's memory per VM, counted by admission.
    pub overhead: u64,
    /// The node's facts, for admission when the profile gives no capacity.
    pub facts: NodeFacts,
    /// The network namespace health probes run from (none: vmd's own).
    pub probe_netns: Option<String>,
    /// How long the restart policy waits after each stop in a row: 1s, doubling, up to 5 min.
    pub restart_backoff: Backoff,
    /// A VM that ran this long since its last start gets its backoff reset.
    pub stable_after: Duration,
    pub resync_every: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            virt_type: VirtTypeSetting::Auto,
            qemu_binary: "/usr/bin/qemu-system-x86_64".into(),
            kvm_probe_timeout: Duration::from_secs(5),
            kvm_probe_kernel: crate::virt_type::default_probe_kernel(),
            shutdown_timeout: Duration::from_secs(60),
            settle: Duration::from_secs(10),
            update_timeout: Duration::from_secs(300),
            overhead: admission::DEFAULT_OVERHEAD,
            facts: NodeFacts::of_this_machine(),
            probe_netns: None,
            restart_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            stable_after: Duration::from_secs(120),
            resync_every: Duration::from_secs(15),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Running,
    Stopped,
    Crashed,
    Starting,
    Failed,
    Updating,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Crashed => "crashed",
            VmState::Starting => "starting",
            VmState::Failed => "failed",
            VmState::Updating => "updating",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// What `List` shows of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStatus {
    pub name: String,
    pub state: VmState,
    pub since_unix: i64,
    pub restarts: u32,
    pub revision: String,
    pub reason: String,
    pub addresses: Vec<String>,
    pub health: HealthState,
}

/// A lifecycle event, as the `Events` stream sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEvent {
    pub at_unix_ms: i64,
    pub vm: String,
    /// started | stopped | crashed | restarted | update_done | update_rolled_back | failed |
    /// removed | healthy | unhealthy | failing | recovered
    pub kind: String,
    pub message: String,
    /// For failing and recovered: what (`libvirt events`, `VM nvr`, `image for nvr`).
    pub subject: String,
}
