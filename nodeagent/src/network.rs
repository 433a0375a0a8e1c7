//! netd, as nodeagent uses it: the [`Network`] trait, the gRPC client ([`NetdClient`]) and an
//! in-memory implementation for unit tests ([`MemoryNetwork`]).
//!
//! nodeagent also listens to netd: its `Events` stream (netd's own `failing`/`recovered`
//! problems among them) and, on each (re)connect, the problems `Observe` lists as open.
//!
//! A container's network namespace comes from `attach(workload, instance)`; its OCI spec then
//! joins that namespace. For a start-first update the new instance runs as `next` (namespace
//! `bk-<workload>--next`, temporary addresses) and `promote` moves the stable addresses onto it.
//!
//! The recovery console's uplink override (netd's SetOverride/ClearOverride) goes through
//! [`Network::set_override`], [`Network::clear_override`] and [`Network::override_state`]:
//! netd validates it, keeps it across applies and ends it by itself when it expires.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use backroom_api::netd as pb;
use backroom_api::netd::netd_client::NetdClient as PbClient;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::error::{Error, Result, Rpc};
use crate::problems::{OpenProblem, PeerEvent, Source};

/// netd's events, until the connection drops (an error item says why).
pub type NetEvents = BoxStream<'static, Result<PeerEvent>>;

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

/// An uplink override: for a while, a segment's static host address, default gateway, DNS
/// servers and VLAN instead of its profile's (netd checks it and says what is wrong).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideSpec {
    /// A segment of the applied profile, not `internal` (e.g. `mgmt`).
    pub segment: String,
    /// The host's address with its prefix, e.g. `192.168.7.20/24`.
    pub address: String,
    /// Inside `address`'s network.
    pub gateway: IpAddr,
    /// At most 3; empty: DNS left as it is.
    pub dns: Vec<IpAddr>,
    /// 1..=4094; 0: the profile's VLAN.
    pub vlan: u16,
    /// Unix seconds, at most 24 h ahead; 0 when asking: netd's default, 4 h from now.
    pub expires_unix: i64,
    /// When netd took it (0 when asking).
    pub set_unix: i64,
    /// Free text, e.g. `console: technician`.
    pub reason: String,
}

/// The override netd has in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideState {
    pub spec: OverrideSpec,
    /// Where its DNS servers went ("written to /etc/resolv.conf"), or why not; empty without.
    pub dns: String,
}

