//! The core of vmd: apply a profile's VMs, start/stop/restart them, and keep the per-VM state
//! that `List` shows. Front ends (gRPC, CLI) call these functions and nothing else.
//!
//! Outside systems come in through three traits (hypervisor, storage, NICs). Changes are
//! serialised by one operations lock; the per-VM state sits behind a plain mutex held only for
//! short, await-free moments. Restart policy, health and resync live in `supervise.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backroom_daemon::condition::{Conditions, Problem, Transition};
use backroom_daemon::{Chain, SharedClock};
use backroom_profiles::{Profile, Rendered, RestartPolicy, VmSpec};
use tokio::sync::{OnceCell, broadcast};

use crate::admission;
use crate::error::{Error, Result};
use crate::hypervisor::{DomState, Hypervisor};
use crate::layout::Layout;
use crate::nics::Nic;
use crate::plan::{self, Action, DesiredVm, Mode};
use crate::state::{Persisted, VmRecord};
use crate::storage::Storage;
pub use crate::types::{Config, Deps, HealthState, VmEvent, VmState, VmStatus};
use crate::virt_type::VirtChoice;
use crate::xml::{self, Meta};

pub(crate) struct Runtime {
    pub state: VmState,
    pub rec: VmRecord,
    pub revision: String,
    pub spec: VmSpec,
    pub nics: Vec<Nic>,
    pub health: HealthState,
    pub health_failures: u32,
    /// When the next probe is due (clock ms).
    pub health_due: Option<i64>,
    /// vmd itself is changing this VM (stop, update, removal): events are not acted on.
    pub busy: bool,
    /// Stops in a row the restart policy answered (the backoff's count).
    pub backoff: u32,
    /// When it last started (clock ms).
    pub started_ms: Option<i64>,
    /// Bumped by every decision about a pending restart; a timer whose number is stale quits.
    pub restart_gen: u64,
}

impl Runtime {
    pub fn policy(&self) -> RestartPolicy {
        self.spec.restart
    }
}

pub(crate) struct State {
    pub persisted: Persisted,
    pub rt: BTreeMap<String, Runtime>,
}

pub(crate) struct Inner {
    pub deps: Deps,
    pub layout: Layout,
    pub cfg: Config,
    pub virt: OnceCell<VirtChoice>,
    pub ops: tokio::sync::Mutex<()>,
    pub st: Mutex<State>,
    pub events: broadcast::Sender<VmEvent>,
    /// Every timestamp and timer of vmd (the system clock; a manual one in tests).
    pub clock: SharedClock,
    /// What vmd's background work finds failing now (`List` shows them).
    pub problems: Mutex<Conditions>,
    /// Beaten by the supervisor's loop each turn; the watchdog asks it.
    pub heartbeat: backroom_daemon::notify::Heartbeat,
}

/// The problem of a `state.json` found unreadable at start (and set aside).
pub const STATE_FILE_SUBJECT: &str = "state file state.json";

/// vmd. Cheap to clone (one shared core).
#[derive(Clone)]
pub struct Vmd {
    pub(crate) inner: Arc<Inner>,
}

/// Runs a blocking call off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("a blocking call", std::io::Error::other(e)))?
}

impl Vmd {
    /// vmd over `deps`, with its state folder at `layout` (state.json is read now), on the
    /// system clock.
    pub fn new(deps: Deps, layout: Layout, cfg: Config) -> Result<Self> {
        Self::with_clock(deps, layout, cfg, backroom_daemon::clock::system())
    }

    /// [`Vmd::new`] on `clock` (tests move a manual one).
    pub fn with_clock(deps: Deps, layout: Layout, cfg: Config, clock: SharedClock) -> Result<Self> {
        // Unreadable: set aside, and a problem until vmd has written it again (see `save`).
        let (persisted, set_aside) =
            Persisted::load_or_set_aside(&layout.state_file(), clock.now_unix());
        let mut problems = Conditions::new();
        if let Some(s) = set_aside {
            problems.failed(STATE_FILE_SUBJECT, s.sentence(), clock.now_ms());
        }
        let (events, _) = broadcast::channel(256);
        Ok(Vmd {
            inner: Arc::new(Inner {
                deps,
                layout,
                cfg,
                virt: OnceCell::new(),
                ops: tokio::sync::Mutex::new(()),
                st: Mutex::new(State { persisted, rt: BTreeMap::new() }),
                events,
                clock,
                problems: Mutex::new(problems),
                heartbeat: backroom_daemon::notify::Heartbeat::new(),
            }),
        })
    }

