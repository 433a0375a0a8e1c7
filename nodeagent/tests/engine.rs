//! The engine's logic with in-memory netd, vmd and runtime (no containerd): the order network →
//! VMs → containers, `depends_on` a VM, stop-first rollback, restart policy `never`, and a
//! desired revision persisted before it is acted on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use backroom_nodeagent::engine::{Config, Engine, EngineHandle, Status};
use backroom_nodeagent::network::MemoryNetwork;
use backroom_nodeagent::restart::Backoff;
use backroom_nodeagent::runtime::MemoryRuntime;
use backroom_nodeagent::vms::MemoryVms;

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::new(dir.to_path_buf(), dir.join("volumes"));
    cfg.tick = Duration::from_millis(20);
    cfg.settle_ms = 100;
    cfg.backoff = Backoff { base_ms: 50, ..Backoff::default() };
    cfg
}

fn start(
    dir: &std::path::Path,
    rt: &MemoryRuntime,
    net: &MemoryNetwork,
    vms: &MemoryVms,
) -> EngineHandle {
    let (engine, handle) = Engine::new(config(dir), rt.clone(), net.clone(), vms.clone()).unwrap();
    tokio::spawn(async move {
        engine.run(None, || {}).await.unwrap();
    });
    handle
}

fn render(workloads: &str) -> backroom_profiles::Rendered {
    let text = format!(
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: mem}}\nnetwork:\n  segments:\n    - {{name: apps, internal: true, subnet: 172.30.0.0/24, address: 172.30.0.1/24}}\nworkloads:\n{workloads}"
    );
    backroom_profiles::render_str("mem.yaml", &text).unwrap()
}

async fn until(h: &EngineHandle, what: &str, f: impl Fn(&Status) -> bool) -> Status {
    let t0 = Instant::now();
    loop {
        let s = h.status().await.unwrap();
        if f(&s) {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out waiting for {what}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state<'a>(s: &'a Status, name: &str) -> &'a str {
    &s.workloads.iter().find(|w| w.name == name).unwrap().state
}

const VM: &str = "  - name: nvr\n    kind: vm\n    cpus: 1\n    memory: 1Gi\n    boot: {kernel: {kernel: /boot/vmlinuz}}\n    networks: [{segment: apps}]\n";

#[tokio::test]
async fn network_then_vms_then_containers_and_depends_on_a_vm() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, net, vms) = (MemoryRuntime::new(), MemoryNetwork::default(), MemoryVms::default());
    rt.add_image("reg.example/web:1");
    let h = start(dir.path(), &rt, &net, &vms);
    let mut events = h.subscribe();
    let p = render(&format!(
        "{VM}  - name: web\n    kind: container\n    image: reg.example/web:1\n    networks: [{{segment: apps}}]\n    depends_on: [nvr]\n"
    ));
    h.apply(p, "test".into()).await.unwrap();
    let s = until(&h, "web running", |s| state(s, "web") == "running").await;
    assert_eq!(s.applied, s.desired);
    let mut order = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.kind == "action" {
            order.push(e.message);
        }
    }
    let pos = |prefix: &str| {
        order
            .iter()
            .position(|m| m.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {order:#?}"))
    };
    assert!(pos("apply the network") < pos("apply the VMs"), "{order:#?}");
    assert!(pos("apply the VMs") < pos("start web"), "{order:#?}");
    assert_eq!(net.state().calls[0], format!("apply {}", &s.desired[..12]));
    assert!(net.state().calls.contains(&"attach web ".to_string()));
    let spec = rt.spec(&rt.started()[0]).unwrap();
    let json = serde_json::to_value(&spec).unwrap();
    let netns = json["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .unwrap()
        .clone();
    assert_eq!(netns["path"], "/run/netns/bk-web", "the container joins netd's namespace");
    assert_eq!(s.workloads.iter().find(|w| w.name == "nvr").unwrap().state, "running");

    // Restart of a VM goes to vmd.
    let msg = h.restart("nvr").await.unwrap();
    assert!(msg.contains("vmd"), "{msg}");
}

#[tokio::test]
async fn stop_first_update_that_fails_restores_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, net, vms) = (MemoryRuntime::new(), MemoryNetwork::default(), MemoryVms::default());
    rt.add_image("reg.example/b:1");
    rt.add_image("reg.example/b:2");
    let h = start(dir.path(), &rt, &net, &vms);
    let batch = |tag: &str| {
        render(&format!(
            "  - name: batch\n    kind: container\n    image: reg.example/b:{tag}\n    update: stop-first\n"
        ))
    };
    h.apply(batch("1"), "v1".into()).await.unwrap();
    until(&h, "v1 running", |s| state(s, "batch") == "running").await;
    h.apply(batch("2"), "v2".into()).await.unwrap();
    let s = until(&h, "v2 started", |s| s.workloads[0].image == "reg.example/b:2").await;
    rt.exit(&s.workloads[0].container_id, 1);
    let s = until(&h, "rolled back to v1", |s| {
        s.workloads[0].image == "reg.example/b:1" && state(s, "batch") == "running"
    })
    .await;
    assert!(s.workloads[0].reason.contains("update to reg.example/b:2 rolled back"), "{s:#?}");
    assert!(s.actions.iter().any(|a| a.action.starts_with("roll batch back")));
    assert_eq!(rt.started().len(), 3, "v1, v2, v1 again");
}

#[tokio::test]
async fn restart_never_leaves_an_exited_container_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, net, vms) = (MemoryRuntime::new(), MemoryNetwork::default(), MemoryVms::default());
    rt.add_image("reg.example/once:1");
    let h = start(dir.path(), &rt, &net, &vms);
    h.apply(render("  - name: once\n    kind: container\n    image: reg.example/once:1\n    restart: never\n"), "t".into())
        .await
        .unwrap();
    let s = until(&h, "running", |s| state(s, "once") == "running").await;
    rt.exit(&s.workloads[0].container_id, 0);
    let s = until(&h, "stopped", |s| state(s, "once") == "stopped").await;
    assert!(s.workloads[0].reason.contains("exited with code 0"), "{s:#?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rt.started().len(), 1, "never restarted");
}

#[tokio::test]
async fn the_desired_revision_is_on_disk_before_the_network_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, net, vms) = (MemoryRuntime::new(), MemoryNetwork::default(), MemoryVms::default());
    rt.add_image("reg.example/web:1");
    net.state().fail_apply = Some("uplink eno1 is missing".into());
    let h = start(dir.path(), &rt, &net, &vms);
    let p = render("  - name: web\n    kind: container\n    image: reg.example/web:1\n");
    let rev = p.revision.to_string();
    h.apply(p, "test".into()).await.unwrap();
    let s =
        until(&h, "the network failure shown", |s| s.network.contains("uplink eno1 is missing"))
            .await;
    assert!(rt.started().is_empty(), "no container before the network");
    assert_eq!(state(&s, "web"), "pending");
    let node: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("node.json")).unwrap()).unwrap();
    assert_eq!(node["desired"], rev.as_str());
    assert!(dir.path().join(format!("revisions/{rev}.yaml")).exists());
}
