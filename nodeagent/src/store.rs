//! Durable node state under the state folder, written crash-safely (write a temporary file,
//! fsync, rename, fsync the folder): the desired, applied and last-known-good revisions
//! (`node.json`, the profiles themselves in `revisions/<id>.yaml`) and the workload records
//! (`workloads.json`), the latest action results (`actions.json`) and the open problems
//! (`problems.json`). A revision is on disk before nodeagent acts on it.
//!
//! A state file that does not read (a power cut, a garbled disk) does not stop nodeagent: it is
//! set aside (`backroom_daemon::fs::load_or_set_aside`), nodeagent starts without it and
//! learns the rest from what runs (the containers' labels), and the engine tells the operator
//! ([`Store::take_set_aside`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use backroom_daemon::fs::{Loaded, SetAside};

use backroom_profiles::Rendered;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::problems::OpenProblem;
use crate::record::Records;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The revision the node works towards.
    pub desired: Option<String>,
    /// Where it came from (a file path, `nodectl apply`, central).
    pub desired_source: String,
    /// The last revision whose network, VMs and containers were all carried out.
    pub applied: Option<String>,
    /// The last revision whose workloads all became healthy.
    pub last_known_good: Option<String>,
    /// The revision of the `--profile` file when nodeagent last took it.
    pub boot_profile_revision: Option<String>,
    pub network_applied: Option<String>,
    pub vms_applied: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    /// State files found unreadable and set aside, not yet told.
    set_aside: Arc<Mutex<Vec<SetAside>>>,
}

