//! The recovery console's side in nodeagent (`ConsoleUnlock`, `ConsoleAction`): a code from HQ
//! checked with no WAN (the store's console secret, kept beside the node's identity since
//! enrollment; [`backroom_session::console_code`]), wrong codes rate-limited across restarts,
//! each action carried out, and every attempt recorded twice: a line in
//! `<state>/console/audit.jsonl` on the node, and a `console_*` event that reaches central
//! through the outbox (offline: when the link returns).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backroom_api::node::{Command, CommandResult};
use backroom_api::nodeagent as pb;
use backroom_daemon::SharedClock;
use backroom_session::console_code::{self, Grant, Limiter, Role, Secret};
use backroom_session::enroll::Identity;
use backroom_session::link::Inbound;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use crate::engine::EngineHandle;
use crate::network::{Network, OverrideSpec};
use crate::store::Store;

pub const AUDIT_FILE: &str = "console/audit.jsonl";
pub const LIMITER_FILE: &str = "console/limiter.json";
/// What the console recorded itself while nodeagent was down (see backroom-console).
pub const PENDING_FILE: &str = "console/pending.jsonl";
/// How long an uplink override may wait for its confirmation before netd takes it back.
pub const OVERRIDE_CONFIRM_SECONDS: u32 = 120;
/// An override's default length.
pub const OVERRIDE_DEFAULT_MINUTES: u32 = 240;

/// One line of the audit file (and of the console's pending file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub at_ms: i64,
    /// `console_unlocked` | `console_refused` | `console_action`
    pub kind: String,
    #[serde(default)]
    pub workload: String,
    pub message: String,
}

/// The uplink override, as the console needs it from netd.
pub trait Overrides: Send + Sync {
    fn set(
        &self,
        o: OverrideSpec,
        confirm_seconds: u32,
    ) -> BoxFuture<'_, crate::error::Result<i64>>;
    fn clear(&self) -> BoxFuture<'_, crate::error::Result<()>>;
    fn confirm(&self) -> BoxFuture<'_, crate::error::Result<()>>;
}

impl<N: Network + Send + Sync + 'static> Overrides for N {
    fn set(
        &self,
        o: OverrideSpec,
        confirm_seconds: u32,
    ) -> BoxFuture<'_, crate::error::Result<i64>> {
        Box::pin(
            async move { self.set_override(o, confirm_seconds).await.map(|a| a.confirm_deadline) },
        )
    }
    fn clear(&self) -> BoxFuture<'_, crate::error::Result<()>> {
        Box::pin(self.clear_override())
    }
    fn confirm(&self) -> BoxFuture<'_, crate::error::Result<()>> {
        Box::pin(Network::confirm(self, ""))
    }
}

/// What the console side needs from the rest of nodeagent.
pub struct ConsoleParts {
    pub state_dir: PathBuf,
    pub engine: EngineHandle,
    pub clock: SharedClock,
    /// Commands run by the link with central's own executor (rollback, reconcile), when the
    /// node is connected; None: standalone.
    pub local: Option<mpsc::Sender<Inbound>>,
    pub overrides: Option<Arc<dyn Overrides>>,
    /// central's last answer (unix ms): an override is kept by itself once central answers.
    pub contact: Option<watch::Receiver<i64>>,
    /// The management segment the override applies to (None: the profile's untagged one).
    pub override_segment: Option<String>,
}

pub struct Console {
    p: ConsoleParts,
    limiter: Mutex<Limiter>,
}

fn denied(e: console_code::CodeError) -> Status {
    let msg = backroom_daemon::chain(&e);
    match e {
        console_code::CodeError::Locked { .. } => Status::resource_exhausted(msg),
        console_code::CodeError::Io { .. } | console_code::CodeError::BadSecretFile { .. } => {
            Status::failed_precondition(msg)
        }
        _ => Status::permission_denied(msg),
    }
}

fn needs(kind: &str) -> Role {
    if kind == "restart" { Role::Staff } else { Role::Technician }
}

