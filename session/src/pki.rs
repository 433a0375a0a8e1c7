//! Certificates and keys: fingerprints, what a certificate says, a node key and its CSR.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read the certificate: {0}")]
    BadCertificate(String),
    #[error("cannot make a key or certificate request: {0}")]
    Generate(String),
}

/// sha256 of a certificate's DER, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Every certificate in a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::BadCertificate("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// What Backroom reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    /// The serial number's bytes, lower-case hex.
    pub serial: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(CertInfo {
        common_name,
        serial: hex::encode(cert.raw_serial()),
        not_before_ms: cert.validity().not_before.timestamp() * 1000,
        not_after_ms: cert.validity().not_after.timestamp() * 1000,
    })
}

/// A new ECDSA P-256 key (PEM) and a certificate request for it (PEM). Central decides what
/// the certificate says; the request only proves the node holds the key.
pub fn new_key_and_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = rcgen::KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
    let key_pem = key.serialize_pem();
    let csr_pem = csr_for_key(&key_pem, common_name)?;
    Ok((key_pem, csr_pem))
}

/// sha256 of a public key's raw bytes (the subject public key of its certificate or request),
/// lower-case hex: what ties an enrollment to the key that made it.
pub fn key_fingerprint(public_key_raw: &[u8]) -> String {
    hex::encode(Sha256::digest(public_key_raw))
}

/// The fingerprint of the public key of a private key (PEM).
pub fn key_pem_fingerprint(key_pem: &str) -> Result<String, PkiError> {
    let key = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|e| PkiError::BadCertificate(format!("the node key: {e}")))?;
    Ok(key_fingerprint(key.public_key_raw()))
}

/// The fingerprint of the public key a certificate (DER) is for.
pub fn cert_key_fingerprint(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    Ok(key_fingerprint(&cert.public_key().subject_public_key.data))
}

/// A certificate request (PEM) for the key `key_pem` already has: a retried enrollment sends
/// the same key again, so central can tell it from another node's.
pub fn csr_for_key(key_pem: &str, common_name: &str) -> Result<String, PkiError> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| PkiError::Generate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let csr = params.serialize_request(&key).map_err(|e| PkiError::Generate(e.to_string()))?;
    csr.pem().map_err(|e| PkiError::Generate(e.to_string()))
}
