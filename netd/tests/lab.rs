//! What this host's kernel cannot do (802.1q VLANs, bridge conntrack), in the kernel lab:
//! virtme-ng boots Debian's kernel under QEMU with this machine's filesystem and runs this very
//! test binary's `lab_inner` there, in one boot. The sample fleet's stores are applied with a
//! veth uplink whose far end is a "router" namespace carrying the VLANs, and their allow
//! matrices are checked with real connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backroom_integration::kernel_lab;
use backroom_profiles::{HostAddress, Vlan};
use common::{Dest, End, L4, Ns, ids, must, sh};
use store::{Store, Upstream};

#[test]
fn kernel_lab_runs_the_vlan_and_bridge_conntrack_tests() {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let run = kernel_lab::run_inner("lab_inner", Duration::from_secs(1200), &scratch);
    assert!(
        run.passed,
        "the kernel lab run failed after {:?}; its console ends with:\n{}",
        run.elapsed, run.console_tail
    );
    eprintln!("kernel lab passed in {:?}", run.elapsed);
}

/// Runs inside the lab (Debian's kernel): started by the test above, never on the host.
#[test]
#[ignore = "runs inside the kernel lab; kernel_lab_runs_the_vlan_and_bridge_conntrack_tests starts it"]
fn lab_inner() {
    assert!(
        backroom_integration::kernel_lab::inside(),
        "lab_inner runs inside the kernel lab only"
    );
    // The guest reads the host's files over 9p, slowly: run netd from memory.
    must(&format!(
        "mkdir -p /run/backroom-lab && cp {} /run/backroom-lab/netd",
        env!("CARGO_BIN_EXE_netd")
    ));
    // SAFETY: set before any test thread starts; this test runs alone in the lab.
    unsafe { std::env::set_var("BACKROOM_NETD_BIN", "/run/backroom-lab/netd") };
    must("modprobe 8021q");
    let _ = sh("modprobe nf_conntrack_bridge");
    for store in ["store-0042", "store-2001"] {
        let t = Instant::now();
        sample_store(store);
        eprintln!("LAB: {store} checked in {:?}", t.elapsed());
    }
    let t = Instant::now();
    vlan_override();
    eprintln!("LAB: the VLAN uplink override checked in {:?}", t.elapsed());
    backroom_integration::kernel_lab::pass();
}

/// An uplink override that moves `mgmt` (untagged in the profile) onto VLAN 42 of the uplink,
/// through `netd serve`: the sub-interface is made and enslaved, the router's VLAN 42 answers,
/// and clearing the override puts the untagged uplink back.
fn vlan_override() {
    use backroom_api::netd as pb;
    use common::serve::Serve;
    let _g = common::serial();
    let text = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: shop}
network:
  uplink: {interface: eno1}
  segments:
    - {name: mgmt, vlan: untagged, subnet: 10.9.0.0/24, address: 10.9.0.2/24, gateway: 10.9.0.1}
  firewall:
    default: drop
    allow:
      - {name: mgmt-ssh, from: mgmt, to: host, ports: [tcp/22]}
