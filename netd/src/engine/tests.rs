//! The engine's logic on the in-memory kernel, endpoints and DHCP, on a manual clock:
//! idempotence, refusal, commit-confirm, endpoints, DHCP planned and recorded.

use std::time::Duration;

use backroom_daemon::{Clock, ManualClock};

use super::*;
use crate::dhcp::MemDhcp;
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

/// 2026-12-01T00:00:00Z: a manual clock's start.
const T0: i64 = 1_795_996_800_000;

fn engine_on(dir: &std::path::Path, clock: &ManualClock) -> Engine {
    engine(dir).clock_on(Arc::new(clock.clone()))
}

#[test]
fn an_unconfirmed_apply_is_rolled_back_at_its_deadline_and_a_confirmed_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine_on(dir.path(), &clock);
    let a = profile(PROFILE);
    e.apply(&a, None, 0).unwrap();
    let b = profile(&PROFILE.replace("address: 10.1.0.1/24", "address: 10.1.0.3/24"));
    let out = e.apply(&b, None, 30).unwrap();
    assert_eq!(out.confirm_deadline_unix, T0 / 1000 + 30, "the deadline is on the engine's clock");
    clock.advance(Duration::from_millis(29_999));
    assert!(e.rollback_if_due().unwrap().is_none(), "not due a millisecond before");
    assert_eq!(e.applied().unwrap().applied.unwrap().revision, b.revision.as_str());
    clock.advance(Duration::from_millis(1));
    let due = e.rollback_if_due().unwrap().expect("due at the deadline");
    assert!(
        matches!(&due, Deadline::RolledBack { revision, .. } if revision == a.revision.as_str()),
        "{due:?}"
    );
    assert_eq!(e.applied().unwrap().applied.unwrap().revision, a.revision.as_str());
    assert!(e.plan(&a, None).unwrap().is_empty(), "the kernel is back to revision a");

    // The same deadline, confirmed in time: due time passes and nothing comes back.
    e.apply(&b, None, 30).unwrap();
    assert!(e.applied().unwrap().pending.is_some(), "pending, so a rollback could happen");
    assert_eq!(e.confirm("").unwrap(), b.revision.as_str());
    clock.advance(Duration::from_secs(31));
    assert!(e.rollback_if_due().unwrap().is_none());
    assert_eq!(e.applied().unwrap().applied.unwrap().revision, b.revision.as_str());
    assert!(matches!(e.confirm(""), Err(Error::NothingPending)), "nothing pending any more");
}

#[test]
fn a_replaced_pending_apply_still_rolls_back_to_the_last_confirmed_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine_on(dir.path(), &clock);
    let a = profile(PROFILE);
    e.apply(&a, None, 0).unwrap();
    let b = profile(&PROFILE.replace("address: 10.1.0.1/24", "address: 10.1.0.3/24"));
    let c = profile(&PROFILE.replace("address: 10.1.0.1/24", "address: 10.1.0.4/24"));
    e.apply(&b, None, 30).unwrap();
    clock.advance(Duration::from_secs(20));
    let out = e.apply(&c, None, 30).unwrap();
    assert_eq!(out.confirm_deadline_unix, T0 / 1000 + 50, "a new deadline from the new apply");
    clock.advance(Duration::from_secs(29));
    assert!(e.rollback_if_due().unwrap().is_none(), "b's deadline no longer counts");
    clock.advance(Duration::from_secs(1));
    let due = e.rollback_if_due().unwrap().unwrap();
    assert!(
        matches!(&due, Deadline::RolledBack { revision, .. } if revision == a.revision.as_str()),
        "back to the confirmed revision, not to b: {due:?}"
    );
}

#[test]
fn a_first_network_left_unconfirmed_is_kept_at_its_deadline_never_torn_down() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine_on(dir.path(), &clock);
    let a = profile(PROFILE);
    // A connected node's first apply: nothing confirmed before it.
    e.apply(&a, None, 30).unwrap();
    let writes = e.netlink_writes();
    clock.advance(Duration::from_secs(30));
    let due = e.rollback_if_due().unwrap().expect("due at the deadline");
    assert_eq!(due, Deadline::Kept { revision: a.revision.as_str().into(), again: false });
    assert_eq!(e.netlink_writes(), writes, "nothing removed");
    assert!(e.plan(&a, None).unwrap().is_empty(), "the kernel still holds revision a");
    let f = e.applied().unwrap();
    assert!(f.pending.is_none(), "no deadline left to act on");
    assert!(f.applied.as_ref().unwrap().unconfirmed_kept);
    assert!(e.observe().unwrap().unconfirmed_kept, "status says so");
    clock.advance(Duration::from_secs(3600));
    assert!(e.rollback_if_due().unwrap().is_none(), "kept for good, no second deadline");

    // nodeagent tries again (central still away): the same network, kept again, not removed.
    e.apply(&a, None, 30).unwrap();
    assert!(
        !e.observe().unwrap().unconfirmed_kept,
        "pending again: the mark waits for the deadline"
    );
    clock.advance(Duration::from_secs(30));
    let due = e.rollback_if_due().unwrap().unwrap();
    assert_eq!(due, Deadline::Kept { revision: a.revision.as_str().into(), again: true });
    assert_eq!(e.netlink_writes(), writes);

    // A later confirmation clears the mark.
    assert_eq!(e.confirm("").unwrap(), a.revision.as_str());
    assert!(!e.observe().unwrap().unconfirmed_kept);
    assert!(matches!(e.confirm(""), Err(Error::NothingPending)));

    // A confirmed state to go back to: an unconfirmed change on top still rolls back.
    let b = profile(&PROFILE.replace("address: 10.1.0.1/24", "address: 10.1.0.3/24"));
    e.apply(&b, None, 30).unwrap();
    clock.advance(Duration::from_secs(30));
    let due = e.rollback_if_due().unwrap().unwrap();
    assert!(
        matches!(&due, Deadline::RolledBack { revision, .. } if revision == a.revision.as_str()),
        "{due:?}"
    );
    assert!(e.plan(&a, None).unwrap().is_empty());
}

