//! `netd serve`: the local gRPC API on a unix socket, and the loops that keep the kernel matching
//! the applied profile (drift checks on netlink link events and every interval, DHCP renewal,
//! the commit-confirm deadline). Handlers parse, call one [`Engine`] function on a blocking
//! thread, and map the result; errors become a `tonic::Status` in [`status`].
//!
//! A loop's failure reaches the operator once: a `failing` event when it starts failing and a
//! `recovered` event when it works again (`backroom_daemon::Conditions`), named after what fails
//! (`uplink eno1`, `DHCP on br-mgmt`, `drift repair`); Observe lists what is failing now.
//!
//! DHCP exchanges (seconds long when no server answers) run without the engine's lock: the
//! engine plans which segments need a lease, the exchanges run on their own blocking threads,
//! and the leases are recorded under the lock afterwards. So an Apply never waits for one.
//!
//! Timing reads the engine's [`backroom_daemon::Clock`]: unit tests drive the loop on a manual clock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backroom_api::netd as pb;
use backroom_api::netd::netd_server::{Netd, NetdServer};
use backroom_daemon::backoff::Retries;
use backroom_daemon::notify::Heartbeat;
use backroom_daemon::{Backoff, Chain, Conditions, SharedClock, Transition, chain};
use futures::Stream;
use tokio::sync::{Notify, broadcast, watch};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::dhcp::{Dhcp, DhcpRequest};
use crate::engine::{Deadline, Engine, parse_profile};
use crate::error::Error;

/// Subjects of the loops' problems when the error names nothing more precise.
pub const DRIFT_CHECK: &str = "drift check";
pub const DRIFT_REPAIR: &str = "drift repair";
pub const ROLLBACK: &str = "commit-confirm rollback";
pub const LINK_EVENTS: &str = "link events";

/// One turn of the background loop: deadlines are seen within this.
const TICK: Duration = Duration::from_secs(1);
/// A burst of link events settles this long before the drift check it triggers.
const SETTLE: Duration = Duration::from_millis(300);
/// The watchdog is fed while the loop turned within this (its longest turn is a drift check
/// and repair; DHCP exchanges run beside it).
pub const LOOP_STALE: Duration = Duration::from_secs(20);
/// Retries of a segment's DHCP after a failed exchange.
const DHCP_RETRY: Backoff =
    Backoff::new(Duration::from_secs(10), Duration::from_secs(300)).with_jitter(0.1);
/// Retries of a rollback that failed.
const ROLLBACK_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// How long in-flight requests get to finish after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);

/// Maps an error to a status, in one place.
pub fn status(e: Error) -> Status {
    let msg = chain(&e);
    match e {
        Error::Profile(_) | Error::RevisionMismatch { .. } | Error::OverrideRefused { .. } => {
            Status::invalid_argument(msg)
        }
        Error::NoSuchWorkload { .. }
        | Error::NoSuchSegment { .. }
        | Error::NoSuchInstance { .. }
        | Error::NothingPending
        | Error::NoOverride
        | Error::OtherPending { .. }
        | Error::NoSuchLink { .. } => Status::not_found(msg),
        Error::NotApplied
        | Error::Busy { .. }
        | Error::UplinkMissing { .. }
        | Error::ForeignLink { .. }
        | Error::NoFreeAddress { .. }
        | Error::NoSubnet { .. }
        | Error::AlreadyPrimary { .. }
        | Error::VmInstance { .. }
        | Error::ApplyPending { .. }
        | Error::OverridePending { .. }
        | Error::PrivateMounts { .. } => Status::failed_precondition(msg),
        Error::NoDhcpServer { .. } => Status::unavailable(msg),
        Error::Kernel { .. }
        | Error::State { .. }
        | Error::Daemon(_)
        | Error::DhcpEncode { .. }
        | Error::NoNamespace { .. }
        | Error::Task { .. }
        | Error::Resolv { .. }
        | Error::Serve(_)
        | Error::Many(_) => Status::internal(msg),
    }
}

/// A segment's DHCP as the daemon runs it.
#[derive(Debug)]
struct DhcpSlot {
    in_flight: bool,
    retries: Retries,
    next_try_ms: i64,
}

