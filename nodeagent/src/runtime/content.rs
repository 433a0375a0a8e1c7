//! Storing an image in containerd without the Transfer service (containerd 1.6): under a lease,
//! write each blob through `content.Write` (labels that keep GC away), create the image record,
//! then unpack the layers through snapshots and `diff.Apply`. Shared by registry pulls
//! (`pull.rs`) and OCI-archive imports (`archive.rs`).

use std::collections::HashMap;

use bytes::Bytes;
use containerd_client::services::v1::CreateRequest as CreateLeaseRequest;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, DeleteRequest as DeleteLeaseRequest,
    Image, InfoRequest, ListImagesRequest, ReadContentRequest, UpdateImageRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::types::Descriptor;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Code;

use super::containerd::{Containerd, SNAPSHOTTER, status_err};
use super::{ImageInfo, StoredImage};
use crate::error::{Error, Result};
use crate::spec::ImageConfig;

pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor as manifests and indexes write it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(super) struct Desc {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub(super) struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    #[serde(default)]
    pub media_type: String,
    pub config: Desc,
    #[serde(default)]
    pub layers: Vec<Desc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Index {
    #[serde(default)]
    pub manifests: Vec<Desc>,
}

/// Whether a manifest-ish document is an index (by media type, else by shape).
pub(super) fn is_index(media_type: &str, bytes: &[u8]) -> bool {
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        return true;
    }
    if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| v.get("manifests").is_some())
}

/// The media type a manifest-ish document declares, or a guess from its shape.
pub(super) fn media_type_of(bytes: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None if v.get("manifests").is_some() => OCI_INDEX.to_string(),
        None => OCI_MANIFEST.to_string(),
    }
}

/// The entry of an index for this machine (linux/amd64), or the only one.
pub(super) fn pick_platform(index: &Index) -> Option<&Desc> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .or_else(|| if index.manifests.len() == 1 { index.manifests.first() } else { None })
}

pub(super) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// containerd's chain ids of a layer stack (the snapshot names).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Where blobs come from: a registry or an archive.
pub(super) trait BlobSource: Sync {
    /// A small blob (manifest, config), checked against its digest.
    fn read(&self, desc: &Desc) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// A layer, as a stream (containerd checks the digest when the write is committed).
    fn stream(
        &self,
        desc: &Desc,
    ) -> impl Future<Output = Result<BoxStream<'static, std::io::Result<Bytes>>>> + Send;
}

use std::future::Future;

fn to_descriptor(d: &Desc) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: Default::default(),
    }
}

impl Containerd {
    fn content(
        &self,
    ) -> containerd_client::services::v1::content_client::ContentClient<tonic::transport::Channel>
    {
        containerd_client::services::v1::content_client::ContentClient::new(self.channel.clone())
    }

    pub(super) fn images_client(
        &self,
    ) -> containerd_client::services::v1::images_client::ImagesClient<tonic::transport::Channel>
    {
        containerd_client::services::v1::images_client::ImagesClient::new(self.channel.clone())
    }

    async fn lease_create(&self) -> Result<String> {
        static LEASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = LEASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("backroom-import-{}-{}-{n}", std::process::id(), crate::now_ms());
        let mut labels = std::collections::HashMap::new();
        // A lease outlives a crashed import by an hour at most.
        let expire = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        let secs = expire.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        labels.insert("containerd.io/gc.expire".to_string(), rfc3339(secs));
        containerd_client::services::v1::leases_client::LeasesClient::new(self.channel.clone())
            .create(self.req(CreateLeaseRequest { id: id.clone(), labels }))
            .await
            .map_err(|s| status_err("create lease", s))?;
        Ok(id)
    }

    async fn lease_delete(&self, id: &str) {
        let r =
            containerd_client::services::v1::leases_client::LeasesClient::new(self.channel.clone())
                .delete(self.req(DeleteLeaseRequest { id: id.into(), sync: false }))
                .await;
        if let Err(s) = r {
            tracing::warn!(lease = id, "cannot delete the import lease: {}", s.message());
        }
    }

