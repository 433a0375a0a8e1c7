//! What bounds central against what stores, links and attackers send: the node port's
//! connection limit and TLS handshake deadline, bounded batches and strings, retention and the
//! alert cap on central's clock, pages, and the operator API's rules (replacement tokens, env
//! values hidden from viewers, the audit trail, the data folder's modes, the profile size).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use backroom_api::node::EventBatch;
use backroom_api::operator::{
    CreateEnrollTokenRequest, FleetPushRequest, FleetStatusRequest, ListAlertsRequest,
    ListAuditRequest, ListStoresRequest, StoreProfile,
};
use backroom_central::app::Settings;
use backroom_central::db::Retention;
use backroom_daemon::ManualClock;
use common::*;
use tokio::io::AsyncReadExt;

fn manual_now() -> ManualClock {
    ManualClock::new(backroom_session::now_ms())
}

/// Whether the peer closes `s` within `within` (reads return end of file or an error).
async fn closed(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_handshake_is_dropped_at_the_deadline() {
    let data = tempfile::tempdir().unwrap();
    let clock = manual_now();
    let mut cfg = test_config(data.path(), any_port(), any_port(), test_settings());
    cfg.node_port.handshake_timeout = Duration::from_secs(10);
    let c = start_cfg(cfg, Arc::new(clock.clone())).await;
    // The retention job sleeps on the clock too: count it in before the handshake's timer.
    assert!(clock.wait_for_timers(1, Duration::from_secs(5)).await);
    let before = clock.timers();
    let mut silent = tokio::net::TcpStream::connect(c.listen).await.unwrap();
    assert!(clock.wait_for_timers(before + 1, Duration::from_secs(5)).await);
    // Just short of the deadline it is still open; at the deadline it is dropped.
    clock.advance(Duration::from_millis(9_999));
    assert!(!closed(&mut silent, Duration::from_millis(300)).await, "dropped too early");
    clock.advance(Duration::from_millis(1));
    assert!(closed(&mut silent, Duration::from_secs(5)).await, "a silent connection stayed open");
    c.stop().await;
}

#[tokio::test]
async fn the_node_port_holds_at_most_its_connection_limit() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(data.path(), any_port(), any_port(), test_settings());
    cfg.node_port.max_connections = 3;
    let c = start_cfg(cfg, backroom_daemon::clock::system()).await;
    let mut admin = admin(&c, data.path()).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(c.listen).await.unwrap());
    }
    // The fourth is closed at once, and a node cannot enroll while the port is full.
    let mut fourth = tokio::net::TcpStream::connect(c.listen).await.unwrap();
    assert!(closed(&mut fourth, Duration::from_secs(5)).await, "a fourth connection was kept");
    let t = token(&mut admin, "store-0042", 600).await;
    let d = tempfile::tempdir().unwrap();
    let url = node_url(&c);
    let refused = backroom_session::enroll::enroll_once(&url, &t, d.path(), "a", "h").await;
    assert!(refused.is_err(), "enrolled through a full port");
    // Once they close, the port takes connections again: the same enrollment works.
    held.clear();
    let mut ok = None;
    for _ in 0..50 {
        match backroom_session::enroll::enroll_once(&url, &t, d.path(), "a", "h").await {
            Ok(id) => {
                ok = Some(id);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(ok.map(|i| i.store_id).as_deref(), Some("store-0042"));
    c.stop().await;
}

#[tokio::test]
async fn a_session_outlives_the_node_ports_request_timeout() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(data.path(), any_port(), any_port(), test_settings());
    cfg.node_request_timeout = Duration::from_millis(500);
    let c = start_cfg(cfg, backroom_daemon::clock::system()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let mut node = run_node(&node_url(&c), id, d.path(), mem_outbox());
    node.wait_online(true).await;
    node.online.borrow_and_update();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!node.online.has_changed().unwrap(), "the session was cut by the request timeout");
    assert!(c.app.hub.is_online("store-0042"));
    node.task.abort();
    c.stop().await;
}

#[tokio::test]
async fn an_oversized_batch_is_stored_up_to_its_limit_cut_to_size_and_the_rest_comes_later() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let mut s = RawSession::open(&c, &id).await;
    let long = "é".repeat(3000);
    let events: Vec<_> =
        (1..=2500u64).map(|q| event(q, "crash_loop_x", &"w".repeat(600), &long)).collect();
    s.send(NBody::Events(EventBatch { events })).await;
    assert_eq!(s.next_ack().await, Some(1000));
    assert!(s.closed_within(Duration::from_secs(10)).await, "the session stayed open");
    assert_eq!(c.app.db.count_events("store-0042").await.unwrap(), 1000);
    let stored = c.app.db.recent_events("store-0042", 1).await.unwrap();
    assert!(stored[0].message.len() <= 4096 && stored[0].message.ends_with('…'));
    assert!(stored[0].workload.len() <= 256);
    // The next session carries on from the ack.
    let mut s = RawSession::open(&c, &id).await;
    let rest: Vec<_> = (1001..=2500u64).map(|q| event(q, "k", "w", "m")).collect();
    s.send(NBody::Events(EventBatch { events: rest[..1000].to_vec() })).await;
    assert_eq!(s.next_ack().await, Some(2000));
    c.stop().await;
}

