//! From a profile's VM to the domain vmd wants ([`resolve`]), and from what is wanted and what
//! libvirt has to the list of steps ([`plan`]). Pure: the manager carries the steps out.

use std::collections::BTreeSet;
use std::path::PathBuf;

use backroom_profiles::{BootDisk, VmSpec};
use sha2::{Digest, Sha256};

use crate::admission::vm_vcpus;
use crate::error::{Error, Result};
use crate::hypervisor::Domain;
use crate::layout::Layout;
use crate::nics::Nic;
use crate::seed::{self, Seed};
use crate::virt_type::VirtType;
use crate::xml::{self, BootMode, DiskDevice, DomainSpec, Firmware, NicDevice};

/// A VM as vmd wants it, with every path and address resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredVm {
    pub name: String,
    pub spec: VmSpec,
    pub nics: Vec<Nic>,
    pub domain: DomainSpec,
    pub spec_hash: String,
    /// The boot disk image and the overlay made over it.
    pub root: Option<(BootDisk, PathBuf)>,
    pub data: Vec<(PathBuf, u64)>,
    pub seed: Option<(PathBuf, Seed)>,
}

impl DesiredVm {
    pub fn domain_name(&self) -> String {
        xml::domain_name(&self.name)
    }

    /// The files an update replaces (they are new when the image or the seed changes).
    pub fn replaceable_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.root.iter().map(|(_, p)| p.clone()).collect();
        v.extend(self.seed.iter().map(|(p, _)| p.clone()));
        v
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nics.iter().filter_map(|n| n.address.map(|a| a.to_string())).collect()
    }
}

/// The domain of `vm`. `image_id` identifies its boot image (see `Storage::image_identity`).
pub fn resolve(
    vm: &VmSpec,
    nics: Vec<Nic>,
    layout: &Layout,
    virt: VirtType,
    image_id: Option<&str>,
) -> Result<DesiredVm> {
    let name = vm.name.as_str().to_string();
    let bad = |message: String| Error::Spec { vm: name.clone(), message };
    let mut disks = Vec::new();
    let (boot, root) = match (&vm.boot.disk, &vm.boot.kernel) {
        (Some(d), None) => {
            let id = image_id.ok_or_else(|| bad("no identity for its boot image".into()))?;
            let size = d.size.map_or(0, |s| s.bytes());
            let key = format!("{id}\0{size}");
            let overlay_id = hex::encode(&Sha256::digest(key.as_bytes())[..6]);
            let overlay = layout.overlay(&name, &overlay_id);
            disks.push(DiskDevice {
                path: overlay.clone(),
                format: "qcow2".into(),
                readonly: false,
                serial: "root".into(),
            });
            (BootMode::Disk, Some((d.clone(), overlay)))
        }
        (None, Some(k)) => {
            for p in std::iter::once(&k.kernel).chain(k.initrd.iter()) {
                if !p.starts_with('/') {
                    return Err(bad(format!(
                        "kernel and initrd must be absolute paths on the node, not `{p}`"
                    )));
                }
            }
            (
                BootMode::Kernel {
                    kernel: k.kernel.clone(),
                    initrd: k.initrd.clone(),
                    cmdline: k.cmdline.clone(),
                },
                None,
            )
        }
        _ => return Err(bad("boot needs exactly one of disk and kernel".into())),
    };
    let mut data = Vec::new();
    for d in &vm.disks {
        let path = layout.data_disk(&name, d.name.as_str());
        disks.push(DiskDevice {
            path: path.clone(),
            format: "qcow2".into(),
            readonly: false,
            serial: d.name.as_str().into(),
        });
        data.push((path, d.size.bytes()));
    }
    let seed = seed::build(vm, &nics).map(|s| (layout.seed(&name, &s.id), s));
    if let Some((p, _)) = &seed {
        disks.push(DiskDevice {
            path: p.clone(),
            format: "raw".into(),
            readonly: true,
            serial: "cidata".into(),
        });
    }
    let domain = DomainSpec {
        workload: name.clone(),
        virt_type: virt,
        vcpus: vm_vcpus(vm.cpus.millis()),
        memory_kib: vm.memory.bytes().div_ceil(1024),
        firmware: match vm.firmware {
            backroom_profiles::Firmware::Bios => Firmware::Bios,
            backroom_profiles::Firmware::Uefi => Firmware::Uefi,
        },
        boot,
        disks,
        nics: nics
            .iter()
            .map(|n| NicDevice { bridge: n.bridge.clone(), mac: n.mac.clone() })
            .collect(),
        console_log: layout.console_log(&name),
    };
    let spec_hash = xml::spec_hash(&domain);
    Ok(DesiredVm { name, spec: vm.clone(), nics, domain, spec_hash, root, data, seed })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An Apply: make libvirt match the profile.
    Apply,
    /// vmd's own start: take over what exists; create what is missing and start what should
    /// run, but never redefine or remove a domain (that waits for the next Apply).
    Adopt,
    /// Read only: learn what exists (one-shot commands without the daemon); plans as Adopt,
    /// carries nothing out.
    Observe,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Define and start a VM that has no domain.
    Create(String),
    /// Redefine a VM whose definition changed: restart into it, roll back if it does not come up.
    Update(String),
    /// Only the profile revision changed: rewrite the metadata, nothing restarts.
    Retag(String),
    /// Start a defined VM that should run.
    Start(String),
    /// Nothing to do.
    Keep(String),
    /// Stop and undefine a VM the profile no longer has (its data disks are kept).
    Remove(String),
    /// In Adopt mode: the definition differs from the profile; left as is until an Apply.
    Differs(String),
    /// In Adopt mode: a domain of Backroom's that the applied profile does not have.
    Orphan(String),
}

