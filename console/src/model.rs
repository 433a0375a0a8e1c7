//! What the console knows about the node at one moment ([`Facts`]), gathered by a
//! [`crate::backend::Backend`], and the sentences the board makes of it: worst first, in words a
//! store manager can read aloud.

use backroom_api::netd as netpb;
use backroom_api::nodeagent as pb;

/// One look at the node. Each source may be missing, with the reason why.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub at_ms: i64,
    /// nodeagent's status, or why it does not answer.
    pub agent: Option<pb::StatusReply>,
    pub agent_error: String,
    /// netd's view of the networks, or why it does not answer.
    pub net: Option<netpb::ObserveReply>,
    pub net_error: String,
    pub uplink: Uplink,
    pub host: Host,
    /// systemd's word on each daemon (`active`, `failed`…), when systemd is there.
    pub daemons: Vec<(String, String)>,
    /// The store's id from the node's identity file, for when nodeagent does not answer.
    pub store_id: String,
    /// nodeagent's latest events, newest first.
    pub events: Vec<pb::Event>,
    /// What the store OS image's first boot is doing ("looking for a stick labelled
    /// BACKROOM"…), while the node is not enrolled; empty otherwise.
    pub first_boot: String,
}

/// The uplink as the kernel sees it in the console's network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uplink {
    pub interface: String,
    /// None: the interface is not there (or unknown).
    pub carrier: Option<bool>,
    pub addresses: Vec<String>,
    pub gateway: String,
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    pub cpu_percent: Option<u8>,
    pub mem_used: u64,
    pub mem_total: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// How bad something is; the board lists the worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Bad = 0,
    Warn = 1,
    Busy = 2,
    Good = 3,
}

/// A workload's severity from its state and health.
pub fn workload_severity(w: &pb::WorkloadStatus) -> Severity {
    match w.state.as_str() {
        "failed" | "backoff" | "unhealthy" => Severity::Bad,
        "stopped" => Severity::Warn,
        "running" if w.health == "unhealthy" => Severity::Bad,
        "running" => Severity::Good,
        _ => Severity::Busy,
    }
}

/// The workloads, worst first (then by name).
pub fn workloads_worst_first(s: &pb::StatusReply) -> Vec<pb::WorkloadStatus> {
    let mut w = s.workloads.clone();
    w.sort_by(|a, b| {
        workload_severity(a).cmp(&workload_severity(b)).then_with(|| a.name.cmp(&b.name))
    });
    w
}

/// The link with central, as [`Facts`] has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Online,
    Offline { since_ms: i64, last_contact_ms: i64, why: String },
    Standalone,
    NotEnrolled(String),
    Unknown,
}

impl Facts {
    pub fn link(&self) -> Link {
        let Some(s) = &self.agent else { return Link::Unknown };
        let c = s.central.as_str();
        if c.starts_with("online") {
            Link::Online
        } else if c.starts_with("standalone") {
            Link::Standalone
        } else if let Some(why) = c.strip_prefix("not enrolled: ") {
            Link::NotEnrolled(why.to_string())
        } else if c.starts_with("refused") {
            Link::NotEnrolled(c.to_string())
        } else {
            Link::Offline {
                since_ms: s.central_since_unix_ms,
                last_contact_ms: s.central_last_contact_unix_ms,
                why: why_offline(&s.central_error),
            }
        }
    }

    /// The one sentence at the top of the board.
    pub fn headline(&self) -> (Severity, String) {
        if !self.first_boot.is_empty() && self.store_id.is_empty() {
            let bad = self.first_boot.starts_with("no ") || self.first_boot.contains("cannot");
            let sev = if bad { Severity::Bad } else { Severity::Busy };
            return (sev, format!("first boot: {}", first_line(&self.first_boot)));
        }
        let Some(s) = &self.agent else {
            return (
                Severity::Bad,
                "nodeagent is not running: apps cannot be managed (a: actions)".into(),
            );
        };
        let bad: Vec<_> = workloads_worst_first(s)
            .into_iter()
            .filter(|w| workload_severity(w) == Severity::Bad)
            .collect();
        if let Some(w) = bad.first() {
            let more = match bad.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return (Severity::Bad, format!("{} is {}{more}", w.name, state_words(w)));
        }
        if let Some(p) = s.problems.first() {
            return (Severity::Bad, format!("{}: {}", p.subject, first_line(&p.message)));
        }
        if self.uplink.carrier == Some(false) {
            return (
                Severity::Bad,
                format!("the network cable of {} is unplugged", self.uplink.interface),
            );
        }
        if let Some(w) = s.workloads.iter().find(|w| workload_severity(w) == Severity::Busy) {
            return (Severity::Busy, format!("{} is {}", w.name, state_words(w)));
        }
        match self.link() {
            Link::Offline { .. } => (
                Severity::Warn,
                "all apps run; central (HQ) cannot be reached, the store keeps trading".into(),
            ),
            _ if s.workloads.is_empty() => (Severity::Warn, "no apps are set up yet".into()),
            _ => (Severity::Good, "everything is working".into()),
        }
    }
}

/// A workload's state in words: "running and healthy", "failed: crash loop (4 restarts)".
pub fn state_words(w: &pb::WorkloadStatus) -> String {
    let base = match (w.state.as_str(), w.health.as_str()) {
        ("running", "healthy") => "running and healthy".to_string(),
        ("running", "unhealthy") => "running but not healthy".to_string(),
        ("running", _) => "running".to_string(),
        ("backoff", _) => "waiting to restart".to_string(),
        (s, _) => s.to_string(),
    };
    if w.reason.is_empty() || base.starts_with("running and") {
        base
    } else {
        format!("{base}: {}", first_line(&w.reason))
    }
}

/// Names the layer a connection failed at, for someone reading it to HQ.
pub fn why_offline(error: &str) -> String {
    let e = error.to_ascii_lowercase();
    let layer = if e.is_empty() {
        return "reconnecting".into();
    } else if e.contains("dns") || e.contains("resolve") || e.contains("lookup") {
        "DNS: the name does not resolve"
    } else if e.contains("certificate") || e.contains("unknownissuer") || e.contains("expired") {
        "certificate: not trusted"
    } else if e.contains("tls") || e.contains("handshake") || e.contains("alert") {
        "TLS: the handshake fails"
    } else if e.contains("refused")
        || e.contains("unreachable")
        || e.contains("timed out")
        || e.contains("timeout")
        || e.contains("tcp")
        || e.contains("connect")
    {
        "TCP: cannot connect"
    } else {
        "the session ends"
    };
    layer.to_string()
}

pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// `3f2a91c` from a 64-hex revision; "none" for "".
pub fn short_rev(r: &str) -> &str {
    if r.is_empty() { "none" } else { &r[..r.len().min(7)] }
}

/// `14:02` (UTC) from unix ms.
pub fn clock_hm(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}", day / 3600, (day % 3600) / 60)
}

/// `14:02:11` (UTC) from unix ms.
pub fn clock_hms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", day / 3600, (day % 3600) / 60, day % 60)
}

/// "3 min", "2 h 5 min", "4 days" from a length of time in ms.
pub fn span(ms: i64) -> String {
    let m = ms.max(0) / 60_000;
    match m {
        0 => format!("{} s", ms.max(0) / 1000),
        1..=59 => format!("{m} min"),
        60..=2879 => format!("{} h {} min", m / 60, m % 60),
        _ => format!("{} days", m / 1440),
    }
}

/// Bytes as GiB with one decimal.
pub fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 30) as f64)
}
