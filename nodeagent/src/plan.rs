//! The reconcile step as data: from the desired profile and what is observed (the workload
//! records, netd's and vmd's progress), the list of actions to carry out now, in order
//! (network, then VMs, then containers in `depends_on` order). Pure: the engine performs the
//! actions; the unit tests here pin the decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use backroom_profiles::{ContainerSpec, Profile, UpdateStrategy, Workload};

use crate::record::{HealthStatus, Records, Role, WorkloadRecord, spec_hash};
use crate::restart::should_restart;

/// Where a node-wide phase (network, VMs) stands for the desired revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Carried out for the desired revision.
    Done,
    /// Not yet (or failed earlier and may be tried again now).
    Due,
    /// Running now, or failed recently: wait.
    Waiting,
    /// Nothing to do on this node (e.g. no vmd and no VMs in the profile).
    NotNeeded,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    ApplyNetwork {
        revision: String,
    },
    ApplyVms {
        revision: String,
    },
    /// Starts a new container of the workload in `role`.
    Start {
        workload: String,
        spec: Box<ContainerSpec>,
        role: Role,
        reason: String,
    },
    /// Stops the primary (if it still runs) and starts the same version again.
    Restart {
        workload: String,
        reason: String,
    },
    /// Stop-first: stops the primary, then starts `spec` as the new primary.
    Replace {
        workload: String,
        spec: Box<ContainerSpec>,
        reason: String,
    },
    /// Start-first: the new version is healthy; stop the old one, move the addresses over.
    Promote {
        workload: String,
    },
    /// The new version failed: stop it and keep (or restore) the previous one.
    Rollback {
        workload: String,
        reason: String,
    },
    /// The update in progress is no longer wanted (the profile changed again): stop `next`.
    Abandon {
        workload: String,
    },
    /// A stop-first update became healthy: the update is over.
    Settle {
        workload: String,
    },
    /// The workload left the profile: stop and remove its containers.
    Remove {
        workload: String,
    },
    /// Nothing can be done for the workload now; the reason is shown.
    Wait {
        workload: String,
        reason: String,
    },
}

impl Action {
    pub fn workload(&self) -> Option<&str> {
        match self {
            Action::ApplyNetwork { .. } | Action::ApplyVms { .. } => None,
            Action::Start { workload, .. }
            | Action::Restart { workload, .. }
            | Action::Replace { workload, .. }
            | Action::Promote { workload }
            | Action::Rollback { workload, .. }
            | Action::Abandon { workload }
            | Action::Settle { workload }
            | Action::Remove { workload }
            | Action::Wait { workload, .. } => Some(workload),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let image = |s: &ContainerSpec| s.image.as_ref().map(|i| i.to_string()).unwrap_or_default();
        match self {
            Action::ApplyNetwork { revision } => {
                write!(f, "apply the network of revision {}", short(revision))
            }
            Action::ApplyVms { revision } => {
                write!(f, "apply the VMs of revision {}", short(revision))
            }
            Action::Start { workload, spec, role: Role::Primary, reason } => {
                write!(f, "start {workload} ({}): {reason}", image(spec))
            }
            Action::Start { workload, spec, role: Role::Next, reason } => {
                write!(
                    f,
                    "start the new version of {workload} beside the old ({}): {reason}",
                    image(spec)
                )
            }
            Action::Restart { workload, reason } => write!(f, "restart {workload}: {reason}"),
            Action::Replace { workload, spec, reason } => {
                write!(f, "stop {workload}, then start {}: {reason}", image(spec))
            }
            Action::Promote { workload } => {
                write!(f, "promote the new version of {workload} and stop the old")
            }
            Action::Rollback { workload, reason } => write!(f, "roll {workload} back: {reason}"),
            Action::Abandon { workload } => {
                write!(f, "stop the new version of {workload}: the profile changed again")
            }
            Action::Settle { workload } => write!(f, "the update of {workload} is done"),
            Action::Remove { workload } => write!(f, "remove {workload}: not in the profile"),
            Action::Wait { workload, reason } => write!(f, "{workload}: {reason}"),
        }
    }
}

pub fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

/// Everything the planner looks at.
pub struct Input<'a> {
    pub revision: &'a str,
    pub profile: &'a Profile,
    pub network: Phase,
    pub vms: Phase,
    pub records: &'a Records,
    /// Workloads with an operation in flight: left alone this round.
    pub busy: &'a BTreeSet<String>,
    /// VMs that vmd reports running and healthy (for `depends_on`).
    pub vms_ready: &'a BTreeSet<String>,
    pub now_ms: u64,
    /// How long a container without a health check must run to count as ready.
    pub settle_ms: u64,
}

