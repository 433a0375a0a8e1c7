//! Certificates, enrollment, revocation and the commands' lifecycle, on both engines.

use super::tests::{Guard, audit, drop_pg, engines, pg_name, pg_server};
use super::*;

fn token<'a>(hash: &'a str, store: &'a str, expires_ms: i64) -> NewEnrollToken<'a> {
    NewEnrollToken {
        hash,
        store_id: store,
        region: "west",
        created_ms: 0,
        expires_ms,
        created_by: "admin",
    }
}

fn enrollment<'a>(hash: &'a str, key: &'a str, serial: &'a str, now_ms: i64) -> Enrollment<'a> {
    Enrollment {
        token_hash: hash,
        key_fingerprint: key,
        serial,
        not_after_ms: 9_999,
        now_ms,
        console_secret_hex: "",
    }
}

const H1: &str = "h1aaaaaaaaaaaaaaaaaa";
const H2: &str = "h2bbbbbbbbbbbbbbbbbb";
const H3: &str = "h3cccccccccccccccccc";
const H4: &str = "h4dddddddddddddddddd";

#[tokio::test]
async fn an_enrollment_token_is_used_only_with_the_certificate_it_records() {
    for (db, _guard) in engines().await {
        db.insert_enroll_token(&token(H1, "s1", 1000), &audit("enroll-token", "s1")).await.unwrap();
        assert_eq!(
            db.check_enroll_token("nope", "k1", 10).await.unwrap(),
            Err(TokenRefusal::Unknown)
        );
        // A look changes nothing: the token is still unused (a call cut off here burns nothing).
        let grant = db.check_enroll_token(H1, "k1", 10).await.unwrap().unwrap();
        assert_eq!(
            (grant.store_id.as_str(), grant.region.as_str(), grant.retry),
            ("s1", "west", false)
        );
        assert_eq!(db.list_enroll_tokens(Some("s1")).await.unwrap()[0].state(10), "unused");

        // Used and recorded in one go.
        let (g, revoked) = db.enroll_store(&enrollment(H1, "k1", "aa", 10)).await.unwrap().unwrap();
        assert!(!g.retry && revoked.is_empty());
        let t = &db.list_enroll_tokens(Some("s1")).await.unwrap()[0];
        assert_eq!((t.state(20), t.used_ms, t.id.as_str()), ("used", 10, &H1[..12]));
        assert!(db.certificate_is_current("s1", "aa").await.unwrap());
        assert_eq!(db.get_store("s1").await.unwrap().unwrap().region, "west");

        // Another key with the used token: refused, nothing recorded.
        assert_eq!(
            db.enroll_store(&enrollment(H1, "k2", "xx", 15)).await.unwrap(),
            Err(TokenRefusal::Used(10))
        );
        assert!(db.certificate_is_current("s1", "aa").await.unwrap());
        // The same key again (its reply was lost), even after the token's expiry: a new
        // certificate, the one it never received revoked.
        let (g, revoked) =
            db.enroll_store(&enrollment(H1, "k1", "bb", 2000)).await.unwrap().unwrap();
        assert!(g.retry);
        assert_eq!(revoked, ["aa"]);
        assert!(db.certificate_is_current("s1", "bb").await.unwrap());

        // Expired, on the caller's clock: usable 1 ms before, not at its expiry.
        db.insert_enroll_token(&token(H2, "s2", 100), &audit("enroll-token", "s1")).await.unwrap();
        assert!(db.check_enroll_token(H2, "k", 99).await.unwrap().is_ok());
        assert_eq!(
            db.check_enroll_token(H2, "k", 100).await.unwrap(),
            Err(TokenRefusal::Expired(100))
        );

        // Revoked by id, or every token of a store.
        db.insert_enroll_token(&token(H3, "s1", 5000), &audit("enroll-token", "s1")).await.unwrap();
        let gone = db.revoke_enroll_tokens(Some(&H3[..12]), None, 30).await.unwrap();
        assert_eq!(gone.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [&H3[..12]]);
        assert_eq!(
            db.check_enroll_token(H3, "k3", 40).await.unwrap(),
            Err(TokenRefusal::Revoked(30))
        );
        assert!(db.revoke_enroll_tokens(Some(&H3[..12]), None, 31).await.unwrap().is_empty());
        db.insert_enroll_token(&token(H4, "s1", 5000), &audit("enroll-token", "s1")).await.unwrap();
        let gone = db.revoke_enroll_tokens(None, Some("s1"), 50).await.unwrap();
        // H1 (used) and H4; H3 was revoked already.
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert_eq!(
            db.check_enroll_token(H1, "k1", 60).await.unwrap(),
            Err(TokenRefusal::Revoked(50))
        );
    }
}

