use super::*;
use crate::record::{Exit, HealthState, Instance, Update};

const PROFILE: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: t}
network:
  segments:
    - {name: apps, internal: true, subnet: 172.30.0.0/24, address: 172.30.0.1/24}
workloads:
  - name: menu
    kind: container
    image: reg.example/menu:1
    networks: [{segment: apps}]
    health: {tcp: {port: 80}, interval: 1s}
  - name: orders
    kind: container
    image: reg.example/orders:1
    depends_on: [menu]
    health: {http: {port: 8080}}
  - name: batch
    kind: container
    image: reg.example/batch:1
    update: stop-first
    restart: on-failure
"#;

fn profile(text: &str) -> Profile {
    backroom_profiles::render_str("t.yaml", text).unwrap().profile
}

fn spec(p: &Profile, name: &str) -> ContainerSpec {
    p.containers().find(|c| c.name.as_str() == name).unwrap().clone()
}

fn instance(spec: &ContainerSpec, role: Role, health: HealthStatus, started_ms: u64) -> Instance {
    Instance {
        container_id: format!("{}.1", spec.name),
        role,
        spec: spec.clone(),
        spec_hash: spec_hash(spec),
        revision: "r".into(),
        image: spec.image.as_ref().unwrap().to_string(),
        image_digest: String::new(),
        netns: None,
        addresses: vec![],
        pid: 1,
        started_ms,
        exit: None,
        health: HealthState { status: health, ..Default::default() },
    }
}

fn running(p: &Profile, name: &str) -> WorkloadRecord {
    let mut r = WorkloadRecord::new(name);
    r.primary = Some(instance(&spec(p, name), Role::Primary, HealthStatus::Healthy, 0));
    r
}

struct Fixture {
    profile: Profile,
    records: Records,
    busy: BTreeSet<String>,
    vms_ready: BTreeSet<String>,
    network: Phase,
    now: u64,
}

impl Fixture {
    fn new(text: &str) -> Self {
        Fixture {
            profile: profile(text),
            records: Records::new(),
            busy: BTreeSet::new(),
            vms_ready: BTreeSet::new(),
            network: Phase::Done,
            now: 100_000,
        }
    }

    fn plan(&self) -> Vec<Action> {
        plan(&Input {
            revision: "rev",
            profile: &self.profile,
            network: self.network.clone(),
            vms: Phase::NotNeeded,
            records: &self.records,
            busy: &self.busy,
            vms_ready: &self.vms_ready,
            now_ms: self.now,
            settle_ms: 2000,
        })
    }

    fn lines(&self) -> Vec<String> {
        self.plan().iter().map(|a| a.to_string()).collect()
    }
}

#[test]
fn fresh_node_applies_the_network_first_and_starts_nothing_before() {
    let mut f = Fixture::new(PROFILE);
    f.network = Phase::Due;
    assert_eq!(f.plan(), vec![Action::ApplyNetwork { revision: "rev".into() }]);
    f.network = Phase::Waiting;
    assert!(f.plan().is_empty());
}

#[test]
fn starts_in_dependency_order_and_waits_for_health() {
    let mut f = Fixture::new(PROFILE);
    let lines = f.lines();
    assert_eq!(
        lines,
        vec![
            "start batch (reg.example/batch:1): not running yet",
            "start menu (reg.example/menu:1): not running yet",
            "orders: waiting for menu to be healthy",
        ]
    );
    // menu runs but is not healthy yet: orders still waits.
    let mut menu = running(&f.profile, "menu");
    menu.primary.as_mut().unwrap().health.status = HealthStatus::Unknown;
    f.records.insert("menu".into(), menu);
    f.records.insert("batch".into(), running(&f.profile, "batch"));
    assert_eq!(f.lines(), vec!["orders: waiting for menu to be healthy"]);
    f.records.insert("menu".into(), running(&f.profile, "menu"));
    assert!(
        matches!(&f.plan()[..], [Action::Start { workload, role: Role::Primary, .. }] if workload == "orders")
    );
}

#[test]
fn busy_workloads_are_left_alone_and_converged_ones_need_nothing() {
    let mut f = Fixture::new(PROFILE);
    for n in ["menu", "orders", "batch"] {
        f.records.insert(n.into(), running(&f.profile, n));
    }
    assert!(f.plan().is_empty());
    f.records.remove("orders");
    f.busy.insert("orders".into());
    assert!(f.plan().is_empty());
}

#[test]
fn an_exit_restarts_by_policy_after_the_backoff() {
    let mut f = Fixture::new(PROFILE);
    let mut menu = running(&f.profile, "menu");
    menu.primary.as_mut().unwrap().exit = Some(Exit { code: 137, at_ms: 99_000, oom: true });
    menu.backoff_until_ms = 102_000;
    f.records.insert("menu".into(), menu.clone());
    f.records.insert("orders".into(), running(&f.profile, "orders"));
    f.records.insert("batch".into(), running(&f.profile, "batch"));
    assert_eq!(
        f.lines(),
        vec!["menu: killed by the kernel: out of memory (its memory limit); next try in 2s"]
    );
    f.now = 102_000;
    assert!(matches!(&f.plan()[..], [Action::Restart { workload, .. }] if workload == "menu"));

    // on-failure: a clean exit stays stopped.
    let mut batch = running(&f.profile, "batch");
    batch.primary.as_mut().unwrap().exit = Some(Exit { code: 0, at_ms: 1, oom: false });
    f.records.insert("batch".into(), batch);
    f.records.insert("menu".into(), running(&f.profile, "menu"));
    assert!(f.plan().is_empty());
}

