//! Getting an image a workload names: found among the images containerd holds (by name, or by
//! the reference's digest for imported images), else pulled from its registry with
//! `oci-client` (plain HTTP only for loopback registries and those the node names insecure,
//! unless the node has a CA for the registry: then https).

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference};

use super::containerd::Containerd;
use oci_spec::image::{Descriptor, MediaType};

use super::content::{
    BlobSource, DOCKER_LIST, DOCKER_MANIFEST, desc_of, media_type_of, sha256_digest,
};
use super::{ImageInfo, plain_http};
use crate::error::{Error, Result};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const ACCEPTED: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

static RUSTLS: std::sync::Once = std::sync::Once::new();

/// rustls needs one process-wide crypto provider: ring (the one tonic uses too).
pub fn install_crypto_provider() {
    RUSTLS.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

struct Registry {
    client: Client,
    reference: Reference,
    auth: OciAuth,
}

fn pull_err(image: &str, source: oci_client::errors::OciDistributionError) -> Error {
    Error::Pull { image: image.to_string(), source }
}

fn pull_msg(image: &str, message: String) -> Error {
    Error::Image { image: image.to_string(), message }
}

impl BlobSource for Registry {
    async fn read(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let whole = self.reference.whole();
        let digest = desc.digest().to_string();
        let kind = desc.media_type().as_ref();
        let bytes = if kind.contains("manifest") || kind.contains("index") {
            let r = self.reference.clone_with_digest(digest.clone());
            self.client
                .pull_manifest_raw(&r, &self.auth, ACCEPTED)
                .await
                .map_err(|e| pull_err(&whole, e))?
                .0
                .to_vec()
        } else {
            let mut out = Vec::new();
            self.client
                .pull_blob(&self.reference, digest.as_str(), &mut out)
                .await
                .map_err(|e| pull_err(&whole, e))?;
            out
        };
        if sha256_digest(&bytes) != digest {
            return Err(pull_msg(&whole, format!("blob {digest} does not match its digest")));
        }
        Ok(bytes)
    }

    async fn stream(
        &self,
        desc: &Descriptor,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let s = self
            .client
            .pull_blob_stream(&self.reference, desc.digest().as_ref())
            .await
            .map_err(|e| pull_err(&self.reference.whole(), e))?;
        Ok(s.stream.map_err(std::io::Error::other).boxed())
    }
}

/// The repository part of a reference (no tag, no digest).
fn repo_and_tag(name: &str) -> (&str, Option<&str>) {
    let no_digest = name.split('@').next().unwrap_or(name);
    let slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[slash..].rfind(':') {
        Some(i) => (&no_digest[..slash + i], Some(&no_digest[slash + i + 1..])),
        None => (no_digest, None),
    }
}

impl Containerd {
    pub(super) async fn ensure_image_impl(
        &self,
        image: &backroom_profiles::ImageRef,
    ) -> Result<ImageInfo> {
        let want = image.to_string();
        let images = self.list_images().await?;
        let by_name = images.iter().find(|i| i.name == want);
        let found = by_name.or_else(|| match &image.digest {
            // An image imported under another name (or by tag) with this digest.
            Some(d) => images.iter().find(|i| i.target.as_ref().is_some_and(|t| &t.digest == d)),
            // Tag only: the same repository and tag, whatever digest it was pulled at.
            None => images.iter().find(|i| {
                let (r, t) = repo_and_tag(&i.name);
                r == image.repository && t == image.tag.as_deref() && !i.name.contains('@')
            }),
        });
        if let Some(img) = found {
            let target = desc_of(img)?;
            let info = self.image_info(&want, &target).await?;
            if img.name != want {
                self.put_image(&want, &target).await?;
            }
            return Ok(info);
        }
        self.pull(image).await
    }

    async fn pull(&self, image: &backroom_profiles::ImageRef) -> Result<ImageInfo> {
        install_crypto_provider();
        let want = image.to_string();
        let reference: Reference = want
            .parse()
            .map_err(|e| pull_msg(&want, format!("it is not an image reference: {e}")))?;
        let registry = reference.resolve_registry().to_string();
        let cas = self.config.registry_cas.get(&registry);
        let protocol = if cas.is_none() && plain_http(&registry, &self.config.insecure_registries) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let extra_root_certificates = cas
            .into_iter()
            .flatten()
            .map(|pem| oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.as_bytes().to_vec(),
            })
            .collect();
        let client = Client::new(ClientConfig {
            protocol,
            extra_root_certificates,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        });
        let auth = match self.config.auth.get(&registry) {
            Some(a) => OciAuth::Basic(a.username.clone(), a.password.clone()),
            None => OciAuth::Anonymous,
        };
        let (bytes, digest) = client
            .pull_manifest_raw(&reference, &auth, ACCEPTED)
            .await
            .map_err(|e| pull_err(&want, e))?;
        if let Some(d) = &image.digest
            && d != &digest
        {
            return Err(pull_msg(
                &want,
                format!("the registry served {digest}, not the pinned {d}"),
            ));
        }
        let bytes: Vec<u8> = bytes.to_vec();
        let served: oci_spec::image::Digest = digest.parse().map_err(|e| {
            pull_msg(
                &want,
                format!("the registry served the digest {digest}, which is not valid: {e}"),
            )
        })?;
        let media_type: MediaType = media_type_of(&bytes);
        let target = Descriptor::new(media_type, u64::try_from(bytes.len()).unwrap_or(0), served);
        let source = Registry { client, reference, auth };
        self.store_image(&source, &want, target, bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_and_tag_split() {
        assert_eq!(repo_and_tag("127.0.0.1:5000/t/web:1"), ("127.0.0.1:5000/t/web", Some("1")));
        assert_eq!(repo_and_tag("127.0.0.1:5000/t/web"), ("127.0.0.1:5000/t/web", None));
        assert_eq!(repo_and_tag("reg/web:2@sha256:00"), ("reg/web", Some("2")));
    }
}
