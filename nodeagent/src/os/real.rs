//! The store OS box: root slot partitions, the ESP with systemd-boot, EFI variables, reboot.
//!
//! Every path is in [`OsPaths`], so tests point the file-only parts (loader entry, loader.conf,
//! the one-shot variable, the download) at temporary folders. The partition write, the mount
//! and the reboot have no test yet: no QEMU test updates a booted image (which is why profiles
//! refuse `node.os` for now).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{OsHost, Running, Slot};
use crate::error::{Error, Result};

/// systemd-boot's vendor GUID (the Boot Loader Interface).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Where the real host reads and writes.
#[derive(Clone, Debug)]
pub struct OsPaths {
    /// The ESP's mount point (`/boot/efi`).
    pub esp: PathBuf,
    /// efivarfs (`/sys/firmware/efi/efivars`).
    pub efivars: PathBuf,
    /// The partitions by label (`/dev/disk/by-partlabel`).
    pub partitions: PathBuf,
    /// The running version (`/usr/lib/backroom/os-version`).
    pub os_version: PathBuf,
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// Downloads: `<state>/os/`.
    pub downloads: PathBuf,
    /// Where a slot is mounted for a moment (`/run`).
    pub run: PathBuf,
    /// What reboots the machine.
    pub reboot: Vec<String>,
}

impl OsPaths {
    /// The store OS image's own paths, with downloads under `<state_dir>/os/`.
    pub fn system(state_dir: &Path) -> Self {
        OsPaths {
            esp: "/boot/efi".into(),
            efivars: "/sys/firmware/efi/efivars".into(),
            partitions: "/dev/disk/by-partlabel".into(),
            os_version: "/usr/lib/backroom/os-version".into(),
            cmdline: "/proc/cmdline".into(),
            downloads: state_dir.join("os"),
            run: "/run".into(),
            reboot: vec!["systemctl".into(), "reboot".into()],
        }
    }

    pub fn partition(&self, slot: Slot) -> PathBuf {
        self.partitions.join(format!("backroom-root-{}", slot.id()))
    }

    pub fn entry(&self, slot: Slot) -> PathBuf {
        self.esp.join("loader/entries").join(slot.entry_id())
    }

    pub fn loader_conf(&self) -> PathBuf {
        self.esp.join("loader/loader.conf")
    }

    pub fn one_shot_var(&self) -> PathBuf {
        self.efivars.join(format!("LoaderEntryOneShot-{LOADER_GUID}"))
    }
}

/// The running store OS: slots, ESP and EFI variables.
pub struct RealOsHost {
    pub paths: OsPaths,
    http: reqwest::Client,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + use<'a> {
    move |source| Error::Io { what, path: path.to_path_buf(), source }
}

impl RealOsHost {
    pub fn new(paths: OsPaths) -> Result<Self> {
        // Installing twice is harmless (the first provider stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| Error::OsDownload {
                url: String::new(),
                what: "cannot set up the HTTP client".into(),
                source: Some(source),
            })?;
        Ok(RealOsHost { paths, http })
    }

    /// One GET from the partial file's length on; `Ok` once the part file holds the whole body.
    async fn download_once(&self, url: &str, part: &Path) -> Result<()> {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = self.http.get(url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let fail = |what: &str| {
            let what = what.to_string();
            move |source| Error::OsDownload { url: url.into(), what, source: Some(source) }
        };
        let resp = req.send().await.map_err(fail("the request failed"))?;
        let append = match resp.status().as_u16() {
            206 => true,
            200 => false,
            // The part file already holds everything.
            416 if have > 0 => return Ok(()),
            code => {
                return Err(Error::OsDownload {
                    url: url.into(),
                    what: format!("the server answered HTTP {code}"),
                    source: None,
                });
            }
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .map_err(io("open", part))?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(fail("the download broke"))?;
            file.write_all(&chunk).map_err(io("write", part))?;
        }
        file.sync_all().map_err(io("fsync", part))?;
        Ok(())
    }

    /// Copies the newest `/boot/vmlinuz-*` and `/boot/initrd.img-*` of a slot's root tree
    /// (mounted at `root`) to `<esp>/backroom/<slot>/vmlinuz` and `initrd.img`.
    pub fn copy_boot_files(&self, root: &Path, slot: Slot) -> Result<()> {
        let boot = root.join("boot");
        let dest = self.paths.esp.join("backroom").join(slot.id());
        std::fs::create_dir_all(&dest).map_err(io("create", &dest))?;
        for (prefix, name) in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")] {
            let src = newest(&boot, prefix)?;
            let to = dest.join(name);
            let tmp = dest.join(format!(".{name}.tmp"));
            std::fs::copy(&src, &tmp).map_err(io("copy to", &tmp))?;
            backroom_daemon::fs::install(&tmp, &to).map_err(io("install", &to))?;
        }
        Ok(())
    }

    /// Writes `<esp>/loader/entries/backroom-<slot>.conf` for `version`.
    pub fn write_entry(&self, slot: Slot, version: &str) -> Result<()> {
        let path = self.paths.entry(slot);
        backroom_daemon::fs::write_atomic(&path, entry_text(slot, version).as_bytes(), 0o644)
            .map_err(io("write", &path))
    }
}

