//! Where vmd keeps its files under the state folder (`--state-dir`, default
//! `/var/lib/backroom/vmd`):
//!
//! ```text
//! state.json                      applied profile, per-VM counters and parked VMs
//! lock                            held (flock) by the process that owns this folder
//! images/sha256/<hex>             base images, cached by digest (read-only backing files)
//! images/partial/<hex>.part       downloads in progress (resumed from their length)
//! vms/<name>/root-<id>.qcow2      a VM's copy-on-write root disk over a base image
//! vms/<name>/disk-<disk>.qcow2    its persistent data disks (kept across updates)
//! vms/<name>/seed-<id>.iso        its cloud-init NoCloud seed (volume label cidata)
//! vms/<name>/console.log          its serial console, appended by virtlogd
//! vms/<name>/<file>.torn-<unix>   a disk file found unreadable and set aside (kept until purge)
//! ```

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn image(&self, sha256: &str) -> PathBuf {
        self.root.join("images/sha256").join(sha256)
    }

    pub fn partial(&self, sha256: &str) -> PathBuf {
        self.root.join("images/partial").join(format!("{sha256}.part"))
    }

    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.root.join("vms").join(vm)
    }

    pub fn overlay(&self, vm: &str, id: &str) -> PathBuf {
        self.vm_dir(vm).join(format!("root-{id}.qcow2"))
    }

    pub fn data_disk(&self, vm: &str, disk: &str) -> PathBuf {
        self.vm_dir(vm).join(format!("disk-{disk}.qcow2"))
    }

    pub fn seed(&self, vm: &str, id: &str) -> PathBuf {
        self.vm_dir(vm).join(format!("seed-{id}.iso"))
    }

    pub fn console_log(&self, vm: &str) -> PathBuf {
        self.vm_dir(vm).join("console.log")
    }

    /// The files of a VM that an update replaces (root overlays and seeds), as opposed to its
    /// data disks, its console log and the files set aside as torn (kept for a person).
    pub fn is_replaceable(path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        (name.starts_with("root-") || name.starts_with("seed-")) && !name.contains(".torn-")
    }
}
