//! The override's pure parts: the DNS file's plan and the persisted types' round trip.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::state::{Applied, AppliedFile, Pending};

fn over(dns: Vec<IpAddr>) -> SegmentOverride {
    SegmentOverride {
        segment: "mgmt".into(),
        address: "192.168.7.20/24".parse().unwrap(),
        gateway: "192.168.7.1".parse().unwrap(),
        dns,
        vlan: None,
        expires_unix: 100,
        set_unix: 1,
        reason: String::new(),
    }
}

#[test]
fn the_dns_file_is_kept_once_written_and_restored_when_the_override_ends() {
    let p = Path::new("/etc/resolv.conf");
    let o = over(vec![IpAddr::V4(Ipv4Addr::new(9, 9, 9, 9))]);
    let first = plan_resolv(Some(p), Some(&o), Some("nameserver 10.0.0.1\n"), None).unwrap();
    let kept = ResolvKept { path: p.into(), text: Some("nameserver 10.0.0.1\n".into()) };
    assert_eq!(
        first,
        ResolvOp::Write { path: p.into(), text: resolv_text(&o), keep: Some(kept.clone()) }
    );
    // Written: nothing more to do; changed by someone: written again, the first file still kept.
    assert_eq!(plan_resolv(Some(p), Some(&o), Some(&resolv_text(&o)), Some(&kept)), None);
    assert!(matches!(
        plan_resolv(Some(p), Some(&o), Some("x"), Some(&kept)),
        Some(ResolvOp::Write { keep: None, .. })
    ));
    assert_eq!(
        plan_resolv(Some(p), None, Some("x"), Some(&kept)),
        Some(ResolvOp::Restore(kept.clone()))
    );
    assert_eq!(
        plan_resolv(Some(p), Some(&over(vec![])), Some("x"), Some(&kept)),
        Some(ResolvOp::Restore(kept.clone())),
        "no DNS servers: the file is the host's"
    );
    assert_eq!(plan_resolv(None, Some(&o), None, Some(&kept)), Some(ResolvOp::Restore(kept)));
    assert_eq!(plan_resolv(None, Some(&o), None, None), None, "no --resolv-conf: not written");
    assert_eq!(plan_resolv(Some(p), None, Some("x"), None), None);
}

fn arb_override() -> impl Strategy<Value = SegmentOverride> {
    (
        "[a-z][a-z0-9-]{0,14}",
        any::<[u8; 4]>(),
        8u8..=30,
        proptest::collection::vec(any::<[u8; 4]>(), 0..=3),
        proptest::option::of(1u16..=4094),
        any::<i64>(),
        any::<i64>(),
        "[ -~]{0,40}",
    )
        .prop_map(|(segment, a, len, dns, vlan, expires_unix, set_unix, reason)| {
            let addr = Ipv4Addr::from(a);
            let net = ipnet::Ipv4Net::new(addr, len).unwrap();
            SegmentOverride {
                segment,
                address: IpNet::V4(net),
                gateway: IpAddr::V4(net.network()),
                dns: dns.into_iter().map(|d| IpAddr::V4(Ipv4Addr::from(d))).collect(),
                vlan,
                expires_unix,
                set_unix,
                reason,
            }
        })
}

proptest! {
    #[test]
    fn the_applied_state_with_an_override_reads_back_as_written(o in arb_override(), of_override: bool) {
        let applied = Applied {
            revision: "r".into(),
            profile_yaml: "y".into(),
            uplink_override: None,
            unconfirmed_kept: false,
            segment_override: Some(o.clone()),
        };
        let f = AppliedFile {
            applied: Some(applied.clone()),
            pending: Some(Pending { deadline_unix: 5, previous: Some(applied), of_override }),
        };
        let back: AppliedFile = serde_json::from_slice(&serde_json::to_vec_pretty(&f).unwrap()).unwrap();
        prop_assert_eq!(back, f);
        let kept = Some(ResolvKept { path: "/etc/resolv.conf".into(), text: Some(o.reason) });
        let back: Option<ResolvKept> = serde_json::from_slice(&serde_json::to_vec(&kept).unwrap()).unwrap();
        prop_assert_eq!(back, kept);
    }
}

#[test]
fn a_state_file_from_before_overrides_still_reads() {
    let old = r#"{"applied":{"revision":"r","profile_yaml":"y","uplink_override":null},"pending":{"deadline_unix":5,"previous":null}}"#;
    let f: AppliedFile = serde_json::from_str(old).unwrap();
    assert!(f.applied.unwrap().segment_override.is_none());
    assert!(!f.pending.unwrap().of_override);
}
