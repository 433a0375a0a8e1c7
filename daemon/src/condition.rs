//! Failing and recovered. A background loop (a drift check, a DHCP renewal, a probe, a pull)
//! reports every outcome here; what reaches people is one [`Transition::Failing`] when a thing
//! starts failing and one [`Transition::Recovered`] when it works again, never one per retry.
//! While it fails, the open [`Problem`] keeps the latest reason and how many tries failed.

use std::collections::BTreeMap;

/// Something that is failing now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What fails, as a stable key in words a person can read: `uplink eno1`, `workload orders`.
    pub subject: String,
    /// Why, with the whole cause chain (the latest failure's).
    pub message: String,
    /// When it started failing (unix ms).
    pub since_ms: i64,
    /// How many tries failed in a row.
    pub failures: u32,
}

/// A change worth telling someone about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// `subject` started failing.
    Failing(Problem),
    /// `subject` works again; `problem` is what had been failing, `at_ms` when it recovered.
    Recovered { problem: Problem, at_ms: i64 },
}

impl Transition {
    pub fn subject(&self) -> &str {
        match self {
            Transition::Failing(p) | Transition::Recovered { problem: p, .. } => &p.subject,
        }
    }

    pub fn is_failing(&self) -> bool {
        matches!(self, Transition::Failing(_))
    }

    /// One sentence for an event: `uplink eno1: …` or `uplink eno1 works again (it had failed
    /// for 2m 5s: …)`.
    pub fn message(&self) -> String {
        match self {
            Transition::Failing(p) => format!("{}: {}", p.subject, p.message),
            Transition::Recovered { problem: p, at_ms } => format!(
                "{} works again (it had failed for {}: {})",
                p.subject,
                for_how_long(at_ms.saturating_sub(p.since_ms)),
                p.message
            ),
        }
    }
}

/// `ms` as a short length of time: `850ms`, `42s`, `2m 5s`, `3h 10m`.
pub fn for_how_long(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// The open problems of one daemon, by subject.
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    open: BTreeMap<String, Problem>,
}

impl Conditions {
    pub fn new() -> Self {
        Self::default()
    }

    /// One failed try of `subject`: a transition only when it was not failing already.
    pub fn failed(
        &mut self,
        subject: impl Into<String>,
        message: impl Into<String>,
        now_ms: i64,
    ) -> Option<Transition> {
        let subject = subject.into();
        let message = message.into();
        if let Some(p) = self.open.get_mut(&subject) {
            p.failures = p.failures.saturating_add(1);
            p.message = message;
            return None;
        }
        let p = Problem { subject: subject.clone(), message, since_ms: now_ms, failures: 1 };
        self.open.insert(subject, p.clone());
        Some(Transition::Failing(p))
    }

    /// One good try of `subject`: a transition only when it had been failing.
    pub fn succeeded(&mut self, subject: &str, now_ms: i64) -> Option<Transition> {
        self.open.remove(subject).map(|problem| Transition::Recovered { problem, at_ms: now_ms })
    }

    /// [`Conditions::failed`] or [`Conditions::succeeded`] from a result; the error's whole
    /// chain is the message.
    pub fn report<T, E: std::error::Error + 'static>(
        &mut self,
        subject: &str,
        result: &Result<T, E>,
        now_ms: i64,
    ) -> Option<Transition> {
        match result {
            Ok(_) => self.succeeded(subject, now_ms),
            Err(e) => self.failed(subject, crate::error::chain(e), now_ms),
        }
    }

    /// Subjects that no longer exist (a workload left the profile) stop being problems: each
    /// open one for which `keep` says no is resolved.
    pub fn retain(&mut self, now_ms: i64, mut keep: impl FnMut(&str) -> bool) -> Vec<Transition> {
        let gone: Vec<String> = self.open.keys().filter(|s| !keep(s)).cloned().collect();
        gone.iter().filter_map(|s| self.succeeded(s, now_ms)).collect()
    }

    pub fn is_failing(&self, subject: &str) -> bool {
        self.open.contains_key(subject)
    }

    /// The open problems, by subject.
    pub fn open(&self) -> impl Iterator<Item = &Problem> {
        self.open.values()
    }
}

impl Conditions {
    /// The problems that were open before a restart (a daemon that keeps them on disk), open
    /// again without a new [`Transition::Failing`]: what recovered while the daemon was down
    /// is then told as recovered, and nothing is told twice.
    pub fn restore(open: impl IntoIterator<Item = Problem>) -> Self {
        Conditions { open: open.into_iter().map(|p| (p.subject.clone(), p)).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notice_when_failing_starts_and_one_when_it_ends() {
        let mut c = Conditions::new();
        let t = c.failed("uplink eno1", "the link eno1 does not exist", 1_000);
        assert!(matches!(&t, Some(Transition::Failing(p)) if p.subject == "uplink eno1"));
        for i in 0..10 {
            assert_eq!(c.failed("uplink eno1", format!("still missing ({i})"), 2_000 + i), None);
        }
        let p = c.open().next().unwrap().clone();
        assert_eq!((p.failures, p.since_ms, p.message.as_str()), (11, 1_000, "still missing (9)"));
        assert_eq!(c.succeeded("dhcp br-mgmt", 3_000), None, "never failed: nothing to say");
        let r = c.succeeded("uplink eno1", 126_000).unwrap();
        assert_eq!(
            r.message(),
            "uplink eno1 works again (it had failed for 2m 5s: still missing (9))"
        );
        assert_eq!(c.succeeded("uplink eno1", 127_000), None);
        assert_eq!(c.open().count(), 0);
    }

    #[test]
    fn results_and_vanished_subjects() {
        let mut c = Conditions::new();
        let bad: Result<(), std::io::Error> = Err(std::io::Error::other("refused"));
        assert!(c.report("probe orders", &bad, 0).unwrap().is_failing());
        assert!(c.report("probe menu", &bad, 0).is_some());
        assert_eq!(c.report("probe orders", &bad, 1), None);
        let gone = c.retain(5, |s| s != "probe menu");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].subject(), "probe menu");
        assert!(c.is_failing("probe orders"));
        assert!(!c.report("probe orders", &Ok::<(), std::io::Error>(()), 9).unwrap().is_failing());
    }

    #[test]
    fn restored_problems_stay_open_without_a_second_notice() {
        let p = Problem {
            subject: "workload orders".into(),
            message: "crash loop".into(),
            since_ms: 1_000,
            failures: 7,
        };
        let mut c = Conditions::restore([p.clone()]);
        assert_eq!(c.failed("workload orders", "still", 5_000), None);
        assert_eq!(c.open().next().map(|p| (p.since_ms, p.failures)), Some((1_000, 8)));
        let r = c.succeeded("workload orders", 9_000).unwrap();
        assert!(!r.is_failing());
    }

    #[test]
    fn durations_read_aloud() {
        assert_eq!(for_how_long(850), "850ms");
        assert_eq!(for_how_long(42_000), "42s");
        assert_eq!(for_how_long(11_400_000), "3h 10m");
    }
}
