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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

    /// A new container id for this workload, never one in `taken` (containers being stopped
    /// or removed: an unknown container found at start may carry the id the next one would
    /// get, when the state that numbered them was lost).
    pub fn next_container_id(&mut self, taken: &std::collections::BTreeSet<String>) -> String {
        loop {
            self.generation += 1;
            let id = format!("{}.{}", self.name, self.generation);
            if !taken.contains(&id) {
                return id;
            }
        }
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

/// Gives records back to running containers that no record knows (`strangers`), from their
/// labels: the workload, the role and the hash of the version they run. Only containers of a
/// container workload of `profile` are taken, one per workload and role (the newest
/// generation, a running one before a stopped one); the version they run is taken to be the
/// profile's (its hash stays the label's, so a different one is updated as usual). Returns the
/// ids taken and the ids left out because another container of the same workload and role was
/// taken (the caller removes those, as any container no record knows).
pub fn rebuild(
    records: &mut Records,
    profile: &backroom_profiles::Rendered,
    strangers: &[&crate::runtime::Observed],
    now_ms: u64,
    netns_exists: impl Fn(&str) -> bool,
) -> (Vec<String>, Vec<String>) {
    use crate::runtime::{LABEL_ROLE, LABEL_SPEC, LABEL_WORKLOAD, TaskState};
    let generation =
        |id: &str| id.rsplit_once('.').and_then(|(_, g)| g.parse::<u64>().ok()).unwrap_or(0);
    // (workload, role) → the best candidate: running first, then the newest generation.
    let mut best: BTreeMap<(String, Role), &crate::runtime::Observed> = BTreeMap::new();
    let mut left_out = Vec::new();
    for o in strangers {
        let Some(w) = o.labels.get(LABEL_WORKLOAD) else { continue };
        let role = match o.labels.get(LABEL_ROLE).map(String::as_str) {
            Some("next") => Role::Next,
            _ => Role::Primary,
        };
        if !matches!(o.task, TaskState::Running { .. } | TaskState::Stopped { .. }) {
            continue;
        }
        if profile.profile.containers().all(|c| c.name.as_str() != w) {
            continue;
        }
        if records.get(w).is_some_and(|r| match role {
            Role::Primary => r.primary.is_some(),
            Role::Next => r.next.is_some(),
        }) {
            left_out.push(o.id.clone());
            continue;
        }
        let rank = |x: &crate::runtime::Observed| {
            (matches!(x.task, TaskState::Running { .. }), generation(&x.id))
        };
        match best.get(&(w.clone(), role)) {
            Some(cur) if rank(cur) >= rank(o) => left_out.push(o.id.clone()),
            Some(cur) => {
                left_out.push(cur.id.clone());
                best.insert((w.clone(), role), o);
            }
            None => {
                best.insert((w.clone(), role), o);
            }
        }
    }
    let mut taken = Vec::new();
    for ((w, role), o) in best {
        let Some(spec) = profile.profile.containers().find(|c| c.name.as_str() == w) else {
            continue;
        };
        let netns = (!spec.networks.is_empty())
            .then(|| {
                let p = format!(
                    "/run/netns/{}",
                    backroom_profiles::naming::netns(&w, role.netd_instance())
                );
                netns_exists(&p).then_some(p)
            })
            .flatten();
        // A stopped one is found stopped by the watch adoption starts, and handled as an exit.
        let pid = match o.task {
            TaskState::Running { pid } => pid,
            _ => 0,
        };
        let inst = Instance {
            container_id: o.id.clone(),
            role,
            spec: spec.clone(),
            spec_hash: o.labels.get(LABEL_SPEC).cloned().unwrap_or_default(),
            revision: profile.revision.to_string(),
            image: spec.image.as_ref().map(|i| i.to_string()).unwrap_or_default(),
            image_digest: String::new(),
            netns,
            addresses: Vec::new(),
            pid,
            started_ms: now_ms,
            exit: None,
            health: HealthState { since_ms: now_ms, ..Default::default() },
        };
        let rec = records.entry(w.clone()).or_insert_with(|| WorkloadRecord::new(&w));
        rec.generation = rec.generation.max(generation(&o.id));
        match role {
            Role::Primary => rec.primary = Some(inst),
            Role::Next => rec.next = Some(inst),
        }
        taken.push(o.id.clone());
    }
    (taken, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{LABEL_ROLE, LABEL_SPEC, LABEL_WORKLOAD, Observed, TaskState};

    fn observed(id: &str, workload: &str, role: &str, task: TaskState) -> Observed {
        Observed {
            id: id.into(),
            labels: [
                (LABEL_WORKLOAD.to_string(), workload.to_string()),
                (LABEL_ROLE.to_string(), role.to_string()),
                (LABEL_SPEC.to_string(), "h1".to_string()),
            ]
            .into(),
            task,
        }
    }

    #[test]
    fn lost_records_come_back_from_labels_one_container_per_workload() {
        let profile = backroom_profiles::render_str(
            "p.yaml",
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: p}\nworkloads:\n  - {name: menu, kind: container, image: r.example/menu:1}\n  - {name: orders, kind: container, image: r.example/orders:1}\n",
        )
        .unwrap();
        let running = |pid| TaskState::Running { pid };
        let found = [
            observed("menu.3", "menu", "primary", running(30)),
            // An older one of the same workload (a start that raced the power cut): it goes.
            observed("menu.2", "menu", "primary", running(20)),
            observed("orders.1", "orders", "primary", TaskState::Stopped { code: 1 }),
            // Not this profile's, and one with no task: left to the usual removal.
            observed("gone.1", "gone", "primary", running(40)),
            observed("orders.2", "orders", "next", TaskState::Absent),
        ];
        let strangers: Vec<&Observed> = found.iter().collect();
        let mut records = Records::new();
        let (taken, extra) = rebuild(&mut records, &profile, &strangers, 5, |_| false);
        assert_eq!(taken, ["menu.3", "orders.1"]);
        assert_eq!(extra, ["menu.2"]);
        let menu = records["menu"].primary.as_ref().unwrap();
        assert_eq!((menu.pid, menu.spec_hash.as_str(), menu.role), (30, "h1", Role::Primary));
        assert_eq!(menu.image, "r.example/menu:1");
        assert_eq!(menu.revision, profile.revision.as_str());
        assert_eq!(records["menu"].generation, 3, "the next container id is a new one");
        assert!(
            records["orders"].primary.as_ref().unwrap().running(),
            "its watch finds it stopped"
        );
        assert!(!records.contains_key("gone"));
        // A record that knows its primary already: another primary is not taken.
        let again = [observed("menu.9", "menu", "primary", running(90))];
        let strangers: Vec<&Observed> = again.iter().collect();
        let (taken, extra) = rebuild(&mut records, &profile, &strangers, 6, |_| false);
        assert!(taken.is_empty());
        assert_eq!(extra, ["menu.9"]);
    }
}
