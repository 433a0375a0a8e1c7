//! A VM's disks on the node: base images (through [`ImageCache`]), qcow2 overlays and data
//! disks (`qemu-img`), and cloud-init seeds (`xorriso`, an ISO 9660 volume labelled `cidata`).
//! One trait, a real implementation on the filesystem and an in-memory one for unit tests.
//!
//! Every file is made under a temporary name and installed with
//! `backroom_daemon::fs::install` (fsync, rename, fsync of the folder). A file that is there
//! but is not a readable image (cut short by a power cut before that rule, or damaged since)
//! is told apart by [`Storage::check`]; the manager sets it aside and makes it again.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use backroom_profiles::BootDisk;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::images::ImageCache;
use crate::layout::Layout;
use crate::seed::Seed;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImage {
    pub path: PathBuf,
    /// `qcow2` or `raw`, as `qemu-img info` reads it.
    pub format: String,
    pub virtual_size: u64,
}

/// What a disk file of a VM is meant to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// A qcow2 image (root overlays and data disks).
    Qcow2,
    /// A cloud-init seed: an ISO 9660 volume.
    Iso,
}

/// What [`Storage::check`] found at a disk's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskCheck {
    Missing,
    Usable,
    /// There, but not a readable image of its kind. `empty`: zero length (never held data).
    Torn {
        why: String,
        empty: bool,
    },
}

pub trait Storage: Send + Sync {
    /// What identifies a boot image without reading it: its sha256 when the profile gives
    /// one, else its path, size and modification time.
    fn image_identity(&self, disk: &BootDisk) -> Result<String>;
    /// The verified, cached base image of `disk` (downloads it when needed).
    fn base_image<'a>(&'a self, disk: &'a BootDisk) -> BoxFuture<'a, Result<BaseImage>>;
    /// A qcow2 overlay at `path` over `base`, of `size` bytes (the base's size when `None`).
    fn create_overlay(&self, base: &BaseImage, path: &Path, size: Option<u64>) -> Result<()>;
    /// A persistent qcow2 disk of `size` bytes at `path`, unless one is there. True: created.
    fn ensure_data_disk(&self, path: &Path, size: u64) -> Result<bool>;
    fn write_seed(&self, path: &Path, seed: &Seed) -> Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// A file a profile names for QEMU to read (a direct-boot kernel or initrd): refused unless
    /// it is a regular file inside the image folders, as for a boot disk named by path (QEMU
    /// loads it into the guest, which could read the node's key otherwise).
    fn confine(&self, path: &Path) -> Result<PathBuf>;
    /// Whether the file at `path` is a readable image of `kind` (`qemu-img info` for qcow2, the
    /// ISO 9660 signature for a seed). Fails only when it cannot tell (e.g. no `qemu-img`).
    fn check(&self, path: &Path, kind: DiskKind) -> Result<DiskCheck>;
    /// Renames `path` to `<path>.torn-<unix>` (kept for a person to look at), durably; returns
    /// the new name.
    fn set_aside(&self, path: &Path, unix: i64) -> Result<PathBuf>;
    /// Makes a VM's folder (virtlogd writes its console log there).
    fn ensure_dir(&self, dir: &Path) -> Result<()>;
    fn remove(&self, path: &Path) -> Result<()>;
    /// The files in a VM's folder.
    fn list(&self, dir: &Path) -> Vec<PathBuf>;
}

/// The real disks, under the state folder.
#[derive(Clone, Debug)]
pub struct FsStorage {
    layout: Layout,
    images: ImageCache,
}

impl FsStorage {
    pub fn new(layout: Layout) -> Result<Self> {
        Self::with_image_ca(layout, None)
    }

    /// Image downloads also trust the PEM certificates in `ca` (see [`ImageCache::with_ca`]).
    pub fn with_image_ca(layout: Layout, ca: Option<&Path>) -> Result<Self> {
        Ok(FsStorage { images: ImageCache::with_ca(layout.clone(), ca)?, layout })
    }

    /// Boot images named by a node path are taken only from inside `folders` (see
    /// [`ImageCache::with_folders`]).
    pub fn with_image_folders(mut self, folders: Vec<PathBuf>) -> Self {
        self.images = self.images.with_folders(folders);
        self
    }

    pub fn images(&self) -> &ImageCache {
        &self.images
    }

