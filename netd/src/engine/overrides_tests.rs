//! The uplink override through the engine, on the in-memory kernel and a manual clock: it
//! lands and stays across applies, expires by itself (across a restart too), rolls back when
//! not confirmed, refuses bad input without changing anything, writes and restores DNS.

use std::time::Duration;

use backroom_daemon::ManualClock;

use super::*;
use crate::nft::MemFirewall;
use crate::overrides::OverrideRequest;
use crate::rtnl::MemLinks;

const SHOP: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: t}
network:
  uplink: {interface: up0}
  segments:
    - {name: mgmt, vlan: untagged, address: dhcp}
    - {name: pos, internal: true, subnet: 10.1.0.0/24, address: 10.1.0.1/24}
    - {name: cams, vlan: 10, subnet: 10.3.0.0/24, address: 10.3.0.1/24}
  firewall:
    allow:
      - {name: mgmt-ssh, from: mgmt, to: host, ports: [tcp/22]}
"#;

/// 2026-12-01T00:00:00Z.
const T0: i64 = 1_795_996_800_000;
const NOW: i64 = T0 / 1000;

fn engine(dir: &std::path::Path, clock: &ManualClock) -> Engine {
    Engine::with(
        StateDir::open(dir).unwrap(),
        Box::new(MemLinks::default().with_link("up0")),
        Box::new(MemFirewall::default()),
    )
    .clock_on(Arc::new(clock.clone()))
}

fn profile(text: &str) -> Rendered {
    backroom_profiles::render_str("t.yaml", text).unwrap()
}

fn ask(minutes: i64) -> OverrideRequest {
    OverrideRequest {
        segment: "mgmt".into(),
        address: "192.168.7.20/24".into(),
        gateway: "192.168.7.1".into(),
        dns: vec![],
        vlan: 0,
        expires_unix: NOW + minutes * 60,
        reason: "console: technician".into(),
    }
}

fn mgmt_addresses(e: &mut Engine) -> Vec<String> {
    let o = e.observe().unwrap();
    o.segments.iter().find(|s| s.name == "mgmt").unwrap().addresses.clone()
}

#[test]
fn an_override_lands_stays_across_applies_and_expires_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine(dir.path(), &clock);
    let r = profile(SHOP);
    e.apply(&r, None, 0).unwrap();
    assert!(mgmt_addresses(&mut e).is_empty(), "no DHCP lease yet");

    let (o, out) = e.set_override(&ask(60), 0).unwrap();
    assert_eq!(o.set_unix, NOW);
    assert!(out.actions.contains(&"add address 192.168.7.20/24 to br-mgmt".to_string()), "{out:?}");
    assert!(
        out.actions.iter().any(|a| a.starts_with("add default route via 192.168.7.1 dev br-mgmt")),
        "{out:?}"
    );
    assert_eq!(mgmt_addresses(&mut e), ["192.168.7.20/24"]);
    let seen = e.observe().unwrap();
    assert_eq!(seen.segment_override.as_ref(), Some(&o));
    assert!(seen.drift.is_empty(), "the override is the desired state: {:?}", seen.drift);
    assert!(e.dhcp_due().unwrap().is_empty(), "no DHCP on a segment under an override");

    // nodeagent applies the same profile again, then a new one: the override stays.
    let again = e.apply(&r, None, 0).unwrap();
    assert!(!again.changed, "{again:?}");
    let r2 = profile(&SHOP.replace("ports: [tcp/22]", "ports: [tcp/22, tcp/443]"));
    let out = e.apply(&r2, None, 0).unwrap();
    assert!(out.changed && out.actions.iter().all(|a| !a.contains("192.168.7")), "{out:?}");
    assert_eq!(mgmt_addresses(&mut e), ["192.168.7.20/24"]);
    assert!(e.plan(&r2, None).unwrap().is_empty(), "the plan keeps it too");

    clock.advance(Duration::from_secs(59 * 60 + 59));
    assert!(e.expire_override_if_due().unwrap().is_none(), "not due a second before");
    clock.advance(Duration::from_secs(1));
    // Before the loop's turn, nothing plans with an expired override any more.
    assert!(e.observe().unwrap().segment_override.is_none());
    let end = e.expire_override_if_due().unwrap().expect("due at its end");
    assert_eq!(end.ended, o);
    assert!(
        end.outcome.actions.contains(&"remove address 192.168.7.20/24 from br-mgmt".to_string())
    );
    assert!(mgmt_addresses(&mut e).is_empty(), "back to the profile's (DHCP, no lease)");
    assert!(e.applied().unwrap().applied.unwrap().segment_override.is_none());
    assert_eq!(e.dhcp_due().unwrap().len(), 1, "DHCP again");
    assert!(e.expire_override_if_due().unwrap().is_none(), "once");
}

