//! nodeagent connected to central: enrollment, the session, the durable event outbox, status
//! reports, central's desired revisions (applied with a fall back to the last-known-good one)
//! and commands.
//!
//! The session itself is the `backroom-session` crate; this module joins it to the engine:
//! engine events → outbox, engine status → status reports, desired revisions → the apply
//! supervisor, commands → engine calls. When central is unreachable nothing here stops the
//! store: the engine keeps running, restarting and probing on its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backroom_api::node::{ApplyResult, Command, CommandResult, Status as PbStatus, WorkloadStatus};
use backroom_daemon::{Backoff, Chain, SharedClock};
use backroom_session::enroll::{self, Identity};
use backroom_session::link::{Inbound, Link, LinkConfig};
use backroom_session::outbox::{Limits, Outbox};
use backroom_session::token::EnrollToken;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, watch};

use crate::engine::{ConfirmGate, EngineHandle, Status};
use crate::error::Error;
use crate::store::{Store, save};

#[derive(Debug, thiserror::Error)]
pub enum ConnectedError {
    #[error(
        "this node has not enrolled with central yet: give it an enrollment token (--token or --token-file)"
    )]
    NoToken,
    #[error(transparent)]
    Token(#[from] backroom_session::token::BadToken),
    #[error(transparent)]
    Enroll(#[from] enroll::EnrollError),
    #[error(transparent)]
    Outbox(#[from] backroom_session::outbox::OutboxError),
    #[error("cannot open the state folder")]
    State(#[source] Error),
    /// The identity file did not read (a power cut, a garbled disk) and was set aside: only a
    /// new enrollment brings the node back. `then` says what the token given did, if any.
    #[error(
        "identity file unreadable, set aside as {}; enroll again with a new token{}",
        kept_as.display(),
        then.as_deref().map(|t| format!(" ({t})")).unwrap_or_default()
    )]
    IdentityUnreadable { kept_as: PathBuf, then: Option<String> },
}

/// Why a command from central was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the command expired before it reached the node")]
    Expired,
    #[error("this node does not know the command `{0}`")]
    Unknown(String),
    #[error("this node has no last-known-good revision yet")]
    NoLastKnownGood,
    #[error("the desired revision is not on this node")]
    NotStored(#[source] Error),
    #[error(transparent)]
    Engine(#[from] Error),
}

#[derive(Clone)]
pub struct CentralOptions {
    /// central's node endpoint, e.g. `https://central.example:7443`.
    pub url: String,
    pub token: Option<String>,
    /// nodeagent's state folder; the link keeps its files in `<state>/central/`.
    pub state_dir: PathBuf,
    pub agent_version: String,
    /// How long a new revision has to become healthy before the node goes back to its
    /// last-known-good revision.
    pub apply_deadline: Duration,
    pub outbox_limits: Limits,
    /// Below this share of free space on the state folder's filesystem, a `disk_low` event.
    pub disk_low_percent: u8,
    /// Event times, the apply deadline, command expiry and retry delays read this clock.
    pub clock: SharedClock,
}

impl std::fmt::Debug for CentralOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CentralOptions")
            .field("url", &self.url)
            .field("state_dir", &self.state_dir)
            .field("apply_deadline", &self.apply_deadline)
            .finish_non_exhaustive()
    }
}

/// The link with central in facts, for the recovery console.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub url: String,
    pub store_id: String,
    /// When the link entered its current state (online or offline), unix ms.
    pub since_ms: i64,
    /// Why the last session failed ("" before any failure).
    pub error: String,
}

fn central_dir(state: &Path) -> PathBuf {
    state.join("central")
}

/// Whether this node holds a usable identity from central: it has enrolled and needs no token.
pub fn enrolled(state_dir: &Path) -> bool {
    matches!(Identity::load(&central_dir(state_dir)), Ok(Some(_)))
}

