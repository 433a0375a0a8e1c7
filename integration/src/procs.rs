//! Real processes for tests and benchmarks: start `central serve`, wait until it is ready, read
//! its memory and CPU from /proc, stop it by pid (never by name).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace, next to the running test or benchmark executable
/// (`target/<profile>/<name>`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    dir.join(name)
}

/// Like [`workspace_bin`], for tests: fails loudly, naming the fix, when the binary is missing.
pub fn require_bin(name: &str) -> PathBuf {
    let p = workspace_bin(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace's binaries first (`cargo test --workspace` and `make test` do)",
        p.display()
    );
    p
}

pub struct CentralProc {
    pub child: Child,
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub api: SocketAddr,
}

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

impl CentralProc {
    /// Starts `central serve` with its data in `data`, on the given addresses (or free ports).
    pub fn start(
        bin: &Path,
        data: &Path,
        listen: Option<SocketAddr>,
        api: Option<SocketAddr>,
        extra: &[&str],
    ) -> std::io::Result<CentralProc> {
        let listen = match listen {
            Some(a) => a,
            None => free_port()?,
        };
        let api = match api {
            Some(a) => a,
            None => free_port()?,
        };
        let log = std::fs::File::create(data.with_extension("log"))?;
        let child = Command::new(bin)
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", &listen.to_string(), "--api", &api.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut p = CentralProc { child, data: data.to_path_buf(), listen, api };
        p.wait_ready(Duration::from_secs(30))?;
        Ok(p)
    }

    fn wait_ready(&mut self, limit: Duration) -> std::io::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!("central exited at start: {status}")));
            }
            let ready = self.data.join("ca.crt").exists()
                && std::net::TcpStream::connect(self.listen).is_ok()
                && std::net::TcpStream::connect(self.api).is_ok();
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other("central did not start listening in time"))
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    pub fn ca_pem(&self) -> std::io::Result<String> {
        std::fs::read_to_string(self.data.join("ca.crt"))
    }

    pub fn admin_token(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(self.data.join("admin.token"))?.trim().to_string())
    }

    /// kill -9.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for CentralProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time a process has used so far (user + system).
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat, i.e. 11 and 12 after the name.
    // SAFETY: sysconf with a valid name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// Raises this process's open-file limit to its hard limit (thousands of sessions need it).
pub fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write/read a properly sized struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
