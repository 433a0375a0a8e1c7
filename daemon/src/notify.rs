//! systemd: readiness, stopping, and a watchdog that is fed only while the daemon's own loop
//! is alive (a daemon whose main loop is wedged must be restarted, even if a side thread could
//! still ping). Outside systemd (no `NOTIFY_SOCKET`) all of this does nothing.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Tells systemd the daemon is ready (`Type=notify`).
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot tell systemd that the daemon is ready: {e}");
    }
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// A one-line status shown by `systemctl status`.
pub fn status(text: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(text)]);
}

/// Proof of life of a loop: the loop calls [`Heartbeat::beat`] each turn; the watchdog asks
/// [`Heartbeat::fresh`].
#[derive(Clone, Debug)]
pub struct Heartbeat {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    pub fn new() -> Self {
        Heartbeat { origin: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last beat was.
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    pub fn fresh(&self, within: Duration) -> bool {
        self.age() <= within
    }
}

/// When systemd asks for a watchdog (`WatchdogSec=`), pings it every third of the period, but
/// only when `alive()` answers true within a quarter of it. Returns whether it runs.
pub fn spawn_watchdog<F, Fut>(alive: F) -> bool
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    match sd_notify::watchdog_enabled() {
        Some(period) => {
            tokio::spawn(watchdog(period, alive, || {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }));
            true
        }
        None => false,
    }
}

/// The watchdog loop, with the ping as a parameter (tests count pings).
pub async fn watchdog<F, Fut>(period: Duration, mut alive: F, mut ping: impl FnMut())
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut stuck = false;
    loop {
        let ok = tokio::time::timeout(period / 4, alive()).await.unwrap_or(false);
        if ok {
            if stuck {
                tracing::info!("the daemon's loop answers again: the watchdog is fed again");
                stuck = false;
            }
            ping();
        } else if !stuck {
            tracing::error!(
                "the daemon's loop does not answer: systemd's watchdog is no longer fed and will restart it"
            );
            stuck = true;
        }
        tokio::time::sleep(period / 3).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn fed_only_while_the_loop_is_alive() {
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let pings = Arc::new(AtomicUsize::new(0));
        let (a, p) = (alive.clone(), pings.clone());
        tokio::spawn(watchdog(
            Duration::from_secs(30),
            move || {
                let up = a.load(Ordering::SeqCst);
                async move { up }
            },
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
        ));
        tokio::time::sleep(Duration::from_secs(35)).await;
        let fed = pings.load(Ordering::SeqCst);
        assert!(fed >= 3, "{fed} pings in 35 s with a 30 s watchdog");
        alive.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let at_stop = pings.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(pings.load(Ordering::SeqCst), at_stop, "a dead loop still fed the watchdog");
        alive.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(pings.load(Ordering::SeqCst) > at_stop);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_hangs_counts_as_dead() {
        let pings = Arc::new(AtomicUsize::new(0));
        let p = pings.clone();
        tokio::spawn(watchdog(Duration::from_secs(4), std::future::pending::<bool>, move || {
            p.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn heartbeat_ages() {
        let h = Heartbeat::new();
        h.beat();
        assert!(h.fresh(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(h.age() >= Duration::from_millis(30));
        assert!(!h.fresh(Duration::from_millis(10)));
    }
}
