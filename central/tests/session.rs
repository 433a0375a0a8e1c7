//! central with real nodes' links over real TLS on loopback: enrollment, identity, fleet push,
//! desired revisions, events, commands, alerts, restarts.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use backroom_api::node::{ApplyResult, Status, WorkloadStatus};
use backroom_api::operator::{
    FleetPushRequest, GetCommandRequest, GetStoreRequest, ListAlertsRequest, ListStoresRequest,
    SendCommandRequest, StoreProfile,
};
use backroom_daemon::{Clock, ManualClock, SharedClock};
use backroom_session::enroll::{Identity, enroll_once};
use backroom_session::outbox::{Limits, Outbox};
use backroom_session::token::EnrollToken;
use common::*;

fn fleet_push_request() -> FleetPushRequest {
    let stores = backroom_profiles::render_fleet(&repo("profiles/fleet")).unwrap();
    FleetPushRequest {
        stores: stores
            .into_iter()
            .map(|s| {
                let r = s.result.unwrap();
                StoreProfile {
                    store_id: s.id,
                    revision: r.revision.to_string(),
                    profile_yaml: r.to_yaml(),
                    source: r.source,
                }
            })
            .collect(),
    }
}

/// Whether the node gets a session within `within` (real time, against central's clock).
async fn online_within(node: &mut TestNode, within: Duration) -> bool {
    tokio::time::timeout(within, node.online.wait_for(|v| *v)).await.is_ok()
}

/// How long a node is given to get a session before a test says it did not: the real node
/// gets one within it in each test first (the positive control), so a refusal is a refusal.
const SESSION_WITHIN: Duration = Duration::from_secs(3);

fn manual_now() -> ManualClock {
    ManualClock::new(backroom_session::now_ms())
}

#[tokio::test]
async fn enrollment_accepts_a_good_token_once_and_refuses_the_rest() {
    let data = tempfile::tempdir().unwrap();
    let clock = manual_now();
    let c = start(data.path(), Arc::new(clock.clone()), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let url = node_url(&c);

    // Good: the node gets a certificate naming its store, kept (with its key, in one file) 0600.
    let t = token(&mut admin, "store-0042", 3600).await;
    let n1 = tempfile::tempdir().unwrap();
    let id = enroll_once(&url, &t, n1.path(), "a", "h").await.unwrap();
    assert_eq!(id.store_id, "store-0042");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(n1.path().join("identity.json")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!n1.path().join("enroll.key").exists(), "the enrollment's key is in the identity now");

    // Reused: refused, with the reason.
    let n2 = tempfile::tempdir().unwrap();
    let e = enroll_once(&url, &t, n2.path(), "a", "h").await.unwrap_err().to_string();
    assert!(e.contains("already used"), "{e}");

    // Expired, on central's clock: a token of one second works 999 ms later, and its twin
    // made at the same moment is refused one millisecond after that.
    let early = token(&mut admin, "store-0043", 1).await;
    let late = token(&mut admin, "store-0043", 1).await;
    clock.advance(Duration::from_millis(999));
    let n3 = tempfile::tempdir().unwrap();
    enroll_once(&url, &early, n3.path(), "a", "h").await.unwrap();
    clock.advance(Duration::from_millis(1));
    let e = enroll_once(&url, &late, n2.path(), "a", "h").await.unwrap_err().to_string();
    assert!(e.contains("expired"), "{e}");

    // Wrong store: a token for one store edited to name another is not a token central made.
    let t = token(&mut admin, "store-0044", 3600).await;
    let forged = EnrollToken { store_id: "store-0045".into(), ..t.clone() };
    let e = enroll_once(&url, &forged, n2.path(), "a", "h").await.unwrap_err().to_string();
    assert!(e.contains("not known"), "{e}");

    // A token that names another CA: the node refuses to talk to this central at all.
    let other_ca = EnrollToken { ca_fingerprint: "0".repeat(64), ..t };
    let e = enroll_once(&url, &other_ca, n2.path(), "a", "h").await.unwrap_err();
    assert!(matches!(e, backroom_session::enroll::EnrollError::Tls(_)), "{e}");
    c.stop().await;
}

#[tokio::test]
async fn a_node_speaks_only_for_its_own_store_and_a_replaced_certificate_stops_working() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d1 = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d1.path()).await;

    // The real one gets in, within the time the refusals below are given.
    let mut node = run_node(&node_url(&c), id.clone(), d1.path(), mem_outbox());
    assert!(online_within(&mut node, SESSION_WITHIN).await);
    node.task.abort();

    // A node that claims another store in its hello is refused.
    let impostor = Identity { store_id: "store-0117".into(), ..id.clone() };
    let mut node = run_node(&node_url(&c), impostor, d1.path(), mem_outbox());
    assert!(
        !online_within(&mut node, SESSION_WITHIN).await,
        "a node must not get a session for another store"
    );
    node.task.abort();

    // A replacement server enrolls the same store: the old certificate is revoked.
    let d2 = tempfile::tempdir().unwrap();
    let new_id = enroll(&c, &mut admin, "store-0042", d2.path()).await;
    let mut new = run_node(&node_url(&c), new_id, d2.path(), mem_outbox());
    assert!(online_within(&mut new, SESSION_WITHIN).await);
    new.task.abort();
    let mut old = run_node(&node_url(&c), id, d1.path(), mem_outbox());
    assert!(
        !online_within(&mut old, SESSION_WITHIN).await,
        "a revoked certificate must not open a session"
    );
    old.task.abort();
    c.stop().await;
}

