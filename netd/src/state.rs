//! netd's state directory (default `/var/lib/backroom/netd`): the applied profile, a pending
//! confirmation, IPAM leases, endpoints and DHCP leases, as JSON files written crash-safely
//! with mode 0600 (`backroom_daemon::fs::write_atomic`). The directory's lock
//! (`backroom_daemon::fs::StateLock`) keeps two netd processes from managing the same state.
//!
//! A file that does not read (a power cut, a garbled disk) is set aside
//! (`backroom_daemon::fs::load_or_set_aside`) and netd goes on without it: the kernel keeps
//! the links and the ruleset, which netd leaves alone until the next Apply (nodeagent's, at
//! its next start or change) tells it the profile again; addresses are stable per workload.
//! The daemon tells each file set aside as a problem ([`StateDir::take_set_aside`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use backroom_daemon::Clock as _;
use backroom_daemon::fs::{Loaded, SetAside, StateLock, write_atomic};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};
use crate::overrides::{ResolvKept, SegmentOverride};

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
    /// The uplink override in force on top of the profile (until it expires or is cleared);
    /// later applies carry it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_override: Option<SegmentOverride>,
}

impl Applied {
    /// The same network (revision, uplink and override), whatever its confirmation.
    pub fn same_network(&self, other: &Applied) -> bool {
        self.revision == other.revision
            && self.profile_yaml == other.profile_yaml
            && self.uplink_override == other.uplink_override
            && self.segment_override == other.segment_override
    }
}

/// An apply that must be confirmed before `deadline_unix`, or `previous` comes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub deadline_unix: i64,
    pub previous: Option<Applied>,
    /// The change awaiting confirmation is an uplink override (SetOverride), not an Apply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub of_override: bool,
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
    /// Files found unreadable and set aside, not yet told.
    set_aside: Mutex<Vec<SetAside>>,
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
        Ok(StateDir { dir: dir.to_path_buf(), _lock: lock, set_aside: Mutex::default() })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file `name`, or the default when there is none; one that does not read is set
    /// aside (and the default taken).
    pub fn load<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        let p = self.dir.join(name);
        let now = backroom_daemon::SystemClock.now_unix();
        Ok(
            match backroom_daemon::fs::load_or_set_aside(&p, now, |b| {
                serde_json::from_slice::<T>(b)
            }) {
                Loaded::Read(v) => v,
                Loaded::Missing => T::default(),
                Loaded::SetAside(s) => {
                    self.set_aside.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                    T::default()
                }
            },
        )
    }

    /// The files set aside since the last call (to be told once).
    pub fn take_set_aside(&self) -> Vec<SetAside> {
        std::mem::take(&mut *self.set_aside.lock().unwrap_or_else(|e| e.into_inner()))
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
/// The DNS file as it was before an override's servers were written into it.
pub const RESOLV: &str = "resolv-kept.json";

/// What [`RESOLV`] holds.
pub type ResolvFile = Option<ResolvKept>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_file_is_set_aside_and_the_rest_still_reads() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let a = AppliedFile {
            applied: Some(Applied {
                revision: "r".into(),
                profile_yaml: "y".into(),
                uplink_override: None,
                unconfirmed_kept: false,
                segment_override: None,
            }),
            pending: None,
        };
        s.save(APPLIED, &a).unwrap();
        s.save(IPAM, &crate::ipam::Ipam::default()).unwrap();
        let bytes = std::fs::read(d.path().join(APPLIED)).unwrap();
        std::fs::write(d.path().join(APPLIED), &bytes[..bytes.len() / 3]).unwrap();
        let got: AppliedFile = s.load(APPLIED).unwrap();
        assert_eq!(got, AppliedFile::default(), "started without it");
        let _: crate::ipam::Ipam = s.load(IPAM).unwrap();
        let told = s.take_set_aside();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].path.ends_with(APPLIED));
        assert!(told[0].kept_as.as_ref().is_some_and(|k| k.exists()));
        assert!(s.take_set_aside().is_empty());
        s.save(APPLIED, &a).unwrap();
        assert_eq!(s.load::<AppliedFile>(APPLIED).unwrap(), a);
    }
}
