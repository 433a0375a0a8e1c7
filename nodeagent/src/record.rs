//! What nodeagent knows about each container workload: its instances, their health, exits and
//! backoff, the update in progress. Persisted (`store.rs`) so a restarted nodeagent adopts what
//! runs instead of restarting it.

use std::collections::BTreeMap;

use backroom_profiles::ContainerSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A hash of what makes a container version: when it changes, the workload is updated.
pub fn spec_hash(spec: &ContainerSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

/// The role of an instance: the primary serves; `next` is the new version of a start-first
/// update until it is promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Next,
}

impl Role {
    /// netd's instance name for this role ("" is the primary).
    pub fn netd_instance(self) -> &'static str {
        match self {
            Role::Primary => "",
            Role::Next => "next",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// No probe has answered yet, or the workload has no health check.
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthState {
    pub status: HealthStatus,
    /// The last probe's result, as a sentence.
    pub reason: String,
    pub consecutive_failures: u32,
    pub last_probe_ms: u64,
    pub since_ms: u64,
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub code: u32,
    pub at_ms: u64,
    /// Killed by the kernel's OOM killer (its cgroup's memory limit).
    pub oom: bool,
}

impl Exit {
    pub fn describe(&self) -> String {
        if self.oom {
            "killed by the kernel: out of memory (its memory limit)".to_string()
        } else if self.code > 128 {
            format!("killed by signal {}", self.code - 128)
        } else {
            format!("exited with code {}", self.code)
        }
    }
}

/// One container of a workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub container_id: String,
    pub role: Role,
    /// The version it runs (the profile's container spec at the time it started).
    pub spec: ContainerSpec,
    pub spec_hash: String,
    pub revision: String,
    pub image: String,
    pub image_digest: String,
    pub netns: Option<String>,
    pub addresses: Vec<String>,
    pub pid: u32,
    pub started_ms: u64,
    /// Set when its task has ended (and was not yet restarted).
    pub exit: Option<Exit>,
    pub health: HealthState,
}

impl Instance {
    pub fn running(&self) -> bool {
        self.exit.is_none()
    }

    /// Ready for dependents and for promotion: healthy, or running for `settle_ms` when the
    /// workload has no health check.
    pub fn ready(&self, now_ms: u64, settle_ms: u64) -> bool {
        if !self.running() {
            return false;
        }
        match self.spec.health.as_ref().and_then(|h| h.probe()) {
            Some(_) => self.health.status == HealthStatus::Healthy,
            None => now_ms.saturating_sub(self.started_ms) >= settle_ms,
        }
    }
}

/// An update under way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub to_hash: String,
    pub deadline_ms: u64,
    /// Stop-first: the version that ran before, started again if the new one fails.
    pub previous: Option<ContainerSpec>,
    pub previous_revision: String,
}

/// A version that failed to become healthy and was rolled back: not tried again until the
/// profile changes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadVersion {
    pub spec_hash: String,
    pub image: String,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub name: String,
    pub primary: Option<Instance>,
    pub next: Option<Instance>,
    pub update: Option<Update>,
    pub bad: Option<BadVersion>,
    /// Restarts since the workload was created (crashes, restart commands).
    pub restarts: u32,
    /// Failures in a row (exits, failed starts); reset once a start ran long enough.
    pub consecutive_failures: u32,
    pub backoff_until_ms: u64,
    /// The last start failure (image pull, netd attach, containerd), as a sentence.
    pub start_error: Option<String>,
    /// The image run before the current one, kept for rollback.
    pub previous_image: Option<String>,
    /// A counter for container ids (`<workload>.<generation>`).
    pub generation: u64,
    /// Asked by `nodectl restart`: the primary is stopped and started again.
    pub restart_requested: bool,
    /// When the shown state last changed, and that state (see `engine::derive_state`).
    pub state: String,
    pub state_since_ms: u64,
}

impl WorkloadRecord {
    pub fn new(name: &str) -> Self {
        WorkloadRecord { name: name.to_string(), ..Default::default() }
    }

    pub fn next_container_id(&mut self) -> String {
        self.generation += 1;
        format!("{}.{}", self.name, self.generation)
    }

    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.primary.iter().chain(self.next.iter())
    }

    pub fn instance_mut(&mut self, container_id: &str) -> Option<&mut Instance> {
        if self.primary.as_ref().is_some_and(|i| i.container_id == container_id) {
            return self.primary.as_mut();
        }
        if self.next.as_ref().is_some_and(|i| i.container_id == container_id) {
            return self.next.as_mut();
        }
        None
    }
}

pub type Records = BTreeMap<String, WorkloadRecord>;
