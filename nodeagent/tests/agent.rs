//! The `nodeagent` and `nodectl` binaries against the real containerd: kill -9 of nodeagent
//! leaves containers running and the restarted agent adopts them without restarting them
//! (while it does restart one that died meanwhile), the sample fleet's coffee shop included;
//! `depends_on` and exec probes; logs and restart through nodectl; an OCI archive imports and
//! runs with no registry reachable; a profile that is invalid or does not fit is refused whole.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backroom_nodeagent::runtime::{Runtime, TaskState};
use backroom_profiles::Workload;
use common::image::TestImage;
use common::{Namespace, bin, require_services, unique};
use serde_json::Value;

struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    args: Vec<String>,
}

impl Agent {
    fn start(ns: &Namespace, dir: &Path, profile: Option<&Path>) -> Agent {
        let mut args = vec![
            "--socket".to_string(),
            dir.join("nodeagent.sock").display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--netd-socket".into(),
            "none".into(),
            "--vmd-socket".into(),
            "none".into(),
            "--containerd-namespace".into(),
            ns.name.clone(),
            "--restart-backoff-ms".into(),
            "200".into(),
            "--stop-grace-seconds".into(),
            "2".into(),
        ];
        if let Some(p) = profile {
            args.push("--profile".into());
            args.push(p.display().to_string());
        }
        let mut a = Agent { child: None, dir: dir.to_path_buf(), args };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nodeagent.log"))
            .unwrap();
        let child = Command::new(bin("nodeagent"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        while nodectl(&self.dir, &["status"]).0 != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "nodeagent did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nodeagent.log")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let (code, out, err) = nodectl(&self.dir, &["--json", "status"]);
        assert_eq!(code, 0, "nodectl status: {err}");
        serde_json::from_str(&out).unwrap()
    }

    /// The state files the agent wrote.
    fn state_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("state").join(name)).unwrap_or_default()
    }

    fn until(&self, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; status: {s:#}\nnodeagent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn nodectl(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("nodectl"))
        .arg("--socket")
        .arg(dir.join("nodeagent.sock"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn workload<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["workloads"].as_array().unwrap().iter().find(|w| w["name"] == name).unwrap()
}

fn healthy(s: &Value, name: &str) -> bool {
    let w = workload(s, name);
    w["state"] == "running" && w["health"] == "healthy"
}

fn profile_text(workloads: &str) -> String {
    format!(
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: agent-test, version: \"1\"}}\nworkloads:\n{workloads}"
    )
}

async fn pids(ns: &Namespace) -> BTreeMap<String, u32> {
    let c = common::containerd(&ns.name).await;
    c.list()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| match o.task {
            TaskState::Running { pid } => Some((o.id, pid)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leaves_containers_running_and_the_new_agent_adopts_them() {
    require_services();
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let tag = unique("t");
    let web = TestImage::web("adopt").push("backroom-test/adopt-web", &tag).await;
    let worker = TestImage::busybox(
        &["/bin/sh", "-c", "echo worker started; exec /bin/busybox sleep 100000"],
        "w",
    )
    .push("backroom-test/adopt-worker", &tag)
    .await;
    let canary = TestImage::busybox(&["/bin/busybox", "sleep", "100000"], "c")
        .push("backroom-test/adopt-canary", &tag)
        .await;
    let profile = dir.path().join("profile.yaml");
    std::fs::write(
        &profile,
        profile_text(&format!(
            "  - name: web\n    kind: container\n    image: {web}\n    health: {{http: {{port: 8080, path: /index.html}}, interval: 1s, timeout: 1s}}\n  - name: worker\n    kind: container\n    image: {worker}\n    depends_on: [web]\n    health: {{exec: [/bin/sh, -c, test -f /www/index.html], interval: 1s, timeout: 2s}}\n  - name: canary\n    kind: container\n    image: {canary}\n"
        )),
    )
    .unwrap();
    let mut agent = Agent::start(&ns, dir.path(), Some(&profile));
    let s = agent.until("all up", 60, |s| {
        healthy(s, "web") && healthy(s, "worker") && workload(s, "canary")["state"] == "running"
    });
    assert!(workload(&s, "worker")["health_reason"].as_str().unwrap().starts_with("exec /bin/sh"));
    let started: Vec<&str> = s["actions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|a| a["action"].as_str().unwrap().starts_with("start "))
        .map(|a| a["workload"].as_str().unwrap())
        .filter(|w| *w != "canary")
        .collect();
    assert_eq!(started, vec!["web", "worker"], "worker waits for web to be healthy");
    let ids_before: Vec<String> = ["web", "worker"]
        .iter()
        .map(|n| workload(&s, n)["container_id"].as_str().unwrap().to_string())
        .collect();
    let mut pids_before = pids(&ns).await;
    assert_eq!(pids_before.len(), 3);
    let canary_id = workload(&s, "canary")["container_id"].as_str().unwrap().to_string();
    let canary_pid = pids_before.remove(&canary_id).unwrap();

    agent.kill9();
    let mut now = pids(&ns).await;
    assert_eq!(now.remove(&canary_id), Some(canary_pid));
    assert_eq!(now, pids_before, "the containers outlive nodeagent");
    // The positive control: a container that does die while nodeagent is down must be found
    // dead and restarted by the new agent; the others must be found alive and left alone.
    let c = common::containerd(&ns.name).await;
    // SAFETY: kill(2) on a pid containerd reported for our own test container.
    assert_eq!(unsafe { libc::kill(i32::try_from(canary_pid).unwrap(), libc::SIGKILL) }, 0);
    common::wait_for("the canary dead", Duration::from_secs(10), async || {
        c.list()
            .await
            .unwrap()
            .into_iter()
            .any(|o| o.id == canary_id && matches!(o.task, TaskState::Stopped { .. }))
            .then_some(())
    })
    .await;

    agent.spawn();
    let s = agent.until("all up again, the canary restarted", 30, |s| {
        healthy(s, "web")
            && healthy(s, "worker")
            && workload(s, "canary")["restarts"] == 1
            && workload(s, "canary")["state"] == "running"
    });
    for (n, id) in ["web", "worker"].iter().zip(&ids_before) {
        let w = workload(&s, n);
        assert_eq!(w["container_id"].as_str().unwrap(), id, "{n} adopted, not replaced");
        assert_eq!(w["restarts"], 0);
    }
    let mut now = pids(&ns).await;
    let new_canary = workload(&s, "canary")["container_id"].as_str().unwrap().to_string();
    assert_ne!(new_canary, canary_id);
    assert!(now.remove(&new_canary).is_some());
    assert_eq!(now, pids_before, "no other container was restarted");
    assert!(
        s["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"].as_str().unwrap().starts_with("start web")),
        "action results are kept across restarts: {s:#}"
    );

    // The log reader came back too, and nodectl restart restarts.
    let (code, out, err) = nodectl(dir.path(), &["logs", "worker"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" out worker started"), "{out}");
    let (code, out, err) = nodectl(dir.path(), &["restart", "worker"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restart of worker requested"), "{out}");
    agent.until("worker restarted", 30, |s| {
        let w = workload(s, "worker");
        w["restarts"] == 1 && w["container_id"] != ids_before[1].as_str() && healthy(s, "worker")
    });
    let (code, text, _) = nodectl(dir.path(), &["status"]);
    assert_eq!(code, 0);
    assert!(text.contains("profile agent-test 1"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("web ") && l.contains("running") && l.contains("healthy")),
        "{text}"
    );
    let (code, _, err) = nodectl(dir.path(), &["restart", "nosuch"]);
    assert_ne!(code, 0);
    assert!(err.contains("no workload named `nosuch`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_archive_imports_and_runs_with_no_registry_and_bad_profiles_are_refused() {
    require_services();
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&ns, dir.path(), None);
    assert_eq!(agent.status()["desired_revision"], "");

    // Nothing listens on port 1: the registry of this image is down.
    let name = format!("127.0.0.1:1/backroom-test/offline:{}", unique("t"));
    let image = TestImage::web("offline");
    let archive = dir.path().join("offline.tar");
    image.write_archive(&archive, &name);
    let (code, out, err) = nodectl(dir.path(), &["image", "import", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("imported {name} ({})", image.digest())), "{out}");

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        profile_text(&format!(
            "  - name: offline\n    kind: container\n    image: {name}@{}\n    health: {{tcp: {{port: 8080}}, interval: 1s}}\n",
            image.digest()
        )),
    )
    .unwrap();
    let (code, out, err) = nodectl(dir.path(), &["--json", "apply", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let applied: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(applied["changed"], true);
    let s = agent.until("the imported image running", 60, |s| healthy(s, "offline"));
    assert_eq!(s["desired_revision"], applied["revision"]);
    assert!(workload(&s, "offline")["health_reason"].as_str().unwrap().starts_with("tcp"));

    // Refused whole: invalid, then too big for this machine. The running revision stays.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, profile_text("  - name: offline\n    kind: container\n")).unwrap();
    let (code, _, err) = nodectl(dir.path(), &["apply", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("refused"), "{err}");
    let huge = dir.path().join("huge.yaml");
    std::fs::write(
        &huge,
        profile_text(&format!("  - name: offline\n    kind: container\n    image: {name}\n    resources: {{memory: 100Ti}}\n")),
    )
    .unwrap();
    let (code, _, err) = nodectl(dir.path(), &["apply", huge.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("profile refused") && err.contains("too much"), "{err}");
    let s = agent.status();
    assert_eq!(s["desired_revision"], applied["revision"]);
    assert!(healthy(&s, "offline"));
}

/// busybox stand-ins for the coffee shop's images: an HTTP server on the port its health check
/// asks, answering `/healthz`.
fn stand_in(port: u16, extra: &str) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("echo ok > /www/healthz; {extra}exec /bin/busybox httpd -f -p {port} -h /www"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_coffee_shop_survives_kill_9_and_is_adopted() {
    require_services();
    let ns = Namespace::new();
    let dir = tempfile::tempdir().unwrap();
    let tag = unique("t");
    // store-0042 as the fleet renders it: its workloads' resources (cpus 0.25 and 0.5), env,
    // volumes, health checks, depends_on, restart and update settings are kept. Replaced is
    // only what this machine cannot have: the images (busybox stand-ins on the loopback
    // registry, serving the ports and paths the health checks ask), the NVR VM (no vmd here:
    // `--vmd-socket none`), the store's networks (no netd: `--netd-socket none`).
    let store =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/fleet/stores/store-0042.yaml");
    let mut r = backroom_profiles::render_file(&store).unwrap_or_else(|e| panic!("{e}"));
    r.profile.workloads.retain(|w| matches!(w, Workload::Container(_)));
    r.profile.network = Default::default();
    let fractional = r
        .profile
        .containers()
        .filter(|c| c.resources.and_then(|l| l.cpus).is_some_and(|c| c.millis() % 1000 != 0));
    assert_eq!(fractional.count(), 2, "menu and orders ask for 0.25 and 0.5 cpus");
    let menu_image = TestImage::busybox(
        &stand_in(8080, "").iter().map(String::as_str).collect::<Vec<_>>(),
        "menu",
    )
    .push("backroom-test/fleet-menu", &tag)
    .await;
    let orders_image = TestImage::busybox(&["/bin/busybox", "sleep", "100000"], "orders")
        .push("backroom-test/fleet-orders", &tag)
        .await;
    for w in &mut r.profile.workloads {
        let Workload::Container(c) = w else { continue };
        c.networks.clear();
        match c.name.as_str() {
            "menu" => c.image = Some(menu_image.parse().unwrap()),
            "orders" => {
                c.image = Some(orders_image.parse().unwrap());
                // Its command runs the real orders binary; the stand-in's proves the env and
                // the volume instead.
                c.command = stand_in(8443, "echo \"$TZ\" > \"$ORDERS_DB\"; ");
            }
            other => panic!("store-0042 has a container {other} this test does not know"),
        }
    }
    let text = r.to_yaml();
    let rendered = backroom_profiles::render_str("store-0042.yaml", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let profile = dir.path().join("store-0042.yaml");
    std::fs::write(&profile, rendered.to_yaml()).unwrap();

    let mut agent = Agent::start(&ns, dir.path(), Some(&profile));
    let s = agent.until("the coffee shop healthy", 90, |s| {
        healthy(s, "menu") && healthy(s, "orders") && s["applied_revision"] == s["desired_revision"]
    });
    assert_eq!(s["profile_name"], "coffee-shop");
    let started: Vec<&str> = s["actions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|a| a["action"].as_str().unwrap().starts_with("start "))
        .map(|a| a["workload"].as_str().unwrap())
        .collect();
    assert_eq!(started, vec!["menu", "orders"], "orders depends on menu");
    let tz =
        std::fs::read_to_string(agent.dir.join("state/volumes/orders-data/orders.db")).unwrap();
    assert_eq!(tz, "America/Los_Angeles\n", "the profile's env, written to its volume");
    let records = agent.state_file("workloads.json");
    assert!(records.contains("0.25") && records.contains("0.5"), "{records}");
    let ids: Vec<String> = ["menu", "orders"]
        .iter()
        .map(|n| workload(&s, n)["container_id"].as_str().unwrap().to_string())
        .collect();
    let pids_before = pids(&ns).await;
    assert_eq!(pids_before.len(), 2);

    agent.kill9();
    assert_eq!(pids(&ns).await, pids_before, "the containers outlive nodeagent");
    // It starts again from what it wrote (the bug this test is for: it could not read back
    // the fractional cpus of its own workloads.json), and adopts what runs.
    agent.spawn();
    let s =
        agent.until("the coffee shop adopted", 60, |s| healthy(s, "menu") && healthy(s, "orders"));
    for (n, id) in ["menu", "orders"].iter().zip(&ids) {
        let w = workload(&s, n);
        assert_eq!(w["container_id"].as_str().unwrap(), id, "{n} adopted, not replaced");
        assert_eq!(w["restarts"], 0, "{n}");
    }
    assert_eq!(pids(&ns).await, pids_before, "no container was restarted");
    assert!(agent.log().contains("adopted container"), "{}", agent.log());
    assert_eq!(s["problems"], serde_json::json!([]), "{s:#}");
}
