//! Where the console's facts come from and where its actions go: the [`Backend`] trait, and
//! [`Node`], the real one (nodeagent's, netd's and vmd's sockets, the kernel, systemd, the USB
//! stick). When nodeagent does not answer, [`Node`] checks codes itself with the store's console
//! secret and keeps what it did in a file nodeagent sends to central when it is back
//! ([`PENDING_FILE`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backroom_api::netd as netpb;
use backroom_api::netd::netd_client::NetdClient;
use backroom_api::nodeagent as pb;
use backroom_api::nodeagent::node_agent_client::NodeAgentClient;
use backroom_api::vmd as vmpb;
use backroom_api::vmd::vmd_client::VmdClient;
use backroom_session::console_code::{self, Limiter, Role, Secret};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::app::{Action, Grant};
use crate::bundle::{self, Part};
use crate::checks::{self, CheckKind, CheckResult, Targets};
use crate::host::{self, CpuMeter};
use crate::model::Facts;

/// Records of what the console did while nodeagent was down, under nodeagent's state folder;
/// nodeagent takes them in at its next start (recorded, and sent to central).
pub const PENDING_FILE: &str = "console/pending.jsonl";

/// How long the console waits for a daemon's answer before it says the daemon is not there.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// One record of [`PENDING_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub at_ms: i64,
    /// `console_unlocked` | `console_refused` | `console_action`
    pub kind: String,
    #[serde(default)]
    pub workload: String,
    pub message: String,
}

pub trait Backend: Send + Sync + 'static {
    fn facts(&self) -> BoxFuture<'_, Facts>;
    fn unlock(&self, code: String) -> BoxFuture<'_, Result<Grant, String>>;
    fn act(&self, code: String, action: Action) -> BoxFuture<'_, Result<String, String>>;
    /// An app's log (a container's, or a VM's serial console output), followed.
    fn log(&self, name: String, vm: bool) -> BoxStream<'static, Result<String, String>>;
    fn check(&self, kind: CheckKind, facts: &Facts) -> BoxFuture<'_, CheckResult>;
}

/// Where the real node is.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub nodeagent_socket: PathBuf,
    pub netd_socket: PathBuf,
    pub vmd_socket: PathBuf,
    /// nodeagent's state folder: disk use, the console secret, [`PENDING_FILE`].
    pub state_dir: PathBuf,
    /// netd's and vmd's state folders (their files go into support bundles).
    pub netd_state_dir: PathBuf,
    pub vmd_state_dir: PathBuf,
    /// A folder where a USB stick is mounted; None: find the stick by its label.
    pub stick: Option<PathBuf>,
    /// The systemd units of the Backroom daemons.
    pub services: Vec<String>,
    /// The store network's namespace when it is not the console's own (development, tests).
    pub netns: Option<String>,
    pub bundle_cap: u64,
    /// What the store OS image's first boot is doing (`backroom-firstboot`), shown until the
    /// node is enrolled.
    pub first_boot_status: PathBuf,
}

/// Where the store OS image's first boot writes what it is doing.
pub const FIRST_BOOT_STATUS: &str = "/run/backroom/firstboot";

/// nodeagent's count of wrong codes (see nodeagent's `console` module): the console uses the
/// same file when it checks codes itself.
pub const LIMITER_FILE: &str = "console/limiter.json";

/// How many of nodeagent's events the board keeps.
pub const EVENTS_KEPT: usize = 50;

pub struct Node {
    cfg: NodeConfig,
    events: Arc<Mutex<std::collections::VecDeque<pb::Event>>>,
    cpu: Mutex<CpuMeter>,
    /// Wrong codes while nodeagent is down (nodeagent keeps its own).
    limiter: Mutex<Limiter>,
}

fn now_ms() -> i64 {
    backroom_session::now_ms()
}

/// Whether a failed call means "nodeagent is not there" (then the console works alone).
fn unreachable(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
}

