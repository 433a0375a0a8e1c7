//! The store OS image: how it is built and how its tests boot it.
//!
//! The image itself is built by shell scripts beside this crate, because it is made of Debian
//! packages and disk tools, not Rust:
//!
//! - `images/debs.sh` packages the workspace's release binaries as `backroom-node` and
//!   `backroom-central` (.deb files, reproducible);
//! - `images/build.sh` (`make image`) builds `images/out/backroom-store.img`: a GPT disk with an
//!   ESP (systemd-boot, boot counting), two read-only squashfs root slots and an ext4 state
//!   partition at `/var`, from a Debian 12 base made with mmdebstrap; both the base and the
//!   image are cached by their inputs;
//! - `images/rootfs/` holds the image's own files (fstab, first boot, growing the state).
//!
//! This crate gives the tests what they share: [`ensure_image`] (build, or reuse the cached
//! image, and read its figures) and [`Qemu`] (the image booted under QEMU with OVMF, TCG on this
//! machine, a serial console in a file, user networking where the host is 10.0.2.2, an
//! optional stick and a DMI serial). The boot test is `images/tests/boot.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What went wrong building or booting the image: the step and what it said.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The repository's root (this crate is `images/` in it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A built image: where it is and the figures `build.sh` wrote (`build.env`).
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub figures: BTreeMap<String, String>,
    /// Whether this call built it (false: it was up to date).
    pub built_now: bool,
    /// How long this call took (the build, or finding it up to date).
    pub took: Duration,
}

impl Image {
    pub fn disk(&self) -> PathBuf {
        self.dir.join("backroom-store.img")
    }

    pub fn figure(&self, key: &str) -> Result<u64> {
        self.figures.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| {
            Error(format!("build.env in {} has no number {key}", self.dir.display()))
        })
    }
}

/// Builds the image into `out` with `images/build.sh`, or finds it up to date (the script
/// compares the inputs' key), and reads `build.env`.
pub fn ensure_image(out: &Path) -> Result<Image> {
    let started = Instant::now();
    let script = repo().join("images/build.sh");
    let before = std::fs::read_to_string(out.join("key")).ok();
    let mut c = Command::new(&script);
    c.arg(out).stdin(Stdio::null());
    // What `cargo test` sets for a test would make the nested `cargo build --release` (in
    // images/debs.sh) see another environment than a plain one and build everything again.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k == "LD_LIBRARY_PATH"
        {
            c.env_remove(&k);
        }
    }
    let o = c.output().map_err(|e| Error(format!("{}: {e}", script.display())))?;
    let said =
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    if !o.status.success() {
        return Err(Error(format!(
            "{} {} failed ({}):\n{said}",
            script.display(),
            out.display(),
            o.status
        )));
    }
    let text = std::fs::read_to_string(out.join("build.env"))
        .map_err(|e| Error(format!("{}/build.env: {e}", out.display())))?;
    let figures = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let after = std::fs::read_to_string(out.join("key")).ok();
    Ok(Image {
        dir: out.to_path_buf(),
        figures,
        built_now: before != after || said.contains("image: building"),
        took: started.elapsed(),
    })
}

/// OVMF's code and a copy of its variables (each guest its own).
pub fn ovmf(scratch: &Path) -> Result<(PathBuf, PathBuf)> {
    let code = PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd");
    let vars = PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd");
    for p in [&code, &vars] {
        if !p.exists() {
            return Err(Error(format!(
                "{} is missing: install ovmf (scripts/install-deps)",
                p.display()
            )));
        }
    }
    let mine = scratch.join("OVMF_VARS.fd");
    std::fs::copy(&vars, &mine).map_err(|e| Error(format!("copy {}: {e}", vars.display())))?;
    Ok((code, mine))
}

/// How to boot a guest.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The guest's disk (qcow2 or raw).
    pub disk: PathBuf,
    /// A second drive holding a stick image (raw), if any.
    pub stick: Option<PathBuf>,
    /// QEMU's `-smbios type=1,serial=…`.
    pub serial_number: Option<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Where the serial line's output goes.
    pub console_log: PathBuf,
    /// Where a second serial line's output goes (see [`diagnostic_copy`]), if any.
    pub journal_log: Option<PathBuf>,
}

