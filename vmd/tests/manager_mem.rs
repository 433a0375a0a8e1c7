//! The manager's logic over the in-memory hypervisor, storage and NICs: plan, restart policy
//! and backoff, parking, rollback, refusals. (The same paths run against real libvirt in
//! `lifecycle.rs`.)

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backroom_daemon::{Backoff, ManualClock};
use backroom_vmd::hypervisor::{Hypervisor, MemHypervisor};
use backroom_vmd::layout::Layout;
use backroom_vmd::nics::MemNics;
use backroom_vmd::storage::MemStorage;
use backroom_vmd::virt_type::VirtTypeSetting;
use backroom_vmd::{Config, Deps, Error, VmEvent, VmState, Vmd};
use tokio::sync::broadcast;

fn profile(image: &str, restart: &str, extra_vm: bool) -> backroom_profiles::Rendered {
    let mut t = format!(
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: t}}\n\
         node: {{reserved: {{cpus: 1, memory: 1Gi}}, capacity: {{cpus: 4, memory: 8Gi}}}}\n\
         workloads:\n  - {{name: nvr, kind: vm, cpus: 1, memory: 1Gi, restart: {restart}, boot: {{disk: {{image: {image}}}}}, disks: [{{name: rec, size: 1Gi}}]}}\n"
    );
    if extra_vm {
        t.push_str("  - {name: pos, kind: vm, cpus: 1, memory: 1Gi, boot: {disk: {image: /img/pos.qcow2}}}\n");
    }
    backroom_profiles::render_str("t.yaml", &t).unwrap()
}

type Parts = (Vmd, Arc<MemHypervisor>, Arc<MemStorage>, tempfile::TempDir);

fn config() -> Config {
    Config {
        virt_type: VirtTypeSetting::Qemu,
        shutdown_timeout: Duration::from_millis(300),
        settle: Duration::from_millis(300),
        restart_backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(400)),
        resync_every: Duration::from_secs(3600),
        ..Config::default()
    }
}

fn build(cfg: Config, clock: Option<ManualClock>) -> Parts {
    let dir = tempfile::tempdir().unwrap();
    let hv = Arc::new(MemHypervisor::default());
    let storage = Arc::new(MemStorage::default());
    let deps = Deps {
        hypervisor: hv.clone(),
        storage: storage.clone(),
        nics: Arc::new(MemNics::default()),
    };
    let v = match clock {
        Some(c) => Vmd::with_clock(deps, Layout::new(dir.path()), cfg, Arc::new(c)).unwrap(),
        None => Vmd::new(deps, Layout::new(dir.path()), cfg).unwrap(),
    };
    (v, hv, storage, dir)
}

/// On the system clock, with short timeouts.
fn vmd() -> Parts {
    build(config(), None)
}

/// On a manual clock, with the daemon's real restart backoff (1s, 2s, 4s … 5 min) and a run of
/// one minute resetting it.
fn vmd_on(clock: &ManualClock) -> Parts {
    let cfg = Config {
        restart_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
        stable_after: Duration::from_secs(60),
        ..config()
    };
    build(cfg, Some(clock.clone()))
}

/// Lets every task that can run do its work (timers that fired, the in-memory hypervisor's
/// blocking calls). Whether that is long enough is shown in each test by a positive control:
/// the same wait that sees nothing before a deadline sees the effect right after it.
async fn settle() {
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn starts(hv: &MemHypervisor) -> usize {
    hv.calls().iter().filter(|c| c.as_str() == "start bk-nvr").count()
}

async fn wait_for(
    v: &Vmd,
    name: &str,
    f: impl Fn(&backroom_vmd::VmStatus) -> bool,
) -> backroom_vmd::VmStatus {
    for _ in 0..100 {
        let s = v.status(name).unwrap();
        if f(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}: condition not met: {:?}", v.status(name));
}

/// The failing/recovered events seen so far.
fn problem_events(rx: &mut broadcast::Receiver<VmEvent>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if e.kind == "failing" || e.kind == "recovered" {
            out.push((e.kind, e.subject));
        }
    }
    out
}

#[tokio::test]
async fn apply_creates_then_keeps_then_retags() {
    let (v, hv, storage, _d) = vmd();
    let lines = v.apply(&profile("/img/a.qcow2", "always", true)).await.unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("nvr: defined and started"), "{lines:?}");
    assert_eq!(v.status("nvr").unwrap().state, VmState::Running);
    assert!(storage.files.lock().unwrap().keys().any(|p| p.ends_with("vms/nvr/disk-rec.qcow2")));
    let lines = v.apply(&profile("/img/a.qcow2", "always", true)).await.unwrap();
    assert_eq!(lines, vec!["nvr: unchanged", "pos: unchanged"]);
    // Removing pos from the profile removes its domain.
    let lines = v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    assert!(lines.iter().any(|l| l.starts_with("pos: shut down, undefined")), "{lines:?}");
    assert!(hv.get("bk-pos").unwrap().is_none());
    assert!(v.status("pos").is_err());
}

