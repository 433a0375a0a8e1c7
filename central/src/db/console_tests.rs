//! Console secrets and console events, on both engines.

use super::tests::{Guard, audit, drop_pg, engines, pg_name, pg_server};
use super::*;

fn token<'a>(hash: &'a str, store: &'a str) -> NewEnrollToken<'a> {
    NewEnrollToken {
        hash,
        store_id: store,
        region: "",
        created_ms: 0,
        expires_ms: 1_000_000,
        created_by: "admin",
    }
}

fn enrollment<'a>(hash: &'a str, key: &'a str, serial: &'a str, secret: &'a str) -> Enrollment<'a> {
    Enrollment {
        token_hash: hash,
        key_fingerprint: key,
        serial,
        not_after_ms: 9_999_999,
        now_ms: 10,
        console_secret_hex: secret,
    }
}

const A: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
const B: &str = "bb00000000000000000000000000000000000000000000000000000000000000";
const C: &str = "cc00000000000000000000000000000000000000000000000000000000000000";

#[tokio::test]
async fn enrollment_sets_the_console_secret_and_each_enrollment_replaces_it() {
    for (db, _guard) in engines().await {
        assert_eq!(db.console_secret("s1").await.unwrap(), None, "unknown store");
        db.insert_enroll_token(&token("h1", "s1"), &audit("enroll-token", "s1")).await.unwrap();
        db.enroll_store(&enrollment("h1", "k1", "aa", A)).await.unwrap().unwrap();
        assert_eq!(db.console_secret("s1").await.unwrap().as_deref(), Some(A));
        // A secret already there is kept by a session's ensure.
        assert_eq!(db.ensure_console_secret("s1", C).await.unwrap(), A);
        // Re-enrolled (a replacement server): a new secret.
        db.insert_enroll_token(&token("h2", "s1"), &audit("enroll-token", "s1")).await.unwrap();
        db.enroll_store(&enrollment("h2", "k2", "bb", B)).await.unwrap().unwrap();
        assert_eq!(db.console_secret("s1").await.unwrap().as_deref(), Some(B));
    }
}

#[tokio::test]
async fn a_store_enrolled_before_migration_5_gets_a_secret_at_its_next_session() {
    for (db, guard) in engines().await {
        drop(db);
        let url = match &guard {
            Guard::Sqlite(dir) => format!("sqlite://{}", dir.path().join("v4.db").display()),
            Guard::Postgres(_) => {
                let name = format!("{}_v4", pg_name(&guard));
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
        // A central of schema 4 with an enrolled store.
        let old = Db::connect(&url).await.unwrap();
        old.migrate(4).await.unwrap();
        old.pool
            .execute(
                "INSERT INTO stores (id, cert_serial, enrolled_ms, created_ms) \
                 VALUES ('s1', 'aa', 5, 5)",
            )
            .await
            .unwrap();
        assert!(old.console_secret("s1").await.is_err(), "no console_secret column yet");
        drop(old);
        let db = Db::open(&url).await.unwrap();
        assert_eq!(db.console_secret("s1").await.unwrap(), None);
        assert_eq!(db.ensure_console_secret("s1", C).await.unwrap(), C);
        assert_eq!(db.ensure_console_secret("s1", A).await.unwrap(), C, "set once");
        drop(db);
        if let Guard::Postgres(_) = &guard {
            drop_pg(&format!("{}_v4", pg_name(&guard)));
        }
    }
}

#[tokio::test]
async fn console_events_are_the_stores_last_ones_of_their_kinds_newest_first() {
    for (db, _guard) in engines().await {
        let ev = |store: &str, seq: u64, kind: &str| NewEvent {
            store_id: store.into(),
            seq,
            at_ms: seq as i64 * 1000,
            kind: kind.into(),
            workload: String::new(),
            message: format!("{kind} {seq}"),
            subject: String::new(),
        };
        let mut events = Vec::new();
        for seq in 1..=30 {
            let kind = match seq % 4 {
                0 => "console_unlocked",
                1 => "console_action",
                2 => "console_refused",
                _ => "workload_restarted",
            };
            events.push(ev("s1", seq, kind));
        }
        events.push(ev("s2", 1, "console_action"));
        db.insert_events(&events, 99).await.unwrap();
        let got = db.console_events("s1", 20).await.unwrap();
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|e| CONSOLE_EVENT_KINDS.contains(&e.kind.as_str())), "{got:?}");
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs[..4], [30, 29, 28, 26]);
        assert!(seqs.windows(2).all(|w| w[0] > w[1]));
        assert!(db.console_events("s3", 20).await.unwrap().is_empty());
    }
}
