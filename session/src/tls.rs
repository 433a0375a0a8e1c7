//! TLS for the link, on rustls with ring.
//!
//! Enrollment: the node has no certificate and no CA yet, only the CA's fingerprint from its
//! token; [`PinnedCa`] accepts central's certificate only if it chains to a CA certificate that
//! central presents and whose fingerprint is that one. Afterwards: mTLS with the CA received at
//! enrollment and the node's own certificate.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pki::{certs_from_pem, fingerprint};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("central's address `{0}` is not a URL like https://central.example:7443")]
    BadUrl(String),
    #[error("bad TLS material: {0}")]
    Material(String),
    #[error("cannot connect to central at {url}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts a server whose chain ends in a CA certificate with a known fingerprint.
#[derive(Debug)]
pub struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    pub fn new(fingerprint: &str) -> Self {
        PinnedCa { fingerprint: fingerprint.to_ascii_lowercase(), provider: provider() }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| fingerprint(c) == self.fingerprint) else {
            return Err(rustls::Error::General(
                "central's certificate does not come from the CA named in the enrollment token"
                    .into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let rest: Vec<CertificateDer<'_>> =
            intermediates.iter().filter(|c| fingerprint(c) != self.fingerprint).cloned().collect();
        inner.verify_server_cert(end_entity, &rest, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn base() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Material(e.to_string()))
}

fn h2(mut c: ClientConfig) -> Arc<ClientConfig> {
    c.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(c)
}

/// For enrollment: trust only a CA with this fingerprint, no client certificate.
pub fn enroll_config(ca_fingerprint: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let c = base()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa::new(ca_fingerprint)))
        .with_no_client_auth();
    Ok(h2(c))
}

/// For everything after enrollment: central's CA, and the node's certificate and key.
pub fn mtls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem).map_err(|e| TlsError::Material(e.to_string()))? {
        roots.add(c).map_err(|e| TlsError::Material(e.to_string()))?;
    }
    let chain = certs_from_pem(cert_pem).map_err(|e| TlsError::Material(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Material(format!("node key: {e}")))?;
    let c = base()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Material(e.to_string()))?;
    Ok(h2(c))
}

/// For operators: central's CA only.
pub fn server_auth_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem).map_err(|e| TlsError::Material(e.to_string()))? {
        roots.add(c).map_err(|e| TlsError::Material(e.to_string()))?;
    }
    Ok(h2(base()?.with_root_certificates(roots).with_no_client_auth()))
}

/// A gRPC channel to `url` (https://host:port) over TLS configured by `config`.
/// `lazy` connects on first use instead of now.
pub async fn channel(
    url: &str,
    config: Arc<ClientConfig>,
    lazy: bool,
) -> Result<Channel, TlsError> {
    let uri: Uri = url.parse().map_err(|_| TlsError::BadUrl(url.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(TlsError::BadUrl(url.to_string()));
    }
    let host = uri
        .host()
        .ok_or_else(|| TlsError::BadUrl(url.to_string()))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name =
        ServerName::try_from(host.clone()).map_err(|_| TlsError::BadUrl(url.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    // tonic speaks plain HTTP/2 to the stream this connector returns; TLS is ours.
    let endpoint =
        Endpoint::from_shared(format!("http://{}:{port}", uri.host().unwrap_or_default()))
            .map_err(|e| TlsError::Connect { url: url.to_string(), source: e })?
            .connect_timeout(std::time::Duration::from_secs(10))
            .http2_keep_alive_interval(std::time::Duration::from_secs(20))
            .keep_alive_timeout(std::time::Duration::from_secs(20))
            .keep_alive_while_idle(true);
    let connect = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let host = host.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    if lazy {
        Ok(endpoint.connect_with_connector_lazy(connect))
    } else {
        endpoint
            .connect_with_connector(connect)
            .await
            .map_err(|source| TlsError::Connect { url: url.to_string(), source })
    }
}
