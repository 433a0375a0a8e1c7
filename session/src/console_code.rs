//! Console codes: what HQ reads over the phone so that a person at the store's console may act,
//! checked by the node with no WAN (issue 12).
//!
//! At enrollment central and the node come to share a per-store [`Secret`] (32 random bytes;
//! central sends it in `EnrollReply` and in every `Welcome`; the node keeps it in
//! [`SECRET_FILE`] beside its identity). Central [`issue`]s a code for a store, a [`Role`] and a
//! time to live; the node [`verify`]s it with nothing but the secret and its own clock.
//!
//! # The format
//! Ten characters of Crockford's base32 (`0-9`, `A-Z` less `I L O U`), shown as `XXXXX-XXXXX`:
//! 50 bits, most significant first:
//! - 1 bit: the role (0 staff, 1 technician);
//! - 13 bits: the expiry, in 10-minute slots since the epoch, modulo 2¹³ (about 57 days). The
//!   node takes the slot nearest its own clock with those low bits, so the two clocks may
//!   disagree by some three weeks and a code still reads right;
//! - 36 bits: HMAC-SHA256, keyed by the secret, over a domain tag (`backroom console code v1`),
//!   the store id, the role and the *whole* expiry slot, cut to its first 36 bits. An old code
//!   whose low bits come round again names another slot, so its MAC is wrong.
//!
//! A code expires at the end of the slot its time to live ends in (so a 1 h code lasts 1 h to
//! 1 h 10 min) and is good while the node's clock reads at most that (`now <= expiry`). Time to
//! live: 10 minutes to 7 days. A code made with another store's secret, or for another store
//! id, never verifies (but for the one chance in 2³⁶ that any guess has).
//!
//! Input is forgiving: case does not matter, dashes and spaces are ignored, `O` reads as `0`,
//! `I` and `L` as `1`. A code that cannot be one (length, a character outside the alphabet) is
//! [`CodeError::Malformed`] and says what is wrong.
//!
//! Guessing is slowed by a [`Limiter`] the node keeps (and persists): wrong codes only count
//! (not malformed or expired ones, which are no guess at the MAC); 5 in a row lock the console
//! for a minute, doubling at each lock up to 30 minutes, until a right code is entered.
//!
//! This module holds no state of its own and does no I/O but [`Secret::load`] and
//! [`Secret::save`]; recording what was done with a code is the caller's.

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The secret's file name, in the node's central folder (nodeagent: `<state>/central/`).
pub const SECRET_FILE: &str = "console.key";

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a code (dashes and spaces not counted).
pub const CODE_LEN: usize = 10;
/// The expiry's granularity.
pub const SLOT_MS: i64 = 10 * 60 * 1000;
const SLOT_BITS: u32 = 13;
const MAC_BITS: u32 = 36;
pub const MIN_TTL: Duration = Duration::from_secs(10 * 60);
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DOMAIN: &[u8] = b"backroom console code v1\0";

/// Who a code lets act at the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May restart workloads.
    Staff,
    /// May do everything the console offers.
    Technician,
}

impl Role {
    /// Whether this role may do what needs `needed`: a technician may do everything.
    pub fn allows(&self, needed: Role) -> bool {
        match self {
            Role::Technician => true,
            Role::Staff => needed == Role::Staff,
        }
    }

