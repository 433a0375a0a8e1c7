//! The libvirt domain XML of a VM, as a pure function of its resolved spec, and the reading back
//! of the metadata element that marks a domain as Backroom's.
//!
//! Everything the XML says comes from [`DomainSpec`]: nothing is looked up here, so the same
//! spec always gives the same text (golden tests below and in `tests/golden/`).

use std::fmt::Write;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::virt_type::VirtType;

/// The XML namespace of vmd's metadata element.
pub const METADATA_NS: &str = "urn:backroom:vmd:1";
/// The prefix vmd writes (libvirt keeps it when it gives the XML back).
pub const METADATA_PREFIX: &str = "backroom";
/// Domains vmd makes are named `bk-<workload>`.
pub const DOMAIN_PREFIX: &str = "bk-";

pub fn domain_name(workload: &str) -> String {
    format!("{DOMAIN_PREFIX}{workload}")
}

/// A domain's UUID, derived from its workload name: libvirt only lets a definition replace
/// another with the same UUID, and a derived one keeps the XML a pure function of the spec.
pub fn domain_uuid(workload: &str) -> String {
    let h = Sha256::digest(format!("backroom-vmd-domain\0{workload}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50; // version 5 style (name-based)
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let x = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// Boot from the first disk.
    Disk,
    /// Boot a kernel and initrd directly.
    Kernel { kernel: String, initrd: Option<String>, cmdline: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskDevice {
    pub path: PathBuf,
    /// `qcow2` or `raw`.
    pub format: String,
    pub readonly: bool,
    /// What the guest sees as the disk's serial number (at most 20 characters).
    pub serial: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicDevice {
    pub bridge: String,
    pub mac: String,
}

/// Everything a domain definition says, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainSpec {
    pub workload: String,
    pub virt_type: VirtType,
    pub vcpus: u32,
    pub memory_kib: u64,
    pub firmware: Firmware,
    pub boot: BootMode,
    /// In order: vda, vdb, …
    pub disks: Vec<DiskDevice>,
    pub nics: Vec<NicDevice>,
    pub console_log: PathBuf,
}

/// What vmd records in a domain's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub workload: String,
    /// The profile revision the definition came from.
    pub revision: String,
    /// sha256 of the definition without its metadata: equal hashes, equal domains.
    pub spec: String,
}

/// The domain XML of `spec`, with metadata naming `revision`.
pub fn domain_xml(spec: &DomainSpec, revision: &str) -> String {
    let hash = spec_hash(spec);
    render(
        spec,
        Some(&Meta { workload: spec.workload.clone(), revision: revision.into(), spec: hash }),
    )
}

/// The hash vmd compares to decide whether a domain must be redefined: that of the XML
/// without metadata, so a new profile revision that does not change the VM does not restart it.
pub fn spec_hash(spec: &DomainSpec) -> String {
    hex::encode(Sha256::digest(render(spec, None).as_bytes()))
}

fn render(s: &DomainSpec, meta: Option<&Meta>) -> String {
    let mut x = String::with_capacity(2048);
    let virt = s.virt_type.domain_type();
    let _ = writeln!(x, "<domain type='{virt}'>");
    let _ = writeln!(x, "  <name>{}</name>", esc(&domain_name(&s.workload)));
    let _ = writeln!(x, "  <uuid>{}</uuid>", domain_uuid(&s.workload));
    if let Some(m) = meta {
        let _ = writeln!(x, "  <metadata>");
        let _ = writeln!(x, "    <{METADATA_PREFIX}:vm xmlns:{METADATA_PREFIX}='{METADATA_NS}'>");
        for (k, v) in [("workload", &m.workload), ("revision", &m.revision), ("spec", &m.spec)] {
            let _ = writeln!(x, "      <{METADATA_PREFIX}:{k}>{}</{METADATA_PREFIX}:{k}>", esc(v));
        }
        let _ = writeln!(x, "    </{METADATA_PREFIX}:vm>");
        let _ = writeln!(x, "  </metadata>");
    }
    let _ = writeln!(x, "  <memory unit='KiB'>{}</memory>", s.memory_kib);
    let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", s.vcpus);
    match s.firmware {
        Firmware::Bios => x.push_str("  <os>\n"),
        Firmware::Uefi => {
            x.push_str("  <os firmware='efi'>\n");
            x.push_str("    <firmware>\n      <feature enabled='no' name='secure-boot'/>\n    </firmware>\n");
        }
    }
    x.push_str("    <type arch='x86_64' machine='pc'>hvm</type>\n");
    match &s.boot {
        BootMode::Disk => x.push_str("    <boot dev='hd'/>\n"),
        BootMode::Kernel { kernel, initrd, cmdline } => {
            let _ = writeln!(x, "    <kernel>{}</kernel>", esc(kernel));
            if let Some(i) = initrd {
                let _ = writeln!(x, "    <initrd>{}</initrd>", esc(i));
            }
            if let Some(c) = cmdline {
                let _ = writeln!(x, "    <cmdline>{}</cmdline>", esc(c));
            }
        }
    }
    x.push_str("  </os>\n");
    x.push_str("  <features>\n    <acpi/>\n    <apic/>\n  </features>\n");
    match s.virt_type {
        VirtType::Kvm => x.push_str("  <cpu mode='host-passthrough'/>\n"),
        VirtType::Qemu => {}
    }
    x.push_str("  <clock offset='utc'/>\n");
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n");
    x.push_str("  <on_reboot>restart</on_reboot>\n");
    // vmd, not libvirt, decides what a crash leads to (restart policy with backoff).
    x.push_str("  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    for (i, d) in s.disks.iter().enumerate() {
        let _ = writeln!(x, "    <disk type='file' device='disk'>");
        let discard = if d.readonly { "" } else { " discard='unmap'" };
        let _ = writeln!(x, "      <driver name='qemu' type='{}'{discard}/>", esc(&d.format));
        let _ = writeln!(x, "      <source file='{}'/>", esc(&d.path.display().to_string()));
        let _ = writeln!(x, "      <target dev='{}' bus='virtio'/>", target_dev(i));
        if d.readonly {
            x.push_str("      <readonly/>\n");
        }
        let serial: String = d.serial.chars().take(20).collect();
        let _ = writeln!(x, "      <serial>{}</serial>", esc(&serial));
        x.push_str("    </disk>\n");
    }
    for (i, n) in s.nics.iter().enumerate() {
        x.push_str("    <interface type='bridge'>\n");
        let _ = writeln!(x, "      <source bridge='{}'/>", esc(&n.bridge));
        let _ = writeln!(x, "      <mac address='{}'/>", esc(&n.mac));
        let tap = backroom_profiles::naming::vm_tap(&s.workload, i);
        let _ = writeln!(x, "      <target dev='{}'/>", esc(&tap));
        x.push_str("      <model type='virtio'/>\n");
        x.push_str("    </interface>\n");
    }
    x.push_str("    <serial type='pty'>\n");
    let _ = writeln!(
        x,
        "      <log file='{}' append='on'/>",
        esc(&s.console_log.display().to_string())
    );
    x.push_str("      <target port='0'/>\n");
    x.push_str("    </serial>\n");
    x.push_str(
        "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n",
    );
    x.push_str("    <memballoon model='none'/>\n");
    x.push_str("    <rng model='virtio'>\n      <backend model='random'>/dev/urandom</backend>\n    </rng>\n");
    x.push_str("  </devices>\n");
    x.push_str("</domain>\n");
    x
}

/// `vda`, `vdb`, … `vdz`, then `vdaa` … `vdzz`, then `vdaaa`…: the kernel's own naming of
/// virtio disks (bijective base 26), so it never runs out of letters.
pub fn target_dev(i: usize) -> String {
    let mut letters = Vec::new();
    let mut n = i + 1;
    while n > 0 {
        n -= 1;
        // n % 26 < 26: always an ASCII lower-case letter.
        letters.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    letters.reverse();
    format!("vd{}", letters.into_iter().collect::<String>())
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

fn unesc(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// Reads vmd's metadata out of a domain's XML (or out of the metadata element alone, as
/// `virDomainGetMetadata` returns it). `None`: the domain is not Backroom's.
pub fn parse_meta(xml: &str) -> Option<Meta> {
    // The element is found by its namespace, whatever prefix libvirt wrote it with.
    let ns_at = xml.find(METADATA_NS)?;
    let open = xml[..ns_at].rfind('<')?;
    let scope = &xml[open..];
    Some(Meta {
        workload: element_text(scope, "workload")?,
        revision: element_text(scope, "revision").unwrap_or_default(),
        spec: element_text(scope, "spec").unwrap_or_default(),
    })
}

/// Reads the element `virDomainGetMetadata` returns for vmd's namespace (libvirt already
/// picked it by namespace and gives it back without one).
pub fn parse_meta_element(xml: &str) -> Option<Meta> {
    Some(Meta {
        workload: element_text(xml, "workload")?,
        revision: element_text(xml, "revision").unwrap_or_default(),
        spec: element_text(xml, "spec").unwrap_or_default(),
    })
}

/// The text of the first element whose local name is `local`.
fn element_text(xml: &str, local: &str) -> Option<String> {
    let mut rest = xml;
    while let Some(lt) = rest.find('<') {
        let after = &rest[lt + 1..];
        let gt = after.find('>')?;
        let tag = &after[..gt];
        let name = tag.split_whitespace().next().unwrap_or("");
        let bare = name.rsplit(':').next().unwrap_or(name);
        if bare == local && !tag.starts_with('/') && !tag.ends_with('/') {
            let body = &after[gt + 1..];
            let end = body.find('<')?;
            return Some(unesc(body[..end].trim()));
        }
        rest = &after[gt + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> DomainSpec {
        DomainSpec {
            workload: "nvr".into(),
            virt_type: VirtType::Qemu,
            vcpus: 2,
            memory_kib: 4 << 20,
            firmware: Firmware::Bios,
            boot: BootMode::Disk,
            disks: vec![
                DiskDevice {
                    path: "/var/lib/backroom/vmd/vms/nvr/root-0123456789ab.qcow2".into(),
                    format: "qcow2".into(),
                    readonly: false,
                    serial: "root".into(),
                },
                DiskDevice {
                    path: "/var/lib/backroom/vmd/vms/nvr/disk-recordings.qcow2".into(),
                    format: "qcow2".into(),
                    readonly: false,
                    serial: "recordings".into(),
                },
                DiskDevice {
                    path: "/var/lib/backroom/vmd/vms/nvr/seed-abcdef012345.iso".into(),
                    format: "raw".into(),
                    readonly: true,
                    serial: "cidata".into(),
                },
            ],
            nics: vec![NicDevice { bridge: "br-cctv".into(), mac: "02:42:9d:1c:07:5e".into() }],
            console_log: "/var/lib/backroom/vmd/vms/nvr/console.log".into(),
        }
    }

    fn golden(name: &str, text: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
        if std::env::var_os("VMD_BLESS").is_some() {
            std::fs::write(&path, text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("golden file {} unreadable ({e}); VMD_BLESS=1 writes it", path.display())
        });
        assert_eq!(text, want, "domain XML differs from {}", path.display());
    }

    #[test]
    fn disk_vm_bios_qemu_matches_golden() {
        golden("nvr-bios-qemu.xml", &domain_xml(&sample(), "rev1"));
    }

    #[test]
    fn kernel_vm_uefi_kvm_matches_golden() {
        let mut s = sample();
        s.workload = "pos-backoffice".into();
        s.virt_type = VirtType::Kvm;
        s.firmware = Firmware::Uefi;
        s.boot = BootMode::Kernel {
            kernel: "/opt/k/vmlinuz".into(),
            initrd: Some("/opt/k/initrd.img".into()),
            cmdline: Some("console=ttyS0 quiet bk.marker=a&b".into()),
        };
        s.disks.truncate(1);
        s.nics.push(NicDevice { bridge: "br-pos".into(), mac: "02:42:00:00:00:01".into() });
        golden("pos-uefi-kvm-kernel.xml", &domain_xml(&s, "rev2"));
    }

    #[test]
    fn revision_does_not_change_the_spec_hash_but_content_does() {
        let a = sample();
        let x1 = domain_xml(&a, "r1");
        let x2 = domain_xml(&a, "r2");
        assert_ne!(x1, x2);
        assert_eq!(parse_meta(&x1).unwrap().spec, parse_meta(&x2).unwrap().spec);
        let mut b = sample();
        b.vcpus = 3;
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }

    #[test]
    fn metadata_reads_back_whatever_the_prefix() {
        let m = parse_meta(&domain_xml(&sample(), "r1")).unwrap();
        assert_eq!(m.workload, "nvr");
        assert_eq!(m.revision, "r1");
        assert_eq!(m.spec.len(), 64);
        let other = "<metadata><x:vm xmlns:x=\"urn:backroom:vmd:1\"><x:workload>a&amp;b</x:workload>\
                     <x:revision>r</x:revision><x:spec>s</x:spec></x:vm></metadata>";
        let m = parse_meta(other).unwrap();
        assert_eq!((m.workload.as_str(), m.revision.as_str(), m.spec.as_str()), ("a&b", "r", "s"));
        assert_eq!(parse_meta("<domain><name>theirs</name></domain>"), None);
        let m = parse_meta_element(
            "<vm>\n  <workload>disk</workload>\n  <revision>r</revision>\n</vm>",
        )
        .unwrap();
        assert_eq!((m.workload.as_str(), m.revision.as_str()), ("disk", "r"));
    }

    #[test]
    fn target_devices() {
        assert_eq!(target_dev(0), "vda");
        assert_eq!(target_dev(25), "vdz");
        assert_eq!(target_dev(26), "vdaa");
        assert_eq!(target_dev(51), "vdaz");
        assert_eq!(target_dev(52), "vdba");
        // Past the two-letter names (which used to panic): the kernel's three-letter ones.
        assert_eq!(target_dev(701), "vdzz");
        assert_eq!(target_dev(702), "vdaaa");
        assert_eq!(target_dev(703), "vdaab");
        let names: std::collections::BTreeSet<String> = (0..20_000).map(target_dev).collect();
        assert_eq!(names.len(), 20_000, "every disk gets a name of its own");
    }
}
