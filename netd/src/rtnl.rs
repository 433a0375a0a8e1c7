//! Links, addresses and routes through rtnetlink (messages from `netlink-packet-route`, sent on
//! netd's synchronous socket): observe them, and carry out one [`LinkOp`] at a time.

use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InfoData, InfoKind, InfoVeth, InfoVlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};

use crate::error::{Error, Result};
use crate::links::{LinkOp, RTPROT_NETD};
use crate::nl::NlSocket;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub alias: Option<String>,
    pub up: bool,
    pub mac: Vec<u8>,
    pub vlan: Option<u16>,
    pub parent: Option<u32>,
    /// IPv4 forwarding of packets that arrive on this link (`net.ipv4.conf.<link>.forwarding`),
    /// when the kernel reported it.
    pub forwarding: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub net: IpNet,
    /// Link-local IPv6 addresses the kernel adds by itself: never netd's business.
    pub link_scope: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub metric: u32,
}

/// Every link, address and main-table route of a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
}

impl LinkState {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn name_of(&self, index: u32) -> Option<&str> {
        self.by_index(index).map(|l| l.name.as_str())
    }

    pub fn addrs_of(&self, index: u32) -> impl Iterator<Item = &Addr> {
        self.addrs.iter().filter(move |a| a.index == index)
    }
}

/// The kernel's links, addresses and routes, seen and changed.
pub trait Links {
    fn observe(&mut self) -> Result<LinkState>;
    fn apply(&mut self, op: &LinkOp) -> Result<()>;
    /// Netlink writes made so far (the idempotence tests count them).
    fn writes(&self) -> usize;
}

/// rtnetlink in the namespace of the thread that opened it.
pub struct Rtnl {
    sock: NlSocket,
    writes: usize,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl> {
        let sock = NlSocket::open(netlink_sys::protocols::NETLINK_ROUTE)
            .map_err(|e| Error::kernel("cannot open a route netlink socket", e))?;
        Ok(Rtnl { sock, writes: 0 })
    }

    fn write(&mut self, msg: Rt, flags: u16) -> std::io::Result<()> {
        self.writes += 1;
        self.sock.request_ack(msg, flags)
    }