#[test]
fn a_change_on_top_of_a_kept_network_goes_back_to_it_still_marked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine_on(dir.path(), &clock);
    let a = profile(PROFILE);
    e.apply(&a, None, 30).unwrap();
    clock.advance(Duration::from_secs(30));
    e.rollback_if_due().unwrap().unwrap();
    // b came over a's network, then cut it off: a is what the node ran on, so a comes back.
    let b = profile(&PROFILE.replace("address: 10.1.0.1/24", "address: 10.1.0.3/24"));
    e.apply(&b, None, 30).unwrap();
    clock.advance(Duration::from_secs(30));
    let due = e.rollback_if_due().unwrap().unwrap();
    assert!(
        matches!(&due, Deadline::RolledBack { revision, .. } if revision == a.revision.as_str()),
        "{due:?}"
    );
    assert!(e.plan(&a, None).unwrap().is_empty());
    assert!(e.observe().unwrap().unconfirmed_kept, "a is still unconfirmed");
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
    assert!(matches!(&err, Error::UplinkMissing { uplink } if uplink == "up0"), "{err}");
    assert_eq!(err.subject().as_deref(), Some("uplink up0"));
    assert!(err.to_string().contains("uplink up0 does not exist"), "{err}");
    assert!(e.applied().unwrap().applied.is_none(), "nothing recorded as applied");
    assert!(matches!(e.reconcile(), Err(Error::NotApplied)));
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
    assert!(matches!(e.attach("nope", ""), Err(Error::NoSuchWorkload { .. })));
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

fn engine_with_endpoints(dir: &std::path::Path) -> (Engine, MemEndpoints) {
    let eps = MemEndpoints::default();
    (engine(dir).endpoints_on(Box::new(eps.clone())), eps)
}

#[test]
fn attach_makes_the_namespace_and_veths_and_detach_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, k) = engine_with_endpoints(dir.path());
    e.apply(&profile(PROFILE), None, 0).unwrap();
    let ep = e.attach("orders", "").unwrap();
    let hv = ep.interfaces[0].host_veth.clone().unwrap();
    {
        let s = k.state();
        assert!(s.namespaces.contains("bk-orders"), "{s:?}");
        let v = &s.veths[&hv];
        assert_eq!(
            (v.bridge.as_str(), v.netns.as_str(), v.peer.as_str()),
            ("br-pos", "bk-orders", "eth0")
        );
        assert_eq!(v.address, ep.interfaces[0].address);
    }
    assert!(e.drift().unwrap().is_empty());
    e.detach("orders", "").unwrap();
    assert!(k.state().namespaces.is_empty() && k.state().veths.is_empty());
}

#[test]
fn a_lost_endpoint_is_drift_and_a_new_attach_makes_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, k) = engine_with_endpoints(dir.path());
    e.apply(&profile(PROFILE), None, 0).unwrap();
    let ep = e.attach("orders", "").unwrap();
    // An intact endpoint is returned as it is, with nothing made again.
    let before = k.state().clone();
    assert_eq!(e.attach("orders", "").unwrap(), ep);
    assert_eq!(*k.state(), before);
    k.state().namespaces.remove("bk-orders");
    let drift = e.drift().unwrap();
    assert!(drift.iter().any(|d| d.contains("endpoint of orders")), "{drift:?}");
    let again = e.attach("orders", "").unwrap();
    assert_eq!(again, ep, "the same addresses and MACs");
    assert!(k.state().namespaces.contains("bk-orders"));
    assert!(e.drift().unwrap().is_empty());
}