/// Where the store's console secret is kept (issue 12): `<state>/central/console.key`, written
/// by the session crate at enrollment and whenever central's welcome brings a new one. The
/// console reads it to check codes with no WAN.
pub fn console_secret_path(state_dir: &Path) -> PathBuf {
    enroll::console_secret_path(&central_dir(state_dir))
}

/// Enrolls once (retrying while central cannot be reached or the call is cut off: a store
/// plugged in before its WAN works enrolls when it does), then returns the node's identity.
/// Only a refusal (the token is wrong, used, expired or revoked) stops it.
pub async fn identity(opts: &CentralOptions) -> Result<Identity, ConnectedError> {
    let dir = central_dir(&opts.state_dir);
    match Identity::load(&dir) {
        Ok(Some(id)) => return Ok(id),
        Ok(None) => {}
        // Unusable (garbled by a power cut, say): set aside, so that it is not read again at
        // every start, and a token replaces it.
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "the node's identity cannot be used");
            Identity::set_aside(&dir, opts.clock.now_unix(), backroom_daemon::chain(&e));
        }
    }
    // Set aside now or at an earlier start, and never replaced: that is what the node says.
    let unreadable = |then: Option<String>| {
        Identity::set_aside_copy(&dir)
            .map(|kept_as| ConnectedError::IdentityUnreadable { kept_as, then })
    };
    // A token typed at the recovery console (it set the old identity aside) comes first.
    let kept = dir.join(crate::console::REENROLL_TOKEN);
    let from_console = std::fs::read_to_string(&kept).ok().map(|t| t.trim().to_string());
    let Some(token) = from_console.as_deref().or(opts.token.as_deref()) else {
        return Err(unreadable(None).unwrap_or(ConnectedError::NoToken));
    };
    let token = EnrollToken::parse(token)?;
    let host = hostname();
    // Jittered: thousands of stores plugged in after one outage do not all ask at once.
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(0.25);
    let id = enroll::enroll_with_retries(
        &opts.url,
        &token,
        &dir,
        &opts.agent_version,
        &host,
        &opts.clock,
        backoff,
    )
    .await
    .map_err(|e| match unreadable(Some(backroom_daemon::chain(&e))) {
        Some(u) => u,
        None => e.into(),
    })?;
    tracing::info!(store = %id.store_id, "enrolled with central");
    let _ = std::fs::remove_file(&kept);
    Ok(id)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

/// A confirm gate that says yes once central has answered after the change.
pub fn confirm_gate(contact: watch::Receiver<i64>) -> ConfirmGate {
    Arc::new(move |since_ms: u64, window: Duration| {
        let mut contact = contact.clone();
        let since = i64::try_from(since_ms).unwrap_or(i64::MAX);
        Box::pin(async move {
            // Leave netd time to restore the network itself if the answer never comes.
            let wait = window.saturating_sub(Duration::from_secs(5));
            tokio::time::timeout(wait, contact.wait_for(|t| *t > since))
                .await
                .is_ok_and(|r| r.is_ok())
        })
    })
}

/// What the node last heard from central about its desired revision, and how applying it went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CentralDesired {
    pub(crate) revision: String,
    /// applying | applied | failed
    pub(crate) state: String,
    pub(crate) message: String,
    pub(crate) rolled_back_to: String,
}

struct Supervisor {
    engine: EngineHandle,
    store: Store,
    dir: PathBuf,
    deadline: Duration,
    outbox: Arc<Outbox>,
    desired: Mutex<CentralDesired>,
    report: watch::Sender<CentralDesired>,
    clock: SharedClock,
}

impl Supervisor {
    fn file(&self) -> PathBuf {
        self.dir.join("desired.json")
    }

    async fn set(&self, d: CentralDesired) {
        let written = serde_json::to_vec(&d)
            .map_err(|source| Error::Encode { what: "central's desired revision".into(), source })
            .and_then(|bytes| save(&self.file(), &bytes));
        if let Err(e) = written {
            tracing::error!(error = %Chain(&e), "cannot keep central's desired revision on disk");
        }
        *self.desired.lock().await = d.clone();
        self.report.send_replace(d);
    }