/// The loops' memory between turns.
#[derive(Debug, Default)]
struct Loops {
    conditions: Conditions,
    /// The drift last told, so drift that stays (while its repair keeps failing) is told once.
    last_drift: Vec<String>,
    /// The subject the network repair is failing under.
    repair_failing: Option<String>,
    dhcp: BTreeMap<String, DhcpSlot>,
    rollback: Option<(Retries, i64)>,
    /// State files set aside (subject, path): failing until netd has written them again.
    set_aside: Vec<(String, PathBuf)>,
}

struct Shared {
    engine: Arc<Mutex<Engine>>,
    events: broadcast::Sender<pb::Event>,
    check_now: Notify,
    clock: SharedClock,
    dhcp: Arc<dyn Dhcp>,
    heartbeat: Heartbeat,
    loops: Mutex<Loops>,
    stop: watch::Sender<bool>,
    turns: AtomicU64,
}

#[derive(Clone)]
pub struct Daemon {
    shared: Arc<Shared>,
}

impl Daemon {
    pub fn new(engine: Engine) -> Daemon {
        let (events, _) = broadcast::channel(256);
        let (stop, _) = watch::channel(false);
        let (clock, dhcp) = (engine.clock(), engine.dhcp_client());
        Daemon {
            shared: Arc::new(Shared {
                engine: Arc::new(Mutex::new(engine)),
                events,
                check_now: Notify::new(),
                clock,
                dhcp,
                heartbeat: Heartbeat::new(),
                loops: Mutex::new(Loops::default()),
                stop,
                turns: AtomicU64::new(0),
            }),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let engine = self.shared.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = engine.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .unwrap_or_else(|source| Err(Error::Task { what: "netd's engine task", source }))
    }

    fn loops(&self) -> std::sync::MutexGuard<'_, Loops> {
        self.shared.loops.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn clock(&self) -> SharedClock {
        self.shared.clock.clone()
    }

    /// The background loop's proof of life, for the watchdog.
    pub fn heartbeat(&self) -> Heartbeat {
        self.shared.heartbeat.clone()
    }

    /// How many turns the background loop has made.
    pub fn turns(&self) -> u64 {
        self.shared.turns.load(Ordering::SeqCst)
    }

    /// Asks for a drift check soon (a link changed).
    pub fn check_soon(&self) {
        self.shared.check_now.notify_one();
    }

    /// Ends the event streams (the daemon is stopping) and the link watcher.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }

    pub fn stopped(&self) -> bool {
        *self.shared.stop.borrow()
    }

    /// Subscribes to the events as the API streams them.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.shared.events.subscribe()
    }

    fn send(&self, kind: &str, message: String, revision: &str, subject: &str) {
        let _ = self.shared.events.send(pb::Event {
            at_unix_ms: self.shared.clock.now_ms(),
            kind: kind.to_string(),
            message,
            revision: revision.to_string(),
            subject: subject.to_string(),
        });
    }

    pub fn emit(&self, kind: &str, message: String, revision: &str) {
        info!(kind, revision, "{message}");
        self.send(kind, message, revision, "");
    }

    fn tell(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        let (subject, message) = (t.subject().to_string(), t.message());
        if t.is_failing() {
            warn!(kind = "failing", subject, "{message}");
            self.send("failing", message, "", &subject);
        } else {
            info!(kind = "recovered", subject, "{message}");
            self.send("recovered", message, "", &subject);
        }
    }

    /// One failed try of `subject`: an event only when it was not failing yet.
    pub fn failed(&self, subject: &str, message: String) {
        let now = self.shared.clock.now_ms();
        let t = self.loops().conditions.failed(subject, message, now);
        self.tell(t);
    }

    /// One good try of `subject`: an event only when it had been failing.
    pub fn succeeded(&self, subject: &str) {
        let now = self.shared.clock.now_ms();
        let t = self.loops().conditions.succeeded(subject, now);
        self.tell(t);
    }

    /// What is failing now, for Observe.
    pub fn problems(&self) -> Vec<backroom_api::common::Problem> {
        self.loops()
            .conditions
            .open()
            .map(|p| backroom_api::common::Problem {
                subject: p.subject.clone(),
                message: p.message.clone(),
                since_unix_ms: p.since_ms,
                failures: p.failures,
                source: "netd".into(),
            })
            .collect()
    }

    fn repair_failed(&self, e: &Error) {
        let subject = e.subject().unwrap_or_else(|| DRIFT_REPAIR.to_string());
        let before = self.loops().repair_failing.replace(subject.clone());
        // Failing for another reason now: the former one is solved.
        if let Some(b) = before.filter(|b| *b != subject) {
            self.succeeded(&b);
        }
        self.failed(&subject, format!("netd cannot repair the store's network: {}", chain(e)));
    }

