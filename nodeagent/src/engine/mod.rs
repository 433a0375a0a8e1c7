//! The engine: one actor that owns the desired revision and the workload records, runs the
//! reconcile step ([`crate::plan::plan`]) on every change and on a timer, carries the actions
//! out (long ones as tasks), probes health, handles exits, and publishes events.
//!
//! It also keeps the node's open problems ([`crate::problems`]): its own (a workload the
//! restart policy cannot start, an image that cannot be pulled, netd, vmd, containerd or
//! libvirtd not answering) and those netd and vmd report, whose event streams it follows
//! (`peers.rs`). Every `liveness_interval` it asks each daemon a cheap question (`alive.rs`),
//! and applies the desired state again to a netd or vmd that comes back.
//!
//! Every timestamp and every timing rule (backoff, crash loops, settle time, update deadlines,
//! image grace) reads the [`Config::clock`], so tests move time with a manual clock.
//!
//! The seam for the central session (issue 6): [`EngineHandle::apply`] hands in a rendered
//! revision, [`EngineHandle::status`] reads per-workload state, action results and problems,
//! and [`EngineHandle::subscribe`] streams [`Event`]s (an outbox can persist them).

mod actor;
mod alive;
mod dispatch;
mod observe;
pub mod ops;
mod peers;
mod view;

use std::path::PathBuf;
use std::time::Duration;

use backroom_daemon::SharedClock;
use backroom_profiles::Rendered;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use actor::Engine;
pub use view::{ActionResult, Event, Status, WorkloadView, derive_state};

use crate::error::{Error, Result};
use crate::liveness::Daemon;
use crate::logs::Logs;
use crate::probe::ProbeResult;
use crate::problems::{OpenProblem, PeerEvent, Source};
use crate::restart::Timing;
use crate::runtime::{Ended, Observed};
use crate::vms::VmState;

/// Decides whether to confirm a network change netd applied with commit-confirm: given when
/// the change was applied (unix ms) and how long netd waits, it resolves to true once the node
/// knows the change left it reachable (connected mode: central answered after the change).
pub type ConfirmGate = std::sync::Arc<
    dyn Fn(u64, Duration) -> futures::future::BoxFuture<'static, bool> + Send + Sync,
>;

/// The engine's settings.
#[derive(Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub volumes_dir: PathBuf,
    /// The host's resolv.conf, filtered into each container's (see [`crate::etc`]).
    pub resolv_conf: PathBuf,
    /// netd rolls the network back by itself unless confirmed within this many seconds
    /// (0: no confirmation asked).
    pub confirm_seconds: u32,
    /// Restart backoff and crash-loop rules.
    pub restart: Timing,
    /// A container without a health check counts as ready after running this long.
    pub settle_ms: u64,
    pub stop_grace: Duration,
    /// The reconcile timer.
    pub tick: Duration,
    /// How often containerd and vmd are asked what runs (drift, vanished containers).
    pub resync: Duration,
    /// Images no workload uses are deleted once older than this.
    pub image_grace_ms: u64,
    /// Retry delay of a failed network or VM apply.
    pub retry_ms: u64,
    /// How long to wait before listening to netd or vmd again after losing them (doubling).
    pub peer_retry: backroom_daemon::Backoff,
    /// How often netd, vmd (and through it libvirtd) and containerd are asked whether they
    /// answer ([`crate::liveness`]).
    pub liveness_interval: Duration,
    /// How long one of those questions may take before the daemon counts as not answering.
    pub liveness_timeout: Duration,
    /// Every timestamp and timing rule reads this clock.
    pub clock: SharedClock,
    /// With commit-confirm: when to confirm. `None`: at once, since nodeagent still reaches
    /// netd after the change (standalone mode).
    pub confirm_gate: Option<ConfirmGate>,
    /// This machine runs the Backroom store OS image (A/B slots): only then can a profile
    /// with `node.os` be applied ([`crate::os`]).
    pub store_os: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("state_dir", &self.state_dir)
            .field("confirm_seconds", &self.confirm_seconds)
            .field("confirm_gate", &self.confirm_gate.is_some())
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn new(state_dir: PathBuf, volumes_dir: PathBuf) -> Self {
        Config {
            state_dir,
            volumes_dir,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            confirm_seconds: 0,
            restart: Timing::default(),
            settle_ms: 2_000,
            stop_grace: Duration::from_secs(10),
            tick: Duration::from_secs(1),
            resync: Duration::from_secs(30),
            image_grace_ms: 24 * 3600 * 1000,
            retry_ms: 10_000,
            peer_retry: backroom_daemon::Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(30),
            ),
            liveness_interval: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(3),
            clock: backroom_daemon::clock::system(),
            confirm_gate: None,
            store_os: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub revision: String,
    pub changed: bool,
}

