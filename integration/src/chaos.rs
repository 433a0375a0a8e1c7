//! Shared parts of the fault suite (`integration/tests/chaos_*.rs`, `make chaos`): a seeded
//! random source whose seed is printed so a failing run can be repeated, the figures table
//! `make chaos` prints, and `make run`'s lab store started in a folder of its own, whose daemons
//! a test kills with SIGKILL and starts again with the same command line; and state files
//! damaged as a power cut or a bad disk would (`chaos_state`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A small deterministic random source (xorshift64*): the seed comes from `BACKROOM_CHAOS_SEED`
/// or the clock, and is printed so a run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(what: &str) -> Rng {
        let seed = std::env::var("BACKROOM_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{what}: seed {seed} (BACKROOM_CHAOS_SEED={seed} repeats this run)");
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

/// A count from the environment, or `default`.
pub fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Appends one row to the figures table `make chaos` prints (`BACKROOM_CHAOS_TABLE` names the
/// file; nothing is written when it is unset), and prints the row.
pub fn table_row(case: &str, scale: &str, held: &str) {
    let row = format!("| {case} | {scale} | {held} |");
    eprintln!("figures: {row}");
    let Ok(path) = std::env::var("BACKROOM_CHAOS_TABLE") else { return };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot append to the figures table {path}: {e}"));
    writeln!(f, "{row}").unwrap_or_else(|e| panic!("cannot append to {path}: {e}"));
}

/// Percentile `p` (0..=100) of `v`, which it sorts.
pub fn percentile(v: &mut [Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = (v.len() * p).div_ceil(100).clamp(1, v.len()) - 1;
    v[i]
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A process's state letter from `/proc/PID/stat` (`None`: gone).
fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
}

fn alive(pid: u32) -> bool {
    !matches!(proc_state(pid), None | Some('Z' | 'X'))
}

/// How a killed daemon is started again: what it ran with.
struct Launch {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

impl Launch {
    fn of(pid: u32) -> std::io::Result<Launch> {
        let split = |b: Vec<u8>| -> Vec<String> {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let argv = split(std::fs::read(format!("/proc/{pid}/cmdline"))?);
        let env = split(std::fs::read(format!("/proc/{pid}/environ"))?)
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
        Ok(Launch { argv, env, cwd })
    }
}

/// `make run`'s lab store (central, the sample fleet plus store-lab, netd, vmd and nodeagent,
/// on the real containerd, libvirtd and kernel), brought up by scripts/run/up in a folder and on
/// ports of its own, and taken down by scripts/run/down when dropped.
pub struct LabStack {
    pub run: PathBuf,
    pub api: u16,
    launches: BTreeMap<String, Launch>,
}

/// The daemons of the lab store a test may kill: each is started again with its own command
/// line, except containerd, which its service script starts again.
pub const VICTIMS: [&str; 5] = ["netd", "vmd", "nodeagent", "central", "containerd"];

const CONTAINERD_PID: &str = "/run/backroom-test/containerd.pid";

impl LabStack {
    /// Runs scripts/run/up with its folder in `run` (which must not exist yet) and free ports.
    pub fn up(run: &Path) -> Result<LabStack, String> {
        let node = crate::procs::free_port().map_err(|e| e.to_string())?.port();
        let api = crate::procs::free_port().map_err(|e| e.to_string())?.port();
        let mut up = Command::new(repo().join("scripts/run/up"));
        Self::env(&mut up, run, node, api);
        let out = up.output().map_err(|e| format!("scripts/run/up: {e}"))?;
        let mut s = LabStack { run: run.to_path_buf(), api, launches: BTreeMap::new() };
        if !out.status.success() {
            return Err(format!(
                "scripts/run/up failed:\n{}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                s.logs()
            ));
        }
        for name in ["netd", "vmd", "nodeagent", "central"] {
            let pid = s.pid(name).ok_or(format!("no pid file for {name}"))?;
            s.launches.insert(name.into(), Launch::of(pid).map_err(|e| e.to_string())?);
        }
        Ok(s)
    }

    fn env(c: &mut Command, run: &Path, node: u16, api: u16) {
        c.current_dir(repo())
            .env("BACKROOM_RUN_DIR", run)
            .env("BACKROOM_RUN_NODE_PORT", node.to_string())
            .env("BACKROOM_RUN_API_PORT", api.to_string())
            .env(
                "BACKROOM_RUN_BIN",
                crate::procs::workspace_bin("x").parent().unwrap_or(Path::new(".")),
            );
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        if name == "containerd" {
            PathBuf::from(CONTAINERD_PID)
        } else {
            self.run.join(format!("{name}.pid"))
        }
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.pid_file(name)).ok()?.trim().parse().ok()
    }

    /// SIGKILL for `name`, and waits until it is gone (or a zombie).
    pub fn kill9(&mut self, name: &str) -> Result<(), String> {
        let pid = self.pid(name).ok_or(format!("{name} has no pid file"))?;
        // SAFETY: kill(2) with a pid read from the pid file this stack (or the service script)
        // wrote; no memory is shared.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let t = Instant::now();
        while alive(pid) {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("{name} (pid {pid}) did not die of SIGKILL in 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts `name` again as it was started first (its log appended to), and records its pid
    /// where scripts/run/down looks.
    pub fn restart(&mut self, name: &str) -> Result<(), String> {
        if name == "containerd" {
            // The killed containerd may linger as a zombie until its parent (here, PID 1)
            // reaps it; the service script would take its pid file for a live containerd.
            let _ = std::fs::remove_file(CONTAINERD_PID);
            let out = Command::new(repo().join("scripts/services.d/containerd"))
                .output()
                .map_err(|e| format!("scripts/services.d/containerd: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "containerd did not start again: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            return Ok(());
        }
        let l = self.launches.get(name).ok_or(format!("{name} is not a daemon of the stack"))?;
        let log = self.run.join("logs").join(format!("{name}.log"));
        // Started through a shell that exits at once, as scripts/run/up starts them: the daemon
        // is nobody's child here, and scripts/run/down stops it by the pid recorded.
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!"#)
            .arg("sh")
            .arg(&log)
            .args(&l.argv)
            .env_clear()
            .envs(l.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&l.cwd)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("starting {name} again: {e}"))?;
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        pid.parse::<u32>().map_err(|_| format!("starting {name} again: no pid ({pid:?})"))?;
        std::fs::write(self.pid_file(name), pid).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// A `centralctl` command against this stack's central, with `--json`.
    pub fn centralctl(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new(crate::procs::require_bin("centralctl"))
            .args(["--server", &format!("https://127.0.0.1:{}", self.api), "--json"])
            .arg("--ca")
            .arg(self.run.join("central/ca.crt"))
            .arg("--token-file")
            .arg(self.run.join("central/admin.token"))
            .args(args)
            .output()
            .map_err(|e| format!("centralctl: {e}"))?;
        if !out.status.success() {
            return Err(format!("centralctl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("centralctl {args:?}: {e}"))
    }

    /// `centralctl fleet push` of the stack's fleet folder.
    pub fn push(&self) -> Result<(), String> {
        let out = Command::new(crate::procs::require_bin("centralctl"))
            .args(["--server", &format!("https://127.0.0.1:{}", self.api)])
            .arg("--ca")
            .arg(self.run.join("central/ca.crt"))
            .arg("--token-file")
            .arg(self.run.join("central/admin.token"))
            .args(["fleet", "push"])
            .arg(self.run.join("fleet"))
            .output()
            .map_err(|e| format!("centralctl fleet push: {e}"))?;
        if !out.status.success() {
            return Err(format!("fleet push: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    }

    /// The tail of every log of the stack, for a failure's message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["central", "netd", "vmd", "nodeagent"] {
            let text = std::fs::read_to_string(self.run.join("logs").join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(30);
            s.push_str(&format!("--- {name}.log (last {} lines)\n", lines.len() - from));
            for l in &lines[from..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// scripts/run/down; its failures are returned.
    pub fn down(&mut self) -> Result<(), String> {
        let mut down = Command::new(repo().join("scripts/run/down"));
        Self::env(&mut down, &self.run, 0, self.api);
        let out = down.output().map_err(|e| format!("scripts/run/down: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("make stop: {}", String::from_utf8_lossy(&out.stdout)))
        }
    }
}

impl Drop for LabStack {
    fn drop(&mut self) {
        if self.run.exists() {
            let _ = self.down();
        }
    }
}

/// One event as central stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    pub workload: String,
    pub subject: String,
    pub message: String,
}

/// Every event central holds for `store`, by sequence number, read from its SQLite file (read
/// only, with Python's sqlite3: the store API gives at most 1,000).
pub fn central_events(db: &Path, store: &str) -> Result<Vec<StoredEvent>, String> {
    let q = r#"
import json, sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
rows = db.execute("SELECT seq, at_ms, kind, workload, subject, message FROM events WHERE store_id=? ORDER BY seq", (sys.argv[2],)).fetchall()
print(json.dumps(rows))
"#;
    let out = Command::new("python3")
        .args(["-c", q])
        .arg(db)
        .arg(store)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("reading {}: {}", db.display(), String::from_utf8_lossy(&out.stderr)));
    }
    let rows: Vec<(u64, i64, String, String, String, String)> =
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|(seq, at_ms, kind, workload, subject, message)| StoredEvent {
            seq,
            at_ms,
            kind,
            workload,
            subject,
            message,
        })
        .collect())
}

// ---- power loss of state files ----------------------------------------------------------------

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
pub fn damage(path: &Path, rng: &mut Rng) -> std::io::Result<(Damage, Vec<u8>)> {
    let bytes = std::fs::read(path)?;
    let len = bytes.len() as u64;
    let mut out = bytes.clone();
    let d = if len == 0 || rng.below(2) == 0 {
        let at = rng.below(len);
        out.truncate(at as usize);
        Damage::Truncated { at, len }
    } else {
        let at = rng.below(len);
        let span = (1 + rng.below(32) as usize).min((len - at) as usize);
        for b in &mut out[at as usize..at as usize + span] {
            *b = rng.next_u64() as u8;
        }
        let nul = rng.below(span as u64) as usize;
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

    /// What held, for the row of `make chaos`'s table.
    pub fn held(&self) -> String {
        let each: Vec<String> = self.per_daemon.iter().map(|(d, n)| format!("{d} {n}")).collect();
        format!(
            "{} files damaged ({}): {}/{} daemon starts answered and converged, every damaged file that did not read set aside and told ({} still read whole), {} outbox sequence numbers reused",
            self.files_damaged,
            each.join(", "),
            self.started,
            self.starts,
            self.still_whole,
            self.seq_reused
        )
    }

    /// Adds the row to the figures table ([`table_row`]).
    pub fn append_table_row(&self) {
        table_row("power loss of state files", &format!("{} rounds", self.rounds), &self.held());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_changes_the_file_and_garbage_holds_a_nul() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        let mut r = Rng(7);
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