    pub(crate) fn st(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind: keep going with it.
        self.inner.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn hv(&self) -> Arc<dyn Hypervisor> {
        self.inner.deps.hypervisor.clone()
    }

    pub(crate) fn storage(&self) -> Arc<dyn Storage> {
        self.inner.deps.storage.clone()
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The virtualisation type (probed once, on first need).
    pub async fn virt(&self) -> VirtChoice {
        let cfg = &self.inner.cfg;
        self.inner
            .virt
            .get_or_init(|| async {
                let c = crate::virt_type::choose(
                    cfg.virt_type,
                    &cfg.qemu_binary,
                    self.inner.layout.root(),
                    cfg.kvm_probe_timeout,
                    cfg.kvm_probe_kernel.as_deref(),
                )
                .await;
                tracing::info!(virt_type = c.virt_type.domain_type(), reason = %c.reason, "virtualisation type chosen");
                c
            })
            .await
            .clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.inner.events.subscribe()
    }

    /// Now, on vmd's clock (unix ms).
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    pub(crate) fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The supervisor loop's proof of life (for systemd's watchdog).
    pub fn heartbeat(&self) -> backroom_daemon::notify::Heartbeat {
        self.inner.heartbeat.clone()
    }

    pub(crate) fn emit(&self, vm: &str, kind: &str, message: String) {
        tracing::info!(vm, kind, "{message}");
        let _ = self.inner.events.send(VmEvent {
            at_unix_ms: self.now_ms(),
            vm: vm.into(),
            kind: kind.into(),
            message,
            subject: String::new(),
        });
    }

    fn problems_lock(&self) -> MutexGuard<'_, Conditions> {
        self.inner.problems.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One outcome of a background try about `subject` (of VM `vm`, or none): an event only
    /// when it starts failing (`failing`) and when it works again (`recovered`).
    pub(crate) fn report<T>(&self, subject: &str, vm: &str, result: &Result<T>) {
        let now = self.now_ms();
        let t = self.problems_lock().report(subject, result, now);
        if let Err(e) = result {
            tracing::warn!(subject, vm, error = %Chain(e), "failing");
        }
        if let Some(t) = t {
            self.tell(vm, t);
        }
    }

    fn tell(&self, vm: &str, t: Transition) {
        let kind = if t.is_failing() { "failing" } else { "recovered" };
        let message = t.message();
        tracing::info!(vm, kind, subject = t.subject(), "{message}");
        let _ = self.inner.events.send(VmEvent {
            at_unix_ms: self.now_ms(),
            vm: vm.into(),
            kind: kind.into(),
            message,
            subject: t.subject().into(),
        });
    }

    pub(crate) fn is_failing(&self, subject: &str) -> bool {
        self.problems_lock().is_failing(subject)
    }

    /// What is failing now, by subject.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems_lock().open().cloned().collect()
    }

    /// Why vmd's connection to libvirtd does not work now (`None`: it works), as the
    /// supervisor's loop last found it (it checks every turn, and reconnects when libvirtd is
    /// back). nodeagent reaches libvirtd through this.
    pub fn libvirt_error(&self) -> Option<String> {
        self.problems_lock()
            .open()
            .find(|p| p.subject == crate::supervise::EVENTS_SUBJECT)
            .map(|p| p.message.clone())
    }

    /// A VM left: its problems are no longer anyone's.
    fn forget_problems_of(&self, vm: &str) {
        let now = self.now_ms();
        let mine = [vm_subject(vm), image_subject(vm)];
        let gone = self.problems_lock().retain(now, |s| !mine.iter().any(|m| m == s));
        for t in gone {
            self.tell(vm, t);
        }
    }

