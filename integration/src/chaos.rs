//! Power loss of state files, for the fault suite (`tests/chaos_state.rs`): damage a file the
//! way a power cut or a bad disk does (cut off at a random offset, or a random span overwritten
//! with garbage), from a seeded generator whose seed is printed so that a failure can be run
//! again; and the figures the suite prints.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The seed: `BACKROOM_CHAOS_SEED` when set, otherwise one from the clock (printed either way).
pub fn seed() -> u64 {
    std::env::var("BACKROOM_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42)
    })
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// What was done to a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Cut off at this offset (of a file of `len` bytes).
    Truncated { at: u64, len: u64 },
    /// `span` bytes at `at` replaced with garbage.
    Garbled { at: u64, span: usize },
}

impl Damage {
    /// A cut that leaves whole lines (the file ends where a line ended, or is empty): a log
    /// read line by line cannot tell it from a file that had no more.
    pub fn cut_at_line_end(&self, original: &[u8]) -> bool {
        match self {
            Damage::Truncated { at, .. } => {
                *at == 0 || original.get(*at as usize - 1).is_some_and(|&b| b == b'\n')
            }
            Damage::Garbled { .. } => false,
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Truncated { at, len } => write!(f, "truncated at byte {at} of {len}"),
            Damage::Garbled { at, span } => write!(f, "{span} bytes of garbage at byte {at}"),
        }
    }
}

/// Damages `path` at random: half the time cut off at an offset below its length, half the
/// time a span of 1 to 32 bytes overwritten with random bytes. The garbage always holds a NUL
/// byte, which no JSON or YAML state file may hold anywhere: the damage is one a reader can
/// notice (a digit changed into another digit still reads, and is not what this simulates).
/// Returns what was done and the bytes before.
pub fn damage(path: &Path, rng: &mut StdRng) -> std::io::Result<(Damage, Vec<u8>)> {
    let bytes = std::fs::read(path)?;
    let len = bytes.len() as u64;
    let mut out = bytes.clone();
    let d = if len == 0 || rng.random_bool(0.5) {
        let at = if len == 0 { 0 } else { rng.random_range(0..len) };
        out.truncate(at as usize);
        Damage::Truncated { at, len }
    } else {
        let at = rng.random_range(0..len);
        let span = rng.random_range(1..=32usize).min((len - at) as usize);
        for b in &mut out[at as usize..at as usize + span] {
            *b = rng.random();
        }
        let nul = rng.random_range(0..span);
        out[at as usize + nul] = 0;
        Damage::Garbled { at, span }
    };
    // Written in place, as the disk would have it (not a crash-safe replace).
    std::fs::write(path, &out)?;
    Ok((d, bytes))
}

/// The set-aside copies of `path` (`<name>.unreadable-*`), oldest first.
pub fn set_aside_copies(path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    backroom_daemon::fs::set_aside_copies(dir, &name)
}

/// The suite's figures.
#[derive(Debug, Default)]
pub struct Figures {
    pub rounds: usize,
    pub files_damaged: usize,
    pub starts: usize,
    pub started: usize,
    pub seq_reused: usize,
    /// Damage a reader cannot tell from a whole file (a log cut at a line's end): nothing to
    /// set aside.
    pub still_whole: usize,
    /// Per daemon: (name, rounds).
    pub per_daemon: Vec<(String, usize)>,
}

impl Figures {
    pub fn line(&self) -> String {
        format!(
            "chaos_state: rounds {}, files damaged {}, daemons started {}/{}, seq reused {}",
            self.rounds, self.files_damaged, self.started, self.starts, self.seq_reused
        )
    }

    /// The row of `make chaos`'s table.
    pub fn table_row(&self) -> String {
        let each: Vec<String> = self.per_daemon.iter().map(|(d, n)| format!("{d} {n}")).collect();
        format!(
            "| power loss of state files | {} rounds | {} files damaged ({}): {}/{} daemon starts answered and converged, every damaged file that did not read set aside and told ({} still read whole), {} outbox sequence numbers reused |",
            self.rounds,
            self.files_damaged,
            each.join(", "),
            self.started,
            self.starts,
            self.still_whole,
            self.seq_reused
        )
    }

    /// Appends the row to the file `BACKROOM_CHAOS_TABLE` names, if it does.
    pub fn append_table_row(&self) -> std::io::Result<()> {
        let Some(path) = std::env::var_os("BACKROOM_CHAOS_TABLE") else { return Ok(()) };
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{}", self.table_row())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_changes_the_file_and_garbage_holds_a_nul() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        let mut r = rng(7);
        let (mut cuts, mut garbles) = (0, 0);
        for _ in 0..200 {
            std::fs::write(&p, b"{\"a\": 1,\n \"b\": [1, 2, 3]}").unwrap();
            let (dmg, before) = damage(&p, &mut r).unwrap();
            let after = std::fs::read(&p).unwrap();
            assert_ne!(after, before, "{dmg}");
            match dmg {
                Damage::Truncated { at, .. } => {
                    cuts += 1;
                    assert_eq!(after.len() as u64, at);
                }
                Damage::Garbled { .. } => {
                    garbles += 1;
                    assert!(after.contains(&0));
                    assert_eq!(after.len(), before.len());
                }
            }
            assert!(serde_json::from_slice::<serde_json::Value>(&after).is_err(), "{dmg}");
        }
        assert!(cuts > 50 && garbles > 50, "{cuts} {garbles}");
    }
}
