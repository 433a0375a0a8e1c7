//! Validated value types of the profile format: names, VLAN ids, sizes, cpus, durations, ports,
//! addresses and image references. Each parses from the text a person writes and prints back in
//! one canonical spelling, so equal meanings render equally.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value written in a profile cannot be used: one sentence, shown with the position of
/// the value (the parser adds file, line and column).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

impl From<String> for BadValue {
    fn from(s: String) -> Self {
        BadValue(s)
    }
}

/// `BadValue(format!(…))`.
macro_rules! bad_value {
    ($($t:tt)*) => { BadValue(format!($($t)*)) };
}

/// Implements `Serialize` (as the canonical text) and `Deserialize` (from text, or from a number
/// where `$num` says how) for a type with `FromStr<Err = BadValue>` and `Display`.
macro_rules! text_type {
    ($ty:ty, $what:expr) => {
        text_type!($ty, $what, |_v: u64| -> Result<$ty, BadValue> {
            Err(bad_value!("expected {}, found a number", $what))
        });
    };
    ($ty:ty, $what:expr, $num:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        text_de!($ty, $what, $num);
    };
}

/// The name under which the text types ask for their value. serde_json (and every other
/// self-describing format) hands the value over as it was written, a number or a string; the
/// profile's own deserializer ([`crate::de`]) hands over the scalar's text exactly as written,
/// so `1e3` stays `1e3` (and is refused as a size) instead of becoming the number 1000.
pub(crate) const TEXT: &str = "$backroom::text";

/// `Deserialize` only, for types that serialize as numbers. Numbers are read back through
/// their text (`0.25` → "0.25"), so what [`Serialize`] writes always reads back.
macro_rules! text_de {
    ($ty:ty, $what:expr, $num:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_newtype_struct<D: Deserializer<'de>>(
                        self,
                        d: D,
                    ) -> Result<$ty, D::Error> {
                        d.deserialize_any(self)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        ($num)(v).map_err(E::custom)
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        match u64::try_from(v) {
                            Ok(u) => ($num)(u).map_err(E::custom),
                            Err(_) => Err(E::custom(format!("expected {}, found {v}", $what))),
                        }
                    }
                    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<$ty, E> {
                        v.to_string().parse().map_err(E::custom)
                    }
                }
                d.deserialize_newtype_struct(TEXT, V)
            }
        }
    };
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:expr, $max:expr, $first_letter:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = BadValue;
            fn from_str(s: &str) -> Result<Self, BadValue> {
                check_name(s, $what, $max, $first_letter).map(|()| $ty(s.to_string()))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        text_type!($ty, $what);
    };
}

fn check_name(s: &str, what: &str, max: usize, first_letter: bool) -> Result<(), BadValue> {
    let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let first_ok = match s.bytes().next() {
        Some(b) if first_letter => b.is_ascii_lowercase(),
        Some(b) => b.is_ascii_lowercase() || b.is_ascii_digit(),
        None => false,
    };
    if s.is_empty() || s.len() > max || !ok_chars || !first_ok || s.ends_with('-') {
        let start =
            if first_letter { "a lower-case letter" } else { "a lower-case letter or digit" };
        return Err(bad_value!(
            "`{s}` is not a valid {what}: use 1 to {max} lower-case letters, digits and dashes, \
             starting with {start} and not ending with a dash"
        ));
    }
    Ok(())
}

name_type!(
    /// A profile's name (`metadata.name`).
    ProfileName,
    "profile name",
    63,
    false
);
name_type!(
    /// A segment name; its bridge is `br-<name>`, so it is short.
    SegmentName,
    "segment name",
    10,
    true
);
name_type!(
    /// A workload name, unique across containers and VMs.
    WorkloadName,
    "workload name",
    31,
    true
);
name_type!(
    /// The name of a firewall rule, runbook, volume or disk.
    ItemName,
    "name",
    63,
    false
);

/// An IEEE 802.1Q VLAN id, 1..=4094.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

