//! `central serve`: open the data folder, then serve nodes (TLS; mTLS for everything after
//! enrollment) and operators (TLS + API tokens) until told to stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backroom_api::node::node_service_server::NodeServiceServer;
use backroom_api::operator::operator_server::OperatorServer;
use backroom_daemon::fs::write_atomic;
use backroom_daemon::{Chain, SharedClock};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::app::{App, Settings};
use crate::ca::Ca;
use crate::db::Db;
use crate::node_service::NodeSvc;
use crate::operator_service::{OperatorSvc, hash_api_token, new_api_token};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot use the data folder {path}")]
    Data {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TLS")]
    Tls(#[source] tonic::transport::Error),
    #[error(transparent)]
    NodeTls(#[from] crate::node_tls::NodeTlsError),
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: SQLite in the data folder.
    pub database_url: Option<String>,
    /// Where nodes connect.
    pub listen: SocketAddr,
    /// Where operators connect.
    pub api: SocketAddr,
    /// Names and addresses central's certificate is valid for (besides localhost).
    pub names: Vec<String>,
    pub settings: Settings,
    /// How often alerts are evaluated.
    pub alert_interval: Duration,
}

/// A running central: its bound addresses, and the tasks serving them.
pub struct Running {
    pub app: Arc<App>,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    pub ca_pem: String,
    pub ca_fingerprint: String,
    tasks: Vec<JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Stops serving (sessions break; nodes will reconnect to the next central).
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        self.app.stopping.send_replace(true);
        self.app.hub.close_all();
        for t in self.tasks {
            // Graceful: the servers finish once every session stream has closed.
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Waits until a server task ends (it should not).
    pub async fn wait(mut self) {
        if let Some(t) = self.tasks.first_mut() {
            let _ = t.await;
        }
    }
}

fn data_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::Data { path: path.display().to_string(), source }
}

/// Makes the first admin token if central has none, and writes it to `DATA/admin.token` (0600).
async fn first_admin_token(db: &Db, data: &Path, now: i64) -> Result<(), ServeError> {
    if db.count_api_tokens().await? > 0 {
        return Ok(());
    }
    let token = new_api_token();
    db.insert_api_token(&hash_api_token(&token), "admin (first start)", "admin", now).await?;
    let path = data.join("admin.token");
    write_atomic(&path, format!("{token}\n").as_bytes(), 0o600).map_err(data_err(&path))?;
    tracing::info!(path = %path.display(), "first start: an admin API token was written");
    Ok(())
}

pub async fn serve(cfg: ServeConfig, clock: SharedClock) -> Result<Running, ServeError> {
    let data = &cfg.data;
    std::fs::create_dir_all(data).map_err(data_err(data))?;
    let now = clock.now_ms();
    let url = cfg
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data.join("central.db").display()));
    let db = Db::open(&url).await?;
    db.mark_all_offline().await?;
    // No session exists yet: commands a node acknowledged but never answered wait again.
    let requeued = db.requeue_unfinished_commands(None, now).await?;
    if requeued > 0 {
        tracing::info!(
            commands = requeued,
            "commands sent before central stopped are queued again"
        );
    }
    first_admin_token(&db, data, now).await?;
    let ca = Ca::load_or_create(data, now)?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    for n in cfg.names.iter().chain([&cfg.listen.ip().to_string(), &cfg.api.ip().to_string()]) {
        if !names.contains(n) && n != "0.0.0.0" && n != "::" {
            names.push(n.clone());
        }
    }
    let (chain, key) = ca.server_identity(&names, now)?;
    let ca_pem = ca.cert_pem().to_string();
    let ca_fingerprint = ca.fingerprint().to_string();
    let app = App::new(db, ca, Arc::clone(&clock), cfg.settings.clone());

    let node_listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: cfg.listen, source })?;
    let api_listener = TcpListener::bind(cfg.api)
        .await
        .map_err(|source| ServeError::Listen { addr: cfg.api, source })?;
    let listen = node_listener
        .local_addr()
        .map_err(|source| ServeError::Listen { addr: cfg.listen, source })?;
    let api =
        api_listener.local_addr().map_err(|source| ServeError::Listen { addr: cfg.api, source })?;

    let node_tls = crate::node_tls::server_config(&chain, &key, &ca_pem)?;
    let identity = Identity::from_pem(chain.as_bytes(), key.as_bytes());
    let api_tls = ServerTlsConfig::new().identity(identity);
    let (shutdown, mut stop) = tokio::sync::watch::channel(false);

    let mut tasks = Vec::new();
    // Nodes' TLS is central's own (see node_tls): tonic speaks HTTP/2 over what it hands over.
    let node_server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            NodeServiceServer::new(NodeSvc::new(Arc::clone(&app)))
                .max_decoding_message_size(16 << 20),
        );
    let mut s1 = stop.clone();
    let node_incoming = crate::node_tls::incoming(node_listener, node_tls, stop.clone());
    tasks.push(tokio::spawn(async move {
        let done = async move {
            let _ = s1.wait_for(|v| *v).await;
        };
        if let Err(e) = node_server.serve_with_incoming_shutdown(node_incoming, done).await {
            tracing::error!(error = %Chain(&e), "the node service stopped");
        }
    }));
    let api_server = Server::builder().tls_config(api_tls).map_err(ServeError::Tls)?.add_service(
        OperatorServer::new(OperatorSvc::new(Arc::clone(&app))).max_decoding_message_size(64 << 20),
    );
    let mut s2 = stop.clone();
    tasks.push(tokio::spawn(async move {
        let incoming = TcpIncoming::from(api_listener);
        let done = async move {
            let _ = s2.wait_for(|v| *v).await;
        };
        if let Err(e) = api_server.serve_with_incoming_shutdown(incoming, done).await {
            tracing::error!(error = %Chain(&e), "the operator service stopped");
        }
    }));
    // Background work: quiet sessions, alerts, heartbeat bookkeeping, command expiry. It looks
    // every `alert_interval`; what it decides reads central's clock (moved by hand in tests).
    let bg = Arc::clone(&app);
    let interval = cfg.alert_interval;
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            for store in bg.hub.close_quiet(bg.now_ms(), bg.settings.session_timeout_ms) {
                tracing::warn!(store = %store, "no heartbeat for {} ms: closing the session", bg.settings.session_timeout_ms);
            }
            // A certificate revoked elsewhere (another replica, the database by hand) ends its
            // session here too.
            match bg.db.certificate_serials().await {
                Ok(good) => {
                    let closed = bg.hub.close_unless(
                        |store, serial| {
                            good.get(store).is_some_and(|(cur, next)| cur == serial || next == serial)
                        },
                        crate::node_service::REVOKED,
                    );
                    for store in closed {
                        tracing::warn!(store = %store, "the certificate of the store's session was revoked: closing it");
                    }
                }
                Err(e) => tracing::error!(error = %Chain(&e), "could not check the sessions' certificates"),
            }
            if let Err(e) = bg.db.touch_many(&bg.hub.last_seen()).await {
                tracing::error!(error = %Chain(&e), "could not record heartbeats");
            }
            if let Err(e) = bg.db.expire_commands(bg.now_ms()).await {
                tracing::error!(error = %Chain(&e), "could not expire commands");
            }
            if let Err(e) = crate::alerts::evaluate(&bg).await {
                tracing::error!(error = %Chain(&e), "could not evaluate alerts");
            }
        }
    }));
    tracing::info!(%listen, %api, ca = %ca_fingerprint, "central is serving");
    Ok(Running { app, listen, api, ca_pem, ca_fingerprint, tasks, shutdown })
}
