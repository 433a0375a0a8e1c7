//! containerd 1.6 through `containerd-client`: containers, tasks, exec, and the plumbing shared
//! by image pull and import (`content.rs`). Every request carries the namespace; image writes
//! also carry a lease so containerd's GC leaves half-written content alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetRequest, KillRequest,
    ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::types::Mount;
use oci_spec::runtime::Process;
use prost_types::Any;
use tonic::transport::Channel;
use tonic::{Code, Request};

use backroom_daemon::SharedClock;

use super::{CreateRequest, Ended, ImageInfo, LABEL_WORKLOAD, Observed, StoredImage, TaskState};
use crate::error::{Error, Result};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
pub(super) const SNAPSHOTTER: &str = "overlayfs";
const RUNC: &str = "io.containerd.runc.v2";
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// Credentials for one registry (from the node's config).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

#[derive(Clone, Debug, Default)]
pub struct ContainerdConfig {
    pub socket: PathBuf,
    /// The containerd namespace (several nodeagents on one containerd use distinct ones).
    pub namespace: String,
    /// Registries reached over plain HTTP besides loopback ones (`host[:port]`).
    pub insecure_registries: Vec<String>,
    /// Credentials by registry (`host[:port]`).
    pub auth: BTreeMap<String, RegistryAuth>,
    /// Extra CA certificates (PEM blocks) by registry (`host[:port]`), trusted besides the
    /// system's store; a registry with a CA here is always reached over https, loopback or not
    /// (as Docker's `certs.d/<registry>/ca.crt`).
    pub registry_cas: BTreeMap<String, Vec<String>>,
}

/// containerd, as nodeagent uses it.
#[derive(Clone)]
pub struct Containerd {
    pub(super) channel: Channel,
    pub(super) config: ContainerdConfig,
    /// For the wall-clock times containerd is told (a lease's expiry) and unique names.
    pub(super) clock: SharedClock,
}

pub(super) fn status_err(op: &str, s: tonic::Status) -> Error {
    Error::containerd(op, s)
}

impl Containerd {
    /// Connects to containerd's socket; fails when it does not answer as containerd.
    pub async fn connect(config: ContainerdConfig) -> Result<Self> {
        let channel = backroom_daemon::socket::connect(&config.socket)
            .await
            .map_err(|source| Error::Connect { what: "containerd", source })?;
        let c = Containerd { channel, config, clock: backroom_daemon::clock::system() };
        // A cheap call that fails early when the socket is not containerd's.
        containerd_client::services::v1::version_client::VersionClient::new(c.channel.clone())
            .version(())
            .await
            .map_err(|s| Error::Handshake {
                what: "containerd",
                path: c.config.socket.clone(),
                source: s.into(),
            })?;
        Ok(c)
    }

    /// The same containerd, reading time from `clock`.
    pub fn with_clock(self, clock: SharedClock) -> Self {
        Containerd { clock, ..self }
    }

