//! Central's durable state: stores, profile revisions, enrollment tokens, certificates, console
//! secrets, events, commands, alerts, API tokens and the audit trail.
//!
//! One SQL dialect that SQLite and PostgreSQL both run, through sqlx's `Any` driver: SQLite
//! (a file under `--data`) is the embedded default, PostgreSQL (`--database-url postgres://…`)
//! the engine when one central is not enough. Times are unix milliseconds passed in by the
//! caller, so the clock stays outside. The schema is one file of numbered migrations
//! (`schema.sql`).

mod audit;
mod console;
mod retention;
mod rows;
mod trust;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, AssertSqlSafe};
use sqlx::{Executor, Row};

pub use audit::{AuditEntry, AuditFilter, AuditRow};
pub use console::CONSOLE_EVENT_KINDS;
pub use retention::{Retention, Swept};
pub use rows::*;
pub use trust::*;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the database {url}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration to version {version} failed")]
    Migrate {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot restrict the database files of {url} to their owner")]
    Files {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database query failed: {what}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

type Result<T> = std::result::Result<T, DbError>;

fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Query { what, source }
}

/// The schema file: its migrations, marked by `-- migration N: …` lines.
const SCHEMA: &str = include_str!("schema.sql");

/// The migrations of [`SCHEMA`], in order: (version, statements).
fn migrations() -> Vec<(i64, Vec<String>)> {
    let mut out: Vec<(i64, String)> = Vec::new();
    for line in SCHEMA.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("-- migration ") {
            let number = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
            if let Ok(v) = number.parse() {
                out.push((v, String::new()));
            }
        } else if !trimmed.starts_with("--")
            && let Some((_, sql)) = out.last_mut()
        {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    out.into_iter()
        .map(|(v, sql)| {
            let stmts =
                sql.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            (v, stmts)
        })
        .collect()
}

/// Why an enrollment token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the enrollment token is not known to this central")]
    Unknown,
    #[error("the enrollment token was already used (at {0} ms)")]
    Used(i64),
    #[error("the enrollment token expired (at {0} ms)")]
    Expired(i64),
    #[error("the enrollment token was revoked (at {0} ms)")]
    Revoked(i64),
}

#[derive(Clone)]
pub struct Db {
    /// Writes (and, on PostgreSQL, reads too).
    pool: AnyPool,
    /// Reads. On a SQLite file these are connections of their own: WAL lets them read while the
    /// one writer commits a batch of events, so `store list` does not wait behind ingestion.
    read: AnyPool,
    sqlite: bool,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `url`:
    /// `sqlite:///path/central.db`, `sqlite::memory:` or `postgres://…`.
    pub async fn open(url: &str) -> Result<Db> {
        let db = Self::connect(url).await?;
        db.migrate(i64::MAX).await?;
        Ok(db)
    }

    /// Opens the database at `url` without migrating it.
    async fn connect(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let memory = sqlite && url.contains("memory");
        let open_err = |source| DbError::Open { url: redact_url(url), source };
        if !sqlite {
            // sslmode, sslrootcert and the rest of libpq's options come in the URL.
            let pool =
                AnyPoolOptions::new().max_connections(16).connect(url).await.map_err(open_err)?;
            return Ok(Db { read: pool.clone(), pool, sqlite });
        }
        if !memory {
            secure_sqlite_files(url)
                .map_err(|source| DbError::Files { url: url.to_string(), source })?;
        }
        // One writer at a time is how SQLite works; a single connection also makes
        // `sqlite::memory:` one database rather than one per connection.
        let writer = AnyPoolOptions::new().max_connections(1).after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                Ok(())
            })
        });
        let url_full =
            if !memory && !url.contains('?') { format!("{url}?mode=rwc") } else { url.to_string() };
        let pool = writer.connect(&url_full).await.map_err(open_err)?;
        if memory {
            return Ok(Db { read: pool.clone(), pool, sqlite });
        }
        let reader = AnyPoolOptions::new().max_connections(READERS).after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                // A reader never writes: a query that tried would be a bug, refused here.
                conn.execute("PRAGMA query_only = 1").await?;
                Ok(())
            })
        });
        let read = reader.connect(&url_full).await.map_err(open_err)?;
        Ok(Db { pool, read, sqlite })
    }

    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    /// Brings the schema up to migration `upto` (all of them: `i64::MAX`).
    async fn migrate(&self, upto: i64) -> Result<()> {
        self.pool
            .execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await
            .map_err(|source| DbError::Migrate { version: 0, source })?;
        let done: Vec<i64> = sqlx::query("SELECT version FROM schema_version")
            .fetch_all(&self.pool)
            .await
            .and_then(|rows| rows.iter().map(|r| r.try_get::<i64, _>("version")).collect())
            .map_err(|source| DbError::Migrate { version: 0, source })?;
        self.migrate_to(&done, upto).await
    }

    /// Runs every migration up to and including `upto` that is not in `done`, in order, each in
    /// one transaction. A migration is known by its number, not by being above the highest one
    /// run: two branches may number theirs 3 and 4, and a database that ran 4 first still gets 3.
    async fn migrate_to(&self, done: &[i64], upto: i64) -> Result<()> {
        for (version, stmts) in migrations() {
            if done.contains(&version) || version > upto {
                continue;
            }
            let fail = |source| DbError::Migrate { version, source };
            let mut tx = self.pool.begin().await.map_err(fail)?;
            for stmt in stmts {
                tx.execute(AssertSqlSafe(stmt)).await.map_err(fail)?;
            }
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            tx.commit().await.map_err(fail)?;
        }
        Ok(())
    }

    // ---- stores -------------------------------------------------------------------------

    pub async fn list_stores(&self) -> Result<Vec<StoreRow>> {
        let rows =
            sqlx::query(AssertSqlSafe(format!("SELECT {STORE_COLUMNS} FROM stores ORDER BY id")))
                .fetch_all(&self.read)
                .await
                .map_err(q("listing stores"))?;
        rows.iter()
            .map(StoreRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading stores"))
    }

    pub async fn get_store(&self, id: &str) -> Result<Option<StoreRow>> {
        let row =
            sqlx::query(AssertSqlSafe(format!("SELECT {STORE_COLUMNS} FROM stores WHERE id = $1")))
                .bind(id)
                .fetch_optional(&self.read)
                .await
                .map_err(q("reading a store"))?;
        row.as_ref().map(StoreRow::from_row).transpose().map_err(q("reading a store"))
    }

    /// Records what a session learnt about a store.
    pub async fn update_session(&self, u: &SessionUpdate<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE stores SET online = $2, last_seen_ms = $3, agent_version = $4, \
             applied_revision = $5, status_json = $6, last_apply_ok = $7, last_apply_message = $8 \
             WHERE id = $1",
        )
        .bind(u.store_id)
        .bind(i64::from(u.online))
        .bind(u.now_ms)
        .bind(u.agent_version)
        .bind(u.applied_revision)
        .bind(u.status_json)
        .bind(i64::from(u.last_apply_ok))
        .bind(u.last_apply_message)
        .execute(&self.pool)
        .await
        .map_err(q("recording a store's status"))?;
        Ok(())
    }

    pub async fn set_online(&self, store_id: &str, online: bool, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE stores SET online = $2, last_seen_ms = $3 WHERE id = $1")
            .bind(store_id)
            .bind(i64::from(online))
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(q("marking a store online or offline"))?;
        Ok(())
    }

    /// Records the last-seen time of many stores in one transaction (heartbeats are many).
    pub async fn touch_many(&self, seen: &[(String, i64)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(q("recording heartbeats"))?;
        for (store, at) in seen {
            sqlx::query("UPDATE stores SET last_seen_ms = $2 WHERE id = $1 AND last_seen_ms < $2")
                .bind(store)
                .bind(*at)
                .execute(&mut *tx)
                .await
                .map_err(q("recording a heartbeat"))?;
        }
        tx.commit().await.map_err(q("recording heartbeats"))?;
        Ok(())
    }

    /// At start-up no session exists yet, whatever the database says.
    pub async fn mark_all_offline(&self) -> Result<()> {
        sqlx::query("UPDATE stores SET online = 0")
            .execute(&self.pool)
            .await
            .map_err(q("resetting sessions"))?;
        Ok(())
    }

    // ---- enrollment and certificates ----------------------------------------------------

    /// Stores an enrollment token and its audit record, both or neither.
    pub async fn insert_enroll_token(
        &self,
        t: &NewEnrollToken<'_>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(q("storing an enrollment token"))?;
        sqlx::query(
            "INSERT INTO enroll_tokens (hash, store_id, region, created_ms, expires_ms, created_by, id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(t.hash)
        .bind(t.store_id)
        .bind(t.region)
        .bind(t.created_ms)
        .bind(t.expires_ms)
        .bind(t.created_by)
        .bind(token_id(t.hash))
        .execute(&mut *tx)
        .await
        .map_err(q("storing an enrollment token"))?;
        audit::write(&mut tx, std::slice::from_ref(audit), t.created_ms).await?;
        tx.commit().await.map_err(q("storing an enrollment token"))?;
        Ok(())
    }

    /// Records a store's (new) certificate without a token (tests, tools); the ones it had
    /// before, if any, are revoked. Enrollment is [`Db::enroll_store`].
    pub async fn set_certificate(
        &self,
        store_id: &str,
        region: Option<&str>,
        serial: &str,
        not_after_ms: i64,
        now_ms: i64,
        enrolled: bool,
    ) -> Result<Option<String>> {
        let mut tx = self.pool.begin().await.map_err(q("recording a certificate"))?;
        sqlx::query(
            "INSERT INTO stores (id, created_ms) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(store_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a store"))?;
        let old: String = sqlx::query("SELECT cert_serial FROM stores WHERE id = $1")
            .bind(store_id)
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get("cert_serial"))
            .map_err(q("reading a store's certificate"))?;
        if !old.is_empty() && old != serial {
            sqlx::query("INSERT INTO revoked_certs (serial, store_id, revoked_ms) VALUES ($1, $2, $3) ON CONFLICT (serial) DO NOTHING")
                .bind(&old)
                .bind(store_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(q("revoking a certificate"))?;
        }
        sqlx::query(
            "UPDATE stores SET cert_serial = $2, cert_not_after = $3, next_cert_serial = '', \
             next_cert_not_after = 0 WHERE id = $1",
        )
        .bind(store_id)
        .bind(serial)
        .bind(not_after_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("recording a certificate"))?;
        if enrolled {
            sqlx::query("UPDATE stores SET enrolled_ms = $2 WHERE id = $1")
                .bind(store_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(q("recording an enrollment"))?;
        }
        if let Some(region) = region.filter(|r| !r.is_empty()) {
            sqlx::query("UPDATE stores SET region = $2 WHERE id = $1")
                .bind(store_id)
                .bind(region)
                .execute(&mut *tx)
                .await
                .map_err(q("recording a store's region"))?;
        }
        tx.commit().await.map_err(q("recording a certificate"))?;
        Ok((!old.is_empty() && old != serial).then_some(old))
    }

    /// Whether `serial` is the certificate central last issued to `store_id`.
    pub async fn certificate_is_current(&self, store_id: &str, serial: &str) -> Result<bool> {
        let cur: Option<String> = sqlx::query("SELECT cert_serial FROM stores WHERE id = $1")
            .bind(store_id)
            .fetch_optional(&self.read)
            .await
            .map_err(q("checking a certificate"))?
            .map(|r| r.try_get("cert_serial"))
            .transpose()
            .map_err(q("checking a certificate"))?;
        Ok(cur.as_deref() == Some(serial))
    }

    // ---- revisions ----------------------------------------------------------------------

    /// Records a fleet push in one transaction: a store's revision changes only when its
    /// rendered profile does.
    pub async fn record_push(
        &self,
        stores: &[PushedStore<'_>],
        by: &str,
        now_ms: i64,
    ) -> Result<Vec<PushResult>> {
        let mut tx = self.pool.begin().await.map_err(q("recording a fleet push"))?;
        let mut out = Vec::new();
        for s in stores {
            sqlx::query("INSERT INTO stores (id, region, created_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
                .bind(s.store_id)
                .bind(s.region)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(q("recording a store"))?;
            if !s.region.is_empty() {
                sqlx::query("UPDATE stores SET region = $2 WHERE id = $1")
                    .bind(s.store_id)
                    .bind(s.region)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("recording a store's region"))?;
            }
            let previous: String = sqlx::query("SELECT desired_revision FROM stores WHERE id = $1")
                .bind(s.store_id)
                .fetch_one(&mut *tx)
                .await
                .and_then(|r| r.try_get("desired_revision"))
                .map_err(q("reading a store's revision"))?;
            let changed = previous != s.revision;
            if changed {
                sqlx::query(
                    "INSERT INTO revisions (store_id, revision, profile_yaml, source, created_ms, created_by) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (store_id, revision) DO NOTHING",
                )
                .bind(s.store_id)
                .bind(s.revision)
                .bind(s.profile_yaml)
                .bind(s.source)
                .bind(now_ms)
                .bind(by)
                .execute(&mut *tx)
                .await
                .map_err(q("recording a revision"))?;
                sqlx::query("UPDATE stores SET desired_revision = $2 WHERE id = $1")
                    .bind(s.store_id)
                    .bind(s.revision)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("recording a store's revision"))?;
            }
            out.push(PushResult {
                store_id: s.store_id.to_string(),
                revision: s.revision.to_string(),
                changed,
                previous,
            });
        }
        // Which stores changed to which revision, one record each (so `audit --store` finds
        // them), and the push as a whole; committed with the revisions or not at all.
        let changed = out.iter().filter(|r| r.changed).count();
        let mut records: Vec<AuditEntry> = out
            .iter()
            .zip(stores)
            .filter(|(r, _)| r.changed)
            .map(|(r, s)| {
                let was = if r.previous.is_empty() { "none" } else { &r.previous };
                AuditEntry::new(
                    by,
                    "fleet-push",
                    &r.store_id,
                    format!("revision {} (was {was}) from {}", r.revision, s.source),
                )
            })
            .collect();
        records.push(AuditEntry::new(
            by,
            "fleet-push",
            "",
            format!("{} stores, {changed} new revisions", out.len()),
        ));
        audit::write(&mut tx, &records, now_ms).await?;
        tx.commit().await.map_err(q("recording a fleet push"))?;
        Ok(out)
    }

    pub async fn revision_yaml(&self, store_id: &str, revision: &str) -> Result<Option<String>> {
        sqlx::query("SELECT profile_yaml FROM revisions WHERE store_id = $1 AND revision = $2")
            .bind(store_id)
            .bind(revision)
            .fetch_optional(&self.read)
            .await
            .map_err(q("reading a revision"))?
            .map(|r| r.try_get("profile_yaml"))
            .transpose()
            .map_err(q("reading a revision"))
    }

    // ---- events -------------------------------------------------------------------------

    /// Stores events, ignoring any (store, seq) already stored, and moves each store's
    /// acknowledged sequence forward. Returns the new acked sequence per store.
    pub async fn insert_events(
        &self,
        batch: &[NewEvent],
        now_ms: i64,
    ) -> Result<Vec<(String, u64)>> {
        let mut tx = self.pool.begin().await.map_err(q("storing events"))?;
        let mut acked: Vec<(String, u64)> = Vec::new();
        for e in batch {
            sqlx::query(
                "INSERT INTO events (store_id, seq, at_ms, kind, workload, message, received_ms, subject) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (store_id, seq) DO NOTHING",
            )
            .bind(&e.store_id)
            .bind(seq_to_db(e.seq))
            .bind(e.at_ms)
            .bind(&e.kind)
            .bind(&e.workload)
            .bind(&e.message)
            .bind(now_ms)
            .bind(&e.subject)
            .execute(&mut *tx)
            .await
            .map_err(q("storing an event"))?;
            match acked.iter_mut().find(|(s, _)| *s == e.store_id) {
                Some((_, m)) => *m = (*m).max(e.seq),
                None => acked.push((e.store_id.clone(), e.seq)),
            }
        }
        for (store, seq) in &acked {
            sqlx::query(
                "UPDATE stores SET acked_seq = CASE WHEN acked_seq > $2 THEN acked_seq ELSE $2 END, \
                 last_seen_ms = $3 WHERE id = $1",
            )
            .bind(store)
            .bind(seq_to_db(*seq))
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("moving the event acknowledgement"))?;
        }
        tx.commit().await.map_err(q("storing events"))?;
        Ok(acked)
    }

    pub async fn recent_events(&self, store_id: &str, limit: u32) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, workload, message, subject FROM events WHERE store_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(store_id)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(q("reading events"))?;
        rows.iter()
            .map(EventRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading events"))
    }

    pub async fn count_events(&self, store_id: &str) -> Result<i64> {
        sqlx::query("SELECT COUNT(*) AS n FROM events WHERE store_id = $1")
            .bind(store_id)
            .fetch_one(&self.read)
            .await
            .and_then(|r| r.try_get("n"))
            .map_err(q("counting events"))
    }

    // ---- commands -----------------------------------------------------------------------

    /// Commands waiting for a store, oldest first (expired ones are marked so first).
    pub async fn queued_commands(&self, store_id: &str, now_ms: i64) -> Result<Vec<CommandRow>> {
        self.expire_commands(now_ms).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COMMAND_COLUMNS} FROM commands WHERE store_id = $1 AND state = 'queued' ORDER BY created_ms"
        )))
        .bind(store_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading queued commands"))?;
        rows.iter()
            .map(CommandRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading commands"))
    }

    pub async fn set_command_state(
        &self,
        id: &str,
        state: &str,
        result: &str,
        finished_ms: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE commands SET state = $2, result = $3, finished_ms = $4 WHERE id = $1")
            .bind(id)
            .bind(state)
            .bind(result)
            .bind(finished_ms)
            .execute(&self.pool)
            .await
            .map_err(q("recording a command's result"))?;
        Ok(())
    }

    pub async fn expire_commands(&self, now_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE commands SET state = 'expired', result = 'the store did not come online before the command expired', \
             finished_ms = $1 WHERE state = 'queued' AND expires_ms <= $1",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("expiring commands"))?;
        Ok(r.rows_affected())
    }

    pub async fn get_command(&self, id: &str) -> Result<Option<CommandRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COMMAND_COLUMNS} FROM commands WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(q("reading a command"))?;
        row.as_ref().map(CommandRow::from_row).transpose().map_err(q("reading a command"))
    }

    pub async fn recent_commands(&self, store_id: &str, limit: u32) -> Result<Vec<CommandRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COMMAND_COLUMNS} FROM commands WHERE store_id = $1 ORDER BY created_ms DESC LIMIT $2"
        )))
        .bind(store_id)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(q("reading commands"))?;
        rows.iter()
            .map(CommandRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading commands"))
    }

    // ---- alerts -------------------------------------------------------------------------

    /// Opens an alert unless one of that kind is already open for that store and subject.
    pub async fn open_alert(&self, a: &AlertRow) -> Result<bool> {
        let exists = sqlx::query(
            "SELECT id FROM alerts WHERE kind = $1 AND store_id = $2 AND subject = $3 AND resolved_ms = 0",
        )
        .bind(&a.kind)
        .bind(&a.store_id)
        .bind(&a.subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading alerts"))?;
        if exists.is_some() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO alerts (id, kind, store_id, subject, message, since_ms, resolved_ms) VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(&a.id)
        .bind(&a.kind)
        .bind(&a.store_id)
        .bind(&a.subject)
        .bind(&a.message)
        .bind(a.since_ms)
        .execute(&self.pool)
        .await
        .map_err(q("opening an alert"))?;
        Ok(true)
    }

    pub async fn resolve_alert(
        &self,
        kind: &str,
        store_id: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE alerts SET resolved_ms = $4 WHERE kind = $1 AND store_id = $2 AND subject = $3 AND resolved_ms = 0",
        )
        .bind(kind)
        .bind(store_id)
        .bind(subject)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("resolving an alert"))?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn alerts(&self, include_resolved: bool) -> Result<Vec<AlertRow>> {
        let sql = if include_resolved {
            format!("SELECT {ALERT_COLUMNS} FROM alerts ORDER BY kind, since_ms")
        } else {
            format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE resolved_ms = 0 ORDER BY kind, since_ms"
            )
        };
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.read)
            .await
            .map_err(q("reading alerts"))?;
        rows.iter()
            .map(AlertRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading alerts"))
    }

    /// Opens an alert like [`Db::open_alert`], unless the store already has `cap` open alerts
    /// of the kinds in `capped`: then it opens (once) the store's `limit_kind` alert instead,
    /// which says so. Checked and written in one transaction.
    pub async fn open_alert_capped(
        &self,
        a: &AlertRow,
        capped: &[&str],
        cap: u32,
        limit: &AlertRow,
    ) -> Result<AlertOpened> {
        let what = "opening an alert";
        let mut tx = self.pool.begin().await.map_err(q(what))?;
        let exists = sqlx::query(
            "SELECT id FROM alerts WHERE kind = $1 AND store_id = $2 AND subject = $3 AND resolved_ms = 0",
        )
        .bind(&a.kind)
        .bind(&a.store_id)
        .bind(&a.subject)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("reading alerts"))?;
        if exists.is_some() {
            return Ok(AlertOpened::AlreadyOpen);
        }
        let mut outcome = AlertOpened::Opened;
        let mut row = a;
        if capped.contains(&a.kind.as_str()) {
            let open = count_open(&mut tx, &a.store_id, capped).await?;
            if open >= i64::from(cap) {
                let limit_open = sqlx::query(
                    "SELECT id FROM alerts WHERE kind = $1 AND store_id = $2 AND resolved_ms = 0",
                )
                .bind(&limit.kind)
                .bind(&limit.store_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("reading alerts"))?;
                if limit_open.is_some() {
                    return Ok(AlertOpened::Capped { limit_opened: false });
                }
                outcome = AlertOpened::Capped { limit_opened: true };
                row = limit;
            }
        }
        sqlx::query(
            "INSERT INTO alerts (id, kind, store_id, subject, message, since_ms, resolved_ms) VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(&row.id)
        .bind(&row.kind)
        .bind(&row.store_id)
        .bind(&row.subject)
        .bind(&row.message)
        .bind(row.since_ms)
        .execute(&mut *tx)
        .await
        .map_err(q(what))?;
        tx.commit().await.map_err(q(what))?;
        Ok(outcome)
    }

    /// How many alerts of `kinds` are open for a store.
    pub async fn count_open_alerts(&self, store_id: &str, kinds: &[&str]) -> Result<i64> {
        let mut conn = self.read.acquire().await.map_err(q("counting alerts"))?;
        count_open(&mut conn, store_id, kinds).await
    }

    /// A page of alerts in (kind, since, id) order, after `after` (where the last page ended).
    pub async fn alerts_page(
        &self,
        include_resolved: bool,
        after: Option<&AlertKey>,
        limit: u32,
    ) -> Result<Vec<AlertRow>> {
        let start = AlertKey { kind: String::new(), since_ms: i64::MIN, id: String::new() };
        let k = after.unwrap_or(&start);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1 = 1 OR resolved_ms = 0)              AND (kind > $2 OR (kind = $2 AND (since_ms > $3 OR (since_ms = $3 AND id > $4))))              ORDER BY kind, since_ms, id LIMIT $5"
        )))
        .bind(i64::from(include_resolved))
        .bind(&k.kind)
        .bind(k.since_ms)
        .bind(&k.id)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(q("reading alerts"))?;
        rows.iter()
            .map(AlertRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading alerts"))
    }

    /// A page of stores in id order, after the store `after` ('' for the first page).
    pub async fn list_stores_page(&self, after: &str, limit: u32) -> Result<Vec<StoreRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {STORE_COLUMNS} FROM stores WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(q("listing stores"))?;
        rows.iter()
            .map(StoreRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading stores"))
    }

    // ---- operators ----------------------------------------------------------------------

    /// Stores an API token and its audit record, both or neither.
    pub async fn insert_api_token(
        &self,
        hash: &str,
        name: &str,
        role: &str,
        now_ms: i64,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(q("storing an API token"))?;
        sqlx::query(
            "INSERT INTO api_tokens (hash, name, role, created_ms, id) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash)
        .bind(name)
        .bind(role)
        .bind(now_ms)
        .bind(token_id(hash))
        .execute(&mut *tx)
        .await
        .map_err(q("storing an API token"))?;
        audit::write(&mut tx, std::slice::from_ref(audit), now_ms).await?;
        tx.commit().await.map_err(q("storing an API token"))?;
        Ok(())
    }

    /// The name and role of the API token with this hash, unless it was revoked.
    pub async fn api_token(&self, hash: &str) -> Result<Option<(String, String)>> {
        let row =
            sqlx::query("SELECT name, role FROM api_tokens WHERE hash = $1 AND revoked_ms = 0")
                .bind(hash)
                .fetch_optional(&self.read)
                .await
                .map_err(q("checking an API token"))?;
        row.map(|r| Ok((r.try_get("name")?, r.try_get("role")?)))
            .transpose()
            .map_err(q("checking an API token"))
    }

    pub async fn count_api_tokens(&self) -> Result<i64> {
        sqlx::query("SELECT COUNT(*) AS n FROM api_tokens")
            .fetch_one(&self.read)
            .await
            .and_then(|r| r.try_get("n"))
            .map_err(q("counting API tokens"))
    }

    pub async fn audit(
        &self,
        id: &str,
        actor: &str,
        action: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (id, at_ms, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(now_ms)
        .bind(actor)
        .bind(action)
        .bind(detail)
        .execute(&self.pool)
        .await
        .map_err(q("writing the audit trail"))?;
        Ok(())
    }

    pub async fn audit_trail(&self, limit: u32) -> Result<Vec<(i64, String, String, String)>> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, action, detail FROM audit ORDER BY at_ms DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(q("reading the audit trail"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("at_ms")?,
                    r.try_get("actor")?,
                    r.try_get("action")?,
                    r.try_get("detail")?,
                ))
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(q("reading the audit trail"))
    }
}

