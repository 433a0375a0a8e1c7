//! The typed store profile: what a rendered, validated document means.
//!
//! Field order here is the order of the canonical rendering. Lists of named items are sorted by
//! name in the canonical form (see `render.rs`); a workload's `networks` keep their order because
//! it decides which interface is `eth0`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::types::{
    Cpus, Duration, HostAddress, ImageRef, ItemName, Percent, PortSpec, ProfileName, SegmentName,
    Sha256, Size, Subnet, Vlan, WorkloadAddress, WorkloadName,
};

pub const API_VERSION: &str = "backroom/v1";
pub const KIND: &str = "StoreProfile";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Profile {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub node: NodeSpec,
    pub network: Network,
    pub workloads: Vec<Workload>,
    pub runbooks: Vec<Runbook>,
}

impl Profile {
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name().as_str() == name)
    }

    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.network.segments.iter().find(|s| s.name.as_str() == name)
    }

    pub fn containers(&self) -> impl Iterator<Item = &ContainerSpec> {
        self.workloads.iter().filter_map(|w| match w {
            Workload::Container(c) => Some(c),
            Workload::Vm(_) => None,
        })
    }

    pub fn vms(&self) -> impl Iterator<Item = &VmSpec> {
        self.workloads.iter().filter_map(|w| match w {
            Workload::Vm(v) => Some(v),
            Workload::Container(_) => None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: ProfileName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(default = "Resources::default_reserved")]
    pub reserved: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// The store OS the box should run; absent: it keeps the OS it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsSpec>,
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec { reserved: Resources::default_reserved(), capacity: None, os: None }
    }
}

/// `node.os`: the store OS image the box should run (an A/B update when `version` differs from
/// the running one). Checked in `validate.rs`, so each problem points at its own line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsSpec {
    /// Free-form; compared for equality only.
    pub version: String,
    /// An http(s) URL of the root slot image (the squashfs).
    pub image: String,
    /// 64 lower-case hex digits: the sha256 of the image.
    pub sha256: String,
}

impl OsSpec {
    /// `true` for the lower-case hex sha256 the image is checked against.
    pub fn is_sha256(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpus: Cpus,
    #[serde(default)]
    pub memory: Size,
}

impl Resources {
    /// What the host OS and Backroom's daemons keep when a profile does not say: one core, 2 GiB.
    pub fn default_reserved() -> Self {
        Resources { cpus: Cpus::from_millis(1000), memory: Size::from_bytes(2 << 30) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub cpus: Cpus,
    pub memory: Size,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Size>,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize)]
pub struct Network {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<Uplink>,
    pub segments: Vec<Segment>,
    pub firewall: Firewall,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// A kernel interface name, or `auto` (the first physical NIC with carrier).
    pub interface: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub name: SegmentName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<Vlan>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub internal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Subnet>,
    #[serde(default = "HostAddress::none", skip_serializing_if = "HostAddress::is_none")]
    pub address: HostAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub nat: bool,
}

impl Segment {
    /// The bridge that carries this segment on the host.
    pub fn bridge(&self) -> String {
        crate::naming::bridge(self.name.as_str())
    }
}

impl HostAddress {
    fn none() -> Self {
        HostAddress::None
    }

