//! Trust and sessions between nodes and central, over real TLS on loopback, against the ways a
//! store gets locked out or central gets stalled: a renewal's reply lost on the WAN, a crash
//! while the node saves its identity, a store offline past its certificate's lifetime, a
//! connection dropped mid-enrollment, a long command queue at session start, old sessions that
//! keep writing, revocation, another store's command results, an outbox that lost its state.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use backroom_api::node::central_message::Body as CBody;
use backroom_api::node::node_message::Body as NBody;
use backroom_api::node::{CommandAck, CommandResult, Status};
use backroom_api::operator::{
    CreateApiTokenRequest, GetCommandRequest, GetStoreRequest, ListEnrollTokensRequest,
    ListStoresRequest, RevokeApiTokenRequest, RevokeEnrollTokenRequest, RevokeStoreRequest,
    SendCommandRequest,
};
use backroom_daemon::{Backoff, Clock, ManualClock, SharedClock};
use backroom_session::enroll::{self, EnrollError, Identity};
use backroom_session::outbox::{Limits, Outbox};
use common::proxy::Proxy;
use common::*;

/// How long a node is given to get a session before a test says it did not (each test shows
/// first that a node gets one within it).
const SESSION_WITHIN: Duration = Duration::from_secs(3);

async fn online_within(node: &mut TestNode, within: Duration) -> bool {
    tokio::time::timeout(within, node.online.wait_for(|v| *v)).await.is_ok()
}

fn quick() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_millis(400))
}

/// What the audit trail says of `action`, oldest first.
async fn audited(c: &backroom_central::server::Running, action: &str) -> Vec<String> {
    let mut v: Vec<(i64, String)> = c
        .app
        .db
        .audit_trail(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, _, a, _)| a == action)
        .map(|(at, _, _, d)| (at, d))
        .collect();
    v.sort();
    v.into_iter().map(|(_, d)| d).collect()
}

// ---- finding 1: renewals, crashes, expiry -------------------------------------------------

#[tokio::test]
async fn a_renewal_whose_reply_is_lost_leaves_the_node_working() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let proxy = Proxy::start(c.listen).await;

    // Central issues the new certificate; the reply never reaches the node.
    proxy.lose_replies(1);
    let e = enroll::renew(&proxy.url(), &id, d.path()).await.unwrap_err();
    assert!(e.is_transient(), "a lost reply is worth another try: {e}");
    assert_eq!(proxy.lost.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(audited(&c, "renew").await.len(), 1, "central did issue the certificate");
    assert_eq!(Identity::load(d.path()).unwrap().unwrap().cert_pem, id.cert_pem);

    // The node still gets in with the certificate it has…
    let mut node = run_node(&node_url(&c), id.clone(), d.path(), mem_outbox());
    assert!(
        online_within(&mut node, SESSION_WITHIN).await,
        "the certificate the node has must work until the new one is used"
    );
    node.task.abort();
    // …and renews again; the first use of the new one retires the old one.
    let new = enroll::renew(&node_url(&c), &id, d.path()).await.unwrap();
    let mut fresh = run_node(&node_url(&c), new, d.path(), mem_outbox());
    assert!(online_within(&mut fresh, SESSION_WITHIN).await);
    fresh.task.abort();
    let mut stale = run_node(&node_url(&c), id, d.path(), mem_outbox());
    assert!(
        !online_within(&mut stale, SESSION_WITHIN).await,
        "once the new certificate is used, the old one is revoked"
    );
    stale.task.abort();
    c.stop().await;
}

