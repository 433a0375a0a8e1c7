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

pub(super) fn audit(action: &str, store: &str) -> AuditEntry {
    AuditEntry::new("op", action, store, "test")
}

#[test]
fn the_schema_file_holds_numbered_migrations_in_order() {
    let m = migrations();
    let versions: Vec<i64> = m.iter().map(|(v, _)| *v).collect();
    // Strictly increasing; a gap (3, another branch's) is allowed.
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert_eq!(versions[..2], [1, 2]);
    assert!(versions.contains(&4), "{versions:?}");
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
        assert!(
            db.insert_command_capped(&c, "op", 1000, 0, &audit("command", "s1")).await.unwrap()
        );
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

#[tokio::test]
async fn a_migration_not_yet_run_runs_even_when_a_later_one_has() {
    // Two branches numbered their migrations 3 and 4: a database that ran 4 first must still
    // get 3 when the two meet. Here: a database at version 1 that is marked as having run 4
    // (but not 2) gets 2 on opening.
    for (db, guard) in engines().await {
        drop(db);
        let url = match &guard {
            Guard::Sqlite(dir) => format!("sqlite://{}", dir.path().join("gap.db").display()),
            Guard::Postgres(_) => {
                let name = format!("{}_gap", pg_name(&guard));
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
        let old = Db::connect(&url).await.unwrap();
        old.migrate(1).await.unwrap();
        old.pool.execute("INSERT INTO schema_version (version) VALUES (4)").await.unwrap();
        drop(old);
        let db = Db::open(&url).await.unwrap();
        // Migration 2's column is there: reading events (which selects it) works.
        assert!(db.recent_events("s1", 1).await.unwrap().is_empty());
        let mut v: Vec<i64> = sqlx::query("SELECT version FROM schema_version")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<i64, _>("version").unwrap())
            .collect();
        v.sort();
        let all: Vec<i64> = migrations().iter().map(|(n, _)| *n).collect();
        assert_eq!(v, all);
        drop(db);
        if let Guard::Postgres(_) = &guard {
            drop_pg(&format!("{}_gap", pg_name(&guard)));
        }
    }
}

#[tokio::test]
async fn reads_go_on_while_a_batch_of_events_is_being_written() {
    for (db, _guard) in engines().await {
        db.set_certificate("s1", None, "aa", 5, 1, true).await.unwrap();
        // The writer holds a transaction open (as ingestion does while it writes a batch).
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO events (store_id, seq, at_ms, kind, workload, message, received_ms, subject) \
             VALUES ('s1', 1, 1, 'k', '', 'm', 1, '')",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_secs(3), db.list_stores()).await;
        let stores = read.expect("a read waited behind the open write transaction").unwrap();
        assert_eq!(stores.len(), 1);
        // The uncommitted event is not seen; after the commit it is.
        assert_eq!(db.count_events("s1").await.unwrap(), 0);
        tx.commit().await.unwrap();
        assert_eq!(db.count_events("s1").await.unwrap(), 1);
    }
}

fn event(store: &str, seq: u64) -> NewEvent {
    NewEvent {
        store_id: store.into(),
        seq,
        at_ms: 0,
        kind: "k".into(),
        workload: String::new(),
        message: "m".into(),
        subject: String::new(),
    }
}

#[tokio::test]
async fn retention_deletes_old_and_excess_events_and_old_resolved_alerts_in_chunks() {
    for (db, _guard) in engines().await {
        for s in ["s1", "s2"] {
            db.set_certificate(s, None, "aa", 5, 1, true).await.unwrap();
        }
        // s1: 10 events received at t=1000 (old by t=10_000), 10 at t=9000.
        let old: Vec<NewEvent> = (1..=10).map(|q| event("s1", q)).collect();
        db.insert_events(&old, 1000).await.unwrap();
        let newer: Vec<NewEvent> = (11..=20).map(|q| event("s1", q)).collect();
        db.insert_events(&newer, 9000).await.unwrap();
        // s2: 30 recent events, more than the 20 a store keeps.
        let many: Vec<NewEvent> = (1..=30).map(|q| event("s2", q)).collect();
        db.insert_events(&many, 9000).await.unwrap();
        let a = |id: &str, resolved| {
            AlertRow {
                id: id.into(),
                kind: "crash_loop".into(),
                store_id: "s1".into(),
                subject: id.into(),
                message: "m".into(),
                since_ms: 1,
                resolved_ms: 0,
            }
            .with_resolved(resolved)
        };
        for (id, resolved) in [("a-old", 2000), ("a-new", 9500), ("a-open", 0)] {
            db.open_alert(&a(id, 0)).await.unwrap();
            if resolved != 0 {
                db.resolve_alert("crash_loop", "s1", id, resolved).await.unwrap();
            }
        }
        let r = Retention {
            event_max_age_ms: 5000,
            events_per_store: 20,
            resolved_alert_max_age_ms: 5000,
            chunk: 4,
            max_chunks_per_pass: 100,
        };
        // Nothing is old yet at t=5999 (s2's excess goes whatever the time).
        let s = db.sweep(&r, 5999).await.unwrap();
        assert_eq!((s.old_events, s.excess_events, s.resolved_alerts), (0, 10, 0));
        assert_eq!(db.count_events("s1").await.unwrap(), 20);
        // At t=10_000 the 10 old events of s1 and the old resolved alert go.
        let s = db.sweep(&r, 10_000).await.unwrap();
        assert_eq!((s.old_events, s.excess_events, s.resolved_alerts, s.more), (10, 0, 1, false));
        assert_eq!(db.count_events("s1").await.unwrap(), 10);
        let s2 = db.recent_events("s2", 100).await.unwrap();
        assert_eq!(s2.len(), 20);
        assert_eq!(s2.last().map(|e| e.seq), Some(11), "the newest are kept");
        let left: Vec<String> = db.alerts(true).await.unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!left.contains(&"a-old".to_string()), "{left:?}");
        // A pass stops at its chunk budget and says more is due.
        let many: Vec<NewEvent> = (31..=60).map(|q| event("s2", q)).collect();
        db.insert_events(&many, 20_000).await.unwrap();
        let tight = Retention { max_chunks_per_pass: 2, ..r };
        let s = db.sweep(&tight, 20_000).await.unwrap();
        assert!(s.more, "{s:?}");
        assert_eq!((s.old_events, s.excess_events), (8, 0));
        let s = db.sweep(&r, 20_000).await.unwrap();
        assert_eq!((s.old_events, s.excess_events, s.more), (22, 10, false));
    }
}

impl AlertRow {
    fn with_resolved(self, resolved_ms: i64) -> Self {
        AlertRow { resolved_ms, ..self }
    }
}

#[tokio::test]
async fn a_store_opens_at_most_its_cap_of_alerts_and_then_one_that_says_so() {
    for (db, _guard) in engines().await {
        let a = |kind: &str, subject: &str| AlertRow {
            id: format!("{kind}-{subject}"),
            kind: kind.into(),
            store_id: "s1".into(),
            subject: subject.into(),
            message: "m".into(),
            since_ms: 1,
            resolved_ms: 0,
        };
        let limit = a("alert_limit", "");
        let capped = ["crash_loop", "problem"];
        for i in 0..3 {
            let alert = a("crash_loop", &format!("w{i}"));
            let r = db.open_alert_capped(&alert, &capped, 3, &limit).await.unwrap();
            assert_eq!(r, AlertOpened::Opened);
        }
        let r = db.open_alert_capped(&a("problem", "p"), &capped, 3, &limit).await.unwrap();
        assert_eq!(r, AlertOpened::Capped { limit_opened: true });
        let r = db.open_alert_capped(&a("crash_loop", "w9"), &capped, 3, &limit).await.unwrap();
        assert_eq!(r, AlertOpened::Capped { limit_opened: false });
        // Kinds outside the cap still open.
        let r = db.open_alert_capped(&a("store_offline", ""), &capped, 3, &limit).await.unwrap();
        assert_eq!(r, AlertOpened::Opened);
        let open = db.alerts(false).await.unwrap();
        assert_eq!(open.len(), 5, "{open:?}");
        assert_eq!(db.count_open_alerts("s1", &capped).await.unwrap(), 3);
        // Another store is not affected.
        let other = AlertRow { id: "x".into(), store_id: "s2".into(), ..a("crash_loop", "w") };
        let r = db.open_alert_capped(&other, &capped, 3, &limit).await.unwrap();
        assert_eq!(r, AlertOpened::Opened);
    }
}

#[tokio::test]
async fn stores_and_alerts_come_in_pages() {
    for (db, _guard) in engines().await {
        for i in 0..7 {
            db.set_certificate(&format!("s{i}"), None, "aa", 5, 1, true).await.unwrap();
            db.open_alert(&AlertRow {
                id: format!("a{i}"),
                kind: if i % 2 == 0 { "crash_loop" } else { "problem" }.into(),
                store_id: format!("s{i}"),
                subject: String::new(),
                message: "m".into(),
                since_ms: i64::from(i % 3),
                resolved_ms: 0,
            })
            .await
            .unwrap();
        }
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = db.list_stores_page(&after, 3).await.unwrap();
            seen.extend(page.iter().map(|s| s.id.clone()));
            if page.len() < 3 {
                break;
            }
            after = page.last().unwrap().id.clone();
        }
        assert_eq!(seen, ["s0", "s1", "s2", "s3", "s4", "s5", "s6"]);
        let all = db.alerts(false).await.unwrap();
        let mut paged = Vec::new();
        let mut key: Option<AlertKey> = None;
        loop {
            let page = db.alerts_page(false, key.as_ref(), 2).await.unwrap();
            paged.extend(page.iter().map(|a| a.id.clone()));
            match page.last() {
                Some(last) if page.len() == 2 => {
                    key = Some(AlertKey::parse(&AlertKey::of(last).token()).unwrap())
                }
                _ => break,
            }
        }
        let mut want: Vec<AlertRow> = all;
        want.sort_by(|a, b| (&a.kind, a.since_ms, &a.id).cmp(&(&b.kind, b.since_ms, &b.id)));
        assert_eq!(paged, want.into_iter().map(|a| a.id).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_push_whose_audit_record_cannot_be_written_records_nothing() {
    for (db, _guard) in engines().await {
        let p = PushedStore {
            store_id: "s1",
            region: "",
            revision: "r1",
            profile_yaml: "y",
            source: "f",
        };
        db.pool.execute("ALTER TABLE audit RENAME TO audit_gone").await.unwrap();
        assert!(db.record_push(std::slice::from_ref(&p), "op", 1).await.is_err());
        assert!(db.get_store("s1").await.unwrap().is_none(), "the push was recorded anyway");
        db.pool.execute("ALTER TABLE audit_gone RENAME TO audit").await.unwrap();
        let p = PushedStore { revision: "r2", ..p };
        db.record_push(&[p], "op", 2).await.unwrap();
        assert_eq!(db.get_store("s1").await.unwrap().unwrap().desired_revision, "r2");
        // Which store changed to which revision, and the push as a whole.
        let f = AuditFilter { store_id: "s1".into(), limit: 10, ..Default::default() };
        let rows = db.audit_page(&f).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(rows[0].detail.contains("revision r2 (was none)"), "{rows:?}");
        let all = db.audit_page(&AuditFilter { limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(all.len(), 2);
    }
}

#[tokio::test]
async fn the_audit_trail_filters_by_store_actor_and_time_and_pages_newest_first() {
    for (db, _guard) in engines().await {
        for (i, (actor, store)) in
            [("ana", "s1"), ("bob", "s1"), ("ana", "s2"), ("ana", ""), ("bob", "s2")]
                .into_iter()
                .enumerate()
        {
            db.write_audit(&AuditEntry::new(actor, "x", store, format!("#{i}")), i as i64 * 10)
                .await
                .unwrap();
        }
        let get = |f: AuditFilter| {
            let db = db.clone();
            async move {
                db.audit_page(&f).await.unwrap().into_iter().map(|r| r.detail).collect::<Vec<_>>()
            }
        };
        let f = |store: &str, actor: &str, since| AuditFilter {
            store_id: store.into(),
            actor: actor.into(),
            since_ms: since,
            before: None,
            limit: 10,
        };
        assert_eq!(get(f("", "", 0)).await, ["#4", "#3", "#2", "#1", "#0"]);
        assert_eq!(get(f("s1", "", 0)).await, ["#1", "#0"]);
        assert_eq!(get(f("", "ana", 0)).await, ["#3", "#2", "#0"]);
        assert_eq!(get(f("s2", "ana", 0)).await, ["#2"]);
        assert_eq!(get(f("", "", 20)).await, ["#4", "#3", "#2"]);
        // Pages of two, each after the last one's end.
        let first = db.audit_page(&AuditFilter { limit: 2, ..f("", "", 0) }).await.unwrap();
        let last = first.last().unwrap();
        let next =
            AuditFilter { limit: 2, before: Some((last.at_ms, last.id.clone())), ..f("", "", 0) };
        assert_eq!(get(next).await, ["#2", "#1"]);
    }
}

#[tokio::test]
async fn postgres_takes_sslmode_in_the_url_and_refuses_a_server_its_ca_did_not_sign() {
    // Debian's PostgreSQL runs with ssl on and its snakeoil certificate.
    for (db, guard) in engines().await {
        let Guard::Postgres(name) = &guard else { continue };
        drop(db);
        let base = format!("{}/{name}", pg_server());
        let db = Db::open(&format!("{base}?sslmode=require")).await.unwrap();
        let ssl: bool = sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&db.read)
            .await
            .unwrap()
            .try_get("ssl")
            .unwrap();
        assert!(ssl, "sslmode=require did not give an encrypted connection");
        drop(db);
        // verify-full against a CA that did not sign the server's certificate: refused, and the
        // error names the database without its password.
        let dir = tempfile::tempdir().unwrap();
        let other = crate::ca::Ca::load_or_create(dir.path(), 0).unwrap();
        let ca = dir.path().join("other-ca.crt");
        std::fs::write(&ca, other.cert_pem()).unwrap();
        let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
        let e = match Db::open(&url).await {
            Ok(_) => panic!("verify-full accepted a server certificate from another CA"),
            Err(e) => backroom_daemon::chain(&e),
        };
        assert!(e.contains("cannot open the database"), "{e}");
        assert!(!e.contains("backroom:backroom@"), "the password is in the error: {e}");
        // A URL without sslmode still works (libpq's default, prefer).
        Db::open(&base).await.unwrap();
    }
}
