//! The engine's logic with in-memory netd, vmd, runtime and prober (no containerd): the order
//! network → VMs → containers, `depends_on` a VM, stop-first rollback, restart policy `never`,
//! a desired revision persisted before it is acted on; restart backoff and crash loops on the
//! manual clock; health from the prober; and the problems that reach the operator: netd's own
//! (to the status, the event stream and the outbox), netd out of reach, an image that cannot be
//! pulled, each told once when it starts and once when it ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use backroom_daemon::{ManualClock, SharedClock};
use backroom_nodeagent::engine::{Config, Engine, EngineHandle, Event, Status};
use backroom_nodeagent::network::MemoryNetwork;
use backroom_nodeagent::probe::MemoryProber;
use backroom_nodeagent::problems::Source;
use backroom_nodeagent::restart::Timing;
use backroom_nodeagent::runtime::MemoryRuntime;
use backroom_nodeagent::vms::MemoryVms;
use tokio::sync::broadcast;

/// 2026-11-26T00:00:00Z: the manual clocks' start.
const T0: i64 = 1_795_651_200_000;

fn config(dir: &std::path::Path, clock: SharedClock) -> Config {
    let mut cfg = Config::new(dir.to_path_buf(), dir.join("volumes"));
    cfg.tick = Duration::from_millis(20);
    cfg.settle_ms = 100;
    cfg.restart = Timing::with_first_delay(Duration::from_millis(50));
    cfg.clock = clock;
    cfg
}

struct Node {
    h: EngineHandle,
    rt: MemoryRuntime,
    net: MemoryNetwork,
    probes: MemoryProber,
}

fn start_on(cfg: Config) -> Node {
    let (rt, net, probes) =
        (MemoryRuntime::new(), MemoryNetwork::default(), MemoryProber::default());
    let (engine, h) =
        Engine::with_prober(cfg, rt.clone(), net.clone(), MemoryVms::default(), probes.clone())
            .unwrap();
    tokio::spawn(async move {
        engine.run(None, || {}).await.unwrap();
    });
    Node { h, rt, net, probes }
}

fn start(
    dir: &std::path::Path,
    rt: &MemoryRuntime,
    net: &MemoryNetwork,
    vms: &MemoryVms,
) -> EngineHandle {
    let cfg = config(dir, backroom_daemon::clock::system());
    let (engine, handle) =
        Engine::with_prober(cfg, rt.clone(), net.clone(), vms.clone(), MemoryProber::default())
            .unwrap();
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

fn restarts(s: &Status, name: &str) -> u32 {
    s.workloads.iter().find(|w| w.name == name).unwrap().restarts
}

fn container(s: &Status, name: &str) -> String {
    s.workloads.iter().find(|w| w.name == name).unwrap().container_id.clone()
}

/// The events received so far.
fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn notices<'a>(events: &'a [Event], kind: &str, subject: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.kind == kind && e.subject == subject).collect()
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
    let mut events = h.subscribe();
    // `always` beside it is the positive control: the same exit, at the same time, under the
    // same engine, is restarted; `never` is not.
    h.apply(
        render(
            "  - name: once\n    kind: container\n    image: reg.example/once:1\n    restart: never\n  - name: always\n    kind: container\n    image: reg.example/once:1\n    restart: always\n",
        ),
        "t".into(),
    )
    .await
    .unwrap();
    let s =
        until(&h, "running", |s| state(s, "once") == "running" && state(s, "always") == "running")
            .await;
    rt.exit(&container(&s, "once"), 3);
    rt.exit(&container(&s, "always"), 3);
    let s = until(&h, "always restarted", |s| {
        restarts(s, "always") == 1 && state(s, "always") == "running"
    })
    .await;
    assert_eq!(state(&s, "once"), "failed");
    let once = s.workloads.iter().find(|w| w.name == "once").unwrap();
    assert!(once.reason.contains("exited with code 3; restart policy never"), "{once:?}");
    assert_eq!(restarts(&s, "once"), 0, "never restarted");
    assert_eq!(rt.started().len(), 3, "once, always, always again");
    // A workload its restart policy will not start again is a problem, told once.
    let p = s.problems.iter().find(|p| p.subject == "workload once").expect("a problem");
    assert!(p.message.contains("does not start it again"), "{p:?}");
    assert_eq!(notices(&drain(&mut events), "failing", "workload once").len(), 1);
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
    assert!(s.network.contains("netd apply failed: uplink eno1 is missing"), "{}", s.network);
    assert!(rt.started().is_empty(), "no container before the network");
    assert_eq!(state(&s, "web"), "pending");
    let node: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("node.json")).unwrap()).unwrap();
    assert_eq!(node["desired"], rev.as_str());
    assert!(dir.path().join(format!("revisions/{rev}.yaml")).exists());
}

