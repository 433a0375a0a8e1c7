//! Addresses for `address: auto`: one stable address per (segment, workload), kept across
//! restarts, updates and netd restarts (persisted in `ipam.json`), and temporary ones lent to a
//! non-primary instance (e.g. `next` during a start-first update) until Promote or Detach.
//!
//! Addresses are handed out from the top of the subnet downwards: store routers usually serve
//! DHCP from the bottom and middle of a segment, and the top is where they clash least.

use std::collections::BTreeMap;
use std::net::IpAddr;

use backroom_profiles::{HostAddress, Profile, Segment, WorkloadAddress};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipam {
    /// segment → workload → address.
    pub stable: BTreeMap<String, BTreeMap<String, IpAddr>>,
    /// segment → "workload/instance" → address.
    pub temporary: BTreeMap<String, BTreeMap<String, IpAddr>>,
}

/// The addresses nobody may be given on a segment: the host's, the gateway, static workload
/// addresses.
fn reserved(p: &Profile, seg: &Segment) -> Vec<IpAddr> {
    let mut v = Vec::new();
    if let HostAddress::Static(n) = seg.address {
        v.push(n.addr());
    }
    v.extend(seg.gateway);
    for w in &p.workloads {
        for n in w.networks() {
            if n.segment == seg.name
                && let WorkloadAddress::Static(a) = n.address
            {
                v.push(a);
            }
        }
    }
    v
}

fn candidates(net: IpNet) -> Box<dyn Iterator<Item = IpAddr>> {
    match net {
        IpNet::V4(n) => {
            let lo = u32::from(n.network());
            let hi = u32::from(n.broadcast());
            if hi.saturating_sub(lo) < 2 {
                return Box::new(std::iter::empty());
            }
            Box::new((lo + 1..hi).rev().map(|x| IpAddr::V4(x.into())))
        }
        IpNet::V6(n) => {
            let lo = u128::from(n.network());
            let hi = u128::from(n.broadcast());
            let top = hi.saturating_sub(1);
            let bottom = lo.max(top.saturating_sub(65_536)) + 1;
            Box::new((bottom..=top).rev().map(|x| IpAddr::V6(x.into())))
        }
    }
}

impl Ipam {
    fn taken(&self, seg: &str) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> =
            self.stable.get(seg).map(|m| m.values().copied().collect()).unwrap_or_default();
        v.extend(
            self.temporary
                .get(seg)
                .map(|m| m.values().copied().collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        v
    }

    fn pick(&self, p: &Profile, seg: &Segment) -> Result<IpAddr> {
        let Some(net) = seg.subnet else {
            return Err(Error::NoSubnet { segment: seg.name.as_str().to_string() });
        };
        let mut busy = reserved(p, seg);
        busy.extend(self.taken(seg.name.as_str()));
        candidates(net.0).find(|a| !busy.contains(a)).ok_or_else(|| Error::NoFreeAddress {
            segment: seg.name.as_str().to_string(),
            subnet: net.to_string(),
        })
    }

    /// Gives every `auto` attachment of `p` its stable address (keeping existing ones), and
    /// forgets leases of attachments the profile no longer has. Returns whether anything changed.
    pub fn sync(&mut self, p: &Profile) -> Result<bool> {
        let before = self.clone();
        let mut wanted: Vec<(String, String)> = Vec::new();
        for w in &p.workloads {
            for n in w.networks() {
                if n.address == WorkloadAddress::Auto {
                    wanted.push((n.segment.as_str().to_string(), w.name().as_str().to_string()));
                }
            }
        }
        for (seg, m) in self.stable.iter_mut() {
            m.retain(|w, a| {
                wanted.contains(&(seg.clone(), w.clone()))
                    && p.segment(seg).and_then(|s| s.subnet).is_some_and(|n| n.0.contains(&*a))
            });
        }
        self.stable.retain(|_, m| !m.is_empty());
        for (seg, w) in &wanted {
            if self.stable.get(seg).is_some_and(|m| m.contains_key(w)) {
                continue;
            }
            let Some(s) = p.segment(seg) else { continue };
            let a = self.pick(p, s)?;
            self.stable.entry(seg.clone()).or_default().insert(w.clone(), a);
        }
        Ok(*self != before)
    }

    /// The address of `workload` on `segment`: its static address or its stable lease.
    pub fn stable_address(&self, p: &Profile, workload: &str, segment: &str) -> Option<IpAddr> {
        let w = p.workload(workload)?;
        let n = w.networks().iter().find(|n| n.segment.as_str() == segment)?;
        match n.address {
            WorkloadAddress::Static(a) => Some(a),
            WorkloadAddress::Auto => self.stable.get(segment)?.get(workload).copied(),
        }
    }

    /// Lends `workload`'s `instance` a temporary address on `segment` (the same one again if
    /// it already has one).
    pub fn lend(
        &mut self,
        p: &Profile,
        workload: &str,
        instance: &str,
        segment: &str,
    ) -> Result<IpAddr> {
        let key = format!("{workload}/{instance}");
        if let Some(a) = self.temporary.get(segment).and_then(|m| m.get(&key)) {
            return Ok(*a);
        }
        let seg = p
            .segment(segment)
            .ok_or_else(|| Error::NoSuchSegment { segment: segment.to_string() })?;
        let a = self.pick(p, seg)?;
        self.temporary.entry(segment.to_string()).or_default().insert(key, a);
        Ok(a)
    }

    /// Returns the temporary addresses of `workload`'s `instance`.
    pub fn give_back(&mut self, workload: &str, instance: &str) {
        let key = format!("{workload}/{instance}");
        for m in self.temporary.values_mut() {
            m.remove(&key);
        }
        self.temporary.retain(|_, m| !m.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(extra: &str) -> Profile {
        let text = format!(
            r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {{name: t}}
network:
  segments:
    - {{name: pos, internal: true, subnet: 10.1.0.0/29, address: 10.1.0.6/29}}
workloads:
  - name: orders
    kind: container
    image: r/o:1@sha256:b517ff710669f502d9f7f4f564f0a93f9a87241817e28f9de1288a9d6f91a447
    networks: [{{segment: pos, address: auto}}]
{extra}"#
        );
        backroom_profiles::render_str("t.yaml", &text).unwrap().profile
    }

    #[test]
    fn leases_are_stable_skip_reserved_addresses_and_are_pruned() {
        let p = profile("");
        let mut ipam = Ipam::default();
        assert!(ipam.sync(&p).unwrap());
        let a = ipam.stable_address(&p, "orders", "pos").unwrap();
        assert_eq!(a, "10.1.0.5".parse::<IpAddr>().unwrap(), "the top, past the host's .6");
        assert!(!ipam.sync(&p).unwrap(), "a second sync changes nothing");
        let t = ipam.lend(&p, "orders", "next", "pos").unwrap();
        assert_eq!(t, "10.1.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(ipam.lend(&p, "orders", "next", "pos").unwrap(), t);
        ipam.give_back("orders", "next");
        assert!(ipam.temporary.is_empty());
        let p2 = profile(
            "  - name: menu\n    kind: container\n    image: r/m:1@sha256:b517ff710669f502d9f7f4f564f0a93f9a87241817e28f9de1288a9d6f91a447\n    networks: [{segment: pos, address: auto}]\n",
        );
        ipam.sync(&p2).unwrap();
        assert_eq!(
            ipam.stable_address(&p2, "orders", "pos"),
            Some(a),
            "adding a workload moves no one"
        );
        let mut empty = p2.clone();
        empty.workloads.clear();
        ipam.sync(&empty).unwrap();
        assert!(ipam.stable.is_empty());
    }
}