#[tokio::test]
async fn an_identity_cut_off_while_it_was_saved_still_lets_the_node_connect() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;

    // A power cut while the next identity was being written: its temporary file is torn, the
    // identity itself is whole (one rename replaces it).
    let next =
        enroll::renew(&node_url(&c), &id, tempfile::tempdir().unwrap().path()).await.unwrap();
    let torn = serde_json::to_string(&serde_json::json!({ "key_pem": next.key_pem })).unwrap();
    std::fs::write(d.path().join(".identity.json.tmp.1.0"), &torn[..torn.len() / 2]).unwrap();
    let loaded = Identity::load(d.path()).unwrap().unwrap();
    let mut node = run_node(&node_url(&c), loaded, d.path(), mem_outbox());
    assert!(online_within(&mut node, SESSION_WITHIN).await, "the whole identity on disk works");
    node.task.abort();

    // The layout an older nodeagent wrote (three files) is read as it is…
    let old = tempfile::tempdir().unwrap();
    let write = |dir: &std::path::Path, key: &str, cert: &str| {
        std::fs::write(dir.join("node.key"), key).unwrap();
        std::fs::write(dir.join("node.crt"), cert).unwrap();
        std::fs::write(dir.join("ca.crt"), &id.ca_pem).unwrap();
    };
    write(old.path(), &next.key_pem, &next.cert_pem);
    let read = Identity::load(old.path()).unwrap().unwrap();
    let mut node = run_node(&node_url(&c), read.clone(), old.path(), mem_outbox());
    assert!(online_within(&mut node, SESSION_WITHIN).await, "the layout of before still works");
    node.task.abort();
    // …and replaced by the one file at the next save.
    enroll::renew(&node_url(&c), &read, old.path()).await.unwrap();
    assert!(old.path().join("identity.json").exists());
    assert!(!old.path().join("node.key").exists(), "no old key left behind");

    // That older layout cut off between its two writes (the new key beside the old
    // certificate): unusable, said so, and a token makes the node whole again.
    let cut = tempfile::tempdir().unwrap();
    let (key, _) = backroom_session::pki::new_key_and_csr("store-0042").unwrap();
    write(cut.path(), &key, &id.cert_pem);
    let e = Identity::load(cut.path()).unwrap_err();
    assert!(e.to_string().contains("does not belong to the certificate"), "{e}");
    let t = token(&mut admin, "store-0042", 3600).await;
    let again =
        enroll::enroll_once(&node_url(&c), &t, cut.path(), "test-agent 1.0", "h").await.unwrap();
    let mut node = run_node(&node_url(&c), again, cut.path(), mem_outbox());
    assert!(online_within(&mut node, SESSION_WITHIN).await);
    node.task.abort();
    c.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_renews_within_the_grace_period_and_not_after() {
    let data = tempfile::tempdir().unwrap();
    let start_ms = backroom_session::now_ms();
    let clock = ManualClock::new(start_ms);
    let c = start(data.path(), Arc::new(clock.clone()), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let url = node_url(&c);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut ids = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        ids.push(enroll(&c, &mut admin, &format!("store-{i:04}"), d.path()).await);
    }
    let expiry = ids[0].not_after_ms;
    assert!(ids.iter().all(|i| i.not_after_ms == expiry));
    let grace = i64::from(backroom_central::app::Settings::default().renew_grace_days) * 86_400_000;

    // A store closed for a season: a day past its certificate's lifetime. Its session is
    // refused as expired (renew first); its link renews by itself and gets back in.
    clock.set(expiry + 86_400_000);
    let e = HandSession::open(&url, &ids[0])
        .await
        .err()
        .expect("an expired certificate opens no session");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("expired"), "{}", e.message());
    let node_clock: SharedClock = Arc::new(ManualClock::new(clock.now_ms()));
    let mut node = run_node_on(&url, ids[0].clone(), dirs[0].path(), mem_outbox(), node_clock);
    assert!(online_within(&mut node, Duration::from_secs(10)).await, "back by itself");
    let renewed = Identity::load(dirs[0].path()).unwrap().unwrap();
    assert!(renewed.not_after_ms > clock.now_ms());
    node.task.abort();

    // At the very end of the grace period it still renews; one millisecond later it is
    // refused, saying why and what to do.
    clock.set(expiry + grace);
    enroll::renew(&url, &ids[1], dirs[1].path()).await.unwrap();
    clock.set(expiry + grace + 1);
    let e = enroll::renew(&url, &ids[2], dirs[2].path()).await.unwrap_err();
    let EnrollError::IdentityRefused(why) = &e else { panic!("{e:?}") };
    assert!(why.contains("more than 90 days ago") && why.contains("token"), "{why}");

    // Revocation wins over the grace period.
    clock.set(expiry + 1);
    admin.revoke_store(RevokeStoreRequest { store_id: "store-0003".into() }).await.unwrap();
    let e = enroll::renew(&url, &ids[3], dirs[3].path()).await.unwrap_err();
    let EnrollError::IdentityRefused(why) = &e else { panic!("{e:?}") };
    assert!(why.contains("not valid any more"), "{why}");
    c.stop().await;
}

