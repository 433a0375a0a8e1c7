//! A VM's disk files before its domain is defined or started: base image, root overlay, data
//! disks and seed made when missing, and those found there but unreadable (a power cut before
//! their creation reached the disk, or damage since) set aside and made again.
//!
//! Set aside means renamed `<file>.torn-<unix>` and kept, never deleted. A root overlay or a
//! seed is made again (the VM boots from its image as new). A data disk is made again only
//! when it is empty (it never held data); an unreadable data disk with bytes in it stops the
//! VM with an error, for a person to decide. Files a running domain holds open are left
//! alone: libvirt has them open, and the guest runs on what it opened.

use std::path::Path;

use crate::error::{Error, Result};
use crate::hypervisor::DomState;
use crate::manager::{Vmd, blocking, image_subject};
use crate::plan::DesiredVm;
use crate::storage::{DiskCheck, DiskKind};

impl Vmd {
    /// Makes the files a VM's definition points at: base image, overlay, data disks, seed.
    pub(crate) async fn prepare(&self, d: &DesiredVm) -> Result<Vec<String>> {
        self.prepare_files(d, None).await
    }

    /// [`Vmd::prepare`] for a domain about to start as it is defined: only the files its
    /// definition names.
    pub(crate) async fn prepare_defined(&self, d: &DesiredVm) -> Result<Vec<String>> {
        let (hv, dn) = (self.hv(), d.domain_name());
        let xml = blocking(move || hv.xml(&dn)).await?;
        self.prepare_files(d, Some(&xml)).await
    }

    async fn prepare_files(&self, d: &DesiredVm, defined: Option<&str>) -> Result<Vec<String>> {
        let storage = self.storage();
        let mut notes = Vec::new();
        storage.ensure_dir(&self.layout().vm_dir(&d.name))?;
        if let backroom_profiles::Boot { kernel: Some(k), .. } = &d.spec.boot {
            for p in std::iter::once(&k.kernel).chain(k.initrd.iter()) {
                // Inside the image folders, like a boot disk named by path.
                storage.confine(Path::new(p))?;
                if !storage.exists(Path::new(p)) {
                    return Err(Error::Spec {
                        vm: d.name.clone(),
                        message: format!("{p} does not exist on this node"),
                    });
                }
            }
        }
        let named = |p: &Path| defined.is_none_or(|x| x.contains(&p.display().to_string()));
        notes.extend(self.set_aside_torn(d, &named).await?);
        if let Some((disk, overlay)) = &d.root
            && named(overlay)
            && !storage.exists(overlay)
        {
            // A download that fails is a problem of its own (retried by the next apply).
            let base = storage.base_image(disk).await;
            self.report(&image_subject(&d.name), &d.name, &base);
            let base = base?;
            let (s, o, size) = (storage.clone(), overlay.clone(), disk.size.map(|s| s.bytes()));
            blocking(move || s.create_overlay(&base, &o, size)).await?;
            notes.push("new root overlay".to_string());
        }
        for (path, size) in d.data.iter().filter(|(p, _)| named(p)) {
            let (s, p, size) = (storage.clone(), path.clone(), *size);
            if blocking(move || s.ensure_data_disk(&p, size)).await? {
                notes.push(format!("data disk {} created", file_name(path)));
            }
        }
        if let Some((path, seed)) = &d.seed
            && named(path)
            && !storage.exists(path)
        {
            let (s, p, seed) = (storage.clone(), path.clone(), seed.clone());
            blocking(move || s.write_seed(&p, &seed)).await?;
            notes.push("cloud-init seed written".to_string());
        }
        Ok(notes)
    }