#[test]
fn an_override_survives_a_restart_and_still_expires_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let links = MemLinks::default().with_link("up0");
    let mut e = Engine::with(
        StateDir::open(dir.path()).unwrap(),
        Box::new(links.clone()),
        Box::new(MemFirewall::default()),
    )
    .clock_on(Arc::new(clock.clone()));
    e.apply(&profile(SHOP), None, 0).unwrap();
    e.set_override(&ask(10), 0).unwrap();
    drop(e);
    let mut e = Engine::with(
        StateDir::open(dir.path()).unwrap(),
        Box::new(links),
        Box::new(MemFirewall::default()),
    )
    .clock_on(Arc::new(clock.clone()));
    assert!(e.observe().unwrap().segment_override.is_some(), "kept in the state");
    // The new netd's first drift repair (its firewall is a fresh one) keeps the override.
    e.reconcile().unwrap();
    assert_eq!(mgmt_addresses(&mut e), ["192.168.7.20/24"]);
    clock.advance(Duration::from_secs(600));
    assert!(e.expire_override_if_due().unwrap().is_some());
    assert!(mgmt_addresses(&mut e).is_empty());
}

#[test]
fn an_unconfirmed_override_rolls_back_and_a_confirmed_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine(dir.path(), &clock);
    let r = profile(SHOP);
    e.apply(&r, None, 0).unwrap();
    let (_, out) = e.set_override(&ask(60), 30).unwrap();
    assert_eq!(out.confirm_deadline_unix, NOW + 30);
    assert_eq!(e.observe().unwrap().pending_revision, r.revision.as_str());
    // nodeagent's apply waits for the override's confirmation.
    assert!(matches!(e.apply(&r, None, 0), Err(Error::OverridePending { .. })));
    clock.advance(Duration::from_secs(30));
    let due = e.rollback_if_due().unwrap().unwrap();
    assert!(
        matches!(&due, Deadline::OverrideRolledBack { segment, .. } if segment == "mgmt"),
        "{due:?}"
    );
    assert!(mgmt_addresses(&mut e).is_empty(), "the network before it is back");
    assert!(e.observe().unwrap().segment_override.is_none());

    e.set_override(&ask(60), 30).unwrap();
    assert_eq!(e.confirm("").unwrap(), r.revision.as_str());
    clock.advance(Duration::from_secs(31));
    assert!(e.rollback_if_due().unwrap().is_none());
    assert_eq!(mgmt_addresses(&mut e), ["192.168.7.20/24"]);
    e.apply(&r, None, 0).unwrap();
}

#[test]
fn an_override_waits_for_a_pending_apply_and_clearing_ends_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine(dir.path(), &clock);
    let r = profile(SHOP);
    assert!(matches!(e.set_override(&ask(60), 0), Err(Error::NotApplied)));
    e.apply(&r, None, 0).unwrap();
    let r2 = profile(&SHOP.replace("ports: [tcp/22]", "ports: [tcp/22, tcp/443]"));
    e.apply(&r2, None, 30).unwrap();
    let err = e.set_override(&ask(60), 0).unwrap_err();
    assert!(matches!(err, Error::ApplyPending { .. }), "{err}");
    assert!(err.to_string().contains("awaits its confirmation"), "{err}");
    e.confirm("").unwrap();
    e.set_override(&ask(60), 0).unwrap();
    let end = e.clear_override().unwrap();
    assert_eq!(end.ended.segment, "mgmt");
    assert!(mgmt_addresses(&mut e).is_empty());
    assert!(matches!(e.clear_override(), Err(Error::NoOverride)));
}

