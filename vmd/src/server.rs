//! vmd's local gRPC API (`api/proto/backroom/vmd.proto`) on a unix socket (mode 0600).
//! Handlers parse, call one function of [`Vmd`], and map the result; errors become statuses in
//! [`status`], one exhaustive `match`.

use std::path::Path;
use std::pin::Pin;

use backroom_api::vmd as pb;
use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::manager::{VmEvent, VmStatus, Vmd};

pub struct VmdService {
    vmd: Vmd,
}

impl VmdService {
    pub fn new(vmd: Vmd) -> Self {
        VmdService { vmd }
    }
}

/// The one place errors become gRPC statuses.
pub fn status(e: Error) -> Status {
    let msg = backroom_daemon::chain(&e);
    match e {
        Error::Invalid(_)
        | Error::RevisionMismatch { .. }
        | Error::AutoAddressNeedsNetd { .. }
        | Error::Spec { .. } => Status::invalid_argument(msg),
        Error::ImageOutsideFolders { .. } => Status::permission_denied(msg),
        Error::DataDiskUnreadable { .. } => Status::failed_precondition(msg),
        Error::Admission(_) => Status::resource_exhausted(msg),
        Error::UnknownVm(_) => Status::not_found(msg),
        Error::Foreign(_) | Error::Locked(_) => Status::failed_precondition(msg),
        Error::Failed { .. } | Error::UpdateRolledBack { .. } => Status::aborted(msg),
        Error::Netd(_) | Error::NetdUnreachable(_) | Error::NetdRefused { .. } => {
            Status::unavailable(msg)
        }
        Error::Unsupported(_) => Status::unimplemented(msg),
        Error::Libvirt { .. }
        | Error::EventLoop(_)
        | Error::Io { .. }
        | Error::CommandSpawn { .. }
        | Error::Command { .. }
        | Error::Image { .. }
        | Error::ImageHttp { .. }
        | Error::DownloadFailed { .. }
        | Error::Probe { .. }
        | Error::ProbeAnswer { .. }
        | Error::Kvm { .. }
        | Error::UpdateStep { .. }
        | Error::StateUnreadable { .. }
        | Error::Daemon(_) => Status::internal(msg),
    }
}

/// vmd's open problems as the API carries them.
pub fn problem_pb(p: backroom_daemon::condition::Problem) -> backroom_api::common::Problem {
    backroom_api::common::Problem {
        subject: p.subject,
        message: p.message,
        since_unix_ms: p.since_ms,
        failures: p.failures,
        source: "vmd".into(),
    }
}

pub fn to_pb(s: VmStatus) -> pb::VmStatus {
    pb::VmStatus {
        name: s.name,
        state: s.state.as_str().into(),
        since_unix: s.since_unix,
        restarts: s.restarts,
        revision: s.revision,
        reason: s.reason,
        addresses: s.addresses,
        health: s.health.as_str().into(),
    }
}

fn event_pb(e: VmEvent) -> pb::Event {
    pb::Event {
        at_unix_ms: e.at_unix_ms,
        vm: e.vm,
        kind: e.kind,
        message: e.message,
        subject: e.subject,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::vmd_server::Vmd for VmdService {
    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let r = req.into_inner();
        if r.revision.is_empty() {
            return Err(Status::invalid_argument(
                "revision is required (the profile's revision id)",
            ));
        }
        let actions = self.vmd.apply_text(&r.revision, &r.profile_yaml).await.map_err(status)?;
        Ok(Response::new(pb::ApplyReply { actions }))
    }

    async fn list(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, Status> {
        Ok(Response::new(pb::ListReply {
            vms: self.vmd.list().into_iter().map(to_pb).collect(),
            problems: self.vmd.problems().into_iter().map(problem_pb).collect(),
            libvirt_error: self.vmd.libvirt_error().unwrap_or_default(),
        }))
    }

    async fn start(&self, req: Request<pb::VmRequest>) -> Result<Response<pb::VmReply>, Status> {
        let s = self.vmd.start_vm(&req.into_inner().name).await.map_err(status)?;
        Ok(Response::new(pb::VmReply { vm: Some(to_pb(s)) }))
    }

    async fn stop(&self, req: Request<pb::VmRequest>) -> Result<Response<pb::VmReply>, Status> {
        let s = self.vmd.stop_vm(&req.into_inner().name).await.map_err(status)?;
        Ok(Response::new(pb::VmReply { vm: Some(to_pb(s)) }))
    }

    async fn restart(&self, req: Request<pb::VmRequest>) -> Result<Response<pb::VmReply>, Status> {
        let s = self.vmd.restart_vm(&req.into_inner().name).await.map_err(status)?;
        Ok(Response::new(pb::VmReply { vm: Some(to_pb(s)) }))
    }

    async fn console_log(
        &self,
        req: Request<pb::ConsoleLogRequest>,
    ) -> Result<Response<pb::ConsoleLogReply>, Status> {
        let r = req.into_inner();
        self.vmd.status(&r.name).map_err(status)?;
        let max = if r.max_bytes == 0 { 64 << 10 } else { r.max_bytes as usize };
        let data = self.vmd.console_log(&r.name, max).map_err(status)?;
        Ok(Response::new(pb::ConsoleLogReply { data }))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        _req: Request<pb::EventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let s = BroadcastStream::new(self.vmd.subscribe())
            .filter_map(|e| e.ok().map(|e| Ok(event_pb(e))));
        Ok(Response::new(Box::pin(s)))
    }
}

/// Serves the API on `socket` (see `backroom_daemon::socket::listen`: refused while another
/// vmd serves there, 0600, or 0660 for `access`'s group) until `shutdown` resolves. `ready` runs once the socket listens.
pub async fn serve(
    vmd: Vmd,
    socket: &Path,
    access: backroom_daemon::socket::Access,
    ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let incoming = backroom_daemon::socket::listen(socket, access)?;
    ready();
    tonic::transport::Server::builder()
        .add_service(pb::vmd_server::VmdServer::new(VmdService::new(vmd)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::io("serving gRPC", std::io::Error::other(e)))
}
