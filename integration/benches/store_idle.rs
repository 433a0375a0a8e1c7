//! The store node's three daemons at idle: `make run`'s lab store (two containers and a VM, the
//! firewall, the central session) brought up with scripts/run/up, left alone, then measured.
//!
//! Reported per daemon (netd, vmd, nodeagent): RSS, PSS (shared pages divided among the
//! processes that map them), how much of the RSS is the system's shared libraries, and CPU over
//! the idle window; then the three together. The verdict is a ratio against a baseline measured
//! in the same run, never an absolute number (which would judge the machine, not the code):
//! the shipped `dist` build's memory over the `release` build's, which must not be above 1.
//! Measured in the same run:
//! - the same daemons built with the `release` profile (the baseline) and with the `dist`
//!   profile (what a store image ships: fat LTO, one codegen unit, size-optimised);
//! - containerd and libvirtd, the system daemons they sit beside, for scale.
//!
//! Needs what `make run` needs (`make services`); do not run it while a `make run` store is up:
//! both use the `bkstore` namespace. `make bench` builds both profiles first.
//! `BACKROOM_IDLE_SECS` (default 30) is how long the store is left alone before measuring.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use backroom_integration::procs::{cpu_time, free_port, workspace_bin};

const DAEMONS: [&str; 3] = ["netd", "vmd", "nodeagent"];
const OTHERS: [&str; 4] = ["central", "centralctl", "nodectl", "demo-images"];
/// The `dist` build's RSS (and PSS) over the `release` baseline's, at most.
const GOAL_RATIO: f64 = 1.0;

