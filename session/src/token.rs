//! The one-time bootstrap token: `bkt1.<store-id>.<secret>.<ca-sha256>`.
//!
//! It names the store it may enroll, carries a random secret (central keeps only its sha256),
//! and the fingerprint of central's CA, so that the node trusts central from the very first
//! connection (as `kubeadm join` does with its CA hash).

use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha256};

const PREFIX: &str = "bkt1";

#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    pub store_id: String,
    pub secret: String,
    /// sha256 of the CA certificate (DER), lower-case hex.
    pub ca_fingerprint: String,
}

impl fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(
            f,
            "EnrollToken({}, ca {})",
            self.store_id,
            &self.ca_fingerprint[..12.min(self.ca_fingerprint.len())]
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "this is not a Backroom enrollment token ({0}); it looks like bkt1.<store>.<secret>.<ca fingerprint>"
)]
pub struct BadToken(&'static str);

impl EnrollToken {
    /// A new token for `store_id` with a fresh 256-bit secret.
    pub fn generate(store_id: &str, ca_fingerprint: &str) -> Self {
        let secret: [u8; 32] = rand::random();
        EnrollToken {
            store_id: store_id.to_string(),
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
            ca_fingerprint: ca_fingerprint.to_string(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, BadToken> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, store, secret, fp] = parts.as_slice() else {
            return Err(BadToken("wrong number of parts"));
        };
        if *prefix != PREFIX {
            return Err(BadToken("unknown version"));
        }
        if store.is_empty()
            || !store.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(BadToken("bad store id"));
        }
        if secret.len() < 32 {
            return Err(BadToken("secret too short"));
        }
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadToken("bad CA fingerprint"));
        }
        Ok(EnrollToken {
            store_id: store.to_string(),
            secret: secret.to_string(),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }

    /// What central stores instead of the token.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(format!("{}.{}", self.store_id, self.secret).as_bytes()))
    }
}

impl fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}.{}.{}", self.store_id, self.secret, self.ca_fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let t = EnrollToken::generate("store-0042", &"ab".repeat(32));
        let back = EnrollToken::parse(&t.to_string()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.secret_hash(), t.secret_hash());
        assert!(!format!("{t:?}").contains(&t.secret));
        assert!(EnrollToken::parse("bkt1.store.x.y").is_err());
        assert!(EnrollToken::parse("hello").is_err());
        let other = EnrollToken { store_id: "store-0043".into(), ..t.clone() };
        assert_ne!(other.secret_hash(), t.secret_hash(), "the hash binds the store");
    }
}
