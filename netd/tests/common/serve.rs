//! `netd serve` as the daemon tests run it, and waiting for its events.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backroom_api::netd as pb;
use futures::StreamExt;

use super::Netd;

/// `netd serve` in the store's namespace, stopped with SIGTERM (or killed) on drop.
pub struct Serve {
    child: Option<std::process::Child>,
    pub sock: PathBuf,
}

impl Serve {
    pub fn start(netd: &Netd, interval: u32) -> Serve {
        Serve::start_with(netd, interval, &[])
    }

    /// With more options before `serve` (e.g. `--resolv-conf PATH`).
    pub fn start_with(netd: &Netd, interval: u32, extra: &[&str]) -> Serve {
        let sock = netd.state.path().join("netd.sock");
        // A killed netd leaves its socket behind: wait for the new one, not the old.
        let _ = std::fs::remove_file(&sock);
        let child = std::process::Command::new(&netd.bin)
            .args(["--netns", &netd.netns, "--state-dir"])
            .arg(netd.state.path())
            .args(extra)
            .args(["--log-format", "journald", "serve", "--check-interval"])
            .arg(interval.to_string())
            .arg("--socket")
            .arg(&sock)
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !sock.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "netd serve made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Serve { child: Some(child), sock }
    }

    /// SIGTERM, then the exit status (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("netd serve did not stop within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub type Events = tonic::Streaming<pb::Event>;

/// Events until one of `kind` about `subject` (any subject when empty) arrives, within `limit`.
pub async fn until(
    events: &mut Events,
    kind: &str,
    subject: &str,
    limit: Duration,
) -> Vec<pb::Event> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let ev = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(ev))) => ev,
            other => {
                panic!("no {kind} {subject} event within {limit:?} ({other:?}); saw {seen:#?}")
            }
        };
        let done = ev.kind == kind && (subject.is_empty() || ev.subject == subject);
        seen.push(ev);
        if done {
            return seen;
        }
    }
}
