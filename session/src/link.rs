//! The session loop: one long-lived stream to central, for as long as the node lives.
//!
//! Hello (identity, applied and desired revisions, next event sequence) → Welcome (what central
//! already has) → then, both ways at once: status on change, heartbeats, events from the outbox
//! (removed only when central acks them), and central's desired revisions and commands, handed
//! to the node through a channel. On any loss the loop reconnects with jittered exponential
//! backoff, with no limit on how long the node stays offline; the store keeps trading meanwhile.
//!
//! Commands are acknowledged as they arrive (central marks them sent only then) and remembered
//! by id, so one that comes again after a broken session is not run twice: the node answers
//! with the result it has, or waits for the run under way. When central refuses the node's
//! certificate (revoked, replaced, expired past the grace period), the link enrolls again with
//! the token it was given, if that is one it has not used; otherwise it says so
//! ([`Link::refused`]) and keeps trying, slowly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backroom_daemon::{Backoff, Chain, SharedClock};

use backroom_api::node::central_message::Body as CBody;
use backroom_api::node::node_message::Body as NBody;
use backroom_api::node::node_service_client::NodeServiceClient;
use backroom_api::node::{
    Command, CommandAck, CommandResult, Event, EventBatch, Heartbeat, Hello, NodeMessage, Status,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::enroll::{self, Identity};
use crate::outbox::Outbox;
use crate::tls;
use crate::token::EnrollToken;

/// What central asks of the node.
#[derive(Debug)]
pub enum Inbound {
    /// A new desired revision: validate, persist, reconcile, then report through status.
    Desired { revision: String, profile_yaml: String },
    /// A command; answer on `reply`.
    Command { command: Command, reply: oneshot::Sender<CommandResult> },
}

#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// central's node endpoint, e.g. `https://central.example:7443`.
    pub url: String,
    /// Where the node keeps its identity (key, certificate, CA).
    pub state_dir: PathBuf,
    pub agent_version: String,
    /// The reconnect delay after the first failure, doubling up to `backoff_max`, each one
    /// spread by ±25 % so thousands of stores do not reconnect in step after an outage.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Events per message.
    pub batch: usize,
    /// The enrollment token the node was given, if any: used again only when central refuses
    /// the node's certificate, and only if it is not the token that identity came from.
    pub token: Option<EnrollToken>,
    /// The host name sent with such an enrollment.
    pub hostname: String,
}