impl VlanId {
    pub fn get(self) -> u16 {
        self.0
    }

    fn from_u64(v: u64) -> Result<Self, BadValue> {
        if (1..=4094).contains(&v) {
            Ok(VlanId(v as u16))
        } else {
            Err(bad_value!("VLAN id {v} is out of range: VLAN ids go from 1 to 4094"))
        }
    }
}

impl FromStr for VlanId {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        match s.trim().parse::<u64>() {
            Ok(v) => VlanId::from_u64(v),
            Err(_) => Err(bad_value!("`{s}` is not a VLAN id: use a number from 1 to 4094")),
        }
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for VlanId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

/// A segment's place on the uplink: its untagged frames, or a VLAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vlan {
    Untagged,
    Id(VlanId),
}

impl FromStr for Vlan {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        if s.trim() == "untagged" {
            return Ok(Vlan::Untagged);
        }
        match s.trim().parse::<u64>() {
            Ok(v) => VlanId::from_u64(v).map(Vlan::Id),
            Err(_) => {
                Err(bad_value!("`{s}` is not a VLAN: use `untagged` or a number from 1 to 4094"))
            }
        }
    }
}

impl fmt::Display for Vlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vlan::Untagged => f.write_str("untagged"),
            Vlan::Id(id) => write!(f, "{id}"),
        }
    }
}

impl Serialize for Vlan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Vlan::Untagged => s.serialize_str("untagged"),
            Vlan::Id(id) => s.serialize_u16(id.0),
        }
    }
}

text_de!(Vlan, "`untagged` or a VLAN id", |v| VlanId::from_u64(v).map(Vlan::Id));
impl<'de> Deserialize<'de> for VlanId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Vlan::deserialize(d)? {
            Vlan::Id(id) => Ok(id),
            Vlan::Untagged => Err(serde::de::Error::custom("expected a VLAN id, found `untagged`")),
        }
    }
}

