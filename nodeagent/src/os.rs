//! A/B updates of the store OS image (`node.os`, `spec/store-os.md`).
//!
//! The box has two root slots (`backroom-root-a`, `backroom-root-b`) and boots one of them with
//! systemd-boot. An update downloads the new root image (sha256-checked, resumable), writes it
//! to the slot that is not running, puts its kernel and initrd and a loader entry on the ESP,
//! boots it ONCE (`LoaderEntryOneShot`), and makes it the default only when the node is healthy
//! on it within a deadline. If the new slot does not come up, or does not become healthy, the
//! next boot is the old default slot and the version goes into the set of versions that failed
//! on this box, which is not tried again until `node.os.version` changes.
//!
//! The shape: [`plan`] is a pure function from (persisted [`OsState`], desired `node.os`,
//! running version and slot, [`Health`]) to the next [`Step`]; [`OsUpdater`] carries one step
//! out at a time through an [`OsHost`] (the machine: slots, ESP, EFI variables, reboot), with
//! [`real::RealOsHost`] for the box and [`memory::MemOsHost`] for tests. Every transition is
//! persisted to `<state>/os.json` before it acts and raised as an `os_update_*` event.
//!
//! It does not decide when the node is healthy (connected.rs gives [`Health`]) or when a
//! maintenance window allows a reboot.

pub mod driver;
pub mod memory;
pub mod real;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backroom_daemon::SharedClock;
use backroom_profiles::OsSpec;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::save;

/// A root slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` or `b`: as on the kernel command line, in partition labels and ESP paths.
    pub fn id(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }

    /// The systemd-boot entry id of this slot: `backroom-a.conf`.
    pub fn entry_id(self) -> String {
        format!("backroom-{}.conf", self.id())
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// What runs now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub version: String,
    pub slot: Slot,
}

/// The update's state, as `os.json` and the status say it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Idle,
    Downloading,
    Written,
    Testing,
    Committed,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Downloading => "downloading",
            Phase::Written => "written",
            Phase::Testing => "testing",
            Phase::Committed => "committed",
            Phase::Failed => "failed",
        }
    }
}

/// `<state>/os.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsState {
    pub state: Phase,
    /// Why it failed (`failed` only).
    #[serde(default)]
    pub reason: String,
    /// The version being (or last) updated to, its image and sha256.
    #[serde(default)]
    pub target_version: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub sha256: String,
    /// Where the update started from.
    #[serde(default)]
    pub from_slot: Option<Slot>,
    #[serde(default)]
    pub from_version: String,
    /// Versions that failed on this box: not tried again until `node.os.version` changes.
    #[serde(default)]
    pub failed_versions: BTreeSet<String>,
    /// central answered just before the reboot into the new slot: then it must answer on it.
    #[serde(default)]
    pub central_was_reachable: bool,
    /// When the node first ran on the new slot (unix ms; 0: not yet): the deadline counts
    /// from here.
    #[serde(default)]
    pub up_since_ms: i64,
    /// The failed version whose "not tried again" was already reported.
    #[serde(default)]
    pub skip_reported: String,
    /// When the state last changed and when the update started (unix ms).
    #[serde(default)]
    pub since_ms: i64,
    #[serde(default)]
    pub started_ms: i64,
}

impl OsState {
    /// `failed: <reason>` or the phase's name.
    pub fn describe(&self) -> String {
        match self.state {
            Phase::Failed => format!("failed: {}", self.reason),
            p => p.as_str().to_string(),
        }
    }
}

/// How the node is doing, as the update's health check needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The desired profile is applied and every workload healthy.
    pub profile_healthy: bool,
    /// central answered recently.
    pub central_reachable: bool,
}

/// The next thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// The desired version runs: the state becomes `idle` (or stays `committed`).
    Settle,
    /// This version failed here before: say so once.
    ReportSkip {
        version: String,
    },
    /// Download the image and write it to the other slot.
    Download {
        spec: OsSpec,
        slot: Slot,
    },
    /// Install the written slot's kernel and loader entry, mark `testing`, boot it once.
    TryBoot {
        slot: Slot,
    },
    /// First start on the new slot: the deadline starts now.
    Arrived,
    /// On the new slot, not healthy yet, deadline not passed.
    Wait,
    /// Healthy on the new slot: make it the default.
    Commit {
        slot: Slot,
    },
    /// Not healthy within the deadline: give up and boot the old default.
    FailAndReboot {
        reason: String,
    },
    /// The new slot did not come up (or runs something else).
    Fail {
        reason: String,
    },
}

