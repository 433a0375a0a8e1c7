//! The audit trail: who changed what, and when. An operator's change and its audit record are
//! written in one transaction, so a change whose record cannot be written is not made.

use sqlx::{AnyConnection, Row};

use super::{Db, Result, q};

/// One record to write with a change.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// The API token's name, or `node:<store>` for what a node did.
    pub actor: String,
    /// What was done: fleet-push, enroll-token, command, api-token, enroll, renew…
    pub action: String,
    /// The store it concerns ('' for none, e.g. an API token).
    pub store_id: String,
    pub detail: String,
}

impl AuditEntry {
    pub fn new(actor: &str, action: &str, store_id: &str, detail: impl Into<String>) -> Self {
        AuditEntry {
            actor: actor.into(),
            action: action.into(),
            store_id: store_id.into(),
            detail: detail.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AuditRow {
    pub id: String,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub store_id: String,
    pub detail: String,
}

/// Which records to read, newest first: every filter left empty (or 0) matches everything.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub store_id: String,
    pub actor: String,
    pub since_ms: i64,
    /// Only records older than this (at_ms, id): where the previous page ended.
    pub before: Option<(i64, String)>,
    pub limit: u32,
}

fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Writes `entries` on `conn` (a transaction's connection, so they commit with the change).
pub(crate) async fn write(
    conn: &mut AnyConnection,
    entries: &[AuditEntry],
    now_ms: i64,
) -> Result<()> {
    for e in entries {
        sqlx::query(
            "INSERT INTO audit (id, at_ms, actor, action, detail, store_id) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new_id())
        .bind(now_ms)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.detail)
        .bind(&e.store_id)
        .execute(&mut *conn)
        .await
        .map_err(q("writing the audit trail"))?;
    }
    Ok(())
}

impl Db {
    /// Writes one audit record on its own (for what has no transaction of its own to join).
    pub async fn write_audit(&self, entry: &AuditEntry, now_ms: i64) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(q("writing the audit trail"))?;
        write(&mut conn, std::slice::from_ref(entry), now_ms).await
    }

    /// A page of the audit trail, newest first.
    pub async fn audit_page(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let (before_at, before_id) = f.before.clone().unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, store_id, detail FROM audit \
             WHERE ($1 = '' OR store_id = $1) AND ($2 = '' OR actor = $2) AND at_ms >= $3 \
             AND (at_ms < $4 OR (at_ms = $4 AND ($5 = '' OR id < $5))) \
             ORDER BY at_ms DESC, id DESC LIMIT $6",
        )
        .bind(&f.store_id)
        .bind(&f.actor)
        .bind(f.since_ms)
        .bind(before_at)
        .bind(before_id)
        .bind(i64::from(f.limit))
        .fetch_all(&self.read)
        .await
        .map_err(q("reading the audit trail"))?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    store_id: r.try_get("store_id")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(q("reading the audit trail"))
    }
}
