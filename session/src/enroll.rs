//! Enrollment and certificate renewal, the node's side.
//!
//! The node makes its own key (it never leaves the node), sends a certificate request with its
//! one-time token over TLS pinned to the CA fingerprint in that token, and keeps what central
//! returns under its state folder (mode 0600). A node that already has an identity uses it; it
//! enrolls again only when central refuses that identity (revoked, replaced, expired past the
//! grace period) and it is given a token it has not used yet, or when the identity on disk is
//! unreadable.
//!
//! Crash safety: the identity (key, certificate, CA) is one file, `identity.json`, replaced by
//! one atomic rename, so a power cut leaves the old identity or the new one, never a key of one
//! and the certificate of the other. The layout of before (`node.key`, `node.crt`, `ca.crt`) is
//! still read, and replaced by the one file at the next save. The key of an enrollment is kept
//! (`enroll.key`) until the certificate for it is saved: a retry after a lost reply sends the
//! same key, which central recognises, so the token is not lost with the reply.
//!
//! The store's console secret (issue 12, [`crate::console_code`]) comes with the enrollment and
//! is kept beside the identity in a file of its own ([`SECRET_FILE`], 0600), written before
//! `identity.json`: a cut between the two leaves a new secret with the old identity, which the
//! next session's welcome puts right (central sends the secret in every welcome).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backroom_api::node::node_service_client::NodeServiceClient;
use backroom_api::node::{EnrollRequest, RenewRequest};
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::console_code::{SECRET_FILE, Secret};
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
    /// Central does not accept this node's certificate any more: it was revoked, replaced by a
    /// newer enrollment, or expired longer ago than the grace period. Only a new enrollment
    /// token helps.
    #[error("central refuses this node's certificate: {0}")]
    IdentityRefused(String),
    /// The call did not complete: the link broke, central was unavailable, or it timed out.
    /// Nothing is lost by trying again.
    #[error("the {what} call to central did not complete")]
    Interrupted {
        what: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("central sent a certificate for store `{got}`, but the token is for `{want}`")]
    WrongStore { want: String, got: String },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("the node's identity in {path} is unusable: {why}")]
    Broken { path: String, why: String },
    #[error("cannot keep the node's identity in {path}")]
    Save {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl EnrollError {
    /// Whether trying the same thing again later may work: central or the link was down, or
    /// the disk failed. A refusal is not: it needs a person (a new token, a fixed clock).
    pub fn is_transient(&self) -> bool {
        match self {
            EnrollError::Tls(TlsError::Connect { .. }) => true,
            EnrollError::Interrupted { .. } | EnrollError::Save { .. } => true,
            EnrollError::Tls(_)
            | EnrollError::Refused(_)
            | EnrollError::RenewRefused(_)
            | EnrollError::IdentityRefused(_)
            | EnrollError::WrongStore { .. }
            | EnrollError::Pki(_)
            | EnrollError::Broken { .. } => false,
        }
    }
}

/// Whether a gRPC status says the call may work when tried again (the link, central's
/// database or central itself failed), rather than that central said no.
pub fn status_is_transient(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
    )
}

/// How long an enrollment or renewal call may take before it counts as interrupted.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The identity, one file (replaced whole).
const IDENTITY: &str = "identity.json";
/// The key of an enrollment under way, until its certificate is saved.
const PENDING_KEY: &str = "enroll.key";
/// The layout of before: three files, written one after the other.
const OLD_KEY: &str = "node.key";
const OLD_CERT: &str = "node.crt";
const OLD_CA: &str = "ca.crt";

/// The node's identity with central: its key, its certificate and central's CA.
#[derive(Clone)]
pub struct Identity {
    pub store_id: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// The hash of the token this identity was enrolled with ('' when not known): the node
    /// does not try that token again when central refuses the identity.
    pub enrolled_with: String,
    /// The store's console secret, if central sent one (a central older than console codes
    /// does not). Kept in [`SECRET_FILE`], not in `identity.json`.
    pub console_secret: Option<Secret>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({}, valid until {} ms)", self.store_id, self.not_after_ms)
    }
}

/// `identity.json`. Unknown fields are accepted on purpose: a node rolled back to an older
/// nodeagent must still read what a newer one wrote, or it is locked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IdentityFile {
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
    #[serde(default)]
    enrolled_with: String,
}

