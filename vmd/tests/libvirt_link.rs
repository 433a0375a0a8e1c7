//! vmd notices libvirtd going away and reconnects when it returns, and says so in `List`
//! (`libvirt_error`, what nodeagent's liveness check reads).
//!
//! libvirtd is shared with other builders, so it is never stopped: vmd is pointed at a socket
//! that this test serves (a byte-for-byte relay to the real libvirtd's socket), and the test
//! stops the relay (closing every relayed connection and removing the socket) and starts it
//! again. What dies for real is the relay, not libvirtd. No VM is defined or started.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LIBVIRT_SOCKET: &str = "/run/libvirt/libvirt-sock";

/// A unix-socket relay to `target`, on its own runtime; stopping it drops every connection.
struct Relay {
    rt: tokio::runtime::Runtime,
    path: PathBuf,
    target: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    fn new(path: &Path, target: &Path) -> Relay {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut r = Relay { rt, path: path.into(), target: target.into(), task: None };
        r.start();
        r
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let (path, target) = (self.path.clone(), self.target.clone());
        let listener = self.rt.block_on(async { tokio::net::UnixListener::bind(&path) }).unwrap();
        self.task = Some(self.rt.spawn(async move {
            // Aborting this task drops the set, and with it every relayed connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut a, _)) = listener.accept().await else { return };
                let target = target.clone();
                conns.spawn(async move {
                    let Ok(mut b) = tokio::net::UnixStream::connect(&target).await else { return };
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

fn libvirt_error(socket: &Path) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = backroom_vmd::client::vmd_client(socket).await.expect("vmd answers");
        c.list(backroom_api::vmd::ListRequest {}).await.unwrap().into_inner().libvirt_error
    })
}

fn until(d: &common::Daemon, what: &str, f: impl Fn(&str) -> bool) -> (String, Duration) {
    let t0 = Instant::now();
    loop {
        let e = libvirt_error(&d.socket);
        if f(&e) {
            return (e, t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what} (libvirt_error: {e:?}): {}",
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_lost_libvirtd_is_reported_in_list_and_vmd_reconnects_when_it_is_back() {
    common::require_libvirt();
    let dir = tempfile::tempdir().unwrap();
    let relay_path = dir.path().join("libvirt-sock");
    let mut relay = Relay::new(&relay_path, Path::new(LIBVIRT_SOCKET));
    let uri = format!("qemu+unix:///system?socket={}", relay_path.display());
    let d = common::Daemon::start(dir.path(), &["--libvirt-uri", &uri]);
    assert_eq!(libvirt_error(&d.socket), "", "connected through the relay");

    relay.stop();
    let (e, took) = until(&d, "the lost connection reported", |e| !e.is_empty());
    eprintln!("relay to libvirtd stopped: vmd reported it after {took:?}: {e}");
    assert!(e.contains("libvirt"), "{e}");

    relay.start();
    let (_, took) = until(&d, "vmd connected again", str::is_empty);
    eprintln!("relay back: vmd reconnected after {took:?}");
    // Connected for real: vmd's own list goes through libvirt again.
    let out = d.cli(&["list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
