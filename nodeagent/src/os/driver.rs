//! The update's loop in nodeagent: every round it reads the engine's status (the desired
//! revision's `node.os` once that revision is applied and healthy, and the node's health),
//! whether central answered lately, and takes one [`OsUpdater::step`]. At start the first round
//! resumes what `os.json` says (a `testing` update is checked or committed).

use std::time::Duration;

use backroom_profiles::OsSpec;
use tokio::sync::watch;

use super::{Health, OsHost, OsUpdater, Step};
use crate::engine::{EngineHandle, Status};
use crate::store::Store;

/// central counts as reachable when it answered within this long.
const CONTACT_FRESH_MS: i64 = 90_000;

/// The profile is applied and healthy: it is the last-known-good one, nothing failed, every
/// workload runs and none is unhealthy.
pub fn profile_healthy(s: &Status) -> bool {
    !s.desired.is_empty()
        && s.last_known_good == s.desired
        && !s.network.starts_with("failed")
        && !s.vms.starts_with("failed")
        && s.workloads.iter().all(|w| w.state == "running" && w.health != "unhealthy")
}

/// Runs the update loop until the engine stops. `contact` is the unix ms central last answered
/// (0: never; standalone nodes never do).
pub fn spawn<H: OsHost>(
    mut updater: OsUpdater<H>,
    engine: EngineHandle,
    store: Store,
    contact: watch::Receiver<i64>,
    clock: backroom_daemon::SharedClock,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut cached: (String, Option<OsSpec>) = (String::new(), None);
        let mut last_error = String::new();
        loop {
            let Ok(s) = engine.status().await else { return };
            // node.os takes effect once its revision is applied and healthy.
            let rev = if s.last_known_good == s.desired {
                s.desired.clone()
            } else {
                s.last_known_good.clone()
            };
            if cached.0 != rev {
                let os = if rev.is_empty() {
                    None
                } else {
                    store.load_revision(&rev).ok().and_then(|r| r.profile.node.os)
                };
                cached = (rev, os);
            }
            let health = Health {
                profile_healthy: profile_healthy(&s),
                central_reachable: *contact.borrow() > 0
                    && clock.now_ms().saturating_sub(*contact.borrow()) < CONTACT_FRESH_MS,
            };
            match updater.step(cached.1.as_ref(), health).await {
                Ok(step) => {
                    last_error.clear();
                    // Go on at once after a step that changed something.
                    if !matches!(step, Step::Nothing | Step::Wait) {
                        continue;
                    }
                }
                Err(e) => {
                    let msg = backroom_daemon::chain(&e);
                    if msg != last_error {
                        tracing::warn!(error = %msg, "the OS update cannot go on; retrying");
                        last_error = msg;
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}