pub(crate) enum Msg {
    Apply {
        rendered: Box<Rendered>,
        source: String,
        reply: oneshot::Sender<Result<ApplyOutcome>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Restart {
        name: String,
        reply: oneshot::Sender<Result<String>>,
    },
    Import {
        path: PathBuf,
        reply: oneshot::Sender<Result<Vec<(String, String)>>>,
    },
    Exited {
        container_id: String,
        ended: Ended,
    },
    Probed {
        container_id: String,
        result: ProbeResult,
    },
    OpDone {
        workload: String,
        action: String,
        outcome: Box<ops::OpOutcome>,
    },
    NetworkDone {
        revision: String,
        result: Result<Vec<String>>,
    },
    VmsDone {
        revision: String,
        result: Result<Vec<String>>,
    },
    VmList(Result<Vec<VmState>>),
    Observed(Result<Vec<Observed>>),
    /// News from netd or vmd's event stream (see `peers.rs`).
    Peer {
        source: Source,
        news: PeerNews,
    },
    /// One round of liveness checks (see `alive.rs`).
    Alive(Vec<(Daemon, std::result::Result<(), NoAnswer>)>),
    Poke,
}

/// Why a daemon did not answer a liveness check.
#[derive(Clone, Debug)]
pub(crate) struct NoAnswer {
    /// The problem's sentence (`netd is not answering on …: …`).
    pub message: String,
    /// It said nothing within the timeout (rather than refusing or failing).
    pub timed_out: bool,
}

/// What the watcher of a peer daemon tells the engine.
pub(crate) enum PeerNews {
    /// (Re)connected; these are its problems open now.
    Up(Vec<OpenProblem>),
    /// Lost (or never reached), and why.
    Down(Error),
    Event(PeerEvent),
}

/// Events told before the first [`EngineHandle::subscribe_with_backlog`] (at most
/// [`BACKLOG_KEPT`]); `None` once taken.
pub(crate) type Backlog =
    std::sync::Arc<std::sync::Mutex<Option<std::collections::VecDeque<Event>>>>;

/// How many early events wait for the outbox (those at start: adoption, state files set aside).
pub(crate) const BACKLOG_KEPT: usize = 256;

/// A cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Msg>,
    events: broadcast::Sender<Event>,
    early: Backlog,
    logs: Logs,
}

impl EngineHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }

    /// Makes `rendered` the desired revision (admission checked, persisted, then reconciled).
    pub async fn apply(&self, rendered: Rendered, source: String) -> Result<ApplyOutcome> {
        self.ask(|reply| Msg::Apply { rendered: Box::new(rendered), source, reply }).await?
    }

    pub async fn status(&self) -> Result<Status> {
        self.ask(|reply| Msg::Status { reply }).await
    }

    pub async fn restart(&self, name: &str) -> Result<String> {
        self.ask(|reply| Msg::Restart { name: name.to_string(), reply }).await?
    }

    /// Imports an OCI archive; returns (image name, digest) of each image in it.
    pub async fn import(&self, path: PathBuf) -> Result<Vec<(String, String)>> {
        self.ask(|reply| Msg::Import { path, reply }).await?
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Tells an event that happened outside the engine (the recovery console's actions), to
    /// nodectl's followers and to the outbox, like the engine's own.
    pub fn publish(&self, at_ms: i64, workload: &str, kind: &str, message: String) {
        let ev = Event {
            at_ms: u64::try_from(at_ms).unwrap_or(0),
            workload: workload.to_string(),
            kind: kind.to_string(),
            message,
            subject: String::new(),
        };
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = early.as_mut()
            && b.len() < BACKLOG_KEPT
        {
            b.push_back(ev.clone());
        }
        let _ = self.events.send(ev);
    }

    /// Subscribes, and returns the events told before anyone asked for them (the first caller
    /// only: the outbox's feed, which may start long after the engine, once enrolled). None is
    /// in both.
    pub fn subscribe_with_backlog(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.events.subscribe();
        let backlog = early.take().map(Vec::from).unwrap_or_default();
        (backlog, rx)
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }
}
