//! netd, as nodeagent uses it: the [`Network`] trait, the gRPC client ([`NetdClient`]) and an
//! in-memory implementation for unit tests ([`MemoryNetwork`]).
//!
//! A container's network namespace comes from `attach(workload, instance)`; its OCI spec then
//! joins that namespace. For a start-first update the new instance runs as `next` (namespace
//! `bk-<workload>--next`, temporary addresses) and `promote` moves the stable addresses onto it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use backroom_api::netd as pb;
use backroom_api::netd::netd_client::NetdClient as PbClient;
use tonic::transport::Channel;

use crate::error::{Error, Result, status_message};

/// What netd gave an instance of a container workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// `/run/netns/bk-<workload>[--<instance>]`.
    pub netns_path: String,
    /// CIDR addresses, in the workload's network order.
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkApplied {
    pub changed: bool,
    pub actions: Vec<String>,
    /// Unix seconds; 0 when no confirmation is pending.
    pub confirm_deadline: i64,
}

/// The network daemon.
pub trait Network: Send + Sync + 'static {
    fn apply(
        &self,
        revision: &str,
        profile_yaml: &str,
        confirm_seconds: u32,
    ) -> impl Future<Output = Result<NetworkApplied>> + Send;
    fn confirm(&self, revision: &str) -> impl Future<Output = Result<()>> + Send;
    fn attach(
        &self,
        workload: &str,
        instance: &str,
    ) -> impl Future<Output = Result<Endpoints>> + Send;
    fn detach(&self, workload: &str, instance: &str) -> impl Future<Output = Result<()>> + Send;
    fn promote(
        &self,
        workload: &str,
        instance: &str,
    ) -> impl Future<Output = Result<Endpoints>> + Send;
}

fn endpoints(r: pb::AttachReply) -> Endpoints {
    Endpoints {
        netns_path: r.netns_path,
        addresses: r.interfaces.into_iter().map(|i| i.address).filter(|a| !a.is_empty()).collect(),
    }
}

/// netd's gRPC API on its unix socket.
#[derive(Clone)]
pub struct NetdClient {
    client: PbClient<Channel>,
}

impl NetdClient {
    pub fn new(socket: &Path) -> Result<Self> {
        Ok(NetdClient { client: PbClient::new(crate::grpc::channel(socket)?) })
    }
}

impl Network for NetdClient {
    async fn apply(
        &self,
        revision: &str,
        profile_yaml: &str,
        confirm_seconds: u32,
    ) -> Result<NetworkApplied> {
        let r = self
            .client
            .clone()
            .apply(pb::ApplyRequest {
                revision: revision.into(),
                profile_yaml: profile_yaml.into(),
                confirm_seconds,
                uplink_override: String::new(),
            })
            .await
            .map_err(|s| Error::Netd { op: "apply", message: status_message(&s) })?
            .into_inner();
        Ok(NetworkApplied {
            changed: r.changed,
            actions: r.actions,
            confirm_deadline: r.confirm_deadline_unix,
        })
    }

    async fn confirm(&self, revision: &str) -> Result<()> {
        self.client
            .clone()
            .confirm(pb::ConfirmRequest { revision: revision.into() })
            .await
            .map_err(|s| Error::Netd { op: "confirm", message: status_message(&s) })?;
        Ok(())
    }

    async fn attach(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        let r = self
            .client
            .clone()
            .attach(pb::AttachRequest { workload: workload.into(), instance: instance.into() })
            .await
            .map_err(|s| Error::Netd { op: "attach", message: status_message(&s) })?;
        Ok(endpoints(r.into_inner()))
    }

    async fn detach(&self, workload: &str, instance: &str) -> Result<()> {
        self.client
            .clone()
            .detach(pb::DetachRequest { workload: workload.into(), instance: instance.into() })
            .await
            .map_err(|s| Error::Netd { op: "detach", message: status_message(&s) })?;
        Ok(())
    }

    async fn promote(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        let r = self
            .client
            .clone()
            .promote(pb::PromoteRequest { workload: workload.into(), instance: instance.into() })
            .await
            .map_err(|s| Error::Netd { op: "promote", message: status_message(&s) })?
            .into_inner();
        Ok(r.endpoints.map(endpoints).unwrap_or_default())
    }
}

/// No netd on this node (`--netd-socket none`): the network is not managed, and workloads
/// that name networks cannot start (they say so).
#[derive(Clone, Default)]
pub struct NoNetwork;