const UNITS: [(&str, u64); 4] =
    [("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];

/// A size in bytes, written as a plain number of bytes or with `Ki`, `Mi`, `Gi`, `Ti`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Size(u64);

impl Size {
    pub fn from_bytes(b: u64) -> Self {
        Size(b)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let t = s.trim();
        let bad = || {
            format!(
                "`{s}` is not a size: write a whole number of bytes, or a whole number with \
                 Ki, Mi, Gi or Ti (powers of 1024), e.g. 256Mi"
            )
        };
        let (digits, mult) = match UNITS.iter().find(|(u, _)| t.ends_with(u)) {
            Some((u, m)) => (&t[..t.len() - u.len()], *m),
            None => (t, 1),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad().into());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(mult).map(Size).ok_or_else(|| bad_value!("`{s}` is too large a size"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (unit, mult) in UNITS {
                if self.0.is_multiple_of(mult) {
                    return write!(f, "{}{unit}", self.0 / mult);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

text_type!(Size, "a size such as 256Mi", |v| Ok::<Size, BadValue>(Size(v)));

/// A number of CPU cores, kept in thousandths (0.25 = a quarter core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Cpus(u32);

impl Cpus {
    pub fn from_millis(m: u32) -> Self {
        Cpus(m)
    }

    pub fn millis(self) -> u32 {
        self.0
    }
}

impl FromStr for Cpus {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let t = s.trim();
        let bad = || {
            format!(
                "`{s}` is not a number of cpus: write a decimal number of cores, e.g. 2 or 0.25"
            )
        };
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(bad().into());
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad().into());
        }
        if frac.len() > 3 {
            return Err(bad_value!(
                "`{s}` is too precise: cpus are counted in thousandths of a core"
            ));
        }
        let w: u32 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let mut f: u32 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
        for _ in frac.len()..3 {
            f *= 10;
        }
        if w > 4096 {
            return Err(bad_value!("`{s}` cpus is more than any store server has"));
        }
        Ok(Cpus(w * 1000 + f))
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (w, m) = (self.0 / 1000, self.0 % 1000);
        if m == 0 {
            write!(f, "{w}")
        } else {
            let frac = format!("{m:03}");
            write!(f, "{w}.{}", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(1000) {
            s.serialize_u32(self.0 / 1000)
        } else {
            s.serialize_f64(f64::from(self.0) / 1000.0)
        }
    }
}

text_de!(Cpus, "a number of cpus", |v: u64| format!("{v}").parse());

/// A length of time, kept in milliseconds; written with `ms`, `s`, `m` or `h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Duration(u64);

impl Duration {
    pub fn from_millis(ms: u64) -> Self {
        Duration(ms)
    }

    pub fn millis(self) -> u64 {
        self.0
    }

    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

const TIME_UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)];

impl FromStr for Duration {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let t = s.trim();
        let bad = || {
            format!("`{s}` is not a duration: write a whole number with ms, s, m or h, e.g. 10s")
        };
        let (digits, mult) = if let Some(d) = t.strip_suffix("ms") {
            (d, 1)
        } else if let Some(d) = t.strip_suffix('s') {
            (d, 1000)
        } else if let Some(d) = t.strip_suffix('m') {
            (d, 60_000)
        } else if let Some(d) = t.strip_suffix('h') {
            (d, 3_600_000)
        } else {
            return Err(bad().into());
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad().into());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(mult).map(Duration).ok_or_else(|| bad_value!("`{s}` is too long a duration"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        for (unit, mult) in TIME_UNITS {
            if self.0.is_multiple_of(mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}ms", self.0)
    }
}

text_type!(Duration, "a duration such as 10s");

/// A percentage, 0..=100, written `10%`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Percent(u8);

impl Percent {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl FromStr for Percent {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let bad = || {
            format!(
                "`{s}` is not a percentage: write a whole number from 0 to 100 and `%`, e.g. 10%"
            )
        };
        let d = s.trim().strip_suffix('%').ok_or_else(bad)?;
        match d.trim().parse::<u8>() {
            Ok(v) if v <= 100 => Ok(Percent(v)),
            _ => Err(bad().into()),
        }
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

text_type!(Percent, "a percentage such as 10%");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// `tcp/443`, `udp/5000-5100` or `icmp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    pub proto: Proto,
    /// Inclusive port range; `None` only for icmp.
    pub ports: Option<(u16, u16)>,
}

impl FromStr for PortSpec {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let t = s.trim();
        let bad = || {
            format!(
                "`{s}` is not a port: write tcp/PORT, udp/PORT, tcp/LOW-HIGH, udp/LOW-HIGH or icmp"
            )
        };
        if t == "icmp" {
            return Ok(PortSpec { proto: Proto::Icmp, ports: None });
        }
        let (proto, rest) = t.split_once('/').ok_or_else(bad)?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad().into()),
        };
        let port = |p: &str| -> Result<u16, BadValue> {
            match p.parse::<u16>() {
                Ok(v) if v > 0 => Ok(v),
                _ => Err(bad_value!("`{s}`: ports go from 1 to 65535")),
            }
        };
        let (lo, hi) = match rest.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(rest)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(bad_value!("`{s}`: the range starts above its end"));
        }
        Ok(PortSpec { proto, ports: Some((lo, hi)) })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ports {
            None => f.write_str(self.proto.as_str()),
            Some((lo, hi)) if lo == hi => write!(f, "{}/{lo}", self.proto.as_str()),
            Some((lo, hi)) => write!(f, "{}/{lo}-{hi}", self.proto.as_str()),
        }
    }
}

text_type!(PortSpec, "a port such as tcp/443");

/// The host's own address on a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostAddress {
    Dhcp,
    None,
    /// An address with its prefix length, e.g. `10.42.10.2/24`.
    Static(IpNet),
}

impl FromStr for HostAddress {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        match s.trim() {
            "dhcp" => Ok(HostAddress::Dhcp),
            "none" => Ok(HostAddress::None),
            t => t.parse::<IpNet>().map(HostAddress::Static).map_err(|_| {
                bad_value!("`{s}` is not a host address: write dhcp, none, or an address with its prefix length such as 10.42.10.2/24")
            }),
        }
    }
}

impl fmt::Display for HostAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAddress::Dhcp => f.write_str("dhcp"),
            HostAddress::None => f.write_str("none"),
            HostAddress::Static(n) => write!(f, "{n}"),
        }
    }
}