    pub(crate) fn save(&self) {
        let snapshot = {
            let mut st = self.st();
            let recs: BTreeMap<String, VmRecord> =
                st.rt.iter().map(|(k, r)| (k.clone(), r.rec.clone())).collect();
            st.persisted.vms = recs;
            st.persisted.clone()
        };
        match snapshot.save(&self.inner.layout.state_file()) {
            Err(e) => tracing::error!(error = %Chain(&e), "cannot save vmd's state"),
            Ok(()) => {
                let now = self.now_ms();
                if let Some(t) = self.problems_lock().succeeded(STATE_FILE_SUBJECT, now) {
                    self.tell("", t);
                }
            }
        }
    }

    pub(crate) fn set_state(&self, vm: &str, state: VmState, reason: impl Into<String>) {
        let mut st = self.st();
        if let Some(r) = st.rt.get_mut(vm) {
            if r.state != state {
                r.rec.since_unix = self.inner.clock.now_unix();
            }
            r.state = state;
            r.rec.reason = reason.into();
        }
    }

    pub(crate) fn set_busy(&self, vm: &str, busy: bool) {
        if let Some(r) = self.st().rt.get_mut(vm) {
            r.busy = busy;
            r.restart_gen += 1;
        }
    }

    /// Every VM of the applied profile.
    pub fn list(&self) -> Vec<VmStatus> {
        let st = self.st();
        st.rt.iter().map(|(n, r)| status_of(n, r)).collect()
    }

    pub fn status(&self, vm: &str) -> Result<VmStatus> {
        let st = self.st();
        st.rt.get(vm).map(|r| status_of(vm, r)).ok_or_else(|| Error::UnknownVm(vm.into()))
    }

    /// The revision last applied.
    pub fn applied_revision(&self) -> Option<String> {
        self.st().persisted.revision.clone()
    }

    /// Parses and checks a rendered profile, then applies it.
    pub async fn apply_text(&self, revision: &str, yaml: &str) -> Result<Vec<String>> {
        let r =
            backroom_profiles::render_str("applied-profile.yaml", yaml).map_err(Error::Invalid)?;
        if !revision.is_empty() && r.revision.as_str() != revision {
            return Err(Error::RevisionMismatch {
                given: revision.into(),
                actual: r.revision.as_str().into(),
            });
        }
        self.apply(&r).await
    }

    /// Makes libvirt match the VMs of `r`. Refuses, changing nothing, a set of VMs that does
    /// not fit, a VM whose NICs cannot be resolved, or a domain name taken by someone else.
    pub async fn apply(&self, r: &Rendered) -> Result<Vec<String>> {
        let _ops = self.inner.ops.lock().await;
        self.reconcile(&r.profile, r.revision.as_str(), &r.to_yaml(), Mode::Apply).await
    }

    /// vmd's start-up: takes over the domains of the profile applied last (no redefinition,
    /// no restart of a running VM), creates missing ones, starts stopped ones unless parked.
    pub async fn adopt(&self) -> Result<Vec<String>> {
        self.adopt_with(Mode::Adopt).await
    }

    /// Learns the VMs of the applied profile and their state from libvirt, changing nothing
    /// (for one-shot commands run without the daemon).
    pub async fn observe(&self) -> Result<()> {
        self.adopt_with(Mode::Observe).await.map(|_| ())
    }

    async fn adopt_with(&self, mode: Mode) -> Result<Vec<String>> {
        let _ops = self.inner.ops.lock().await;
        let (rev, yaml) = {
            let st = self.st();
            (st.persisted.revision.clone(), st.persisted.profile_yaml.clone())
        };
        let (Some(rev), Some(yaml)) = (rev, yaml) else {
            return Ok(vec!["no profile applied yet: nothing to adopt".into()]);
        };
        let r = backroom_profiles::render_str("state.json", &yaml).map_err(Error::Invalid)?;
        self.reconcile(&r.profile, &rev, &yaml, mode).await
    }