    /// Makes a VM folder that QEMU (another user, through libvirt) can traverse.
    fn ensure_parent(&self, path: &Path) -> Result<()> {
        let Some(dir) = path.parent() else { return Ok(()) };
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut d = Some(dir);
        while let Some(p) = d {
            if !p.starts_with(self.layout.root()) {
                break;
            }
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711));
            d = p.parent();
        }
        Ok(())
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out =
        cmd.output().map_err(|source| Error::CommandSpawn { command: shown.clone(), source })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return Err(Error::Command {
            command: shown,
            message: format!("{} ({})", msg.trim(), out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs a finished temporary file at `path` crash-safely (see the module's header).
fn install(tmp: &Path, path: &Path) -> Result<()> {
    backroom_daemon::fs::install(tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::io(format!("moving {} to {}", tmp.display(), path.display()), e)
    })
}

/// Where a torn file is set aside: `<name>.torn-<unix>` beside it.
pub fn torn_name(path: &Path, unix: i64) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".torn-{unix}"));
    path.with_file_name(name)
}

/// `qemu-img info` of a file: (format, virtual size).
pub fn image_info(path: &Path) -> Result<(String, u64)> {
    let out = run(Command::new("qemu-img").args(["info", "--output=json", "-U"]).arg(path))?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::Image {
        image: path.display().to_string(),
        message: format!("qemu-img info gave no JSON: {e}"),
    })?;
    let format = v["format"].as_str().unwrap_or("raw").to_string();
    let size = v["virtual-size"].as_u64().unwrap_or(0);
    Ok((format, size))
}

impl Storage for FsStorage {
    fn image_identity(&self, disk: &BootDisk) -> Result<String> {
        // Checked first, so that a refused path changes nothing (no VM, no copy).
        let local =
            if disk.is_url() { None } else { Some(self.images.confine(Path::new(&disk.image))?) };
        if let Some(s) = &disk.sha256 {
            return Ok(s.as_str().to_string());
        }
        let m = std::fs::metadata(local.as_deref().unwrap_or(Path::new(&disk.image)))
            .map_err(|e| Error::io(format!("reading the boot image {}", disk.image), e))?;
        let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let id = format!("{}\0{}\0{:?}", disk.image, m.len(), mtime);
        Ok(format!("path-{}", hex::encode(Sha256::digest(id.as_bytes()))))
    }

    fn base_image<'a>(&'a self, disk: &'a BootDisk) -> BoxFuture<'a, Result<BaseImage>> {
        Box::pin(async move {
            let path = if disk.is_url() {
                let sha = disk.sha256.as_ref().ok_or_else(|| Error::Image {
                    image: disk.image.clone(),
                    message: "a URL image needs sha256".into(),
                })?;
                self.images.fetch_url(&disk.image, sha.as_str()).await?
            } else {
                let sha = disk.sha256.as_ref().map(|s| s.as_str());
                self.images.fetch_path(Path::new(&disk.image), sha).await?
            };
            let p = path.clone();
            let (format, virtual_size) = tokio::task::spawn_blocking(move || image_info(&p))
                .await
                .map_err(|e| Error::io("qemu-img info", std::io::Error::other(e)))??;
            let _ = self.ensure_parent(&path);
            Ok(BaseImage { path, format, virtual_size })
        })
    }