    /// Sets aside the files of `d` (those `named`) that are there but unreadable, unless its
    /// domain runs on them; one warning and one `disk_set_aside` event each.
    async fn set_aside_torn(
        &self,
        d: &DesiredVm,
        named: &(dyn Fn(&Path) -> bool + Sync),
    ) -> Result<Vec<String>> {
        let in_use = self.running_xml(d).await?;
        let held =
            |p: &Path| in_use.as_deref().is_some_and(|x| x.contains(&p.display().to_string()));
        let mut files: Vec<(&Path, DiskKind, &str)> = Vec::new();
        if let Some((_, p)) = &d.root {
            files.push((p, DiskKind::Qcow2, "root overlay"));
        }
        files.extend(d.data.iter().map(|(p, _)| (p.as_path(), DiskKind::Qcow2, "data disk")));
        if let Some((p, _)) = &d.seed {
            files.push((p, DiskKind::Iso, "cloud-init seed"));
        }
        let storage = self.storage();
        let mut notes = Vec::new();
        for (path, kind, what) in files {
            if !named(path) {
                continue;
            }
            let (s, p) = (storage.clone(), path.to_path_buf());
            let DiskCheck::Torn { why, empty } = blocking(move || s.check(&p, kind)).await? else {
                continue;
            };
            if held(path) {
                tracing::warn!(vm = %d.name, file = %path.display(), why, "a disk file looks unreadable, but the running VM holds it open: left alone");
                continue;
            }
            if what == "data disk" && !empty {
                return Err(Error::DataDiskUnreadable {
                    vm: d.name.clone(),
                    path: path.to_path_buf(),
                    why,
                });
            }
            let (s, p, now) = (storage.clone(), path.to_path_buf(), self.clock().now_unix());
            let aside = blocking(move || s.set_aside(&p, now)).await?;
            tracing::warn!(vm = %d.name, file = %path.display(), aside = %aside.display(), why, "a disk file is unreadable: set aside, made again");
            self.emit(
                &d.name,
                "disk_set_aside",
                format!(
                    "VM {}: its {what} {} was unreadable ({why}), as after a power cut: set aside as {} and made again",
                    d.name,
                    file_name(path),
                    file_name(&aside)
                ),
            );
            notes.push(format!("{what} {} was unreadable: set aside", file_name(path)));
        }
        Ok(notes)
    }

