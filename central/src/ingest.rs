//! Event ingestion: events from every session go through one writer that stores them in
//! batches (one transaction per batch), then tells each session what to acknowledge. Batching
//! is what lets SQLite take tens of thousands of events per second with a full fsync per commit;
//! the bound on a batch keeps each transaction short, so reads and the next batch are never
//! held up for long.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::db::{Db, NewEvent};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("central is shutting down")]
    Stopping,
    #[error("{0} events in one submission: central stores at most {MAX_BATCH} at a time")]
    TooMany(usize),
    #[error("storing events failed: {0}")]
    Failed(String),
}

struct Job {
    events: Vec<NewEvent>,
    done: oneshot::Sender<Result<u64, IngestError>>,
}

#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
}

/// Most events in one transaction, and how long the writer waits to fill a batch.
pub const MAX_BATCH: usize = 5000;
const LINGER: Duration = Duration::from_millis(10);

impl Ingest {
    /// Starts the writer task. `on_stored` sees every stored batch (for alerts).
    pub fn start<F>(db: Db, now: impl Fn() -> i64 + Send + 'static, on_stored: F) -> Ingest
    where
        F: Fn(&[NewEvent]) + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Job>(4096);
        tokio::spawn(async move {
            // A job that would have made the batch too large starts the next one.
            let mut carried: Option<Job> = None;
            loop {
                let first = match carried.take() {
                    Some(j) => j,
                    None => match rx.recv().await {
                        Some(j) => j,
                        None => return,
                    },
                };
                let mut count = first.events.len();
                let mut jobs = vec![first];
                let deadline = tokio::time::Instant::now() + LINGER;
                while count < MAX_BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(j)) if count + j.events.len() > MAX_BATCH => {
                            carried = Some(j);
                            break;
                        }
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
                        let why = backroom_daemon::chain(&e);
                        for j in jobs {
                            let _ = j.done.send(Err(IngestError::Failed(why.clone())));
                        }
                    }
                }
            }
        });
        Ingest { tx }
    }

    /// Stores one store's events (at most [`MAX_BATCH`]); returns the highest sequence now
    /// stored for that store (from this batch), to acknowledge.
    pub async fn submit(&self, events: Vec<NewEvent>) -> Result<u64, IngestError> {
        if events.is_empty() {
            return Ok(0);
        }
        if events.len() > MAX_BATCH {
            return Err(IngestError::TooMany(events.len()));
        }
        let (done, wait) = oneshot::channel();
        self.tx.send(Job { events, done }).await.map_err(|_| IngestError::Stopping)?;
        wait.await.map_err(|_| IngestError::Stopping)?
    }
}
