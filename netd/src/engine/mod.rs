//! The core every front end calls (CLI one-shots and the daemon): apply a profile, plan,
//! observe, confirm or roll back, attach/detach/promote endpoints, tear down. Blocking: the
//! daemon runs it on a blocking thread.
//!
//! An apply computes the desired links and ruleset as data, compares them with what the kernel
//! has, and writes only the differences: links in a planned order (undone if a later step or the
//! nftables batch fails), then both tables replaced in one nftables transaction.
//!
//! Every outside system is behind a trait the engine holds: links ([`Links`]), nftables
//! ([`Firewall`]), workload endpoints ([`Endpoints`]), DHCP ([`Dhcp`]) and time ([`backroom_daemon::Clock`]);
//! unit tests run it on the in-memory ones. DHCP exchanges are never run by the engine while a
//! caller holds it for a change: [`Engine::dhcp_due`] plans them, the caller runs them,
//! [`Engine::record_leases`] records the leases (one-shots use [`Engine::acquire_dhcp`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use backroom_daemon::SharedClock;
use backroom_profiles::{HostAddress, Profile, Rendered, Vlan, naming};

use crate::dhcp::{Dhcp, DhcpRequest, KernelDhcp, Lease, Leases, MemDhcp};
use crate::endpoints::{Endpoint, Endpoints, KernelEndpoints, MemEndpoints};
use crate::error::{Error, Result};
use crate::firewall::{self, Context};
use crate::ipam::Ipam;
use crate::links::{self, DesiredBridge, DesiredLinks, DesiredVlan, ENDPOINT_ALIAS};
use crate::nft::{self, Firewall, Ruleset};
use crate::overrides::SegmentOverride;
use crate::rtnl::{LinkState, Links, Rtnl};
use crate::state::{self, Applied, AppliedFile, Pending, StateDir};

mod attach;
mod confirm;
mod overrides;
#[cfg(test)]
mod overrides_tests;
#[cfg(test)]
mod tests;

pub use overrides::OverrideEnd;

/// What an apply or reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// False when the kernel already matched: nothing was written.
    pub changed: bool,
    pub actions: Vec<String>,
    pub confirm_deadline_unix: i64,
}

/// What a passed confirmation deadline did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// The previous applied state is back.
    RolledBack { revision: String, outcome: Outcome },
    /// There was nothing to go back to: the applied network stays, unconfirmed. `again`: it
    /// was kept unconfirmed before too (the same network applied again).
    Kept { revision: String, again: bool },
    /// An uplink override was not confirmed in time: the network before it is back.
    OverrideRolledBack { segment: String, outcome: Outcome },
}

/// A segment as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentView {
    pub name: String,
    pub bridge: String,
    pub present: bool,
    pub addresses: Vec<String>,
    pub ports: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    pub applied_revision: String,
    pub pending_revision: String,
    pub confirm_deadline_unix: i64,
    /// The applied network was kept at its deadline unconfirmed (nothing to go back to).
    pub unconfirmed_kept: bool,
    pub segments: Vec<SegmentView>,
    /// Allow rule → (packets, bytes), both tables added up.
    pub counters: Vec<(String, u64, u64)>,
    pub drift: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    /// The uplink override in force, if any.
    pub segment_override: Option<SegmentOverride>,
    /// Where its DNS servers went (or why not); empty without DNS servers.
    pub override_dns: String,
}

pub struct Engine {
    state: StateDir,
    links: Box<dyn Links + Send>,
    fw: Box<dyn Firewall + Send>,
    endpoint_kernel: Box<dyn Endpoints + Send>,
    dhcp: Arc<dyn Dhcp>,
    clock: SharedClock,
    parsed: Option<(String, Rendered)>,
    /// Where an override's DNS servers are written (`--resolv-conf`); None: nowhere.
    resolv_conf: Option<std::path::PathBuf>,
}

/// Parses a profile the way it travels between daemons and checks its revision.
pub fn parse_profile(revision: &str, yaml: &str) -> Result<Rendered> {
    let r = backroom_profiles::render_str("profile.yaml", yaml).map_err(Error::Profile)?;
    if !revision.is_empty() && r.revision.as_str() != revision {
        return Err(Error::RevisionMismatch {
            expected: revision.to_string(),
            actual: r.revision.as_str().to_string(),
        });
    }
    Ok(r)
}