    async fn content_exists(&self, digest: &str) -> Result<bool> {
        match self.content().info(self.req(InfoRequest { digest: digest.into() })).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(status_err("content info", s)),
        }
    }

    /// Writes one blob (a no-op when containerd has it already).
    async fn write_blob(
        &self,
        lease: &str,
        desc: &Desc,
        labels: HashMap<String, String>,
        mut data: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<()> {
        if self.content_exists(&desc.digest).await? {
            return Ok(());
        }
        // Unique per write: two workloads pulling one image at once must not share an ingest.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reference = format!("backroom-{}-{n}-{}", std::process::id(), &desc.digest);
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let total = desc.size;
        let expected = desc.digest.clone();
        let r2 = reference.clone();
        let send = async move {
            let mut offset: i64 = 0;
            while let Some(chunk) = data.next().await {
                let chunk = chunk.map_err(|e| Error::Image {
                    image: expected.clone(),
                    message: format!("cannot read the blob: {e}"),
                })?;
                let len = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
                let msg = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: r2.clone(),
                    total,
                    expected: expected.clone(),
                    offset,
                    data: chunk.to_vec(),
                    labels: Default::default(),
                };
                offset += len;
                if tx.send(msg).await.is_err() {
                    return Ok(());
                }
            }
            let _ = tx
                .send(WriteContentRequest {
                    action: WriteAction::Commit as i32,
                    r#ref: r2.clone(),
                    total,
                    expected: expected.clone(),
                    offset,
                    data: Vec::new(),
                    labels,
                })
                .await;
            Ok::<_, Error>(())
        };
        let request = self.req_lease(tokio_stream::wrappers::ReceiverStream::new(rx), lease);
        let mut client = self.content();
        let receive = async move {
            let mut responses = match client.write(request).await {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(status_err("content write", s)),
            };
            loop {
                match responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                    Err(s) => return Err(status_err("content write", s)),
                }
            }
        };
        let (sent, received) = tokio::join!(send, receive);
        sent?;
        received.map_err(|e| Error::Image {
            image: desc.digest.clone(),
            message: format!("cannot store the blob: {e}"),
        })
    }

    async fn write_bytes(
        &self,
        lease: &str,
        desc: &Desc,
        labels: HashMap<String, String>,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let stream = futures::stream::once(async move { Ok(Bytes::from(bytes)) }).boxed();
        self.write_blob(lease, desc, labels, stream).await
    }

    /// Reads a whole blob from containerd's content store.
    pub(super) async fn read_content(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .content()
            .read(self.req(ReadContentRequest { digest: digest.into(), offset: 0, size: 0 }))
            .await
            .map_err(|s| status_err(&format!("read content {digest}"), s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream.message().await.map_err(|s| status_err("read content", s))? {
            out.extend_from_slice(&m.data);
        }
        Ok(out)
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match self
            .snapshots()
            .stat(
                self.req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() }),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(status_err("snapshot stat", s)),
        }
    }

    /// Unpacks the layers into committed snapshots named by chain id.
    async fn unpack(&self, lease: &str, layers: &[Desc], diff_ids: &[String]) -> Result<String> {
        let chains = chain_ids(diff_ids);
        let mut parent = String::new();
        for (i, layer) in layers.iter().enumerate() {
            let chain = chains[i].clone();
            if self.snapshot_exists(&chain).await? {
                parent = chain;
                continue;
            }
            static KEYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = KEYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let key = format!("extract-{}-{}-{n} {chain}", std::process::id(), crate::now_ms());
            let mounts = self
                .snapshots()
                .prepare(self.req_lease(
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: Default::default(),
                    },
                    lease,
                ))
                .await
                .map_err(|s| status_err("snapshot prepare", s))?
                .into_inner()
                .mounts;
            let diff =
                containerd_client::services::v1::diff_client::DiffClient::new(self.channel.clone());
            let applied = diff
                .clone()
                .apply(self.req_lease(
                    ApplyRequest {
                        diff: Some(to_descriptor(layer)),
                        mounts,
                        payloads: Default::default(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await
                .map_err(|s| status_err(&format!("apply layer {}", layer.digest), s))?
                .into_inner();
            let got = applied.applied.map(|d| d.digest).unwrap_or_default();
            if got != diff_ids[i] {
                let _ = self
                    .snapshots()
                    .remove(
                        self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key }),
                    )
                    .await;
                return Err(Error::Image {
                    image: layer.digest.clone(),
                    message: format!(
                        "layer {i} unpacked to {got}, but the image config says {}",
                        diff_ids[i]
                    ),
                });
            }
            match self
                .snapshots()
                .commit(self.req_lease(
                    CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        name: chain.clone(),
                        key: key.clone(),
                        labels: Default::default(),
                    },
                    lease,
                ))
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => {
                    let _ =
                        self.snapshots()
                            .remove(self.req(RemoveSnapshotRequest {
                                snapshotter: SNAPSHOTTER.into(),
                                key,
                            }))
                            .await;
                }
                Err(s) => return Err(status_err("snapshot commit", s)),
            }
            parent = chain;
        }
        Ok(parent)
    }

    /// Stores the image `name` whose target (manifest or index) is `target`, from `source`.
    pub(super) async fn store_image<S: BlobSource>(
        &self,
        source: &S,
        name: &str,
        target: Desc,
        target_bytes: Vec<u8>,
    ) -> Result<ImageInfo> {
        let lease = self.lease_create().await?;
        let result = self.store_image_leased(source, name, target, target_bytes, &lease).await;
        self.lease_delete(&lease).await;
        result
    }

    async fn store_image_leased<S: BlobSource>(
        &self,
        source: &S,
        name: &str,
        target: Desc,
        target_bytes: Vec<u8>,
        lease: &str,
    ) -> Result<ImageInfo> {
        let img_err = |message: String| Error::Image { image: name.to_string(), message };
        let (manifest_desc, manifest_bytes) = if is_index(&target.media_type, &target_bytes) {
            let index: Index = serde_json::from_slice(&target_bytes)
                .map_err(|e| img_err(format!("its index is not valid JSON: {e}")))?;
            let entry = pick_platform(&index)
                .ok_or_else(|| img_err("it has no linux/amd64 manifest".to_string()))?
                .clone();
            let bytes = source.read(&entry).await?;
            (entry, bytes)
        } else {
            (target.clone(), target_bytes.clone())
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| img_err(format!("its manifest is not valid JSON: {e}")))?;
        let config_bytes = source.read(&manifest.config).await?;
        let config = ImageConfig::parse(&config_bytes)?;
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(img_err(format!(
                "its manifest has {} layers but its config {} diff ids",
                manifest.layers.len(),
                config.diff_ids.len()
            )));
        }
        let chains = chain_ids(&config.diff_ids);
        for (i, layer) in manifest.layers.iter().enumerate() {
            if self.content_exists(&layer.digest).await? {
                continue;
            }
            let labels = HashMap::from([(
                "containerd.io/uncompressed".to_string(),
                config.diff_ids[i].clone(),
            )]);
            let stream = source.stream(layer).await?;
            self.write_blob(lease, layer, labels, stream).await?;
        }
        let mut labels = HashMap::new();
        if let Some(top) = chains.last() {
            labels.insert(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top.clone());
        }
        self.write_bytes(lease, &manifest.config, labels, config_bytes).await?;
        let mut labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        let mut mdesc = manifest_desc.clone();
        if mdesc.media_type.is_empty() {
            mdesc.media_type = if manifest.media_type.is_empty() {
                OCI_MANIFEST.into()
            } else {
                manifest.media_type.clone()
            };
        }
        self.write_bytes(lease, &mdesc, labels, manifest_bytes).await?;
        if mdesc.digest != target.digest {
            let labels = HashMap::from([(
                "containerd.io/gc.ref.content.m.0".to_string(),
                mdesc.digest.clone(),
            )]);
            self.write_bytes(lease, &target, labels, target_bytes).await?;
        }
        let top = self.unpack(lease, &manifest.layers, &config.diff_ids).await?;
        self.put_image(name, &target).await?;
        Ok(ImageInfo { name: name.to_string(), digest: target.digest, config, chain_id: top })
    }

    /// Creates (or points anew) the image record `name`.
    pub(super) async fn put_image(&self, name: &str, target: &Desc) -> Result<()> {
        let image = Image {
            name: name.to_string(),
            labels: Default::default(),
            target: Some(to_descriptor(target)),
            created_at: None,
            updated_at: None,
        };
        match self
            .images_client()
            .create(
                self.req(CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                }),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => self
                .images_client()
                .update(self.req(UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                }))
                .await
                .map(|_| ())
                .map_err(|s| status_err(&format!("update image {name}"), s)),
            Err(s) => Err(status_err(&format!("create image {name}"), s)),
        }
    }

    pub(super) async fn list_images(&self) -> Result<Vec<Image>> {
        Ok(self
            .images_client()
            .list(self.req(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(|s| status_err("list images", s))?
            .into_inner()
            .images)
    }

    /// The image record's content, unpacked (again, if its snapshots were collected).
    pub(super) async fn image_info(&self, name: &str, target: &Desc) -> Result<ImageInfo> {
        let img_err = |message: String| Error::Image { image: name.to_string(), message };
        let target_bytes = self.read_content(&target.digest).await?;
        let manifest_bytes = if is_index(&target.media_type, &target_bytes) {
            let index: Index = serde_json::from_slice(&target_bytes)
                .map_err(|e| img_err(format!("its index is not valid JSON: {e}")))?;
            let entry = pick_platform(&index)
                .ok_or_else(|| img_err("it has no linux/amd64 manifest".to_string()))?;
            self.read_content(&entry.digest).await?
        } else {
            target_bytes
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| img_err(format!("its manifest is not valid JSON: {e}")))?;
        let config = ImageConfig::parse(&self.read_content(&manifest.config.digest).await?)?;
        let chains = chain_ids(&config.diff_ids);
        let top = chains.last().cloned().unwrap_or_default();
        if !top.is_empty() && !self.snapshot_exists(&top).await? {
            let lease = self.lease_create().await?;
            let r = self.unpack(&lease, &manifest.layers, &config.diff_ids).await;
            self.lease_delete(&lease).await;
            r?;
        }
        Ok(ImageInfo {
            name: name.to_string(),
            digest: target.digest.clone(),
            config,
            chain_id: top,
        })
    }

    /// Drops the image's layer snapshots (those no container still builds on) and unpacks it
    /// again.
    pub(super) async fn unpack_again(&self, image: &ImageInfo) -> Result<ImageInfo> {
        for chain in chain_ids(&image.config.diff_ids).iter().rev() {
            let r = self
                .snapshots()
                .remove(self.req(RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: chain.clone(),
                }))
                .await;
            if let Err(s) = r {
                tracing::warn!("cannot remove snapshot {chain}: {}", s.message());
                break;
            }
        }
        let img =
            self.images_client()
                .get(self.req(containerd_client::services::v1::GetImageRequest {
                    name: image.name.clone(),
                }))
                .await
                .map_err(|s| status_err(&format!("get image {}", image.name), s))?
                .into_inner()
                .image;
        let target = img.as_ref().and_then(desc_of).ok_or_else(|| Error::Image {
            image: image.name.clone(),
            message: "it has no target".into(),
        })?;
        self.image_info(&image.name, &target).await
    }

    pub(super) async fn images_impl(&self) -> Result<Vec<StoredImage>> {
        Ok(self
            .list_images()
            .await?
            .into_iter()
            .map(|i| StoredImage {
                digest: i.target.map(|t| t.digest).unwrap_or_default(),
                created_ms: i.created_at.map_or(0, |t| {
                    u64::try_from(t.seconds).unwrap_or(0) * 1000
                        + u64::try_from(t.nanos / 1_000_000).unwrap_or(0)
                }),
                name: i.name,
            })
            .collect())
    }

    pub(super) async fn delete_image_impl(&self, name: &str) -> Result<()> {
        match self
            .images_client()
            .delete(self.req(DeleteImageRequest { name: name.into(), sync: true, target: None }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status_err(&format!("delete image {name}"), s)),
        }
    }
}

pub(super) fn desc_of(image: &Image) -> Option<Desc> {
    image.target.as_ref().map(|t| Desc {
        media_type: t.media_type.clone(),
        digest: t.digest.clone(),
        size: t.size,
        platform: None,
        annotations: HashMap::new(),
    })
}

/// `secs` since the epoch as RFC 3339 UTC (for containerd's lease expiry label).
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], sha256_digest(b"sha256:aaaa sha256:bbbb"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_651_200), "2026-11-26T00:00:00Z");
    }

    #[test]
    fn indexes_are_told_from_manifests() {
        assert!(is_index("", br#"{"manifests": []}"#));
        assert!(!is_index("", br#"{"config": {}}"#));
        assert_eq!(media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#), OCI_INDEX);
    }
}
