//! An in-memory box for the update's unit tests: two slots, a default, a one-shot, and a
//! [`MemOsHost::boot`] that does what the firmware and systemd-boot would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{OsHost, Running, Slot};
use crate::error::{Error, Result};

#[derive(Debug, Default)]
pub struct MemBox {
    /// `None`: not the store OS image.
    pub running: Option<Running>,
    /// The version each slot holds.
    pub slots: HashMap<Slot, String>,
    /// url → (sha256, version it holds).
    pub images: HashMap<String, (String, String)>,
    pub default: Option<Slot>,
    pub one_shot: Option<Slot>,
    /// Entries installed: slot → version.
    pub entries: HashMap<Slot, String>,
    /// The next fetch fails like a broken network.
    pub fetch_breaks: bool,
    /// The new slot does not come up (the firmware falls back to the default).
    pub new_slot_broken: bool,
    pub reboots: u32,
    pub fetches: u32,
    pub log: Vec<String>,
}

/// A cloneable handle: the test keeps one, the updater another.
#[derive(Clone, Debug, Default)]
pub struct MemOsHost(pub Arc<Mutex<MemBox>>);

impl MemOsHost {
    /// A box running `version` on `slot` (also the default).
    pub fn store_os(version: &str, slot: Slot) -> Self {
        let b = MemBox {
            running: Some(Running { version: version.into(), slot }),
            slots: HashMap::from([(slot, version.to_string())]),
            default: Some(slot),
            ..Default::default()
        };
        MemOsHost(Arc::new(Mutex::new(b)))
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut MemBox) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Serves `url` as the image of `version`.
    pub fn serve(&self, url: &str, sha256: &str, version: &str) {
        self.with(|b| b.images.insert(url.into(), (sha256.into(), version.into())));
    }

    /// Boots: the one-shot entry if set (and it comes up), else the default.
    pub fn boot(&self) {
        self.with(|b| {
            let slot = match b.one_shot.take() {
                Some(s) if !b.new_slot_broken => s,
                _ => b.default.unwrap_or(Slot::A),
            };
            let version = b.slots.get(&slot).cloned().unwrap_or_default();
            b.running = Some(Running { version, slot });
        });
    }
}

impl OsHost for MemOsHost {
    fn running(&self) -> Option<Running> {
        self.with(|b| b.running.clone())
    }

    async fn fetch(&self, url: &str, sha256: &str) -> Result<PathBuf> {
        self.with(|b| {
            b.fetches += 1;
            b.log.push(format!("fetch {url}"));
            if std::mem::take(&mut b.fetch_breaks) {
                return Err(Error::OsDownload {
                    url: url.into(),
                    what: "the network is down".into(),
                    source: None,
                });
            }
            match b.images.get(url) {
                Some((sha, _)) if sha == sha256 => Ok(PathBuf::from(url)),
                Some((sha, _)) => Err(Error::OsImageMismatch {
                    url: url.into(),
                    found: sha.clone(),
                    wanted: sha256.into(),
                }),
                None => Err(Error::OsDownload {
                    url: url.into(),
                    what: "the server answered HTTP 404".into(),
                    source: None,
                }),
            }
        })
    }

    async fn write_slot(&self, image: &Path, slot: Slot) -> Result<()> {
        self.with(|b| {
            let url = image.display().to_string();
            let version = b.images.get(&url).map(|(_, v)| v.clone()).unwrap_or_default();
            b.log.push(format!("write {version} to {slot}"));
            b.slots.insert(slot, version);
            Ok(())
        })
    }

    async fn install_boot(&self, slot: Slot, version: &str) -> Result<()> {
        self.with(|b| {
            b.log.push(format!("install {version} on {slot}"));
            b.entries.insert(slot, version.into());
            Ok(())
        })
    }

    fn boot_once(&self, slot: Slot) -> Result<()> {
        self.with(|b| {
            b.log.push(format!("one-shot {slot}"));
            b.one_shot = Some(slot);
            Ok(())
        })
    }

    fn commit(&self, slot: Slot) -> Result<()> {
        self.with(|b| {
            b.log.push(format!("default {slot}"));
            b.default = Some(slot);
            Ok(())
        })
    }

    fn clean(&self) {}

    async fn reboot(&self) -> Result<()> {
        self.with(|b| {
            b.reboots += 1;
            b.log.push("reboot".into());
        });
        Ok(())
    }
}