    fn event(&self, kind: &str, workload: &str, message: String) {
        tracing::info!(kind, workload, "{message}");
        if let Err(e) = self.outbox.push(self.clock.now_ms(), kind, workload, "", &message) {
            tracing::error!(error = %Chain(&e), "cannot record an event");
        }
    }

    /// Applies a revision from central; on failure goes back to the last-known-good one.
    async fn apply(&self, revision: String, yaml: String) {
        let short = revision.get(..12).unwrap_or(&revision).to_string();
        self.set(CentralDesired {
            revision: revision.clone(),
            state: "applying".into(),
            ..Default::default()
        })
        .await;
        let rendered = match backroom_profiles::render_str(&format!("central-{short}.yaml"), &yaml)
        {
            Ok(r) if r.revision.as_str() == revision => r,
            Ok(r) => {
                return self
                    .failed(
                        &revision,
                        format!(
                            "central's profile is revision {}, not {short}",
                            r.revision.short()
                        ),
                    )
                    .await;
            }
            Err(e) => {
                let why = format!("the profile does not validate: {}", backroom_daemon::chain(&e));
                return self.failed(&revision, why).await;
            }
        };
        let before = match self.engine.status().await {
            Ok(s) => s,
            Err(e) => return self.failed(&revision, backroom_daemon::chain(&e)).await,
        };
        if let Err(e) = self.engine.apply(rendered, "central".into()).await {
            return self.failed(&revision, backroom_daemon::chain(&e)).await;
        }
        let started = self.clock.now_ms();
        let deadline_ms = i64::try_from(self.deadline.as_millis()).unwrap_or(i64::MAX);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.desired.lock().await.revision != revision {
                return; // a newer revision took over
            }
            let Ok(s) = self.engine.status().await else { continue };
            if s.last_known_good == revision {
                self.event("apply_done", "", format!("revision {short} is applied and healthy"));
                self.set(CentralDesired {
                    revision,
                    state: "applied".into(),
                    ..Default::default()
                })
                .await;
                return;
            }
            if s.desired != revision {
                return; // someone (nodectl apply, rollback) changed course
            }
            if let Some(why) = hard_failure(&s) {
                return self.failed_with_rollback(&revision, why, &before).await;
            }
            if self.clock.now_ms().saturating_sub(started) > deadline_ms {
                let why = format!("not healthy within {:?}: {}", self.deadline, not_ready(&s));
                return self.failed_with_rollback(&revision, why, &before).await;
            }
        }
    }

    async fn failed_with_rollback(&self, revision: &str, why: String, before: &Status) {
        let lkg = before.last_known_good.clone();
        if lkg.is_empty() || lkg == revision {
            return self
                .failed(
                    revision,
                    format!("{why}; there is no last-known-good revision to go back to"),
                )
                .await;
        }
        match self.store.load_revision(&lkg) {
            Ok(r) => match self.engine.apply(r, "rollback to last-known-good".into()).await {
                Ok(_) => {
                    let msg = format!(
                        "{why}; went back to the last-known-good revision {}",
                        lkg.get(..12).unwrap_or(&lkg)
                    );
                    self.set(CentralDesired {
                        revision: revision.into(),
                        state: "failed".into(),
                        message: msg.clone(),
                        rolled_back_to: lkg,
                    })
                    .await;
                    self.event(
                        "apply_failed",
                        "",
                        format!("revision {}: {msg}", revision.get(..12).unwrap_or(revision)),
                    );
                }
                Err(e) => {
                    let e = backroom_daemon::chain(&e);
                    self.failed(revision, format!("{why}; going back to {lkg} failed too: {e}"))
                        .await
                }
            },
            Err(e) => {
                let e = backroom_daemon::chain(&e);
                self.failed(
                    revision,
                    format!("{why}; the last-known-good revision cannot be read: {e}"),
                )
                .await
            }
        }
    }

    async fn failed(&self, revision: &str, message: String) {
        self.event(
            "apply_failed",
            "",
            format!("revision {}: {message}", revision.get(..12).unwrap_or(revision)),
        );
        self.set(CentralDesired {
            revision: revision.into(),
            state: "failed".into(),
            message,
            rolled_back_to: String::new(),
        })
        .await;
    }

    /// `rollback` command: the last-known-good revision, now.
    async fn rollback(&self) -> Result<String, CommandError> {
        let s = self.engine.status().await?;
        if s.last_known_good.is_empty() {
            return Err(CommandError::NoLastKnownGood);
        }
        if s.desired == s.last_known_good {
            return Ok(format!(
                "already on the last-known-good revision {}",
                short(&s.last_known_good)
            ));
        }
        let r = self.store.load_revision(&s.last_known_good)?;
        self.engine.apply(r, "rollback command".into()).await?;
        Ok(format!("back on the last-known-good revision {}", short(&s.last_known_good)))
    }
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