    fn create_overlay(&self, base: &BaseImage, path: &Path, size: Option<u64>) -> Result<()> {
        if let Some(s) = size
            && s < base.virtual_size
        {
            return Err(Error::Image {
                image: base.path.display().to_string(),
                message: format!(
                    "the root disk size {s} bytes is smaller than the image ({} bytes)",
                    base.virtual_size
                ),
            });
        }
        self.ensure_parent(path)?;
        let tmp = path.with_extension("qcow2.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2", "-F", &base.format, "-b"])
            .arg(&base.path)
            .arg(&tmp);
        if let Some(s) = size {
            cmd.arg(s.to_string());
        }
        run(&mut cmd)?;
        install(&tmp, path)
    }

    fn ensure_data_disk(&self, path: &Path, size: u64) -> Result<bool> {
        if path.exists() {
            return Ok(false);
        }
        self.ensure_parent(path)?;
        let tmp = path.with_extension("qcow2.tmp");
        let _ = std::fs::remove_file(&tmp);
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&tmp)
            .arg(size.to_string()))?;
        install(&tmp, path)?;
        Ok(true)
    }

    fn write_seed(&self, path: &Path, seed: &Seed) -> Result<()> {
        self.ensure_parent(path)?;
        let dir = path.with_extension("d");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        for (name, text) in [
            ("meta-data", &seed.meta_data),
            ("user-data", &seed.user_data),
            ("network-config", &seed.network_config),
        ] {
            std::fs::write(dir.join(name), text)
                .map_err(|e| Error::io(format!("writing {}/{name}", dir.display()), e))?;
        }
        let tmp = path.with_extension("iso.tmp");
        let _ = std::fs::remove_file(&tmp);
        let res = run(Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o"])
            .arg(&tmp)
            .arg(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        res?;
        install(&tmp, path)
    }

    fn confine(&self, path: &Path) -> Result<PathBuf> {
        self.images().confine(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn check(&self, path: &Path, kind: DiskKind) -> Result<DiskCheck> {
        let m = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DiskCheck::Missing),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        if m.len() == 0 {
            return Ok(DiskCheck::Torn { why: "it is empty (zero length)".into(), empty: true });
        }
        let torn = |why: String| Ok(DiskCheck::Torn { why, empty: false });
        match kind {
            DiskKind::Qcow2 => match image_info(path) {
                Ok((f, _)) if f == "qcow2" => Ok(DiskCheck::Usable),
                Ok((f, _)) => torn(format!("qemu-img reads it as {f}, not qcow2")),
                // No qemu-img is not a torn file: vmd cannot tell, and says so.
                Err(e @ Error::CommandSpawn { .. }) => Err(e),
                Err(e) => torn(format!("qemu-img cannot read it ({})", backroom_daemon::chain(&e))),
            },
            DiskKind::Iso => {
                // The primary volume descriptor of ISO 9660: sector 16, "CD001" at byte 1.
                use std::io::{Read, Seek, SeekFrom};
                let mut sig = [0u8; 5];
                let read = std::fs::File::open(path).and_then(|mut f| {
                    f.seek(SeekFrom::Start(32769)).and_then(|_| f.read_exact(&mut sig))
                });
                match read {
                    Ok(()) if &sig == b"CD001" => Ok(DiskCheck::Usable),
                    _ => torn("it holds no ISO 9660 volume".into()),
                }
            }
        }
    }

    fn set_aside(&self, path: &Path, unix: i64) -> Result<PathBuf> {
        let to = torn_name(path, unix);
        backroom_daemon::fs::rename_durable(path, &to).map_err(|e| {
            Error::io(format!("setting {} aside as {}", path.display(), to.display()), e)
        })?;
        Ok(to)
    }

    fn ensure_dir(&self, dir: &Path) -> Result<()> {
        self.ensure_parent(&dir.join("x"))
    }

    fn remove(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    fn list(&self, dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Disks as entries in a map, for unit tests of the manager.
#[derive(Debug, Default)]
pub struct MemStorage {
    pub files: Mutex<BTreeMap<PathBuf, String>>,
    /// Boot images whose download fails (to test the `image for …` problem).
    pub failing_images: Mutex<Vec<String>>,
}

impl MemStorage {
    fn put(&self, path: &Path, what: String) {
        if let Ok(mut f) = self.files.lock() {
            f.insert(path.to_path_buf(), what);
        }
    }
}

impl Storage for MemStorage {
    fn image_identity(&self, disk: &BootDisk) -> Result<String> {
        Ok(disk.sha256.as_ref().map_or_else(|| format!("path-{}", disk.image), |s| s.to_string()))
    }

    fn base_image<'a>(&'a self, disk: &'a BootDisk) -> BoxFuture<'a, Result<BaseImage>> {
        Box::pin(async move {
            if self.failing_images.lock().is_ok_and(|f| f.contains(&disk.image)) {
                return Err(Error::Image {
                    image: disk.image.clone(),
                    message: "the server answered HTTP 503".into(),
                });
            }
            Ok(BaseImage {
                path: PathBuf::from(&disk.image),
                format: "qcow2".into(),
                virtual_size: 1 << 20,
            })
        })
    }

    fn create_overlay(&self, base: &BaseImage, path: &Path, _size: Option<u64>) -> Result<()> {
        self.put(path, format!("overlay of {}", base.path.display()));
        Ok(())
    }

    fn ensure_data_disk(&self, path: &Path, size: u64) -> Result<bool> {
        if self.exists(path) {
            return Ok(false);
        }
        self.put(path, format!("disk of {size}"));
        Ok(true)
    }

    fn write_seed(&self, path: &Path, seed: &Seed) -> Result<()> {
        self.put(path, seed.network_config.clone());
        Ok(())
    }

    fn ensure_dir(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// No image folders in memory: every path is inside (whether it exists is checked where
    /// the file is used).
    fn confine(&self, path: &Path) -> Result<PathBuf> {
        Ok(path.to_path_buf())
    }

    fn exists(&self, path: &Path) -> bool {
        self.files.lock().map(|f| f.contains_key(path)).unwrap_or(false)
    }

    /// An entry with an empty description stands for a zero-length file, one that starts with
    /// `torn:` for a file with bytes that is not an image.
    fn check(&self, path: &Path, _kind: DiskKind) -> Result<DiskCheck> {
        Ok(match self.files.lock().ok().and_then(|f| f.get(path).cloned()) {
            None => DiskCheck::Missing,
            Some(what) if what.is_empty() => {
                DiskCheck::Torn { why: "it is empty (zero length)".into(), empty: true }
            }
            Some(what) if what.starts_with("torn:") => {
                DiskCheck::Torn { why: "not an image".into(), empty: false }
            }
            Some(_) => DiskCheck::Usable,
        })
    }

    fn set_aside(&self, path: &Path, unix: i64) -> Result<PathBuf> {
        let to = torn_name(path, unix);
        if let Ok(mut f) = self.files.lock()
            && let Some(what) = f.remove(path)
        {
            f.insert(to.clone(), what);
        }
        Ok(to)
    }

    fn remove(&self, path: &Path) -> Result<()> {
        if let Ok(mut f) = self.files.lock() {
            f.remove(path);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> Vec<PathBuf> {
        self.files
            .lock()
            .map(|f| f.keys().filter(|p| p.parent() == Some(dir)).cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn qemu_img(args: &[&str]) {
        let o =
            Command::new("qemu-img").args(args).output().expect("qemu-img (scripts/install-deps)");
        assert!(o.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }

    #[test]
    fn a_zero_length_overlay_is_told_torn_set_aside_and_made_again() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStorage::new(Layout::new(d.path().join("state"))).unwrap();
        let base_path = d.path().join("base.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", &base_path.display().to_string(), "1M"]);
        let base = BaseImage { path: base_path, format: "qcow2".into(), virtual_size: 1 << 20 };
        let overlay = d.path().join("state/vms/nvr/root-abc.qcow2");
        assert_eq!(s.check(&overlay, DiskKind::Qcow2).unwrap(), DiskCheck::Missing);
        // What a power cut leaves of a rename that went to disk before the data did.
        std::fs::create_dir_all(overlay.parent().unwrap()).unwrap();
        std::fs::write(&overlay, b"").unwrap();
        assert!(
            matches!(
                s.check(&overlay, DiskKind::Qcow2).unwrap(),
                DiskCheck::Torn { empty: true, .. }
            ),
            "a zero-length overlay is not taken as existing"
        );
        let aside = s.set_aside(&overlay, 1_700_000_000).unwrap();
        assert_eq!(aside, d.path().join("state/vms/nvr/root-abc.qcow2.torn-1700000000"));
        assert!(aside.exists() && !overlay.exists());
        assert!(!Layout::is_replaceable(&aside), "kept by updates and removals");
        s.create_overlay(&base, &overlay, None).unwrap();
        assert_eq!(s.check(&overlay, DiskKind::Qcow2).unwrap(), DiskCheck::Usable);
        let names: Vec<_> = std::fs::read_dir(overlay.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "no temporary left: {names:?}");

        // Bytes that are not qcow2 are told apart from an empty file (a data disk's case).
        std::fs::write(&overlay, vec![7u8; 4096]).unwrap();
        let c = s.check(&overlay, DiskKind::Qcow2).unwrap();
        assert!(
            matches!(&c, DiskCheck::Torn { empty: false, why } if why.contains("not qcow2")),
            "{c:?}"
        );
    }

    #[test]
    fn a_seed_without_an_iso_volume_is_torn_and_a_written_one_is_usable() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStorage::new(Layout::new(d.path().join("state"))).unwrap();
        let seed_path = d.path().join("state/vms/nvr/seed-1.iso");
        std::fs::create_dir_all(seed_path.parent().unwrap()).unwrap();
        std::fs::write(&seed_path, vec![0u8; 40_000]).unwrap();
        assert!(matches!(s.check(&seed_path, DiskKind::Iso).unwrap(), DiskCheck::Torn { .. }));
        std::fs::remove_file(&seed_path).unwrap();
        let seed = Seed {
            id: "1".into(),
            meta_data: "instance-id: nvr\n".into(),
            user_data: "#cloud-config\n".into(),
            network_config: "version: 2\n".into(),
        };
        s.write_seed(&seed_path, &seed).unwrap();
        assert_eq!(s.check(&seed_path, DiskKind::Iso).unwrap(), DiskCheck::Usable);
    }
}
