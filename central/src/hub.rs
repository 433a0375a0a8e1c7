//! The sessions that are open right now: one per store, each with a channel to push messages
//! (desired revisions, commands, acks) down its stream. The truth about "online". A session
//! whose node has said nothing for too long (by central's clock) is told to close
//! ([`Hub::close_quiet`], from the background job), so offline detection runs on the clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backroom_api::node::CentralMessage;
use tokio::sync::mpsc;
use tonic::Status;

pub type Outgoing = mpsc::Sender<Result<CentralMessage, Status>>;

struct Session {
    id: u64,
    tx: Outgoing,
    last_seen_ms: i64,
    /// Notified when the session is to close for silence; its reader waits on it.
    quiet: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
pub struct Hub {
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a store's new session; an older session of the same store is dropped (its
    /// stream ends), since a store has one node. Returns its id, and what tells its reader
    /// that the session went quiet.
    pub fn register(
        &self,
        store: &str,
        tx: Outgoing,
        now_ms: i64,
    ) -> (u64, Arc<tokio::sync::Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let quiet = Arc::new(tokio::sync::Notify::new());
        let s = Session { id, tx, last_seen_ms: now_ms, quiet: Arc::clone(&quiet) };
        self.lock().insert(store.to_string(), s);
        (id, quiet)
    }

    /// Tells every session whose node said nothing for more than `timeout_ms` (three missed
    /// heartbeats) to close, and names their stores.
    pub fn close_quiet(&self, now_ms: i64, timeout_ms: i64) -> Vec<String> {
        let s = self.lock();
        let mut quiet = Vec::new();
        for (store, sess) in s.iter() {
            if now_ms - sess.last_seen_ms > timeout_ms {
                // A permit is kept if the reader is not waiting right now.
                sess.quiet.notify_one();
                quiet.push(store.clone());
            }
        }
        quiet.sort();
        quiet
    }

    /// Removes the session `id` of `store`, if it is still the current one.
    pub fn unregister(&self, store: &str, id: u64) -> bool {
        let mut s = self.lock();
        if s.get(store).is_some_and(|x| x.id == id) {
            s.remove(store);
            true
        } else {
            false
        }
    }

    pub fn seen(&self, store: &str, now_ms: i64) {
        if let Some(s) = self.lock().get_mut(store) {
            s.last_seen_ms = now_ms;
        }
    }

    pub fn is_online(&self, store: &str) -> bool {
        self.lock().contains_key(store)
    }

    pub fn online_count(&self) -> usize {
        self.lock().len()
    }

    /// Every open session's last-seen time, for the periodic write to the database.
    pub fn last_seen(&self) -> Vec<(String, i64)> {
        self.lock().iter().map(|(k, s)| (k.clone(), s.last_seen_ms)).collect()
    }

    /// Ends every session (central is stopping): their streams close and nodes reconnect later.
    pub fn close_all(&self) {
        self.lock().clear();
    }

    /// Pushes a message to a store's session; false if the store is not online (or its
    /// session is going away).
    pub fn send(&self, store: &str, msg: CentralMessage) -> bool {
        let tx = self.lock().get(store).map(|s| s.tx.clone());
        match tx {
            Some(tx) => tx.try_send(Ok(msg)).is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_is_quiet_only_after_the_timeout_since_it_was_last_seen() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(1);
        let (_, quiet) = hub.register("s1", tx, 1_000);
        hub.seen("s1", 5_000);
        // Exactly the timeout since it was last seen: still talking.
        assert!(hub.close_quiet(9_000, 4_000).is_empty());
        // One millisecond more and it is told to close; its reader wakes.
        assert_eq!(hub.close_quiet(9_001, 4_000), ["s1"]);
        tokio::time::timeout(std::time::Duration::from_secs(5), quiet.notified())
            .await
            .expect("the reader of a quiet session is woken");
    }
}
