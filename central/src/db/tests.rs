//! Every test runs on both engines: SQLite (a file) and PostgreSQL (a fresh database on the
//! test server that `scripts/services.d/postgresql` starts; `BACKROOM_TEST_POSTGRES` overrides
//! the server URL). A missing PostgreSQL fails these tests: it is a prerequisite, not optional.

use super::*;

const PG_DEFAULT: &str = "postgres://backroom:backroom@127.0.0.1:5432";

/// A fresh database per engine; the guard removes it.
pub(super) enum Guard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(String),
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Postgres(name) = self {
            drop_pg(name);
        }
    }
}

pub(super) fn pg_name(g: &Guard) -> String {
    match g {
        Guard::Postgres(name) => name.clone(),
        Guard::Sqlite(_) => String::new(),
    }
}

/// Drops a test database (best effort: a leftover test database is harmless and named as such).
pub(super) fn drop_pg(name: &str) {
    let name = name.to_string();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            sqlx::any::install_default_drivers();
            if let Ok(mut c) = <sqlx::AnyConnection as sqlx::Connection>::connect(&format!(
                "{}/postgres",
                pg_server()
            ))
            .await
            {
                let _ = c
                    .execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .await;
            }
        });
    })
    .join();
}

pub(super) fn pg_server() -> String {
    std::env::var("BACKROOM_TEST_POSTGRES").unwrap_or_else(|_| PG_DEFAULT.to_string())
}

pub(super) async fn engines() -> Vec<(Db, Guard)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("central.db").display());
    let sqlite = Db::open(&url).await.unwrap();
    sqlx::any::install_default_drivers();
    let name = format!("backroom_test_{}_{:08x}", std::process::id(), rand::random::<u32>());
    let admin_url = format!("{}/postgres", pg_server());
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is a prerequisite of these tests and is not reachable at {admin_url}: {e} (make test starts it: scripts/services.d/postgresql)")
    });
    admin.execute(AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
    let pg = Db::open(&format!("{}/{name}", pg_server())).await.unwrap();
    assert!(!pg.is_sqlite());
    vec![(sqlite, Guard::Sqlite(dir)), (pg, Guard::Postgres(name))]
}

