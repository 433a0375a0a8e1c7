//! Small OCI images built here around busybox-static (no downloads): one uncompressed layer
//! with `/bin/busybox`, its applets and a web root; pushed to a registry over plain HTTP or
//! written as an OCI archive. The tests use them, and so does `make run` for its demo store.
//! Manifests, configs, indexes and the layout marker are `oci-spec`'s image types.

#![allow(clippy::unwrap_used, clippy::expect_used)] // builds test fixtures: a failure is a broken machine

use std::io::Write;
use std::path::Path;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

/// The manifest's media type, as a registry is told it.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct TestImage {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The descriptor of a blob of `media_type`.
fn descriptor(media_type: MediaType, blob: &[u8]) -> Descriptor {
    let d: Digest = digest(blob).parse().unwrap();
    Descriptor::new(media_type, blob.len() as u64, d)
}

impl TestImage {
    /// An image whose default command is `cmd` (busybox applets), with `/www/index.html`
    /// holding `page`. `id` goes into `/etc/image-id`: images with different ids share no
    /// layer (tests running side by side want that; the same id gives the same image).
    pub fn busybox(cmd: &[&str], page: &str, id: &str) -> Self {
        let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
        let mut b = tar::Builder::new(Vec::new());
        let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(0);
            b.append_data(&mut h, path, std::io::empty()).unwrap();
        };
        for d in ["bin", "www", "tmp", "etc", "data", "proc", "sys", "dev"] {
            dir(&mut b, d);
        }
        let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            b.append_data(&mut h, path, data).unwrap();
        };
        file(&mut b, "bin/busybox", 0o755, &busybox);
        file(&mut b, "www/index.html", 0o644, page.as_bytes());
        file(&mut b, "etc/passwd", 0o644, b"root:x:0:0:root:/:/bin/sh\n");
        // Each image its own layer: tests running side by side share no snapshot.
        file(&mut b, "etc/image-id", 0o644, id.as_bytes());
        for applet in
            ["sh", "httpd", "sleep", "cat", "false", "dd", "hostname", "echo", "grep", "test"]
        {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            h.set_mtime(0);
            b.append_link(&mut h, format!("bin/{applet}"), "busybox").unwrap();
        }
        let layer = b.into_inner().unwrap();
        let layer_digest = digest(&layer);
        let strings = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        let run = ConfigBuilder::default()
            .entrypoint(Vec::<String>::new())
            .cmd(strings(cmd))
            .env(strings(&["PATH=/bin", "IMAGE_PAGE=yes"]))
            .working_dir("/")
            .build()
            .unwrap();
        let config = ImageConfigurationBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .config(run)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![layer_digest.clone()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
            .to_string()
            .unwrap()
            .into_bytes();
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(MediaType::ImageConfig, &config))
            .layers(vec![descriptor(MediaType::ImageLayer, &layer)])
            .build()
            .unwrap()
            .to_string()
            .unwrap()
            .into_bytes();
        TestImage { layer, config, manifest }
    }

    /// An HTTP server on port 8080 serving `/www` (a page naming `version`).
    pub fn web(version: &str, id: &str) -> Self {
        Self::busybox(
            &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
            &format!("version {version}\n"),
            id,
        )
    }

    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }

    /// Pushes it to `registry` (plain HTTP, e.g. `127.0.0.1:5000`) as `repo:tag`; returns
    /// `registry/repo:tag@digest`.
    pub async fn push_to(&self, registry: &str, repo: &str, tag: &str) -> String {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let reference: oci_client::Reference = format!("{registry}/{repo}:{tag}").parse().unwrap();
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let _ = client
            .auth(
                &reference,
                &oci_client::secrets::RegistryAuth::Anonymous,
                oci_client::RegistryOperation::Push,
            )
            .await;
        client
            .push_blob(&reference, self.layer.clone(), &digest(&self.layer))
            .await
            .expect("push the layer");
        client
            .push_blob(&reference, self.config.clone(), &digest(&self.config))
            .await
            .expect("push the config");
        client
            .push_manifest_raw(
                &reference,
                self.manifest.clone(),
                reqwest::header::HeaderValue::from_static(OCI_MANIFEST),
            )
            .await
            .expect("push the manifest");
        format!("{registry}/{repo}:{tag}@{}", self.digest())
    }

    /// Writes an OCI archive holding it under `name`.
    pub fn write_archive(&self, path: &Path, name: &str) {
        let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
        let add = |b: &mut tar::Builder<std::fs::File>, p: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            b.append_data(&mut h, p, data).unwrap();
        };
        let layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build().unwrap();
        add(&mut b, "oci-layout", layout.to_string().unwrap().as_bytes());
        let mut manifest = descriptor(MediaType::ImageManifest, &self.manifest);
        manifest.set_annotations(Some(
            [
                ("io.containerd.image.name".to_string(), name.to_string()),
                (
                    "org.opencontainers.image.ref.name".to_string(),
                    name.rsplit(':').next().unwrap().to_string(),
                ),
            ]
            .into(),
        ));
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .manifests(vec![manifest])
            .build()
            .unwrap()
            .to_string()
            .unwrap()
            .into_bytes();
        add(&mut b, "index.json", &index);
        for blob in [&self.layer, &self.config, &self.manifest] {
            let hex = digest(blob).trim_start_matches("sha256:").to_string();
            add(&mut b, &format!("blobs/sha256/{hex}"), blob);
        }
        b.into_inner().unwrap().flush().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

    #[test]
    fn the_image_reads_back_as_oci_with_matching_digests() {
        let img = TestImage::web("1.0", "oci-spec-test");
        let m = ImageManifest::from_reader(img.manifest.as_slice()).unwrap();
        assert_eq!(m.media_type(), &Some(MediaType::ImageManifest));
        assert_eq!(m.config().digest().to_string(), digest(&img.config));
        assert_eq!(m.config().size(), img.config.len() as u64);
        assert_eq!(m.layers()[0].digest().to_string(), digest(&img.layer));
        let c = ImageConfiguration::from_reader(img.config.as_slice()).unwrap();
        let run = c.config().as_ref().unwrap();
        assert_eq!(run.cmd().as_ref().unwrap()[1], "httpd");
        assert_eq!(run.entrypoint().as_deref(), Some(&[][..]), "the image's entrypoint is empty");
        assert_eq!(c.rootfs().diff_ids(), &[digest(&img.layer)]);
        // What containerd and registries read: the JSON field names of the OCI spec.
        let text = String::from_utf8(img.config.clone()).unwrap();
        assert!(text.contains("\"Cmd\":[") && text.contains("\"diff_ids\":["), "{text}");

        let d = tempfile::tempdir().unwrap();
        let archive = d.path().join("img.tar");
        img.write_archive(&archive, "registry.example/web:1.0");
        let mut files = std::collections::BTreeMap::new();
        let mut a = tar::Archive::new(std::fs::File::open(&archive).unwrap());
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            files.insert(e.path().unwrap().display().to_string(), body);
        }
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index = ImageIndex::from_reader(files["index.json"].as_slice()).unwrap();
        let entry = &index.manifests()[0];
        assert_eq!(entry.digest().to_string(), img.digest());
        let names = entry.annotations().as_ref().unwrap();
        assert_eq!(names["io.containerd.image.name"], "registry.example/web:1.0");
        assert_eq!(names["org.opencontainers.image.ref.name"], "1.0");
        let hex = img.digest().trim_start_matches("sha256:").to_string();
        assert_eq!(files[&format!("blobs/sha256/{hex}")], img.manifest);
    }
}
