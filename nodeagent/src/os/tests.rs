#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backroom_daemon::clock::ManualClock;
use backroom_profiles::OsSpec;

use super::memory::MemOsHost;
use super::*;

const OLD: &str = "2026.11.1";
const NEW: &str = "2026.12.1";
const URL: &str = "https://central.example:7443/os/new.root";
const DEADLINE: Duration = Duration::from_secs(600);

fn sha(c: char) -> String {
    c.to_string().repeat(64)
}

fn spec(version: &str) -> OsSpec {
    OsSpec { version: version.into(), image: URL.into(), sha256: sha('a') }
}

const HEALTHY: Health = Health { profile_healthy: true, central_reachable: true };
const WAN_DOWN: Health = Health { profile_healthy: true, central_reachable: false };
const SICK: Health = Health { profile_healthy: false, central_reachable: true };

struct Rig {
    host: MemOsHost,
    clock: ManualClock,
    dir: tempfile::TempDir,
    events: Arc<Mutex<Vec<(String, String)>>>,
}

impl Rig {
    fn new() -> Self {
        let host = MemOsHost::store_os(OLD, Slot::A);
        host.serve(URL, &sha('a'), NEW);
        Rig {
            host,
            clock: ManualClock::new(1_000_000),
            dir: tempfile::tempdir().unwrap(),
            events: Default::default(),
        }
    }

    /// A fresh updater on the same state folder: what nodeagent does after a restart.
    fn updater(&self) -> OsUpdater<MemOsHost> {
        let ev = self.events.clone();
        let sink: EventSink =
            Arc::new(move |k: &str, m: String| ev.lock().unwrap().push((k.to_string(), m)));
        OsUpdater::open(
            self.host.clone(),
            self.dir.path(),
            Arc::new(self.clock.clone()),
            DEADLINE,
            sink,
        )
        .unwrap()
    }

    fn kinds(&self) -> Vec<String> {
        self.events.lock().unwrap().iter().map(|(k, _)| k.clone()).collect()
    }

    /// Downloads, writes and reboots into the new slot once.
    async fn to_testing(&self, health: Health) -> OsUpdater<MemOsHost> {
        let mut u = self.updater();
        let d = spec(NEW);
        assert!(matches!(u.step(Some(&d), health).await.unwrap(), Step::Download { .. }));
        assert_eq!(u.state().state, Phase::Written);
        assert!(matches!(u.step(Some(&d), health).await.unwrap(), Step::TryBoot { slot: Slot::B }));
        assert_eq!(u.state().state, Phase::Testing);
        assert_eq!(self.host.with(|b| b.reboots), 1);
        u
    }
}

#[tokio::test]
async fn no_desired_os_does_nothing() {
    let r = Rig::new();
    let mut u = r.updater();
    assert_eq!(u.step(None, HEALTHY).await.unwrap(), Step::Nothing);
    assert!(r.host.with(|b| b.log.is_empty()));
    assert!(!state_path(r.dir.path()).exists());
}

#[tokio::test]
async fn the_running_version_settles_to_idle_once() {
    let r = Rig::new();
    let mut u = r.updater();
    assert_eq!(u.step(Some(&spec(OLD)), HEALTHY).await.unwrap(), Step::Settle);
    assert_eq!(u.state().state, Phase::Idle);
    assert_eq!(u.step(Some(&spec(OLD)), HEALTHY).await.unwrap(), Step::Nothing);
    assert_eq!(r.host.with(|b| b.fetches), 0);
}

#[tokio::test]
async fn an_update_downloads_writes_boots_once_and_commits_when_healthy() {
    let r = Rig::new();
    let _ = r.to_testing(HEALTHY).await;
    assert_eq!(
        r.host.with(|b| b.log.clone()),
        [
            format!("fetch {URL}"),
            format!("write {NEW} to B"),
            format!("install {NEW} on B"),
            "one-shot B".to_string(),
            "reboot".to_string()
        ]
    );
    assert_eq!(r.host.with(|b| b.default), Some(Slot::A), "not committed before the test");
    r.host.boot();
    // nodeagent starts again on the new slot and resumes from os.json.
    let mut u = r.updater();
    let st = u.state().clone();
    assert_eq!((st.from_slot, st.from_version.as_str()), (Some(Slot::A), OLD));
    assert_eq!(u.step(Some(&spec(NEW)), SICK).await.unwrap(), Step::Arrived);
    assert_eq!(u.step(Some(&spec(NEW)), SICK).await.unwrap(), Step::Wait);
    r.clock.advance(Duration::from_secs(60));
    assert_eq!(u.step(Some(&spec(NEW)), HEALTHY).await.unwrap(), Step::Commit { slot: Slot::B });
    assert_eq!(u.state().state, Phase::Committed);
    assert_eq!(r.host.with(|b| b.default), Some(Slot::B));
    assert_eq!(u.step(Some(&spec(NEW)), HEALTHY).await.unwrap(), Step::Nothing);
    assert_eq!(
        r.kinds(),
        [
            "os_update_downloading",
            "os_update_written",
            "os_update_testing",
            "os_update_testing",
            "os_update_committed"
        ]
    );
    let msgs = r.events.lock().unwrap().clone();
    assert!(msgs.iter().all(|(_, m)| m.contains(NEW)), "{msgs:?}");
}