/// The uplink a profile uses: the override, the profile's name, or for `auto` the first
/// physical NIC (a link of no kind with a device behind it) in name order.
fn resolve_uplink(p: &Profile, over: Option<&str>, have: &LinkState) -> Option<String> {
    let needed = p.network.segments.iter().any(|s| !s.internal && s.vlan.is_some());
    if !needed {
        return None;
    }
    if let Some(u) = over.filter(|u| !u.is_empty()) {
        return Some(u.to_string());
    }
    let name =
        p.network.uplink.as_ref().map(|u| u.interface.clone()).unwrap_or_else(|| "auto".into());
    if name != "auto" {
        return Some(name);
    }
    let mut phys: Vec<&str> = have
        .links
        .iter()
        .filter(|l| l.kind.is_none() && l.name != "lo")
        .filter(|l| std::path::Path::new(&format!("/sys/class/net/{}/device", l.name)).exists())
        .map(|l| l.name.as_str())
        .collect();
    phys.sort_unstable();
    phys.first().map(|s| s.to_string()).or(Some(name))
}

impl Engine {
    /// An engine on the real kernel, in the calling thread's network namespace.
    pub fn open(dir: &std::path::Path) -> Result<Engine> {
        let state = StateDir::open(dir)?;
        Ok(Engine {
            state,
            links: Box::new(Rtnl::open()?),
            fw: Box::new(nft::NetlinkFirewall::open()?),
            endpoint_kernel: Box::new(KernelEndpoints),
            dhcp: Arc::new(KernelDhcp),
            clock: backroom_daemon::clock::system(),
            parsed: None,
            resolv_conf: None,
        })
    }

    /// An engine on given links and firewall (in-memory ones in unit tests), with in-memory
    /// endpoints, a DHCP client that no server answers and the system clock until
    /// [`Engine::endpoints_on`], [`Engine::dhcp_on`] and [`Engine::clock_on`] say otherwise.
    pub fn with(
        state: StateDir,
        links: Box<dyn Links + Send>,
        fw: Box<dyn Firewall + Send>,
    ) -> Engine {
        Engine {
            state,
            links,
            fw,
            endpoint_kernel: Box::new(MemEndpoints::default()),
            dhcp: Arc::new(MemDhcp::default()),
            clock: backroom_daemon::clock::system(),
            parsed: None,
            resolv_conf: None,
        }
    }

    pub fn endpoints_on(mut self, e: Box<dyn Endpoints + Send>) -> Engine {
        self.endpoint_kernel = e;
        self
    }

    pub fn dhcp_on(mut self, d: Arc<dyn Dhcp>) -> Engine {
        self.dhcp = d;
        self
    }

    pub fn clock_on(mut self, c: SharedClock) -> Engine {
        self.clock = c;
        self
    }

    /// The file an uplink override's DNS servers go to (None: they are not written).
    pub fn resolv_conf_on(mut self, path: Option<std::path::PathBuf>) -> Engine {
        self.resolv_conf = path;
        self
    }

    /// The clock every timestamp and deadline of this engine reads.
    pub fn clock(&self) -> SharedClock {
        self.clock.clone()
    }

    /// The DHCP client, for exchanges run without holding the engine.
    pub fn dhcp_client(&self) -> Arc<dyn Dhcp> {
        self.dhcp.clone()
    }

    pub fn netlink_writes(&self) -> usize {
        self.links.writes()
    }

    /// Reads every state file once (those that do not read are set aside) and returns what
    /// was set aside since the last call, for the daemon to tell.
    pub fn check_state_files(&self) -> Vec<backroom_daemon::fs::SetAside> {
        let _ = self.state.load::<AppliedFile>(state::APPLIED);
        let _ = self.state.load::<Ipam>(state::IPAM);
        let _ = self.state.load::<Vec<Endpoint>>(state::ENDPOINTS);
        let _ = self.state.load::<Leases>(state::DHCP);
        let _ = self.state.load::<state::ResolvFile>(state::RESOLV);
        self.state.take_set_aside()
    }

    /// The folder the state files are in.
    pub fn state_dir(&self) -> &std::path::Path {
        self.state.path()
    }

    pub fn applied(&self) -> Result<AppliedFile> {
        self.state.load(state::APPLIED)
    }

