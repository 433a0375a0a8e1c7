//! Planning link changes as data: from the desired bridges, VLAN sub-interfaces, addresses and
//! routes and what the kernel has, the ordered list of [`LinkOp`]s that makes them match, each
//! with the steps that undo it (used when a later step fails).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::rtnl::LinkState;

/// The alias on every link netd creates: how it recognises its own.
pub const ALIAS: &str = "backroom-netd";
/// The alias on the host side of a workload's veth.
pub const ENDPOINT_ALIAS: &str = "backroom-netd endpoint";
/// The route protocol number on netd's routes (`ip route show proto 176`).
pub const RTPROT_NETD: u8 = 176;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkOp {
    AddBridge {
        name: String,
        mac: [u8; 6],
    },
    AddVlan {
        name: String,
        parent: String,
        id: u16,
    },
    SetMaster {
        link: String,
        master: Option<String>,
    },
    SetUp {
        link: String,
    },
    AddAddr {
        link: String,
        net: IpNet,
    },
    DelAddr {
        link: String,
        net: IpNet,
    },
    /// A default route.
    AddRoute {
        link: String,
        gateway: IpAddr,
        metric: u32,
    },
    DelRoute {
        link: String,
        gateway: IpAddr,
        metric: u32,
    },
    DelLink {
        name: String,
    },
    /// Lets the host route what arrives on this (netd's) bridge: between segments, to the
    /// uplink (NAT), back from it. Only netd's own bridges, never the host-wide switch.
    SetForwarding {
        link: String,
    },
}

impl fmt::Display for LinkOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkOp::AddBridge { name, .. } => write!(f, "create bridge {name}"),
            LinkOp::AddVlan { name, parent, id } => {
                write!(f, "create VLAN {id} sub-interface {name} of {parent}")
            }
            LinkOp::SetMaster { link, master: Some(m) } => write!(f, "enslave {link} to {m}"),
            LinkOp::SetMaster { link, master: None } => write!(f, "release {link} from its bridge"),
            LinkOp::SetUp { link } => write!(f, "bring {link} up"),
            LinkOp::AddAddr { link, net } => write!(f, "add address {net} to {link}"),
            LinkOp::DelAddr { link, net } => write!(f, "remove address {net} from {link}"),
            LinkOp::AddRoute { link, gateway, metric } => {
                write!(f, "add default route via {gateway} dev {link} metric {metric}")
            }
            LinkOp::DelRoute { link, gateway, metric } => {
                write!(f, "remove default route via {gateway} dev {link} metric {metric}")
            }
            LinkOp::DelLink { name } => write!(f, "delete link {name}"),
            LinkOp::SetForwarding { link } => write!(f, "enable IPv4 forwarding on {link}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredBridge {
    pub name: String,
    pub mac: [u8; 6],
    pub addrs: Vec<IpNet>,
    /// Default routes: (gateway, metric).
    pub routes: Vec<(IpAddr, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredVlan {
    pub name: String,
    pub parent: String,
    pub id: u16,
}

/// The links netd wants, as computed from the profile and its state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredLinks {
    /// The uplink, when a segment uses it.
    pub uplink: Option<String>,
    pub bridges: Vec<DesiredBridge>,
    pub vlans: Vec<DesiredVlan>,
    /// (port, bridge): the uplink, VLAN sub-interfaces and endpoint veths.
    pub ports: Vec<(String, String)>,
    /// Uplinks of earlier applies, released from netd's bridges when no longer the uplink.
    pub former_uplinks: Vec<String>,
}

/// One planned step and the steps that undo it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub op: LinkOp,
    pub undo: Vec<LinkOp>,
}

fn is_ours(alias: &Option<String>) -> bool {
    alias.as_deref() == Some(ALIAS)
}