    pub(super) fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.config.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        r
    }

    pub(super) fn req_lease<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    fn containers(
        &self,
    ) -> containerd_client::services::v1::containers_client::ContainersClient<Channel> {
        containerd_client::services::v1::containers_client::ContainersClient::new(
            self.channel.clone(),
        )
    }

    fn tasks(&self) -> containerd_client::services::v1::tasks_client::TasksClient<Channel> {
        containerd_client::services::v1::tasks_client::TasksClient::new(self.channel.clone())
    }

    pub(super) fn snapshots(
        &self,
    ) -> containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient<Channel>
    {
        containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient::new(
            self.channel.clone(),
        )
    }

    async fn rootfs(&self, id: &str, parent: &str) -> Result<Vec<Mount>> {
        let prepared = self
            .snapshots()
            .prepare(self.req(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
                parent: parent.into(),
                labels: Default::default(),
            }))
            .await;
        match prepared {
            Ok(r) => Ok(r.into_inner().mounts),
            Err(s) if s.code() == Code::AlreadyExists => Ok(self
                .snapshots()
                .mounts(self.req(MountsRequest { snapshotter: SNAPSHOTTER.into(), key: id.into() }))
                .await
                .map_err(|s| status_err("snapshot mounts", s))?
                .into_inner()
                .mounts),
            Err(s) => Err(status_err("snapshot prepare", s)),
        }
    }

    pub(super) async fn start_impl(&self, req: CreateRequest) -> Result<u32> {
        match self.start_once(&req).await {
            Err(e) if lost_layer(&e) => {
                // containerd 1.6 sometimes loses an unpacked layer's directory while its GC runs
                // (seen when images are deleted at the same time): unpack the image again and
                // try once more instead of failing the workload.
                tracing::warn!(
                    container = %req.id,
                    error = %backroom_daemon::Chain(&e),
                    "a layer of the image is gone; unpacking {} again",
                    req.image.name
                );
                // Its snapshot is a child of the lost layer: it must go first.
                if let Err(e) = self.remove_impl(&req.id, Duration::from_secs(1)).await {
                    tracing::warn!(container = %req.id, error = %backroom_daemon::Chain(&e), "cannot remove the failed container before unpacking again");
                }
                let image = self.unpack_again(&req.image).await?;
                let retry = CreateRequest { image, ..req };
                self.start_once(&retry).await
            }
            r => r,
        }
    }

    async fn start_once(&self, req: &CreateRequest) -> Result<u32> {
        let spec_json = serde_json::to_vec(&req.spec).map_err(|source| Error::Encode {
            what: format!("the runtime spec of {}", req.id),
            source,
        })?;
        let mounts = self.rootfs(&req.id, &req.image.chain_id).await?;
        let container = Container {
            id: req.id.clone(),
            labels: req.labels.clone().into_iter().collect(),
            image: req.image.name.clone(),
            runtime: Some(ContainerRuntime { name: RUNC.into(), options: None }),
            spec: Some(Any { type_url: SPEC_TYPE_URL.into(), value: spec_json }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: req.id.clone(),
            ..Default::default()
        };
        self.containers()
            .create(self.req(CreateContainerRequest { container: Some(container) }))
            .await
            .map_err(|s| status_err(&format!("create container {}", req.id), s))?;
        let created = self
            .tasks()
            .create(self.req(CreateTaskRequest {
                container_id: req.id.clone(),
                rootfs: mounts,
                stdout: req.stdout.display().to_string(),
                stderr: req.stderr.display().to_string(),
                ..Default::default()
            }))
            .await
            .map_err(|s| status_err(&format!("create task {}", req.id), s))?
            .into_inner();
        self.tasks()
            .start(self.req(StartRequest { container_id: req.id.clone(), exec_id: String::new() }))
            .await
            .map_err(|s| status_err(&format!("start task {}", req.id), s))?;
        Ok(created.pid)
    }

    pub(super) async fn list_impl(&self) -> Result<Vec<Observed>> {
        let list = self
            .containers()
            .list(self.req(ListContainersRequest {
                filters: vec![format!("labels.\"{LABEL_WORKLOAD}\"")],
            }))
            .await
            .map_err(|s| status_err("list containers", s))?
            .into_inner();
        let mut out = Vec::new();
        for c in list.containers {
            let task = match self
                .tasks()
                .get(self.req(GetRequest { container_id: c.id.clone(), exec_id: String::new() }))
                .await
            {
                Ok(r) => match r.into_inner().process {
                    Some(p) => match p.status {
                        2 => TaskState::Running { pid: p.pid },
                        3 => TaskState::Stopped { code: p.exit_status },
                        s => TaskState::Other(format!("status {s}")),
                    },
                    None => TaskState::Absent,
                },
                Err(s) if s.code() == Code::NotFound => TaskState::Absent,
                Err(s) => return Err(status_err(&format!("get task {}", c.id), s)),
            };
            out.push(Observed { id: c.id, labels: c.labels.into_iter().collect(), task });
        }
        Ok(out)
    }

    pub(super) async fn wait_impl(&self, id: &str) -> Result<Ended> {
        let r = self
            .tasks()
            .wait(self.req(WaitRequest { container_id: id.into(), exec_id: String::new() }))
            .await
            .map_err(|s| status_err(&format!("wait for task {id}"), s))?
            .into_inner();
        let oom = oom_killed(&self.cgroups_path_impl(id));
        Ok(Ended { code: r.exit_status, oom })
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<()> {
        match self
            .tasks()
            .kill(self.req(KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal,
                all: true,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(status_err(&format!("kill task {id}"), s)),
        }
    }

    pub(super) async fn remove_impl(&self, id: &str, grace: Duration) -> Result<()> {
        let mut failures = Vec::new();
        let running = match self
            .tasks()
            .get(self.req(GetRequest { container_id: id.into(), exec_id: String::new() }))
            .await
        {
            Ok(r) => r.into_inner().process.is_some_and(|p| p.status != 3),
            Err(_) => false,
        };
        if running {
            if let Err(e) = self.kill(id, SIGTERM).await {
                failures.push(e);
            }
            if tokio::time::timeout(grace, self.wait_impl(id)).await.is_err() {
                if let Err(e) = self.kill(id, SIGKILL).await {
                    failures.push(e);
                }
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wait_impl(id)).await;
            }
        }
        match self.tasks().delete(self.req(DeleteTaskRequest { container_id: id.into() })).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => failures.push(status_err(&format!("delete task {id}"), s)),
        }
        match self.containers().delete(self.req(DeleteContainerRequest { id: id.into() })).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => failures.push(status_err(&format!("delete container {id}"), s)),
        }
        match self
            .snapshots()
            .remove(
                self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: id.into() }),
            )
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => failures.push(status_err(&format!("remove snapshot {id}"), s)),
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown { id: id.to_string(), failures })
        }
    }

    pub(super) async fn exec_impl(
        &self,
        id: &str,
        process: Process,
        timeout: Duration,
    ) -> Result<i32> {
        static EXECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = EXECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exec_id = format!("probe-{}-{n}", self.clock.now_ms());
        let value = serde_json::to_vec(&process).map_err(|source| Error::Encode {
            what: format!("the exec process for {id}"),
            source,
        })?;
        self.tasks()
            .exec(self.req(ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
                spec: Some(Any { type_url: PROCESS_TYPE_URL.into(), value }),
                ..Default::default()
            }))
            .await
            .map_err(|s| status_err(&format!("exec in {id}"), s))?;
        let run = async {
            self.tasks()
                .start(self.req(StartRequest { container_id: id.into(), exec_id: exec_id.clone() }))
                .await
                .map_err(|s| status_err(&format!("start exec in {id}"), s))?;
            let w = self
                .tasks()
                .wait(self.req(WaitRequest { container_id: id.into(), exec_id: exec_id.clone() }))
                .await
                .map_err(|s| status_err(&format!("wait for exec in {id}"), s))?;
            Ok::<_, Error>(i32::try_from(w.into_inner().exit_status).unwrap_or(i32::MAX))
        };
        let result = tokio::time::timeout(timeout, run).await;
        if result.is_err() {
            let _ = self
                .tasks()
                .kill(self.req(KillRequest {
                    container_id: id.into(),
                    exec_id: exec_id.clone(),
                    signal: SIGKILL,
                    all: false,
                }))
                .await;
        }
        let _ =
            self.tasks()
                .delete_process(self.req(DeleteProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.clone(),
                }))
                .await;
        match result {
            Ok(r) => r,
            Err(_) => Err(Error::ExecTimeout { container: id.to_string(), timeout }),
        }
    }

    pub(super) fn cgroups_path_impl(&self, id: &str) -> String {
        format!("/backroom/{}/{id}", self.config.namespace)
    }
}