#[tokio::test]
async fn a_network_netd_kept_unconfirmed_shows_as_applied_and_kept_until_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, net, vms) = (MemoryRuntime::new(), MemoryNetwork::default(), MemoryVms::default());
    rt.add_image("reg.example/web:1");
    let h = start(dir.path(), &rt, &net, &vms);
    let t0 = Instant::now();
    while net.listeners() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "nodeagent does not listen to netd");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.apply(
        render("  - name: web\n    kind: container\n    image: reg.example/web:1\n"),
        "t".into(),
    )
    .await
    .unwrap();
    until(&h, "the network applied", |s| s.network.starts_with("applied (revision")).await;
    // netd's deadline passed with central away and nothing earlier to go back to.
    net.event(
        "unconfirmed_kept",
        "the network of revision abc was not confirmed in time, and netd kept it",
        T0,
    );
    let s = until(&h, "the kept network shown", |s| s.network.contains("kept")).await;
    assert_eq!(s.network, "applied (first network, not confirmed: kept)");
    net.event("confirmed", "revision abc is confirmed", T0 + 1_000);
    let s = until(&h, "the mark gone", |s| !s.network.contains("kept")).await;
    assert!(s.network.starts_with("applied (revision"), "{}", s.network);
}

#[tokio::test]
async fn restart_backoff_crash_loops_and_stable_runs_on_the_manual_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut cfg = config(dir.path(), Arc::new(clock.clone()));
    cfg.restart = Timing::with_first_delay(Duration::from_secs(1));
    let n = start_on(cfg);
    n.rt.add_image("reg.example/w:1");
    let mut events = n.h.subscribe();
    let t0 = Instant::now();
    n.h.apply(render("  - name: w\n    kind: container\n    image: reg.example/w:1\n"), "t".into())
        .await
        .unwrap();
    until(&n.h, "running", |s| state(s, "w") == "running").await;
    // How long a start that is due takes to happen here (real time): the positive control for
    // the windows below in which no restart may happen.
    let mut took = t0.elapsed();
    // Five exits in a row, each restarted exactly when its backoff (1 s, 2 s, 4 s, 8 s) ends.
    for (exits, delay) in [(1u32, 1_000u64), (2, 2_000), (3, 4_000), (4, 8_000)] {
        let s = n.h.status().await.unwrap();
        n.rt.exit(&container(&s, "w"), 1);
        until(&n.h, "the exit booked", |s| state(s, "w") == "backoff").await;
        // 1 ms short: no restart, for three times as long as a due one takes...
        clock.advance(Duration::from_millis(delay - 1));
        tokio::time::sleep((took * 3).max(Duration::from_millis(60))).await;
        assert_eq!(restarts(&n.h.status().await.unwrap(), "w"), exits - 1, "restarted early");
        // ...and the restart comes once the clock gets there.
        let t = Instant::now();
        clock.advance(Duration::from_millis(1));
        until(&n.h, "restarted", |s| restarts(s, "w") == exits && state(s, "w") == "running").await;
        took = took.max(t.elapsed());
    }
    let s = n.h.status().await.unwrap();
    n.rt.exit(&container(&s, "w"), 1);
    let s = until(&n.h, "a crash loop", |s| state(s, "w") == "failed").await;
    assert!(s.workloads[0].reason.starts_with("crash loop (5 exits in a row)"), "{s:#?}");
    assert!(s.workloads[0].reason.ends_with("next try in 16s"), "{s:#?}");
    assert!(s.problems.iter().any(|p| p.subject == "workload w" && p.source == Source::Nodeagent));
    clock.advance(Duration::from_secs(16));
    until(&n.h, "restarted after 16 s", |s| restarts(s, "w") == 5 && state(s, "w") == "running")
        .await;
    // 29 s of running is not a stable run: the sixth exit is still in the loop, 32 s away.
    clock.advance(Duration::from_secs(29));
    let s = n.h.status().await.unwrap();
    assert!(s.problems.iter().any(|p| p.subject == "workload w"), "recovered too early");
    n.rt.exit(&container(&s, "w"), 1);
    let s = until(&n.h, "the sixth exit", |s| s.workloads[0].reason.contains("6 exits")).await;
    assert!(s.workloads[0].reason.ends_with("next try in 32s"), "{s:#?}");
    clock.advance(Duration::from_secs(32));
    until(&n.h, "restarted", |s| restarts(s, "w") == 6 && state(s, "w") == "running").await;
    // 30 s of running: it works again, and the next exit starts again from 1 s.
    clock.advance(Duration::from_secs(30));
    let s = until(&n.h, "recovered", |s| s.problems.is_empty()).await;
    n.rt.exit(&container(&s, "w"), 1);
    let s = until(&n.h, "backoff from the start", |s| state(s, "w") == "backoff").await;
    assert!(s.workloads[0].reason.ends_with("next try in 1s"), "{s:#?}");
    let told = drain(&mut events);
    assert_eq!(notices(&told, "failing", "workload w").len(), 1, "one notice for the loop");
    assert_eq!(notices(&told, "recovered", "workload w").len(), 1);
}

