//! Event ingestion: events from every session go through one writer that stores them in
//! batches (one transaction per batch), then tells each session what to acknowledge. Batching
//! is what lets SQLite take tens of thousands of events per second with a full fsync per commit.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::db::{Db, NewEvent};

struct Job {
    events: Vec<NewEvent>,
    done: oneshot::Sender<Result<u64, String>>,
}

#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
}

/// Most events in one transaction, and how long the writer waits to fill a batch.
const MAX_BATCH: usize = 5000;
const LINGER: Duration = Duration::from_millis(10);

impl Ingest {
    /// Starts the writer task. `on_stored` sees every stored batch (for alerts).
    pub fn start<F>(db: Db, now: impl Fn() -> i64 + Send + 'static, on_stored: F) -> Ingest
    where
        F: Fn(&[NewEvent]) + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Job>(4096);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                let deadline = tokio::time::Instant::now() + LINGER;
                let mut count = jobs[0].events.len();
                while count < MAX_BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(j)) => {
                            count += j.events.len();
                            jobs.push(j);
                        }
                        _ => break,
                    }
                }
                let all: Vec<NewEvent> =
                    jobs.iter().flat_map(|j| j.events.iter().cloned()).collect();
                match db.insert_events(&all, now()).await {
                    Ok(acked) => {
                        on_stored(&all);
                        for j in jobs {
                            let store =
                                j.events.first().map(|e| e.store_id.clone()).unwrap_or_default();
                            let seq =
                                acked.iter().find(|(s, _)| *s == store).map_or(0, |(_, q)| *q);
                            let _ = j.done.send(Ok(seq));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %backroom_daemon::Chain(&e), "storing events failed; nodes will send them again");
                        for j in jobs {
                            let _ = j.done.send(Err(backroom_daemon::chain(&e)));
                        }
                    }
                }
            }
        });
        Ingest { tx }
    }

    /// Stores one store's events; returns the highest sequence now stored for that store (from
    /// this batch), to acknowledge.
    pub async fn submit(&self, events: Vec<NewEvent>) -> Result<u64, String> {
        if events.is_empty() {
            return Ok(0);
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job { events, done })
            .await
            .map_err(|_| "central is shutting down".to_string())?;
        wait.await.map_err(|_| "central is shutting down".to_string())?
    }
}
