//! vmd against the real libvirtd and QEMU (TCG): boot from a disk image downloaded over HTTP
//! (with a broken download that is resumed) and from a kernel, cloud-init seed with the
//! addresses netd gave, NICs on bridges in `bkstore`, health, stop/start/restart, a QEMU
//! killed with SIGKILL and restarted by policy, vmd killed with SIGKILL and adopting its VMs,
//! an update, a rollback of an update that does not come up (and of one that is not healthy),
//! and teardown. One long test: each step needs the VMs the steps before made, and boots
//! under TCG are slow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backroom_profiles::naming;
use common::*;

// Generous: a TCG guest boots in 20-40 s alone, but a loaded CI host has been seen to need
// over 120 s for the boot after a rollback.
const BOOT: Duration = Duration::from_secs(240);

struct Names {
    seg: String,
    kern: String,
    disk: String,
    net: String,
}

fn profile(
    n: &Names,
    g: &Guest,
    disk_url: &str,
    disk_sha: &str,
    kern_marker: &str,
    health_port: u16,
) -> String {
    format!(
        r#"apiVersion: backroom/v1
kind: StoreProfile
metadata: {{name: vmd-lifecycle}}
node:
  reserved: {{cpus: 0.5, memory: 1Gi}}
  capacity: {{cpus: 8, memory: 16Gi}}
network:
  segments:
    - {{name: {seg}, internal: true, subnet: {net}.0/24, address: {net}.1/24}}
workloads:
  - name: {kern}
    kind: vm
    cpus: 1
    memory: 256Mi
    boot:
      kernel: {{kernel: {kernel}, initrd: {initrd}, cmdline: "console=ttyS0 quiet bk.acpi=1 bk.marker={kern_marker}"}}
    networks: [{{segment: {seg}, address: auto}}]
    cloud_init:
      user_data: |
        #cloud-config
        hostname: {kern}
    health: {{tcp: {{port: {health_port}}}, interval: 1s, timeout: 1s, failure_threshold: 2}}
    restart: always
  - name: {disk}
    kind: vm
    cpus: 1
    memory: 256Mi
    boot:
      disk: {{image: "{disk_url}", sha256: {disk_sha}, size: 1Gi}}
    disks: [{{name: data, size: 64Mi}}]
    networks: [{{segment: {seg}, address: auto}}]
    restart: on-failure
"#,
        seg = n.seg,
        net = n.net,
        kern = n.kern,
        disk = n.disk,
        kernel = g.kernel(),
        initrd = g.initrd(),
    )
}

/// Collects vmd's Events stream on a thread of its own, reconnecting after vmd restarts.
fn collect_events(socket: std::path::PathBuf) -> Arc<Mutex<Vec<(String, String, String)>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            for _ in 0..600 {
                if let Ok(mut c) = backroom_vmd::client::vmd_client(&socket).await
                    && let Ok(s) = c.events(backroom_api::vmd::EventsRequest {}).await
                {
                    let mut s = s.into_inner();
                    while let Ok(Some(e)) = s.message().await {
                        ev.lock().unwrap().push((e.vm, e.kind, e.message));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    });
    events
}

fn has_event(ev: &Mutex<Vec<(String, String, String)>>, vm: &str, kind: &str) -> bool {
    ev.lock().unwrap().iter().any(|e| e.0 == vm && e.1 == kind)
}

fn wait_event(ev: &Mutex<Vec<(String, String, String)>>, vm: &str, kind: &str) {
    for _ in 0..300 {
        if has_event(ev, vm, kind) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no `{kind}` event for {vm}; events: {:?}", ev.lock().unwrap());
}

fn root_overlays(state: &std::path::Path, vm: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("vms").join(vm))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("root-") && n.ends_with(".qcow2"))
        .collect();
    v.sort();
    v
}

fn apply(d: &Daemon, dir: &std::path::Path, text: &str, name: &str) -> std::process::Output {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    d.cli(&["apply", &f.display().to_string()])
}

