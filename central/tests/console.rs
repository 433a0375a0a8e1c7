//! Console codes end to end (issue 12): a real central (on SQLite, then on PostgreSQL) and a
//! node enrolled with the real session code. The node keeps the secret central made for it; a
//! code from the operator API (and from `centralctl store console-code`) verifies with the
//! node's file alone; a store enrolled before console codes gets a secret in its next welcome;
//! what the store's console did shows in `store get`'s local console section, and opens no alert.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use backroom_api::node::EventBatch;
use backroom_api::operator::{
    CreateConsoleCodeRequest, FleetPushRequest, GetStoreRequest, ListAlertsRequest,
    ListAuditRequest, StoreProfile,
};
use backroom_central::server::Running;
use backroom_session::console_code::{self, Role, SECRET_FILE, Secret};
use common::*;
use sqlx::{AssertSqlSafe, Connection, Executor};

const STORE: &str = "store-0042";
const PG_DEFAULT: &str = "postgres://backroom:backroom@127.0.0.1:5432";

fn pg_server() -> String {
    std::env::var("BACKROOM_TEST_POSTGRES").unwrap_or_else(|_| PG_DEFAULT.to_string())
}

/// A fresh PostgreSQL database for one central; dropped by [`drop_pg`]. PostgreSQL is a
/// prerequisite (as for central's database tests): missing, this fails and says so.
async fn new_pg() -> (String, String) {
    sqlx::any::install_default_drivers();
    let name = format!("backroom_console_{}_{:08x}", std::process::id(), rand::random::<u32>());
    let admin_url = format!("{}/postgres", pg_server());
    let mut admin = sqlx::AnyConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is a prerequisite of this test and is not reachable at {admin_url}: {e} \
             (make test starts it: scripts/services.d/postgresql)"
        )
    });
    admin.execute(AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
    (name.clone(), format!("{}/{name}", pg_server()))
}

async fn drop_pg(name: &str) {
    if let Ok(mut c) = sqlx::AnyConnection::connect(&format!("{}/postgres", pg_server())).await {
        let _ =
            c.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await;
    }
}

async fn start_on(data: &Path, database_url: Option<String>) -> Running {
    let mut cfg = test_config(data, any_port(), any_port(), test_settings());
    cfg.database_url = database_url;
    start_cfg(cfg, backroom_daemon::clock::system()).await
}

fn db_url(data: &Path, pg: &Option<String>) -> String {
    pg.clone().unwrap_or_else(|| format!("sqlite://{}", data.join("central.db").display()))
}

/// What central keeps as the store's secret.
async fn central_secret(c: &Running) -> Option<Secret> {
    let hex_secret = c.app.db.console_secret(STORE).await.unwrap()?;
    Some(Secret::from_bytes(&hex::decode(hex_secret).unwrap()).unwrap())
}

fn node_secret(dir: &Path) -> Option<Secret> {
    Secret::load(&dir.join(SECRET_FILE)).unwrap()
}

