//! The container runtime nodeagent drives: the [`Runtime`] trait, containerd's implementation
//! ([`Containerd`], with client-side image pull and OCI-archive import since containerd 1.6
//! has no Transfer service) and an in-memory one for unit tests ([`MemoryRuntime`]).

mod archive;
mod containerd;
mod content;
mod memory;
mod pull;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backroom_profiles::ImageRef;
use oci_spec::runtime::{Process, Spec};

pub use containerd::{Containerd, ContainerdConfig, RegistryAuth};
pub use memory::MemoryRuntime;
pub use pull::install_crypto_provider;

use crate::error::Result;
use crate::spec::ImageConfig;

/// Labels nodeagent puts on its containers (how it finds them again after a restart).
pub const LABEL_WORKLOAD: &str = "backroom.workload";
pub const LABEL_ROLE: &str = "backroom.role";
pub const LABEL_SPEC: &str = "backroom.spec";

/// An image present in the runtime, unpacked and ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its name in the runtime (the reference it was pulled or imported as).
    pub name: String,
    /// The digest of its target (a manifest, or an index).
    pub digest: String,
    pub config: ImageConfig,
    /// The snapshot of its top layer (the parent of a container's root filesystem).
    pub chain_id: String,
}

pub struct CreateRequest {
    pub id: String,
    pub image: ImageInfo,
    pub spec: Spec,
    pub labels: BTreeMap<String, String>,
    /// FIFOs the task writes its stdout and stderr to (nodeagent reads them, see `logs.rs`).
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// How a task ended, as the runtime saw it (the engine stamps the time with its clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub code: u32,
    /// Killed by the kernel's OOM killer (its cgroup's memory limit).
    pub oom: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    Running {
        pid: u32,
    },
    Stopped {
        code: u32,
    },
    /// Created, paused or in a state nodeagent does not use.
    Other(String),
    /// The container exists without a task.
    Absent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub task: TaskState,
}

/// An image the runtime holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    pub name: String,
    pub digest: String,
    pub created_ms: u64,
}

/// A container runtime. Every method is safe to call again after a failure.
pub trait Runtime: Send + Sync + 'static {
    /// The image, pulled and unpacked if it is not there yet (an image imported under the same
    /// name, or with the reference's digest, counts as there).
    fn ensure_image(&self, image: &ImageRef) -> impl Future<Output = Result<ImageInfo>> + Send;

    /// Creates the container and starts its task; returns the task's pid.
    fn start(&self, req: CreateRequest) -> impl Future<Output = Result<u32>> + Send;

    /// nodeagent's containers (those with a workload label) and their tasks.
    fn list(&self) -> impl Future<Output = Result<Vec<Observed>>> + Send;

    /// Waits for the container's task to end.
    fn wait(&self, id: &str) -> impl Future<Output = Result<Ended>> + Send;

    /// Stops the task (SIGTERM, then SIGKILL after `grace`) and removes the task, the container
    /// and its snapshot. Absent pieces are fine.
    fn remove(&self, id: &str, grace: Duration) -> impl Future<Output = Result<()>> + Send;

    /// Runs `process` inside the running container; returns its exit code.
    fn exec(
        &self,
        id: &str,
        process: Process,
        timeout: Duration,
    ) -> impl Future<Output = Result<i32>> + Send;

    /// Imports the images of an OCI archive; returns (name, digest) of each.
    fn import(&self, path: &Path) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;

    fn images(&self) -> impl Future<Output = Result<Vec<StoredImage>>> + Send;

    fn delete_image(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// The cgroup path for a container (`/backroom/<namespace>/<id>`).
    fn cgroups_path(&self, id: &str) -> String;

    /// A cheap call that fails when the runtime does not answer (nodeagent's liveness check).
    fn ping(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Where the runtime is reached, for messages (its socket).
    fn address(&self) -> String {
        String::new()
    }
}

/// The images to delete: those no workload keeps, older than `grace_ms`.
pub fn images_to_collect(
    images: &[StoredImage],
    keep: &BTreeSet<String>,
    now_ms: u64,
    grace_ms: u64,
) -> Vec<String> {
    images
        .iter()
        .filter(|i| !keep.contains(&i.name) && now_ms.saturating_sub(i.created_ms) >= grace_ms)
        .map(|i| i.name.clone())
        .collect()
}

/// The certificates of a PEM file, each as its own PEM block (other text is ignored).
pub fn pem_certificates(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(b) = rest.find(BEGIN) {
        let Some(e) = rest[b..].find(END) else { break };
        out.push(format!("{}\n", &rest[b..b + e + END.len()]));
        rest = &rest[b + e + END.len()..];
    }
    out
}

/// Whether a registry is reached over plain HTTP: loopback ones and those the node names.
pub fn plain_http(registry: &str, insecure: &[String]) -> bool {
    if insecure.iter().any(|r| r == registry) {
        return true;
    }
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_give_each_certificate() {
        let one = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let text = format!("# HQ\n{one}\njunk\n{one}\n-----BEGIN PRIVATE KEY-----\nx\n");
        assert_eq!(pem_certificates(&text), vec![format!("{one}\n"), format!("{one}\n")]);
        assert!(pem_certificates("no certificate here").is_empty());
    }

    #[test]
    fn loopback_and_named_registries_use_plain_http() {
        let insecure = vec!["mirror.store:5000".to_string()];
        assert!(plain_http("127.0.0.1:5000", &insecure));
        assert!(plain_http("localhost:5000", &insecure));
        assert!(plain_http("[::1]:5000", &insecure));
        assert!(plain_http("mirror.store:5000", &insecure));
        assert!(!plain_http("registry.example", &insecure));
        assert!(!plain_http("10.0.0.1:5000", &insecure));
    }

    #[test]
    fn collection_keeps_what_workloads_use_and_recent_imports() {
        let img =
            |n: &str, t: u64| StoredImage { name: n.into(), digest: String::new(), created_ms: t };
        let all = vec![img("a", 0), img("b", 0), img("c", 9_000)];
        let keep: BTreeSet<String> = ["a".to_string()].into();
        assert_eq!(images_to_collect(&all, &keep, 10_000, 5_000), vec!["b".to_string()]);
    }
}
