//! nodeagent's local gRPC API (`backroom.nodeagent.v1.NodeAgent`), the front end nodectl talks
//! to: each handler parses, calls the engine, and maps the result. Errors become a
//! `tonic::Status` in one place ([`to_status`]).

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use backroom_api::nodeagent as pb;
use backroom_api::nodeagent::node_agent_server::{NodeAgent, NodeAgentServer};
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::engine::{EngineHandle, Status as EngineStatus};
use crate::error::Error;

/// The error as a gRPC status whose message is its whole chain of causes.
pub fn to_status(e: Error) -> Status {
    let msg = backroom_daemon::chain(&e);
    match e {
        Error::Invalid(_) | Error::Refused(_) | Error::Profile { .. } => {
            Status::failed_precondition(msg)
        }
        Error::NoSuchWorkload(_) => Status::not_found(msg),
        Error::NotConfigured(_) => Status::failed_precondition(msg),
        Error::ShuttingDown => Status::unavailable(msg),
        Error::Connect { .. }
        | Error::Handshake { .. }
        | Error::Netd { .. }
        | Error::Vmd { .. }
        | Error::NotConfirmed { .. }
        | Error::StreamClosed(_)
        | Error::Containerd { .. }
        | Error::Teardown { .. }
        | Error::ExecTimeout { .. } => Status::unavailable(msg),
        Error::Image { .. }
        | Error::ImageJson { .. }
        | Error::ImageConfig { .. }
        | Error::Pull { .. }
        | Error::Blob { .. }
        | Error::OsImageMismatch { .. } => Status::failed_precondition(msg),
        Error::OsDownload { .. } => Status::unavailable(msg),
        Error::OsCommand { .. } => Status::internal(msg),
        Error::RuntimeSpec { .. } => Status::internal(msg),
        Error::Io { .. }
        | Error::StateFile { .. }
        | Error::Encode { .. }
        | Error::RevisionMismatch { .. }
        | Error::Task { .. }
        | Error::Daemon(_) => Status::internal(msg),
    }
}

pub struct Service {
    engine: EngineHandle,
    central: tokio::sync::watch::Receiver<String>,
    extra: Extra,
    /// The desired profile's facts for the console, by revision (read once per revision).
    profile: std::sync::Mutex<(String, ProfileFacts)>,
}

/// What the console's calls and status fields need beyond the engine.
pub struct Extra {
    pub console: Option<std::sync::Arc<crate::console::Console>>,
    pub link: Option<tokio::sync::watch::Receiver<crate::connected::LinkInfo>>,
    pub contact: Option<tokio::sync::watch::Receiver<i64>>,
    pub state_dir: PathBuf,
}

#[derive(Clone, Default)]
struct ProfileFacts {
    uplink: String,
    segments: Vec<pb::SegmentInfo>,
    registries: Vec<String>,
}

fn profile_facts(r: &backroom_profiles::Rendered) -> ProfileFacts {
    let n = &r.profile.network;
    let segments = n
        .segments
        .iter()
        .map(|g| pb::SegmentInfo {
            name: g.name.to_string(),
            vlan: if g.internal {
                "internal".into()
            } else {
                g.vlan.as_ref().map_or("untagged".into(), |v| v.to_string())
            },
            address: g.address.to_string(),
            gateway: g.gateway.map(|a| a.to_string()).unwrap_or_default(),
            subnet: g.subnet.as_ref().map(|s| s.to_string()).unwrap_or_default(),
        })
        .collect();
    let mut registries: Vec<String> = r
        .profile
        .containers()
        .filter_map(|c| {
            let repo = &c.image.as_ref()?.repository;
            let (host, _) = repo.split_once('/')?;
            (host.contains('.') || host.contains(':') || host == "localhost")
                .then(|| host.to_string())
        })
        .collect();
    registries.sort();
    registries.dedup();
    ProfileFacts {
        uplink: n.uplink.as_ref().map(|u| u.interface.clone()).unwrap_or_else(|| "auto".into()),
        segments,
        registries,
    }
}

/// The nodectl service; `central` says how the link with central is (see `connected`).
pub fn service(
    engine: EngineHandle,
    central: tokio::sync::watch::Receiver<String>,
    extra: Extra,
) -> NodeAgentServer<Service> {
    NodeAgentServer::new(Service {
        engine,
        central,
        extra,
        profile: std::sync::Mutex::new((String::new(), ProfileFacts::default())),
    })
}

impl Service {
    fn console(&self) -> Result<&crate::console::Console, Status> {
        self.extra
            .console
            .as_deref()
            .ok_or_else(|| Status::unimplemented("this nodeagent runs without the console's calls"))
    }

    fn profile_facts(&self, revision: &str) -> ProfileFacts {
        let mut cached = self.profile.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != revision && !revision.is_empty() {
            let facts = crate::store::Store::open(&self.extra.state_dir)
                .and_then(|s| s.load_revision(revision))
                .map(|r| profile_facts(&r))
                .unwrap_or_default();
            *cached = (revision.to_string(), facts);
        }
        cached.1.clone()
    }
}

fn ms_to_unix(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(0)
}