/// The ordered steps that make the kernel's links match `want`: creations and additions
/// first, removals last, so that a failure midway leaves the old configuration working.
pub fn plan(want: &DesiredLinks, have: &LinkState) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let push = |steps: &mut Vec<Step>, op: LinkOp, undo: Vec<LinkOp>| steps.push(Step { op, undo });

    if let Some(u) = &want.uplink
        && have.link(u).is_none()
    {
        return Err(Error::UplinkMissing { uplink: u.clone() });
    }
    for b in &want.bridges {
        match have.link(&b.name) {
            None => push(
                &mut steps,
                LinkOp::AddBridge { name: b.name.clone(), mac: b.mac },
                vec![LinkOp::DelLink { name: b.name.clone() }],
            ),
            Some(l) if !is_ours(&l.alias) || l.kind.as_deref() != Some("bridge") => {
                return Err(Error::ForeignLink { name: b.name.clone() });
            }
            Some(_) => {}
        }
    }
    let mut replaced = Vec::new();
    for v in &want.vlans {
        match have.link(&v.name) {
            None => push(
                &mut steps,
                LinkOp::AddVlan { name: v.name.clone(), parent: v.parent.clone(), id: v.id },
                vec![LinkOp::DelLink { name: v.name.clone() }],
            ),
            Some(l) if !is_ours(&l.alias) => {
                return Err(Error::ForeignLink { name: v.name.clone() });
            }
            Some(l) => {
                let parent_ok = l.parent.and_then(|p| have.name_of(p)) == Some(v.parent.as_str());
                if l.vlan != Some(v.id) || !parent_ok {
                    replaced.push(v.name.clone());
                    push(&mut steps, LinkOp::DelLink { name: v.name.clone() }, vec![]);
                    push(
                        &mut steps,
                        LinkOp::AddVlan {
                            name: v.name.clone(),
                            parent: v.parent.clone(),
                            id: v.id,
                        },
                        vec![LinkOp::DelLink { name: v.name.clone() }],
                    );
                }
            }
        }
    }
    for (port, bridge) in &want.ports {
        let Some(l) = have.link(port) else {
            // The uplink and VLANs were checked or are being created; a missing endpoint veth is
            // drift that only a new attach repairs.
            if want.vlans.iter().any(|v| &v.name == port) {
                push(
                    &mut steps,
                    LinkOp::SetMaster { link: port.clone(), master: Some(bridge.clone()) },
                    vec![],
                );
            }
            continue;
        };
        let current = l.master.and_then(|m| have.name_of(m)).map(str::to_string);
        if current.as_deref() != Some(bridge.as_str()) || replaced.contains(port) {
            push(
                &mut steps,
                LinkOp::SetMaster { link: port.clone(), master: Some(bridge.clone()) },
                vec![LinkOp::SetMaster { link: port.clone(), master: current }],
            );
        }
    }
    let mut ups: Vec<&str> = want.bridges.iter().map(|b| b.name.as_str()).collect();
    ups.extend(want.vlans.iter().map(|v| v.name.as_str()));
    ups.extend(want.ports.iter().map(|(p, _)| p.as_str()));
    if let Some(u) = &want.uplink {
        ups.push(u);
    }
    ups.sort_unstable();
    ups.dedup();
    for name in ups {
        let up = have.link(name).map(|l| l.up).unwrap_or(false);
        let exists_or_planned = have.link(name).is_some()
            || want.bridges.iter().any(|b| b.name == name)
            || want.vlans.iter().any(|v| v.name == name);
        if !up && exists_or_planned {
            push(&mut steps, LinkOp::SetUp { link: name.to_string() }, vec![]);
        }
    }
    // Routing through netd's bridges (a new bridge starts with the host's default, usually off).
    for b in &want.bridges {
        if have.link(&b.name).and_then(|l| l.forwarding) != Some(true) {
            push(&mut steps, LinkOp::SetForwarding { link: b.name.clone() }, vec![]);
        }
    }
    // Addresses and routes on netd's bridges.
    let mut removals = Vec::new();
    for b in &want.bridges {
        let existing = have.link(&b.name);
        let have_addrs: Vec<IpNet> = existing
            .map(|l| have.addrs_of(l.index).filter(|a| !a.link_scope).map(|a| a.net).collect())
            .unwrap_or_default();
        for a in &b.addrs {
            if !have_addrs.contains(a) {
                push(
                    &mut steps,
                    LinkOp::AddAddr { link: b.name.clone(), net: *a },
                    vec![LinkOp::DelAddr { link: b.name.clone(), net: *a }],
                );
            }
        }
        for a in have_addrs.iter().filter(|a| !b.addrs.contains(a)) {
            removals.push(Step {
                op: LinkOp::DelAddr { link: b.name.clone(), net: *a },
                undo: vec![LinkOp::AddAddr { link: b.name.clone(), net: *a }],
            });
        }
        let have_routes: Vec<(IpAddr, u32)> = existing
            .map(|l| {
                have.routes
                    .iter()
                    .filter(|r| {
                        r.oif == Some(l.index)
                            && r.protocol == RTPROT_NETD
                            && r.dst.prefix_len() == 0
                    })
                    .filter_map(|r| r.gateway.map(|g| (g, r.metric)))
                    .collect()
            })
            .unwrap_or_default();
        // A route replaced by another of the same metric (a new gateway) goes first: the
        // kernel holds one default route per metric. Other removals wait for the additions.
        for (g, m) in have_routes.iter().filter(|r| !b.routes.contains(r)) {
            if b.routes.iter().any(|(_, wm)| wm == m) {
                push(
                    &mut steps,
                    LinkOp::DelRoute { link: b.name.clone(), gateway: *g, metric: *m },
                    vec![LinkOp::AddRoute { link: b.name.clone(), gateway: *g, metric: *m }],
                );
            }
        }
        for (g, m) in &b.routes {
            if !have_routes.contains(&(*g, *m)) {
                push(
                    &mut steps,
                    LinkOp::AddRoute { link: b.name.clone(), gateway: *g, metric: *m },
                    vec![LinkOp::DelRoute { link: b.name.clone(), gateway: *g, metric: *m }],
                );
            }
        }
        for (g, m) in have_routes
            .iter()
            .filter(|r| !b.routes.contains(r))
            .filter(|(_, m)| !b.routes.iter().any(|(_, wm)| wm == m))
        {
            removals.insert(
                0,
                Step {
                    op: LinkOp::DelRoute { link: b.name.clone(), gateway: *g, metric: *m },
                    undo: vec![LinkOp::AddRoute { link: b.name.clone(), gateway: *g, metric: *m }],
                },
            );
        }
    }
    steps.extend(removals);
    // The uplink released when no segment takes it untagged any more, and a former uplink.
    for l in &have.links {
        let Some(m) = l.master.and_then(|m| have.by_index(m)) else { continue };
        let ours_bridge = is_ours(&m.alias) && m.kind.as_deref() == Some("bridge");
        let wanted = want.ports.iter().any(|(p, b)| p == &l.name && b == &m.name);
        let is_uplink = want.uplink.as_deref() == Some(l.name.as_str())
            || want.former_uplinks.contains(&l.name);
        if ours_bridge && !wanted && is_uplink {
            push(
                &mut steps,
                LinkOp::SetMaster { link: l.name.clone(), master: None },
                vec![LinkOp::SetMaster { link: l.name.clone(), master: Some(m.name.clone()) }],
            );
        }
    }
    // netd's own links that are no longer wanted (VLANs before bridges).
    let mut dels: Vec<&crate::rtnl::Link> = have
        .links
        .iter()
        .filter(|l| is_ours(&l.alias))
        .filter(|l| match l.kind.as_deref() {
            Some("bridge") => !want.bridges.iter().any(|b| b.name == l.name),
            Some("vlan") => !want.vlans.iter().any(|v| v.name == l.name),
            _ => false,
        })
        .collect();
    dels.sort_by_key(|l| l.kind.as_deref() == Some("bridge"));
    for l in dels {
        let undo = match (l.kind.as_deref(), l.parent.and_then(|p| have.name_of(p)), l.vlan) {
            (Some("vlan"), Some(parent), Some(id)) => {
                vec![LinkOp::AddVlan { name: l.name.clone(), parent: parent.to_string(), id }]
            }
            (Some("bridge"), _, _) => {
                let mut mac = [0u8; 6];
                if l.mac.len() == 6 {
                    mac.copy_from_slice(&l.mac);
                }
                let mut u = vec![
                    LinkOp::AddBridge { name: l.name.clone(), mac },
                    LinkOp::SetUp { link: l.name.clone() },
                ];
                u.extend(
                    have.addrs_of(l.index)
                        .filter(|a| !a.link_scope)
                        .map(|a| LinkOp::AddAddr { link: l.name.clone(), net: a.net }),
                );
                u
            }
            _ => vec![],
        };
        push(&mut steps, LinkOp::DelLink { name: l.name.clone() }, undo);
    }
    Ok(steps)
}