impl LinkConfig {
    pub fn new(url: &str, state_dir: PathBuf, agent_version: &str) -> Self {
        LinkConfig {
            url: url.to_string(),
            state_dir,
            agent_version: agent_version.to_string(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            batch: 500,
            token: None,
            hostname: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("central closed the session: {0}")]
    Refused(String),
    #[error("the session with central broke: {0}")]
    Broken(String),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    /// Central does not accept the node's certificate (revoked, replaced, unknown, expired
    /// past the grace period): only an enrollment helps.
    #[error("central refuses this node's certificate: {0}")]
    IdentityRefused(String),
    /// The certificate has expired: renew before the next session.
    #[error("central wants a renewed certificate first: {0}")]
    Expired(String),
}

impl LinkError {
    /// How central refused a session, as a gRPC status.
    fn from_status(s: &tonic::Status) -> LinkError {
        match s.code() {
            tonic::Code::Unauthenticated => LinkError::IdentityRefused(s.message().to_string()),
            tonic::Code::FailedPrecondition => LinkError::Expired(s.message().to_string()),
            _ => LinkError::Refused(s.message().to_string()),
        }
    }
}

/// Commands this node has seen, by id, with their result once there is one: a command
/// central sends again (its session broke before the result arrived) is answered from here
/// instead of being run twice.
#[derive(Default)]
struct CommandMemory {
    results: HashMap<String, Option<CommandResult>>,
    order: VecDeque<String>,
}

/// How many commands the node remembers (central queues at most a thousand per store).
const REMEMBERED_COMMANDS: usize = 4096;

impl CommandMemory {
    fn get(&self, id: &str) -> Option<&Option<CommandResult>> {
        self.results.get(id)
    }

    fn started(&mut self, id: &str) {
        if self.results.insert(id.to_string(), None).is_none() {
            self.order.push_back(id.to_string());
        }
        while self.order.len() > REMEMBERED_COMMANDS {
            if let Some(old) = self.order.pop_front() {
                self.results.remove(&old);
            }
        }
    }

    fn finished(&mut self, r: &CommandResult) {
        if let Some(slot) = self.results.get_mut(&r.id) {
            *slot = Some(r.clone());
        }
    }
}

/// The node's side of the link. Build it, then `run` it in its own task.
pub struct Link {
    cfg: LinkConfig,
    identity: Identity,
    outbox: Arc<Outbox>,
    status: watch::Receiver<Status>,
    inbound: mpsc::Sender<Inbound>,
    online: watch::Sender<bool>,
    contact: watch::Sender<i64>,
    refused: watch::Sender<Option<String>>,
    last_error: watch::Sender<String>,
    commands: Arc<Mutex<CommandMemory>>,
    /// Hashes of tokens an enrollment was refused with: not tried again.
    tried_tokens: HashSet<String>,
    /// Central said the certificate expired: renew before the next session, whatever the
    /// node's own clock says.
    renew_now: bool,
    clock: SharedClock,
}

/// A session that lasted this long was a working one: the next failure backs off from the
/// start again.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// How often a running session checks whether its certificate is due for renewal.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

impl Link {
    /// The link on the system clock.
    pub fn new(
        cfg: LinkConfig,
        identity: Identity,
        outbox: Arc<Outbox>,
        status: watch::Receiver<Status>,
        inbound: mpsc::Sender<Inbound>,
    ) -> Self {
        Self::with_clock(cfg, identity, outbox, status, inbound, backroom_daemon::clock::system())
    }

    /// [`Link::new`] on `clock`: heartbeats, backoff, renewal and contact times read it.
    pub fn with_clock(
        cfg: LinkConfig,
        identity: Identity,
        outbox: Arc<Outbox>,
        status: watch::Receiver<Status>,
        inbound: mpsc::Sender<Inbound>,
        clock: SharedClock,
    ) -> Self {
        Link {
            cfg,
            identity,
            outbox,
            status,
            inbound,
            online: watch::Sender::new(false),
            contact: watch::Sender::new(0),
            refused: watch::Sender::new(None),
            last_error: watch::Sender::new(String::new()),
            commands: Arc::new(Mutex::new(CommandMemory::default())),
            tried_tokens: HashSet::new(),
            renew_now: false,
            clock,
        }
    }

    /// The reconnect backoff of `cfg`.
    pub fn backoff(cfg: &LinkConfig) -> Backoff {
        Backoff::new(cfg.backoff_min, cfg.backoff_max).with_jitter(0.25)
    }

    /// Whether a session is up right now.
    pub fn online(&self) -> watch::Receiver<bool> {
        self.online.subscribe()
    }

    /// When central last said anything to this node (unix ms): a heartbeat answered proves the
    /// path works right now.
    pub fn contact(&self) -> watch::Receiver<i64> {
        self.contact.subscribe()
    }

    /// Why central refuses this node's certificate, while it does and the node has no token
    /// it could enroll with (`None` otherwise): what nodectl shows the technician.
    /// Why the last session could not be opened or ended ("" before any failure): the
    /// recovery console names the layer (DNS, TCP, TLS, certificate) from it.
    pub fn last_error(&self) -> watch::Receiver<String> {
        self.last_error.subscribe()
    }

    pub fn refused(&self) -> watch::Receiver<Option<String>> {
        self.refused.subscribe()
    }

    /// Keeps the console secret a welcome brings when it is new or changed (a store enrolled
    /// before console codes, a file lost or garbled). A failure to write is logged and tried
    /// again at the next welcome: the session does not depend on it.
    fn keep_console_secret(&mut self, bytes: &[u8]) {
        let Some(secret) = enroll::console_secret_from(bytes) else { return };
        if self.identity.console_secret.as_ref() == Some(&secret)
            && enroll::console_secret_path(&self.cfg.state_dir).exists()
        {
            return;
        }
        match enroll::save_console_secret(&self.cfg.state_dir, &secret) {
            Ok(()) => {
                tracing::info!(store = %self.identity.store_id, "console secret from central kept");
                self.identity.console_secret = Some(secret);
            }
            Err(e) => tracing::error!(error = %Chain(&e), "cannot keep the console secret"),
        }
    }

    /// Keeps a session open forever; returns only if the node's side (the inbound channel) is gone.
    pub async fn run(mut self) {
        let mut retries = Self::backoff(&self.cfg).retries();
        let healthy = i64::try_from(HEALTHY_SESSION.as_millis()).unwrap_or(i64::MAX);
        loop {
            let started = self.clock.now_ms();
            match self.session().await {
                Ok(()) => return,
                Err(LinkError::IdentityRefused(why)) => {
                    if self.enroll_again(&why).await {
                        // A new identity: try it at once.
                        continue;
                    }
                }
                Err(LinkError::Expired(why)) => {
                    tracing::warn!(%why, "central says the node certificate expired; renewing");
                    self.renew_now = true;
                }
                Err(e) => {
                    self.last_error.send_replace(backroom_daemon::chain(&e));
                    tracing::warn!(
                        error = %Chain(&e),
                        "no session with central; the store keeps running"
                    )
                }
            }
            self.online.send_replace(false);
            if self.clock.now_ms() - started > healthy {
                retries.reset();
            }
            let delay = retries.fail();
            self.clock.sleep(delay).await;
        }
    }

    /// Central refuses the node's identity: enrolls with the token the node was given, unless
    /// that token made this identity or was refused before. True if the node has a new one.
    async fn enroll_again(&mut self, why: &str) -> bool {
        let token = self.cfg.token.clone().filter(|t| {
            let hash = t.secret_hash();
            hash != self.identity.enrolled_with && !self.tried_tokens.contains(&hash)
        });
        let Some(token) = token else {
            tracing::error!(
                %why,
                "central refuses this node's certificate; it needs a new enrollment token"
            );
            self.refused.send_replace(Some(format!(
                "{why}; give the node a new enrollment token (centralctl token create)"
            )));
            return false;
        };
        tracing::warn!(%why, "central refuses this node's certificate; enrolling again with the token given");
        let dir = self.cfg.state_dir.clone();
        match enroll::enroll_into(
            &self.cfg.url,
            &token,
            &dir,
            &self.cfg.agent_version,
            &self.cfg.hostname,
        )
        .await
        {
            Ok(id) => {
                tracing::info!(store = %id.store_id, "enrolled again with central");
                self.identity = id;
                self.refused.send_replace(None);
                true
            }
            Err(e) => {
                if !e.is_transient() {
                    self.tried_tokens.insert(token.secret_hash());
                }
                tracing::error!(error = %Chain(&e), "could not enroll again");
                self.refused.send_replace(Some(format!(
                    "{why}; enrolling again failed: {}",
                    backroom_daemon::chain(&e)
                )));
                false
            }
        }
    }

    async fn renew_if_due(&mut self) -> Result<(), LinkError> {
        if !self.renew_now && !self.identity.needs_renewal(self.clock.now_ms()) {
            return Ok(());
        }
        match enroll::renew(&self.cfg.url, &self.identity, &self.cfg.state_dir).await {
            Ok(id) => {
                tracing::info!(until_ms = id.not_after_ms, "node certificate renewed");
                self.identity = id;
                self.renew_now = false;
                Ok(())
            }
            Err(enroll::EnrollError::IdentityRefused(why)) => Err(LinkError::IdentityRefused(why)),
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "could not renew the node certificate yet");
                Ok(())
            }
        }
    }