async fn count_open(conn: &mut sqlx::AnyConnection, store_id: &str, kinds: &[&str]) -> Result<i64> {
    // The kinds are ours (constants), never a node's text: safe to write into the statement.
    let list: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.replace('\'', ""))).collect();
    if list.is_empty() {
        return Ok(0);
    }
    sqlx::query(AssertSqlSafe(format!(
        "SELECT COUNT(*) AS n FROM alerts WHERE store_id = $1 AND resolved_ms = 0 AND kind IN ({})",
        list.join(", ")
    )))
    .bind(store_id)
    .fetch_one(&mut *conn)
    .await
    .and_then(|r| r.try_get("n"))
    .map_err(q("counting alerts"))
}

/// Read connections of a SQLite database: enough for operators and the background job to read
/// while ingestion writes.
const READERS: u32 = 4;

/// A database URL fit for a log line: the password (if any) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((creds, host)) = rest.split_once('@') else { return url.to_string() };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The file of a `sqlite://` URL (None for an in-memory database).
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.contains(":memory:")).then(|| path.into())
}

/// Makes the database file before SQLite does, readable by its owner only: SQLite gives its WAL
/// and shared-memory files the database file's mode, so the three stay 0600 whatever the umask.
/// Files left readable by an older central are restricted.
fn secure_sqlite_files(url: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let Some(path) = sqlite_path(url) else { return Ok(()) };
    if !path.exists() {
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        match std::fs::metadata(&p) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                tracing::warn!(file = %p.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "the database file was readable by others: restricting it to 0600");
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sequence numbers are u64 on the wire and BIGINT in SQL; a node never gets near 2^63.
fn seq_to_db(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod console_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
