//! TLS for the node listener, done by central itself rather than by tonic, for one reason:
//! whether a node's certificate is still good in time is decided by central's clock at the
//! call, not by the handshake. A store that was offline past its certificate's lifetime must
//! still reach `Renew` (within the grace period, see `node_service`), and tests move central's
//! clock by hand. The handshake still checks everything else: the chain to central's CA, the
//! signature, the client-auth usage. Each call then checks the certificate against the
//! database (revoked, replaced) and against central's clock (expired).
//!
//! Connections, their limit and the handshake deadline are `listener`'s, as for the operator
//! port; this module only makes the node port's TLS configuration.

use std::sync::Arc;
use std::time::Duration;

use backroom_session::pki;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS for nodes: {0}")]
pub struct NodeTlsError(String);

/// Verifies a node's certificate chain at a moment inside the certificate's own lifetime, so
/// that time is left to the call (central's clock); see the module comment.
#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    // Enrollment comes before the node has a certificate; every other call checks for one.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let info = pki::cert_info(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let from = u64::try_from(info.not_before_ms / 1000).unwrap_or(0);
        let until = u64::try_from(info.not_after_ms / 1000).unwrap_or(0).saturating_sub(1);
        let at = now.as_secs().clamp(from, until.max(from));
        self.inner.verify_client_cert(
            end_entity,
            intermediates,
            UnixTime::since_unix_epoch(Duration::from_secs(at)),
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The node listener's TLS: central's certificate chain and key (PEM), nodes' certificates
/// checked against `ca_pem`.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<ServerConfig>, NodeTlsError> {
    let err = |what: &str, e: &dyn std::fmt::Display| NodeTlsError(format!("{what}: {e}"));
    let provider = backroom_session::tls::provider();
    let mut roots = RootCertStore::empty();
    for c in pki::certs_from_pem(ca_pem).map_err(|e| err("the CA", &e))? {
        roots.add(c).map_err(|e| err("the CA", &e))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| err("the client verifier", &e))?;
    let chain = pki::certs_from_pem(chain_pem).map_err(|e| err("central's certificate", &e))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| err("central's key", &e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("protocol versions", &e))?
        .with_client_cert_verifier(Arc::new(NodeClientVerifier { inner }))
        .with_single_cert(chain, key)
        .map_err(|e| err("central's certificate", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