#[tokio::test]
async fn unhealthy_past_the_deadline_fails_and_reboots_into_the_old_default() {
    let r = Rig::new();
    let _ = r.to_testing(HEALTHY).await;
    r.host.boot();
    let mut u = r.updater();
    assert_eq!(u.step(Some(&spec(NEW)), SICK).await.unwrap(), Step::Arrived);
    r.clock.advance(DEADLINE);
    assert_eq!(u.step(Some(&spec(NEW)), SICK).await.unwrap(), Step::Wait);
    r.clock.advance(Duration::from_secs(1));
    let step = u.step(Some(&spec(NEW)), SICK).await.unwrap();
    assert!(
        matches!(&step, Step::FailAndReboot { reason } if reason.contains("profile is not healthy")),
        "{step:?}"
    );
    assert_eq!(u.state().state, Phase::Failed);
    assert!(u.state().failed_versions.contains(NEW));
    assert_eq!(r.host.with(|b| (b.reboots, b.default)), (2, Some(Slot::A)));
    r.host.boot();
    assert_eq!(r.host.running().unwrap().slot, Slot::A, "the one-shot was spent");
    // The failed version is not tried again, and that is said once.
    let mut u = r.updater();
    assert_eq!(u.step(Some(&spec(NEW)), HEALTHY).await.unwrap(), Step::Nothing);
    assert_eq!(r.host.with(|b| b.fetches), 1);
    assert_eq!(r.kinds().last().unwrap(), "os_update_failed");
}

#[tokio::test]
async fn a_store_whose_wan_was_down_does_not_roll_back_for_central() {
    let r = Rig::new();
    let _ = r.to_testing(WAN_DOWN).await;
    r.host.boot();
    let mut u = r.updater();
    assert!(!u.state().central_was_reachable);
    assert_eq!(u.step(Some(&spec(NEW)), WAN_DOWN).await.unwrap(), Step::Arrived);
    assert_eq!(u.step(Some(&spec(NEW)), WAN_DOWN).await.unwrap(), Step::Commit { slot: Slot::B });
}

#[tokio::test]
async fn central_reachable_before_must_answer_after() {
    let r = Rig::new();
    let _ = r.to_testing(HEALTHY).await;
    r.host.boot();
    let mut u = r.updater();
    assert_eq!(u.step(Some(&spec(NEW)), WAN_DOWN).await.unwrap(), Step::Arrived);
    assert_eq!(u.step(Some(&spec(NEW)), WAN_DOWN).await.unwrap(), Step::Wait);
    r.clock.advance(DEADLINE + Duration::from_secs(1));
    let step = u.step(Some(&spec(NEW)), WAN_DOWN).await.unwrap();
    assert!(
        matches!(&step, Step::FailAndReboot { reason } if reason.contains("central does not answer")),
        "{step:?}"
    );
}

#[tokio::test]
async fn the_new_slot_not_coming_up_is_a_failure_on_the_old_slot() {
    let r = Rig::new();
    let _ = r.to_testing(HEALTHY).await;
    r.host.with(|b| b.new_slot_broken = true);
    r.host.boot();
    assert_eq!(r.host.running().unwrap().slot, Slot::A);
    let mut u = r.updater();
    let step = u.step(Some(&spec(NEW)), HEALTHY).await.unwrap();
    assert!(
        matches!(&step, Step::Fail { reason } if reason.contains("the new slot did not come up")),
        "{step:?}"
    );
    assert_eq!(u.state().describe().split(':').next(), Some("failed"));
    assert!(u.state().failed_versions.contains(NEW));
    assert_eq!(r.host.with(|b| b.reboots), 1, "no reboot: the old slot runs");
}

