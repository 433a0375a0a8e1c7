//! An in-memory runtime for unit tests of the engine's logic: images are "present" when added,
//! tasks run until `exit` (or `remove`) is called, exec answers with a set code.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::runtime::{Process, Spec};
use tokio::sync::watch;

use super::{CreateRequest, Ended, ImageInfo, Observed, StoredImage, TaskState};
use crate::error::{Error, Result};
use crate::spec::ImageConfig;

struct Task {
    labels: BTreeMap<String, String>,
    spec: Spec,
    pid: u32,
    exit: watch::Sender<Option<Ended>>,
}

#[derive(Default)]
struct Inner {
    images: BTreeMap<String, ImageInfo>,
    tasks: BTreeMap<String, Task>,
    next_pid: u32,
    exec_code: i32,
    started: Vec<String>,
}

#[derive(Clone, Default)]
pub struct MemoryRuntime {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `name` present, with an image config that runs `/bin/app`.
    pub fn add_image(&self, name: &str) {
        let info = ImageInfo {
            name: name.into(),
            digest: format!("sha256:{:064x}", name.len()),
            config: ImageConfig { entrypoint: vec!["/bin/app".into()], ..Default::default() },
            chain_id: String::new(),
        };
        self.lock().images.insert(name.into(), info);
    }

    /// Ends a running task with `code`.
    pub fn exit(&self, id: &str, code: u32) {
        if let Some(t) = self.lock().tasks.get(id) {
            t.exit.send_replace(Some(Ended { code, oom: false }));
        }
    }

    pub fn set_exec_code(&self, code: i32) {
        self.lock().exec_code = code;
    }

    /// Ids of the containers started so far, in order.
    pub fn started(&self) -> Vec<String> {
        self.lock().started.clone()
    }

    pub fn spec(&self, id: &str) -> Option<Spec> {
        self.lock().tasks.get(id).map(|t| t.spec.clone())
    }
}

impl super::Runtime for MemoryRuntime {
    async fn ensure_image(&self, image: &backroom_profiles::ImageRef) -> Result<ImageInfo> {
        let name = image.to_string();
        self.lock().images.get(&name).cloned().ok_or_else(|| Error::Image {
            image: name,
            message: "the in-memory runtime has no such image".into(),
        })
    }

    async fn start(&self, req: CreateRequest) -> Result<u32> {
        let mut g = self.lock();
        if g.tasks.contains_key(&req.id) {
            return Err(Error::containerd(
                format!("create container {}", req.id),
                tonic::Status::already_exists("container already exists"),
            ));
        }
        g.next_pid += 1;
        let pid = 1000 + g.next_pid;
        let (tx, _) = watch::channel(None);
        g.started.push(req.id.clone());
        g.tasks.insert(req.id, Task { labels: req.labels, spec: req.spec, pid, exit: tx });
        Ok(pid)
    }

    async fn list(&self) -> Result<Vec<Observed>> {
        Ok(self
            .lock()
            .tasks
            .iter()
            .map(|(id, t)| Observed {
                id: id.clone(),
                labels: t.labels.clone(),
                task: match &*t.exit.borrow() {
                    None => TaskState::Running { pid: t.pid },
                    Some(e) => TaskState::Stopped { code: e.code },
                },
            })
            .collect())
    }

    async fn wait(&self, id: &str) -> Result<Ended> {
        let mut rx = {
            let g = self.lock();
            let t = g.tasks.get(id).ok_or_else(|| {
                Error::containerd(format!("wait for task {id}"), tonic::Status::not_found(id))
            })?;
            t.exit.subscribe()
        };
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return Ok(e);
            }
            if rx.changed().await.is_err() {
                return Ok(Ended { code: 137, oom: false });
            }
        }
    }

    async fn remove(&self, id: &str, _grace: Duration) -> Result<()> {
        if let Some(t) = self.lock().tasks.remove(id) {
            t.exit.send_replace(Some(Ended { code: 143, oom: false }));
        }
        Ok(())
    }

    async fn exec(&self, _id: &str, _process: Process, _timeout: Duration) -> Result<i32> {
        Ok(self.lock().exec_code)
    }

    async fn import(&self, path: &Path) -> Result<Vec<(String, String)>> {
        Err(Error::Image {
            image: path.display().to_string(),
            message: "no archives in memory".into(),
        })
    }

    async fn images(&self) -> Result<Vec<StoredImage>> {
        Ok(self
            .lock()
            .images
            .values()
            .map(|i| StoredImage { name: i.name.clone(), digest: i.digest.clone(), created_ms: 0 })
            .collect())
    }

    async fn delete_image(&self, name: &str) -> Result<()> {
        self.lock().images.remove(name);
        Ok(())
    }

    fn cgroups_path(&self, id: &str) -> String {
        format!("/backroom/memory/{id}")
    }
}
