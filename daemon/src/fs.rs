//! Crash-safe files and the state folder's lock.
//!
//! [`write_atomic`] writes a temporary file beside the target, fsyncs it, renames it over the
//! target and fsyncs the folder: after a power cut a reader finds the old content or the new,
//! never half of it. [`install`] does the same for a file another program wrote (`qemu-img`,
//! `xorriso`), and [`rename_durable`] moves a file aside so that the move outlives a power cut.
//! [`StateLock`] is an exclusive `flock` that says which process owns a
//! state folder; the kernel releases it when that process dies, however it dies.
//!
//! [`load_or_set_aside`] is how every daemon reads a state file at start: a file that does not
//! read (a power cut tore it, a disk garbled it) is renamed `<name>.unreadable-<unix seconds>`
//! (the newest [`SET_ASIDE_KEPT`] kept, for support) and the daemon starts without it, from
//! what it can learn from the system it manages, rather than refusing to start: a daemon that
//! cannot start after a power cut needs a site visit.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::FlockOperation;

use crate::error::{Error, Result};

/// Writes `data` to `path` atomically, the file getting permission `mode` (0o600 for keys and
/// state, 0o644 for what other users read). The folder is made when missing.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Unique per process and call: two threads saving the same file never share a temporary.
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Puts the finished file `tmp` (written by someone else, e.g. `qemu-img create`) at `dest`
/// crash-safely: its data reaches the disk before the rename, and the rename before this
/// returns. Without the first fsync a power cut can leave `dest` named but empty or torn.
pub fn install(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    File::open(tmp)?.sync_all()?;
    rename_durable(tmp, dest)
}

/// Renames `from` to `to` and fsyncs the folders involved, so the new name survives a power cut.
pub fn rename_durable(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    let dir_of = |p: &Path| {
        p.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
    };
    let (a, b) = (dir_of(from), dir_of(to));
    sync_dir(&b)?;
    if a != b {
        sync_dir(&a)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// [`write_atomic`] with this crate's error, naming the file.
pub fn save(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_atomic(path, data, mode).map_err(|e| Error::io("write", path, e))
}

/// How many set-aside copies of one state file are kept (the oldest go first).
pub const SET_ASIDE_KEPT: usize = 3;

/// A state file that did not read and was moved out of the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside {
    /// Where it was.
    pub path: PathBuf,
    /// Where it is now (`None` when even the rename failed: it is overwritten at the next save).
    pub kept_as: Option<PathBuf>,
    /// Why it did not read, with the whole cause chain.
    pub reason: String,
}

impl SetAside {
    /// One sentence for the log and the operator's event: which file, why, and where it went.
    pub fn sentence(&self) -> String {
        let name = self.path.display();
        match &self.kept_as {
            Some(k) => format!(
                "the state file {name} could not be read ({}): set aside as {} and started without it",
                self.reason,
                k.display()
            ),
            None => format!(
                "the state file {name} could not be read ({}) and could not be set aside: started without it",
                self.reason
            ),
        }
    }
}

/// What [`load_or_set_aside`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded<T> {
    /// The file read and parsed.
    Read(T),
    /// There is no such file (a first start).
    Missing,
    /// The file did not read or parse: it was set aside.
    SetAside(SetAside),
}

impl<T> Loaded<T> {
    /// The value, or `T::default()` when the file was missing or set aside; and the notice.
    pub fn or_default(self) -> (T, Option<SetAside>)
    where
        T: Default,
    {
        match self {
            Loaded::Read(v) => (v, None),
            Loaded::Missing => (T::default(), None),
            Loaded::SetAside(s) => (T::default(), Some(s)),
        }
    }
}