    pub fn index(&mut self, name: &str) -> Result<u32> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.sock.request(Rt::GetLink(m)) {
            Ok(Rt::NewLink(l)) => Ok(l.header.index),
            Ok(_) => Err(Error::kernel(
                format!("cannot read link {name}"),
                std::io::Error::other("the kernel answered with another kind of message"),
            )),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                Err(Error::NoSuchLink { name: name.to_string() })
            }
            Err(e) => Err(Error::kernel(format!("cannot look up link {name}"), e)),
        }
    }

    fn links(&mut self) -> std::io::Result<Vec<Link>> {
        let mut out = Vec::new();
        for r in self.sock.dump(Rt::GetLink(LinkMessage::default()))? {
            if let Rt::NewLink(m) = r {
                out.push(parse_link(&m));
            }
        }
        Ok(out)
    }

    fn addrs(&mut self) -> std::io::Result<Vec<Addr>> {
        let mut out = Vec::new();
        for r in self.sock.dump(Rt::GetAddress(AddressMessage::default()))? {
            let Rt::NewAddress(m) = r else { continue };
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip
                && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
            {
                out.push(Addr {
                    index: m.header.index,
                    net,
                    link_scope: m.header.scope == AddressScope::Link,
                });
            }
        }
        Ok(out)
    }

    fn routes(&mut self) -> std::io::Result<Vec<Route>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = fam;
            for r in self.sock.dump(Rt::GetRoute(m))? {
                let Rt::NewRoute(m) = r else { continue };
                if m.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let mut dst = None;
                let mut gateway = None;
                let mut oif = None;
                let mut metric = 0;
                let mut table = u32::from(m.header.table);
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(ra) => dst = route_ip(ra),
                        RouteAttribute::Gateway(ra) => gateway = route_ip(ra),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        RouteAttribute::Priority(p) => metric = *p,
                        RouteAttribute::Table(t) => table = *t,
                        _ => {}
                    }
                }
                if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                    continue;
                }
                let dst = match dst {
                    Some(ip) => IpNet::new(ip, m.header.destination_prefix_length).ok(),
                    None => Some(default_net(fam == AddressFamily::Inet6)),
                };
                if let Some(dst) = dst {
                    out.push(Route {
                        dst,
                        gateway,
                        oif,
                        protocol: u8::from(m.header.protocol),
                        metric,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Creates a veth whose peer is made directly inside the namespace open at `peer_ns`,
    /// named `peer_name`, with `peer_mac`. The host side is enslaved to `master`.
    pub fn add_veth(
        &mut self,
        name: &str,
        alias: &str,
        master: &str,
        peer_ns: RawFd,
        peer_name: &str,
        peer_mac: [u8; 6],
    ) -> Result<()> {
        let master_index = self.index(master)?;
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes.push(LinkAttribute::Address(peer_mac.to_vec()));
        peer.attributes.push(LinkAttribute::NetNsFd(peer_ns));
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::Controller(master_index));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.write(Rt::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).map_err(|e| {
            Error::kernel(format!("cannot create veth {name} (peer {peer_name}) on {master}"), e)
        })?;
        self.set_alias(name, alias)
    }

    fn set_alias(&mut self, name: &str, alias: &str) -> Result<()> {
        let index = self.index(name)?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.write(Rt::NewLink(m), 0)
            .map_err(|e| Error::kernel(format!("cannot mark link {name} as netd's"), e))
    }

    /// Brings a link up (loopback and the interfaces inside a workload namespace).
    pub fn set_up(&mut self, name: &str) -> Result<()> {
        self.apply(&LinkOp::SetUp { link: name.to_string() })
    }

    /// Changes a link's name, MAC or up state (a rename needs the link down).
    pub fn modify(
        &mut self,
        name: &str,
        new_name: Option<&str>,
        mac: Option<[u8; 6]>,
        up: Option<bool>,
    ) -> Result<()> {
        let index = self.index(name)?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(up) = up {
            m.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
            m.header.change_mask = LinkFlags::Up;
        }
        if let Some(n) = new_name {
            m.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        self.write(Rt::NewLink(m), 0)
            .map_err(|e| Error::kernel(format!("cannot change link {name}"), e))
    }

    pub fn add_route(&mut self, link: &str, gateway: IpAddr, metric: u32) -> Result<()> {
        self.apply(&LinkOp::AddRoute { link: link.to_string(), gateway, metric })
    }
}

fn default_net(v6: bool) -> IpNet {
    if v6 {
        IpNet::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0).unwrap_or_default()
    } else {
        IpNet::default()
    }
}

fn route_ip(ra: &RouteAddress) -> Option<IpAddr> {
    match ra {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        master: None,
        alias: None,
        up: m.header.flags.contains(LinkFlags::Up),
        mac: Vec::new(),
        vlan: None,
        parent: None,
        forwarding: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::AfSpecUnspec(specs) => {
                for spec in specs {
                    if let AfSpecUnspec::Inet(inet) = spec {
                        for i in inet {
                            if let AfSpecInet::DevConf(c) = i {
                                l.forwarding = Some(c.forwarding != 0);
                            }
                        }
                    }
                }
            }
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::Address(mac) => l.mac = mac.clone(),
            LinkAttribute::Link(i) => l.parent = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vlan(v)) => {
                            for x in v {
                                if let InfoVlan::Id(id) = x {
                                    l.vlan = Some(*id);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn addr_msg(index: u32, net: &IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = match net.addr() {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.prefix_len = net.prefix_len();
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(net.addr()));
    m.attributes.push(AddressAttribute::Address(net.addr()));
    if let IpAddr::V4(a) = net.addr()
        && net.prefix_len() < 31
    {
        let bcast = ipnet::Ipv4Net::new(a, net.prefix_len()).map(|n| n.broadcast()).unwrap_or(a);
        m.attributes.push(AddressAttribute::Broadcast(bcast));
    }
    m
}

fn route_msg(index: u32, dst: IpNet, gateway: Option<IpAddr>, metric: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    let v6 = matches!(dst.addr(), IpAddr::V6(_));
    m.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(RTPROT_NETD);
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    if dst.prefix_len() > 0 {
        let ra = match dst.addr() {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        };
        m.attributes.push(RouteAttribute::Destination(ra));
    }
    if let Some(g) = gateway {
        let ra = match g {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        };
        m.attributes.push(RouteAttribute::Gateway(ra));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    m.attributes.push(RouteAttribute::Priority(metric));
    m
}

impl Links for Rtnl {
    fn observe(&mut self) -> Result<LinkState> {
        let links = self.links().map_err(|e| Error::kernel("cannot list links", e))?;
        let addrs = self.addrs().map_err(|e| Error::kernel("cannot list addresses", e))?;
        let routes = self.routes().map_err(|e| Error::kernel("cannot list routes", e))?;
        Ok(LinkState { links, addrs, routes })
    }

    fn writes(&self) -> usize {
        self.writes
    }

    fn apply(&mut self, op: &LinkOp) -> Result<()> {
        let fail = |e: std::io::Error| Error::kernel(format!("cannot {op}"), e);
        match op {
            LinkOp::AddBridge { name, mac } => {
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(name.clone()));
                m.attributes.push(LinkAttribute::Address(mac.to_vec()));
                m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
                self.write(Rt::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).map_err(fail)?;
                self.set_alias(name, crate::links::ALIAS)
            }
            LinkOp::AddVlan { name, parent, id } => {
                let parent_index = self.index(parent)?;
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(name.clone()));
                m.attributes.push(LinkAttribute::Link(parent_index));
                m.attributes.push(LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Vlan),
                    LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(*id)])),
                ]));
                self.write(Rt::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).map_err(fail)?;
                self.set_alias(name, crate::links::ALIAS)
            }
            LinkOp::SetMaster { link, master } => {
                let index = self.index(link)?;
                let mi = match master {
                    Some(b) => self.index(b)?,
                    None => 0,
                };
                let mut m = LinkMessage::default();
                m.header.index = index;
                m.attributes.push(LinkAttribute::Controller(mi));
                self.write(Rt::NewLink(m), 0).map_err(fail)
            }
            LinkOp::SetUp { link } => {
                let index = self.index(link)?;
                let mut m = LinkMessage::default();
                m.header.index = index;
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
                self.write(Rt::NewLink(m), 0).map_err(fail)
            }
            LinkOp::AddAddr { link, net } => {
                let index = self.index(link)?;
                self.write(Rt::NewAddress(addr_msg(index, net)), NLM_F_CREATE | NLM_F_EXCL)
                    .map_err(fail)
            }
            LinkOp::DelAddr { link, net } => {
                let index = self.index(link)?;
                self.write(Rt::DelAddress(addr_msg(index, net)), 0).map_err(fail)
            }
            LinkOp::AddRoute { link, gateway, metric } => {
                let index = self.index(link)?;
                let dst = default_net(gateway.is_ipv6());
                self.write(
                    Rt::NewRoute(route_msg(index, dst, Some(*gateway), *metric)),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .map_err(fail)
            }
            LinkOp::DelRoute { link, gateway, metric } => {
                let index = self.index(link)?;
                let dst = default_net(gateway.is_ipv6());
                self.write(Rt::DelRoute(route_msg(index, dst, Some(*gateway), *metric)), 0)
                    .map_err(fail)
            }
            LinkOp::DelLink { name } => {
                let index = self.index(name)?;
                let mut m = LinkMessage::default();
                m.header.index = index;
                self.write(Rt::DelLink(m), 0).map_err(fail)
            }
            LinkOp::SetForwarding { link } => {
                // The process (or this thread) is in netd's namespace, so /proc/sys/net is its.
                self.writes += 1;
                let path = format!("/proc/sys/net/ipv4/conf/{link}/forwarding");
                std::fs::write(&path, "1").map_err(fail)
            }
        }
    }
}