/// A running guest; killed (by its pid) when dropped.
pub struct Qemu {
    child: Child,
    pub console_log: PathBuf,
    pub started: Instant,
}

impl Qemu {
    /// Starts QEMU (TCG: nested KVM hangs on this machine) with OVMF.
    pub fn start(boot: &Boot, scratch: &Path) -> Result<Qemu> {
        let (code, vars) = ovmf(scratch)?;
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-machine", "q35,accel=tcg", "-cpu", "max"])
            .args(["-m", &boot.memory_mib.to_string(), "-smp", &boot.cpus.to_string()])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()))
            .arg("-drive")
            .arg(format!(
                "if=virtio,format={},file={}",
                if boot.disk.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" },
                boot.disk.display()
            ))
            .args(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"])
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!("file:{}", boot.console_log.display()));
        if let Some(j) = &boot.journal_log {
            c.arg("-serial").arg(format!("file:{}", j.display()));
        }
        if let Some(s) = &boot.stick {
            c.arg("-drive").arg(format!("if=virtio,format=raw,readonly=on,file={}", s.display()));
        }
        if let Some(sn) = &boot.serial_number {
            c.arg("-smbios").arg(format!("type=1,serial={sn}"));
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(scratch.join("qemu.stderr"))
                    .map_err(|e| Error(format!("qemu.stderr: {e}")))?,
            )
            .spawn()
            .map_err(|e| Error(format!("qemu-system-x86_64: {e} (install qemu-system-x86)")))?;
        Ok(Qemu { child, console_log: boot.console_log.clone(), started: Instant::now() })
    }

    /// The serial line so far, as text.
    pub fn console(&self) -> String {
        std::fs::read(&self.console_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether QEMU is still running (false also says how it ended).
    pub fn running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(Error(format!("qemu ended: {st}"))),
            Err(e) => Err(Error(format!("qemu: {e}"))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A copy of the image for a test, the same but for one thing: slot A's kernel command line
/// sends the journal to the console (`systemd.journald.forward_to_console=1`, without `quiet`),
/// so the serial line holds the journal between the recovery console's screens and a failing
/// test shows what the box said. (A second serial line for the journal alone was tried: the
/// kernel does not take ttyS1 as a console there.)
pub fn diagnostic_copy(image: &Path, at: &Path) -> Result<()> {
    let o = Command::new("cp")
        .args(["--sparse=always"])
        .arg(image)
        .arg(at)
        .output()
        .map_err(|e| Error(format!("cp: {e}")))?;
    if !o.status.success() {
        return Err(Error(format!(
            "cp {}: {}",
            image.display(),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    let esp = format!("{}@@1M", at.display());
    let entry = "::/loader/entries/backroom-a.conf";
    let o = Command::new("mtype")
        .args(["-i", &esp, entry])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|e| Error(format!("mtype: {e} (install mtools)")))?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() || !text.contains("options ") {
        return Err(Error(format!(
            "no loader entry {entry} in {}: {}",
            at.display(),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    let changed: String = text
        .lines()
        .map(|l| match l.strip_prefix("options ") {
            Some(o) => format!(
                "options {} systemd.journald.forward_to_console=1\n",
                o.replace(" quiet", "")
            ),
            None => format!("{l}\n"),
        })
        .collect();
    let tmp = at.with_extension("entry");
    std::fs::write(&tmp, changed).map_err(|e| Error(format!("{}: {e}", tmp.display())))?;
    let o = Command::new("mcopy")
        .args(["-o", "-i", &esp])
        .arg(&tmp)
        .arg(entry)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|e| Error(format!("mcopy: {e}")))?;
    if !o.status.success() {
        return Err(Error(format!("mcopy {entry}: {}", String::from_utf8_lossy(&o.stderr))));
    }
    Ok(())
}

/// A qcow2 overlay of `base` (which stays as built) with a bigger virtual size, so the first
/// boot has a disk to grow the state partition into.
pub fn overlay(base: &Path, at: &Path, size: &str) -> Result<()> {
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(at)
        .arg(size)
        .output()
        .map_err(|e| Error(format!("qemu-img: {e} (install qemu-utils)")))?;
    if !o.status.success() {
        return Err(Error(format!("qemu-img create: {}", String::from_utf8_lossy(&o.stderr))));
    }
    Ok(())
}