/// A start that failed because an unpacked layer's directory is gone.
fn lost_layer(e: &Error) -> bool {
    let m = backroom_daemon::chain(e);
    m.contains("failed to mount rootfs component")
        || (m.contains("failed to stat parent") && m.contains("no such file"))
}

/// Whether the kernel's OOM killer struck in the container's cgroup (v1 or v2 layout).
fn oom_killed(cgroups_path: &str) -> bool {
    let rel = cgroups_path.trim_start_matches('/');
    let v1 = Path::new("/sys/fs/cgroup/memory").join(rel).join("memory.oom_control");
    let v2 = Path::new("/sys/fs/cgroup").join(rel).join("memory.events");
    for p in [v1, v2] {
        if let Ok(text) = std::fs::read_to_string(&p) {
            return text.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .is_some_and(|n| n.trim().parse::<u64>().unwrap_or(0) > 0)
            });
        }
    }
    false
}

impl super::Runtime for Containerd {
    async fn ensure_image(&self, image: &backroom_profiles::ImageRef) -> Result<ImageInfo> {
        self.ensure_image_impl(image).await
    }

    async fn start(&self, req: CreateRequest) -> Result<u32> {
        self.start_impl(req).await
    }

    async fn list(&self) -> Result<Vec<Observed>> {
        self.list_impl().await
    }

    async fn wait(&self, id: &str) -> Result<Ended> {
        self.wait_impl(id).await
    }

    async fn remove(&self, id: &str, grace: Duration) -> Result<()> {
        self.remove_impl(id, grace).await
    }

    async fn exec(&self, id: &str, process: Process, timeout: Duration) -> Result<i32> {
        self.exec_impl(id, process, timeout).await
    }

    async fn import(&self, path: &Path) -> Result<Vec<(String, String)>> {
        self.import_archive(path).await
    }

    async fn images(&self) -> Result<Vec<StoredImage>> {
        self.images_impl().await
    }

    async fn delete_image(&self, name: &str) -> Result<()> {
        self.delete_image_impl(name).await
    }

    fn cgroups_path(&self, id: &str) -> String {
        self.cgroups_path_impl(id)
    }

    async fn ping(&self) -> Result<()> {
        containerd_client::services::v1::version_client::VersionClient::new(self.channel.clone())
            .version(())
            .await
            .map_err(|s| status_err("version", s))?;
        Ok(())
    }

    fn address(&self) -> String {
        self.config.socket.display().to_string()
    }
}