    fn applied_profile(&mut self) -> Result<(Applied, Rendered)> {
        let a = self.applied()?.applied.ok_or(Error::NotApplied)?;
        let r = self.parse_cached(&a)?;
        Ok((a, r))
    }

    /// The applied profile parsed once per revision (the daemon's drift checks reuse it).
    fn parse_cached(&mut self, a: &Applied) -> Result<Rendered> {
        if let Some((rev, r)) = &self.parsed
            && *rev == a.revision
        {
            return Ok(r.clone());
        }
        let r = parse_profile(&a.revision, &a.profile_yaml)?;
        self.parsed = Some((a.revision.clone(), r.clone()));
        Ok(r)
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        self.state.load(state::ENDPOINTS)
    }

    /// The links and ruleset wanted for `p`, given what the kernel has now.
    /// `over`: the uplink override in force (one that has expired is left out).
    fn desired(
        &mut self,
        p: &Profile,
        uplink_over: Option<&str>,
        over: Option<&SegmentOverride>,
        have: &LinkState,
        ipam: &Ipam,
    ) -> Result<(DesiredLinks, Ruleset)> {
        let leases: Leases = self.state.load(state::DHCP)?;
        let now = self.clock.now_unix();
        let over = over.filter(|o| o.active_at(now) && o.fits(p));
        let overridden = over.map(|o| o.onto(p));
        let p = overridden.as_ref().unwrap_or(p);
        let eps = self.endpoints()?;
        let uplink = resolve_uplink(p, uplink_over, have);
        let mut want = DesiredLinks { uplink: uplink.clone(), ..DesiredLinks::default() };
        if let Some(a) = self.applied()?.applied {
            let former = match a.uplink_override.clone() {
                Some(u) => Some(u),
                None => self
                    .parse_cached(&a)
                    .ok()
                    .and_then(|r| r.profile.network.uplink.map(|u| u.interface)),
            };
            if let Some(f) = former.filter(|f| f != "auto" && Some(f) != uplink.as_ref()) {
                want.former_uplinks.push(f);
            }
        }
        let mut ctx = Context { uplink: uplink.clone(), ..Context::default() };
        for (i, seg) in p.network.segments.iter().enumerate() {
            let br = seg.bridge();
            let lease = leases.get(seg.name.as_str()).filter(|l| l.valid_at(now));
            let addrs = match seg.address {
                HostAddress::Static(n) => vec![n],
                HostAddress::Dhcp => lease.map(|l| vec![l.address]).into_iter().flatten().collect(),
                HostAddress::None => vec![],
            };
            let gw = seg.gateway.or_else(|| lease.and_then(|l| l.router));
            let routes = gw.map(|g| vec![(g, 100 + i as u32)]).unwrap_or_default();
            if let Some(l) = lease {
                ctx.learned.insert(seg.name.as_str().to_string(), l.address.trunc());
            }
            // An overridden segment without a subnet: its network is the override's.
            if let Some(o) = over.filter(|o| o.segment == seg.name.as_str()) {
                ctx.learned.insert(o.segment.clone(), o.address.trunc());
            }
            want.bridges.push(DesiredBridge {
                name: br.clone(),
                mac: naming::mac("host", seg.name.as_str()),
                addrs,
                routes,
            });
            let mut ports = Vec::new();
            if let (Some(u), false) = (&uplink, seg.internal) {
                match seg.vlan {
                    Some(Vlan::Untagged) => {
                        want.ports.push((u.clone(), br.clone()));
                        ports.push(u.clone());
                    }
                    Some(Vlan::Id(id)) => {
                        let name = firewall::uplink_port(seg, u).unwrap_or_default();
                        want.vlans.push(DesiredVlan {
                            name: name.clone(),
                            parent: u.clone(),
                            id: id.get(),
                        });
                        want.ports.push((name.clone(), br.clone()));
                        ports.push(name);
                    }
                    None => {}
                }
            }
            // Ports netd did not make (VM taps): filtered like the rest of the segment.
            // netd's own links are accounted for above and below; a former uplink is released.
            if let Some(b) = have.link(&br) {
                ports.extend(
                    have.links
                        .iter()
                        .filter(|l| l.master == Some(b.index))
                        .filter(|l| {
                            !l.alias.as_deref().is_some_and(|a| a.starts_with(links::ALIAS))
                        })
                        .filter(|l| {
                            !want.former_uplinks.contains(&l.name)
                                && Some(&l.name) != uplink.as_ref()
                        })
                        .map(|l| l.name.clone()),
                );
            }
            ctx.ports.insert(seg.name.as_str().to_string(), ports);
        }
        for ep in &eps {
            for i in &ep.interfaces {
                if let Some(hv) = &i.host_veth
                    && p.segment(&i.segment).is_some()
                {
                    want.ports.push((hv.clone(), i.bridge.clone()));
                    ctx.ports.entry(i.segment.clone()).or_default().push(hv.clone());
                }
            }
        }
        for w in &p.workloads {
            let name = w.name().as_str();
            let mut v = Vec::new();
            for n in w.networks() {
                if let Some(a) = ipam.stable_address(p, name, n.segment.as_str()) {
                    v.push((n.segment.as_str().to_string(), a));
                }
            }
            for ep in eps.iter().filter(|e| e.workload == name) {
                for i in &ep.interfaces {
                    if let Some(a) = i.address
                        && !v.contains(&(i.segment.clone(), a.addr()))
                    {
                        v.push((i.segment.clone(), a.addr()));
                    }
                }
            }
            ctx.addresses.insert(name.to_string(), v);
        }
        let caps = self.fw.caps()?;
        let rs = firewall::build(p, &ctx.with_caps(caps));
        Ok((want, rs))
    }

