//! Central away for a day (issue 11's fault suite), on the node's clock: a node's link and
//! outbox run on a manual clock that moves 24 hours while central (a real process) is killed;
//! events keep flowing, one every simulated minute. Meanwhile the outbox keeps every one (none
//! dropped, none aged out, all in the log on disk), the link keeps trying with its
//! backoff capped, and when central is back every event arrives once: central holds each
//! sequence number the node handed out, and no other.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use backroom_api::node::{CommandResult, Status};
use backroom_api::operator::CreateEnrollTokenRequest;
use backroom_daemon::clock::{Clock, ManualClock};
use backroom_integration::chaos::{central_events, env_count, table_row};
use backroom_integration::procs::{CentralProc, require_bin};
use backroom_session::enroll::enroll_once;
use backroom_session::link::{Inbound, Link, LinkConfig};
use backroom_session::outbox::{Limits, Outbox};
use backroom_session::token::EnrollToken;
use tokio::sync::{mpsc, watch};

async fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_without_central_keeps_every_event_and_delivers_each_once() {
    let hours = env_count("BACKROOM_CHAOS_AWAY_HOURS", 24);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("central");
    std::fs::create_dir_all(&dir).unwrap();
    let mut central =
        CentralProc::start(&require_bin("central"), &dir, None, None, &["--heartbeat", "2s"])
            .unwrap();
    let (listen, api) = (central.listen, central.api);
    let url = format!("https://{listen}");
    let mut admin = backroom_central::client::connect(
        &format!("https://{api}"),
        &central.ca_pem().unwrap(),
        &central.admin_token().unwrap(),
    )
    .await
    .unwrap();
    let token = admin
        .create_enroll_token(CreateEnrollTokenRequest {
            store_id: "store-0117".into(),
            region: String::new(),
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let node_dir = data.path().join("node");
    let id = enroll_once(&url, &EnrollToken::parse(&token).unwrap(), &node_dir, "test", "h")
        .await
        .unwrap();

    // The node's clock starts at the real time; central's stays real.
    let clock = ManualClock::new(backroom_daemon::clock::SystemClock.now_ms());
    let shared: backroom_daemon::SharedClock = Arc::new(clock.clone());
    let outbox_dir = node_dir.join("outbox");
    let outbox = Arc::new(
        Outbox::open_with_clock(&outbox_dir, Limits::default(), Arc::clone(&shared)).unwrap(),
    );
    let (_status, status_rx) = watch::channel(Status::default());
    let (tx, mut rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if let Inbound::Command { command, reply } = m {
                let _ =
                    reply.send(CommandResult { id: command.id, ok: true, message: String::new() });
            }
        }
    });
    let mut cfg = LinkConfig::new(&url, node_dir.clone(), "test");
    cfg.backoff_min = Duration::from_secs(1);
    cfg.backoff_max = Duration::from_secs(60);
    let link = Link::with_clock(cfg, id, Arc::clone(&outbox), status_rx, tx, Arc::clone(&shared));
    let online = link.online();
    tokio::spawn(link.run());
    // While connected, the node's time passes ten times as fast as real time (heartbeats flow).
    let ticking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    {
        let (clock, ticking) = (clock.clone(), Arc::clone(&ticking));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if ticking.load(std::sync::atomic::Ordering::Relaxed) {
                    clock.advance(Duration::from_secs(1));
                }
            }
        });
    }

    let push = |at: i64, kind: &str, message: &str| {
        outbox.push(at, kind, "orders", "", message).unwrap();
    };
    for i in 0..20 {
        push(clock.now_ms() + i, "workload_restarted", "before central went away");
    }
    wait("the first events are acknowledged", Duration::from_secs(60), || outbox.pending() == 0)
        .await;

    central.kill().unwrap();
    wait("the node notices central is gone", Duration::from_secs(60), || !*online.borrow()).await;
    ticking.store(false, std::sync::atomic::Ordering::Relaxed);

    // A day of the node's time, an event a minute; the link keeps trying meanwhile.
    let away_start = clock.now_ms();
    let minutes = hours * 60;
    let real = Instant::now();
    for m in 0..minutes {
        push(clock.now_ms(), "workload_unhealthy", &format!("minute {m} without central"));
        clock.advance(Duration::from_secs(60));
        // Let the link's timers (its reconnect attempts) run on the moved clock.
        tokio::task::yield_now().await;
        if m % 60 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let away_ms = clock.now_ms() - away_start;
    assert!(
        away_ms >= i64::try_from(hours).unwrap() * 3_600_000,
        "the node's clock moved {away_ms} ms"
    );
    assert!(!*online.borrow(), "no central, yet the link says online");
    assert_eq!(outbox.pending() as u64, minutes, "every event of the day is kept");
    assert_eq!(outbox.dropped_total(), 0, "nothing dropped or aged out");
    // Intact on disk too: the log holds every one of the day's events (read as text: a second
    // Outbox on the same folder would compact it under the first).
    let log = std::fs::read_to_string(outbox_dir.join("outbox.log")).unwrap();
    let kept = log.lines().filter(|l| l.contains("without central")).count() as u64;
    assert_eq!(kept, minutes, "the outbox on disk holds what the node holds");
    eprintln!(
        "chaos_central_away: {hours} h of the node's time without central in {:?}: {minutes} events kept",
        real.elapsed()
    );

    let central = CentralProc::start(
        &require_bin("central"),
        &dir,
        Some(listen),
        Some(api),
        &["--heartbeat", "2s"],
    )
    .unwrap();
    ticking.store(true, std::sync::atomic::Ordering::Relaxed);
    let back = Instant::now();
    // The backoff is capped at 60 s of the node's time: 6 s of real time at ten times speed.
    wait("the node reconnects", Duration::from_secs(60), || *online.borrow()).await;
    wait("the day's events are acknowledged", Duration::from_secs(120), || outbox.pending() == 0)
        .await;
    let delivered_in = back.elapsed();
    let handed_out = outbox.next_seq() - 1;
    let events = central_events(&dir.join("central.db"), "store-0117").unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=handed_out).collect::<Vec<_>>(), "every event once, none lost");
    let others: Vec<String> = events
        .iter()
        .filter(|e| {
            !e.message.ends_with("without central") && e.message != "before central went away"
        })
        .map(|e| format!("{} {}: {}", e.seq, e.kind, e.message))
        .collect();
    assert!(others.is_empty(), "events nobody pushed:\n{}", others.join("\n"));
    assert_eq!(handed_out, 20 + minutes);
    let during = events.iter().filter(|e| e.message.ends_with("without central")).count() as u64;
    assert_eq!(during, minutes, "the day's events, each once");
    drop(central);
    table_row(
        "central away (node clock)",
        &format!("{hours} h, {minutes} events while away"),
        &format!(
            "outbox kept all, 0 dropped; every event delivered once, {delivered_in:.1?} after central returned"
        ),
    );
}