    fn bit(self) -> u64 {
        match self {
            Role::Staff => 0,
            Role::Technician => 1,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Staff => "staff",
            Role::Technician => "technician",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Role, CodeError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "staff" => Ok(Role::Staff),
            "technician" => Ok(Role::Technician),
            _ => Err(CodeError::UnknownRole(s.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("this is not a console code: {0}")]
    Malformed(String),
    #[error("this code is not for this store, or was mistyped")]
    Wrong,
    #[error("this code expired at {}", backroom_daemon::clock::rfc3339(*at_ms))]
    Expired { at_ms: i64 },
    #[error(
        "too many wrong codes: the console takes codes again at {}",
        backroom_daemon::clock::rfc3339(*until_ms)
    )]
    Locked { until_ms: i64 },
    #[error("a console code lives at most 7 days (asked: {0:?})")]
    TtlTooLong(Duration),
    #[error("a console code lives at least 10 minutes (asked: {0:?})")]
    TtlTooShort(Duration),
    #[error("`{0}` is not a role: staff or technician")]
    UnknownRole(String),
    #[error("a console secret is 32 bytes, not {0}")]
    SecretLength(usize),
    #[error("the console secret in {path} is unusable: {why}")]
    BadSecretFile { path: String, why: String },
    #[error("cannot read or write the console secret {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The per-store secret central and the node share. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl Secret {
    /// A new secret from the operating system's random source.
    pub fn generate() -> Secret {
        Secret(rand::random())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, CodeError> {
        <[u8; 32]>::try_from(bytes).map(Secret).map_err(|_| CodeError::SecretLength(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The secret kept at `path` (64 hex digits and a newline); `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Secret>, CodeError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CodeError::Io { path: path.display().to_string(), source });
            }
        };
        let bad = |why: String| CodeError::BadSecretFile { path: path.display().to_string(), why };
        let bytes = hex::decode(text.trim()).map_err(|e| bad(e.to_string()))?;
        Secret::from_bytes(&bytes).map(Some).map_err(|e| bad(e.to_string()))
    }

    /// Keeps the secret at `path`, replaced in one rename, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), CodeError> {
        let text = format!("{}\n", hex::encode(self.0));
        backroom_daemon::fs::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|source| CodeError::Io { path: path.display().to_string(), source })
    }
}

/// A code as central issues it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code {
    /// `XXXXX-XXXXX`.
    pub text: String,
    pub role: Role,
    /// Unix milliseconds; the code is good up to and including this instant.
    pub expires_ms: i64,
}

/// What a code that verified allows, and until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub role: Role,
    pub expires_ms: i64,
}

fn mac36(secret: &Secret, store_id: &str, role: Role, slot: i64) -> u64 {
    // Any key length is accepted by HMAC: this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(DOMAIN);
    mac.update(&(store_id.len() as u64).to_be_bytes());
    mac.update(store_id.as_bytes());
    mac.update(&[role.bit() as u8]);
    mac.update(&slot.to_be_bytes());
    let out = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first) >> (64 - MAC_BITS)
}

fn encode(value: u64) -> String {
    let mut s = String::with_capacity(CODE_LEN + 1);
    for i in 0..CODE_LEN {
        if i == 5 {
            s.push('-');
        }
        let shift = 5 * (CODE_LEN - 1 - i);
        s.push(char::from(ALPHABET[((value >> shift) & 31) as usize]));
    }
    s
}

/// The 50 bits a code's text stands for.
fn decode(text: &str) -> Result<u64, CodeError> {
    let mut value = 0u64;
    let mut n = 0usize;
    for c in text.chars() {
        let digit = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => 0,
            'I' | 'L' => 1,
            u => match ALPHABET.iter().position(|&a| char::from(a) == u) {
                Some(d) => d as u64,
                None => {
                    return Err(CodeError::Malformed(format!(
                        "`{c}` is not a letter or digit of console codes (they have no U)"
                    )));
                }
            },
        };
        n += 1;
        if n <= CODE_LEN {
            value = (value << 5) | digit;
        }
    }
    if n != CODE_LEN {
        return Err(CodeError::Malformed(format!(
            "a code has {CODE_LEN} letters and digits, this one has {n}"
        )));
    }
    Ok(value)
}

/// A code for `store_id` and `role`, good for `ttl` (10 minutes to 7 days) from `now_ms`.
pub fn issue(
    secret: &Secret,
    store_id: &str,
    role: Role,
    now_ms: i64,
    ttl: Duration,
) -> Result<Code, CodeError> {
    if ttl > MAX_TTL {
        return Err(CodeError::TtlTooLong(ttl));
    }
    if ttl < MIN_TTL {
        return Err(CodeError::TtlTooShort(ttl));
    }
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let slot = (now_ms.saturating_add(ttl_ms)).div_euclid(SLOT_MS)
        + i64::from((now_ms.saturating_add(ttl_ms)).rem_euclid(SLOT_MS) != 0);
    let low = (slot.rem_euclid(1 << SLOT_BITS)) as u64;
    let value = (role.bit() << (SLOT_BITS + MAC_BITS))
        | (low << MAC_BITS)
        | mac36(secret, store_id, role, slot);
    Ok(Code { text: encode(value), role, expires_ms: slot * SLOT_MS })
}

/// Checks `text` as a code for `store_id` on the node's clock `now_ms`, with no one to ask.
pub fn verify(
    secret: &Secret,
    store_id: &str,
    text: &str,
    now_ms: i64,
) -> Result<Grant, CodeError> {
    let value = decode(text)?;
    let role =
        if value >> (SLOT_BITS + MAC_BITS) & 1 == 1 { Role::Technician } else { Role::Staff };
    let low = ((value >> MAC_BITS) & ((1 << SLOT_BITS) - 1)) as i64;
    let mac = value & ((1 << MAC_BITS) - 1);
    // The slot with these low bits nearest the node's clock.
    let half = 1i64 << (SLOT_BITS - 1);
    let base = now_ms.div_euclid(SLOT_MS) - half;
    let slot = base + (low - base).rem_euclid(1 << SLOT_BITS);
    // Compared whole (one XOR), not byte by byte.
    if (mac36(secret, store_id, role, slot) ^ mac) != 0 {
        return Err(CodeError::Wrong);
    }
    let expires_ms = slot * SLOT_MS;
    if now_ms > expires_ms {
        return Err(CodeError::Expired { at_ms: expires_ms });
    }
    Ok(Grant { role, expires_ms })
}

/// Wrong codes in a row lock the console for a while: [`LIMIT`] of them lock it for a minute,
/// each lock after that twice as long as the one before, up to 30 minutes; a right code resets
/// it. Serializable, so the node keeps it across restarts (a restart must not be a reset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limiter {
    /// Wrong codes since the last lock or right code.
    pub failures: u32,
    /// Locks since the last right code.
    pub locks: u32,
    /// Unix milliseconds; 0: not locked.
    pub locked_until_ms: i64,
}

/// Wrong codes in a row before a lock.
pub const LIMIT: u32 = 5;
const FIRST_LOCK_MS: i64 = 60_000;
const LONGEST_LOCK_MS: i64 = 30 * 60_000;

impl Limiter {
    /// Whether a code may be tried at `now_ms`.
    pub fn check(&self, now_ms: i64) -> Result<(), CodeError> {
        if now_ms < self.locked_until_ms {
            return Err(CodeError::Locked { until_ms: self.locked_until_ms });
        }
        Ok(())
    }

    /// A wrong code at `now_ms`; returns until when the console is locked, if this locked it.
    pub fn failure(&mut self, now_ms: i64) -> Option<i64> {
        self.failures += 1;
        if self.failures < LIMIT {
            return None;
        }
        self.failures = 0;
        let shift = self.locks.min(10);
        self.locks = self.locks.saturating_add(1);
        let lock = (FIRST_LOCK_MS << shift).min(LONGEST_LOCK_MS);
        self.locked_until_ms = now_ms.saturating_add(lock);
        Some(self.locked_until_ms)
    }

    /// A right code: the count starts again.
    pub fn success(&mut self) {
        *self = Limiter::default();
    }

    /// [`verify`] behind this limiter: refused while locked; a wrong code counts (a malformed
    /// or expired one does not: neither is a guess); a right one resets the count.
    pub fn verify(
        &mut self,
        secret: &Secret,
        store_id: &str,
        text: &str,
        now_ms: i64,
    ) -> Result<Grant, CodeError> {
        self.check(now_ms)?;
        match verify(secret, store_id, text, now_ms) {
            Ok(g) => {
                self.success();
                Ok(g)
            }
            Err(CodeError::Wrong) => {
                self.failure(now_ms);
                Err(CodeError::Wrong)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
#[path = "console_code_tests.rs"]
mod tests;
