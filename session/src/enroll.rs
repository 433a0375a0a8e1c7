//! Enrollment and certificate renewal, the node's side.
//!
//! The node makes its own key (it never leaves the node), sends a certificate request with its
//! one-time token over TLS pinned to the CA fingerprint in that token, and keeps what central
//! returns under its state folder (mode 0600). Enrollment happens once: a node that already has
//! an identity uses it, whatever token it is given.

use std::path::Path;
use std::sync::Arc;

use backroom_api::node::node_service_client::NodeServiceClient;
use backroom_api::node::{EnrollRequest, RenewRequest};
use rustls::ClientConfig;

use crate::pki::{self, certs_from_pem};
use crate::tls::{self, TlsError};
use crate::token::EnrollToken;
use backroom_daemon::fs::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("central refused the enrollment: {0}")]
    Refused(String),
    #[error("central refused to renew the node certificate: {0}")]
    RenewRefused(String),
    #[error("central sent a certificate for store `{got}`, but the token is for `{want}`")]
    WrongStore { want: String, got: String },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("cannot keep the node's identity in {path}")]
    Save {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

const KEY: &str = "node.key";
const CERT: &str = "node.crt";
const CA: &str = "ca.crt";

/// The node's identity with central: its key, its certificate and central's CA.
#[derive(Clone)]
pub struct Identity {
    pub store_id: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({}, valid until {} ms)", self.store_id, self.not_after_ms)
    }
}

impl Identity {
    fn from_pems(
        key_pem: String,
        cert_pem: String,
        ca_pem: String,
    ) -> Result<Identity, EnrollError> {
        let der = certs_from_pem(&cert_pem)?;
        let info = pki::cert_info(&der[0])?;
        Ok(Identity {
            store_id: info.common_name,
            key_pem,
            cert_pem,
            ca_pem,
            not_before_ms: info.not_before_ms,
            not_after_ms: info.not_after_ms,
        })
    }

    /// The identity kept in `dir`, if the node has enrolled.
    pub fn load(dir: &Path) -> Result<Option<Identity>, EnrollError> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        match (read(KEY), read(CERT), read(CA)) {
            (Ok(k), Ok(c), Ok(ca)) => Identity::from_pems(k, c, ca).map(Some),
            _ => Ok(None),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), EnrollError> {
        for (name, text) in [(KEY, &self.key_pem), (CERT, &self.cert_pem), (CA, &self.ca_pem)] {
            let path = dir.join(name);
            write_atomic(&path, text.as_bytes(), 0o600)
                .map_err(|source| EnrollError::Save { path: path.display().to_string(), source })?;
        }
        Ok(())
    }

    pub fn tls(&self) -> Result<Arc<ClientConfig>, TlsError> {
        tls::mtls_config(&self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    /// True once less than a third of the certificate's lifetime is left.
    pub fn needs_renewal(&self, now_ms: i64) -> bool {
        let life = self.not_after_ms - self.not_before_ms;
        self.not_after_ms - now_ms < life / 3
    }
}

/// Enrolls with central at `url` using `token`, unless `dir` already holds an identity; keeps
/// the new identity in `dir`.
pub async fn enroll_once(
    url: &str,
    token: &EnrollToken,
    dir: &Path,
    agent_version: &str,
    hostname: &str,
) -> Result<Identity, EnrollError> {
    if let Some(id) = Identity::load(dir)? {
        return Ok(id);
    }
    let id = enroll(url, token, agent_version, hostname).await?;
    id.save(dir)?;
    Ok(id)
}

/// Enrolls with central at `url` using `token` and returns the identity without keeping it
/// anywhere (the fleet simulator; `enroll_once` for real nodes).
pub async fn enroll(
    url: &str,
    token: &EnrollToken,
    agent_version: &str,
    hostname: &str,
) -> Result<Identity, EnrollError> {
    let (key_pem, csr_pem) = pki::new_key_and_csr(&token.store_id)?;
    let channel = tls::channel(url, tls::enroll_config(&token.ca_fingerprint)?, false).await?;
    let reply = NodeServiceClient::new(channel)
        .enroll(EnrollRequest {
            token: token.to_string(),
            csr_pem,
            agent_version: agent_version.to_string(),
            hostname: hostname.to_string(),
        })
        .await
        .map_err(|s| EnrollError::Refused(s.message().to_string()))?
        .into_inner();
    let id = Identity::from_pems(key_pem, reply.certificate_pem, reply.ca_pem)?;
    if id.store_id != token.store_id {
        return Err(EnrollError::WrongStore { want: token.store_id.clone(), got: id.store_id });
    }
    // The CA central sent must be the one the token named.
    let ca = certs_from_pem(&id.ca_pem)?;
    if pki::fingerprint(&ca[0]) != token.ca_fingerprint {
        return Err(EnrollError::Refused(
            "central sent a CA other than the one the token names".into(),
        ));
    }
    Ok(id)
}

/// Gets a new certificate (with a new key) before the current one expires, and keeps it.
pub async fn renew(url: &str, id: &Identity, dir: &Path) -> Result<Identity, EnrollError> {
    let (key_pem, csr_pem) = pki::new_key_and_csr(&id.store_id)?;
    let channel = tls::channel(url, id.tls()?, false).await?;
    let reply = NodeServiceClient::new(channel)
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(|s| EnrollError::RenewRefused(s.message().to_string()))?
        .into_inner();
    let new = Identity::from_pems(key_pem, reply.certificate_pem, id.ca_pem.clone())?;
    if new.store_id != id.store_id {
        return Err(EnrollError::WrongStore { want: id.store_id.clone(), got: new.store_id });
    }
    new.save(dir)?;
    Ok(new)
}
