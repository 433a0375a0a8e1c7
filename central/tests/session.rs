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
use backroom_central::clock::{Clock, ManualClock, SystemClock};
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

#[tokio::test]
async fn enrollment_accepts_a_good_token_once_and_refuses_the_rest() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), Arc::new(SystemClock), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let url = node_url(&c);

    // Good: the node gets a certificate naming its store, kept 0600.
    let t = token(&mut admin, "store-0042", 3600).await;
    let n1 = tempfile::tempdir().unwrap();
    let id = enroll_once(&url, &t, n1.path(), "a", "h").await.unwrap();
    assert_eq!(id.store_id, "store-0042");
    use std::os::unix::fs::PermissionsExt;
    for f in ["node.key", "node.crt"] {
        assert_eq!(
            std::fs::metadata(n1.path().join(f)).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f}"
        );
    }

    // Reused: refused, with the reason.
    let n2 = tempfile::tempdir().unwrap();
    let e = enroll_once(&url, &t, n2.path(), "a", "h").await.unwrap_err().to_string();
    assert!(e.contains("already used"), "{e}");

    // Expired.
    let t = token(&mut admin, "store-0043", 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = enroll_once(&url, &t, n2.path(), "a", "h").await.unwrap_err().to_string();
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
    let c = start(data.path(), Arc::new(SystemClock), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d1 = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d1.path()).await;

    // A node that claims another store in its hello is refused.
    let impostor = Identity { store_id: "store-0117".into(), ..id.clone() };
    let node = run_node(&node_url(&c), impostor, d1.path(), mem_outbox());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!*node.online.borrow(), "a node must not get a session for another store");
    node.task.abort();

    // The real one gets in.
    let mut node = run_node(&node_url(&c), id.clone(), d1.path(), mem_outbox());
    node.wait_online(true).await;
    node.task.abort();

    // A replacement server enrolls the same store: the old certificate is revoked.
    let d2 = tempfile::tempdir().unwrap();
    let new_id = enroll(&c, &mut admin, "store-0042", d2.path()).await;
    let old = run_node(&node_url(&c), id, d1.path(), mem_outbox());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!*old.online.borrow(), "a revoked certificate must not open a session");
    old.task.abort();
    let mut new = run_node(&node_url(&c), new_id, d2.path(), mem_outbox());
    new.wait_online(true).await;
    c.stop().await;
}

#[tokio::test]
async fn fleet_push_records_revisions_only_when_they_change_and_reaches_the_node() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), Arc::new(SystemClock), any_port(), any_port()).await;
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
    let list = admin.list_stores(ListStoresRequest {}).await.unwrap().into_inner().stores;
    let s42 = list.iter().find(|s| s.store_id == "store-0042").unwrap();
    assert_eq!(s42.desired_revision, new_rev);
    c.stop().await;
}

#[tokio::test]
async fn events_are_stored_once_and_acknowledged_and_status_shows_up() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), Arc::new(SystemClock), any_port(), any_port()).await;
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
    let c = start(data.path(), Arc::new(SystemClock), any_port(), any_port()).await;
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
    tokio::time::sleep(Duration::from_millis(1200)).await;
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
    assert_eq!(sent.state, "sent");
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
    let clock = ManualClock::new(backroom_session::now_ms());
    let c = start(data.path(), Arc::new(clock.clone()), any_port(), any_port()).await;
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
            let list = a.list_stores(ListStoresRequest {}).await.unwrap().into_inner().stores;
            let off = list.iter().any(|s| s.store_id == "store-0117" && !s.online);
            let failed =
                list.iter().any(|s| s.store_id == "store-0042" && !s.last_apply_error.is_empty());
            off && failed
        }
    })
    .await;
    clock.advance(6 * 60_000);
    let mut groups = Vec::new();
    for _ in 0..50 {
        groups = a
            .list_alerts(ListAlertsRequest { include_resolved: false })
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
                .list_alerts(ListAlertsRequest { include_resolved: false })
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
    let c = start(data.path(), Arc::new(SystemClock), any_port(), any_port()).await;
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
    let c = start(data.path(), Arc::new(SystemClock), listen, api).await;
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
    let c = start(data.path(), Arc::new(SystemClock), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let old = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let new = backroom_session::enroll::renew(&node_url(&c), &old, d.path()).await.unwrap();
    assert_eq!(new.store_id, "store-0042");
    assert_ne!(new.cert_pem, old.cert_pem);
    assert_ne!(new.key_pem, old.key_pem, "a renewal makes a new key too");
    // Kept on disk for the next start.
    assert_eq!(Identity::load(d.path()).unwrap().unwrap().cert_pem, new.cert_pem);
    let stale = run_node(&node_url(&c), old, d.path(), mem_outbox());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !*stale.online.borrow(),
        "the certificate a renewal replaced no longer opens a session"
    );
    stale.task.abort();
    let mut fresh = run_node(&node_url(&c), new, d.path(), mem_outbox());
    fresh.wait_online(true).await;
    c.stop().await;
}
