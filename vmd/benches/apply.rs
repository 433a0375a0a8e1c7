//! vmd's overhead over plain libvirt, measured in one run on the real libvirtd (TCG):
//! apply → domain running, and apply → guest marker on the serial console, against
//! `virsh create` of the very XML vmd generated. Prints the ratios (goal: vmd adds < 10%).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backroom_vmd::layout::Layout;
use backroom_vmd::libvirt::Libvirt;
use backroom_vmd::nics::StaticNics;
use backroom_vmd::storage::FsStorage;
use backroom_vmd::virt_type::VirtTypeSetting;
use backroom_vmd::{Config, Deps, Vmd};

const ROUNDS: usize = 5;
const MARKER: &str = "BACKROOM-GUEST-UP marker=bench";

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh").arg("-c").arg("qemu:///system").args(args).output().unwrap()
}

fn wait_marker(log: &Path, from: usize) -> Instant {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(log)
            && s.matches(MARKER).count() > from
        {
            return Instant::now();
        }
        assert!(t.elapsed() < Duration::from_secs(180), "no marker in {}", log.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `virsh create` of `xml` (whose console log is in `state`): (running, marker) seconds.
fn run_virsh(xml_path: &Path, xml: &[u8], state: &Path, name: &str) -> (f64, f64) {
    std::fs::write(xml_path, xml).unwrap();
    let log = Layout::new(state).console_log(name);
    let before = std::fs::read_to_string(&log).map(|s| s.matches(MARKER).count()).unwrap_or(0);
    let t0 = Instant::now();
    let o = virsh(&["create", &xml_path.display().to_string()]);
    assert!(o.status.success(), "virsh create: {}", String::from_utf8_lossy(&o.stderr));
    let running = t0.elapsed();
    let marked = wait_marker(&log, before) - t0;
    virsh(&["destroy", &format!("bk-{name}")]);
    std::thread::sleep(Duration::from_secs(1));
    (running.as_secs_f64(), marked.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let guest =
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testguest/build.sh")).output().unwrap();
    assert!(guest.status.success(), "test guest build failed: run scripts/install-deps");
    let gdir = String::from_utf8_lossy(&guest.stdout).lines().last().unwrap().trim().to_string();
    assert!(
        virsh(&["version"]).status.success(),
        "libvirtd does not answer: run scripts/start-services"
    );
    let tmp = tempfile::Builder::new().prefix("vmd-bench").tempdir_in("/tmp").unwrap();
    let name = format!("bench{}", std::process::id());
    let profile = format!(
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: bench}}\n\
         node: {{capacity: {{cpus: 8, memory: 16Gi}}}}\n\
         workloads:\n  - name: {name}\n    kind: vm\n    cpus: 1\n    memory: 256Mi\n\
         \x20   boot: {{kernel: {{kernel: {gdir}/vmlinuz, initrd: {gdir}/initrd.img, cmdline: \"console=ttyS0 quiet bk.marker=bench\"}}}}\n"
    );
    let rendered = backroom_profiles::render_str("bench.yaml", &profile).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let (mut vmd_run, mut vmd_mark, mut virsh_run, mut virsh_mark) =
        (vec![], vec![], vec![], vec![]);
    let mut xml_cache: Option<Vec<u8>> = None;
    let mut noop = Vec::new();
    for round in 0..ROUNDS {
        // Alternate which goes first, so that whatever libvirt does after a destroy does not
        // always land on the same side.
        if round % 2 == 1
            && let Some(x) = &xml_cache
        {
            let (r, m) = run_virsh(
                &tmp.path().join("domain.xml"),
                x,
                &tmp.path().join(format!("state{}", round - 1)),
                &name,
            );
            virsh_run.push(r);
            virsh_mark.push(m);
        }
        // vmd: a fresh vmd on a fresh state folder applies the profile.
        let state = tmp.path().join(format!("state{round}"));
        let layout = Layout::new(&state);
        let hv = Arc::new(Libvirt::open("qemu:///system").unwrap());
        let deps = Deps {
            hypervisor: hv,
            storage: Arc::new(
                FsStorage::new(layout.clone())
                    .unwrap()
                    .with_image_folders(vec![std::path::PathBuf::from(&gdir)]),
            ),
            nics: Arc::new(StaticNics),
        };
        let cfg = Config {
            virt_type: VirtTypeSetting::Qemu,
            shutdown_timeout: Duration::from_secs(1),
            ..Config::default()
        };
        let vmd = Vmd::new(deps, layout.clone(), cfg).unwrap();
        rt.block_on(vmd.virt());
        let log = layout.console_log(&name);
        let t0 = Instant::now();
        rt.block_on(vmd.apply(&rendered)).unwrap();
        let running = t0.elapsed();
        let marked = wait_marker(&log, 0) - t0;
        vmd_run.push(running.as_secs_f64());
        vmd_mark.push(marked.as_secs_f64());
        // vmd's own work per apply (render, admission, listing libvirt, plan): an apply that
        // finds everything as it should be.
        let t1 = Instant::now();
        rt.block_on(vmd.apply(&rendered)).unwrap();
        noop.push(t1.elapsed().as_secs_f64());
        let xml = virsh(&["dumpxml", "--inactive", &format!("bk-{name}")]).stdout;
        rt.block_on(vmd.teardown(false)).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        if round % 2 == 0 {
            // virsh: the same XML (vmd's definition), created directly.
            let (r, m) = run_virsh(&tmp.path().join("domain.xml"), &xml, &state, &name);
            virsh_run.push(r);
            virsh_mark.push(m);
        }
        xml_cache = Some(xml);
        println!(
            "round {round}: vmd running {:.3}s marker {:.2}s | virsh running {:.3}s marker {:.2}s",
            vmd_run[round], vmd_mark[round], virsh_run[round], virsh_mark[round]
        );
    }
    let (vr, vm, br, bm) =
        (median(vmd_run), median(vmd_mark), median(virsh_run), median(virsh_mark));
    println!("apply -> domain running: vmd {vr:.3}s, virsh create {br:.3}s, ratio {:.2}", vr / br);
    println!("no-op apply (vmd's own work per apply): {:.1} ms", median(noop) * 1000.0);
    println!(
        "apply -> guest marker:   vmd {vm:.2}s, virsh create {bm:.2}s, ratio {:.3} (goal: < 1.10)",
        vm / bm
    );
}