#[test]
fn start_first_update_starts_next_then_promotes_or_rolls_back() {
    let mut f = Fixture::new(PROFILE);
    for n in ["menu", "orders", "batch"] {
        f.records.insert(n.into(), running(&f.profile, n));
    }
    f.profile = profile(&PROFILE.replace("reg.example/menu:1", "reg.example/menu:2"));
    let new = spec(&f.profile, "menu");
    assert!(matches!(&f.plan()[..], [Action::Start { role: Role::Next, .. }]));

    let rec = f.records.get_mut("menu").unwrap();
    rec.next = Some(instance(&new, Role::Next, HealthStatus::Unknown, 99_000));
    rec.update = Some(Update {
        to_hash: spec_hash(&new),
        deadline_ms: 110_000,
        previous: None,
        previous_revision: "old".into(),
    });
    assert_eq!(f.lines(), vec!["menu: updating: waiting for the new version to become healthy"]);

    f.records.get_mut("menu").unwrap().next.as_mut().unwrap().health.status = HealthStatus::Healthy;
    assert_eq!(f.plan(), vec![Action::Promote { workload: "menu".into() }]);

    let n = f.records.get_mut("menu").unwrap().next.as_mut().unwrap();
    n.health.status = HealthStatus::Unhealthy;
    n.health.reason = "tcp connect refused".into();
    assert_eq!(
        f.lines(),
        vec!["roll menu back: the new version is unhealthy: tcp connect refused"]
    );

    let n = f.records.get_mut("menu").unwrap().next.as_mut().unwrap();
    n.health.status = HealthStatus::Unknown;
    f.now = 110_000;
    assert!(matches!(&f.plan()[..], [Action::Rollback { .. }]));

    // The profile moved on again: the half-done update is abandoned.
    f.now = 100_000;
    f.profile = profile(&PROFILE.replace("reg.example/menu:1", "reg.example/menu:3"));
    assert_eq!(f.plan(), vec![Action::Abandon { workload: "menu".into() }]);
}

#[test]
fn a_rolled_back_version_is_held_until_the_profile_changes_it() {
    let mut f = Fixture::new(PROFILE);
    for n in ["menu", "orders", "batch"] {
        f.records.insert(n.into(), running(&f.profile, n));
    }
    f.profile = profile(&PROFILE.replace("reg.example/menu:1", "reg.example/menu:2"));
    let new = spec(&f.profile, "menu");
    f.records.get_mut("menu").unwrap().bad = Some(crate::record::BadVersion {
        spec_hash: spec_hash(&new),
        image: "reg.example/menu:2".into(),
        reason: "exited with code 1".into(),
        at_ms: 1,
    });
    assert_eq!(
        f.lines(),
        vec!["menu: keeping the running version: reg.example/menu:2 failed: exited with code 1"]
    );
    f.profile = profile(&PROFILE.replace("reg.example/menu:1", "reg.example/menu:3"));
    assert!(matches!(&f.plan()[..], [Action::Start { role: Role::Next, .. }]));
}

#[test]
fn stop_first_update_replaces_then_settles_or_rolls_back() {
    let mut f = Fixture::new(PROFILE);
    for n in ["menu", "orders", "batch"] {
        f.records.insert(n.into(), running(&f.profile, n));
    }
    let old = spec(&f.profile, "batch");
    f.profile = profile(&PROFILE.replace("reg.example/batch:1", "reg.example/batch:2"));
    let new = spec(&f.profile, "batch");
    assert!(matches!(&f.plan()[..], [Action::Replace { workload, .. }] if workload == "batch"));

    let rec = f.records.get_mut("batch").unwrap();
    rec.primary = Some(instance(&new, Role::Primary, HealthStatus::Unknown, 99_000));
    rec.update = Some(Update {
        to_hash: spec_hash(&new),
        deadline_ms: 120_000,
        previous: Some(old),
        previous_revision: "old".into(),
    });
    assert_eq!(f.lines(), vec!["batch: updating: waiting for the new version to become healthy"]);
    f.now = 101_000;
    assert_eq!(f.plan(), vec![Action::Settle { workload: "batch".into() }], "no check: settles");
    f.records.get_mut("batch").unwrap().primary.as_mut().unwrap().exit =
        Some(Exit { code: 2, at_ms: 1, oom: false });
    assert_eq!(f.lines(), vec!["roll batch back: the new version exited with code 2"]);
}

#[test]
fn removed_workloads_are_removed_and_a_pending_network_only_restarts() {
    let mut f = Fixture::new(PROFILE);
    for n in ["menu", "orders", "batch"] {
        f.records.insert(n.into(), running(&f.profile, n));
    }
    f.records.insert("gone".into(), WorkloadRecord::new("gone"));
    assert_eq!(f.plan(), vec![Action::Remove { workload: "gone".into() }]);

    f.network = Phase::Waiting;
    f.records.get_mut("menu").unwrap().primary.as_mut().unwrap().exit =
        Some(Exit { code: 1, at_ms: 1, oom: false });
    assert!(matches!(&f.plan()[..], [Action::Restart { workload, .. }] if workload == "menu"));
}

#[test]
fn a_failed_start_backs_off() {
    let mut f = Fixture::new(PROFILE);
    let mut batch = WorkloadRecord::new("batch");
    batch.start_error = Some("image reg.example/batch:1: not found".into());
    batch.backoff_until_ms = 104_000;
    f.records.insert("batch".into(), batch);
    let lines = f.lines();
    assert_eq!(lines[0], "batch: image reg.example/batch:1: not found; next try in 4s");
}

#[test]
fn dependency_order_puts_dependencies_first() {
    let p = profile(PROFILE);
    assert_eq!(dependency_order(&p), vec!["batch", "menu", "orders"]);
}