    /// What applying `r` would do, one line per step; empty when the kernel already matches.
    /// An uplink override in force stays in the plan (an apply keeps it).
    pub fn plan(&mut self, r: &Rendered, uplink: Option<&str>) -> Result<Vec<String>> {
        let mut ipam: Ipam = self.state.load(state::IPAM)?;
        ipam.sync(&r.profile)?;
        let have = self.links.observe()?;
        let over = self.override_in_force()?;
        let (want, rs) = self.desired(&r.profile, uplink, over.as_ref(), &have, &ipam)?;
        let steps = links::plan(&want, &have)?;
        let mut out: Vec<String> = steps.iter().map(|s| s.op.to_string()).collect();
        let diffs = nft::differences(&rs, &self.fw.read()?);
        if !diffs.is_empty() {
            out.push(format!(
                "replace tables inet backroom and bridge backroom ({} rules) in one transaction because: {}",
                rs.rule_count(),
                diffs.join("; ")
            ));
        }
        Ok(out)
    }

    /// The ruleset `r` would install (for `netd plan --nft` and the benchmark).
    pub fn ruleset(&mut self, r: &Rendered, uplink: Option<&str>) -> Result<Ruleset> {
        let mut ipam: Ipam = self.state.load(state::IPAM)?;
        ipam.sync(&r.profile)?;
        let have = self.links.observe()?;
        let over = self.override_in_force()?;
        Ok(self.desired(&r.profile, uplink, over.as_ref(), &have, &ipam)?.1)
    }

    /// The uplink override of the applied state, while it is in force.
    fn override_in_force(&self) -> Result<Option<SegmentOverride>> {
        let now = self.clock.now_unix();
        Ok(self.applied()?.applied.and_then(|a| a.segment_override).filter(|o| o.active_at(now)))
    }

    /// Makes the kernel (and the DNS file) match `r` with the override `over`; writes nothing
    /// when they already do.
    fn converge(
        &mut self,
        r: &Rendered,
        uplink: Option<&str>,
        over: Option<&SegmentOverride>,
    ) -> Result<Outcome> {
        let mut ipam: Ipam = self.state.load(state::IPAM)?;
        if ipam.sync(&r.profile)? {
            self.state.save(state::IPAM, &ipam)?;
        }
        let now = self.clock.now_unix();
        let over = over.filter(|o| o.active_at(now) && o.fits(&r.profile));
        let have = self.links.observe()?;
        let (want, rs) = self.desired(&r.profile, uplink, over, &have, &ipam)?;
        let steps = links::plan(&want, &have)?;
        let diffs = nft::differences(&rs, &self.fw.read()?);
        let resolv = self.resolv_plan(over)?;
        let mut out = Outcome::default();
        if steps.is_empty() && diffs.is_empty() && resolv.is_none() {
            return Ok(out);
        }
        out.changed = true;
        out.actions = steps.iter().map(|s| s.op.to_string()).collect();
        links::run(self.links.as_mut(), &steps)?;
        if !diffs.is_empty() {
            out.actions.push(format!(
                "replace tables inet backroom and bridge backroom ({} rules)",
                rs.rule_count()
            ));
            let seed = self.fw.counters().unwrap_or_default();
            if let Err(e) = self.fw.replace(&rs, &seed) {
                let undo = links::undo(self.links.as_mut(), &steps);
                if undo.is_empty() {
                    return Err(e);
                }
                let mut all = vec![e];
                all.extend(undo);
                return Err(Error::Many(all));
            }
        }
        if let Some(op) = resolv {
            out.actions.push(op.to_string());
            self.run_resolv(op)?;
        }
        Ok(out)
    }

