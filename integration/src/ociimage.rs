//! Small OCI images built here around busybox-static (no downloads): one uncompressed layer
//! with `/bin/busybox`, its applets and a web root; pushed to a registry over plain HTTP or
//! written as an OCI archive. The tests use them, and so does `make run` for its demo store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // builds test fixtures: a failure is a broken machine

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub struct TestImage {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
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
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": [],
                "Cmd": cmd,
                "Env": ["PATH=/bin", "IMAGE_PAGE=yes"],
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": digest(&config), "size": config.len() },
            "layers": [ { "mediaType": OCI_LAYER, "digest": layer_digest, "size": layer.len() } ],
        }))
        .unwrap();
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
        add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": self.digest(),
                "size": self.manifest.len(),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
                },
            }],
        }))
        .unwrap();
        add(&mut b, "index.json", &index);
        for blob in [&self.layer, &self.config, &self.manifest] {
            let hex = digest(blob).trim_start_matches("sha256:").to_string();
            add(&mut b, &format!("blobs/sha256/{hex}"), blob);
        }
        b.into_inner().unwrap().flush().unwrap();
    }
}
