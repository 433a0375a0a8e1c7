//! A real central (in this process, on loopback ports) and real nodes' links to it.

#![allow(dead_code, clippy::unwrap_used)]

pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backroom_api::node::central_message::Body as CBody;
pub use backroom_api::node::node_message::Body as NBody;
use backroom_api::node::node_service_client::NodeServiceClient;
use backroom_api::node::{CentralMessage, CommandResult, Event, Hello, NodeMessage, Status};
use backroom_api::operator::CreateEnrollTokenRequest;
use backroom_central::app::Settings;
use backroom_central::client::{self, Client};
use backroom_central::server::{Running, ServeConfig, serve};
use backroom_daemon::SharedClock;
use backroom_session::enroll::{Identity, enroll_once};
use backroom_session::link::{Inbound, Link, LinkConfig};
use backroom_session::outbox::{Limits, Outbox};
use backroom_session::token::EnrollToken;
use tokio::sync::{mpsc, watch};

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The settings the tests run central with: heartbeats every second, a session closed after
/// four quiet seconds.
pub fn test_settings() -> Settings {
    Settings { heartbeat_seconds: 1, session_timeout_ms: 4000, ..Settings::default() }
}

pub async fn start(
    data: &Path,
    clock: SharedClock,
    listen: SocketAddr,
    api: SocketAddr,
) -> Running {
    start_with(data, clock, listen, api, test_settings()).await
}

pub async fn start_with(
    data: &Path,
    clock: SharedClock,
    listen: SocketAddr,
    api: SocketAddr,
    settings: Settings,
) -> Running {
    start_cfg(test_config(data, listen, api, settings), clock).await
}

/// The configuration the tests run central with (change what a test needs, then `start_cfg`).
pub fn test_config(
    data: &Path,
    listen: SocketAddr,
    api: SocketAddr,
    settings: Settings,
) -> ServeConfig {
    let mut cfg = ServeConfig::new(data.to_path_buf(), listen, api);
    cfg.settings = settings;
    cfg.alert_interval = Duration::from_millis(200);
    cfg
}

pub async fn start_cfg(cfg: ServeConfig, clock: SharedClock) -> Running {
    serve(cfg, clock).await.unwrap()
}

/// An operator client with a new API token of `role`.
pub async fn with_role(c: &Running, admin: &mut Client, role: &str) -> Client {
    let token = admin
        .create_api_token(backroom_api::operator::CreateApiTokenRequest {
            name: format!("test {role}"),
            role: role.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    client::connect(&format!("https://{}", c.api), &c.ca_pem, &token).await.unwrap()
}

/// A session opened by hand: what a node (or someone with its key) can send, unfiltered.
pub struct RawSession {
    pub tx: mpsc::Sender<NodeMessage>,
    pub rx: tonic::Streaming<CentralMessage>,
}

impl RawSession {
    pub async fn open(c: &Running, id: &Identity) -> RawSession {
        Self::try_open(c, id, Hello { store_id: id.store_id.clone(), ..Default::default() })
            .await
            .unwrap()
    }

    /// Opens a session that starts with `hello`; central's refusal as an error.
    pub async fn try_open(
        c: &Running,
        id: &Identity,
        hello: Hello,
    ) -> Result<RawSession, tonic::Status> {
        let channel =
            backroom_session::tls::channel(&node_url(c), id.tls().unwrap(), false).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(NodeMessage { body: Some(NBody::Hello(hello)) }).await.unwrap();
        let mut rx = NodeServiceClient::new(channel)
            .max_encoding_message_size(64 << 20)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        match rx.message().await? {
            Some(CentralMessage { body: Some(CBody::Welcome(_)) }) => Ok(RawSession { tx, rx }),
            other => panic!("central did not start with a welcome: {other:?}"),
        }
    }

    pub async fn send(&self, body: NBody) {
        self.tx.send(NodeMessage { body: Some(body) }).await.unwrap();
    }

    /// The next event ack, skipping other messages; None when central closed the session.
    pub async fn next_ack(&mut self) -> Option<u64> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.rx.message())
                .await
                .expect("central answers within 30 s");
            match m {
                Ok(Some(CentralMessage { body: Some(CBody::EventAck(a)) })) => {
                    return Some(a.acked_event_seq);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Whether central ends the session within `within` (skipping what it sends meanwhile).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.message()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => return true,
            }
        }
    }
}

