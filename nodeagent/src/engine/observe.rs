//! The engine observing: exits, probes, containerd's view, the reconcile step, the states
//! shown and the revisions reached.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

use backroom_profiles::{ContainerSpec, Probe, Workload};

use super::Msg;
use super::actor::{Engine, PhaseState};
use super::view::{Status, WorkloadView, derive_state};
use crate::network::Network;
use crate::plan::{self, Input, Phase, short};
use crate::probe;
use crate::record::{Exit, HealthStatus, Role, WorkloadRecord, spec_hash};
use crate::restart::record_failure;
use crate::runtime::Runtime;
use crate::runtime::TaskState;
use crate::vms::Vms;

impl<R: Runtime, N: Network, V: Vms> Engine<R, N, V> {
    pub(super) fn find_instance(
        &mut self,
        container_id: &str,
    ) -> Option<(&mut WorkloadRecord, Role)> {
        self.records.values_mut().find_map(|r| {
            let role = r.instance_mut(container_id).map(|i| i.role)?;
            Some((r, role))
        })
    }

    pub(super) fn on_exit(&mut self, container_id: &str, exit: Exit) {
        if self.stopping.contains(container_id) {
            return;
        }
        self.waiters.remove(container_id);
        let backoff = self.cfg.backoff;
        let now = crate::now_ms();
        let Some((rec, _)) = self.find_instance(container_id) else { return };
        let Some(inst) = rec.instance_mut(container_id) else { return };
        if inst.exit.is_some() {
            return;
        }
        let started = inst.started_ms;
        let text = exit.describe();
        inst.exit = Some(exit);
        record_failure(&backoff, rec, Some(started), now);
        let name = rec.name.clone();
        self.dirty = true;
        self.emit(&name, "exit", format!("container {container_id} {text}"));
    }

    pub(super) fn on_probe(&mut self, container_id: &str, result: probe::ProbeResult) {
        self.probing.remove(container_id);
        let now = crate::now_ms();
        let Some((rec, _)) = self.find_instance(container_id) else { return };
        let name = rec.name.clone();
        let Some(inst) = rec.instance_mut(container_id) else { return };
        let threshold = inst.spec.health.as_ref().map_or(3, |h| h.failure_threshold.max(1));
        let h = &mut inst.health;
        let before = h.status;
        h.last_probe_ms = now;
        h.reason = result.reason.clone();
        if result.ok {
            h.consecutive_failures = 0;
            h.status = HealthStatus::Healthy;
        } else {
            h.consecutive_failures += 1;
            if h.consecutive_failures >= threshold {
                h.status = HealthStatus::Unhealthy;
            }
        }
        if h.status != before {
            h.since_ms = now;
            let msg = format!("{container_id} is {}: {}", h.status.as_str(), h.reason);
            self.dirty = true;
            self.emit(&name, "health", msg);
        }
    }

    pub(super) fn on_observed(&mut self, list: Vec<crate::runtime::Observed>) {
        let present: HashMap<String, TaskState> =
            list.into_iter().map(|o| (o.id, o.task)).collect();
        let now = crate::now_ms();
        let mut vanished = Vec::new();
        for rec in self.records.values() {
            if self.busy.contains_key(&rec.name) {
                continue;
            }
            for i in rec.instances() {
                if i.exit.is_none() && !present.contains_key(&i.container_id) {
                    vanished.push(i.container_id.clone());
                }
            }
        }
        for id in vanished {
            self.forget_container(&id);
            self.on_exit(&id, Exit { code: 255, at_ms: now, oom: false });
        }
    }

