//! Container logs: each task writes stdout and stderr into two FIFOs nodeagent made; a pump
//! task reads them and appends timestamped lines to `<state>/logs/<workload>.log`, rotated by
//! size (`.1`, `.2`, … kept). The FIFOs survive a restart of nodeagent (containerd's shim
//! keeps them open), so an adopted container's pump simply opens them again.
//!
//! While nodeagent is down nobody drains the FIFOs: a container that writes more than the pipe
//! holds blocks on its next write until nodeagent is back. Each FIFO's buffer is therefore
//! raised to [`FIFO_BYTES`] (from Linux's 64 KiB), which the kernel fills page by page, so it
//! costs nothing while the FIFO is drained.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{CWD, FileType, Mode, mknodat};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use backroom_daemon::SharedClock;

use crate::error::{Error, Result};

/// The pipe buffer of each log FIFO: what a container may write while nodeagent is down.
pub const FIFO_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub struct Logs {
    dir: PathBuf,
    fifo_dir: PathBuf,
    /// Stamps each line.
    clock: SharedClock,
    /// A log file is rotated past this size.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: usize,
}

struct LogFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl LogFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.size + bytes.len() as u64 > self.max_bytes && self.size > 0 {
            self.file = None;
            for i in (1..self.keep.max(1)).rev() {
                let from = rotated(&self.path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, i + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.size = 0;
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(bytes)?;
            self.size += bytes.len() as u64;
        }
        Ok(())
    }
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// A log line's time, UTC with milliseconds: `2026-11-26T10:00:00.123Z`.
fn timestamp(ms: i64) -> String {
    let whole = backroom_daemon::clock::rfc3339(ms);
    format!("{}.{:03}Z", whole.trim_end_matches('Z'), ms.rem_euclid(1000))
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Logs {
    pub fn new(state_dir: &Path, clock: SharedClock) -> Self {
        Logs {
            dir: state_dir.join("logs"),
            fifo_dir: state_dir.join("fifo"),
            clock,
            max_bytes: 10 << 20,
            keep: 3,
        }
    }

    pub fn log_path(&self, workload: &str) -> PathBuf {
        self.dir.join(format!("{workload}.log"))
    }

    pub fn fifos(&self, container_id: &str) -> (PathBuf, PathBuf) {
        (
            self.fifo_dir.join(format!("{container_id}.out")),
            self.fifo_dir.join(format!("{container_id}.err")),
        )
    }

    /// Makes the two FIFOs of a container (kept if they exist).
    pub fn prepare(&self, container_id: &str) -> Result<(PathBuf, PathBuf)> {
        for d in [&self.dir, &self.fifo_dir] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("create the folder", d, e))?;
        }
        let (out, err) = self.fifos(container_id);
        for p in [&out, &err] {
            if !p.exists() {
                mknodat(CWD, p.as_path(), FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| Error::io("make the FIFO", p, e.into()))?;
            }
        }
        Ok((out, err))
    }

    pub fn remove_fifos(&self, container_id: &str) {
        let (out, err) = self.fifos(container_id);
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
    }

    /// Starts copying the container's output into the workload's log (until aborted).
    pub fn pump(&self, workload: &str, container_id: &str) -> Result<Vec<JoinHandle<()>>> {
        let (out, err) = self.prepare(container_id)?;
        let file = Arc::new(Mutex::new(LogFile {
            path: self.log_path(workload),
            file: None,
            size: 0,
            max_bytes: self.max_bytes,
            keep: self.keep,
        }));
        let mut handles = Vec::new();
        for (path, stream) in [(out, "out"), (err, "err")] {
            // Opened read-write: a FIFO without a writer would otherwise read as end-of-file.
            let mut rx = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(&path)
                .map_err(|e| Error::io("open the FIFO", &path, e))?;
            if let Err(e) = rustix::pipe::fcntl_setpipe_size(&rx, FIFO_BYTES) {
                let e = std::io::Error::from(e);
                tracing::warn!(fifo = %path.display(), error = %backroom_daemon::Chain(&e), "cannot raise the FIFO's buffer to {FIFO_BYTES} bytes");
            }
            let file = file.clone();
            let clock = self.clock.clone();
            let workload = workload.to_string();
            let id = container_id.to_string();
            handles.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                let mut partial: Vec<u8> = Vec::new();
                loop {
                    let n = match rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    partial.extend_from_slice(&buf[..n]);
                    let mut out = Vec::new();
                    let stamp = timestamp(clock.now_ms());
                    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=pos).collect();
                        out.extend_from_slice(format!("{stamp} {stream} ").as_bytes());
                        out.extend_from_slice(&line);
                    }
                    if partial.len() > 8192 {
                        out.extend_from_slice(format!("{stamp} {stream} ").as_bytes());
                        out.append(&mut partial);
                        out.push(b'\n');
                    }
                    if !out.is_empty() {
                        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                        if let Err(e) = f.write(&out) {
                            tracing::warn!(%workload, container = %id, error = %backroom_daemon::Chain(&e), "cannot write the log");
                        }
                    }
                }
            }));
        }
        Ok(handles)
    }

    /// The last `max` bytes of a workload's log (from the rotated file too when needed).
    pub fn tail(&self, workload: &str, max: u64) -> Result<Vec<u8>> {
        let path = self.log_path(workload);
        let mut out = read_tail(&path, max)?;
        if (out.len() as u64) < max {
            let mut older = read_tail(&rotated(&path, 1), max - out.len() as u64)?;
            older.append(&mut out);
            out = older;
        }
        Ok(out)
    }
}

