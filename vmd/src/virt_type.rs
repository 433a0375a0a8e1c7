//! Which accelerator VMs run with: KVM (production) or QEMU's TCG emulation (domain type
//! `qemu`). `auto` does not trust that `/dev/kvm` exists: it boots a one-sector guest under KVM
//! and waits, with a timeout, for it to write to its serial port. Nested KVM on some build
//! machines has a `/dev/kvm` whose guests never run a single instruction; the probe sees that,
//! kills its QEMU, and picks TCG with the reason.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

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

/// A boot sector that writes `BKPROBE\n` to COM1 and halts.
pub fn probe_boot_sector() -> Vec<u8> {
    let mut code = vec![0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    for &b in MARKER.iter().chain(b"\n") {
        code.extend_from_slice(&[0xB0, b, 0xEE]); // mov al, b; out dx, al
    }
    code.extend_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]); // cli; hlt; jmp $-1
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xAA]);
    code
}

/// Decides the virtualisation type for `setting`. Only `Auto` runs the probe.
pub async fn choose(
    setting: VirtTypeSetting,
    qemu: &Path,
    work_dir: &Path,
    timeout: Duration,
) -> VirtChoice {
    match setting {
        VirtTypeSetting::Kvm => {
            VirtChoice { virt_type: VirtType::Kvm, reason: "--virt-type kvm (not probed)".into() }
        }
        VirtTypeSetting::Qemu => VirtChoice {
            virt_type: VirtType::Qemu,
            reason: "--virt-type qemu: TCG emulation, as asked".into(),
        },
        VirtTypeSetting::Auto => match probe_kvm(qemu, work_dir, timeout).await {
            Ok(()) => VirtChoice {
                virt_type: VirtType::Kvm,
                reason: "auto: a test guest ran under KVM".into(),
            },
            Err(why) => VirtChoice {
                virt_type: VirtType::Qemu,
                reason: format!("auto: KVM does not run guests here ({why}): using QEMU's TCG emulation"),
            },
        },
    }
}

/// Boots the probe sector under KVM; `Err` says why KVM is not usable.
pub async fn probe_kvm(qemu: &Path, work_dir: &Path, timeout: Duration) -> Result<(), String> {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Err("/dev/kvm does not exist".into());
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Err(format!("/dev/kvm cannot be opened: {e}"));
    }
    let img = work_dir.join(format!("kvm-probe-{}.img", std::process::id()));
    std::fs::write(&img, probe_boot_sector())
        .map_err(|e| format!("cannot write the probe image {}: {e}", img.display()))?;
    let result = run_probe(qemu, &img, timeout).await;
    let _ = std::fs::remove_file(&img);
    result
}

async fn run_probe(qemu: &Path, img: &Path, timeout: Duration) -> Result<(), String> {
    let mut child = tokio::process::Command::new(qemu)
        .args(["-accel", "kvm", "-machine", "pc", "-m", "16", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot", "-drive"])
        .arg(format!("file={},format=raw,if=ide", img.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let mut out = child.stdout.take().ok_or("no stdout from the probe")?;
    let mut err = child.stderr.take().ok_or("no stderr from the probe")?;
    let read = async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(MARKER.len()).any(|w| w == MARKER) {
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
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => {
            let mut e = String::new();
            let _ = err.read_to_string(&mut e).await;
            let last = e.lines().last().unwrap_or("no message").to_string();
            Err(format!("QEMU with -accel kvm exited without running the test guest: {last}"))
        }
        Err(_) => Err(format!(
            "a test guest under KVM printed nothing within {}s (nested KVM that hangs?)",
            timeout.as_secs()
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
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }
}
