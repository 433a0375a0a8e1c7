//! The node-facing service: enrollment, certificate renewal and the session stream.
//!
//! A node is who its certificate says (CN = store id), and only while that certificate is one
//! central accepts for the store: the current one, or the one of its last renewal (which then
//! becomes current: the old one stays good until the new one is first used, so a renewal whose
//! reply was lost costs nothing). Re-enrolling or revoking the store revokes both. Time is
//! judged here, on central's clock: an expired certificate may still call `Renew` within the
//! grace period (revocation still wins), and nothing else. A node can read only its own
//! desired state and write only its own status, events and command results.
//!
//! Each enrollment gives the store a new console secret (issue 12), sent in the enrollment's
//! reply and in every session's welcome; a store enrolled before console codes gets one at its
//! next session.
//!
//! A session is returned at once; its welcome, desired revision and queued commands follow
//! from a task of their own, as the stream drains, so a long queue cannot stall the call.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backroom_api::node::central_message::Body as CBody;
use backroom_api::node::node_message::Body as NBody;
use backroom_api::node::node_service_server::NodeService;
use backroom_api::node::{
    CentralMessage, Command, Desired, EnrollReply, EnrollRequest, EventAck, HeartbeatAck,
    NodeMessage, RenewReply, RenewRequest, Welcome,
};
use backroom_session::console_code::Secret;
use backroom_session::pki::{self, CertInfo};
use backroom_session::token::EnrollToken;
use futures::StreamExt as _;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{App, StatusJson};
use crate::ca::Ca;
use crate::db::{AuditEntry, CertUse, Enrollment, NewEvent, SessionUpdate};

pub struct NodeSvc {
    app: Arc<App>,
}

impl NodeSvc {
    pub fn new(app: Arc<App>) -> Self {
        NodeSvc { app }
    }
}

fn internal(e: impl std::error::Error + 'static) -> Status {
    let e = backroom_daemon::chain(&e);
    tracing::error!(error = %e, "node service");
    Status::internal(format!("central could not do that: {e}"))
}

/// What a call with the node's certificate is for: time is judged differently.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Session,
    Renew,
}

/// Why the session of a store ends when its certificates are revoked.
pub const REVOKED: &str = "this store's certificate was revoked; the node must enroll again";

/// The store a request comes from, from its client certificate, if central accepts that
/// certificate for `purpose` now.
async fn identify<T>(app: &App, req: &Request<T>, purpose: Purpose) -> Result<CertInfo, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("this call needs the node's certificate (mTLS); enroll first")
    })?;
    let first = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let info = pki::cert_info(first).map_err(|e| Status::unauthenticated(e.to_string()))?;
    let store = &info.common_name;
    let now = app.now_ms();
    // Revocation first: a revoked certificate is refused however fresh it is.
    match app.db.use_certificate(store, &info.serial, now).await.map_err(internal)? {
        CertUse::Current => {}
        CertUse::Promoted { replaced } => {
            tracing::info!(store = %store, "the store uses its renewed certificate");
            app.audit(
                &format!("node:{store}"),
                "renewed-certificate-used",
                &format!("certificate {} in use; certificate {replaced} revoked", info.serial),
            )
            .await;
        }
        CertUse::NotCurrent => {
            return Err(Status::unauthenticated(format!(
                "this certificate of store `{store}` is not valid any more: it was revoked, or \
                 replaced by a newer enrollment (give the node a new enrollment token: \
                 centralctl token create --store {store})"
            )));
        }
    }
    if now >= info.not_after_ms {
        let expired = backroom_daemon::clock::rfc3339(info.not_after_ms);
        let grace_ms = i64::from(app.settings.renew_grace_days) * 86_400_000;
        return match purpose {
            Purpose::Session => Err(Status::failed_precondition(format!(
                "the certificate of store `{store}` expired at {expired}: renew it first"
            ))),
            Purpose::Renew if now - info.not_after_ms <= grace_ms => Ok(info),
            Purpose::Renew => Err(Status::unauthenticated(format!(
                "the certificate of store `{store}` expired at {expired}, more than {} days ago \
                 (how long an expired certificate may still be renewed): give the node a new \
                 enrollment token (centralctl token create --store {store})",
                app.settings.renew_grace_days
            ))),
        };
    }
    Ok(info)
}