pub fn status_reply(s: EngineStatus) -> pb::StatusReply {
    pb::StatusReply {
        problems: s.problems.iter().map(|p| p.to_pb()).collect(),
        desired_revision: s.desired,
        applied_revision: s.applied,
        last_known_good: s.last_known_good,
        profile_name: s.profile_name,
        profile_version: s.profile_version,
        network: s.network,
        vms: s.vms,
        containers: s.containers,
        source: s.source,
        central: String::new(),
        workloads: s
            .workloads
            .into_iter()
            .map(|w| pb::WorkloadStatus {
                name: w.name,
                kind: w.kind,
                state: w.state,
                health: w.health,
                reason: w.reason,
                since_unix: ms_to_unix(w.since_ms),
                restarts: w.restarts,
                addresses: w.addresses,
                image: w.image,
                image_digest: w.image_digest,
                container_id: w.container_id,
                revision: w.revision,
                health_reason: w.health_reason,
            })
            .collect(),
        actions: s
            .actions
            .into_iter()
            .map(|a| pb::ActionResult {
                at_unix_ms: i64::try_from(a.at_ms).unwrap_or(0),
                workload: a.workload,
                action: a.action,
                ok: a.ok,
                message: a.message,
            })
            .collect(),
        ..Default::default()
    }
}

/// Workload names are `[a-z][a-z0-9-]*`: nothing else may reach a log path.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for Service {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let s = self.engine.status().await.map_err(to_status)?;
        let mut reply = status_reply(s);
        reply.central = self.central.borrow().clone();
        if let Some(l) = &self.extra.link {
            let l = l.borrow().clone();
            reply.store_id = l.store_id;
            reply.central_url = l.url;
            reply.central_since_unix_ms = l.since_ms;
            reply.central_error = l.error;
        }
        if let Some(c) = &self.extra.contact {
            reply.central_last_contact_unix_ms = *c.borrow();
        }
        let p = self.profile_facts(&reply.desired_revision);
        reply.uplink_interface = p.uplink;
        reply.segments = p.segments;
        reply.registries = p.registries;
        reply.state_dir = self.extra.state_dir.display().to_string();
        Ok(Response::new(reply))
    }

    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let req = req.into_inner();
        let source = if req.source.is_empty() { "nodectl apply".to_string() } else { req.source };
        let rendered = match backroom_profiles::render_str(&source, &req.profile_yaml) {
            Ok(r) => r,
            Err(invalid) => {
                let lines: Vec<String> = invalid.errors().map(|d| d.to_string()).collect();
                return Err(Status::invalid_argument(format!(
                    "profile refused, nothing changed:\n{}",
                    lines.join("\n")
                )));
            }
        };
        let warnings = rendered.warnings.iter().map(|d| d.to_string()).collect();
        let out = self.engine.apply(rendered, source).await.map_err(to_status)?;
        Ok(Response::new(pb::ApplyReply { revision: out.revision, changed: out.changed, warnings }))
    }

    async fn restart(
        &self,
        req: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::RestartReply>, Status> {
        let message = self.engine.restart(&req.into_inner().name).await.map_err(to_status)?;
        Ok(Response::new(pb::RestartReply { message }))
    }

    type LogsStream = BoxStream<pb::LogChunk>;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        if !valid_name(&req.name) {
            return Err(Status::invalid_argument(format!("`{}` is not a workload name", req.name)));
        }
        let logs = self.engine.logs().clone();
        let path = logs.log_path(&req.name);
        if !path.exists() {
            return Err(Status::not_found(format!("no log for workload `{}` yet", req.name)));
        }
        let max = if req.tail_bytes == 0 { 64 << 10 } else { req.tail_bytes };
        let first = logs.tail(&req.name, max).map_err(to_status)?;
        let start = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let head = tokio_stream::once(Ok(pb::LogChunk { data: first }));
        if !req.follow {
            return Ok(Response::new(Box::pin(head)));
        }
        let follow = futures::stream::unfold((path, start), |(path, offset)| async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                match crate::logs::read_from(&path, offset) {
                    Ok((data, next)) if !data.is_empty() => {
                        return Some((Ok(pb::LogChunk { data }), (path, next)));
                    }
                    Ok((_, next)) if next != offset => {
                        return Some((Ok(pb::LogChunk { data: vec![] }), (path, next)));
                    }
                    Ok(_) => {}
                    Err(e) => return Some((Err(to_status(e)), (path, offset))),
                }
            }
        });
        Ok(Response::new(Box::pin(head.chain(follow))))
    }

    async fn import_image(
        &self,
        req: Request<pb::ImportImageRequest>,
    ) -> Result<Response<pb::ImportImageReply>, Status> {
        let path = PathBuf::from(req.into_inner().path);
        if !path.is_absolute() {
            return Err(Status::invalid_argument("the archive path must be absolute"));
        }
        let imported = self.engine.import(path).await.map_err(to_status)?;
        Ok(Response::new(pb::ImportImageReply {
            images: imported.iter().map(|(n, _)| n.clone()).collect(),
            digests: imported.into_iter().map(|(_, d)| d).collect(),
        }))
    }

    async fn console_unlock(
        &self,
        req: Request<pb::ConsoleUnlockRequest>,
    ) -> Result<Response<pb::ConsoleUnlockReply>, Status> {
        self.console()?.unlock(&req.into_inner().code).map(Response::new)
    }

    async fn console_action(
        &self,
        req: Request<pb::ConsoleActionRequest>,
    ) -> Result<Response<pb::ConsoleActionReply>, Status> {
        let message = self.console()?.act(req.into_inner()).await?;
        Ok(Response::new(pb::ConsoleActionReply { message }))
    }

    type EventsStream = BoxStream<pb::Event>;

    async fn events(
        &self,
        _: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let rx = self.engine.subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| {
            r.ok().map(|e| {
                Ok(pb::Event {
                    at_unix_ms: i64::try_from(e.at_ms).unwrap_or(0),
                    workload: e.workload,
                    kind: e.kind,
                    message: e.message,
                    subject: e.subject,
                })
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_cannot_escape_the_log_folder() {
        assert!(super::valid_name("orders-2"));
        assert!(!super::valid_name("../etc"));
        assert!(!super::valid_name(""));
        assert!(!super::valid_name("a/b"));
    }
}
