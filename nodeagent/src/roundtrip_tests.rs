//! What nodeagent writes under its state folder it must read back after a restart, however it
//! stopped (a `kill -9` included): every persisted type round-trips through its real encoding
//! (serde_json, through the store's own save and load) for values like the sample fleet's:
//! fractional cpus, sizes, durations, env, volumes, health checks, timestamps. A container
//! with `cpus: 0.25` once wrote a `workloads.json` that nodeagent could not read back.

use std::collections::BTreeMap;
use std::path::Path;

use backroom_profiles::{ContainerSpec, Cpus, Duration, Size, Workload};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connected::CentralDesired;
use crate::engine::ActionResult;
use crate::problems::{OpenProblem, Source};
use crate::record::{
    BadVersion, Exit, HealthState, HealthStatus, Instance, Records, Role, Update, WorkloadRecord,
    spec_hash,
};
use crate::store::{NodeState, Store};

fn json_round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let text =
        serde_json::to_vec_pretty(v).unwrap_or_else(|e| panic!("{v:?} does not encode: {e}"));
    let back: T = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "{v:?} was written as {} and does not read back: {e}",
            String::from_utf8_lossy(&text)
        )
    });
    assert_eq!(&back, v);
}

/// The containers of the sample fleet's stores, as rendered.
fn fleet_containers() -> Vec<ContainerSpec> {
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/fleet");
    let mut out = Vec::new();
    for s in backroom_profiles::render_fleet(&fleet).unwrap_or_else(|e| panic!("{e}")) {
        let r = s.result.unwrap_or_else(|e| panic!("{}: {e}", s.id));
        for w in r.profile.workloads {
            if let Workload::Container(c) = w {
                out.push(c);
            }
        }
    }
    assert!(
        out.iter()
            .any(|c| c.resources.and_then(|l| l.cpus).is_some_and(|c| c.millis() % 1000 != 0)),
        "the sample fleet was expected to hold fractional cpus"
    );
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A container written as an operator would (a YAML profile), rendered: values like the
/// fleet's, and more.
#[allow(clippy::too_many_arguments)]
fn written_container(
    cpus_millis: u32,
    memory: u64,
    interval_ms: u64,
    timeout_ms: u64,
    threshold: u32,
    env: BTreeMap<String, String>,
    probe: usize,
    restart: usize,
    update: usize,
    host: u8,
) -> ContainerSpec {
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}: {}", json_string(v))).collect();
    let probe = match probe {
        0 => "http: { port: 8443, path: /healthz }".to_string(),
        1 => "tcp: { port: 8080 }".to_string(),
        _ => "exec: [/bin/sh, -c, \"test -f /data/ok\"]".to_string(),
    };
    let text = format!(
        r#"apiVersion: backroom/v1
kind: StoreProfile
metadata: {{ name: t }}
network:
  segments:
    - {{ name: apps, internal: true, subnet: 172.30.0.0/24, address: 172.30.0.1/24 }}
workloads:
  - name: orders
    kind: container
    image: registry.example/retail/orders:3.2.0@sha256:b517ff710669f502d9f7f4f564f0a93f9a87241817e28f9de1288a9d6f91a447
    command: ["/app/orders", "--listen", ":8443"]
    env: {{ {env} }}
    networks: [{{ segment: apps, address: 172.30.0.{host} }}]
    resources: {{ cpus: {cpus}, memory: {memory} }}
    volumes: [{{ name: orders-data, path: /data }}]
    health: {{ {probe}, interval: {interval}, timeout: {timeout}, failure_threshold: {threshold} }}
    restart: {restart}
    update: {update}
"#,
        env = env.join(", "),
        cpus = Cpus::from_millis(cpus_millis),
        memory = Size::from_bytes(memory),
        interval = Duration::from_millis(interval_ms),
        timeout = Duration::from_millis(timeout_ms),
        restart = ["always", "on-failure", "never"][restart],
        update = ["start-first", "stop-first"][update],
    );
    let r =
        backroom_profiles::render_str("t.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    match r.profile.workloads.into_iter().next() {
        Some(Workload::Container(c)) => c,
        other => panic!("not a container: {other:?}"),
    }
}

fn container() -> impl Strategy<Value = ContainerSpec> {
    let written = (
        (1u32..=4_000, 1u64..=(64 << 30), 1u64..=3_600_000, 1u64..=120_000, 1u32..=10),
        proptest::collection::btree_map("[A-Z][A-Z0-9_]{0,11}", "[a-zA-Z0-9 :/._=é€-]{0,24}", 0..4),
        (0usize..3, 0usize..3, 0usize..2, 2u8..=250),
    )
        .prop_map(|((c, m, i, t, f), env, (p, r, u, h))| {
            written_container(c, m, i, t, f, env, p, r, u, h)
        });
    prop_oneof![proptest::sample::select(fleet_containers()), written]
}

fn health() -> impl Strategy<Value = HealthState> {
    (0usize..3, ".{0,40}", any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
        |(s, reason, n, a, b)| HealthState {
            status: [HealthStatus::Unknown, HealthStatus::Healthy, HealthStatus::Unhealthy][s],
            reason,
            consecutive_failures: n,
            last_probe_ms: a,
            since_ms: b,
        },
    )
}

fn exit() -> impl Strategy<Value = Exit> {
    (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(code, at_ms, oom)| Exit {
        code,
        at_ms,
        oom,
    })
}