struct Mem {
    rss_kb: u64,
    pss_kb: u64,
    /// Resident pages mapped from files under /usr/lib and /lib (shared libraries).
    lib_kb: u64,
    cpu_pct: f64,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn field_kb(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn lib_kb(pid: i32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_lib = false;
    let mut total = 0;
    for line in smaps.lines() {
        if line.split_whitespace().next().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            in_lib = path.starts_with("/usr/lib") || path.starts_with("/lib");
        } else if in_lib && let Some(v) = line.strip_prefix("Rss:") {
            total += v.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

fn mem(pid: i32, cpu_pct: f64) -> anyhow::Result<Mem> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| anyhow::anyhow!("/proc/{pid}/smaps_rollup: {e}"))?;
    Ok(Mem {
        rss_kb: field_kb(&rollup, "Rss:"),
        pss_kb: field_kb(&rollup, "Pss:"),
        lib_kb: lib_kb(pid),
        cpu_pct,
    })
}

fn pid_of(run: &Path, name: &str) -> anyhow::Result<i32> {
    let f = run.join(format!("{name}.pid"));
    let text = std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
    Ok(text.trim().parse()?)
}

/// The pid of a system daemon, from its pid file, when it runs.
fn system_pid(pidfile: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn containerd_pid() -> Option<i32> {
    // scripts/services.d/containerd records the pid of the containerd it started.
    ["/run/backroom-test/containerd.pid", "/run/containerd/containerd.pid"]
        .iter()
        .find_map(|p| system_pid(p))
}

/// Brings the lab store up with the daemons from `daemons_dir`, waits, measures, stops it.
fn measure(label: &str, daemons_dir: &Path, idle: Duration) -> anyhow::Result<Vec<Mem>> {
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in DAEMONS {
        let src = daemons_dir.join(d);
        anyhow::ensure!(src.exists(), "{} is missing: run `make bench`", src.display());
        std::os::unix::fs::symlink(&src, bin.join(d))?;
    }
    for o in OTHERS {
        let src = workspace_bin(o);
        anyhow::ensure!(src.exists(), "{} is missing: run `make bench`", src.display());
        std::os::unix::fs::symlink(&src, bin.join(o))?;
    }
    let run = dir.path().join("run");
    let (node, api) = (free_port()?.port(), free_port()?.port());
    let script = |name: &str| {
        let mut c = Command::new(repo().join("scripts/run").join(name));
        c.env("BACKROOM_RUN_DIR", &run)
            .env("BACKROOM_RUN_BIN", &bin)
            .env("BACKROOM_RUN_NODE_PORT", node.to_string())
            .env("BACKROOM_RUN_API_PORT", api.to_string());
        c
    };
    let t = Instant::now();
    let up = script("up").output()?;
    let result = (|| {
        if !up.status.success() {
            let mut logs = String::new();
            for e in std::fs::read_dir(run.join("logs")).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                logs.push_str(&format!("--- {}\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    logs.push_str(l);
                    logs.push('\n');
                }
            }
            anyhow::bail!(
                "scripts/run/up failed:\n{}{}\n{logs}",
                String::from_utf8_lossy(&up.stdout),
                String::from_utf8_lossy(&up.stderr)
            );
        }
        println!(
            "{label}: the lab store is up in {:.1} s; idle for {} s",
            t.elapsed().as_secs_f64(),
            idle.as_secs()
        );
        let pids = DAEMONS.iter().map(|d| pid_of(&run, d)).collect::<anyhow::Result<Vec<_>>>()?;
        let cpu0: Vec<Duration> = pids.iter().map(|&p| cpu_time(p)).collect();
        std::thread::sleep(idle);
        pids.iter()
            .zip(cpu0)
            .map(|(&p, c0)| {
                let used = cpu_time(p).saturating_sub(c0);
                mem(p, 100.0 * used.as_secs_f64() / idle.as_secs_f64())
            })
            .collect()
    })();
    let down = script("down").output()?;
    if !down.status.success() {
        eprintln!("scripts/run/down: {}", String::from_utf8_lossy(&down.stdout));
    }
    result
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn report(label: &str, m: &[Mem]) -> (u64, u64) {
    println!("{label}:");
    println!(
        "  {:<10} {:>8} {:>8} {:>14} {:>8}",
        "daemon", "RSS MB", "PSS MB", "of RSS: libs", "CPU %"
    );
    for (d, x) in DAEMONS.iter().zip(m) {
        println!(
            "  {:<10} {:>8.1} {:>8.1} {:>14.1} {:>8.2}",
            d,
            mb(x.rss_kb),
            mb(x.pss_kb),
            mb(x.lib_kb),
            x.cpu_pct
        );
    }
    let rss: u64 = m.iter().map(|x| x.rss_kb).sum();
    let pss: u64 = m.iter().map(|x| x.pss_kb).sum();
    println!("  {:<10} {:>8.1} {:>8.1}", "together", mb(rss), mb(pss));
    (rss, pss)
}

fn main() -> anyhow::Result<()> {
    let idle = Duration::from_secs(
        std::env::var("BACKROOM_IDLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30),
    );
    let release = workspace_bin("netd").parent().map(Path::to_path_buf).unwrap_or_default();
    let dist = release.parent().map(|t| t.join("dist")).unwrap_or_default();
    let base = measure("release profile (baseline)", &release, idle)?;
    let shipped = measure("dist profile", &dist, idle)?;
    println!();
    let (brss, bpss) = report("release profile (baseline)", &base);
    let (drss, dpss) = report("dist profile (what a store image ships)", &shipped);
    let (rss_ratio, pss_ratio) =
        (drss as f64 / brss.max(1) as f64, dpss as f64 / bpss.max(1) as f64);
    for (daemon, (b, d)) in DAEMONS.iter().zip(base.iter().zip(&shipped)) {
        println!("  {daemon}: dist / release RSS {:.2}", d.rss_kb as f64 / b.rss_kb.max(1) as f64);
    }
    let met = rss_ratio <= GOAL_RATIO && pss_ratio <= GOAL_RATIO;
    println!(
        "verdict: dist / release (the baseline, same run): RSS {rss_ratio:.2}, PSS {pss_ratio:.2} \
         (goal: at most {GOAL_RATIO}): {}",
        if met { "met" } else { "NOT met" }
    );
    // The system daemons beside them, measured now too, for scale (not a verdict).
    let mut system_rss = 0;
    for (name, pid) in
        [("containerd", containerd_pid()), ("libvirtd", system_pid("/run/libvirtd.pid"))]
    {
        match pid.map(|p| mem(p, 0.0)) {
            Some(Ok(m)) => {
                system_rss += m.rss_kb;
                println!(
                    "for scale, {name}: RSS {:.1} MB, PSS {:.1} MB",
                    mb(m.rss_kb),
                    mb(m.pss_kb)
                )
            }
            _ => println!("for scale, {name}: not found by its pid file"),
        }
    }
    if system_rss > 0 {
        println!(
            "for scale: the three dist daemons' RSS is {:.2} of containerd's and libvirtd's together",
            drss as f64 / system_rss as f64
        );
    }
    Ok(())
}
