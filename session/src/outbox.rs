//! The node's durable event outbox.
//!
//! Every event gets the next sequence number and is appended (and fsynced) to `outbox.log`
//! before anyone is told about it; central acknowledges by sequence number, and only then are
//! events forgotten. Delivery is at least once; central de-duplicates by (store, sequence).
//!
//! After a power cut: a torn last line is cut off before anything is appended (so the next
//! event starts on a line of its own), lines that do not read (torn inside a character,
//! garbled) are skipped and counted, and sequence numbers are never used twice, even before
//! central is reached. Numbers are handed out from a block *reserved* in `outbox.state` (saved
//! before the first number of the block is used, [`RESERVED_BLOCK`] at a time), and every
//! rewrite of the log starts with a mark line (`{"next_seq":N}`) that says where numbering
//! stands; after a restart numbering goes on above the highest of the reservation, the mark
//! and every number on a line that reads. So damage to either file alone (the log truncated
//! anywhere or garbled, the state file lost or garbled) never makes a number come back; a
//! restart leaves a gap of at most one block, which central does not mind (it keeps the
//! highest number it has). When both are damaged at once the numbering is *unsure* until
//! central's welcome says what it already has: events numbered at or below that are numbered
//! again above it ([`Outbox::resume`]), since central would take them for ones it has. That
//! may send central an event twice (under two numbers) after such damage; it never loses one.
//!
//! A damaged file is set aside (`<name>.unreadable-<unix seconds>`, for support, with the
//! daemon crate's helper) and a `state_file_unreadable` event says so.
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
use sha2::Digest as _;

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

/// How many sequence numbers one save of `outbox.state` reserves.
pub const RESERVED_BLOCK: u64 = 64;

#[derive(Serialize, Deserialize, Default)]
struct State {
    acked: u64,
    next_seq: u64,
    dropped_total: u64,
    /// Every number up to this one may have been handed out.
    reserved: u64,
}

/// `outbox.state` as written: the state and a checksum of it, so a file garbled into other
/// numbers is known for what it is rather than believed. Unknown fields are refused for the
/// same reason. (A file of before, without the checksum, is read as it is.)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    acked: u64,
    next_seq: u64,
    dropped_total: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    reserved: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    check: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The first line of a rewritten log: numbers below `next_seq` may have been handed out.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mark {
    next_seq: u64,
}

impl State {
    fn check(&self) -> String {
        let mut text = format!("{}:{}:{}", self.acked, self.next_seq, self.dropped_total);
        if self.reserved != 0 {
            text.push_str(&format!(":{}", self.reserved));
        }
        hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
    }

    fn encode(&self) -> Vec<u8> {
        let f = StateFile {
            acked: self.acked,
            next_seq: self.next_seq,
            dropped_total: self.dropped_total,
            reserved: self.reserved,
            check: self.check(),
        };
        // Plain numbers and a string: serializing cannot fail.
        serde_json::to_vec(&f).unwrap_or_default()
    }