#[tokio::test]
async fn a_retry_by_the_same_key_works_only_while_its_enrollment_is_the_stores() {
    for (db, _guard) in engines().await {
        db.insert_enroll_token(&token(H1, "s1", 1000), &audit("enroll-token", "s1")).await.unwrap();
        db.insert_enroll_token(&token(H2, "s1", 1000), &audit("enroll-token", "s1")).await.unwrap();
        db.enroll_store(&enrollment(H1, "k1", "aa", 10)).await.unwrap().unwrap();
        // A replacement server enrolls with another token: the first one's retry is over.
        let (_, revoked) = db.enroll_store(&enrollment(H2, "k2", "bb", 20)).await.unwrap().unwrap();
        assert_eq!(revoked, ["aa"]);
        assert_eq!(
            db.enroll_store(&enrollment(H1, "k1", "cc", 30)).await.unwrap(),
            Err(TokenRefusal::Used(10))
        );
        // A revoked store: no retry either.
        assert_eq!(db.revoke_store("s1", 40).await.unwrap(), Some(vec!["bb".to_string()]));
        assert_eq!(
            db.enroll_store(&enrollment(H2, "k2", "dd", 50)).await.unwrap(),
            Err(TokenRefusal::Used(20))
        );
        assert_eq!(db.use_certificate("s1", "bb", 60).await.unwrap(), CertUse::NotCurrent);
    }
}

#[tokio::test]
async fn a_renewal_keeps_the_old_certificate_until_the_new_one_is_used() {
    for (db, _guard) in engines().await {
        db.insert_enroll_token(&token(H1, "s1", 1000), &audit("enroll-token", "s1")).await.unwrap();
        db.enroll_store(&enrollment(H1, "k1", "aa", 10)).await.unwrap().unwrap();
        assert_eq!(db.record_renewal("s1", "bb", 9_000, 20).await.unwrap(), None);
        // The reply was lost: the old one still works, and renews again.
        assert_eq!(db.use_certificate("s1", "aa", 30).await.unwrap(), CertUse::Current);
        assert_eq!(db.record_renewal("s1", "cc", 9_000, 40).await.unwrap(), Some("bb".into()));
        assert_eq!(db.use_certificate("s1", "bb", 50).await.unwrap(), CertUse::NotCurrent);
        // The new one's first use makes it current and revokes the old one.
        assert_eq!(
            db.use_certificate("s1", "cc", 60).await.unwrap(),
            CertUse::Promoted { replaced: "aa".into() }
        );
        assert_eq!(db.use_certificate("s1", "aa", 70).await.unwrap(), CertUse::NotCurrent);
        assert_eq!(db.use_certificate("s1", "cc", 80).await.unwrap(), CertUse::Current);
        assert_eq!(db.get_store("s1").await.unwrap().unwrap().cert_not_after, 9_000);
        // Revoking the store revokes the current and a pending renewal alike.
        db.record_renewal("s1", "dd", 9_000, 90).await.unwrap();
        let mut revoked = db.revoke_store("s1", 100).await.unwrap().unwrap();
        revoked.sort();
        assert_eq!(revoked, ["cc", "dd"]);
        for s in ["cc", "dd"] {
            assert_eq!(db.use_certificate("s1", s, 110).await.unwrap(), CertUse::NotCurrent);
        }
        assert_eq!(db.revoke_store("nope", 120).await.unwrap(), None);
        assert_eq!(db.use_certificate("nope", "", 120).await.unwrap(), CertUse::NotCurrent);
    }
}

