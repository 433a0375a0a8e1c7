//! `netd serve`: the local gRPC API on a unix socket, and the loops that keep the kernel matching
//! the applied profile (drift checks on netlink link events and every interval, DHCP renewal,
//! the commit-confirm deadline). Handlers parse, call one [`Engine`] function on a blocking
//! thread, and map the result; errors become a `tonic::Status` in [`status`].

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backroom_api::netd as pb;
use backroom_api::netd::netd_server::{Netd, NetdServer};
use futures::Stream;
use tokio::sync::{Notify, broadcast};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::endpoints::Endpoint;
use crate::engine::{Engine, Observation, now_unix, parse_profile};
use crate::error::{Error, full};

/// Maps an error to a status, in one place.
pub fn status(e: Error) -> Status {
    let msg = full(&e);
    match e {
        Error::Profile(_) | Error::RevisionMismatch { .. } => Status::invalid_argument(msg),
        Error::NotFound(_) => Status::not_found(msg),
        Error::Rejected(_) => Status::failed_precondition(msg),
        Error::Kernel { .. } | Error::State { .. } | Error::Many(_) => Status::internal(msg),
    }
}

#[derive(Clone)]
pub struct Daemon {
    engine: Arc<Mutex<Engine>>,
    events: broadcast::Sender<pb::Event>,
    check_now: Arc<Notify>,
}

impl Daemon {
    pub fn new(engine: Engine) -> Daemon {
        let (events, _) = broadcast::channel(256);
        Daemon { engine: Arc::new(Mutex::new(engine)), events, check_now: Arc::new(Notify::new()) }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = engine.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .unwrap_or_else(|e| Err(Error::Rejected(format!("an engine task failed: {e}"))))
    }

    pub fn emit(&self, kind: &str, message: String, revision: &str) {
        info!(kind, revision, "{message}");
        let _ = self.events.send(pb::Event {
            at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            kind: kind.to_string(),
            message,
            revision: revision.to_string(),
            subject: String::new(),
        });
    }

    /// One drift check: reports what differs, repairs it, renews DHCP leases that are due.
    pub async fn check(&self) {
        let drift = self.run(|e| e.drift()).await;
        match drift {
            Ok(d) if !d.is_empty() => {
                self.emit(
                    "drift_found",
                    format!("the network differs from the applied profile: {}", d.join("; ")),
                    "",
                );
                match self.run(|e| e.reconcile()).await {
                    Ok(o) => self.emit(
                        "drift_repaired",
                        format!("repaired: {}", o.actions.join("; ")),
                        "",
                    ),
                    Err(e) => {
                        self.emit("apply_failed", format!("drift repair failed: {}", full(&e)), "")
                    }
                }
            }
            Ok(_) => {}
            Err(Error::Rejected(_)) => {}
            Err(e) => warn!("drift check failed: {}", full(&e)),
        }
        match self.run(|e| e.renew_dhcp()).await {
            Ok(v) if !v.is_empty() => info!("dhcp: {}", v.join("; ")),
            Ok(_) | Err(Error::Rejected(_)) => {}
            Err(e) => warn!("DHCP renewal failed: {}", full(&e)),
        }
    }

    /// Rolls back a pending apply whose deadline passed.
    pub async fn deadline(&self) {
        match self.run(|e| e.rollback_if_due(now_unix())).await {
            Ok(Some((rev, o))) if rev.is_empty() => self.emit(
                "rollback_done",
                format!("the apply was not confirmed in time and there was no earlier profile: netd removed its network ({} steps)", o.actions.len()),
                "",
            ),
            Ok(Some((rev, o))) => self.emit(
                "rollback_done",
                format!("the apply was not confirmed in time: revision {rev} is back ({} steps)", o.actions.len()),
                &rev,
            ),
            Ok(None) => {}
            Err(e) => warn!("rollback failed: {}", full(&e)),
        }
    }