fn read_tail(path: &Path, max: u64) -> Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read the log", path, e)),
    };
    let len = f.metadata().map_err(|e| Error::io("read the log", path, e))?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start)).map_err(|e| Error::io("read the log", path, e))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| Error::io("read the log", path, e))?;
    Ok(buf)
}

/// Follows a log file from `offset`: returns the new bytes and the next offset (0 again when the
/// file was rotated away).
pub fn read_from(path: &Path, offset: u64) -> Result<(Vec<u8>, u64)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(Error::io("read the log", path, e)),
    };
    let len = f.metadata().map_err(|e| Error::io("read the log", path, e))?.len();
    let offset = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io("read the log", path, e))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| Error::io("read the log", path, e))?;
    let next = offset + buf.len() as u64;
    Ok((buf, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn logs_rotate_by_size_and_tail_spans_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut f =
            LogFile { path: dir.path().join("w.log"), file: None, size: 0, max_bytes: 10, keep: 2 };
        for line in ["aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "eeee\n"] {
            f.write(line.as_bytes()).unwrap();
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(dir.path().join("w.log")), "eeee\n");
        assert_eq!(read(dir.path().join("w.log.1")), "cccc\ndddd\n");
        assert_eq!(read(dir.path().join("w.log.2")), "aaaa\nbbbb\n");
        assert!(!dir.path().join("w.log.3").exists());
        let logs = Logs {
            max_bytes: 10,
            keep: 2,
            ..Logs::new(dir.path(), backroom_daemon::clock::system())
        };
        let logs = Logs { dir: dir.path().into(), ..logs };
        assert_eq!(logs.tail("w", 8).unwrap(), b"dddd\neeee\n"[2..].to_vec());
        assert_eq!(timestamp(1_795_651_200_045), "2026-11-26T00:00:00.045Z");
    }

    #[tokio::test]
    async fn the_pump_copies_fifo_lines_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let clock = backroom_daemon::ManualClock::new(1_795_651_200_007);
        let logs = Logs::new(dir.path(), std::sync::Arc::new(clock));
        let handles = logs.pump("web", "web.1").unwrap();
        let (out, _) = logs.fifos("web.1");
        let mut w = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
        w.write_all(b"hello\nworld\n").unwrap();
        let path = logs.log_path("web");
        let mut text = String::new();
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("world") {
                break;
            }
        }
        assert!(text.contains(" out hello\n") && text.contains(" out world\n"), "{text}");
        assert!(text.starts_with("2026-11-26T00:00:00.007Z out "), "stamped by the clock: {text}");
        for h in handles {
            h.abort();
        }
    }

    #[tokio::test]
    async fn a_container_may_write_a_megabyte_while_nobody_drains_its_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path(), backroom_daemon::clock::system());
        let (out, _) = logs.fifos("pos.1");
        let handles = logs.pump("pos", "pos.1").unwrap();
        // containerd's shim keeps a read end of its FIFOs, so the pipe outlives nodeagent.
        let _shim = std::fs::OpenOptions::new().read(true).write(true).open(&out).unwrap();
        // nodeagent goes away.
        for h in handles {
            h.abort();
            let _ = h.await;
        }
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&out)
            .unwrap();
        let line = [b'x'; 1023];
        let mut written = 0;
        while written < FIFO_BYTES - 1024 {
            w.write_all(&line).unwrap_or_else(|e| panic!("blocked after {written} bytes: {e}"));
            w.write_all(b"\n").unwrap();
            written += 1024;
        }
        assert!(written > 64 << 10, "more than Linux's default pipe buffer");
        // nodeagent comes back and drains what was written meanwhile.
        let handles = logs.pump("pos", "pos.1").unwrap();
        let path = logs.log_path("pos");
        let mut lines = 0;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            lines = std::fs::read_to_string(&path).unwrap_or_default().lines().count();
            if lines * 1024 >= written {
                break;
            }
        }
        assert_eq!(lines * 1024, written, "every line reached the log");
        for h in handles {
            h.abort();
        }
    }
}