/// What [`MemLinks`] holds.
#[derive(Debug, Default)]
pub struct MemLinkState {
    pub state: LinkState,
    pub writes: usize,
    next: u32,
}

impl MemLinkState {
    fn add_plain(&mut self, name: &str) {
        self.next += 1;
        self.state.links.push(Link {
            index: self.next + 100,
            name: name.into(),
            kind: None,
            master: None,
            alias: None,
            up: true,
            mac: vec![0; 6],
            vlan: None,
            parent: None,
            forwarding: Some(false),
        });
    }

    fn index(&self, name: &str) -> Result<u32> {
        self.state
            .link(name)
            .map(|l| l.index)
            .ok_or_else(|| Error::NoSuchLink { name: name.to_string() })
    }
}

impl Links for MemLinkState {
    fn observe(&mut self) -> Result<LinkState> {
        Ok(self.state.clone())
    }

    fn writes(&self) -> usize {
        self.writes
    }

    fn apply(&mut self, op: &LinkOp) -> Result<()> {
        self.writes += 1;
        match op {
            LinkOp::AddBridge { name, mac } => {
                self.next += 1;
                self.state.links.push(Link {
                    index: self.next + 100,
                    name: name.clone(),
                    kind: Some("bridge".into()),
                    master: None,
                    alias: Some(crate::links::ALIAS.into()),
                    up: false,
                    mac: mac.to_vec(),
                    vlan: None,
                    parent: None,
                    forwarding: Some(false),
                });
            }
            LinkOp::AddVlan { name, parent, id } => {
                let p = self.index(parent)?;
                self.next += 1;
                self.state.links.push(Link {
                    index: self.next + 100,
                    name: name.clone(),
                    kind: Some("vlan".into()),
                    master: None,
                    alias: Some(crate::links::ALIAS.into()),
                    up: false,
                    mac: vec![0; 6],
                    vlan: Some(*id),
                    parent: Some(p),
                    forwarding: Some(false),
                });
            }
            LinkOp::SetMaster { link, master } => {
                let m = match master {
                    Some(b) => Some(self.index(b)?),
                    None => None,
                };
                let i = self.index(link)?;
                if let Some(l) = self.state.links.iter_mut().find(|l| l.index == i) {
                    l.master = m;
                }
            }
            LinkOp::SetUp { link } => {
                let i = self.index(link)?;
                if let Some(l) = self.state.links.iter_mut().find(|l| l.index == i) {
                    l.up = true;
                }
            }
            LinkOp::AddAddr { link, net } => {
                let index = self.index(link)?;
                self.state.addrs.push(Addr { index, net: *net, link_scope: false });
            }
            LinkOp::DelAddr { link, net } => {
                let index = self.index(link)?;
                self.state.addrs.retain(|a| !(a.index == index && a.net == *net));
            }
            LinkOp::AddRoute { link, gateway, metric } => {
                let index = self.index(link)?;
                // As the kernel: one default route per family and metric in the table.
                let dst = default_net(gateway.is_ipv6());
                if self.state.routes.iter().any(|r| r.dst == dst && r.metric == *metric) {
                    return Err(Error::kernel(
                        format!(
                            "cannot add default route via {gateway} dev {link} metric {metric}"
                        ),
                        std::io::Error::from_raw_os_error(libc::EEXIST),
                    ));
                }
                self.state.routes.push(Route {
                    dst: default_net(gateway.is_ipv6()),
                    gateway: Some(*gateway),
                    oif: Some(index),
                    protocol: RTPROT_NETD,
                    metric: *metric,
                });
            }
            LinkOp::DelRoute { link, gateway, metric } => {
                let index = self.index(link)?;
                self.state.routes.retain(|r| {
                    !(r.oif == Some(index) && r.gateway == Some(*gateway) && r.metric == *metric)
                });
            }
            LinkOp::DelLink { name } => {
                let index = self.index(name)?;
                self.state.links.retain(|l| l.index != index);
                self.state.addrs.retain(|a| a.index != index);
                self.state.routes.retain(|r| r.oif != Some(index));
                for l in &mut self.state.links {
                    if l.master == Some(index) {
                        l.master = None;
                    }
                }
            }
            LinkOp::SetForwarding { link } => {
                let i = self.index(link)?;
                if let Some(l) = self.state.links.iter_mut().find(|l| l.index == i) {
                    l.forwarding = Some(true);
                }
            }
        }
        Ok(())
    }
}

