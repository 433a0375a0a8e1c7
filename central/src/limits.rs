//! Bounds on what a node sends. Thousands of stores (and anyone who steals a store's key) write
//! into central's one database, so every count and every string a node sends has a limit here.
//!
//! Strings are cut, never refused: a node resends what central did not take, so refusing an
//! event for a long message would stall that store's events for ever, while a cut message
//! (ending in `…`) still tells the operator what happened. Cuts are on character boundaries.
//! Counts: a status keeps its first [`MAX_WORKLOADS`] workloads and [`MAX_PROBLEMS`] problems;
//! an event batch beyond [`MAX_EVENTS_PER_BATCH`] is stored up to that many (the lowest
//! sequence numbers), acknowledged that far, and the session is closed so the node sends the
//! rest on its next session (a real node sends 500 at a time and never gets here).

use backroom_api::node::{Event, Status};
use backroom_daemon::text::fit_bytes;

/// Events stored from one batch.
pub const MAX_EVENTS_PER_BATCH: usize = 1000;
/// Free text: an event's message, a workload's reason, a problem's message, an apply result,
/// a command's result.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Names: an event's kind, workload and subject; a workload's name, kind and state; a
/// problem's subject and source; an address.
pub const MAX_NAME_BYTES: usize = 256;
/// Revision ids and agent versions.
pub const MAX_ID_BYTES: usize = 128;
/// Workloads in one status.
pub const MAX_WORKLOADS: usize = 1000;
/// Problems in one status.
pub const MAX_PROBLEMS: usize = 200;
/// Addresses of one workload.
pub const MAX_ADDRESSES: usize = 16;

/// What was cut from one message, for one log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cuts(Vec<&'static str>);

