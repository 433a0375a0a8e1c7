//! Base images: downloaded over http(s) or taken from a path on the node, verified against
//! their sha256, and kept under `images/sha256/<hex>` so that every overlay's backing file is
//! immutable and shared. A download that breaks is resumed from what was already written
//! (an HTTP `Range` request); a file whose digest does not match is thrown away, never used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backroom_daemon::SharedClock;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::layout::Layout;

/// How many times a broken download is resumed before vmd gives up on this apply.
const ATTEMPTS: u32 = 5;

#[derive(Clone)]
pub struct ImageCache {
    layout: Layout,
    http: reqwest::Client,
    /// Paces the retries of a broken download.
    clock: SharedClock,
}

impl std::fmt::Debug for ImageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCache").field("layout", &self.layout).finish_non_exhaustive()
    }
}

impl ImageCache {
    /// https downloads trust the system's certificate store.
    pub fn new(layout: Layout) -> Result<Self> {
        Self::with_ca(layout, None)
    }

    /// Like [`ImageCache::new`]; https downloads also trust the PEM certificates in `ca` (e.g.
    /// HQ's private CA, for an image server the system's store does not know).
    pub fn with_ca(layout: Layout, ca: Option<&Path>) -> Result<Self> {
        // Installing twice is harmless (the first provider stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(60));
        if let Some(ca) = ca {
            let image = || format!("(the image CA {})", ca.display());
            let pem = std::fs::read(ca)
                .map_err(|e| Error::io(format!("reading the image CA {}", ca.display()), e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                Error::ImageHttp { image: image(), what: "not PEM certificates".into(), source }
            })?;
            if certs.is_empty() {
                return Err(Error::Image {
                    image: image(),
                    message: "holds no PEM certificate".into(),
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|source| Error::ImageHttp {
            image: "(http client)".into(),
            what: "cannot set up the HTTP client".into(),
            source,
        })?;
        Ok(ImageCache { layout, http, clock: backroom_daemon::clock::system() })
    }

    /// The cached file for `sha256`, if it is there.
    pub fn cached(&self, sha256: &str) -> Option<PathBuf> {
        let p = self.layout.image(sha256);
        p.is_file().then_some(p)
    }

    /// Downloads `url` (resuming a partial download) unless `sha256` is cached; verifies it.
    pub async fn fetch_url(&self, url: &str, sha256: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached(sha256) {
            return Ok(p);
        }
        let partial = self.layout.partial(sha256);
        if let Some(dir) = partial.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        for attempt in 1..=ATTEMPTS {
            match self.download_once(url, &partial).await {
                Ok(()) => break,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(url, attempt, error = %backroom_daemon::Chain(&e), "image download broke; resuming");
                    self.clock.sleep(Duration::from_secs(u64::from(attempt))).await;
                }
                Err(e) => {
                    return Err(Error::DownloadFailed {
                        image: url.into(),
                        attempts: ATTEMPTS,
                        source: Box::new(e),
                    });
                }
            }
        }
        self.adopt_verified(&partial, sha256, url, true).await
    }

    /// One GET, from the partial file's length on.
    async fn download_once(&self, url: &str, partial: &Path) -> Result<()> {
        let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let mut req = self.http.get(url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let http = |what: &str| {
            let what = what.to_string();
            move |source| Error::ImageHttp { image: url.into(), what, source }
        };
        let resp = req.send().await.map_err(http("the request failed"))?;
        let status = resp.status();
        let append = match status.as_u16() {
            206 => true,
            200 => false,
            // The partial file already holds everything.
            416 if have > 0 => return Ok(()),
            code => {
                return Err(Error::Image {
                    image: url.into(),
                    message: format!("the server answered HTTP {code}"),
                });
            }
        };
        let write = |e| Error::io(format!("writing {}", partial.display()), e);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .map_err(write)?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(http("the download broke"))?;
            file.write_all(&chunk).map_err(write)?;
        }
        file.sync_all().map_err(write)?;
        Ok(())
    }

    /// A node path: verified (when `sha256` is given) and put in the cache by its digest, so a
    /// later change to the file cannot corrupt the VMs built on it.
    pub async fn fetch_path(&self, path: &Path, sha256: Option<&str>) -> Result<PathBuf> {
        if let Some(p) = sha256.and_then(|s| self.cached(s)) {
            return Ok(p);
        }
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(Error::Image { image: shown, message: "no such file on this node".into() });
        }
        let digest = hash_file(path).await?;
        if let Some(want) = sha256
            && want != digest
        {
            return Err(Error::Image {
                image: shown,
                message: format!("its sha256 is {digest}, the profile says {want}"),
            });
        }
        if let Some(p) = self.cached(&digest) {
            return Ok(p);
        }
        let staging = self.layout.partial(&digest);
        if let Some(dir) = staging.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let _ = std::fs::remove_file(&staging);
        if std::fs::hard_link(path, &staging).is_err() {
            let (from, to) = (path.to_path_buf(), staging.clone());
            tokio::task::spawn_blocking(move || std::fs::copy(&from, &to))
                .await
                .map_err(|e| Error::io("copying an image", std::io::Error::other(e)))?
                .map_err(|e| Error::io(format!("copying {shown} into the image cache"), e))?;
        }
        self.adopt_verified(&staging, &digest, &shown, false).await
    }

    /// Moves a verified file into `images/sha256/<hex>`, read-only.
    async fn adopt_verified(
        &self,
        file: &Path,
        sha256: &str,
        shown: &str,
        verify: bool,
    ) -> Result<PathBuf> {
        if verify {
            let got = hash_file(file).await?;
            if got != sha256 {
                let _ = std::fs::remove_file(file);
                return Err(Error::Image {
                    image: shown.into(),
                    message: format!(
                        "the downloaded file's sha256 is {got}, the profile says {sha256}: not used (deleted)"
                    ),
                });
            }
        }
        let dest = self.layout.image(sha256);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        std::fs::rename(file, &dest).map_err(|e| {
            Error::io(format!("moving {} to {}", file.display(), dest.display()), e)
        })?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o444));
        Ok(dest)
    }
}

/// sha256 of a file, hex, computed off the async runtime.
pub async fn hash_file(path: &Path) -> Result<String> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| Error::io("hashing an image", std::io::Error::other(e)))?
    .map_err(|e| Error::io(format!("reading {}", path.display()), e))
}