/// The actions to carry out now, in order.
pub fn plan(input: &Input<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    let rev = input.revision.to_string();
    if input.network == Phase::Due {
        actions.push(Action::ApplyNetwork { revision: rev.clone() });
    }
    let network_ok = matches!(input.network, Phase::Done | Phase::NotNeeded);
    if network_ok && input.vms == Phase::Due {
        actions.push(Action::ApplyVms { revision: rev });
    }

    let desired: BTreeMap<&str, &ContainerSpec> =
        input.profile.containers().map(|c| (c.name.as_str(), c)).collect();

    if !network_ok {
        // The network of the new revision is not there yet: keep what runs alive (restart
        // crashed containers at their own version), change nothing else.
        for rec in input.records.values() {
            if input.busy.contains(&rec.name) {
                continue;
            }
            if let Some(a) = restart_if_due(input, rec) {
                actions.push(a);
            }
        }
        return actions;
    }

    for name in dependency_order(input.profile) {
        let Some(spec) = desired.get(name.as_str()) else { continue };
        if input.busy.contains(&name) {
            continue;
        }
        if let Some(a) = plan_container(input, spec) {
            actions.push(a);
        }
    }
    for rec in input.records.values() {
        if !desired.contains_key(rec.name.as_str()) && !input.busy.contains(&rec.name) {
            actions.push(Action::Remove { workload: rec.name.clone() });
        }
    }
    actions
}

fn restart_if_due(input: &Input<'_>, rec: &WorkloadRecord) -> Option<Action> {
    let p = rec.primary.as_ref()?;
    let exit = p.exit.as_ref()?;
    if !should_restart(p.spec.restart, exit) || input.now_ms < rec.backoff_until_ms {
        return None;
    }
    Some(Action::Restart { workload: rec.name.clone(), reason: exit.describe() })
}

fn secs(ms: u64) -> String {
    format!("{}s", ms.div_ceil(1000))
}