impl Cuts {
    fn note(&mut self, what: &'static str) {
        if !self.0.contains(&what) {
            self.0.push(what);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields that were over their limit, e.g. "event message, workload name".
    pub fn fields(&self) -> String {
        self.0.join(", ")
    }
}

/// Cuts `s` to at most `max` bytes, ending in `…` when it was longer.
pub fn cut(s: &mut String, max: usize, what: &'static str, cuts: &mut Cuts) {
    if s.len() <= max {
        return;
    }
    const MARK: &str = "…";
    let keep = fit_bytes(s, max.saturating_sub(MARK.len())).len();
    s.truncate(keep);
    s.push_str(MARK);
    cuts.note(what);
}

/// Keeps the first `max` items of `v`.
fn cap<T>(v: &mut Vec<T>, max: usize, what: &'static str, cuts: &mut Cuts) {
    if v.len() > max {
        v.truncate(max);
        cuts.note(what);
    }
}

/// An event's strings, bounded.
pub fn bound_event(e: &mut Event, cuts: &mut Cuts) {
    cut(&mut e.kind, MAX_NAME_BYTES, "event kind", cuts);
    cut(&mut e.workload, MAX_NAME_BYTES, "event workload", cuts);
    cut(&mut e.subject, MAX_NAME_BYTES, "event subject", cuts);
    cut(&mut e.message, MAX_TEXT_BYTES, "event message", cuts);
}

/// A batch bounded: at most [`MAX_EVENTS_PER_BATCH`] events, the lowest sequence numbers first
/// (what the node needs acknowledged first), each bounded. Returns how many were left out.
pub fn bound_batch(events: &mut Vec<Event>, cuts: &mut Cuts) -> usize {
    let left_out = events.len().saturating_sub(MAX_EVENTS_PER_BATCH);
    if left_out > 0 {
        events.sort_by_key(|e| e.seq);
        events.truncate(MAX_EVENTS_PER_BATCH);
        cuts.note("events per batch");
    }
    for e in events.iter_mut() {
        bound_event(e, cuts);
    }
    left_out
}

/// A status report bounded.
pub fn bound_status(s: &mut Status, cuts: &mut Cuts) {
    cut(&mut s.applied_revision, MAX_ID_BYTES, "applied revision", cuts);
    cut(&mut s.desired_revision, MAX_ID_BYTES, "desired revision", cuts);
    cut(&mut s.agent_version, MAX_ID_BYTES, "agent version", cuts);
    if let Some(a) = s.last_apply.as_mut() {
        cut(&mut a.revision, MAX_ID_BYTES, "apply revision", cuts);
        cut(&mut a.rolled_back_to, MAX_ID_BYTES, "apply revision", cuts);
        cut(&mut a.message, MAX_TEXT_BYTES, "apply message", cuts);
    }
    cap(&mut s.workloads, MAX_WORKLOADS, "workloads per status", cuts);
    for w in &mut s.workloads {
        cut(&mut w.name, MAX_NAME_BYTES, "workload name", cuts);
        cut(&mut w.kind, MAX_NAME_BYTES, "workload kind", cuts);
        cut(&mut w.state, MAX_NAME_BYTES, "workload state", cuts);
        cut(&mut w.reason, MAX_TEXT_BYTES, "workload reason", cuts);
        cap(&mut w.addresses, MAX_ADDRESSES, "addresses per workload", cuts);
        for a in &mut w.addresses {
            cut(a, MAX_NAME_BYTES, "workload address", cuts);
        }
    }
    cap(&mut s.problems, MAX_PROBLEMS, "problems per status", cuts);
    for p in &mut s.problems {
        cut(&mut p.subject, MAX_NAME_BYTES, "problem subject", cuts);
        cut(&mut p.source, MAX_NAME_BYTES, "problem source", cuts);
        cut(&mut p.message, MAX_TEXT_BYTES, "problem message", cuts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backroom_api::common::Problem;
    use backroom_api::node::{ApplyResult, WorkloadStatus};
    use proptest::prelude::*;

    #[test]
    fn a_long_message_is_cut_on_a_character_with_a_mark() {
        let mut cuts = Cuts::default();
        let mut s = "é".repeat(3000); // 6000 bytes
        cut(&mut s, MAX_TEXT_BYTES, "event message", &mut cuts);
        assert!(s.len() <= MAX_TEXT_BYTES && s.ends_with('…'), "{}", s.len());
        assert_eq!(cuts.fields(), "event message");
        let mut short = "ok".to_string();
        cut(&mut short, 4, "x", &mut cuts);
        assert_eq!(short, "ok");
    }

    #[test]
    fn a_batch_keeps_its_lowest_sequence_numbers() {
        let mut events: Vec<Event> = (0..MAX_EVENTS_PER_BATCH as u64 + 10)
            .rev()
            .map(|seq| Event { seq: seq + 1, ..Default::default() })
            .collect();
        let mut cuts = Cuts::default();
        assert_eq!(bound_batch(&mut events, &mut cuts), 10);
        assert_eq!(events.len(), MAX_EVENTS_PER_BATCH);
        assert_eq!(events.last().map(|e| e.seq), Some(MAX_EVENTS_PER_BATCH as u64));
        assert_eq!(cuts.fields(), "events per batch");
    }

    #[test]
    fn a_status_is_bounded_in_counts_and_strings() {
        let big = "x".repeat(100_000);
        let w = WorkloadStatus {
            name: big.clone(),
            reason: big.clone(),
            addresses: vec![big.clone(); 100],
            ..Default::default()
        };
        let mut s = Status {
            agent_version: big.clone(),
            last_apply: Some(ApplyResult { message: big.clone(), ..Default::default() }),
            workloads: vec![w; MAX_WORKLOADS + 5],
            problems: vec![Problem { subject: big.clone(), ..Default::default() }; 1000],
            ..Default::default()
        };
        let mut cuts = Cuts::default();
        bound_status(&mut s, &mut cuts);
        assert_eq!(s.workloads.len(), MAX_WORKLOADS);
        assert_eq!(s.problems.len(), MAX_PROBLEMS);
        assert!(s.workloads.iter().all(|w| w.name.len() <= MAX_NAME_BYTES
            && w.reason.len() <= MAX_TEXT_BYTES
            && w.addresses.len() <= MAX_ADDRESSES));
        assert!(s.agent_version.len() <= MAX_ID_BYTES);
        assert!(cuts.fields().contains("workloads per status"), "{}", cuts.fields());
    }

    proptest! {
        #[test]
        fn bounded_strings_stay_prefixes_within_their_limit(text in ".{0,300}", max in 3usize..64) {
            let mut s = text.clone();
            let mut cuts = Cuts::default();
            cut(&mut s, max, "x", &mut cuts);
            prop_assert!(s.len() <= max);
            let kept = s.strip_suffix('…').unwrap_or(&s);
            prop_assert!(text.starts_with(kept));
            prop_assert_eq!(cuts.is_empty(), text.len() <= max);
        }
    }
}