/// A failure that waiting will not fix: netd or vmd refused the revision, or a workload is
/// failed (crash loop, bad image, update rolled back).
fn hard_failure(s: &Status) -> Option<String> {
    if let Some(e) = s.network.strip_prefix("failed: ") {
        return Some(format!("the network failed: {e}"));
    }
    if let Some(e) = s.vms.strip_prefix("failed: ") {
        return Some(format!("the VMs failed: {e}"));
    }
    let failed: Vec<String> = s
        .workloads
        .iter()
        .filter(|w| w.state == "failed")
        .map(|w| format!("{} failed: {}", w.name, w.reason))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

fn not_ready(s: &Status) -> String {
    let list: Vec<String> = s
        .workloads
        .iter()
        .filter(|w| !healthy(&w.state, &w.health))
        .map(|w| {
            if w.reason.is_empty() {
                format!("{} {}", w.name, w.state)
            } else {
                format!("{} {}: {}", w.name, w.state, w.reason)
            }
        })
        .collect();
    if list.is_empty() { format!("network {}", s.network) } else { list.join("; ") }
}

fn healthy(state: &str, health: &str) -> bool {
    state == "running" && health != "unhealthy"
}

/// The status report central gets.
fn report(s: &Status, d: &CentralDesired, agent_version: &str) -> PbStatus {
    PbStatus {
        problems: s.problems.iter().map(|p| p.to_pb()).collect(),
        applied_revision: s.applied.clone(),
        desired_revision: d.revision.clone(),
        last_apply: (!d.revision.is_empty()).then(|| ApplyResult {
            revision: d.revision.clone(),
            ok: d.state != "failed",
            message: if d.state == "applying" { "applying".into() } else { d.message.clone() },
            rolled_back_to: d.rolled_back_to.clone(),
        }),
        workloads: s
            .workloads
            .iter()
            .map(|w| WorkloadStatus {
                name: w.name.clone(),
                kind: w.kind.clone(),
                state: w.state.clone(),
                healthy: healthy(&w.state, &w.health),
                since_unix_ms: i64::try_from(w.since_ms).unwrap_or(0),
                restarts: w.restarts,
                reason: w.reason.clone(),
                addresses: w.addresses.clone(),
            })
            .collect(),
        agent_version: agent_version.to_string(),
        at_unix_ms: 0,
    }
}

/// An engine event as central's event kinds (see the proto's `Event.kind`).
fn central_kind(kind: &str, message: &str, last_state: Option<&str>) -> Option<String> {
    Some(match kind {
        "health" if message.contains(" is unhealthy") => "workload_unhealthy".into(),
        "health" if message.contains(" is healthy") => "workload_recovered".into(),
        "exit" => "workload_crashed".into(),
        "action" if message.starts_with("restart") => "workload_restarted".into(),
        "state" if message.starts_with("failed: crash loop") => "crash_loop".into(),
        "state"
            if message.starts_with("running")
                && matches!(last_state, Some("failed" | "backoff")) =>
        {
            "workload_recovered".into()
        }
        "vm" => match message.split(':').next().unwrap_or_default() {
            "crashed" => "workload_crashed".into(),
            "restarted" => "workload_restarted".into(),
            other => format!("vm_{other}"),
        },
        "revision" => "revision".into(),
        // A problem opens or closes (its subject goes with it).
        "failing" | "recovered" => kind.into(),
        "netd" if message.starts_with("drift_repaired") => "drift_repaired".into(),
        // The console's uplink override: set, kept, ended, expired, rolled back by netd.
        "netd" if message.starts_with("override_") => {
            format!("uplink_{}", message.split(':').next().unwrap_or_default())
        }
        // What was done at the store's recovery console (see `console`).
        "console_unlocked" | "console_refused" | "console_action" => kind.into(),
        // The A/B update of the store OS (see `os`).
        k if k.starts_with("os_update_") => kind.into(),
        // Everything else stays on the node (nodectl shows it).
        _ => return None,
    })
}

/// Sends the engine's events that central cares about to the outbox, with their subject
/// (a problem's `failing` and `recovered` name what fails), until the engine stops.
pub fn feed_outbox(
    engine: &EngineHandle,
    ob: Arc<Outbox>,
    clock: SharedClock,
) -> tokio::task::JoinHandle<()> {
    // What the engine told before this feed started (a state file set aside at start, say)
    // reaches central too.
    let (backlog, mut events) = engine.subscribe_with_backlog();
    tokio::spawn(async move {
        let mut last: std::collections::HashMap<String, String> = Default::default();
        let mut backlog = backlog.into_iter();
        loop {
            let next = match backlog.next() {
                Some(e) => Ok(e),
                None => events.recv().await,
            };
            match next {
                Ok(e) => {
                    let state = e.message.split(':').next().unwrap_or_default().to_string();
                    let kind = central_kind(
                        &e.kind,
                        &e.message,
                        last.get(&e.workload).map(String::as_str),
                    );
                    if e.kind == "state" {
                        last.insert(e.workload.clone(), state);
                    }
                    if let Some(kind) = kind
                        && let Err(err) = ob.push(
                            i64::try_from(e.at_ms).unwrap_or(0),
                            &kind,
                            &e.workload,
                            &e.subject,
                            &e.message,
                        )
                    {
                        tracing::error!(error = %Chain(&err), "cannot record an event");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let msg = format!("{n} node events were lost before they reached the outbox");
                    if let Err(err) = ob.push(clock.now_ms(), "events_dropped", "", "", &msg) {
                        tracing::error!(error = %Chain(&err), "cannot record an event");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Starts the link with central in the background: enrollment (if needed), then the session
/// for as long as the process lives. `state` tells nodectl how the link is; `contact` feeds the
/// confirm gate. A refused enrollment leaves the node running standalone and says why.
pub fn spawn(
    opts: CentralOptions,
    engine: EngineHandle,
    state: watch::Sender<String>,
    contact: watch::Sender<i64>,
    link: Linked,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        state.send_replace(format!("enrolling with central at {}", opts.url));
        let id = match identity(&opts).await {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %Chain(&e), "not connected to central");
                state.send_replace(format!("not enrolled: {}", backroom_daemon::chain(&e)));
                return;
            }
        };
        if let Err(e) = run(opts, id, engine, state.clone(), contact, link).await {
            tracing::error!(error = %Chain(&e), "the link with central stopped");
            state.send_replace(format!("stopped: {}", backroom_daemon::chain(&e)));
        }
    })
}

/// What the recovery console shares with the link: its facts, and commands the console asks
/// for that central's own executor runs (rollback, reconcile).
pub struct Linked {
    pub info: watch::Sender<LinkInfo>,
    pub local: mpsc::Receiver<Inbound>,
}

async fn run(
    opts: CentralOptions,
    id: Identity,
    engine: EngineHandle,
    state: watch::Sender<String>,
    link_contact: watch::Sender<i64>,
    linked: Linked,
) -> Result<(), ConnectedError> {
    let Linked { info, local: mut local_rx } = linked;
    let dir = central_dir(&opts.state_dir);
    let outbox = Arc::new(Outbox::open(&dir.join("outbox"), opts.outbox_limits)?);
    // Unreadable: set aside; central sends its desired revision again at the session's start.
    let (saved, _): (CentralDesired, _) = backroom_daemon::fs::load_or_set_aside(
        &dir.join("desired.json"),
        opts.clock.now_unix(),
        |b| serde_json::from_slice(b),
    )
    .or_default();
    let (report_tx, report_rx) = watch::channel(saved.clone());
    let store = Store::open(&opts.state_dir).map_err(ConnectedError::State)?;
    let sup = Arc::new(Supervisor {
        engine: engine.clone(),
        store,
        dir: dir.clone(),
        deadline: opts.apply_deadline,
        outbox: Arc::clone(&outbox),
        desired: Mutex::new(saved.clone()),
        report: report_tx,
        clock: opts.clock.clone(),
    });
    // nodeagent died while applying: watch that revision through again.
    if saved.state == "applying"
        && let Ok(r) = sup.store.load_revision(&saved.revision)
    {
        let s = Arc::clone(&sup);
        let rev = saved.revision.clone();
        let span = tracing::info_span!("central", revision = %short(&rev));
        tokio::spawn(tracing::Instrument::instrument(
            async move { s.apply(rev, r.to_yaml()).await },
            span,
        ));
    }

    // Engine events → outbox.
    feed_outbox(&engine, Arc::clone(&outbox), opts.clock.clone());

    // Disk space.
    let ob = Arc::clone(&outbox);
    let state_dir = opts.state_dir.clone();
    let threshold = u64::from(opts.disk_low_percent);
    let clock = opts.clock.clone();
    tokio::spawn(async move {
        let mut low = false;
        loop {
            if let Ok(st) = rustix::fs::statvfs(&state_dir) {
                let free = st.f_bavail.saturating_mul(100) / st.f_blocks.max(1);
                if free < threshold && !low {
                    let msg = format!("{free}% free on the filesystem of {}", state_dir.display());
                    if let Err(err) = ob.push(clock.now_ms(), "disk_low", "", "", &msg) {
                        tracing::error!(error = %Chain(&err), "cannot record an event");
                    }
                }
                low = free < threshold;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });

    // Engine status → status reports, on change.
    let first =
        engine.status().await.map(|s| report(&s, &saved, &opts.agent_version)).unwrap_or_default();
    let (status_tx, status_rx) = watch::channel(first);
    let e2 = engine.clone();
    let version = opts.agent_version.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let Ok(s) = e2.status().await else { continue };
            let d = report_rx.borrow().clone();
            let r = report(&s, &d, &version);
            status_tx.send_if_modified(|cur| {
                if *cur == r {
                    false
                } else {
                    *cur = r;
                    true
                }
            });
        }
    });

    // Central's requests.
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(16);
    let id_store = id.store_id.clone();
    let mut link_cfg = LinkConfig::new(&opts.url, dir.clone(), &opts.agent_version);
    // Used again only if central refuses this identity (revoked, replaced, expired for good).
    link_cfg.token = opts.token.as_deref().and_then(|t| EnrollToken::parse(t).ok());
    link_cfg.hostname = hostname();
    let in_tx_for_console = in_tx.clone();
    let link = Link::new(link_cfg, id, Arc::clone(&outbox), status_rx, in_tx);
    let mut contact = link.contact();
    tokio::spawn(async move {
        while contact.changed().await.is_ok() {
            let t = *contact.borrow();
            link_contact.send_replace(t);
        }
    });
    let mut online = link.online();
    let mut refused = link.refused();
    let mut last_error = link.last_error();
    // The console's commands go the way central's do.
    let local_tx = in_tx_for_console.clone();
    tokio::spawn(async move {
        while let Some(m) = local_rx.recv().await {
            if local_tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let store_id = id_store.clone();
    let url = opts.url.clone();
    let clock = opts.clock.clone();
    tokio::spawn(async move {
        state.send_replace(format!("connecting to {url} as {store_id}"));
        let (mut was_up, mut since) = (false, clock.now_ms());
        let tell = |since_ms: i64, error: String| {
            info.send_replace(LinkInfo {
                url: url.clone(),
                store_id: store_id.clone(),
                since_ms,
                error,
            });
        };
        tell(since, String::new());
        loop {
            tokio::select! {
                c = online.changed() => if c.is_err() { return },
                c = refused.changed() => if c.is_err() { return },
                c = last_error.changed() => if c.is_err() { return },
            }
            let up = *online.borrow();
            let why = refused.borrow().clone();
            if was_up != up {
                since = clock.now_ms();
            }
            was_up = up;
            tell(since, if up { String::new() } else { last_error.borrow().clone() });
            state.send_replace(match (up, why) {
                (true, _) => format!("online ({store_id} at {url})"),
                (false, Some(why)) => format!("refused by central: {why}"),
                (false, None) => format!(
                    "offline since {} (reconnecting, the store keeps running)",
                    backroom_daemon::clock::rfc3339(since)
                ),
            });
        }
    });
    tokio::spawn(link.run());
    let mut current: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(msg) = in_rx.recv().await {
        match msg {
            Inbound::Desired { revision, profile_yaml } => {
                if sup.desired.lock().await.revision == revision {
                    continue;
                }
                if let Some(t) = current.take() {
                    t.abort();
                }
                let s = Arc::clone(&sup);
                let span = tracing::info_span!("central", revision = %short(&revision));
                current = Some(tokio::spawn(tracing::Instrument::instrument(
                    async move { s.apply(revision, profile_yaml).await },
                    span,
                )));
            }
            Inbound::Command { command, reply } => {
                let r = execute(&sup, &engine, &command, &mut current).await;
                let (ok, message) = match r {
                    Ok(m) => (true, m),
                    Err(e) => {
                        tracing::warn!(command = %command.kind, error = %Chain(&e), "a command from central failed");
                        (false, backroom_daemon::chain(&e))
                    }
                };
                let _ = reply.send(CommandResult { id: command.id, ok, message });
            }
        }
    }
    Ok(())
}

async fn execute(
    sup: &Arc<Supervisor>,
    engine: &EngineHandle,
    c: &Command,
    current: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<String, CommandError> {
    if c.expires_unix_ms != 0 && c.expires_unix_ms < sup.clock.now_ms() {
        return Err(CommandError::Expired);
    }
    match c.kind.as_str() {
        "restart" => Ok(engine.restart(&c.workload).await?),
        // Try central's desired revision again (after a fix elsewhere, say).
        "reconcile" => {
            let d = sup.desired.lock().await.clone();
            if d.revision.is_empty() {
                return Ok(
                    "no revision from central yet; the node keeps reconciling what it runs".into()
                );
            }
            let yaml =
                sup.store.load_revision(&d.revision).map_err(CommandError::NotStored)?.to_yaml();
            if let Some(t) = current.take() {
                t.abort();
            }
            let s = Arc::clone(sup);
            let rev = d.revision.clone();
            *current = Some(tokio::spawn(async move {
                s.desired.lock().await.revision.clear();
                s.apply(rev, yaml).await
            }));
            Ok(format!("applying revision {} again", short(&d.revision)))
        }
        "rollback" => sup.rollback().await,
        other => Err(CommandError::Unknown(other.to_string())),
    }
}

#[cfg(test)]
#[path = "connected_tests.rs"]
mod tests;
