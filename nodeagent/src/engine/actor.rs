//! The engine's actor: state, message handling, reconcile, dispatch of actions.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use backroom_profiles::{ContainerSpec, Probe, Rendered, Workload};
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::ops::{self, Ctx, Launched, OpOutcome};
use super::view::{ActionResult, Event, Status, WorkloadView, derive_state};
use super::{ApplyOutcome, Config, EngineHandle, Msg};
use crate::error::{Error, Result};
use crate::logs::Logs;
use crate::network::Network;
use crate::plan::{self, Action, Input, Phase, short};
use crate::probe;
use crate::record::{BadVersion, Exit, HealthStatus, Records, Role, Update, WorkloadRecord, spec_hash};
use crate::restart::record_failure;
use crate::runtime::{Runtime, TaskState, images_to_collect};
use crate::store::{NodeState, Store};
use crate::vms::{VmState, Vms};

const ACTIONS_KEPT: usize = 100;

/// Node-wide phase bookkeeping (network, VMs).
#[derive(Default)]
struct PhaseState {
    done: Option<String>,
    busy: bool,
    retry_at_ms: u64,
    error: Option<String>,
}

pub struct Engine<R, N, V> {
    cfg: Config,
    ctx: Ctx<R, N>,
    vms: Arc<V>,
    store: Store,
    node: NodeState,
    desired: Option<Rendered>,
    records: Records,
    busy: BTreeMap<String, String>,
    waiting: BTreeMap<String, String>,
    stopping: BTreeSet<String>,
    pending_update: HashMap<String, Update>,
    pumps: HashMap<String, Vec<JoinHandle<()>>>,
    waiters: HashMap<String, JoinHandle<()>>,
    probing: BTreeSet<String>,
    actions: VecDeque<ActionResult>,
    network: PhaseState,
    vm_phase: PhaseState,
    vm_states: Vec<VmState>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    events: broadcast::Sender<Event>,
    boot_error: Option<String>,
    dirty: bool,
}

fn update_deadline_ms(spec: &ContainerSpec, settle_ms: u64) -> u64 {
    match &spec.health {
        Some(h) if h.probe().is_some() => {
            let t = h.interval.millis() * (u64::from(h.failure_threshold) + 2) + h.timeout.millis();
            t.max(10_000)
        }
        _ => settle_ms + 10_000,
    }
}

impl<R: Runtime, N: Network, V: Vms> Engine<R, N, V> {
    /// Opens the state folder and makes the engine and its handle; nothing runs before
    /// [`Engine::run`].
    pub fn new(cfg: Config, runtime: R, net: N, vms: V) -> Result<(Self, EngineHandle)> {
        let store = Store::open(&cfg.state_dir)?;
        let node = store.load_node()?;
        let records = store.load_records()?;
        let logs = Logs::new(&cfg.state_dir);
        let (tx, rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(256);
        let handle = EngineHandle { tx: tx.clone(), events: events.clone(), logs: logs.clone() };
        let ctx = Ctx {
            runtime: Arc::new(runtime),
            net: Arc::new(net),
            logs,
            volumes_dir: cfg.volumes_dir.clone(),
            stop_grace: cfg.stop_grace,
        };
        let engine = Engine {
            cfg,
            ctx,
            vms: Arc::new(vms),
            store,
            node,
            desired: None,
            records,
            busy: BTreeMap::new(),
            waiting: BTreeMap::new(),
            stopping: BTreeSet::new(),
            pending_update: HashMap::new(),
            pumps: HashMap::new(),
            waiters: HashMap::new(),
            probing: BTreeSet::new(),
            actions: VecDeque::new(),
            network: PhaseState::default(),
            vm_phase: PhaseState::default(),
            vm_states: Vec::new(),
            tx,
            rx,
            events,
            boot_error: None,
            dirty: false,
        };
        Ok((engine, handle))
    }

    fn emit(&self, workload: &str, kind: &str, message: String) {
        tracing::info!(workload, kind, "{message}");
        let _ = self.events.send(Event {
            at_ms: crate::now_ms(),
            workload: workload.to_string(),
            kind: kind.to_string(),
            message,
        });
    }

    fn record_action(&mut self, workload: &str, action: &str, result: std::result::Result<String, String>) {
        let (ok, message) = match result {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        let line = if message.is_empty() {
            format!("{action}: {}", if ok { "done" } else { "failed" })
        } else {
            format!("{action}: {message}")
        };
        self.emit(workload, "action", line);
        self.actions.push_front(ActionResult {
            at_ms: crate::now_ms(),
            workload: workload.to_string(),
            action: action.to_string(),
            ok,
            message,
        });
        self.actions.truncate(ACTIONS_KEPT);
    }

    /// Adopts what runs, takes the boot profile, then serves until the process ends.
    pub async fn run(mut self, boot_profile: Option<PathBuf>, ready: impl FnOnce() + Send) -> Result<()> {
        self.adopt().await;
        self.load_desired(boot_profile.as_deref());
        ready();
        if self.vms.configured() {
            self.forward_vm_events();
        }
        self.refresh_vms();
        self.reconcile();
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(self.cfg.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(m) => self.handle(m),
                    None => return Ok(()),
                },
                _ = tick.tick() => {
                    self.schedule_probes();
                    self.reconcile();
                }
                _ = resync.tick() => {
                    self.resync();
                }
            }
        }
    }

