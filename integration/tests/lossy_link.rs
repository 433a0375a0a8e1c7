//! The link between a store and central made lossy and slow (tc netem on a veth between two
//! network namespaces), then cut for a while: the session recovers by itself and every event
//! arrives once. This host's kernel has no netem, so the test runs in the kernel lab (virtme-ng
//! + Debian's kernel, installed by scripts/deps.d/netd-kernel-lab.sh), in one boot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backroom_integration::kernel_lab;
use backroom_integration::procs::require_bin;

#[test]
fn a_lossy_slow_link_that_breaks_recovers_and_loses_nothing() {
    // The binaries the inner run starts must exist before the lab boots.
    require_bin("central");
    require_bin("centralctl");
    require_bin("fleetsim");
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let run = kernel_lab::run_inner("lab_inner", Duration::from_secs(1200), &scratch);
    assert!(
        run.passed,
        "the lossy-link run failed in the kernel lab after {:?}:\n{}",
        run.elapsed, run.console_tail
    );
    eprintln!("lossy link test passed in the kernel lab in {:?}", run.elapsed);
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Cleanup {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs inside the lab (Debian's kernel, with netem): started by the test above.
#[test]
#[ignore = "runs inside the kernel lab; a_lossy_slow_link_that_breaks_recovers_and_loses_nothing starts it"]
fn lab_inner() {
    assert!(
        backroom_integration::kernel_lab::inside(),
        "lab_inner runs inside the kernel lab only"
    );
    let _ = Command::new("modprobe").arg("sch_netem").status();
    let pid = std::process::id();
    let (hq, store) = (format!("bkhq{pid}"), format!("bkst{pid}"));
    let mut guard = Cleanup { namespaces: vec![hq.clone(), store.clone()], children: vec![] };
    sh(&format!("ip netns add {hq}; ip netns add {store}"));
    sh(&format!("ip link add wan0 netns {hq} type veth peer name wan0 netns {store}"));
    for (ns, addr) in [(&hq, "10.231.0.1/24"), (&store, "10.231.0.2/24")] {
        sh(&format!(
            "ip -n {ns} link set lo up; ip -n {ns} addr add {addr} dev wan0; ip -n {ns} link set wan0 up"
        ));
        // Slow and lossy both ways: 150 ms ± 50 ms, 15% loss.
        sh(&format!(
            "ip netns exec {ns} tc qdisc add dev wan0 root netem delay 150ms 50ms loss 15%"
        ));
    }
    let data = tempfile::tempdir().unwrap();
    let central_log = std::fs::File::create(data.path().join("central.log")).unwrap();
    let central = Command::new("ip")
        .args(["netns", "exec", &hq])
        .arg(require_bin("central"))
        .args(["serve", "--data"])
        .arg(data.path())
        .args(["--listen", "10.231.0.1:7443", "--api", "10.231.0.1:7444", "--heartbeat", "2s"])
        .stderr(central_log)
        .spawn()
        .unwrap();
    guard.children.push(central);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !data.path().join("admin.token").exists() {
        assert!(Instant::now() < deadline, "central did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut sim = Command::new("ip")
        .args(["netns", "exec", &store])
        .arg(require_bin("fleetsim"))
        .args(["--central", "https://10.231.0.1:7443", "--api", "https://10.231.0.1:7444"])
        .arg("--ca")
        .arg(data.path().join("ca.crt"))
        .arg("--token-file")
        .arg(data.path().join("admin.token"))
        .args([
            "--nodes",
            "1",
            "--events",
            "300",
            "--event-interval-ms",
            "50",
            "--until-acked",
            "--timeout",
            "900",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = sim.stderr.take().unwrap();
    let sim_err = std::thread::spawn(move || {
        let mut text = String::new();
        use std::io::Read;
        let _ = err.read_to_string(&mut text);
        text
    });
    // Once the session is up and events flow, cut the link for 45 s: longer than the node's
    // HTTP/2 keepalive (a ping every 20 s, 20 s to answer) and central's three missed
    // heartbeats, so the session must break. A shorter cut is ridden out by TCP's
    // retransmissions and proves nothing about recovery.
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first.trim(), "online 1", "fleetsim did not come online");
    std::thread::sleep(Duration::from_secs(3));
    sh(&format!("ip -n {store} link set wan0 down"));
    std::thread::sleep(Duration::from_secs(45));
    sh(&format!("ip -n {store} link set wan0 up"));
    let status = sim.wait().unwrap();
    let stdout: Vec<String> = lines.map_while(Result::ok).collect();
    let stdout = stdout.join("\n");
    let sim_text = sim_err.join().unwrap_or_default();
    eprintln!("fleetsim's log:\n{sim_text}");
    assert!(
        status.success() && stdout.contains("acked 300"),
        "fleetsim: {status} {stdout}\n{sim_text}"
    );
    assert!(
        sim_text.contains("no session with central")
            || sim_text.contains("session with central up"),
        "{sim_text}"
    );
    let reconnects = sim_text.matches("session with central up").count();
    assert!(
        reconnects >= 2,
        "the cut must have broken the session and the link recovered it ({reconnects} sessions)\n{sim_text}"
    );

    // central has every event exactly once.
    let json = sh(&format!(
        "ip netns exec {hq} {} --server https://10.231.0.1:7444 --ca {} --token-file {} --json store get sim-00000 --events 1000",
        require_bin("centralctl").display(),
        data.path().join("ca.crt").display(),
        data.path().join("admin.token").display()
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut seqs: Vec<u64> =
        v["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    drop(guard);
    kernel_lab::pass();
}