#[test]
fn a_refused_endpoint_is_forgotten_with_its_firewall_ports() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, k) = engine_with_endpoints(dir.path());
    e.apply(&profile(PROFILE), None, 0).unwrap();
    let comments = |e: &mut Engine| -> Vec<String> {
        let seen = e.fw.read().unwrap();
        [seen.inet, seen.bridge]
            .into_iter()
            .flatten()
            .flat_map(|t| t.rules.into_iter().map(|r| r.comment))
            .collect()
    };
    let rules_before = comments(&mut e);
    k.state().refuse_create = true;
    assert!(e.attach("orders", "").is_err());
    assert!(e.endpoint("orders", "").unwrap().is_none(), "no record of a failed attach");
    assert!(k.state().namespaces.is_empty());
    assert_eq!(comments(&mut e), rules_before, "the firewall forgot its ports again");
    k.state().refuse_create = false;
    assert!(e.attach("orders", "").is_ok());
}

#[test]
fn promote_moves_the_primary_names_onto_the_new_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, k) = engine_with_endpoints(dir.path());
    e.apply(&profile(PROFILE), None, 0).unwrap();
    let old = e.attach("orders", "").unwrap();
    let next = e.attach("orders", "next").unwrap();
    let next_veth = next.interfaces[0].host_veth.clone().unwrap();
    assert!(k.state().namespaces.contains("bk-orders--next"));
    let p = e.promote("orders", "next").unwrap();
    let s = k.state();
    assert_eq!(s.namespaces.iter().collect::<Vec<_>>(), ["bk-orders"]);
    let hv = p.interfaces[0].host_veth.clone().unwrap();
    assert_eq!(hv, old.interfaces[0].host_veth.clone().unwrap(), "the primary's veth name");
    assert!(!s.veths.contains_key(&next_veth));
    assert_eq!(s.veths[&hv].mac, old.interfaces[0].mac, "the stable MAC moved over");
    assert_eq!(s.veths[&hv].address, old.interfaces[0].address);
    drop(s);
    assert!(matches!(e.promote("orders", ""), Err(Error::AlreadyPrimary { .. })));
    assert!(matches!(e.promote("orders", "gone"), Err(Error::NoSuchInstance { .. })));
}

const DHCP_PROFILE: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: t}
network:
  uplink: {interface: up0}
  segments:
    - {name: mgmt, vlan: untagged, address: dhcp}
    - {name: lab, vlan: 20, address: dhcp}
"#;

#[test]
fn dhcp_is_planned_recorded_renewed_and_expires_on_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let server = Arc::new(MemDhcp::default());
    server.serve(
        "br-mgmt",
        "10.9.0.50/24".parse().unwrap(),
        Some("10.9.0.1".parse().unwrap()),
        120,
    );
    let mut e = engine_on(dir.path(), &clock).dhcp_on(server.clone());
    assert!(matches!(e.dhcp_due(), Err(Error::NotApplied)));
    let r = profile(DHCP_PROFILE);
    e.apply(&r, None, 0).unwrap();
    assert_eq!(server.exchanges(), 0, "an apply runs no exchange");
    let due = e.dhcp_due().unwrap();
    let names: Vec<&str> = due.iter().map(|d| d.bridge.as_str()).collect();
    assert_eq!(names, ["br-lab", "br-mgmt"]);
    // One-shot: every segment is tried; the lease got is kept though the other failed.
    let err = e.acquire_dhcp().unwrap_err();
    assert!(matches!(&err, Error::NoDhcpServer { bridge, .. } if bridge == "br-lab"), "{err}");
    assert_eq!(err.subject().as_deref(), Some("DHCP on br-lab"));
    let have = e.links.observe().unwrap();
    let br = have.link("br-mgmt").unwrap();
    let addrs: Vec<String> = have.addrs_of(br.index).map(|a| a.net.to_string()).collect();
    assert_eq!(addrs, ["10.9.0.50/24"]);
    assert!(have.routes.iter().any(|r| r.gateway == Some("10.9.0.1".parse().unwrap())));
    // Not due again before half the lease; due at it, with the lease to renew.
    clock.advance(Duration::from_secs(59));
    assert_eq!(
        e.dhcp_due().unwrap().iter().map(|d| d.bridge.as_str()).collect::<Vec<_>>(),
        ["br-lab"]
    );
    clock.advance(Duration::from_secs(1));
    let due = e.dhcp_due().unwrap();
    let due: Vec<_> = due.into_iter().filter(|d| d.bridge == "br-mgmt").collect();
    assert_eq!(
        due[0].previous.as_ref().map(|l| l.address.to_string()).as_deref(),
        Some("10.9.0.50/24")
    );
    // A lease that runs out takes its address and route with it.
    clock.advance(Duration::from_secs(60));
    let out = e.reconcile().unwrap();
    assert!(
        out.actions.iter().any(|a| a == "remove address 10.9.0.50/24 from br-mgmt"),
        "{:?}",
        out.actions
    );
    // A lease recorded for a segment that is not DHCP (any more) is dropped.
    let lease = server.obtain(&due[0], clock.now_unix()).unwrap();
    assert!(e.record_leases(vec![("nope".into(), lease)]).unwrap().is_empty());
}