#[test]
fn vm_lifecycle_against_real_libvirt() {
    require_libvirt();
    let g = guest();
    let tmp = tempfile::Builder::new().prefix("vmd-life").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let id = uniq();
    let n = Names {
        seg: id.clone(),
        kern: format!("{id}k"),
        disk: format!("{id}d"),
        net: format!("10.{}.{}", 100 + std::process::id() % 100, 7),
    };
    let _domains = Domains(vec![n.kern.clone(), n.disk.clone()]);
    let bridge = Bridge::new(&n.seg, &format!("{}.1/24", n.net));

    // The images, served from loopback; the first download is cut halfway.
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    for img in ["disk-v1", "disk-v2", "disk-broken"] {
        std::fs::copy(g.disk(img), www.join(format!("{img}.qcow2"))).unwrap();
    }
    let http = HttpServer::start(www.clone(), 1);
    let url = |img: &str| format!("http://127.0.0.1:{}/{img}.qcow2", http.port);
    let sha = |img: &str| sha256_file(&www.join(format!("{img}.qcow2")));

    // netd's answers (netd itself is another daemon): addresses, MACs and bridges.
    let fake = common::fake_netd::FakeNetd::default();
    let kern_mac = naming::mac_string(naming::mac(&n.kern, &n.seg));
    let disk_mac = naming::mac_string(naming::mac(&n.disk, &n.seg));
    fake.answers.lock().unwrap().insert(
        n.kern.clone(),
        vec![common::fake_netd::iface(
            &n.seg,
            &kern_mac,
            &format!("{}.5/24", n.net),
            &format!("{}.1", n.net),
        )],
    );
    fake.answers.lock().unwrap().insert(
        n.disk.clone(),
        vec![common::fake_netd::iface(&n.seg, &disk_mac, &format!("{}.6/24", n.net), "")],
    );
    let netd_sock = common::fake_netd::serve(fake.clone(), dir);

    let mut d = Daemon::start(
        dir,
        &["--netd-socket", &netd_sock.display().to_string(), "--update-timeout", "20s"],
    );
    let events = collect_events(d.socket.clone());

    // 1. Apply: both VMs defined and started, the disk image downloaded (resumed) and verified.
    let out =
        apply(&d, dir, &profile(&n, g, &url("disk-v1"), &sha("disk-v1"), "k1", 8080), "v1.yaml");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "apply failed: {}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_tail()
    );
    assert!(stdout.contains(&format!("{}: defined and started", n.kern)), "{stdout}");
    let reqs = http.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| r.contains("(cut)")), "the first download was not cut: {reqs:?}");
    assert!(
        reqs.iter().any(|r| r.starts_with("GET /disk-v1.qcow2 from ") && !r.contains("from 0")),
        "the download was not resumed with a Range request: {reqs:?}"
    );

    // 2. Both boot; the kernel VM got its seed with netd's address, and the NICs are on the bridge.
    let klog = d.wait_log(&n.kern, "BACKROOM-GUEST-READY marker=k1", 1, BOOT);
    assert!(klog.contains(&format!("BACKROOM-ADDRESS eth0 {}.5/24", n.net)), "{klog}");
    assert!(klog.contains(&format!("macaddress: \"{kern_mac}\"")), "{klog}");
    assert!(klog.contains(&format!("local-hostname: {}", n.kern)), "{klog}");
    let dlog = d.wait_log(&n.disk, "BACKROOM-GUEST-READY marker=disk-v1", 1, BOOT);
    assert!(dlog.contains("SYSLINUX"), "the disk VM did not boot from its disk: {dlog}");
    let ports = bridge.ports();
    assert_eq!(ports.len(), 2, "taps on {}: {ports:?}", bridge.name);
    for vm in [&n.kern, &n.disk] {
        // Named by vmd (netd holds a tap with this prefix until it has filtered it).
        let tap = backroom_profiles::naming::vm_tap(vm, 0);
        assert!(ports.iter().any(|(p, _)| *p == tap), "no tap {tap} for {vm}: {ports:?}");
    }
    for mac in [&kern_mac, &disk_mac] {
        // A tap's own MAC is the guest's with fe: in front.
        assert!(ports.iter().any(|(_, m)| m[2..] == mac[2..]), "no tap for {mac}: {ports:?}");
    }
    let root_links = String::from_utf8_lossy(&sh("ip", &["-o", "link"]).stdout).to_string();
    for (p, _) in &ports {
        assert!(!root_links.contains(&format!(" {p}:")), "tap {p} is in the root namespace");
    }
    assert!(fake.attached.lock().unwrap().contains(&n.kern));

    // 3. Health (tcp/8080, the guest's busybox httpd), probed from bkstore.
    for _ in 0..100 {
        if d.vm(&n.kern).2.contains(" healthy ") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(d.vm(&n.kern).2.contains(" healthy "), "{}", d.vm(&n.kern).2);
    wait_event(&events, &n.kern, "healthy");

    // 4. Stop, start, restart.
    let o = d.cli(&["stop", &n.kern]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(d.vm(&n.kern).0, "stopped");
    assert!(virsh(&["domstate", &format!("bk-{}", n.kern)]).contains("shut off"));
    // This guest obeys the ACPI power button (bk.acpi=1): a graceful shutdown, no destroy.
    let l = d.logs(&n.kern);
    assert!(l.contains("BACKROOM-GUEST-ACPI-POWEROFF"), "the guest powered itself off: {l}");
    wait_event(&events, &n.kern, "stopped");
    let stopped =
        events.lock().unwrap().iter().rev().find(|e| e.0 == n.kern && e.1 == "stopped").cloned();
    assert!(
        stopped.as_ref().is_some_and(|e| e.2.contains("shut down by an operator")),
        "{stopped:?}"
    );
    assert!(d.cli(&["start", &n.kern]).status.success());
    d.wait_log(&n.kern, "BACKROOM-GUEST-READY marker=k1", 2, BOOT);
    let o = d.cli(&["restart", &n.kern]);
    assert!(
        o.status.success(),
        "{}\n--- vmd's log:\n{}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    d.wait_log(&n.kern, "BACKROOM-GUEST-READY marker=k1", 3, BOOT);
    assert_eq!(d.vm(&n.kern).1, 1, "an operator restart counts");

    // 5. QEMU killed: seen through libvirt's events, restarted by the on-failure policy.
    let pid = qemu_pid(&n.disk).expect("qemu pid of the disk VM");
    sh("kill", &["-9", &pid.to_string()]);
    wait_event(&events, &n.disk, "crashed");
    wait_event(&events, &n.disk, "restarted");
    d.wait_state(&n.disk, "running", 1, Duration::from_secs(30));
    d.wait_log(&n.disk, "BACKROOM-GUEST-READY marker=disk-v1", 2, BOOT);
    assert_ne!(qemu_pid(&n.disk), Some(pid));

    // 6. vmd killed: the new vmd adopts both VMs; no duplicate, no restart.
    let pids = (qemu_pid(&n.kern), qemu_pid(&n.disk));
    d.restart();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.vm(&n.kern).0, "running");
    assert_eq!(d.vm(&n.disk).0, "running");
    assert_eq!((qemu_pid(&n.kern), qemu_pid(&n.disk)), pids, "adoption restarted a VM");
    assert_eq!((running_domains(&n.kern), running_domains(&n.disk)), (1, 1));
    assert_eq!(d.vm(&n.disk).1, 1, "the restart count survives vmd's restart");

    // 7. Update to a new image: new overlay, data disk kept, old overlay removed.
    let data = d.state.join("vms").join(&n.disk).join("disk-data.qcow2");
    let data_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&data).unwrap());
    let before = root_overlays(&d.state, &n.disk);
    let out =
        apply(&d, dir, &profile(&n, g, &url("disk-v2"), &sha("disk-v2"), "k1", 8080), "v2.yaml");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_tail()
    );
    assert!(stdout.contains(&format!("{}: updated", n.disk)), "{stdout}");
    assert!(stdout.contains(&format!("{}: unchanged", n.kern)), "{stdout}");
    d.wait_log(&n.disk, "BACKROOM-GUEST-READY marker=disk-v2", 1, BOOT);
    wait_event(&events, &n.disk, "update_done");
    let after = root_overlays(&d.state, &n.disk);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&data).unwrap()),
        data_ino,
        "data disk replaced"
    );

    // 8. An update that does not come up (the guest powers off at once): rolled back.
    let out = apply(
        &d,
        dir,
        &profile(&n, g, &url("disk-broken"), &sha("disk-broken"), "k1", 8080),
        "v3.yaml",
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a failed update must fail the apply");
    assert!(stderr.contains("rolled back"), "{stderr}");
    wait_event(&events, &n.disk, "update_rolled_back");
    let l = d.wait_log(&n.disk, "BACKROOM-GUEST-READY marker=disk-v2", 2, BOOT);
    assert!(l.contains("BACKROOM-GUEST-POWEROFF"), "the broken image never ran: {l}");
    assert_eq!(
        root_overlays(&d.state, &n.disk),
        after,
        "rollback must come back to the previous overlay"
    );
    assert!(virsh(&["dumpxml", &format!("bk-{}", n.disk)]).contains(&after[0]));

    // 9. An update that runs but is not healthy (nothing listens on 9999): rolled back too.
    let out =
        apply(&d, dir, &profile(&n, g, &url("disk-v2"), &sha("disk-v2"), "k2", 9999), "v4.yaml");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(stderr.contains("not healthy"), "{stderr}");
    d.wait_log(&n.kern, "BACKROOM-GUEST-READY marker=k2", 1, BOOT);
    d.wait_log(&n.kern, "BACKROOM-GUEST-READY marker=k1", 4, BOOT);
    wait_event(&events, &n.kern, "update_rolled_back");

    // 10. Teardown (without the daemon): domains gone, data disks kept.
    d.kill9();
    let o = std::process::Command::new(VMD)
        .args([
            "teardown",
            "--shutdown-timeout",
            "5s",
            "--state-dir",
            &d.state.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "teardown: {}", String::from_utf8_lossy(&o.stderr));
    // The kernel guest obeys ACPI; the disk guests ignore it, like a hung guest.
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains(&format!("{}: shut down and removed", n.kern)), "{said}");
    assert!(
        said.contains(&format!("{}: destroyed after the shutdown timeout and removed", n.disk)),
        "{said}"
    );
    let names = virsh(&["list", "--all", "--name"]);
    assert!(
        !names.contains(&format!("bk-{}", n.kern)) && !names.contains(&format!("bk-{}", n.disk)),
        "{names}"
    );
    assert!(data.exists(), "teardown without --purge keeps data disks");
    assert!(root_overlays(&d.state, &n.disk).is_empty());
}
