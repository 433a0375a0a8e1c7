//! netd's apply against the obvious script, in namespaces made for the purpose.
//!
//! A profile with 8 segments and 500 allow rules. Measured in the same run:
//! - the script: `ip` commands building the same bridges, addresses and routes, and one
//!   `nft -f` loading the same ruleset (netd's own rendering of it);
//! - `netd apply` (the binary, a fresh namespace each time): goal no slower than the script;
//! - a no-op reconcile (what `netd serve` does on every drift check, and `netd apply` of the
//!   same profile again): goal at least 10× faster than the script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(o.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&o.stderr));
}

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("nb{}{tag}", std::process::id());
        sh(&format!(
            "ip netns add {name} && ip link add up0 netns {name} type veth peer name up1 netns {name}"
        ));
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const SEGMENTS: usize = 8;
const RULES: usize = 500;
const WORKLOADS: usize = 12;

fn profile() -> String {
    let mut p = String::from(
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: bench}\nnetwork:\n  uplink: {interface: up0}\n  segments:\n",
    );
    p.push_str("    - {name: s0, vlan: untagged, subnet: 10.200.0.0/24, address: 10.200.0.2/24, gateway: 10.200.0.1}\n");
    for i in 1..SEGMENTS {
        let nat = if i % 3 == 0 { ", nat: true" } else { "" };
        writeln!(p, "    - {{name: s{i}, internal: true, subnet: 10.200.{i}.0/24, address: 10.200.{i}.1/24{nat}}}").unwrap();
    }
    p.push_str("  firewall:\n    default: drop\n    allow:\n");
    let ends = |k: usize| -> String {
        match k % 4 {
            0 => format!("s{}", k % SEGMENTS),
            1 => format!("w{}", k % WORKLOADS),
            2 => "internet".into(),
            _ => format!("s{}", (k / 3) % SEGMENTS),
        }
    };
    for r in 0..RULES {
        let (from, mut to) = (ends(r), ends(r * 7 + 1));
        if to == "internet" && from == "internet" {
            to = "host".into();
        }
        let port = 1000 + r;
        writeln!(
            p,
            "      - {{name: r{r}, from: {from}, to: {to}, ports: [tcp/{port}, udp/{port}]}}"
        )
        .unwrap();
    }
    p.push_str("workloads:\n");
    for w in 0..WORKLOADS {
        let seg = 1 + w % (SEGMENTS - 1);
        writeln!(
            p,
            "  - name: w{w}\n    kind: container\n    image: r/w:1@sha256:b517ff710669f502d9f7f4f564f0a93f9a87241817e28f9de1288a9d6f91a447\n    networks: [{{segment: s{seg}, address: 10.200.{seg}.{}}}]",
            10 + w
        )
        .unwrap();
    }
    p
}

