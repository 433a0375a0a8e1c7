//! nodeagent's benchmarks, each against a baseline measured in the same run:
//! - one container create+start (image present) through nodeagent's path vs `ctr run -d`;
//! - apply → 20 containers healthy vs 20 sequential `ctr run -d` (goal: under 5 s);
//! - the nodeagent binary's idle RSS and CPU with 20 workloads (goal: nodeagent + netd + vmd
//!   under 30 MB together).
//!
//! Needs containerd, the loopback registry and busybox (scripts/install-deps, start-services).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backroom_nodeagent::engine::ops::{Ctx, launch};
use backroom_nodeagent::logs::Logs;
use backroom_nodeagent::network::NoNetwork;
use backroom_nodeagent::record::Role;
use backroom_nodeagent::runtime::Runtime;
use common::image::TestImage;
use common::{Namespace, require_services, unique};

const RUNS: usize = 7;
const FLEET: usize = 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ctr(ns: &str, args: &[&str]) {
    let out = Command::new("ctr").arg("-n").arg(ns).args(args).output().expect("ctr (containerd)");
    assert!(
        out.status.success(),
        "ctr {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ctr_rm(ns: &str, id: &str) {
    let _ = Command::new("ctr").args(["-n", ns, "task", "kill", "-s", "SIGKILL", id]).output();
    for _ in 0..50 {
        let out = Command::new("ctr").args(["-n", ns, "task", "rm", "-f", id]).output().unwrap();
        if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("not found") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("ctr").args(["-n", ns, "container", "rm", id]).output();
}

fn container_spec(image: &str, name: &str) -> backroom_profiles::ContainerSpec {
    let text = format!(
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: bench}}\nworkloads:\n  - {{name: {name}, kind: container, image: \"{image}\"}}\n"
    );
    backroom_profiles::render_str("bench.yaml", &text)
        .unwrap()
        .profile
        .containers()
        .next()
        .unwrap()
        .clone()
}

fn fleet_profile(image: &str) -> String {
    let mut w = String::new();
    for i in 0..FLEET {
        w.push_str(&format!(
            "  - name: web{i:02}\n    kind: container\n    image: \"{image}\"\n    health: {{tcp: {{port: 8080}}, interval: 1s, timeout: 1s}}\n"
        ));
    }
    format!(
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: bench}}\nworkloads:\n{w}"
    )
}

async fn create_start(ns: &Namespace, image: &str) {
    let rt = common::containerd(&ns.name).await;
    let img = rt.ensure_image(&image.parse().unwrap()).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let ctx = Ctx {
        runtime: Arc::new(rt),
        net: Arc::new(NoNetwork),
        logs: Logs::new(state.path(), backroom_daemon::clock::system()),
        volumes_dir: state.path().join("volumes"),
        etc_dir: state.path().join("etc"),
        resolv_conf: "/etc/resolv.conf".into(),
        stop_grace: Duration::from_secs(1),
        clock: backroom_daemon::clock::system(),
    };
    let spec = container_spec(image, "one");
    // Warm both paths once.
    let warm = launch(&ctx, &spec, Role::Primary, "warm-ours", "bench").await.unwrap();
    ctx.runtime.remove("warm-ours", Duration::from_secs(1)).await.unwrap();
    drop(warm);
    ctr(&ns.name, &["run", "-d", &img.name, "warm-ctr"]);
    ctr_rm(&ns.name, "warm-ctr");

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let id = format!("ours-{i}");
        let t0 = Instant::now();
        let l = launch(&ctx, &spec, Role::Primary, &id, "bench").await.unwrap();
        ours.push(t0.elapsed());
        for p in l.pumps {
            p.abort();
        }
        ctx.runtime.remove(&id, Duration::from_secs(1)).await.unwrap();

        let id = format!("ctr-{i}");
        let t0 = Instant::now();
        ctr(&ns.name, &["run", "-d", &img.name, &id]);
        theirs.push(t0.elapsed());
        ctr_rm(&ns.name, &id);
    }
    let (o, t) = (median(ours), median(theirs));
    println!(
        "create+start one container (image present), median of {RUNS}: nodeagent {:.1} ms, ctr run -d {:.1} ms, ratio {:.2} (goal: at most 1.20)",
        o.as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e3,
        o.as_secs_f64() / t.as_secs_f64()
    );
}

fn nodectl_status(socket: &Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_nodectl"))
        .arg("--socket")
        .arg(socket)
        .args(["--json", "status"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn all_healthy(s: &serde_json::Value) -> bool {
    let w = s["workloads"].as_array().unwrap();
    w.len() == FLEET && w.iter().all(|w| w["health"] == "healthy")
}

fn proc_stat(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss_kb, ticks)
}

fn fleet(ns: &Namespace, image: &str, image_name: &str) {
    // Baseline: 20 sequential `ctr run -d` (no health checks).
    let t0 = Instant::now();
    for i in 0..FLEET {
        ctr(&ns.name, &["run", "-d", image_name, &format!("base-{i}")]);
    }
    let baseline = t0.elapsed();
    for i in 0..FLEET {
        ctr_rm(&ns.name, &format!("base-{i}"));
    }

    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("fleet.yaml");
    std::fs::write(&profile, fleet_profile(image)).unwrap();
    let socket = dir.path().join("nodeagent.sock");
    let log = std::fs::File::create(dir.path().join("nodeagent.log")).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodeagent"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--netd-socket", "none", "--vmd-socket", "none", "--containerd-namespace", &ns.name])
        .arg("--profile")
        .arg(&profile)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let healthy_after = loop {
        if nodectl_status(&socket).is_some_and(|s| all_healthy(&s)) {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "20 containers not healthy within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "start nodeagent with {FLEET} containers → all healthy: {:.2} s (goal: under 5 s); {FLEET} sequential ctr run -d: {:.2} s; ratio {:.2}",
        healthy_after.as_secs_f64(),
        baseline.as_secs_f64(),
        healthy_after.as_secs_f64() / baseline.as_secs_f64()
    );

    // Idle: let the start settle, then measure 20 s of idling (probes every second).
    std::thread::sleep(Duration::from_secs(5));
    let (_, ticks0) = proc_stat(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let (rss_kb, ticks1) = proc_stat(pid);
    let hz = 100.0;
    let cpu = (ticks1 - ticks0) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "nodeagent idle with {FLEET} workloads (tcp probe every 1 s each): RSS {:.1} MB ({:.2} of the 30 MB budget of the three daemons), CPU {cpu:.2} % of one core",
        rss_kb as f64 / 1024.0,
        rss_kb as f64 / 1024.0 / 30.0
    );
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run passes nothing to do.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    require_services();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ns = Namespace::new();
    let image = rt.block_on(TestImage::web("bench").push("backroom-bench/web", &unique("b")));
    let name = rt.block_on(async {
        let c = common::containerd(&ns.name).await;
        c.ensure_image(&image.parse().unwrap()).await.unwrap().name
    });
    rt.block_on(create_start(&ns, &image));
    fleet(&ns, &image, &name);
}
