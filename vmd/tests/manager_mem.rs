//! The manager's logic over the in-memory hypervisor, storage and NICs: plan, restart policy
//! and backoff, parking, rollback, refusals. (The same paths run against real libvirt in
//! `lifecycle.rs`.)

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backroom_vmd::hypervisor::{Hypervisor, MemHypervisor};
use backroom_vmd::layout::Layout;
use backroom_vmd::nics::MemNics;
use backroom_vmd::storage::MemStorage;
use backroom_vmd::virt_type::VirtTypeSetting;
use backroom_vmd::{Config, Deps, Error, VmState, Vmd};

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

fn vmd() -> (Vmd, Arc<MemHypervisor>, Arc<MemStorage>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let hv = Arc::new(MemHypervisor::default());
    let storage = Arc::new(MemStorage::default());
    let deps = Deps {
        hypervisor: hv.clone(),
        storage: storage.clone(),
        nics: Arc::new(MemNics::default()),
    };
    let cfg = Config {
        virt_type: VirtTypeSetting::Qemu,
        shutdown_timeout: Duration::from_millis(300),
        settle: Duration::from_millis(300),
        backoff_first: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        resync_every: Duration::from_secs(3600),
        ..Config::default()
    };
    let v = Vmd::new(deps, Layout::new(dir.path()), cfg).unwrap();
    (v, hv, storage, dir)
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
async fn crash_restarts_with_backoff_and_never_parks() {
    let (v, hv, _s, _d) = vmd();
    let sup = v.supervise();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    hv.crash("bk-nvr");
    let s = wait_for(&v, "nvr", |s| s.restarts == 1 && s.state == VmState::Running).await;
    assert_eq!(s.state, VmState::Running);
    hv.crash("bk-nvr");
    wait_for(&v, "nvr", |s| s.restarts == 2).await;

    v.apply(&profile("/img/a.qcow2", "never", false)).await.unwrap();
    hv.crash("bk-nvr");
    let s = wait_for(&v, "nvr", |s| s.state == VmState::Crashed).await;
    assert!(s.reason.contains("restart policy never"), "{}", s.reason);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(v.status("nvr").unwrap().state, VmState::Crashed, "never must not restart");
    // Parked: an apply leaves it stopped; an operator's start brings it back.
    let lines = v.apply(&profile("/img/a.qcow2", "never", false)).await.unwrap();
    assert_eq!(lines, vec!["nvr: unchanged"]);
    assert_eq!(v.start_vm("nvr").await.unwrap().state, VmState::Running);
    sup.stop();
}

#[tokio::test]
async fn operator_stop_is_not_undone_by_policy() {
    let (v, hv, _s, _d) = vmd();
    let sup = v.supervise();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    assert_eq!(v.stop_vm("nvr").await.unwrap().state, VmState::Stopped);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(v.status("nvr").unwrap().state, VmState::Stopped);
    assert!(hv.calls().iter().filter(|c| c.as_str() == "start bk-nvr").count() == 1);
    sup.stop();
}

#[tokio::test]
async fn a_failed_update_rolls_back_to_the_old_definition() {
    let (v, hv, storage, _d) = vmd();
    v.apply(&profile("/img/a.qcow2", "always", false)).await.unwrap();
    let old = hv.xml("bk-nvr").unwrap();
    hv.failing.lock().unwrap().push("bk-nvr".into());
    let e = v.apply(&profile("/img/b.qcow2", "always", false)).await.unwrap_err();
    let Error::Failed { failures, .. } = &e else { panic!("{e}") };
    assert!(failures[0].contains("update rolled back"), "{failures:?}");
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
