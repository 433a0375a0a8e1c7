//! The engine acting: each planned action dispatched (long ones as tasks), and the outcome
//! of each operation applied to the workload's record.

use backroom_profiles::Rendered;

use tracing::Instrument;

use super::Msg;
use super::actor::{Engine, update_deadline_ms};
use super::ops::{self, OpOutcome, StartError};
use crate::error::Error;
use crate::network::Network;
use crate::plan::{Action, short};
use crate::probe::Prober;
use crate::problems::{pull_subject, workload_subject};
use crate::record::{BadVersion, Role, Update, WorkloadRecord, spec_hash};
use crate::restart::record_failure;
use crate::runtime::Runtime;
use crate::vms::Vms;

fn chain_all(errors: &[Error]) -> String {
    errors.iter().map(|e| backroom_daemon::chain(e)).collect::<Vec<_>>().join("; ")
}

impl<R: Runtime, N: Network, V: Vms, P: Prober> Engine<R, N, V, P> {
    pub(super) fn spawn_op<F>(&mut self, workload: &str, action: String, rev: &str, fut: F)
    where
        F: std::future::Future<Output = OpOutcome> + Send + 'static,
    {
        self.busy.insert(workload.to_string(), action.clone());
        self.emit(workload, "action", format!("{action}: started"));
        let tx = self.tx.clone();
        let w = workload.to_string();
        let span = tracing::info_span!("workload", name = %w, revision = short(rev));
        tokio::spawn(
            async move {
                let outcome = fut.await;
                let _ =
                    tx.send(Msg::OpDone { workload: w, action, outcome: Box::new(outcome) }).await;
            }
            .instrument(span),
        );
    }

    /// A start failed: a pull that failed is the image's problem, anything else the
    /// workload's (its restart policy cannot start it).
    fn start_failed(&mut self, workload: &str, error: &StartError) {
        let why = backroom_daemon::chain(error);
        if error.is_pull() {
            self.failing(&pull_subject(workload), workload, why);
        } else {
            self.failing(&workload_subject(workload), workload, why);
        }
    }

