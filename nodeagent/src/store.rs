//! Durable node state under the state folder, written crash-safely (write a temporary file,
//! fsync, rename, fsync the folder): the desired, applied and last-known-good revisions
//! (`node.json`, the profiles themselves in `revisions/<id>.yaml`) and the workload records
//! (`workloads.json`), the latest action results (`actions.json`) and the open problems
//! (`problems.json`). A revision is on disk before nodeagent acts on it.

use std::path::{Path, PathBuf};

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
        Ok(Store { dir: dir.to_path_buf() })
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

    pub fn load_revision(&self, revision: &str) -> Result<Rendered> {
        let path = self.revision_path(revision);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        let r = backroom_profiles::render_str(&path.display().to_string(), &text)
            .map_err(|source| Error::Profile { what: path.display().to_string(), source })?;
        if r.revision.as_str() != revision {
            return Err(Error::RevisionMismatch {
                path,
                found: r.revision.to_string(),
                wanted: revision.to_string(),
            });
        }
        Ok(r)
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

    fn load_json<T: for<'de> Deserialize<'de> + Default>(&self, name: &str) -> Result<T> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| Error::StateFile { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(Error::io("read", &path, e)),
        }
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
        std::fs::write(dir.path().join("node.json"), b"{not json").unwrap();
        assert!(s.load_node().unwrap_err().to_string().contains("node.json"));
    }
}