/// The next step of an update: pure, so every transition is tested on plain values.
pub fn plan(
    st: &OsState,
    desired: Option<&OsSpec>,
    running: &Running,
    health: Health,
    now_ms: i64,
    deadline: Duration,
) -> Step {
    if st.state == Phase::Testing {
        let target = st.from_slot.map(Slot::other);
        if target != Some(running.slot) {
            return Step::Fail {
                reason: format!(
                    "the new slot did not come up: slot {} with {} runs again",
                    running.slot, running.version
                ),
            };
        }
        if running.version != st.target_version {
            return Step::Fail {
                reason: format!(
                    "slot {} came up with version {}, not {}",
                    running.slot, running.version, st.target_version
                ),
            };
        }
        if st.up_since_ms == 0 {
            return Step::Arrived;
        }
        let central_ok = !st.central_was_reachable || health.central_reachable;
        if health.profile_healthy && central_ok {
            return Step::Commit { slot: running.slot };
        }
        let deadline_ms = i64::try_from(deadline.as_millis()).unwrap_or(i64::MAX);
        if now_ms.saturating_sub(st.up_since_ms) <= deadline_ms {
            return Step::Wait;
        }
        let why = match (health.profile_healthy, central_ok) {
            (false, false) => "the profile is not healthy and central does not answer",
            (false, true) => "the profile is not healthy",
            _ => "central does not answer (it did before the update)",
        };
        return Step::FailAndReboot {
            reason: format!(
                "not healthy within {}s on slot {}: {why}",
                deadline.as_secs(),
                running.slot
            ),
        };
    }
    let Some(want) = desired else { return Step::Nothing };
    if want.version == running.version {
        return match st.state {
            Phase::Idle | Phase::Committed if st.target_version == running.version => Step::Nothing,
            _ => Step::Settle,
        };
    }
    if st.failed_versions.contains(&want.version) {
        return if st.skip_reported == want.version {
            Step::Nothing
        } else {
            Step::ReportSkip { version: want.version.clone() }
        };
    }
    let same_target = st.target_version == want.version && st.sha256 == want.sha256;
    match st.state {
        Phase::Written if same_target => Step::TryBoot { slot: running.slot.other() },
        _ => Step::Download { spec: want.clone(), slot: running.slot.other() },
    }
}

/// The machine an update changes: one trait, with [`real::RealOsHost`] and
/// [`memory::MemOsHost`].
pub trait OsHost: Send + Sync + 'static {
    /// The running version and slot; `None` when this is not the store OS image.
    fn running(&self) -> Option<Running>;
    /// Downloads `url` (resuming a partial download) and checks its sha256; returns the file.
    fn fetch(&self, url: &str, sha256: &str) -> impl Future<Output = Result<PathBuf>> + Send;
    /// Writes the image to the slot's partition, durably.
    fn write_slot(&self, image: &Path, slot: Slot) -> impl Future<Output = Result<()>> + Send;
    /// Copies the slot's kernel and initrd to the ESP and writes its loader entry.
    fn install_boot(&self, slot: Slot, version: &str) -> impl Future<Output = Result<()>> + Send;
    /// The next boot (only) is this slot.
    fn boot_once(&self, slot: Slot) -> Result<()>;
    /// Every boot from now on is this slot.
    fn commit(&self, slot: Slot) -> Result<()>;
    /// Removes downloaded images that are no longer needed.
    fn clean(&self);
    fn reboot(&self) -> impl Future<Output = Result<()>> + Send;
}

/// Where an update's events go: (kind, message).
pub type EventSink = Arc<dyn Fn(&str, String) + Send + Sync>;

/// Carries out update steps through a host and keeps `os.json`.
pub struct OsUpdater<H: OsHost> {
    host: H,
    path: PathBuf,
    clock: SharedClock,
    deadline: Duration,
    events: EventSink,
    state: OsState,
}

/// The state file's path under nodeagent's state folder.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("os.json")
}

/// The sentence for a profile with `node.os` on a machine that does not run the store OS.
pub fn unsupported(version: &str) -> String {
    format!(
        "node.os: this server does not run the Backroom store OS image (no /usr/lib/backroom/os-version \
         or no backroom.slot= on the kernel command line), so it cannot update to {version}; \
         remove node.os from this store's profile, or install the store OS image"
    )
}

impl<H: OsHost> OsUpdater<H> {
    /// Reads `os.json` (a missing file is a fresh box).
    pub fn open(
        host: H,
        state_dir: &Path,
        clock: SharedClock,
        deadline: Duration,
        events: EventSink,
    ) -> Result<Self> {
        let path = state_path(state_dir);
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|source| Error::StateFile { path: path.clone(), source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OsState::default(),
            Err(source) => return Err(Error::Io { what: "read", path, source }),
        };
        Ok(OsUpdater { host, path, clock, deadline, events, state })
    }