impl Node {
    pub fn new(cfg: NodeConfig) -> Node {
        Node {
            cfg,
            events: Arc::default(),
            cpu: Mutex::new(CpuMeter::default()),
            limiter: Mutex::new(Limiter::default()),
        }
    }

    /// Follows nodeagent's events in the background (again after it restarts), keeping the
    /// latest [`EVENTS_KEPT`] for the board. Call it inside the runtime.
    pub fn follow_events(&self) {
        let (sock, kept) = (self.cfg.nodeagent_socket.clone(), Arc::clone(&self.events));
        tokio::spawn(async move {
            loop {
                if let Ok(ch) = backroom_daemon::socket::connect(&sock).await
                    && let Ok(s) = NodeAgentClient::new(ch).events(pb::EventsRequest {}).await
                {
                    let mut s = s.into_inner();
                    while let Some(Ok(e)) = s.next().await {
                        let mut k = kept.lock().unwrap_or_else(|p| p.into_inner());
                        if k.len() == EVENTS_KEPT {
                            k.pop_back();
                        }
                        k.push_front(e);
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }

    async fn agent(&self) -> Result<NodeAgentClient<tonic::transport::Channel>, String> {
        let ch = tokio::time::timeout(
            ANSWER_TIMEOUT,
            backroom_daemon::socket::connect(&self.cfg.nodeagent_socket),
        )
        .await
        .map_err(|_| "nodeagent does not answer".to_string())?
        .map_err(|e| backroom_daemon::chain(&e))?;
        Ok(NodeAgentClient::new(ch))
    }

    async fn status(&self) -> Result<pb::StatusReply, String> {
        let mut c = self.agent().await?;
        tokio::time::timeout(ANSWER_TIMEOUT, c.status(pb::StatusRequest {}))
            .await
            .map_err(|_| "nodeagent does not answer".to_string())?
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    }

    async fn observe(&self) -> Result<netpb::ObserveReply, String> {
        let ch = tokio::time::timeout(
            ANSWER_TIMEOUT,
            backroom_daemon::socket::connect(&self.cfg.netd_socket),
        )
        .await
        .map_err(|_| "netd does not answer".to_string())?
        .map_err(|e| backroom_daemon::chain(&e))?;
        tokio::time::timeout(ANSWER_TIMEOUT, NetdClient::new(ch).observe(netpb::ObserveRequest {}))
            .await
            .map_err(|_| "netd does not answer".to_string())?
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    }

    async fn daemons(&self) -> Vec<(String, String)> {
        if !Path::new("/run/systemd/system").exists() || self.cfg.services.is_empty() {
            return vec![];
        }
        let out = tokio::process::Command::new("systemctl")
            .arg("is-active")
            .args(&self.cfg.services)
            .output()
            .await;
        let Ok(out) = out else { return vec![] };
        let states = String::from_utf8_lossy(&out.stdout);
        self.cfg.services.iter().cloned().zip(states.lines().map(str::to_string)).collect()
    }

    /// The store id in the node's identity (it is there once the node enrolled).
    fn identity_store(&self) -> Option<String> {
        backroom_session::enroll::Identity::load(&self.central_dir())
            .ok()
            .flatten()
            .map(|i| i.store_id)
    }

    fn central_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("central")
    }

    /// Keeps a record for nodeagent to take in at its next start.
    fn pending(&self, kind: &str, workload: &str, message: String) -> Result<(), String> {
        let path = self.cfg.state_dir.join(PENDING_FILE);
        let rec =
            Pending { at_ms: now_ms(), kind: kind.into(), workload: workload.into(), message };
        let mut line = serde_json::to_string(&rec).map_err(|e| e.to_string())?;
        line.push('\n');
        append_durable(&path, line.as_bytes())
            .map_err(|e| format!("cannot record it in {}: {e}", path.display()))
    }

    /// Checks a code with the store's secret, with no nodeagent; `announce`: record the code's
    /// use (once per unlock, not again for each action it allows).
    fn verify_here(&self, code: &str, announce: bool) -> Result<Grant, String> {
        let now = now_ms();
        let dir = self.central_dir();
        let secret_path = dir.join(console_code::SECRET_FILE);
        let secret = Secret::load(&secret_path)
            .map_err(|e| backroom_daemon::chain(&e))?
            .ok_or_else(|| {
                "this node has no console secret yet: it gets one when it enrolls with central"
                    .to_string()
            })?;
        let store = backroom_session::enroll::Identity::load(&dir)
            .ok()
            .flatten()
            .map(|i| i.store_id)
            .ok_or_else(|| "this node has no identity: it is not enrolled".to_string())?;
        // The same count nodeagent keeps (a restart of either is not a reset).
        let mut kept = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let file = self.cfg.state_dir.join(LIMITER_FILE);
        let mut lim: Limiter = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| kept.clone());
        let r = lim.verify(&secret, &store, code, now);
        *kept = lim.clone();
        drop(kept);
        if let Some(d) = file.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        if let Err(e) = backroom_daemon::fs::write_atomic(
            &file,
            &serde_json::to_vec(&lim).unwrap_or_default(),
            0o600,
        ) {
            tracing::warn!(error = %e, "cannot keep the count of wrong codes");
        }
        match r {
            Ok(g) if !announce => {
                Ok(Grant { role: g.role, expires_ms: g.expires_ms, code: code.to_string() })
            }
            Ok(g) => {
                self.pending(
                    "console_unlocked",
                    "",
                    format!(
                        "{} code accepted at the console (nodeagent down), valid until {}",
                        g.role,
                        crate::model::clock_hm(g.expires_ms)
                    ),
                )?;
                Ok(Grant { role: g.role, expires_ms: g.expires_ms, code: code.to_string() })
            }
            Err(e) => {
                let why = backroom_daemon::chain(&e);
                let _ = self.pending("console_refused", "", format!("a code was refused: {why}"));
                Err(why)
            }
        }
    }

    async fn unlock_code(&self, code: &str) -> Result<Grant, String> {
        let mut c = match self.agent().await {
            Ok(c) => c,
            Err(_) => return self.verify_here(code, true),
        };
        match c.console_unlock(pb::ConsoleUnlockRequest { code: code.to_string() }).await {
            Ok(r) => {
                let r = r.into_inner();
                let role: Role =
                    r.role.parse().map_err(|_| format!("nodeagent gave the role {:?}", r.role))?;
                Ok(Grant { role, expires_ms: r.expires_unix_ms, code: code.to_string() })
            }
            Err(s) if s.code() == tonic::Code::Unimplemented || unreachable(&s) => {
                self.verify_here(code, true)
            }
            Err(s) => Err(s.message().to_string()),
        }
    }

    /// Records something the console did itself (with nodeagent, else in [`PENDING_FILE`]).
    async fn record(&self, code: &str, message: String) -> Result<(), String> {
        if let Ok(mut c) = self.agent().await {
            let req = pb::ConsoleActionRequest {
                code: code.to_string(),
                kind: "record".into(),
                message: message.clone(),
                ..Default::default()
            };
            match c.console_action(req).await {
                Ok(_) => return Ok(()),
                Err(s) if !unreachable(&s) => return Err(s.message().to_string()),
                Err(_) => {}
            }
        }
        self.verify_here(code, false)?;
        self.pending("console_action", "", format!("{message} (nodeagent was down)"))
    }

    async fn bundle(&self, code: &str) -> Result<String, String> {
        self.record(code, "support bundle requested".into()).await?;
        let stick = bundle::find_stick(self.cfg.stick.as_deref())?;
        let at = now_ms();
        let mut parts = vec![];
        let status = self.status().await;
        let store = match &status {
            Ok(s) => s.store_id.clone(),
            Err(_) => self.identity_store().unwrap_or_default(),
        };
        match &status {
            Ok(s) => {
                parts.push(Part {
                    name: "status.txt".into(),
                    data: format!("{s:#?}\n").into_bytes(),
                });
            }
            Err(e) => parts.push(Part {
                name: "status.txt".into(),
                data: format!("nodeagent does not answer: {e}\n").into_bytes(),
            }),
        }
        if let Ok(n) = self.observe().await {
            parts.push(Part {
                name: "netd-observe.txt".into(),
                data: format!("{n:#?}\n").into_bytes(),
            });
        }
        // The desired profile, env values hidden.
        if let Ok(s) = &status {
            let rev =
                self.cfg.state_dir.join("revisions").join(format!("{}.yaml", s.desired_revision));
            if let Ok(y) = std::fs::read_to_string(&rev) {
                parts.push(Part {
                    name: "profile.yaml".into(),
                    data: bundle::redact_env(&y).into_bytes(),
                });
            }
            for w in &s.workloads {
                let text = self.log_tail(&w.name, w.kind == "vm").await;
                parts.push(Part { name: format!("logs/{}.log", w.name), data: text.into_bytes() });
            }
        }
        for (dir, prefix) in [
            (self.cfg.state_dir.clone(), "nodeagent"),
            (self.cfg.netd_state_dir.clone(), "netd"),
            (self.cfg.vmd_state_dir.clone(), "vmd"),
        ] {
            for p in state_files(&dir) {
                if let Ok(data) = std::fs::read(&p) {
                    let name =
                        p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    parts.push(Part { name: format!("state/{prefix}/{name}"), data });
                }
            }
        }
        if let Ok(data) = std::fs::read(self.cfg.state_dir.join(PENDING_FILE)) {
            parts.push(Part { name: "console-pending.jsonl".into(), data });
        }
        parts.push(Part {
            name: "journal.txt".into(),
            data: journal_tail(&self.cfg.services).await,
        });
        let (path, size) = bundle::write(&stick.dir, &store, at, parts, self.cfg.bundle_cap)?;
        let msg = format!(
            "support bundle written: {} ({} KiB); the stick can be removed",
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            size / 1024
        );
        drop(stick);
        self.record(code, msg.clone()).await?;
        Ok(msg)
    }

    async fn log_tail(&self, name: &str, vm: bool) -> String {
        let mut s = self.log(name.to_string(), vm).take(1);
        match tokio::time::timeout(ANSWER_TIMEOUT, s.next()).await {
            Ok(Some(Ok(t))) => t,
            Ok(Some(Err(e))) => format!("(no log: {e})\n"),
            _ => "(no log)\n".into(),
        }
    }

    async fn restart_daemons(&self, code: &str) -> Result<String, String> {
        if !Path::new("/run/systemd/system").exists() {
            return Err(
                "systemd does not run this machine: the services cannot be restarted from here"
                    .into(),
            );
        }
        self.record(code, format!("restart of {} requested", self.cfg.services.join(", "))).await?;
        let out = tokio::process::Command::new("systemctl")
            .arg("restart")
            .args(&self.cfg.services)
            .output()
            .await
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        let msg = if out.status.success() {
            format!("restarted {}", self.cfg.services.join(", "))
        } else {
            format!("systemctl restart failed: {}", String::from_utf8_lossy(&out.stderr).trim())
        };
        // nodeagent may still be starting: keep trying the record a little.
        for _ in 0..10 {
            if self.record(code, msg.clone()).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if out.status.success() { Ok(msg) } else { Err(msg) }
    }
}

/// The state files worth a look (JSON and YAML at the top of a folder), never key material.
fn state_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (n.ends_with(".json") || n.ends_with(".jsonl"))
                && !n.contains("identity")
                && !n.contains("key")
                && !n.contains("token")
        })
        .collect();
    v.sort();
    v
}

async fn journal_tail(services: &[String]) -> Vec<u8> {
    let mut cmd = tokio::process::Command::new("journalctl");
    cmd.args(["--no-pager", "-n", "3000", "-o", "short-iso"]);
    for s in services {
        cmd.args(["-u", s]);
    }
    match cmd.output().await {
        Ok(out) if out.status.success() => out.stdout,
        Ok(out) => {
            format!("journalctl: {}\n", String::from_utf8_lossy(&out.stderr).trim()).into_bytes()
        }
        Err(e) => format!("no journal: {e}\n").into_bytes(),
    }
}

/// Appends and flushes to disk (the folder is made if needed).
pub fn append_durable(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn action_request(code: String, a: &Action) -> pb::ConsoleActionRequest {
    let mut r = pb::ConsoleActionRequest { code, ..Default::default() };
    match a {
        Action::Restart(w) => {
            r.kind = "restart".into();
            r.workload = w.clone();
        }
        Action::Rollback => r.kind = "rollback".into(),
        Action::Reconcile => r.kind = "reconcile".into(),
        Action::Reenroll(t) => {
            r.kind = "reenroll".into();
            r.token = t.clone();
        }
        Action::Override(o) => {
            r.kind = "override".into();
            r.r#override = Some(pb::ConsoleOverride {
                address: o.address.clone(),
                gateway: o.gateway.clone(),
                dns: o.dns.clone(),
                vlan: o.vlan,
                minutes: o.minutes,
            });
        }
        Action::ClearOverride => r.kind = "clear_override".into(),
        Action::ConfirmOverride => r.kind = "confirm_override".into(),
        Action::Bundle | Action::RestartDaemons => r.kind = "record".into(),
    }
    r
}