/// A node whose state was lost while its containers ran (or a new state folder beside an old
/// runtime): the containers no record knows are removed, and the new ones must not take their
/// ids. Found by the kill suite: the new `menu.1` was taken for the one being removed, never
/// probed, and the store stayed "starting" for ever.
#[tokio::test]
async fn a_new_container_never_takes_the_id_of_one_being_removed_and_is_probed() {
    let rt = MemoryRuntime::new();
    rt.add_image("reg.example/web:1");
    let profile = || {
        render(
            "  - name: web\n    kind: container\n    image: reg.example/web:1\n    health: {http: {port: 8080, path: /healthz}, interval: 10s}\n",
        )
    };
    let first = tempfile::tempdir().unwrap();
    let (engine, h) = Engine::with_prober(
        config(first.path(), backroom_daemon::clock::system()),
        rt.clone(),
        MemoryNetwork::default(),
        MemoryVms::default(),
        MemoryProber::default(),
    )
    .unwrap();
    let task = tokio::spawn(async move { engine.run(None, || {}).await.unwrap() });
    h.apply(profile(), "t".into()).await.unwrap();
    let s = until(&h, "healthy", |s| s.workloads[0].health == "healthy").await;
    let old = container(&s, "web");
    // The agent dies; the next one starts with nothing on disk.
    task.abort();
    let _ = task.await;
    let second = tempfile::tempdir().unwrap();
    let n = {
        let (rt2, probes) = (rt.clone(), MemoryProber::default());
        let (engine, h) = Engine::with_prober(
            config(second.path(), backroom_daemon::clock::system()),
            rt2,
            MemoryNetwork::default(),
            MemoryVms::default(),
            probes.clone(),
        )
        .unwrap();
        tokio::spawn(async move { engine.run(None, || {}).await.unwrap() });
        (h, probes)
    };
    n.0.apply(profile(), "t".into()).await.unwrap();
    let s = until(&n.0, "the new container healthy", |s| s.workloads[0].health == "healthy").await;
    assert_ne!(container(&s, "web"), old, "a new id, not the one of the removed container");
    assert!(n.1.asked("web") >= 1);
}

#[tokio::test]
async fn health_comes_from_the_prober() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let n = start_on(config(dir.path(), Arc::new(clock.clone())));
    n.rt.add_image("reg.example/web:1");
    n.h.apply(
        render(
            "  - name: web\n    kind: container\n    image: reg.example/web:1\n    health: {http: {port: 8080, path: /healthz}, interval: 10s, failure_threshold: 2}\n",
        ),
        "t".into(),
    )
    .await
    .unwrap();
    let s = until(&n.h, "healthy", |s| s.workloads[0].health == "healthy").await;
    assert_eq!(s.workloads[0].health_reason, "in-memory probe: ok");
    assert_eq!(n.probes.asked("web"), 1, "one probe as it started, the next in 10 s");
    n.probes.answer("web", false, "http 127.0.0.1:8080/healthz answered 500");
    clock.advance(Duration::from_secs(10));
    let s = until(&n.h, "probed again", |_| n.probes.asked("web") == 2).await;
    assert_eq!(s.workloads[0].health, "healthy", "one failure is under the threshold of 2");
    clock.advance(Duration::from_secs(10));
    let s = until(&n.h, "unhealthy", |s| s.workloads[0].health == "unhealthy").await;
    assert_eq!(s.workloads[0].reason, "http 127.0.0.1:8080/healthz answered 500");
    assert_eq!(n.probes.asked("web"), 3);
    n.probes.answer("web", true, "http 200 in 1 ms");
    clock.advance(Duration::from_secs(10));
    until(&n.h, "healthy again", |s| s.workloads[0].health == "healthy").await;
}

