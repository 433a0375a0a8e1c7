//! The sessions that are open right now: one per store, each with a channel to push messages
//! (desired revisions, commands, acks) down its stream. The truth about "online".

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use backroom_api::node::CentralMessage;
use tokio::sync::mpsc;
use tonic::Status;

pub type Outgoing = mpsc::Sender<Result<CentralMessage, Status>>;

struct Session {
    id: u64,
    tx: Outgoing,
    last_seen_ms: i64,
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
    /// stream ends), since a store has one node.
    pub fn register(&self, store: &str, tx: Outgoing, now_ms: i64) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(store.to_string(), Session { id, tx, last_seen_ms: now_ms });
        id
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
