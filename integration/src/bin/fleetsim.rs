//! fleetsim: simulated store nodes holding real sessions to a central.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use backroom_daemon::logging::LogArgs;
use backroom_integration::{procs, sim};
use clap::Parser;

/// Enrolls N simulated stores with a running central and holds their sessions: heartbeats,
/// status, and optionally events. For load tests and for testing links (loss, delay, outages).
#[derive(Parser)]
#[command(name = "fleetsim", version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    /// central's node endpoint, e.g. https://127.0.0.1:7443.
    #[arg(long)]
    central: String,
    /// central's operator endpoint (to make enrollment tokens), e.g. https://127.0.0.1:7444.
    #[arg(long)]
    api: String,
    /// central's CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// An operator (or admin) API token file.
    #[arg(long)]
    token_file: PathBuf,
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Events each node records (into its outbox) once its session is up.
    #[arg(long, default_value_t = 0)]
    events: usize,
    /// Pause between events (spreads them over time, e.g. across a link outage).
    #[arg(long, default_value_t = 0)]
    event_interval_ms: u64,
    /// Exit once every node's outbox is empty (all events acknowledged) and print "acked".
    #[arg(long)]
    until_acked: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init("warn");
    procs::raise_nofile();
    let ca = std::fs::read_to_string(&cli.ca).context("reading the CA")?;
    let token = std::fs::read_to_string(&cli.token_file).context("reading the token")?;
    let admin = backroom_central::client::connect(&cli.api, &ca, &token).await?;
    let ids = sim::enroll_many(&admin, &cli.central, &cli.prefix, cli.nodes, 32).await?;
    let receipts: sim::Receipts = Arc::new(Mutex::new(Default::default()));
    let dir = std::env::temp_dir();
    let nodes: Vec<_> = ids
        .into_iter()
        .map(|id| {
            sim::start_node(
                &cli.central,
                id,
                dir.clone(),
                Duration::from_secs(1),
                Arc::clone(&receipts),
            )
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.timeout);
    while sim::online(&nodes) < nodes.len() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} sessions came up",
            sim::online(&nodes),
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("online {}", nodes.len());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    for i in 0..cli.events {
        for n in &nodes {
            n.outbox.push(
                backroom_session::now_ms(),
                "sim_event",
                "app",
                "",
                &format!("event {i}"),
            )?;
        }
        if cli.event_interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cli.event_interval_ms)).await;
        }
    }
    if cli.until_acked {
        while nodes.iter().any(|n| n.outbox.pending() > 0) {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "events were not all acknowledged in time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("acked {}", nodes.len() * cli.events);
        return Ok(());
    }
    tokio::time::sleep_until(deadline).await;
    Ok(())
}