impl Console {
    pub fn new(p: ConsoleParts) -> Console {
        let limiter = std::fs::read(p.state_dir.join(LIMITER_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let c = Console { p, limiter: Mutex::new(limiter) };
        c.take_pending();
        c
    }

    fn central_dir(&self) -> PathBuf {
        self.p.state_dir.join("central")
    }

    /// Records one attempt or action: on the node, then for central.
    pub fn record(&self, kind: &str, workload: &str, message: String, at_ms: Option<i64>) {
        let rec = Record {
            at_ms: at_ms.unwrap_or_else(|| self.p.clock.now_ms()),
            kind: kind.into(),
            workload: workload.into(),
            message,
        };
        if let Err(e) = append(&self.p.state_dir.join(AUDIT_FILE), &rec) {
            tracing::error!(error = %e, "cannot write the console's audit file");
        }
        tracing::warn!(kind, workload, "console: {}", rec.message);
        self.p.engine.publish(rec.at_ms, workload, kind, rec.message);
    }

    /// What the console did while nodeagent was down: recorded and sent on now.
    fn take_pending(&self) {
        let path = self.p.state_dir.join(PENDING_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else { return };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Record>(line) {
                Ok(r) => self.record(&r.kind, &r.workload, r.message, Some(r.at_ms)),
                Err(e) => tracing::warn!(error = %e, "a console record that cannot be read"),
            }
        }
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove the console's pending file");
        }
    }

    /// Checks a code: the store's secret, its store id, the limiter (kept on disk).
    pub fn check(&self, code: &str) -> Result<Grant, Status> {
        let dir = self.central_dir();
        let secret = Secret::load(&dir.join(console_code::SECRET_FILE))
            .map_err(denied)?
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this node has no console secret yet: it gets one from central when it enrolls \
                 (or at its next connection, if it enrolled before console codes)",
                )
            })?;
        let store = Identity::load(&dir).ok().flatten().map(|i| i.store_id).ok_or_else(|| {
            Status::failed_precondition("this node is not enrolled: no console code can be checked")
        })?;
        let now = self.p.clock.now_ms();
        let mut lim = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let r = lim.verify(&secret, &store, code, now);
        let _ = std::fs::create_dir_all(self.p.state_dir.join("console"));
        if let Err(e) = backroom_daemon::fs::write_atomic(
            &self.p.state_dir.join(LIMITER_FILE),
            &serde_json::to_vec(&*lim).unwrap_or_default(),
            0o600,
        ) {
            tracing::error!(error = %e, "cannot keep the console's wrong-code count");
        }
        drop(lim);
        r.map_err(|e| {
            self.record(
                "console_refused",
                "",
                format!("a console code was refused: {}", backroom_daemon::chain(&e)),
                None,
            );
            denied(e)
        })
    }

    pub fn unlock(&self, code: &str) -> Result<pb::ConsoleUnlockReply, Status> {
        let g = self.check(code)?;
        self.record(
            "console_unlocked",
            "",
            format!(
                "a {} code was accepted at the store's console (valid until {})",
                g.role,
                backroom_daemon::clock::rfc3339(g.expires_ms)
            ),
            None,
        );
        Ok(pb::ConsoleUnlockReply { role: g.role.to_string(), expires_unix_ms: g.expires_ms })
    }

    pub async fn act(&self, req: pb::ConsoleActionRequest) -> Result<String, Status> {
        let g = self.check(&req.code)?;
        let need = needs(&req.kind);
        if !g.role.allows(need) {
            let msg = format!("a {} code cannot do `{}`: it needs a {need} code", g.role, req.kind);
            self.record("console_refused", &req.workload, msg.clone(), None);
            return Err(Status::permission_denied(msg));
        }
        let what = match req.kind.as_str() {
            "restart" => format!("restart {}", req.workload),
            "record" => req.message.clone(),
            "override" => "uplink override".into(),
            other => other.replace('_', " "),
        };
        let r = self.carry_out(&req, &g).await;
        let (ok, text) = match &r {
            Ok(m) => ("ok", m.clone()),
            Err(s) => ("failed", s.message().to_string()),
        };
        let message = if req.kind == "record" {
            format!("{what} (at the console, by a {})", g.role)
        } else {
            format!("{what} by a {} at the console: {ok}: {text}", g.role)
        };
        self.record("console_action", &req.workload, message, None);
        r
    }

    async fn carry_out(&self, req: &pb::ConsoleActionRequest, g: &Grant) -> Result<String, Status> {
        let e = &self.p.engine;
        match req.kind.as_str() {
            "record" => Ok("recorded".into()),
            "restart" => e.restart(&req.workload).await.map_err(crate::server::to_status),
            "rollback" | "reconcile" => {
                if let Some(local) = &self.p.local {
                    let (reply, rx) = oneshot::channel();
                    let command = Command {
                        id: format!("console-{}", self.p.clock.now_ms()),
                        kind: req.kind.clone(),
                        workload: String::new(),
                        expires_unix_ms: 0,
                    };
                    if local.send(Inbound::Command { command, reply }).await.is_ok() {
                        let r: CommandResult = rx
                            .await
                            .map_err(|_| Status::unavailable("the link with central stopped"))?;
                        return if r.ok {
                            Ok(r.message)
                        } else {
                            Err(Status::failed_precondition(r.message))
                        };
                    }
                }
                self.standalone(&req.kind).await
            }
            "reenroll" => self.reenroll(&req.token),
            "override" => {
                let o = req.r#override.clone().unwrap_or_default();
                self.set_override(o, g).await
            }
            "clear_override" => {
                let ov = self.overrides()?;
                ov.clear().await.map_err(crate::server::to_status)?;
                Ok("the uplink override ended: the profile's network is back".into())
            }
            "confirm_override" => {
                let ov = self.overrides()?;
                ov.confirm().await.map_err(crate::server::to_status)?;
                Ok("the uplink override is kept (until it expires)".into())
            }
            other => Err(Status::invalid_argument(format!("`{other}` is not a console action"))),
        }
    }

    fn overrides(&self) -> Result<&Arc<dyn Overrides>, Status> {
        self.p
            .overrides
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this node runs no network (no netd)"))
    }

    /// Rollback and reconcile on a node with no central.
    async fn standalone(&self, kind: &str) -> Result<String, Status> {
        let e = &self.p.engine;
        let s = e.status().await.map_err(crate::server::to_status)?;
        let store = Store::open(&self.p.state_dir).map_err(crate::server::to_status)?;
        let rev = if kind == "rollback" { &s.last_known_good } else { &s.desired };
        if rev.is_empty() {
            return Err(Status::failed_precondition(if kind == "rollback" {
                "there is no last-known-good revision yet"
            } else {
                "there is no profile to apply yet"
            }));
        }
        if kind == "rollback" && s.desired == s.last_known_good {
            return Ok(format!(
                "already on the last-known-good revision {}",
                crate::plan::short(rev)
            ));
        }
        let r = store.load_revision(rev).map_err(crate::server::to_status)?;
        e.apply(r, format!("console {kind}")).await.map_err(crate::server::to_status)?;
        Ok(match kind {
            "rollback" => {
                format!("back on the last-known-good revision {}", crate::plan::short(rev))
            }
            _ => format!("revision {} applied again", crate::plan::short(rev)),
        })
    }

    /// A new identity: the token is kept, the old identity set aside, and nodeagent exits so
    /// its service manager starts it again, enrolling with the token.
    fn reenroll(&self, token: &str) -> Result<String, Status> {
        let token = token.trim();
        backroom_session::token::EnrollToken::parse(token).map_err(|e| {
            Status::invalid_argument(format!(
                "this is not an enrollment token: {}",
                backroom_daemon::chain(&e)
            ))
        })?;
        let dir = self.central_dir();
        backroom_daemon::fs::write_atomic(&dir.join(REENROLL_TOKEN), token.as_bytes(), 0o600)
            .map_err(|e| Status::internal(format!("cannot keep the token: {e}")))?;
        Identity::set_aside(
            &dir,
            self.p.clock.now_unix(),
            "enrolled again from the console".into(),
        );
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tracing::warn!(
                "exiting to enroll again with the console's token; the service manager starts nodeagent again"
            );
            std::process::exit(EXIT_REENROLL);
        });
        Ok("nodeagent restarts now and enrolls with the new token; the apps keep running".into())
    }

    async fn set_override(&self, o: pb::ConsoleOverride, g: &Grant) -> Result<String, Status> {
        let ov = self.overrides()?;
        let segment = match &self.p.override_segment {
            Some(s) => s.clone(),
            None => self.management_segment().await?,
        };
        let bad = |what: &str, v: &str| {
            Status::invalid_argument(format!("{what} `{v}` is not an IP address"))
        };
        let gateway = o.gateway.parse().map_err(|_| bad("the gateway", &o.gateway))?;
        let dns = o
            .dns
            .iter()
            .map(|d| d.parse().map_err(|_| bad("the DNS server", d)))
            .collect::<Result<Vec<_>, _>>()?;
        let minutes = if o.minutes == 0 { OVERRIDE_DEFAULT_MINUTES } else { o.minutes };
        let now = self.p.clock.now_unix();
        let expires = now + i64::from(minutes) * 60;
        let spec = OverrideSpec {
            segment: segment.clone(),
            address: o.address.clone(),
            gateway,
            dns,
            vlan: u16::try_from(o.vlan).unwrap_or(0),
            expires_unix: expires,
            set_unix: 0,
            reason: format!("console: {}", g.role),
        };
        let deadline =
            ov.set(spec, OVERRIDE_CONFIRM_SECONDS).await.map_err(crate::server::to_status)?;
        // Kept by itself once central answers through it.
        if let Some(mut contact) = self.p.contact.clone() {
            let ov = Arc::clone(ov);
            let since = self.p.clock.now_ms();
            tokio::spawn(async move {
                let wait = Duration::from_secs(u64::from(OVERRIDE_CONFIRM_SECONDS));
                let _ = tokio::time::timeout(wait, async {
                    while contact.changed().await.is_ok() {
                        if *contact.borrow() > since {
                            match ov.confirm().await {
                                Ok(()) => tracing::info!("central answered: the uplink override is kept"),
                                Err(e) => tracing::warn!(error = %backroom_daemon::chain(&e), "cannot keep the uplink override"),
                            }
                            return;
                        }
                    }
                })
                .await;
            });
        }
        Ok(format!(
            "{} via {} on {segment} until {} UTC. Check the network and press k within {} s to keep \
             it (kept by itself if central answers), or it goes back by itself.",
            o.address,
            o.gateway,
            backroom_daemon::clock::rfc3339(expires * 1000),
            if deadline > 0 { deadline - now } else { i64::from(OVERRIDE_CONFIRM_SECONDS) }
        ))
    }

    /// The segment whose host address comes from the store's own network: the profile's
    /// untagged segment with a host address (usually `mgmt`).
    async fn management_segment(&self) -> Result<String, Status> {
        let s = self.p.engine.status().await.map_err(crate::server::to_status)?;
        let store = Store::open(&self.p.state_dir).map_err(crate::server::to_status)?;
        let r = store.load_revision(&s.desired).map_err(crate::server::to_status)?;
        r.profile
            .network
            .segments
            .iter()
            .find(|g| {
                !g.internal
                    && matches!(g.vlan, None | Some(backroom_profiles::Vlan::Untagged))
                    && !g.address.is_none()
            })
            .map(|g| g.name.to_string())
            .ok_or_else(|| {
                Status::failed_precondition(
                    "the profile has no untagged segment with a host address for an override",
                )
            })
    }
}

/// The token [`Console::reenroll`] keeps for the next start (read by `connected::identity`).
pub const REENROLL_TOKEN: &str = "reenroll.token";
/// nodeagent's exit status when it leaves to enroll again (systemd starts it again).
pub const EXIT_REENROLL: i32 = 75;

fn append(path: &Path, rec: &Record) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(&line)?;
    f.sync_all()
}

/// The console's records of `state_dir`, oldest first (for tests and support).
pub fn audit(state_dir: &Path) -> Vec<Record> {
    std::fs::read_to_string(state_dir.join(AUDIT_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
