//! What a daemon writes it must read back after a restart: every value type and every part of
//! the sample fleet's profiles round-trip through JSON (the encoding of state files and of
//! nodeagent's records) and through the profile's own YAML. A fractional `cpus` once serialized
//! as a JSON float that nothing could read back, and a crashed nodeagent never started again.

#![allow(clippy::unwrap_used)] // a test fails loudly

use std::path::Path;

use backroom_profiles::*;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn json_round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let text = serde_json::to_string(v).unwrap();
    let back: T = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{v:?} was written as {text} and does not read back: {e}"));
    assert_eq!(&back, v, "{text}");
    let pretty = serde_json::to_vec_pretty(v).unwrap();
    assert_eq!(&serde_json::from_slice::<T>(&pretty).unwrap(), v);
}

fn profile_with(cpus: &str, memory: &str, interval: &str) -> String {
    format!(
        r#"apiVersion: backroom/v1
kind: StoreProfile
metadata: {{ name: t }}
workloads:
  - name: web
    kind: container
    image: registry.example/web:1.0
    resources: {{ cpus: {cpus}, memory: {memory} }}
    health: {{ tcp: {{ port: 80 }}, interval: {interval} }}
"#
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn cpus_sizes_and_durations(millis in 0u32..=4_096_000, bytes in any::<u64>(), ms in 1u64..10_000_000_000) {
        let cpus = Cpus::from_millis(millis);
        json_round_trip(&cpus);
        json_round_trip(&Resources { cpus, memory: Size::from_bytes(bytes) });
        json_round_trip(&Size::from_bytes(bytes));
        json_round_trip(&Duration::from_millis(ms));
        prop_assert_eq!(cpus.to_string().parse::<Cpus>().unwrap(), cpus);
        // The same values written in a profile, rendered, and read back from the canonical YAML.
        let mem = Size::from_bytes(bytes.max(1));
        let text = profile_with(&cpus.to_string(), &mem.to_string(), &Duration::from_millis(ms).to_string());
        let r = render_str("t.yaml", &text).unwrap();
        let again = render_str("again.yaml", &r.to_yaml()).unwrap();
        prop_assert_eq!(again.revision.as_str(), r.revision.as_str());
        let Workload::Container(c) = &r.profile.workloads[0] else { panic!("not a container") };
        let lim = c.resources.unwrap();
        prop_assert_eq!(lim.cpus, Some(cpus));
        prop_assert_eq!(lim.memory, Some(mem));
    }

    #[test]
    fn ports_addresses_and_subnets(proto in 0usize..3, lo in 1u16.., span in 0u16..100, a in any::<[u8; 4]>(), prefix in 8u8..=30) {
        let proto = ["tcp", "udp", "icmp"][proto];
        let text = if proto == "icmp" { "icmp".to_string() } else if span == 0 { format!("{proto}/{lo}") } else { format!("{proto}/{lo}-{}", lo.saturating_add(span)) };
        if let Ok(p) = text.parse::<PortSpec>() {
            json_round_trip(&p);
        }
        let ip = std::net::Ipv4Addr::from(a);
        let subnet: Subnet = ipnet::Ipv4Net::new(ip, prefix).unwrap().trunc().to_string().parse().unwrap();
        json_round_trip(&subnet);
        // Not every address is a host address (a network's own address is refused).
        if let Ok(h) = format!("{ip}/{prefix}").parse::<HostAddress>() {
            json_round_trip(&h);
        }
        if let Ok(w) = ip.to_string().parse::<WorkloadAddress>() {
            json_round_trip(&w);
        }
        json_round_trip(&"dhcp".parse::<HostAddress>().unwrap());
        json_round_trip(&"auto".parse::<WorkloadAddress>().unwrap());
    }
}

#[test]
fn plain_values_keep_their_text_in_profiles() {
    // Read as written, not as the number YAML would make of it: `1e3` is no size.
    let e = render_str("t.yaml", &profile_with("1", "1e3", "10s")).unwrap_err();
    assert!(e.to_string().contains("1e3"), "{e}");
    let r = render_str("t.yaml", &profile_with("0.250", "64Mi", "10s")).unwrap();
    let Workload::Container(c) = &r.profile.workloads[0] else { panic!() };
    assert_eq!(c.resources.unwrap().cpus.unwrap().millis(), 250);
    for v in ["true", "-1", "0.0001"] {
        assert!(render_str("t.yaml", &profile_with(v, "64Mi", "10s")).is_err(), "cpus {v}");
    }
    json_round_trip(&VmSpecProbe::default());
}

/// A stand-in to make sure fixed values survive too (named so that it reads in failures).
#[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
struct VmSpecProbe {
    cpus: Cpus,
    quarter: Cpus,
}

impl Default for VmSpecProbe {
    fn default() -> Self {
        VmSpecProbe { cpus: Cpus::from_millis(2000), quarter: Cpus::from_millis(250) }
    }
}

/// Every part of every sample-fleet store that derives both ways: the fleet's own fractional
/// cpus, sizes, durations, ports and addresses.
#[test]
fn the_sample_fleet_round_trips() {
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
    let stores = render_fleet(&fleet).unwrap();
    assert!(stores.len() >= 4);
    let mut fractional = 0;
    for s in stores {
        let r = s.result.unwrap_or_else(|e| panic!("{}: {e}", s.id));
        let p = &r.profile;
        json_round_trip(&p.metadata);
        json_round_trip(&p.node);
        for seg in &p.network.segments {
            json_round_trip(seg);
        }
        for rule in &p.network.firewall.allow {
            json_round_trip(rule);
        }
        for w in &p.workloads {
            match w {
                Workload::Container(c) => {
                    fractional += usize::from(
                        c.resources.and_then(|l| l.cpus).is_some_and(|c| c.millis() % 1000 != 0),
                    );
                    json_round_trip(c);
                }
                Workload::Vm(v) => json_round_trip(v),
            }
        }
        for rb in &p.runbooks {
            json_round_trip(rb);
        }
        let again = render_str("again.yaml", &r.to_yaml()).unwrap();
        assert_eq!(again.revision.as_str(), r.revision.as_str(), "{}", s.id);
    }
    assert!(fractional > 0, "the sample fleet was expected to hold fractional cpus");
}
