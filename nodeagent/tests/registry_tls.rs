//! A registry behind https with a private CA (HQ's registry): nodeagent trusts it only through
//! `--registry-ca REGISTRY=FILE`. The test puts a TLS front (a certificate for 127.0.0.1 from a
//! CA the test makes) before the loopback test registry; a registry with a CA is reached over
//! https even on loopback, so the pull goes through the front.
//! Needs `scripts/install-deps` and `scripts/start-services` (containerd, the registry).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use backroom_nodeagent::runtime::{Containerd, ContainerdConfig, Runtime, pem_certificates};
use common::image::TestImage;
use common::{CONTAINERD_SOCKET, Namespace, REGISTRY, require_services, unique};

struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let pem = p.self_signed(&key).unwrap().pem();
        TestCa { pem, issuer: rcgen::Issuer::new(p, key) }
    }

    /// A server configuration for 127.0.0.1 signed by this CA.
    fn server(&self) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(config)
    }
}

/// A TLS front on a free loopback port that forwards each connection to the test registry.
async fn tls_front(config: Arc<rustls::ServerConfig>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut up) = tokio::net::TcpStream::connect(REGISTRY).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (port, task)
}

async fn runtime(ns: &Namespace, registry: &str, ca_pem: &str) -> Containerd {
    Containerd::connect(ContainerdConfig {
        socket: CONTAINERD_SOCKET.into(),
        namespace: ns.name.clone(),
        registry_cas: BTreeMap::from([(registry.to_string(), pem_certificates(ca_pem))]),
        ..ContainerdConfig::default()
    })
    .await
    .expect("containerd answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_is_trusted_through_its_ca_and_only_through_it() {
    require_services();
    backroom_nodeagent::runtime::install_crypto_provider();
    let ns = Namespace::new();
    let image = TestImage::web("tls-1");
    let pushed = image.push("backroom-test/tls", &unique("t")).await;
    let hq = TestCa::new("HQ registry CA");
    let (port, front) = tls_front(hq.server()).await;
    let registry = format!("127.0.0.1:{port}");
    let via: backroom_profiles::ImageRef = pushed.replacen(REGISTRY, &registry, 1).parse().unwrap();

    // Another CA than the one that signed the registry's certificate: refused.
    let other = TestCa::new("some other CA");
    let e = runtime(&ns, &registry, &other.pem).await.ensure_image(&via).await.unwrap_err();
    let text = backroom_daemon::chain(&e);
    assert!(text.contains(&registry), "the error names the image: {text}");
    assert!(text.to_lowercase().contains("certificate"), "a certificate error: {text}");

    // HQ's CA: pulled over https through the front, the pinned digest checked.
    let img = runtime(&ns, &registry, &hq.pem).await.ensure_image(&via).await.unwrap();
    assert_eq!(img.digest, image.digest());
    front.abort();
}
