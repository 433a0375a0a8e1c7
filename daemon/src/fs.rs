//! Crash-safe files and the state folder's lock.
//!
//! [`write_atomic`] writes a temporary file beside the target, fsyncs it, renames it over the
//! target and fsyncs the folder: after a power cut a reader finds the old content or the new,
//! never half of it. [`install`] does the same for a file another program wrote (`qemu-img`,
//! `xorriso`), and [`rename_durable`] moves a file aside so that the move outlives a power cut.
//! [`StateLock`] is an exclusive `flock` that says which process owns a
//! state folder; the kernel releases it when that process dies, however it dies.

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
