//! A dead local daemon does not go unnoticed, with real processes: `kill -9` of a real `netd`
//! (serving in a network namespace of the test's own) under a real `nodeagent` is told within
//! the liveness interval on nodectl's network line and as one `failing` notice, and when netd
//! is started again the problem closes once and the network is applied to it again.
//!
//! containerd is shared with other builders, so it is never killed: nodeagent is pointed at a
//! socket that this test serves (a byte-for-byte relay to the real containerd) and that the
//! test then stops and starts again. What dies for real there is the relay, not containerd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Namespace, bin, require_services, unique};
use serde_json::Value;

/// A binary of another crate of the workspace; cargo does not build those for this crate's
/// tests, so a missing one fails naming the command that builds it.
fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(p.exists(), "{} is not built: run `cargo build -p {package}` first", p.display());
    p
}

/// A network namespace of this test, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = unique("bkdd");
        let ok = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().expect("ip (iproute2)");
            assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        ok(&["netns", "add", &name]);
        ok(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed (SIGKILL) on drop.
struct Proc(Option<Child>);

impl Proc {
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn log_file(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap()
}

fn start_netd(ns: &Netns, dir: &Path) -> Proc {
    let sock = dir.join("netd.sock");
    let child = Command::new(workspace_bin("netd", "backroom-netd"))
        .args(["--netns", &ns.0, "--state-dir"])
        .arg(dir.join("netd"))
        .args(["serve", "--check-interval", "300", "--socket"])
        .arg(&sock)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(&dir.join("netd.log")))
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "netd serve did not listen on {sock:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc(Some(child))
}

fn start_agent(dir: &Path, args: &[&str]) -> Proc {
    let child = Command::new(bin("nodeagent"))
        .arg("--socket")
        .arg(dir.join("nodeagent.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--vmd-socket", "none", "--liveness-interval", "1s"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(&dir.join("nodeagent.log")))
        .spawn()
        .unwrap();
    Proc(Some(child))
}

fn logs(dir: &Path) -> String {
    let mut all = String::new();
    for f in ["nodeagent.log", "netd.log"] {
        let t = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let tail: Vec<&str> =
            t.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        all.push_str(&format!("--- {f}\n{}\n", tail.join("\n")));
    }
    all
}

fn status(dir: &Path) -> Option<Value> {
    let out = Command::new(bin("nodectl"))
        .arg("--socket")
        .arg(dir.join("nodeagent.sock"))
        .args(["--json", "status"])
        .output()
        .unwrap();
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn until(dir: &Path, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> (Value, Duration) {
    let t0 = Instant::now();
    loop {
        let s = status(dir);
        if let Some(s) = &s
            && f(s)
        {
            return (s.clone(), t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}; status: {s:#?}\n{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The action-history entries named `action` (problem notices are `failing: <subject>` and
/// `recovered: <subject>`).
fn actions<'a>(s: &'a Value, action: &str) -> Vec<&'a Value> {
    s["actions"].as_array().unwrap().iter().filter(|a| a["action"] == action).collect()
}

fn network_applies(s: &Value) -> usize {
    s["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["action"].as_str().unwrap().starts_with("apply the network of revision")
                && a["ok"] == true
        })
        .count()
}

fn problem<'a>(s: &'a Value, subject: &str) -> Option<&'a Value> {
    s["problems"].as_array().unwrap().iter().find(|p| p["subject"] == subject)
}

const PROFILE: &str = "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: liveness, version: \"1\"}\nnetwork:\n  segments:\n    - {name: apps, internal: true, subnet: 172.31.7.0/24, address: 172.31.7.1/24}\nworkloads: []\n";

#[test]
fn kill_9_of_netd_is_told_at_once_and_the_network_applied_again_when_it_is_back() {
    require_services();
    let ctd = Namespace::new();
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let profile = d.join("profile.yaml");
    std::fs::write(&profile, PROFILE).unwrap();
    let mut netd = start_netd(&ns, d);
    let sock = d.join("netd.sock").display().to_string();
    let _agent = start_agent(
        d,
        &[
            "--netd-socket",
            &sock,
            "--containerd-namespace",
            &ctd.name,
            "--profile",
            profile.to_str().unwrap(),
        ],
    );
    let (s, _) = until(d, "the network applied", 60, |s| {
        s["network"].as_str().unwrap().starts_with("applied (revision")
    });
    let revision = s["desired_revision"].as_str().unwrap()[..12].to_string();
    assert_eq!(network_applies(&s), 1, "{s:#}");
    assert!(problem(&s, "netd").is_none(), "{s:#}");

    netd.kill9();
    let (s, took) = until(d, "netd not answering", 10, |s| {
        s["network"].as_str().unwrap().contains("not answering")
    });
    eprintln!("kill -9 of netd: told after {took:?} (liveness interval 1 s)");
    let line = s["network"].as_str().unwrap();
    assert!(
        line.starts_with("netd not answering since ")
            && line.ends_with(&format!(" UTC (last applied revision {revision})")),
        "{line}"
    );
    let p = problem(&s, "netd").expect("a netd problem");
    let m = p["message"].as_str().unwrap();
    assert!(m.starts_with(&format!("netd is not answering on {sock}: ")), "{m}");
    assert_eq!(p["source"], "nodeagent");
    // Several checks later: still the one notice.
    std::thread::sleep(Duration::from_secs(4));
    let s = status(d).unwrap();
    assert_eq!(actions(&s, "failing: netd").len(), 1, "one notice per outage: {s:#}");
    assert!(problem(&s, "netd").unwrap()["failures"].as_u64().unwrap() >= 3, "{s:#}");
    let text = Command::new(bin("nodectl"))
        .arg("--socket")
        .arg(d.join("nodeagent.sock"))
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("network: netd not answering since "), "{text}");

    let _netd = start_netd(&ns, d);
    let (s, took) = until(d, "netd back and the network applied again", 20, |s| {
        problem(s, "netd").is_none() && network_applies(s) == 2
    });
    eprintln!("netd started again: recovered and applied again after {took:?}");
    assert_eq!(s["network"], format!("applied (revision {revision})"));
    assert_eq!(actions(&s, "failing: netd").len(), 1, "{s:#}");
    let back = actions(&s, "recovered: netd");
    assert_eq!(back.len(), 1, "{s:#}");
    assert!(back[0]["message"].as_str().unwrap().starts_with("netd works again"), "{s:#}");
}

/// A unix-socket relay to the real containerd, served by this test on its own runtime:
/// stopping it closes every relayed connection and removes the socket, as a dead containerd
/// would look to nodeagent.
struct Relay {
    rt: tokio::runtime::Runtime,
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    fn new(path: &Path) -> Relay {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut r = Relay { rt, path: path.to_path_buf(), task: None };
        r.start();
        r
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let path = self.path.clone();
        let listener = self.rt.block_on(async { tokio::net::UnixListener::bind(&path) }).unwrap();
        self.task = Some(self.rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            // Dropping this task (abort) drops the set, and so every relayed connection.
            loop {
                let Ok((mut a, _)) = listener.accept().await else { return };
                conns.spawn(async move {
                    let Ok(mut b) =
                        tokio::net::UnixStream::connect(common::CONTAINERD_SOCKET).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
            }
        }));
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = self.rt.block_on(t);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn containerd_out_of_reach_is_told_on_the_containers_line_and_recovers() {
    require_services();
    let ctd = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let relay_path = d.join("containerd.sock");
    let mut relay = Relay::new(&relay_path);
    let _agent = start_agent(
        d,
        &[
            "--netd-socket",
            "none",
            "--containerd-namespace",
            &ctd.name,
            "--containerd-socket",
            relay_path.to_str().unwrap(),
        ],
    );
    let (s, _) = until(d, "nodeagent up", 30, |s| {
        s["containers"].as_str().unwrap().ends_with("(containerd answers)")
    });
    assert!(problem(&s, "containerd").is_none(), "{s:#}");

    relay.stop();
    let (s, took) = until(d, "containerd not answering", 10, |s| {
        s["containers"].as_str().unwrap().starts_with("containerd not answering since ")
    });
    eprintln!("the relay to containerd stopped: told after {took:?}");
    let p = problem(&s, "containerd").expect("a containerd problem");
    let m = p["message"].as_str().unwrap();
    assert!(
        m.starts_with(&format!("containerd is not answering on {}: ", relay_path.display())),
        "{m}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let s = status(d).unwrap();
    assert_eq!(actions(&s, "failing: containerd").len(), 1, "{s:#}");

    relay.start();
    let (s, took) = until(d, "containerd back", 15, |s| problem(s, "containerd").is_none());
    eprintln!("the relay is back: recovered after {took:?}");
    assert!(s["containers"].as_str().unwrap().ends_with("(containerd answers)"), "{s:#}");
    assert_eq!(actions(&s, "failing: containerd").len(), 1, "{s:#}");
    assert_eq!(actions(&s, "recovered: containerd").len(), 1, "{s:#}");
}
