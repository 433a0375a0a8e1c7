//! netd's state directory (default `/var/lib/backroom/netd`): the applied profile, a pending
//! confirmation, IPAM leases, endpoints and DHCP leases, as JSON files written crash-safely
//! with mode 0600 (`backroom_daemon::fs::write_atomic`). The directory's lock
//! (`backroom_daemon::fs::StateLock`) keeps two netd processes from managing the same state.

use std::fs;
use std::path::{Path, PathBuf};

use backroom_daemon::fs::{StateLock, write_atomic};

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
    /// The confirmation deadline passed with nothing confirmed to go back to: netd kept this
    /// network rather than remove it (that would cut the store off). A confirm clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfirmed_kept: bool,
}

impl Applied {
    /// The same network (revision and uplink), whatever its confirmation.
    pub fn same_network(&self, other: &Applied) -> bool {
        self.revision == other.revision
            && self.profile_yaml == other.profile_yaml
            && self.uplink_override == other.uplink_override
    }
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
    _lock: StateLock,
}

impl StateDir {
    /// Opens (creating) the directory and takes its lock; fails when another netd holds it.
    pub fn open(dir: &Path) -> Result<StateDir> {
        let lock = match StateLock::acquire(&dir.join("lock")) {
            Ok(l) => l,
            Err(backroom_daemon::Error::Locked { .. }) => {
                return Err(Error::Busy { dir: dir.to_path_buf() });
            }
            Err(e) => return Err(Error::Daemon(e)),
        };
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
        let fail = |e: std::io::Error| Error::state(format!("cannot write {}", p.display()), e);
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| fail(std::io::Error::other(e)))?;
        // Leases and endpoints are nobody else's business: root only.
        write_atomic(&p, &bytes, 0o600).map_err(fail)
    }
}

pub const APPLIED: &str = "applied.json";
pub const IPAM: &str = "ipam.json";
pub const ENDPOINTS: &str = "endpoints.json";
pub const DHCP: &str = "dhcp.json";
