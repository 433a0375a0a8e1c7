//! The node's durable event outbox.
//!
//! Every event gets the next sequence number and is appended (and fsynced) to `outbox.log`
//! before anyone is told about it; central acknowledges by sequence number, and only then are
//! events forgotten. Delivery is at least once; central de-duplicates by (store, sequence).
//!
//! After a power cut: a torn last line is cut off before anything is appended (so the next
//! event starts on a line of its own), lines that do not read (torn inside a character,
//! garbled) are skipped and counted, and sequence numbers are never used twice: the next one
//! is recovered from the log as well as from `outbox.state`, and when neither can be trusted
//! (the state file lost or garbled, lines unreadable) the numbering is *unsure* until central's
//! welcome says what it already has: events numbered at or below that are numbered again
//! above it ([`Outbox::resume`]), since central would take them for ones it has.
//!
//! The outbox is bounded by count and age. When it must drop (the WAN has been down for a long
//! time and the store is noisy), it drops the oldest unacknowledged events and records an
//! `events_dropped` event that says how many, so central knows what it is missing.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use backroom_daemon::SharedClock;
use backroom_daemon::fs::write_atomic;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutEvent {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    pub workload: String,
    pub message: String,
    /// For `failing` and `recovered`: what (e.g. "uplink eno1"). Absent in older outboxes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_events: usize,
    pub max_age_ms: i64,
}

impl Default for Limits {
    /// 100,000 events or 30 days, whichever comes first.
    fn default() -> Self {
        Limits { max_events: 100_000, max_age_ms: 30 * 24 * 3_600_000 }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("event outbox {path}: {what}")]
pub struct OutboxError {
    path: String,
    what: String,
    #[source]
    source: std::io::Error,
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    acked: u64,
    next_seq: u64,
    dropped_total: u64,
}

struct Inner {
    log: Option<File>,
    state: State,
    pending: VecDeque<OutEvent>,
    /// Lines in the log file that are already acknowledged (compaction removes them).
    stale_lines: usize,
    /// The numbering may repeat numbers central already has (the state was lost or garbled,
    /// or log lines did not read): settled by the next [`Outbox::resume`].
    unsure: bool,
}

pub struct Outbox {
    dir: Option<PathBuf>,
    limits: Limits,
    /// What "now" is when events are aged (the system clock; a manual one in tests).
    clock: SharedClock,
    inner: Mutex<Inner>,
    notify: tokio::sync::Notify,
}

const LOG: &str = "outbox.log";
const STATE: &str = "outbox.state";

impl Outbox {
    /// Opens (or creates) the outbox kept in `dir`, aging events on the system clock.
    pub fn open(dir: &Path, limits: Limits) -> Result<Outbox, OutboxError> {
        Self::open_with_clock(dir, limits, backroom_daemon::clock::system())
    }

