//! nodeagent's side of the recovery console on an in-memory engine, with the store's real
//! identity and console secret files and a manual clock: codes checked with no central, wrong
//! codes locking the console across a restart of nodeagent, roles, the audit file and the
//! events for central, and the records the console kept while nodeagent was down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backroom_daemon::SharedClock;
use backroom_daemon::clock::ManualClock;
use backroom_nodeagent::console::{Console, ConsoleParts, PENDING_FILE, audit};
use backroom_nodeagent::engine::{Config, Engine, EngineHandle};
use backroom_nodeagent::network::MemoryNetwork;
use backroom_nodeagent::probe::MemoryProber;
use backroom_nodeagent::runtime::MemoryRuntime;
use backroom_nodeagent::vms::MemoryVms;
use backroom_session::console_code::{self, Role, Secret};

const STORE: &str = "store-0042";
/// 2026-12-04 14:00 UTC.
const T0: i64 = 1_796_392_800_000;

/// The files enrollment leaves: identity.json (a self-signed certificate for the store) and
/// the console secret.
fn enrolled(state: &Path) -> Secret {
    let dir = state.join("central");
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, STORE);
    let cert = params.self_signed(&key).unwrap();
    let id = serde_json::json!({
        "key_pem": key.serialize_pem(),
        "cert_pem": cert.pem(),
        "ca_pem": cert.pem(),
        "enrolled_with": "",
    });
    std::fs::write(dir.join("identity.json"), id.to_string()).unwrap();
    let secret = Secret::generate();
    secret.save(&dir.join(console_code::SECRET_FILE)).unwrap();
    secret
}

fn engine(state: &Path, clock: SharedClock) -> EngineHandle {
    let mut cfg = Config::new(state.to_path_buf(), state.join("volumes"));
    cfg.clock = clock;
    let (engine, h) = Engine::with_prober(
        cfg,
        MemoryRuntime::new(),
        MemoryNetwork::default(),
        MemoryVms::default(),
        MemoryProber::default(),
    )
    .unwrap();
    tokio::spawn(async move {
        engine.run(None, || {}).await.unwrap();
    });
    h
}

fn console(state: &Path, engine: &EngineHandle, clock: SharedClock) -> Console {
    Console::new(ConsoleParts {
        state_dir: state.to_path_buf(),
        engine: engine.clone(),
        clock,
        local: None,
        overrides: None,
        contact: None,
        override_segment: None,
    })
}

fn code(secret: &Secret, role: Role, at: i64) -> String {
    console_code::issue(secret, STORE, role, at, Duration::from_secs(3600)).unwrap().text
}

#[tokio::test]
async fn wrong_codes_lock_the_console_and_a_restart_does_not_unlock_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret = enrolled(dir.path());
    let manual = Arc::new(ManualClock::new(T0));
    let clock: SharedClock = manual.clone();
    let h = engine(dir.path(), clock.clone());
    let c = console(dir.path(), &h, clock.clone());
    let good = code(&secret, Role::Technician, T0);
    assert_eq!(c.unlock(&good).unwrap().role, "technician");
    // Another store's code, typed five times.
    let other = console_code::issue(
        &Secret::generate(),
        STORE,
        Role::Technician,
        T0,
        Duration::from_secs(3600),
    )
    .unwrap()
    .text;
    for _ in 0..console_code::LIMIT {
        let e = c.unlock(&other).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }
    let e = c.unlock(&good).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "locked, even for the right code: {e:?}");
    // nodeagent starts again: still locked.
    let c = console(dir.path(), &h, clock.clone());
    assert_eq!(c.unlock(&good).unwrap_err().code(), tonic::Code::ResourceExhausted);
    manual.advance(Duration::from_secs(61));
    assert!(c.unlock(&good).is_ok(), "unlocked after a minute");
    // An expired code says so.
    let old = code(&secret, Role::Technician, T0 - 3 * 3_600_000);
    let e = c.unlock(&old).unwrap_err();
    assert!(e.message().contains("expired"), "{e:?}");
    // Every attempt is in the audit file.
    let kinds: Vec<String> = audit(dir.path()).into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "console_unlocked").count(), 2, "{kinds:?}");
    assert!(kinds.iter().filter(|k| *k == "console_refused").count() >= 7, "{kinds:?}");
}

#[tokio::test]
async fn a_staff_code_restarts_but_cannot_roll_back_and_each_action_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let secret = enrolled(dir.path());
    let clock: SharedClock = Arc::new(ManualClock::new(T0));
    let h = engine(dir.path(), clock.clone());
    let (_, mut events) = h.subscribe_with_backlog();
    let c = console(dir.path(), &h, clock.clone());
    let staff = code(&secret, Role::Staff, T0);
    let req = |kind: &str, workload: &str| backroom_api::nodeagent::ConsoleActionRequest {
        code: staff.clone(),
        kind: kind.into(),
        workload: workload.into(),
        ..Default::default()
    };
    let e = c.act(req("rollback", "")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("needs a technician code"), "{e:?}");
    // No such workload: the restart is tried (a staff code may) and fails in words.
    let e = c.act(req("restart", "orders")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let tech = code(&secret, Role::Technician, T0);
    let e = c
        .act(backroom_api::nodeagent::ConsoleActionRequest {
            code: tech,
            kind: "rollback".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("no last-known-good"), "{e:?}");
    let rec = audit(dir.path());
    let msgs: Vec<&str> = rec.iter().map(|r| r.message.as_str()).collect();
    assert!(msgs.iter().any(|m| m.contains("cannot do `rollback`")), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.starts_with("restart orders by a staff at the console: failed")),
        "{msgs:?}"
    );
    // The same records went out as events (for nodectl and central's outbox).
    let mut seen = vec![];
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        if e.kind.starts_with("console_") {
            seen.push(e.kind);
        }
    }
    assert_eq!(seen, ["console_refused", "console_action", "console_action"], "{seen:?}");
}

#[tokio::test]
async fn what_the_console_did_while_nodeagent_was_down_is_taken_in_at_start() {
    let dir = tempfile::tempdir().unwrap();
    enrolled(dir.path());
    let clock: SharedClock = Arc::new(ManualClock::new(T0));
    let pending = dir.path().join(PENDING_FILE);
    std::fs::create_dir_all(pending.parent().unwrap()).unwrap();
    std::fs::write(
        &pending,
        format!(
            "{}\n{}\n",
            serde_json::json!({"at_ms": T0 - 5000, "kind": "console_unlocked", "message": "technician code accepted (nodeagent down)"}),
            serde_json::json!({"at_ms": T0 - 4000, "kind": "console_action", "workload": "", "message": "support bundle written (nodeagent was down)"}),
        ),
    )
    .unwrap();
    let h = engine(dir.path(), clock.clone());
    let _c = console(dir.path(), &h, clock.clone());
    assert!(!pending.exists(), "taken in once");
    let (backlog, _) = h.subscribe_with_backlog();
    let told: Vec<(i64, String)> = backlog
        .into_iter()
        .filter(|e| e.kind.starts_with("console_"))
        .map(|e| (i64::try_from(e.at_ms).unwrap(), e.kind))
        .collect();
    assert_eq!(
        told,
        [(T0 - 5000, "console_unlocked".to_string()), (T0 - 4000, "console_action".to_string())]
    );
    assert_eq!(audit(dir.path()).len(), 2);
    assert!(clock.now_ms() >= T0);
}