    pub fn state(&self) -> &OsState {
        &self.state
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    fn save(&mut self, st: OsState) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&st)
            .map_err(|source| Error::Encode { what: "the OS update state".into(), source })?;
        save(&self.path, &bytes)?;
        self.state = st;
        Ok(())
    }

    fn event(&self, kind: &str, message: String) {
        tracing::info!(kind, "{message}");
        (self.events)(kind, message);
    }

    /// Marks the update failed (the version joins the failed set) and tells it.
    fn fail(&mut self, reason: String) -> Result<()> {
        let mut st = self.state.clone();
        let version = st.target_version.clone();
        st.state = Phase::Failed;
        st.reason = reason.clone();
        st.failed_versions.insert(version.clone());
        st.skip_reported = version.clone();
        st.since_ms = self.clock.now_ms();
        self.save(st)?;
        self.event(
            "os_update_failed",
            format!("OS update to {version} failed: {reason}; it is not tried again until node.os.version changes"),
        );
        Ok(())
    }

    /// Plans and carries out one step; returns it. A step that fails (a download, a write)
    /// marks the update failed for this version.
    pub async fn step(&mut self, desired: Option<&OsSpec>, health: Health) -> Result<Step> {
        let Some(running) = self.host.running() else {
            return match desired {
                Some(d) => Err(Error::Invalid(unsupported(&d.version))),
                None => Ok(Step::Nothing),
            };
        };
        let now = self.clock.now_ms();
        let step = plan(&self.state, desired, &running, health, now, self.deadline);
        match &step {
            Step::Nothing | Step::Wait => {}
            Step::Settle => {
                let mut st = self.state.clone();
                st.state = if st.target_version == running.version && st.state == Phase::Committed {
                    Phase::Committed
                } else {
                    Phase::Idle
                };
                st.target_version = running.version.clone();
                st.reason.clear();
                st.since_ms = now;
                self.save(st)?;
                self.host.clean();
            }
            Step::ReportSkip { version } => {
                let mut st = self.state.clone();
                st.skip_reported = version.clone();
                self.save(st)?;
                self.event(
                    "os_update_failed",
                    format!("OS version {version} failed on this server before: not tried again until node.os.version changes"),
                );
            }
            Step::Download { spec, slot } => {
                let st = OsState {
                    state: Phase::Downloading,
                    target_version: spec.version.clone(),
                    image: spec.image.clone(),
                    sha256: spec.sha256.clone(),
                    from_slot: Some(running.slot),
                    from_version: running.version.clone(),
                    failed_versions: self.state.failed_versions.clone(),
                    skip_reported: self.state.skip_reported.clone(),
                    since_ms: now,
                    started_ms: now,
                    ..Default::default()
                };
                self.save(st)?;
                self.event(
                    "os_update_downloading",
                    format!(
                        "OS update to {}: downloading {} (running {} on slot {})",
                        spec.version, spec.image, running.version, running.slot
                    ),
                );
                let file = match self.host.fetch(&spec.image, &spec.sha256).await {
                    Ok(file) => file,
                    // What the server sent is not the image: trying again fetches it again.
                    Err(e @ Error::OsImageMismatch { .. }) => {
                        self.fail(backroom_daemon::chain(&e))?;
                        return Ok(step);
                    }
                    // The network: the next round resumes the download.
                    Err(e) => return Err(e),
                };
                if let Err(e) = self.host.write_slot(&file, *slot).await {
                    self.fail(backroom_daemon::chain(&e))?;
                    return Ok(step);
                }
                let mut st = self.state.clone();
                st.state = Phase::Written;
                st.since_ms = self.clock.now_ms();
                self.save(st)?;
                self.event(
                    "os_update_written",
                    format!("OS update to {}: written to slot {slot}", spec.version),
                );
            }
            Step::TryBoot { slot } => {
                let version = self.state.target_version.clone();
                if let Err(e) = self.host.install_boot(*slot, &version).await {
                    self.fail(backroom_daemon::chain(&e))?;
                    return Ok(step);
                }
                let mut st = self.state.clone();
                st.state = Phase::Testing;
                st.from_slot = Some(running.slot);
                st.from_version = running.version.clone();
                st.central_was_reachable = health.central_reachable;
                st.up_since_ms = 0;
                st.since_ms = self.clock.now_ms();
                self.save(st)?;
                if let Err(e) = self.host.boot_once(*slot) {
                    self.fail(backroom_daemon::chain(&e))?;
                    return Ok(step);
                }
                self.event(
                    "os_update_testing",
                    format!("OS update to {version}: rebooting into slot {slot} once to test it (slot {} with {} stays the default until it is healthy)", running.slot, running.version),
                );
                self.host.reboot().await?;
            }
            Step::Arrived => {
                let mut st = self.state.clone();
                st.up_since_ms = now;
                self.save(st)?;
                self.event(
                    "os_update_testing",
                    format!("OS update to {}: running on slot {}; waiting up to {}s for the node to be healthy", running.version, running.slot, self.deadline.as_secs()),
                );
            }
            Step::Commit { slot } => {
                self.host.commit(*slot)?;
                let mut st = self.state.clone();
                st.state = Phase::Committed;
                st.reason.clear();
                st.since_ms = now;
                self.save(st)?;
                self.host.clean();
                self.event(
                    "os_update_committed",
                    format!("OS update to {}: healthy on slot {slot}, which is now the default (was {} on slot {})", running.version, st_from(&self.state), slot.other()),
                );
            }
            Step::FailAndReboot { reason } => {
                self.fail(reason.clone())?;
                self.host.reboot().await?;
            }
            Step::Fail { reason } => self.fail(reason.clone())?,
        }
        Ok(step)
    }
}

fn st_from(st: &OsState) -> &str {
    &st.from_version
}