// ---- finding 2: enrollment -----------------------------------------------------------------

#[tokio::test]
async fn a_connection_dropped_mid_enrollment_does_not_burn_the_token() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let proxy = Proxy::start(c.listen).await;
    let t = token(&mut admin, "store-0042", 3600).await;
    let d = tempfile::tempdir().unwrap();

    // The first call reaches central and its reply is lost; the node tries again (with the
    // same key) and is enrolled.
    proxy.lose_replies(1);
    let clock = backroom_daemon::clock::system();
    let id = enroll::enroll_with_retries(&proxy.url(), &t, d.path(), "a", "h", &clock, quick())
        .await
        .unwrap();
    assert_eq!(proxy.lost.load(std::sync::atomic::Ordering::SeqCst), 1);
    let enrolled = audited(&c, "enroll").await;
    assert_eq!(enrolled.len(), 2, "central enrolled it the first time too: {enrolled:?}");
    assert!(enrolled[1].contains("the reply before was lost"), "{enrolled:?}");
    let mut node = run_node(&node_url(&c), id, d.path(), mem_outbox());
    assert!(online_within(&mut node, SESSION_WITHIN).await);
    node.task.abort();

    // A real refusal stops at once: the token is used, and another key cannot use it.
    let other = tempfile::tempdir().unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(5),
        enroll::enroll_with_retries(&node_url(&c), &t, other.path(), "a", "h", &clock, quick()),
    )
    .await
    .expect("a refusal is not retried")
    .unwrap_err();
    assert!(matches!(e, EnrollError::Refused(ref m) if m.contains("already used")), "{e}");
    let listed = admin
        .list_enroll_tokens(ListEnrollTokensRequest { store_id: "store-0042".into() })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, "used");
    c.stop().await;
}