#[tokio::test]
async fn retention_deletes_old_events_on_centrals_clock_in_the_background() {
    let data = tempfile::tempdir().unwrap();
    let clock = manual_now();
    let settings = Settings {
        retention: Retention {
            event_max_age_ms: 3_600_000,
            events_per_store: 1000,
            ..Retention::default()
        },
        ..test_settings()
    };
    let mut cfg = test_config(data.path(), any_port(), any_port(), settings);
    cfg.retention_interval = Duration::from_secs(600);
    let c = start_cfg(cfg, Arc::new(clock.clone())).await;
    c.app.db.set_certificate("store-0042", None, "aa", i64::MAX, 1, true).await.unwrap();
    let events: Vec<_> = (1..=5u64)
        .map(|seq| backroom_central::db::NewEvent {
            store_id: "store-0042".into(),
            seq,
            at_ms: 0,
            kind: "k".into(),
            workload: String::new(),
            message: "m".into(),
            subject: String::new(),
        })
        .collect();
    c.app.ingest.submit(events).await.unwrap();
    let sweeps = || c.app.sweeps.load(std::sync::atomic::Ordering::SeqCst);
    // A pass at +10 min runs and keeps them (they are 10 minutes old)…
    clock.advance(Duration::from_secs(600));
    eventually("a retention pass", || async { sweeps() >= 1 }).await;
    assert_eq!(c.app.db.count_events("store-0042").await.unwrap(), 5);
    // …and the pass after they passed an hour deletes them.
    let done = sweeps();
    assert!(clock.wait_for_timers(1, Duration::from_secs(5)).await);
    clock.advance(Duration::from_secs(3_001));
    eventually("a second retention pass", || async { sweeps() > done }).await;
    assert_eq!(c.app.db.count_events("store-0042").await.unwrap(), 0);
    c.stop().await;
}