pub fn event(seq: u64, kind: &str, workload: &str, message: &str) -> Event {
    Event {
        seq,
        at_unix_ms: 1,
        kind: kind.into(),
        workload: workload.into(),
        message: message.into(),
        subject: String::new(),
    }
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn admin(c: &Running, data: &Path) -> Client {
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    client::connect(&format!("https://{}", c.api), &c.ca_pem, &token).await.unwrap()
}

pub async fn token(admin: &mut Client, store: &str, ttl_seconds: u64) -> EnrollToken {
    let t = admin
        .create_enroll_token(CreateEnrollTokenRequest {
            store_id: store.into(),
            region: "us-west".into(),
            ttl_seconds,
            // Tests enroll replacement servers too (with the admin token).
            replace: true,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    EnrollToken::parse(&t).unwrap()
}

pub fn node_url(c: &Running) -> String {
    format!("https://{}", c.listen)
}

pub async fn enroll(c: &Running, admin: &mut Client, store: &str, dir: &Path) -> Identity {
    let t = token(admin, store, 3600).await;
    enroll_once(&node_url(c), &t, dir, "test-agent 1.0", "testhost").await.unwrap()
}

/// A node as far as central can tell: its link, its outbox, what central asked of it.
pub struct TestNode {
    pub outbox: Arc<Outbox>,
    pub status: watch::Sender<Status>,
    pub desired: Arc<Mutex<Vec<String>>>,
    pub commands: Arc<Mutex<Vec<(String, String)>>>,
    pub online: watch::Receiver<bool>,
    /// Why central refuses the node's certificate, while it does (and no token helps).
    pub refused: watch::Receiver<Option<String>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl TestNode {
    pub async fn wait_online(&mut self, want: bool) {
        tokio::time::timeout(Duration::from_secs(30), self.online.wait_for(|v| *v == want))
            .await
            .unwrap_or_else(|_| {
                panic!("the node did not become {}", if want { "online" } else { "offline" })
            })
            .unwrap();
    }
}

pub fn run_node(url: &str, id: Identity, dir: &Path, outbox: Arc<Outbox>) -> TestNode {
    run_node_on(url, id, dir, outbox, backroom_daemon::clock::system())
}

/// A node whose link keeps time on `clock` (a manual clock that never moves: no heartbeats).
pub fn run_node_on(
    url: &str,
    id: Identity,
    dir: &Path,
    outbox: Arc<Outbox>,
    clock: SharedClock,
) -> TestNode {
    run_node_with(url, id, dir, outbox, clock, |_| {})
}

/// [`run_node_on`] with the link's configuration changed by `f` (a token, say).
pub fn run_node_with(
    url: &str,
    id: Identity,
    dir: &Path,
    outbox: Arc<Outbox>,
    clock: SharedClock,
    f: impl FnOnce(&mut LinkConfig),
) -> TestNode {
    let (status, status_rx) =
        watch::channel(Status { agent_version: "test-agent 1.0".into(), ..Default::default() });
    let (tx, mut rx) = mpsc::channel(16);
    let mut cfg = LinkConfig::new(url, dir.to_path_buf(), "test-agent 1.0");
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(500);
    f(&mut cfg);
    let link = Link::with_clock(cfg, id, Arc::clone(&outbox), status_rx, tx, clock);
    let online = link.online();
    let refused = link.refused();
    let desired = Arc::new(Mutex::new(Vec::new()));
    let commands = Arc::new(Mutex::new(Vec::new()));
    let (d, c) = (Arc::clone(&desired), Arc::clone(&commands));
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            match msg {
                Inbound::Desired { revision, .. } => d.lock().unwrap().push(revision),
                Inbound::Command { command, reply } => {
                    c.lock().unwrap().push((command.kind.clone(), command.workload.clone()));
                    let _ = reply.send(CommandResult {
                        id: command.id,
                        ok: true,
                        message: "restarted".into(),
                    });
                }
            }
        }
    });
    let task = tokio::spawn(link.run());
    TestNode { outbox, status, desired, commands, online, refused, task }
}

pub fn mem_outbox() -> Arc<Outbox> {
    Arc::new(Outbox::in_memory(Limits::default()))
}

pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A session opened by hand with a node's identity: what it sends and what central answers,
/// message by message (an old server's session, another store's).
pub struct HandSession {
    pub tx: mpsc::Sender<backroom_api::node::NodeMessage>,
    pub rx: tonic::Streaming<backroom_api::node::CentralMessage>,
}

impl HandSession {
    /// Opens a session as `id` (hello included); central's first message is the welcome.
    pub async fn open(url: &str, id: &Identity) -> Result<HandSession, tonic::Status> {
        use backroom_api::node::node_message::Body;
        let channel = backroom_session::tls::channel(url, id.tls().unwrap(), false).await.unwrap();
        let (tx, rx) = mpsc::channel(64);
        tx.send(backroom_api::node::NodeMessage {
            body: Some(Body::Hello(backroom_api::node::Hello {
                store_id: id.store_id.clone(),
                agent_version: "raw".into(),
                next_event_seq: 1,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let rx = backroom_api::node::node_service_client::NodeServiceClient::new(channel)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(HandSession { tx, rx })
    }

    pub async fn send(&self, body: backroom_api::node::node_message::Body) -> bool {
        self.tx.send(backroom_api::node::NodeMessage { body: Some(body) }).await.is_ok()
    }

    /// Central's messages until the stream ends (within `within`): how it ended (`Ok` for a
    /// plain end), or `None` if it did not end.
    pub async fn ended_within(&mut self, within: Duration) -> Option<Result<(), tonic::Status>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.message()).await {
                Err(_) => return None,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Some(Ok(())),
                Ok(Err(s)) => return Some(Err(s)),
            }
        }
    }

    /// The next message of central, within `within`.
    pub async fn next(
        &mut self,
        within: Duration,
    ) -> Option<backroom_api::node::central_message::Body> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Ok(Ok(Some(m))) => m.body,
            _ => None,
        }
    }
}
