//! netd's state directory (default `/var/lib/backroom/netd`): the applied profile, a pending
//! confirmation, IPAM leases, endpoints and DHCP leases, as JSON files written crash-safely
//! (temporary file, fsync, rename, fsync of the directory). A lock file keeps two netd
//! processes from managing the same state at once.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// A profile as netd applied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub revision: String,
    pub profile_yaml: String,
    #[serde(default)]
    pub uplink_override: Option<String>,
}

/// An apply that must be confirmed before `deadline_unix`, or `previous` comes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub deadline_unix: i64,
    pub previous: Option<Applied>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedFile {
    pub applied: Option<Applied>,
    pub pending: Option<Pending>,
}

pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Opens (creating) the directory and takes its lock; fails when another netd holds it.
    pub fn open(dir: &Path) -> Result<StateDir> {
        fs::create_dir_all(dir).map_err(|e| {
            Error::state(format!("cannot create state directory {}", dir.display()), e)
        })?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::state(format!("cannot open {}", lock_path.display()), e))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::Rejected(format!(
                "another netd is using {} (is `netd serve` running? then talk to its socket)",
                dir.display()
            )));
        }
        Ok(StateDir { dir: dir.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn load<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        let p = self.dir.join(name);
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::state(format!("cannot read {}", p.display()), std::io::Error::other(e))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(Error::state(format!("cannot read {}", p.display()), e)),
        }
    }

    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let p = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let fail = |e: std::io::Error| Error::state(format!("cannot write {}", p.display()), e);
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| fail(std::io::Error::other(e)))?;
        let mut f = File::create(&tmp).map_err(fail)?;
        f.write_all(&bytes).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        fs::rename(&tmp, &p).map_err(fail)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(fail)?;
        Ok(())
    }
}

pub const APPLIED: &str = "applied.json";
pub const IPAM: &str = "ipam.json";
pub const ENDPOINTS: &str = "endpoints.json";
pub const DHCP: &str = "dhcp.json";