    fn repair_ok(&self) {
        let before = self.loops().repair_failing.take();
        if let Some(b) = before {
            self.succeeded(&b);
        }
    }

    /// State files found unreadable (and set aside) are problems, `state file <name>`, until
    /// netd has written them again.
    pub async fn check_state_files(&self) {
        let (dir, found) =
            match self.run(|e| Ok((e.state_dir().to_path_buf(), e.check_state_files()))).await {
                Ok(v) => v,
                Err(e) => {
                    warn!(error = %Chain(&e), "cannot check the state files");
                    return;
                }
            };
        for s in found {
            let name = s.path.strip_prefix(&dir).unwrap_or(&s.path).display().to_string();
            let subject = format!("state file {name}");
            self.failed(&subject, s.sentence());
            let mut l = self.loops();
            if !l.set_aside.iter().any(|(sub, _)| *sub == subject) {
                l.set_aside.push((subject, s.path));
            }
        }
        let written: Vec<String> = {
            let mut l = self.loops();
            let (done, left): (Vec<_>, Vec<_>) =
                std::mem::take(&mut l.set_aside).into_iter().partition(|(_, p)| p.exists());
            l.set_aside = left;
            done.into_iter().map(|(s, _)| s).collect()
        };
        for subject in written {
            self.succeeded(&subject);
        }
    }

    /// One drift check: reports what differs, repairs it; then renews DHCP leases that are due
    /// (beside the loop, without the engine's lock).
    pub async fn check(&self) {
        self.check_state_files().await;
        match self.run(|e| e.drift()).await {
            Ok(d) if d.is_empty() => {
                self.succeeded(DRIFT_CHECK);
                self.loops().last_drift.clear();
                self.repair_ok();
            }
            Ok(d) => {
                self.succeeded(DRIFT_CHECK);
                let new = {
                    let mut l = self.loops();
                    let new = l.last_drift != d;
                    l.last_drift.clone_from(&d);
                    new
                };
                if new {
                    self.emit(
                        "drift_found",
                        format!("the network differs from the applied profile: {}", d.join("; ")),
                        "",
                    );
                }
                match self.run(|e| e.reconcile()).await {
                    Ok(o) => {
                        self.loops().last_drift.clear();
                        self.emit(
                            "drift_repaired",
                            format!("repaired: {}", o.actions.join("; ")),
                            "",
                        );
                        self.repair_ok();
                    }
                    Err(Error::NotApplied) => {}
                    Err(e) => self.repair_failed(&e),
                }
            }
            Err(Error::NotApplied) => {}
            Err(e) => self.failed(
                DRIFT_CHECK,
                format!("netd cannot check the store's network: {}", chain(&e)),
            ),
        }
        tokio::spawn(self.clone().dhcp());
    }

    /// Gets the DHCP leases that are due and not already being asked for: the exchanges run on
    /// blocking threads without the engine's lock; a segment that got no answer is tried
    /// again after a backoff.
    pub async fn dhcp(self) {
        let due = match self.run(|e| e.dhcp_due()).await {
            Ok(v) => v,
            Err(Error::NotApplied) => return,
            Err(e) => {
                warn!(error = %Chain(&e), "cannot tell which segments need a DHCP lease");
                return;
            }
        };
        let now = self.shared.clock.now_ms();
        let mine: Vec<DhcpRequest> = {
            let mut l = self.loops();
            due.into_iter()
                .filter(|r| {
                    let slot = l.dhcp.entry(r.segment.clone()).or_insert_with(|| DhcpSlot {
                        in_flight: false,
                        retries: DHCP_RETRY.retries(),
                        next_try_ms: 0,
                    });
                    let go = !slot.in_flight && slot.next_try_ms <= now;
                    slot.in_flight |= go;
                    go
                })
                .collect()
        };
        if mine.is_empty() {
            return;
        }
        let now_unix = self.shared.clock.now_unix();
        let runs = mine.iter().cloned().map(|req| {
            let client = self.shared.dhcp.clone();
            tokio::task::spawn_blocking(move || client.obtain(&req, now_unix))
        });
        let results = futures::future::join_all(runs).await;
        let mut got = Vec::new();
        for (req, r) in mine.into_iter().zip(results) {
            let r =
                r.unwrap_or_else(|source| Err(Error::Task { what: "the DHCP exchange", source }));
            let subject = format!("DHCP on {}", req.bridge);
            let now = self.shared.clock.now_ms();
            let failure = {
                let mut l = self.loops();
                let Some(slot) = l.dhcp.get_mut(&req.segment) else { continue };
                slot.in_flight = false;
                match &r {
                    Ok(_) => {
                        slot.retries.reset();
                        slot.next_try_ms = 0;
                        None
                    }
                    Err(e) => {
                        let wait = slot.retries.fail();
                        slot.next_try_ms =
                            now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                        Some(format!("netd has no address on {}: {}", req.bridge, chain(e)))
                    }
                }
            };
            match (r, failure) {
                (Ok(lease), _) => {
                    self.succeeded(&subject);
                    got.push((req.segment, lease));
                }
                (Err(_), Some(msg)) => self.failed(&subject, msg),
                (Err(_), None) => {}
            }
        }
        if got.is_empty() {
            return;
        }
        match self.run(move |e| e.record_leases(got)).await {
            Ok(v) if !v.is_empty() => info!("dhcp: {}", v.join("; ")),
            Ok(_) | Err(Error::NotApplied) => {}
            Err(e) => self.repair_failed(&e),
        }
    }

