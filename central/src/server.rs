//! `central serve`: open the data folder, then serve nodes (TLS; mTLS for everything after
//! enrollment) and operators (TLS + API tokens) until told to stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backroom_api::limits::{CENTRAL_MESSAGE_MAX, NODE_MESSAGE_MAX};
use backroom_api::node::node_service_server::NodeServiceServer;
use backroom_api::operator::operator_server::OperatorServer;
use backroom_daemon::fs::write_atomic;
use backroom_daemon::{Chain, SharedClock};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::app::{App, Settings};
use crate::ca::Ca;
use crate::db::Db;
use crate::listener::{self, PortLimits};
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
    #[error(transparent)]
    Tls(#[from] crate::listener::ListenError),
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
    /// Connections and TLS handshakes on the node port.
    pub node_port: PortLimits,
    /// Connections and TLS handshakes on the operator port.
    pub api_port: PortLimits,
    /// How long an enrollment or renewal may take (a session's stream is not cut by it).
    pub node_request_timeout: Duration,
    /// How often the retention job runs (on central's clock).
    pub retention_interval: Duration,
}

impl ServeConfig {
    /// Central's defaults for `data`, serving on `listen` and `api`.
    pub fn new(data: PathBuf, listen: SocketAddr, api: SocketAddr) -> Self {
        ServeConfig {
            data,
            database_url: None,
            listen,
            api,
            names: Vec::new(),
            settings: Settings::default(),
            alert_interval: Duration::from_secs(5),
            node_port: PortLimits::node_default(),
            api_port: PortLimits::api_default(),
            node_request_timeout: Duration::from_secs(30),
            retention_interval: Duration::from_secs(600),
        }
    }
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
    let audit = crate::db::AuditEntry::new(
        "central",
        "api-token",
        "",
        "admin (first start) (admin), written to the data folder",
    );
    db.insert_api_token(&hash_api_token(&token), "admin (first start)", "admin", now, &audit)
        .await?;
    let path = data.join("admin.token");
    write_atomic(&path, format!("{token}\n").as_bytes(), 0o600).map_err(data_err(&path))?;
    tracing::info!(path = %path.display(), "first start: an admin API token was written");
    Ok(())
}

/// Makes the data folder (0700) if needed. Central's secrets (CA key, admin token, database)
/// live there, whatever the umask.
fn make_data_folder(data: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    if !data.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data)
            .map_err(data_err(data))?;
    }
    Ok(())
}

/// The data folder 0700 and every file in it 0600: checked at every start, and tightened (with a
/// warning) when an older central, a copy or a restore left them readable by others. Central
/// starts anyway: refusing would keep every store from reaching HQ over a file mode.
pub fn secure_data_folder(data: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let tighten = |path: &Path, want: u32| -> Result<(), ServeError> {
        let meta = std::fs::symlink_metadata(path).map_err(data_err(path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & !want != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "readable by others: restricting it to {want:o}");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))
                .map_err(data_err(path))?;
        }
        Ok(())
    };
    tighten(data, 0o700)?;
    for entry in std::fs::read_dir(data).map_err(data_err(data))? {
        let entry = entry.map_err(data_err(data))?;
        let kind = entry.file_type().map_err(data_err(data))?;
        if kind.is_file() {
            tighten(&entry.path(), 0o600)?;
        } else if kind.is_dir() {
            tighten(&entry.path(), 0o700)?;
        }
    }
    Ok(())
}

pub async fn serve(cfg: ServeConfig, clock: SharedClock) -> Result<Running, ServeError> {
    let data = &cfg.data;
    make_data_folder(data)?;
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
    secure_data_folder(data)?;
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

    // Enrollment comes before the node has a certificate; every other call checks for one.
    // A node's certificate is judged in time by the call, on central's clock (see node_tls).
    let node_tls = crate::node_tls::server_config(&chain, &key, &ca_pem)?;
    let api_tls = listener::server_config(&chain, &key, None)?;
    let (shutdown, mut stop) = tokio::sync::watch::channel(false);

    let mut tasks = Vec::new();
    // TLS is central's own (see listener): tonic speaks HTTP/2 over what it hands over.
    let node_server = Server::builder()
        .layer(crate::error_size::ErrorSizeLayer)
        // Enroll and Renew answer at once; a session's stream outlives this (it bounds only
        // the wait for the response to start).
        .timeout(cfg.node_request_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // A node needs one stream (its session) and now and then a renewal.
        .max_concurrent_streams(Some(16))
        .add_service(
            NodeServiceServer::new(NodeSvc::new(Arc::clone(&app)))
                .max_decoding_message_size(NODE_MESSAGE_MAX)
                .max_encoding_message_size(CENTRAL_MESSAGE_MAX),
        );
    let node_incoming = listener::incoming(
        node_listener,
        node_tls,
        cfg.node_port,
        "node",
        Arc::clone(&clock),
        stop.clone(),
    );
    let mut s1 = stop.clone();
    tasks.push(tokio::spawn(async move {
        let done = async move {
            let _ = s1.wait_for(|v| *v).await;
        };
        if let Err(e) = node_server.serve_with_incoming_shutdown(node_incoming, done).await {
            tracing::error!(error = %Chain(&e), "the node service stopped");
        }
    }));
    let api_server = Server::builder()
        .layer(crate::error_size::ErrorSizeLayer)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            OperatorServer::new(OperatorSvc::new(Arc::clone(&app)))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        );
    let api_incoming = listener::incoming(
        api_listener,
        api_tls,
        cfg.api_port,
        "operator",
        Arc::clone(&clock),
        stop.clone(),
    );
    let mut s2 = stop.clone();
    tasks.push(tokio::spawn(async move {
        let done = async move {
            let _ = s2.wait_for(|v| *v).await;
        };
        if let Err(e) = api_server.serve_with_incoming_shutdown(api_incoming, done).await {
            tracing::error!(error = %Chain(&e), "the operator service stopped");
        }
    }));
    // Retention: old and excess events, long-resolved alerts, in bounded chunks, every
    // `retention_interval` of central's clock (moved by hand in tests).
    let rt = Arc::clone(&app);
    let every = cfg.retention_interval;
    let mut rstop = stop.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = rt.clock.sleep(every) => {}
                _ = rstop.wait_for(|v| *v) => return,
            }
            rt.sweep().await;
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