/// Reads the state file `path` and parses it with `parse`. When it cannot be read (other than
/// missing) or does not parse, it is renamed `<name>.unreadable-<now_unix>` beside itself, the
/// oldest such copies beyond [`SET_ASIDE_KEPT`] are removed, a warning names it and why, and
/// [`Loaded::SetAside`] says so: the caller starts without it and tells the operator.
pub fn load_or_set_aside<T, E>(
    path: &Path,
    now_unix: i64,
    parse: impl FnOnce(&[u8]) -> std::result::Result<T, E>,
) -> Loaded<T>
where
    E: std::error::Error + 'static,
{
    let reason = match std::fs::read(path) {
        Ok(bytes) => match parse(&bytes) {
            Ok(v) => return Loaded::Read(v),
            Err(e) => crate::error::chain(&e),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => crate::error::chain(&e),
    };
    let notice = set_aside(path, now_unix, reason);
    tracing::warn!(path = %path.display(), "{}", notice.sentence());
    Loaded::SetAside(notice)
}

/// Moves `path` out of the way as `<name>.unreadable-<now_unix>` (with `-<n>` when that name
/// is taken) and prunes the oldest copies beyond [`SET_ASIDE_KEPT`].
pub fn set_aside(path: &Path, now_unix: i64, reason: String) -> SetAside {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let base = format!("{name}.unreadable-{now_unix}");
    // Above every copy of the same second, even one pruned already: the new copy is the
    // newest in the order copies are pruned by.
    let same_second: Vec<u64> = copy_stamps(dir, &name)
        .into_iter()
        .filter(|((secs, _), _)| *secs == now_unix)
        .map(|((_, n), _)| n)
        .collect();
    let mut n = same_second.iter().max().map_or(0, |m| m + 1);
    let mut target = if n == 0 { dir.join(&base) } else { dir.join(format!("{base}-{n}")) };
    while target.symlink_metadata().is_ok() {
        n += 1;
        target = dir.join(format!("{base}-{n}"));
    }
    let kept_as = match std::fs::rename(path, &target) {
        Ok(()) => {
            let _ = File::open(dir).and_then(|d| d.sync_all());
            Some(target)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot set the unreadable state file aside");
            None
        }
    };
    prune_set_aside(dir, &name);
    SetAside { path: path.to_path_buf(), kept_as, reason }
}

/// The set-aside copies of the state file `name` in `dir`, oldest first.
pub fn set_aside_copies(dir: &Path, name: &str) -> Vec<PathBuf> {
    copy_stamps(dir, name).into_iter().map(|(_, p)| p).collect()
}

/// The set-aside copies of `name` with their (seconds, n) stamps, oldest first.
fn copy_stamps(dir: &Path, name: &str) -> Vec<((i64, u64), PathBuf)> {
    let prefix = format!("{name}.unreadable-");
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<((i64, u64), PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let rest = file.strip_prefix(&prefix)?;
            let (secs, n) = match rest.split_once('-') {
                Some((s, n)) => (s.parse().ok()?, n.parse().ok()?),
                None => (rest.parse().ok()?, 0),
            };
            Some(((secs, n), e.path()))
        })
        .collect();
    found.sort();
    found
}

fn prune_set_aside(dir: &Path, name: &str) {
    let copies = set_aside_copies(dir, name);
    let extra = copies.len().saturating_sub(SET_ASIDE_KEPT);
    for old in &copies[..extra] {
        let _ = std::fs::remove_file(old);
    }
}

