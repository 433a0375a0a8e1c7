//! Restart policy: whether an ended task is started again, after how long, and when a workload
//! counts as crash-looping. Pure functions of the record and the clock.

use backroom_profiles::RestartPolicy;

use crate::record::{Exit, WorkloadRecord};

/// The backoff settings (the node's; tests make them short).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure; it doubles with each failure in a row.
    pub base_ms: u64,
    pub max_ms: u64,
    /// A run at least this long resets the failures-in-a-row count.
    pub stable_ms: u64,
    /// This many failures in a row is a crash loop (shown as such; backoff goes on).
    pub crash_loop_after: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base_ms: 1_000, max_ms: 300_000, stable_ms: 30_000, crash_loop_after: 5 }
    }
}

impl Backoff {
    /// The delay before the next start after `failures` failures in a row (1 = the first).
    pub fn delay_ms(&self, failures: u32) -> u64 {
        if failures == 0 {
            return 0;
        }
        let shift = (failures - 1).min(30);
        self.base_ms.saturating_mul(1u64 << shift).min(self.max_ms)
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
pub fn record_failure(b: &Backoff, rec: &mut WorkloadRecord, started_ms: Option<u64>, now_ms: u64) {
    if started_ms.is_some_and(|s| now_ms.saturating_sub(s) >= b.stable_ms) {
        rec.consecutive_failures = 0;
    }
    rec.consecutive_failures = rec.consecutive_failures.saturating_add(1);
    rec.backoff_until_ms = now_ms + b.delay_ms(rec.consecutive_failures);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_and_is_capped() {
        let b = Backoff { base_ms: 1000, max_ms: 10_000, stable_ms: 30_000, crash_loop_after: 5 };
        let d: Vec<u64> = (0..7).map(|n| b.delay_ms(n)).collect();
        assert_eq!(d, vec![0, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(b.delay_ms(u32::MAX), 10_000);
    }

    #[test]
    fn a_long_run_resets_the_failure_count() {
        let b = Backoff::default();
        let mut r = WorkloadRecord::new("w");
        for i in 0..5 {
            record_failure(&b, &mut r, Some(i * 1000), i * 1000 + 500);
        }
        assert_eq!(r.consecutive_failures, 5);
        assert!(b.crash_loop(&r));
        assert_eq!(r.backoff_until_ms, 4500 + 16_000);
        record_failure(&b, &mut r, Some(100_000), 200_000);
        assert_eq!(r.consecutive_failures, 1);
        assert!(!b.crash_loop(&r));
        record_failure(&b, &mut r, None, 201_000);
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