    /// Rolls back a pending apply whose deadline passed; a rollback that fails is retried
    /// after a backoff.
    pub async fn deadline(&self) {
        let now = self.shared.clock.now_ms();
        if self.loops().rollback.as_ref().is_some_and(|(_, at)| *at > now) {
            return;
        }
        let r = self.run(|e| e.rollback_if_due()).await;
        if let Err(e) = &r
            && !matches!(e, Error::NotApplied)
        {
            let wait = {
                let mut l = self.loops();
                let (retries, at) = l.rollback.get_or_insert_with(|| (ROLLBACK_RETRY.retries(), 0));
                let wait = retries.fail();
                *at = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                wait
            };
            warn!(error = %Chain(e), retry_in = ?wait, "the rollback failed");
            self.failed(
                ROLLBACK,
                format!("netd cannot roll back the unconfirmed apply: {}", chain(e)),
            );
            return;
        }
        self.loops().rollback = None;
        match r {
            Ok(Some(Deadline::RolledBack { revision, outcome })) => self.emit(
                "rollback_done",
                format!("the apply was not confirmed in time: revision {revision} is back ({} steps)", outcome.actions.len()),
                &revision,
            ),
            Ok(Some(Deadline::Kept { revision, again: false })) => self.emit(
                "unconfirmed_kept",
                format!(
                    "the network of revision {} was not confirmed in time, and netd kept it: there is no earlier network to go back to, and removing it would cut the store off (a later confirmation clears this)",
                    backroom_daemon::text::short(&revision, 12)
                ),
                &revision,
            ),
            Ok(Some(Deadline::Kept { revision, again: true })) => {
                info!(revision = %revision, "the network, applied again, is still unconfirmed: kept");
            }
            Ok(Some(Deadline::OverrideRolledBack { segment, outcome })) => self.emit_override(
                "override_rolled_back",
                format!(
                    "the uplink override of segment {segment} was not confirmed in time: the network before it is back ({} steps)",
                    outcome.actions.len()
                ),
                &segment,
            ),
            Ok(None) | Err(_) => {}
        }
        self.succeeded(ROLLBACK);
    }