    pub(super) fn schedule_probes(&mut self) {
        let now = crate::now_ms();
        let mut due = Vec::new();
        for rec in self.records.values() {
            for i in rec.instances() {
                let Some(h) = &i.spec.health else { continue };
                let Some(p) = h.probe() else { continue };
                if !i.running()
                    || self.probing.contains(&i.container_id)
                    || self.stopping.contains(&i.container_id)
                {
                    continue;
                }
                if now.saturating_sub(i.health.last_probe_ms) < h.interval.millis() {
                    continue;
                }
                let netns = PathBuf::from(format!("/proc/{}/ns/net", i.pid));
                let target = probe::target(&i.addresses);
                let timeout = h.timeout.to_std();
                let job: ProbeJob = match p {
                    Probe::Http(hp) => {
                        ProbeJob::Http(netns, SocketAddr::new(target, hp.port), hp.path.clone())
                    }
                    Probe::Tcp(tp) => ProbeJob::Tcp(netns, SocketAddr::new(target, tp.port)),
                    Probe::Exec(argv) => ProbeJob::Exec(Box::new(i.spec.clone()), argv.to_vec()),
                };
                due.push((i.container_id.clone(), job, timeout));
            }
        }
        for (id, job, timeout) in due {
            self.probing.insert(id.clone());
            let tx = self.tx.clone();
            let runtime = self.ctx.runtime.clone();
            tokio::spawn(async move {
                let result = match job {
                    ProbeJob::Http(ns, addr, path) => probe::http(ns, addr, &path, timeout).await,
                    ProbeJob::Tcp(ns, addr) => probe::tcp(ns, addr, timeout).await,
                    ProbeJob::Exec(spec, argv) => {
                        exec_probe(&*runtime, &id, &spec, argv, timeout).await
                    }
                };
                let _ = tx.send(Msg::Probed { container_id: id, result }).await;
            });
        }
    }

    pub(super) fn phase(&self, p: &PhaseState, rev: &str, now: u64) -> Phase {
        if p.done.as_deref() == Some(rev) {
            Phase::Done
        } else if p.busy || now < p.retry_at_ms {
            Phase::Waiting
        } else {
            Phase::Due
        }
    }

    pub(super) fn reconcile(&mut self) {
        let now = crate::now_ms();
        let Some(desired) = &self.desired else {
            self.persist();
            return;
        };
        let rev = desired.revision.to_string();
        let network = self.phase(&self.network, &rev, now);
        let has_vms = desired.profile.vms().next().is_some();
        let vms = if !has_vms && !self.vms.configured() {
            Phase::NotNeeded
        } else {
            self.phase(&self.vm_phase, &rev, now)
        };
        let busy: BTreeSet<String> = self.busy.keys().cloned().collect();
        let vms_ready: BTreeSet<String> =
            self.vm_states.iter().filter(|v| v.ready()).map(|v| v.name.clone()).collect();
        let actions = plan::plan(&Input {
            revision: &rev,
            profile: &desired.profile,
            network,
            vms,
            records: &self.records,
            busy: &busy,
            vms_ready: &vms_ready,
            now_ms: now,
            settle_ms: self.cfg.settle_ms,
            backoff: &self.cfg.backoff,
        });
        self.waiting.clear();
        for a in actions {
            self.dispatch(a, &rev);
        }
        // A container that just started gets its first probe now, not on the next tick.
        self.schedule_probes();
        self.update_states(now);
        self.check_applied(now);
        self.persist();
    }

