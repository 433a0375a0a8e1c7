//! netd against this host's kernel, in namespaces the tests make (never the root namespace).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store;

use std::net::SocketAddr;
use std::time::Duration;

use common::{L4, Servers, in_ns, must, nft_handles, probe, serial, sh};
use store::{Store, Upstream};

/// The coffee shop's shape without VLANs (this kernel has none): the untagged uplink segment,
/// internal segments for the tills, guests and apps.
const SHOP: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: shop}
network:
  uplink: {interface: eno1}
  segments:
    - {name: mgmt, vlan: untagged, subnet: 10.9.0.0/24, address: 10.9.0.2/24, gateway: 10.9.0.1}
    - {name: pos, internal: true, subnet: 10.1.0.0/24, address: 10.1.0.1/24}
    - {name: guest, internal: true, subnet: 192.168.40.0/24, address: 192.168.40.1/24, nat: true}
    - {name: apps, internal: true, subnet: 172.30.0.0/24, address: 172.30.0.1/24, nat: true}
  firewall:
    default: drop
    allow:
      - {name: pos-to-orders, from: pos, to: orders, ports: [tcp/8443]}
      - {name: pos-to-menu, from: pos, to: menu, ports: [tcp/8080]}
      - {name: orders-to-menu, from: orders, to: menu, ports: [tcp/8080]}
      - {name: guest-out, from: guest, to: internet}
      - {name: apps-out, from: apps, to: internet, ports: [tcp/443, udp/53]}
      - {name: mgmt-ssh, from: mgmt, to: host, ports: [tcp/22]}
workloads:
  - name: menu
    kind: container
    image: r/menu:1@sha256:029a508b03c54efe055be3121d9a244a3e85555e44037458d78d989550c1b7bf
    networks:
      - {segment: apps, address: 172.30.0.11}
      - {segment: pos, address: auto}
  - name: orders
    kind: container
    image: r/orders:3@sha256:b517ff710669f502d9f7f4f564f0a93f9a87241817e28f9de1288a9d6f91a447
    networks:
      - {segment: apps, address: 172.30.0.10}
      - {segment: pos, address: auto}
"#;

fn upstream() -> Upstream {
    Upstream { router_addr: "10.9.0.1/24".into(), dhcp: false }
}

fn route_router_to_store(s: &Store) {
    for net in ["10.1.0.0/24", "172.30.0.0/24", "192.168.40.0/24"] {
        s.router.ip(&format!("route add {net} via 10.9.0.2"));
    }
}

