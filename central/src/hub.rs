//! The sessions that are open right now: one per store, each with a channel to push messages
//! (desired revisions, commands, acks) down its stream. The truth about "online".
//!
//! One live session per store, and the newest wins: registering a store's session tells the
//! older one to close (its reader stops, its stream ends with a status saying why). A
//! revocation closes a store's session the same way ([`Hub::close`]). A session whose node has
//! said nothing for too long (by central's clock) is told to close ([`Hub::close_quiet`], from
//! the background job), so offline detection runs on the clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backroom_api::node::CentralMessage;
use tokio::sync::{Notify, mpsc, watch};
use tonic::Status;

pub type Outgoing = mpsc::Sender<Result<CentralMessage, Status>>;

struct Session {
    id: u64,
    tx: Outgoing,
    /// The serial of the certificate the session was opened with.
    serial: String,
    last_seen_ms: i64,
    /// Notified when the session is to close for silence; its reader waits on it.
    quiet: Arc<Notify>,
    /// Set (with the reason) when the session is to end now.
    close: watch::Sender<Option<String>>,
    /// Notified when the store has commands queued: its delivery looks again.
    wake: Arc<Notify>,
}

/// What a registered session's tasks wait on.
pub struct SessionHandle {
    pub id: u64,
    pub quiet: Arc<Notify>,
    /// `Some(reason)` once the session is to end (a newer one of the store opened, it was
    /// revoked, central stops). The sender goes away when the session is unregistered.
    pub closed: watch::Receiver<Option<String>>,
    pub wake: Arc<Notify>,
}

#[derive(Default)]
pub struct Hub {
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
}

/// Why an older session of a store is closed when a new one opens.
pub const REPLACED: &str = "a newer session of this store opened; this one is closed";

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a store's new session, opened with the certificate `serial`. An older session
    /// of the same store is told to close: a store has one node, and the newest session is
    /// the one that counts (the old one is a replaced server, or a connection the node itself
    /// gave up on).
    pub fn register(&self, store: &str, tx: Outgoing, serial: &str, now_ms: i64) -> SessionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let quiet = Arc::new(Notify::new());
        let wake = Arc::new(Notify::new());
        let (close, closed) = watch::channel(None);
        let s = Session {
            id,
            tx,
            serial: serial.to_string(),
            last_seen_ms: now_ms,
            quiet: Arc::clone(&quiet),
            close,
            wake: Arc::clone(&wake),
        };
        if let Some(old) = self.lock().insert(store.to_string(), s) {
            old.close.send_replace(Some(REPLACED.to_string()));
        }
        SessionHandle { id, quiet, closed, wake }
    }

    /// Tells the store's session to end now, saying `reason`; false if it has none.
    pub fn close(&self, store: &str, reason: &str) -> bool {
        match self.lock().get(store) {
            Some(s) => {
                s.close.send_replace(Some(reason.to_string()));
                true
            }
            None => false,
        }
    }

    /// Closes every session whose certificate `still_good(store, serial)` rejects (revoked on
    /// another central replica, say); names their stores.
    pub fn close_unless(
        &self,
        still_good: impl Fn(&str, &str) -> bool,
        reason: &str,
    ) -> Vec<String> {
        let s = self.lock();
        let mut closed = Vec::new();
        for (store, sess) in s.iter() {
            if !still_good(store, &sess.serial) && sess.close.borrow().is_none() {
                sess.close.send_replace(Some(reason.to_string()));
                closed.push(store.clone());
            }
        }
        closed.sort();
        closed
    }

    /// Every open session: (store, the serial of its certificate).
    pub fn serials(&self) -> Vec<(String, String)> {
        self.lock().iter().map(|(k, s)| (k.clone(), s.serial.clone())).collect()
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
        let mut s = self.lock();
        for sess in s.values() {
            sess.close.send_replace(Some("central is stopping".into()));
        }
        s.clear();
    }

    /// Tells the store's session that it has commands queued; false if it has no session.
    pub fn wake(&self, store: &str) -> bool {
        match self.lock().get(store) {
            Some(s) => {
                // A permit is kept if the delivery is busy right now: it looks again after.
                s.wake.notify_one();
                true
            }
            None => false,
        }
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
        let h = hub.register("s1", tx, "aa", 1_000);
        hub.seen("s1", 5_000);
        // Exactly the timeout since it was last seen: still talking.
        assert!(hub.close_quiet(9_000, 4_000).is_empty());
        // One millisecond more and it is told to close; its reader wakes.
        assert_eq!(hub.close_quiet(9_001, 4_000), ["s1"]);
        tokio::time::timeout(std::time::Duration::from_secs(5), h.quiet.notified())
            .await
            .expect("the reader of a quiet session is woken");
    }

    #[test]
    fn the_newest_session_of_a_store_wins_and_a_revocation_closes_it() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(1);
        let old = hub.register("s1", tx.clone(), "aa", 0);
        let other = hub.register("s2", tx.clone(), "cc", 0);
        assert!(old.closed.borrow().is_none());
        let new = hub.register("s1", tx, "bb", 1);
        assert_eq!(old.closed.borrow().as_deref(), Some(REPLACED));
        assert!(new.closed.borrow().is_none() && other.closed.borrow().is_none());
        // The old one's reader ends: it does not take the new one away.
        assert!(!hub.unregister("s1", old.id));
        assert!(hub.is_online("s1"));
        assert!(hub.close("s1", "revoked"));
        assert_eq!(new.closed.borrow().as_deref(), Some("revoked"));
        assert!(other.closed.borrow().is_none(), "only that store's session");
        // Certificates revoked elsewhere: the sessions on them are closed too.
        assert_eq!(hub.close_unless(|_, serial| serial != "cc", "gone"), ["s2"]);
        assert_eq!(other.closed.borrow().as_deref(), Some("gone"));
    }
}