    pub(super) fn persist(&mut self) {
        if self.actions_dirty {
            let list: Vec<_> = self.actions.iter().collect();
            match self.store.save_actions(&list) {
                Ok(()) => self.actions_dirty = false,
                Err(e) => tracing::error!("cannot save the action results: {e}"),
            }
        }
        if !self.dirty {
            return;
        }
        match self.store.save_records(&self.records) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::error!("cannot save the workload records: {e}"),
        }
    }

    pub(super) fn update_states(&mut self, now: u64) {
        let mut changes = Vec::new();
        for rec in self.records.values_mut() {
            let (state, reason) = derive_state(
                rec,
                self.busy.get(&rec.name).map(String::as_str),
                self.waiting.get(&rec.name).map(String::as_str),
                &self.cfg.backoff,
                now,
            );
            if rec.state != state {
                rec.state = state.clone();
                rec.state_since_ms = now;
                changes.push((rec.name.clone(), state, reason));
            }
        }
        if !changes.is_empty() {
            self.dirty = true;
        }
        for (w, s, r) in changes {
            let msg = if r.is_empty() { s } else { format!("{s}: {r}") };
            self.emit(&w, "state", msg);
        }
    }

    pub(super) fn check_applied(&mut self, now: u64) {
        let Some(d) = &self.desired else { return };
        let rev = d.revision.to_string();
        let net_ok = self.network.done.as_deref() == Some(rev.as_str());
        let has_vms = d.profile.vms().next().is_some();
        let vms_ok = (!has_vms && !self.vms.configured())
            || self.vm_phase.done.as_deref() == Some(rev.as_str());
        let mut converged = net_ok && vms_ok;
        let mut ready = true;
        for c in d.profile.containers() {
            let hash = spec_hash(c);
            let rec = self.records.get(c.name.as_str());
            let ok = rec.is_some_and(|r| {
                r.next.is_none()
                    && r.update.is_none()
                    && r.primary.as_ref().is_some_and(|p| p.running() && p.spec_hash == hash)
            });
            converged &= ok;
            ready &= rec
                .and_then(|r| r.primary.as_ref())
                .is_some_and(|p| p.ready(now, self.cfg.settle_ms));
        }
        for v in d.profile.vms() {
            ready &= self.vm_states.iter().any(|s| s.name == v.name.as_str() && s.ready());
        }
        let mut node = self.node.clone();
        if converged {
            node.applied = Some(rev.clone());
            if ready {
                node.last_known_good = Some(rev.clone());
            }
        }
        if node != self.node {
            if node.last_known_good != self.node.last_known_good {
                self.emit(
                    "",
                    "revision",
                    format!("revision {} is the last known good", short(&rev)),
                );
            }
            match self.store.save_node(&node) {
                Ok(()) => self.node = node,
                Err(e) => tracing::error!("{e}"),
            }
            let keep: Vec<&str> =
                [&self.node.desired, &self.node.applied, &self.node.last_known_good]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
            self.store.prune_revisions(&keep);
        }
    }

    pub(super) fn status(&self) -> Status {
        let now = crate::now_ms();
        let mut workloads = Vec::new();
        let profile = self.desired.as_ref().map(|d| &d.profile);
        let mut names: BTreeSet<String> = self.records.keys().cloned().collect();
        if let Some(p) = profile {
            names.extend(p.workloads.iter().map(|w| w.name().to_string()));
        }
        for name in names {
            let is_vm = profile
                .and_then(|p| p.workload(&name))
                .is_some_and(|w| matches!(w, Workload::Vm(_)));
            if is_vm {
                let v = self.vm_states.iter().find(|v| v.name == name);
                workloads.push(WorkloadView {
                    name: name.clone(),
                    kind: "vm".into(),
                    state: v.map_or_else(|| "pending".to_string(), |v| v.state.clone()),
                    health: v.map_or_else(|| "unknown".to_string(), |v| v.health.clone()),
                    reason: v.map_or_else(
                        || {
                            self.vm_phase
                                .error
                                .clone()
                                .unwrap_or_else(|| "not reported by vmd yet".into())
                        },
                        |v| v.reason.clone(),
                    ),
                    since_ms: v.map_or(0, |v| u64::try_from(v.since_unix).unwrap_or(0) * 1000),
                    restarts: v.map_or(0, |v| v.restarts),
                    addresses: v.map(|v| v.addresses.clone()).unwrap_or_default(),
                    revision: v.map(|v| v.revision.clone()).unwrap_or_default(),
                    ..Default::default()
                });
                continue;
            }
            let empty = WorkloadRecord::new(&name);
            let rec = self.records.get(&name).unwrap_or(&empty);
            let (state, reason) = derive_state(
                rec,
                self.busy.get(&name).map(String::as_str),
                self.waiting.get(&name).map(String::as_str),
                &self.cfg.backoff,
                now,
            );
            let p = rec.primary.as_ref();
            let has_check =
                p.and_then(|p| p.spec.health.as_ref()).and_then(|h| h.probe()).is_some();
            workloads.push(WorkloadView {
                name: name.clone(),
                kind: "container".into(),
                state,
                health: match p {
                    Some(p) if has_check && p.running() => p.health.status.as_str().to_string(),
                    _ => "unknown".into(),
                },
                reason,
                since_ms: rec.state_since_ms,
                restarts: rec.restarts,
                addresses: p.map(|p| p.addresses.clone()).unwrap_or_default(),
                image: p.map(|p| p.image.clone()).unwrap_or_default(),
                image_digest: p.map(|p| p.image_digest.clone()).unwrap_or_default(),
                container_id: p.map(|p| p.container_id.clone()).unwrap_or_default(),
                revision: p.map(|p| p.revision.clone()).unwrap_or_default(),
                health_reason: p.map(|p| p.health.reason.clone()).unwrap_or_default(),
            });
        }
        let network = match (&self.desired, &self.network) {
            (None, _) => self.boot_error.clone().unwrap_or_else(|| "no profile yet".into()),
            (_, PhaseState { busy: true, .. }) => "applying".into(),
            (_, PhaseState { error: Some(e), .. }) => format!("failed: {e}; retrying"),
            (Some(d), PhaseState { done: Some(r), .. }) if *r == d.revision.as_str() => {
                format!("applied (revision {})", short(r))
            }
            _ => "pending".into(),
        };
        let vms = match (&self.desired, &self.vm_phase) {
            (None, _) => String::new(),
            (_, PhaseState { busy: true, .. }) => "applying".into(),
            (_, PhaseState { error: Some(e), .. }) => format!("failed: {e}; retrying"),
            (Some(d), PhaseState { done: Some(r), .. }) if *r == d.revision.as_str() => {
                format!("applied (revision {})", short(r))
            }
            _ => "pending".into(),
        };
        Status {
            desired: self.node.desired.clone().unwrap_or_default(),
            applied: self.node.applied.clone().unwrap_or_default(),
            last_known_good: self.node.last_known_good.clone().unwrap_or_default(),
            source: self.node.desired_source.clone(),
            profile_name: profile.map(|p| p.metadata.name.to_string()).unwrap_or_default(),
            profile_version: profile.and_then(|p| p.metadata.version.clone()).unwrap_or_default(),
            network,
            vms,
            workloads,
            actions: self.actions.iter().cloned().collect(),
        }
    }
}

enum ProbeJob {
    Http(PathBuf, SocketAddr, String),
    Tcp(PathBuf, SocketAddr),
    Exec(Box<ContainerSpec>, Vec<String>),
}

async fn exec_probe<R: Runtime>(
    runtime: &R,
    id: &str,
    spec: &ContainerSpec,
    argv: Vec<String>,
    timeout: std::time::Duration,
) -> probe::ProbeResult {
    let t0 = std::time::Instant::now();
    let process =
        match crate::spec::process(spec, &crate::spec::ImageConfig::default(), argv.clone()) {
            Ok(p) => p,
            Err(e) => return probe::ProbeResult::fail(e.to_string()),
        };
    match runtime.exec(id, process, timeout).await {
        Ok(0) => probe::ProbeResult::ok(format!(
            "exec {} exited 0 in {} ms",
            argv.join(" "),
            t0.elapsed().as_millis()
        )),
        Ok(c) => probe::ProbeResult::fail(format!("exec {} exited with code {c}", argv.join(" "))),
        Err(e) => probe::ProbeResult::fail(format!("exec {}: {e}", argv.join(" "))),
    }
}
