//! The firewall a profile asks for, as a [`Ruleset`] (pure: no kernel here).
//!
//! - `table inet backroom` filters routed traffic and traffic to the host. Its base chains only
//!   jump to netd's zone chains for packets entering or leaving netd's bridges, so any other
//!   interface of the host is left to whatever else filters it.
//! - `table bridge backroom` filters traffic between ports of one bridge (micro-segmentation).
//!   Its forward chain dispatches on the *input port* name (this host kernel has no
//!   `meta ibrname`) to one chain per segment. Where the kernel has bridge conntrack, replies
//!   pass as established; where it has none, each allow rule gets a stateless mirror that lets
//!   replies back (TCP only without a bare SYN, so the answering side cannot open connections).
//!   ARP and other non-IP frames, DHCP and ICMPv6 (neighbour discovery) pass inside a segment.
//! - `internet` means: through a bridge the uplink carries, to or from an address in none of the
//!   store's subnets. `nat: true` segments are masqueraded on the way there.
//! - Traffic the host sends is not filtered; `from: host` rules only count it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use backroom_profiles::{
    AllowRule, HOST, INTERNET, Profile, Proto, Segment, Verdict as ProfileVerdict, Vlan,
};
use ipnet::IpNet;

use crate::nft::kernel::Caps;
use crate::nft::ruleset::{
    BaseHook, Chain, Family, Hook, L3, L4, Match, Rule, Ruleset, Table, Verdict,
};

/// Everything the firewall depends on besides the profile.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The uplink's name, when a segment uses it.
    pub uplink: Option<String>,
    /// Every address of every workload (stable and temporary), by workload: (segment, address).
    pub addresses: BTreeMap<String, Vec<(String, IpAddr)>>,
    /// The ports of each segment's bridge.
    pub ports: BTreeMap<String, Vec<String>>,
    /// Subnets learned by DHCP, by segment.
    pub learned: BTreeMap<String, IpNet>,
    pub bridge_conntrack: bool,
    pub bridge_reject: bool,
}

impl Context {
    pub fn with_caps(mut self, caps: Caps) -> Context {
        self.bridge_conntrack = caps.bridge_conntrack;
        self.bridge_reject = caps.bridge_reject;
        self
    }
}

/// The uplink-side port of a segment's bridge: the uplink itself or its VLAN sub-interface.
pub fn uplink_port(seg: &Segment, uplink: &str) -> Option<String> {
    match seg.vlan {
        _ if seg.internal => None,
        Some(Vlan::Untagged) => Some(uplink.to_string()),
        Some(Vlan::Id(id)) => Some(format!("{uplink}.{id}")),
        None => None,
    }
}

fn subnet_of(seg: &Segment, ctx: &Context) -> Option<IpNet> {
    seg.subnet.map(|s| s.0).or_else(|| ctx.learned.get(seg.name.as_str()).copied())
}

fn host_net(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

fn l3_of_net(n: &IpNet) -> L3 {
    L3::of(n.addr())
}

struct Builder<'a> {
    p: &'a Profile,
    ctx: &'a Context,
    store_nets: Vec<IpNet>,
    uplink_bridges: Vec<String>,
}

/// A set of alternative match lists: any one of them matching means the end matches.
type Alts = Vec<Vec<Match>>;

#[derive(Clone, Copy, PartialEq)]
enum Side {
    From,
    To,
}

