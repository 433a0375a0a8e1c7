//! What is failing on this node now, from the three daemons, and the notices that open and
//! close each problem (one `failing` when it starts, one `recovered` when it ends, never one per
//! retry).
//!
//! nodeagent's own problems go through [`backroom_daemon::Conditions`]: a workload its restart
//! policy cannot (re)start (`workload orders`), an image that cannot be pulled (`image pull for
//! orders`), netd or vmd out of reach (`netd`, `vmd`). netd's and vmd's problems are theirs:
//! nodeagent mirrors what their `failing`/`recovered` events say, and on every (re)connect
//! compares its mirror with the problems they list as open, so a change missed while the link
//! was down is told once it is back. The open problems are kept in `<state>/problems.json`, so
//! a restart of nodeagent neither repeats a notice nor forgets to close one.
//!
//! Pure bookkeeping: the engine feeds it results and tells the [`Change`]s it returns.

use std::collections::BTreeMap;

use backroom_daemon::Conditions;
use backroom_daemon::condition::{Problem, Transition, for_how_long};
use serde::{Deserialize, Serialize};

/// The action-history entries of problem notices begin with these (see `nodectl status`).
pub const FAILING: &str = "failing: ";
pub const RECOVERED: &str = "recovered: ";

/// Who noticed a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Nodeagent,
    Netd,
    Vmd,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Nodeagent => "nodeagent",
            Source::Netd => "netd",
            Source::Vmd => "vmd",
        }
    }
}

/// A problem open now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenProblem {
    pub source: Source,
    /// What fails, in words a store manager can read: `uplink eno1`, `workload orders`.
    pub subject: String,
    /// The workload it is about ("" when none).
    #[serde(default)]
    pub workload: String,
    /// Why, with the whole cause chain (the latest failure's).
    pub message: String,
    /// When it started failing (unix ms).
    pub since_ms: i64,
    /// How many tries failed in a row.
    pub failures: u32,
}

/// A problem opening (`failing`) or closing (`recovered`): what the engine tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub failing: bool,
    pub problem: OpenProblem,
    /// One sentence for the event.
    pub message: String,
    pub at_ms: i64,
}

impl Change {
    pub fn kind(&self) -> &'static str {
        if self.failing { "failing" } else { "recovered" }
    }
}

/// The subject of a workload its restart policy cannot (re)start.
pub fn workload_subject(workload: &str) -> String {
    format!("workload {workload}")
}

/// The subject of a workload whose image cannot be pulled.
pub fn pull_subject(workload: &str) -> String {
    format!("image pull for {workload}")
}

/// The open problems of the node and how they change.
#[derive(Debug, Default)]
pub struct Problems {
    own: Conditions,
    /// subject → workload, for nodeagent's own problems.
    own_workloads: BTreeMap<String, String>,
    /// netd's and vmd's, as they last said.
    peers: BTreeMap<(Source, String), OpenProblem>,
}

fn open_problem(source: Source, workload: &str, p: &Problem) -> OpenProblem {
    OpenProblem {
        source,
        subject: p.subject.clone(),
        workload: workload.to_string(),
        message: p.message.clone(),
        since_ms: p.since_ms,
        failures: p.failures,
    }
}

impl Problems {
    /// The problems that were open when nodeagent last saved them.
    pub fn restore(saved: Vec<OpenProblem>) -> Self {
        let mut me = Problems::default();
        let mut own = Vec::new();
        for p in saved {
            if p.source == Source::Nodeagent {
                me.own_workloads.insert(p.subject.clone(), p.workload.clone());
                own.push(Problem {
                    subject: p.subject,
                    message: p.message,
                    since_ms: p.since_ms,
                    failures: p.failures,
                });
            } else {
                me.peers.insert((p.source, p.subject.clone()), p);
            }
        }
        me.own = Conditions::restore(own);
        me
    }

    fn own_change(&self, t: Transition) -> Change {
        let (failing, p, at_ms) = match &t {
            Transition::Failing(p) => (true, p, p.since_ms),
            Transition::Recovered { problem, at_ms } => (false, problem, *at_ms),
        };
        let workload = self.own_workloads.get(&p.subject).cloned().unwrap_or_default();
        Change {
            failing,
            problem: open_problem(Source::Nodeagent, &workload, p),
            message: t.message(),
            at_ms,
        }
    }