    /// Applies a rendered profile: links, addresses and the firewall. With
    /// `confirm_seconds > 0` the previous applied state comes back by itself unless
    /// [`Engine::confirm`] is called in time. DHCP leases are not waited for here (see the
    /// module's header).
    pub fn apply(
        &mut self,
        r: &Rendered,
        uplink: Option<&str>,
        confirm_seconds: u32,
    ) -> Result<Outcome> {
        let before = self.applied()?;
        if let Some(p) = before.pending.as_ref().filter(|p| p.of_override) {
            return Err(Error::OverridePending {
                segment: before
                    .applied
                    .as_ref()
                    .and_then(|a| a.segment_override.as_ref())
                    .map(|o| o.segment.clone())
                    .unwrap_or_default(),
                deadline_unix: p.deadline_unix,
            });
        }
        // The override in force stays across applies, as long as the new profile has its
        // segment (outside the store); otherwise it ends here.
        let carried = before.applied.as_ref().and_then(|a| a.segment_override.clone());
        let (kept, ended): (Option<SegmentOverride>, Option<SegmentOverride>) = match carried {
            Some(o) if o.fits(&r.profile) => (Some(o), None),
            other => (None, other),
        };
        let mut out = self.converge(r, uplink, kept.as_ref())?;
        if let Some(o) = ended {
            out.actions.push(format!(
                "end the uplink override of segment {}: the profile has no such segment outside the store",
                o.segment
            ));
        }
        let applied = Applied {
            revision: r.revision.as_str().to_string(),
            profile_yaml: r.to_yaml(),
            uplink_override: uplink.filter(|u| !u.is_empty()).map(str::to_string),
            unconfirmed_kept: false,
            segment_override: kept,
        };
        let pending = if confirm_seconds > 0 {
            // A pending apply replaced by another keeps the last confirmed state to go back to.
            let previous = match &before.pending {
                Some(p) => p.previous.clone(),
                None => before.applied.clone(),
            };
            out.confirm_deadline_unix = self.clock.now_unix() + i64::from(confirm_seconds);
            Some(Pending { deadline_unix: out.confirm_deadline_unix, previous, of_override: false })
        } else {
            None
        };
        let file = AppliedFile { applied: Some(applied), pending };
        if file != before {
            self.state.save(state::APPLIED, &file)?;
        }
        Ok(out)
    }

    /// The DHCP segments of the applied profile that need a lease now (none yet, expired, or
    /// due for renewal): the plan; the exchanges are the caller's to run.
    /// A segment under an uplink override asks for no lease until the override ends.
    pub fn dhcp_due(&mut self) -> Result<Vec<DhcpRequest>> {
        let (a, r) = self.applied_profile()?;
        let leases: Leases = self.state.load(state::DHCP)?;
        let now = self.clock.now_unix();
        let overridden =
            a.segment_override.filter(|o| o.active_at(now)).map(|o| o.segment).unwrap_or_default();
        Ok(r.profile
            .network
            .segments
            .iter()
            .filter(|s| s.address == HostAddress::Dhcp)
            .filter(|s| s.name.as_str() != overridden)
            .filter(|s| leases.get(s.name.as_str()).is_none_or(|l| l.renew_at <= now))
            .map(|s| DhcpRequest {
                segment: s.name.as_str().to_string(),
                bridge: s.bridge(),
                mac: naming::mac("host", s.name.as_str()),
                previous: leases.get(s.name.as_str()).cloned(),
            })
            .collect())
    }

