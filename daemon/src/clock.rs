//! Time, behind one trait: every timestamp and every timer of timing logic (backoff, intervals,
//! expiry, deadlines) reads a [`Clock`], so tests move time with a [`ManualClock`] instead of
//! sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

/// A timer of some clock: completes once its time has come.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Completes once `d` of this clock's time has passed.
    fn sleep(&self, d: Duration) -> Sleep;

    /// Whole seconds since the Unix epoch.
    fn now_unix(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Completes once this clock reads `at_ms` or later.
    fn sleep_until_ms(&self, at_ms: i64) -> Sleep {
        let left = at_ms.saturating_sub(self.now_ms());
        self.sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
    }
}

/// How the daemons hold their clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock; timers are tokio's (so `tokio::time::pause` also moves them).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to. Its timers complete when [`ManualClock::advance`] or
/// [`ManualClock::set`] reaches them, in deadline order.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<Mutex<Manual>>);

#[derive(Debug, Default)]
struct Manual {
    now_ms: i64,
    timers: Vec<(i64, oneshot::Sender<()>)>,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock(Arc::new(Mutex::new(Manual { now_ms: start_ms, timers: Vec::new() })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Manual> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the clock forward by `d` and fires every timer that is due.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let to = self.lock().now_ms.saturating_add(ms);
        self.set(to);
    }

    /// Sets the clock (it never goes back: an earlier time is ignored) and fires due timers.
    pub fn set(&self, to_ms: i64) {
        let mut m = self.lock();
        m.now_ms = m.now_ms.max(to_ms);
        let now = m.now_ms;
        let mut due: Vec<(i64, oneshot::Sender<()>)> = Vec::new();
        let mut i = 0;
        while i < m.timers.len() {
            if m.timers[i].0 <= now {
                due.push(m.timers.swap_remove(i));
            } else {
                i += 1;
            }
        }
        drop(m);
        due.sort_by_key(|(at, _)| *at);
        for (_, tx) in due {
            let _ = tx.send(());
        }
    }

    /// How many timers are waiting: a test knows a loop is asleep on this clock (and so that
    /// advancing it past the deadline would wake it) before it advances.
    pub fn timers(&self) -> usize {
        let mut m = self.lock();
        m.timers.retain(|(_, tx)| !tx.is_closed());
        m.timers.len()
    }

    /// Waits (in real time, at most `limit`) until at least `n` timers wait on this clock.
    pub async fn wait_for_timers(&self, n: usize, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        while self.timers() < n {
            if start.elapsed() > limit {
                return false;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.lock().now_ms
    }

    fn sleep(&self, d: Duration) -> Sleep {
        let (tx, rx) = oneshot::channel();
        {
            let mut m = self.lock();
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            let at = m.now_ms.saturating_add(ms);
            if ms == 0 {
                let _ = tx.send(());
            } else {
                m.timers.push((at, tx));
            }
        }
        Box::pin(async move {
            // A dropped clock never fires: such a timer waits for ever, as time has stopped.
            if rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// `ms` since the Unix epoch as RFC 3339 in UTC, e.g. `2026-12-03T09:42:24Z` (whole seconds).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_timers_fire_when_time_reaches_them_and_not_before() {
        let c = ManualClock::new(1_000);
        let short = c.sleep(Duration::from_secs(5));
        let long = c.sleep(Duration::from_secs(60));
        assert_eq!(c.timers(), 2);
        let short = tokio::spawn(short);
        let long = tokio::spawn(long);
        c.advance(Duration::from_millis(4_999));
        tokio::task::yield_now().await;
        assert!(!short.is_finished(), "a timer fired before its time");
        c.advance(Duration::from_millis(1));
        short.await.unwrap();
        assert!(!long.is_finished());
        assert_eq!(c.timers(), 1);
        c.set(61_000);
        long.await.unwrap();
        assert_eq!(c.now_ms(), 61_000);
        assert_eq!(c.now_unix(), 61);
    }

    #[tokio::test]
    async fn a_manual_clock_never_goes_back() {
        let c = ManualClock::new(10_000);
        c.set(5_000);
        assert_eq!(c.now_ms(), 10_000);
        c.sleep_until_ms(9_000).await;
    }

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_651_200_999), "2026-11-26T00:00:00Z");
    }
}