#[tokio::test]
async fn netd_problems_reach_the_status_the_event_stream_and_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let n = start_on(config(dir.path(), Arc::new(clock.clone())));
    let mut events = n.h.subscribe();
    let outbox = Arc::new(backroom_session::outbox::Outbox::in_memory(Default::default()));
    backroom_nodeagent::connected::feed_outbox(&n.h, outbox.clone(), Arc::new(clock.clone()));
    let t0 = Instant::now();
    while n.net.listeners() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "nodeagent does not listen to netd");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    n.net.fail("uplink eno1", "the link eno1 does not exist", T0 + 5_000);
    let s = until(&n.h, "the uplink's problem", |s| !s.problems.is_empty()).await;
    let p = &s.problems[0];
    assert_eq!((p.source, p.subject.as_str()), (Source::Netd, "uplink eno1"));
    assert_eq!((p.message.as_str(), p.since_ms), ("the link eno1 does not exist", T0 + 5_000));
    // netd says it again (its latest reason): still one problem, one notice.
    n.net.fail("uplink eno1", "the link eno1 is still missing", T0 + 9_000);
    until(&n.h, "the latest reason", |s| {
        s.problems.len() == 1 && s.problems[0].message == "the link eno1 is still missing"
    })
    .await;
    let told = drain(&mut events);
    let failing = notices(&told, "failing", "uplink eno1");
    assert_eq!(failing.len(), 1, "{told:#?}");
    assert_eq!(failing[0].message, "uplink eno1: the link eno1 does not exist");
    let sent = outbox.unsent_after(0, 100);
    let f: Vec<_> = sent.iter().filter(|e| e.kind == "failing").collect();
    assert_eq!(f.len(), 1, "{sent:#?}");
    assert_eq!(f[0].subject, "uplink eno1");
    assert!(f[0].message.contains("eno1 does not exist"), "{:?}", f[0]);

    n.net.recover("uplink eno1", T0 + 60_000);
    let s = until(&n.h, "the problem gone", |s| s.problems.is_empty()).await;
    let back = s.actions.iter().find(|a| a.action == "recovered: uplink eno1").unwrap();
    assert!(back.ok);
    let told = drain(&mut events);
    assert_eq!(notices(&told, "recovered", "uplink eno1").len(), 1, "{told:#?}");
    let sent = outbox.unsent_after(0, 100);
    let r: Vec<_> = sent.iter().filter(|e| e.kind == "recovered").collect();
    assert_eq!(r.len(), 1, "{sent:#?}");
    assert_eq!(r[0].subject, "uplink eno1");
}

