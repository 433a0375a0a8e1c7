//! Rendering: revision ids follow meaning, not spelling; canonical output reads back to itself;
//! diffs name what changed.

#![allow(clippy::unwrap_used)] // test helpers fail loudly on broken fixtures

use std::path::Path;

use backroom_profiles::{Workload, diff, render_file, render_str};

fn fleet(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet").join(rel)
}

const FLAT: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: { name: demo, labels: { a: "1", b: "2" } }
network:
  uplink: { interface: eth0 }
  segments:
    - { name: pos, vlan: 10, subnet: 10.0.10.0/24, address: 10.0.10.2/24 }
    - { name: apps, internal: true, subnet: 172.30.0.0/24, address: 172.30.0.1/24, nat: true }
  firewall:
    allow:
      - { name: pos-to-web, from: pos, to: web, ports: [tcp/8080, tcp/443] }
      - { name: apps-out, from: apps, to: internet }
workloads:
  - name: web
    kind: container
    image: registry.example/web:1.0
    networks: [{ segment: apps, address: 172.30.0.10 }, { segment: pos }]
    resources: { cpus: 0.5, memory: 256Mi }
    health: { http: { port: 8080 } }
"#;

/// The same meaning: keys reordered, named lists reordered, defaults spelled out, units
/// respelled, block instead of flow style, comments.
const REORDERED: &str = r#"
# a comment changes nothing
workloads:
  - kind: container
    health:
      interval: 10s          # the default, spelled out
      http: { path: /, port: 8080 }
    resources: { memory: 262144Ki, cpus: 0.500 }
    restart: always
    update: start-first
    networks:
      - address: 172.30.0.10
        segment: apps
      - segment: pos
        address: auto
    image: registry.example/web:1.0
    name: web
network:
  firewall:
    default: drop
    allow:
      - { to: internet, from: apps, name: apps-out }
      - { ports: [tcp/443, tcp/8080], to: web, name: pos-to-web, from: pos }
  segments:
    - { nat: true, internal: true, name: apps, address: 172.30.0.1/24, subnet: 172.30.0.0/24 }
    - { name: pos, address: 10.0.10.2/24, subnet: 10.0.10.0/24, vlan: 10 }
  uplink: { interface: eth0 }
kind: StoreProfile
metadata: { labels: { b: "2", a: "1" }, name: demo }
node: { reserved: { cpus: 1, memory: 2048Mi } }
apiVersion: backroom/v1
"#;

#[test]
fn the_same_meaning_gives_the_same_revision() {
    let a = render_str("flat.yaml", FLAT).unwrap();
    let b = render_str("reordered.yaml", REORDERED).unwrap();
    assert_eq!(a.profile, b.profile);
    assert_eq!(a.revision, b.revision);
}

#[test]
fn a_different_meaning_gives_a_different_revision() {
    let a = render_str("flat.yaml", FLAT).unwrap();
    let b = render_str("flat.yaml", &FLAT.replace("tcp/443", "tcp/444")).unwrap();
    assert_ne!(a.revision, b.revision);
    // The order of a workload's networks decides eth0/eth1, so it is meaning.
    let swapped = FLAT.replace(
        "[{ segment: apps, address: 172.30.0.10 }, { segment: pos }]",
        "[{ segment: pos }, { segment: apps, address: 172.30.0.10 }]",
    );
    assert_ne!(a.revision, render_str("flat.yaml", &swapped).unwrap().revision);
}

#[test]
fn layered_and_flattened_documents_agree() {
    for store in ["store-0042", "store-0117", "store-2001", "store-2002"] {
        let layered = render_file(&fleet(&format!("stores/{store}.yaml"))).unwrap();
        let from_yaml = render_str("rendered.yaml", &layered.to_yaml()).unwrap();
        assert_eq!(from_yaml.profile, layered.profile, "{store}");
        assert_eq!(from_yaml.revision, layered.revision, "{store}");
        // JSON is YAML too: the canonical JSON reads back to the same revision.
        let from_json = render_str("rendered.json", &layered.to_json()).unwrap();
        assert_eq!(from_json.revision, layered.revision, "{store}");
    }
}

