//! `provision.toml`: what a new box needs to find central and enroll (spec/store-os.md).
//!
//! One parser and one writer, shared by nodeagent (which reads the file from a USB stick or the
//! image's ESP) and centralctl (which writes it onto a stick image with a new token). Every
//! error names the file, the line and the column, and says why.
//!
//! The format accepts keys that this version cannot act on yet (`fleet_key`, `[uplink]`): a
//! file that uses them is refused with a sentence saying what to do instead, never half
//! applied, because a key the format accepts must do something.
//!
//! It does not decide where the file comes from or what wins over it: that is nodeagent's.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::token::EnrollToken;

/// The file's name at the root of a provisioning stick and under `backroom/` on the ESP.
pub const FILE_NAME: &str = "provision.toml";

/// The FAT label of a provisioning stick.
pub const STICK_LABEL: &str = "BACKROOM";

/// A provisioning file that was read and checked: everything in it can be acted on.
#[derive(Clone, PartialEq, Eq)]
pub struct Provision {
    /// central's node URLs, in the order to try them; never empty.
    pub central: Vec<String>,
    /// The one-time store token.
    pub token: EnrollToken,
    /// Registries reached over plain HTTP (host:port).
    pub insecure_registries: Vec<String>,
    /// registry (host[:port]) → the PEM text of the CA certificates trusted for it.
    pub registry_ca: BTreeMap<String, String>,
}