text_type!(HostAddress, "dhcp, none or an address/prefix");

/// A workload's address on a segment: fixed, or `auto` (netd's IPAM gives a stable one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum WorkloadAddress {
    #[default]
    Auto,
    Static(IpAddr),
}

impl FromStr for WorkloadAddress {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        match s.trim() {
            "auto" => Ok(WorkloadAddress::Auto),
            t => t.parse::<IpAddr>().map(WorkloadAddress::Static).map_err(|_| {
                bad_value!("`{s}` is not a workload address: write auto or an address such as 172.30.0.10 (no prefix length)")
            }),
        }
    }
}

impl fmt::Display for WorkloadAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadAddress::Auto => f.write_str("auto"),
            WorkloadAddress::Static(a) => write!(f, "{a}"),
        }
    }
}

text_type!(WorkloadAddress, "auto or an address");

/// A subnet in canonical form (no host bits set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet(pub IpNet);

impl FromStr for Subnet {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let net: IpNet = s.trim().parse().map_err(|_| {
            format!(
                "`{s}` is not a subnet: write a network and prefix length such as 10.42.10.0/24"
            )
        })?;
        if net.trunc() != net {
            return Err(bad_value!(
                "`{s}` has host bits set: the subnet of that address is {}",
                net.trunc()
            ));
        }
        Ok(Subnet(net))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

text_type!(Subnet, "a subnet such as 10.42.10.0/24");

/// A container image reference: `[registry/]repository[:tag][@sha256:<64 hex>]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Everything before the tag and digest, e.g. `registry.example/retail/orders`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl FromStr for ImageRef {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let t = s.trim();
        if t.is_empty() || t.contains(char::is_whitespace) {
            return Err(bad_value!(
                "`{s}` is not an image reference: write registry/name:tag@sha256:<digest>"
            ));
        }
        let (rest, digest) = match t.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| format!("image digest `{d}` must be sha256:<64 hex digits>"))?;
                if hex.len() != 64
                    || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(bad_value!(
                        "image digest `{d}` must be sha256: followed by 64 lower-case hex digits"
                    ));
                }
                (r, Some(d.to_string()))
            }
            None => (t, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if repository.is_empty() || tag.as_deref() == Some("") {
            return Err(bad_value!(
                "`{s}` is not an image reference: write registry/name:tag@sha256:<digest>"
            ));
        }
        let repo_ok = repository
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b':'));
        if !repo_ok || repository.starts_with('/') || repository.ends_with('/') {
            return Err(bad_value!("`{repository}` is not a valid image repository name"));
        }
        Ok(ImageRef { repository: repository.to_string(), tag, digest })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

text_type!(ImageRef, "an image reference");

/// A lower-case sha256 hex digest (64 characters).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sha256(String);

impl Sha256 {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Sha256 {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let t = s.trim();
        let t = t.strip_prefix("sha256:").unwrap_or(t);
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256(t.to_ascii_lowercase()))
        } else {
            Err(bad_value!("`{s}` is not a sha256 digest: write 64 hex digits"))
        }
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