#[tokio::test]
async fn crash_restarts_after_the_backoff_on_the_manual_clock() {
    let clock = ManualClock::new(1_000_000_000);
    let (v, hv, _s, _d) = vmd_on(&clock);
    let sup = v.supervise();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    hv.crash("bk-nvr");
    let s = wait_for(&v, "nvr", |s| s.state == VmState::Crashed).await;
    assert!(s.reason.contains("restarting in 1s"), "{}", s.reason);
    // Not before the backoff: 999 ms later it is still down…
    clock.advance(Duration::from_millis(999));
    settle().await;
    assert_eq!((v.status("nvr").unwrap().restarts, starts(&hv)), (0, 1));
    // …and the same wait after one more millisecond sees it restarted.
    clock.advance(Duration::from_millis(1));
    settle().await;
    let s = v.status("nvr").unwrap();
    assert_eq!((s.state, s.restarts, starts(&hv)), (VmState::Running, 1, 2));

    // A second crash soon after: the delay doubles.
    clock.advance(Duration::from_secs(5));
    hv.crash("bk-nvr");
    let s = wait_for(&v, "nvr", |s| s.state == VmState::Crashed).await;
    assert!(s.reason.contains("restarting in 2s"), "{}", s.reason);
    clock.advance(Duration::from_millis(1999));
    settle().await;
    assert_eq!(v.status("nvr").unwrap().restarts, 1);
    clock.advance(Duration::from_millis(1));
    settle().await;
    assert_eq!(v.status("nvr").unwrap().restarts, 2);

    // After a minute of running, the backoff starts over.
    clock.advance(Duration::from_secs(61));
    hv.crash("bk-nvr");
    let s = wait_for(&v, "nvr", |s| s.state == VmState::Crashed).await;
    assert!(s.reason.contains("restarting in 1s"), "{}", s.reason);
    clock.advance(Duration::from_secs(1));
    wait_for(&v, "nvr", |s| s.restarts == 3 && s.state == VmState::Running).await;

    // Restart policy never: crashed and parked. Ten minutes (twice the longest backoff), with
    // the same wait that saw every restart above, bring no restart.
    v.apply(&profile("/img/a.qcow2", "never", false)).await.unwrap();
    hv.crash("bk-nvr");
    let s = wait_for(&v, "nvr", |s| s.state == VmState::Crashed).await;
    assert!(s.reason.contains("restart policy never"), "{}", s.reason);
    let before = starts(&hv);
    clock.advance(Duration::from_secs(600));
    settle().await;
    assert_eq!(v.status("nvr").unwrap().state, VmState::Crashed, "never must not restart");
    assert_eq!(starts(&hv), before);
    // Parked: an apply leaves it stopped; an operator's start brings it back.
    let lines = v.apply(&profile("/img/a.qcow2", "never", false)).await.unwrap();
    assert_eq!(lines, vec!["nvr: unchanged"]);
    assert_eq!(v.start_vm("nvr").await.unwrap().state, VmState::Running);
    sup.stop();
}

#[tokio::test]
async fn operator_stop_is_not_undone_by_policy() {
    let clock = ManualClock::new(1_000_000_000);
    let (v, hv, _s, _d) = vmd_on(&clock);
    let sup = v.supervise();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    // Positive control: on this clock, with this wait, a stop the policy owns is undone.
    hv.crash("bk-nvr");
    wait_for(&v, "nvr", |s| s.state == VmState::Crashed).await;
    clock.advance(Duration::from_secs(1));
    settle().await;
    assert_eq!(v.status("nvr").unwrap().state, VmState::Running);
    let before = starts(&hv);
    // An operator's stop is not, however long it lasts.
    assert_eq!(v.stop_vm("nvr").await.unwrap().state, VmState::Stopped);
    clock.advance(Duration::from_secs(600));
    settle().await;
    assert_eq!(v.status("nvr").unwrap().state, VmState::Stopped);
    assert_eq!(starts(&hv), before);
    sup.stop();
}

