//! The engine observing: exits, probes, containerd's view, netd's and vmd's news, the
//! reconcile step, the states shown, the problems open and the revisions reached.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

use backroom_daemon::Chain;
use backroom_profiles::{Probe, Workload};
use tracing::Instrument;

use super::actor::{Engine, PhaseState};
use super::view::{Status, WorkloadView, derive_state};
use super::{Msg, PeerNews};
use crate::liveness::{Daemon, not_answering, status_line};
use crate::network::Network;
use crate::plan::{self, Input, Phase, short};
use crate::probe::{self, Check, ProbeRequest, Prober};
use crate::problems::{Source, pull_subject, workload_subject};
use crate::record::{Exit, HealthStatus, Role, WorkloadRecord, spec_hash};
use crate::restart::{record_failure, should_restart};
use crate::runtime::Runtime;
use crate::runtime::TaskState;
use crate::vms::Vms;

fn daemon_of(source: Source) -> Daemon {
    match source {
        Source::Vmd => Daemon::Vmd,
        _ => Daemon::Netd,
    }
}

impl<R: Runtime, N: Network, V: Vms, P: Prober> Engine<R, N, V, P> {
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
        let timing = self.cfg.restart;
        let now = self.now();
        let Some((rec, role)) = self.find_instance(container_id) else { return };
        let Some(inst) = rec.instance_mut(container_id) else { return };
        if inst.exit.is_some() {
            return;
        }
        let started = inst.started_ms;
        let text = exit.describe();
        let policy = inst.spec.restart;
        let restarts = should_restart(policy, &exit);
        let failed = exit.code != 0 || exit.oom;
        inst.exit = Some(exit);
        record_failure(&timing, rec, Some(started), now);
        let name = rec.name.clone();
        let looping = timing.crash_loop(rec);
        let in_a_row = rec.consecutive_failures;
        self.dirty = true;
        self.emit(&name, "exit", format!("container {container_id} {text}"));
        if role != Role::Primary {
            return;
        }
        // The restart policy cannot get it going: it will not start it again, or it keeps
        // dying (the backoff goes on, but someone should look).
        if !restarts && failed {
            let why =
                format!("it {text} and its restart policy ({policy:?}) does not start it again")
                    .to_lowercase();
            self.failing(&workload_subject(&name), &name, why);
        } else if looping {
            let why = format!("crash loop: {in_a_row} exits in a row, the last: it {text}");
            self.failing(&workload_subject(&name), &name, why);
        }
    }

    pub(super) fn on_probe(&mut self, container_id: &str, result: probe::ProbeResult) {
        self.probing.remove(container_id);
        let now = self.now();
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
        // A container no record knows, of a workload with nothing in flight: one whose removal
        // failed (containerd gone for a moment while the old version of an update was being
        // removed, found by the kill suite). It is removed now, as at start.
        let known: BTreeSet<&str> = self
            .records
            .values()
            .flat_map(|r| r.instances().map(|i| i.container_id.as_str()))
            .collect();
        let orphans: Vec<String> = list
            .iter()
            .filter(|o| !known.contains(o.id.as_str()))
            .filter(|o| {
                let w = o.labels.get(crate::runtime::LABEL_WORKLOAD).map_or("", String::as_str);
                !self.busy.contains_key(w)
            })
            .map(|o| o.id.clone())
            .collect();
        for id in orphans {
            tracing::info!("removing container {id} that no workload record knows");
            self.stopping.insert(id.clone());
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = super::ops::remove(&ctx, &id).await {
                    tracing::warn!(container = %id, error = %Chain(&e), "cannot remove an unknown container (again at the next look)");
                }
            });
        }
        let present: HashMap<String, TaskState> =
            list.into_iter().map(|o| (o.id, o.task)).collect();
        let now = self.now();
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

    /// The probes due now, as data.
    fn due_probes(&self, now: u64) -> Vec<ProbeRequest> {
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
                let check = match p {
                    Probe::Http(hp) => Check::Http {
                        netns,
                        addr: SocketAddr::new(target, hp.port),
                        path: hp.path.clone(),
                    },
                    Probe::Tcp(tp) => Check::Tcp { netns, addr: SocketAddr::new(target, tp.port) },
                    Probe::Exec(argv) => {
                        let argv = argv.to_vec();
                        let image = crate::spec::ImageConfig::default();
                        match crate::spec::process(&i.spec, &image, argv.clone()) {
                            Ok(process) => Check::Exec { process: Box::new(process), argv },
                            Err(e) => {
                                tracing::warn!(workload = %rec.name, error = %Chain(&e), "cannot make the exec probe");
                                continue;
                            }
                        }
                    }
                };
                due.push(ProbeRequest {
                    workload: rec.name.clone(),
                    container_id: i.container_id.clone(),
                    check,
                    timeout: h.timeout.to_std(),
                });
            }
        }
        due
    }

    pub(super) fn schedule_probes(&mut self) {
        for req in self.due_probes(self.now()) {
            self.probing.insert(req.container_id.clone());
            let tx = self.tx.clone();
            let prober = self.prober.clone();
            let span = tracing::info_span!("probe", workload = %req.workload);
            tokio::spawn(
                async move {
                    let container_id = req.container_id.clone();
                    let result = prober.probe(req).await;
                    let _ = tx.send(Msg::Probed { container_id, result }).await;
                }
                .instrument(span),
            );
        }
    }

    /// News from netd's or vmd's watcher.
    pub(super) fn on_peer(&mut self, source: Source, news: PeerNews) {
        let now = self.cfg.clock.now_ms();
        match news {
            PeerNews::Up(open) => {
                self.daemon_answers(daemon_of(source));
                for c in self.problems.peer_snapshot(source, open, now) {
                    self.tell(c);
                }
            }
            PeerNews::Down(e) => {
                let (daemon, address) = match source {
                    Source::Vmd => (Daemon::Vmd, self.vms.address()),
                    _ => (Daemon::Netd, self.ctx.net.address()),
                };
                let why = not_answering(daemon, &address, &backroom_daemon::chain(&e));
                self.daemon_silent(daemon, why);
            }
            PeerNews::Event(e) => match e.kind.as_str() {
                "failing" => {
                    let p = crate::problems::OpenProblem {
                        source,
                        subject: e.subject.clone(),
                        workload: e.workload.clone(),
                        message: e
                            .message
                            .strip_prefix(&format!("{}: ", e.subject))
                            .unwrap_or(&e.message)
                            .to_string(),
                        since_ms: e.at_ms,
                        failures: 1,
                    };
                    if let Some(c) = self.problems.peer_failing(p, e.at_ms) {
                        self.tell(c);
                    }
                }
                "recovered" => {
                    if let Some(c) =
                        self.problems.peer_recovered(source, &e.subject, e.message, e.at_ms)
                    {
                        self.tell(c);
                    }
                }
                kind => match source {
                    Source::Vmd => {
                        self.emit(&e.workload, "vm", format!("{kind}: {}", e.message));
                        self.refresh_vms();
                    }
                    _ => {
                        match kind {
                            "unconfirmed_kept" => self.network_kept = true,
                            "confirmed" => self.network_kept = false,
                            _ => {}
                        }
                        self.emit(&e.workload, "netd", format!("{kind}: {}", e.message))
                    }
                },
            },
        }
    }

    /// The problems of the desired containers that are over, and those of workloads that
    /// left the profile.
    fn update_problems(&mut self, now: u64) {
        let Some(d) = &self.desired else { return };
        let stable_ms = self.cfg.restart.stable_ms();
        let mut over = Vec::new();
        for c in d.profile.containers() {
            let name = c.name.as_str();
            let Some(rec) = self.records.get(name) else { continue };
            let Some(p) = rec.primary.as_ref().filter(|p| p.running()) else { continue };
            // Works again: it has run for a stable while since its last start.
            if now.saturating_sub(p.started_ms) >= stable_ms {
                over.push(workload_subject(name));
            }
            // Runs the profile's version, so that image is here.
            if p.spec_hash == spec_hash(c) && rec.next.is_none() {
                over.push(pull_subject(name));
            }
        }
        let names: BTreeSet<String> =
            d.profile.workloads.iter().map(|w| w.name().to_string()).collect();
        for subject in over {
            if self.problems.is_failing(&subject) {
                self.working(&subject);
            }
        }
        let ms = i64::try_from(now).unwrap_or(i64::MAX);
        for c in self.problems.forget_workloads(ms, |w| names.contains(w)) {
            self.tell(c);
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
        let now = self.now();
        let Some(desired) = &self.desired else {
            self.persist();
            return;
        };
        let rev = desired.revision.to_string();
        let span = tracing::debug_span!("reconcile", revision = short(&rev));
        let _entered = span.enter();
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
        });
        self.waiting.clear();
        for a in actions {
            self.dispatch(a, &rev);
        }
        // A container that just started gets its first probe now, not on the next tick.
        self.schedule_probes();
        self.update_states(now);
        self.update_problems(now);
        self.check_applied(now);
        self.persist();
    }

    pub(super) fn persist(&mut self) {
        if self.actions_dirty {
            let list: Vec<_> = self.actions.iter().collect();
            match self.store.save_actions(&list) {
                Ok(()) => self.actions_dirty = false,
                Err(e) => tracing::error!(error = %Chain(&e), "cannot save the action results"),
            }
        }
        if self.problems_dirty {
            match self.store.save_problems(&self.problems.open()) {
                Ok(()) => self.problems_dirty = false,
                Err(e) => tracing::error!(error = %Chain(&e), "cannot save the open problems"),
            }
        }
        if self.dirty {
            match self.store.save_records(&self.records) {
                Ok(()) => self.dirty = false,
                Err(e) => tracing::error!(error = %Chain(&e), "cannot save the workload records"),
            }
        }
        self.tell_set_aside();
        self.close_set_aside();
    }

    pub(super) fn update_states(&mut self, now: u64) {
        let mut changes = Vec::new();
        for rec in self.records.values_mut() {
            let (state, reason) = derive_state(
                rec,
                self.busy.get(&rec.name).map(String::as_str),
                self.waiting.get(&rec.name).map(String::as_str),
                &self.cfg.restart,
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
                Err(e) => {
                    tracing::error!(revision = short(&rev), error = %Chain(&e), "cannot keep the revisions reached")
                }
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
        let now = self.now();
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
                &self.cfg.restart,
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
                health_checked_ms: p.map_or(0, |p| p.health.last_probe_ms),
            });
        }
        let applied = self.node.applied.as_deref();
        let silent = |d: Daemon| self.liveness.outage(d).map(|o| status_line(d, o, applied));
        let network = match (&self.desired, &self.network) {
            _ if silent(Daemon::Netd).is_some() => silent(Daemon::Netd).unwrap_or_default(),
            (None, _) => self.boot_error.clone().unwrap_or_else(|| "no profile yet".into()),
            (_, PhaseState { busy: true, .. }) => "applying".into(),
            // netd kept it at the deadline: it is applied, only its confirmation is missing.
            _ if self.network_kept => "applied (first network, not confirmed: kept)".into(),
            (_, PhaseState { error: Some(e), unreachable: true, .. }) => {
                format!("waiting: {e}; retrying")
            }
            (_, PhaseState { error: Some(e), .. }) => format!("failed: {e}; retrying"),
            (Some(d), PhaseState { done: Some(r), .. }) if *r == d.revision.as_str() => {
                format!("applied (revision {})", short(r))
            }
            _ => "pending".into(),
        };
        let vms = match (&self.desired, &self.vm_phase) {
            _ if silent(Daemon::Vmd).is_some() => silent(Daemon::Vmd).unwrap_or_default(),
            _ if silent(Daemon::Libvirtd).is_some() => silent(Daemon::Libvirtd).unwrap_or_default(),
            (None, _) => String::new(),
            (_, PhaseState { busy: true, .. }) => "applying".into(),
            (_, PhaseState { error: Some(e), unreachable: true, .. }) => {
                format!("waiting: {e}; retrying")
            }
            (_, PhaseState { error: Some(e), .. }) => format!("failed: {e}; retrying"),
            (Some(d), PhaseState { done: Some(r), .. }) if *r == d.revision.as_str() => {
                format!("applied (revision {})", short(r))
            }
            _ => "pending".into(),
        };
        let containers = silent(Daemon::Containerd).unwrap_or_else(|| {
            let running =
                workloads.iter().filter(|w| w.kind == "container" && w.state == "running").count();
            let all = workloads.iter().filter(|w| w.kind == "container").count();
            format!("{running} of {all} running (containerd answers)")
        });
        Status {
            desired: self.node.desired.clone().unwrap_or_default(),
            applied: self.node.applied.clone().unwrap_or_default(),
            last_known_good: self.node.last_known_good.clone().unwrap_or_default(),
            source: self.node.desired_source.clone(),
            profile_name: profile.map(|p| p.metadata.name.to_string()).unwrap_or_default(),
            profile_version: profile.and_then(|p| p.metadata.version.clone()).unwrap_or_default(),
            network,
            vms,
            containers,
            workloads,
            actions: self.actions.iter().cloned().collect(),
            problems: self.problems.open(),
        }
    }
}
