//! central's certificate authority: made on first start and kept in the data folder
//! (`ca.key` 0600, `ca.crt`). It signs central's own server certificate and every node's
//! certificate (CN = the store id, client auth only).

use std::path::Path;

use backroom_daemon::fs::write_atomic;
use backroom_session::pki;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read or write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate authority: {0}")]
    Crypto(String),
    #[error("the certificate request is not valid: {0}")]
    BadRequest(String),
}

fn crypto(e: impl std::fmt::Display) -> CaError {
    CaError::Crypto(e.to_string())
}

pub struct Ca {
    cert_pem: String,
    fingerprint: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate just issued.
pub struct Issued {
    pub cert_pem: String,
    pub serial: String,
    pub not_after_ms: i64,
    /// sha256 of the node's public key (see `backroom_session::pki::key_fingerprint`).
    pub key_fingerprint: String,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so the DER integer is these bytes exactly and
    // the serial read back from a certificate matches the one recorded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn offset(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl Ca {
    /// Loads the CA from `dir`, or makes one there.
    pub fn load_or_create(dir: &Path, now_ms: i64) -> Result<Ca, CaError> {
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| CaError::Io { path, source }
        };
        if key_path.exists() && cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(crypto)?;
            let der = pki::certs_from_pem(&cert_pem).map_err(crypto)?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(crypto)?;
            return Ok(Ca { fingerprint: pki::fingerprint(&der[0]), cert_pem, issuer });
        }
        let params = Self::params(now_ms);
        let key = KeyPair::generate().map_err(crypto)?;
        let cert = params.self_signed(&key).map_err(crypto)?;
        let cert_pem = cert.pem();
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
        write_atomic(&cert_path, cert_pem.as_bytes(), 0o644).map_err(io(&cert_path))?;
        Ok(Ca {
            fingerprint: pki::fingerprint(cert.der()),
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    fn params(now_ms: i64) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("Backroom central CA {}", now_ms / 1000));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = offset(now_ms - 3_600_000);
        p.not_after = offset(now_ms + 20 * 365 * 86_400_000);
        p.serial_number = Some(random_serial());
        p
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// sha256 of the CA certificate: what enrollment tokens carry.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// central's own TLS certificate for `names` (DNS names or IP addresses): the chain (its
    /// certificate then the CA's, so a node can find the CA it pinned) and the key.
    pub fn server_identity(
        &self,
        names: &[String],
        now_ms: i64,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(crypto)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "Backroom central");
        for n in names {
            let san = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().map_err(crypto)?),
            };
            p.subject_alt_names.push(san);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = offset(now_ms - 3_600_000);
        p.not_after = offset(now_ms + 365 * 86_400_000);
        p.serial_number = Some(random_serial());
        let cert = p.signed_by(&key, &self.issuer).map_err(crypto)?;
        Ok((format!("{}{}", cert.pem(), self.cert_pem), key.serialize_pem()))
    }

    /// sha256 of the public key in a node's certificate request: which key is enrolling.
    pub fn request_key_fingerprint(csr_pem: &str) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadRequest(e.to_string()))?;
        Ok(pki::key_fingerprint(csr.public_key.der_bytes()))
    }

    /// A node certificate for `store_id` from the node's request, valid `days` days.
    pub fn sign_node(
        &self,
        csr_pem: &str,
        store_id: &str,
        now_ms: i64,
        days: u32,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadRequest(e.to_string()))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, store_id);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let not_after_ms = now_ms + i64::from(days) * 86_400_000;
        p.not_before = offset(now_ms - 300_000);
        p.not_after = offset(not_after_ms);
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        p.serial_number = Some(serial);
        let cert = p.signed_by(&csr.public_key, &self.issuer).map_err(crypto)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial_hex,
            not_after_ms: (not_after_ms / 1000) * 1000,
            key_fingerprint: pki::key_fingerprint(csr.public_key.der_bytes()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_signs_nodes() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(d.path(), 1_700_000_000_000).unwrap();
        let again = Ca::load_or_create(d.path(), 1_800_000_000_000).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let (_key, csr) = pki::new_key_and_csr("whatever").unwrap();
        let issued = again.sign_node(&csr, "store-0042", 1_700_000_000_000, 30).unwrap();
        let der = pki::certs_from_pem(&issued.cert_pem).unwrap();
        let info = pki::cert_info(&der[0]).unwrap();
        assert_eq!(info.common_name, "store-0042", "central decides the name, not the request");
        assert_eq!(info.serial, issued.serial);
        assert_eq!(info.not_after_ms, issued.not_after_ms);
        assert_eq!(pki::cert_key_fingerprint(&der[0]).unwrap(), issued.key_fingerprint);
        assert_eq!(pki::key_pem_fingerprint(&_key).unwrap(), issued.key_fingerprint);
        assert!(again.sign_node("garbage", "s", 0, 1).is_err());
    }
}
