//! The uplink override: a time-boxed break-glass for one segment of the applied profile (the
//! management one, when the store's DHCP is broken). For a while, netd gives the segment's
//! bridge a static host address, a default route via a gateway and, if set, another VLAN and
//! DNS servers, on top of whatever profile it has applied.
//!
//! This module owns the override as data: its validation ([`validate`]), the profile as the
//! override makes it ([`SegmentOverride::onto`], which the engine's desired-state computation
//! uses, so drift repair keeps it), and the plan for the DNS file ([`plan_resolv`]). The engine
//! persists it in the applied state, removes it when it expires and runs the plans; it is not
//! an interface-name override (that is [`crate::state::Applied::uplink_override`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use backroom_profiles::{HostAddress, Profile, Vlan, VlanId};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How far ahead an override may end.
pub const MAX_SECONDS: i64 = 24 * 3600;
/// The end of an override whose request names none: 4 h from now.
pub const DEFAULT_SECONDS: i64 = 4 * 3600;
/// At most this many DNS servers (what a resolver reads).
pub const MAX_DNS: usize = 3;
/// A longer reason is refused (it travels in events and to central).
pub const MAX_REASON: usize = 200;

/// An override as netd keeps it in force (validated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentOverride {
    pub segment: String,
    /// The host's address on the segment's bridge, with its prefix.
    pub address: IpNet,
    pub gateway: IpAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<IpAddr>,
    /// None: the profile's VLAN for the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    pub expires_unix: i64,
    pub set_unix: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// An override as asked for (text, unchecked): what the API and the CLI hand the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverrideRequest {
    pub segment: String,
    pub address: String,
    pub gateway: String,
    pub dns: Vec<String>,
    /// 0: the profile's.
    pub vlan: u32,
    /// 0: [`DEFAULT_SECONDS`] from now.
    pub expires_unix: i64,
    pub reason: String,
}

fn refused(segment: &str, why: impl Into<String>) -> Error {
    Error::OverrideRefused { segment: segment.to_string(), why: why.into() }
}

/// Checks `req` against the applied profile `p` at `now`; nothing is changed by a refusal.
pub fn validate(req: &OverrideRequest, p: &Profile, now: i64) -> Result<SegmentOverride> {
    let name = req.segment.trim();
    if name.is_empty() {
        return Err(refused("", "it names no segment"));
    }
    let seg = p.segment(name).ok_or_else(|| Error::NoSuchSegment { segment: name.to_string() })?;
    if seg.internal {
        return Err(refused(
            name,
            "the segment is internal: it has no way out of the store to override",
        ));
    }
    let address: IpNet = req.address.trim().parse().map_err(|_| {
        refused(
            name,
            format!("`{}` is not an address with a prefix (e.g. 192.168.7.20/24)", req.address),
        )
    })?;
    if address.addr() == address.network() && address.prefix_len() < address.max_prefix_len() - 1 {
        return Err(refused(
            name,
            format!("{address} is the network's own address: give the host's address in it"),
        ));
    }
    let gateway: IpAddr =
        req.gateway.trim().parse().map_err(|_| {
            refused(name, format!("gateway `{}` is not an IP address", req.gateway))
        })?;
    if !address.contains(&gateway) || gateway == address.addr() {
        return Err(refused(
            name,
            format!(
                "gateway {gateway} is not another address inside {} (the network of {address})",
                address.trunc()
            ),
        ));
    }
    if req.dns.len() > MAX_DNS {
        return Err(refused(
            name,
            format!("{} DNS servers given: at most {MAX_DNS} are used", req.dns.len()),
        ));
    }
    let dns = req
        .dns
        .iter()
        .map(|d| {
            d.trim()
                .parse::<IpAddr>()
                .map_err(|_| refused(name, format!("DNS server `{d}` is not an IP address")))
        })
        .collect::<Result<Vec<_>>>()?;
    let vlan = match req.vlan {
        0 => None,
        v @ 1..=4094 => Some(v as u16),
        v => {
            return Err(refused(
                name,
                format!("VLAN {v} is out of range: use 1 to 4094, or 0 for the profile's"),
            ));
        }
    };
    if let Some(v) = vlan
        && let Some(other) = p.network.segments.iter().find(|o| {
            o.name.as_str() != name
                && !o.internal
                && matches!(o.vlan, Some(Vlan::Id(id)) if id.get() == v)
        })
    {
        return Err(refused(
            name,
            format!(
                "VLAN {v} already carries segment {}: one segment per VLAN",
                other.name.as_str()
            ),
        ));
    }
    let expires_unix = if req.expires_unix == 0 { now + DEFAULT_SECONDS } else { req.expires_unix };
    if expires_unix <= now {
        return Err(refused(
            name,
            format!("its end ({expires_unix}) is not in the future (now is {now})"),
        ));
    }
    if expires_unix > now + MAX_SECONDS {
        return Err(refused(
            name,
            format!(
                "its end is {} h ahead: an override lasts at most 24 h",
                (expires_unix - now) / 3600
            ),
        ));
    }
    let reason = req.reason.trim();
    if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(refused(
            name,
            format!("its reason must be one line of at most {MAX_REASON} characters"),
        ));
    }
    Ok(SegmentOverride {
        segment: name.to_string(),
        address,
        gateway,
        dns,
        vlan,
        expires_unix,
        set_unix: now,
        reason: reason.to_string(),
    })
}

