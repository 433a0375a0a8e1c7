//! Restart policy: whether an ended task is started again, after how long, and when a workload
//! counts as crash-looping. Pure functions of the record and the time (the engine's clock):
//! the delays are [`backroom_daemon::Backoff`]'s, the crash-loop and stable-run rules are here.

use std::time::Duration;

use backroom_daemon::Backoff;
use backroom_profiles::RestartPolicy;

use crate::record::{Exit, WorkloadRecord};

/// When a workload is started again after failing, and when it counts as crash-looping (the
/// node's settings; tests make them short).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// The delay after the first failure; it doubles with each failure in a row, to its cap.
    pub backoff: Backoff,
    /// A run at least this long resets the failures-in-a-row count.
    pub stable: Duration,
    /// This many failures in a row is a crash loop (shown as such; backoff goes on).
    pub crash_loop_after: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing::with_first_delay(Duration::from_secs(1))
    }
}

impl Timing {
    /// The node's rules with another first delay (1 s by default, doubling up to 5 minutes).
    pub fn with_first_delay(first: Duration) -> Self {
        Timing {
            backoff: Backoff::new(first, Duration::from_secs(300)),
            stable: Duration::from_secs(30),
            crash_loop_after: 5,
        }
    }

    /// The delay before the next start after `failures` failures in a row (1 = the first).
    pub fn delay_ms(&self, failures: u32) -> u64 {
        u64::try_from(self.backoff.delay(failures).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn stable_ms(&self) -> u64 {
        u64::try_from(self.stable.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn crash_loop(&self, rec: &WorkloadRecord) -> bool {
        rec.consecutive_failures >= self.crash_loop_after
    }
}

/// Whether the policy starts a task again after this exit.
pub fn should_restart(policy: RestartPolicy, exit: &Exit) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit.code != 0 || exit.oom,
        RestartPolicy::Never => false,
    }
}

/// Counts a failure (an exit, or a start that failed) at `now_ms` for a run that started at
/// `started_ms` (None for a failed start) and sets the backoff.
pub fn record_failure(t: &Timing, rec: &mut WorkloadRecord, started_ms: Option<u64>, now_ms: u64) {
    if started_ms.is_some_and(|s| now_ms.saturating_sub(s) >= t.stable_ms()) {
        rec.consecutive_failures = 0;
    }
    rec.consecutive_failures = rec.consecutive_failures.saturating_add(1);
    rec.backoff_until_ms = now_ms.saturating_add(t.delay_ms(rec.consecutive_failures));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_and_is_capped() {
        let t = Timing {
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(10)),
            ..Timing::default()
        };
        let d: Vec<u64> = (0..7).map(|n| t.delay_ms(n)).collect();
        assert_eq!(d, vec![0, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(t.delay_ms(u32::MAX), 10_000);
    }

    #[test]
    fn a_long_run_resets_the_failure_count() {
        let t = Timing::default();
        let mut r = WorkloadRecord::new("w");
        for i in 0..5 {
            record_failure(&t, &mut r, Some(i * 1000), i * 1000 + 500);
        }
        assert_eq!(r.consecutive_failures, 5);
        assert!(t.crash_loop(&r));
        assert_eq!(r.backoff_until_ms, 4500 + 16_000);
        // 29.999 s is not a stable run; 30 s is.
        record_failure(&t, &mut r, Some(100_000), 129_999);
        assert_eq!(r.consecutive_failures, 6);
        record_failure(&t, &mut r, Some(200_000), 230_000);
        assert_eq!(r.consecutive_failures, 1);
        assert!(!t.crash_loop(&r));
        record_failure(&t, &mut r, None, 231_000);
        assert_eq!(r.consecutive_failures, 2, "a failed start counts");
    }

    #[test]
    fn policies() {
        let ok = Exit { code: 0, at_ms: 0, oom: false };
        let bad = Exit { code: 3, at_ms: 0, oom: false };
        assert!(should_restart(RestartPolicy::Always, &ok));
        assert!(!should_restart(RestartPolicy::OnFailure, &ok));
        assert!(should_restart(RestartPolicy::OnFailure, &bad));
        assert!(!should_restart(RestartPolicy::Never, &bad));
    }
}
