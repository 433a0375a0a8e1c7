//! Workload endpoints: what a container or VM gets on each of its segments, and the kernel work
//! for containers (the namespace, veths whose peers are made inside it, addresses, routes).
//!
//! Decisions: a workload's default route goes through the first of its segments (in profile
//! order) where the host has an address (routed through the host, so the firewall applies), else
//! through the first segment with a `gateway`; only that interface carries a `gateway` in the
//! API. The primary instance's interfaces have the MAC `naming::mac(workload, segment)`; a
//! non-primary instance gets `naming::mac("<workload>--<instance>", segment)` until Promote gives
//! it the primary's.
//!
//! The kernel work sits behind the [`Endpoints`] trait: [`KernelEndpoints`] makes namespaces and
//! veths, [`MemEndpoints`] keeps them as values for unit tests of the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use backroom_profiles::{HostAddress, Profile, Workload, naming};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::links::ENDPOINT_ALIAS;
use crate::netns;
use crate::rtnl::{Links, Rtnl};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iface {
    /// Inside the namespace (`eth0`…); empty for a VM NIC.
    pub name: String,
    pub segment: String,
    pub bridge: String,
    pub mac: String,
    pub address: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub temporary: bool,
    /// Containers: the host side of the veth.
    pub host_veth: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub workload: String,
    /// Empty for the primary.
    pub instance: String,
    pub vm: bool,
    /// The namespace name under /run/netns (containers).
    pub netns: Option<String>,
    pub interfaces: Vec<Iface>,
}

impl Endpoint {
    pub fn netns_path(&self) -> String {
        self.netns.as_deref().map(|n| netns::path(n).display().to_string()).unwrap_or_default()
    }
}

/// The gateway a workload's default route uses: (index of its interface, gateway).
pub fn default_gateway(
    p: &Profile,
    w: &Workload,
    host_addr: &dyn Fn(&str) -> Option<IpAddr>,
) -> Option<(usize, IpAddr)> {
    for (i, n) in w.networks().iter().enumerate() {
        if let Some(a) = host_addr(n.segment.as_str()) {
            return Some((i, a));
        }
    }
    for (i, n) in w.networks().iter().enumerate() {
        if let Some(g) = p.segment(n.segment.as_str()).and_then(|s| s.gateway) {
            return Some((i, g));
        }
    }
    None
}

/// The host's static address on a segment.
pub fn static_host_addr(p: &Profile, segment: &str) -> Option<IpAddr> {
    match p.segment(segment)?.address {
        HostAddress::Static(n) => Some(n.addr()),
        _ => None,
    }
}

pub fn mac_for(workload: &str, instance: &str, segment: &str) -> [u8; 6] {
    if instance.is_empty() {
        naming::mac(workload, segment)
    } else {
        naming::mac(&format!("{workload}--{instance}"), segment)
    }
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, part) in s.split(':').take(6).enumerate() {
        m[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    m
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| Error::kernel(format!("cannot write {path}"), e))
}

/// Creates the namespace and veths of a container endpoint and configures the inside.
/// `host` is the netlink socket of netd's own namespace.
pub fn create_container(host: &mut Rtnl, ep: &Endpoint) -> Result<()> {
    let ns =
        ep.netns.clone().ok_or_else(|| Error::NoNamespace { workload: ep.workload.clone() })?;
    netns::create(&ns)?;
    let nsfile = netns::open(&ns)?;
    for i in &ep.interfaces {
        let Some(hv) = &i.host_veth else { continue };
        host.add_veth(
            hv,
            &format!("{ENDPOINT_ALIAS} {}", ep.workload),
            &i.bridge,
            std::os::fd::AsRawFd::as_raw_fd(&nsfile),
            &i.name,
            parse_mac(&i.mac),
        )?;
    }
    let ifaces = ep.interfaces.clone();
    netns::run_in(&ns, move || {
        let mut r = Rtnl::open()?;
        r.set_up("lo")?;
        for i in &ifaces {
            // Removing the first address of a subnet must keep the others (Promote relies on it).
            let _ = write_sysctl(
                &format!("/proc/sys/net/ipv4/conf/{}/promote_secondaries", i.name),
                "1",
            );
            if let Some(a) = i.address {
                r.apply(&crate::links::LinkOp::AddAddr { link: i.name.clone(), net: a })?;
            }
            r.set_up(&i.name)?;
        }
        for i in &ifaces {
            if let Some(g) = i.gateway {
                r.add_route(&i.name, g, 0)?;
            }
        }
        Ok(())
    })
}