    /// One session, until it breaks. `Ok` only when the node itself went away.
    async fn session(&mut self) -> Result<(), LinkError> {
        self.renew_if_due().await?;
        let channel = tls::channel(&self.cfg.url, self.identity.tls()?, false).await?;
        let (tx, rx) = mpsc::channel::<NodeMessage>(256);
        let send = |tx: &mpsc::Sender<NodeMessage>, body: NBody| {
            let tx = tx.clone();
            async move {
                tx.send(NodeMessage { body: Some(body) })
                    .await
                    .map_err(|_| LinkError::Broken("send".into()))
            }
        };
        let snapshot = self.status.borrow().clone();
        send(
            &tx,
            NBody::Hello(Hello {
                store_id: self.identity.store_id.clone(),
                agent_version: self.cfg.agent_version.clone(),
                applied_revision: snapshot.applied_revision.clone(),
                desired_revision: snapshot.desired_revision.clone(),
                next_event_seq: self.outbox.next_seq(),
            }),
        )
        .await?;
        // Both ends' limits are set in one place (backroom_api::limits): central refuses at push
        // a profile bigger than what is decoded here.
        let mut incoming = NodeServiceClient::new(channel)
            .max_decoding_message_size(backroom_api::limits::CENTRAL_MESSAGE_MAX)
            .max_encoding_message_size(backroom_api::limits::NODE_MESSAGE_MAX)
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|s| LinkError::from_status(&s))?
            .into_inner();
        let welcome = match incoming.next().await {
            Some(Ok(m)) => match m.body {
                Some(CBody::Welcome(w)) => w,
                _ => return Err(LinkError::Broken("central did not start with a welcome".into())),
            },
            Some(Err(s)) => return Err(LinkError::from_status(&s)),
            None => return Err(LinkError::Broken("central closed the session at once".into())),
        };
        // What central has settles the outbox's numbering (and acknowledges what it holds).
        self.outbox.resume(welcome.acked_event_seq)?;
        self.keep_console_secret(&welcome.console_secret);
        self.refused.send_replace(None);
        self.online.send_replace(true);
        self.contact.send_replace(self.clock.now_ms());
        tracing::info!(store = %self.identity.store_id, "session with central up");
        let mut last_sent = welcome.acked_event_seq.max(self.outbox.acked());
        let first_status = self.status.borrow_and_update().clone();
        send(&tx, NBody::Status(first_status)).await?;
        let every = Duration::from_secs(u64::from(welcome.heartbeat_seconds.clamp(1, 3600)));
        let clock = Arc::clone(&self.clock);
        let mut heartbeat = clock.sleep(every);
        // A session can last longer than a certificate: renew while it runs, not only between.
        let mut renewal = clock.sleep(RENEWAL_CHECK);
        let outbox = Arc::clone(&self.outbox);
        loop {
            // Registered before the outbox is read, so a push in between is not missed.
            let pushed = outbox.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            // Send what the outbox holds, a window at a time.
            let in_flight = last_sent.saturating_sub(outbox.acked());
            if in_flight < (self.cfg.batch as u64) * 4 {
                let events = outbox.unsent_after(last_sent, self.cfg.batch);
                if let Some(last) = events.last() {
                    last_sent = last.seq;
                    let events = events
                        .into_iter()
                        .map(|e| Event {
                            seq: e.seq,
                            at_unix_ms: e.at_ms,
                            kind: e.kind,
                            workload: e.workload,
                            message: e.message,
                            subject: e.subject,
                        })
                        .collect();
                    send(&tx, NBody::Events(EventBatch { events })).await?;
                    continue;
                }
            }
            tokio::select! {
                msg = incoming.next() => match msg {
                    Some(Ok(m)) => {
                    self.contact.send_replace(clock.now_ms());
                    match m.body {
                        Some(CBody::Desired(d)) => {
                            let ask = Inbound::Desired { revision: d.revision, profile_yaml: d.profile_yaml };
                            if self.inbound.send(ask).await.is_err() { return Ok(()); }
                        }
                        Some(CBody::Command(c)) => {
                            let id = c.id.clone();
                            send(&tx, NBody::CommandAck(CommandAck { id: id.clone() })).await?;
                            let seen = self.commands.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned();
                            match seen {
                                // Done before: the result, again (the last one was lost with its session).
                                Some(Some(result)) => {
                                    send(&tx, NBody::CommandResult(result)).await?;
                                    continue;
                                }
                                // Running: its result comes when it is done.
                                Some(None) => continue,
                                None => {}
                            }
                            self.commands.lock().unwrap_or_else(std::sync::PoisonError::into_inner).started(&id);
                            let (reply, answer) = oneshot::channel();
                            if self.inbound.send(Inbound::Command { command: c, reply }).await.is_err() { return Ok(()); }
                            let tx = tx.clone();
                            let memory = Arc::clone(&self.commands);
                            tokio::spawn(async move {
                                let result = answer.await.unwrap_or(CommandResult {
                                    id,
                                    ok: false,
                                    message: "the node dropped the command".into(),
                                });
                                memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner).finished(&result);
                                let _ = tx.send(NodeMessage { body: Some(NBody::CommandResult(result)) }).await;
                            });
                        }
                        Some(CBody::EventAck(a)) => outbox.ack(a.acked_event_seq)?,
                        Some(CBody::HeartbeatAck(_)) | Some(CBody::Welcome(_)) | None => {}
                    }
                    }
                    Some(Err(s)) => return Err(LinkError::Broken(s.message().to_string())),
                    None => return Err(LinkError::Broken("central ended the session".into())),
                },
                changed = self.status.changed() => {
                    if changed.is_err() { return Ok(()); }
                    let s = self.status.borrow_and_update().clone();
                    send(&tx, NBody::Status(s)).await?;
                }
                _ = &mut heartbeat => {
                    heartbeat = clock.sleep(every);
                    send(&tx, NBody::Heartbeat(Heartbeat { at_unix_ms: clock.now_ms() })).await?;
                }
                _ = &mut pushed => {}
                _ = &mut renewal => {
                    renewal = clock.sleep(RENEWAL_CHECK);
                    self.renew_if_due().await?;
                }
            }
        }
    }
}