impl fmt::Debug for Provision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token's Debug never shows its secret.
        f.debug_struct("Provision")
            .field("central", &self.central)
            .field("token", &self.token)
            .field("insecure_registries", &self.insecure_registries)
            .field("registries_with_ca", &self.registry_ca.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A line and a column in the file, both from 1; the column counts characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` of `text`.
    pub fn of(text: &str, offset: usize) -> Position {
        let offset = floor_char_boundary(text, offset.min(text.len()));
        let before = &text[..offset];
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What is wrong and where; `at` is `None` only when the parser could not point anywhere.
    #[error("{}{}: {why}", path.display(), at.map(|p| format!(":{}:{}", p.line, p.column)).unwrap_or_default())]
    Invalid { path: PathBuf, at: Option<Position>, why: String },
}

impl ProvisionError {
    fn at(path: &Path, text: &str, span: Option<Range<usize>>, why: impl Into<String>) -> Self {
        ProvisionError::Invalid {
            path: path.to_path_buf(),
            at: span.map(|s| Position::of(text, s.start)),
            why: why.into(),
        }
    }

    /// Where in the file the error is, when it is about the file's content.
    pub fn position(&self) -> Option<Position> {
        match self {
            ProvisionError::Invalid { at, .. } => *at,
            ProvisionError::Read { .. } => None,
        }
    }
}

/// The file as written, with where each value is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    central: Option<Spanned<Vec<Spanned<String>>>>,
    token: Option<Spanned<String>>,
    fleet_key: Option<Spanned<String>>,
    ca_sha256: Option<Spanned<String>>,
    insecure_registries: Option<Vec<Spanned<String>>>,
    registry_ca: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    uplink: Option<Spanned<RawUplink>>,
}

/// Read so that a misspelt key is told as such, then refused as a whole: this version does not
/// set up a static uplink before enrollment.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawUplink {
    interface: Option<String>,
    address: Option<String>,
    gateway: Option<String>,
    dns: Option<Vec<String>>,
    vlan: Option<u16>,
}

const FLEET_KEY_REFUSED: &str = "zero-touch enrollment with a fleet key is not supported yet: use a store token (centralctl token create)";
const UPLINK_REFUSED: &str = "a static uplink before enrollment ([uplink]) is not supported yet: connect the box to a network with DHCP to enroll, then set the uplink with the recovery console's uplink override";

/// Reads and checks the provisioning file at `path`.
pub fn load(path: &Path) -> Result<Provision, ProvisionError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ProvisionError::Read { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Checks `text`, the content of the file `path` (named in errors).
pub fn parse(path: &Path, text: &str) -> Result<Provision, ProvisionError> {
    let raw: RawFile = toml::from_str(text)
        .map_err(|e| ProvisionError::at(path, text, e.span(), e.message().trim_end()))?;
    let err = |span: Range<usize>, why: String| ProvisionError::at(path, text, Some(span), why);

    if let Some(u) = &raw.uplink {
        return Err(err(u.span(), UPLINK_REFUSED.into()));
    }
    let token = match (&raw.token, &raw.fleet_key) {
        (Some(_), Some(k)) => {
            return Err(err(k.span(), "give either `token` or `fleet_key`, not both".into()));
        }
        (None, Some(k)) => return Err(err(k.span(), FLEET_KEY_REFUSED.into())),
        (None, None) => {
            return Err(ProvisionError::at(
                path,
                text,
                Some(0..0),
                "no `token`: give the store token from `centralctl token create --store ID`",
            ));
        }
        (Some(t), None) => t,
    };
    let parsed = EnrollToken::parse(token.get_ref())
        .map_err(|e| err(token.span(), format!("`token`: {e}")))?;
    if let Some(ca) = &raw.ca_sha256 {
        let want = ca.get_ref();
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(
                ca.span(),
                "`ca_sha256` must be 64 hexadecimal digits (the sha256 of central's CA certificate)"
                    .into(),
            ));
        }
        if !want.eq_ignore_ascii_case(&parsed.ca_fingerprint) {
            return Err(err(
                ca.span(),
                format!(
                    "`ca_sha256` {} is not the CA the token trusts ({}): the token is for another central, or the hash is wrong",
                    want.to_ascii_lowercase(),
                    parsed.ca_fingerprint
                ),
            ));
        }
    }

    let Some(central) = &raw.central else {
        return Err(ProvisionError::at(
            path,
            text,
            Some(0..0),
            "no `central`: give central's node URL(s), e.g. central = [\"https://central.example:7443\"]",
        ));
    };
    if central.get_ref().is_empty() {
        return Err(err(
            central.span(),
            "`central` is empty: give at least one URL of central's node port".into(),
        ));
    }
    let mut urls = Vec::new();
    for u in central.get_ref() {
        check_url(u.get_ref()).map_err(|why| err(u.span(), format!("`central`: {why}")))?;
        urls.push(u.get_ref().clone());
    }

    let mut insecure = Vec::new();
    for r in raw.insecure_registries.iter().flatten() {
        check_host_port(r.get_ref())
            .map_err(|why| err(r.span(), format!("`insecure_registries`: {why}")))?;
        insecure.push(r.get_ref().clone());
    }

    let mut cas = BTreeMap::new();
    for (registry, pem) in raw.registry_ca.iter().flatten() {
        check_registry(registry.get_ref())
            .map_err(|why| err(registry.span(), format!("`registry_ca`: {why}")))?;
        crate::pki::certs_from_pem(pem.get_ref()).map_err(|e| {
            err(pem.span(), format!("`registry_ca` for {}: {e}", registry.get_ref()))
        })?;
        cas.insert(registry.get_ref().clone(), pem.get_ref().clone());
    }

    Ok(Provision { central: urls, token: parsed, insecure_registries: insecure, registry_ca: cas })
}

/// Why `url` cannot be one of `central`'s URLs, if it cannot.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return Err(format!("{url:?} is not an https:// (or http://) URL"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("{url:?} names no host"));
    }
    if authority.chars().any(|c| c.is_whitespace() || c == '@') {
        return Err(format!("{url:?} is not a URL of central (a host and a port)"));
    }
    Ok(())
}

/// Why `s` cannot be one of `insecure_registries`, if it cannot.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not host:port (e.g. 10.0.2.2:5055)"));
    };
    check_host(host, s)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{s:?}: {port:?} is not a port")),
    }
}

fn check_registry(s: &str) -> Result<(), String> {
    if s.contains(':') { check_host_port(s) } else { check_host(s, s) }
}

fn check_host(host: &str, whole: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']'));
    if ok { Ok(()) } else { Err(format!("{whole:?} does not name a host")) }
}

/// The file as written out: the same keys, so that what centralctl writes nodeagent reads.
#[derive(Serialize)]
struct OutFile<'a> {
    central: &'a [String],
    token: String,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    insecure_registries: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    registry_ca: &'a BTreeMap<String, String>,
}

impl Provision {
    /// The file's text: a comment saying what it is, then the keys.
    pub fn to_toml(&self) -> String {
        let out = OutFile {
            central: &self.central,
            token: self.token.to_string(),
            insecure_registries: &self.insecure_registries,
            registry_ca: &self.registry_ca,
        };
        // Strings, arrays of strings and a table of strings always serialize.
        let body = toml::to_string(&out).unwrap_or_default();
        format!(
            "# Backroom provisioning (spec/store-os.md): central's node URLs, tried in order, and a\n\
             # one-time store token. Written by `centralctl token create --stick`; keep it secret\n\
             # until the box has enrolled (the token is then used up).\n{body}"
        )
    }
}

#[cfg(test)]
#[path = "provision_tests.rs"]
mod tests;
