//! The canonical form of a profile and its revision id.
//!
//! Canonical: defaults filled in, sizes and durations in one spelling, lists of named items sorted
//! by name (a workload's `networks` keep their order: it decides `eth0`, `eth1`…). The revision id
//! is the sha256 of the canonical JSON, so the same meaning gives the same id whatever the key
//! order, comments or layering that produced it. Literal `${` is written `$${` in the canonical
//! text (as in a source document), so a rendering reads back to itself.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::emit;
use crate::model::{Profile, Workload};

/// A profile revision: the sha256 (hex) of its canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RevisionId(String);

impl RevisionId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits: what people read and type.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }

    /// Parses a full 64-hex-digit revision id.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| RevisionId(s.to_string()))
    }
}

impl fmt::Display for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Puts a valid profile in canonical order.
pub fn canonicalize(mut p: Profile) -> Profile {
    p.network.segments.sort_by(|a, b| a.name.cmp(&b.name));
    p.network.firewall.allow.sort_by(|a, b| a.name.cmp(&b.name));
    for r in &mut p.network.firewall.allow {
        r.ports.sort();
        r.ports.dedup();
    }
    p.workloads.sort_by(|a, b| a.name().cmp(b.name()));
    for w in &mut p.workloads {
        match w {
            Workload::Container(c) => {
                c.volumes.sort_by(|a, b| a.name.cmp(&b.name));
                c.depends_on.sort();
                c.depends_on.dedup();
            }
            Workload::Vm(v) => {
                v.disks.sort_by(|a, b| a.name.cmp(&b.name));
                v.depends_on.sort();
                v.depends_on.dedup();
            }
        }
    }
    p.runbooks.sort_by(|a, b| a.name.cmp(&b.name));
    p
}

/// The canonical profile as a JSON value in which every literal `${` is written `$${`, so that
/// the text it prints reads back (as YAML or JSON) to the same profile.
fn document(p: &Profile) -> serde_json::Value {
    fn escape(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.contains("${") => *s = s.replace("${", "$${"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(escape),
            serde_json::Value::Object(m) => m.values_mut().for_each(escape),
            _ => {}
        }
    }
    // Serializing plain data with string keys cannot fail.
    let mut v = serde_json::to_value(p).unwrap_or_default();
    escape(&mut v);
    v
}

/// The canonical JSON of an already canonical profile (compact, fixed field order): the text
/// the revision id is the sha256 of.
pub fn to_json(p: &Profile) -> String {
    let plain = serde_json::to_string(p).unwrap_or_default();
    // `$` has no meaning in JSON syntax, so without `${` in the text there is nothing to escape.
    if plain.contains("${") { document(p).to_string() } else { plain }
}

pub fn to_yaml(p: &Profile) -> String {
    emit::to_yaml(&document(p))
}

pub fn revision(canonical: &Profile) -> RevisionId {
    let digest = Sha256::digest(to_json(canonical).as_bytes());
    RevisionId(hex::encode(digest))
}