impl SegmentOverride {
    /// In force at `now` (it ends at `expires_unix`).
    pub fn active_at(&self, now: i64) -> bool {
        now < self.expires_unix
    }

    /// Whether it still fits profile `p`: the segment is there and not internal.
    pub fn fits(&self, p: &Profile) -> bool {
        p.segment(&self.segment).is_some_and(|s| !s.internal)
    }

    /// `p` with the segment's host address, gateway and VLAN replaced: what the engine plans
    /// from. The subnet (IPAM, the firewall's view of the segment) stays the profile's.
    pub fn onto(&self, p: &Profile) -> Profile {
        let mut p = p.clone();
        if let Some(seg) = p.network.segments.iter_mut().find(|s| s.name.as_str() == self.segment) {
            seg.address = HostAddress::Static(self.address);
            seg.gateway = Some(self.gateway);
            if let Some(id) = self.vlan.and_then(|v| v.to_string().parse::<VlanId>().ok()) {
                seg.vlan = Some(Vlan::Id(id));
            }
        }
        p
    }

    /// One line for events and logs.
    pub fn describe(&self) -> String {
        let mut s = format!("{} via {}", self.address, self.gateway);
        if !self.dns.is_empty() {
            let dns: Vec<String> = self.dns.iter().map(IpAddr::to_string).collect();
            s.push_str(&format!(", DNS {}", dns.join(" ")));
        }
        if let Some(v) = self.vlan {
            s.push_str(&format!(", VLAN {v}"));
        }
        s
    }
}

/// The DNS file as it was before netd wrote an override's servers into it (restored at the end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvKept {
    pub path: PathBuf,
    /// None: there was no file.
    pub text: Option<String>,
}

/// One step on the DNS file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvOp {
    /// Write `text` to `path`; keep `keep` first (the file it replaces) when it is the first write.
    Write { path: PathBuf, text: String, keep: Option<ResolvKept> },
    /// Put the file back as it was (or remove it when there was none), then forget it.
    Restore(ResolvKept),
}

impl std::fmt::Display for ResolvOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolvOp::Write { path, keep, .. } => write!(
                f,
                "write the override's DNS servers to {}{}",
                path.display(),
                if keep.is_some() { " (keeping the file it replaces)" } else { "" }
            ),
            ResolvOp::Restore(k) => {
                write!(f, "restore {} as it was before the override", k.path.display())
            }
        }
    }
}

/// The file's text for `o`'s servers.
pub fn resolv_text(o: &SegmentOverride) -> String {
    let mut s = format!(
        "# written by netd: uplink override of segment {} (the file before it comes back when it ends)\n",
        o.segment
    );
    for d in &o.dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// What to do to the DNS file: `path` is netd's `--resolv-conf` (None: not written), `active`
/// the override in force, `current` the file's text now, `kept` what netd kept of it.
pub fn plan_resolv(
    path: Option<&Path>,
    active: Option<&SegmentOverride>,
    current: Option<&str>,
    kept: Option<&ResolvKept>,
) -> Option<ResolvOp> {
    let want = active.filter(|o| !o.dns.is_empty()).zip(path);
    match (want, kept) {
        // netd's option changed since it kept a file: that one goes back first.
        (_, Some(k)) if want.is_none_or(|(_, p)| p != k.path) => Some(ResolvOp::Restore(k.clone())),
        (Some((o, p)), k) => {
            let text = resolv_text(o);
            if current == Some(text.as_str()) && k.is_some() {
                return None;
            }
            Some(ResolvOp::Write {
                path: p.to_path_buf(),
                text,
                keep: k.is_none().then(|| ResolvKept {
                    path: p.to_path_buf(),
                    text: current.map(str::to_string),
                }),
            })
        }
        (None, _) => None,
    }
}

/// How Observe tells where the DNS servers went.
pub fn dns_status(path: Option<&Path>, active: Option<&SegmentOverride>) -> String {
    match (active.filter(|o| !o.dns.is_empty()), path) {
        (None, _) => String::new(),
        (Some(_), Some(p)) => format!("written to {}", p.display()),
        (Some(_), None) => {
            "not written: netd runs without --resolv-conf, so the host's DNS is as it was".into()
        }
    }
}

#[cfg(test)]
mod tests;