#[tokio::test]
async fn migrations_run_once_and_survive_reopening() {
    for (db, guard) in engines().await {
        drop(db);
        let url = match &guard {
            Guard::Sqlite(dir) => format!("sqlite://{}", dir.path().join("central.db").display()),
            Guard::Postgres(name) => format!("{}/{name}", pg_server()),
        };
        let db = Db::open(&url).await.unwrap();
        assert!(db.list_stores().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn migration_2_gives_old_events_an_empty_subject() {
    for (db, guard) in engines().await {
        drop(db);
        let url = match &guard {
            Guard::Sqlite(dir) => {
                let p = dir.path().join("v1.db");
                format!("sqlite://{}", p.display())
            }
            Guard::Postgres(_) => {
                // A database of its own at version 1 (the engine's one is at the newest).
                let name = format!("{}_v1", pg_name(&guard));
                let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&format!(
                    "{}/postgres",
                    pg_server()
                ))
                .await
                .unwrap();
                admin.execute(AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
                format!("{}/{name}", pg_server())
            }
        };
        // A central of the first schema, with an event in it.
        let old = Db::connect(&url).await.unwrap();
        old.migrate(1).await.unwrap();
        old.pool
            .execute(
                "INSERT INTO events (store_id, seq, at_ms, kind, workload, message, received_ms) \
                 VALUES ('s1', 1, 5, 'crash_loop', 'orders', 'old', 6)",
            )
            .await
            .unwrap();
        assert!(old.recent_events("s1", 10).await.is_err(), "no subject column yet");
        drop(old);
        // Opened by this central: migrated, the old event kept with an empty subject.
        let db = Db::open(&url).await.unwrap();
        let e = db.recent_events("s1", 10).await.unwrap();
        assert_eq!((e[0].message.as_str(), e[0].subject.as_str()), ("old", ""));
        let ev = NewEvent {
            store_id: "s1".into(),
            seq: 2,
            at_ms: 7,
            kind: "failing".into(),
            workload: String::new(),
            message: "uplink eno1: the link eno1 does not exist".into(),
            subject: "uplink eno1".into(),
        };
        db.insert_events(&[ev], 8).await.unwrap();
        assert_eq!(db.recent_events("s1", 1).await.unwrap()[0].subject, "uplink eno1");
        drop(db);
        if let Guard::Postgres(_) = &guard {
            drop_pg(&format!("{}_v1", pg_name(&guard)));
        }
    }
}

#[test]
fn the_schema_file_holds_numbered_migrations_in_order() {
    let m = migrations();
    let versions: Vec<i64> = m.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    assert!(m[0].1.iter().any(|s| s.starts_with("CREATE TABLE stores")), "{:?}", m[0].1);
    assert_eq!(m[1].1, ["ALTER TABLE events ADD COLUMN subject TEXT NOT NULL DEFAULT ''"]);
}

#[tokio::test]
async fn a_new_certificate_revokes_the_old_one() {
    for (db, _guard) in engines().await {
        assert_eq!(db.set_certificate("s1", Some("west"), "aa", 5, 1, true).await.unwrap(), None);
        assert!(db.certificate_is_current("s1", "aa").await.unwrap());
        assert_eq!(
            db.set_certificate("s1", None, "bb", 5, 2, true).await.unwrap(),
            Some("aa".into())
        );
        assert!(!db.certificate_is_current("s1", "aa").await.unwrap());
        assert!(db.certificate_is_current("s1", "bb").await.unwrap());
        assert_eq!(db.get_store("s1").await.unwrap().unwrap().region, "west");
    }
}

#[tokio::test]
async fn a_push_changes_a_revision_only_when_the_profile_changes() {
    for (db, _guard) in engines().await {
        let p = |rev: &'static str| PushedStore {
            store_id: "s1",
            region: "",
            revision: rev,
            profile_yaml: "y",
            source: "f",
        };
        let r = db.record_push(&[p("r1")], "op", 1).await.unwrap();
        assert!(r[0].changed);
        let r = db.record_push(&[p("r1")], "op", 2).await.unwrap();
        assert!(!r[0].changed);
        let r = db.record_push(&[p("r2")], "op", 3).await.unwrap();
        assert!(r[0].changed);
        assert_eq!(r[0].previous, "r1");
        assert_eq!(db.get_store("s1").await.unwrap().unwrap().desired_revision, "r2");
        assert_eq!(db.revision_yaml("s1", "r1").await.unwrap().as_deref(), Some("y"));
    }
}

#[tokio::test]
async fn events_are_deduplicated_by_store_and_sequence() {
    for (db, _guard) in engines().await {
        db.set_certificate("s1", None, "aa", 5, 1, true).await.unwrap();
        let ev = |seq| NewEvent {
            store_id: "s1".into(),
            seq,
            at_ms: 1,
            kind: "k".into(),
            workload: "w".into(),
            message: "m".into(),
            subject: String::new(),
        };
        let acked = db.insert_events(&[ev(1), ev(2)], 5).await.unwrap();
        assert_eq!(acked, vec![("s1".to_string(), 2)]);
        db.insert_events(&[ev(2), ev(3)], 6).await.unwrap();
        assert_eq!(db.count_events("s1").await.unwrap(), 3);
        assert_eq!(db.get_store("s1").await.unwrap().unwrap().acked_seq, 3);
        // An ack never moves backwards.
        db.insert_events(&[ev(1)], 7).await.unwrap();
        assert_eq!(db.get_store("s1").await.unwrap().unwrap().acked_seq, 3);
        let recent = db.recent_events("s1", 2).await.unwrap();
        assert_eq!(recent.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 2]);
    }
}

#[tokio::test]
async fn queued_commands_expire() {
    for (db, _guard) in engines().await {
        let c = CommandRow {
            id: "c1".into(),
            store_id: "s1".into(),
            kind: "restart".into(),
            workload: "w".into(),
            state: "queued".into(),
            result: String::new(),
            created_ms: 0,
            expires_ms: 100,
            finished_ms: 0,
        };
        db.insert_command(&c, "op").await.unwrap();
        assert_eq!(db.queued_commands("s1", 50).await.unwrap().len(), 1);
        assert!(db.queued_commands("s1", 100).await.unwrap().is_empty());
        assert_eq!(db.get_command("c1").await.unwrap().unwrap().state, "expired");
    }
}

#[tokio::test]
async fn an_alert_opens_once_and_resolves() {
    for (db, _guard) in engines().await {
        let a = AlertRow {
            id: "a1".into(),
            kind: "store_offline".into(),
            store_id: "s1".into(),
            subject: String::new(),
            message: "m".into(),
            since_ms: 1,
            resolved_ms: 0,
        };
        assert!(db.open_alert(&a).await.unwrap());
        assert!(!db.open_alert(&AlertRow { id: "a2".into(), ..a.clone() }).await.unwrap());
        assert_eq!(db.alerts(false).await.unwrap().len(), 1);
        assert!(db.resolve_alert("store_offline", "s1", "", 9).await.unwrap());
        assert!(db.alerts(false).await.unwrap().is_empty());
        assert_eq!(db.alerts(true).await.unwrap()[0].resolved_ms, 9);
    }
}
