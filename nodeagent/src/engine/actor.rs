//! The engine's actor: state, message handling, reconcile, dispatch of actions.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use backroom_profiles::{ContainerSpec, Rendered, Workload};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use backroom_daemon::Chain;

use super::ops::{self, Ctx, Launched};
use super::view::{ActionResult, Event};
use super::{ApplyOutcome, Config, EngineHandle, Msg};
use crate::error::{Error, Result};
use crate::liveness::Liveness;
use crate::logs::Logs;
use crate::network::Network;
use crate::plan::short;
use crate::probe::{HostProber, Prober};
use crate::problems::{Change, FAILING, Problems, RECOVERED, Source};
use crate::record::{Exit, Records, Update, WorkloadRecord};
use crate::restart::record_failure;
use crate::runtime::{Runtime, TaskState, images_to_collect};
use crate::store::{NodeState, Store};
use crate::vms::{VmState, Vms};

const ACTIONS_KEPT: usize = 100;

/// The node-wide phases a revision goes through before its containers.
#[derive(Clone, Copy)]
pub(super) enum Phase {
    Network,
    Vms,
}

/// Node-wide phase bookkeeping (network, VMs).
#[derive(Default)]
pub(super) struct PhaseState {
    pub(super) done: Option<String>,
    pub(super) busy: bool,
    pub(super) retry_at_ms: u64,
    pub(super) error: Option<String>,
    /// The error said its daemon could not be reached (restarting, say): the phase waits for it
    /// rather than failing the revision.
    pub(super) unreachable: bool,
}

/// The engine over a runtime, a network, a VM daemon and a prober (by default the host's,
/// which probes through the runtime).
pub struct Engine<R, N, V, P = HostProber<R>> {
    pub(super) cfg: Config,
    pub(super) ctx: Ctx<R, N>,
    pub(super) vms: Arc<V>,
    pub(super) prober: Arc<P>,
    pub(super) problems: Problems,
    pub(super) problems_dirty: bool,
    /// Which daemons are not answering now (see `alive.rs`).
    pub(super) liveness: Liveness,
    pub(super) store: Store,
    pub(super) node: NodeState,
    pub(super) desired: Option<Rendered>,
    pub(super) records: Records,
    pub(super) busy: BTreeMap<String, String>,
    pub(super) waiting: BTreeMap<String, String>,
    pub(super) stopping: BTreeSet<String>,
    pub(super) pending_update: HashMap<String, Update>,
    pub(super) pumps: HashMap<String, Vec<JoinHandle<()>>>,
    pub(super) waiters: HashMap<String, JoinHandle<()>>,
    pub(super) probing: BTreeSet<String>,
    pub(super) actions: VecDeque<ActionResult>,
    pub(super) actions_dirty: bool,
    pub(super) network: PhaseState,
    /// netd kept the applied network at its confirmation deadline (nothing earlier to go
    /// back to), unconfirmed; cleared by a confirmation or an apply that works.
    pub(super) network_kept: bool,
    pub(super) vm_phase: PhaseState,
    pub(super) vm_states: Vec<VmState>,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) rx: mpsc::Receiver<Msg>,
    pub(super) events: broadcast::Sender<Event>,
    /// Events told before anyone listened (see [`EngineHandle::subscribe_with_backlog`]).
    pub(super) early: super::Backlog,
    /// State files found unreadable at start and set aside: each is a problem (`state file
    /// <name>`) until nodeagent has written that file again.
    pub(super) set_aside: Vec<(String, PathBuf)>,
    pub(super) boot_error: Option<String>,
    pub(super) dirty: bool,
}

pub(super) fn update_deadline_ms(spec: &ContainerSpec, settle_ms: u64) -> u64 {
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
    /// [`Engine::run`]. Health is probed from the host ([`HostProber`]).
    pub fn new(cfg: Config, runtime: R, net: N, vms: V) -> Result<(Self, EngineHandle)> {
        let runtime = Arc::new(runtime);
        let prober = HostProber::new(runtime.clone());
        Engine::build(cfg, runtime, net, vms, prober)
    }
}

impl<R: Runtime, N: Network, V: Vms, P: Prober> Engine<R, N, V, P> {
    /// [`Engine::new`] with another prober (tests use [`crate::probe::MemoryProber`]).
    pub fn with_prober(
        cfg: Config,
        runtime: R,
        net: N,
        vms: V,
        prober: P,
    ) -> Result<(Self, EngineHandle)> {
        Engine::build(cfg, Arc::new(runtime), net, vms, prober)
    }

