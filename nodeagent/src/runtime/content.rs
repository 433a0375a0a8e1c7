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
use containerd_client::types::Descriptor as CtdDescriptor;
use futures::StreamExt;
use futures::stream::BoxStream;
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os};
use sha2::{Digest, Sha256};
use tonic::Code;

use super::containerd::{Containerd, SNAPSHOTTER, status_err};
use super::{ImageInfo, StoredImage};
use crate::error::{Error, Result};
use crate::spec::ImageConfig;

/// Docker's media types, which registries still serve beside the OCI ones.
pub(super) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Whether a manifest-ish document is an index (by media type, else by shape).
pub(super) fn is_index(media_type: &MediaType, bytes: &[u8]) -> bool {
    match media_type {
        MediaType::ImageIndex => return true,
        MediaType::ImageManifest => return false,
        MediaType::Other(m) if m == DOCKER_LIST => return true,
        MediaType::Other(m) if m == DOCKER_MANIFEST => return false,
        _ => {}
    }
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| v.get("manifests").is_some())
}

/// The media type a manifest-ish document declares, or a guess from its shape.
pub(super) fn media_type_of(bytes: &[u8]) -> MediaType {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => MediaType::from(m),
        None if v.get("manifests").is_some() => MediaType::ImageIndex,
        None => MediaType::ImageManifest,
    }
}

/// The entry of an index for this machine (linux on its architecture), or the only one.
pub(super) fn pick_platform(index: &ImageIndex) -> Option<&Descriptor> {
    let arch = Arch::default();
    let list = index.manifests();
    list.iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == arch)
        })
        .or_else(|| if list.len() == 1 { list.first() } else { None })
}

/// A manifest or an index, parsed; `image` and `what` name it in the error.
pub(super) fn parse<T: serde::de::DeserializeOwned>(
    image: &str,
    what: &'static str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::ImageJson {
        image: image.to_string(),
        what,
        source,
    })
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
    fn read(&self, desc: &Descriptor) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// A layer, as a stream (containerd checks the digest when the write is committed).
    fn stream(
        &self,
        desc: &Descriptor,
    ) -> impl Future<Output = Result<BoxStream<'static, std::io::Result<Bytes>>>> + Send;
}

use std::future::Future;

