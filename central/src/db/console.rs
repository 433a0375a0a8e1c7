//! The stores' console secrets and what was done at their recovery consoles (issue 12).
//!
//! The secret is kept as 64 hex digits in `stores.console_secret` ('' for a store enrolled
//! before console codes, until its next session). Central needs the secret itself to issue a
//! code (a hash of it would not do), so it is not hashed like tokens are.

use sqlx::{AnyPool, Row};

use super::{Db, EventRow, Result, q};

/// The event kinds a node sends about its console: shown in `store get`'s local console
/// section, never alerts.
pub const CONSOLE_EVENT_KINDS: &[&str] = &["console_unlocked", "console_refused", "console_action"];

async fn read_secret(pool: &AnyPool, store_id: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT console_secret FROM stores WHERE id = $1")
        .bind(store_id)
        .fetch_optional(pool)
        .await
        .map_err(q("reading a store's console secret"))?;
    let secret: Option<String> = row
        .map(|r| r.try_get("console_secret"))
        .transpose()
        .map_err(q("reading a store's console secret"))?;
    Ok(secret.filter(|s| !s.is_empty()))
}

impl Db {
    /// The store's console secret (hex), if it has one; `None` also for an unknown store.
    pub async fn console_secret(&self, store_id: &str) -> Result<Option<String>> {
        read_secret(&self.read, store_id).await
    }

    /// The store's console secret (hex), `new_hex` becoming it if it has none. Every session
    /// start asks, so the common case (it has one) is a read only; the write is conditional, so
    /// two sessions racing (an old server and its replacement) agree on one secret.
    pub async fn ensure_console_secret(&self, store_id: &str, new_hex: &str) -> Result<String> {
        if let Some(s) = read_secret(&self.read, store_id).await? {
            return Ok(s);
        }
        sqlx::query("UPDATE stores SET console_secret = $2 WHERE id = $1 AND console_secret = ''")
            .bind(store_id)
            .bind(new_hex)
            .execute(&self.pool)
            .await
            .map_err(q("recording a store's console secret"))?;
        Ok(read_secret(&self.pool, store_id).await?.unwrap_or_default())
    }

    /// The store's last `limit` console events, newest first.
    pub async fn console_events(&self, store_id: &str, limit: u32) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, workload, message, subject FROM events \
             WHERE store_id = $1 AND kind IN ($2, $3, $4) ORDER BY seq DESC LIMIT $5",
        )
        .bind(store_id)
        .bind(CONSOLE_EVENT_KINDS[0])
        .bind(CONSOLE_EVENT_KINDS[1])
        .bind(CONSOLE_EVENT_KINDS[2])
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(q("reading console events"))?;
        rows.iter()
            .map(EventRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("reading console events"))
    }
}