    /// One failed try of nodeagent's own `subject` (about `workload`, or "").
    pub fn failed(
        &mut self,
        subject: &str,
        workload: &str,
        message: String,
        now_ms: i64,
    ) -> Option<Change> {
        self.own_workloads.insert(subject.to_string(), workload.to_string());
        let t = self.own.failed(subject, message, now_ms)?;
        Some(self.own_change(t))
    }

    /// One good try of nodeagent's own `subject`.
    pub fn succeeded(&mut self, subject: &str, now_ms: i64) -> Option<Change> {
        let t = self.own.succeeded(subject, now_ms)?;
        let c = self.own_change(t);
        self.own_workloads.remove(subject);
        Some(c)
    }

    pub fn is_failing(&self, subject: &str) -> bool {
        self.own.is_failing(subject)
    }

    /// nodeagent's problems about workloads that `keep` says no longer exist are over.
    pub fn forget_workloads(&mut self, now_ms: i64, keep: impl Fn(&str) -> bool) -> Vec<Change> {
        let gone: Vec<String> = self
            .own_workloads
            .iter()
            .filter(|(_, w)| !w.is_empty() && !keep(w))
            .map(|(s, _)| s.clone())
            .collect();
        let mut out = Vec::new();
        for s in gone {
            if let Some(mut c) = self.succeeded(&s, now_ms) {
                c.message = format!(
                    "{}: no longer in the profile (it had failed for {})",
                    c.problem.subject,
                    for_how_long(now_ms.saturating_sub(c.problem.since_ms))
                );
                out.push(c);
            }
        }
        out
    }

    /// A `failing` event of netd or vmd.
    pub fn peer_failing(&mut self, p: OpenProblem, at_ms: i64) -> Option<Change> {
        let key = (p.source, p.subject.clone());
        if let Some(open) = self.peers.get_mut(&key) {
            open.message = p.message;
            open.failures = open.failures.max(p.failures);
            return None;
        }
        let message = format!("{}: {}", p.subject, p.message);
        self.peers.insert(key, p.clone());
        Some(Change { failing: true, problem: p, message, at_ms })
    }

    /// A `recovered` event of netd or vmd (`message` is theirs).
    pub fn peer_recovered(
        &mut self,
        source: Source,
        subject: &str,
        message: String,
        at_ms: i64,
    ) -> Option<Change> {
        let p = self.peers.remove(&(source, subject.to_string()))?;
        let message = if message.is_empty() {
            format!(
                "{subject} works again (it had failed for {})",
                for_how_long(at_ms.saturating_sub(p.since_ms))
            )
        } else {
            message
        };
        Some(Change { failing: false, problem: p, message, at_ms })
    }

    /// What `source` lists as open right after a (re)connect: the problems it no longer has
    /// recovered while nodeagent was not listening, the new ones started.
    pub fn peer_snapshot(
        &mut self,
        source: Source,
        open: Vec<OpenProblem>,
        now_ms: i64,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        let listed: BTreeMap<String, OpenProblem> =
            open.into_iter().map(|p| (p.subject.clone(), OpenProblem { source, ..p })).collect();
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|(s, subject)| *s == source && !listed.contains_key(subject))
            .map(|(_, subject)| subject.clone())
            .collect();
        for subject in gone {
            out.extend(self.peer_recovered(source, &subject, String::new(), now_ms));
        }
        for (_, p) in listed {
            let at = p.since_ms;
            match self.peers.get_mut(&(source, p.subject.clone())) {
                // Still open: their latest word, no second notice.
                Some(mine) => *mine = OpenProblem { workload: mine.workload.clone(), ..p },
                None => out.extend(self.peer_failing(p, at)),
            }
        }
        out
    }

    /// Every open problem: a daemon nodeagent cannot reach first (what it said before is not
    /// known to be true any more), then the oldest first.
    pub fn open(&self) -> Vec<OpenProblem> {
        let mut all: Vec<OpenProblem> = self
            .own
            .open()
            .map(|p| {
                let w = self.own_workloads.get(&p.subject).cloned().unwrap_or_default();
                open_problem(Source::Nodeagent, &w, p)
            })
            .chain(self.peers.values().cloned())
            .collect();
        all.sort_by_key(|p| (rank(p), p.since_ms, p.subject.clone()));
        all
    }
}

