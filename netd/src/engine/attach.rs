//! Workload endpoints through the engine: Attach, Detach, Promote.

use backroom_profiles::{Profile, Workload, naming};
use ipnet::IpNet;

use super::Engine;
use crate::dhcp::Leases;
use crate::endpoints::{self, Endpoint, Iface};
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::nft;
use crate::state;

impl Engine {
    fn endpoint_for(&mut self, p: &Profile, w: &Workload, instance: &str) -> Result<Endpoint> {
        let name = w.name().as_str();
        let vm = matches!(w, Workload::Vm(_));
        let mut ipam: Ipam = self.state.load(state::IPAM)?;
        let leases: Leases = self.state.load(state::DHCP)?;
        let host_addr = |seg: &str| {
            endpoints::static_host_addr(p, seg)
                .or_else(|| leases.get(seg).map(|l| l.address.addr()))
        };
        let gw = endpoints::default_gateway(p, w, &host_addr);
        let mut ifaces = Vec::new();
        for (i, n) in w.networks().iter().enumerate() {
            let seg = n.segment.as_str();
            let s =
                p.segment(seg).ok_or_else(|| Error::NoSuchSegment { segment: seg.to_string() })?;
            let temporary = !instance.is_empty() && s.subnet.is_some();
            let addr = if temporary {
                Some(ipam.lend(p, name, instance, seg)?)
            } else {
                ipam.stable_address(p, name, seg)
            };
            let prefix = s.subnet.map(|n| n.0.prefix_len()).unwrap_or(32);
            ifaces.push(Iface {
                name: if vm { String::new() } else { naming::container_ifname(i) },
                segment: seg.to_string(),
                bridge: s.bridge(),
                mac: naming::mac_string(endpoints::mac_for(name, instance, seg)),
                address: addr.and_then(|a| IpNet::new(a, prefix).ok()),
                gateway: gw.filter(|(gi, _)| *gi == i).map(|(_, g)| g),
                temporary,
                host_veth: (!vm).then(|| naming::host_veth(name, instance, i)),
            });
        }
        self.state.save(state::IPAM, &ipam)?;
        Ok(Endpoint {
            workload: name.to_string(),
            instance: instance.to_string(),
            vm,
            netns: (!vm).then(|| naming::netns(name, instance)),
            interfaces: ifaces,
        })
    }

    fn save_endpoints(&self, eps: &[Endpoint]) -> Result<()> {
        self.state.save(state::ENDPOINTS, &eps.to_vec())
    }

    /// Updates only the firewall to the present profile and endpoints.
    fn refresh_firewall(&mut self) -> Result<()> {
        let (a, r) = self.applied_profile()?;
        let ipam: Ipam = self.state.load(state::IPAM)?;
        let have = self.links.observe()?;
        let (_, rs) = self.desired(
            &r.profile,
            a.uplink_override.as_deref(),
            a.segment_override.as_ref(),
            &have,
            &ipam,
        )?;
        if !nft::differences(&rs, &self.fw.read()?).is_empty() {
            let seed = self.fw.counters().unwrap_or_default();
            self.fw.replace(&rs, &seed)?;
        }
        Ok(())
    }

    /// Gives `workload` (its `instance`; "" = the primary) its endpoints. Idempotent: an intact
    /// endpoint is returned as it is.
    pub fn attach(&mut self, workload: &str, instance: &str) -> Result<Endpoint> {
        let (_, r) = self.applied_profile()?;
        let w = r
            .profile
            .workload(workload)
            .ok_or_else(|| Error::NoSuchWorkload { workload: workload.to_string() })?
            .clone();
        let mut eps = self.endpoints()?;
        if let Some(ep) =
            eps.iter().find(|e| e.workload == workload && e.instance == instance).cloned()
        {
            if ep.vm || self.endpoint_kernel.intact(&ep)? {
                return Ok(ep);
            }
            self.detach(workload, instance)?;
            eps = self.endpoints()?;
        }
        let ep = self.endpoint_for(&r.profile, &w, instance)?;
        eps.push(ep.clone());
        self.save_endpoints(&eps)?;
        if ep.vm {
            self.refresh_firewall()?;
            return Ok(ep);
        }
        // The firewall learns the new ports and addresses before the veths exist, so the
        // container is never on a bridge unfiltered.
        let made = self.refresh_firewall().and_then(|()| self.endpoint_kernel.create(&ep));
        if let Err(e) = made {
            let mut errs = vec![e];
            errs.extend(self.endpoint_kernel.remove(&ep));
            eps.retain(|x| !(x.workload == workload && x.instance == instance));
            if let Err(e) = self.save_endpoints(&eps) {
                errs.push(e);
            }
            // The firewall forgets the endpoint again.
            if let Err(e) = self.refresh_firewall() {
                errs.push(e);
            }
            Error::all(errs)?;
        }
        Ok(ep)
    }