    /// The state in `bytes`, if they read and their checksum (when there is one) agrees.
    fn decode(bytes: &[u8]) -> Option<State> {
        let f: StateFile = serde_json::from_slice(bytes).ok()?;
        let s = State {
            acked: f.acked,
            next_seq: f.next_seq,
            dropped_total: f.dropped_total,
            reserved: f.reserved,
        };
        (f.check.is_empty() || f.check == s.check()).then_some(s)
    }
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
    /// The files found damaged at open and set aside.
    set_aside: Vec<backroom_daemon::fs::SetAside>,
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
        let now_unix = clock.now_unix();
        let mut set_aside = Vec::new();
        // A state file that is missing or does not read: the numbers it kept are unknown.
        let state_path = dir.join(STATE);
        let (state, state_ok): (State, bool) = match std::fs::read(&state_path) {
            Ok(bytes) => match State::decode(&bytes) {
                Some(s) => (s, true),
                None => {
                    let why = if serde_json::from_slice::<StateFile>(&bytes).is_ok() {
                        "its checksum does not match what it says"
                    } else {
                        "it does not read as the outbox's state"
                    };
                    let s = backroom_daemon::fs::set_aside(&state_path, now_unix, why.into());
                    tracing::warn!(path = %state_path.display(), "{}", s.sentence());
                    set_aside.push(s);
                    (State::default(), false)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (State::default(), false),
            Err(e) => return Err(err("cannot read the state file", e)),
        };
        let log_path = dir.join(LOG);
        let recovered = match std::fs::read(&log_path) {
            Ok(bytes) => read_log(&bytes, state.acked),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Recovered::default(),
            Err(e) => return Err(err("cannot read the log", e)),
        };
        let damaged_log = recovered.torn_at.is_some() || recovered.unreadable > 0;
        if damaged_log {
            tracing::warn!(
                path = %log_path.display(),
                unreadable = recovered.unreadable,
                torn = recovered.torn_at.is_some(),
                "the event outbox was cut off or garbled (a power cut?): unreadable lines are skipped"
            );
            // Kept as it was, for support; what reads is written again below (compaction).
            let why = match (recovered.unreadable, recovered.torn_at.is_some()) {
                (0, _) => "its last line was cut off".to_string(),
                (n, false) => format!("{n} lines do not read"),
                (n, true) => format!("{n} lines do not read and its last line was cut off"),
            };
            let s = backroom_daemon::fs::set_aside(&log_path, now_unix, why);
            tracing::warn!(path = %log_path.display(), "{}", s.sentence());
            set_aside.push(s);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| err("cannot open the log", e))?;
        // A torn last line is no event (its push never returned). A damaged log was set aside
        // (or, if it could not be, is replaced): the compaction below writes what reads into
        // a new one, so what comes next starts on a line of its own, not glued to a torn one.
        let mut state = state;
        // Every number the log shows was handed out, acknowledged or not; every number the
        // state reserved or the log's mark covers may have been.
        state.next_seq = state
            .next_seq
            .max(recovered.max_seq + 1)
            .max(recovered.mark)
            .max(state.acked + 1)
            .max(state.reserved + 1);
        // Numbers central holds may be unknown here only when both records of the numbering
        // are damaged: the state file (lost or garbled) and the log (no mark: a log of
        // before; or torn or garbled, so what followed its mark is lost). Then central's
        // welcome settles it. (A log cut cleanly at a line's end looks whole and cannot be
        // told; fsynced lines do not vanish, so that takes a bad disk, not a power cut.)
        let unsure = !state_ok && (recovered.mark == 0 || damaged_log);
        let ob = Outbox {
            dir: Some(dir.to_path_buf()),
            limits,
            clock,
            inner: Mutex::new(Inner {
                log: Some(log),
                state,
                pending: recovered.pending,
                // Unreadable lines go with the next compaction, like acknowledged ones; a log
                // with no mark (new, or of before) is written again to get one.
                stale_lines: recovered.stale
                    + recovered.unreadable
                    + usize::from(recovered.mark == 0 || damaged_log),
                unsure,
            }),
            notify: tokio::sync::Notify::new(),
            set_aside,
        };
        ob.compact()?;
        let notices: Vec<String> = ob.set_aside.iter().map(|s| s.sentence()).collect();
        for n in notices {
            ob.push(ob.clock.now_ms(), "state_file_unreadable", "", "", &n)?;
        }
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
                state: State { acked: 0, next_seq: 1, dropped_total: 0, reserved: 0 },
                pending: VecDeque::new(),
                stale_lines: 0,
                unsure: false,
            }),
            notify: tokio::sync::Notify::new(),
            set_aside: Vec::new(),
        }
    }

    /// The files found damaged when this outbox was opened, and where they were set aside.
    pub fn set_aside(&self) -> &[backroom_daemon::fs::SetAside] {
        &self.set_aside
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
            let seq = self.take_seq(&mut inner)?;
            let ev = OutEvent {
                seq,
                at_ms,
                kind: kind.into(),
                workload: workload.into(),
                message: message.into(),
                subject: subject.into(),
            };
            self.append(&mut inner, std::slice::from_ref(&ev))?;
            inner.pending.push_back(ev);
            seq
        };
        // Ages count from the outbox's clock, not from the stamp of whatever came in last.
        self.enforce_limits(self.clock.now_ms())?;
        self.notify.notify_waiters();
        Ok(seq)
    }

    /// The next sequence number, reserved on disk first when it is past the reservation: no
    /// number is handed out that a restart could hand out again.
    fn take_seq(&self, inner: &mut Inner) -> Result<u64, OutboxError> {
        let seq = inner.state.next_seq;
        if seq > inner.state.reserved {
            inner.state.reserved = seq + RESERVED_BLOCK - 1;
            if let Err(e) = self.save_state(inner) {
                inner.state.reserved = seq - 1;
                return Err(e);
            }
        }
        inner.state.next_seq += 1;
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
            let seq = self.take_seq(&mut inner)?;
            let ev = OutEvent {
                seq,
                at_ms: now_ms,
                kind: "events_dropped".into(),
                workload: String::new(),
                message: msg,
                subject: String::new(),
            };
            self.append(&mut inner, std::slice::from_ref(&ev))?;
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
        write_atomic(&dir.join(STATE), &inner.state.encode(), 0o600)
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
        // The mark first: the numbering survives this rewrite even if the state file does not.
        let mark = Mark { next_seq: inner.state.next_seq.max(inner.state.reserved + 1) };
        let mut buf = serde_json::to_vec(&mark).unwrap_or_default();
        buf.push(b'\n');
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
    /// The highest mark line's number (0: none).
    mark: u64,
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
            match serde_json::from_slice::<Mark>(line) {
                Ok(m) => r.mark = r.mark.max(m.next_seq),
                Err(_) => r.unreadable += 1,
            }
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
        // Above the block reserved before the restart: numbers 6..=64 may have been handed out.
        assert_eq!(ob.next_seq(), RESERVED_BLOCK + 1);
        assert!(ob.set_aside().is_empty());
        ob.ack(5).unwrap();
        drop(ob);
        // Everything acknowledged: numbering still goes on from where it was.
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(ob.pending(), 0);
        assert_eq!(ob.push(9, "k", "", "", "").unwrap(), RESERVED_BLOCK + 1);
    }

    fn messages(ob: &Outbox) -> Vec<String> {
        ob.unsent_after(0, 100)
            .into_iter()
            .filter(|e| e.kind != "state_file_unreadable")
            .map(|e| e.message)
            .collect()
    }

    fn notices(ob: &Outbox) -> Vec<String> {
        ob.unsent_after(0, 100)
            .into_iter()
            .filter(|e| e.kind == "state_file_unreadable")
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn numbers_never_come_back_when_the_log_loses_its_end_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        for i in 0..5 {
            ob.push(i, "k", "w", "", "m").unwrap();
        }
        drop(ob);
        // The last two lines gone, cut at a line's end: the log looks whole.
        let text = std::fs::read_to_string(d.path().join(LOG)).unwrap();
        let keep: Vec<&str> = text.lines().take(text.lines().count() - 2).collect();
        std::fs::write(d.path().join(LOG), keep.join("\n") + "\n").unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(ob.pending(), 3);
        // Before the reservation this was 4: a number central may have had.
        assert!(ob.push(9, "k", "w", "", "after").unwrap() > 5);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_the_next_event_survives_the_next_restart() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        ob.push(1, "k", "w", "", "m").unwrap();
        drop(ob);
        let mut f = OpenOptions::new().append(true).open(d.path().join(LOG)).unwrap();
        f.write_all(b"{\"seq\":2,\"at_m").unwrap();
        drop(f);
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(messages(&ob), ["m"]);
        let told = notices(&ob);
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].contains("outbox.log could not be read (its last line was cut off)"));
        let kept = ob.set_aside()[0].kept_as.clone().unwrap();
        assert!(std::fs::read(kept).unwrap().ends_with(b"{\"seq\":2,\"at_m"), "kept as it was");
        assert!(ob.push(2, "k", "w", "", "after the cut").unwrap() > 2);
        drop(ob);
        // Before the fix it was glued to the torn line, and lost here.
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(messages(&ob), ["m", "after the cut"]);
        assert!(ob.set_aside().is_empty(), "the log written again reads whole");
    }

    #[test]
    fn a_tear_inside_a_character_does_not_keep_the_outbox_shut() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        ob.push(1, "k", "w", "", "first").unwrap();
        drop(ob);
        let line = serde_json::to_vec(&OutEvent {
            seq: 2,
            at_ms: 2,
            kind: "k".into(),
            workload: "w".into(),
            message: "caf\u{e9} \u{20ac}".into(),
            subject: String::new(),
        })
        .unwrap();
        // Cut inside the two-byte é: invalid UTF-8 on the last line.
        let at = line.iter().position(|&b| b == 0xc3).unwrap() + 1;
        let mut f = OpenOptions::new().append(true).open(d.path().join(LOG)).unwrap();
        f.write_all(&line[..at]).unwrap();
        drop(f);
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(messages(&ob), ["first"]);
        ob.push(3, "k", "w", "", "next").unwrap();
        drop(ob);
        // The same inside a line of the middle (a garbled disk): that line only is skipped.
        let mut bytes = std::fs::read(d.path().join(LOG)).unwrap();
        let i = bytes.iter().position(|&b| b == b'f').unwrap();
        bytes[i] = 0xff;
        std::fs::write(d.path().join(LOG), &bytes).unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        let msgs: Vec<String> = messages(&ob);
        assert_eq!(msgs, ["next"]);
        assert!(
            notices(&ob).iter().any(|n| n.contains("1 lines do not read")),
            "{:?}",
            notices(&ob)
        );
        // The state file still knows every number handed out: nothing to settle.
        assert!(!ob.unsure());
        assert!(ob.next_seq() > RESERVED_BLOCK);
    }

    #[test]
    fn a_lost_state_file_numbers_on_from_the_logs_mark() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        for i in 0..5 {
            ob.push(i, "k", "", "", "before").unwrap();
        }
        ob.ack(5).unwrap();
        drop(ob);
        // Reopened: the acknowledged lines are compacted away. Then the state file goes.
        drop(Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap());
        std::fs::remove_file(d.path().join(STATE)).unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert!(!ob.unsure(), "the log's mark says where numbering stands");
        // Before the mark it started again from 1 here, until central said otherwise.
        assert!(ob.push(10, "k", "", "", "after").unwrap() > 5);
        ob.resume(5).unwrap();
        assert_eq!(ob.pending(), 1);
    }

    #[test]
    fn a_lost_state_file_and_a_log_of_before_number_again_above_what_central_has() {
        let d = tempfile::tempdir().unwrap();
        // A log of before (no mark) whose events were all acknowledged, and no state file.
        std::fs::write(d.path().join(LOG), b"").unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert!(ob.unsure());
        // Nothing tells it what it numbered: it starts again from 1, for now.
        assert_eq!(ob.push(10, "k", "", "", "after 1").unwrap(), 1);
        assert_eq!(ob.push(11, "k", "", "", "after 2").unwrap(), 2);
        // Central has up to 5: what the outbox holds is numbered above, not dropped.
        ob.resume(5).unwrap();
        let seqs: Vec<u64> = ob.unsent_after(5, 10).into_iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [6, 7]);
        assert_eq!(ob.push(12, "k", "", "", "after 3").unwrap(), 8);
        assert!(!ob.unsure());
        drop(ob);
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        let evs = ob.unsent_after(0, 10);
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 7, 8]);
        assert!(!ob.unsure(), "settled, and kept so");
        assert!(ob.push(13, "k", "", "", "").unwrap() > 8);
    }

    #[test]
    fn a_welcome_acknowledges_and_a_central_ahead_renumbers() {
        let ob = Outbox::in_memory_with_clock(Limits::default(), at_zero());
        for i in 0..3 {
            ob.push(i, "k", "", "", "").unwrap();
        }
        // The usual: central has some of them (acks lost).
        ob.resume(2).unwrap();
        assert_eq!(ob.unsent_after(0, 10).iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        // Central has numbers this outbox never handed out (a restored state folder, a
        // replacement server): what it holds goes above them.
        ob.resume(40).unwrap();
        assert_eq!(ob.unsent_after(0, 10).iter().map(|e| e.seq).collect::<Vec<_>>(), [41]);
        assert_eq!(ob.push(9, "k", "", "", "").unwrap(), 42);
    }

    #[test]
    fn a_garbled_state_file_is_not_believed() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        ob.push(1, "k", "", "", "").unwrap();
        ob.ack(1).unwrap();
        drop(ob);
        let text = std::fs::read_to_string(d.path().join(STATE)).unwrap();
        // Another number where the acknowledgement was: still JSON, but not what was written.
        std::fs::write(d.path().join(STATE), text.replace("\"acked\":1", "\"acked\":7")).unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(ob.acked(), 0);
        assert!(!ob.unsure(), "the log's mark still knows the numbering");
        assert!(ob.next_seq() > 1);
        assert!(notices(&ob)[0].contains("outbox.state could not be read (its checksum"));
        assert_eq!(backroom_daemon::fs::set_aside_copies(d.path(), STATE).len(), 1);
        drop(ob);
        // A state file of before (no checksum) is read as it is.
        std::fs::write(d.path().join(STATE), br#"{"acked":1,"next_seq":2,"dropped_total":0}"#)
            .unwrap();
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert!(!ob.unsure());
        assert_eq!(ob.acked(), 1);
        assert!(ob.set_aside().is_empty());
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
        assert_eq!(lines, 100 + 1, "the pending events and the mark");
        drop(ob);
        let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
        assert_eq!(ob.unsent_after(0, 1)[0].seq, 1101);
    }

    mod damage {
        //! Property: whatever a power cut or a bad disk does to the log and the state file
        //! (torn, truncated or garbled anywhere), the outbox opens, takes new events, never
        //! gives central a number it already holds, and loses nothing pushed after the damage.

        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum LogDamage {
            None,
            /// A push in progress when the power went: a prefix of one more line.
            TornPush(usize),
            /// Cut at this share (per mille) of the file.
            Truncate(u16),
            /// Bytes replaced: (share of the file per mille, new byte).
            Garble(Vec<(u16, u8)>),
        }

        #[derive(Debug, Clone)]
        enum StateDamage {
            None,
            Delete,
            Truncate(u16),
            Garble(Vec<(u16, u8)>),
        }

        fn log_damage() -> impl Strategy<Value = LogDamage> {
            prop_oneof![
                Just(LogDamage::None),
                (0usize..200).prop_map(LogDamage::TornPush),
                (0u16..1000).prop_map(LogDamage::Truncate),
                prop::collection::vec((0u16..1000, any::<u8>()), 1..4).prop_map(LogDamage::Garble),
            ]
        }

        fn state_damage() -> impl Strategy<Value = StateDamage> {
            prop_oneof![
                Just(StateDamage::None),
                Just(StateDamage::Delete),
                (0u16..1000).prop_map(StateDamage::Truncate),
                prop::collection::vec((0u16..1000, any::<u8>()), 1..3)
                    .prop_map(StateDamage::Garble),
            ]
        }

        fn at(len: usize, per_mille: u16) -> usize {
            len * usize::from(per_mille) / 1000
        }

        fn garble(bytes: &mut [u8], edits: &[(u16, u8)]) {
            for (p, b) in edits {
                if !bytes.is_empty() {
                    let i = at(bytes.len(), *p).min(bytes.len() - 1);
                    bytes[i] = *b;
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn damage_never_reuses_a_number_nor_loses_what_comes_after(
                n in 1usize..30,
                acked_share in 0.0f64..=1.0,
                reopen in any::<bool>(),
                texts in prop::collection::vec("[a-z\u{e9}\u{20ac}\u{1f600} ]{0,10}", 30),
                log in log_damage(),
                state in state_damage(),
                central_share in 0.0f64..=1.0,
                m in 1usize..6,
                later in 0usize..4,
            ) {
                let d = tempfile::tempdir().unwrap();
                let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
                let mut handed_out = 0;
                for (i, t) in texts.iter().take(n).enumerate() {
                    handed_out = ob.push(i as i64, "k", "w", "", &format!("before {i} {t}")).unwrap();
                }
                let k = ((n as f64) * acked_share) as u64;
                ob.ack(k).unwrap();
                // Pushed after the last save of the state file: only the log shows them.
                for i in 0..later {
                    handed_out = ob.push(50 + i as i64, "k", "w", "", &format!("later {i}")).unwrap();
                }
                let n = n + later;
                drop(ob);
                if reopen {
                    drop(Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap());
                }
                // The damage.
                let log_path = d.path().join(LOG);
                let mut bytes = std::fs::read(&log_path).unwrap();
                match &log {
                    LogDamage::None => {}
                    LogDamage::TornPush(len) => {
                        let line = serde_json::to_vec(&OutEvent {
                            seq: n as u64 + 1,
                            at_ms: 0,
                            kind: "k".into(),
                            workload: "w".into(),
                            message: "torn \u{20ac}\u{1f600}".into(),
                            subject: String::new(),
                        })
                        .unwrap();
                        bytes.extend_from_slice(&line[..(*len).min(line.len())]);
                    }
                    LogDamage::Truncate(p) => bytes.truncate(at(bytes.len(), *p)),
                    LogDamage::Garble(edits) => garble(&mut bytes, edits),
                }
                std::fs::write(&log_path, &bytes).unwrap();
                let state_path = d.path().join(STATE);
                match &state {
                    StateDamage::None => {}
                    StateDamage::Delete => { let _ = std::fs::remove_file(&state_path); }
                    StateDamage::Truncate(p) => {
                        let mut s = std::fs::read(&state_path).unwrap_or_default();
                        s.truncate(at(s.len(), *p));
                        std::fs::write(&state_path, &s).unwrap();
                    }
                    StateDamage::Garble(edits) => {
                        let mut s = std::fs::read(&state_path).unwrap_or_default();
                        garble(&mut s, edits);
                        std::fs::write(&state_path, &s).unwrap();
                    }
                }

                // It opens, whatever happened.
                let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
                // What central may hold: at least what was acknowledged; when the damage shows,
                // anything the node ever numbered; when nothing looks damaged, what the node
                // can still see it numbered (a line vanishing cleanly cannot be told).
                let hi = if ob.unsure() { n as u64 } else { (ob.next_seq() - 1).min(n as u64) };
                let central = k + ((hi.saturating_sub(k)) as f64 * central_share) as u64;
                // One file damaged (or none): numbers never come back, even before central
                // says what it has.
                let one_file = matches!(log, LogDamage::None) || matches!(state, StateDamage::None);
                for i in 0..m {
                    let seq = ob.push(100 + i as i64, "k", "w", "", &format!("after {i}")).unwrap();
                    if one_file {
                        prop_assert!(seq > handed_out, "{} handed out again (had {})", seq, handed_out);
                        prop_assert!(!ob.unsure());
                    }
                }
                ob.resume(central).unwrap();
                let check = |ob: &Outbox| -> Result<(), TestCaseError> {
                    let evs = ob.unsent_after(0, 1000);
                    prop_assert!(evs.windows(2).all(|w| w[0].seq < w[1].seq), "{:?}", evs);
                    prop_assert!(evs.iter().all(|e| e.seq > central), "central has {}: {:?}", central, evs);
                    for i in 0..m {
                        let want = format!("after {i}");
                        prop_assert_eq!(evs.iter().filter(|e| e.message == want).count(), 1, "{}", want);
                    }
                    Ok(())
                };
                check(&ob)?;
                let next = ob.next_seq();
                prop_assert!(next > central);
                drop(ob);
                // And after one more restart: the same, nothing lost, nothing numbered again.
                let ob = Outbox::open_with_clock(d.path(), Limits::default(), at_zero()).unwrap();
                check(&ob)?;
                prop_assert!(!ob.unsure());
                prop_assert!(ob.next_seq() >= next);
                let seq = ob.push(200, "k", "w", "", "later").unwrap();
                prop_assert!(seq > central);
            }
        }
    }
}