/// The script an operator would write for the same state.
fn script(ns: &str, p: &backroom_profiles::Profile, nft_file: &Path) -> String {
    let mut s = String::from("set -e\n");
    for (i, seg) in p.network.segments.iter().enumerate() {
        let br = seg.bridge();
        let mac = backroom_profiles::naming::mac_string(backroom_profiles::naming::mac(
            "host",
            seg.name.as_str(),
        ));
        writeln!(s, "ip -n {ns} link add {br} address {mac} type bridge").unwrap();
        writeln!(s, "ip -n {ns} link set {br} alias backroom-netd").unwrap();
        writeln!(s, "ip -n {ns} link set {br} up").unwrap();
        if let backroom_profiles::HostAddress::Static(n) = seg.address {
            writeln!(s, "ip -n {ns} addr add {n} dev {br}").unwrap();
        }
        if seg.vlan.is_some() && !seg.internal {
            writeln!(s, "ip -n {ns} link set up0 master {br} up").unwrap();
        }
        if let Some(g) = seg.gateway {
            writeln!(
                s,
                "ip -n {ns} route add default via {g} dev {br} proto 176 metric {}",
                100 + i
            )
            .unwrap();
        }
    }
    writeln!(s, "ip netns exec {ns} nft -f {}", nft_file.display()).unwrap();
    s
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let netd = env!("CARGO_BIN_EXE_netd");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.yaml");
    std::fs::write(&file, profile()).unwrap();
    let rendered = backroom_profiles::render_file(&file).unwrap();
    assert_eq!(rendered.profile.network.segments.len(), SEGMENTS);
    assert_eq!(rendered.profile.network.firewall.allow.len(), RULES);
    let f = file.to_str().unwrap();
    let runs = 5;

    // The ruleset text netd would install, for the script.
    let nft_file = dir.path().join("ruleset.nft");
    {
        let ns = Ns::new("p");
        let state = tempfile::tempdir().unwrap();
        let o = Command::new(netd)
            .args([
                "--netns",
                &ns.0,
                "--state-dir",
                state.path().to_str().unwrap(),
                "plan",
                "--nft",
                f,
                "--uplink",
                "up0",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(&nft_file, &o.stdout).unwrap();
    }

    let mut script_times = Vec::new();
    for _ in 0..runs {
        let ns = Ns::new("s");
        let text = script(&ns.0, &rendered.profile, &nft_file);
        script_times.push(time(|| sh(&text)));
    }

    let mut apply_times = Vec::new();
    let mut noop_process = Vec::new();
    let mut rules = 0;
    for _ in 0..runs {
        let ns = Ns::new("n");
        let state = tempfile::tempdir().unwrap();
        let run = || {
            let o = Command::new(netd)
                .args([
                    "--netns",
                    &ns.0,
                    "--state-dir",
                    state.path().to_str().unwrap(),
                    "apply",
                    f,
                    "--uplink",
                    "up0",
                ])
                .env("RUST_LOG", "warn")
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let mut out = String::new();
        apply_times.push(time(|| out = run()));
        if let Some(n) = out.lines().find_map(|l| {
            l.split(" (")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok())
        }) {
            rules = n;
        }
        noop_process.push(time(|| assert!(run().contains("nothing to do"))));
    }

    // The daemon's no-op reconcile: in-process, in the namespace, as `netd serve` runs it.
    let ns = Ns::new("d");
    let state = tempfile::tempdir().unwrap();
    let path = format!("/run/netns/{}", ns.0);
    let (sd, fpath) = (state.path().to_path_buf(), file.clone());
    let noop_daemon = std::thread::spawn(move || {
        backroom_daemon::netns::enter(std::path::Path::new(&path)).unwrap();
        let mut e = backroom_netd::Engine::open(&sd).unwrap();
        let r = backroom_profiles::render_file(&fpath).unwrap();
        e.apply(&r, Some("up0"), 0).unwrap();
        let mut v = Vec::new();
        for _ in 0..runs * 4 {
            let t = Instant::now();
            let o = e.reconcile().unwrap();
            v.push(t.elapsed());
            assert!(!o.changed);
        }
        v
    })
    .join()
    .unwrap();

    let (s, a, np, nd) =
        (median(script_times), median(apply_times), median(noop_process), median(noop_daemon));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "netd apply benchmark: {SEGMENTS} segments, {RULES} allow rules ({rules} nftables rules), median of {runs}"
    );
    println!("  script (ip commands + one nft -f)   {:8.1} ms", ms(s));
    println!(
        "  netd apply, full                    {:8.1} ms   script/netd = {:5.2}  (goal >= 1)",
        ms(a),
        ms(s) / ms(a)
    );
    println!(
        "  netd serve, no-op reconcile         {:8.1} ms   script/netd = {:5.1}  (goal >= 10)",
        ms(nd),
        ms(s) / ms(nd)
    );
    println!(
        "  netd apply again (process), no-op   {:8.1} ms   script/netd = {:5.1}",
        ms(np),
        ms(s) / ms(np)
    );
}