impl Identity {
    fn from_pems(
        key_pem: String,
        cert_pem: String,
        ca_pem: String,
        enrolled_with: String,
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
            enrolled_with,
            console_secret: None,
        })
    }

    /// Reads an identity and checks that its key is the one its certificate is for.
    fn checked(file: IdentityFile, path: &Path) -> Result<Identity, EnrollError> {
        let broken = |why: String| EnrollError::Broken { path: path.display().to_string(), why };
        let id = Identity::from_pems(file.key_pem, file.cert_pem, file.ca_pem, file.enrolled_with)
            .map_err(|e| broken(backroom_daemon::chain(&e)))?;
        let key = pki::key_pem_fingerprint(&id.key_pem).map_err(|e| broken(e.to_string()))?;
        let der = certs_from_pem(&id.cert_pem).map_err(|e| broken(e.to_string()))?;
        let cert = pki::cert_key_fingerprint(&der[0]).map_err(|e| broken(e.to_string()))?;
        if key != cert {
            return Err(broken(
                "the key does not belong to the certificate (a save was cut off)".into(),
            ));
        }
        Ok(id)
    }

    /// The identity kept in `dir`: `None` if the node has not enrolled, an error if what is
    /// there cannot be used (the node then needs an enrollment token).
    pub fn load(dir: &Path) -> Result<Option<Identity>, EnrollError> {
        let id = Self::load_identity(dir)?;
        Ok(id.map(|mut id| {
            id.console_secret = load_console_secret(dir);
            id
        }))
    }

    fn load_identity(dir: &Path) -> Result<Option<Identity>, EnrollError> {
        let path = dir.join(IDENTITY);
        let one = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<IdentityFile>(&bytes)
                    .map_err(|e| EnrollError::Broken {
                        path: path.display().to_string(),
                        why: e.to_string(),
                    })
                    .and_then(|f| Identity::checked(f, &path)),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(EnrollError::Broken {
                    path: path.display().to_string(),
                    why: e.to_string(),
                });
            }
        };
        match one {
            Some(Ok(id)) => return Ok(Some(id)),
            Some(Err(e)) => {
                // Unreadable: the layout of before may still be there and good.
                return match Self::load_old(dir) {
                    Ok(Some(id)) => Ok(Some(id)),
                    _ => Err(e),
                };
            }
            None => {}
        }
        Self::load_old(dir)
    }

    /// The three files of before, if the node enrolled with an older nodeagent.
    fn load_old(dir: &Path) -> Result<Option<Identity>, EnrollError> {
        let read = |name: &str| match std::fs::read_to_string(dir.join(name)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EnrollError::Broken {
                path: dir.join(name).display().to_string(),
                why: e.to_string(),
            }),
        };
        match (read(OLD_KEY)?, read(OLD_CERT)?, read(OLD_CA)?) {
            (Some(key_pem), Some(cert_pem), Some(ca_pem)) => {
                let f = IdentityFile { key_pem, cert_pem, ca_pem, enrolled_with: String::new() };
                Identity::checked(f, &dir.join(OLD_CERT)).map(Some)
            }
            (None, None, None) => Ok(None),
            _ => Err(EnrollError::Broken {
                path: dir.display().to_string(),
                why: "only part of node.key, node.crt and ca.crt is there".into(),
            }),
        }
    }

    /// The identity in `dir` is unusable (see [`Identity::load`]): its file is set aside as
    /// `identity.json.unreadable-<now_unix>` (with the daemon crate's helper), so the node can
    /// enroll afresh and support can still look at it. Returns where it went, if it moved.
    pub fn set_aside(dir: &Path, now_unix: i64, why: String) -> Option<PathBuf> {
        let one = dir.join(IDENTITY);
        let files: Vec<PathBuf> = if one.symlink_metadata().is_ok() {
            vec![one]
        } else {
            [OLD_KEY, OLD_CERT, OLD_CA]
                .iter()
                .map(|n| dir.join(n))
                .filter(|p| p.symlink_metadata().is_ok())
                .collect()
        };
        let mut first = None;
        for f in files {
            let s = backroom_daemon::fs::set_aside(&f, now_unix, why.clone());
            tracing::warn!(path = %f.display(), "{}", s.sentence());
            first = first.or(s.kept_as);
        }
        first
    }

    /// The newest copy of an identity file set aside in `dir` ([`Identity::set_aside`]).
    pub fn set_aside_copy(dir: &Path) -> Option<PathBuf> {
        backroom_daemon::fs::set_aside_copies(dir, IDENTITY).pop()
    }

    /// Keeps the identity in `dir` as one file, replaced in one rename; then removes the files
    /// of the layout of before, which would otherwise keep an old key on disk.
    pub fn save(&self, dir: &Path) -> Result<(), EnrollError> {
        if let Some(secret) = &self.console_secret {
            save_console_secret(dir, secret)?;
        }
        let file = IdentityFile {
            key_pem: self.key_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            ca_pem: self.ca_pem.clone(),
            enrolled_with: self.enrolled_with.clone(),
        };
        // Plain strings: serializing cannot fail.
        let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        let path = dir.join(IDENTITY);
        write_atomic(&path, &bytes, 0o600)
            .map_err(|source| EnrollError::Save { path: path.display().to_string(), source })?;
        for old in [OLD_KEY, OLD_CERT, OLD_CA] {
            let _ = std::fs::remove_file(dir.join(old));
        }
        Ok(())
    }

    pub fn tls(&self) -> Result<Arc<ClientConfig>, TlsError> {
        tls::mtls_config(&self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    /// True once less than a third of the certificate's lifetime is left (or none).
    pub fn needs_renewal(&self, now_ms: i64) -> bool {
        let life = self.not_after_ms - self.not_before_ms;
        self.not_after_ms - now_ms < life / 3
    }

    /// Whether the certificate's lifetime is over at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.not_after_ms
    }
}

