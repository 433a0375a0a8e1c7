//! The uplink override against this host's kernel, through `netd serve` in namespaces the tests
//! make: it lands on br-mgmt (address, default route, real traffic to the gateway, DNS file),
//! stays across applies, expires by itself (across a netd restart too), rolls back when not
//! confirmed, and refusals change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backroom_api::netd as pb;
use common::serve::{Events, Serve, until};
use common::{L4, Servers, serial};
use store::{Store, Upstream};

/// The shop's networks, `mgmt` by DHCP (the store's DHCP is what breaks).
const SHOP_DHCP: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: shop}
network:
  uplink: {interface: eno1}
  segments:
    - {name: mgmt, vlan: untagged, address: dhcp}
    - {name: pos, internal: true, subnet: 10.1.0.0/24, address: 10.1.0.1/24}
  firewall:
    default: drop
    allow:
      - {name: mgmt-ssh, from: mgmt, to: host, ports: [tcp/22]}
"#;

/// The same with a static `mgmt`.
const SHOP_STATIC: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: shop}
network:
  uplink: {interface: eno1}
  segments:
    - {name: mgmt, vlan: untagged, subnet: 10.9.0.0/24, address: 10.9.0.2/24, gateway: 10.9.0.1}
    - {name: pos, internal: true, subnet: 10.1.0.0/24, address: 10.1.0.1/24}
  firewall:
    default: drop
    allow:
      - {name: mgmt-ssh, from: mgmt, to: host, ports: [tcp/22]}
"#;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn request(text: &str, confirm_seconds: u32) -> pb::ApplyRequest {
    let r = backroom_profiles::render_str("shop.yaml", text).unwrap();
    pb::ApplyRequest {
        revision: r.revision.as_str().into(),
        profile_yaml: r.to_yaml(),
        confirm_seconds,
        uplink_override: "up0".into(),
    }
}

/// mgmt on 192.168.7.20/24 via the router's 192.168.7.1, for `seconds`.
fn over(seconds: i64) -> pb::Override {
    pb::Override {
        segment: "mgmt".into(),
        address: "192.168.7.20/24".into(),
        gateway: "192.168.7.1".into(),
        dns: vec![],
        vlan: 0,
        expires_unix: now() + seconds,
        set_unix: 0,
        reason: "console: technician".into(),
    }
}