#[tokio::test]
async fn fleet_push_records_revisions_only_when_they_change_and_reaches_the_node() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;

    // An offline store gets its revision when it connects.
    let push = fleet_push_request();
    let first = admin.fleet_push(push.clone()).await.unwrap().into_inner();
    assert!(first.stores.iter().all(|s| s.changed));
    let again = admin.fleet_push(push.clone()).await.unwrap().into_inner();
    assert!(again.stores.iter().all(|s| !s.changed), "same fleet, same revisions");
    let rev42 = push.stores.iter().find(|s| s.store_id == "store-0042").unwrap().revision.clone();

    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let mut node = run_node(&node_url(&c), id, d.path(), mem_outbox());
    node.wait_online(true).await;
    let desired = Arc::clone(&node.desired);
    eventually("the desired revision reaches the node", || {
        let d = Arc::clone(&desired);
        let rev = rev42.clone();
        async move { d.lock().unwrap().contains(&rev) }
    })
    .await;

    // A change to one store reaches that online store at once.
    let mut changed = push.clone();
    let s = changed.stores.iter_mut().find(|s| s.store_id == "store-0042").unwrap();
    let yaml = s.profile_yaml.replace("version: \"2026.11.2\"", "version: \"2026.11.3\"");
    let r = backroom_profiles::render_str("x.yaml", &yaml).unwrap();
    s.profile_yaml = r.to_yaml();
    s.revision = r.revision.to_string();
    let new_rev = s.revision.clone();
    let out = admin.fleet_push(changed.clone()).await.unwrap().into_inner();
    assert_eq!(
        out.stores.iter().filter(|s| s.changed).map(|s| s.store_id.as_str()).collect::<Vec<_>>(),
        ["store-0042"]
    );
    eventually("the new revision reaches the online node", || {
        let d = Arc::clone(&desired);
        let rev = new_rev.clone();
        async move { d.lock().unwrap().contains(&rev) }
    })
    .await;

    // An invalid document is refused and nothing is recorded.
    let mut bad = changed.clone();
    bad.stores[1].profile_yaml = bad.stores[1].profile_yaml.replace("vlan: 10", "vlan: 5000");
    let e = admin.fleet_push(bad).await.unwrap_err();
    assert!(e.message().contains("nothing was recorded"), "{}", e.message());
    let mut wrong_rev = changed.clone();
    wrong_rev.stores[0].revision = "f".repeat(64);
    assert!(admin.fleet_push(wrong_rev).await.is_err());
    let list = admin.list_stores(ListStoresRequest::default()).await.unwrap().into_inner().stores;
    let s42 = list.iter().find(|s| s.store_id == "store-0042").unwrap();
    assert_eq!(s42.desired_revision, new_rev);
    c.stop().await;
}