#[test]
fn substitution_and_layers_reach_the_model() {
    let r = render_file(&fleet("stores/store-0042.yaml")).unwrap();
    let p = &r.profile;
    assert_eq!(p.segment("pos").unwrap().subnet.unwrap().to_string(), "10.42.10.0/24");
    assert_eq!(p.metadata.labels["region"], "us-west");
    assert_eq!(p.metadata.labels["format"], "coffee-shop");
    let Some(Workload::Container(orders)) = p.workload("orders") else {
        panic!("orders is a container")
    };
    assert!(
        orders.image.as_ref().unwrap().repository.starts_with("registry.us-west.backroom.example/")
    );
    assert_eq!(orders.env["TZ"], "America/Los_Angeles");
    // store-0117 removed the cameras and the NVR, and added a service.
    let k = render_file(&fleet("stores/store-0117.yaml")).unwrap();
    assert!(k.profile.segment("cctv").is_none());
    assert!(k.profile.workload("nvr").is_none());
    assert!(k.profile.workload("promo").is_some());
    assert!(k.profile.network.firewall.allow.iter().all(|r| r.name.as_str() != "cctv-to-nvr"));
}

#[test]
fn diff_groups_changes_the_way_an_operator_reads_them() {
    let a = render_file(&fleet("stores/store-0042.yaml")).unwrap();
    let b = render_file(&fleet("stores/store-0117.yaml")).unwrap();
    let d = diff(&a.profile, &b.profile);
    let text = d.to_string();
    let section = |name: &str| {
        d.sections
            .iter()
            .find(|s| s.section == name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(section("segments").removed[0].name, "cctv");
    let pos = section("segments").changed.iter().find(|c| c.name == "pos").expect("pos changed");
    assert!(pos.fields.iter().any(|f| f.field == "subnet"
        && f.old.as_deref() == Some("10.42.10.0/24")
        && f.new.as_deref() == Some("10.117.10.0/24")));
    assert_eq!(section("workloads").added[0].name, "promo");
    assert_eq!(section("workloads").removed[0].name, "nvr");
    assert!(section("firewall rules").added.iter().any(|r| r.name == "pos-to-promo"));
    assert!(section("node").changed[0].fields.iter().any(|f| f.field == "capacity.cpus"));
    assert!(text.contains("subnet: 10.42.10.0/24 → 10.117.10.0/24"), "{text}");
    assert!(diff(&a.profile, &a.profile).is_empty());
}

#[test]
fn a_literal_dollar_brace_survives_rendering() {
    let doc = "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {name: d}\nvalues: {v: \"${X\"}\n\
               workloads:\n  - {name: web, kind: container, image: r.example/w:1, env: {A: \"${v}\", B: \"$${y}\"}}\n";
    let r = render_str("d.yaml", doc).unwrap();
    let Some(Workload::Container(c)) = r.profile.workload("web") else { panic!() };
    assert_eq!(c.env["A"], "${X");
    assert_eq!(c.env["B"], "${y}");
    let again = render_str("again.yaml", &r.to_yaml()).unwrap();
    assert_eq!(again.profile, r.profile);
    assert_eq!(render_str("again.json", &r.to_json()).unwrap().revision, r.revision);
}

const WITH_OS: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: { name: demo }
node:
  os:
    sha256: b517ff710669f502d9f7f4f564f0a93f9a87241817e28f9de1288a9d6f91a447
    image: https://central.example:7443/os/backroom-store-2026.12.1.root
    version: "2026.12.1"
"#;

#[test]
fn node_os_is_refused_until_an_update_is_tested_on_the_image() {
    // node.os parses and its values are checked, but the field itself is refused (see
    // validate.rs `fn os`): nodeagent's A/B update has not updated a booted image in a test.
    let e = match render_str("os.yaml", WITH_OS) {
        Ok(_) => panic!("node.os was accepted"),
        Err(e) => format!("{e:?}"),
    };
    assert!(e.contains("`node.os` (OS updates) is not supported yet"), "{e}");
    let without = WITH_OS.split("node:").next().unwrap();
    let base = render_str("no-os.yaml", without).unwrap();
    assert!(base.profile.node.os.is_none());
}