/// Removes a container endpoint: its host veths (their peers go with them) and its name under
/// /run/netns. Every failure is kept.
pub fn remove_container(host: &mut Rtnl, ep: &Endpoint) -> Vec<Error> {
    let mut errors = Vec::new();
    let have = match host.observe() {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    for i in &ep.interfaces {
        let Some(hv) = &i.host_veth else { continue };
        if have.link(hv).is_some()
            && let Err(e) = host.apply(&crate::links::LinkOp::DelLink { name: hv.clone() })
        {
            errors.push(e);
        }
    }
    if let Some(ns) = &ep.netns
        && let Err(e) = netns::delete(ns)
    {
        errors.push(e);
    }
    errors
}

/// Inside `ns`: puts the stable addresses and MACs of `to` on the interfaces and removes the
/// temporary addresses of `from`; the default route is put back as it was.
pub fn swap_addresses(ns: &str, from: &Endpoint, to: &Endpoint) -> Result<()> {
    let (from, to) = (from.interfaces.clone(), to.interfaces.clone());
    netns::run_in(ns, move || {
        let mut r = Rtnl::open()?;
        for (old, new) in from.iter().zip(&to) {
            if let Some(a) = new.address
                && Some(a) != old.address
            {
                r.apply(&crate::links::LinkOp::AddAddr { link: new.name.clone(), net: a })?;
            }
            if old.mac != new.mac {
                r.modify(&new.name, None, Some(parse_mac(&new.mac)), None)?;
            }
            if let Some(a) = old.address
                && Some(a) != new.address
            {
                r.apply(&crate::links::LinkOp::DelAddr { link: old.name.clone(), net: a })?;
            }
        }
        let st = r.observe()?;
        for i in &to {
            let Some(g) = i.gateway else { continue };
            let idx = st.link(&i.name).map(|l| l.index);
            let present = st
                .routes
                .iter()
                .any(|rt| rt.dst.prefix_len() == 0 && rt.gateway == Some(g) && rt.oif == idx);
            if !present {
                r.add_route(&i.name, g, 0)?;
            }
        }
        Ok(())
    })
}

/// Whether the kernel still has what `ep` describes (its namespace and host veths).
pub fn container_intact(host: &mut Rtnl, ep: &Endpoint) -> Result<bool> {
    if let Some(ns) = &ep.netns
        && !netns::exists(ns)
    {
        return Ok(false);
    }
    let have = host.observe()?;
    Ok(ep.interfaces.iter().filter_map(|i| i.host_veth.as_ref()).all(|hv| have.link(hv).is_some()))
}

/// Container endpoints in the kernel: their namespaces and veths. (VM NICs need no kernel work
/// from netd: vmd makes their taps.)
pub trait Endpoints {
    /// Makes the namespace and veths of a container endpoint and configures the inside.
    fn create(&mut self, ep: &Endpoint) -> Result<()>;
    /// Removes them; every failure is kept.
    fn remove(&mut self, ep: &Endpoint) -> Vec<Error>;
    /// Whether the namespace and every host veth are still there.
    fn intact(&mut self, ep: &Endpoint) -> Result<bool>;
    /// Makes `next`'s kernel objects `primary`'s: the stable addresses and MACs on its
    /// interfaces, its host veths renamed to the primary's names, its namespace renamed.
    fn promote(&mut self, next: &Endpoint, primary: &Endpoint) -> Result<()>;
}

/// The real endpoints, made through netlink in netd's own namespace (the one the thread that
/// calls is in) and on threads inside the workloads' namespaces.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelEndpoints;

impl Endpoints for KernelEndpoints {
    fn create(&mut self, ep: &Endpoint) -> Result<()> {
        create_container(&mut Rtnl::open()?, ep)
    }

    fn remove(&mut self, ep: &Endpoint) -> Vec<Error> {
        match Rtnl::open() {
            Ok(mut h) => remove_container(&mut h, ep),
            Err(e) => vec![e],
        }
    }

    fn intact(&mut self, ep: &Endpoint) -> Result<bool> {
        container_intact(&mut Rtnl::open()?, ep)
    }

    fn promote(&mut self, next: &Endpoint, primary: &Endpoint) -> Result<()> {
        let ns = next
            .netns
            .clone()
            .ok_or_else(|| Error::NoNamespace { workload: next.workload.clone() })?;
        swap_addresses(&ns, next, primary)?;
        let mut host = Rtnl::open()?;
        for (p, n) in primary.interfaces.iter().zip(&next.interfaces) {
            if let (Some(old), Some(new)) = (&n.host_veth, &p.host_veth) {
                // A link is renamed only while down.
                host.modify(old, None, None, Some(false))?;
                host.modify(old, Some(new), None, Some(true))?;
            }
        }
        let target = primary.netns.clone().unwrap_or_default();
        netns::delete(&target)?;
        netns::link(&ns, &target)?;
        netns::delete(&ns)
    }
}

/// A host veth as [`MemEndpoints`] keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemVeth {
    pub bridge: String,
    /// The namespace its peer is in, the peer's name, MAC and address.
    pub netns: String,
    pub peer: String,
    pub mac: String,
    pub address: Option<IpNet>,
}

