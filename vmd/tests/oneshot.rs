//! The one-shot commands without a daemon, against the real libvirtd: `vmd apply` with NICs
//! derived from the profile (no netd), `vmd logs`, `vmd list`, refusals, `vmd teardown`; and
//! the KVM probe of `--virt-type auto`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use backroom_profiles::naming;
use common::*;

#[test]
fn virt_type_auto_probes_kvm_and_picks_qemu_here() {
    // On the build machines /dev/kvm exists but nested KVM never runs a guest.
    let kernel = guest().kernel();
    let t = Instant::now();
    let o = vmd(&[
        "virt-type",
        "--virt-type",
        "auto",
        "--kvm-probe-timeout",
        "10s",
        "--kvm-probe-kernel",
        &kernel,
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.starts_with("qemu: auto: KVM does not run guests here ("), "{out}");
    assert!(out.contains("using QEMU's TCG emulation"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(60), "the probe must not hang");
    let o = vmd(&["virt-type", "--virt-type", "kvm"]);
    assert!(text(&o).starts_with("kvm: --virt-type kvm (not probed)"));
}

#[test]
fn direct_apply_with_profile_nics_boots_and_refusals_change_nothing() {
    require_libvirt();
    let g = guest();
    let tmp = tempfile::Builder::new().prefix("vmd-oneshot").tempdir_in("/tmp").unwrap();
    let state = tmp.path().join("state");
    let st = state.display().to_string();
    let seg = uniq();
    let vm = format!("{seg}v");
    let _domains = Domains(vec![vm.clone()]);
    let net = format!("10.{}.9", 100 + std::process::id() % 100);
    let bridge = Bridge::new(&seg, &format!("{net}.1/24"));
    let profile = |address: &str, memory: &str| {
        format!(
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: oneshot}}\n\
             node: {{reserved: {{cpus: 0.5, memory: 1Gi}}, capacity: {{cpus: 4, memory: 4Gi}}}}\n\
             network:\n  segments:\n    - {{name: {seg}, internal: true, subnet: {net}.0/24, address: {net}.1/24, nat: true}}\n\
             workloads:\n  - name: {vm}\n    kind: vm\n    cpus: 1\n    memory: {memory}\n\
             \x20   boot: {{kernel: {{kernel: {k}, initrd: {i}, cmdline: \"console=ttyS0 quiet bk.marker=oneshot\"}}}}\n\
             \x20   networks: [{{segment: {seg}, address: {address}}}]\n",
            k = g.kernel(),
            i = g.initrd()
        )
    };
    let write = |name: &str, t: String| {
        let p = tmp.path().join(name);
        std::fs::write(&p, t).unwrap();
        p.display().to_string()
    };

    // Refused: does not fit (4Gi - 1Gi reserved < 3Gi + QEMU's overhead).
    let o = vmd(&[
        "apply",
        &write("big.yaml", profile(&format!("{net}.5"), "3Gi")),
        "--state-dir",
        &st,
        "--virt-type",
        "qemu",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("do not fit this node") && text(&o).contains("short"),
        "{}",
        text(&o)
    );
    // Refused: auto address without netd.
    let o = vmd(&[
        "apply",
        &write("auto.yaml", profile("auto", "256Mi")),
        "--state-dir",
        &st,
        "--virt-type",
        "qemu",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--netd-socket"), "{}", text(&o));
    assert!(
        !virsh(&["list", "--all", "--name"]).contains(&format!("bk-{vm}")),
        "a refusal defined a domain"
    );

    // Applied directly: bridge, MAC and address derived from the profile; the gateway of a
    // NAT segment is the host's address on it.
    let o = vmd(&[
        "apply",
        &write("ok.yaml", profile(&format!("{net}.5"), "256Mi")),
        "--state-dir",
        &st,
        "--virt-type",
        "qemu",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let log =
        wait_direct_log(&vm, &st, "BACKROOM-GUEST-READY marker=oneshot", Duration::from_secs(120));
    let mac = naming::mac_string(naming::mac(&vm, &seg));
    assert!(log.contains(&format!("macaddress: \"{mac}\"")), "{log}");
    assert!(log.contains(&format!("BACKROOM-ADDRESS eth0 {net}.5/24")), "{log}");
    assert!(log.contains(&format!("via: {net}.1")), "{log}");
    assert!(log.contains("BACKROOM-FIRMWARE bios"), "{log}");
    assert_eq!(bridge.ports().len(), 1);
    let o = vmd(&["list", "--state-dir", &st, "--direct", "--virt-type", "qemu"]);
    let l = text(&o);
    assert!(o.status.success(), "{l}");
    assert!(l.lines().any(|x| x.starts_with(&vm) && x.contains(" running ")), "{l}");

    // The interactive console attaches through libvirt and leaves on Ctrl-].
    let mut c = Command::new(VMD)
        .args(["console", &vm])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    {
        use std::io::Write;
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(&[0x1d]).unwrap();
    }
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(20) {
            let _ = c.kill();
            panic!("vmd console did not leave on Ctrl-]");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("connected to the serial console of {vm}")), "{}", text(&o));

    let o = vmd(&["teardown", "--state-dir", &st, "--shutdown-timeout", "1s"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!virsh(&["list", "--all", "--name"]).contains(&format!("bk-{vm}")));
    assert!(bridge.ports().is_empty());
}
