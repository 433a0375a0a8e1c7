//! The network checks a technician runs from the Network screen: ping the gateway, resolve and
//! reach central, reach the registry. Each says in one sentence what worked and where it
//! stopped. They run in the console's own network namespace (the node's).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long each step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckKind {
    Gateway,
    Central,
    Registry,
}

impl CheckKind {
    pub fn label(self) -> &'static str {
        match self {
            CheckKind::Gateway => "ping the gateway",
            CheckKind::Central => "reach central",
            CheckKind::Registry => "reach the registry",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Passed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub kind: CheckKind,
    pub outcome: Outcome,
    pub text: String,
}

impl CheckResult {
    pub fn running(kind: CheckKind) -> CheckResult {
        CheckResult { kind, outcome: Outcome::Running, text: "running…".into() }
    }
    fn done(kind: CheckKind, r: Result<String, String>) -> CheckResult {
        match r {
            Ok(text) => CheckResult { kind, outcome: Outcome::Passed, text },
            Err(text) => CheckResult { kind, outcome: Outcome::Failed, text },
        }
    }
}

/// What the checks aim at.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub gateway: String,
    /// central's URL, e.g. `https://central.example:7443`.
    pub central: String,
    /// Registry hosts (`host` or `host:port`).
    pub registries: Vec<String>,
    /// The store network's namespace, if not the console's own (development and tests): the
    /// gateway is pinged from there.
    pub netns: Option<String>,
}

pub async fn run(kind: CheckKind, t: &Targets) -> CheckResult {
    let r = match kind {
        CheckKind::Gateway => gateway(&t.gateway, t.netns.as_deref()).await,
        CheckKind::Central => match host_port(&t.central, 443) {
            Some((h, p)) => reach(&h, p).await,
            None => Err("this node has no central address (it runs standalone)".into()),
        },
        CheckKind::Registry => match t.registries.first() {
            Some(r) => match host_port(r, 443) {
                Some((h, p)) => reach(&h, p).await.map(|s| {
                    let more = t.registries.len() - 1;
                    if more > 0 { format!("{s} ({more} more not checked)") } else { s }
                }),
                None => Err(format!("{r} is not a registry address")),
            },
            None => Err("the profile pulls from no registry".into()),
        },
    };
    CheckResult::done(kind, r)
}

/// `host` and `port` from a URL or `host[:port]`.
pub fn host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let auth = rest.split('/').next()?;
    if auth.is_empty() {
        return None;
    }
    if let Some(v6) = auth.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        let port = tail.strip_prefix(':').map_or(Some(default_port), |p| p.parse().ok())?;
        return Some((h.to_string(), port));
    }
    match auth.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((auth.to_string(), default_port)),
    }
}

/// Resolves `host` and opens a TCP connection to it.
pub async fn reach(host: &str, port: u16) -> Result<String, String> {
    let started = Instant::now();
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err(format!("DNS: {host} does not resolve ({e})")),
            Err(_) => {
                return Err(format!("DNS: no answer for {host} in {}s", STEP_TIMEOUT.as_secs()));
            }
        };
    let Some(first) = addrs.first().copied() else {
        return Err(format!("DNS: {host} has no address"));
    };
    let resolved = if host.parse::<IpAddr>().is_ok() {
        String::new()
    } else {
        format!("{host} is {}, ", first.ip())
    };
    match tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(first)).await {
        Ok(Ok(_)) => {
            Ok(format!("{resolved}TCP port {port} answers ({} ms)", started.elapsed().as_millis()))
        }
        Ok(Err(e)) => Err(format!("{resolved}TCP port {port}: {e}")),
        Err(_) => {
            Err(format!("{resolved}TCP port {port}: no answer in {}s", STEP_TIMEOUT.as_secs()))
        }
    }
}

/// One ICMP echo to the gateway (a raw socket: the console runs as root).
pub async fn gateway(gw: &str, netns: Option<&str>) -> Result<String, String> {
    if gw.is_empty() {
        return Err("there is no default gateway (no route out of the store)".into());
    }
    let ip: std::net::Ipv4Addr =
        gw.parse().map_err(|_| format!("the gateway {gw} is not an IPv4 address"))?;
    let gw = gw.to_string();
    let ns = netns.map(backroom_daemon::netns::named);
    tokio::task::spawn_blocking(move || match ns {
        Some(ns) => backroom_daemon::netns::run_in(&ns, move || ping(ip))
            .map_err(|e| e.to_string())
            .and_then(|r| r),
        None => ping(ip),
    })
    .await
    .map_err(|e| e.to_string())?
    .map(|ms| format!("{gw} answers ({ms} ms)"))
    .map_err(|e| format!("{gw}: {e}"))
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ping(ip: std::net::Ipv4Addr) -> Result<u128, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .map_err(|e| format!("cannot open an ICMP socket ({e}; the console needs root)"))?;
    // A raw socket reads and writes datagrams: std's UdpSocket calls are the safe wrappers of
    // sendto and recvfrom that it needs.
    let sock: std::net::UdpSocket = raw.into();
    sock.set_read_timeout(Some(STEP_TIMEOUT)).map_err(|e| e.to_string())?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"backroom-console");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let started = Instant::now();
    sock.send_to(&pkt, SocketAddr::new(IpAddr::V4(ip), 0))
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut buf = [0u8; 1500];
    loop {
        if started.elapsed() > STEP_TIMEOUT {
            return Err(format!("no answer in {}s", STEP_TIMEOUT.as_secs()));
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer in {}s", STEP_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        };
        // A raw IPv4 socket hands back the IP header too.
        let data = &buf[..n];
        let ihl = usize::from(data.first().copied().unwrap_or(0x45) & 0x0f) * 4;
        let icmp = data.get(ihl..).unwrap_or_default();
        if from.ip() == IpAddr::V4(ip)
            && icmp.first() == Some(&0)
            && icmp.get(4..6) == Some(&id.to_be_bytes()[..])
        {
            return Ok(started.elapsed().as_millis());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_reads_urls_and_hosts() {
        assert_eq!(
            host_port("https://central.example:7443", 443),
            Some(("central.example".into(), 7443))
        );
        assert_eq!(
            host_port("https://central.example/x", 443),
            Some(("central.example".into(), 443))
        );
        assert_eq!(host_port("127.0.0.1:5000", 443), Some(("127.0.0.1".into(), 5000)));
        assert_eq!(host_port("registry.example", 443), Some(("registry.example".into(), 443)));
        assert_eq!(host_port("https://[::1]:7443", 443), Some(("::1".into(), 7443)));
        assert_eq!(host_port("", 443), None);
    }

    #[test]
    fn checksum_of_an_echo_request() {
        // type 8, code 0, id 0x1234, seq 1: the sum folds to 0xffff with its checksum in.
        let mut p = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }
}
