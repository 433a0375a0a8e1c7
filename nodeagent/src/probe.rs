//! Health probes. `http` and `tcp` run from the host into the workload's network namespace: a
//! short-lived thread enters the namespace (`/proc/<pid>/ns/net` of the task) just to create
//! the socket, which stays in that namespace; the connection then runs on tokio. `exec` runs a
//! command inside the container as a task exec (through the runtime).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One probe's outcome, with a sentence for `nodectl status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    pub reason: String,
}

impl ProbeResult {
    pub fn ok(reason: String) -> Self {
        ProbeResult { ok: true, reason }
    }
    pub fn fail(reason: String) -> Self {
        ProbeResult { ok: false, reason }
    }
}

/// A TCP socket created inside the network namespace at `netns` (a `/proc/<pid>/ns/net` or a
/// `/run/netns/<name>` path).
async fn socket_in(netns: PathBuf, v6: bool) -> std::io::Result<OwnedFd> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("netns-socket".into()).spawn(move || {
        let r = (|| {
            let ns = std::fs::File::open(&netns)?;
            move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))?;
            let family = if v6 { AddressFamily::INET6 } else { AddressFamily::INET };
            Ok(rustix::net::socket_with(
                family,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )?)
        })();
        let _ = tx.send(r);
    })?;
    rx.await.map_err(|_| std::io::Error::other("the namespace thread died"))?
}

async fn connect(
    netns: &std::path::Path,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let fd = socket_in(netns.to_path_buf(), addr.is_ipv6()).await?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    socket.connect(addr).await
}

/// The address probes connect to: the workload's first address, else loopback.
pub fn target(addresses: &[String]) -> IpAddr {
    addresses
        .first()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

pub async fn tcp(netns: PathBuf, addr: SocketAddr, timeout: Duration) -> ProbeResult {
    let t0 = Instant::now();
    match tokio::time::timeout(timeout, connect(&netns, addr)).await {
        Ok(Ok(_)) => {
            ProbeResult::ok(format!("tcp {addr} connected in {} ms", t0.elapsed().as_millis()))
        }
        Ok(Err(e)) => ProbeResult::fail(format!("tcp {addr}: {e}")),
        Err(_) => {
            ProbeResult::fail(format!("tcp {addr}: no answer within {} ms", timeout.as_millis()))
        }
    }
}

pub async fn http(netns: PathBuf, addr: SocketAddr, path: &str, timeout: Duration) -> ProbeResult {
    let t0 = Instant::now();
    let run = async {
        let mut s = connect(&netns, addr).await?;
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: backroom-nodeagent\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < 4096 {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => ProbeResult::fail(format!(
            "http {addr}{path}: no answer within {} ms",
            timeout.as_millis()
        )),
        Ok(Err(e)) => ProbeResult::fail(format!("http {addr}{path}: {e}")),
        Ok(Ok(buf)) => {
            let line = String::from_utf8_lossy(&buf);
            let line = line.lines().next().unwrap_or("").trim().to_string();
            let code: Option<u16> = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            let ms = t0.elapsed().as_millis();
            match code {
                Some(c) if (200..400).contains(&c) => {
                    ProbeResult::ok(format!("http {c} in {ms} ms"))
                }
                Some(c) => ProbeResult::fail(format!("http {addr}{path} answered {c}")),
                None => {
                    ProbeResult::fail(format!("http {addr}{path}: not an HTTP answer: {line:?}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_target_the_first_address() {
        assert_eq!(
            target(&["172.30.0.10/24".into(), "10.0.0.2/24".into()]).to_string(),
            "172.30.0.10"
        );
        assert_eq!(target(&[]).to_string(), "127.0.0.1");
    }

    #[tokio::test]
    async fn http_and_tcp_probes_in_our_own_namespace() {
        // Our own namespace stands in for a workload's: a server on loopback answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes()).await;
            }
        });
        let ns = PathBuf::from("/proc/self/ns/net");
        let ok = http(ns.clone(), addr, "/", Duration::from_secs(2)).await;
        assert!(ok.ok, "{ok:?}");
        let bad = http(ns.clone(), addr, "/", Duration::from_secs(2)).await;
        assert!(!bad.ok && bad.reason.contains("503"), "{bad:?}");
        let refused = tcp(ns, addr, Duration::from_secs(2)).await;
        assert!(!refused.ok, "nobody listens any more: {refused:?}");
    }
}
