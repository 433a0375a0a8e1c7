//! central: the HQ plane Backroom stores report to.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use backroom_central::app::Settings;
use backroom_central::db::Retention;
use backroom_central::server::{ServeConfig, serve};
use backroom_daemon::logging::LogArgs;
use clap::{Parser, Subcommand};

/// Backroom's central plane: enrollment, one session per store, fleet push, status, events,
/// commands and alerts.
#[derive(Parser)]
#[command(name = "central", version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve nodes and operators.
    ///
    /// On first start it makes its CA (DATA/ca.key, DATA/ca.crt) and an admin API token
    /// (DATA/admin.token, mode 0600). Operators need DATA/ca.crt to check central's certificate.
    Serve {
        /// Where central keeps its CA, tokens and (by default) its SQLite database.
        #[arg(long, env = "BACKROOM_DATA")]
        data: PathBuf,
        /// Address nodes connect to (TLS; mTLS after enrollment).
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// Address operators (centralctl) connect to (TLS + API token).
        #[arg(long, default_value = "127.0.0.1:7444")]
        api: SocketAddr,
        /// Database: sqlite:///path/central.db or postgres://user:pass@host/db.
        /// Default: SQLite in the data folder. PostgreSQL over TLS: add sslmode=require
        /// (encrypted), verify-ca or verify-full (also checks the server's certificate, against
        /// sslrootcert=/path/ca.crt or the system's CAs), e.g. postgres://…/db?sslmode=verify-full.
        #[arg(long, env = "BACKROOM_DATABASE_URL")]
        database_url: Option<String>,
        /// A DNS name or address nodes use to reach central (repeatable); central's
        /// certificate names it. localhost and the listen addresses are always included.
        #[arg(long = "name")]
        names: Vec<String>,
        /// How often nodes send a heartbeat; a store that misses three is marked offline.
        #[arg(long, default_value = "10s")]
        heartbeat: backroom_profiles::Duration,
        /// Alert when a store has been offline this long.
        #[arg(long, default_value = "5m")]
        offline_alert: backroom_profiles::Duration,
        /// Alert when a workload has been unhealthy this long.
        #[arg(long, default_value = "5m")]
        unhealthy_alert: backroom_profiles::Duration,
        /// Validity of node certificates, in days (nodes renew at two thirds).
        #[arg(long, default_value_t = 30)]
        node_cert_days: u32,
        /// Events (and resolved alerts) older than this many days are deleted.
        #[arg(long, default_value_t = 90)]
        event_retention_days: u32,
        /// A store keeps at most this many events (its newest).
        #[arg(long, default_value_t = 100_000)]
        events_per_store: u64,
        /// Open workload and problem alerts per store; past it one alert says so.
        #[arg(long, default_value_t = 100)]
        max_open_alerts: u32,
        /// Connections open at once on the node port (TLS handshakes included).
        #[arg(long, default_value_t = 20_000)]
        max_node_connections: usize,
        /// A TLS handshake on either port not finished in this long is dropped.
        #[arg(long, default_value = "10s")]
        tls_handshake_timeout: backroom_profiles::Duration,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("central: {}", backroom_daemon::chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init("info");
    let Cli {
        log: _,
        command:
            Cmd::Serve {
                data,
                listen,
                api,
                database_url,
                names,
                heartbeat,
                offline_alert,
                unhealthy_alert,
                node_cert_days,
                event_retention_days,
                events_per_store,
                max_open_alerts,
                max_node_connections,
                tls_handshake_timeout,
            },
    } = cli;
    let hb = u32::try_from(heartbeat.millis() / 1000).unwrap_or(10).max(1);
    let retention_ms = i64::from(event_retention_days) * 86_400_000;
    let settings = Settings {
        heartbeat_seconds: hb,
        session_timeout_ms: i64::from(hb) * 3500,
        offline_alert_ms: i64::try_from(offline_alert.millis()).unwrap_or(i64::MAX),
        unhealthy_alert_ms: i64::try_from(unhealthy_alert.millis()).unwrap_or(i64::MAX),
        node_cert_days,
        max_open_alerts_per_store: max_open_alerts,
        retention: Retention {
            event_max_age_ms: retention_ms,
            events_per_store,
            resolved_alert_max_age_ms: retention_ms,
            ..Retention::default()
        },
        ..Settings::default()
    };
    let mut cfg = ServeConfig::new(data.clone(), listen, api);
    cfg.database_url = database_url;
    cfg.names = names;
    cfg.settings = settings;
    cfg.node_port.max_connections = max_node_connections;
    cfg.node_port.handshake_timeout = tls_handshake_timeout.to_std();
    cfg.api_port.handshake_timeout = tls_handshake_timeout.to_std();
    let running = serve(cfg, backroom_daemon::clock::system()).await.context("starting central")?;
    println!(
        "central ready: nodes https://{}  operators https://{}  CA {}  (admin token: {})",
        running.listen,
        running.api,
        running.ca_fingerprint,
        data.join("admin.token").display()
    );
    backroom_daemon::notify::ready();
    let which = backroom_daemon::signal::shutdown().await;
    // Graceful: sessions close (nodes reconnect to the next central), the servers drain.
    tracing::info!(signal = which, "central stopping");
    backroom_daemon::notify::stopping();
    running.stop().await;
    tracing::info!("central stopped");
    Ok(())
}
