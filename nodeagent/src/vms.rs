//! vmd, as nodeagent uses it: the [`Vms`] trait, the gRPC client ([`VmdClient`]), [`NoVms`]
//! for nodes without vmd, and an in-memory implementation for unit tests ([`MemoryVms`]).

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use backroom_api::vmd as pb;
use backroom_api::vmd::vmd_client::VmdClient as PbClient;
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::transport::Channel;

use crate::error::{Error, Result, status_message};

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEvent {
    pub at_ms: i64,
    pub vm: String,
    pub kind: String,
    pub message: String,
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
    /// vmd's lifecycle events, until the connection drops.
    fn events(&self) -> impl Future<Output = Result<BoxStream<'static, VmEvent>>> + Send;
    /// Whether a vmd is there at all (without one, a profile with VMs cannot run them).
    fn configured(&self) -> bool;
}

#[derive(Clone)]
pub struct VmdClient {
    client: PbClient<Channel>,
}

impl VmdClient {
    pub fn new(socket: &Path) -> Result<Self> {
        Ok(VmdClient { client: PbClient::new(crate::grpc::channel(socket)?) })
    }
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
            .map_err(|s| Error::Vmd { op: "apply", message: status_message(&s) })?
            .into_inner()
            .actions)
    }

    async fn list(&self) -> Result<Vec<VmState>> {
        Ok(self
            .client
            .clone()
            .list(pb::ListRequest {})
            .await
            .map_err(|s| Error::Vmd { op: "list", message: status_message(&s) })?
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
            .map_err(|s| Error::Vmd { op: "restart", message: status_message(&s) })?;
        Ok(())
    }

    async fn events(&self) -> Result<BoxStream<'static, VmEvent>> {
        let stream = self
            .client
            .clone()
            .events(pb::EventsRequest {})
            .await
            .map_err(|s| Error::Vmd { op: "events", message: status_message(&s) })?
            .into_inner();
        Ok(stream
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| async move {
                r.ok().map(|e| VmEvent {
                    at_ms: e.at_unix_ms,
                    vm: e.vm,
                    kind: e.kind,
                    message: e.message,
                })
            })
            .boxed())
    }

    fn configured(&self) -> bool {
        true
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
    async fn events(&self) -> Result<BoxStream<'static, VmEvent>> {
        Ok(futures::stream::pending().boxed())
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
}

impl Vms for MemoryVms {
    async fn apply(&self, revision: &str, profile_yaml: &str) -> Result<Vec<String>> {
        let r = backroom_profiles::render_str("vmd.yaml", profile_yaml)
            .map_err(|e| Error::Vmd { op: "apply", message: e.to_string() })?;
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
    async fn events(&self) -> Result<BoxStream<'static, VmEvent>> {
        Ok(futures::stream::pending().boxed())
    }
    fn configured(&self) -> bool {
        true
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
    pub fn from_flag(socket: &Path) -> Result<Self> {
        if socket.as_os_str() == "none" {
            Ok(VmsChoice::None(NoVms))
        } else {
            Ok(VmsChoice::Vmd(VmdClient::new(socket)?))
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
    async fn events(&self) -> Result<BoxStream<'static, VmEvent>> {
        match self {
            VmsChoice::Vmd(v) => v.events().await,
            VmsChoice::None(v) => v.events().await,
        }
    }
    fn configured(&self) -> bool {
        matches!(self, VmsChoice::Vmd(_))
    }
}