#[tokio::test]
async fn a_failed_version_is_not_retried_until_the_version_changes() {
    let r = Rig::new();
    let mut u = r.updater();
    let mut bad = spec(NEW);
    bad.sha256 = sha('b');
    let step = u.step(Some(&bad), HEALTHY).await.unwrap();
    assert!(matches!(step, Step::Download { .. }));
    assert_eq!(u.state().state, Phase::Failed);
    assert!(u.state().reason.contains(&sha('a')) && u.state().reason.contains(&sha('b')));
    // Reported with the failure itself; not again.
    assert_eq!(u.step(Some(&bad), HEALTHY).await.unwrap(), Step::Nothing);
    assert_eq!(
        u.step(Some(&spec(NEW)), HEALTHY).await.unwrap(),
        Step::Nothing,
        "same version, other sha256"
    );
    assert_eq!(r.host.with(|b| b.fetches), 1);
    // A new version is tried.
    r.host.serve("https://central.example:7443/os/newer.root", &sha('c'), "2026.12.2");
    let newer = OsSpec {
        version: "2026.12.2".into(),
        image: "https://central.example:7443/os/newer.root".into(),
        sha256: sha('c'),
    };
    assert!(matches!(u.step(Some(&newer), HEALTHY).await.unwrap(), Step::Download { .. }));
    assert_eq!(u.state().state, Phase::Written);
}

#[tokio::test]
async fn a_failed_version_from_an_earlier_run_is_reported_once() {
    let r = Rig::new();
    let st = OsState {
        state: Phase::Idle,
        failed_versions: [NEW.to_string()].into(),
        ..Default::default()
    };
    std::fs::write(state_path(r.dir.path()), serde_json::to_vec(&st).unwrap()).unwrap();
    let mut u = r.updater();
    assert_eq!(
        u.step(Some(&spec(NEW)), HEALTHY).await.unwrap(),
        Step::ReportSkip { version: NEW.into() }
    );
    assert_eq!(u.step(Some(&spec(NEW)), HEALTHY).await.unwrap(), Step::Nothing);
    assert_eq!(r.updater().step(Some(&spec(NEW)), HEALTHY).await.unwrap(), Step::Nothing);
    assert_eq!(r.kinds(), ["os_update_failed"]);
}

#[tokio::test]
async fn a_broken_download_is_retried_not_failed() {
    let r = Rig::new();
    r.host.with(|b| b.fetch_breaks = true);
    let mut u = r.updater();
    assert!(u.step(Some(&spec(NEW)), HEALTHY).await.is_err());
    assert_eq!(u.state().state, Phase::Downloading);
    // After a restart too.
    let mut u = r.updater();
    assert!(matches!(u.step(Some(&spec(NEW)), HEALTHY).await.unwrap(), Step::Download { .. }));
    assert_eq!(u.state().state, Phase::Written);
}

#[tokio::test]
async fn written_resumes_with_the_boot_after_a_restart() {
    let r = Rig::new();
    let mut u = r.updater();
    u.step(Some(&spec(NEW)), HEALTHY).await.unwrap();
    let mut u = r.updater();
    assert_eq!(u.step(Some(&spec(NEW)), HEALTHY).await.unwrap(), Step::TryBoot { slot: Slot::B });
    assert_eq!(r.host.with(|b| b.fetches), 1);
}

#[tokio::test]
async fn not_the_store_os_refuses_node_os() {
    let r = Rig::new();
    r.host.with(|b| b.running = None);
    let mut u = r.updater();
    let e = u.step(Some(&spec(NEW)), HEALTHY).await.unwrap_err();
    assert!(e.to_string().contains("does not run the Backroom store OS image"), "{e}");
    assert_eq!(u.step(None, HEALTHY).await.unwrap(), Step::Nothing);
}

#[test]
fn the_state_file_round_trips() {
    let st = OsState {
        state: Phase::Testing,
        target_version: NEW.into(),
        from_slot: Some(Slot::A),
        from_version: OLD.into(),
        failed_versions: ["x".to_string()].into(),
        central_was_reachable: true,
        up_since_ms: 5,
        ..Default::default()
    };
    let json = serde_json::to_string(&st).unwrap();
    assert!(json.contains(r#""state":"testing""#) && json.contains(r#""from_slot":"a""#), "{json}");
    assert_eq!(serde_json::from_str::<OsState>(&json).unwrap(), st);
}