    /// [`Outbox::open`], aging events on `clock`.
    pub fn open_with_clock(
        dir: &Path,
        limits: Limits,
        clock: SharedClock,
    ) -> Result<Outbox, OutboxError> {
        let err = |what: &str, source| OutboxError {
            path: dir.display().to_string(),
            what: what.to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| err("cannot create the folder", e))?;
        // A state file that is missing or does not read: the numbers it kept are unknown.
        let (state, state_ok): (State, bool) = match std::fs::read(dir.join(STATE)) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => (s, true),
                Err(_) => (State::default(), false),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (State::default(), false),
            Err(e) => return Err(err("cannot read the state file", e)),
        };
        let recovered = match std::fs::read(dir.join(LOG)) {
            Ok(bytes) => read_log(&bytes, state.acked),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Recovered::default(),
            Err(e) => return Err(err("cannot read the log", e)),
        };
        if recovered.torn_at.is_some() || recovered.unreadable > 0 {
            tracing::warn!(
                path = %dir.join(LOG).display(),
                unreadable = recovered.unreadable,
                torn = recovered.torn_at.is_some(),
                "the event outbox was cut off or garbled (a power cut?): unreadable lines are skipped"
            );
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG))
            .map_err(|e| err("cannot open the log", e))?;
        // A torn last line is no event (its push never returned): cut it off, so what comes
        // next starts on a line of its own instead of being glued to the torn one.
        if let Some(len) = recovered.torn_at {
            log.set_len(len).map_err(|e| err("cannot cut the torn end off the log", e))?;
            log.sync_all().map_err(|e| err("cannot flush the log", e))?;
        }
        let mut state = state;
        // Every number the log shows was handed out, acknowledged or not.
        state.next_seq = state.next_seq.max(recovered.max_seq + 1).max(state.acked + 1);
        let unsure = !state_ok || recovered.unreadable > 0;
        let ob = Outbox {
            dir: Some(dir.to_path_buf()),
            limits,
            clock,
            inner: Mutex::new(Inner {
                log: Some(log),
                state,
                pending: recovered.pending,
                // Unreadable lines go with the next compaction, like acknowledged ones.
                stale_lines: recovered.stale + recovered.unreadable,
                unsure,
            }),
            notify: tokio::sync::Notify::new(),
        };
        ob.compact()?;
        Ok(ob)
    }

    /// An outbox that keeps nothing on disk (the fleet simulator, tests).
    pub fn in_memory(limits: Limits) -> Outbox {
        Self::in_memory_with_clock(limits, backroom_daemon::clock::system())
    }

    /// [`Outbox::in_memory`], aging events on `clock`.
    pub fn in_memory_with_clock(limits: Limits, clock: SharedClock) -> Outbox {
        Outbox {
            dir: None,
            limits,
            clock,
            inner: Mutex::new(Inner {
                log: None,
                state: State { acked: 0, next_seq: 1, dropped_total: 0 },
                pending: VecDeque::new(),
                stale_lines: 0,
                unsure: false,
            }),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn err(&self, what: &str, source: std::io::Error) -> OutboxError {
        OutboxError {
            path: self
                .dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "(memory)".into()),
            what: what.to_string(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an event durably and returns its sequence number.
    pub fn push(
        &self,
        at_ms: i64,
        kind: &str,
        workload: &str,
        subject: &str,
        message: &str,
    ) -> Result<u64, OutboxError> {
        let seq = {
            let mut inner = self.lock();
            let seq = inner.state.next_seq;
            let ev = OutEvent {
                seq,
                at_ms,
                kind: kind.into(),
                workload: workload.into(),
                message: message.into(),
                subject: subject.into(),
            };
            self.append(&mut inner, std::slice::from_ref(&ev))?;
            inner.state.next_seq += 1;
            inner.pending.push_back(ev);
            seq
        };
        // Ages count from the outbox's clock, not from the stamp of whatever came in last.
        self.enforce_limits(self.clock.now_ms())?;
        self.notify.notify_waiters();
        Ok(seq)
    }

    fn append(&self, inner: &mut Inner, events: &[OutEvent]) -> Result<(), OutboxError> {
        let Some(log) = inner.log.as_mut() else { return Ok(()) };
        let mut buf = Vec::new();
        for ev in events {
            // Serializing plain strings and numbers cannot fail.
            buf.extend(serde_json::to_vec(ev).unwrap_or_default());
            buf.push(b'\n');
        }
        log.write_all(&buf).map_err(|e| self.err("cannot append to the log", e))?;
        log.sync_data().map_err(|e| self.err("cannot flush the log", e))
    }

    fn enforce_limits(&self, now_ms: i64) -> Result<(), OutboxError> {
        let dropped = {
            let mut inner = self.lock();
            let mut dropped = 0u64;
            let mut oldest = None;
            while inner.pending.len() > self.limits.max_events
                || inner.pending.front().is_some_and(|e| now_ms - e.at_ms > self.limits.max_age_ms)
            {
                if let Some(e) = inner.pending.pop_front() {
                    oldest.get_or_insert(e.at_ms);
                    inner.stale_lines += 1;
                    dropped += 1;
                }
            }
            inner.state.dropped_total += dropped;
            (dropped > 0).then_some((dropped, oldest.unwrap_or(now_ms), inner.state.dropped_total))
        };
        if let Some((n, oldest, total)) = dropped {
            tracing::warn!(dropped = n, "event outbox over its bounds: dropping the oldest events");
            self.compact()?;
            let msg = format!(
                "the node's event outbox was full: {n} events dropped (the oldest from {oldest} ms; {total} dropped in all)"
            );
            // The drop notice itself counts; if it pushes the outbox over again, that is
            // one more drop, still reported.
            let mut inner = self.lock();
            let seq = inner.state.next_seq;
            let ev = OutEvent {
                seq,
                at_ms: now_ms,
                kind: "events_dropped".into(),
                workload: String::new(),
                message: msg,
                subject: String::new(),
            };
            self.append(&mut inner, std::slice::from_ref(&ev))?;
            inner.state.next_seq += 1;
            inner.pending.push_back(ev);
        }
        Ok(())
    }

    /// Unacknowledged events with a sequence number above `after`, oldest first, at most `max`.
    pub fn unsent_after(&self, after: u64, max: usize) -> Vec<OutEvent> {
        self.lock().pending.iter().filter(|e| e.seq > after).take(max).cloned().collect()
    }

    /// Central has every event up to and including `upto`: forget them.
    pub fn ack(&self, upto: u64) -> Result<(), OutboxError> {
        let compact = {
            let mut inner = self.lock();
            if upto <= inner.state.acked {
                return Ok(());
            }
            // Never beyond what this node has numbered.
            inner.state.acked = upto.min(inner.state.next_seq.saturating_sub(1));
            let before = inner.pending.len();
            let acked = inner.state.acked;
            inner.pending.retain(|e| e.seq > acked);
            inner.stale_lines += before - inner.pending.len();
            self.save_state(&inner)?;
            inner.stale_lines > 1000 && inner.stale_lines > inner.pending.len()
        };
        if compact {
            self.compact()?;
        }
        Ok(())
    }

    /// A session starts and central says it has every event up to `central_acked`. Normally
    /// that is an acknowledgement. But when this outbox's numbering is unsure (its state was
    /// lost) or behind central's (central has numbers this outbox never handed out: a state
    /// folder restored from a backup, a replacement server), the events it holds at or below
    /// that number are not the ones central has: they are numbered again above it, in order,
    /// rather than being dropped as duplicates. Some may then reach central twice; none is
    /// lost.
    pub fn resume(&self, central_acked: u64) -> Result<(), OutboxError> {
        let renumbered = {
            let mut inner = self.lock();
            let behind = central_acked >= inner.state.next_seq;
            if !inner.unsure && !behind {
                drop(inner);
                return self.ack(central_acked);
            }
            let mut next = central_acked + 1;
            let mut moved = 0usize;
            if inner.pending.front().is_some_and(|e| e.seq <= central_acked) {
                for e in inner.pending.iter_mut() {
                    e.seq = next;
                    next += 1;
                    moved += 1;
                }
            } else if let Some(last) = inner.pending.back() {
                next = last.seq + 1;
            }
            inner.state.next_seq = inner.state.next_seq.max(next).max(central_acked + 1);
            // Central has everything up to its number, and what is pending is above it now.
            inner.state.acked = central_acked;
            inner.unsure = false;
            if moved > 0 {
                // The whole log is written again with the new numbers.
                inner.stale_lines += inner.pending.len().max(1);
            }
            moved
        };
        if renumbered > 0 {
            tracing::warn!(
                events = renumbered,
                from = central_acked + 1,
                "the event outbox's numbering was behind central's: its events are numbered again"
            );
        }
        self.compact()?;
        Ok(())
    }

    /// Whether the numbering waits for central to settle it (see [`Outbox::resume`]).
    pub fn unsure(&self) -> bool {
        self.lock().unsure
    }

    fn save_state(&self, inner: &Inner) -> Result<(), OutboxError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let bytes = serde_json::to_vec(&inner.state).unwrap_or_default();
        write_atomic(&dir.join(STATE), &bytes, 0o600)
            .map_err(|e| self.err("cannot save the state file", e))
    }

    /// Rewrites the log with only the pending events.
    fn compact(&self) -> Result<(), OutboxError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let mut inner = self.lock();
        self.save_state(&inner)?;
        if inner.stale_lines == 0 {
            return Ok(());
        }
        let mut buf = Vec::new();
        for ev in &inner.pending {
            buf.extend(serde_json::to_vec(ev).unwrap_or_default());
            buf.push(b'\n');
        }
        write_atomic(&dir.join(LOG), &buf, 0o600)
            .map_err(|e| self.err("cannot compact the log", e))?;
        inner.log = Some(
            OpenOptions::new()
                .append(true)
                .open(dir.join(LOG))
                .map_err(|e| self.err("cannot reopen the log", e))?,
        );
        inner.stale_lines = 0;
        Ok(())
    }

    pub fn next_seq(&self) -> u64 {
        self.lock().state.next_seq
    }

    pub fn acked(&self) -> u64 {
        self.lock().state.acked
    }

    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn dropped_total(&self) -> u64 {
        self.lock().state.dropped_total
    }

    /// Resolves when an event is pushed (register before checking, to miss nothing).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// What the log file says after a restart.
#[derive(Default)]
struct Recovered {
    pending: VecDeque<OutEvent>,
    /// Lines already acknowledged.
    stale: usize,
    /// Lines that do not read (garbled, or torn inside a character).
    unreadable: usize,
    /// The highest sequence number on any line that reads.
    max_seq: u64,
    /// Where a torn last line (no newline at its end) starts: the log is cut there.
    torn_at: Option<u64>,
}

/// Reads the log as bytes, line by line: a line is an event only if it is whole and reads as
/// one, so a tear anywhere (even inside a multi-byte character) costs that line only.
fn read_log(bytes: &[u8], acked: u64) -> Recovered {
    let mut r = Recovered::default();
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if whole < bytes.len() {
        r.torn_at = Some(whole as u64);
    }
    for line in bytes[..whole].split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let Ok(ev) = serde_json::from_slice::<OutEvent>(line) else {
            r.unreadable += 1;
            continue;
        };
        r.max_seq = r.max_seq.max(ev.seq);
        // Out of order would mean a garbled number: keep the log's order strictly rising.
        if ev.seq > acked && r.pending.back().is_none_or(|p| p.seq < ev.seq) {
            r.pending.push_back(ev);
        } else {
            r.stale += 1;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests stamp events from 0 ms on: a manual clock there ages them as it goes.
    fn at_zero() -> SharedClock {
        std::sync::Arc::new(backroom_daemon::ManualClock::new(0))
    }

    #[test]
    fn events_survive_a_restart_until_acknowledged() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        for i in 0..5 {
            assert_eq!(ob.push(i, "k", "w", "", "m").unwrap(), (i + 1) as u64);
        }
        ob.ack(2).unwrap();
        drop(ob);
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(ob.unsent_after(0, 100).iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(ob.next_seq(), 6);
        ob.ack(5).unwrap();
        drop(ob);
        // Everything acknowledged: numbering still goes on from where it was.
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(ob.pending(), 0);
        assert_eq!(ob.push(9, "k", "", "", "").unwrap(), 6);
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        ob.push(1, "k", "w", "", "m").unwrap();
        drop(ob);
        let mut f = OpenOptions::new().append(true).open(d.path().join(LOG)).unwrap();
        f.write_all(b"{\"seq\":2,\"at_m").unwrap();
        drop(f);
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(ob.pending(), 1);
        assert_eq!(ob.push(2, "k", "w", "", "m").unwrap(), 2);
    }

    #[test]
    fn over_its_bound_it_drops_the_oldest_and_says_how_many() {
        let ob =
            Outbox::in_memory_with_clock(Limits { max_events: 3, max_age_ms: i64::MAX }, at_zero());
        for i in 0..5 {
            ob.push(i, "k", "", "", "").unwrap();
        }
        let evs = ob.unsent_after(0, 100);
        assert!(evs.len() <= 4, "{evs:?}");
        let notice = evs.iter().find(|e| e.kind == "events_dropped").expect("a drop notice");
        assert!(notice.message.contains("dropped"), "{}", notice.message);
        assert!(ob.dropped_total() >= 2);
        // Sequence numbers keep rising.
        assert!(evs.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[test]
    fn old_events_are_dropped_by_age_on_the_outbox_clock() {
        let clock = backroom_daemon::ManualClock::new(0);
        let limits = Limits { max_events: 100, max_age_ms: 1000 };
        let ob = Outbox::in_memory_with_clock(limits, std::sync::Arc::new(clock.clone()));
        ob.push(0, "old", "", "", "").unwrap();
        // Exactly as old as allowed when the next event comes: kept…
        clock.advance(std::time::Duration::from_millis(1000));
        ob.push(1000, "middle", "", "", "").unwrap();
        assert_eq!(ob.pending(), 2);
        // …one millisecond more on the clock, and the next push drops it.
        clock.advance(std::time::Duration::from_millis(1));
        ob.push(1001, "new", "", "", "").unwrap();
        let kinds: Vec<String> = ob.unsent_after(0, 100).into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["middle", "new", "events_dropped"]);
    }

    #[test]
    fn compaction_keeps_what_is_pending() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        for i in 0..1200 {
            ob.push(i, "k", "", "", "").unwrap();
        }
        ob.ack(1100).unwrap();
        let lines = std::fs::read_to_string(d.path().join(LOG)).unwrap().lines().count();
        assert_eq!(lines, 100);
        drop(ob);
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(ob.unsent_after(0, 1)[0].seq, 1101);
    }
}