fn command(id: &str, store: &str, expires_ms: i64) -> CommandRow {
    CommandRow {
        id: id.into(),
        store_id: store.into(),
        kind: "restart".into(),
        workload: "w".into(),
        state: "queued".into(),
        result: String::new(),
        created_ms: 0,
        expires_ms,
        finished_ms: 0,
    }
}

#[tokio::test]
async fn commands_are_capped_acknowledged_by_their_store_and_queued_again() {
    for (db, _guard) in engines().await {
        assert!(
            db.insert_command_capped(
                &command("c1", "s1", 1000),
                "op",
                2,
                0,
                &audit("command", "s1")
            )
            .await
            .unwrap()
        );
        assert!(
            db.insert_command_capped(
                &command("c2", "s1", 100),
                "op",
                2,
                0,
                &audit("command", "s1")
            )
            .await
            .unwrap()
        );
        assert!(
            !db.insert_command_capped(
                &command("c3", "s1", 1000),
                "op",
                2,
                0,
                &audit("command", "s1")
            )
            .await
            .unwrap()
        );
        assert!(db.get_command("c3").await.unwrap().is_none(), "refused: not stored");
        assert!(
            db.insert_command_capped(
                &command("c4", "s2", 1000),
                "op",
                2,
                0,
                &audit("command", "s1")
            )
            .await
            .unwrap()
        );
        // Another store can neither acknowledge nor answer s1's command.
        assert!(!db.ack_command("c1", "s2").await.unwrap());
        assert!(db.ack_command("c1", "s1").await.unwrap());
        assert!(!db.ack_command("c1", "s1").await.unwrap(), "sent once");
        assert!(!db.finish_command("c1", "s2", true, "forged", 5).await.unwrap());
        assert_eq!(db.get_command("c1").await.unwrap().unwrap().state, "sent");
        // Its session ends unanswered: queued again; the expired one expires.
        assert!(db.ack_command("c2", "s1").await.unwrap());
        let ids = vec!["c1".to_string(), "c2".to_string()];
        assert_eq!(db.requeue_unfinished_commands(Some(("s1", &ids)), 100).await.unwrap(), 1);
        assert_eq!(db.get_command("c1").await.unwrap().unwrap().state, "queued");
        assert_eq!(db.get_command("c2").await.unwrap().unwrap().state, "expired");
        // Answered by its store: done, once.
        assert!(db.ack_command("c1", "s1").await.unwrap());
        assert!(db.finish_command("c1", "s1", true, "restarted", 110).await.unwrap());
        assert!(!db.finish_command("c1", "s1", false, "again", 120).await.unwrap());
        let c1 = db.get_command("c1").await.unwrap().unwrap();
        assert_eq!((c1.state.as_str(), c1.result.as_str()), ("done", "restarted"));
        // At start-up every unanswered one is queued again.
        assert!(db.ack_command("c4", "s2").await.unwrap());
        assert_eq!(db.requeue_unfinished_commands(None, 130).await.unwrap(), 1);
        assert_eq!(db.get_command("c4").await.unwrap().unwrap().state, "queued");
    }
}