    async fn reconcile(
        &self,
        profile: &Profile,
        revision: &str,
        yaml: &str,
        mode: Mode,
    ) -> Result<Vec<String>> {
        let cfg = &self.inner.cfg;
        admission::admit(profile, cfg.facts, cfg.overhead)?;
        let virt = self.virt().await.virt_type;
        let mut desired = Vec::new();
        for vm in profile.vms() {
            // A direct-boot kernel and initrd come from the image folders too, checked before
            // anything is made: QEMU loads them into the guest.
            if let Some(k) = &vm.boot.kernel {
                let s = self.storage();
                let files: Vec<String> =
                    std::iter::once(k.kernel.clone()).chain(k.initrd.clone()).collect();
                blocking(move || {
                    files.iter().try_for_each(|f| s.confine(std::path::Path::new(f)).map(drop))
                })
                .await?;
            }
            let nics = self.inner.deps.nics.attach(profile, vm).await?;
            let image_id = match &vm.boot.disk {
                Some(d) => {
                    let (s, d) = (self.storage(), d.clone());
                    Some(blocking(move || s.image_identity(&d)).await?)
                }
                None => None,
            };
            desired.push(plan::resolve(vm, nics, &self.inner.layout, virt, image_id.as_deref())?);
        }
        let hv = self.hv();
        let observed = blocking(move || hv.list()).await?;
        let parked: BTreeSet<String> = {
            let st = self.st();
            st.persisted.vms.iter().filter(|(_, r)| r.parked).map(|(k, _)| k.clone()).collect()
        };
        let actions = plan::plan(&desired, &observed, &parked, revision, mode)?;

        // From here on, the profile is vmd's: runtime entries for every desired VM.
        {
            let mut st = self.st();
            let old = std::mem::take(&mut st.rt);
            let mut old = old;
            for d in &desired {
                let prev = old.remove(&d.name);
                let rec = prev
                    .as_ref()
                    .map(|p| p.rec.clone())
                    .or_else(|| st.persisted.vms.get(&d.name).cloned())
                    .unwrap_or_default();
                let running = observed
                    .iter()
                    .any(|o| o.name == d.domain_name() && o.state == DomState::Running);
                let rt = match prev {
                    Some(mut p) => {
                        p.spec = d.spec.clone();
                        p.nics = d.nics.clone();
                        p
                    }
                    None => Runtime {
                        state: if running { VmState::Running } else { VmState::Stopped },
                        rec,
                        revision: observed
                            .iter()
                            .find(|o| o.name == d.domain_name())
                            .and_then(|o| o.meta.as_ref().map(|m| m.revision.clone()))
                            .unwrap_or_default(),
                        spec: d.spec.clone(),
                        nics: d.nics.clone(),
                        health: HealthState::Unknown,
                        health_failures: 0,
                        health_due: None,
                        busy: false,
                        backoff: 0,
                        started_ms: running.then(|| self.now_ms()),
                        restart_gen: 0,
                    },
                };
                st.rt.insert(d.name.clone(), rt);
            }
            // VMs that go away keep an entry until their removal below is done.
            for (k, mut v) in old {
                v.busy = true;
                st.rt.insert(k, v);
            }
            if mode == Mode::Apply {
                st.persisted.revision = Some(revision.into());
                st.persisted.profile_yaml = Some(yaml.into());
            }
        }
        if mode == Mode::Observe {
            return Ok(actions.iter().map(|a| format!("{a:?}")).collect());
        }
        self.save();

        let mut lines = Vec::new();
        let mut failures = Vec::new();
        for a in &actions {
            let res = match a {
                Action::Create(n) => self.create(find(&desired, n)?, revision).await,
                Action::Update(n) => self.update(find(&desired, n)?, revision).await,
                Action::Retag(n) => self.retag(find(&desired, n)?, revision).await,
                Action::Start(n) => {
                    // The files it was defined with, checked first: after a power cut they
                    // may be torn.
                    match self.prepare_defined(find(&desired, n)?).await {
                        Ok(_) => self.start_defined(n, "started").await,
                        Err(e) => Err(e),
                    }
                }
                Action::Keep(n) => Ok(format!("{n}: unchanged")),
                Action::Remove(n) => self.remove(n).await,
                Action::Differs(n) => Ok(format!(
                    "{n}: adopted; its definition differs from the profile (the next apply updates it)"
                )),
                Action::Orphan(n) => Ok(format!(
                    "{n}: Backroom domain not in the applied profile: left alone until the next apply"
                )),
            };
            match res {
                Ok(line) => lines.push(line),
                Err(e) => {
                    let vm = action_vm(a);
                    let why = backroom_daemon::chain(&e);
                    let msg = match &e {
                        Error::Spec { .. } => why.clone(),
                        _ => format!("{vm}: {why}"),
                    };
                    lines.push(msg.clone());
                    if !matches!(a, Action::Remove(_)) {
                        self.set_state(vm, VmState::Failed, why.clone());
                    }
                    self.emit(vm, "failed", why);
                    failures.push(msg);
                }
            }
        }
        if mode == Mode::Adopt {
            let now = self.now_ms();
            let mut st = self.st();
            for r in st.rt.values_mut() {
                if r.state == VmState::Running && r.started_ms.is_none() {
                    r.started_ms = Some(now);
                }
            }
        }
        self.save();
        if failures.is_empty() {
            Ok(lines)
        } else {
            Err(Error::Failed { count: failures.len(), failures, actions: lines })
        }
    }

