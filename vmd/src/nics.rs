//! A VM's network interfaces: which bridge, which MAC, which address.
//!
//! With netd (`--netd-socket`), vmd asks netd's `Attach` for them, so `address: auto` gets an
//! address from netd's IPAM. Without netd, vmd derives them itself from the profile — bridge
//! `br-<segment>`, MAC `naming::mac(workload, segment)`, the fixed address — and refuses `auto`.
//! libvirt makes the tap and puts it on the bridge; the bridge itself is netd's.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use backroom_profiles::{Profile, VmSpec, WorkloadAddress, naming};
use futures::future::BoxFuture;
use ipnet::IpNet;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub segment: String,
    pub bridge: String,
    pub mac: String,
    /// With its prefix length; `None` when the segment has no subnet.
    pub address: Option<IpNet>,
    pub gateway: Option<IpAddr>,
}

/// Where NICs come from: netd, or the profile alone.
pub trait NicSource: Send + Sync {
    fn attach<'a>(
        &'a self,
        profile: &'a Profile,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, Result<Vec<Nic>>>;
    /// Gives back what `attach` took (netd frees `auto` addresses).
    fn detach<'a>(&'a self, workload: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// Derives NICs from the profile (no netd).
#[derive(Clone, Copy, Debug, Default)]
pub struct StaticNics;

/// The NICs of `vm` as the profile gives them.
pub fn derive(profile: &Profile, vm: &VmSpec) -> Result<Vec<Nic>> {
    let name = vm.name.as_str();
    vm.networks
        .iter()
        .map(|n| {
            let seg_name = n.segment.as_str();
            let seg = profile.segment(seg_name).ok_or_else(|| Error::Spec {
                vm: name.into(),
                message: format!("segment `{seg_name}` is not in the profile"),
            })?;
            let address = match (n.address, seg.subnet) {
                (WorkloadAddress::Auto, Some(_)) => {
                    return Err(Error::AutoAddressNeedsNetd {
                        vm: name.into(),
                        segment: seg_name.into(),
                    });
                }
                (WorkloadAddress::Auto, None) => None,
                (WorkloadAddress::Static(ip), Some(sub)) => {
                    Some(IpNet::new(ip, sub.0.prefix_len()).map_err(|e| Error::Spec {
                        vm: name.into(),
                        message: format!("address {ip} on `{seg_name}`: {e}"),
                    })?)
                }
                (WorkloadAddress::Static(ip), None) => Some(IpNet::from(ip)),
            };
            let gateway = seg.gateway.or(match (seg.nat, seg.address) {
                (true, backroom_profiles::HostAddress::Static(h)) => Some(h.addr()),
                _ => None,
            });
            Ok(Nic {
                segment: seg_name.into(),
                bridge: naming::bridge(seg_name),
                mac: naming::mac_string(naming::mac(name, seg_name)),
                address,
                gateway,
            })
        })
        .collect()
}

impl NicSource for StaticNics {
    fn attach<'a>(
        &'a self,
        profile: &'a Profile,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, Result<Vec<Nic>>> {
        Box::pin(async move { derive(profile, vm) })
    }

    fn detach<'a>(&'a self, _workload: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Asks netd over its unix socket.
#[derive(Clone, Debug)]
pub struct NetdNics {
    socket: PathBuf,
}

impl NetdNics {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        NetdNics { socket: socket.into() }
    }

    async fn client(
        &self,
    ) -> Result<backroom_api::netd::netd_client::NetdClient<tonic::transport::Channel>> {
        let channel =
            backroom_daemon::socket::connect(&self.socket).await.map_err(Error::NetdUnreachable)?;
        Ok(backroom_api::netd::netd_client::NetdClient::new(channel))
    }
}

/// Turns netd's answer into NICs, checking it against the profile's order.
pub fn from_netd(vm: &VmSpec, reply: backroom_api::netd::AttachReply) -> Result<Vec<Nic>> {
    let name = vm.name.as_str();
    if reply.interfaces.len() != vm.networks.len() {
        return Err(Error::Netd(format!(
            "netd gave VM `{name}` {} interface(s), its profile has {} network(s)",
            reply.interfaces.len(),
            vm.networks.len()
        )));
    }
    reply
        .interfaces
        .into_iter()
        .zip(&vm.networks)
        .map(|(i, want)| {
            if i.segment != want.segment.as_str() {
                return Err(Error::Netd(format!(
                    "netd gave VM `{name}` an interface on `{}` where its profile has `{}`",
                    i.segment, want.segment
                )));
            }
            let address = if i.address.is_empty() {
                None
            } else {
                Some(i.address.parse::<IpNet>().map_err(|_| {
                    Error::Netd(format!(
                        "netd gave VM `{name}` the address `{}`, not a CIDR",
                        i.address
                    ))
                })?)
            };
            let gateway = if i.gateway.is_empty() {
                None
            } else {
                Some(i.gateway.parse::<IpAddr>().map_err(|_| {
                    Error::Netd(format!("netd gave VM `{name}` the gateway `{}`", i.gateway))
                })?)
            };
            Ok(Nic { segment: i.segment, bridge: i.bridge, mac: i.mac, address, gateway })
        })
        .collect()
}

impl NicSource for NetdNics {
    fn attach<'a>(
        &'a self,
        _profile: &'a Profile,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, Result<Vec<Nic>>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let req = backroom_api::netd::AttachRequest {
                workload: vm.name.as_str().into(),
                instance: String::new(),
            };
            let reply = c.attach(req).await.map_err(|source| Error::NetdRefused {
                what: "attach",
                vm: vm.name.as_str().into(),
                source,
            })?;
            from_netd(vm, reply.into_inner())
        })
    }

    fn detach<'a>(&'a self, workload: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut c = self.client().await?;
            let req = backroom_api::netd::DetachRequest {
                workload: workload.into(),
                instance: String::new(),
            };
            c.detach(req).await.map_err(|source| Error::NetdRefused {
                what: "detach",
                vm: workload.into(),
                source,
            })?;
            Ok(())
        })
    }
}

/// In-memory NICs for unit tests: what `attach` answers per workload, and what was detached.
#[derive(Debug, Default)]
pub struct MemNics {
    pub answers: Mutex<BTreeMap<String, Vec<Nic>>>,
    pub detached: Mutex<Vec<String>>,
}

impl NicSource for MemNics {
    fn attach<'a>(
        &'a self,
        profile: &'a Profile,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, Result<Vec<Nic>>> {
        Box::pin(async move {
            let answer = self.answers.lock().ok().and_then(|m| m.get(vm.name.as_str()).cloned());
            match answer {
                Some(n) => Ok(n),
                None => derive(profile, vm),
            }
        })
    }

    fn detach<'a>(&'a self, workload: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if let Ok(mut d) = self.detached.lock() {
                d.push(workload.into());
            }
            Ok(())
        })
    }
}