    /// The loops of the daemon; never returns.
    pub async fn background(self, interval: Duration) {
        let watcher = self.check_now.clone();
        std::thread::spawn(move || link_events(watcher));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.check_now.notified() => {
                    // Let a burst of link events settle.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    self.check().await;
                    last_check = tokio::time::Instant::now();
                }
            }
            self.deadline().await;
            if last_check.elapsed() >= interval {
                self.check().await;
                last_check = tokio::time::Instant::now();
            }
        }
    }
}

/// Wakes the drift check on every link change in netd's namespace.
fn link_events(notify: Arc<Notify>) {
    let Ok(mut sock) = netlink_sys::Socket::new(0) else { return };
    let mut addr = netlink_sys::SocketAddr::new(0, 1 | 0x10 | 0x40); // LINK, IPV4_IFADDR, IPV4_ROUTE
    if sock.bind(&addr).is_err() {
        addr = netlink_sys::SocketAddr::new(0, 1);
        if sock.bind(&addr).is_err() {
            return;
        }
    }
    let mut buf = vec![0u8; 65536];
    loop {
        let mut slice = &mut buf[..];
        match sock.recv(&mut slice, 0) {
            Ok(_) => notify.notify_one(),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => notify.notify_one(),
            Err(_) => return,
        }
    }
}

fn interface(i: &crate::endpoints::Iface) -> pb::Interface {
    pb::Interface {
        name: i.name.clone(),
        segment: i.segment.clone(),
        bridge: i.bridge.clone(),
        mac: i.mac.clone(),
        address: i.address.map(|a| a.to_string()).unwrap_or_default(),
        gateway: i.gateway.map(|g| g.to_string()).unwrap_or_default(),
        temporary: i.temporary,
        host_veth: i.host_veth.clone().unwrap_or_default(),
    }
}

pub fn attach_reply(ep: &Endpoint) -> pb::AttachReply {
    pb::AttachReply {
        netns_path: ep.netns_path(),
        interfaces: ep.interfaces.iter().map(interface).collect(),
    }
}