/// An exclusive lock on a state folder, held while this value lives.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock file `lock` (made when missing, with its folder); fails at once with
    /// [`Error::Locked`] when another process holds it.
    pub fn acquire(lock: &Path) -> Result<StateLock> {
        let dir = lock.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create the folder", dir, e))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(lock)
            .map_err(|e| Error::io("open the lock file", lock, e))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(StateLock { _file: file, path: lock.to_path_buf() }),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                Err(Error::Locked { dir: dir.to_path_buf(), lock: lock.to_path_buf() })
            }
            Err(e) => Err(Error::io("lock", lock, e.into())),
        }
    }

    /// Like [`StateLock::acquire`], trying again for up to `wait` (a one-shot command may hold
    /// the lock for a moment while the daemon starts). Blocks the calling thread.
    pub fn acquire_wait(lock: &Path, wait: Duration) -> Result<StateLock> {
        let until = std::time::Instant::now() + wait;
        loop {
            match Self::acquire(lock) {
                Err(Error::Locked { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_whole_files_with_the_mode_asked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/key.pem");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temporary left");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"old", 0o600).unwrap();
        // A folder in the way of the rename.
        let blocked = d.path().join("dir");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_atomic(&blocked, b"new", 0o600).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let names: Vec<_> =
            std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    fn parse_json_number(b: &[u8]) -> std::result::Result<u64, std::num::ParseIntError> {
        String::from_utf8_lossy(b).trim().parse()
    }

    #[test]
    fn a_file_that_reads_is_read_and_a_missing_one_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n.json");
        assert_eq!(load_or_set_aside(&p, 5, parse_json_number), Loaded::Missing);
        std::fs::write(&p, b"42").unwrap();
        assert_eq!(load_or_set_aside(&p, 5, parse_json_number), Loaded::Read(42));
        assert!(set_aside_copies(d.path(), "n.json").is_empty());
    }

    #[test]
    fn an_unreadable_file_is_set_aside_with_its_bytes_and_why() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n.json");
        std::fs::write(&p, b"4\x002").unwrap();
        let Loaded::SetAside(s) = load_or_set_aside(&p, 1700, parse_json_number) else {
            panic!("not set aside")
        };
        let kept = d.path().join("n.json.unreadable-1700");
        assert_eq!(s.kept_as.as_deref(), Some(kept.as_path()));
        assert_eq!(std::fs::read(&kept).unwrap(), b"4\x002", "kept as it was, for support");
        assert!(!p.exists(), "out of the way: the next save starts afresh");
        assert!(s.reason.contains("invalid digit"), "{}", s.reason);
        let text = s.sentence();
        assert!(text.contains("n.json could not be read (invalid digit"), "{text}");
        assert!(text.contains("set aside as ") && text.contains("unreadable-1700"), "{text}");
        let (v, notice): (u64, _) = Loaded::SetAside(s).or_default();
        assert_eq!(v, 0);
        assert!(notice.is_some());
    }

    #[test]
    fn a_folder_in_the_place_of_the_file_is_set_aside_too() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n.json");
        std::fs::create_dir(&p).unwrap();
        let Loaded::SetAside(s) = load_or_set_aside(&p, 9, parse_json_number) else {
            panic!("not set aside")
        };
        assert!(s.kept_as.is_some_and(|k| k.is_dir()));
        assert!(!p.exists());
    }

    #[test]
    fn only_the_newest_few_copies_are_kept_and_none_is_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n.json");
        for _ in 0..2 {
            std::fs::write(&p, b"x").unwrap();
            assert!(matches!(load_or_set_aside(&p, 100, parse_json_number), Loaded::SetAside(_)));
        }
        let names: Vec<String> = set_aside_copies(d.path(), "n.json")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["n.json.unreadable-100", "n.json.unreadable-100-1"]);
        for t in 101..106 {
            std::fs::write(&p, format!("bad {t}")).unwrap();
            assert!(matches!(load_or_set_aside(&p, t, parse_json_number), Loaded::SetAside(_)));
        }
        let copies = set_aside_copies(d.path(), "n.json");
        assert_eq!(copies.len(), SET_ASIDE_KEPT);
        let newest = copies.last().unwrap();
        assert_eq!(std::fs::read(newest).unwrap(), b"bad 105");
        assert!(copies[0].ends_with("n.json.unreadable-103"), "{copies:?}");
        // Many in one second, the first ones pruned already: the newest still wins.
        for _ in 0..5 {
            std::fs::write(&p, b"same second").unwrap();
            let Loaded::SetAside(s) = load_or_set_aside(&p, 200, parse_json_number) else {
                panic!("not set aside")
            };
            let copies = set_aside_copies(d.path(), "n.json");
            assert_eq!(copies.last(), s.kept_as.as_ref(), "{copies:?}");
        }
        // Another file's copies are its own.
        std::fs::write(d.path().join("m.json"), b"y").unwrap();
        let m = d.path().join("m.json");
        assert!(matches!(load_or_set_aside(&m, 1, parse_json_number), Loaded::SetAside(_)));
        assert_eq!(set_aside_copies(d.path(), "n.json").len(), SET_ASIDE_KEPT);
        assert_eq!(set_aside_copies(d.path(), "m.json").len(), 1);
    }

    #[test]
    fn install_puts_a_finished_file_in_place_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let (tmp, dest) = (d.path().join("disk.qcow2.tmp"), d.path().join("disk.qcow2"));
        std::fs::write(&dest, b"old").unwrap();
        std::fs::write(&tmp, b"new image").unwrap();
        install(&tmp, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new image");
        assert!(!tmp.exists());
        // A temporary that is not there is an error, and the target stays as it was.
        let e = install(&tmp, &dest).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(std::fs::read(&dest).unwrap(), b"new image");
        let aside = d.path().join("sub");
        std::fs::create_dir(&aside).unwrap();
        rename_durable(&dest, &aside.join("disk.qcow2.torn-1")).unwrap();
        assert!(!dest.exists() && aside.join("disk.qcow2.torn-1").exists());
    }

    #[test]
    fn one_owner_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join("state/lock");
        let held = StateLock::acquire(&lock).unwrap();
        let e = StateLock::acquire(&lock).unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        assert!(e.to_string().contains("another process is using"), "{e}");
        let start = std::time::Instant::now();
        assert!(StateLock::acquire_wait(&lock, Duration::from_millis(300)).is_err());
        assert!(start.elapsed() >= Duration::from_millis(300));
        drop(held);
        assert!(StateLock::acquire(&lock).is_ok());
    }
}