/// The newest file in `dir` whose name starts with `prefix` (by kernel version, then name).
fn newest(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<(Vec<u64>, String)> = std::fs::read_dir(dir)
        .map_err(io("read", dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .map(|n| {
            let nums = n[prefix.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|p| p.parse().ok())
                .collect();
            (nums, n)
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, n)) => Ok(dir.join(n)),
        None => Err(Error::Invalid(format!(
            "the new root slot has no {}{prefix}*: it is not a store OS image",
            dir.display().to_string().trim_end_matches('/').to_string() + "/"
        ))),
    }
}

/// The loader entry of a slot, in the shape images/build.sh writes.
pub fn entry_text(slot: Slot, version: &str) -> String {
    let id = slot.id();
    format!(
        "title Backroom store OS {version} (slot {slot})\n\
         version {version}\n\
         linux /backroom/{id}/vmlinuz\n\
         initrd /backroom/{id}/initrd.img\n\
         options root=/dev/disk/by-partlabel/backroom-root-{id} rootfstype=squashfs ro backroom.slot={id} console=tty1 console=ttyS0,115200 quiet\n"
    )
}

/// `loader.conf` with its `default` line naming `entry` (added first when there is none).
pub fn with_default(conf: &str, entry: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in conf.lines() {
        if line.split_whitespace().next() == Some("default") {
            if !done {
                out.push_str(&format!("default {entry}\n"));
                done = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !done {
        out = format!("default {entry}\n{out}");
    }
    out
}

/// The bytes of an EFI variable holding `text`: attributes NON_VOLATILE | BOOTSERVICE_ACCESS |
/// RUNTIME_ACCESS, then UTF-16LE with a terminating NUL.
pub fn efivar_bytes(text: &str) -> Vec<u8> {
    let mut b = vec![0x07, 0x00, 0x00, 0x00];
    for u in text.encode_utf16().chain(std::iter::once(0)) {
        b.extend_from_slice(&u.to_le_bytes());
    }
    b
}

/// The sha256 (hex) of a file.
fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

async fn run(argv: &[String]) -> Result<()> {
    let command = argv.join(" ");
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| Error::OsCommand { command: command.clone(), message: "empty".into() })?;
    let out = tokio::process::Command::new(prog)
        .args(args)
        .output()
        .await
        .map_err(|e| Error::OsCommand { command: command.clone(), message: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(Error::OsCommand { command, message: format!("{}: {err}", out.status) })
    }
}

fn blocking_join(e: tokio::task::JoinError) -> Error {
    Error::Invalid(format!("a blocking task of the OS update died: {e}"))
}

impl OsHost for RealOsHost {
    fn running(&self) -> Option<Running> {
        let version = std::fs::read_to_string(&self.paths.os_version).ok()?;
        let version = version.lines().next()?.trim().to_string();
        let cmdline = std::fs::read_to_string(&self.paths.cmdline).ok()?;
        let slot = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("backroom.slot="))
            .and_then(Slot::parse)?;
        (!version.is_empty()).then_some(Running { version, slot })
    }

    async fn fetch(&self, url: &str, sha256: &str) -> Result<PathBuf> {
        let dir = &self.paths.downloads;
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let done = dir.join(format!("{sha256}.root"));
        if done.exists() {
            return Ok(done);
        }
        let part = dir.join(format!("{sha256}.part"));
        self.download_once(url, &part).await?;
        let p = part.clone();
        let found =
            tokio::task::spawn_blocking(move || hash_file(&p)).await.map_err(blocking_join)??;
        if found != sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(Error::OsImageMismatch { url: url.into(), found, wanted: sha256.into() });
        }
        backroom_daemon::fs::rename_durable(&part, &done).map_err(io("rename", &part))?;
        Ok(done)
    }

    async fn write_slot(&self, image: &Path, slot: Slot) -> Result<()> {
        let image = image.to_path_buf();
        let dev = self.paths.partition(slot);
        tokio::task::spawn_blocking(move || write_image(&image, &dev))
            .await
            .map_err(blocking_join)?
    }

    async fn install_boot(&self, slot: Slot, version: &str) -> Result<()> {
        let dir = self.paths.run.join(format!("backroom-os-slot-{}", slot.id()));
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let dev = self.paths.partition(slot).display().to_string();
        let at = dir.display().to_string();
        run(&[
            "mount".into(),
            "-t".into(),
            "squashfs".into(),
            "-o".into(),
            "ro".into(),
            dev,
            at.clone(),
        ])
        .await?;
        let copied = self.copy_boot_files(&dir, slot);
        let unmounted = run(&["umount".into(), at]).await;
        let _ = std::fs::remove_dir(&dir);
        copied?;
        unmounted?;
        self.write_entry(slot, version)
    }

    fn boot_once(&self, slot: Slot) -> Result<()> {
        let path = self.paths.one_shot_var();
        if let Ok(f) = std::fs::File::open(&path) {
            // efivarfs marks variables immutable; a write needs the flag off first.
            if let Ok(flags) = rustix::fs::ioctl_getflags(&f)
                && flags.contains(rustix::fs::IFlags::IMMUTABLE)
            {
                rustix::fs::ioctl_setflags(&f, flags - rustix::fs::IFlags::IMMUTABLE).map_err(
                    |e| Error::Io {
                        what: "clear the immutable flag of",
                        path: path.clone(),
                        source: e.into(),
                    },
                )?;
            }
            drop(f);
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
        }
        let bytes = efivar_bytes(&slot.entry_id());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io("create", &path))?;
        // efivarfs takes a variable in one write.
        let n = f.write(&bytes).map_err(io("write", &path))?;
        if n != bytes.len() {
            return Err(Error::Invalid(format!(
                "{} took {n} of {} bytes",
                path.display(),
                bytes.len()
            )));
        }
        Ok(())
    }

    fn commit(&self, slot: Slot) -> Result<()> {
        let path = self.paths.loader_conf();
        let conf = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        let new = with_default(&conf, &slot.entry_id());
        backroom_daemon::fs::write_atomic(&path, new.as_bytes(), 0o644).map_err(io("write", &path))
    }

    fn clean(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.paths.downloads) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    async fn reboot(&self) -> Result<()> {
        run(&self.paths.reboot).await
    }
}

/// Copies the image onto the partition (refusing one too big for it) and fsyncs.
fn write_image(image: &Path, dev: &Path) -> Result<()> {
    let mut src = std::fs::File::open(image).map_err(io("open", image))?;
    let len = src.metadata().map_err(io("stat", image))?.len();
    let mut dst = std::fs::OpenOptions::new().write(true).open(dev).map_err(io("open", dev))?;
    // A block device's size is where its end is; a regular file (tests) has no limit.
    let room = dst.seek(SeekFrom::End(0)).map_err(io("seek", dev))?;
    let is_block = {
        use std::os::unix::fs::FileTypeExt;
        dst.metadata().map(|m| m.file_type().is_block_device()).unwrap_or(false)
    };
    if is_block && len > room {
        return Err(Error::Invalid(format!(
            "the OS image is {len} bytes but the slot {} holds {room}",
            dev.display()
        )));
    }
    dst.seek(SeekFrom::Start(0)).map_err(io("seek", dev))?;
    std::io::copy(&mut src, &mut dst).map_err(io("write", dev))?;
    dst.sync_all().map_err(io("fsync", dev))
}
