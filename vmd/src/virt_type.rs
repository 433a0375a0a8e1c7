//! Which accelerator VMs run with: KVM (production) or QEMU's TCG emulation (domain type
//! `qemu`). `auto` does not trust that `/dev/kvm` exists: it boots a one-sector guest under KVM
//! and waits, with a timeout, for it to write to its serial port. Nested KVM on some build
//! machines has a `/dev/kvm` whose guests never run a single instruction; the probe sees that,
//! kills its QEMU, and picks TCG with the reason.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtType {
    Kvm,
    Qemu,
}

impl VirtType {
    /// libvirt's domain type attribute.
    pub fn domain_type(self) -> &'static str {
        match self {
            VirtType::Kvm => "kvm",
            VirtType::Qemu => "qemu",
        }
    }
}

/// `--virt-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VirtTypeSetting {
    /// Probe: KVM when a test guest really runs under it, else QEMU (TCG).
    Auto,
    /// KVM, without probing.
    Kvm,
    /// QEMU's TCG emulation (slow; for machines without working KVM).
    Qemu,
}

/// What was chosen, and why (logged at start and shown by `vmd list --verbose`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtChoice {
    pub virt_type: VirtType,
    pub reason: String,
}

const MARKER: &[u8] = b"BKPROBE";

/// The probe guest: one boot sector (source: `probe/kvm-probe.S`) that goes through real mode,
/// timer interrupts, A20, string I/O, protected mode, long mode and 64 MiB of memory, printing
/// a letter after each step, then `BKPROBE`.
pub fn probe_boot_sector() -> &'static [u8] {
    include_bytes!("../probe/kvm-probe.bin")
}

/// What the kernel probe waits for: the kernel's first console line.
const KERNEL_MARKER: &[u8] = b"Linux version";

/// The kernel the probe boots when none is given: the host's own, where there is one.
pub fn default_probe_kernel() -> Option<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.pop().or_else(|| Some(std::path::PathBuf::from("/vmlinuz")).filter(|p| p.exists()))
}

/// Decides the virtualisation type for `setting`. Only `Auto` runs the probe.
pub async fn choose(
    setting: VirtTypeSetting,
    qemu: &Path,
    work_dir: &Path,
    timeout: Duration,
    kernel: Option<&Path>,
) -> VirtChoice {
    match setting {
        VirtTypeSetting::Kvm => {
            VirtChoice { virt_type: VirtType::Kvm, reason: "--virt-type kvm (not probed)".into() }
        }
        VirtTypeSetting::Qemu => VirtChoice {
            virt_type: VirtType::Qemu,
            reason: "--virt-type qemu: TCG emulation, as asked".into(),
        },
        VirtTypeSetting::Auto => match probe_kvm(qemu, work_dir, timeout, kernel).await {
            Ok(what) => VirtChoice {
                virt_type: VirtType::Kvm,
                reason: format!("auto: {what} ran under KVM"),
            },
            Err(why) => VirtChoice {
                virt_type: VirtType::Qemu,
                reason: format!(
                    "auto: KVM does not run guests here ({}): using QEMU's TCG emulation",
                    backroom_daemon::chain(&why)
                ),
            },
        },
    }
}

/// Boots the probe sector under KVM, then (when there is one) a Linux kernel: nested KVM on
/// some machines runs the first and hangs in the second. `Ok` says what ran; `Err` why KVM is
/// not usable.
pub async fn probe_kvm(
    qemu: &Path,
    work_dir: &Path,
    timeout: Duration,
    kernel: Option<&Path>,
) -> Result<String> {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Err(kvm("/dev/kvm does not exist", None));
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Err(kvm("/dev/kvm cannot be opened", Some(e)));
    }
    let img = work_dir.join(format!("kvm-probe-{}.img", std::process::id()));
    std::fs::write(&img, probe_boot_sector())
        .map_err(|e| kvm(format!("cannot write the probe image {}", img.display()), Some(e)))?;
    let drive = format!("file={},format=raw,if=ide", img.display());
    let sector =
        run_probe(qemu, "the probe boot sector", &["-m", "96", "-drive", &drive], MARKER, timeout)
            .await;
    let _ = std::fs::remove_file(&img);
    sector?;
    let Some(k) = kernel else { return Ok("the probe boot sector (no kernel to try)".into()) };
    let k = k.display().to_string();
    run_probe(
        qemu,
        &format!("the probe boot sector ran, but the kernel {k}"),
        &["-m", "256", "-kernel", &k, "-append", "console=ttyS0 earlyprintk=ttyS0"],
        KERNEL_MARKER,
        timeout,
    )
    .await?;
    Ok(format!("the probe boot sector and the kernel {k}"))
}

fn kvm(what: impl Into<String>, source: Option<std::io::Error>) -> Error {
    Error::Kvm { what: what.into(), source }
}

/// Runs QEMU under KVM with `args` until it prints `marker`; `guest` names what it boots.
async fn run_probe(
    qemu: &Path,
    guest: &str,
    args: &[&str],
    marker: &[u8],
    timeout: Duration,
) -> Result<()> {
    let mut child = tokio::process::Command::new(qemu)
        .args(["-accel", "kvm", "-machine", "pc", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            kvm(format!("{guest} could not run: {} failed to start", qemu.display()), Some(e))
        })?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(kvm(format!("{guest}: QEMU gave no stdout or stderr"), None));
    };
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 512];
        loop {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(marker.len()).any(|w| w == marker) {
                        return true;
                    }
                }
            }
        }
    };
    let outcome = tokio::time::timeout(timeout, read).await;
    // Our own child, by its handle: a guest stuck in KVM_RUN still dies of SIGKILL.
    let _ = child.start_kill();
    let _ = child.wait().await;
    let printed = String::from_utf8_lossy(&seen)
        .trim()
        .chars()
        .rev()
        .take(40)
        .collect::<String>()
        .chars()
        .rev()
        .collect::<String>();
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => {
            let mut e = String::new();
            let _ = err.read_to_string(&mut e).await;
            let last =
                e.lines().find(|l| !l.contains("warning")).unwrap_or("no message").to_string();
            Err(kvm(format!("{guest} died under KVM after printing `{printed}`: {last}"), None))
        }
        Err(_) => Err(kvm(
            format!(
                "{guest} hung under KVM (printed `{printed}`, then nothing for {}s)",
                timeout.as_secs()
            ),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_bootable() {
        let s = probe_boot_sector();
        assert_eq!(s.len(), 512);
        assert!(s.windows(7).any(|w| w == MARKER));
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }
}