    /// Records leases obtained for segments (by name), then converges so that their address
    /// and route land. A lease for a segment the applied profile no longer gets by DHCP is
    /// dropped. Returns what it did.
    pub fn record_leases(&mut self, got: Vec<(String, Lease)>) -> Result<Vec<String>> {
        let (a, r) = self.applied_profile()?;
        let mut leases: Leases = self.state.load(state::DHCP)?;
        let mut actions = Vec::new();
        for (name, lease) in got {
            let Some(seg) = r.profile.segment(&name).filter(|s| s.address == HostAddress::Dhcp)
            else {
                continue;
            };
            actions.push(format!(
                "got DHCP lease {} on {} from {} for {}s",
                lease.address,
                seg.bridge(),
                lease.server,
                lease.lease_seconds
            ));
            leases.insert(name, lease);
        }
        if actions.is_empty() {
            return Ok(actions);
        }
        self.state.save(state::DHCP, &leases)?;
        let more = self.converge(&r, a.uplink_override.as_deref(), a.segment_override.as_ref())?;
        actions.extend(more.actions);
        Ok(actions)
    }

    /// Gets the leases that are due, here and now (one-shot commands, which hold the state
    /// directory alone): every segment is tried; the leases obtained are recorded even when
    /// another segment's exchange failed.
    pub fn acquire_dhcp(&mut self) -> Result<Vec<String>> {
        let due = self.dhcp_due()?;
        let now = self.clock.now_unix();
        let (mut got, mut errs) = (Vec::new(), Vec::new());
        for req in &due {
            match self.dhcp.obtain(req, now) {
                Ok(l) => got.push((req.segment.clone(), l)),
                Err(e) => errs.push(e),
            }
        }
        let actions = match self.record_leases(got) {
            Ok(a) => a,
            Err(e) => {
                errs.insert(0, e);
                Vec::new()
            }
        };
        Error::all(errs)?;
        Ok(actions)
    }

    /// Re-applies the applied profile: repairs drift. Nothing is written when there is none.
    pub fn reconcile(&mut self) -> Result<Outcome> {
        let (a, r) = self.applied_profile()?;
        self.converge(&r, a.uplink_override.as_deref(), a.segment_override.as_ref())
    }

    /// What differs between the kernel and the applied profile right now.
    pub fn drift(&mut self) -> Result<Vec<String>> {
        let Some(a) = self.applied()?.applied else { return Ok(Vec::new()) };
        let r = self.parse_cached(&a)?;
        let ipam: Ipam = self.state.load(state::IPAM)?;
        let have = self.links.observe()?;
        let now = self.clock.now_unix();
        let over = a.segment_override.as_ref().filter(|o| o.active_at(now) && o.fits(&r.profile));
        let (want, rs) =
            self.desired(&r.profile, a.uplink_override.as_deref(), over, &have, &ipam)?;
        let mut out: Vec<String> = match links::plan(&want, &have) {
            Ok(steps) => {
                steps.iter().map(|s| format!("the kernel differs: netd would {}", s.op)).collect()
            }
            // What stops a repair is drift too: it is what an operator must fix.
            Err(e @ (Error::UplinkMissing { .. } | Error::ForeignLink { .. })) => {
                vec![e.to_string()]
            }
            Err(e) => return Err(e),
        };
        out.extend(nft::differences(&rs, &self.fw.read()?));
        if let Some(op) = self.resolv_plan(over)? {
            out.push(format!("the DNS file differs: netd would {op}"));
        }
        for ep in self.endpoints()? {
            if ep.vm {
                continue;
            }
            if !self.endpoint_kernel.intact(&ep)? {
                out.push(format!(
                    "endpoint of {} (instance `{}`) lost its namespace or veths",
                    ep.workload, ep.instance
                ));
            }
        }
        Ok(out)
    }

