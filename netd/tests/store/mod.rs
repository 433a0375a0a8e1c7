//! A store in namespaces: netd's namespace ("store") with its uplink a veth to a "router"
//! namespace, an "internet" namespace behind the router, client devices plugged into segment
//! bridges, and workloads attached by netd. Used on this host and inside the kernel lab.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use backroom_profiles::{HostAddress, Profile, Rendered};

use crate::common::{self, Dest, End, L4, Netd, Ns, Servers, ids, must};

pub const INTERNET_ADDR: &str = "203.0.113.10";

pub struct Store {
    pub store: Ns,
    pub router: Ns,
    pub internet: Ns,
    pub clients: Vec<(String, Ns, String)>,
    /// More sources (and destinations) for the matrix: devices behind the router, VM stand-ins.
    pub extra: Vec<(End, Option<Dest>, Ns)>,
    pub netd: Netd,
    pub profile: Profile,
    pub file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The router's address on the untagged segment, and the segment's subnet.
pub struct Upstream {
    pub router_addr: String,
    pub dhcp: bool,
}

impl Store {
    /// Builds the namespaces and applies `text` with the uplink `up0`.
    pub fn new(text: &str, up: &Upstream) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.yaml");
        std::fs::write(&file, text).unwrap();
        Store::from_file(file, dir, up)
    }