    fn load_desired(&mut self, boot: Option<&std::path::Path>) {
        if let Some(rev) = self.node.desired.clone() {
            match self.store.load_revision(&rev) {
                Ok(r) => self.desired = Some(r),
                Err(e) => {
                    tracing::error!("cannot load the desired revision {rev}: {e}");
                    self.boot_error = Some(e.to_string());
                }
            }
        }
        let Some(path) = boot else { return };
        match backroom_profiles::render_file(path) {
            Err(invalid) => {
                let lines: Vec<String> = invalid.errors().map(|d| d.to_string()).collect();
                let msg = format!("the profile {} is refused: {}", path.display(), lines.join("; "));
                tracing::error!("{msg}");
                self.emit("", "revision", msg.clone());
                self.boot_error = Some(msg);
            }
            Ok(r) => {
                let rev = r.revision.to_string();
                if self.node.desired.is_some() && self.node.boot_profile_revision.as_deref() == Some(&rev) {
                    return;
                }
                match self.apply(r, path.display().to_string()) {
                    Ok(_) => {
                        self.node.boot_profile_revision = Some(rev);
                        if let Err(e) = self.store.save_node(&self.node) {
                            tracing::error!("{e}");
                        }
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        self.boot_error = Some(e.to_string());
                    }
                }
            }
        }
    }