/// Enrolls with central at `url` using `token`, unless `dir` already holds a usable identity;
/// keeps the new identity in `dir`. An identity on disk that cannot be used (cut off while
/// saving by an older nodeagent, corrupt) is replaced by a new enrollment with `token`.
pub async fn enroll_once(
    url: &str,
    token: &EnrollToken,
    dir: &Path,
    agent_version: &str,
    hostname: &str,
) -> Result<Identity, EnrollError> {
    match Identity::load(dir) {
        Ok(Some(id)) => return Ok(id),
        Ok(None) => {}
        Err(e) => tracing::warn!(
            error = %backroom_daemon::Chain(&e),
            "the node's identity cannot be used; enrolling again with the token"
        ),
    }
    enroll_into(url, token, dir, agent_version, hostname).await
}

/// [`enroll_once`] until it works or central refuses: a failure that may pass (central or the
/// link down, the call cut off, the disk) is tried again after `backoff` on `clock`, for as
/// long as it takes: a store plugged in before its WAN works enrolls when it does. A retry
/// sends the same key, so a reply lost on the way does not use the token up.
pub async fn enroll_with_retries(
    url: &str,
    token: &EnrollToken,
    dir: &Path,
    agent_version: &str,
    hostname: &str,
    clock: &backroom_daemon::SharedClock,
    backoff: backroom_daemon::Backoff,
) -> Result<Identity, EnrollError> {
    let mut retries = backoff.retries();
    loop {
        match enroll_once(url, token, dir, agent_version, hostname).await {
            Ok(id) => return Ok(id),
            Err(e) if e.is_transient() => {
                let delay = retries.fail();
                tracing::warn!(
                    error = %backroom_daemon::Chain(&e),
                    "cannot enroll yet; trying again in {delay:?}"
                );
                clock.sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Enrolls with `token` whatever `dir` holds, and keeps the new identity there: a node whose
/// identity central refuses, given a new token.
pub async fn enroll_into(
    url: &str,
    token: &EnrollToken,
    dir: &Path,
    agent_version: &str,
    hostname: &str,
) -> Result<Identity, EnrollError> {
    let key_pem = pending_key(dir)?;
    let id = enroll_with_key(url, token, &key_pem, agent_version, hostname).await?;
    id.save(dir)?;
    let _ = std::fs::remove_file(dir.join(PENDING_KEY));
    Ok(id)
}

/// The key of the enrollment under way in `dir`, made (and kept, 0600) on the first attempt.
fn pending_key(dir: &Path) -> Result<String, EnrollError> {
    let path = dir.join(PENDING_KEY);
    match std::fs::read_to_string(&path) {
        Ok(pem) if pki::key_pem_fingerprint(&pem).is_ok() => return Ok(pem),
        // Torn or garbled: a new key costs nothing, central has not seen this one work.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(EnrollError::Save { path: path.display().to_string(), source });
        }
    }
    let key = rcgen::KeyPair::generate()
        .map_err(|e| EnrollError::Pki(pki::PkiError::Generate(e.to_string())))?;
    let pem = key.serialize_pem();
    write_atomic(&path, pem.as_bytes(), 0o600)
        .map_err(|source| EnrollError::Save { path: path.display().to_string(), source })?;
    Ok(pem)
}

/// Enrolls with central at `url` using `token` and returns the identity without keeping it
/// anywhere (the fleet simulator; `enroll_once` for real nodes).
pub async fn enroll(
    url: &str,
    token: &EnrollToken,
    agent_version: &str,
    hostname: &str,
) -> Result<Identity, EnrollError> {
    let key = rcgen::KeyPair::generate()
        .map_err(|e| EnrollError::Pki(pki::PkiError::Generate(e.to_string())))?;
    enroll_with_key(url, token, &key.serialize_pem(), agent_version, hostname).await
}

/// Enrolls the key `key_pem` with `token`.
pub async fn enroll_with_key(
    url: &str,
    token: &EnrollToken,
    key_pem: &str,
    agent_version: &str,
    hostname: &str,
) -> Result<Identity, EnrollError> {
    let csr_pem = pki::csr_for_key(key_pem, &token.store_id)?;
    let channel = tls::channel(url, tls::enroll_config(&token.ca_fingerprint)?, false).await?;
    let mut req = tonic::Request::new(EnrollRequest {
        token: token.to_string(),
        csr_pem,
        agent_version: agent_version.to_string(),
        hostname: hostname.to_string(),
    });
    req.set_timeout(CALL_TIMEOUT);
    let reply = NodeServiceClient::new(channel)
        .enroll(req)
        .await
        .map_err(|s| {
            if status_is_transient(&s) {
                EnrollError::Interrupted { what: "enrollment", source: s }
            } else {
                EnrollError::Refused(s.message().to_string())
            }
        })?
        .into_inner();
    let mut id = Identity::from_pems(
        key_pem.to_string(),
        reply.certificate_pem,
        reply.ca_pem,
        token.secret_hash(),
    )?;
    id.console_secret = console_secret_from(&reply.console_secret);
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
/// Central keeps the current certificate valid until the new one is first used, so a reply
/// lost on the way (or a crash before the save) leaves the node with a working identity.
pub async fn renew(url: &str, id: &Identity, dir: &Path) -> Result<Identity, EnrollError> {
    let (key_pem, csr_pem) = pki::new_key_and_csr(&id.store_id)?;
    let channel = tls::channel(url, id.tls()?, false).await?;
    let mut req = tonic::Request::new(RenewRequest { csr_pem });
    req.set_timeout(CALL_TIMEOUT);
    let reply = NodeServiceClient::new(channel)
        .renew(req)
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::Unauthenticated {
                EnrollError::IdentityRefused(s.message().to_string())
            } else if status_is_transient(&s) {
                EnrollError::Interrupted { what: "renewal", source: s }
            } else {
                EnrollError::RenewRefused(s.message().to_string())
            }
        })?
        .into_inner();
    let new = Identity::from_pems(
        key_pem,
        reply.certificate_pem,
        id.ca_pem.clone(),
        id.enrolled_with.clone(),
    )?;
    let new = Identity { console_secret: id.console_secret.clone(), ..new };
    if new.store_id != id.store_id {
        return Err(EnrollError::WrongStore { want: id.store_id.clone(), got: new.store_id });
    }
    new.save(dir)?;
    Ok(new)
}

/// Where the console secret is kept beside the identity in `dir`.
pub fn console_secret_path(dir: &Path) -> PathBuf {
    dir.join(SECRET_FILE)
}

/// The console secret central sent (empty: a central older than console codes).
pub fn console_secret_from(bytes: &[u8]) -> Option<Secret> {
    if bytes.is_empty() {
        return None;
    }
    match Secret::from_bytes(bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "central sent a console secret that is not one; ignored");
            None
        }
    }
}

/// The console secret kept in `dir`, if it reads: one that does not is logged and treated as
/// absent (central sends it again at the next session; the identity does not depend on it).
fn load_console_secret(dir: &Path) -> Option<Secret> {
    match Secret::load(&console_secret_path(dir)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %backroom_daemon::Chain(&e), "the console secret is unusable until central sends it again");
            None
        }
    }
}

/// Keeps `secret` in `dir` (0600, one rename).
pub fn save_console_secret(dir: &Path, secret: &Secret) -> Result<(), EnrollError> {
    let path = console_secret_path(dir);
    secret.save(&path).map_err(|e| EnrollError::Save {
        path: path.display().to_string(),
        source: match e {
            crate::console_code::CodeError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        },
    })
}

#[cfg(test)]
#[path = "enroll_tests.rs"]
mod tests;
