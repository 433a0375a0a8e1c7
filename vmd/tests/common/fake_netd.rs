//! A stand-in for netd's gRPC API (netd is built on another branch): `Attach` answers what the
//! test tells it, and records what was asked; every other call is unimplemented.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use backroom_api::netd as pb;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
pub struct FakeNetd {
    pub answers: Arc<Mutex<BTreeMap<String, Vec<pb::Interface>>>>,
    pub attached: Arc<Mutex<Vec<String>>>,
    pub detached: Arc<Mutex<Vec<String>>>,
}

type Events = Pin<Box<dyn futures::Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::netd_server::Netd for FakeNetd {
    async fn apply(
        &self,
        _: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        Err(Status::unimplemented("fake netd"))
    }
    async fn confirm(
        &self,
        _: Request<pb::ConfirmRequest>,
    ) -> Result<Response<pb::ConfirmReply>, Status> {
        Err(Status::unimplemented("fake netd"))
    }
    async fn plan(&self, _: Request<pb::PlanRequest>) -> Result<Response<pb::PlanReply>, Status> {
        Err(Status::unimplemented("fake netd"))
    }
    async fn observe(
        &self,
        _: Request<pb::ObserveRequest>,
    ) -> Result<Response<pb::ObserveReply>, Status> {
        Err(Status::unimplemented("fake netd"))
    }
    async fn attach(
        &self,
        r: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::AttachReply>, Status> {
        let w = r.into_inner().workload;
        self.attached.lock().unwrap().push(w.clone());
        match self.answers.lock().unwrap().get(&w) {
            Some(i) => Ok(Response::new(pb::AttachReply {
                netns_path: String::new(),
                interfaces: i.clone(),
            })),
            None => {
                Err(Status::not_found(format!("workload {w} is not in netd's applied profile")))
            }
        }
    }
    async fn detach(
        &self,
        r: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachReply>, Status> {
        self.detached.lock().unwrap().push(r.into_inner().workload);
        Ok(Response::new(pb::DetachReply {}))
    }
    async fn promote(
        &self,
        _: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteReply>, Status> {
        Err(Status::unimplemented("fake netd"))
    }
    async fn teardown(
        &self,
        _: Request<pb::TeardownRequest>,
    ) -> Result<Response<pb::TeardownReply>, Status> {
        Err(Status::unimplemented("fake netd"))
    }
    async fn set_override(
        &self,
        _: Request<pb::SetOverrideRequest>,
    ) -> Result<Response<pb::SetOverrideReply>, Status> {
        Err(Status::unimplemented("fake netd"))
    }
    async fn clear_override(
        &self,
        _: Request<pb::ClearOverrideRequest>,
    ) -> Result<Response<pb::ClearOverrideReply>, Status> {
        Err(Status::unimplemented("fake netd"))
    }
    type EventsStream = Events;
    async fn events(&self, _: Request<pb::EventsRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("fake netd"))
    }
}

/// Serves `fake` on a unix socket in `dir` (on a thread with its own runtime); returns the path.
pub fn serve(fake: FakeNetd, dir: &Path) -> PathBuf {
    let sock = dir.join("netd.sock");
    let s2 = sock.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::UnixListener::bind(&s2).unwrap();
            tx.send(()).unwrap();
            tonic::transport::Server::builder()
                .add_service(pb::netd_server::NetdServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l))
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap();
    sock
}

pub fn iface(segment: &str, mac: &str, address: &str, gateway: &str) -> pb::Interface {
    pb::Interface {
        name: String::new(),
        segment: segment.into(),
        bridge: format!("br-{segment}"),
        mac: mac.into(),
        address: address.into(),
        gateway: gateway.into(),
        temporary: false,
        host_veth: String::new(),
    }
}