    pub(super) fn dispatch(&mut self, action: Action, rev: &str) {
        let line = action.to_string();
        let ctx = self.ctx.clone();
        match action {
            Action::ApplyNetwork { revision } => {
                let Some(yaml) = self.desired.as_ref().map(Rendered::to_yaml) else { return };
                self.network.busy = true;
                let net = self.ctx.net.clone();
                let tx = self.tx.clone();
                let confirm = self.cfg.confirm_seconds;
                let gate = self.cfg.confirm_gate.clone();
                let clock = self.cfg.clock.clone();
                let span = tracing::info_span!("network", revision = short(&revision));
                tokio::spawn(
                    async move {
                        let r = async {
                            let applied = net.apply(&revision, &yaml, confirm).await?;
                            if applied.confirm_deadline > 0 {
                                // Standalone: nodeagent still reaches netd after the change, which is
                                // what the confirmation asks. Connected: only once central answered
                                // after the change; otherwise netd restores the previous network.
                                let window = std::time::Duration::from_secs(u64::from(confirm));
                                let since = u64::try_from(clock.now_ms()).unwrap_or(0);
                                let reachable = match &gate {
                                    Some(g) => g(since, window).await,
                                    None => true,
                                };
                                if !reachable {
                                    return Err(Error::NotConfirmed { seconds: confirm });
                                }
                                net.confirm(&revision).await?;
                            }
                            Ok::<_, Error>(applied.actions)
                        }
                        .await;
                        let _ = tx.send(Msg::NetworkDone { revision, result: r }).await;
                    }
                    .instrument(span),
                );
            }
            Action::ApplyVms { revision } => {
                let Some(yaml) = self.desired.as_ref().map(Rendered::to_yaml) else { return };
                self.vm_phase.busy = true;
                let vms = self.vms.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let r = vms.apply(&revision, &yaml).await;
                    let _ = tx.send(Msg::VmsDone { revision, result: r }).await;
                });
            }
            Action::Wait { workload, reason } => {
                self.waiting.insert(workload, reason);
            }
            Action::Settle { workload } => {
                if let Some(rec) = self.records.get_mut(&workload) {
                    rec.update = None;
                    rec.consecutive_failures = 0;
                    self.dirty = true;
                }
                self.record_action(&workload, &line, true, String::new());
                self.collect_images();
            }
            Action::Start { workload, spec, role, .. } => {
                let rec = self
                    .records
                    .entry(workload.clone())
                    .or_insert_with(|| WorkloadRecord::new(&workload));
                let id = rec.next_container_id(&self.stopping);
                self.dirty = true;
                self.spawn_op(
                    &workload,
                    line,
                    rev,
                    ops::start(ctx, *spec, role, id, rev.to_string()),
                );
            }
            Action::Restart { workload, .. } => {
                let Some(rec) = self.records.get_mut(&workload) else { return };
                let Some(p) = rec.primary.clone() else { return };
                rec.restart_requested = false;
                rec.restarts += 1;
                let id = rec.next_container_id(&self.stopping);
                self.stopping.insert(p.container_id.clone());
                self.dirty = true;
                let revision = p.revision.clone();
                self.spawn_op(
                    &workload,
                    line,
                    rev,
                    ops::restart(ctx, Some(p.container_id), p.spec, id, revision),
                );
            }
            Action::Replace { workload, spec, .. } => {
                let Some(rec) = self.records.get_mut(&workload) else { return };
                let Some(p) = rec.primary.clone() else { return };
                let id = rec.next_container_id(&self.stopping);
                let restore_id = rec.next_container_id(&self.stopping);
                self.pending_update.insert(
                    workload.clone(),
                    Update {
                        to_hash: spec_hash(&spec),
                        deadline_ms: 0,
                        previous: Some(p.spec.clone()),
                        previous_revision: p.revision.clone(),
                    },
                );
                self.stopping.insert(p.container_id.clone());
                self.dirty = true;
                self.spawn_op(
                    &workload,
                    line,
                    rev,
                    ops::replace(
                        ctx,
                        p.container_id,
                        p.spec,
                        p.revision,
                        *spec,
                        id,
                        restore_id,
                        rev.to_string(),
                    ),
                );
            }
            Action::Promote { workload } => {
                let Some(rec) = self.records.get(&workload) else { return };
                let (Some(p), Some(n)) = (rec.primary.clone(), rec.next.as_ref()) else { return };
                let networked = !n.spec.networks.is_empty();
                self.stopping.insert(p.container_id.clone());
                self.spawn_op(
                    &workload,
                    line,
                    rev,
                    ops::promote(ctx, workload.clone(), p.container_id, networked),
                );
            }
            Action::Rollback { workload, reason } => {
                let Some(rec) = self.records.get_mut(&workload) else { return };
                if let Some(n) = rec.next.clone() {
                    let networked = !n.spec.networks.is_empty();
                    self.stopping.insert(n.container_id.clone());
                    self.spawn_op(
                        &workload,
                        line,
                        rev,
                        ops::drop_next(
                            ctx,
                            workload.clone(),
                            n.container_id,
                            networked,
                            Some(reason),
                        ),
                    );
                } else if let (Some(p), Some(u)) = (rec.primary.clone(), rec.update.clone()) {
                    let Some(previous) = u.previous else { return };
                    let id = rec.next_container_id(&self.stopping);
                    self.stopping.insert(p.container_id.clone());
                    self.dirty = true;
                    self.spawn_op(
                        &workload,
                        line,
                        rev,
                        ops::roll_back(
                            ctx,
                            p.container_id,
                            previous,
                            u.previous_revision,
                            id,
                            reason,
                        ),
                    );
                }
            }
            Action::Abandon { workload } => {
                let Some(n) = self.records.get(&workload).and_then(|r| r.next.clone()) else {
                    return;
                };
                let networked = !n.spec.networks.is_empty();
                self.stopping.insert(n.container_id.clone());
                self.spawn_op(
                    &workload,
                    line,
                    rev,
                    ops::drop_next(ctx, workload.clone(), n.container_id, networked, None),
                );
            }
            Action::Remove { workload } => {
                let Some(rec) = self.records.get(&workload) else { return };
                let containers: Vec<(String, Role, bool)> = rec
                    .instances()
                    .map(|i| (i.container_id.clone(), i.role, !i.spec.networks.is_empty()))
                    .collect();
                for (id, _, _) in &containers {
                    self.stopping.insert(id.clone());
                }
                self.spawn_op(
                    &workload,
                    line,
                    rev,
                    ops::remove_all(ctx, workload.clone(), containers),
                );
            }
        }
    }

    pub(super) fn on_op_done(&mut self, workload: &str, action: &str, outcome: OpOutcome) {
        self.busy.remove(workload);
        self.dirty = true;
        let now = self.now();
        let timing = self.cfg.restart;
        let settle = self.cfg.settle_ms;
        match outcome {
            OpOutcome::Started { launched, replaced } => {
                if let Some(old) = replaced {
                    self.forget_container(&old);
                }
                let inst = self.register(launched);
                let id = inst.container_id.clone();
                let pending = self.pending_update.remove(workload);
                let rec = self
                    .records
                    .entry(workload.to_string())
                    .or_insert_with(|| WorkloadRecord::new(workload));
                rec.start_error = None;
                match inst.role {
                    Role::Primary => {
                        if let Some(u) = pending {
                            rec.update = Some(Update {
                                deadline_ms: now + update_deadline_ms(&inst.spec, settle),
                                ..u
                            });
                        }
                        if let Some(old) = rec.primary.replace(inst)
                            && old.image
                                != rec.primary.as_ref().map(|p| p.image.clone()).unwrap_or_default()
                        {
                            rec.previous_image = Some(old.image);
                        }
                    }
                    Role::Next => {
                        rec.update = Some(Update {
                            to_hash: inst.spec_hash.clone(),
                            deadline_ms: now + update_deadline_ms(&inst.spec, settle),
                            previous: None,
                            previous_revision: rec
                                .primary
                                .as_ref()
                                .map(|p| p.revision.clone())
                                .unwrap_or_default(),
                        });
                        rec.next = Some(inst);
                    }
                }
                self.record_action(workload, action, true, format!("container {id} started"));
                // It has its image: whatever kept the image from it is over.
                self.working(&pull_subject(workload));
            }
            OpOutcome::StartFailed { error, removed, .. } => {
                for r in &removed {
                    self.forget_container(r);
                }
                self.pending_update.remove(workload);
                if let Some(rec) = self.records.get_mut(workload) {
                    if rec.primary.as_ref().is_some_and(|p| removed.contains(&p.container_id)) {
                        rec.primary = None;
                    }
                    rec.start_error = Some(backroom_daemon::chain(&error));
                    record_failure(&timing, rec, None, now);
                }
                self.start_failed(workload, &error);
                self.record_action(workload, action, false, backroom_daemon::chain(&error));
            }
            OpOutcome::ReplaceFailed { error, restored, removed } => {
                self.forget_container(&removed);
                let pending = self.pending_update.remove(workload);
                let restored = restored.map(|l| self.register(l));
                if let Some(rec) = self.records.get_mut(workload) {
                    let desired_image = self
                        .desired
                        .as_ref()
                        .and_then(|d| {
                            d.profile.containers().find(|c| c.name.as_str() == workload).cloned()
                        })
                        .and_then(|c| c.image.map(|i| i.to_string()))
                        .unwrap_or_default();
                    let why = backroom_daemon::chain(&error);
                    rec.bad = pending.map(|u| BadVersion {
                        spec_hash: u.to_hash,
                        image: desired_image,
                        reason: format!("it could not start: {why}"),
                        at_ms: now,
                    });
                    rec.update = None;
                    rec.primary = restored;
                    if rec.primary.is_none() {
                        rec.start_error = Some(why);
                        record_failure(&timing, rec, None, now);
                    }
                }
                let restored = self.records.get(workload).is_some_and(|r| r.primary.is_some());
                if error.is_pull() || !restored {
                    self.start_failed(workload, &error);
                }
                let then = if restored {
                    "the previous version was started again"
                } else {
                    "the previous version did not start either"
                };
                self.record_action(
                    workload,
                    action,
                    false,
                    format!("{}; {then}", backroom_daemon::chain(&error)),
                );
            }
            OpOutcome::Promoted { removed, netns, addresses, warnings } => {
                self.forget_container(&removed);
                if let Some(rec) = self.records.get_mut(workload)
                    && let Some(mut n) = rec.next.take()
                {
                    n.role = Role::Primary;
                    if netns.is_some() {
                        n.netns = netns;
                    }
                    if !addresses.is_empty() {
                        n.addresses = addresses;
                    }
                    if let Some(old) = rec.primary.replace(n)
                        && rec.primary.as_ref().is_some_and(|p| p.image != old.image)
                    {
                        rec.previous_image = Some(old.image);
                    }
                    rec.update = None;
                    rec.consecutive_failures = 0;
                }
                self.record_action(workload, action, true, chain_all(&warnings));
                self.collect_images();
            }
            OpOutcome::NextRemoved { removed, rollback_reason, errors } => {
                self.forget_container(&removed);
                if let Some(rec) = self.records.get_mut(workload) {
                    let n = rec.next.take();
                    rec.update = None;
                    if let (Some(reason), Some(n)) = (&rollback_reason, n) {
                        rec.bad = Some(BadVersion {
                            spec_hash: n.spec_hash,
                            image: n.image,
                            reason: reason.clone(),
                            at_ms: now,
                        });
                    }
                }
                let (ok, message) = match (&rollback_reason, errors.is_empty()) {
                    (_, false) => (false, chain_all(&errors)),
                    (Some(r), true) => (true, format!("rolled back: {r}")),
                    (None, true) => (true, String::new()),
                };
                self.record_action(workload, action, ok, message);
            }
            OpOutcome::RolledBack { removed, reason, restored } => {
                self.forget_container(&removed);
                let restored = restored.map(|l| self.register(l));
                if let Some(rec) = self.records.get_mut(workload) {
                    if let Some(failed) = rec.primary.take() {
                        rec.bad = Some(BadVersion {
                            spec_hash: failed.spec_hash,
                            image: failed.image,
                            reason: reason.clone(),
                            at_ms: now,
                        });
                    }
                    rec.update = None;
                    match &restored {
                        Ok(i) => rec.primary = Some(i.clone()),
                        Err(e) => {
                            rec.start_error = Some(backroom_daemon::chain(e));
                            record_failure(&timing, rec, None, now);
                        }
                    }
                }
                match restored {
                    Ok(_) => {
                        self.record_action(workload, action, true, format!("rolled back: {reason}"))
                    }
                    Err(e) => {
                        self.start_failed(workload, &e);
                        let why = format!(
                            "rolled back ({reason}), but the previous version did not start: {}",
                            backroom_daemon::chain(&e)
                        );
                        self.record_action(workload, action, false, why);
                    }
                }
            }
            OpOutcome::Removed { errors } => {
                if let Some(rec) = self.records.remove(workload) {
                    let ids: Vec<String> =
                        rec.instances().map(|i| i.container_id.clone()).collect();
                    for id in ids {
                        self.forget_container(&id);
                    }
                }
                self.record_action(workload, action, errors.is_empty(), chain_all(&errors));
                self.collect_images();
            }
        }
    }
}