#[test]
fn the_allow_matrix_holds_routed_and_inside_segments() {
    let _g = serial();
    let mut s = Store::new(SHOP, &upstream());
    route_router_to_store(&s);
    s.attach_all();
    s.plug_clients();
    let flows = [
        (L4::Tcp, 8443),
        (L4::Tcp, 8080),
        (L4::Tcp, 443),
        (L4::Tcp, 22),
        (L4::Udp, 53),
        (L4::Tcp, 9),
    ];
    let (total, bad) = s.matrix(&flows, Some(("mgmt", None)));
    assert!(
        bad.is_empty(),
        "{} of {total} flows disagree with the profile:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(total > 200, "only {total} flows checked");
    // Counters count what the rules let through.
    let show = s.netd.ok(&["show"]);
    assert!(
        show.lines().any(|l| l.starts_with("rule pos-to-orders:") && !l.contains(": 0 packets")),
        "{show}"
    );
}

#[test]
fn guests_reach_the_internet_through_nat_and_no_private_segment() {
    let _g = serial();
    let mut s = Store::new(SHOP, &upstream());
    s.attach_all();
    s.plug_clients();
    let guest = s.clients.iter().find(|c| c.0 == "guest").unwrap();
    let gpath = Store::ns_path(&guest.1);
    let _srv = Servers::start(&Store::ns_path(&s.internet), &[443, 8443], &[53], "internet");
    let _wl = Servers::start("/run/netns/bk-orders", &[8443], &[], "orders");
    // The router knows no route back to 192.168.40/24: only a masqueraded flow can work.
    assert_eq!(
        probe(&gpath, L4::Tcp, "203.0.113.10:443".parse().unwrap(), Duration::from_secs(2))
            .as_deref(),
        Some("internet")
    );
    assert_eq!(
        probe(&gpath, L4::Udp, "203.0.113.10:53".parse().unwrap(), Duration::from_secs(2))
            .as_deref(),
        Some("internet")
    );
    for dst in ["172.30.0.10:8443", "10.1.0.1:22", "10.9.0.1:22"] {
        let a: SocketAddr = dst.parse().unwrap();
        assert!(
            probe(&gpath, L4::Tcp, a, Duration::from_millis(800)).is_none(),
            "guest reached {dst}"
        );
    }
}

#[test]
fn a_vm_tap_netd_has_not_filtered_yet_is_held_until_it_is() {
    let _g = serial();
    let s = Store::new(SHOP, &upstream());
    s.attach_all();
    let orders = s.workload_addrs("orders").into_iter().find(|(seg, _)| seg == "pos").unwrap().1;
    let _wl = Servers::start("/run/netns/bk-orders", &[8443, 9], &[], "orders");
    // A VM's tap, named as vmd names them, joins br-pos after netd last looked at the bridge.
    let tap = backroom_profiles::naming::vm_tap("till", 0);
    let vm = common::plug_client_as(&s.store, &tap, "br-pos", "10.1.0.60/24", Some("10.1.0.1"));
    let vpath = Store::ns_path(&vm);
    let to = |port: u16| SocketAddr::new(orders, port);
    assert!(
        probe(&vpath, L4::Tcp, to(8443), Duration::from_millis(800)).is_none(),
        "a tap netd has not filtered yet must not pass traffic inside its segment"
    );
    // What `netd serve`'s next check does when a port joins one of its bridges.
    s.apply();
    assert_eq!(
        probe(&vpath, L4::Tcp, to(8443), Duration::from_secs(2)).as_deref(),
        Some("orders"),
        "pos-to-orders holds for the VM once netd filters its tap"
    );
    assert!(
        probe(&vpath, L4::Tcp, to(9), Duration::from_millis(800)).is_none(),
        "and only what the rules allow"
    );
}

#[test]
fn a_second_apply_writes_nothing_and_keeps_the_rule_handles() {
    let _g = serial();
    let s = Store::new(SHOP, &upstream());
    s.attach_all();
    let before = (nft_handles(&s.store.name, "inet"), nft_handles(&s.store.name, "bridge"));
    assert!(!before.0.is_empty() && !before.1.is_empty());
    let out = s.apply();
    assert!(out.contains("nothing to do"), "{out}");
    // In-process, to count netlink writes.
    let dir = s.netd.state.path().to_path_buf();
    let file = s.file.clone();
    let (changed, writes) = in_ns(&Store::ns_path(&s.store), move || {
        let mut e = backroom_netd::Engine::open(&dir).unwrap();
        let r = backroom_profiles::render_file(&file).unwrap();
        let o = e.apply(&r, Some("up0"), 0).unwrap();
        (o.changed, e.netlink_writes())
    });
    assert!(!changed);
    assert_eq!(writes, 0, "a no-op apply made netlink writes");
    let after = (nft_handles(&s.store.name, "inet"), nft_handles(&s.store.name, "bridge"));
    assert_eq!(before, after, "the nftables rule handles changed");
}

#[test]
fn drift_is_reported_and_repaired() {
    let _g = serial();
    let s = Store::new(SHOP, &upstream());
    s.store.ip("link del br-pos");
    s.store.ip("addr add 10.9.0.77/24 dev br-mgmt");
    must(&format!("ip netns exec {} nft add rule inet backroom zone-forward accept", s.store.name));
    let show = s.netd.ok(&["show"]);
    assert!(show.contains("segment pos br-pos MISSING"), "{show}");
    assert!(show.contains("drift: the kernel differs: netd would create bridge br-pos"), "{show}");
    assert!(
        show.contains(
            "drift: the kernel differs: netd would remove address 10.9.0.77/24 from br-mgmt"
        ),
        "{show}"
    );
    assert!(show.contains("drift: chain inet backroom zone-forward differs"), "{show}");
    let out = s.apply();
    assert!(out.contains("create bridge br-pos"), "{out}");
    let show = s.netd.ok(&["show"]);
    assert!(!show.contains("drift:"), "{show}");
    assert!(!s.store.ip("-br addr show br-mgmt").contains("10.9.0.77"));
}

#[test]
fn a_batch_the_kernel_refuses_leaves_the_old_ruleset() {
    let _g = serial();
    let s = Store::new(SHOP, &upstream());
    let before = (nft_handles(&s.store.name, "inet"), nft_handles(&s.store.name, "bridge"));
    let file = s.file.clone();
    let dir = s.netd.state.path().to_path_buf();
    let err = in_ns(&Store::ns_path(&s.store), move || {
        use backroom_netd::nft::Firewall;
        use backroom_netd::nft::ruleset::{Match, Rule, Verdict};
        let mut e = backroom_netd::Engine::open(&dir).unwrap();
        let r = backroom_profiles::render_file(&file).unwrap();
        let mut rs = e.ruleset(&r, Some("up0")).unwrap();
        // A jump to a chain that does not exist: the kernel refuses the whole transaction.
        rs.tables[1].chains[0].rules.push(Rule::new(
            "broken",
            vec![Match::IifName("x".into())],
            Verdict::Jump("no-such-chain".into()),
        ));
        let mut fw = backroom_netd::nft::NetlinkFirewall::open().unwrap();
        backroom_daemon::chain(&fw.replace(&rs, &Default::default()).unwrap_err())
    });
    assert!(err.contains("the kernel refused the nftables batch"), "{err}");
    let after = (nft_handles(&s.store.name, "inet"), nft_handles(&s.store.name, "bridge"));
    assert_eq!(before, after, "a refused batch changed the ruleset");
    assert!(s.apply().contains("nothing to do"));
}

#[test]
fn a_long_multibyte_rule_label_neither_panics_nor_drifts() {
    let ns = common::Ns::new("l");
    // 'é' is two bytes: byte 100, where netd once cut a label, falls inside one.
    let label = format!("x{}", "é".repeat(80));
    let (want, diffs, seen) = in_ns(&format!("/run/netns/{}", ns.name), move || {
        use backroom_netd::nft::ruleset::{BaseHook, Chain, Hook, L4, Match, Rule, Table, Verdict};
        use backroom_netd::nft::{Family, Firewall, Ruleset};
        let mut t = Table::new(Family::Inet);
        t.chains.push(Chain {
            name: "forward".into(),
            base: Some(BaseHook { hook: Hook::Forward, nat: false, priority: 0 }),
            rules: vec![Rule::new(&label, vec![Match::L4(L4::Tcp)], Verdict::Accept)],
        });
        let rs = Ruleset { tables: vec![t] };
        let mut fw = backroom_netd::nft::NetlinkFirewall::open().unwrap();
        fw.replace(&rs, &Default::default()).unwrap();
        let seen = fw.read().unwrap();
        let want = rs.tables[0].chains[0].rules[0].comment("forward");
        (want, backroom_netd::nft::differences(&rs, &seen), seen)
    });
    assert!(diffs.is_empty(), "drift after apply: {diffs:?}");
    let got = &seen.inet.as_ref().unwrap().rules[0].comment;
    assert_eq!(got, &want, "the kernel holds the comment netd compares with");
    assert!(got.ends_with(&want[want.len() - 12..]) && got.contains(" #"), "{got}");
    let listed = must(&format!("ip netns exec {} nft list table inet backroom", ns.name));
    assert!(listed.contains("xéé"), "{listed}");
}

#[test]
fn teardown_leaves_no_owned_object_and_foreign_ones_untouched() {
    let _g = serial();
    let s = Store::new(SHOP, &upstream());
    // Foreign objects in the store namespace: a link, an address, a route, a table.
    s.store.ip("link add fx0 type veth peer name fx1");
    s.store.ip("addr add 198.51.100.1/24 dev fx0");
    s.store.ip("link set fx0 up");
    s.store.ip("route add 198.18.0.0/16 via 198.51.100.2 dev fx0 onlink");
    must(&format!(
        "ip netns exec {} nft 'add table inet foreign; add chain inet foreign c {{ type filter hook forward priority 0; }}; add rule inet foreign c iifname \"fx0\" counter accept'",
        s.store.name
    ));
    let foreign_before =
        must(&format!("ip netns exec {} nft -j list table inet foreign", s.store.name));
    s.attach_all();
    s.apply();
    assert!(must("ip netns list").contains("bk-orders"));
    let out = s.netd.ok(&["teardown"]);
    assert!(out.contains("removed table inet backroom"), "{out}");
    let links = s.store.ip("-d link show");
    assert!(!links.contains("backroom-netd"), "owned links left:\n{links}");
    assert!(!links.contains("br-"), "{links}");
    assert!(s.store.ip("route show proto 176").trim().is_empty());
    assert!(
        !sh(&format!("ip netns exec {} nft list table inet backroom", s.store.name))
            .status
            .success()
    );
    assert!(
        !sh(&format!("ip netns exec {} nft list table bridge backroom", s.store.name))
            .status
            .success()
    );
    assert!(!std::path::Path::new("/run/netns/bk-orders").exists());
    assert!(!std::path::Path::new("/run/netns/bk-menu").exists());
    // Foreign objects are as they were.
    assert!(s.store.ip("-br addr show fx0").contains("198.51.100.1/24"));
    assert!(s.store.ip("route").contains("198.18.0.0/16 via 198.51.100.2"));
    assert!(s.store.ip("link show up0").contains("up0"), "the uplink itself stays");
    let foreign_after =
        must(&format!("ip netns exec {} nft -j list table inet foreign", s.store.name));
    assert_eq!(foreign_before, foreign_after);
}

#[test]
fn endpoints_attach_detach_promote_and_keep_their_addresses_across_restarts() {
    let _g = serial();
    let mut s = Store::new(SHOP, &upstream());
    s.plug_clients();
    let out = s.netd.ok(&["attach", s.file.to_str().unwrap(), "orders", "--uplink", "up0"]);
    assert!(out.contains("netns /run/netns/bk-orders"), "{out}");
    let pos_addr = s.workload_addrs("orders").into_iter().find(|(seg, _)| seg == "pos").unwrap().1;
    // The namespace is usable by other processes (ip netns exec, containerd).
    let inside = must("ip netns exec bk-orders ip -br addr");
    assert!(
        inside.contains("eth0")
            && inside.contains("172.30.0.10/24")
            && inside.contains(&pos_addr.to_string()),
        "{inside}"
    );
    assert!(must("ip netns exec bk-orders ip route").contains("default via 172.30.0.1 dev eth0"));
    assert!(
        must("ip netns exec bk-orders ip -br link").contains("lo               UNKNOWN")
            || must("ip netns exec bk-orders ip -br link").contains("lo ")
    );
    let mac = must("ip netns exec bk-orders cat /sys/class/net/eth0/address");
    let expect =
        backroom_profiles::naming::mac_string(backroom_profiles::naming::mac("orders", "apps"));
    assert_eq!(mac.trim(), expect);

    // Stable across detach, a netd restart (a new process) and attach.
    s.netd.ok(&["detach", "orders"]);
    assert!(!std::path::Path::new("/run/netns/bk-orders").exists());
    s.netd.ok(&["attach", s.file.to_str().unwrap(), "orders", "--uplink", "up0"]);
    assert_eq!(
        s.workload_addrs("orders").into_iter().find(|(seg, _)| seg == "pos").unwrap().1,
        pos_addr
    );

    // Start-first update: `next` gets temporary addresses, then takes over the stable ones.
    let pos_client = Store::ns_path(&s.clients.iter().find(|c| c.0 == "pos").unwrap().1);
    let _old = Servers::start("/run/netns/bk-orders", &[8443], &[], "old");
    let dst = SocketAddr::new(pos_addr, 8443);
    assert_eq!(probe(&pos_client, L4::Tcp, dst, Duration::from_secs(2)).as_deref(), Some("old"));
    let next = s.netd.ok(&[
        "attach",
        s.file.to_str().unwrap(),
        "orders",
        "--instance",
        "next",
        "--uplink",
        "up0",
    ]);
    assert!(
        next.contains("netns /run/netns/bk-orders--next") && next.contains("(temporary)"),
        "{next}"
    );
    let _new = Servers::start("/run/netns/bk-orders--next", &[8443], &[], "new");
    let next_ino = std::fs::metadata("/run/netns/bk-orders--next")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let promoted = s.netd.ok(&["promote", "orders", "next"]);
    assert!(!promoted.contains("(temporary)"), "{promoted}");
    assert!(!std::path::Path::new("/run/netns/bk-orders--next").exists());
    let now_ino = std::fs::metadata("/run/netns/bk-orders")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_eq!(now_ino, next_ino, "bk-orders is now the promoted instance's namespace");
    // The listener on 0.0.0.0 in the promoted namespace answers on the stable address.
    assert_eq!(probe(&pos_client, L4::Tcp, dst, Duration::from_secs(2)).as_deref(), Some("new"));
    let inside = must("ip netns exec bk-orders ip -br addr");
    assert!(inside.contains("172.30.0.10/24") && !inside.contains("172.30.0.254"), "{inside}");
    let hv = backroom_profiles::naming::host_veth("orders", "", 0);
    assert!(s.store.ip("-br link").contains(&hv), "the host veth took the primary's name");
    s.netd.ok(&["detach", "orders"]);
    assert!(!s.store.ip("-br link").contains("bk"), "{}", s.store.ip("-br link"));
}

#[test]
fn a_daemon_rolls_back_an_unconfirmed_apply_and_repairs_drift() {
    let _g = serial();
    let s = Store::new(SHOP, &upstream());
    let sock = s.netd.state.path().join("netd.sock");
    let child = std::process::Command::new(&s.netd.bin)
        .args(["--netns", &s.netd.netns, "--state-dir"])
        .arg(s.netd.state.path())
        .args(["serve", "--check-interval", "2", "--socket"])
        .arg(&sock)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(child);
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use backroom_api::netd as pb;
        let mut c = backroom_netd::server::client(sock.clone()).await.unwrap();
        let mut events = c.events(pb::EventsRequest {}).await.unwrap().into_inner();
        let first = c.observe(pb::ObserveRequest {}).await.unwrap().into_inner();
        // A new revision with one more segment, to be confirmed within 2 seconds.
        let extra = SHOP.replace(
            "    - {name: apps, internal: true",
            "    - {name: spare, internal: true, subnet: 10.77.0.0/24, address: 10.77.0.1/24}\n    - {name: apps, internal: true",
        );
        let r = backroom_profiles::render_str("x.yaml", &extra).unwrap();
        let rep = c
            .apply(pb::ApplyRequest { revision: r.revision.as_str().into(), profile_yaml: r.to_yaml(), confirm_seconds: 2, uplink_override: "up0".into() })
            .await
            .unwrap()
            .into_inner();
        assert!(rep.changed && rep.confirm_deadline_unix > 0);
        assert!(s.store.ip("-br link").contains("br-spare"));
        let o = c.observe(pb::ObserveRequest {}).await.unwrap().into_inner();
        assert_eq!(o.pending_revision, r.revision.as_str());
        // A wrong revision in the request is refused.
        let bad = c.apply(pb::ApplyRequest { revision: "0".repeat(64), profile_yaml: r.to_yaml(), confirm_seconds: 0, uplink_override: "up0".into() }).await;
        assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
        let mut kinds = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !kinds.iter().any(|k: &String| k == "rollback_done") {
            let ev = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut events)).await.expect("no rollback event").unwrap().unwrap();
            kinds.push(ev.kind);
        }
        let o = c.observe(pb::ObserveRequest {}).await.unwrap().into_inner();
        assert_eq!(o.applied_revision, first.applied_revision);
        assert!(o.pending_revision.is_empty());
        assert!(!s.store.ip("-br link").contains("br-spare"), "the unconfirmed segment is gone");
        // `netd show` asks the running daemon, which holds the state directory.
        let show = s.netd.ok(&["show", "--socket", sock.to_str().unwrap()]);
        assert!(show.contains(&format!("applied revision {}", first.applied_revision)), "{show}");

        // Confirmed applies stay.
        let rep = c
            .apply(pb::ApplyRequest { revision: r.revision.as_str().into(), profile_yaml: r.to_yaml(), confirm_seconds: 2, uplink_override: "up0".into() })
            .await
            .unwrap()
            .into_inner();
        assert!(rep.changed);
        c.confirm(pb::ConfirmRequest { revision: String::new() }).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(c.observe(pb::ObserveRequest {}).await.unwrap().into_inner().applied_revision, r.revision.as_str());

        // A bridge removed by hand comes back by itself.
        s.store.ip("link del br-spare");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while !seen.iter().any(|k: &String| k == "drift_repaired") {
            let ev = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut events)).await.expect("no drift repair").unwrap().unwrap();
            seen.push(ev.kind);
        }
        assert!(seen.iter().any(|k| k == "drift_found"));
        assert!(s.store.ip("-br link").contains("br-spare"));
    });
}

