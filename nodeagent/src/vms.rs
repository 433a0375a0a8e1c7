//! vmd, as nodeagent uses it: the [`Vms`] trait, the gRPC client ([`VmdClient`]), [`NoVms`]
//! for nodes without vmd, and an in-memory implementation for unit tests ([`MemoryVms`]).

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use backroom_api::vmd as pb;
use backroom_api::vmd::vmd_client::VmdClient as PbClient;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::error::{Error, Result, Rpc};
use crate::problems::{OpenProblem, PeerEvent, Source};

/// vmd's events, until the connection drops (an error item says why).
pub type VmEvents = BoxStream<'static, Result<PeerEvent>>;

/// A VM as vmd reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmState {
    pub name: String,
    /// running | stopped | crashed | starting | failed | updating
    pub state: String,
    /// healthy | unhealthy | unknown
    pub health: String,
    pub reason: String,
    pub since_unix: i64,
    pub restarts: u32,
    pub addresses: Vec<String>,
    pub revision: String,
}

impl VmState {
    /// Ready for dependents: running, and healthy when it has a check.
    pub fn ready(&self) -> bool {
        self.state == "running" && self.health != "unhealthy"
    }
}

/// The VM daemon.
pub trait Vms: Send + Sync + 'static {
    fn apply(
        &self,
        revision: &str,
        profile_yaml: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    fn list(&self) -> impl Future<Output = Result<Vec<VmState>>> + Send;
    fn restart(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// vmd's lifecycle events (its own `failing`/`recovered` problems among them).
    fn events(&self) -> impl Future<Output = Result<VmEvents>> + Send;
    /// The problems vmd's loops have open now.
    fn problems(&self) -> impl Future<Output = Result<Vec<OpenProblem>>> + Send;
    /// Whether a vmd is there at all (without one, a profile with VMs cannot run them).
    fn configured(&self) -> bool;
    /// A cheap call that fails when vmd does not answer (nodeagent's liveness check); when
    /// vmd answers, whether its libvirt connection works (`Some(why)` when it does not).
    fn ping(&self) -> impl Future<Output = Result<Option<String>>> + Send {
        async { Ok(None) }
    }
    /// Where vmd is reached, for messages (its socket).
    fn address(&self) -> String {
        String::new()
    }
}

#[derive(Clone)]
pub struct VmdClient {
    client: PbClient<Channel>,
    socket: std::path::PathBuf,
}

impl VmdClient {
    /// A client of the vmd on `socket`; it connects on first use.
    pub fn new(socket: &Path) -> Self {
        VmdClient {
            client: PbClient::new(backroom_daemon::socket::channel(socket)),
            socket: socket.to_path_buf(),
        }
    }
}

fn vmd(op: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |s| Error::Vmd { op, source: Rpc(s) }
}

fn vm_state(v: pb::VmStatus) -> VmState {
    VmState {
        name: v.name,
        state: v.state,
        health: v.health,
        reason: v.reason,
        since_unix: v.since_unix,
        restarts: v.restarts,
        addresses: v.addresses,
        revision: v.revision,
    }
}

impl Vms for VmdClient {
    async fn apply(&self, revision: &str, profile_yaml: &str) -> Result<Vec<String>> {
        Ok(self
            .client
            .clone()
            .apply(pb::ApplyRequest {
                revision: revision.into(),
                profile_yaml: profile_yaml.into(),
            })
            .await
            .map_err(vmd("apply"))?
            .into_inner()
            .actions)
    }

    async fn list(&self) -> Result<Vec<VmState>> {
        Ok(self
            .client
            .clone()
            .list(pb::ListRequest {})
            .await
            .map_err(vmd("list"))?
            .into_inner()
            .vms
            .into_iter()
            .map(vm_state)
            .collect())
    }

    async fn restart(&self, name: &str) -> Result<()> {
        self.client
            .clone()
            .restart(pb::VmRequest { name: name.into() })
            .await
            .map_err(vmd("restart"))?;
        Ok(())
    }

    async fn events(&self) -> Result<VmEvents> {
        let stream =
            self.client.clone().events(pb::EventsRequest {}).await.map_err(vmd("events"))?;
        Ok(stream
            .into_inner()
            .map(|r| {
                r.map(|e| PeerEvent {
                    at_ms: e.at_unix_ms,
                    kind: e.kind,
                    subject: e.subject,
                    workload: e.vm,
                    message: e.message,
                })
                .map_err(vmd("events"))
            })
            .boxed())
    }

    async fn problems(&self) -> Result<Vec<OpenProblem>> {
        let r = self.client.clone().list(pb::ListRequest {}).await.map_err(vmd("list"))?;
        Ok(r.into_inner()
            .problems
            .into_iter()
            .map(|p| OpenProblem::from_pb(Source::Vmd, p))
            .collect())
    }

    fn configured(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<Option<String>> {
        // List reads vmd's own bookkeeping (no libvirt call) and says how libvirt is.
        let r = self.client.clone().list(pb::ListRequest {}).await.map_err(vmd("list"))?;
        let libvirt = r.into_inner().libvirt_error;
        Ok(if libvirt.is_empty() { None } else { Some(libvirt) })
    }

    fn address(&self) -> String {
        self.socket.display().to_string()
    }
}

/// No vmd on this node (`--vmd-socket none`).
#[derive(Clone, Default)]
pub struct NoVms;

impl Vms for NoVms {
    async fn apply(&self, _: &str, _: &str) -> Result<Vec<String>> {
        Err(Error::NotConfigured("vmd (the profile has VMs)"))
    }
    async fn list(&self) -> Result<Vec<VmState>> {
        Ok(vec![])
    }
    async fn restart(&self, _: &str) -> Result<()> {
        Err(Error::NotConfigured("vmd"))
    }
    async fn events(&self) -> Result<VmEvents> {
        Err(Error::NotConfigured("vmd"))
    }
    async fn problems(&self) -> Result<Vec<OpenProblem>> {
        Ok(Vec::new())
    }
    fn configured(&self) -> bool {
        false
    }
}

/// An in-memory vmd for unit tests: applied VMs run and are healthy.
#[derive(Clone, Default)]
pub struct MemoryVms {
    inner: Arc<Mutex<Vec<VmState>>>,
    pub calls: Arc<Mutex<Vec<String>>>,
    problems: Arc<Mutex<Watched>>,
    /// Set: vmd answers, but says its libvirt connection fails, for this reason.
    pub libvirt_error: Arc<Mutex<Option<String>>>,
}

/// What an in-memory vmd's loops have open, and who listens to its events.
type Watched = (Vec<OpenProblem>, Vec<mpsc::UnboundedSender<Result<PeerEvent>>>);

impl MemoryVms {
    fn watched(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.problems.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// vmd's loop `subject` (about the VM `vm`) fails: it is open, a `failing` event goes out.
    pub fn fail(&self, vm: &str, subject: &str, message: &str, at_ms: i64) {
        let mut g = self.watched();
        g.0.retain(|p| p.subject != subject);
        g.0.push(OpenProblem {
            source: Source::Vmd,
            subject: subject.into(),
            workload: vm.into(),
            message: message.into(),
            since_ms: at_ms,
            failures: 1,
        });
        let e = PeerEvent {
            at_ms,
            kind: "failing".into(),
            subject: subject.into(),
            workload: vm.into(),
            message: format!("{subject}: {message}"),
        };
        g.1.retain(|l| l.send(Ok(e.clone())).is_ok());
    }

    /// vmd's loop `subject` works again.
    pub fn recover(&self, vm: &str, subject: &str, at_ms: i64) {
        let mut g = self.watched();
        g.0.retain(|p| p.subject != subject);
        let e = PeerEvent {
            at_ms,
            kind: "recovered".into(),
            subject: subject.into(),
            workload: vm.into(),
            message: format!("{subject} works again"),
        };
        g.1.retain(|l| l.send(Ok(e.clone())).is_ok());
    }

    /// How many event streams are open.
    pub fn listeners(&self) -> usize {
        let mut g = self.watched();
        g.1.retain(|l| !l.is_closed());
        g.1.len()
    }
}

impl Vms for MemoryVms {
    async fn apply(&self, revision: &str, profile_yaml: &str) -> Result<Vec<String>> {
        let r = backroom_profiles::render_str("vmd.yaml", profile_yaml).map_err(|source| {
            Error::Profile { what: format!("of revision {}", crate::plan::short(revision)), source }
        })?;
        let vms: Vec<VmState> = r
            .profile
            .vms()
            .map(|v| VmState {
                name: v.name.to_string(),
                state: "running".into(),
                health: "healthy".into(),
                revision: revision.into(),
                ..Default::default()
            })
            .collect();
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = vms;
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("apply {}", crate::plan::short(revision)));
        Ok(vec![])
    }
    async fn list(&self) -> Result<Vec<VmState>> {
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    async fn restart(&self, name: &str) -> Result<()> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(format!("restart {name}"));
        Ok(())
    }
    async fn events(&self) -> Result<VmEvents> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watched().1.push(tx);
        Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed())
    }
    async fn problems(&self) -> Result<Vec<OpenProblem>> {
        Ok(self.watched().0.clone())
    }
    fn configured(&self) -> bool {
        true
    }
    async fn ping(&self) -> Result<Option<String>> {
        Ok(self.libvirt_error.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    fn address(&self) -> String {
        "the in-memory vmd".into()
    }
}

/// The VM daemon a node runs with: vmd's socket, or none (`--vmd-socket none`).
#[derive(Clone)]
pub enum VmsChoice {
    Vmd(VmdClient),
    None(NoVms),
}

impl VmsChoice {
    /// `none` (no vmd) or the path of vmd's socket.
    pub fn from_flag(socket: &Path) -> Self {
        if socket.as_os_str() == "none" {
            VmsChoice::None(NoVms)
        } else {
            VmsChoice::Vmd(VmdClient::new(socket))
        }
    }
}

impl Vms for VmsChoice {
    async fn apply(&self, revision: &str, profile_yaml: &str) -> Result<Vec<String>> {
        match self {
            VmsChoice::Vmd(v) => v.apply(revision, profile_yaml).await,
            VmsChoice::None(v) => v.apply(revision, profile_yaml).await,
        }
    }
    async fn list(&self) -> Result<Vec<VmState>> {
        match self {
            VmsChoice::Vmd(v) => v.list().await,
            VmsChoice::None(v) => v.list().await,
        }
    }
    async fn restart(&self, name: &str) -> Result<()> {
        match self {
            VmsChoice::Vmd(v) => v.restart(name).await,
            VmsChoice::None(v) => v.restart(name).await,
        }
    }
    async fn events(&self) -> Result<VmEvents> {
        match self {
            VmsChoice::Vmd(v) => v.events().await,
            VmsChoice::None(v) => v.events().await,
        }
    }
    async fn problems(&self) -> Result<Vec<OpenProblem>> {
        match self {
            VmsChoice::Vmd(v) => v.problems().await,
            VmsChoice::None(v) => v.problems().await,
        }
    }
    fn configured(&self) -> bool {
        matches!(self, VmsChoice::Vmd(_))
    }
    async fn ping(&self) -> Result<Option<String>> {
        match self {
            VmsChoice::Vmd(v) => v.ping().await,
            VmsChoice::None(v) => v.ping().await,
        }
    }
    fn address(&self) -> String {
        match self {
            VmsChoice::Vmd(v) => v.address(),
            VmsChoice::None(v) => v.address(),
        }
    }
}