type SessionStream = Pin<Box<dyn futures::Stream<Item = Result<CentralMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeSvc {
    async fn enroll(&self, req: Request<EnrollRequest>) -> Result<Response<EnrollReply>, Status> {
        let app = &self.app;
        let r = req.into_inner();
        let token =
            EnrollToken::parse(&r.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if token.ca_fingerprint != app.ca.fingerprint() {
            return Err(Status::permission_denied(
                "this token was made by another central (its CA differs)",
            ));
        }
        let now = app.now_ms();
        let key = Ca::request_key_fingerprint(&r.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let hash = token.secret_hash();
        // A look first (nothing changes), so a refused token costs no signature.
        let grant = app
            .db
            .check_enroll_token(&hash, &key, now)
            .await
            .map_err(internal)?
            .map_err(|refusal| Status::permission_denied(refusal.to_string()))?;
        if grant.store_id != token.store_id {
            return Err(Status::permission_denied("the token does not belong to this store"));
        }
        let store = grant.store_id;
        let issued = app
            .ca
            .sign_node(&r.csr_pem, &store, now, app.settings.node_cert_days)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A new console secret each time: whoever held the store's server before (a replaced or
        // stolen one) cannot check codes for the new one. A retry after a lost reply makes
        // another, which is the one the node then keeps.
        let console_secret = Secret::generate();
        let console_secret_hex = hex::encode(console_secret.as_bytes());
        // The token is used in the very transaction that records the certificate: a call cut
        // off before it leaves the token as it was; one cut off after may be retried by the
        // same key.
        let (grant, revoked) = app
            .db
            .enroll_store(&Enrollment {
                token_hash: &hash,
                key_fingerprint: &key,
                serial: &issued.serial,
                not_after_ms: issued.not_after_ms,
                now_ms: now,
                console_secret_hex: &console_secret_hex,
            })
            .await
            .map_err(internal)?
            .map_err(|refusal| Status::permission_denied(refusal.to_string()))?;
        // The session of a certificate just revoked ends now, not at its next call.
        app.hub.close(&store, REVOKED);
        let mut detail = format!("store {store} enrolled from host {:?}", r.hostname);
        if grant.retry {
            detail.push_str(" (the same key again: the reply before was lost)");
        }
        if !revoked.is_empty() {
            detail.push_str(&format!("; certificate {} revoked", revoked.join(", ")));
        }
        tracing::info!("{detail}");
        app.audit(&format!("node:{store}"), "enroll", &detail).await;
        Ok(Response::new(EnrollReply {
            store_id: store,
            certificate_pem: issued.cert_pem,
            ca_pem: app.ca.cert_pem().to_string(),
            console_secret: console_secret.as_bytes().to_vec(),
        }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewReply>, Status> {
        let app = &self.app;
        let who = identify(app, &req, Purpose::Renew).await?;
        let now = app.now_ms();
        let issued = app
            .ca
            .sign_node(&req.get_ref().csr_pem, &who.common_name, now, app.settings.node_cert_days)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let unused = app
            .db
            .record_renewal(&who.common_name, &issued.serial, issued.not_after_ms, now)
            .await
            .map_err(internal)?;
        let mut detail = format!(
            "certificate {} issued to replace {} once it is used",
            issued.serial, who.serial
        );
        if let Some(u) = unused {
            detail
                .push_str(&format!("; certificate {u} of an earlier renewal, never used, revoked"));
        }
        app.audit(&format!("node:{}", who.common_name), "renew", &detail).await;
        Ok(Response::new(RenewReply { certificate_pem: issued.cert_pem }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<NodeMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let app = Arc::clone(&self.app);
        let who = identify(&app, &req, Purpose::Session).await?;
        let store = who.common_name;
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(15), inbound.message()).await {
            Ok(Ok(Some(NodeMessage { body: Some(NBody::Hello(h)) }))) => h,
            _ => return Err(Status::invalid_argument("a session starts with hello")),
        };
        if hello.store_id != store {
            return Err(Status::permission_denied(format!(
                "this node's certificate is for store `{store}`; it cannot speak for `{}`",
                hello.store_id
            )));
        }
        let row = app
            .db
            .get_store(&store)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found("unknown store"))?;
        if hello.next_event_seq <= row.acked_seq {
            // The node numbers below what central has: its outbox state was lost or it is a
            // replacement server. It numbers what it holds again after the welcome; said here
            // so it is not silent.
            tracing::warn!(
                store = %store,
                node_next = hello.next_event_seq,
                central_has = row.acked_seq,
                "the node's event numbering is behind central's; it renumbers its events"
            );
        }
        let (tx, rx) = mpsc::channel(256);
        let now = app.now_ms();
        let handle = app.hub.register(&store, tx.clone(), &who.serial, now);
        app.db.set_online(&store, true, now).await.map_err(internal)?;
        tracing::info!(store = %store, agent = %hello.agent_version, "session opened");
        let console_secret = console_secret_for(&app, &store).await?;
        let welcome = Welcome {
            acked_event_seq: row.acked_seq,
            heartbeat_seconds: app.settings.heartbeat_seconds,
            console_secret,
        };
        // What the node does not have yet: its desired revision.
        let desired =
            if !row.desired_revision.is_empty() && row.desired_revision != hello.desired_revision {
                app.db.revision_yaml(&store, &row.desired_revision).await.map_err(internal)?.map(
                    |yaml| Desired { revision: row.desired_revision.clone(), profile_yaml: yaml },
                )
            } else {
                None
            };
        tokio::spawn(deliver(
            Arc::clone(&app),
            store.clone(),
            welcome,
            desired,
            handle.closed.clone(),
            Arc::clone(&handle.wake),
            tx.clone(),
        ));
        // The stream ends with a status saying why when the session is told to close (a newer
        // session, a revocation), whoever still holds a sender.
        let mut closed = handle.closed.clone();
        let ended = futures::stream::once(async move {
            closed.wait_for(|c| c.is_some()).await.ok().and_then(|r| r.clone())
        })
        .filter_map(|why| async move { why.map(|w| Err(Status::aborted(w))) });
        tokio::spawn(read_session(app, store, row.acked_seq, handle, inbound, tx));
        let stream = futures::stream::select(ReceiverStream::new(rx), ended);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The store's console secret for its welcome, made now if it has none (enrolled before
/// console codes). One stored that does not decode (never written so) is logged and not sent:
/// the session does not depend on it, and the node keeps the copy it has.
async fn console_secret_for(app: &App, store: &str) -> Result<Vec<u8>, Status> {
    let fresh = hex::encode(Secret::generate().as_bytes());
    let hex_secret = app.db.ensure_console_secret(store, &fresh).await.map_err(internal)?;
    if hex_secret == fresh {
        tracing::info!(store = %store, "the store had no console secret: made one");
        let entry = AuditEntry::new(
            &format!("node:{store}"),
            "console-secret",
            store,
            "console secret made at session start (the store enrolled before console codes)",
        );
        if let Err(e) = app.db.write_audit(&entry, app.now_ms()).await {
            tracing::error!(error = %backroom_daemon::Chain(&e), "could not write the audit trail");
        }
    }
    match hex::decode(&hex_secret).ok().and_then(|b| Secret::from_bytes(&b).ok()) {
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => {
            tracing::error!(store = %store, "the console secret stored for this store is not 32 bytes of hex; not sent");
            Ok(Vec::new())
        }
    }
}

/// Completes when the session is to end (told to, or unregistered).
async fn ended(closed: &mut watch::Receiver<Option<String>>) {
    let _ = closed.wait_for(|c| c.is_some()).await;
}

/// Sends a session's welcome and desired revision, then every command queued for the store,
/// and more whenever it is woken, until the session ends. A command stays `queued` until the
/// node acknowledges it; one pushed twice (in two sessions) the node runs once.
async fn deliver(
    app: Arc<App>,
    store: String,
    welcome: Welcome,
    desired: Option<Desired>,
    mut closed: watch::Receiver<Option<String>>,
    wake: Arc<Notify>,
    tx: mpsc::Sender<Result<CentralMessage, Status>>,
) {
    let first = std::iter::once(CBody::Welcome(welcome)).chain(desired.map(CBody::Desired));
    for body in first {
        tokio::select! {
            r = tx.send(Ok(CentralMessage { body: Some(body) })) => if r.is_err() { return },
            _ = ended(&mut closed) => return,
        }
    }
    let mut pushed: HashSet<String> = HashSet::new();
    loop {
        // Registered before the queue is read, so a command queued in between is not missed.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let queued = match app.db.queued_commands(&store, app.now_ms()).await {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(store = %store, error = %backroom_daemon::Chain(&e), "cannot read the store's queued commands");
                Vec::new()
            }
        };
        for c in queued {
            if pushed.contains(&c.id) {
                continue;
            }
            let msg = Command {
                id: c.id.clone(),
                kind: c.kind.clone(),
                workload: c.workload.clone(),
                expires_unix_ms: c.expires_ms,
            };
            tokio::select! {
                r = tx.send(Ok(CentralMessage { body: Some(CBody::Command(msg)) })) => if r.is_err() { return },
                _ = ended(&mut closed) => return,
            }
            pushed.insert(c.id);
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = ended(&mut closed) => return,
        }
    }
}

/// Reads a session until it ends, central stops, a newer session or a revocation closes it,
/// or the background job finds it quiet for too long (`Hub::close_quiet`, on central's clock).
async fn read_session(
    app: Arc<App>,
    store: String,
    welcome_acked: u64,
    handle: crate::hub::SessionHandle,
    mut inbound: Streaming<NodeMessage>,
    tx: mpsc::Sender<Result<CentralMessage, Status>>,
) {
    let mut stopping = app.stopping.subscribe();
    let mut closed = handle.closed.clone();
    // Commands the node acknowledged in this session and has not answered yet.
    let mut unanswered: HashSet<String> = HashSet::new();
    loop {
        let next = tokio::select! {
            m = inbound.message() => m,
            _ = handle.quiet.notified() => {
                tracing::warn!(store = %store, "no heartbeat: closing the session");
                break;
            }
            why = closed.wait_for(|c| c.is_some()) => {
                let why = why.ok().and_then(|w| w.clone()).unwrap_or_default();
                tracing::info!(store = %store, %why, "session closed by central");
                break;
            }
            _ = stopping.wait_for(|s| *s) => break,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::info!(store = %store, error = %backroom_daemon::Chain(&e), "session broke");
                break;
            }
        };
        let now = app.now_ms();
        app.hub.seen(&store, now);
        // Bounded before anything is stored (central::limits): strings cut, counts capped.
        let mut cuts = crate::limits::Cuts::default();
        let mut left_out = 0;
        let mut body = msg.body;
        match body.as_mut() {
            Some(NBody::Status(s)) => crate::limits::bound_status(s, &mut cuts),
            Some(NBody::Events(b)) => {
                left_out = crate::limits::bound_batch(&mut b.events, &mut cuts)
            }
            Some(NBody::CommandResult(r)) => crate::limits::cut(
                &mut r.message,
                crate::limits::MAX_TEXT_BYTES,
                "command result",
                &mut cuts,
            ),
            _ => {}
        }
        if !cuts.is_empty() {
            tracing::warn!(store = %store, fields = %cuts.fields(), "the node sent more than central keeps: cut to its limits");
        }
        let result = match body {
            Some(NBody::Status(s)) => {
                let last = s.last_apply.clone().unwrap_or_default();
                let json = serde_json::to_string(&StatusJson::from_proto(&s)).unwrap_or_default();
                let ok = last.ok || last.revision.is_empty();
                app.db
                    .update_session(&SessionUpdate {
                        store_id: &store,
                        online: true,
                        now_ms: now,
                        agent_version: &s.agent_version,
                        applied_revision: &s.applied_revision,
                        status_json: &json,
                        last_apply_ok: ok,
                        last_apply_message: &last.message,
                    })
                    .await
                    .map_err(|e| backroom_daemon::chain(&e))
            }
            Some(NBody::Events(batch)) => {
                // Within a session the node sends only what is above the welcome's number;
                // one at or below it reuses a number central has, and would be dropped as a
                // duplicate: say so rather than drop it silently.
                let reused = batch.events.iter().filter(|e| e.seq <= welcome_acked).count();
                if reused > 0 {
                    tracing::error!(
                        store = %store,
                        events = reused,
                        central_has = welcome_acked,
                        "the node sent events numbered at or below what central has; they are not stored"
                    );
                }
                let events: Vec<NewEvent> = batch
                    .events
                    .into_iter()
                    .map(|e| NewEvent {
                        store_id: store.clone(),
                        seq: e.seq,
                        at_ms: e.at_unix_ms,
                        kind: e.kind,
                        workload: e.workload,
                        message: e.message,
                        subject: e.subject,
                    })
                    .collect();
                match app.ingest.submit(events).await {
                    Ok(seq) => {
                        let ack = CentralMessage {
                            body: Some(CBody::EventAck(EventAck { acked_event_seq: seq })),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                        if left_out > 0 {
                            // The node sends what follows its ack on the next session.
                            tracing::warn!(store = %store, left_out, "an event batch held more than {} events: stored that many, closing the session so the node sends the rest", crate::limits::MAX_EVENTS_PER_BATCH);
                            break;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Some(NBody::CommandAck(a)) => match app.db.ack_command(&a.id, &store).await {
                Ok(true) => {
                    unanswered.insert(a.id);
                    Ok(())
                }
                // Sent before (pushed twice), or not this store's: nothing to record.
                Ok(false) => Ok(()),
                Err(e) => Err(backroom_daemon::chain(&e)),
            },
            Some(NBody::CommandResult(r)) => {
                match app.db.finish_command(&r.id, &store, r.ok, &r.message, now).await {
                    Ok(true) => {
                        unanswered.remove(&r.id);
                        Ok(())
                    }
                    Ok(false) => {
                        tracing::warn!(
                            store = %store,
                            command = %r.id,
                            "a result for a command that is not this store's, or not waiting: ignored"
                        );
                        Ok(())
                    }
                    Err(e) => Err(backroom_daemon::chain(&e)),
                }
            }
            Some(NBody::Heartbeat(_)) => {
                let ack = CentralMessage {
                    body: Some(CBody::HeartbeatAck(HeartbeatAck { at_unix_ms: now })),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
                Ok(())
            }
            Some(NBody::Hello(_)) | None => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(store = %store, error = %e, "could not record what the node sent; closing the session so it sends again");
            break;
        }
    }
    // Acknowledged, never answered: queued again for the next session (or expired).
    if !unanswered.is_empty() {
        let ids: Vec<String> = unanswered.into_iter().collect();
        match app.db.requeue_unfinished_commands(Some((&store, &ids)), app.now_ms()).await {
            Ok(n) if n > 0 => {
                tracing::info!(store = %store, commands = n, "unanswered commands are queued again");
                // A newer session of the store may be up already: it looks again.
                app.hub.wake(&store);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(store = %store, error = %backroom_daemon::Chain(&e), "could not queue unanswered commands again")
            }
        }
    }
    if app.hub.unregister(&store, handle.id) {
        let seen = app.now_ms();
        if let Err(e) = app.db.set_online(&store, false, seen).await {
            tracing::error!(store = %store, error = %backroom_daemon::Chain(&e), "could not record the store offline");
        }
        tracing::info!(store = %store, "session closed");
    }
}