    /// The daemon's loop: the commit-confirm deadline every tick, a drift check on link events
    /// ([`Daemon::check_soon`]) and every `interval`. Never returns. Beats the heartbeat each
    /// turn, so the watchdog is fed only while this loop turns.
    pub async fn background(self, interval: Duration) {
        let clock = self.shared.clock.clone();
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let mut last_check = clock.now_ms();
        loop {
            self.shared.heartbeat.beat();
            self.shared.turns.fetch_add(1, Ordering::SeqCst);
            let triggered = tokio::select! {
                () = clock.sleep(TICK) => false,
                () = self.shared.check_now.notified() => true,
            };
            if triggered {
                clock.sleep(SETTLE).await;
                self.check().await;
                last_check = clock.now_ms();
            }
            self.deadline().await;
            self.override_expiry().await;
            if clock.now_ms().saturating_sub(last_check) >= interval_ms {
                self.check().await;
                last_check = clock.now_ms();
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

enum Next {
    Event(pb::Event),
    Lagged,
    End,
}

#[tonic::async_trait]
impl Netd for Daemon {
    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let r = req.into_inner();
        let rendered = parse_profile(&r.revision, &r.profile_yaml).map_err(status)?;
        let rev = rendered.revision.as_str().to_string();
        let uplink = Some(r.uplink_override).filter(|u| !u.is_empty());
        let confirm = r.confirm_seconds;
        let res = self.run(move |e| e.apply(&rendered, uplink.as_deref(), confirm)).await;
        match res {
            Ok(o) => {
                self.emit(
                    "apply_done",
                    format!("revision {rev} applied ({} steps)", o.actions.len()),
                    &rev,
                );
                // Leases for the new profile's DHCP segments come beside the API.
                tokio::spawn(self.clone().dhcp());
                Ok(Response::new(pb::ApplyReply {
                    changed: o.changed,
                    actions: o.actions,
                    confirm_deadline_unix: o.confirm_deadline_unix,
                }))
            }
            Err(e) => {
                self.emit(
                    "apply_failed",
                    format!("revision {rev} could not be applied: {}", chain(&e)),
                    &rev,
                );
                Err(status(e))
            }
        }
    }

    async fn confirm(
        &self,
        req: Request<pb::ConfirmRequest>,
    ) -> Result<Response<pb::ConfirmReply>, Status> {
        let rev = req.into_inner().revision;
        let (confirmed, of_override) = self
            .run(move |e| {
                let of_override = overrides::pending_override(e)?;
                Ok((e.confirm(&rev)?, of_override))
            })
            .await
            .map_err(status)?;
        match of_override {
            Some(segment) => self.emit_override(
                "override_confirmed",
                format!("the uplink override of segment {segment} is confirmed"),
                &segment,
            ),
            None => {
                self.emit("confirmed", format!("revision {confirmed} is confirmed"), &confirmed)
            }
        }
        Ok(Response::new(pb::ConfirmReply { revision: confirmed }))
    }

    async fn set_override(
        &self,
        req: Request<pb::SetOverrideRequest>,
    ) -> Result<Response<pb::SetOverrideReply>, Status> {
        let r = req.into_inner();
        let ask = overrides::request(r.r#override.unwrap_or_default());
        let confirm = r.confirm_seconds;
        let (o, out) = self.run(move |e| e.set_override(&ask, confirm)).await.map_err(status)?;
        self.override_set(&o, &out);
        Ok(Response::new(pb::SetOverrideReply {
            actions: out.actions,
            confirm_deadline_unix: out.confirm_deadline_unix,
            r#override: Some(overrides::to_pb(&o)),
        }))
    }

    async fn clear_override(
        &self,
        _req: Request<pb::ClearOverrideRequest>,
    ) -> Result<Response<pb::ClearOverrideReply>, Status> {
        let end = self.run(|e| e.clear_override()).await.map_err(status)?;
        self.override_ended("override_cleared", &end);
        Ok(Response::new(pb::ClearOverrideReply { actions: end.outcome.actions }))
    }

    async fn plan(&self, req: Request<pb::PlanRequest>) -> Result<Response<pb::PlanReply>, Status> {
        let r = req.into_inner();
        let rendered = parse_profile(&r.revision, &r.profile_yaml).map_err(status)?;
        let uplink = Some(r.uplink_override).filter(|u| !u.is_empty());
        let actions =
            self.run(move |e| e.plan(&rendered, uplink.as_deref())).await.map_err(status)?;
        Ok(Response::new(pb::PlanReply { actions }))
    }

    async fn observe(
        &self,
        _req: Request<pb::ObserveRequest>,
    ) -> Result<Response<pb::ObserveReply>, Status> {
        let o = self.run(|e| e.observe()).await.map_err(status)?;
        let mut reply = observe_reply(o);
        reply.problems = self.problems();
        Ok(Response::new(reply))
    }

    async fn attach(
        &self,
        req: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::AttachReply>, Status> {
        let r = req.into_inner();
        let ep = self.run(move |e| e.attach(&r.workload, &r.instance)).await.map_err(status)?;
        Ok(Response::new(attach_reply(&ep)))
    }

    async fn detach(
        &self,
        req: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachReply>, Status> {
        let r = req.into_inner();
        self.run(move |e| e.detach(&r.workload, &r.instance)).await.map_err(status)?;
        Ok(Response::new(pb::DetachReply {}))
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteReply>, Status> {
        let r = req.into_inner();
        let ep = self.run(move |e| e.promote(&r.workload, &r.instance)).await.map_err(status)?;
        Ok(Response::new(pb::PromoteReply { endpoints: Some(attach_reply(&ep)) }))
    }

    async fn teardown(
        &self,
        _req: Request<pb::TeardownRequest>,
    ) -> Result<Response<pb::TeardownReply>, Status> {
        let removed = self.run(|e| e.teardown()).await.map_err(status)?;
        Ok(Response::new(pb::TeardownReply { removed }))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        _req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let rx = self.shared.events.subscribe();
        let stop = self.shared.stop.subscribe();
        // A stream ends when the daemon stops: a graceful stop waits for open streams.
        let s = futures::stream::unfold((rx, stop), |(mut rx, mut stop)| async move {
            loop {
                let next = tokio::select! {
                    r = rx.recv() => match r {
                        Ok(ev) => Next::Event(ev),
                        Err(broadcast::error::RecvError::Lagged(_)) => Next::Lagged,
                        Err(broadcast::error::RecvError::Closed) => Next::End,
                    },
                    _ = stop.wait_for(|s| *s) => Next::End,
                };
                match next {
                    Next::Event(ev) => return Some((Ok(ev), (rx, stop))),
                    Next::Lagged => continue,
                    Next::End => return None,
                }
            }
        });
        Ok(Response::new(Box::pin(s)))
    }
}

/// Serves the API on `socket` (root only, 0600, or `access`'s group too, 0660: through
/// `backroom_daemon::socket`) until SIGTERM or SIGINT; tells systemd when ready and when
/// stopping, and feeds its watchdog while the background loop turns. Stopping leaves the
/// network as it is.
pub async fn serve(
    daemon: Daemon,
    socket: PathBuf,
    access: backroom_daemon::socket::Access,
    interval: Duration,
) -> Result<(), Error> {
    use backroom_daemon::{notify, signal, socket as sock};
    let incoming = sock::listen(&socket, access)?;
    // An override that ended while netd was not running ends first (not seen as drift), then
    // whatever drifted meanwhile is repaired.
    daemon.override_expiry().await;
    daemon.check().await;
    daemon.deadline().await;
    tokio::spawn(daemon.clone().background(interval));
    let (d, rt) = (daemon.clone(), tokio::runtime::Handle::current());
    let spawned = std::thread::Builder::new().name("link-events".into()).spawn(move || {
        let clock = d.clock();
        watch_links(
            &d,
            || KernelLinkEvents::open().map(|e| Box::new(e) as Box<dyn LinkEvents>),
            |wait| rt.block_on(clock.sleep(wait)),
        );
    });
    if let Err(e) = spawned {
        daemon.failed(LINK_EVENTS, format!("netd cannot start its link-event thread: {e}"));
    }
    let hb = daemon.heartbeat();
    notify::spawn_watchdog(move || {
        let fresh = hb.fresh(LOOP_STALE);
        async move { fresh }
    });
    notify::ready();
    info!(socket = %socket.display(), "netd is serving");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(NetdServer::new(daemon.clone()))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    let signal = tokio::select! {
        r = &mut server => return r.map_err(Error::Serve),
        s = signal::shutdown() => s,
    };
    info!(signal, "netd is stopping; the network stays as it is");
    notify::stopping();
    daemon.stop();
    let _ = stop_tx.send(());
    let served = match tokio::time::timeout(GRACE, server).await {
        Ok(r) => r.map_err(Error::Serve),
        Err(_) => {
            warn!("requests were still running {GRACE:?} after {signal}: stopping anyway");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&socket);
    served
}

/// A client of a running netd on `socket`.
pub async fn client(
    socket: PathBuf,
) -> Result<backroom_api::netd::netd_client::NetdClient<tonic::transport::Channel>, Error> {
    let ch = backroom_daemon::socket::connect(&socket).await?;
    Ok(backroom_api::netd::netd_client::NetdClient::new(ch))
}

mod link_events;
mod overrides;
mod replies;
#[cfg(test)]
mod tests;

pub use link_events::{KernelLinkEvents, LinkEvents, watch_links};
pub use replies::{attach_reply, observe_reply};