text_type!(Sha256, "a sha256 digest");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print_canonically() {
        assert_eq!("2Gi".parse::<Size>().unwrap().bytes(), 2 << 30);
        assert_eq!("2048Mi".parse::<Size>().unwrap().to_string(), "2Gi");
        assert_eq!("1536Mi".parse::<Size>().unwrap().to_string(), "1536Mi");
        assert_eq!("1000".parse::<Size>().unwrap().to_string(), "1000");
        assert!("2GB".parse::<Size>().is_err());
        assert!("Gi".parse::<Size>().is_err());
        assert!("-1Gi".parse::<Size>().is_err());
        assert!("99999999999Ti".parse::<Size>().is_err());
    }

    #[test]
    fn cpus_are_thousandths() {
        assert_eq!("0.25".parse::<Cpus>().unwrap().millis(), 250);
        assert_eq!("2".parse::<Cpus>().unwrap().millis(), 2000);
        assert_eq!(".5".parse::<Cpus>().unwrap().to_string(), "0.5");
        assert_eq!("1.250".parse::<Cpus>().unwrap().to_string(), "1.25");
        assert!("0.0001".parse::<Cpus>().is_err());
        assert!("two".parse::<Cpus>().is_err());
        assert!("-1".parse::<Cpus>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!("10s".parse::<Duration>().unwrap().millis(), 10_000);
        assert_eq!("90s".parse::<Duration>().unwrap().to_string(), "90s");
        assert_eq!("120s".parse::<Duration>().unwrap().to_string(), "2m");
        assert_eq!("1500ms".parse::<Duration>().unwrap().to_string(), "1500ms");
        assert!("10".parse::<Duration>().is_err());
        assert!("1d".parse::<Duration>().is_err());
    }

    #[test]
    fn vlans() {
        assert_eq!("untagged".parse::<Vlan>().unwrap(), Vlan::Untagged);
        assert!("0".parse::<Vlan>().unwrap_err().0.contains("1 to 4094"));
        assert!("4095".parse::<Vlan>().is_err());
        assert_eq!("4094".parse::<Vlan>().unwrap().to_string(), "4094");
    }

    #[test]
    fn ports() {
        assert_eq!("tcp/443".parse::<PortSpec>().unwrap().ports, Some((443, 443)));
        assert_eq!("udp/5000-5100".parse::<PortSpec>().unwrap().to_string(), "udp/5000-5100");
        assert!("tcp/0".parse::<PortSpec>().is_err());
        assert!("tcp/10-5".parse::<PortSpec>().is_err());
        assert!("sctp/1".parse::<PortSpec>().is_err());
        assert!("tcp/70000".parse::<PortSpec>().is_err());
    }

    #[test]
    fn image_refs() {
        let d = "a".repeat(64);
        let r: ImageRef =
            format!("registry.example:5000/retail/orders:3.2.0@sha256:{d}").parse().unwrap();
        assert_eq!(r.repository, "registry.example:5000/retail/orders");
        assert_eq!(r.tag.as_deref(), Some("3.2.0"));
        assert!(r.digest.is_some());
        let r: ImageRef = "registry.example:5000/orders".parse().unwrap();
        assert_eq!(r.tag, None);
        assert!("orders@sha256:abc".parse::<ImageRef>().is_err());
        assert!("orders:".parse::<ImageRef>().is_err());
    }

    #[test]
    fn names() {
        assert!("pos".parse::<SegmentName>().is_ok());
        assert!("checkout-01".parse::<SegmentName>().is_err(), "11 chars is too long");
        assert!("1pos".parse::<SegmentName>().is_err());
        assert!("Pos".parse::<SegmentName>().is_err());
        assert!("pos-".parse::<SegmentName>().is_err());
        assert!("24x7".parse::<ItemName>().is_ok());
    }

    #[test]
    fn subnets_have_no_host_bits() {
        assert!("10.0.0.0/24".parse::<Subnet>().is_ok());
        assert!("10.0.0.1/24".parse::<Subnet>().unwrap_err().0.contains("10.0.0.0/24"));
    }

    #[test]
    fn addresses() {
        assert_eq!("dhcp".parse::<HostAddress>().unwrap(), HostAddress::Dhcp);
        assert!(matches!("10.0.0.2/24".parse::<HostAddress>().unwrap(), HostAddress::Static(_)));
        assert!("10.0.0.2".parse::<HostAddress>().is_err());
        assert!("10.0.0.2/24".parse::<WorkloadAddress>().is_err());
    }
}
