//! The engine's logic on the in-memory kernel: idempotence, refusal, commit-confirm.

use super::*;
use crate::nft::MemFirewall;
use crate::rtnl::MemLinks;

const PROFILE: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: t}
network:
  uplink: {interface: up0}
  segments:
    - {name: mgmt, vlan: untagged, subnet: 10.9.0.0/24, address: 10.9.0.2/24, gateway: 10.9.0.1}
    - {name: pos, vlan: 10, subnet: 10.1.0.0/24, address: 10.1.0.1/24}
  firewall:
    allow:
      - {name: pos-to-orders, from: pos, to: orders, ports: [tcp/8443]}
workloads:
  - name: orders
    kind: container
    image: r/o:1@sha256:b517ff710669f502d9f7f4f564f0a93f9a87241817e28f9de1288a9d6f91a447
    networks: [{segment: pos, address: auto}]
"#;

fn engine(dir: &std::path::Path) -> Engine {
    Engine::with(
        StateDir::open(dir).unwrap(),
        Box::new(MemLinks::default().with_link("up0")),
        Box::new(MemFirewall::default()),
    )
}

fn profile(text: &str) -> Rendered {
    backroom_profiles::render_str("t.yaml", text).unwrap()
}

#[test]
fn a_second_apply_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path());
    let r = profile(PROFILE);
    let first = e.apply(&r, None, 0).unwrap();
    assert!(first.changed);
    assert!(
        first.actions.iter().any(|a| a == "create VLAN 10 sub-interface up0.10 of up0"),
        "{:?}",
        first.actions
    );
    let writes = e.netlink_writes();
    let again = e.apply(&r, None, 0).unwrap();
    assert!(!again.changed && again.actions.is_empty());
    assert_eq!(e.netlink_writes(), writes);
    assert!(e.drift().unwrap().is_empty());
    assert!(e.plan(&r, None).unwrap().is_empty());
}

#[test]
fn an_unconfirmed_apply_is_rolled_back_and_a_confirmed_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path());
    let a = profile(PROFILE);
    e.apply(&a, None, 0).unwrap();
    let b = profile(&PROFILE.replace("address: 10.1.0.1/24", "address: 10.1.0.3/24"));
    let out = e.apply(&b, None, 30).unwrap();
    assert!(out.confirm_deadline_unix > 0);
    assert!(e.rollback_if_due(now_unix()).unwrap().is_none(), "not due yet");
    let (rev, _) = e.rollback_if_due(now_unix() + 31).unwrap().unwrap();
    assert_eq!(rev, a.revision.as_str());
    assert_eq!(e.applied().unwrap().applied.unwrap().revision, a.revision.as_str());
    assert!(e.plan(&a, None).unwrap().is_empty(), "the kernel is back to revision a");

    e.apply(&b, None, 30).unwrap();
    assert_eq!(e.confirm("").unwrap(), b.revision.as_str());
    assert!(e.rollback_if_due(now_unix() + 31).unwrap().is_none());
    assert!(e.confirm("").is_err(), "nothing pending any more");
}

#[test]
fn a_wrong_revision_and_a_missing_uplink_are_refused() {
    let r = profile(PROFILE);
    let e = parse_profile(&"0".repeat(64), &r.to_yaml()).unwrap_err();
    assert!(matches!(e, Error::RevisionMismatch { .. }));
    assert!(parse_profile(r.revision.as_str(), &r.to_yaml()).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let mut e = Engine::with(
        StateDir::open(dir.path()).unwrap(),
        Box::new(MemLinks::default()),
        Box::new(MemFirewall::default()),
    );
    let err = e.apply(&r, None, 0).unwrap_err();
    assert!(err.to_string().contains("the uplink up0 does not exist"), "{err}");
    assert!(e.applied().unwrap().applied.is_none(), "nothing recorded as applied");
}

#[test]
fn attach_gives_stable_addresses_and_the_default_route_through_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path());
    e.apply(&profile(PROFILE), None, 0).unwrap();
    let ep = e.attach("orders", "").unwrap();
    assert_eq!(ep.netns.as_deref(), Some("bk-orders"));
    assert_eq!(ep.interfaces[0].name, "eth0");
    assert_eq!(ep.interfaces[0].address.unwrap().to_string(), "10.1.0.254/24");
    assert_eq!(ep.interfaces[0].gateway.unwrap().to_string(), "10.1.0.1");
    let next = e.attach("orders", "next").unwrap();
    assert!(next.interfaces[0].temporary);
    assert_eq!(next.interfaces[0].address.unwrap().to_string(), "10.1.0.253/24");
    assert_ne!(next.interfaces[0].mac, ep.interfaces[0].mac);
    let p = e.promote("orders", "next").unwrap();
    assert_eq!(p.interfaces[0].address, ep.interfaces[0].address);
    assert_eq!(p.interfaces[0].mac, ep.interfaces[0].mac);
    assert!(e.endpoint("orders", "next").unwrap().is_none());
    e.detach("orders", "").unwrap();
    e.detach("orders", "").unwrap();
    assert!(e.endpoint("orders", "").unwrap().is_none());
    assert!(e.attach("nope", "").is_err());
}

#[test]
fn a_new_uplink_takes_the_old_ones_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = Engine::with(
        StateDir::open(dir.path()).unwrap(),
        Box::new(MemLinks::default().with_link("up0").with_link("up1")),
        Box::new(MemFirewall::default()),
    );
    let r = profile(PROFILE);
    e.apply(&r, None, 0).unwrap();
    let out = e.apply(&r, Some("up1"), 0).unwrap();
    assert!(out.actions.iter().any(|a| a == "enslave up1 to br-mgmt"), "{:?}", out.actions);
    assert!(out.actions.iter().any(|a| a == "release up0 from its bridge"), "{:?}", out.actions);
    assert!(
        out.actions.iter().any(|a| a == "create VLAN 10 sub-interface up1.10 of up1"),
        "{:?}",
        out.actions
    );
    assert!(out.actions.iter().any(|a| a == "delete link up0.10"), "{:?}", out.actions);
    let third = e.apply(&r, Some("up1"), 0).unwrap();
    assert!(!third.changed, "{:?}", third.actions);
}