impl Backend for Node {
    fn facts(&self) -> BoxFuture<'_, Facts> {
        async move {
            let (agent, net) = tokio::join!(self.status(), self.observe());
            let profile_uplink =
                agent.as_ref().map(|s| s.uplink_interface.clone()).unwrap_or_default();
            let bridge = agent.as_ref().ok().and_then(|s| {
                s.segments
                    .iter()
                    .find(|g| g.vlan == "untagged" && g.address != "none")
                    .map(|g| format!("br-{}", g.name))
            });
            let uplink =
                host::uplink(self.cfg.netns.as_deref(), &profile_uplink, bridge.as_deref()).await;
            let daemons = self.daemons().await;
            let host = {
                let mut cpu = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
                host::host(&mut cpu, &self.cfg.state_dir)
            };
            let (agent, agent_error) = match agent {
                Ok(s) => (Some(s), String::new()),
                Err(e) => (None, e),
            };
            let (net, net_error) = match net {
                Ok(n) => (Some(n), String::new()),
                Err(e) => (None, e),
            };
            let store_id = match &agent {
                Some(s) => s.store_id.clone(),
                None => self.identity_store().unwrap_or_default(),
            };
            let first_boot = match self.identity_store() {
                Some(_) => String::new(),
                None => std::fs::read_to_string(&self.cfg.first_boot_status)
                    .map(|t| t.trim().to_string())
                    .unwrap_or_default(),
            };
            Facts {
                first_boot,
                at_ms: now_ms(),
                agent,
                agent_error,
                net,
                net_error,
                uplink,
                host,
                daemons,
                store_id,
                events: self
                    .events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect(),
            }
        }
        .boxed()
    }

    fn unlock(&self, code: String) -> BoxFuture<'_, Result<Grant, String>> {
        async move { self.unlock_code(&code).await }.boxed()
    }

    fn act(&self, code: String, action: Action) -> BoxFuture<'_, Result<String, String>> {
        async move {
            match &action {
                Action::Bundle => return self.bundle(&code).await,
                Action::RestartDaemons => return self.restart_daemons(&code).await,
                _ => {}
            }
            let action = match action {
                Action::Reenroll(t) if t.is_empty() => {
                    let stick = bundle::find_stick(self.cfg.stick.as_deref())?;
                    Action::Reenroll(bundle::token_on_stick(&stick.dir)?)
                }
                a => a,
            };
            let mut c =
                self.agent().await.map_err(|e| format!("nodeagent does not answer: {e}"))?;
            // Re-enrolling talks to central: give it time.
            let r = tokio::time::timeout(
                Duration::from_secs(90),
                c.console_action(action_request(code, &action)),
            )
            .await
            .map_err(|_| "nodeagent did not finish in 90 s".to_string())?;
            r.map(|r| r.into_inner().message).map_err(|s| s.message().to_string())
        }
        .boxed()
    }

    fn log(&self, name: String, vm: bool) -> BoxStream<'static, Result<String, String>> {
        if vm {
            let sock = self.cfg.vmd_socket.clone();
            return futures::stream::unfold(
                (sock, Vec::<u8>::new(), true),
                move |(sock, last, first)| {
                    let name = name.clone();
                    async move {
                        if !first {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        let got = async {
                            let ch = backroom_daemon::socket::connect(&sock)
                                .await
                                .map_err(|e| backroom_daemon::chain(&e))?;
                            VmdClient::new(ch)
                                .console_log(vmpb::ConsoleLogRequest { name, max_bytes: 16384 })
                                .await
                                .map(|r| r.into_inner().data)
                                .map_err(|s| s.message().to_string())
                        }
                        .await;
                        match got {
                            Ok(data) => {
                                let new = new_part(&last, &data);
                                Some((
                                    Ok(String::from_utf8_lossy(new).into_owned()),
                                    (sock, data, false),
                                ))
                            }
                            Err(e) => Some((Err(e), (sock, last, false))),
                        }
                    }
                },
            )
            .boxed();
        }
        let sock = self.cfg.nodeagent_socket.clone();
        futures::stream::once(async move {
            let ch = backroom_daemon::socket::connect(&sock)
                .await
                .map_err(|e| backroom_daemon::chain(&e))?;
            NodeAgentClient::new(ch)
                .logs(pb::LogsRequest { name, follow: true, tail_bytes: 16384 })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string())
        })
        .map(|r| match r {
            Ok(s) => s
                .map(|c| {
                    c.map(|c| String::from_utf8_lossy(&c.data).into_owned())
                        .map_err(|s| s.message().to_string())
                })
                .boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    }

    fn check(&self, kind: CheckKind, facts: &Facts) -> BoxFuture<'_, CheckResult> {
        let t = Targets {
            gateway: facts.uplink.gateway.clone(),
            central: facts.agent.as_ref().map(|s| s.central_url.clone()).unwrap_or_default(),
            registries: facts.agent.as_ref().map(|s| s.registries.clone()).unwrap_or_default(),
            netns: self.cfg.netns.clone(),
        };
        async move { checks::run(kind, &t).await }.boxed()
    }
}

/// What `now` holds past what `before` held (a rolling tail read again).
pub fn new_part<'a>(before: &[u8], now: &'a [u8]) -> &'a [u8] {
    if before.is_empty() {
        return now;
    }
    if now.starts_with(before) {
        return &now[before.len()..];
    }
    // The tail moved on: find where the end of `before` sits in `now`.
    let probe = &before[before.len() - (before.len() / 2).clamp(1, 256)..];
    match now.windows(probe.len()).rposition(|w| w == probe) {
        Some(i) => &now[i + probe.len()..],
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolling_tail_yields_only_what_is_new() {
        assert_eq!(new_part(b"", b"abc"), b"abc");
        assert_eq!(new_part(b"abc", b"abcdef"), b"def");
        assert_eq!(new_part(b"abcdef", b"cdefgh"), b"gh");
        assert_eq!(new_part(b"abc", b"abc"), b"");
        assert_eq!(new_part(b"xyz", b"abc"), b"abc");
    }

    #[test]
    fn pending_records_are_appended_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(PENDING_FILE);
        append_durable(&p, b"{\"a\":1}\n").unwrap();
        append_durable(&p, b"{\"a\":2}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
    }
}
