//! Health probes of VMs: `tcp` (a connection is accepted) and `http` (a 2xx or 3xx answer),
//! sent to the VM's first address. `exec` needs a guest agent and is not supported for VMs.
//!
//! With `--probe-netns NAME` the probe runs from that network namespace (a thread of its own
//! enters it; a tokio worker never does): on the build machines libvirtd and the bridges live
//! in `bkstore`. On a store server probes go out of vmd's own namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use backroom_profiles::{Health, Probe};

use crate::error::{Error, Result};

/// Runs `health`'s probe against `addr`; `Err` says what failed.
pub async fn probe(health: &Health, addr: IpAddr, netns: Option<&str>) -> Result<()> {
    let (port, http_path) = match health.probe() {
        Some(Probe::Tcp(t)) => (t.port, None),
        Some(Probe::Http(h)) => (h.port, Some(h.path.clone())),
        Some(Probe::Exec(_)) => {
            return Err(Error::Unsupported(
                "exec probes need a guest agent: not supported for VMs".into(),
            ));
        }
        None => return Err(Error::Unsupported("the health check has no probe".into())),
    };
    let timeout = health.timeout.to_std().max(Duration::from_millis(100));
    let target = SocketAddr::new(addr, port);
    let run = move || probe_blocking(target, http_path.as_deref(), timeout);
    match netns {
        // A thread of its own enters the namespace (see the module's header).
        Some(ns) => {
            let path = backroom_daemon::netns::resolve(ns);
            tokio::task::spawn_blocking(move || backroom_daemon::netns::run_in(&path, run))
                .await
                .map_err(|e| Error::io("running a health probe", std::io::Error::other(e)))?
                .map_err(|e| Error::io("entering the probe network namespace", e))?
        }
        None => tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| Error::io("running a health probe", std::io::Error::other(e)))?,
    }
}

fn probe_blocking(target: SocketAddr, http_path: Option<&str>, timeout: Duration) -> Result<()> {
    let tcp = || format!("tcp {target}");
    let mut s = TcpStream::connect_timeout(&target, timeout)
        .map_err(|source| Error::Probe { what: tcp(), source })?;
    let Some(path) = http_path else { return Ok(()) };
    let what = || format!("http {target}{path}");
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n", target.ip());
    s.write_all(req.as_bytes()).map_err(|source| Error::Probe { what: what(), source })?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|source| Error::Probe { what: what(), source })?;
    let line = String::from_utf8_lossy(&buf[..n]);
    let code = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..400).contains(&c) => Ok(()),
        Some(c) => Err(Error::ProbeAnswer { what: what(), answer: format!("answered {c}") }),
        None => Err(Error::ProbeAnswer { what: what(), answer: "gave no HTTP status line".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(yaml: &str) -> Health {
        let t = format!(
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: t}}\nworkloads:\n  - name: v\n    kind: vm\n    cpus: 1\n    memory: 1Gi\n    boot: {{kernel: {{kernel: /k}}}}\n    health: {yaml}\n"
        );
        backroom_profiles::render_str("t.yaml", &t)
            .unwrap()
            .profile
            .vms()
            .next()
            .unwrap()
            .health
            .clone()
            .unwrap()
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_loopback() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().take(3) {
                let mut s = s.unwrap();
                let mut b = [0u8; 256];
                let _ = s.read(&mut b);
                let _ = s.write_all(b"HTTP/1.0 204 No Content\r\n\r\n");
            }
        });
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        probe(&health(&format!("{{tcp: {{port: {port}}}}}")), lo, None).await.unwrap();
        probe(&health(&format!("{{http: {{port: {port}, path: /healthz}}}}")), lo, None)
            .await
            .unwrap();
        let closed =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = probe(&health(&format!("{{tcp: {{port: {closed}}}, timeout: 1s}}")), lo, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("tcp 127.0.0.1"), "{e}");
        let e = probe(&health("{exec: [true]}"), lo, None).await.unwrap_err();
        assert!(e.to_string().contains("guest agent"), "{e}");
        // From inside a namespace: this process's own, entered by a thread of its own.
        probe(&health(&format!("{{tcp: {{port: {port}}}}}")), lo, Some("/proc/self/ns/net"))
            .await
            .unwrap();
        let e = probe(&health("{tcp: {port: 1}}"), lo, Some("/nonexistent/ns")).await.unwrap_err();
        assert!(backroom_daemon::chain(&e).contains("/nonexistent/ns"), "{e}");
    }
}