    fn build(
        cfg: Config,
        runtime: Arc<R>,
        net: N,
        vms: V,
        prober: P,
    ) -> Result<(Self, EngineHandle)> {
        let store = Store::open(&cfg.state_dir)?;
        let node = store.load_node()?;
        let records = store.load_records()?;
        let actions: VecDeque<ActionResult> = store.load_actions()?.into();
        let problems = Problems::restore(store.load_problems()?);
        let logs = Logs::new(&cfg.state_dir, cfg.clock.clone());
        let (tx, rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(256);
        let early: super::Backlog = Arc::new(std::sync::Mutex::new(Some(VecDeque::new())));
        let handle = EngineHandle {
            tx: tx.clone(),
            events: events.clone(),
            early: early.clone(),
            logs: logs.clone(),
        };
        let ctx = Ctx {
            runtime,
            net: Arc::new(net),
            logs,
            volumes_dir: cfg.volumes_dir.clone(),
            etc_dir: cfg.state_dir.join("etc"),
            resolv_conf: cfg.resolv_conf.clone(),
            stop_grace: cfg.stop_grace,
            clock: cfg.clock.clone(),
        };
        let engine = Engine {
            cfg,
            ctx,
            vms: Arc::new(vms),
            prober: Arc::new(prober),
            problems,
            problems_dirty: false,
            liveness: Liveness::default(),
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
            actions,
            actions_dirty: false,
            network: PhaseState::default(),
            network_kept: false,
            vm_phase: PhaseState::default(),
            vm_states: Vec::new(),
            tx,
            rx,
            events,
            early,
            set_aside: Vec::new(),
            boot_error: None,
            dirty: false,
        };
        let mut engine = engine;
        // Problems of state files set aside by an earlier start and not yet written again.
        let dir = engine.store.dir().to_path_buf();
        engine.set_aside = engine
            .problems
            .open()
            .into_iter()
            .filter(|p| p.source == Source::Nodeagent)
            .filter_map(|p| {
                let name = p.subject.strip_prefix("state file ")?;
                Some((p.subject.clone(), dir.join(name)))
            })
            .collect();
        engine.tell_set_aside();
        Ok((engine, handle))
    }

    /// Now, on the engine's clock (unix ms).
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.cfg.clock.now_ms()).unwrap_or(0)
    }

    pub(super) fn emit(&self, workload: &str, kind: &str, message: String) {
        self.emit_about(workload, kind, "", message);
    }

    fn emit_about(&self, workload: &str, kind: &str, subject: &str, message: String) {
        tracing::info!(workload, kind, subject, "{message}");
        let ev = Event {
            at_ms: self.now(),
            workload: workload.to_string(),
            kind: kind.to_string(),
            message,
            subject: subject.to_string(),
        };
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = early.as_mut()
            && b.len() < super::BACKLOG_KEPT
        {
            b.push_back(ev.clone());
        }
        let _ = self.events.send(ev);
    }

    /// Opens a problem for each state file the store set aside since the last call.
    pub(super) fn tell_set_aside(&mut self) {
        for s in self.store.take_set_aside() {
            let name =
                s.path.strip_prefix(self.store.dir()).unwrap_or(&s.path).display().to_string();
            let subject = format!("state file {name}");
            self.failing(&subject, "", s.sentence());
            if !self.set_aside.iter().any(|(sub, _)| *sub == subject) {
                self.set_aside.push((subject, s.path));
            }
        }
    }

    /// A state file set aside is over once nodeagent has written it again.
    pub(super) fn close_set_aside(&mut self) {
        let written: Vec<String> =
            self.set_aside.iter().filter(|(_, p)| p.exists()).map(|(s, _)| s.clone()).collect();
        for subject in written {
            self.working(&subject);
            self.set_aside.retain(|(s, _)| *s != subject);
        }
    }

    /// Tells a problem opening or closing: an event, and an entry in the action history
    /// (what `nodectl status` shows as recent problems).
    pub(super) fn tell(&mut self, c: Change) {
        let p = &c.problem;
        if c.failing {
            tracing::warn!(workload = %p.workload, source = p.source.as_str(), "{}", c.message);
        }
        self.emit_about(&p.workload, c.kind(), &p.subject, c.message.clone());
        let prefix = if c.failing { FAILING } else { RECOVERED };
        self.push_action(ActionResult {
            at_ms: u64::try_from(c.at_ms).unwrap_or(0),
            workload: p.workload.clone(),
            action: format!("{prefix}{}", p.subject),
            ok: !c.failing,
            message: c.message,
        });
        self.problems_dirty = true;
    }

    /// One failed try of nodeagent's own `subject`.
    pub(super) fn failing(&mut self, subject: &str, workload: &str, message: String) {
        let now = self.cfg.clock.now_ms();
        match self.problems.failed(subject, workload, message, now) {
            Some(c) => self.tell(c),
            // Still failing: the latest reason and count are kept (and saved), not told again.
            None => self.problems_dirty = true,
        }
    }

    /// One good try of nodeagent's own `subject`.
    pub(super) fn working(&mut self, subject: &str) {
        let now = self.cfg.clock.now_ms();
        if let Some(c) = self.problems.succeeded(subject, now) {
            self.tell(c);
        }
    }

    /// Books the end of a node-wide phase; true when it succeeded.
    fn phase_done(&mut self, phase: Phase, revision: &str, result: Result<Vec<String>>) -> bool {
        let retry_at_ms = self.now() + self.cfg.retry_ms;
        if matches!(phase, Phase::Network) && result.is_ok() {
            // Confirmed (or nothing to confirm): no longer a kept, unconfirmed network.
            self.network_kept = false;
        }
        let (state, what) = match phase {
            Phase::Network => (&mut self.network, "network"),
            Phase::Vms => (&mut self.vm_phase, "VMs"),
        };
        state.busy = false;
        let action = format!("apply the {what} of revision {}", short(revision));
        match result {
            Ok(actions) => {
                state.done = Some(revision.to_string());
                state.error = None;
                state.unreachable = false;
                let msg =
                    if actions.is_empty() { "no change".to_string() } else { actions.join("; ") };
                self.record_action("", &action, true, msg);
                true
            }
            Err(e) => {
                let why = backroom_daemon::chain(&e);
                tracing::warn!(revision = short(revision), error = %Chain(&e), "cannot {action}");
                state.error = Some(why.clone());
                state.unreachable = e.unreachable();
                state.retry_at_ms = retry_at_ms;
                self.record_action("", &action, false, why);
                false
            }
        }
    }

    /// Books how an action went (`message`: what it did, or why it failed).
    pub(super) fn record_action(
        &mut self,
        workload: &str,
        action: &str,
        ok: bool,
        message: String,
    ) {
        let line = if message.is_empty() {
            format!("{action}: {}", if ok { "done" } else { "failed" })
        } else {
            format!("{action}: {message}")
        };
        self.emit(workload, "action", line);
        let at_ms = self.now();
        self.push_action(ActionResult {
            at_ms,
            workload: workload.to_string(),
            action: action.to_string(),
            ok,
            message,
        });
    }

    fn push_action(&mut self, a: ActionResult) {
        self.actions.push_front(a);
        self.actions.truncate(ACTIONS_KEPT);
        self.actions_dirty = true;
    }

    /// Adopts what runs, takes the boot profile, then serves until the process ends.
    pub async fn run(
        mut self,
        boot_profile: Option<PathBuf>,
        ready: impl FnOnce() + Send,
    ) -> Result<()> {
        self.adopt(boot_profile.as_deref()).await;
        self.load_desired(boot_profile.as_deref());
        self.tell_set_aside();
        ready();
        self.listen_to_peers();
        self.check_liveness();
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
                _ = tick.tick() => self.reconcile(),
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
                    tracing::error!(revision = short(&rev), error = %Chain(&e), "cannot load the desired revision");
                    self.boot_error = Some(backroom_daemon::chain(&e));
                }
            }
        }
        let Some(path) = boot else { return };
        match backroom_profiles::render_file(path) {
            Err(invalid) => {
                let lines: Vec<String> = invalid.errors().map(|d| d.to_string()).collect();
                let msg =
                    format!("the profile {} is refused: {}", path.display(), lines.join("; "));
                tracing::error!("{msg}");
                self.emit("", "revision", msg.clone());
                self.boot_error = Some(msg);
            }
            Ok(r) => {
                let rev = r.revision.to_string();
                // Taken before and still on disk; taken again when its stored copy was lost.
                if self.desired.is_some()
                    && self.node.desired.is_some()
                    && self.node.boot_profile_revision.as_deref() == Some(&rev)
                {
                    return;
                }
                match self.apply(r, path.display().to_string()) {
                    Ok(_) => {
                        self.node.boot_profile_revision = Some(rev);
                        if let Err(e) = self.store.save_node(&self.node) {
                            tracing::error!(error = %Chain(&e), "cannot keep which profile file was taken");
                        }
                    }
                    Err(e) => {
                        tracing::error!(profile = %path.display(), error = %Chain(&e), "the profile is not taken");
                        self.boot_error = Some(backroom_daemon::chain(&e));
                    }
                }
            }
        }
    }

    /// Takes over the containers that run: a running task keeps running, untouched. A container
    /// no record knows but whose labels name a container workload of the desired revision (or
    /// of the boot profile) gets its record back: the records were lost (set aside after a power
    /// cut) and it is adopted rather than replaced by a duplicate.
    async fn adopt(&mut self, boot: Option<&std::path::Path>) {
        let observed = loop {
            match self.ctx.runtime.list().await {
                Ok(o) => break o,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "cannot list containers yet (retrying in 2 s)");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        };
        self.rebuild_records(&observed, boot);
        let by_id: HashMap<String, TaskState> =
            observed.iter().map(|o| (o.id.clone(), o.task.clone())).collect();
        let mut known = BTreeSet::new();
        let now = self.now();
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
                    Some(TaskState::Stopped { .. }) => {
                        to_watch.push((name.clone(), inst.container_id.clone()))
                    }
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
                Err(e) => {
                    tracing::warn!(workload = %w, error = %Chain(&e), "cannot reopen the log of {id}")
                }
            }
            self.watch(id.clone());
            self.emit(w, "state", format!("adopted container {id}"));
        }
        for (w, id) in gone {
            if let Some(rec) = self.records.get_mut(&w) {
                record_failure(&self.cfg.restart, rec, None, now);
            }
            self.emit(&w, "exit", format!("container {id} was gone when nodeagent started"));
        }
        for o in observed {
            if !known.contains(&o.id) {
                tracing::info!("removing container {} that no workload record knows", o.id);
                self.stopping.insert(o.id.clone());
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = ops::remove(&ctx, &o.id).await {
                        tracing::warn!(container = %o.id, error = %Chain(&e), "cannot remove an unknown container");
                    }
                });
            }
        }
        self.dirty = true;
    }

    /// Records for running containers that no record knows, from their labels (see
    /// [`crate::record::rebuild`]).
    fn rebuild_records(
        &mut self,
        observed: &[crate::runtime::Observed],
        boot: Option<&std::path::Path>,
    ) {
        let known: BTreeSet<&str> = self
            .records
            .values()
            .flat_map(|r| r.instances().map(|i| i.container_id.as_str()))
            .collect();
        let strangers: Vec<&crate::runtime::Observed> =
            observed.iter().filter(|o| !known.contains(o.id.as_str())).collect();
        if strangers.is_empty() {
            return;
        }
        let profile = self
            .node
            .desired
            .clone()
            .and_then(|rev| self.store.load_revision(&rev).ok())
            .or_else(|| boot.and_then(|p| backroom_profiles::render_file(p).ok()));
        let Some(profile) = profile else { return };
        let now = self.now();
        let (got, extra) =
            crate::record::rebuild(&mut self.records, &profile, &strangers, now, |netns| {
                std::path::Path::new(netns).exists()
            });
        for id in &got {
            tracing::warn!(container = %id, "no workload record knew this container: its record is rebuilt from its labels");
        }
        for id in extra {
            tracing::warn!(container = %id, "a second container of a workload: it goes");
        }
        if !got.is_empty() {
            self.dirty = true;
        }
    }

    pub(super) fn watch(&mut self, container_id: String) {
        let runtime = self.ctx.runtime.clone();
        let tx = self.tx.clone();
        let id = container_id.clone();
        let h = tokio::spawn(async move {
            loop {
                match runtime.wait(&id).await {
                    Ok(ended) => {
                        let _ = tx.send(Msg::Exited { container_id: id, ended }).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(container = %id, error = %Chain(&e), "cannot wait for the task; again in 2 s");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                }
            }
        });
        if let Some(old) = self.waiters.insert(container_id, h) {
            old.abort();
        }
    }

    pub(super) fn forget_container(&mut self, id: &str) {
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

    pub(super) fn register(&mut self, launched: Launched) -> crate::record::Instance {
        let id = launched.instance.container_id.clone();
        self.pumps.insert(id.clone(), launched.pumps);
        self.watch(id);
        launched.instance
    }

    /// Follows netd's and vmd's event streams (those configured).
    fn listen_to_peers(&self) {
        if self.ctx.net.configured() {
            let (a, b) = (self.ctx.net.clone(), self.ctx.net.clone());
            super::peers::spawn(
                Source::Netd,
                self.tx.clone(),
                self.cfg.clock.clone(),
                self.cfg.peer_retry,
                move || {
                    let n = a.clone();
                    async move { n.events().await }
                },
                move || {
                    let n = b.clone();
                    async move { n.problems().await }
                },
            );
        }
        if self.vms.configured() {
            let (a, b) = (self.vms.clone(), self.vms.clone());
            super::peers::spawn(
                Source::Vmd,
                self.tx.clone(),
                self.cfg.clock.clone(),
                self.cfg.peer_retry,
                move || {
                    let v = a.clone();
                    async move { v.events().await }
                },
                move || {
                    let v = b.clone();
                    async move { v.problems().await }
                },
            );
        }
    }

    pub(super) fn refresh_vms(&self) {
        if !self.vms.configured() {
            return;
        }
        let vms = self.vms.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = vms.list().await;
            let _ = tx.send(Msg::VmList(r)).await;
        });
    }

    pub(super) fn resync(&mut self) {
        let runtime = self.ctx.runtime.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let r = runtime.list().await;
            let _ = tx.send(Msg::Observed(r)).await;
        });
        self.refresh_vms();
        self.collect_images();
    }

    pub(super) fn collect_images(&self) {
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
        let now = self.now();
        tokio::spawn(async move {
            let images = match runtime.images().await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "cannot list the images to collect");
                    return;
                }
            };
            for name in images_to_collect(&images, &keep, now, grace) {
                match runtime.delete_image(&name).await {
                    Ok(()) => tracing::info!("deleted image {name}: no workload uses it"),
                    Err(e) => {
                        tracing::warn!(image = %name, error = %Chain(&e), "cannot delete an image no workload uses")
                    }
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
            Msg::Exited { container_id, ended } => {
                let exit = Exit { code: ended.code, oom: ended.oom, at_ms: self.now() };
                self.on_exit(&container_id, exit)
            }
            Msg::Probed { container_id, result } => self.on_probe(&container_id, result),
            Msg::OpDone { workload, action, outcome } => {
                self.on_op_done(&workload, &action, *outcome)
            }
            Msg::NetworkDone { revision, result } => {
                self.phase_done(Phase::Network, &revision, result);
            }
            Msg::VmsDone { revision, result } => {
                if self.phase_done(Phase::Vms, &revision, result) {
                    self.refresh_vms();
                }
            }
            Msg::VmList(r) => match r {
                Ok(v) => self.vm_states = v,
                Err(e) => tracing::warn!(error = %Chain(&e), "cannot list the VMs"),
            },
            Msg::Peer { source, news } => self.on_peer(source, news),
            Msg::Alive(round) => self.on_alive(round),
            Msg::Observed(r) => match r {
                Ok(list) => self.on_observed(list),
                Err(e) => tracing::warn!(error = %Chain(&e), "cannot list the containers"),
            },
            Msg::Poke => {}
        }
        self.reconcile();
    }

    pub(super) fn apply(&mut self, rendered: Rendered, source: String) -> Result<ApplyOutcome> {
        let rev = rendered.revision.to_string();
        if let Err(why) = crate::admission::admit(&rendered.profile, &crate::admission::facts()) {
            self.emit("", "revision", format!("revision {} refused: {why}", short(&rev)));
            return Err(Error::Refused(why));
        }
        if let Some(os) = &rendered.profile.node.os
            && !self.cfg.store_os
        {
            let why = crate::os::unsupported(&os.version);
            self.emit("", "revision", format!("revision {} refused: {why}", short(&rev)));
            return Err(Error::Invalid(why));
        }
        let _span = tracing::info_span!("apply", revision = short(&rev)).entered();
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
        // A new revision may fix what failed: try it without waiting out the old backoff.
        for rec in self.records.values_mut() {
            rec.backoff_until_ms = 0;
        }
        self.network = PhaseState::default();
        self.vm_phase = PhaseState::default();
        self.emit(
            "",
            "revision",
            format!("desired revision is now {} (from {source})", short(&rev)),
        );
        Ok(ApplyOutcome { revision: rev, changed: true })
    }

    pub(super) fn restart(&mut self, name: &str) -> Result<String> {
        let Some(d) = &self.desired else { return Err(Error::NoSuchWorkload(name.to_string())) };
        match d.profile.workload(name) {
            Some(Workload::Vm(_)) => {
                let vms = self.vms.clone();
                let tx = self.tx.clone();
                let n = name.to_string();
                tokio::spawn(async move {
                    let r = vms.restart(&n).await;
                    if let Err(e) = r {
                        tracing::warn!(workload = %n, error = %Chain(&e), "vmd did not restart the VM");
                    }
                    let _ = tx.send(Msg::Poke).await;
                });
                Ok(format!("restart of VM {name} asked from vmd"))
            }
            Some(Workload::Container(_)) => {
                let rec = self
                    .records
                    .entry(name.to_string())
                    .or_insert_with(|| WorkloadRecord::new(name));
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
}
