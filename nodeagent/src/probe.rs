//! Health probes behind one trait, [`Prober`]: the engine plans each probe as data (a
//! [`ProbeRequest`]: what to check, where, how long to wait) and a prober carries it out.
//! [`HostProber`] is the real one: `http` and `tcp` run from the host into the workload's
//! network namespace (a short-lived thread enters the namespace, `/proc/<pid>/ns/net` of the
//! task, just to create the socket, which stays in that namespace; the connection then runs on
//! tokio), `exec` runs a command inside the container as a task exec (through the runtime).
//! [`MemoryProber`] answers what a test tells it to.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_spec::runtime::Process;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::Runtime;

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

/// What to check.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// GET `path` from `addr`, with a socket made in the namespace `netns`.
    Http { netns: PathBuf, addr: SocketAddr, path: String },
    /// Connect to `addr` from the namespace `netns`.
    Tcp { netns: PathBuf, addr: SocketAddr },
    /// Run `process` in the container; exit code 0 is healthy. `argv` names it in reasons.
    Exec { process: Box<Process>, argv: Vec<String> },
}

/// One probe, planned by the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeRequest {
    pub workload: String,
    pub container_id: String,
    pub check: Check,
    pub timeout: Duration,
}

/// Carries out health probes.
pub trait Prober: Send + Sync + 'static {
    fn probe(&self, req: ProbeRequest) -> impl Future<Output = ProbeResult> + Send;
}

/// The real prober: http and tcp from the host into the workload's namespace, exec through
/// the runtime.
pub struct HostProber<R> {
    runtime: Arc<R>,
}

impl<R> HostProber<R> {
    pub fn new(runtime: Arc<R>) -> Self {
        HostProber { runtime }
    }
}

impl<R: Runtime> Prober for HostProber<R> {
    async fn probe(&self, req: ProbeRequest) -> ProbeResult {
        match req.check {
            Check::Http { netns, addr, path } => http(netns, addr, &path, req.timeout).await,
            Check::Tcp { netns, addr } => tcp(netns, addr, req.timeout).await,
            Check::Exec { process, argv } => {
                exec(&*self.runtime, &req.container_id, *process, &argv, req.timeout).await
            }
        }
    }
}

async fn exec<R: Runtime>(
    runtime: &R,
    id: &str,
    process: Process,
    argv: &[String],
    timeout: Duration,
) -> ProbeResult {
    let t0 = Instant::now();
    let shown = argv.join(" ");
    match runtime.exec(id, process, timeout).await {
        Ok(0) => {
            ProbeResult::ok(format!("exec {shown} exited 0 in {} ms", t0.elapsed().as_millis()))
        }
        Ok(c) => ProbeResult::fail(format!("exec {shown} exited with code {c}")),
        Err(e) => ProbeResult::fail(format!("exec {shown}: {}", backroom_daemon::chain(&e))),
    }
}

/// A prober for tests: every probe is healthy unless the test says otherwise for a workload;
/// it counts the probes it was asked.
#[derive(Clone, Default)]
pub struct MemoryProber {
    inner: Arc<Mutex<MemoryProbes>>,
}

#[derive(Default)]
struct MemoryProbes {
    answers: BTreeMap<String, ProbeResult>,
    asked: BTreeMap<String, usize>,
}

impl MemoryProber {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryProbes> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, probes of `workload` answer `ok` with `reason`.
    pub fn answer(&self, workload: &str, ok: bool, reason: &str) {
        let r = ProbeResult { ok, reason: reason.to_string() };
        self.lock().answers.insert(workload.to_string(), r);
    }

    /// How many probes of `workload` were carried out.
    pub fn asked(&self, workload: &str) -> usize {
        self.lock().asked.get(workload).copied().unwrap_or(0)
    }
}

impl Prober for MemoryProber {
    async fn probe(&self, req: ProbeRequest) -> ProbeResult {
        let mut g = self.lock();
        *g.asked.entry(req.workload.clone()).or_default() += 1;
        g.answers
            .get(&req.workload)
            .cloned()
            .unwrap_or_else(|| ProbeResult::ok("in-memory probe: ok".into()))
    }
}

/// A TCP socket created inside the network namespace at `netns` (a `/proc/<pid>/ns/net` or a
/// `/run/netns/<name>` path).
async fn socket_in(netns: PathBuf, v6: bool) -> std::io::Result<OwnedFd> {
    let family = if v6 { AddressFamily::INET6 } else { AddressFamily::INET };
    let made = tokio::task::spawn_blocking(move || {
        backroom_daemon::netns::run_in(&netns, move || {
            rustix::net::socket_with(
                family,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )
        })
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(made?)
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

async fn tcp(netns: PathBuf, addr: SocketAddr, timeout: Duration) -> ProbeResult {
    let t0 = Instant::now();
    match tokio::time::timeout(timeout, connect(&netns, addr)).await {
        Ok(Ok(_)) => {
            ProbeResult::ok(format!("tcp {addr} connected in {} ms", t0.elapsed().as_millis()))
        }
        Ok(Err(e)) => ProbeResult::fail(format!("tcp {addr}: {}", backroom_daemon::chain(&e))),
        Err(_) => {
            ProbeResult::fail(format!("tcp {addr}: no answer within {} ms", timeout.as_millis()))
        }
    }
}

async fn http(netns: PathBuf, addr: SocketAddr, path: &str, timeout: Duration) -> ProbeResult {
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
        Ok(Err(e)) => {
            ProbeResult::fail(format!("http {addr}{path}: {}", backroom_daemon::chain(&e)))
        }
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
    async fn the_memory_prober_answers_as_told_and_counts() {
        let p = MemoryProber::default();
        let req = |w: &str| ProbeRequest {
            workload: w.into(),
            container_id: format!("{w}.1"),
            check: Check::Tcp {
                netns: "/proc/self/ns/net".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
            },
            timeout: Duration::from_secs(1),
        };
        assert!(p.probe(req("a")).await.ok);
        p.answer("a", false, "http 127.0.0.1:8080/healthz answered 500");
        let r = p.probe(req("a")).await;
        assert_eq!((r.ok, r.reason.as_str()), (false, "http 127.0.0.1:8080/healthz answered 500"));
        assert!(p.probe(req("b")).await.ok);
        assert_eq!((p.asked("a"), p.asked("b"), p.asked("c")), (2, 1, 0));
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