"#;
    let s = Store::new(text, &Upstream { router_addr: "10.9.0.1/24".into(), dhcp: false });
    s.router.ip_batch(&[
        "link add link rt0 name rt0.42 type vlan id 42".into(),
        "addr add 192.168.42.1/24 dev rt0.42".into(),
        "link set rt0.42 up".into(),
    ]);
    let _web = common::Servers::start(&Store::ns_path(&s.router), &[8080], &[], "router");
    let serve = Serve::start(&s.netd, 300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let r = backroom_profiles::render_str("shop.yaml", text).unwrap();
    let router42: std::net::SocketAddr = "192.168.42.1:8080".parse().unwrap();
    let reaches = |s: &Store| {
        common::probe(&Store::ns_path(&s.store), L4::Tcp, router42, Duration::from_secs(3))
            .is_some()
    };
    rt.block_on(async {
        let mut c = backroom_netd::server::client(serve.sock.clone()).await.unwrap();
        c.apply(pb::ApplyRequest {
            revision: r.revision.as_str().into(),
            profile_yaml: r.to_yaml(),
            confirm_seconds: 0,
            uplink_override: "up0".into(),
        })
        .await
        .unwrap();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
                as i64;
        let o = pb::Override {
            segment: "mgmt".into(),
            address: "192.168.42.20/24".into(),
            gateway: "192.168.42.1".into(),
            dns: vec![],
            vlan: 42,
            expires_unix: now + 600,
            set_unix: 0,
            reason: "lab".into(),
        };
        c.set_override(pb::SetOverrideRequest { r#override: Some(o), confirm_seconds: 0 })
            .await
            .unwrap();
        let d = s.store.ip("-d link show up0.42");
        assert!(d.contains("vlan protocol 802.1Q id 42") && d.contains("master br-mgmt"), "{d}");
        assert!(!s.store.ip("link show up0").contains("master br-mgmt"), "untagged released");
        // The profile's address and route are gone: the router is reached over VLAN 42.
        assert!(reaches(&s), "the router answers on VLAN 42");
        c.clear_override(pb::ClearOverrideRequest {}).await.unwrap();
    });
    assert!(s.store.ip("link show up0").contains("master br-mgmt"), "untagged again");
    assert!(!s.store.ip("-br link show").contains("up0.42"), "the sub-interface is gone");
    drop(serve);
    s.netd.ok(&["teardown"]);
}

fn dnsmasq(s: &Store) -> scopeguard::Pid {
    let pidfile = s.netd.state.path().join("dnsmasq.pid");
    must(&format!(
        "ip netns exec {} dnsmasq --port=0 --interface=rt0 --bind-interfaces --dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,2m --dhcp-option=3,10.99.0.1 --dhcp-leasefile={} --pid-file={}",
        s.router.name,
        s.netd.state.path().join("leases").display(),
        pidfile.display()
    ));
    scopeguard::Pid(pidfile)
}

mod scopeguard {
    pub struct Pid(pub std::path::PathBuf);
    impl Drop for Pid {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

fn offset(net: ipnet::IpNet, n: u8) -> String {
    let IpAddr::V4(a) = net.network() else { panic!("IPv4 only here") };
    let o = a.octets();
    format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3].wrapping_add(n))
}

fn sample_store(name: &str) {
    let _g = common::serial();
    let src = common::repo().join("profiles/fleet");
    let dir = tempfile::tempdir().unwrap();
    // The store file and its layers, as they are in the fleet.
    must(&format!("cp -r {}/. {}", src.display(), dir.path().display()));
    let file = dir.path().join(format!("stores/{name}.yaml"));
    let mut s =
        Store::from_file(file, dir, &Upstream { router_addr: "10.99.0.1/24".into(), dhcp: true });
    let _dhcp = dnsmasq(&s);
    let t = Instant::now();
    let out = s.apply();
    assert!(out.contains("got DHCP lease 10.99.0."), "{out}");
    eprintln!("LAB: {name}: applied with a DHCP lease in {:?}", t.elapsed());
    let profile = s.profile.clone();

    // 802.1q: each VLAN segment's sub-interface of the uplink is a port of its bridge.
    for seg in &profile.network.segments {
        if let Some(Vlan::Id(id)) = seg.vlan {
            let d = s.store.ip(&format!("-d link show up0.{id}"));
            assert!(d.contains(&format!("vlan protocol 802.1Q id {id}")), "{d}");
            assert!(d.contains(&format!("master {}", seg.bridge())), "{d}");
        }
    }
    let bridge_table =
        must(&format!("ip netns exec {} nft list table bridge backroom", s.store.name));
    assert!(
        bridge_table.contains("ct state established,related accept"),
        "this kernel has bridge conntrack: netd must use it\n{bridge_table}"
    );
    assert!(!bridge_table.contains(":reply"), "no stateless mirrors where conntrack exists");

    // The router carries the VLANs: a switch bridge per VLAN with a device behind it.
    s.router.ip("link set rt0 up");
    for seg in profile.network.segments.clone() {
        let (Some(Vlan::Id(id)), Some(net)) = (seg.vlan, seg.subnet) else { continue };
        let id = id.get();
        let mut cmds = vec![
            format!("link add link rt0 name rt0.{id} type vlan id {id}"),
            format!("link add sw{id} type bridge"),
            format!("link set rt0.{id} master sw{id} up"),
            format!("link set sw{id} up"),
        ];
        let gw_on_router = seg.gateway.map(|g| g.to_string());
        if let Some(g) = &gw_on_router {
            cmds.push(format!("addr add {g}/{} dev sw{id}", net.0.prefix_len()));
        }
        s.router.ip_batch(&cmds);
        let c = Ns::new("v");
        must(&format!(
            "ip link add ac{id} netns {} type veth peer name eth0 netns {}",
            s.router.name, c.name
        ));
        s.router.ip(&format!("link set ac{id} master sw{id} up"));
        let addr = offset(net.0, 60);
        c.ip_batch(&[
            format!("addr add {addr}/{} dev eth0", net.0.prefix_len()),
            "link set eth0 up".into(),
        ]);
        // A device that uses the store as its gateway can reach beyond its segment.
        let (gw, reach) = match (&gw_on_router, seg.address) {
            (Some(g), _) => (Some(g.clone()), Some(net.0)),
            (None, HostAddress::Static(h)) => (Some(h.addr().to_string()), None),
            _ => (None, Some(net.0)),
        };
        if let Some(g) = gw {
            c.ip(&format!("route add default via {g}"));
        }
        let behind = if gw_on_router.is_some() { " behind the router" } else { "" };
        let label = format!("VLAN {id} device on {}{behind}", seg.name);
        let end = End {
            label: label.clone(),
            ns_path: Store::ns_path(&c),
            from_ids: ids(&[seg.name.as_str()]),
            reach,
        };
        let dest = Dest { label, addr: addr.parse().unwrap(), to_ids: ids(&[seg.name.as_str()]) };
        s.extra.push((end, Some(dest), c));
    }

    let t = Instant::now();
    s.attach_all();
    eprintln!("LAB: {name}: containers attached in {:?}", t.elapsed());
    // VMs: netd gives the bridge, MAC and address; a stand-in namespace plays the VM's tap.
    for vm in profile.vms() {
        let n = vm.name.as_str();
        let out = s.netd.ok(&["attach", s.file.to_str().unwrap(), n, "--uplink", "up0"]);
        for line in out.lines().filter(|l| l.starts_with("nic ")) {
            let p: Vec<&str> = line.split_whitespace().collect();
            let (seg, bridge, mac, addr) = (p[1], p[2], p[4], p[5]);
            let c = Ns::new("m");
            let port = format!("vm{}", c.name.len() + s.extra.len());
            must(&format!(
                "ip link add {port} netns {} type veth peer name eth0 netns {}",
                s.store.name, c.name
            ));
            s.store.ip(&format!("link set {port} master {bridge} up"));
            c.ip(&format!("link set eth0 address {mac}"));
            c.ip(&format!("addr add {addr} dev eth0"));
            c.ip("link set eth0 up");
            let net: ipnet::IpNet = addr.parse().unwrap();
            let label = format!("VM {n} on {seg}");
            let end = End {
                label: label.clone(),
                ns_path: Store::ns_path(&c),
                from_ids: ids(&[n, seg]),
                reach: Some(net.trunc()),
            };
            let dest = Dest { label, addr: net.addr(), to_ids: ids(&[n, seg]) };
            s.extra.push((end, Some(dest), c));
        }
    }
    // Client devices on the segments where the store is the gateway; this apply also takes
    // the VM stand-ins' ports into the firewall.
    s.plug_clients();

    // Per destination: the ports its rules name, plus ports no rule allows.
    let flows = [(L4::Tcp, 9), (L4::Udp, 9)];
    let mgmt = profile
        .network
        .segments
        .iter()
        .find(|s| s.vlan == Some(Vlan::Untagged))
        .map(|s| s.name.as_str().to_string());
    let mgmt_net: ipnet::IpNet = "10.99.0.0/24".parse().unwrap();
    let t = Instant::now();
    let (total, bad) = s.matrix_with(&flows, mgmt.as_deref().map(|m| (m, Some(mgmt_net))), true);
    assert!(
        bad.is_empty(),
        "{name}: {} of {total} flows disagree with the profile:\n{}",
        bad.len(),
        bad.join("\n")
    );
    eprintln!("LAB: {name}: {total} flows as the profile says, checked in {:?}", t.elapsed());
    s.netd.ok(&["teardown"]);
    assert!(!s.store.ip("-d link show").contains("backroom-netd"));
}
