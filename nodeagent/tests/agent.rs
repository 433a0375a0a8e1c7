//! The `nodeagent` and `nodectl` binaries against the real containerd: kill -9 of nodeagent
//! leaves containers running and the restarted agent adopts them without restarting them;
//! `depends_on` and exec probes; logs and restart through nodectl; an OCI archive imports and
//! runs with no registry reachable; a profile that is invalid or does not fit is refused whole.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backroom_nodeagent::runtime::{Runtime, TaskState};
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
    let profile = dir.path().join("profile.yaml");
    std::fs::write(
        &profile,
        profile_text(&format!(
            "  - name: web\n    kind: container\n    image: {web}\n    health: {{http: {{port: 8080, path: /index.html}}, interval: 1s, timeout: 1s}}\n  - name: worker\n    kind: container\n    image: {worker}\n    depends_on: [web]\n    health: {{exec: [/bin/sh, -c, test -f /www/index.html], interval: 1s, timeout: 2s}}\n"
        )),
    )
    .unwrap();
    let mut agent = Agent::start(&ns, dir.path(), Some(&profile));
    let s = agent.until("both healthy", 60, |s| healthy(s, "web") && healthy(s, "worker"));
    assert!(workload(&s, "worker")["health_reason"].as_str().unwrap().starts_with("exec /bin/sh"));
    let started: Vec<&str> = s["actions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|a| a["action"].as_str().unwrap().starts_with("start "))
        .map(|a| a["workload"].as_str().unwrap())
        .collect();
    assert_eq!(started, vec!["web", "worker"], "worker waits for web to be healthy");
    let ids_before: Vec<String> = ["web", "worker"]
        .iter()
        .map(|n| workload(&s, n)["container_id"].as_str().unwrap().to_string())
        .collect();
    let pids_before = pids(&ns).await;
    assert_eq!(pids_before.len(), 2);

    agent.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pids(&ns).await, pids_before, "the containers outlive nodeagent");

    agent.spawn();
    let s = agent.until("both healthy again", 30, |s| healthy(s, "web") && healthy(s, "worker"));
    for (n, id) in ["web", "worker"].iter().zip(&ids_before) {
        let w = workload(&s, n);
        assert_eq!(w["container_id"].as_str().unwrap(), id, "{n} adopted, not replaced");
        assert_eq!(w["restarts"], 0);
    }
    assert_eq!(pids(&ns).await, pids_before, "no container was restarted");
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