/// The steps that make `observed` (libvirt's persistent domains) match `desired`.
/// Removals come first (they free memory for what follows). Fails, before any step, when a
/// wanted domain name is taken by a domain that is not Backroom's.
pub fn plan(
    desired: &[DesiredVm],
    observed: &[Domain],
    parked: &BTreeSet<String>,
    revision: &str,
    mode: Mode,
) -> Result<Vec<Action>> {
    let mut actions = Vec::new();
    let wanted: BTreeSet<String> = desired.iter().map(DesiredVm::domain_name).collect();
    for o in observed {
        if let Some(m) = &o.meta
            && !wanted.contains(&o.name)
        {
            actions.push(match mode {
                Mode::Apply => Action::Remove(m.workload.clone()),
                Mode::Adopt | Mode::Observe => Action::Orphan(m.workload.clone()),
            });
        }
    }
    for d in desired {
        let dn = d.domain_name();
        let Some(o) = observed.iter().find(|o| o.name == dn) else {
            actions.push(Action::Create(d.name.clone()));
            continue;
        };
        let Some(meta) = &o.meta else { return Err(Error::Foreign(dn)) };
        let running = o.state == crate::hypervisor::DomState::Running;
        let should_run = !parked.contains(&d.name);
        if meta.spec != d.spec_hash {
            actions.push(match mode {
                Mode::Apply => Action::Update(d.name.clone()),
                Mode::Adopt | Mode::Observe if !running && should_run => {
                    Action::Start(d.name.clone())
                }
                Mode::Adopt | Mode::Observe => Action::Differs(d.name.clone()),
            });
        } else if !running && should_run {
            if meta.revision != revision && mode == Mode::Apply {
                actions.push(Action::Retag(d.name.clone()));
            }
            actions.push(Action::Start(d.name.clone()));
        } else if meta.revision != revision && mode == Mode::Apply {
            actions.push(Action::Retag(d.name.clone()));
        } else {
            actions.push(Action::Keep(d.name.clone()));
        }
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::DomState;
    use crate::xml::Meta;

    fn profile() -> backroom_profiles::Profile {
        let t = "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: t}\n\
                 network:\n  segments:\n    - {name: cctv, internal: true, subnet: 10.9.20.0/24, address: 10.9.20.1/24}\n\
                 workloads:\n\
                 \x20 - name: nvr\n    kind: vm\n    cpus: 2\n    memory: 1Gi\n\
                 \x20   boot: {disk: {image: /img/nvr.qcow2, size: 8Gi}}\n\
                 \x20   disks: [{name: recordings, size: 20Gi}]\n\
                 \x20   networks: [{segment: cctv, address: 10.9.20.5}]\n\
                 \x20 - {name: pos, kind: vm, cpus: 1, memory: 512Mi, boot: {kernel: {kernel: /k, initrd: /i}}}\n";
        backroom_profiles::render_str("t.yaml", t).unwrap().profile
    }

    fn desired() -> Vec<DesiredVm> {
        let p = profile();
        let l = Layout::new("/s");
        p.vms()
            .map(|v| {
                let nics = crate::nics::derive(&p, v).unwrap();
                resolve(v, nics, &l, VirtType::Qemu, Some("img1")).unwrap()
            })
            .collect()
    }

    fn dom(d: &DesiredVm, state: DomState, rev: &str, spec: &str) -> Domain {
        Domain {
            name: d.domain_name(),
            state,
            meta: Some(Meta { workload: d.name.clone(), revision: rev.into(), spec: spec.into() }),
        }
    }

    #[test]
    fn resolves_disks_in_order_and_nics() {
        let d = desired();
        let nvr = &d[0];
        assert_eq!(nvr.name, "nvr");
        let paths: Vec<String> =
            nvr.domain.disks.iter().map(|d| d.path.display().to_string()).collect();
        assert!(paths[0].starts_with("/s/vms/nvr/root-"), "{paths:?}");
        assert_eq!(paths[1], "/s/vms/nvr/disk-recordings.qcow2");
        assert!(paths[2].starts_with("/s/vms/nvr/seed-"));
        assert_eq!(nvr.domain.nics[0].bridge, "br-cctv");
        assert_eq!(nvr.addresses(), vec!["10.9.20.5/24".to_string()]);
        assert_eq!(nvr.domain.vcpus, 2);
        assert_eq!(nvr.domain.memory_kib, 1 << 20);
        let pos = &d[1];
        assert!(pos.root.is_none() && pos.seed.is_none() && pos.domain.disks.is_empty());
    }

    #[test]
    fn a_new_image_means_a_new_overlay() {
        let p = profile();
        let v = p.vms().next().unwrap();
        let n = crate::nics::derive(&p, v).unwrap();
        let a = resolve(v, n.clone(), &Layout::new("/s"), VirtType::Qemu, Some("img1")).unwrap();
        let b = resolve(v, n, &Layout::new("/s"), VirtType::Qemu, Some("img2")).unwrap();
        assert_ne!(a.root.unwrap().1, b.root.unwrap().1);
        assert_ne!(a.spec_hash, b.spec_hash);
    }

    #[test]
    fn plans_create_keep_retag_update_remove() {
        let d = desired();
        let none = BTreeSet::new();
        let a = plan(&d, &[], &none, "r1", Mode::Apply).unwrap();
        assert_eq!(a, vec![Action::Create("nvr".into()), Action::Create("pos".into())]);

        let obs = vec![
            dom(&d[0], DomState::Running, "r1", &d[0].spec_hash),
            dom(&d[1], DomState::Running, "r0", "old"),
            Domain {
                name: "bk-gone".into(),
                state: DomState::Running,
                meta: Some(Meta {
                    workload: "gone".into(),
                    revision: "r0".into(),
                    spec: "x".into(),
                }),
            },
            Domain { name: "someone-elses".into(), state: DomState::Running, meta: None },
        ];
        let a = plan(&d, &obs, &none, "r1", Mode::Apply).unwrap();
        assert_eq!(
            a,
            vec![
                Action::Remove("gone".into()),
                Action::Keep("nvr".into()),
                Action::Update("pos".into())
            ]
        );
        let a = plan(&d, &obs, &none, "r1", Mode::Adopt).unwrap();
        assert_eq!(
            a,
            vec![
                Action::Orphan("gone".into()),
                Action::Keep("nvr".into()),
                Action::Differs("pos".into())
            ]
        );
        let obs = vec![dom(&d[0], DomState::ShutOff, "r0", &d[0].spec_hash)];
        let a = plan(&d[..1], &obs, &none, "r1", Mode::Apply).unwrap();
        assert_eq!(a, vec![Action::Retag("nvr".into()), Action::Start("nvr".into())]);
        let parked: BTreeSet<String> = ["nvr".to_string()].into();
        let a = plan(&d[..1], &obs, &parked, "r0", Mode::Apply).unwrap();
        assert_eq!(a, vec![Action::Keep("nvr".into())]);
    }

    #[test]
    fn refuses_a_foreign_domain_with_our_name() {
        let d = desired();
        let obs = vec![Domain { name: "bk-nvr".into(), state: DomState::Running, meta: None }];
        let e = plan(&d, &obs, &BTreeSet::new(), "r", Mode::Apply).unwrap_err();
        assert!(e.to_string().contains("not Backroom's"), "{e}");
    }
}