    pub(crate) fn is_parked(&self, vm: &str) -> bool {
        self.st().rt.get(vm).is_some_and(|r| r.rec.parked)
    }

    async fn create(&self, d: &DesiredVm, revision: &str) -> Result<String> {
        let notes = self.prepare(d).await?;
        let xml = xml::domain_xml(&d.domain, revision);
        let hv = self.hv();
        blocking(move || hv.define(&xml)).await?;
        {
            let mut st = self.st();
            if let Some(r) = st.rt.get_mut(&d.name) {
                r.revision = revision.into();
            }
        }
        let extra =
            if notes.is_empty() { String::new() } else { format!(" ({})", notes.join(", ")) };
        if self.is_parked(&d.name) {
            return Ok(format!("{}: defined, left stopped (parked){extra}", d.name));
        }
        self.start_domain(&d.name).await?;
        Ok(format!("{}: defined and started{extra}", d.name))
    }

    async fn retag(&self, d: &DesiredVm, revision: &str) -> Result<String> {
        let meta =
            Meta { workload: d.name.clone(), revision: revision.into(), spec: d.spec_hash.clone() };
        let (hv, dn) = (self.hv(), d.domain_name());
        blocking(move || hv.set_meta(&dn, &meta)).await?;
        if let Some(r) = self.st().rt.get_mut(&d.name) {
            r.revision = revision.into();
        }
        Ok(format!("{}: unchanged (now at revision {})", d.name, short(revision)))
    }

    /// Starts a defined domain and records it.
    pub(crate) async fn start_domain(&self, vm: &str) -> Result<()> {
        self.set_state(vm, VmState::Starting, "");
        self.storage().ensure_dir(&self.inner.layout.vm_dir(vm))?;
        let (hv, dn) = (self.hv(), xml::domain_name(vm));
        blocking(move || hv.start(&dn)).await?;
        {
            let mut st = self.st();
            if let Some(r) = st.rt.get_mut(vm) {
                r.started_ms = Some(self.inner.clock.now_ms());
                r.health = HealthState::Unknown;
                r.health_failures = 0;
                r.health_due = None;
            }
        }
        self.set_state(vm, VmState::Running, "");
        Ok(())
    }

    pub(crate) async fn start_defined(&self, vm: &str, verb: &str) -> Result<String> {
        self.start_domain(vm).await?;
        self.emit(vm, "started", format!("VM {vm} {verb}"));
        Ok(format!("{vm}: {verb}"))
    }

    /// Asks the guest to power off; destroys it after the shutdown timeout. True: it obeyed.
    pub(crate) async fn stop_domain(&self, vm: &str) -> Result<bool> {
        let (hv, dn) = (self.hv(), xml::domain_name(vm));
        // Stopped means QEMU is gone: a guest that powered off is not stopped until then.
        let running = |hv: Arc<dyn Hypervisor>, dn: String| async move {
            blocking(move || hv.get(&dn)).await.map(|d| {
                d.is_some_and(|d| matches!(d.state, DomState::Running | DomState::Stopping))
            })
        };
        if !running(hv.clone(), dn.clone()).await? {
            return Ok(true);
        }
        {
            let (hv, dn) = (hv.clone(), dn.clone());
            // A guest that is already going down refuses the request: the wait below decides.
            let _ = blocking(move || hv.shutdown(&dn)).await;
        }
        let clock = self.clock();
        let deadline = clock.now_ms() + duration_ms(self.inner.cfg.shutdown_timeout);
        loop {
            if !running(hv.clone(), dn.clone()).await? {
                return Ok(true);
            }
            if clock.now_ms() >= deadline {
                break;
            }
            clock.sleep(Duration::from_millis(250)).await;
        }
        let (hv2, dn2) = (hv.clone(), dn.clone());
        if let Err(e) = blocking(move || hv2.destroy(&dn2)).await
            && running(hv, dn).await?
        {
            return Err(e);
        }
        Ok(false)
    }

