//! Whether the daemons this node depends on answer: netd, vmd, containerd, and libvirtd
//! (reached through vmd, which says whether its libvirt connection works).
//!
//! The engine asks each one a cheap question every `liveness_interval` (with a short timeout)
//! and also hears when netd's or vmd's event stream breaks or comes back. This module is the
//! bookkeeping of those answers: which daemon is not answering now, since when and why, and
//! which one just came back, so that the engine applies the desired state again to a netd or
//! vmd that restarted. The problem itself (one `failing` when a daemon stops answering, one
//! `recovered` when it answers again, never one per check) is [`crate::problems::Problems`]'s,
//! under the daemon's name as its subject.
//!
//! Pure bookkeeping: no I/O, no clock of its own.

use std::collections::BTreeMap;

/// A daemon nodeagent checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Daemon {
    Netd,
    Vmd,
    Containerd,
    Libvirtd,
}

impl Daemon {
    pub const ALL: [Daemon; 4] = [Daemon::Netd, Daemon::Vmd, Daemon::Containerd, Daemon::Libvirtd];

    /// Its name, also the subject of its problem.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Netd => "netd",
            Daemon::Vmd => "vmd",
            Daemon::Containerd => "containerd",
            Daemon::Libvirtd => "libvirtd",
        }
    }
}

/// The sentence of the problem: `netd is not answering on /run/backroom/netd.sock: <why>`.
pub fn not_answering(daemon: Daemon, address: &str, why: &str) -> String {
    if address.is_empty() {
        format!("{} is not answering: {why}", daemon.name())
    } else {
        format!("{} is not answering on {address}: {why}", daemon.name())
    }
}

/// What changed with one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// It stopped answering (the first failed check of an outage).
    WentAway,
    /// It answers again after an outage: make sure it has the desired state.
    CameBack,
    /// As before.
    Same,
}

/// One outage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outage {
    pub since_ms: i64,
    /// The latest reason.
    pub why: String,
}

/// Which daemons are not answering now.
#[derive(Debug, Default)]
pub struct Liveness {
    down: BTreeMap<Daemon, Outage>,
}

impl Liveness {
    /// `daemon` did not answer (a failed check, or its event stream broke).
    pub fn failed(&mut self, daemon: Daemon, why: String, now_ms: i64) -> Turn {
        match self.down.get_mut(&daemon) {
            Some(o) => {
                o.why = why;
                Turn::Same
            }
            None => {
                self.down.insert(daemon, Outage { since_ms: now_ms, why });
                Turn::WentAway
            }
        }
    }

    /// `daemon` answered.
    pub fn answered(&mut self, daemon: Daemon) -> Turn {
        if self.down.remove(&daemon).is_some() { Turn::CameBack } else { Turn::Same }
    }

    /// The outage of `daemon`, when it is not answering now.
    pub fn outage(&self, daemon: Daemon) -> Option<&Outage> {
        self.down.get(&daemon)
    }
}

/// The status line of a part of the node whose daemon is not answering:
/// `netd not answering since 12:01:03 UTC (last applied revision 86a3bc5de5ad)`.
pub fn status_line(daemon: Daemon, outage: &Outage, applied: Option<&str>) -> String {
    let at = backroom_daemon::clock::rfc3339(outage.since_ms);
    // 2026-12-03T09:42:24Z → 09:42:24
    let hms = at.get(11..19).unwrap_or(&at);
    let mut line = format!("{} not answering since {hms} UTC", daemon.name());
    if let Some(r) = applied.filter(|r| !r.is_empty()) {
        line.push_str(&format!(" (last applied revision {})", crate::plan::short(r)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problems::Problems;

    /// The engine's use of both: a failed check feeds the problem and the bookkeeping, a
    /// good one closes both. Checks every 5 s over a 1-minute outage, twice.
    #[test]
    fn one_event_per_outage_recovered_once_and_one_come_back() {
        let mut live = Liveness::default();
        let mut problems = Problems::default();
        let (mut failing, mut recovered, mut came_back) = (0, 0, 0);
        let mut check = |t: i64, answers: bool, live: &mut Liveness, problems: &mut Problems| {
            let subject = Daemon::Netd.name();
            if answers {
                if live.answered(Daemon::Netd) == Turn::CameBack {
                    came_back += 1;
                }
                if let Some(c) = problems.succeeded(subject, t) {
                    assert!(!c.failing);
                    recovered += 1;
                }
            } else {
                let why = not_answering(Daemon::Netd, "/run/backroom/netd.sock", "refused");
                live.failed(Daemon::Netd, why.clone(), t);
                if let Some(c) = problems.failed(subject, "", why, t) {
                    assert!(c.failing);
                    assert_eq!(
                        c.message,
                        "netd: netd is not answering on /run/backroom/netd.sock: refused"
                    );
                    failing += 1;
                }
            }
        };
        let mut t = 0;
        for round in 0..2 {
            for _ in 0..3 {
                t += 5_000;
                check(t, true, &mut live, &mut problems);
            }
            let since = t + 5_000;
            for _ in 0..12 {
                t += 5_000;
                check(t, false, &mut live, &mut problems);
            }
            let o = live.outage(Daemon::Netd).unwrap();
            assert_eq!(o.since_ms, since, "round {round}: since the first failed check");
            assert!(problems.is_failing("netd"));
            for _ in 0..3 {
                t += 5_000;
                check(t, true, &mut live, &mut problems);
            }
            assert!(live.outage(Daemon::Netd).is_none());
        }
        assert_eq!((failing, recovered, came_back), (2, 2, 2), "once per outage, each way");
    }

    #[test]
    fn the_status_line_names_the_daemon_the_time_and_the_last_revision() {
        // 2026-11-26T12:01:03Z
        let o = Outage { since_ms: 1_795_651_200_000 + (12 * 3600 + 63) * 1000, why: "x".into() };
        assert_eq!(
            status_line(Daemon::Netd, &o, Some("86a3bc5de5ad0000111122223333")),
            "netd not answering since 12:01:03 UTC (last applied revision 86a3bc5de5ad)"
        );
        assert_eq!(
            status_line(Daemon::Containerd, &o, None),
            "containerd not answering since 12:01:03 UTC"
        );
        assert_eq!(not_answering(Daemon::Vmd, "", "timed out"), "vmd is not answering: timed out");
    }
}