pub fn observe_reply(o: Observation) -> pb::ObserveReply {
    pb::ObserveReply {
        problems: Vec::new(),
        applied_revision: o.applied_revision,
        pending_revision: o.pending_revision,
        confirm_deadline_unix: o.confirm_deadline_unix,
        segments: o
            .segments
            .into_iter()
            .map(|s| pb::SegmentState {
                name: s.name,
                bridge: s.bridge,
                present: s.present,
                addresses: s.addresses,
                ports: s.ports,
            })
            .collect(),
        rules: o
            .counters
            .into_iter()
            .map(|(rule, packets, bytes)| pb::RuleCounter { rule, packets, bytes })
            .collect(),
        drift: o.drift,
        endpoints: o
            .endpoints
            .iter()
            .map(|e| pb::EndpointState {
                workload: e.workload.clone(),
                instance: e.instance.clone(),
                netns_path: e.netns_path(),
                interfaces: e.interfaces.iter().map(interface).collect(),
            })
            .collect(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Netd for Daemon {
    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let r = req.into_inner();
        let rendered = parse_profile(&r.revision, &r.profile_yaml).map_err(status)?;
        let rev = rendered.revision.as_str().to_string();
        let uplink = Some(r.uplink_override).filter(|u| !u.is_empty());
        let confirm = r.confirm_seconds;
        let res = self.run(move |e| e.apply(&rendered, uplink.as_deref(), confirm)).await;
        match res {
            Ok(o) => {
                self.emit(
                    "apply_done",
                    format!("revision {rev} applied ({} steps)", o.actions.len()),
                    &rev,
                );
                Ok(Response::new(pb::ApplyReply {
                    changed: o.changed,
                    actions: o.actions,
                    confirm_deadline_unix: o.confirm_deadline_unix,
                }))
            }
            Err(e) => {
                self.emit(
                    "apply_failed",
                    format!("revision {rev} could not be applied: {}", full(&e)),
                    &rev,
                );
                Err(status(e))
            }
        }
    }

    async fn confirm(
        &self,
        req: Request<pb::ConfirmRequest>,
    ) -> Result<Response<pb::ConfirmReply>, Status> {
        let rev = req.into_inner().revision;
        let confirmed = self.run(move |e| e.confirm(&rev)).await.map_err(status)?;
        self.emit("confirmed", format!("revision {confirmed} is confirmed"), &confirmed);
        Ok(Response::new(pb::ConfirmReply { revision: confirmed }))
    }

    async fn plan(&self, req: Request<pb::PlanRequest>) -> Result<Response<pb::PlanReply>, Status> {
        let r = req.into_inner();
        let rendered = parse_profile(&r.revision, &r.profile_yaml).map_err(status)?;
        let uplink = Some(r.uplink_override).filter(|u| !u.is_empty());
        let actions =
            self.run(move |e| e.plan(&rendered, uplink.as_deref())).await.map_err(status)?;
        Ok(Response::new(pb::PlanReply { actions }))
    }

    async fn observe(
        &self,
        _req: Request<pb::ObserveRequest>,
    ) -> Result<Response<pb::ObserveReply>, Status> {
        let o = self.run(|e| e.observe()).await.map_err(status)?;
        Ok(Response::new(observe_reply(o)))
    }

    async fn attach(
        &self,
        req: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::AttachReply>, Status> {
        let r = req.into_inner();
        let ep = self.run(move |e| e.attach(&r.workload, &r.instance)).await.map_err(status)?;
        Ok(Response::new(attach_reply(&ep)))
    }

    async fn detach(
        &self,
        req: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachReply>, Status> {
        let r = req.into_inner();
        self.run(move |e| e.detach(&r.workload, &r.instance)).await.map_err(status)?;
        Ok(Response::new(pb::DetachReply {}))
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteReply>, Status> {
        let r = req.into_inner();
        let ep = self.run(move |e| e.promote(&r.workload, &r.instance)).await.map_err(status)?;
        Ok(Response::new(pb::PromoteReply { endpoints: Some(attach_reply(&ep)) }))
    }

    async fn teardown(
        &self,
        _req: Request<pb::TeardownRequest>,
    ) -> Result<Response<pb::TeardownReply>, Status> {
        let removed = self.run(|e| e.teardown()).await.map_err(status)?;
        Ok(Response::new(pb::TeardownReply { removed }))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        _req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let rx = self.events.subscribe();
        let s = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((Ok(ev), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Response::new(Box::pin(s)))
    }
}

/// Serves the API on `socket` (mode 0600) until the process ends; tells systemd when ready and
/// feeds its watchdog.
pub async fn serve(daemon: Daemon, socket: PathBuf, interval: Duration) -> Result<(), Error> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::state(format!("cannot create {}", dir.display()), e))?;
    }
    if socket.exists() {
        std::fs::remove_file(&socket).map_err(|e| {
            Error::state(format!("cannot remove the old socket {}", socket.display()), e)
        })?;
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| Error::state(format!("cannot listen on {}", socket.display()), e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            Error::state(format!("cannot restrict {} to root", socket.display()), e)
        })?;
    }
    // Re-adopt what exists: repair whatever drifted while netd was not running.
    daemon.check().await;
    daemon.deadline().await;
    tokio::spawn(daemon.clone().background(interval));
    if let Some(wd) = sd_notify::watchdog_enabled() {
        let period = wd / 2;
        tokio::spawn(async move {
            loop {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                tokio::time::sleep(period).await;
            }
        });
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!(socket = %socket.display(), "netd is serving");
    tonic::transport::Server::builder()
        .add_service(NetdServer::new(daemon))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await
        .map_err(|e| Error::state("the gRPC server stopped", std::io::Error::other(e)))
}

/// A client of a running netd on `socket`.
pub async fn client(
    socket: PathBuf,
) -> Result<backroom_api::netd::netd_client::NetdClient<tonic::transport::Channel>, Error> {
    let ch = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .map_err(|e| Error::state("bad endpoint", std::io::Error::other(e)))?
        .connect_with_connector(tower::service_fn(move |_| {
            let p = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .map_err(|e| {
            Error::state(
                "cannot connect to netd's socket (is `netd serve` running?)",
                std::io::Error::other(e),
            )
        })?;
    Ok(backroom_api::netd::netd_client::NetdClient::new(ch))
}
