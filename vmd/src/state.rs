//! What vmd keeps across its own restarts, in `state.json` (written crash-safe by
//! `backroom_daemon::fs`): the applied profile, and per VM its restart count, since when it is
//! in its state, and whether it is parked (left stopped on purpose). Everything else —
//! which domains exist, their definitions — libvirt keeps, and vmd reads back (adoption).
//! Also the lock that keeps two vmd processes off one state folder (the daemon crate's).
//!
//! A `state.json` that does not read (a power cut, a garbled disk) is set aside
//! ([`Persisted::load_or_set_aside`]) and vmd starts without it: the domains are libvirt's and
//! are adopted as after any restart; what is lost is the restart counts, the parked flags
//! and the applied revision, which the next Apply (nodeagent's) brings back.

use std::collections::BTreeMap;
use std::path::Path;

pub use backroom_daemon::fs::StateLock;

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
            Ok(t) => serde_json::from_str(&t)
                .map_err(|source| Error::StateUnreadable { path: path.into(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// [`Persisted::load`], except that a file that does not read is set aside
    /// (`backroom_daemon::fs::load_or_set_aside`) and the default taken; the notice says so.
    pub fn load_or_set_aside(
        path: &Path,
        now_unix: i64,
    ) -> (Self, Option<backroom_daemon::fs::SetAside>) {
        backroom_daemon::fs::load_or_set_aside(path, now_unix, |b| serde_json::from_slice(b))
            .or_default()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        // Plain strings, numbers and maps: serialising cannot fail.
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        Ok(backroom_daemon::fs::save(path, &text, 0o600)?)
    }
}

/// Takes the state folder's lock (see [`StateLock`]), waiting up to `wait` for a one-shot
/// command that holds it to finish. The folder is made traversable (0711) for QEMU, which
/// reaches the VMs' disks under it as another user.
pub fn lock(layout_root: &Path, lock_file: &Path, wait: std::time::Duration) -> Result<StateLock> {
    std::fs::create_dir_all(layout_root)
        .map_err(|e| Error::io(format!("creating {}", layout_root.display()), e))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(layout_root, std::fs::Permissions::from_mode(0o711));
    Ok(StateLock::acquire_wait(lock_file, wait)?)
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
        let wait = std::time::Duration::ZERO;
        let l = lock(d.path(), &d.path().join("lock"), wait).unwrap();
        let e = lock(d.path(), &d.path().join("lock"), wait).unwrap_err();
        assert!(matches!(e, Error::Locked(_)), "{e}");
        assert!(e.to_string().contains("another vmd"), "{e}");
        drop(l);
        assert!(lock(d.path(), &d.path().join("lock"), wait).is_ok());
    }

    #[test]
    fn an_unreadable_state_is_set_aside() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let s = Persisted { revision: Some("r".into()), ..Default::default() };
        s.save(&p).unwrap();
        assert_eq!(Persisted::load_or_set_aside(&p, 7), (s, None));
        std::fs::write(&p, b"{\"revision\": \"r").unwrap();
        let (got, notice) = Persisted::load_or_set_aside(&p, 7);
        assert_eq!(got, Persisted::default());
        let notice = notice.unwrap();
        assert_eq!(notice.kept_as.unwrap(), d.path().join("state.json.unreadable-7"));
        assert!(!p.exists());
    }
}