fn to_descriptor(d: &Descriptor) -> CtdDescriptor {
    CtdDescriptor {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: i64::try_from(d.size()).unwrap_or(i64::MAX),
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
        let now = self.clock.now_ms();
        let id = format!("backroom-import-{}-{now}-{n}", std::process::id());
        let mut labels = std::collections::HashMap::new();
        // A lease outlives a crashed import by an hour at most.
        let expire = backroom_daemon::clock::rfc3339(now.saturating_add(3_600_000));
        labels.insert("containerd.io/gc.expire".to_string(), expire);
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
            let e = status_err("delete lease", s);
            tracing::warn!(lease = id, error = %backroom_daemon::Chain(&e), "cannot delete the import lease");
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
        desc: &Descriptor,
        labels: HashMap<String, String>,
        mut data: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<()> {
        let digest = desc.digest().to_string();
        if self.content_exists(&digest).await? {
            return Ok(());
        }
        // Unique per write: two workloads pulling one image at once must not share an ingest.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reference = format!("backroom-{}-{n}-{digest}", std::process::id());
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let total = i64::try_from(desc.size()).unwrap_or(i64::MAX);
        let expected = digest.clone();
        let r2 = reference.clone();
        let send = async move {
            let mut offset: i64 = 0;
            while let Some(chunk) = data.next().await {
                let chunk =
                    chunk.map_err(|source| Error::Blob { digest: expected.clone(), source })?;
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
        received
    }

    async fn write_bytes(
        &self,
        lease: &str,
        desc: &Descriptor,
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
    async fn unpack(
        &self,
        lease: &str,
        layers: &[Descriptor],
        diff_ids: &[String],
    ) -> Result<String> {
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
            let key = format!("extract-{}-{}-{n} {chain}", std::process::id(), self.clock.now_ms());
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
                .map_err(|s| status_err(&format!("apply layer {}", layer.digest()), s))?
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
                    image: layer.digest().to_string(),
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
        target: Descriptor,
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
        target: Descriptor,
        target_bytes: Vec<u8>,
        lease: &str,
    ) -> Result<ImageInfo> {
        let (manifest_desc, manifest_bytes) = if is_index(target.media_type(), &target_bytes) {
            let index: ImageIndex = parse(name, "index", &target_bytes)?;
            let entry = pick_platform(&index).cloned().ok_or_else(|| Error::Image {
                image: name.to_string(),
                message: format!("it has no linux/{} manifest", Arch::default()),
            })?;
            let bytes = source.read(&entry).await?;
            (entry, bytes)
        } else {
            (target.clone(), target_bytes.clone())
        };
        let manifest: ImageManifest = parse(name, "manifest", &manifest_bytes)?;
        let config_bytes = source.read(manifest.config()).await?;
        let config = ImageConfig::parse(&config_bytes)?;
        let layers = manifest.layers();
        if config.diff_ids.len() != layers.len() {
            return Err(Error::Image {
                image: name.to_string(),
                message: format!(
                    "its manifest has {} layers but its config {} diff ids",
                    layers.len(),
                    config.diff_ids.len()
                ),
            });
        }
        let chains = chain_ids(&config.diff_ids);
        for (i, layer) in layers.iter().enumerate() {
            if self.content_exists(layer.digest().as_ref()).await? {
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
        self.write_bytes(lease, manifest.config(), labels, config_bytes).await?;
        let mut labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config().digest().to_string(),
        )]);
        for (i, l) in layers.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest().to_string());
        }
        // The manifest's own bytes, as the registry or the archive had them: serialising the
        // parsed manifest again would change its digest.
        self.write_bytes(lease, &manifest_desc, labels, manifest_bytes).await?;
        if manifest_desc.digest() != target.digest() {
            let labels = HashMap::from([(
                "containerd.io/gc.ref.content.m.0".to_string(),
                manifest_desc.digest().to_string(),
            )]);
            self.write_bytes(lease, &target, labels, target_bytes).await?;
        }
        let top = self.unpack(lease, layers, &config.diff_ids).await?;
        self.put_image(name, &target).await?;
        Ok(ImageInfo {
            name: name.to_string(),
            digest: target.digest().to_string(),
            config,
            chain_id: top,
        })
    }

    /// Creates (or points anew) the image record `name`.
    pub(super) async fn put_image(&self, name: &str, target: &Descriptor) -> Result<()> {
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
    pub(super) async fn image_info(&self, name: &str, target: &Descriptor) -> Result<ImageInfo> {
        let target_bytes = self.read_content(target.digest().as_ref()).await?;
        let manifest_bytes = if is_index(target.media_type(), &target_bytes) {
            let index: ImageIndex = parse(name, "index", &target_bytes)?;
            let entry = pick_platform(&index).ok_or_else(|| Error::Image {
                image: name.to_string(),
                message: format!("it has no linux/{} manifest", Arch::default()),
            })?;
            self.read_content(entry.digest().as_ref()).await?
        } else {
            target_bytes
        };
        let manifest: ImageManifest = parse(name, "manifest", &manifest_bytes)?;
        let config =
            ImageConfig::parse(&self.read_content(manifest.config().digest().as_ref()).await?)?;
        let chains = chain_ids(&config.diff_ids);
        let top = chains.last().cloned().unwrap_or_default();
        if !top.is_empty() && !self.snapshot_exists(&top).await? {
            let lease = self.lease_create().await?;
            let r = self.unpack(&lease, manifest.layers(), &config.diff_ids).await;
            self.lease_delete(&lease).await;
            r?;
        }
        Ok(ImageInfo {
            name: name.to_string(),
            digest: target.digest().to_string(),
            config,
            chain_id: top,
        })
    }

    /// Drops the image's layer snapshots (those no container still builds on) and unpacks it
    /// again.
    pub(super) async fn unpack_again(&self, image: &ImageInfo) -> Result<ImageInfo> {
        'layers: for chain in chain_ids(&image.config.diff_ids).iter().rev() {
            // containerd refuses for a moment while its GC holds the snapshotter, or while the
            // failed container's own snapshot (a child of the top layer) is still going away.
            let mut tries = 0;
            loop {
                let r = self
                    .snapshots()
                    .remove(self.req(RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: chain.clone(),
                    }))
                    .await;
                match r {
                    Ok(_) => break,
                    Err(s) if s.code() == Code::NotFound => break,
                    Err(_) if tries < 25 => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    Err(s) => {
                        let e = status_err(&format!("remove snapshot {chain}"), s);
                        tracing::warn!(error = %backroom_daemon::Chain(&e), "cannot unpack the image again from scratch");
                        break 'layers;
                    }
                }
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
        let target = img.as_ref().map(desc_of).transpose()?.ok_or_else(|| Error::Image {
            image: image.name.clone(),
            message: "it is gone".into(),
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

/// The target of a containerd image record, as an OCI descriptor.
pub(super) fn desc_of(image: &Image) -> Result<Descriptor> {
    let bad = |message: String| Error::Image { image: image.name.clone(), message };
    let t = image.target.as_ref().ok_or_else(|| bad("it has no target".into()))?;
    let digest: oci_spec::image::Digest = t
        .digest
        .parse()
        .map_err(|e| bad(format!("its target digest {} is not valid: {e}", t.digest)))?;
    Ok(Descriptor::new(
        MediaType::from(t.media_type.as_str()),
        u64::try_from(t.size).unwrap_or(0),
        digest,
    ))
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
    fn indexes_are_told_from_manifests() {
        let unknown = MediaType::Other(String::new());
        assert!(is_index(&unknown, br#"{"manifests": []}"#));
        assert!(!is_index(&unknown, br#"{"config": {}}"#));
        assert!(is_index(&MediaType::Other(DOCKER_LIST.into()), b"{}"));
        assert!(!is_index(&MediaType::ImageManifest, br#"{"manifests": []}"#));
        assert_eq!(media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#), MediaType::ImageIndex);
    }

    #[test]
    fn the_platform_entry_of_an_index() {
        let entry = |arch: &str, digit: char| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:{}","platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                digit.to_string().repeat(64)
            )
        };
        let text = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{}]}}"#,
            entry("s390x", 'a'),
            entry(&Arch::default().to_string(), 'b')
        );
        let index: ImageIndex = parse("t", "index", text.as_bytes()).unwrap();
        assert!(pick_platform(&index).unwrap().digest().to_string().ends_with("bbbb"));
        let e = parse::<ImageIndex>("t", "index", br#"{"manifests": 3}"#).unwrap_err();
        assert!(backroom_daemon::chain(&e).starts_with("image t: its index is not valid JSON: "));
        let bad = r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","size":1,"digest":"../etc:passwd"}]}"#;
        assert!(parse::<ImageIndex>("t", "index", bad.as_bytes()).is_err(), "digests are checked");
    }
}
