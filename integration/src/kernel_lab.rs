//! The kernel lab: runs a test inside Debian's kernel (booted by virtme-ng under QEMU/TCG with
//! this machine's filesystem), for what this host's kernel cannot do (802.1q VLANs, bridge
//! conntrack, netem). `scripts/deps.d/netd-kernel-lab.sh` installs it under
//! `/opt/backroom/kernel-lab`.
//!
//! The pattern: a test calls [`run_inner`], which boots the lab and runs the *same test
//! binary* there with `--ignored --exact <inner>`; the inner test (marked `#[ignore]`, never run
//! on the host) calls [`pass`] when it succeeds, which prints a line with a nonce on the guest's
//! console. The verdict travels on the console because the guest's `/tmp` is its own: a file
//! written there (where a checkout may well live) never reaches the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const LAB: &str = "/opt/backroom/kernel-lab";

/// What a lab run produced.
pub struct LabRun {
    pub passed: bool,
    pub elapsed: Duration,
    /// The last lines of the guest's console (the inner test's output among them).
    pub console_tail: String,
}

/// Boots the lab and runs `inner` (a test of the calling test binary) inside; `deadline` bounds
/// the whole run. Panics, naming the fix, when the lab is not installed.
pub fn run_inner(inner: &str, deadline: Duration, scratch: &Path) -> LabRun {
    let vng = Path::new(LAB).join("venv/bin/vng");
    let kernel = Path::new(LAB).join("kernel/vmlinuz");
    assert!(
        vng.exists() && kernel.exists(),
        "the kernel lab is missing ({} and {}): run scripts/install-deps (scripts/deps.d/netd-kernel-lab.sh)",
        vng.display(),
        kernel.display()
    );
    let exe = std::env::current_exe().unwrap_or_default();
    let tag = format!("{inner}-{}", std::process::id());
    let log: PathBuf = scratch.join(format!("lab-{tag}.log"));
    let nonce = format!("{:016x}", rand_nonce());
    let path = format!(
        "{}:{}",
        Path::new(LAB).join("venv/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cmd = format!(
        "env BACKROOM_LAB_NONCE={nonce} RUST_BACKTRACE=1 {} --ignored --exact {inner} --nocapture --test-threads=1",
        exe.display()
    );
    let started = Instant::now();
    let out = std::fs::File::create(&log).and_then(|f| Ok((f.try_clone()?, f)));
    let Ok((stdout, stderr)) = out else {
        return LabRun {
            passed: false,
            elapsed: Duration::ZERO,
            console_tail: format!("cannot write {}", log.display()),
        };
    };
    let spawned = Command::new(&vng)
        .arg("--run")
        .arg(&kernel)
        // -v: the guest's console comes out, which is where a failure explains itself.
        .args(["--disable-kvm", "--memory", "2G", "--cpus", "2", "--rw", "-v", "--exec", &cmd])
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return LabRun {
                passed: false,
                elapsed: Duration::ZERO,
                console_tail: format!("cannot start vng: {e}"),
            };
        }
    };
    // vng's own exit status is not the inner test's (it reports the console fallback): the
    // line `pass` prints is the verdict.
    loop {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            break;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let passed = console.contains(&format!("BACKROOM-LAB-PASS {nonce}"));
    let tail: Vec<&str> =
        console.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect();
    LabRun { passed, elapsed: started.elapsed(), console_tail: tail.join("\n") }
}

/// Whether this process runs inside the lab (started by [`run_inner`]).
pub fn inside() -> bool {
    std::env::var_os("BACKROOM_LAB_NONCE").is_some()
}

/// Inside the lab: tells [`run_inner`] the inner test succeeded.
pub fn pass() {
    if let Ok(nonce) = std::env::var("BACKROOM_LAB_NONCE") {
        eprintln!("\nBACKROOM-LAB-PASS {nonce}");
    }
}

fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}