#[test]
fn dhcp_gets_a_real_lease_and_renews_it() {
    let _g = serial();
    let text = SHOP.replace(
        "{name: mgmt, vlan: untagged, subnet: 10.9.0.0/24, address: 10.9.0.2/24, gateway: 10.9.0.1}",
        "{name: mgmt, vlan: untagged, address: dhcp}",
    );
    let s = Store::new(&text, &Upstream { router_addr: "10.9.0.1/24".into(), dhcp: true });
    let leases = s.netd.state.path().join("dnsmasq.leases");
    let pidfile = s.netd.state.path().join("dnsmasq.pid");
    must(&format!(
        "ip netns exec {} dnsmasq --port=0 --interface=rt0 --bind-interfaces --dhcp-range=10.9.0.100,10.9.0.150,255.255.255.0,2m --dhcp-option=3,10.9.0.1 --dhcp-leasefile={} --pid-file={}",
        s.router.name,
        leases.display(),
        pidfile.display()
    ));
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
    let _stop = Stop(pidfile);
    let out = s.apply();
    assert!(out.contains("got DHCP lease 10.9.0."), "{out}");
    let addr = s.store.ip("-br addr show br-mgmt");
    assert!(addr.contains("10.9.0.1") && addr.contains("/24"), "{addr}");
    assert!(s.store.ip("route").contains("default via 10.9.0.1 dev br-mgmt"));
    let lease_text = std::fs::read_to_string(&leases).unwrap();
    let mac = backroom_profiles::naming::mac_string(backroom_profiles::naming::mac("host", "mgmt"));
    assert!(lease_text.contains(&mac), "dnsmasq has no lease for {mac}: {lease_text}");
    // Renewal: make the lease due, renew, and the server extends the same address.
    let dhcp = s.netd.state.path().join("dhcp.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&dhcp).unwrap()).unwrap();
    let first = v["mgmt"].clone();
    v["mgmt"]["renew_at"] = serde_json::json!(0);
    v["mgmt"]["obtained_unix"] = serde_json::json!(0);
    std::fs::write(&dhcp, serde_json::to_vec(&v).unwrap()).unwrap();
    let dir = s.netd.state.path().to_path_buf();
    let renewed = in_ns(&Store::ns_path(&s.store), move || {
        let mut e = backroom_netd::Engine::open(&dir).unwrap();
        e.acquire_dhcp().unwrap()
    });
    assert!(renewed.iter().any(|a| a.contains("got DHCP lease")), "{renewed:?}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&dhcp).unwrap()).unwrap();
    assert_eq!(v["mgmt"]["address"], first["address"], "the renewal kept the address");
    assert!(v["mgmt"]["obtained_unix"].as_i64().unwrap() > 0);
}
