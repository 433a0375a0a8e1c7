//! A store keeps its events while central is down (kill -9): they reach central when it comes
//! back, none lost and none doubled.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backroom_api::node::{CommandResult, Status};
use backroom_api::operator::{CreateEnrollTokenRequest, GetStoreRequest};
use backroom_integration::procs::{CentralProc, require_bin};
use backroom_session::enroll::enroll_once;
use backroom_session::link::{Inbound, Link, LinkConfig};
use backroom_session::outbox::{Limits, Outbox};
use backroom_session::token::EnrollToken;
use tokio::sync::{mpsc, watch};

async fn wait(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out: {what}");
}

#[tokio::test]
async fn events_raised_while_central_is_down_arrive_once_it_returns() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("central");
    std::fs::create_dir_all(&dir).unwrap();
    let mut central =
        CentralProc::start(&require_bin("central"), &dir, None, None, &["--heartbeat", "1s"])
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
    let t = admin
        .create_enroll_token(CreateEnrollTokenRequest {
            store_id: "store-0042".into(),
            region: String::new(),
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let node_dir = data.path().join("node");
    let id =
        enroll_once(&url, &EnrollToken::parse(&t).unwrap(), &node_dir, "test", "h").await.unwrap();

    let outbox = Arc::new(Outbox::open(&node_dir.join("outbox"), Limits::default()).unwrap());
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
    cfg.backoff_min = Duration::from_millis(200);
    cfg.backoff_max = Duration::from_secs(2);
    let link = Link::new(cfg, id, Arc::clone(&outbox), status_rx, tx);
    let online = link.online();
    tokio::spawn(link.run());

    for i in 0..50 {
        outbox
            .push(
                backroom_session::now_ms() + i,
                "workload_restarted",
                "orders",
                "",
                "before the outage",
            )
            .unwrap();
    }
    wait("the first events are acknowledged", || outbox.pending() == 0).await;

    central.kill().unwrap();
    wait("the node notices central is gone", || !*online.borrow()).await;
    for i in 50..100 {
        outbox
            .push(
                backroom_session::now_ms() + i,
                "workload_unhealthy",
                "orders",
                "",
                "during the outage",
            )
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outbox.pending(), 50, "nothing is forgotten while central is away");

    let central = CentralProc::start(
        &require_bin("central"),
        &dir,
        Some(listen),
        Some(api),
        &["--heartbeat", "1s"],
    )
    .unwrap();
    wait("the node reconnects", || *online.borrow()).await;
    wait("the outage's events are acknowledged", || outbox.pending() == 0).await;
    let mut admin = backroom_central::client::connect(
        &format!("https://{api}"),
        &central.ca_pem().unwrap(),
        &central.admin_token().unwrap(),
    )
    .await
    .unwrap();
    let s = admin
        .get_store(GetStoreRequest { store_id: "store-0042".into(), events: 1000 })
        .await
        .unwrap()
        .into_inner();
    let mut seqs: Vec<u64> = s.events.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "every event once");
    assert_eq!(s.events.iter().filter(|e| e.message == "during the outage").count(), 50);
}