impl Network for NoNetwork {
    async fn apply(&self, _: &str, _: &str, _: u32) -> Result<NetworkApplied> {
        Ok(NetworkApplied {
            changed: false,
            actions: vec!["netd is not configured: network left as it is".into()],
            confirm_deadline: 0,
        })
    }
    async fn confirm(&self, _: &str) -> Result<()> {
        Ok(())
    }
    async fn attach(&self, _: &str, _: &str) -> Result<Endpoints> {
        Err(Error::NotConfigured("netd (a workload with networks needs it)"))
    }
    async fn detach(&self, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    async fn promote(&self, _: &str, _: &str) -> Result<Endpoints> {
        Err(Error::NotConfigured("netd"))
    }
}

/// An in-memory netd for unit tests: remembers calls, hands out namespace paths.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<MemoryNetState>>,
}

#[derive(Default)]
pub struct MemoryNetState {
    pub applied: Vec<String>,
    pub attached: BTreeMap<(String, String), Endpoints>,
    pub calls: Vec<String>,
    pub fail_apply: Option<String>,
}

impl MemoryNetwork {
    pub fn state(&self) -> std::sync::MutexGuard<'_, MemoryNetState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Network for MemoryNetwork {
    async fn apply(&self, revision: &str, _: &str, _: u32) -> Result<NetworkApplied> {
        let mut s = self.state();
        s.calls.push(format!("apply {}", crate::plan::short(revision)));
        if let Some(m) = &s.fail_apply {
            return Err(Error::Netd { op: "apply", message: m.clone() });
        }
        s.applied.push(revision.into());
        Ok(NetworkApplied { changed: true, actions: vec![], confirm_deadline: 0 })
    }
    async fn confirm(&self, revision: &str) -> Result<()> {
        self.state().calls.push(format!("confirm {}", crate::plan::short(revision)));
        Ok(())
    }
    async fn attach(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        let ns = backroom_profiles::naming::netns(workload, instance);
        let e = Endpoints {
            netns_path: format!("/run/netns/{ns}"),
            addresses: vec!["172.30.0.10/24".into()],
        };
        let mut s = self.state();
        s.calls.push(format!("attach {workload} {instance}"));
        s.attached.insert((workload.into(), instance.into()), e.clone());
        Ok(e)
    }
    async fn detach(&self, workload: &str, instance: &str) -> Result<()> {
        let mut s = self.state();
        s.calls.push(format!("detach {workload} {instance}"));
        s.attached.remove(&(workload.into(), instance.into()));
        Ok(())
    }
    async fn promote(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        let mut s = self.state();
        s.calls.push(format!("promote {workload} {instance}"));
        let e = s.attached.remove(&(workload.into(), instance.into())).unwrap_or_default();
        s.attached.insert((workload.into(), String::new()), e.clone());
        Ok(e)
    }
}

/// The network a node runs with: netd's socket, or none (`--netd-socket none`).
#[derive(Clone)]
pub enum NetworkChoice {
    Netd(NetdClient),
    None(NoNetwork),
}

impl NetworkChoice {
    /// `none` (no netd) or the path of netd's socket.
    pub fn from_flag(socket: &Path) -> Result<Self> {
        if socket.as_os_str() == "none" {
            Ok(NetworkChoice::None(NoNetwork))
        } else {
            Ok(NetworkChoice::Netd(NetdClient::new(socket)?))
        }
    }
}

impl Network for NetworkChoice {
    async fn apply(
        &self,
        revision: &str,
        profile_yaml: &str,
        confirm_seconds: u32,
    ) -> Result<NetworkApplied> {
        match self {
            NetworkChoice::Netd(n) => n.apply(revision, profile_yaml, confirm_seconds).await,
            NetworkChoice::None(n) => n.apply(revision, profile_yaml, confirm_seconds).await,
        }
    }
    async fn confirm(&self, revision: &str) -> Result<()> {
        match self {
            NetworkChoice::Netd(n) => n.confirm(revision).await,
            NetworkChoice::None(n) => n.confirm(revision).await,
        }
    }
    async fn attach(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        match self {
            NetworkChoice::Netd(n) => n.attach(workload, instance).await,
            NetworkChoice::None(n) => n.attach(workload, instance).await,
        }
    }
    async fn detach(&self, workload: &str, instance: &str) -> Result<()> {
        match self {
            NetworkChoice::Netd(n) => n.detach(workload, instance).await,
            NetworkChoice::None(n) => n.detach(workload, instance).await,
        }
    }
    async fn promote(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        match self {
            NetworkChoice::Netd(n) => n.promote(workload, instance).await,
            NetworkChoice::None(n) => n.promote(workload, instance).await,
        }
    }
}