    /// The definition of `d`'s domain when it runs (its files are open), else `None`.
    async fn running_xml(&self, d: &DesiredVm) -> Result<Option<String>> {
        let (hv, dn) = (self.hv(), d.domain_name());
        let running = blocking(move || hv.get(&dn))
            .await?
            .is_some_and(|x| matches!(x.state, DomState::Running | DomState::Stopping));
        if !running {
            return Ok(None);
        }
        let (hv, dn) = (self.hv(), d.domain_name());
        Ok(Some(blocking(move || hv.xml(&dn)).await?))
    }
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|f| f.to_str()).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;
    use std::sync::Arc;

    use backroom_daemon::ManualClock;

    use crate::hypervisor::{Hypervisor, MemHypervisor};
    use crate::layout::Layout;
    use crate::nics::MemNics;
    use crate::storage::MemStorage;
    use crate::virt_type::VirtTypeSetting;
    use crate::{Config, Deps, Error, Vmd};

    /// 2026-12-01T00:00:00Z.
    const T0: i64 = 1_795_996_800_000;

    const PROFILE: &str = "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: t}\n\
         node: {reserved: {cpus: 1, memory: 1Gi}, capacity: {cpus: 4, memory: 8Gi}}\n\
         workloads:\n  - {name: nvr, kind: vm, cpus: 1, memory: 1Gi, boot: {disk: {image: /img/a.qcow2}}, disks: [{name: rec, size: 1Gi}]}\n";

    struct Node {
        hv: Arc<MemHypervisor>,
        storage: Arc<MemStorage>,
        dir: tempfile::TempDir,
        clock: ManualClock,
    }

    impl Node {
        fn new() -> Node {
            Node {
                hv: Arc::new(MemHypervisor::default()),
                storage: Arc::new(MemStorage::default()),
                dir: tempfile::tempdir().unwrap(),
                clock: ManualClock::new(T0),
            }
        }
        /// A vmd process on this node (a new one is a restart), on the manual clock.
        fn vmd(&self) -> Vmd {
            self.vmd_on(Arc::new(self.clock.clone()))
        }

        /// On the system clock with short waits, for an update (which waits for the new VM).
        fn vmd_real(&self) -> Vmd {
            self.vmd_on(backroom_daemon::clock::system())
        }

        fn vmd_on(&self, clock: backroom_daemon::SharedClock) -> Vmd {
            let deps = Deps {
                hypervisor: self.hv.clone(),
                storage: self.storage.clone(),
                nics: Arc::new(MemNics::default()),
            };
            let cfg = Config {
                virt_type: VirtTypeSetting::Qemu,
                settle: std::time::Duration::from_millis(300),
                shutdown_timeout: std::time::Duration::from_millis(300),
                ..Config::default()
            };
            Vmd::with_clock(deps, Layout::new(self.dir.path()), cfg, clock).unwrap()
        }
        fn file(&self, prefix: &str) -> (PathBuf, String) {
            let dir = Layout::new(self.dir.path()).vm_dir("nvr");
            self.storage
                .files
                .lock()
                .unwrap()
                .iter()
                .find(|(p, _)| {
                    p.parent() == Some(dir.as_path())
                        && p.file_name().unwrap().to_str().unwrap().starts_with(prefix)
                        && !p.display().to_string().contains(".torn-")
                })
                .map(|(p, w)| (p.clone(), w.clone()))
                .unwrap_or_else(|| panic!("no {prefix}* file"))
        }
        fn put(&self, p: &std::path::Path, what: &str) {
            self.storage.files.lock().unwrap().insert(p.to_path_buf(), what.into());
        }
        fn get(&self, p: &std::path::Path) -> Option<String> {
            self.storage.files.lock().unwrap().get(p).cloned()
        }
        /// The power goes: QEMU is gone with the host.
        fn power_cut(&self) {
            self.hv.destroy("bk-nvr").unwrap();
        }
    }

    fn profile() -> backroom_profiles::Rendered {
        backroom_profiles::render_str("t.yaml", PROFILE).unwrap()
    }

    #[tokio::test]
    async fn a_zero_length_overlay_is_set_aside_and_made_again_before_the_vm_starts() {
        let node = Node::new();
        node.vmd().apply(&profile()).await.unwrap();
        let (overlay, what) = node.file("root-");
        assert_eq!(what, "overlay of /img/a.qcow2");
        let (disk, _) = node.file("disk-rec");
        // A power cut right after the creations: both renamed into place, neither written.
        node.power_cut();
        node.put(&overlay, "");
        node.put(&disk, "");

        let v = node.vmd();
        let mut events = v.subscribe();
        let lines = v.adopt().await.unwrap();
        assert_eq!(lines, ["nvr: started"], "{lines:?}");
        assert_eq!(node.get(&overlay).as_deref(), Some("overlay of /img/a.qcow2"), "made again");
        assert_eq!(
            node.get(&disk).as_deref(),
            Some("disk of 1073741824"),
            "an empty data disk made again"
        );
        let now = T0 / 1000;
        let aside = crate::storage::torn_name(&overlay, now);
        assert_eq!(node.get(&aside).as_deref(), Some(""), "the torn overlay kept, set aside");
        assert!(node.get(&crate::storage::torn_name(&disk, now)).is_some());
        let mut told = Vec::new();
        while let Ok(e) = events.try_recv() {
            if e.kind == "disk_set_aside" {
                told.push(e.message);
            }
        }
        assert_eq!(told.len(), 2, "one event per file: {told:?}");
        assert!(told[0].contains("root overlay") && told[0].contains(".torn-"), "{told:?}");
        assert!(node.hv.calls().iter().any(|c| c == "start bk-nvr"));
    }

    #[tokio::test]
    async fn a_running_vm_keeps_its_files_and_a_data_disk_with_bytes_is_never_replaced() {
        let node = Node::new();
        let v = node.vmd_real();
        v.apply(&profile()).await.unwrap();
        let (overlay, _) = node.file("root-");
        let (disk, _) = node.file("disk-rec");
        // Running: libvirt holds the files open; vmd leaves them alone, whatever they look like.
        node.put(&overlay, "");
        let v = node.vmd_real();
        v.adopt().await.unwrap();
        let lines = v.apply(&profile_with_memory("2Gi")).await.unwrap();
        assert_eq!(lines, ["nvr: updated"]);
        assert!(
            !node
                .storage
                .files
                .lock()
                .unwrap()
                .keys()
                .any(|p| p.display().to_string().contains(".torn-")),
            "nothing set aside under a running VM"
        );

        // Stopped, with a data disk that holds bytes but is not an image: refused, untouched.
        node.power_cut();
        node.put(&overlay, "overlay of /img/a.qcow2");
        node.put(&disk, "torn: recordings");
        let v = node.vmd();
        let e = v.adopt().await.unwrap_err();
        let text = crate::error::Error::to_string(&e);
        assert!(matches!(e, Error::Failed { .. }), "{text}");
        assert!(text.contains("data disk") && text.contains("does not replace"), "{text}");
        assert_eq!(node.get(&disk).as_deref(), Some("torn: recordings"));
        assert!(
            !node
                .hv
                .calls()
                .iter()
                .skip_while(|c| *c != "destroy bk-nvr")
                .any(|c| c == "start bk-nvr")
        );
    }

    fn profile_with_memory(m: &str) -> backroom_profiles::Rendered {
        backroom_profiles::render_str(
            "t.yaml",
            &PROFILE.replace("memory: 1Gi, boot", &format!("memory: {m}, boot")),
        )
        .unwrap()
    }
}