/// Writes `bytes` to `path` (0600) so that a crash leaves the old or the new content, never a
/// mix ([`backroom_daemon::fs::save`]).
pub fn save(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(backroom_daemon::fs::save(path, bytes, 0o600)?)
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self> {
        for d in [dir.to_path_buf(), dir.join("revisions")] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io("create the folder", &d, e))?;
        }
        Ok(Store { dir: dir.to_path_buf(), set_aside: Arc::default() })
    }

    /// The state files set aside since the last call (to be told once).
    pub fn take_set_aside(&self) -> Vec<SetAside> {
        std::mem::take(&mut *self.set_aside.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn note(&self, s: SetAside) {
        self.set_aside.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    fn now_unix() -> i64 {
        use backroom_daemon::Clock as _;
        backroom_daemon::SystemClock.now_unix()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn revision_path(&self, revision: &str) -> PathBuf {
        self.dir.join("revisions").join(format!("{revision}.yaml"))
    }

    pub fn save_revision(&self, r: &Rendered) -> Result<()> {
        save(&self.revision_path(r.revision.as_str()), r.to_yaml().as_bytes())
    }

    /// The stored revision `revision`. One whose file is there but does not read, or reads
    /// as another revision (it was damaged), is set aside: it can never become good again.
    pub fn load_revision(&self, revision: &str) -> Result<Rendered> {
        let path = self.revision_path(revision);
        let read = || {
            let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                Error::io("read", &path, std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })?;
            let r = backroom_profiles::render_str(&path.display().to_string(), &text)
                .map_err(|source| Error::Profile { what: path.display().to_string(), source })?;
            if r.revision.as_str() != revision {
                return Err(Error::RevisionMismatch {
                    path: path.clone(),
                    found: r.revision.to_string(),
                    wanted: revision.to_string(),
                });
            }
            Ok(r)
        };
        match read() {
            Ok(r) => Ok(r),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::io("read", &path, source))
            }
            Err(e) => {
                let notice = backroom_daemon::fs::set_aside(
                    &path,
                    Self::now_unix(),
                    backroom_daemon::chain(&e),
                );
                tracing::warn!(path = %path.display(), "{}", notice.sentence());
                self.note(notice);
                Err(e)
            }
        }
    }

    /// Removes stored revisions other than `keep`.
    pub fn prune_revisions(&self, keep: &[&str]) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("revisions")) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let rev = name.trim_end_matches(".yaml");
            if !keep.contains(&rev) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// A JSON state file; one that does not read is set aside and the default taken.
    fn load_json<T: for<'de> Deserialize<'de> + Default>(&self, name: &str) -> Result<T> {
        let path = self.dir.join(name);
        let loaded = backroom_daemon::fs::load_or_set_aside(&path, Self::now_unix(), |b| {
            serde_json::from_slice::<T>(b)
        });
        let (value, notice) = match loaded {
            Loaded::Read(v) => (v, None),
            Loaded::Missing => (T::default(), None),
            Loaded::SetAside(s) => (T::default(), Some(s)),
        };
        if let Some(n) = notice {
            self.note(n);
        }
        Ok(value)
    }

    fn save_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|source| Error::Encode { what: name.to_string(), source })?;
        save(&self.dir.join(name), &bytes)
    }

    pub fn load_node(&self) -> Result<NodeState> {
        self.load_json("node.json")
    }

    pub fn save_node(&self, s: &NodeState) -> Result<()> {
        self.save_json("node.json", s)
    }

    pub fn load_records(&self) -> Result<Records> {
        self.load_json("workloads.json")
    }

    pub fn save_records(&self, r: &Records) -> Result<()> {
        self.save_json("workloads.json", r)
    }

    /// The latest action results (shown by `nodectl status`, kept across restarts).
    pub fn load_actions<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<T>> {
        self.load_json("actions.json")
    }

    pub fn save_actions<T: Serialize>(&self, actions: &[T]) -> Result<()> {
        self.save_json("actions.json", &actions)
    }

    /// The problems open when nodeagent last saved them (see `problems.rs`).
    pub fn load_problems(&self) -> Result<Vec<OpenProblem>> {
        self.load_json("problems.json")
    }

    pub fn save_problems(&self, open: &[OpenProblem]) -> Result<()> {
        self.save_json("problems.json", &open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_and_state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let r = backroom_profiles::render_str(
            "p.yaml",
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: p}\n",
        )
        .unwrap();
        s.save_revision(&r).unwrap();
        assert_eq!(s.load_revision(r.revision.as_str()).unwrap().revision, r.revision);
        assert!(s.load_revision("0000").is_err());
        assert_eq!(s.load_node().unwrap(), NodeState::default());
        let n = NodeState { desired: Some(r.revision.to_string()), ..Default::default() };
        s.save_node(&n).unwrap();
        assert_eq!(s.load_node().unwrap(), n);
        let mut recs = Records::new();
        recs.insert("w".into(), crate::record::WorkloadRecord::new("w"));
        s.save_records(&recs).unwrap();
        assert_eq!(s.load_records().unwrap(), recs);
        s.prune_revisions(&[]);
        assert!(s.load_revision(r.revision.as_str()).is_err());
    }

    #[test]
    fn an_unreadable_state_file_is_set_aside_and_told_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let n = NodeState { desired: Some("abc".into()), ..Default::default() };
        s.save_node(&n).unwrap();
        let bytes = std::fs::read(dir.path().join("node.json")).unwrap();
        std::fs::write(dir.path().join("node.json"), &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(s.load_node().unwrap(), NodeState::default(), "started without it");
        let told = s.take_set_aside();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0].sentence().contains("node.json could not be read"),
            "{}",
            told[0].sentence()
        );
        let kept = told[0].kept_as.clone().unwrap();
        assert_eq!(std::fs::read(kept).unwrap(), &bytes[..bytes.len() / 2]);
        assert!(s.take_set_aside().is_empty(), "told once");
        assert!(!dir.path().join("node.json").exists());
    }

    #[test]
    fn a_damaged_revision_is_set_aside_and_a_missing_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let r = backroom_profiles::render_str(
            "p.yaml",
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: p}\n",
        )
        .unwrap();
        s.save_revision(&r).unwrap();
        assert!(s.load_revision("0000").is_err());
        assert!(s.take_set_aside().is_empty(), "a revision never stored is not damage");
        let path = dir.path().join(format!("revisions/{}.yaml", r.revision.as_str()));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5] = 0;
        std::fs::write(&path, &bytes).unwrap();
        assert!(s.load_revision(r.revision.as_str()).is_err());
        assert_eq!(s.take_set_aside().len(), 1);
        assert!(!path.exists());
    }
}