fn set(o: pb::Override, confirm_seconds: u32) -> pb::SetOverrideRequest {
    pb::SetOverrideRequest { r#override: Some(o), confirm_seconds }
}

/// A store whose router also answers on 192.168.7.1 (the network the technician was told),
/// and a web server on the internet behind it.
fn store(text: &str, dhcp: bool) -> (Store, Servers) {
    let s = Store::new(text, &Upstream { router_addr: "10.9.0.1/24".into(), dhcp });
    s.router.ip("addr add 192.168.7.1/24 dev rt0");
    let web = Servers::start(&Store::ns_path(&s.internet), &[WEB], &[], "web");
    (s, web)
}

fn mgmt_addrs(s: &Store) -> String {
    s.store.ip("-4 -br addr show dev br-mgmt")
}

fn default_route(s: &Store) -> String {
    s.store.ip("-4 route show default")
}

/// Whether a TCP connection from netd's namespace reaches the internet namespace's server
/// (through the default route and the router).
fn reaches_internet(s: &Store) -> bool {
    let dst = std::net::SocketAddr::new(store::INTERNET_ADDR.parse().unwrap(), WEB);
    common::probe(&Store::ns_path(&s.store), L4::Tcp, dst, Duration::from_secs(2)).is_some()
}

const WEB: u16 = 8080;

fn overridden(s: &Store) {
    let a = mgmt_addrs(s);
    assert!(a.contains("192.168.7.20/24"), "the override's address is on br-mgmt: {a}");
    let r = default_route(s);
    assert!(
        r.contains("via 192.168.7.1 dev br-mgmt"),
        "the default route goes via the gateway: {r}"
    );
    assert!(reaches_internet(s), "the internet answers through br-mgmt and the gateway");
}

async fn observe(c: &mut Client) -> pb::ObserveReply {
    c.observe(pb::ObserveRequest {}).await.unwrap().into_inner()
}

type Client = backroom_api::netd::netd_client::NetdClient<tonic::transport::Channel>;

async fn connect(serve: &Serve) -> (Client, Events) {
    let mut c = backroom_netd::server::client(serve.sock.clone()).await.unwrap();
    let events = c.events(pb::EventsRequest {}).await.unwrap().into_inner();
    (c, events)
}

#[test]
fn an_override_lands_on_br_mgmt_stays_across_applies_and_expires_by_itself() {
    let _g = serial();
    let (s, _web) = store(SHOP_DHCP, true);
    let etc = tempfile::tempdir().unwrap();
    let resolv = etc.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.9.0.1\n").unwrap();
    let serve = Serve::start_with(&s.netd, 300, &["--resolv-conf", resolv.to_str().unwrap()]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut c, mut events) = connect(&serve).await;
        c.apply(request(SHOP_DHCP, 0)).await.unwrap();
        assert!(!mgmt_addrs(&s).contains("inet"), "no lease: the store's DHCP is broken");

        let o = pb::Override { dns: vec!["9.9.9.9".into()], ..over(8) };
        let rep = c.set_override(set(o.clone(), 0)).await.unwrap().into_inner();
        assert!(
            rep.actions.iter().any(|a| a == "add address 192.168.7.20/24 to br-mgmt"),
            "{rep:?}"
        );
        assert_eq!(rep.confirm_deadline_unix, 0);
        let set_ev = until(&mut events, "override_set", "", Duration::from_secs(5)).await;
        let ev = set_ev.last().unwrap();
        assert_eq!(ev.subject, "uplink override of segment mgmt");
        assert!(
            ev.message.contains("192.168.7.20/24 via 192.168.7.1")
                && ev.message.contains("console: technician"),
            "{}",
            ev.message
        );
        overridden(&s);
        let seen = observe(&mut c).await;
        let got = seen.r#override.clone().expect("Observe shows it");
        assert_eq!(
            (got.address.as_str(), got.gateway.as_str(), got.expires_unix),
            ("192.168.7.20/24", "192.168.7.1", o.expires_unix)
        );
        assert!(got.set_unix > 0);
        assert_eq!(seen.override_dns, format!("written to {}", resolv.display()));
        assert!(seen.drift.is_empty(), "{:?}", seen.drift);
        let text = std::fs::read_to_string(&resolv).unwrap();
        assert!(text.contains("nameserver 9.9.9.9\n") && !text.contains("10.9.0.1"), "{text}");
        let show = s.netd.ok(&["override", "show", "--socket", serve.sock.to_str().unwrap()]);
        assert!(
            show.contains(
                "uplink override of segment mgmt: 192.168.7.20/24 via 192.168.7.1 dns 9.9.9.9"
            ),
            "{show}"
        );

        // nodeagent applies the same profile again, then a changed one: the override stays.
        c.apply(request(SHOP_DHCP, 0)).await.unwrap();
        let changed = SHOP_DHCP.replace("ports: [tcp/22]", "ports: [tcp/22, tcp/443]");
        let rep = c.apply(request(&changed, 0)).await.unwrap().into_inner();
        assert!(rep.changed, "{rep:?}");
        overridden(&s);
        assert!(observe(&mut c).await.r#override.is_some());

        // Its end: netd's own loop puts the profile's segment back.
        let seen = until(&mut events, "override_expired", "", Duration::from_secs(15)).await;
        assert!(seen.last().unwrap().message.contains("expired"), "{seen:?}");
        assert!(now() >= o.expires_unix, "not before its time");
        assert!(!mgmt_addrs(&s).contains("192.168.7.20"), "{}", mgmt_addrs(&s));
        assert!(!default_route(&s).contains("192.168.7.1"), "{}", default_route(&s));
        assert!(!reaches_internet(&s), "no address and no route without the override");
        let seen = observe(&mut c).await;
        assert!(seen.r#override.is_none() && seen.override_dns.is_empty(), "{seen:?}");
        assert_eq!(std::fs::read_to_string(&resolv).unwrap(), "nameserver 10.9.0.1\n", "restored");
    });
}

#[test]
fn an_override_survives_a_netd_restart_and_still_expires_on_time() {
    let _g = serial();
    let (s, _web) = store(SHOP_STATIC, false);
    let serve = Serve::start(&s.netd, 300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let o = over(6);
    rt.block_on(async {
        let (mut c, _) = connect(&serve).await;
        c.apply(request(SHOP_STATIC, 0)).await.unwrap();
        c.set_override(set(o.clone(), 0)).await.unwrap();
    });
    overridden(&s);
    drop(serve); // killed, not stopped
    let serve = Serve::start(&s.netd, 300);
    rt.block_on(async {
        let (mut c, mut events) = connect(&serve).await;
        let seen = observe(&mut c).await;
        assert_eq!(
            seen.r#override.map(|x| x.expires_unix),
            Some(o.expires_unix),
            "kept across the restart"
        );
        overridden(&s);
        until(&mut events, "override_expired", "", Duration::from_secs(15)).await;
        assert!(now() >= o.expires_unix, "not before its time");
    });
    let a = mgmt_addrs(&s);
    assert!(a.contains("10.9.0.2/24") && !a.contains("192.168.7.20"), "the profile's address: {a}");
    assert!(default_route(&s).contains("via 10.9.0.1 dev br-mgmt"), "{}", default_route(&s));
    assert!(reaches_internet(&s), "through the profile's gateway again");
}

#[test]
fn an_unconfirmed_override_rolls_back_and_a_confirmed_one_stays() {
    let _g = serial();
    let (s, _web) = store(SHOP_STATIC, false);
    let serve = Serve::start(&s.netd, 300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut c, mut events) = connect(&serve).await;
        c.apply(request(SHOP_STATIC, 0)).await.unwrap();
        let rep = c.set_override(set(over(600), 2)).await.unwrap().into_inner();
        assert!(rep.confirm_deadline_unix > 0);
        overridden(&s);
        // nodeagent's apply waits while the override awaits its confirmation.
        let err = c.apply(request(SHOP_STATIC, 0)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("awaits its confirmation"), "{}", err.message());
        let seen = until(&mut events, "override_rolled_back", "", Duration::from_secs(10)).await;
        assert!(seen.last().unwrap().message.contains("not confirmed in time"));
        assert!(mgmt_addrs(&s).contains("10.9.0.2/24") && !mgmt_addrs(&s).contains("192.168.7.20"));
        assert!(default_route(&s).contains("via 10.9.0.1"), "{}", default_route(&s));
        assert!(observe(&mut c).await.r#override.is_none());

        // Confirmed in time: it stays past the deadline, until cleared.
        c.set_override(set(over(600), 2)).await.unwrap();
        c.confirm(pb::ConfirmRequest { revision: String::new() }).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        overridden(&s);
        assert!(observe(&mut c).await.r#override.is_some());
        let rep = c.clear_override(pb::ClearOverrideRequest {}).await.unwrap().into_inner();
        assert!(rep.actions.iter().any(|a| a == "add address 10.9.0.2/24 to br-mgmt"), "{rep:?}");
        until(&mut events, "override_cleared", "", Duration::from_secs(5)).await;
        assert!(mgmt_addrs(&s).contains("10.9.0.2/24") && !mgmt_addrs(&s).contains("192.168.7.20"));
        let err = c.clear_override(pb::ClearOverrideRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    });
}

#[test]
fn refused_overrides_change_nothing() {
    let _g = serial();
    // Not applied by the one-shot: the daemon's first apply comes below.
    let (s, _web) = store(SHOP_STATIC, true);
    let serve = Serve::start(&s.netd, 300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut c, _) = connect(&serve).await;
        let err = c.set_override(set(over(600), 0)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "no profile applied yet: {err:?}");
        c.apply(request(SHOP_STATIC, 0)).await.unwrap();
        let before = (observe(&mut c).await, mgmt_addrs(&s), default_route(&s));
        let bad = [
            (
                "segment cams is not in the applied profile",
                pb::Override { segment: "cams".into(), ..over(600) },
            ),
            ("the segment is internal", pb::Override { segment: "pos".into(), ..over(600) }),
            (
                "not an address with a prefix",
                pb::Override { address: "192.168.7.20".into(), ..over(600) },
            ),
            (
                "is not another address inside 192.168.7.0/24",
                pb::Override { gateway: "10.9.0.1".into(), ..over(600) },
            ),
            (
                "DNS server `resolver` is not an IP address",
                pb::Override { dns: vec!["resolver".into()], ..over(600) },
            ),
            ("at most 3 are used", pb::Override { dns: vec!["9.9.9.9".into(); 4], ..over(600) }),
            ("VLAN 4095 is out of range", pb::Override { vlan: 4095, ..over(600) }),
            ("is not in the future", pb::Override { expires_unix: now() - 1, ..over(600) }),
            ("at most 24 h", pb::Override { expires_unix: now() + 25 * 3600, ..over(600) }),
        ];
        for (why, o) in bad {
            let err = c.set_override(set(o, 0)).await.unwrap_err();
            assert!(err.message().contains(why), "{why}: {}", err.message());
            assert!(
                matches!(err.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound),
                "{why}: {err:?}"
            );
            assert_eq!(
                (observe(&mut c).await, mgmt_addrs(&s), default_route(&s)),
                before,
                "{why}: nothing changed"
            );
        }
        // While a profile apply awaits its confirmation.
        let changed = SHOP_STATIC.replace("ports: [tcp/22]", "ports: [tcp/22, tcp/443]");
        c.apply(request(&changed, 60)).await.unwrap();
        let pending = (observe(&mut c).await, mgmt_addrs(&s), default_route(&s));
        let err = c.set_override(set(over(600), 0)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("awaits its confirmation"), "{}", err.message());
        assert_eq!((observe(&mut c).await, mgmt_addrs(&s), default_route(&s)), pending);
    });
}
