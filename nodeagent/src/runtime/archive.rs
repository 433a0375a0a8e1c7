//! Importing an OCI image archive (a tar holding `oci-layout`, `index.json` and
//! `blobs/sha256/…`), for stores without a registry (a USB stick, an offline store). The tar
//! is indexed once; each blob is then read from its offset in the file.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::containerd::Containerd;
use oci_spec::image::{Descriptor, ImageIndex};

use super::content::{BlobSource, media_type_of, parse, sha256_digest};
use crate::error::{Error, Result};

/// Annotations that name an image in an archive (containerd's, then the OCI one).
const NAME_ANNOTATIONS: &[&str] =
    &["io.containerd.image.name", "org.opencontainers.image.ref.name"];

struct Archive {
    path: PathBuf,
    /// digest → (offset of the data in the tar, size)
    blobs: HashMap<String, (u64, u64)>,
    index: Vec<u8>,
}

fn archive_err(path: &Path, message: impl std::fmt::Display) -> Error {
    // The archive stands for the image here: it is what the operator handed in.
    Error::Image { image: path.display().to_string(), message: message.to_string() }
}

fn scan(path: &Path) -> Result<Archive> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open the archive", path, e))?;
    let mut tar = tar::Archive::new(file);
    let mut blobs = HashMap::new();
    let mut index = None;
    let entries = tar.entries().map_err(|e| Error::io("read the archive", path, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::io("read the archive", path, e))?;
        let name = entry
            .path()
            .map_err(|e| Error::io("read the archive", path, e))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name == "index.json" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut buf)
                .map_err(|e| Error::io("read index.json of", path, e))?;
            index = Some(buf);
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            blobs.insert(format!("sha256:{hex}"), (entry.raw_file_position(), entry.size()));
        }
    }
    let index =
        index.ok_or_else(|| archive_err(path, "it has no index.json: not an OCI image archive"))?;
    Ok(Archive { path: path.to_path_buf(), blobs, index })
}

impl Archive {
    fn locate(&self, desc: &Descriptor) -> Result<(u64, u64)> {
        let digest = desc.digest().to_string();
        self.blobs
            .get(&digest)
            .copied()
            .ok_or_else(|| archive_err(&self.path, format!("blob {digest} is missing from it")))
    }
}

impl BlobSource for Archive {
    async fn read(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let (offset, size) = self.locate(desc)?;
        let mut f = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| Error::io("open the archive", &self.path, e))?;
        f.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| Error::io("read the archive", &self.path, e))?;
        let mut buf = vec![0; usize::try_from(size).unwrap_or(0)];
        f.read_exact(&mut buf).await.map_err(|e| Error::io("read the archive", &self.path, e))?;
        if sha256_digest(&buf) != desc.digest().as_ref() {
            return Err(archive_err(
                &self.path,
                format!("blob {} does not match its digest", desc.digest()),
            ));
        }
        Ok(buf)
    }

    async fn stream(
        &self,
        desc: &Descriptor,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let (offset, size) = self.locate(desc)?;
        let mut f = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| Error::io("open the archive", &self.path, e))?;
        f.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| Error::io("read the archive", &self.path, e))?;
        let reader = f.take(size);
        Ok(futures::stream::unfold(reader, |mut r| async move {
            let mut buf = vec![0u8; 1 << 20];
            match r.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), r))
                }
                Err(e) => Some((Err(e), r)),
            }
        })
        .boxed())
    }
}

impl Containerd {
    pub(super) async fn import_archive(&self, path: &Path) -> Result<Vec<(String, String)>> {
        let p = path.to_path_buf();
        let archive = tokio::task::spawn_blocking(move || scan(&p))
            .await
            .map_err(|source| Error::Task { what: "the archive scan", source })??;
        let shown = path.display().to_string();
        let index: ImageIndex = parse(&shown, "index.json", &archive.index)?;
        let mut out = Vec::new();
        for entry in index.manifests() {
            let name = NAME_ANNOTATIONS
                .iter()
                .find_map(|k| entry.annotations().as_ref().and_then(|a| a.get(*k)))
                .filter(|n| n.contains('/') || n.contains(':'))
                .cloned()
                .unwrap_or_else(|| format!("import@{}", entry.digest()));
            let bytes = archive.read(entry).await?;
            let mut target = entry.clone();
            if target.media_type().as_ref().is_empty() {
                target.set_media_type(media_type_of(&bytes));
            }
            let info = self.store_image(&archive, &name, target, bytes).await?;
            out.push((info.name, info.digest));
        }
        if out.is_empty() {
            return Err(archive_err(path, "its index.json lists no image"));
        }
        Ok(out)
    }
}