#[tokio::test]
async fn enrollment_waits_for_a_central_that_is_not_up_yet() {
    // Nothing listens yet: the node keeps trying.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = reserved.local_addr().unwrap();
    drop(reserved);
    let data = tempfile::tempdir().unwrap();
    // The token is made by a central that then stops (its data stays): the same CA later.
    let c = start(data.path(), backroom_daemon::clock::system(), listen, any_port()).await;
    let mut a = admin(&c, data.path()).await;
    let t = token(&mut a, "store-0042", 3600).await;
    let api = c.api;
    c.stop().await;
    let d = tempfile::tempdir().unwrap();
    let url = format!("https://{listen}");
    let clock = backroom_daemon::clock::system();
    let dir = d.path().to_path_buf();
    let enrolling = tokio::spawn(async move {
        enroll::enroll_with_retries(&url, &t, &dir, "a", "h", &clock, quick()).await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!enrolling.is_finished(), "it waits for central");
    let c = start(data.path(), backroom_daemon::clock::system(), listen, api).await;
    let id =
        tokio::time::timeout(Duration::from_secs(10), enrolling).await.unwrap().unwrap().unwrap();
    assert_eq!(id.store_id, "store-0042");
    c.stop().await;
}

// ---- finding 3: queued commands -------------------------------------------------------------

#[tokio::test]
async fn three_hundred_queued_commands_do_not_wedge_the_session_and_all_are_delivered() {
    let data = tempfile::tempdir().unwrap();
    let settings = backroom_central::app::Settings { max_queued_commands: 300, ..test_settings() };
    let c =
        start_with(data.path(), backroom_daemon::clock::system(), any_port(), any_port(), settings)
            .await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let send = |mut a: backroom_central::client::Client, n: usize| async move {
        a.send_command(SendCommandRequest {
            store_id: "store-0042".into(),
            kind: "restart".into(),
            workload: format!("w{n}"),
            ttl_seconds: 0,
        })
        .await
    };
    for n in 0..300 {
        assert_eq!(send(admin.clone(), n).await.unwrap().into_inner().state, "queued");
    }
    // Past the cap: refused, saying why.
    let e = send(admin.clone(), 300).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(e.message().contains("300 commands waiting"), "{}", e.message());

    let started = std::time::Instant::now();
    let mut node = run_node(&node_url(&c), id, d.path(), mem_outbox());
    assert!(online_within(&mut node, Duration::from_secs(10)).await, "the session is not wedged");
    let online_after = started.elapsed();
    // The session works while the queue drains: a status change arrives.
    node.status
        .send_replace(Status { agent_version: "after the queue".into(), ..Default::default() });
    let a = admin.clone();
    let app = Arc::clone(&c.app);
    eventually("every command done, and the status shown", || {
        let (mut a, app) = (a.clone(), Arc::clone(&app));
        async move {
            let s = a
                .get_store(GetStoreRequest { store_id: "store-0042".into(), events: 1 })
                .await
                .unwrap()
                .into_inner();
            let agent = s.summary.map(|s| s.agent_version).unwrap_or_default();
            let all = app.db.recent_commands("store-0042", 1000).await.unwrap();
            agent == "after the queue" && all.len() == 300 && all.iter().all(|c| c.state == "done")
        }
    })
    .await;
    let got = node.commands.lock().unwrap().clone();
    assert_eq!(got.len(), 300, "each command reached the node once");
    eprintln!(
        "300 queued commands: online after {online_after:?}, all acknowledged and answered after {:?}",
        started.elapsed()
    );
    // The queue has room again.
    assert!(send(admin.clone(), 301).await.is_ok());
    node.task.abort();
    c.stop().await;
}

#[tokio::test]
async fn a_command_acknowledged_but_unanswered_is_queued_again_and_never_run_twice() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;

    // A node that takes its time: it answers only when the test says so.
    let (status_tx, status_rx) = tokio::sync::watch::channel(Status::default());
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel(16);
    let mut cfg =
        backroom_session::link::LinkConfig::new(&node_url(&c), d.path().to_path_buf(), "t");
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(300);
    let link = backroom_session::link::Link::new(cfg, id, mem_outbox(), status_rx, in_tx);
    let mut online = link.online();
    let task = tokio::spawn(link.run());
    online.wait_for(|v| *v).await.unwrap();
    let sent = admin
        .send_command(SendCommandRequest {
            store_id: "store-0042".into(),
            kind: "restart".into(),
            workload: "orders".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(backroom_session::link::Inbound::Command { command, reply }) =
        tokio::time::timeout(Duration::from_secs(5), in_rx.recv()).await.unwrap()
    else {
        panic!("no command")
    };
    let get = |mut a: backroom_central::client::Client, id: String| async move {
        a.get_command(GetCommandRequest { id }).await.unwrap().into_inner()
    };
    let a = admin.clone();
    let cid = sent.id.clone();
    eventually("the node's acknowledgement makes it sent", || {
        let (a, id) = (a.clone(), cid.clone());
        async move { get(a, id).await.state == "sent" }
    })
    .await;
    // The session breaks while the command runs: it is queued again…
    assert!(c.app.hub.close("store-0042", "test: the link broke"));
    eventually("queued again once its session ended", || {
        let (a, id) = (a.clone(), cid.clone());
        async move { get(a, id).await.state == "queued" }
    })
    .await;
    // …its result comes after; the next session delivers the command again, and the node
    // answers with that result instead of running it a second time.
    reply
        .send(CommandResult { id: command.id, ok: true, message: "restarted once".into() })
        .unwrap();
    eventually("done, with the one result", || {
        let (a, id) = (a.clone(), cid.clone());
        async move {
            let c = get(a, id).await;
            c.state == "done" && c.result == "restarted once"
        }
    })
    .await;
    assert!(in_rx.try_recv().is_err(), "the command was not handed to the node twice");
    let _ = status_tx;
    task.abort();
    c.stop().await;
}

// ---- finding 4: one session per store, revocation, results bound to their store ------------

#[tokio::test]
async fn an_old_session_is_cut_off_when_a_new_one_opens_or_the_store_enrolls_again() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let url = node_url(&c);
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;

    let mut old = HandSession::open(&url, &id).await.unwrap();
    assert!(matches!(old.next(SESSION_WITHIN).await, Some(CBody::Welcome(_))));
    // Alone, it stays open (the same wait as below).
    assert!(old.ended_within(Duration::from_secs(1)).await.is_none());
    let mut new = HandSession::open(&url, &id).await.unwrap();
    assert!(matches!(new.next(SESSION_WITHIN).await, Some(CBody::Welcome(_))));
    let ended = old.ended_within(Duration::from_secs(1)).await.expect("the old session ends");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted);
    assert!(status.message().contains("newer session"), "{}", status.message());
    // What the old one still sends is not recorded; the new one's is.
    old.send(NBody::Status(Status { agent_version: "old server".into(), ..Default::default() }))
        .await;
    new.send(NBody::Status(Status { agent_version: "new server".into(), ..Default::default() }))
        .await;
    let a = admin.clone();
    eventually("the new session's status", || {
        let mut a = a.clone();
        async move {
            let list =
                a.list_stores(ListStoresRequest::default()).await.unwrap().into_inner().stores;
            list.iter().any(|s| s.agent_version == "new server")
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = admin.list_stores(ListStoresRequest::default()).await.unwrap().into_inner().stores;
    assert!(list.iter().all(|s| s.agent_version != "old server"), "{list:?}");

    // A replacement server enrolls the store: the session on the old certificate ends now.
    let d2 = tempfile::tempdir().unwrap();
    enroll(&c, &mut admin, "store-0042", d2.path()).await;
    let status = new.ended_within(Duration::from_secs(1)).await.expect("ended").unwrap_err();
    assert!(status.message().contains("revoked"), "{}", status.message());
    c.stop().await;
}

#[tokio::test]
async fn revoking_a_store_ends_its_session_at_once_and_a_new_token_brings_it_back() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let url = node_url(&c);
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let mut node = run_node(&url, id.clone(), d.path(), mem_outbox());
    assert!(online_within(&mut node, SESSION_WITHIN).await);

    let r = admin
        .revoke_store(RevokeStoreRequest { store_id: "store-0042".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.session_closed && r.revoked_serials.len() == 1, "{r:?}");
    tokio::time::timeout(Duration::from_secs(2), node.online.wait_for(|v| !*v))
        .await
        .expect("the session ends at once")
        .unwrap();
    // It stays out, and says why (it has no token to enroll again with).
    let why = tokio::time::timeout(SESSION_WITHIN, node.refused.wait_for(|r| r.is_some()))
        .await
        .expect("the node says it is refused")
        .unwrap()
        .clone()
        .unwrap();
    assert!(why.contains("enrollment token"), "{why}");
    assert!(!online_within(&mut node, SESSION_WITHIN).await);
    node.task.abort();
    assert!(audited(&c, "store-revoke").await[0].contains("revoked"));

    // Given a new token, the same node enrolls again by itself and is back.
    let t = token(&mut admin, "store-0042", 3600).await;
    let mut node =
        run_node_with(&url, id, d.path(), mem_outbox(), backroom_daemon::clock::system(), |cfg| {
            cfg.token = Some(t)
        });
    assert!(online_within(&mut node, Duration::from_secs(10)).await, "enrolled again");
    assert!(node.refused.borrow().is_none());
    node.task.abort();
    c.stop().await;
}

#[tokio::test]
async fn a_command_result_is_accepted_only_from_the_store_it_was_for() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let url = node_url(&c);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id1 = enroll(&c, &mut admin, "store-0042", d1.path()).await;
    let id2 = enroll(&c, &mut admin, "store-0117", d2.path()).await;
    let cmd = admin
        .send_command(SendCommandRequest {
            store_id: "store-0042".into(),
            kind: "restart".into(),
            workload: "orders".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let forge = |s: &HandSession, id: String, msg: &str| {
        let msg = msg.to_string();
        let tx = s.tx.clone();
        async move {
            for body in [
                NBody::CommandAck(CommandAck { id: id.clone() }),
                NBody::CommandResult(CommandResult { id, ok: true, message: msg }),
                NBody::Heartbeat(Default::default()),
            ] {
                tx.send(backroom_api::node::NodeMessage { body: Some(body) }).await.unwrap();
            }
        }
    };
    // Another store answers for it: ignored (central has read it: its heartbeat is answered).
    let mut other = HandSession::open(&url, &id2).await.unwrap();
    forge(&other, cmd.id.clone(), "forged").await;
    loop {
        match other.next(SESSION_WITHIN).await {
            Some(CBody::HeartbeatAck(_)) => break,
            Some(_) => continue,
            None => panic!("no heartbeat answer"),
        }
    }
    let get = |mut a: backroom_central::client::Client, id: String| async move {
        a.get_command(GetCommandRequest { id }).await.unwrap().into_inner()
    };
    let after = get(admin.clone(), cmd.id.clone()).await;
    assert_eq!((after.state.as_str(), after.result.as_str()), ("queued", ""));
    // The store it was for: recorded, through the same messages.
    let mine = HandSession::open(&url, &id1).await.unwrap();
    forge(&mine, cmd.id.clone(), "restarted").await;
    let a = admin.clone();
    let cid = cmd.id.clone();
    eventually("its own store's result", || {
        let (a, id) = (a.clone(), cid.clone());
        async move {
            let c = get(a, id).await;
            c.state == "done" && c.result == "restarted"
        }
    })
    .await;
    drop(mine);
    c.stop().await;
}

#[tokio::test]
async fn tokens_and_api_tokens_are_listed_revoked_and_audited() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let t = token(&mut admin, "store-0042", 3600).await;
    let list = admin
        .list_enroll_tokens(ListEnrollTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!((list.len(), list[0].state.as_str()), (1, "unused"));
    assert!(!t.to_string().contains(&list[0].id), "the id is not the secret");
    admin
        .revoke_enroll_token(RevokeEnrollTokenRequest {
            id: list[0].id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let e = enroll::enroll_once(&node_url(&c), &t, d.path(), "a", "h").await.unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");

    // An API token: works, then is revoked and refused; the last admin token cannot be.
    let op = admin
        .create_api_token(CreateApiTokenRequest { name: "tool".into(), role: "operator".into() })
        .await
        .unwrap()
        .into_inner();
    let mut tool =
        backroom_central::client::connect(&format!("https://{}", c.api), &c.ca_pem, &op.token)
            .await
            .unwrap();
    assert!(tool.list_stores(ListStoresRequest::default()).await.is_ok());
    admin.revoke_api_token(RevokeApiTokenRequest { id: op.id.clone() }).await.unwrap();
    let e = tool.list_stores(ListStoresRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let tokens = admin
        .list_api_tokens(backroom_api::operator::ListApiTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let first = tokens.iter().find(|t| t.role == "admin").unwrap();
    let e =
        admin.revoke_api_token(RevokeApiTokenRequest { id: first.id.clone() }).await.unwrap_err();
    assert!(e.message().contains("last admin token"), "{}", e.message());
    for action in ["enroll-token-revoke", "api-token-revoke"] {
        assert_eq!(audited(&c, action).await.len(), 1, "{action}");
    }

    // The same through centralctl (run beside this test's central, which must keep serving).
    let (server, token_file, ca) = (
        format!("https://{}", c.api),
        data.path().join("admin.token").display().to_string(),
        data.path().join("ca.crt").display().to_string(),
    );
    let ctl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_centralctl"));
        cmd.args(["--server", &server, "--token-file", &token_file, "--ca", &ca]).args(args);
        async move {
            let out = cmd.output().await.unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        }
    };
    let (ok, out) = ctl(&["token", "create", "--store", "store-0117"]).await;
    assert!(ok, "{out}");
    let (ok, out) = ctl(&["token", "list"]).await;
    assert!(
        ok && out.contains("store-0117") && out.contains("unused") && out.contains("revoked"),
        "{out}"
    );
    let (ok, out) = ctl(&["token", "revoke", "--store", "store-0117"]).await;
    assert!(ok && out.contains("revoked enrollment token"), "{out}");
    let (ok, out) = ctl(&["api-token", "list"]).await;
    assert!(ok && out.contains("tool") && out.contains("revoked"), "{out}");
    let (ok, out) = ctl(&["store", "revoke", "store-9999"]).await;
    assert!(!ok && out.contains("knows no store"), "{out}");
    c.stop().await;
}

// ---- finding 5: an outbox that lost its state -----------------------------------------------

#[tokio::test]
async fn an_outbox_that_lost_its_state_loses_no_event_and_reuses_no_number() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let dir = d.path().join("outbox");
    let now = backroom_session::now_ms();
    let outbox = Arc::new(Outbox::open(&dir, Limits::default()).unwrap());
    for i in 0..5 {
        outbox.push(now + i, "workload_restarted", "orders", "", &format!("before {i}")).unwrap();
    }
    let mut node = run_node(&node_url(&c), id.clone(), d.path(), Arc::clone(&outbox));
    node.wait_online(true).await;
    let ob = Arc::clone(&outbox);
    eventually("the first events are acknowledged", || {
        let ob = Arc::clone(&ob);
        async move { ob.pending() == 0 }
    })
    .await;
    node.task.abort();
    drop(node);
    drop(outbox);
    // Reopened (the acknowledged lines are compacted away), then the state file is lost.
    drop(Outbox::open(&dir, Limits::default()).unwrap());
    std::fs::remove_file(dir.join("outbox.state")).unwrap();
    let outbox = Arc::new(Outbox::open(&dir, Limits::default()).unwrap());
    for i in 0..3 {
        outbox.push(now + 10 + i, "crash_loop", "orders", "", &format!("after {i}")).unwrap();
    }
    let mut node = run_node(&node_url(&c), id, d.path(), Arc::clone(&outbox));
    node.wait_online(true).await;
    let a = admin.clone();
    eventually("the events raised after the loss reach central", || {
        let mut a = a.clone();
        async move {
            let s = a
                .get_store(GetStoreRequest { store_id: "store-0042".into(), events: 100 })
                .await
                .unwrap()
                .into_inner();
            (0..3).all(|i| s.events.iter().any(|e| e.message == format!("after {i}")))
        }
    })
    .await;
    let s = admin
        .get_store(GetStoreRequest { store_id: "store-0042".into(), events: 100 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.events.len(), 8, "each event once: {:?}", s.events);
    node.task.abort();
    c.stop().await;
}