/// Links as values, for unit tests of the planning and engine layers. Clones share one state,
/// so a test keeps a handle to change the "kernel" under the engine (unplug the uplink).
#[derive(Clone, Debug, Default)]
pub struct MemLinks(std::sync::Arc<std::sync::Mutex<MemLinkState>>);

impl MemLinks {
    fn inner(&self) -> std::sync::MutexGuard<'_, MemLinkState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// With a plain link (a NIC) named `name`.
    pub fn with_link(self, name: &str) -> MemLinks {
        self.add_link(name);
        self
    }

    /// A plain link (a NIC) appears.
    pub fn add_link(&self, name: &str) {
        self.inner().add_plain(name);
    }

    /// A link vanishes (unplugged, or removed by hand) with its addresses and routes.
    pub fn remove_link(&self, name: &str) -> Result<()> {
        let mut k = self.inner();
        k.apply(&LinkOp::DelLink { name: name.to_string() })?;
        // Not netd's write: the idempotence tests count only those.
        k.writes -= 1;
        Ok(())
    }

    /// What the "kernel" holds now.
    pub fn state(&self) -> LinkState {
        self.inner().state.clone()
    }
}

impl Links for MemLinks {
    fn observe(&mut self) -> Result<LinkState> {
        self.inner().observe()
    }

    fn apply(&mut self, op: &LinkOp) -> Result<()> {
        self.inner().apply(op)
    }

    fn writes(&self) -> usize {
        self.inner().writes
    }
}