/// What [`MemEndpoints`] holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemEndpointState {
    pub namespaces: BTreeSet<String>,
    /// Host veth name → what it connects.
    pub veths: BTreeMap<String, MemVeth>,
    /// When set, the next creations fail (as the kernel may refuse a veth).
    pub refuse_create: bool,
}

/// Endpoints as values, for unit tests. Clones share one state, so a test keeps a handle to
/// look at (or break) what the engine made.
#[derive(Clone, Debug, Default)]
pub struct MemEndpoints(Arc<Mutex<MemEndpointState>>);

impl MemEndpoints {
    pub fn state(&self) -> std::sync::MutexGuard<'_, MemEndpointState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Endpoints for MemEndpoints {
    fn create(&mut self, ep: &Endpoint) -> Result<()> {
        let ns =
            ep.netns.clone().ok_or_else(|| Error::NoNamespace { workload: ep.workload.clone() })?;
        let mut s = self.state();
        if s.refuse_create {
            return Err(Error::kernel(
                format!("cannot create the veths of {}", ep.workload),
                std::io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        s.namespaces.insert(ns.clone());
        for i in &ep.interfaces {
            let Some(hv) = &i.host_veth else { continue };
            s.veths.insert(
                hv.clone(),
                MemVeth {
                    bridge: i.bridge.clone(),
                    netns: ns.clone(),
                    peer: i.name.clone(),
                    mac: i.mac.clone(),
                    address: i.address,
                },
            );
        }
        Ok(())
    }

    fn remove(&mut self, ep: &Endpoint) -> Vec<Error> {
        let mut s = self.state();
        for i in &ep.interfaces {
            if let Some(hv) = &i.host_veth {
                s.veths.remove(hv);
            }
        }
        if let Some(ns) = &ep.netns {
            s.namespaces.remove(ns);
        }
        Vec::new()
    }

    fn intact(&mut self, ep: &Endpoint) -> Result<bool> {
        let s = self.state();
        let ns_ok = ep.netns.as_ref().is_none_or(|n| s.namespaces.contains(n));
        Ok(ns_ok
            && ep
                .interfaces
                .iter()
                .filter_map(|i| i.host_veth.as_ref())
                .all(|hv| s.veths.contains_key(hv)))
    }

    fn promote(&mut self, next: &Endpoint, primary: &Endpoint) -> Result<()> {
        let ns = next
            .netns
            .clone()
            .ok_or_else(|| Error::NoNamespace { workload: next.workload.clone() })?;
        let target = primary.netns.clone().unwrap_or_default();
        let mut s = self.state();
        for (p, n) in primary.interfaces.iter().zip(&next.interfaces) {
            let (Some(old), Some(new)) = (&n.host_veth, &p.host_veth) else { continue };
            let mut v =
                s.veths.remove(old).ok_or_else(|| Error::NoSuchLink { name: old.clone() })?;
            v.netns = target.clone();
            v.mac = p.mac.clone();
            v.address = p.address;
            s.veths.insert(new.clone(), v);
        }
        s.namespaces.remove(&ns);
        s.namespaces.insert(target);
        Ok(())
    }
}