#[tokio::test]
async fn events_are_stored_once_and_acknowledged_and_status_shows_up() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    // Events raised before the node ever connected wait in its durable outbox.
    let outbox = Arc::new(Outbox::open(&d.path().join("outbox"), Limits::default()).unwrap());
    for i in 0..25 {
        outbox
            .push(
                backroom_session::now_ms() + i,
                "workload_restarted",
                "orders",
                "",
                &format!("restart {i}"),
            )
            .unwrap();
    }
    let mut node = run_node(&node_url(&c), id, d.path(), Arc::clone(&outbox));
    node.wait_online(true).await;
    let ob = Arc::clone(&outbox);
    eventually("central acknowledges every event", || {
        let ob = Arc::clone(&ob);
        async move { ob.pending() == 0 }
    })
    .await;
    node.status.send_replace(Status {
        applied_revision: "a".repeat(64),
        agent_version: "test-agent 1.0".into(),
        last_apply: Some(ApplyResult { revision: "a".repeat(64), ok: true, ..Default::default() }),
        workloads: vec![WorkloadStatus {
            name: "orders".into(),
            kind: "container".into(),
            state: "running".into(),
            healthy: true,
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut a2 = admin.clone();
    eventually("the status reaches central", || {
        let mut a = a2.clone();
        async move {
            let s = a
                .get_store(GetStoreRequest { store_id: "store-0042".into(), events: 100 })
                .await
                .unwrap()
                .into_inner();
            s.workloads.len() == 1 && s.summary.unwrap().workloads_healthy == 1
        }
    })
    .await;
    let s = a2
        .get_store(GetStoreRequest { store_id: "store-0042".into(), events: 100 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.events.len(), 25);
    let mut seqs: Vec<u64> = s.events.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    c.stop().await;
}

#[tokio::test]
async fn commands_go_at_once_to_online_stores_and_wait_for_offline_ones() {
    let data = tempfile::tempdir().unwrap();
    let clock = manual_now();
    let c = start(data.path(), Arc::new(clock.clone()), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;

    // Offline: queued, then delivered when the store connects.
    let queued = admin
        .send_command(SendCommandRequest {
            store_id: "store-0042".into(),
            kind: "restart".into(),
            workload: "orders".into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(queued.state, "queued");
    let expiring = admin
        .send_command(SendCommandRequest {
            store_id: "store-0042".into(),
            kind: "reconcile".into(),
            workload: String::new(),
            ttl_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    // One second on central's clock: the reconcile (ttl 1s) expires, the restart (60s) waits.
    clock.advance(Duration::from_secs(1));
    let mut node = run_node(&node_url(&c), id, d.path(), mem_outbox());
    node.wait_online(true).await;
    let mut a = admin.clone();
    let qid = queued.id.clone();
    eventually("the queued command is done", || {
        let mut a = a.clone();
        let id = qid.clone();
        async move {
            a.get_command(GetCommandRequest { id }).await.unwrap().into_inner().state == "done"
        }
    })
    .await;
    let e = a.get_command(GetCommandRequest { id: expiring.id }).await.unwrap().into_inner();
    assert_eq!(e.state, "expired", "an expired command is never delivered");
    assert_eq!(
        node.commands.lock().unwrap().clone(),
        vec![("restart".to_string(), "orders".to_string())]
    );

    // Online: sent at once, with a result.
    let sent = a
        .send_command(SendCommandRequest {
            store_id: "store-0042".into(),
            kind: "restart".into(),
            workload: "menu".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // Pushed to the session; `sent` once the node acknowledges it.
    assert_eq!(sent.state, "sending");
    let sid = sent.id.clone();
    eventually("the command's result comes back", || {
        let mut a = a.clone();
        let id = sid.clone();
        async move {
            let c = a.get_command(GetCommandRequest { id }).await.unwrap().into_inner();
            c.state == "done" && c.result == "restarted"
        }
    })
    .await;
    assert!(
        a.send_command(SendCommandRequest {
            store_id: "store-0042".into(),
            kind: "format-disk".into(),
            workload: String::new(),
            ttl_seconds: 0
        })
        .await
        .is_err()
    );
    c.stop().await;
}

#[tokio::test]
async fn alerts_group_offline_stores_unhealthy_workloads_and_failed_applies() {
    let data = tempfile::tempdir().unwrap();
    let clock = manual_now();
    // Six minutes pass on central's clock in one step, between two heartbeats of the nodes
    // (which keep real time): sessions are not judged quiet here (the next test does that).
    let settings = backroom_central::app::Settings {
        session_timeout_ms: 3_600_000,
        ..common::test_settings()
    };
    let c =
        start_with(data.path(), Arc::new(clock.clone()), any_port(), any_port(), settings).await;
    let mut admin = admin(&c, data.path()).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id1 = enroll(&c, &mut admin, "store-0042", d1.path()).await;
    let id2 = enroll(&c, &mut admin, "store-0117", d2.path()).await;
    let mut n1 = run_node(&node_url(&c), id1, d1.path(), mem_outbox());
    let mut n2 = run_node(&node_url(&c), id2, d2.path(), mem_outbox());
    n1.wait_online(true).await;
    n2.wait_online(true).await;
    let now = clock.now_ms();
    n1.status.send_replace(Status {
        applied_revision: "a".repeat(64),
        last_apply: Some(ApplyResult {
            revision: "b".repeat(64),
            ok: false,
            message: "netd refused: VLAN 10 is used twice".into(),
            rolled_back_to: "a".repeat(64),
        }),
        workloads: vec![WorkloadStatus {
            name: "orders".into(),
            kind: "container".into(),
            state: "unhealthy".into(),
            healthy: false,
            since_unix_ms: now,
            reason: "http /healthz: 503".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    // store-0117 goes away.
    n2.task.abort();
    let mut a = admin.clone();
    eventually("central sees store-0117 offline and store-0042's status", || {
        let mut a = a.clone();
        async move {
            let list =
                a.list_stores(ListStoresRequest::default()).await.unwrap().into_inner().stores;
            let off = list.iter().any(|s| s.store_id == "store-0117" && !s.online);
            let failed =
                list.iter().any(|s| s.store_id == "store-0042" && !s.last_apply_error.is_empty());
            off && failed
        }
    })
    .await;
    clock.advance(Duration::from_secs(6 * 60));
    let mut groups = Vec::new();
    for _ in 0..50 {
        groups = a
            .list_alerts(ListAlertsRequest { include_resolved: false, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .groups;
        if groups.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kinds: Vec<&str> = groups.iter().map(|g| g.kind.as_str()).collect();
    assert!(kinds.contains(&"store_offline"), "{groups:?}");
    assert!(kinds.contains(&"workload_unhealthy"), "{groups:?}");
    assert!(kinds.contains(&"apply_failed"), "{groups:?}");
    let off = groups.iter().find(|g| g.kind == "store_offline").unwrap();
    assert_eq!(off.alerts.len(), 1);
    assert_eq!(off.alerts[0].store_id, "store-0117");
    let unhealthy = groups.iter().find(|g| g.kind == "workload_unhealthy").unwrap();
    assert_eq!(unhealthy.alerts[0].subject, "orders");

    // The workload recovers: its alert resolves by itself.
    n1.status.send_replace(Status {
        applied_revision: "a".repeat(64),
        last_apply: Some(ApplyResult { revision: "a".repeat(64), ok: true, ..Default::default() }),
        workloads: vec![WorkloadStatus {
            name: "orders".into(),
            kind: "container".into(),
            state: "running".into(),
            healthy: true,
            ..Default::default()
        }],
        ..Default::default()
    });
    eventually("the unhealthy and apply alerts resolve", || {
        let mut a = a.clone();
        async move {
            let g = a
                .list_alerts(ListAlertsRequest { include_resolved: false, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .groups;
            g.len() == 1 && g[0].kind == "store_offline"
        }
    })
    .await;
    n1.task.abort();
    c.stop().await;
}

#[tokio::test]
async fn nodes_reconnect_after_central_restarts_and_nothing_is_lost() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let (listen, api) = (c.listen, c.api);
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let outbox = Arc::new(Outbox::open(&d.path().join("outbox"), Limits::default()).unwrap());
    let mut node = run_node(&node_url(&c), id, d.path(), Arc::clone(&outbox));
    node.wait_online(true).await;
    c.stop().await;
    node.wait_online(false).await;
    // Events raised while central is away.
    for i in 0..10 {
        outbox
            .push(
                backroom_session::now_ms() + i,
                "workload_unhealthy",
                "orders",
                "",
                "raised offline",
            )
            .unwrap();
    }
    let c = start(data.path(), backroom_daemon::clock::system(), listen, api).await;
    node.wait_online(true).await;
    let ob = Arc::clone(&outbox);
    eventually("the offline events reach central", || {
        let ob = Arc::clone(&ob);
        async move { ob.pending() == 0 }
    })
    .await;
    let mut admin = common::admin(&c, data.path()).await;
    let s = admin
        .get_store(GetStoreRequest { store_id: "store-0042".into(), events: 100 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.events.len(), 10);
    c.stop().await;
}

#[tokio::test]
async fn a_renewed_certificate_replaces_the_old_one() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let old = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let new = backroom_session::enroll::renew(&node_url(&c), &old, d.path()).await.unwrap();
    assert_eq!(new.store_id, "store-0042");
    assert_ne!(new.cert_pem, old.cert_pem);
    assert_ne!(new.key_pem, old.key_pem, "a renewal makes a new key too");
    // Kept on disk for the next start.
    assert_eq!(Identity::load(d.path()).unwrap().unwrap().cert_pem, new.cert_pem);
    let mut fresh = run_node(&node_url(&c), new, d.path(), mem_outbox());
    assert!(online_within(&mut fresh, SESSION_WITHIN).await);
    fresh.task.abort();
    let mut stale = run_node(&node_url(&c), old, d.path(), mem_outbox());
    assert!(
        !online_within(&mut stale, SESSION_WITHIN).await,
        "the certificate a renewal replaced no longer opens a session"
    );
    stale.task.abort();
    c.stop().await;
}

#[tokio::test]
async fn a_node_that_goes_quiet_is_offline_once_the_timeout_passes_on_centrals_clock() {
    let data = tempfile::tempdir().unwrap();
    let clock = manual_now();
    let c = start(data.path(), Arc::new(clock.clone()), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    // The node's own clock never moves: it sends hello and its status, then no heartbeat.
    let frozen: SharedClock = Arc::new(ManualClock::new(0));
    let mut node = run_node_on(&node_url(&c), id, d.path(), mem_outbox(), frozen);
    node.wait_online(true).await;
    let a = admin.clone();
    eventually("central has the node's status (its last message)", || {
        let mut a = a.clone();
        async move {
            let list =
                a.list_stores(ListStoresRequest::default()).await.unwrap().into_inner().stores;
            list.iter().any(|s| s.store_id == "store-0042" && s.agent_version == "test-agent 1.0")
        }
    })
    .await;
    let seen = Duration::from_secs(1);
    // Exactly the timeout (4s) of silence: still a session, for as long as the check below
    // then waits (five turns of central's background job)…
    clock.advance(Duration::from_millis(4000));
    tokio::time::sleep(seen).await;
    assert!(*node.online.borrow(), "a session is closed only after the timeout");
    // …and one millisecond more is silence enough: the same wait sees it closed.
    clock.advance(Duration::from_millis(1));
    tokio::time::timeout(seen, node.online.wait_for(|v| !*v))
        .await
        .expect("the quiet session is closed")
        .unwrap();
    eventually("central shows the store offline", || {
        let mut a = a.clone();
        async move {
            let list =
                a.list_stores(ListStoresRequest::default()).await.unwrap().into_inner().stores;
            list.iter().any(|s| s.store_id == "store-0042" && !s.online)
        }
    })
    .await;
    node.task.abort();
    c.stop().await;
}

#[tokio::test]
async fn a_failing_problem_reaches_the_operator_and_its_recovery_resolves_it() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let outbox = mem_outbox();
    let mut node = run_node(&node_url(&c), id, d.path(), Arc::clone(&outbox));
    node.wait_online(true).await;

    // netd's uplink check starts failing: one event, and the problem in the node's status.
    let since = backroom_session::now_ms();
    let why = "uplink eno1: the link eno1 does not exist";
    outbox.push(since, "failing", "", "uplink eno1", why).unwrap();
    let problem = backroom_api::common::Problem {
        subject: "uplink eno1".into(),
        message: "the link eno1 does not exist".into(),
        since_unix_ms: since,
        failures: 3,
        source: "netd".into(),
    };
    node.status.send_replace(Status {
        agent_version: "test-agent 1.0".into(),
        problems: vec![problem],
        ..Default::default()
    });
    let get = |mut a: backroom_central::client::Client| async move {
        a.get_store(GetStoreRequest { store_id: "store-0042".into(), events: 20 })
            .await
            .unwrap()
            .into_inner()
    };
    let alerts = |mut a: backroom_central::client::Client| async move {
        a.list_alerts(ListAlertsRequest { include_resolved: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
    };
    let a = admin.clone();
    eventually("the problem, its event and its alert reach central", || {
        let a = a.clone();
        async move {
            let s = get(a.clone()).await;
            let g = alerts(a).await;
            let open = g.groups.iter().any(|g| {
                g.kind == "problem"
                    && g.alerts.iter().any(|x| x.subject == "uplink eno1" && !x.resolved)
            });
            s.problems.len() == 1 && s.events.iter().any(|e| e.subject == "uplink eno1") && open
        }
    })
    .await;
    // What the operator reads.
    let s = get(admin.clone()).await;
    let shown = backroom_central::ctl_report::store(&s, backroom_session::now_ms());
    assert!(shown.contains("problems:"), "{shown}");
    assert!(shown.contains("uplink eno1  netd"), "{shown}");
    assert!(shown.contains(&format!("failing [uplink eno1]: {why}")), "{shown}");
    let g = alerts(admin.clone()).await;
    let group = g.groups.iter().find(|g| g.kind == "problem").unwrap();
    assert_eq!(group.alerts.len(), 1, "one alert per (store, subject): {group:?}");
    assert_eq!(group.alerts[0].store_id, "store-0042");
    assert_eq!(group.alerts[0].message, why);

    // It works again: the recovered event resolves the alert; the status drops the problem.
    outbox
        .push(
            backroom_session::now_ms(),
            "recovered",
            "",
            "uplink eno1",
            "uplink eno1 works again (it had failed for 42s: the link eno1 does not exist)",
        )
        .unwrap();
    node.status
        .send_replace(Status { agent_version: "test-agent 1.0".into(), ..Default::default() });
    let a = admin.clone();
    eventually("the alert resolves and the problem is gone", || {
        let a = a.clone();
        async move {
            let s = get(a.clone()).await;
            let g = alerts(a).await;
            let resolved = g.groups.iter().any(|g| {
                g.kind == "problem"
                    && g.alerts.iter().any(|x| x.subject == "uplink eno1" && x.resolved)
            });
            s.problems.is_empty() && resolved
        }
    })
    .await;
    let s = get(admin.clone()).await;
    assert!(!backroom_central::ctl_report::store(&s, 0).contains("problems:"));
    let open = admin
        .list_alerts(ListAlertsRequest { include_resolved: false, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(open.groups.iter().all(|g| g.kind != "problem"), "{open:?}");
    node.task.abort();
    c.stop().await;
}