#[tokio::test]
async fn a_restart_that_keeps_failing_is_one_problem_until_it_works() {
    let clock = ManualClock::new(1_000_000_000);
    let (v, hv, _s, _d) = vmd_on(&clock);
    let sup = v.supervise();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    let mut events = v.subscribe();
    hv.failing.lock().unwrap().push("bk-nvr".into());
    hv.crash("bk-nvr");
    wait_for(&v, "nvr", |s| s.state == VmState::Crashed).await;
    // Tries at 1s, then 2s and 4s later: three failures, one event.
    for wait in [1, 2, 4] {
        clock.advance(Duration::from_secs(wait));
        settle().await;
    }
    assert_eq!(starts(&hv), 4, "the restart policy tried three times");
    assert_eq!(problem_events(&mut events), [("failing".to_string(), "VM nvr".to_string())]);
    let s = v.status("nvr").unwrap();
    assert_eq!(s.state, VmState::Failed);
    assert!(s.reason.contains("restart failed") && s.reason.contains("fails on purpose"), "{s:?}");
    let p = v.problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].subject.as_str(), p[0].failures), ("VM nvr", 3));
    assert!(p[0].message.contains("fails on purpose"), "the whole chain: {}", p[0].message);
    // Fixed: the next try works, and says so once.
    hv.failing.lock().unwrap().clear();
    clock.advance(Duration::from_secs(8));
    settle().await;
    assert_eq!(v.status("nvr").unwrap().state, VmState::Running);
    assert_eq!(problem_events(&mut events), [("recovered".to_string(), "VM nvr".to_string())]);
    assert!(v.problems().is_empty());
    sup.stop();
}

#[tokio::test]
async fn a_broken_event_stream_is_one_problem_and_a_resync_follows_its_recovery() {
    let clock = ManualClock::new(1_000_000_000);
    let (v, hv, _s, _d) = vmd_on(&clock);
    let sup = v.supervise();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    let mut events = v.subscribe();
    *hv.events_broken.lock().unwrap() = Some("the connection to libvirtd was lost".into());
    for _ in 0..5 {
        clock.advance(Duration::from_secs(1));
        settle().await;
    }
    assert_eq!(
        problem_events(&mut events),
        [("failing".to_string(), "libvirt events".to_string())]
    );
    let p = v.problems();
    assert_eq!(p.len(), 1);
    assert!(p[0].failures >= 4, "{p:?}");
    assert!(p[0].message.contains("connection to libvirtd was lost"), "{}", p[0].message);
    // While events are lost, the VM stops: only a resync can tell. It follows the recovery at
    // once, not at the next resync an hour later.
    hv.shutdown("bk-nvr").unwrap();
    clock.advance(Duration::from_secs(1));
    settle().await;
    assert_eq!(v.status("nvr").unwrap().state, VmState::Running, "no event came, no resync yet");
    *hv.events_broken.lock().unwrap() = None;
    clock.advance(Duration::from_secs(1));
    settle().await;
    assert_eq!(
        problem_events(&mut events),
        [("recovered".to_string(), "libvirt events".to_string())]
    );
    assert!(v.problems().is_empty());
    let s = v.status("nvr").unwrap();
    assert_eq!(s.state, VmState::Stopped, "the resync after the recovery saw it: {s:?}");
    sup.stop();
}

#[tokio::test]
async fn a_failing_image_download_is_one_problem_until_an_apply_gets_it() {
    let (v, _hv, storage, _d) = vmd();
    let mut events = v.subscribe();
    storage.failing_images.lock().unwrap().push("/img/a.qcow2".into());
    for _ in 0..3 {
        let e = v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap_err();
        assert!(backroom_daemon::chain(&e).contains("HTTP 503"), "{e}");
    }
    assert_eq!(problem_events(&mut events), [("failing".to_string(), "image for nvr".to_string())]);
    assert_eq!(v.problems()[0].failures, 3);
    storage.failing_images.lock().unwrap().clear();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    assert_eq!(
        problem_events(&mut events),
        [("recovered".to_string(), "image for nvr".to_string())]
    );
    assert!(v.problems().is_empty());
}

#[tokio::test]
async fn a_failed_update_rolls_back_to_the_old_definition() {
    let (v, hv, storage, _d) = vmd();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    let old = hv.xml("bk-nvr").unwrap();
    hv.failing.lock().unwrap().push("bk-nvr".into());
    let e = v.apply(&profile("/img/b.qcow2", "always", false)).await.unwrap_err();
    let Error::Failed { failures, .. } = &e else { panic!("{e}") };
    assert!(failures[0].contains("rolled back"), "{failures:?}");
    assert!(failures[0].contains("fails on purpose"), "with its causes: {failures:?}");
    hv.failing.lock().unwrap().clear();
    assert_eq!(hv.xml("bk-nvr").unwrap(), old, "the old definition is back");
    let overlays: Vec<_> = storage
        .files
        .lock()
        .unwrap()
        .keys()
        .filter(|p| p.to_string_lossy().contains("/root-"))
        .cloned()
        .collect();
    assert_eq!(overlays.len(), 1, "the new overlay is gone, the old kept: {overlays:?}");
    assert!(old.contains(&overlays[0].display().to_string()));
    // And a good update goes through, removing the old overlay.
    let lines = v.apply(&profile("/img/b.qcow2", "always", false)).await.unwrap();
    assert_eq!(lines, vec!["nvr: updated"]);
    let overlays: Vec<_> = storage
        .files
        .lock()
        .unwrap()
        .keys()
        .filter(|p| p.to_string_lossy().contains("/root-"))
        .cloned()
        .collect();
    assert_eq!(overlays.len(), 1);
    assert!(!old.contains(&overlays[0].display().to_string()));
}

