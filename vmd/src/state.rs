//! What vmd keeps across its own restarts, in `state.json` (written to a temporary file,
//! synced, then renamed): the applied profile, and per VM its restart count, since when it is
//! in its state, and whether it is parked (left stopped on purpose). Everything else —
//! which domains exist, their definitions — libvirt keeps, and vmd reads back (adoption).
//! Also the lock that keeps two vmd processes off one state folder.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persisted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_yaml: Option<String>,
    #[serde(default)]
    pub vms: BTreeMap<String, VmRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub since_unix: i64,
    /// Left stopped on purpose (an operator's stop, or a restart policy that does not restart):
    /// neither vmd's start-up nor an apply starts it; `Start` does.
    #[serde(default)]
    pub parked: bool,
    #[serde(default)]
    pub reason: String,
}

impl Persisted {
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| Error::State {
                path: path.into(),
                message: format!("unreadable: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::State { path: path.into(), message: e.to_string() })?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(d) = path.parent() {
                std::fs::File::open(d)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

/// An exclusive `flock` on the state folder's lock file, held while this value lives.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl StateLock {
    pub fn acquire(path: &Path) -> Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::Locked(path.parent().unwrap_or(path).to_path_buf()));
        }
        Ok(StateLock { _file: file, path: path.into() })
    }

    /// Like [`StateLock::acquire`], retrying for `wait` (a one-shot command may hold the lock
    /// for a moment while the daemon starts).
    pub fn acquire_wait(path: &Path, wait: std::time::Duration) -> Result<Self> {
        let until = std::time::Instant::now() + wait;
        loop {
            match Self::acquire(path) {
                Err(Error::Locked(_)) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_locks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        assert_eq!(Persisted::load(&p).unwrap(), Persisted::default());
        let mut s = Persisted { revision: Some("r".into()), ..Default::default() };
        s.vms.insert("nvr".into(), VmRecord { restarts: 2, parked: true, ..Default::default() });
        s.save(&p).unwrap();
        assert_eq!(Persisted::load(&p).unwrap(), s);
        let l = StateLock::acquire(&d.path().join("lock")).unwrap();
        assert!(matches!(StateLock::acquire(&d.path().join("lock")), Err(Error::Locked(_))));
        drop(l);
        assert!(StateLock::acquire(&d.path().join("lock")).is_ok());
    }
}
