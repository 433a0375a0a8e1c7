//! One backoff: exponential delays between retries, capped, optionally jittered so that
//! thousands of stores retrying after one outage do not retry in step.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// No delay is longer than this.
    pub max: Duration,
    /// Each delay is spread uniformly over ±`jitter` of itself (0.0: none; 0.25: ±25 %).
    pub jitter: f64,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, jitter: 0.0 }
    }

    pub const fn with_jitter(self, jitter: f64) -> Self {
        Backoff { jitter, ..self }
    }

    /// The delay after `failures` failures in a row (0: none yet, no delay), without jitter:
    /// `initial`, doubling with each failure, capped at `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(31);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }

    /// [`Backoff::delay`] spread by the jitter; `unit` is a number in [0, 1) (random in use,
    /// fixed in tests).
    pub fn delay_jittered(&self, failures: u32, unit: f64) -> Duration {
        let d = self.delay(failures);
        if self.jitter <= 0.0 {
            return d;
        }
        let spread = 1.0 - self.jitter + 2.0 * self.jitter * unit.clamp(0.0, 1.0);
        d.mul_f64(spread.max(0.0)).min(self.max.mul_f64(1.0 + self.jitter))
    }

    /// A retry counter over this backoff.
    pub fn retries(self) -> Retries {
        Retries { backoff: self, failures: 0 }
    }
}

/// Counts failures in a row and hands out the next delay.
#[derive(Clone, Debug)]
pub struct Retries {
    backoff: Backoff,
    failures: u32,
}

impl Retries {
    /// Counts one more failure and returns how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay_jittered(self.failures, rand::random::<f64>())
    }

    /// A success: the next failure starts again from the initial delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let got: Vec<u64> = (0..9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(got, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let b = Backoff::new(Duration::from_secs(8), Duration::from_secs(60)).with_jitter(0.25);
        assert_eq!(b.delay_jittered(1, 0.0), Duration::from_secs(6));
        assert_eq!(b.delay_jittered(1, 1.0), Duration::from_secs(10));
        assert_eq!(b.delay_jittered(1, 0.5), Duration::from_secs(8));
        let mut r = b.retries();
        for _ in 0..20 {
            let d = r.fail();
            assert!(d <= Duration::from_secs(75), "{d:?}");
        }
        r.reset();
        assert_eq!(r.failures(), 0);
        assert!(r.fail() <= Duration::from_secs(10));
    }
}