#[tokio::test]
async fn refusals_change_nothing() {
    let (v, hv, _s, _d) = vmd();
    // Does not fit: 8Gi capacity - 1Gi reserved < 7Gi + overhead.
    let t = "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: t}\n\
             node: {reserved: {cpus: 1, memory: 1Gi}, capacity: {cpus: 4, memory: 8Gi}}\n\
             workloads:\n  - {name: big, kind: vm, cpus: 1, memory: 7Gi, boot: {kernel: {kernel: /k}}}\n";
    let r = backroom_profiles::render_str("t.yaml", t).unwrap();
    let e = v.apply(&r).await.unwrap_err();
    assert!(matches!(e, Error::Admission(_)), "{e}");
    assert!(hv.list().unwrap().is_empty());
    // A domain of the same name that is not Backroom's.
    hv.define("<domain type='qemu'><name>bk-nvr</name></domain>").unwrap();
    let e = v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap_err();
    assert!(matches!(e, Error::Foreign(_)), "{e}");
    assert_eq!(hv.calls(), vec!["define bk-nvr"]);
    // A wrong revision.
    let r = profile("/img/a.qcow2", "always", false);
    let e = v.apply_text(&"0".repeat(64), &r.to_yaml()).await.unwrap_err();
    assert!(matches!(e, Error::RevisionMismatch { .. }), "{e}");
}

#[tokio::test]
async fn auto_address_without_netd_is_refused_clearly() {
    let (v, hv, _s, _d) = vmd();
    let t = "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: t}\n\
             node: {capacity: {cpus: 4, memory: 8Gi}}\n\
             network:\n  segments:\n    - {name: cctv, internal: true, subnet: 10.9.20.0/24, address: 10.9.20.1/24}\n\
             workloads:\n  - {name: nvr, kind: vm, cpus: 1, memory: 1Gi, boot: {kernel: {kernel: /k}}, networks: [{segment: cctv, address: auto}]}\n";
    let r = backroom_profiles::render_str("t.yaml", t).unwrap();
    let e = v.apply(&r).await.unwrap_err();
    assert!(e.to_string().contains("--netd-socket"), "{e}");
    assert!(hv.list().unwrap().is_empty());
}

#[tokio::test]
async fn adoption_takes_over_without_restarting() {
    let (v, hv, _s, d) = vmd();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    let calls = hv.calls().len();
    // A new vmd over the same libvirt and state folder.
    let deps = Deps {
        hypervisor: hv.clone(),
        storage: Arc::new(MemStorage::default()),
        nics: Arc::new(MemNics::default()),
    };
    let cfg = Config { virt_type: VirtTypeSetting::Qemu, ..Config::default() };
    let v2 = Vmd::new(deps, Layout::new(d.path()), cfg).unwrap();
    let lines = v2.adopt().await.unwrap();
    assert_eq!(lines, vec!["nvr: unchanged"]);
    assert_eq!(hv.calls().len(), calls, "adoption made no libvirt change");
    assert_eq!(v2.status("nvr").unwrap().state, VmState::Running);
}

/// What nodeagent's liveness check reads through vmd: whether vmd's libvirt connection works,
/// failing while libvirt's side is gone and clear again once the supervisor reconnected.
#[tokio::test]
async fn the_libvirt_connection_is_reported_while_it_is_down_and_clears_when_back() {
    let clock = ManualClock::new(1_000_000_000);
    let (v, hv, _s, _d) = vmd_on(&clock);
    let sup = v.supervise();
    settle().await;
    assert_eq!(v.libvirt_error(), None, "libvirt answers");
    *hv.events_broken.lock().unwrap() = Some("libvirtd closed the connection".into());
    clock.advance(Duration::from_secs(1));
    settle().await;
    let why = v.libvirt_error().expect("the lost libvirt connection is reported");
    assert!(why.contains("libvirtd closed the connection"), "{why}");
    *hv.events_broken.lock().unwrap() = None;
    clock.advance(Duration::from_secs(1));
    settle().await;
    assert_eq!(v.libvirt_error(), None, "back: reconnected, nothing reported");
    sup.stop();
}
