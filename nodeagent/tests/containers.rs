//! nodeagent's engine against the real containerd and the loopback registry: HTTP served from
//! a container on its segment address, the OCI spec seen from inside, a memory limit enforced,
//! a crash loop backed off (on a manual clock: the real containerd, time moved by the test),
//! start-first updates promoted or rolled back.
//! Needs `scripts/install-deps` and `scripts/start-services` (containerd, the registry).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backroom_daemon::{Clock, ManualClock, SharedClock};
use backroom_nodeagent::engine::{Config, Engine, EngineHandle, Status, WorkloadView};
use backroom_nodeagent::network::Network;
use backroom_nodeagent::restart::Timing;
use backroom_nodeagent::vms::NoVms;
use common::image::TestImage;
use common::net::{TestNetwork, http_get_in};
use common::{Namespace, require_services, unique, wait_for};

const HOST_RESOLV: &str = "search store.test\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n";

struct Node {
    handle: EngineHandle,
    state: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn node<N: Network>(ns: &Namespace, net: N, backoff_ms: u64) -> Node {
    node_on(ns, net, backoff_ms, backroom_daemon::clock::system()).await
}

/// A node whose engine reads time from `clock`.
async fn node_on<N: Network>(ns: &Namespace, net: N, backoff_ms: u64, clock: SharedClock) -> Node {
    let state = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(state.path().to_path_buf(), state.path().join("volumes"));
    cfg.restart = Timing::with_first_delay(Duration::from_millis(backoff_ms));
    cfg.clock = clock.clone();
    cfg.stop_grace = Duration::from_secs(2);
    cfg.tick = Duration::from_millis(200);
    cfg.image_grace_ms = 0;
    // The host's resolv.conf as a test stand-in: a loopback resolver and a reachable one.
    cfg.resolv_conf = state.path().join("host-resolv.conf");
    std::fs::write(&cfg.resolv_conf, HOST_RESOLV).unwrap();
    let runtime = common::containerd(&ns.name).await.with_clock(clock);
    let (engine, handle) = Engine::new(cfg, runtime, net, NoVms).unwrap();
    let task = tokio::spawn(async move {
        engine.run(None, || {}).await.unwrap();
    });
    Node { handle, state, task }
}

fn profile(workloads: &str) -> backroom_profiles::Rendered {
    let text = format!(
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: test}}\nnetwork:\n  segments:\n    - {{name: apps, internal: true, subnet: 10.250.0.0/16}}\nworkloads:\n{workloads}"
    );
    backroom_profiles::render_str("test.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn workload<'a>(s: &'a Status, name: &str) -> &'a WorkloadView {
    s.workloads
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no workload {name} in {s:#?}"))
}

async fn until(node: &Node, what: &str, secs: u64, f: impl Fn(&Status) -> bool) -> Status {
    let t0 = std::time::Instant::now();
    loop {
        let s = node.handle.status().await.unwrap();
        if f(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}; the node says {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_is_served_on_the_segment_address_with_the_profile_spec() {
    require_services();
    let ns = Namespace::new();
    let net = TestNetwork::new(7);
    let hub = net.hub_path();
    let image = TestImage::busybox(
        &[
            "/bin/sh",
            "-c",
            "hostname; cat /etc/resolv.conf /etc/hosts; echo A=$A; grep NoNewPrivs /proc/self/status; grep CapEff /proc/self/status; echo kept > /data/hello; exec /bin/busybox httpd -f -p 8080 -h /www",
        ],
        "version web-1\n",
    );
    let reference = image.push("backroom-test/web", &unique("t")).await;
    let node = node(&ns, net, 500).await;
    let p = profile(&format!(
        "  - name: web\n    kind: container\n    image: {reference}\n    networks: [{{segment: apps}}]\n    env: {{A: from-profile}}\n    volumes: [{{name: webdata, path: /data}}]\n    resources: {{cpus: 0.5, memory: 64Mi}}\n    health: {{http: {{port: 8080, path: /index.html}}, interval: 1s, timeout: 1s}}\n"
    ));
    let out = node.handle.apply(p, "test".into()).await.unwrap();
    assert!(out.changed);
    let s = until(&node, "web running and healthy", 60, |s| {
        let w = workload(s, "web");
        w.state == "running" && w.health == "healthy"
    })
    .await;
    let w = workload(&s, "web");
    assert!(w.health_reason.starts_with("http 200"), "{w:?}");
    let addr = w.addresses[0].split('/').next().unwrap().to_string();
    let page = http_get_in(&hub, &format!("{addr}:8080"), "/index.html").unwrap();
    assert!(page.contains("version web-1"), "{page}");
    assert_eq!(s.applied, s.desired, "applied once everything runs");

    let kept = std::fs::read_to_string(node.state.path().join("volumes/webdata/hello")).unwrap();
    assert_eq!(kept, "kept\n");
    let log = std::fs::read_to_string(node.state.path().join("logs/web.log")).unwrap();
    assert!(log.contains(" out web\n"), "hostname is the workload's name: {log}");
    assert!(log.contains("A=from-profile"), "{log}");
    assert!(
        log.contains(" out search store.test\n") && log.contains(" out nameserver 192.0.2.53\n"),
        "the host's resolv.conf: {log}"
    );
    assert!(!log.contains("127.0.0.53"), "no loopback nameserver: {log}");
    assert!(log.contains(" out 127.0.1.1\tweb\n"), "/etc/hosts names the workload: {log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    let cap_eff = log.lines().find(|l| l.contains("CapEff")).unwrap();
    let caps = u64::from_str_radix(cap_eff.rsplit('\t').next().unwrap().trim(), 16).unwrap();
    assert_eq!(caps & (1 << 13), 0, "no CAP_NET_RAW: {cap_eff}");
    assert_eq!(caps & (1 << 21), 0, "no CAP_SYS_ADMIN: {cap_eff}");
    assert_ne!(caps & (1 << 10), 0, "CAP_NET_BIND_SERVICE: {cap_eff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_is_enforced_and_the_policy_restarts() {
    require_services();
    let ns = Namespace::new();
    let image = TestImage::busybox(
        &["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        "",
    );
    let reference = image.push("backroom-test/hog", &unique("t")).await;
    let node = node(&ns, backroom_nodeagent::network::NoNetwork, 300).await;
    let mut events = node.handle.subscribe();
    let p = profile(&format!(
        "  - name: hog\n    kind: container\n    image: {reference}\n    resources: {{memory: 16Mi}}\n    restart: always\n"
    ));
    node.handle.apply(p, "test".into()).await.unwrap();
    let oom = wait_for("an out-of-memory exit", Duration::from_secs(60), async || {
        match events.try_recv() {
            Ok(e) if e.kind == "exit" => Some(e.message),
            _ => None,
        }
    })
    .await;
    assert!(oom.contains("out of memory"), "{oom}");
    until(&node, "hog restarted by policy", 60, |s| workload(s, "hog").restarts >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_is_detected_and_backed_off() {
    require_services();
    let ns = Namespace::new();
    let image = TestImage::busybox(&["/bin/busybox", "false"], "");
    let reference = image.push("backroom-test/crash", &unique("t")).await;
    // The real containerd, with time in the test's hands: a restart can only come when the
    // test moves the clock past the backoff.
    let clock = ManualClock::new(backroom_daemon::SystemClock.now_ms());
    let node =
        node_on(&ns, backroom_nodeagent::network::NoNetwork, 100, Arc::new(clock.clone())).await;
    let p = profile(&format!("  - name: crash\n    kind: container\n    image: {reference}\n"));
    node.handle.apply(p, "test".into()).await.unwrap();
    let timing = Timing::with_first_delay(Duration::from_millis(100));
    // Each exit waits out its backoff (100 ms, doubling) and no more: the restart comes once the
    // clock reaches it. `took` is how long a permitted restart takes here, in real time.
    let mut took = Duration::ZERO;
    for exits in 1..=4u32 {
        until(&node, "the exit booked", 60, |s| {
            let w = workload(s, "crash");
            w.restarts == exits - 1 && w.reason.contains("next try in")
        })
        .await;
        let t0 = Instant::now();
        clock.advance(Duration::from_millis(timing.delay_ms(exits)));
        until(&node, "restarted once its backoff is over", 60, |s| {
            workload(s, "crash").restarts == exits
        })
        .await;
        took = took.max(t0.elapsed());
    }
    // The fifth exit in a row: a crash loop, shown as such and told once as a problem.
    let s = until(&node, "a crash loop", 60, |s| {
        let w = workload(s, "crash");
        w.restarts == 4 && w.reason.contains("crash loop")
    })
    .await;
    let w = workload(&s, "crash");
    assert_eq!(w.state, "failed");
    assert!(
        w.reason.contains("exited with code 1") && w.reason.contains("next try in 2s"),
        "{w:?}"
    );
    let problem = s.problems.iter().find(|p| p.subject == "workload crash").expect("a problem");
    assert!(problem.message.starts_with("crash loop: 5 exits in a row"), "{problem:?}");
    // Backed off: 1.6 s now. Just short of it, no restart, for three times as long as a
    // permitted restart took above...
    clock.advance(Duration::from_millis(timing.delay_ms(5) - 1));
    let window = (took * 3).max(Duration::from_secs(1));
    tokio::time::sleep(window).await;
    let w = workload(&node.handle.status().await.unwrap(), "crash").clone();
    assert_eq!(w.restarts, 4, "restarted before its backoff was over (waited {window:?})");
    // ...and one millisecond later it is.
    clock.advance(Duration::from_millis(1));
    until(&node, "restarted after the crash-loop backoff", 60, |s| {
        workload(s, "crash").restarts == 5
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_updates_promote_a_healthy_version_and_roll_back_a_broken_one() {
    require_services();
    let ns = Namespace::new();
    let net = TestNetwork::new(8);
    let hub = net.hub_path();
    let tag = unique("t");
    let v1 = TestImage::web("v1").push("backroom-test/upd", &format!("{tag}-1")).await;
    let v2 = TestImage::web("v2").push("backroom-test/upd", &format!("{tag}-2")).await;
    let broken = TestImage::busybox(&["/bin/busybox", "false"], "")
        .push("backroom-test/upd", &format!("{tag}-3"))
        .await;
    let node = node(&ns, net, 500).await;
    let web = |image: &str| {
        profile(&format!(
            "  - name: web\n    kind: container\n    image: {image}\n    networks: [{{segment: apps}}]\n    health: {{http: {{port: 8080, path: /index.html}}, interval: 1s, timeout: 1s, failure_threshold: 2}}\n    update: start-first\n"
        ))
    };
    node.handle.apply(web(&v1), "v1".into()).await.unwrap();
    let s = until(&node, "v1 healthy", 60, |s| workload(s, "web").health == "healthy").await;
    let first = workload(&s, "web").clone();
    let addr = format!("{}:8080", first.addresses[0].split('/').next().unwrap());

    node.handle.apply(web(&v2), "v2".into()).await.unwrap();
    let s = until(&node, "v2 promoted", 60, |s| {
        let w = workload(s, "web");
        w.image == v2 && w.state == "running" && w.health == "healthy"
    })
    .await;
    let second = workload(&s, "web").clone();
    assert_ne!(second.container_id, first.container_id);
    assert_eq!(second.addresses, first.addresses, "the stable address moved to the new version");
    let page = http_get_in(&hub, &addr, "/index.html").unwrap();
    assert!(page.contains("version v2"), "{page}");
    assert!(
        s.actions.iter().any(|a| a.action.starts_with("promote the new version of web") && a.ok)
    );

    node.handle.apply(web(&broken), "broken".into()).await.unwrap();
    let s = until(&node, "the broken version rolled back", 60, |s| {
        s.actions.iter().any(|a| a.action.starts_with("roll web back"))
    })
    .await;
    let w = workload(&s, "web");
    assert_eq!(w.container_id, second.container_id, "v2 kept running, untouched");
    assert_eq!(w.image, v2);
    // It stays on v2, says why, and does not retry the broken version: two more health checks
    // of v2 (each answer makes the engine plan again) and the broken one was not started again.
    let checked = w.health_checked_ms;
    let starts = |s: &Status| {
        s.actions.iter().filter(|a| a.action.starts_with("start the new version of web")).count()
    };
    let tried = starts(&s);
    let s = until(&node, "v2 checked twice more", 30, |s| {
        workload(s, "web").health_checked_ms > checked + 1000
    })
    .await;
    assert_eq!(starts(&s), tried, "the broken version was tried again");
    let w = workload(&s, "web");
    assert_eq!(w.container_id, second.container_id);
    assert!(w.reason.contains("rolled back"), "{w:?}");
    let page = http_get_in(&hub, &addr, "/index.html").unwrap();
    assert!(page.contains("version v2"), "{page}");
    assert_eq!(s.last_known_good.len(), 64);
    assert_ne!(s.applied, s.desired, "the broken revision is not applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_first_updates_collect_old_images_and_restore_the_previous_version() {
    require_services();
    let ns = Namespace::new();
    let tag = unique("t");
    let mut refs = Vec::new();
    for v in ["1", "2", "3"] {
        refs.push(TestImage::web(v).push("backroom-test/sf", &format!("{tag}-{v}")).await);
    }
    let broken = TestImage::busybox(&["/bin/busybox", "false"], "")
        .push("backroom-test/sf", &format!("{tag}-4"))
        .await;
    let node = node(&ns, backroom_nodeagent::network::NoNetwork, 500).await;
    let batch = |image: &str| {
        profile(&format!(
            "  - name: batch\n    kind: container\n    image: {image}\n    health: {{tcp: {{port: 8080}}, interval: 1s, timeout: 1s}}\n    update: stop-first\n"
        ))
    };
    for r in &refs {
        node.handle.apply(batch(r), r.clone()).await.unwrap();
        until(&node, "the version healthy", 60, |s| {
            let w = workload(s, "batch");
            w.image == *r && w.health == "healthy" && s.applied == s.desired
        })
        .await;
    }
    // Current (v3) and previous (v2) are kept; v1 is collected.
    let rt = common::containerd(&ns.name).await;
    let names = wait_for("v1 collected", Duration::from_secs(30), async || {
        let names: Vec<String> = backroom_nodeagent::runtime::Runtime::images(&rt)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        if names.contains(&refs[0]) { None } else { Some(names) }
    })
    .await;
    assert!(names.contains(&refs[1]) && names.contains(&refs[2]), "{names:?}");

    let before = workload(&node.handle.status().await.unwrap(), "batch").container_id.clone();
    node.handle.apply(batch(&broken), "broken".into()).await.unwrap();
    let s = until(&node, "v3 restored", 60, |s| {
        let w = workload(s, "batch");
        s.actions.iter().any(|a| a.action.starts_with("roll batch back"))
            && w.image == refs[2]
            && w.health == "healthy"
    })
    .await;
    let w = workload(&s, "batch");
    assert_ne!(
        w.container_id, before,
        "stop-first: the old container was stopped, a new one restored"
    );
    assert!(w.reason.contains("rolled back"), "{w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_sharing_a_fresh_image_pull_it_side_by_side() {
    require_services();
    let ns = Namespace::new();
    let image = TestImage::busybox(&["/bin/busybox", "sleep", "100000"], "shared");
    let reference = image.push("backroom-test/shared", &unique("t")).await;
    let node = node(&ns, backroom_nodeagent::network::NoNetwork, 500).await;
    let mut w = String::new();
    for i in 0..4 {
        w.push_str(&format!("  - name: s{i}\n    kind: container\n    image: {reference}\n"));
    }
    node.handle.apply(profile(&w), "shared".into()).await.unwrap();
    let s =
        until(&node, "all four running", 60, |s| s.workloads.iter().all(|w| w.state == "running"))
            .await;
    assert!(s.workloads.iter().all(|w| w.image_digest == image.digest()), "{s:#?}");
    assert!(s.actions.iter().all(|a| a.ok), "{:#?}", s.actions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_layer_directory_is_unpacked_again_on_start() {
    use backroom_nodeagent::runtime::{CreateRequest, Runtime};
    use containerd_client::services::v1::snapshots::{
        PrepareSnapshotRequest, RemoveSnapshotRequest, snapshots_client::SnapshotsClient,
    };
    require_services();
    let ns = Namespace::new();
    let reference = TestImage::busybox(&["/bin/busybox", "sleep", "100000"], "lost")
        .push("backroom-test/lost", &unique("t"))
        .await;
    let rt = common::containerd(&ns.name).await;
    let image = rt.ensure_image(&reference.parse().unwrap()).await.unwrap();

    // Find the layer's directory through a throwaway snapshot's mounts, then lose it, as
    // containerd 1.6's GC sometimes does.
    let mut snaps =
        SnapshotsClient::new(containerd_client::connect(common::CONTAINERD_SOCKET).await.unwrap());
    fn with_ns<T>(ns: &str, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut().insert("containerd-namespace", ns.parse().unwrap());
        r
    }
    let mounts = snaps
        .prepare(with_ns(
            &ns.name,
            PrepareSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: "look".into(),
                parent: image.chain_id.clone(),
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let mut last = None;
    for _ in 0..20 {
        let r = snaps
            .remove(with_ns(
                &ns.name,
                RemoveSnapshotRequest { snapshotter: "overlayfs".into(), key: "look".into() },
            ))
            .await;
        match r {
            Ok(_) => {
                last = None;
                break;
            }
            // Not found on a retry: an earlier attempt answered an error but did remove it.
            Err(e) if e.code() == tonic::Code::NotFound => {
                last = None;
                break;
            }
            // containerd answers "unavailable" while its GC holds the snapshotter.
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.is_none(), "cannot remove the throwaway snapshot: {last:?}");
    let lower =
        mounts[0].options.iter().find_map(|o| o.strip_prefix("lowerdir=")).unwrap().to_string();
    std::fs::remove_dir_all(&lower).unwrap();

    let state = tempfile::tempdir().unwrap();
    let logs = backroom_nodeagent::logs::Logs::new(state.path(), backroom_daemon::clock::system());
    let (stdout, stderr) = logs.prepare("lost.1").unwrap();
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(vec!["/bin/busybox".into(), "sleep".into(), "100000".into()]));
    spec.set_process(Some(process));
    spec.set_hostname(Some("lost".into()));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_cgroups_path(Some(rt.cgroups_path("lost.1").into()));
    spec.set_linux(Some(linux));
    let pids = logs.pump("lost", "lost.1").unwrap();
    let pid = rt
        .start(CreateRequest {
            id: "lost.1".into(),
            image,
            spec,
            labels: [("backroom.workload".to_string(), "lost".to_string())].into(),
            stdout,
            stderr,
        })
        .await
        .expect("the start unpacks the image again and succeeds");
    assert!(pid > 0);
    let listed = rt.list().await.unwrap();
    assert!(
        listed.iter().any(|o| o.id == "lost.1"
            && matches!(o.task, backroom_nodeagent::runtime::TaskState::Running { .. })),
        "{listed:?}"
    );
    for p in pids {
        p.abort();
    }
}