async fn centralctl(c: &Running, data: &Path, args: &[&str]) -> (bool, String, String) {
    // tokio's Command: central runs on this test's thread and must answer meanwhile.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_centralctl"))
        .args(args)
        .env("BACKROOM_SERVER", format!("https://{}", c.api))
        .env("BACKROOM_CA", data.join("ca.crt"))
        .env("BACKROOM_TOKEN_FILE", data.join("admin.token"))
        .env_remove("BACKROOM_TOKEN")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fleet_push_request() -> FleetPushRequest {
    let stores = backroom_profiles::render_fleet(&repo("profiles/fleet")).unwrap();
    let stores = stores
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
        .collect();
    FleetPushRequest { stores }
}

fn code_request(store: &str, role: &str, ttl_seconds: u64) -> CreateConsoleCodeRequest {
    CreateConsoleCodeRequest { store_id: store.into(), role: role.into(), ttl_seconds }
}

#[tokio::test]
async fn console_codes_on_sqlite() {
    console_codes(None).await;
}

#[tokio::test]
async fn console_codes_on_postgresql() {
    let (name, url) = new_pg().await;
    console_codes(Some(url)).await;
    drop_pg(&name).await;
}

async fn console_codes(pg: Option<String>) {
    let data = tempfile::tempdir().unwrap();
    let c = start_on(data.path(), pg.clone()).await;
    let mut admin = admin(&c, data.path()).await;
    let mut operator = with_role(&c, &mut admin, "operator").await;
    let mut viewer = with_role(&c, &mut admin, "viewer").await;

    // Before enrollment: an unknown store, then one central has a profile for, not enrolled.
    let e = admin.create_console_code(code_request(STORE, "technician", 3600)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    admin.fleet_push(fleet_push_request()).await.unwrap();
    let e = admin.create_console_code(code_request(STORE, "technician", 3600)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("has not enrolled yet"), "{}", e.message());

    // Enrolled with the real session code: the node keeps the very secret central keeps.
    let node = tempfile::tempdir().unwrap();
    let id = enroll(&c, &mut admin, STORE, node.path()).await;
    let first = central_secret(&c).await.expect("central made a secret at enrollment");
    assert_eq!(node_secret(node.path()).as_ref(), Some(&first));
    assert_eq!(id.console_secret.as_ref(), Some(&first));

    // A code from the operator API verifies with the node's file alone.
    let r = admin.create_console_code(code_request(STORE, "", 0)).await.unwrap().into_inner();
    assert_eq!(r.role, "technician", "technician is the default");
    let now = backroom_session::now_ms();
    assert!(r.expires_unix_ms >= now + 3_590_000 && r.expires_unix_ms <= now + 3_600_000 + 600_000);
    let secret = node_secret(node.path()).unwrap();
    let g = console_code::verify(&secret, STORE, &r.code, now).unwrap();
    assert_eq!((g.role, g.expires_ms), (Role::Technician, r.expires_unix_ms));
    // Not for another store, and not after its expiry.
    assert!(console_code::verify(&secret, "store-0043", &r.code, now).is_err());
    assert!(console_code::verify(&secret, STORE, &r.code, r.expires_unix_ms + 1).is_err());

    // Who may have which: an operator a staff code only, a viewer none.
    let staff = operator.create_console_code(code_request(STORE, "staff", 1800)).await.unwrap();
    let staff = staff.into_inner();
    assert_eq!(console_code::verify(&secret, STORE, &staff.code, now).unwrap().role, Role::Staff);
    let e = operator.create_console_code(code_request(STORE, "technician", 1800)).await;
    let e = e.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("needs Admin"), "{}", e.message());
    let e = viewer.create_console_code(code_request(STORE, "staff", 1800)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Bad role, bad time to live.
    let e = admin.create_console_code(code_request(STORE, "boss", 1800)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = admin.create_console_code(code_request(STORE, "staff", 8 * 86400)).await.unwrap_err();
    assert!(e.message().contains("at most 7 days"), "{}", e.message());

    // Audited: who, store, role, expiry; never the code.
    let audit = admin
        .list_audit(ListAuditRequest { store_id: STORE.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let issued: Vec<_> = audit.records.iter().filter(|a| a.action == "console-code").collect();
    assert_eq!(issued.len(), 2, "{:?}", audit.records);
    assert!(issued.iter().any(|a| a.actor == "test operator" && a.detail.contains("staff")));
    assert!(issued.iter().any(|a| a.detail.contains("technician console code for store-0042")));
    for a in &audit.records {
        assert!(!a.detail.contains(&r.code) && !a.detail.contains(&staff.code), "{a:?}");
    }

    // Through centralctl: the line HQ reads out, and JSON.
    let (ok, out, err) =
        centralctl(&c, data.path(), &["store", "console-code", STORE, "--ttl", "1h"]).await;
    assert!(ok, "{out}{err}");
    let line = out.trim();
    let (code, rest) = line.split_once("  ").unwrap();
    assert!(
        code.len() == 11
            && code.as_bytes()[5] == b'-'
            && code.chars().all(|c| c == '-' || c.is_ascii_alphanumeric()),
        "{line}"
    );
    assert!(rest.starts_with("technician code for store-0042, valid until "), "{line}");
    assert!(rest.ends_with(" UTC (1h)"), "{line}");
    assert!(console_code::verify(&secret, STORE, code, backroom_session::now_ms()).is_ok());
    let (ok, out, err) = centralctl(
        &c,
        data.path(),
        &["--json", "store", "console-code", STORE, "--role", "staff", "--ttl", "30m"],
    )
    .await;
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["role"], "staff");
    let g = console_code::verify(
        &secret,
        STORE,
        v["code"].as_str().unwrap(),
        backroom_session::now_ms(),
    );
    assert_eq!(g.unwrap().expires_ms, v["expires_unix_ms"].as_i64().unwrap());
    let (ok, _, err) =
        centralctl(&c, data.path(), &["store", "console-code", STORE, "--role", "boss"]).await;
    assert!(!ok && err.contains("staff or technician"), "{err}");
    let (_, help, _) = centralctl(&c, data.path(), &["store", "console-code", "--help"]).await;
    assert!(help.contains("read to the person at the store") && help.contains("--ttl"), "{help}");

    // Re-enrolled (a replacement server): a new secret, and the old one's codes stop working.
    let replacement = tempfile::tempdir().unwrap();
    let id2 = enroll(&c, &mut admin, STORE, replacement.path()).await;
    let second = central_secret(&c).await.unwrap();
    assert_ne!(second, first);
    assert_eq!(node_secret(replacement.path()).as_ref(), Some(&second));
    let r2 =
        admin.create_console_code(code_request(STORE, "staff", 600)).await.unwrap().into_inner();
    let now = backroom_session::now_ms();
    assert!(console_code::verify(&second, STORE, &r2.code, now).is_ok());
    assert!(console_code::verify(&first, STORE, &r2.code, now).is_err());

    // A store enrolled before console codes: no secret in central, none on the node. Its next
    // session's welcome brings one, which the real link keeps in the node's folder.
    let mut conn = sqlx::AnyConnection::connect(&db_url(data.path(), &pg)).await.unwrap();
    conn.execute(AssertSqlSafe(format!(
        "UPDATE stores SET console_secret = '' WHERE id = '{STORE}'"
    )))
    .await
    .unwrap();
    drop(conn);
    std::fs::remove_file(replacement.path().join(SECRET_FILE)).unwrap();
    let e = admin.create_console_code(code_request(STORE, "staff", 600)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains("enrolled before console codes; it gets a secret at its next connection"),
        "{}",
        e.message()
    );
    let id2 = backroom_session::enroll::Identity { console_secret: None, ..id2 };
    let mut link = run_node(&node_url(&c), id2.clone(), replacement.path(), mem_outbox());
    link.wait_online(true).await;
    let dir = replacement.path().to_path_buf();
    eventually("the node keeps the secret its welcome brought", || {
        let dir = dir.clone();
        async move { node_secret(&dir).is_some() }
    })
    .await;
    let third = central_secret(&c).await.expect("central made one at the session's start");
    assert_ne!(third, second);
    assert_eq!(node_secret(replacement.path()).as_ref(), Some(&third));
    let r3 =
        admin.create_console_code(code_request(STORE, "staff", 600)).await.unwrap().into_inner();
    assert!(console_code::verify(&third, STORE, &r3.code, backroom_session::now_ms()).is_ok());
    link.task.abort();

    // What the console did: sent as ordinary events, shown newest first under "Local
    // console", and no alert for any of it (a refused code included).
    let mut raw = RawSession::open(&c, &id2).await;
    let mut evs = vec![
        event(1, "console_refused", "", "wrong code (1 of 5)"),
        event(2, "console_unlocked", "", "technician until 14:05 UTC"),
        event(3, "workload_restarted", "orders", "restarted"),
        event(4, "console_action", "orders", "restart orders by technician: ok, task 4242 → 4390"),
    ];
    for (i, e) in evs.iter_mut().enumerate() {
        e.at_unix_ms = backroom_session::now_ms() - 60_000 + i as i64 * 1000;
    }
    raw.send(NBody::Events(EventBatch { events: evs })).await;
    assert_eq!(raw.next_ack().await, Some(4));
    let r = admin
        .get_store(GetStoreRequest { store_id: STORE.into(), events: 0 })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<&str> = r.console.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["console_action", "console_unlocked", "console_refused"]);
    let (ok, out, err) = centralctl(&c, data.path(), &["store", "get", STORE]).await;
    assert!(ok, "{out}{err}");
    let section = out.split("Local console:\n").nth(1).unwrap_or_else(|| panic!("{out}"));
    let lines: Vec<&str> = section.lines().take(3).collect();
    assert!(
        lines[0].contains("action")
            && lines[0].contains("restart orders by technician: ok, task 4242 → 4390"),
        "{out}"
    );
    assert!(
        lines[1].contains("unlocked") && lines[1].contains("technician until 14:05 UTC"),
        "{out}"
    );
    assert!(lines[2].contains("refused") && lines[2].contains("wrong code (1 of 5)"), "{out}");
    assert!(lines.iter().all(|l| l.contains(" UTC ")), "{out}");
    let (ok, out, err) = centralctl(&c, data.path(), &["--json", "store", "get", STORE]).await;
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let console = v["local_console"].as_array().unwrap();
    assert_eq!(console.len(), 3);
    assert_eq!(console[0]["kind"], "console_action");
    assert_eq!(console[2]["message"], "wrong code (1 of 5)");
    // Alerts are evaluated every 200 ms here: give them a few rounds.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let alerts = admin
        .list_alerts(ListAlertsRequest { include_resolved: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let about_console: Vec<_> = alerts
        .groups
        .iter()
        .flat_map(|g| g.alerts.iter())
        .filter(|a| a.message.contains("code") || a.message.contains("technician"))
        .collect();
    assert!(about_console.is_empty(), "{:?}", alerts.groups);
    drop(raw);
    c.stop().await;
}