    /// Takes over the containers that run: a running task keeps running, untouched.
    async fn adopt(&mut self) {
        let observed = loop {
            match self.ctx.runtime.list().await {
                Ok(o) => break o,
                Err(e) => {
                    tracing::warn!("cannot list containers yet (retrying in 2 s): {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        };
        let by_id: HashMap<String, TaskState> =
            observed.iter().map(|o| (o.id.clone(), o.task.clone())).collect();
        let mut known = BTreeSet::new();
        let now = crate::now_ms();
        let mut to_watch = Vec::new();
        let mut gone = Vec::new();
        for rec in self.records.values_mut() {
            let name = rec.name.clone();
            for inst in [rec.primary.as_mut(), rec.next.as_mut()].into_iter().flatten() {
                known.insert(inst.container_id.clone());
                if inst.exit.is_some() {
                    continue;
                }
                match by_id.get(&inst.container_id) {
                    Some(TaskState::Running { pid }) => {
                        inst.pid = *pid;
                        to_watch.push((name.clone(), inst.container_id.clone()));
                    }
                    Some(TaskState::Stopped { .. }) => to_watch.push((name.clone(), inst.container_id.clone())),
                    _ => {
                        inst.exit = Some(Exit { code: 255, at_ms: now, oom: false });
                        gone.push((name.clone(), inst.container_id.clone()));
                    }
                }
            }
        }
        for (w, id) in &to_watch {
            match self.ctx.logs.pump(w, id) {
                Ok(p) => {
                    self.pumps.insert(id.clone(), p);
                }
                Err(e) => tracing::warn!(workload = %w, "cannot reopen the log of {id}: {e}"),
            }
            self.watch(id.clone());
            self.emit(w, "state", format!("adopted container {id}"));
        }
        for (w, id) in gone {
            if let Some(rec) = self.records.get_mut(&w) {
                record_failure(&self.cfg.backoff, rec, None, now);
            }
            self.emit(&w, "exit", format!("container {id} was gone when nodeagent started"));
        }
        for o in observed {
            if !known.contains(&o.id) {
                tracing::info!("removing container {} that no workload record knows", o.id);
                self.stopping.insert(o.id.clone());
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    let _ = ops::remove(&ctx, &o.id).await;
                });
            }
        }
        self.dirty = true;
    }

    fn watch(&mut self, container_id: String) {
        let runtime = self.ctx.runtime.clone();
        let tx = self.tx.clone();
        let id = container_id.clone();
        let h = tokio::spawn(async move {
            loop {
                match runtime.wait(&id).await {
                    Ok(exit) => {
                        let _ = tx.send(Msg::Exited { container_id: id, exit }).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!("wait for {id}: {e}; again in 2 s");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                }
            }
        });
        if let Some(old) = self.waiters.insert(container_id, h) {
            old.abort();
        }
    }

    fn forget_container(&mut self, id: &str) {
        self.stopping.remove(id);
        self.probing.remove(id);
        if let Some(ps) = self.pumps.remove(id) {
            for p in ps {
                p.abort();
            }
        }
        if let Some(w) = self.waiters.remove(id) {
            w.abort();
        }
    }

    fn register(&mut self, launched: Launched) -> crate::record::Instance {
        let id = launched.instance.container_id.clone();
        self.pumps.insert(id.clone(), launched.pumps);
        self.watch(id);
        launched.instance
    }

    fn forward_vm_events(&self) {
        let vms = self.vms.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(mut s) = vms.events().await {
                    while let Some(e) = s.next().await {
                        if tx.send(Msg::VmEvent(e)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        });
    }

    fn refresh_vms(&self) {
        if !self.vms.configured() {
            return;
        }
        let vms = self.vms.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = vms.list().await.map_err(|e| e.to_string());
            let _ = tx.send(Msg::VmList(r)).await;
        });
    }

    fn resync(&mut self) {
        let runtime = self.ctx.runtime.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = runtime.list().await.map_err(|e| e.to_string());
            let _ = tx.send(Msg::Observed(r)).await;
        });
        self.refresh_vms();
        self.collect_images();
    }

