//! Test helpers shared by nodeagent's real-system tests and its benchmark: images built here
//! around busybox-static (no downloads), pushed to the loopback registry or written as an OCI
//! archive; a throwaway containerd namespace that is emptied on drop; a test-only network that
//! makes namespaces and veths into a bridge in a namespace of its own (never the root one).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod image;
pub mod net;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backroom_nodeagent::runtime::{Containerd, ContainerdConfig, Runtime};

pub const REGISTRY: &str = "127.0.0.1:5000";
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// Fails the test, naming the missing prerequisite, when containerd or the registry is absent.
pub fn require_services() {
    assert!(
        Path::new(CONTAINERD_SOCKET).exists(),
        "containerd is not running at {CONTAINERD_SOCKET}: run scripts/install-deps and scripts/start-services"
    );
    let ok =
        std::net::TcpStream::connect_timeout(&REGISTRY.parse().unwrap(), Duration::from_secs(2))
            .is_ok();
    assert!(ok, "the test registry does not answer on {REGISTRY}: run scripts/start-services");
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: install busybox-static (scripts/install-deps)"
    );
}

pub async fn containerd(namespace: &str) -> Containerd {
    Containerd::connect(ContainerdConfig {
        socket: CONTAINERD_SOCKET.into(),
        namespace: namespace.into(),
        insecure_registries: vec![],
        auth: Default::default(),
        registry_cas: Default::default(),
    })
    .await
    .expect("containerd answers")
}

/// A containerd namespace for one test; its containers and images are removed on drop.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn new() -> Self {
        Namespace { name: unique("bktest") }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let ns = self.name.clone();
        // A thread of its own: drop may run inside a tokio runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let c = containerd(&ns).await;
                let mut failures = Vec::new();
                // Twice: an operation of the stopped engine may still create a container.
                for pass in 0..2 {
                    if pass == 1 {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    for o in c.list().await.unwrap_or_default() {
                        if let Err(e) = c.remove(&o.id, Duration::from_secs(2)).await {
                            failures.push(e.to_string());
                        }
                    }
                }
                for i in c.images().await.unwrap_or_default() {
                    if let Err(e) = c.delete_image(&i.name).await {
                        failures.push(e.to_string());
                    }
                }
                let mut namespaces =
                    containerd_client::services::v1::namespaces_client::NamespacesClient::new(
                        containerd_client::connect(CONTAINERD_SOCKET).await.unwrap(),
                    );
                if let Err(e) = namespaces
                    .delete(containerd_client::services::v1::DeleteNamespaceRequest {
                        name: ns.clone(),
                    })
                    .await
                {
                    failures.push(format!("delete namespace: {}", e.message()));
                }
                if !failures.is_empty() {
                    eprintln!("cleanup of containerd namespace {ns}: {}", failures.join("; "));
                }
            });
        })
        .join();
    }
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The directory of the test binaries' sibling executables (nodeagent, nodectl).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(p.exists(), "{} is not built: cargo builds it for the crate's tests", p.display());
    p
}