#[test]
fn refused_overrides_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine(dir.path(), &clock);
    e.apply(&profile(SHOP), None, 0).unwrap();
    let before = (e.applied().unwrap(), e.netlink_writes(), mgmt_addresses(&mut e));
    let bad: Vec<(&str, OverrideRequest)> = vec![
        ("not in the applied profile", OverrideRequest { segment: "tills".into(), ..ask(60) }),
        ("internal", OverrideRequest { segment: "pos".into(), ..ask(60) }),
        (
            "not an address with a prefix",
            OverrideRequest { address: "192.168.7.20".into(), ..ask(60) },
        ),
        (
            "is not another address inside",
            OverrideRequest { gateway: "10.0.0.1".into(), ..ask(60) },
        ),
        ("is not an IP address", OverrideRequest { dns: vec!["dns.example".into()], ..ask(60) }),
        ("at most 3", OverrideRequest { dns: vec!["1.1.1.1".into(); 4], ..ask(60) }),
        ("out of range", OverrideRequest { vlan: 4095, ..ask(60) }),
        ("VLAN 10 already carries segment cams", OverrideRequest { vlan: 10, ..ask(60) }),
        ("not in the future", OverrideRequest { expires_unix: NOW, ..ask(60) }),
        ("at most 24 h", OverrideRequest { expires_unix: NOW + 24 * 3600 + 1, ..ask(60) }),
    ];
    for (why, req) in bad {
        let err = e.set_override(&req, 0).unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
        assert_eq!(
            (e.applied().unwrap(), e.netlink_writes(), mgmt_addresses(&mut e)),
            before,
            "{why}: nothing changed"
        );
    }
    let (o, _) = e.set_override(&OverrideRequest { expires_unix: 0, ..ask(60) }, 0).unwrap();
    assert_eq!(o.expires_unix, NOW + 4 * 3600, "no end given: 4 h");
}

#[test]
fn a_vlan_override_moves_the_segment_onto_that_vlan() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine(dir.path(), &clock);
    e.apply(&profile(SHOP), None, 0).unwrap();
    let (_, out) = e.set_override(&OverrideRequest { vlan: 42, ..ask(60) }, 0).unwrap();
    assert!(
        out.actions.contains(&"create VLAN 42 sub-interface up0.42 of up0".to_string()),
        "{out:?}"
    );
    assert!(out.actions.contains(&"enslave up0.42 to br-mgmt".to_string()), "{out:?}");
    assert!(out.actions.contains(&"release up0 from its bridge".to_string()), "{out:?}");
    let end = e.clear_override().unwrap();
    assert!(end.outcome.actions.contains(&"delete link up0.42".to_string()), "{end:?}");
    assert!(end.outcome.actions.contains(&"enslave up0 to br-mgmt".to_string()), "{end:?}");
}

#[test]
fn dns_servers_are_written_and_the_file_before_them_restored() {
    let dir = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    let resolv = etc.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.9.0.1\n").unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine(dir.path(), &clock).resolv_conf_on(Some(resolv.clone()));
    e.apply(&profile(SHOP), None, 0).unwrap();
    let req = OverrideRequest { dns: vec!["9.9.9.9".into(), "1.1.1.1".into()], ..ask(60) };
    let (_, out) = e.set_override(&req, 0).unwrap();
    assert!(
        out.actions.iter().any(|a| a.starts_with("write the override's DNS servers")),
        "{out:?}"
    );
    let text = std::fs::read_to_string(&resolv).unwrap();
    assert!(text.contains("nameserver 9.9.9.9\nnameserver 1.1.1.1\n"), "{text}");
    assert_eq!(e.observe().unwrap().override_dns, format!("written to {}", resolv.display()));
    // Someone rewrites it: drift, repaired.
    std::fs::write(&resolv, "nameserver 8.8.8.8\n").unwrap();
    assert!(e.drift().unwrap().iter().any(|d| d.contains("DNS file differs")));
    e.reconcile().unwrap();
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), text);
    clock.advance(Duration::from_secs(3600));
    e.expire_override_if_due().unwrap().unwrap();
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), "nameserver 10.9.0.1\n");
    assert!(e.drift().unwrap().is_empty());

    // Without --resolv-conf: not written, and Observe says so.
    let mut e = e.resolv_conf_on(None);
    e.set_override(&OverrideRequest { expires_unix: 0, ..req }, 0).unwrap();
    assert!(e.observe().unwrap().override_dns.starts_with("not written"));
}

#[test]
fn confirming_an_override_leaves_a_kept_network_unconfirmed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut e = engine(dir.path(), &clock);
    // A connected node's first network, never confirmed by central: kept at its deadline.
    e.apply(&profile(SHOP), None, 30).unwrap();
    clock.advance(Duration::from_secs(30));
    e.rollback_if_due().unwrap().unwrap();
    assert!(e.observe().unwrap().unconfirmed_kept);
    e.set_override(&OverrideRequest { expires_unix: 0, ..ask(60) }, 30).unwrap();
    e.confirm("").unwrap();
    let o = e.observe().unwrap();
    assert!(o.unconfirmed_kept, "the technician confirmed the override, not the profile");
    assert!(o.segment_override.is_some() && o.pending_revision.is_empty());
}