    fn collect_images(&self) {
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for rec in self.records.values() {
            for i in rec.instances() {
                keep.insert(i.image.clone());
            }
            if let Some(p) = &rec.previous_image {
                keep.insert(p.clone());
            }
        }
        if let Some(d) = &self.desired {
            for c in d.profile.containers() {
                if let Some(i) = &c.image {
                    keep.insert(i.to_string());
                }
            }
        }
        let runtime = self.ctx.runtime.clone();
        let grace = self.cfg.image_grace_ms;
        tokio::spawn(async move {
            let Ok(images) = runtime.images().await else { return };
            for name in images_to_collect(&images, &keep, crate::now_ms(), grace) {
                match runtime.delete_image(&name).await {
                    Ok(()) => tracing::info!("deleted image {name}: no workload uses it"),
                    Err(e) => tracing::warn!("cannot delete image {name}: {e}"),
                }
            }
        });
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Status { reply } => {
                let _ = reply.send(self.status());
                return;
            }
            Msg::Apply { rendered, source, reply } => {
                let _ = reply.send(self.apply(*rendered, source));
            }
            Msg::Restart { name, reply } => {
                let _ = reply.send(self.restart(&name));
            }
            Msg::Import { path, reply } => {
                let runtime = self.ctx.runtime.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let r = runtime.import(&path).await;
                    let _ = reply.send(r);
                    let _ = tx.send(Msg::Poke).await;
                });
                return;
            }
            Msg::Exited { container_id, exit } => self.on_exit(&container_id, exit),
            Msg::Probed { container_id, result } => self.on_probe(&container_id, result),
            Msg::OpDone { workload, action, outcome } => self.on_op_done(&workload, &action, *outcome),
            Msg::NetworkDone { revision, result } => {
                self.network.busy = false;
                match result {
                    Ok(actions) => {
                        self.network.done = Some(revision.clone());
                        self.network.error = None;
                        let msg = if actions.is_empty() { "no change".to_string() } else { actions.join("; ") };
                        self.record_action("", &format!("apply the network of revision {}", short(&revision)), Ok(msg));
                    }
                    Err(e) => {
                        self.network.error = Some(e.clone());
                        self.network.retry_at_ms = crate::now_ms() + self.cfg.retry_ms;
                        self.record_action("", &format!("apply the network of revision {}", short(&revision)), Err(e));
                    }
                }
            }
            Msg::VmsDone { revision, result } => {
                self.vm_phase.busy = false;
                match result {
                    Ok(actions) => {
                        self.vm_phase.done = Some(revision.clone());
                        self.vm_phase.error = None;
                        let msg = if actions.is_empty() { "no change".to_string() } else { actions.join("; ") };
                        self.record_action("", &format!("apply the VMs of revision {}", short(&revision)), Ok(msg));
                        self.refresh_vms();
                    }
                    Err(e) => {
                        self.vm_phase.error = Some(e.clone());
                        self.vm_phase.retry_at_ms = crate::now_ms() + self.cfg.retry_ms;
                        self.record_action("", &format!("apply the VMs of revision {}", short(&revision)), Err(e));
                    }
                }
            }
            Msg::VmList(r) => match r {
                Ok(v) => self.vm_states = v,
                Err(e) => tracing::warn!("cannot list VMs: {e}"),
            },
            Msg::VmEvent(e) => {
                self.emit(&e.vm, "vm", format!("{}: {}", e.kind, e.message));
                self.refresh_vms();
            }
            Msg::Observed(r) => match r {
                Ok(list) => self.on_observed(list),
                Err(e) => tracing::warn!("cannot list containers: {e}"),
            },
            Msg::Poke => {}
        }
        self.reconcile();
    }

    fn apply(&mut self, rendered: Rendered, source: String) -> Result<ApplyOutcome> {
        let rev = rendered.revision.to_string();
        if let Err(why) = crate::admission::admit(&rendered.profile, &crate::admission::facts()) {
            self.emit("", "revision", format!("revision {} refused: {why}", short(&rev)));
            return Err(Error::Refused(why));
        }
        if self.desired.as_ref().is_some_and(|d| d.revision == rendered.revision) {
            return Ok(ApplyOutcome { revision: rev, changed: false });
        }
        // On disk before anything acts on it.
        self.store.save_revision(&rendered)?;
        let mut node = self.node.clone();
        node.desired = Some(rev.clone());
        node.desired_source = source.clone();
        self.store.save_node(&node)?;
        self.node = node;
        self.desired = Some(rendered);
        self.network = PhaseState::default();
        self.vm_phase = PhaseState::default();
        self.emit("", "revision", format!("desired revision is now {} (from {source})", short(&rev)));
        Ok(ApplyOutcome { revision: rev, changed: true })
    }

    fn restart(&mut self, name: &str) -> Result<String> {
        let Some(d) = &self.desired else { return Err(Error::NoSuchWorkload(name.to_string())) };
        match d.profile.workload(name) {
            Some(Workload::Vm(_)) => {
                let vms = self.vms.clone();
                let tx = self.tx.clone();
                let n = name.to_string();
                tokio::spawn(async move {
                    let r = vms.restart(&n).await;
                    if let Err(e) = r {
                        tracing::warn!("restart of VM {n} failed: {e}");
                    }
                    let _ = tx.send(Msg::Poke).await;
                });
                Ok(format!("restart of VM {name} asked from vmd"))
            }
            Some(Workload::Container(_)) => {
                let rec = self.records.entry(name.to_string()).or_insert_with(|| WorkloadRecord::new(name));
                if rec.primary.is_none() {
                    rec.backoff_until_ms = 0;
                    return Ok(format!("{name} is not running: it starts as soon as it can"));
                }
                rec.restart_requested = true;
                rec.backoff_until_ms = 0;
                Ok(format!("restart of {name} requested"))
            }
            None => Err(Error::NoSuchWorkload(name.to_string())),
        }
    }

    fn find_instance(&mut self, container_id: &str) -> Option<(&mut WorkloadRecord, Role)> {
        self.records.values_mut().find_map(|r| {
            let role = r.instance_mut(container_id).map(|i| i.role)?;
            Some((r, role))
        })
    }

    fn on_exit(&mut self, container_id: &str, exit: Exit) {
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

    fn on_probe(&mut self, container_id: &str, result: probe::ProbeResult) {
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

    fn on_observed(&mut self, list: Vec<crate::runtime::Observed>) {
        let present: HashMap<String, TaskState> = list.into_iter().map(|o| (o.id, o.task)).collect();
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

    fn schedule_probes(&mut self) {
        let now = crate::now_ms();
        let mut due = Vec::new();
        for rec in self.records.values() {
            for i in rec.instances() {
                let Some(h) = &i.spec.health else { continue };
                let Some(p) = h.probe() else { continue };
                if !i.running() || self.probing.contains(&i.container_id) || self.stopping.contains(&i.container_id) {
                    continue;
                }
                if now.saturating_sub(i.health.last_probe_ms) < h.interval.millis() {
                    continue;
                }
                let netns = PathBuf::from(format!("/proc/{}/ns/net", i.pid));
                let target = probe::target(&i.addresses);
                let timeout = h.timeout.to_std();
                let job: ProbeJob = match p {
                    Probe::Http(hp) => ProbeJob::Http(netns, SocketAddr::new(target, hp.port), hp.path.clone()),
                    Probe::Tcp(tp) => ProbeJob::Tcp(netns, SocketAddr::new(target, tp.port)),
                    Probe::Exec(argv) => ProbeJob::Exec(i.spec.clone(), argv.to_vec()),
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
                    ProbeJob::Exec(spec, argv) => exec_probe(&*runtime, &id, &spec, argv, timeout).await,
                };
                let _ = tx.send(Msg::Probed { container_id: id, result }).await;
            });
        }
    }

    fn phase(&self, p: &PhaseState, rev: &str, now: u64) -> Phase {
        if p.done.as_deref() == Some(rev) {
            Phase::Done
        } else if p.busy || now < p.retry_at_ms {
            Phase::Waiting
        } else {
            Phase::Due
        }
    }

    fn reconcile(&mut self) {
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
        self.update_states(now);
        self.check_applied(now);
        self.persist();
    }

    fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        match self.store.save_records(&self.records) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::error!("cannot save the workload records: {e}"),
        }
    }

    fn spawn_op<F>(&mut self, workload: &str, action: String, fut: F)
    where
        F: std::future::Future<Output = OpOutcome> + Send + 'static,
    {
        self.busy.insert(workload.to_string(), action.clone());
        self.emit(workload, "action", format!("{action}: started"));
        let tx = self.tx.clone();
        let w = workload.to_string();
        tokio::spawn(async move {
            let outcome = fut.await;
            let _ = tx.send(Msg::OpDone { workload: w, action, outcome: Box::new(outcome) }).await;
        });
    }

    fn dispatch(&mut self, action: Action, rev: &str) {
        let line = action.to_string();
        let ctx = self.ctx.clone();
        match action {
            Action::ApplyNetwork { revision } => {
                let Some(yaml) = self.desired.as_ref().map(Rendered::to_yaml) else { return };
                self.network.busy = true;
                let net = self.ctx.net.clone();
                let tx = self.tx.clone();
                let confirm = self.cfg.confirm_seconds;
                tokio::spawn(async move {
                    let r = async {
                        let applied = net.apply(&revision, &yaml, confirm).await?;
                        // Standalone: nodeagent still reaches netd after the change, which is
                        // what the confirmation asks. The central session (issue 6) confirms
                        // once central is reachable again instead.
                        if applied.confirm_deadline > 0 {
                            net.confirm(&revision).await?;
                        }
                        Ok::<_, Error>(applied.actions)
                    }
                    .await
                    .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::NetworkDone { revision, result: r }).await;
                });
            }
            Action::ApplyVms { revision } => {
                let Some(yaml) = self.desired.as_ref().map(Rendered::to_yaml) else { return };
                self.vm_phase.busy = true;
                let vms = self.vms.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let r = vms.apply(&revision, &yaml).await.map_err(|e| e.to_string());
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
                self.record_action(&workload, &line, Ok(String::new()));
            }
            Action::Start { workload, spec, role, .. } => {
                let rec = self.records.entry(workload.clone()).or_insert_with(|| WorkloadRecord::new(&workload));
                let id = rec.next_container_id();
                self.dirty = true;
                self.spawn_op(&workload, line, ops::start(ctx, *spec, role, id, rev.to_string()));
            }
            Action::Restart { workload, .. } => {
                let Some(rec) = self.records.get_mut(&workload) else { return };
                let Some(p) = rec.primary.clone() else { return };
                rec.restart_requested = false;
                rec.restarts += 1;
                let id = rec.next_container_id();
                self.stopping.insert(p.container_id.clone());
                self.dirty = true;
                let revision = p.revision.clone();
                self.spawn_op(&workload, line, ops::restart(ctx, Some(p.container_id), p.spec, id, revision));
            }
            Action::Replace { workload, spec, .. } => {
                let Some(rec) = self.records.get_mut(&workload) else { return };
                let Some(p) = rec.primary.clone() else { return };
                let id = rec.next_container_id();
                let restore_id = rec.next_container_id();
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
                    ops::replace(ctx, p.container_id, p.spec, p.revision, *spec, id, restore_id, rev.to_string()),
                );
            }
            Action::Promote { workload } => {
                let Some(rec) = self.records.get(&workload) else { return };
                let (Some(p), Some(n)) = (rec.primary.clone(), rec.next.as_ref()) else { return };
                let networked = !n.spec.networks.is_empty();
                self.stopping.insert(p.container_id.clone());
                self.spawn_op(&workload, line, ops::promote(ctx, workload.clone(), p.container_id, networked));
            }
            Action::Rollback { workload, reason } => {
                let Some(rec) = self.records.get_mut(&workload) else { return };
                if let Some(n) = rec.next.clone() {
                    let networked = !n.spec.networks.is_empty();
                    self.stopping.insert(n.container_id.clone());
                    self.spawn_op(
                        &workload,
                        line,
                        ops::drop_next(ctx, workload.clone(), n.container_id, networked, Some(reason)),
                    );
                } else if let (Some(p), Some(u)) = (rec.primary.clone(), rec.update.clone()) {
                    let Some(previous) = u.previous else { return };
                    let id = rec.next_container_id();
                    self.stopping.insert(p.container_id.clone());
                    self.dirty = true;
                    self.spawn_op(
                        &workload,
                        line,
                        ops::roll_back(ctx, p.container_id, previous, u.previous_revision, id, reason),
                    );
                }
            }
            Action::Abandon { workload } => {
                let Some(n) = self.records.get(&workload).and_then(|r| r.next.clone()) else { return };
                let networked = !n.spec.networks.is_empty();
                self.stopping.insert(n.container_id.clone());
                self.spawn_op(&workload, line, ops::drop_next(ctx, workload.clone(), n.container_id, networked, None));
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
                self.spawn_op(&workload, line, ops::remove_all(ctx, workload.clone(), containers));
            }
        }
    }

    fn on_op_done(&mut self, workload: &str, action: &str, outcome: OpOutcome) {
        self.busy.remove(workload);
        self.dirty = true;
        let now = crate::now_ms();
        let backoff = self.cfg.backoff;
        let settle = self.cfg.settle_ms;
        match outcome {
            OpOutcome::Started { launched, replaced } => {
                if let Some(old) = replaced {
                    self.forget_container(&old);
                }
                let inst = self.register(launched);
                let id = inst.container_id.clone();
                let pending = self.pending_update.remove(workload);
                let rec = self.records.entry(workload.to_string()).or_insert_with(|| WorkloadRecord::new(workload));
                rec.start_error = None;
                match inst.role {
                    Role::Primary => {
                        if let Some(u) = pending {
                            rec.update = Some(Update { deadline_ms: now + update_deadline_ms(&inst.spec, settle), ..u });
                        }
                        if let Some(old) = rec.primary.replace(inst)
                            && old.image != rec.primary.as_ref().map(|p| p.image.clone()).unwrap_or_default()
                        {
                            rec.previous_image = Some(old.image);
                        }
                    }
                    Role::Next => {
                        rec.update = Some(Update {
                            to_hash: inst.spec_hash.clone(),
                            deadline_ms: now + update_deadline_ms(&inst.spec, settle),
                            previous: None,
                            previous_revision: rec.primary.as_ref().map(|p| p.revision.clone()).unwrap_or_default(),
                        });
                        rec.next = Some(inst);
                    }
                }
                self.record_action(workload, action, Ok(format!("container {id} started")));
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
                    rec.start_error = Some(error.clone());
                    record_failure(&backoff, rec, None, now);
                }
                self.record_action(workload, action, Err(error));
            }
            OpOutcome::ReplaceFailed { error, restored, removed } => {
                self.forget_container(&removed);
                let pending = self.pending_update.remove(workload);
                let restored = restored.map(|l| self.register(l));
                if let Some(rec) = self.records.get_mut(workload) {
                    let desired_image = self
                        .desired
                        .as_ref()
                        .and_then(|d| d.profile.containers().find(|c| c.name.as_str() == workload).cloned())
                        .and_then(|c| c.image.map(|i| i.to_string()))
                        .unwrap_or_default();
                    rec.bad = pending.map(|u| BadVersion {
                        spec_hash: u.to_hash,
                        image: desired_image,
                        reason: format!("it could not start: {error}"),
                        at_ms: now,
                    });
                    rec.update = None;
                    rec.primary = restored;
                    if rec.primary.is_none() {
                        rec.start_error = Some(error.clone());
                        record_failure(&backoff, rec, None, now);
                    }
                }
                self.record_action(workload, action, Err(format!("{error}; the previous version was started again")));
            }
            OpOutcome::Promoted { removed, netns, addresses, warning } => {
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
                self.record_action(workload, action, Ok(warning.unwrap_or_default()));
                self.collect_images();
            }
            OpOutcome::NextRemoved { removed, rollback_reason, error } => {
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
                let result = match (&rollback_reason, error) {
                    (_, Some(e)) => Err(e),
                    (Some(r), None) => Ok(format!("rolled back: {r}")),
                    (None, None) => Ok(String::new()),
                };
                self.record_action(workload, action, result);
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
                            rec.start_error = Some(e.clone());
                            record_failure(&backoff, rec, None, now);
                        }
                    }
                }
                let r = match restored {
                    Ok(_) => Ok(format!("rolled back: {reason}")),
                    Err(e) => Err(format!("rolled back ({reason}), but the previous version did not start: {e}")),
                };
                self.record_action(workload, action, r);
            }
            OpOutcome::Removed { errors } => {
                if let Some(rec) = self.records.remove(workload) {
                    let ids: Vec<String> = rec.instances().map(|i| i.container_id.clone()).collect();
                    for id in ids {
                        self.forget_container(&id);
                    }
                }
                let r = if errors.is_empty() { Ok(String::new()) } else { Err(errors.join("; ")) };
                self.record_action(workload, action, r);
                self.collect_images();
            }
        }
    }

    fn update_states(&mut self, now: u64) {
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

    fn check_applied(&mut self, now: u64) {
        let Some(d) = &self.desired else { return };
        let rev = d.revision.to_string();
        let net_ok = self.network.done.as_deref() == Some(rev.as_str());
        let has_vms = d.profile.vms().next().is_some();
        let vms_ok = (!has_vms && !self.vms.configured()) || self.vm_phase.done.as_deref() == Some(rev.as_str());
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
                self.emit("", "revision", format!("revision {} is the last known good", short(&rev)));
            }
            match self.store.save_node(&node) {
                Ok(()) => self.node = node,
                Err(e) => tracing::error!("{e}"),
            }
            let keep: Vec<&str> = [&self.node.desired, &self.node.applied, &self.node.last_known_good]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            self.store.prune_revisions(&keep);
        }
    }

    fn status(&self) -> Status {
        let now = crate::now_ms();
        let mut workloads = Vec::new();
        let profile = self.desired.as_ref().map(|d| &d.profile);
        let mut names: BTreeSet<String> = self.records.keys().cloned().collect();
        if let Some(p) = profile {
            names.extend(p.workloads.iter().map(|w| w.name().to_string()));
        }
        for name in names {
            let is_vm = profile.and_then(|p| p.workload(&name)).is_some_and(|w| matches!(w, Workload::Vm(_)));
            if is_vm {
                let v = self.vm_states.iter().find(|v| v.name == name);
                workloads.push(WorkloadView {
                    name: name.clone(),
                    kind: "vm".into(),
                    state: v.map_or_else(|| "pending".to_string(), |v| v.state.clone()),
                    health: v.map_or_else(|| "unknown".to_string(), |v| v.health.clone()),
                    reason: v.map_or_else(
                        || self.vm_phase.error.clone().unwrap_or_else(|| "not reported by vmd yet".into()),
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
            let has_check = p.and_then(|p| p.spec.health.as_ref()).and_then(|h| h.probe()).is_some();
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
        Status {
            desired: self.node.desired.clone().unwrap_or_default(),
            applied: self.node.applied.clone().unwrap_or_default(),
            last_known_good: self.node.last_known_good.clone().unwrap_or_default(),
            source: self.node.desired_source.clone(),
            profile_name: profile.map(|p| p.metadata.name.to_string()).unwrap_or_default(),
            profile_version: profile.and_then(|p| p.metadata.version.clone()).unwrap_or_default(),
            network,
            workloads,
            actions: self.actions.iter().cloned().collect(),
        }
    }
}

enum ProbeJob {
    Http(PathBuf, SocketAddr, String),
    Tcp(PathBuf, SocketAddr),
    Exec(ContainerSpec, Vec<String>),
}

async fn exec_probe<R: Runtime>(
    runtime: &R,
    id: &str,
    spec: &ContainerSpec,
    argv: Vec<String>,
    timeout: std::time::Duration,
) -> probe::ProbeResult {
    let t0 = std::time::Instant::now();
    let process = match crate::spec::process(spec, &crate::spec::ImageConfig::default(), argv.clone()) {
        Ok(p) => p,
        Err(e) => return probe::ProbeResult::fail(e.to_string()),
    };
    match runtime.exec(id, process, timeout).await {
        Ok(0) => probe::ProbeResult::ok(format!("exec {} exited 0 in {} ms", argv.join(" "), t0.elapsed().as_millis())),
        Ok(c) => probe::ProbeResult::fail(format!("exec {} exited with code {c}", argv.join(" "))),
        Err(e) => probe::ProbeResult::fail(format!("exec {}: {e}", argv.join(" "))),
    }
}