#[tokio::test]
async fn api_tokens_are_revoked_by_id_but_never_the_last_admin() {
    for (db, _guard) in engines().await {
        db.insert_api_token(
            "adm1aaaaaaaaaaaaaaaa",
            "first admin",
            "admin",
            1,
            &audit("api-token", ""),
        )
        .await
        .unwrap();
        db.insert_api_token("ops1bbbbbbbbbbbbbbbb", "tool", "operator", 2, &audit("api-token", ""))
            .await
            .unwrap();
        let list = db.list_api_tokens().await.unwrap();
        assert_eq!(
            list.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["adm1aaaaaaaa", "ops1bbbbbbbb"]
        );
        assert_eq!(
            db.revoke_api_token("adm1aaaaaaaa", 3).await.unwrap(),
            Err(ApiTokenRefusal::LastAdmin("adm1aaaaaaaa".into()))
        );
        assert!(db.api_token("adm1aaaaaaaaaaaaaaaa").await.unwrap().is_some());
        db.insert_api_token(
            "adm2cccccccccccccccc",
            "second admin",
            "admin",
            4,
            &audit("api-token", ""),
        )
        .await
        .unwrap();
        let t = db.revoke_api_token("adm1aaaaaaaa", 5).await.unwrap().unwrap();
        assert_eq!((t.name.as_str(), t.revoked_ms), ("first admin", 5));
        assert!(
            db.api_token("adm1aaaaaaaaaaaaaaaa").await.unwrap().is_none(),
            "a revoked token is refused"
        );
        assert_eq!(
            db.revoke_api_token("adm1aaaaaaaa", 6).await.unwrap(),
            Err(ApiTokenRefusal::AlreadyRevoked("adm1aaaaaaaa".into()))
        );
        assert_eq!(
            db.revoke_api_token("nope", 6).await.unwrap(),
            Err(ApiTokenRefusal::Unknown("nope".into()))
        );
        assert!(db.revoke_api_token("ops1bbbbbbbb", 7).await.unwrap().is_ok());
    }
}

#[tokio::test]
async fn migration_3_gives_tokens_ids_and_keeps_every_certificate_working() {
    for (db, guard) in engines().await {
        drop(db);
        let (url, extra) = match &guard {
            Guard::Sqlite(dir) => {
                (format!("sqlite://{}", dir.path().join("v2.db").display()), None)
            }
            Guard::Postgres(_) => {
                let name = format!("{}_v2", pg_name(&guard));
                let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&format!(
                    "{}/postgres",
                    pg_server()
                ))
                .await
                .unwrap();
                admin.execute(AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
                (format!("{}/{name}", pg_server()), Some(name))
            }
        };
        // A central of schema 2: an enrolled store, an unused token, an API token.
        let old = Db::connect(&url).await.unwrap();
        old.migrate(2).await.unwrap();
        for sql in [
            "INSERT INTO stores (id, cert_serial, cert_not_after, enrolled_ms, created_ms) VALUES ('s1', 'aa', 9000, 1, 1)",
            "INSERT INTO enroll_tokens (hash, store_id, region, created_ms, expires_ms, created_by) \
             VALUES ('0123456789abcdef', 's2', 'west', 1, 5000, 'admin')",
            "INSERT INTO api_tokens (hash, name, role, created_ms) VALUES ('fedcba9876543210', 'admin', 'admin', 1)",
        ] {
            old.pool.execute(sql).await.unwrap();
        }
        drop(old);
        let db = Db::open(&url).await.unwrap();
        assert_eq!(db.use_certificate("s1", "aa", 10).await.unwrap(), CertUse::Current);
        let t = db.list_enroll_tokens(None).await.unwrap();
        assert_eq!((t[0].id.as_str(), t[0].state(10)), ("0123456789ab", "unused"));
        assert!(db.check_enroll_token("0123456789abcdef", "k", 10).await.unwrap().is_ok());
        assert_eq!(db.list_api_tokens().await.unwrap()[0].id, "fedcba987654");
        assert!(db.api_token("fedcba9876543210").await.unwrap().is_some());
        drop(db);
        if let Some(name) = extra {
            drop_pg(&name);
        }
    }
}
