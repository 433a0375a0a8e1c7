//! Retention: what nodes send is kept for a while, not for ever. Old events (by when central
//! received them: a node's clock may be wrong), events past a per-store count, and alerts
//! resolved long ago are deleted in chunks, each its own short transaction, so ingestion and
//! operators are never held up behind one long delete.

use sqlx::Row;

use super::{Db, Result, q, seq_to_db};

/// How much to keep, and how much one chunk deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Events received longer ago than this are deleted.
    pub event_max_age_ms: i64,
    /// A store keeps at most this many events (its newest).
    pub events_per_store: u64,
    /// Alerts resolved longer ago than this are deleted.
    pub resolved_alert_max_age_ms: i64,
    /// Rows one delete statement removes at most.
    pub chunk: u32,
    /// Chunks one pass deletes at most; the rest waits for the next pass.
    pub max_chunks_per_pass: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            event_max_age_ms: 90 * 86_400_000,
            events_per_store: 100_000,
            resolved_alert_max_age_ms: 90 * 86_400_000,
            chunk: 1000,
            max_chunks_per_pass: 200,
        }
    }
}

/// What one pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub old_events: u64,
    pub excess_events: u64,
    pub resolved_alerts: u64,
    /// The pass stopped at its chunk budget: more is due next time.
    pub more: bool,
}

impl Db {
    /// Deletes up to `limit` events received before `cutoff_ms`.
    pub async fn delete_events_received_before(&self, cutoff_ms: i64, limit: u32) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM events WHERE (store_id, seq) IN \
             (SELECT store_id, seq FROM events WHERE received_ms < $1 LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(q("deleting old events"))?;
        Ok(r.rows_affected())
    }

    /// Stores holding more than `keep` events, with how many they hold.
    pub async fn stores_over_event_count(&self, keep: u64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT store_id, COUNT(*) AS n FROM events GROUP BY store_id HAVING COUNT(*) > $1",
        )
        .bind(seq_to_db(keep))
        .fetch_all(&self.read)
        .await
        .map_err(q("counting events per store"))?;
        rows.iter()
            .map(|r| Ok((r.try_get("store_id")?, r.try_get("n")?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(q("counting events per store"))
    }

    /// Deletes up to `limit` of a store's oldest events beyond its newest `keep`.
    pub async fn trim_store_events(&self, store_id: &str, keep: u64, limit: u32) -> Result<u64> {
        // The newest event that goes: the one after the newest `keep`.
        let cut: Option<i64> = sqlx::query(
            "SELECT seq FROM events WHERE store_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2",
        )
        .bind(store_id)
        .bind(seq_to_db(keep))
        .fetch_optional(&self.read)
        .await
        .map_err(q("finding a store's oldest events"))?
        .map(|r| r.try_get("seq"))
        .transpose()
        .map_err(q("finding a store's oldest events"))?;
        let Some(cut) = cut else { return Ok(0) };
        let r = sqlx::query(
            "DELETE FROM events WHERE store_id = $1 AND seq IN \
             (SELECT seq FROM events WHERE store_id = $1 AND seq <= $2 ORDER BY seq LIMIT $3)",
        )
        .bind(store_id)
        .bind(cut)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(q("deleting a store's oldest events"))?;
        Ok(r.rows_affected())
    }

    /// Deletes up to `limit` alerts resolved before `cutoff_ms`.
    pub async fn delete_alerts_resolved_before(&self, cutoff_ms: i64, limit: u32) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM alerts WHERE id IN \
             (SELECT id FROM alerts WHERE resolved_ms <> 0 AND resolved_ms < $1 LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(q("deleting old alerts"))?;
        Ok(r.rows_affected())
    }

    /// One retention pass at `now_ms`: at most `max_chunks_per_pass` deletes of at most `chunk`
    /// rows each, yielding between them.
    pub async fn sweep(&self, r: &Retention, now_ms: i64) -> Result<Swept> {
        let mut out = Swept::default();
        let mut budget = r.max_chunks_per_pass.max(1);
        let chunk = r.chunk.max(1);
        let full = |n: u64| n >= u64::from(chunk);
        let cutoff = now_ms.saturating_sub(r.event_max_age_ms);
        while budget > 0 {
            budget -= 1;
            let n = self.delete_events_received_before(cutoff, chunk).await?;
            out.old_events += n;
            tokio::task::yield_now().await;
            if !full(n) {
                break;
            }
            out.more = budget == 0;
        }
        if budget > 0 {
            'stores: for (store, _) in self.stores_over_event_count(r.events_per_store).await? {
                loop {
                    if budget == 0 {
                        out.more = true;
                        break 'stores;
                    }
                    budget -= 1;
                    let n = self.trim_store_events(&store, r.events_per_store, chunk).await?;
                    out.excess_events += n;
                    tokio::task::yield_now().await;
                    if !full(n) {
                        break;
                    }
                }
            }
        }
        let cutoff = now_ms.saturating_sub(r.resolved_alert_max_age_ms);
        while budget > 0 {
            budget -= 1;
            let n = self.delete_alerts_resolved_before(cutoff, chunk).await?;
            out.resolved_alerts += n;
            tokio::task::yield_now().await;
            if !full(n) {
                break;
            }
            out.more = budget == 0;
        }
        Ok(out)
    }
}
