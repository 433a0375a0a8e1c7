//! A UEFI guest: `firmware: uefi` boots through OVMF (libvirt's firmware auto-selection, secure
//! boot off) under TCG, the guest sees UEFI, and teardown removes the domain's NVRAM file.
//! Its own test binary: `vmd teardown` removes every domain vmd owns on the host, so it must
//! not run beside the other one-shot tests.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_uefi_vm_boots_under_ovmf_and_teardown_removes_its_nvram() {
    require_libvirt();
    let g = guest();
    let tmp = tempfile::Builder::new().prefix("vmd-uefi").tempdir_in("/tmp").unwrap();
    let st = tmp.path().join("state").display().to_string();
    let vm = format!("{}u", uniq());
    let _domains = Domains(vec![vm.clone()]);
    let file = tmp.path().join("uefi.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: uefi}}\n\
             node: {{reserved: {{cpus: 0.5, memory: 1Gi}}, capacity: {{cpus: 4, memory: 4Gi}}}}\n\
             workloads:\n  - name: {vm}\n    kind: vm\n    cpus: 1\n    memory: 256Mi\n\
             \x20   firmware: uefi\n\
             \x20   boot: {{kernel: {{kernel: {k}, initrd: {i}, cmdline: \"console=ttyS0 quiet bk.marker=uefi\"}}}}\n",
            k = g.kernel(),
            i = g.initrd()
        ),
    )
    .unwrap();
    let o = vmd(&["apply", &file.display().to_string(), "--state-dir", &st, "--virt-type", "qemu"]);
    assert!(o.status.success(), "{}", text(&o));
    let xml = virsh(&["dumpxml", &format!("bk-{vm}")]);
    assert!(xml.contains("OVMF") && xml.contains("<nvram"), "libvirt chose OVMF: {xml}");
    let nvram = xml
        .lines()
        .find(|l| l.contains("<nvram"))
        .and_then(|l| l.split('>').nth(1))
        .and_then(|l| l.split('<').next())
        .unwrap()
        .to_string();
    let log =
        wait_direct_log(&vm, &st, "BACKROOM-GUEST-READY marker=uefi", Duration::from_secs(180));
    assert!(log.contains("BACKROOM-FIRMWARE uefi"), "the guest booted through UEFI: {log}");
    assert!(std::path::Path::new(&nvram).exists(), "the guest's NVRAM: {nvram}");

    let o = vmd(&["teardown", "--state-dir", &st, "--shutdown-timeout", "1s"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!virsh(&["list", "--all", "--name"]).contains(&format!("bk-{vm}")));
    assert!(!std::path::Path::new(&nvram).exists(), "the NVRAM file goes with the domain");
}