fn plan_container(input: &Input<'_>, spec: &ContainerSpec) -> Option<Action> {
    let name = spec.name.as_str().to_string();
    let hash = spec_hash(spec);
    let now = input.now_ms;
    let empty = WorkloadRecord::new(&name);
    let rec = input.records.get(&name).unwrap_or(&empty);
    let wait = |reason: String| Some(Action::Wait { workload: name.clone(), reason });
    let backoff_left = rec.backoff_until_ms.saturating_sub(now);

    // A start-first update under way.
    if let Some(n) = &rec.next {
        if n.spec_hash != hash {
            return Some(Action::Abandon { workload: name });
        }
        if let Some(e) = &n.exit {
            return Some(Action::Rollback {
                workload: name,
                reason: format!("the new version {}", e.describe()),
            });
        }
        if n.health.status == HealthStatus::Unhealthy {
            return Some(Action::Rollback {
                workload: name,
                reason: format!("the new version is unhealthy: {}", n.health.reason),
            });
        }
        if n.ready(now, input.settle_ms) {
            return Some(Action::Promote { workload: name });
        }
        if rec.update.as_ref().is_some_and(|u| now >= u.deadline_ms) {
            return Some(Action::Rollback {
                workload: name,
                reason: "the new version did not become healthy in time".to_string(),
            });
        }
        return wait("updating: waiting for the new version to become healthy".to_string());
    }

    let deps_waiting = deps_not_ready(input, spec);
    let Some(p) = &rec.primary else {
        if rec.bad.as_ref().is_some_and(|b| b.spec_hash == hash) {
            return wait("not started: this version failed before".to_string());
        }
        if backoff_left > 0 {
            let err = rec.start_error.as_deref().unwrap_or("the last start failed");
            return wait(format!("{err}; next try in {}", secs(backoff_left)));
        }
        if let Some(d) = deps_waiting {
            return wait(format!("waiting for {d} to be healthy"));
        }
        return Some(Action::Start {
            workload: name,
            spec: Box::new(spec.clone()),
            role: Role::Primary,
            reason: "not running yet".to_string(),
        });
    };

    if rec.restart_requested {
        return Some(Action::Restart { workload: name, reason: "restart requested".to_string() });
    }

    // A stop-first update under way: the new version is the primary.
    if let Some(u) = &rec.update
        && u.previous.is_some()
        && p.spec_hash == u.to_hash
    {
        if let Some(e) = &p.exit {
            return Some(Action::Rollback {
                workload: name,
                reason: format!("the new version {}", e.describe()),
            });
        }
        if p.health.status == HealthStatus::Unhealthy {
            return Some(Action::Rollback {
                workload: name,
                reason: format!("the new version is unhealthy: {}", p.health.reason),
            });
        }
        if p.ready(now, input.settle_ms) {
            return Some(Action::Settle { workload: name });
        }
        if now >= u.deadline_ms {
            return Some(Action::Rollback {
                workload: name,
                reason: "the new version did not become healthy in time".to_string(),
            });
        }
        return wait("updating: waiting for the new version to become healthy".to_string());
    }

    let held = rec.bad.as_ref().filter(|b| b.spec_hash == hash);
    if let Some(e) = &p.exit {
        if p.spec_hash != hash && held.is_none() {
            return Some(Action::Replace {
                workload: name,
                spec: Box::new(spec.clone()),
                reason: format!("new version (the old one {})", e.describe()),
            });
        }
        if !should_restart(p.spec.restart, e) {
            return None;
        }
        if backoff_left > 0 {
            return wait(format!("{}; next try in {}", e.describe(), secs(backoff_left)));
        }
        return Some(Action::Restart { workload: name, reason: e.describe() });
    }

    if p.spec_hash == hash {
        return None;
    }
    if let Some(b) = held {
        return wait(format!("keeping the running version: {} failed: {}", b.image, b.reason));
    }
    if backoff_left > 0 {
        let err = rec.start_error.as_deref().unwrap_or("the last start failed");
        return wait(format!("update: {err}; next try in {}", secs(backoff_left)));
    }
    if let Some(d) = deps_waiting {
        return wait(format!("update waiting for {d} to be healthy"));
    }
    match spec.update {
        UpdateStrategy::StartFirst => Some(Action::Start {
            workload: name,
            spec: Box::new(spec.clone()),
            role: Role::Next,
            reason: "new version".to_string(),
        }),
        UpdateStrategy::StopFirst => Some(Action::Replace {
            workload: name,
            spec: Box::new(spec.clone()),
            reason: "new version".to_string(),
        }),
    }
}

/// The first dependency of `spec` that is not ready, if any.
fn deps_not_ready(input: &Input<'_>, spec: &ContainerSpec) -> Option<String> {
    for d in &spec.depends_on {
        let d = d.as_str();
        let ready = match input.profile.workload(d) {
            Some(Workload::Vm(_)) => input.vms_ready.contains(d),
            _ => input.records.get(d).is_some_and(|r| {
                r.primary.as_ref().is_some_and(|p| p.ready(input.now_ms, input.settle_ms))
            }),
        };
        if !ready {
            return Some(d.to_string());
        }
    }
    None
}

/// Workload names, each after everything it depends on (validation rules out cycles; a cycle
/// would only leave its members in profile order).
pub fn dependency_order(profile: &Profile) -> Vec<String> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::new();
    let names: Vec<&Workload> = profile.workloads.iter().collect();
    loop {
        let mut progressed = false;
        for w in &names {
            let n = w.name().as_str();
            if done.contains(n) {
                continue;
            }
            if w.depends_on().iter().all(|d| done.contains(d.as_str())) {
                done.insert(n.to_string());
                order.push(n.to_string());
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    for w in &names {
        if !done.contains(w.name().as_str()) {
            order.push(w.name().to_string());
        }
    }
    order
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