/// The error of a network that has no uplink override.
fn no_override(op: &'static str, why: &str) -> Error {
    Error::Netd { op, source: Rpc(tonic::Status::failed_precondition(why.to_string())) }
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
    /// netd's event stream.
    fn events(&self) -> impl Future<Output = Result<NetEvents>> + Send;
    /// The problems netd's loops have open now.
    fn problems(&self) -> impl Future<Output = Result<Vec<OpenProblem>>> + Send;
    /// Whether a netd is there at all (without one nothing listens to it).
    fn configured(&self) -> bool;
    /// A cheap call that fails when netd does not answer (nodeagent's liveness check).
    fn ping(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// Where netd is reached, for messages (its socket).
    fn address(&self) -> String {
        String::new()
    }
    /// Puts an uplink override in force; with `confirm_seconds > 0` the network before it
    /// comes back unless [`Network::confirm`] follows in time.
    fn set_override(
        &self,
        _o: OverrideSpec,
        _confirm_seconds: u32,
    ) -> impl Future<Output = Result<NetworkApplied>> + Send {
        async { Err(no_override("set override", "this network has no uplink override")) }
    }
    /// Ends the uplink override at once.
    fn clear_override(&self) -> impl Future<Output = Result<()>> + Send {
        async { Err(no_override("clear override", "this network has no uplink override")) }
    }
    /// The uplink override in force, if any.
    fn override_state(&self) -> impl Future<Output = Result<Option<OverrideState>>> + Send {
        async { Ok(None) }
    }
}

fn override_pb(o: OverrideSpec) -> pb::Override {
    pb::Override {
        segment: o.segment,
        address: o.address,
        gateway: o.gateway.to_string(),
        dns: o.dns.iter().map(ToString::to_string).collect(),
        vlan: u32::from(o.vlan),
        expires_unix: o.expires_unix,
        set_unix: o.set_unix,
        reason: o.reason,
    }
}

fn override_spec(o: pb::Override) -> Result<OverrideSpec> {
    let ip = |what: &str, s: &str| {
        s.parse::<IpAddr>().map_err(|_| Error::Netd {
            op: "observe",
            source: Rpc(tonic::Status::internal(format!(
                "netd answered {what} `{s}` for the uplink override: not an IP address"
            ))),
        })
    };
    Ok(OverrideSpec {
        gateway: ip("gateway", &o.gateway)?,
        dns: o.dns.iter().map(|d| ip("DNS server", d)).collect::<Result<_>>()?,
        vlan: u16::try_from(o.vlan).unwrap_or(0),
        segment: o.segment,
        address: o.address,
        expires_unix: o.expires_unix,
        set_unix: o.set_unix,
        reason: o.reason,
    })
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
    socket: std::path::PathBuf,
}

impl NetdClient {
    /// A client of the netd on `socket`; it connects on first use, so nodeagent may start
    /// before netd.
    pub fn new(socket: &Path) -> Self {
        NetdClient {
            client: PbClient::new(backroom_daemon::socket::channel(socket)),
            socket: socket.to_path_buf(),
        }
    }
}

fn netd(op: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |s| Error::Netd { op, source: Rpc(s) }
}

fn net_event(e: pb::Event) -> PeerEvent {
    PeerEvent {
        at_ms: e.at_unix_ms,
        kind: e.kind,
        subject: e.subject,
        workload: String::new(),
        message: e.message,
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
            .map_err(netd("apply"))?
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
            .map_err(netd("confirm"))?;
        Ok(())
    }

    async fn attach(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        let r = self
            .client
            .clone()
            .attach(pb::AttachRequest { workload: workload.into(), instance: instance.into() })
            .await
            .map_err(netd("attach"))?;
        Ok(endpoints(r.into_inner()))
    }

    async fn detach(&self, workload: &str, instance: &str) -> Result<()> {
        self.client
            .clone()
            .detach(pb::DetachRequest { workload: workload.into(), instance: instance.into() })
            .await
            .map_err(netd("detach"))?;
        Ok(())
    }

    async fn promote(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        let r = self
            .client
            .clone()
            .promote(pb::PromoteRequest { workload: workload.into(), instance: instance.into() })
            .await
            .map_err(netd("promote"))?
            .into_inner();
        Ok(r.endpoints.map(endpoints).unwrap_or_default())
    }

    async fn events(&self) -> Result<NetEvents> {
        let stream =
            self.client.clone().events(pb::EventsRequest {}).await.map_err(netd("events"))?;
        Ok(stream.into_inner().map(|r| r.map(net_event).map_err(netd("events"))).boxed())
    }

    async fn problems(&self) -> Result<Vec<OpenProblem>> {
        let r =
            self.client.clone().observe(pb::ObserveRequest {}).await.map_err(netd("observe"))?;
        Ok(r.into_inner()
            .problems
            .into_iter()
            .map(|p| OpenProblem::from_pb(Source::Netd, p))
            .collect())
    }

    fn configured(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<()> {
        // Observe is the cheapest call netd has: it reads its state, changes nothing.
        self.client.clone().observe(pb::ObserveRequest {}).await.map_err(netd("observe"))?;
        Ok(())
    }

    fn address(&self) -> String {
        self.socket.display().to_string()
    }

    async fn set_override(&self, o: OverrideSpec, confirm_seconds: u32) -> Result<NetworkApplied> {
        let r = self
            .client
            .clone()
            .set_override(pb::SetOverrideRequest {
                r#override: Some(override_pb(o)),
                confirm_seconds,
            })
            .await
            .map_err(netd("set override"))?
            .into_inner();
        Ok(NetworkApplied {
            changed: !r.actions.is_empty(),
            actions: r.actions,
            confirm_deadline: r.confirm_deadline_unix,
        })
    }

    async fn clear_override(&self) -> Result<()> {
        self.client
            .clone()
            .clear_override(pb::ClearOverrideRequest {})
            .await
            .map_err(netd("clear override"))?;
        Ok(())
    }

    async fn override_state(&self) -> Result<Option<OverrideState>> {
        let r = self
            .client
            .clone()
            .observe(pb::ObserveRequest {})
            .await
            .map_err(netd("observe"))?
            .into_inner();
        let dns = r.override_dns;
        r.r#override.map(|o| Ok(OverrideState { spec: override_spec(o)?, dns })).transpose()
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
    async fn events(&self) -> Result<NetEvents> {
        Err(Error::NotConfigured("netd"))
    }
    async fn problems(&self) -> Result<Vec<OpenProblem>> {
        Ok(Vec::new())
    }
    fn configured(&self) -> bool {
        false
    }
    async fn set_override(&self, _: OverrideSpec, _: u32) -> Result<NetworkApplied> {
        Err(no_override("set override", NO_NETWORK))
    }
    async fn clear_override(&self) -> Result<()> {
        Err(no_override("clear override", NO_NETWORK))
    }
}

const NO_NETWORK: &str = "this node runs no network (nodeagent runs with --netd-socket none)";

/// An in-memory netd for unit tests: remembers calls, hands out namespace paths, sends the
/// events a test makes it send, and can be cut off and brought back.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<MemoryNetState>>,
}

#[derive(Default)]
pub struct MemoryNetState {
    pub applied: Vec<String>,
    pub attached: BTreeMap<(String, String), Endpoints>,
    pub calls: Vec<String>,
    /// netd refuses every apply with this message.
    pub fail_apply: Option<String>,
    /// What netd's loops have open (what `problems` answers).
    pub problems: Vec<OpenProblem>,
    /// netd is unreachable, for this reason.
    pub down: Option<String>,
    /// How many liveness checks asked.
    pub pings: u32,
    /// The uplink override in force (what `override_state` answers).
    pub override_in_force: Option<OverrideSpec>,
    /// netd refuses every override with this message.
    pub fail_override: Option<String>,
    listeners: Vec<mpsc::UnboundedSender<Result<PeerEvent>>>,
}

impl MemoryNetwork {
    pub fn state(&self) -> std::sync::MutexGuard<'_, MemoryNetState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// netd's loop `subject` starts failing: it is open, and a `failing` event goes out.
    pub fn fail(&self, subject: &str, message: &str, at_ms: i64) {
        let mut s = self.state();
        s.problems.retain(|p| p.subject != subject);
        s.problems.push(OpenProblem {
            source: Source::Netd,
            subject: subject.into(),
            workload: String::new(),
            message: message.into(),
            since_ms: at_ms,
            failures: 1,
        });
        s.send(PeerEvent {
            at_ms,
            kind: "failing".into(),
            subject: subject.into(),
            workload: String::new(),
            message: format!("{subject}: {message}"),
        });
    }

    /// netd sends an event of `kind` (e.g. `unconfirmed_kept`, `confirmed`).
    pub fn event(&self, kind: &str, message: &str, at_ms: i64) {
        self.state().send(PeerEvent {
            at_ms,
            kind: kind.into(),
            subject: String::new(),
            workload: String::new(),
            message: message.into(),
        });
    }

    /// netd's loop `subject` works again.
    pub fn recover(&self, subject: &str, at_ms: i64) {
        let mut s = self.state();
        s.problems.retain(|p| p.subject != subject);
        s.send(PeerEvent {
            at_ms,
            kind: "recovered".into(),
            subject: subject.into(),
            workload: String::new(),
            message: format!("{subject} works again"),
        });
    }

    /// netd goes away: its streams end and calls fail until [`MemoryNetwork::restore`].
    pub fn cut(&self, why: &str) {
        let mut s = self.state();
        s.down = Some(why.to_string());
        s.listeners.clear();
    }

    pub fn restore(&self) {
        self.state().down = None;
    }

    /// How many event streams are open.
    pub fn listeners(&self) -> usize {
        let mut s = self.state();
        s.listeners.retain(|l| !l.is_closed());
        s.listeners.len()
    }
}

impl MemoryNetState {
    fn send(&mut self, e: PeerEvent) {
        self.listeners.retain(|l| l.send(Ok(e.clone())).is_ok());
    }

    fn reachable(&self, op: &'static str) -> Result<()> {
        match &self.down {
            Some(why) => {
                Err(Error::Netd { op, source: Rpc(tonic::Status::unavailable(why.clone())) })
            }
            None => Ok(()),
        }
    }
}

impl Network for MemoryNetwork {
    async fn apply(&self, revision: &str, _: &str, _: u32) -> Result<NetworkApplied> {
        let mut s = self.state();
        s.calls.push(format!("apply {}", crate::plan::short(revision)));
        s.reachable("apply")?;
        if let Some(m) = &s.fail_apply {
            return Err(Error::Netd {
                op: "apply",
                source: Rpc(tonic::Status::failed_precondition(m.clone())),
            });
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
    async fn events(&self) -> Result<NetEvents> {
        let mut s = self.state();
        s.reachable("events")?;
        let (tx, rx) = mpsc::unbounded_channel();
        s.listeners.push(tx);
        Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed())
    }
    async fn problems(&self) -> Result<Vec<OpenProblem>> {
        let s = self.state();
        s.reachable("observe")?;
        Ok(s.problems.clone())
    }
    fn configured(&self) -> bool {
        true
    }
    async fn ping(&self) -> Result<()> {
        let mut s = self.state();
        s.pings += 1;
        s.reachable("observe")
    }
    fn address(&self) -> String {
        "the in-memory netd".into()
    }
    async fn set_override(&self, o: OverrideSpec, confirm_seconds: u32) -> Result<NetworkApplied> {
        let mut s = self.state();
        s.calls.push(format!("set override {} {} via {}", o.segment, o.address, o.gateway));
        s.reachable("set override")?;
        if let Some(m) = &s.fail_override {
            return Err(Error::Netd {
                op: "set override",
                source: Rpc(tonic::Status::invalid_argument(m.clone())),
            });
        }
        let confirm_deadline = if confirm_seconds > 0 { i64::from(confirm_seconds) } else { 0 };
        s.override_in_force = Some(o);
        Ok(NetworkApplied { changed: true, actions: vec![], confirm_deadline })
    }
    async fn clear_override(&self) -> Result<()> {
        let mut s = self.state();
        s.calls.push("clear override".into());
        s.reachable("clear override")?;
        match s.override_in_force.take() {
            Some(_) => Ok(()),
            None => Err(Error::Netd {
                op: "clear override",
                source: Rpc(tonic::Status::not_found("no uplink override is in force")),
            }),
        }
    }
    async fn override_state(&self) -> Result<Option<OverrideState>> {
        let s = self.state();
        s.reachable("observe")?;
        Ok(s.override_in_force.clone().map(|spec| OverrideState { spec, dns: String::new() }))
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
    pub fn from_flag(socket: &Path) -> Self {
        if socket.as_os_str() == "none" {
            NetworkChoice::None(NoNetwork)
        } else {
            NetworkChoice::Netd(NetdClient::new(socket))
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
    async fn events(&self) -> Result<NetEvents> {
        match self {
            NetworkChoice::Netd(n) => n.events().await,
            NetworkChoice::None(n) => n.events().await,
        }
    }
    async fn problems(&self) -> Result<Vec<OpenProblem>> {
        match self {
            NetworkChoice::Netd(n) => n.problems().await,
            NetworkChoice::None(n) => n.problems().await,
        }
    }
    fn configured(&self) -> bool {
        matches!(self, NetworkChoice::Netd(_))
    }
    async fn ping(&self) -> Result<()> {
        match self {
            NetworkChoice::Netd(n) => n.ping().await,
            NetworkChoice::None(n) => n.ping().await,
        }
    }
    fn address(&self) -> String {
        match self {
            NetworkChoice::Netd(n) => n.address(),
            NetworkChoice::None(n) => n.address(),
        }
    }
    async fn set_override(&self, o: OverrideSpec, confirm_seconds: u32) -> Result<NetworkApplied> {
        match self {
            NetworkChoice::Netd(n) => n.set_override(o, confirm_seconds).await,
            NetworkChoice::None(n) => n.set_override(o, confirm_seconds).await,
        }
    }
    async fn clear_override(&self) -> Result<()> {
        match self {
            NetworkChoice::Netd(n) => n.clear_override().await,
            NetworkChoice::None(n) => n.clear_override().await,
        }
    }
    async fn override_state(&self) -> Result<Option<OverrideState>> {
        match self {
            NetworkChoice::Netd(n) => n.override_state().await,
            NetworkChoice::None(n) => n.override_state().await,
        }
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;

    fn spec() -> OverrideSpec {
        OverrideSpec {
            segment: "mgmt".into(),
            address: "192.168.7.20/24".into(),
            gateway: "192.168.7.1".parse().unwrap(),
            dns: vec!["9.9.9.9".parse().unwrap()],
            vlan: 42,
            expires_unix: 1_796_000_000,
            set_unix: 1_795_990_000,
            reason: "console: technician".into(),
        }
    }

    #[test]
    fn an_override_goes_to_netd_and_reads_back_as_it_was() {
        assert_eq!(override_spec(override_pb(spec())).unwrap(), spec());
        let mut bad = override_pb(spec());
        bad.gateway = "router".into();
        let e = override_spec(bad).unwrap_err();
        assert!(backroom_daemon::chain(&e).contains("gateway `router`"), "{e}");
    }

    #[tokio::test]
    async fn a_node_without_a_network_says_so() {
        let n = NetworkChoice::from_flag(Path::new("none"));
        let e = n.set_override(spec(), 0).await.unwrap_err();
        assert!(backroom_daemon::chain(&e).contains("this node runs no network"), "{e}");
        let e = n.clear_override().await.unwrap_err();
        assert!(backroom_daemon::chain(&e).contains("this node runs no network"), "{e}");
        assert_eq!(n.override_state().await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_in_memory_netd_keeps_the_override_until_cleared() {
        let n = MemoryNetwork::default();
        assert_eq!(n.override_state().await.unwrap(), None);
        let a = n.set_override(spec(), 60).await.unwrap();
        assert!(a.confirm_deadline > 0);
        assert_eq!(n.override_state().await.unwrap().unwrap().spec, spec());
        n.clear_override().await.unwrap();
        assert_eq!(n.override_state().await.unwrap(), None);
        assert!(n.clear_override().await.is_err(), "nothing left to clear");
        n.cut("netd stopped");
        assert!(n.set_override(spec(), 0).await.is_err());
    }
}
