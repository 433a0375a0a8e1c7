//! The node-facing service: enrollment, certificate renewal and the session stream.
//!
//! A node is who its certificate says (CN = store id), and only while that certificate is the
//! one central last issued to the store (a re-enrollment revokes the old one). It can read only
//! its own desired state and write only its own status and events.

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
use backroom_session::pki::{self, CertInfo};
use backroom_session::token::EnrollToken;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{App, StatusJson};
use crate::db::{NewEvent, SessionUpdate};

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

/// The store a request comes from, from its client certificate, if that certificate is current.
async fn identify<T>(app: &App, req: &Request<T>) -> Result<CertInfo, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("this call needs the node's certificate (mTLS); enroll first")
    })?;
    let first = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let info = pki::cert_info(first).map_err(|e| Status::unauthenticated(e.to_string()))?;
    let current =
        app.db.certificate_is_current(&info.common_name, &info.serial).await.map_err(internal)?;
    if !current {
        return Err(Status::unauthenticated(format!(
            "this certificate of store `{}` was revoked (the store enrolled again, or renewed it)",
            info.common_name
        )));
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
        let (store, region) = app
            .db
            .consume_enroll_token(&token.secret_hash(), now)
            .await
            .map_err(internal)?
            .map_err(|refusal| Status::permission_denied(refusal.to_string()))?;
        if store != token.store_id {
            return Err(Status::permission_denied("the token does not belong to this store"));
        }
        let issued = app
            .ca
            .sign_node(&r.csr_pem, &store, now, app.settings.node_cert_days)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let revoked = app
            .db
            .set_certificate(&store, Some(&region), &issued.serial, issued.not_after_ms, now, true)
            .await
            .map_err(internal)?;
        let detail = match &revoked {
            Some(old) => format!(
                "store {store} enrolled from host {:?}; certificate {old} revoked",
                r.hostname
            ),
            None => format!("store {store} enrolled from host {:?}", r.hostname),
        };
        tracing::info!("{detail}");
        app.audit(&format!("node:{store}"), "enroll", &detail).await;
        Ok(Response::new(EnrollReply {
            store_id: store,
            certificate_pem: issued.cert_pem,
            ca_pem: app.ca.cert_pem().to_string(),
        }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewReply>, Status> {
        let app = &self.app;
        let who = identify(app, &req).await?;
        let now = app.now_ms();
        let issued = app
            .ca
            .sign_node(&req.get_ref().csr_pem, &who.common_name, now, app.settings.node_cert_days)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        app.db
            .set_certificate(
                &who.common_name,
                None,
                &issued.serial,
                issued.not_after_ms,
                now,
                false,
            )
            .await
            .map_err(internal)?;
        app.audit(
            &format!("node:{}", who.common_name),
            "renew",
            &format!("certificate {} replaced", who.serial),
        )
        .await;
        Ok(Response::new(RenewReply { certificate_pem: issued.cert_pem }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<NodeMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let app = Arc::clone(&self.app);
        let who = identify(&app, &req).await?;
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
        let (tx, rx) = mpsc::channel(256);
        let now = app.now_ms();
        let (sid, quiet) = app.hub.register(&store, tx.clone(), now);
        app.db.set_online(&store, true, now).await.map_err(internal)?;
        tracing::info!(store = %store, agent = %hello.agent_version, "session opened");
        let welcome = Welcome {
            acked_event_seq: row.acked_seq,
            heartbeat_seconds: app.settings.heartbeat_seconds,
        };
        let _ = tx.send(Ok(CentralMessage { body: Some(CBody::Welcome(welcome)) })).await;
        // What the node does not have yet: its desired revision, and commands that waited.
        if !row.desired_revision.is_empty()
            && row.desired_revision != hello.desired_revision
            && let Some(yaml) =
                app.db.revision_yaml(&store, &row.desired_revision).await.map_err(internal)?
        {
            let d = Desired { revision: row.desired_revision.clone(), profile_yaml: yaml };
            let _ = tx.send(Ok(CentralMessage { body: Some(CBody::Desired(d)) })).await;
        }
        for c in app.db.queued_commands(&store, now).await.map_err(internal)? {
            let msg = Command {
                id: c.id.clone(),
                kind: c.kind.clone(),
                workload: c.workload.clone(),
                expires_unix_ms: c.expires_ms,
            };
            if tx.send(Ok(CentralMessage { body: Some(CBody::Command(msg)) })).await.is_ok() {
                app.db.set_command_state(&c.id, "sent", "", 0).await.map_err(internal)?;
            }
        }
        tokio::spawn(read_session(app, store, sid, quiet, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Reads a session until it ends, central stops, or the background job finds it quiet for
/// too long (`Hub::close_quiet`, on central's clock).
async fn read_session(
    app: Arc<App>,
    store: String,
    sid: u64,
    quiet: Arc<tokio::sync::Notify>,
    mut inbound: Streaming<NodeMessage>,
    tx: mpsc::Sender<Result<CentralMessage, Status>>,
) {
    let mut stopping = app.stopping.subscribe();
    loop {
        let next = tokio::select! {
            m = inbound.message() => m,
            _ = quiet.notified() => {
                tracing::warn!(store = %store, "no heartbeat: closing the session");
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
            Some(NBody::CommandResult(r)) => {
                let state = if r.ok { "done" } else { "failed" };
                app.db
                    .set_command_state(&r.id, state, &r.message, now)
                    .await
                    .map_err(|e| backroom_daemon::chain(&e))
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
    if app.hub.unregister(&store, sid) {
        let seen = app.now_ms();
        if let Err(e) = app.db.set_online(&store, false, seen).await {
            tracing::error!(store = %store, error = %backroom_daemon::Chain(&e), "could not record the store offline");
        }
        tracing::info!(store = %store, "session closed");
    }
}
