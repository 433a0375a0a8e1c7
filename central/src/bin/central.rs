//! central: the HQ plane Backroom stores report to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use backroom_central::app::Settings;
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
        /// Default: SQLite in the data folder.
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
            },
    } = cli;
    let hb = u32::try_from(heartbeat.millis() / 1000).unwrap_or(10).max(1);
    let settings = Settings {
        heartbeat_seconds: hb,
        session_timeout_ms: i64::from(hb) * 3500,
        offline_alert_ms: i64::try_from(offline_alert.millis()).unwrap_or(i64::MAX),
        unhealthy_alert_ms: i64::try_from(unhealthy_alert.millis()).unwrap_or(i64::MAX),
        node_cert_days,
        ..Settings::default()
    };
    let cfg = ServeConfig {
        data: data.clone(),
        database_url,
        listen,
        api,
        names,
        settings,
        alert_interval: Duration::from_secs(5),
    };
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