impl Builder<'_> {
    fn segment(&self, name: &str) -> Option<&Segment> {
        self.p.segment(name)
    }

    fn not_store(&self, side: Side, l3: L3) -> Vec<Match> {
        let mut v = vec![Match::Proto(l3)];
        for n in self.store_nets.iter().filter(|n| l3_of_net(n) == l3) {
            v.push(match side {
                Side::From => Match::NotSrc(*n),
                Side::To => Match::NotDst(*n),
            });
        }
        v
    }

    fn addr_match(side: Side, n: IpNet) -> Vec<Match> {
        vec![
            Match::Proto(l3_of_net(&n)),
            match side {
                Side::From => Match::Src(n),
                Side::To => Match::Dst(n),
            },
        ]
    }

    fn ifname(side: Side, name: &str) -> Match {
        match side {
            Side::From => Match::IifName(name.to_string()),
            Side::To => Match::OifName(name.to_string()),
        }
    }

    /// How an end of a rule is recognised in routed traffic.
    fn routed(&self, end: &str, side: Side) -> Alts {
        if end == INTERNET {
            let mut out = Vec::new();
            for u in &self.uplink_bridges {
                for l3 in [L3::V4, L3::V6] {
                    let mut m = vec![Self::ifname(side, u)];
                    m.extend(self.not_store(side, l3));
                    out.push(m);
                }
            }
            return out;
        }
        if let Some(seg) = self.segment(end) {
            // The bridge and, when known, the subnet: a segment carried on the uplink also
            // carries the internet behind the store router, which is not "from the segment".
            let mut m = vec![Self::ifname(side, &seg.bridge())];
            if let Some(n) = subnet_of(seg, self.ctx) {
                m.extend(Self::addr_match(side, n));
            }
            return vec![m];
        }
        self.workload(end, None, side)
    }

    fn workload(&self, name: &str, on: Option<&str>, side: Side) -> Alts {
        self.ctx
            .addresses
            .get(name)
            .map(|v| {
                v.iter()
                    .filter(|(s, _)| on.is_none_or(|o| o == s))
                    .map(|(_, a)| Self::addr_match(side, host_net(*a)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How an end of a rule is recognised inside segment `seg` (bridged traffic).
    fn bridged(&self, end: &str, seg: &Segment, side: Side) -> Alts {
        if end == HOST {
            return Vec::new();
        }
        if end == INTERNET {
            let Some(port) = self.ctx.uplink.as_deref().and_then(|u| uplink_port(seg, u)) else {
                return Vec::new();
            };
            return [L3::V4, L3::V6]
                .into_iter()
                .map(|l3| {
                    let mut m = vec![Self::ifname(side, &port)];
                    m.extend(self.not_store(side, l3));
                    m
                })
                .collect();
        }
        if end == seg.name.as_str() {
            return match subnet_of(seg, self.ctx) {
                Some(n) => vec![Self::addr_match(side, n)],
                None => vec![vec![]],
            };
        }
        if self.segment(end).is_some() {
            return Vec::new();
        }
        // A workload on this segment, by any of its addresses: a reply to a flow routed to its
        // address on another segment may leave by its interface on this one.
        if self.workload(end, Some(seg.name.as_str()), side).is_empty() {
            return Vec::new();
        }
        self.workload(end, None, side)
    }

    fn ports(rule: &AllowRule) -> Alts {
        if rule.ports.is_empty() {
            return vec![vec![]];
        }
        rule.ports
            .iter()
            .map(|p| match (p.proto, p.ports) {
                (Proto::Tcp, Some((lo, hi))) => vec![Match::L4(L4::Tcp), Match::Dport(lo, hi)],
                (Proto::Udp, Some((lo, hi))) => vec![Match::L4(L4::Udp), Match::Dport(lo, hi)],
                (Proto::Tcp, None) => vec![Match::L4(L4::Tcp)],
                (Proto::Udp, None) => vec![Match::L4(L4::Udp)],
                (Proto::Icmp, _) => vec![Match::L4(L4::Icmp)],
            })
            .collect()
    }
}

/// `a` and `b` together, or `None` when they need different L3 protocols.
fn join(parts: &[&[Match]]) -> Option<Vec<Match>> {
    let mut out: Vec<Match> = Vec::new();
    let mut l3: Option<L3> = None;
    for part in parts {
        for m in *part {
            if let Match::Proto(p) = m {
                match l3 {
                    Some(q) if q != *p => return None,
                    Some(_) => continue,
                    None => l3 = Some(*p),
                }
            }
            if let Match::L4(L4::Icmp) = m
                && l3 == Some(L3::V6)
            {
                return None;
            }
            out.push(m.clone());
        }
    }
    // The L3 protocol goes first: address and port loads depend on it.
    out.sort_by_key(|m| !matches!(m, Match::IifName(_) | Match::OifName(_) | Match::Proto(_)));
    Some(out)
}

fn mirror(m: &Match) -> Match {
    match m {
        Match::IifName(n) => Match::OifName(n.clone()),
        Match::OifName(n) => Match::IifName(n.clone()),
        Match::Src(n) => Match::Dst(*n),
        Match::Dst(n) => Match::Src(*n),
        Match::NotSrc(n) => Match::NotDst(*n),
        Match::NotDst(n) => Match::NotSrc(*n),
        Match::Sport(a, b) => Match::Dport(*a, *b),
        Match::Dport(a, b) => Match::Sport(*a, *b),
        other => other.clone(),
    }
}

/// The stateless rules that let replies of a flow back: the flow's matches mirrored, and for
/// TCP never a bare SYN.
fn replies(matches: &[Match]) -> Vec<Vec<Match>> {
    let mirrored: Vec<Match> = matches.iter().map(mirror).collect();
    let tcp = mirrored.contains(&Match::L4(L4::Tcp));
    let l4 = mirrored.iter().any(|m| matches!(m, Match::L4(_)));
    if tcp {
        let mut v = mirrored;
        v.push(Match::TcpNotSyn);
        vec![v]
    } else if l4 {
        vec![mirrored]
    } else {
        let mut a = mirrored.clone();
        a.extend([Match::L4(L4::Tcp), Match::TcpNotSyn]);
        let mut b = mirrored;
        b.push(Match::NotL4(L4::Tcp));
        vec![a, b]
    }
}

fn default_rule(v: ProfileVerdict, can_reject: bool) -> Rule {
    let verdict = match v {
        ProfileVerdict::Accept => Verdict::Accept,
        ProfileVerdict::Drop => Verdict::Drop,
        ProfileVerdict::Reject if can_reject => Verdict::Reject,
        ProfileVerdict::Reject => Verdict::Drop,
    };
    Rule::new("netd:default", vec![], verdict)
}

fn base(name: &str, hook: Hook, nat: bool, priority: i32) -> Chain {
    Chain {
        name: name.to_string(),
        base: Some(BaseHook { hook, nat, priority }),
        rules: Vec::new(),
    }
}

fn regular(name: &str) -> Chain {
    Chain { name: name.to_string(), base: None, rules: Vec::new() }
}

fn counted(label: &str, matches: Vec<Match>, verdict: Verdict) -> Rule {
    let mut r = Rule::new(label, matches, verdict);
    r.counter = Some(label.to_string());
    r
}

/// Both tables for `p` in context `ctx`.
pub fn build(p: &Profile, ctx: &Context) -> Ruleset {
    let mut store_nets: Vec<IpNet> =
        p.network.segments.iter().filter_map(|s| subnet_of(s, ctx)).collect();
    store_nets.sort();
    store_nets.dedup();
    let uplink_bridges: Vec<String> = p
        .network
        .segments
        .iter()
        .filter(|s| !s.internal && s.vlan.is_some() && ctx.uplink.is_some())
        .map(Segment::bridge)
        .collect();
    let b = Builder { p, ctx, store_nets, uplink_bridges };
    let fw = &p.network.firewall;
    let counters: Vec<String> = fw.allow.iter().map(|r| r.name.as_str().to_string()).collect();

    // inet: routed traffic and traffic to the host.
    let bridges: Vec<String> = p.network.segments.iter().map(Segment::bridge).collect();
    let mut forward = base("forward", Hook::Forward, false, 0);
    let mut input = base("input", Hook::Input, false, 0);
    let mut output = base("output", Hook::Output, false, 0);
    let mut post = base("postrouting", Hook::Postrouting, true, 100);
    for br in &bridges {
        forward.rules.push(Rule::new(
            "netd:own",
            vec![Match::IifName(br.clone())],
            Verdict::Jump("zone-forward".into()),
        ));
        forward.rules.push(Rule::new(
            "netd:own",
            vec![Match::OifName(br.clone())],
            Verdict::Jump("zone-forward".into()),
        ));
        input.rules.push(Rule::new(
            "netd:own",
            vec![Match::IifName(br.clone())],
            Verdict::Jump("zone-input".into()),
        ));
        output.rules.push(Rule::new(
            "netd:own",
            vec![Match::OifName(br.clone())],
            Verdict::Jump("zone-output".into()),
        ));
    }
    let mut zf = regular("zone-forward");
    let mut zi = regular("zone-input");
    let mut zo = regular("zone-output");
    zf.rules.push(Rule::new("netd:established", vec![Match::CtEstablished], Verdict::Accept));
    zi.rules.push(Rule::new("netd:established", vec![Match::CtEstablished], Verdict::Accept));
    zi.rules.push(Rule::new(
        "netd:dhcp-client",
        vec![Match::L4(L4::Udp), Match::Sport(67, 67), Match::Dport(68, 68)],
        Verdict::Accept,
    ));
    zi.rules.push(Rule::new("netd:icmpv6", vec![Match::L4(L4::Icmpv6)], Verdict::Accept));
    for r in &fw.allow {
        let name = r.name.as_str();
        let (from, to) = (r.from.as_str(), r.to.as_str());
        if from == HOST && to == HOST {
            continue;
        }
        let chain = if to == HOST {
            &mut zi
        } else if from == HOST {
            &mut zo
        } else {
            &mut zf
        };
        let froms = if from == HOST { vec![vec![]] } else { b.routed(from, Side::From) };
        let tos = if to == HOST { vec![vec![]] } else { b.routed(to, Side::To) };
        for f in &froms {
            for t in &tos {
                for pm in Builder::ports(r) {
                    if let Some(m) = join(&[f, t, &pm]) {
                        chain.rules.push(counted(name, m, Verdict::Accept));
                    }
                }
            }
        }
    }
    zf.rules.push(default_rule(fw.default, true));
    zi.rules.push(default_rule(fw.default, true));
    for seg in p.network.segments.iter().filter(|s| s.nat) {
        let Some(net) = subnet_of(seg, ctx) else { continue };
        for u in &b.uplink_bridges {
            let mut m = vec![Match::OifName(u.clone()), Match::Src(net)];
            m.extend(b.not_store(Side::To, l3_of_net(&net)));
            if let Some(m) = join(&[&m]) {
                post.rules.push(Rule::new(
                    &format!("netd:nat-{}", seg.name),
                    m,
                    Verdict::Masquerade,
                ));
            }
        }
    }
    let mut inet = Table::new(Family::Inet);
    inet.counters = counters.clone();
    inet.chains = vec![forward, input, output, post, zf, zi, zo];

    // bridge: traffic inside a segment, dispatched on the input port.
    let mut bforward = base("forward", Hook::Forward, false, 0);
    let mut seg_chains = Vec::new();
    for seg in &p.network.segments {
        let chain_name = format!("seg-{}", seg.name);
        let mut ports: Vec<String> = ctx.ports.get(seg.name.as_str()).cloned().unwrap_or_default();
        ports.sort();
        ports.dedup();
        for port in &ports {
            bforward.rules.push(Rule::new(
                "netd:port",
                vec![Match::IifName(port.clone())],
                Verdict::Jump(chain_name.clone()),
            ));
        }
        let mut c = regular(&chain_name);
        c.rules.push(Rule::new("netd:non-ip", vec![Match::NotIp], Verdict::Accept));
        c.rules.push(Rule::new(
            "netd:dhcp",
            vec![Match::L4(L4::Udp), Match::Dport(67, 68)],
            Verdict::Accept,
        ));
        c.rules.push(Rule::new("netd:icmpv6", vec![Match::L4(L4::Icmpv6)], Verdict::Accept));
        if ctx.bridge_conntrack {
            c.rules.push(Rule::new(
                "netd:established",
                vec![Match::CtEstablished],
                Verdict::Accept,
            ));
        }
        let mut mirrors = Vec::new();
        for r in &fw.allow {
            let froms = b.bridged(r.from.as_str(), seg, Side::From);
            let tos = b.bridged(r.to.as_str(), seg, Side::To);
            for f in &froms {
                for t in &tos {
                    for pm in Builder::ports(r) {
                        let Some(m) = join(&[f, t, &pm]) else { continue };
                        if !ctx.bridge_conntrack {
                            for back in replies(&m) {
                                if let Some(back) = join(&[&back]) {
                                    mirrors.push(Rule::new(
                                        &format!("{}:reply", r.name),
                                        back,
                                        Verdict::Accept,
                                    ));
                                }
                            }
                        }
                        c.rules.push(counted(r.name.as_str(), m, Verdict::Accept));
                    }
                }
            }
        }
        c.rules.extend(mirrors);
        c.rules.push(default_rule(fw.default, ctx.bridge_reject));
        seg_chains.push(c);
    }
    // A VM's tap joins its bridge before netd has seen it (the next check puts it above): until
    // then its traffic inside the segment is held, never let through unfiltered. The taps are
    // Backroom's own (vmd names them), so no other host traffic is touched.
    bforward.rules.push(Rule::new(
        "netd:vm-tap-pending",
        vec![Match::IifPrefix(backroom_profiles::naming::VM_TAP_PREFIX.to_string())],
        Verdict::Drop,
    ));
    let mut bridge = Table::new(Family::Bridge);
    bridge.counters = counters;
    bridge.chains.push(bforward);
    bridge.chains.extend(seg_chains);
    Ruleset { tables: vec![inet, bridge] }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: t}
network:
  uplink: {interface: up0}
  segments:
    - {name: mgmt, vlan: untagged, subnet: 10.9.0.0/24, address: 10.9.0.2/24, gateway: 10.9.0.1}
    - {name: pos, internal: true, subnet: 10.1.0.0/24, address: 10.1.0.1/24}
    - {name: apps, internal: true, subnet: 172.30.0.0/24, address: 172.30.0.1/24, nat: true}
  firewall:
    default: reject
    allow:
      - {name: pos-to-orders, from: pos, to: orders, ports: [tcp/8443]}
      - {name: apps-out, from: apps, to: internet, ports: [tcp/443, udp/53]}
      - {name: mgmt-ssh, from: mgmt, to: host, ports: [tcp/22]}
workloads:
  - name: orders
    kind: container
    image: r/o:1@sha256:b517ff710669f502d9f7f4f564f0a93f9a87241817e28f9de1288a9d6f91a447
    networks:
      - {segment: apps, address: 172.30.0.10}
      - {segment: pos, address: auto}
"#;

    fn ctx() -> Context {
        let mut c = Context { uplink: Some("up0".into()), ..Context::default() };
        c.addresses.insert(
            "orders".into(),
            vec![
                ("apps".into(), "172.30.0.10".parse().unwrap()),
                ("pos".into(), "10.1.0.254".parse().unwrap()),
            ],
        );
        c.ports.insert("pos".into(), vec!["bkaaaa0".into()]);
        c
    }

    #[test]
    fn routed_rules_match_bridges_and_workload_addresses() {
        let p = backroom_profiles::render_str("t.yaml", PROFILE).unwrap().profile;
        let rs = build(&p, &ctx());
        let text = rs.to_string();
        assert!(text.contains("iifname \"br-pos\" meta nfproto ipv4 ip saddr 10.1.0.0/24 ip daddr 172.30.0.10 meta l4proto tcp th dport 8443 counter name \"pos-to-orders\" accept"), "{text}");
        assert!(text.contains("oifname \"br-mgmt\" meta nfproto ipv4 ip saddr 172.30.0.0/24 ip daddr != 10.1.0.0/24"), "{text}");
        assert!(text.contains("iifname \"br-mgmt\" meta nfproto ipv4 ip saddr 10.9.0.0/24 meta l4proto tcp th dport 22 counter name \"mgmt-ssh\" accept"), "{text}");
        // Only netd's bridges lead into its zones.
        let fwd = rs.tables[0].chain("forward").unwrap();
        assert!(fwd.rules.iter().all(|r| matches!(r.verdict, Verdict::Jump(_))));
    }

    #[test]
    fn same_segment_rules_get_stateless_replies_without_bridge_conntrack() {
        let p = backroom_profiles::render_str("t.yaml", PROFILE).unwrap().profile;
        let rs = build(&p, &ctx());
        let seg = rs.tables[1].chain("seg-pos").unwrap();
        let text: Vec<String> = seg.rules.iter().map(Rule::body).collect();
        assert!(
            text.iter().any(|t| t.contains(
                "ip saddr 10.1.0.0/24 ip daddr 10.1.0.254 meta l4proto tcp th dport 8443"
            )),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains(
                "ip daddr 10.1.0.0/24 ip saddr 10.1.0.254 meta l4proto tcp th sport 8443 tcp flags"
            )),
            "{text:?}"
        );
        assert_eq!(
            text.last().unwrap(),
            "drop",
            "no bridge reject here: reject falls back to drop"
        );
        let with_ct = build(&p, &Context { bridge_conntrack: true, bridge_reject: true, ..ctx() });
        let seg = with_ct.tables[1].chain("seg-pos").unwrap();
        assert!(seg.rules.iter().all(|r| !r.label.ends_with(":reply")));
        assert!(seg.rules.iter().any(|r| r.label == "netd:established"));
    }
}