/// Runs `steps` in order; when one fails, undoes the ones done (last first) and returns the
/// failure, with any failure of the undo attached.
pub fn run(links: &mut dyn crate::rtnl::Links, steps: &[Step]) -> Result<()> {
    for (i, s) in steps.iter().enumerate() {
        if let Err(e) = links.apply(&s.op) {
            let undo_errors = undo(links, &steps[..i]);
            if undo_errors.is_empty() {
                return Err(e);
            }
            let mut all = vec![e];
            all.extend(undo_errors);
            return Err(Error::Many(all));
        }
    }
    Ok(())
}

/// Undoes `done` steps, last first; returns what could not be undone.
pub fn undo(links: &mut dyn crate::rtnl::Links, done: &[Step]) -> Vec<Error> {
    let mut errors = Vec::new();
    for s in done.iter().rev() {
        for op in &s.undo {
            if let Err(e) = links.apply(op) {
                errors.push(e);
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtnl::{Links, MemLinks};

    fn want() -> DesiredLinks {
        DesiredLinks {
            uplink: Some("up0".into()),
            bridges: vec![DesiredBridge {
                name: "br-pos".into(),
                mac: [2, 0, 0, 0, 0, 1],
                addrs: vec!["10.0.0.2/24".parse().unwrap()],
                routes: vec![("10.0.0.1".parse().unwrap(), 100)],
            }],
            vlans: vec![DesiredVlan { name: "up0.10".into(), parent: "up0".into(), id: 10 }],
            ports: vec![("up0.10".into(), "br-pos".into())],
            former_uplinks: vec![],
        }
    }

    #[test]
    fn a_plan_applied_leaves_nothing_to_do() {
        let mut k = MemLinks::default().with_link("up0");
        let steps = plan(&want(), &k.observe().unwrap()).unwrap();
        assert!(steps.iter().any(|s| matches!(s.op, LinkOp::AddVlan { .. })));
        run(&mut k, &steps).unwrap();
        let again = plan(&want(), &k.observe().unwrap()).unwrap();
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn a_missing_uplink_and_a_foreign_name_are_refused() {
        let mut k = MemLinks::default();
        assert!(plan(&want(), &k.observe().unwrap()).is_err());
        let mut k = MemLinks::default().with_link("up0").with_link("br-pos");
        let e = plan(&want(), &k.observe().unwrap()).unwrap_err();
        assert!(e.to_string().contains("netd did not make it"), "{e}");
    }

    #[test]
    fn a_failure_midway_undoes_the_steps_done() {
        let mut k = MemLinks::default().with_link("up0");
        let mut steps = plan(&want(), &k.observe().unwrap()).unwrap();
        steps.push(Step { op: LinkOp::SetUp { link: "nope".into() }, undo: vec![] });
        assert!(run(&mut k, &steps).is_err());
        let st = k.observe().unwrap();
        assert!(st.link("br-pos").is_none() && st.link("up0.10").is_none());
    }

    #[test]
    fn foreign_addresses_on_a_bridge_are_removed_and_own_links_no_longer_wanted_deleted() {
        let mut k = MemLinks::default().with_link("up0");
        let steps = plan(&want(), &k.observe().unwrap()).unwrap();
        run(&mut k, &steps).unwrap();
        k.apply(&LinkOp::AddAddr { link: "br-pos".into(), net: "10.0.0.99/24".parse().unwrap() })
            .unwrap();
        let steps = plan(&want(), &k.observe().unwrap()).unwrap();
        assert_eq!(steps.len(), 1);
        assert!(matches!(steps[0].op, LinkOp::DelAddr { .. }));
        let steps = plan(&DesiredLinks::default(), &k.observe().unwrap()).unwrap();
        let dels: Vec<_> = steps
            .iter()
            .filter_map(|s| match &s.op {
                LinkOp::DelLink { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(dels, ["up0.10", "br-pos"]);
    }

    #[test]
    fn a_new_gateway_replaces_the_default_route_of_the_same_metric() {
        let mut k = MemLinks::default().with_link("up0");
        let first = plan(&want(), &k.observe().unwrap()).unwrap();
        run(&mut k, &first).unwrap();
        let mut moved = want();
        moved.bridges[0].addrs = vec!["192.168.7.20/24".parse().unwrap()];
        moved.bridges[0].routes = vec![("192.168.7.1".parse().unwrap(), 100)];
        let steps = plan(&moved, &k.observe().unwrap()).unwrap();
        run(&mut k, &steps).unwrap();
        assert!(plan(&moved, &k.observe().unwrap()).unwrap().is_empty());
        // Make before break still holds for the address.
        let ops: Vec<String> = steps.iter().map(|s| s.op.to_string()).collect();
        let at = |p: &str| ops.iter().position(|o| o.starts_with(p)).unwrap();
        assert!(at("add address 192.168.7.20/24") < at("remove address 10.0.0.2/24"), "{ops:?}");
    }
}