/// An event of netd or vmd, as nodeagent uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEvent {
    pub at_ms: i64,
    /// Theirs: failing | recovered | drift_repaired | crashed | …
    pub kind: String,
    /// failing | recovered: the problem's subject.
    pub subject: String,
    /// The workload it concerns (a VM's name), "" for none.
    pub workload: String,
    pub message: String,
}

impl OpenProblem {
    /// A problem as a peer's API lists it, from `source`.
    pub fn from_pb(source: Source, p: backroom_api::common::Problem) -> Self {
        OpenProblem {
            source,
            subject: p.subject,
            workload: String::new(),
            message: p.message,
            since_ms: p.since_unix_ms,
            failures: p.failures,
        }
    }

    /// As nodeagent's and the node's APIs carry it.
    pub fn to_pb(&self) -> backroom_api::common::Problem {
        backroom_api::common::Problem {
            subject: self.subject.clone(),
            message: self.message.clone(),
            since_unix_ms: self.since_ms,
            failures: self.failures,
            source: self.source.as_str().to_string(),
        }
    }
}

fn rank(p: &OpenProblem) -> u8 {
    let lost_daemon = p.source == Source::Nodeagent
        && crate::liveness::Daemon::ALL.iter().any(|d| p.subject == d.name());
    if lost_daemon { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netd(subject: &str, message: &str, since: i64) -> OpenProblem {
        OpenProblem {
            source: Source::Netd,
            subject: subject.into(),
            workload: String::new(),
            message: message.into(),
            since_ms: since,
            failures: 1,
        }
    }

    #[test]
    fn one_notice_each_way_and_the_worst_first() {
        let mut p = Problems::default();
        let c = p.failed("workload orders", "orders", "crash loop".into(), 1_000).unwrap();
        assert!(c.failing && c.problem.workload == "orders", "{c:?}");
        assert!(p.failed("workload orders", "orders", "again".into(), 2_000).is_none());
        assert!(p.peer_failing(netd("uplink eno1", "missing", 500), 500).is_some());
        assert!(p.peer_failing(netd("uplink eno1", "still missing", 900), 900).is_none());
        p.failed("netd", "", "cannot connect".into(), 3_000);
        let subjects: Vec<String> = p.open().into_iter().map(|o| o.subject).collect();
        assert_eq!(subjects, ["netd", "uplink eno1", "workload orders"]);
        let r = p.succeeded("workload orders", 9_000).unwrap();
        assert!(!r.failing && r.message.starts_with("workload orders works again"), "{r:?}");
        assert!(p.succeeded("workload orders", 9_500).is_none());
    }

    #[test]
    fn a_reconnect_closes_what_recovered_unseen_and_opens_what_is_new() {
        let mut p = Problems::default();
        p.peer_failing(netd("uplink eno1", "missing", 500), 500);
        p.peer_failing(netd("dhcp br-mgmt", "no lease", 600), 600);
        let changes = p.peer_snapshot(
            Source::Netd,
            vec![netd("dhcp br-mgmt", "no lease yet", 600), netd("drift pos", "rules differ", 700)],
            10_000,
        );
        let told: Vec<(bool, &str)> =
            changes.iter().map(|c| (c.failing, c.problem.subject.as_str())).collect();
        assert_eq!(told, [(false, "uplink eno1"), (true, "drift pos")]);
        assert!(p.open().iter().any(|o| o.message == "no lease yet"));
        assert!(p.peer_snapshot(Source::Vmd, vec![], 11_000).is_empty(), "netd's are netd's");
    }

    #[test]
    fn restored_problems_are_closed_once_and_gone_workloads_forgotten() {
        let mut before = Problems::default();
        before.failed("image pull for menu", "menu", "cannot pull".into(), 1_000);
        before.peer_failing(netd("uplink eno1", "missing", 500), 500);
        let saved = before.open();
        let text = serde_json::to_string(&saved).unwrap();
        let back: Vec<OpenProblem> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, saved);
        let mut after = Problems::restore(back);
        assert!(after.failed("image pull for menu", "menu", "still".into(), 2_000).is_none());
        let gone = after.forget_workloads(5_000, |w| w != "menu");
        assert_eq!(gone.len(), 1);
        assert!(gone[0].message.contains("no longer in the profile"), "{:?}", gone[0]);
        assert_eq!(after.open().len(), 1);
    }
}