#[tokio::test]
async fn losing_netd_is_one_problem_and_what_changed_meanwhile_is_told_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let n = start_on(config(dir.path(), Arc::new(clock.clone())));
    let mut events = n.h.subscribe();
    n.net.fail("uplink eno1", "the link eno1 does not exist", T0);
    let t0 = Instant::now();
    loop {
        // The first snapshot or the event: either way the uplink shows.
        let s = n.h.status().await.unwrap();
        if s.problems.iter().any(|p| p.subject == "uplink eno1") && n.net.listeners() == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{s:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n.net.cut("connection refused");
    let s = until(&n.h, "netd lost", |s| s.problems.iter().any(|p| p.subject == "netd")).await;
    assert_eq!(s.problems[0].subject, "netd", "a lost daemon comes first: {s:#?}");
    let m = &s.problems[0].message;
    assert!(m.starts_with("netd is not answering on the in-memory netd: netd closed"), "{m}");
    // While it is away: three more tries fail (one problem, its count going up), the uplink
    // comes back and another problem starts.
    for tries in 2..=4u32 {
        assert!(clock.wait_for_timers(1, Duration::from_secs(5)).await, "no retry is waiting");
        clock.advance(Duration::from_secs(60));
        until(&n.h, "another failed try", |s| {
            s.problems.iter().any(|p| p.subject == "netd" && p.failures == tries)
        })
        .await;
    }
    {
        let mut st = n.net.state();
        st.problems.clear();
        st.problems.push(backroom_nodeagent::problems::OpenProblem {
            source: Source::Netd,
            subject: "dhcp br-mgmt".into(),
            workload: String::new(),
            message: "no lease".into(),
            since_ms: T0 + 1_000,
            failures: 3,
        });
    }
    n.net.restore();
    assert!(clock.wait_for_timers(1, Duration::from_secs(5)).await);
    clock.advance(Duration::from_secs(60));
    let s = until(&n.h, "netd back", |s| !s.problems.iter().any(|p| p.subject == "netd")).await;
    let subjects: Vec<&str> = s.problems.iter().map(|p| p.subject.as_str()).collect();
    assert_eq!(subjects, ["dhcp br-mgmt"], "{s:#?}");
    let told = drain(&mut events);
    assert_eq!(notices(&told, "failing", "netd").len(), 1, "one notice, not one per retry");
    assert_eq!(notices(&told, "recovered", "netd").len(), 1);
    assert_eq!(notices(&told, "recovered", "uplink eno1").len(), 1, "recovered while away");
    assert_eq!(notices(&told, "failing", "dhcp br-mgmt").len(), 1, "started while away");
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_one_problem_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let n = start_on(config(dir.path(), Arc::new(clock.clone())));
    let mut events = n.h.subscribe();
    n.h.apply(
        render("  - name: orders\n    kind: container\n    image: reg.example/orders:3\n"),
        "t".into(),
    )
    .await
    .unwrap();
    let s = until(&n.h, "the pull problem", |s| !s.problems.is_empty()).await;
    let p = &s.problems[0];
    assert_eq!((p.subject.as_str(), p.workload.as_str()), ("image pull for orders", "orders"));
    assert!(p.message.contains("reg.example/orders:3"), "{p:?}");
    assert!(!s.problems.iter().any(|p| p.subject == "workload orders"), "one problem, not two");
    // It keeps failing on every retry (50 ms, then doubling); it is told once.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(1));
        let before = n.h.status().await.unwrap().problems[0].failures;
        until(&n.h, "another try", |s| s.problems[0].failures > before).await;
    }
    n.rt.add_image("reg.example/orders:3");
    clock.advance(Duration::from_secs(5));
    until(&n.h, "running, problem gone", |s| {
        state(s, "orders") == "running" && s.problems.is_empty()
    })
    .await;
    let told = drain(&mut events);
    assert_eq!(notices(&told, "failing", "image pull for orders").len(), 1, "{told:#?}");
    assert_eq!(notices(&told, "recovered", "image pull for orders").len(), 1);
    // The open problems are kept on disk: a restarted nodeagent neither repeats nor forgets.
    let saved = std::fs::read_to_string(dir.path().join("problems.json")).unwrap();
    assert_eq!(saved.trim(), "[]");
}

#[tokio::test]
async fn vmd_problems_open_at_connect_and_close_on_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    // Open before nodeagent listens: read from vmd's list when it connects.
    let vms = MemoryVms::default();
    vms.fail("nvr", "vm nvr disk", "the base image is missing", T0 - 60_000);
    let (rt, net) = (MemoryRuntime::new(), MemoryNetwork::default());
    let (engine, h) = Engine::with_prober(
        config(dir.path(), Arc::new(clock.clone())),
        rt,
        net,
        vms.clone(),
        MemoryProber::default(),
    )
    .unwrap();
    let mut events = h.subscribe();
    tokio::spawn(async move { engine.run(None, || {}).await.unwrap() });
    let s = until(&h, "vmd's problem", |s| !s.problems.is_empty()).await;
    let p = &s.problems[0];
    assert_eq!((p.source, p.subject.as_str()), (Source::Vmd, "vm nvr disk"));
    assert_eq!(p.since_ms, T0 - 60_000, "since when vmd says, not when nodeagent heard");
    vms.recover("nvr", "vm nvr disk", T0 + 1_000);
    until(&h, "gone", |s| s.problems.is_empty()).await;
    let told = drain(&mut events);
    assert_eq!(notices(&told, "failing", "vm nvr disk").len(), 1);
    let r = notices(&told, "recovered", "vm nvr disk");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].workload, "nvr");
}