    /// Stops and undefines a VM that left the profile; its data disks and console log stay.
    async fn remove(&self, vm: &str) -> Result<String> {
        self.set_busy(vm, true);
        let graceful = self.stop_domain(vm).await?;
        let (hv, dn) = (self.hv(), xml::domain_name(vm));
        blocking(move || hv.undefine(&dn)).await?;
        let storage = self.storage();
        for f in storage.list(&self.inner.layout.vm_dir(vm)) {
            if Layout::is_replaceable(&f) {
                let _ = storage.remove(&f);
            }
        }
        if let Err(e) = self.inner.deps.nics.detach(vm).await {
            tracing::warn!(vm, error = %Chain(&e), "netd detach failed");
        }
        self.st().rt.remove(vm);
        self.forget_problems_of(vm);
        let how = if graceful { "shut down" } else { "destroyed after the shutdown timeout" };
        self.emit(
            vm,
            "removed",
            format!("VM {vm} {how} and removed: it is no longer in the profile (data disks kept)"),
        );
        Ok(format!("{vm}: {how}, undefined (no longer in the profile; data disks kept)"))
    }

    /// Operator start: unparks and starts.
    pub async fn start_vm(&self, vm: &str) -> Result<VmStatus> {
        let _ops = self.inner.ops.lock().await;
        self.known(vm)?;
        if let Some(r) = self.st().rt.get_mut(vm) {
            r.rec.parked = false;
            r.backoff = 0;
            r.restart_gen += 1;
        }
        let (hv, dn) = (self.hv(), xml::domain_name(vm));
        let running =
            blocking(move || hv.get(&dn)).await?.is_some_and(|d| d.state == DomState::Running);
        if !running {
            self.start_defined(vm, "started by an operator").await?;
            // It runs: a restart policy that could not start it has nothing left to report.
            self.report(&vm_subject(vm), vm, &Ok::<(), Error>(()));
        }
        self.save();
        self.status(vm)
    }

    /// Operator stop: graceful, then parked (no restart policy, no start at vmd's start-up).
    pub async fn stop_vm(&self, vm: &str) -> Result<VmStatus> {
        let _ops = self.inner.ops.lock().await;
        self.known(vm)?;
        self.set_busy(vm, true);
        if let Some(r) = self.st().rt.get_mut(vm) {
            r.rec.parked = true;
        }
        let res = self.stop_domain(vm).await;
        self.set_busy(vm, false);
        let graceful = res?;
        let how = if graceful { "shut down" } else { "destroyed after the shutdown timeout" };
        self.set_state(vm, VmState::Stopped, "stopped by an operator");
        self.emit(vm, "stopped", format!("VM {vm} {how} by an operator"));
        self.save();
        self.status(vm)
    }

    /// Operator restart: a graceful stop and a start; counts as a restart.
    pub async fn restart_vm(&self, vm: &str) -> Result<VmStatus> {
        let _ops = self.inner.ops.lock().await;
        self.known(vm)?;
        self.set_busy(vm, true);
        let res = self.stop_domain(vm).await;
        if let Some(r) = self.st().rt.get_mut(vm) {
            r.rec.parked = false;
            r.backoff = 0;
        }
        let res = match res {
            Ok(_) => self.start_domain(vm).await,
            Err(e) => Err(e),
        };
        self.set_busy(vm, false);
        res?;
        if let Some(r) = self.st().rt.get_mut(vm) {
            r.rec.restarts += 1;
        }
        self.emit(vm, "restarted", format!("VM {vm} restarted by an operator"));
        self.save();
        self.status(vm)
    }

    fn known(&self, vm: &str) -> Result<()> {
        if self.st().rt.contains_key(vm) { Ok(()) } else { Err(Error::UnknownVm(vm.into())) }
    }