fn instance(role: Role) -> impl Strategy<Value = Instance> {
    (
        container(),
        "[a-z0-9.-]{1,20}",
        proptest::option::of("/run/netns/bk-[a-z-]{1,12}"),
        proptest::collection::vec("172\\.30\\.0\\.[0-9]{1,3}/24", 0..3),
        (any::<u32>(), any::<u64>()),
        proptest::option::of(exit()),
        health(),
    )
        .prop_map(move |(spec, id, netns, addresses, (pid, started_ms), exit, health)| {
            Instance {
                container_id: id,
                role,
                spec_hash: spec_hash(&spec),
                image: spec.image.as_ref().map(|i| i.to_string()).unwrap_or_default(),
                image_digest: format!("sha256:{}", "ab".repeat(32)),
                revision: "86a3bc5de5ad".repeat(5),
                spec,
                netns,
                addresses,
                pid,
                started_ms,
                exit,
                health,
            }
        })
}

fn record() -> impl Strategy<Value = WorkloadRecord> {
    (
        proptest::option::of(instance(Role::Primary)),
        proptest::option::of(instance(Role::Next)),
        proptest::option::of((any::<u64>(), proptest::option::of(container())).prop_map(
            |(deadline_ms, previous)| Update {
                to_hash: "0123456789abcdef".into(),
                deadline_ms,
                previous,
                previous_revision: "r1".into(),
            },
        )),
        proptest::option::of((".{0,30}", any::<u64>()).prop_map(|(reason, at_ms)| BadVersion {
            spec_hash: "fedcba9876543210".into(),
            image: "registry.example/retail/orders:3.3.0".into(),
            reason,
            at_ms,
        })),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<bool>()),
        (proptest::option::of(".{0,60}"), "[a-z]{0,10}", any::<u64>()),
    )
        .prop_map(
            |(
                primary,
                next,
                update,
                bad,
                (restarts, cf, until, generation, asked),
                (err, state, since),
            )| {
                WorkloadRecord {
                    name: "orders".into(),
                    previous_image: primary.as_ref().map(|p| p.image.clone()),
                    primary,
                    next,
                    update,
                    bad,
                    restarts,
                    consecutive_failures: cf,
                    backoff_until_ms: until,
                    start_error: err,
                    generation,
                    restart_requested: asked,
                    state,
                    state_since_ms: since,
                }
            },
        )
}

fn problem() -> impl Strategy<Value = OpenProblem> {
    (0usize..3, ".{1,30}", "[a-z-]{0,10}", ".{0,80}", any::<i64>(), any::<u32>()).prop_map(
        |(s, subject, workload, message, since_ms, failures)| OpenProblem {
            source: [Source::Nodeagent, Source::Netd, Source::Vmd][s],
            subject,
            workload,
            message,
            since_ms,
            failures,
        },
    )
}

fn revision() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[0-9a-f]{64}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// `workloads.json`, through the store: what the engine saves, a restarted one loads.
    #[test]
    fn workload_records(recs in proptest::collection::vec(record(), 0..3)) {
        let records: Records = recs.into_iter().enumerate()
            .map(|(i, mut r)| { r.name = format!("w{i}"); (r.name.clone(), r) })
            .collect();
        json_round_trip(&records);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save_records(&records).unwrap();
        prop_assert_eq!(store.load_records().unwrap(), records);
    }

    /// `node.json`, `actions.json`, `problems.json` and `central/desired.json`.
    #[test]
    fn node_state_actions_problems_and_central_desired(
        revs in (revision(), revision(), revision(), revision(), revision(), revision()),
        source in ".{0,40}",
        actions in proptest::collection::vec(
            (any::<u64>(), "[a-z-]{0,10}", ".{0,40}", any::<bool>(), ".{0,60}").prop_map(
                |(at_ms, workload, action, ok, message)| ActionResult { at_ms, workload, action, ok, message }),
            0..5),
        problems in proptest::collection::vec(problem(), 0..5),
        desired in ("[0-9a-f]{0,64}", 0usize..3, ".{0,60}", "[0-9a-f]{0,64}").prop_map(
            |(revision, s, message, rolled_back_to)| CentralDesired {
                revision,
                state: ["applying", "applied", "failed"][s].into(),
                message,
                rolled_back_to,
            }),
    ) {
        let node = NodeState {
            desired: revs.0,
            desired_source: source,
            applied: revs.1,
            last_known_good: revs.2,
            boot_profile_revision: revs.3,
            network_applied: revs.4,
            vms_applied: revs.5,
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save_node(&node).unwrap();
        prop_assert_eq!(store.load_node().unwrap(), node);
        store.save_actions(&actions).unwrap();
        prop_assert_eq!(store.load_actions::<ActionResult>().unwrap(), actions);
        store.save_problems(&problems).unwrap();
        prop_assert_eq!(store.load_problems().unwrap(), problems);
        json_round_trip(&desired);
    }
}

#[test]
fn the_fleet_coffee_shop_records_read_back() {
    // The case that was found: store-0042's containers (cpus 0.25 and 0.5) in a record.
    for spec in fleet_containers() {
        let mut rec = WorkloadRecord::new(spec.name.as_str());
        rec.primary = Some(Instance {
            container_id: format!("{}.1", spec.name),
            role: Role::Primary,
            spec_hash: spec_hash(&spec),
            image: String::new(),
            image_digest: String::new(),
            revision: String::new(),
            spec,
            netns: None,
            addresses: vec![],
            pid: 4242,
            started_ms: 1_795_651_200_000,
            exit: None,
            health: HealthState::default(),
        });
        json_round_trip(&rec);
    }
}