    /// A store from a profile file (its layers beside it), applied unless DHCP must be set up first.
    pub fn from_file(file: std::path::PathBuf, dir: tempfile::TempDir, up: &Upstream) -> Store {
        let rendered: Rendered = common::render(&file);
        let mut store = Ns::new("s");
        let names: Vec<String> = rendered
            .profile
            .workloads
            .iter()
            .flat_map(|w| {
                let n = w.name().as_str();
                [format!("bk-{n}"), format!("bk-{n}--next")]
            })
            .collect();
        store.also_remove(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let router = Ns::new("r");
        let internet = Ns::new("i");
        must(&format!(
            "ip link add up0 netns {} type veth peer name rt0 netns {}",
            store.name, router.name
        ));
        must(&format!(
            "ip link add ri0 netns {} type veth peer name eth0 netns {}",
            router.name, internet.name
        ));
        router.ip("link set rt0 up");
        router.ip("link set ri0 up");
        router.ip(&format!("addr add {} dev rt0", up.router_addr));
        router.ip("addr add 203.0.113.1/24 dev ri0");
        must(&format!("ip netns exec {} sysctl -qw net.ipv4.ip_forward=1", router.name));
        internet.ip(&format!("addr add {INTERNET_ADDR}/24 dev eth0"));
        internet.ip("link set eth0 up");
        internet.ip("route add default via 203.0.113.1");
        // The store's namespace keeps the kernel's default (no forwarding): routing through
        // its bridges is netd's to turn on.
        let netd = Netd::new(&store);
        let s = Store {
            store,
            router,
            internet,
            clients: Vec::new(),
            extra: Vec::new(),
            netd,
            profile: rendered.profile,
            file,
            _dir: dir,
        };
        if !up.dhcp {
            s.apply();
        }
        s
    }

    pub fn apply(&self) -> String {
        self.netd.ok(&["apply", self.file.to_str().unwrap(), "--uplink", "up0"])
    }

    pub fn ns_path(ns: &Ns) -> String {
        format!("/run/netns/{}", ns.name)
    }

    /// Plugs a client into every segment that has a subnet and a host address (its gateway).
    pub fn plug_clients(&mut self) {
        for seg in self.profile.network.segments.clone() {
            let (Some(net), HostAddress::Static(host)) = (seg.subnet, seg.address) else {
                continue;
            };
            let IpAddr::V4(base) = net.0.network() else { continue };
            let o = base.octets();
            let addr = format!("{}.{}.{}.{}/{}", o[0], o[1], o[2], o[3] + 50, net.0.prefix_len());
            let c = common::plug_client(
                &self.store,
                &seg.bridge(),
                &addr,
                Some(&host.addr().to_string()),
            );
            self.clients.push((
                seg.name.as_str().to_string(),
                c,
                addr.split('/').next().unwrap().to_string(),
            ));
        }
        // netd takes the new ports of its bridges into its firewall, as it does for VM taps.
        self.apply();
    }

    /// Attaches every container workload; returns (name, namespace path).
    pub fn attach_all(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for w in self.profile.containers() {
            let n = w.name.as_str();
            self.netd.ok(&["attach", self.file.to_str().unwrap(), n, "--uplink", "up0"]);
            out.push((n.to_string(), format!("/run/netns/bk-{n}")));
        }
        out
    }

    /// The stable addresses of a workload by segment, from `netd show`.
    pub fn workload_addrs(&self, workload: &str) -> Vec<(String, IpAddr)> {
        let show = self.netd.ok(&["show"]);
        let mut out = Vec::new();
        let mut inside = false;
        for line in show.lines() {
            if line.starts_with("endpoint ") {
                inside = line == format!("endpoint {workload} (primary)");
                continue;
            }
            if inside && line.starts_with("eth") {
                let parts: Vec<&str> = line.split_whitespace().collect();
                let addr = parts[5].split('/').next().unwrap().parse().unwrap();
                out.push((parts[1].to_string(), addr));
            }
        }
        out
    }

    /// The matrix of the profile: every client, workload, the router (on the untagged
    /// segment) and the internet, to every workload address, host address, client and the
    /// internet.
    pub fn matrix(
        &self,
        flows: &[(L4, u16)],
        untagged: Option<(&str, Option<ipnet::IpNet>)>,
    ) -> (usize, Vec<String>) {
        self.matrix_with(flows, untagged, false)
    }

    /// The matrix with all `flows` to every destination, or (`focus`) only the ports the rules
    /// name for each destination plus `flows`.
    pub fn matrix_with(
        &self,
        flows: &[(L4, u16)],
        untagged: Option<(&str, Option<ipnet::IpNet>)>,
        focus: bool,
    ) -> (usize, Vec<String>) {
        let all: Vec<(L4, u16)> = if focus {
            let mut v = flows.to_vec();
            for r in &self.profile.network.firewall.allow {
                for sp in &r.ports {
                    match (sp.proto, sp.ports) {
                        (backroom_profiles::Proto::Tcp, Some((lo, _))) => v.push((L4::Tcp, lo)),
                        (backroom_profiles::Proto::Udp, Some((lo, _))) => v.push((L4::Udp, lo)),
                        _ => {}
                    }
                }
            }
            v.sort_by_key(|f| (f.0 == L4::Udp, f.1));
            v.dedup();
            v
        } else {
            flows.to_vec()
        };
        let flows_listen = &all;
        let tcp: Vec<u16> = flows_listen.iter().filter(|f| f.0 == L4::Tcp).map(|f| f.1).collect();
        let udp: Vec<u16> = flows_listen.iter().filter(|f| f.0 == L4::Udp).map(|f| f.1).collect();
        let mut servers = Vec::new();
        let mut froms = Vec::new();
        let mut dests = Vec::new();
        servers.push(Servers::start(&Self::ns_path(&self.store), &tcp, &udp, "host"));
        servers.push(Servers::start(&Self::ns_path(&self.internet), &tcp, &udp, "internet"));
        froms.push(End {
            label: "internet".into(),
            ns_path: Self::ns_path(&self.internet),
            from_ids: ids(&["internet"]),
            reach: None,
        });
        dests.push(Dest {
            label: "internet".into(),
            addr: INTERNET_ADDR.parse().unwrap(),
            to_ids: ids(&["internet"]),
        });
        if let Some((seg, net)) = untagged {
            froms.push(End {
                label: format!("router on {seg}"),
                ns_path: Self::ns_path(&self.router),
                from_ids: ids(&[seg]),
                reach: net,
            });
        }
        for (e, d, _) in &self.extra {
            servers.push(Servers::start(&e.ns_path, &tcp, &udp, &e.label));
            froms.push(e.clone());
            dests.extend(d.clone());
        }
        for seg in &self.profile.network.segments {
            if let HostAddress::Static(n) = seg.address {
                dests.push(Dest {
                    label: format!("host on {}", seg.name),
                    addr: n.addr(),
                    to_ids: ids(&["host"]),
                });
            }
        }
        for (seg, c, addr) in &self.clients {
            let path = Self::ns_path(c);
            servers.push(Servers::start(&path, &tcp, &udp, seg));
            froms.push(End {
                label: format!("client on {seg}"),
                ns_path: path,
                from_ids: ids(&[seg]),
                reach: None,
            });
            dests.push(Dest {
                label: format!("client on {seg}"),
                addr: addr.parse().unwrap(),
                to_ids: ids(&[seg]),
            });
        }
        let mut workload_froms = Vec::new();
        for w in self.profile.containers() {
            let name = w.name.as_str();
            let path = format!("/run/netns/bk-{name}");
            servers.push(Servers::start(&path, &tcp, &udp, name));
            let addrs = self.workload_addrs(name);
            for (seg, a) in &addrs {
                dests.push(Dest {
                    label: format!("{name} on {seg}"),
                    addr: *a,
                    to_ids: ids(&[name, seg]),
                });
            }
            workload_froms.push((name.to_string(), path, addrs));
        }
        let mut all_jobs = common::jobs(&self.profile, &froms, &dests, flows, focus);
        // A workload's traffic leaves by the interface on the destination's subnet, else by its
        // default route (its first segment with a host address): that decides its segment.
        for (name, path, addrs) in &workload_froms {
            let default_seg = addrs.first().map(|(s, _)| s.clone()).unwrap_or_default();
            for d in &dests {
                let seg = self
                    .profile
                    .network
                    .segments
                    .iter()
                    .find(|s| {
                        s.subnet.is_some_and(|n| n.0.contains(&d.addr))
                            && addrs.iter().any(|(x, _)| x == s.name.as_str())
                    })
                    .map(|s| s.name.as_str().to_string())
                    .unwrap_or_else(|| default_seg.clone());
                let from = End {
                    label: format!("{name} (via {seg})"),
                    ns_path: path.clone(),
                    from_ids: ids(&[name, &seg]),
                    reach: None,
                };
                if d.label.starts_with(&format!("{name} ")) {
                    continue;
                }
                all_jobs.extend(common::jobs(
                    &self.profile,
                    &[from],
                    std::slice::from_ref(d),
                    flows,
                    focus,
                ));
            }
        }
        let result = common::run_jobs(&self.profile, all_jobs);
        drop(servers);
        result
    }
}