    /// The present state: what is applied, segments, counters, drift, endpoints.
    pub fn observe(&mut self) -> Result<Observation> {
        let f = self.applied()?;
        let mut o = Observation::default();
        let have = self.links.observe()?;
        if let Some(a) = &f.applied {
            if f.pending.is_some() {
                o.pending_revision = a.revision.clone();
                o.confirm_deadline_unix = f.pending.as_ref().map(|p| p.deadline_unix).unwrap_or(0);
            }
            o.applied_revision = a.revision.clone();
            o.unconfirmed_kept = a.unconfirmed_kept;
            let r = parse_profile(&a.revision, &a.profile_yaml)?;
            for seg in &r.profile.network.segments {
                let br = seg.bridge();
                let l = have.link(&br);
                o.segments.push(SegmentView {
                    name: seg.name.as_str().to_string(),
                    bridge: br.clone(),
                    present: l.is_some(),
                    addresses: l
                        .map(|l| {
                            have.addrs_of(l.index)
                                .filter(|a| !a.link_scope)
                                .map(|a| a.net.to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                    ports: l
                        .map(|b| {
                            have.links
                                .iter()
                                .filter(|x| x.master == Some(b.index))
                                .map(|x| x.name.clone())
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            let counters = self.fw.counters()?;
            for rule in &r.profile.network.firewall.allow {
                let (mut pk, mut by) = (0, 0);
                for ((_, n), (p, b)) in &counters {
                    if n == rule.name.as_str() {
                        pk += p;
                        by += b;
                    }
                }
                o.counters.push((rule.name.as_str().to_string(), pk, by));
            }
            o.drift = self.drift()?;
            let now = self.clock.now_unix();
            o.segment_override = a.segment_override.clone().filter(|x| x.active_at(now));
            o.override_dns = crate::overrides::dns_status(
                self.resolv_conf.as_deref(),
                o.segment_override.as_ref(),
            );
        }
        o.endpoints = self.endpoints()?;
        Ok(o)
    }

    /// Removes every object netd owns: endpoints, its tables, its links and routes. Every
    /// failure is collected; the applied profile is forgotten (IPAM leases are kept).
    pub fn teardown(&mut self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let mut errs = Vec::new();
        for ep in self.endpoints()? {
            if !ep.vm {
                errs.extend(self.endpoint_kernel.remove(&ep));
            }
            removed.push(format!("endpoints of {} (instance `{}`)", ep.workload, ep.instance));
        }
        match self.fw.delete() {
            Ok(v) => removed.extend(v),
            Err(e) => errs.push(e),
        }
        match self.links.observe() {
            Ok(have) => {
                // Endpoint veths netd made but lost track of.
                for l in have
                    .links
                    .iter()
                    .filter(|l| l.alias.as_deref().is_some_and(|a| a.starts_with(ENDPOINT_ALIAS)))
                {
                    match self.links.apply(&links::LinkOp::DelLink { name: l.name.clone() }) {
                        Ok(()) => removed.push(format!("link {}", l.name)),
                        Err(e) => errs.push(e),
                    }
                }
                let have = self.links.observe().unwrap_or(have);
                match links::plan(&DesiredLinks::default(), &have) {
                    Ok(steps) => {
                        for s in steps {
                            match self.links.apply(&s.op) {
                                Ok(()) => removed.push(s.op.to_string()),
                                Err(e) => errs.push(e),
                            }
                        }
                    }
                    Err(e) => errs.push(e),
                }
            }
            Err(e) => errs.push(e),
        }
        // Temporary addresses belong to endpoints, which are gone; stable ones are kept.
        match self.state.load::<Ipam>(state::IPAM) {
            Ok(mut ipam) => {
                ipam.temporary.clear();
                if let Err(e) = self.state.save(state::IPAM, &ipam) {
                    errs.push(e);
                }
            }
            Err(e) => errs.push(e),
        }
        for (name, v) in
            [(state::ENDPOINTS, serde_json::json!([])), (state::DHCP, serde_json::json!({}))]
        {
            if let Err(e) = self.state.save(name, &v) {
                errs.push(e);
            }
        }
        match self.restore_resolv() {
            Ok(Some(line)) => removed.push(line),
            Ok(None) => {}
            Err(e) => errs.push(e),
        }
        if let Err(e) = self.state.save(state::APPLIED, &AppliedFile::default()) {
            errs.push(e);
        }
        if errs.is_empty() { Ok(removed) } else { Err(Error::Many(errs)) }
    }

    /// Addresses by workload, for tools: (segment, address).
    pub fn workload_addresses(&mut self) -> Result<BTreeMap<String, Vec<(String, IpAddr)>>> {
        let (_, r) = self.applied_profile()?;
        let ipam: Ipam = self.state.load(state::IPAM)?;
        let mut m = BTreeMap::new();
        for w in &r.profile.workloads {
            let name = w.name().as_str();
            let v = w
                .networks()
                .iter()
                .filter_map(|n| {
                    ipam.stable_address(&r.profile, name, n.segment.as_str())
                        .map(|a| (n.segment.as_str().to_string(), a))
                })
                .collect();
            m.insert(name.to_string(), v);
        }
        Ok(m)
    }
}