    /// The last `max` bytes of a VM's serial console log.
    pub fn console_log(&self, vm: &str, max: usize) -> Result<Vec<u8>> {
        read_tail(&self.inner.layout.console_log(vm), max)
    }

    /// Removes every domain vmd owns (graceful, then destroy), their overlays and seeds, and
    /// forgets the applied profile. Data disks and cached images stay unless `purge`.
    /// Every failure is reported, not only the first.
    pub async fn teardown(&self, purge: bool) -> Result<Vec<String>> {
        let _ops = self.inner.ops.lock().await;
        let hv = self.hv();
        let owned: Vec<String> = blocking(move || hv.list())
            .await?
            .into_iter()
            .filter_map(|d| d.meta.map(|m| m.workload))
            .collect();
        let mut done = Vec::new();
        let mut failures = Vec::new();
        for vm in owned {
            self.st().rt.entry(vm.clone()).and_modify(|r| r.busy = true);
            let r = async {
                let graceful = self.stop_domain(&vm).await?;
                let (hv, dn) = (self.hv(), xml::domain_name(&vm));
                blocking(move || hv.undefine(&dn)).await?;
                let storage = self.storage();
                for f in storage.list(&self.inner.layout.vm_dir(&vm)) {
                    if Layout::is_replaceable(&f) || purge {
                        storage.remove(&f)?;
                    }
                }
                if purge {
                    let _ = std::fs::remove_dir(self.inner.layout.vm_dir(&vm));
                }
                self.inner.deps.nics.detach(&vm).await?;
                Ok::<_, Error>(graceful)
            }
            .await;
            self.forget_problems_of(&vm);
            match r {
                Ok(true) => done.push(format!("{vm}: shut down and removed")),
                Ok(false) => {
                    done.push(format!("{vm}: destroyed after the shutdown timeout and removed"))
                }
                Err(e) => failures.push(format!("{vm}: {}", backroom_daemon::chain(&e))),
            }
        }
        if purge
            && let Err(e) = std::fs::remove_dir_all(self.inner.layout.images())
            && e.kind() != std::io::ErrorKind::NotFound
        {
            failures.push(format!("image cache: {e}"));
        }
        {
            let mut st = self.st();
            st.rt.clear();
            st.persisted = Persisted::default();
        }
        self.save();
        if failures.is_empty() {
            Ok(done)
        } else {
            Err(Error::Failed { count: failures.len(), failures, actions: done })
        }
    }
}

fn status_of(name: &str, r: &Runtime) -> VmStatus {
    VmStatus {
        name: name.into(),
        state: r.state,
        since_unix: r.rec.since_unix,
        restarts: r.rec.restarts,
        revision: r.revision.clone(),
        reason: r.rec.reason.clone(),
        addresses: r.nics.iter().filter_map(|n| n.address.map(|a| a.to_string())).collect(),
        health: if r.spec.health.is_some() { r.health } else { HealthState::Unknown },
    }
}

fn find<'a>(desired: &'a [DesiredVm], name: &str) -> Result<&'a DesiredVm> {
    desired.iter().find(|d| d.name == name).ok_or_else(|| Error::UnknownVm(name.into()))
}

fn action_vm(a: &Action) -> &str {
    match a {
        Action::Create(n)
        | Action::Update(n)
        | Action::Retag(n)
        | Action::Start(n)
        | Action::Keep(n)
        | Action::Remove(n)
        | Action::Differs(n)
        | Action::Orphan(n) => n,
    }
}

/// A revision as people read it: its first 12 characters.
pub(crate) fn short(rev: &str) -> &str {
    backroom_daemon::text::short(rev, 12)
}

/// The problem subject of a VM's restart policy failing to start it.
pub fn vm_subject(vm: &str) -> String {
    format!("VM {vm}")
}

/// The problem subject of a VM's boot image failing to download (or verify).
pub fn image_subject(vm: &str) -> String {
    format!("image for {vm}")
}

/// A duration as clock milliseconds.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The last `max` bytes of a file (empty when it does not exist yet).
pub fn read_tail(path: &std::path::Path, max: usize) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(max as u64);
    f.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(buf)
}