    pub fn is_none(&self) -> bool {
        *self == HostAddress::None
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Firewall {
    pub default: Verdict,
    pub allow: Vec<AllowRule>,
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall { default: Verdict::Drop, allow: Vec::new() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Drop,
    Reject,
    Accept,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Drop => "drop",
            Verdict::Reject => "reject",
            Verdict::Accept => "accept",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub name: ItemName,
    /// A segment, a workload, `host` or `internet`.
    pub from: String,
    /// A segment, a workload, `host` or `internet`.
    pub to: String,
    /// Empty means any port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
}

pub const HOST: &str = "host";
pub const INTERNET: &str = "internet";

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Workload {
    Container(ContainerSpec),
    Vm(VmSpec),
}

impl Workload {
    pub fn name(&self) -> &WorkloadName {
        match self {
            Workload::Container(c) => &c.name,
            Workload::Vm(v) => &v.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Container(_) => "container",
            Workload::Vm(_) => "vm",
        }
    }

    pub fn networks(&self) -> &[NetworkAttachment] {
        match self {
            Workload::Container(c) => &c.networks,
            Workload::Vm(v) => &v.networks,
        }
    }

    pub fn health(&self) -> Option<&Health> {
        match self {
            Workload::Container(c) => c.health.as_ref(),
            Workload::Vm(v) => v.health.as_ref(),
        }
    }

    pub fn depends_on(&self) -> &[WorkloadName] {
        match self {
            Workload::Container(c) => &c.depends_on,
            Workload::Vm(v) => &v.depends_on,
        }
    }

    pub fn restart(&self) -> RestartPolicy {
        match self {
            Workload::Container(c) => c.restart,
            Workload::Vm(v) => v.restart,
        }
    }

    /// The cpus this workload counts for in admission.
    pub fn cpus(&self) -> Cpus {
        match self {
            Workload::Container(c) => c.resources.and_then(|r| r.cpus).unwrap_or_default(),
            Workload::Vm(v) => v.cpus,
        }
    }

    /// The memory this workload counts for in admission.
    pub fn memory(&self) -> Size {
        match self {
            Workload::Container(c) => c.resources.and_then(|r| r.memory).unwrap_or_default(),
            Workload::Vm(v) => v.memory,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub name: WorkloadName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Limits>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub update: UpdateStrategy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<WorkloadName>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttachment {
    pub segment: SegmentName,
    #[serde(default)]
    pub address: WorkloadAddress,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub name: ItemName,
    /// Where it is mounted inside the container.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default = "Health::default_interval")]
    pub interval: Duration,
    #[serde(default = "Health::default_timeout")]
    pub timeout: Duration,
    #[serde(default = "Health::default_threshold")]
    pub failure_threshold: u32,
}

/// The one probe a health check runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Probe<'a> {
    Http(&'a HttpProbe),
    Tcp(&'a TcpProbe),
    Exec(&'a [String]),
}

impl Health {
    fn default_interval() -> Duration {
        Duration::from_millis(10_000)
    }

    fn default_timeout() -> Duration {
        Duration::from_millis(2_000)
    }

    fn default_threshold() -> u32 {
        3
    }

    /// The probe, when exactly one is given (validation makes sure of it).
    pub fn probe(&self) -> Option<Probe<'_>> {
        match (&self.http, &self.tcp, &self.exec) {
            (Some(h), None, None) => Some(Probe::Http(h)),
            (None, Some(t), None) => Some(Probe::Tcp(t)),
            (None, None, Some(e)) => Some(Probe::Exec(e)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub port: u16,
    #[serde(default = "HttpProbe::default_path")]
    pub path: String,
}

impl HttpProbe {
    fn default_path() -> String {
        "/".to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    #[default]
    StartFirst,
    StopFirst,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: WorkloadName,
    pub cpus: Cpus,
    pub memory: Size,
    pub boot: Boot,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
    #[serde(default)]
    pub firmware: Firmware,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<WorkloadName>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<BootDisk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelBoot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootDisk {
    /// An http(s) URL or an absolute path on the node.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
    /// Virtual size of the VM's copy-on-write root disk; the image's own size when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
}

impl BootDisk {
    pub fn is_url(&self) -> bool {
        self.image.starts_with("http://") || self.image.starts_with("https://")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub name: ItemName,
    pub size: Size,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    pub user_data: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    pub name: ItemName,
    pub when: Trigger,
    pub steps: Vec<Step>,
    #[serde(default = "Runbook::default_max_per_hour")]
    pub max_per_hour: u32,
}

impl Runbook {
    fn default_max_per_hour() -> u32 {
        3
    }
}

/// What starts a runbook. Exactly one of `unhealthy`, `drift` and `disk_free_below` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<WorkloadName>,
    /// How long the workload must have been unhealthy.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub for_: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_below: Option<Percent>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftTarget {
    Network,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Restart,
    Rollback,
    Alert,
    Wait(Duration),
}