#[tokio::test]
async fn a_store_opens_at_most_its_cap_of_alerts_and_one_that_says_so() {
    let data = tempfile::tempdir().unwrap();
    let settings = Settings { max_open_alerts_per_store: 5, ..test_settings() };
    let c =
        start_with(data.path(), backroom_daemon::clock::system(), any_port(), any_port(), settings)
            .await;
    let mut admin = admin(&c, data.path()).await;
    let d = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, "store-0042", d.path()).await;
    let mut s = RawSession::open(&c, &id).await;
    // Twenty workloads with names made up on the spot, each crash-looping.
    let events: Vec<_> =
        (1..=20u64).map(|q| event(q, "crash_loop", &format!("w{q}"), "crash loop")).collect();
    s.send(NBody::Events(EventBatch { events })).await;
    assert_eq!(s.next_ack().await, Some(20));
    let kinds = |r: backroom_api::operator::ListAlertsReply| {
        r.groups.into_iter().map(|g| (g.kind, g.alerts.len())).collect::<Vec<_>>()
    };
    let mut a2 = admin.clone();
    eventually("the alert limit", || {
        let mut a = a2.clone();
        async move {
            let r = a.list_alerts(ListAlertsRequest::default()).await.unwrap().into_inner();
            kinds(r).iter().any(|(k, _)| k == "alert_limit")
        }
    })
    .await;
    let r = a2.list_alerts(ListAlertsRequest::default()).await.unwrap().into_inner();
    assert_eq!(kinds(r), [("alert_limit".to_string(), 1), ("crash_loop".to_string(), 5)]);
    // Pages: two alerts at a time, the same six in all.
    let mut seen = 0;
    let mut page_token = String::new();
    loop {
        let r = a2
            .list_alerts(ListAlertsRequest { page_size: 2, page_token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        seen += r.groups.iter().map(|g| g.alerts.len()).sum::<usize>();
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    assert_eq!(seen, 6);
    // They recover: the crash loops resolve, and so does the limit.
    let events: Vec<_> = (21..=40u64)
        .map(|q| event(q, "workload_recovered", &format!("w{}", q - 20), "ok"))
        .collect();
    s.send(NBody::Events(EventBatch { events })).await;
    assert_eq!(s.next_ack().await, Some(40));
    eventually("every alert resolved", || {
        let mut a = admin.clone();
        async move {
            let r = a.list_alerts(ListAlertsRequest::default()).await.unwrap().into_inner();
            r.groups.is_empty()
        }
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn store_list_comes_in_pages() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    for i in 0..7 {
        c.app.db.set_certificate(&format!("store-{i:04}"), None, "aa", 1, 1, true).await.unwrap();
    }
    let mut ids = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let r = admin
            .list_stores(ListStoresRequest { page_size: 3, page_token })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        ids.extend(r.stores.into_iter().map(|s| s.store_id));
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(ids.len(), 7);
    c.stop().await;
}

fn fleet() -> FleetPushRequest {
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
async fn a_token_for_an_enrolled_store_needs_an_admin_who_says_replace() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let mut operator = with_role(&c, &mut admin, "operator").await;
    let req = |replace| CreateEnrollTokenRequest {
        store_id: "store-0042".into(),
        region: String::new(),
        ttl_seconds: 600,
        replace,
    };
    // Not enrolled yet: an operator makes the token.
    let t = operator.create_enroll_token(req(false)).await.unwrap().into_inner().token;
    let t = backroom_session::token::EnrollToken::parse(&t).unwrap();
    let d = tempfile::tempdir().unwrap();
    backroom_session::enroll::enroll_once(&node_url(&c), &t, d.path(), "a", "h").await.unwrap();
    // Enrolled: refused without --replace, to an operator even with it; an admin with it gets one.
    let e = operator.create_enroll_token(req(false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("--replace"), "{}", e.message());
    let e = admin.create_enroll_token(req(false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = operator.create_enroll_token(req(true)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    admin.create_enroll_token(req(true)).await.unwrap();
    let r = admin
        .list_audit(ListAuditRequest { store_id: "store-0042".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<&str> = r.records.iter().map(|a| a.action.as_str()).collect();
    assert!(actions.contains(&"enroll-token-replace"), "{actions:?}");
    // The same through centralctl, filtered by store and actor.
    // (tokio's Command: central runs on this test's one thread and must answer meanwhile.)
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_centralctl"))
        .args(["audit", "--store", "store-0042", "--actor", "admin (first start)", "--since", "1h"])
        .env("BACKROOM_SERVER", format!("https://{}", c.api))
        .env("BACKROOM_CA", data.path().join("ca.crt"))
        .env("BACKROOM_TOKEN_FILE", data.path().join("admin.token"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("WHEN") && text.contains("enroll-token-replace"), "{text}");
    assert!(!text.contains("test operator"), "the actor filter let another through: {text}");
    // Only an admin reads the audit trail.
    let e = operator.list_audit(ListAuditRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    c.stop().await;
}

#[tokio::test]
async fn a_viewer_never_sees_env_values() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    // The sample coffee shop with a database password in one workload's env.
    let secret = "s3cr3t-pa55word";
    let base = backroom_profiles::render_file(&repo("profiles/fleet/stores/store-0042.yaml"))
        .unwrap()
        .to_yaml();
    assert!(base.contains("/data/orders.db"));
    let yaml = base.replace("/data/orders.db", secret);
    let r = backroom_profiles::render_str("store-0042.yaml", &yaml).unwrap();
    let store = StoreProfile {
        store_id: "store-0042".into(),
        revision: r.revision.to_string(),
        profile_yaml: r.to_yaml(),
        source: "store-0042.yaml".into(),
    };
    admin.fleet_push(FleetPushRequest { stores: vec![store] }).await.unwrap();
    let seen = |r: backroom_api::operator::FleetStatusReply| {
        r.stores.iter().any(|s| s.profile_yaml.contains(secret))
    };
    let mut operator = with_role(&c, &mut admin, "operator").await;
    let r = operator.fleet_status(FleetStatusRequest::default()).await.unwrap().into_inner();
    assert!(!r.env_redacted && seen(r), "an operator sees the values");
    let mut viewer = with_role(&c, &mut admin, "viewer").await;
    let r = viewer.fleet_status(FleetStatusRequest::default()).await.unwrap().into_inner();
    assert!(r.env_redacted);
    assert!(
        r.stores.iter().any(|s| s.profile_yaml.contains("<redacted>")),
        "{:?}",
        r.stores
            .iter()
            .map(|s| &s.profile_yaml[..s.profile_yaml.len().min(300)])
            .collect::<Vec<_>>()
    );
    assert!(!seen(r), "a viewer saw an env value");
    c.stop().await;
}

#[tokio::test]
async fn a_push_whose_audit_record_cannot_be_written_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    // Someone (a full disk, a broken restore) makes the audit table unwritable.
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", data.path().join("central.db").display());
    let mut other = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::Executor::execute(&mut other, "ALTER TABLE audit RENAME TO audit_gone").await.unwrap();
    let e = admin.fleet_push(fleet()).await.unwrap_err();
    assert!(e.message().contains("nothing was changed"), "{}", e.message());
    let stores = admin.list_stores(ListStoresRequest::default()).await.unwrap().into_inner();
    assert!(stores.stores.iter().all(|s| s.desired_revision.is_empty()), "{stores:?}");
    let e = admin
        .create_api_token(backroom_api::operator::CreateApiTokenRequest {
            name: "x".into(),
            role: "viewer".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("nothing was changed"), "{}", e.message());
    // Back: the push is recorded, each changed store with its revision.
    sqlx::Executor::execute(&mut other, "ALTER TABLE audit_gone RENAME TO audit").await.unwrap();
    let pushed = admin.fleet_push(fleet()).await.unwrap().into_inner();
    let first = &pushed.stores[0];
    let r = admin
        .list_audit(ListAuditRequest { store_id: first.store_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.records.iter().any(|a| a.action == "fleet-push" && a.detail.contains(&first.revision)),
        "{r:?}"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_store_profile_too_large_for_a_node_is_refused_at_push_with_the_store_named() {
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let mut req = fleet();
    let big = &mut req.stores[1];
    let name = big.store_id.clone();
    big.profile_yaml.push_str(&format!("# {}\n", "x".repeat(5 << 20)));
    let e = admin.fleet_push(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains(&format!("{name}: its rendered profile is")), "{}", e.message());
    assert!(e.message().contains("nothing was recorded"), "{}", e.message());
    // The largest profile central takes fits in what a node decodes, with room to spare.
    const { assert!(backroom_api::limits::PROFILE_MAX * 2 <= backroom_api::limits::CENTRAL_MESSAGE_MAX) };
    assert_eq!(backroom_api::limits::PROFILE_MAX, backroom_profiles::yaml::MAX_FILE_BYTES);
    c.stop().await;
}

#[tokio::test]
async fn the_data_folder_is_0700_and_its_files_0600_and_are_made_so_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("central");
    let c = start(&data, backroom_daemon::clock::system(), any_port(), any_port()).await;
    c.stop().await;
    let check = || {
        assert_eq!(mode(&data), 0o700);
        let mut files = 0;
        for e in std::fs::read_dir(&data).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            files += 1;
        }
        assert!(files >= 4, "ca.key, ca.crt, admin.token, central.db at least");
    };
    check();
    // An older central (or a restore) left them open: the next start closes them.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["central.db", "ca.crt", "admin.token"] {
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let c = start(&data, backroom_daemon::clock::system(), any_port(), any_port()).await;
    check();
    c.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_push_does_not_stall_centrals_runtime() {
    // One thread runs central and this test: work done on it shows as a late tick.
    let data = tempfile::tempdir().unwrap();
    let c = start(data.path(), backroom_daemon::clock::system(), any_port(), any_port()).await;
    let mut admin = admin(&c, data.path()).await;
    let one = fleet().stores.remove(0);
    let stores: Vec<StoreProfile> = (0..300)
        .map(|i| StoreProfile { store_id: format!("store-{i:05}"), ..one.clone() })
        .collect();
    let req = FleetPushRequest { stores };
    let ticker = tokio::spawn(async {
        let mut worst = Duration::ZERO;
        let mut last = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = std::time::Instant::now();
            worst = worst.max(now - last);
            last = now;
            if worst > Duration::from_secs(60) {
                return worst;
            }
            if TICKER_STOP.load(std::sync::atomic::Ordering::SeqCst) {
                return worst;
            }
        }
    });
    let started = std::time::Instant::now();
    admin.fleet_push(req).await.unwrap();
    let took = started.elapsed();
    TICKER_STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    let worst = ticker.await.unwrap();
    println!("push of 300 stores took {took:?}; the runtime's worst pause meanwhile {worst:?}");
    // The rendering alone takes far longer than the pauses allowed here.
    assert!(worst < took / 3, "the runtime stalled for {worst:?} of a {took:?} push");
    c.stop().await;
}

static TICKER_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