    /// Removes a workload instance's endpoints and gives back its temporary addresses; nothing
    /// to do (and no error) when it has none.
    pub fn detach(&mut self, workload: &str, instance: &str) -> Result<()> {
        let mut eps = self.endpoints()?;
        let Some(ep) =
            eps.iter().find(|e| e.workload == workload && e.instance == instance).cloned()
        else {
            // Nothing to remove: detaching is "make sure it is gone", so callers may repeat it.
            return Ok(());
        };
        let mut errs = Vec::new();
        if !ep.vm {
            errs.extend(self.endpoint_kernel.remove(&ep));
        }
        let mut ipam: Ipam = self.state.load(state::IPAM)?;
        ipam.give_back(workload, instance);
        self.state.save(state::IPAM, &ipam)?;
        eps.retain(|x| !(x.workload == workload && x.instance == instance));
        self.save_endpoints(&eps)?;
        if self.applied()?.applied.is_some()
            && let Err(e) = self.refresh_firewall()
        {
            errs.push(e);
        }
        Error::all(errs)
    }

    /// Makes `instance` the primary: the stable addresses and MACs move onto its interfaces,
    /// the old primary's endpoints go, its namespace becomes /run/netns/bk-<workload> and its
    /// host veths take the primary's names.
    pub fn promote(&mut self, workload: &str, instance: &str) -> Result<Endpoint> {
        if instance.is_empty() {
            return Err(Error::AlreadyPrimary { workload: workload.to_string() });
        }
        let (_, r) = self.applied_profile()?;
        let w = r
            .profile
            .workload(workload)
            .ok_or_else(|| Error::NoSuchWorkload { workload: workload.to_string() })?
            .clone();
        let mut eps = self.endpoints()?;
        let next = eps
            .iter()
            .find(|e| e.workload == workload && e.instance == instance)
            .cloned()
            .ok_or_else(|| Error::NoSuchInstance {
            workload: workload.to_string(),
            instance: instance.to_string(),
        })?;
        if next.vm {
            return Err(Error::VmInstance { workload: workload.to_string() });
        }
        let mut errs = Vec::new();
        if let Some(old) =
            eps.iter().find(|e| e.workload == workload && e.instance.is_empty()).cloned()
        {
            errs.extend(self.endpoint_kernel.remove(&old));
            eps.retain(|e| !(e.workload == workload && e.instance.is_empty()));
        }
        let mut primary = self.endpoint_for(&r.profile, &w, "")?;
        // The promoted instance keeps its interface names inside the namespace.
        for (p, n) in primary.interfaces.iter_mut().zip(&next.interfaces) {
            p.name = n.name.clone();
        }
        self.endpoint_kernel.promote(&next, &primary)?;
        let mut ipam: Ipam = self.state.load(state::IPAM)?;
        ipam.give_back(workload, instance);
        self.state.save(state::IPAM, &ipam)?;
        eps.retain(|e| !(e.workload == workload && e.instance == instance));
        eps.push(primary.clone());
        self.save_endpoints(&eps)?;
        if let Err(e) = self.refresh_firewall() {
            errs.push(e);
        }
        Error::all(errs)?;
        Ok(primary)
    }

    pub fn endpoint(&self, workload: &str, instance: &str) -> Result<Option<Endpoint>> {
        Ok(self.endpoints()?.into_iter().find(|e| e.workload == workload && e.instance == instance))
    }
}
