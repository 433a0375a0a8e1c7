//! Fleet simulator benchmark: N simulated nodes hold real mTLS sessions to one real central
//! process (SQLite, release build) with 10 s heartbeats.
//!
//! Reported per N: sessions held, time to connect them all, central's RSS and CPU at idle,
//! events/s ingested (end to end: outbox → session → central's batch writer → SQLite commit →
//! ack back to the node), and command delivery latency (operator API call → node receives).
//! Baselines measured in the same run: raw SQLite inserts through central's own database layer
//! (the ceiling for ingestion) and an operator API round trip (the floor for a command).
//!
//! Goals (issue 6, 2-core machine): 10,000 stores connected with 10 s heartbeats, ≥ 20,000
//! events/s ingested, p99 command delivery under 1 s.
//!
//! `BACKROOM_FLEET_SIZES=1000,10000` (the default) picks the fleet sizes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backroom_api::operator::{GetCommandRequest, ListStoresRequest, SendCommandRequest};
use backroom_central::db::{Db, NewEvent};
use backroom_integration::procs::{self, CentralProc};
use backroom_integration::sim;

const TOTAL_EVENTS: usize = 200_000;
const COMMANDS: usize = 1000;

fn main() -> anyhow::Result<()> {
    procs::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run())
}

async fn baseline_db_events_per_sec(dir: &std::path::Path) -> anyhow::Result<f64> {
    let db = Db::open(&format!("sqlite://{}", dir.join("baseline.db").display())).await?;
    let n = 100_000;
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent {
            store_id: format!("s{}", i % 1000),
            seq: (i / 1000 + 1) as u64,
            at_ms: 1,
            kind: "sim_event".into(),
            workload: "app".into(),
            message: format!("event {i}"),
            subject: String::new(),
        })
        .collect();
    let t = Instant::now();
    for chunk in events.chunks(5000) {
        db.insert_events(chunk, 2).await?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

async fn run() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("BACKROOM_FLEET_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let central_bin = procs::workspace_bin("central");
    anyhow::ensure!(
        central_bin.exists(),
        "{} is missing: run `cargo build --release -p backroom-central` first (make bench does)",
        central_bin.display()
    );
    let work = tempfile::tempdir()?;
    let db_rate = baseline_db_events_per_sec(work.path()).await?;
    println!("fleet simulator benchmark (central: {})", central_bin.display());
    println!(
        "  baseline: raw SQLite event inserts through central's db layer: {db_rate:.0} events/s"
    );
    for n in sizes {
        let data = work.path().join(format!("central-{n}"));
        std::fs::create_dir_all(&data)?;
        let central = CentralProc::start(&central_bin, &data, None, None, &["--heartbeat", "10s"])?;
        let pid = central.pid();
        let api = format!("https://{}", central.api);
        let url = format!("https://{}", central.listen);
        let admin =
            backroom_central::client::connect(&api, &central.ca_pem()?, &central.admin_token()?)
                .await?;

        let t = Instant::now();
        let ids = sim::enroll_many(&admin, &url, "sim", n, 64).await?;
        let enroll_time = t.elapsed();

        let receipts: sim::Receipts = Arc::new(Mutex::new(Default::default()));
        let t = Instant::now();
        let nodes: Vec<sim::SimNode> = ids
            .into_iter()
            .map(|id| {
                sim::start_node(
                    &url,
                    id,
                    work.path().to_path_buf(),
                    Duration::from_secs(10),
                    Arc::clone(&receipts),
                )
            })
            .collect();
        while sim::online(&nodes) < n && t.elapsed() < Duration::from_secs(600) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let connect_time = t.elapsed();
        let mut a = admin.clone();
        let held = a
            .list_stores(ListStoresRequest::default())
            .await?
            .into_inner()
            .stores
            .iter()
            .filter(|s| s.online)
            .count();

        // Idle: heartbeats only.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (c0, t0) = (procs::cpu_time(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(30)).await;
        let idle_cpu = procs::cpu_time(pid).saturating_sub(c0).as_secs_f64()
            / t0.elapsed().as_secs_f64()
            * 100.0;
        let idle_rss = procs::rss_bytes(pid);

        // Events.
        let per_node = (TOTAL_EVENTS / n).max(10);
        let (c0, t0) = (procs::cpu_time(pid), Instant::now());
        for node in &nodes {
            for i in 0..per_node {
                node.outbox.push(
                    backroom_session::now_ms(),
                    "sim_event",
                    "app",
                    "",
                    &format!("event {i}"),
                )?;
            }
        }
        while nodes.iter().any(|x| x.outbox.pending() > 0)
            && t0.elapsed() < Duration::from_secs(600)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ev_time = t0.elapsed();
        let ev_cpu =
            procs::cpu_time(pid).saturating_sub(c0).as_secs_f64() / ev_time.as_secs_f64() * 100.0;
        let ev_rate = (per_node * n) as f64 / ev_time.as_secs_f64();

        // Commands, one after another to spread stores, measuring send → node receipt.
        let mut lat = Vec::new();
        let mut rtt = Vec::new();
        for i in 0..COMMANDS {
            let store = format!("sim-{:05}", (i * 7919) % n);
            let sent = Instant::now();
            let info = a
                .send_command(SendCommandRequest {
                    store_id: store,
                    kind: "reconcile".into(),
                    workload: String::new(),
                    ttl_seconds: 60,
                })
                .await?
                .into_inner();
            let r0 = Instant::now();
            a.get_command(GetCommandRequest { id: info.id.clone() }).await?;
            rtt.push(r0.elapsed());
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(at) =
                    receipts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&info.id)
                {
                    lat.push(at.duration_since(sent));
                    break;
                }
                if Instant::now() > deadline {
                    lat.push(Duration::from_secs(10));
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let p50 = sim::percentile(lat.clone(), 50.0);
        let p99 = sim::percentile(lat, 99.0);
        let rtt99 = sim::percentile(rtt, 99.0);

        println!("\n  N = {n}");
        println!(
            "    sessions held: {held}/{n} (enrolled in {enroll_time:.1?}, all connected in {connect_time:.1?})"
        );
        println!(
            "    central idle with {n} sessions, 10 s heartbeats: RSS {:.1} MiB, CPU {idle_cpu:.1}% of one core",
            idle_rss as f64 / 1048576.0
        );
        println!(
            "    events: {} in {ev_time:.2?} = {ev_rate:.0} events/s ({:.2}x the raw SQLite baseline; central CPU {ev_cpu:.0}%); goal 20000: {}",
            per_node * n,
            ev_rate / db_rate,
            if ev_rate >= 20_000.0 { "met" } else { "NOT met" }
        );
        println!(
            "    command delivery: p50 {p50:.2?}, p99 {p99:.2?} ({:.1}x an operator API round trip's p99 of {rtt99:.2?}); goal p99 < 1 s: {}",
            p99.as_secs_f64() / rtt99.as_secs_f64().max(1e-9),
            if p99 < Duration::from_secs(1) { "met" } else { "NOT met" }
        );
        println!(
            "    central RSS after the run: {:.1} MiB",
            procs::rss_bytes(pid) as f64 / 1048576.0
        );
        drop(nodes);
        drop(central);
    }
    Ok(())
}
