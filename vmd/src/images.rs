//! Base images: downloaded over http(s) or taken from a path on the node, verified against
//! their sha256, and kept under `images/sha256/<hex>` so that every overlay's backing file is
//! immutable and shared. A download that breaks is resumed from what was already written
//! (an HTTP `Range` request); a file whose digest does not match is thrown away, never used.
//!
//! A node path is taken only when it resolves (symlinks followed, `..` folded) to a regular
//! file inside one of the image folders (`vmd --image-folder`, default
//! [`DEFAULT_IMAGE_FOLDER`]): a profile cannot have vmd copy the node's own files (its key,
//! its state) into a cache file that QEMU and any local user can read.

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

/// Where boot images named by a node path may live, unless `--image-folder` says otherwise.
pub const DEFAULT_IMAGE_FOLDER: &str = "/var/lib/backroom/images";

#[derive(Clone)]
pub struct ImageCache {
    layout: Layout,
    http: reqwest::Client,
    /// Paces the retries of a broken download.
    clock: SharedClock,
    /// The folders node-path images must be inside.
    folders: Vec<PathBuf>,
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
        Ok(ImageCache {
            layout,
            http,
            clock: backroom_daemon::clock::system(),
            folders: vec![PathBuf::from(DEFAULT_IMAGE_FOLDER)],
        })
    }

    /// Node-path images are taken only from inside `folders` (instead of the default
    /// [`DEFAULT_IMAGE_FOLDER`]).
    pub fn with_folders(mut self, folders: Vec<PathBuf>) -> Self {
        self.folders = folders;
        self
    }

    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    /// The real path of a node-path image: a regular file inside one of the image folders,
    /// symlinks and `..` resolved. Anything else is refused, naming the path and the folders.
    pub fn confine(&self, path: &Path) -> Result<PathBuf> {
        let refuse = |why: String| Error::ImageOutsideFolders {
            image: path.display().to_string(),
            why,
            folders: self
                .folders
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        if !path.is_absolute() {
            return Err(refuse("it is not an absolute path".into()));
        }
        let real = std::fs::canonicalize(path).map_err(|e| {
            refuse(match e.kind() {
                std::io::ErrorKind::NotFound => "no such file on this node".into(),
                _ => format!("it cannot be resolved ({e})"),
            })
        })?;
        let inside = self
            .folders
            .iter()
            .filter_map(|f| std::fs::canonicalize(f).ok())
            .any(|f| real.starts_with(&f));
        if !inside {
            return Err(refuse(if real == path {
                "it is outside them".into()
            } else {
                format!("it resolves to {}, outside them", real.display())
            }));
        }
        match std::fs::metadata(&real) {
            Ok(m) if m.is_file() => Ok(real),
            Ok(_) => Err(refuse("it is not a regular file".into())),
            Err(e) => Err(refuse(format!("it cannot be read ({e})"))),
        }
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
        let shown = path.display().to_string();
        // Refused before anything is read, cached digest or not.
        let path = &self.confine(path)?;
        if let Some(p) = sha256.and_then(|s| self.cached(s)) {
            return Ok(p);
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
        // Synced before it takes its name: a power cut never leaves a torn file under a digest.
        backroom_daemon::fs::install(file, &dest).map_err(|e| {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::storage::{FsStorage, Storage};

    /// A node with an image folder holding `ok.img`, and the node's key beside it, outside.
    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Node {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("images/sub")).unwrap();
            std::fs::write(dir.path().join("images/ok.img"), b"an image").unwrap();
            std::fs::write(dir.path().join("node.key"), b"PRIVATE KEY").unwrap();
            Node { dir }
        }
        fn path(&self, p: &str) -> PathBuf {
            self.dir.path().join(p)
        }
        fn cache(&self) -> ImageCache {
            ImageCache::new(Layout::new(self.path("state")))
                .unwrap()
                .with_folders(vec![self.path("images")])
        }
        fn cached_files(&self) -> usize {
            ["state/images/sha256", "state/images/partial"]
                .iter()
                .map(|d| std::fs::read_dir(self.path(d)).map(|r| r.count()).unwrap_or(0))
                .sum()
        }
    }

    fn refused(node: &Node, image: &Path, why: &str) {
        let e = node.cache().confine(image).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::ImageOutsideFolders { .. }), "{text}");
        assert!(text.contains(&image.display().to_string()), "names the path: {text}");
        assert!(
            text.contains(&node.path("images").display().to_string()),
            "names the folders: {text}"
        );
        assert!(text.contains(why), "says why ({why}): {text}");
    }

    #[test]
    fn a_path_outside_the_image_folders_is_refused() {
        let n = Node::new();
        refused(&n, &n.path("node.key"), "it is outside them");
        refused(&n, Path::new("/etc/passwd"), "outside them");
        assert_eq!(
            n.cache().confine(&n.path("images/ok.img")).unwrap(),
            n.path("images/ok.img").canonicalize().unwrap()
        );
    }

    #[test]
    fn a_symlink_from_inside_to_outside_is_refused() {
        let n = Node::new();
        std::os::unix::fs::symlink(n.path("node.key"), n.path("images/nvr.img")).unwrap();
        refused(&n, &n.path("images/nvr.img"), "resolves to");
        // A symlinked folder inside leads outside too.
        std::os::unix::fs::symlink(n.dir.path(), n.path("images/up")).unwrap();
        refused(&n, &n.path("images/up/node.key"), "outside them");
        // A symlink that stays inside is fine.
        std::os::unix::fs::symlink(n.path("images/ok.img"), n.path("images/current.img")).unwrap();
        assert!(n.cache().confine(&n.path("images/current.img")).is_ok());
    }

    #[test]
    fn dot_dot_out_of_a_folder_and_what_is_not_a_regular_file_are_refused() {
        let n = Node::new();
        refused(&n, &n.path("images/../node.key"), "outside them");
        refused(&n, &n.path("images/sub/../../node.key"), "outside them");
        refused(&n, &n.path("images/sub"), "not a regular file");
        refused(&n, &n.path("images"), "not a regular file");
        refused(&n, &n.path("images/missing.img"), "no such file");
        refused(&n, Path::new("images/ok.img"), "not an absolute path");
    }

    #[tokio::test]
    async fn a_refused_path_is_never_copied_into_the_cache_digest_or_not() {
        let n = Node::new();
        let key = n.path("node.key");
        let digest = hash_file(&key).await.unwrap();
        let e = n.cache().fetch_path(&key, None).await.unwrap_err();
        assert!(matches!(e, Error::ImageOutsideFolders { .. }), "{e}");
        let e = n.cache().fetch_path(&key, Some(&digest)).await.unwrap_err();
        assert!(matches!(e, Error::ImageOutsideFolders { .. }), "{e}");
        assert_eq!(n.cached_files(), 0, "nothing copied");
        // The storage asks before anything else (the manager calls this first).
        let s = FsStorage::new(Layout::new(n.path("state")))
            .unwrap()
            .with_image_folders(vec![n.path("images")]);
        let disk = |image: &Path, sha: Option<&str>| backroom_profiles::BootDisk {
            image: image.display().to_string(),
            sha256: sha.map(|s| s.parse().unwrap()),
            size: None,
        };
        assert!(matches!(
            s.image_identity(&disk(&key, None)),
            Err(Error::ImageOutsideFolders { .. })
        ));
        assert!(matches!(
            s.image_identity(&disk(&key, Some(&digest))),
            Err(Error::ImageOutsideFolders { .. })
        ));
        assert!(s.image_identity(&disk(&n.path("images/ok.img"), None)).is_ok());
        // Inside: taken, and cached by digest.
        let p = n.cache().fetch_path(&n.path("images/ok.img"), None).await.unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"an image");
    }
}