/// netd stops answering while its network is applied (its event stream stays open: only the
/// liveness check can tell): the status says so on the network line instead of "applied", one
/// `failing` event however many checks fail, one `recovered` when it answers again, and the
/// desired revision's network is applied again to it.
#[tokio::test]
async fn a_netd_that_stops_answering_is_one_problem_and_gets_the_network_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), backroom_daemon::clock::system());
    cfg.liveness_interval = Duration::from_millis(30);
    cfg.liveness_timeout = Duration::from_millis(20);
    let n = start_on(cfg);
    let mut events = n.h.subscribe();
    n.rt.add_image("reg.example/web:1");
    let p = render("  - {name: web, kind: container, image: reg.example/web:1}\n");
    n.h.apply(p, "test".into()).await.unwrap();
    let s = until(&n.h, "web running", |s| state(s, "web") == "running").await;
    let rev = s.desired.clone();
    assert_eq!(s.network, format!("applied (revision {})", &rev[..12]));
    assert!(s.containers.starts_with("1 of 1 running"), "{}", s.containers);
    assert_eq!(n.net.state().applied, std::slice::from_ref(&rev));

    n.net.state().down = Some("connection refused".into());
    let pings = n.net.state().pings;
    let s = until(&n.h, "netd not answering", |s| s.network.contains("not answering")).await;
    assert!(
        s.network.starts_with("netd not answering since ")
            && s.network.ends_with(&format!(" UTC (last applied revision {})", &rev[..12])),
        "{}",
        s.network
    );
    let p = s.problems.iter().find(|p| p.subject == "netd").expect("a netd problem");
    assert_eq!(p.source, Source::Nodeagent);
    assert!(
        p.message.starts_with("netd is not answering on the in-memory netd: ")
            && p.message.contains("connection refused"),
        "{}",
        p.message
    );
    // Many more checks fail: still one problem, told once.
    while n.net.state().pings < pings + 8 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state(&n.h.status().await.unwrap(), "web"), "running", "containers keep running");

    n.net.restore();
    let s = until(&n.h, "network applied again", |s| {
        !s.problems.iter().any(|p| p.subject == "netd") && s.network.starts_with("applied")
    })
    .await;
    assert_eq!(s.network, format!("applied (revision {})", &rev[..12]));
    until(&n.h, "the second apply", |_| n.net.state().applied.len() == 2).await;
    assert_eq!(n.net.state().applied, [rev.clone(), rev], "the same revision, applied again");
    let told = drain(&mut events);
    assert_eq!(notices(&told, "failing", "netd").len(), 1, "one notice, not one per check");
    let back = notices(&told, "recovered", "netd");
    assert_eq!(back.len(), 1, "{told:#?}");
    assert!(
        back[0].message.starts_with("netd works again (it had failed for "),
        "{}",
        back[0].message
    );
}

/// vmd answers but its libvirt connection fails (vmd says so in List): a `libvirtd` problem,
/// told once, on the VMs line; closed once when vmd says libvirt works again.
#[tokio::test]
async fn libvirtd_out_of_reach_through_vmd_is_one_problem_on_the_vms_line() {
    let dir = tempfile::tempdir().unwrap();
    let (rt, net, vms) = (MemoryRuntime::new(), MemoryNetwork::default(), MemoryVms::default());
    let mut cfg = config(dir.path(), backroom_daemon::clock::system());
    cfg.liveness_interval = Duration::from_millis(30);
    let (engine, h) =
        Engine::with_prober(cfg, rt.clone(), net.clone(), vms.clone(), MemoryProber::default())
            .unwrap();
    tokio::spawn(async move {
        engine.run(None, || {}).await.unwrap();
    });
    let mut events = h.subscribe();
    h.apply(render(VM), "test".into()).await.unwrap();
    let s = until(&h, "VMs applied", |s| s.vms.starts_with("applied")).await;
    let rev = s.desired.clone();
    *vms.libvirt_error.lock().unwrap() = Some("cannot connect to libvirtd: no such file".into());
    let s = until(&h, "libvirtd not answering", |s| s.vms.contains("not answering")).await;
    assert!(
        s.vms.starts_with("libvirtd not answering since ")
            && s.vms.ends_with(&format!("(last applied revision {})", &rev[..12])),
        "{}",
        s.vms
    );
    let p = s.problems.iter().find(|p| p.subject == "libvirtd").expect("a libvirtd problem");
    assert_eq!(
        p.message,
        "libvirtd is not answering: vmd's connection to it fails: cannot connect to libvirtd: no such file"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    *vms.libvirt_error.lock().unwrap() = None;
    let s =
        until(&h, "libvirtd back", |s| !s.problems.iter().any(|p| p.subject == "libvirtd")).await;
    assert!(s.vms.starts_with("applied"), "{}", s.vms);
    let told = drain(&mut events);
    assert_eq!(notices(&told, "failing", "libvirtd").len(), 1, "{told:#?}");
    assert_eq!(notices(&told, "recovered", "libvirtd").len(), 1, "{told:#?}");
}
