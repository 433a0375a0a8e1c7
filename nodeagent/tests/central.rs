//! The real `nodeagent` connected to a real central (in this process, TLS on loopback) with
//! the real containerd: it enrolls with a token, runs the revision central pushes, reports
//! status and events, takes commands, goes back to its last-known-good revision when a new one
//! fails, and keeps its workloads running (and its events) while central is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backroom_api::operator::{
    CreateEnrollTokenRequest, FleetPushRequest, GetCommandRequest, GetStoreRequest,
    ListAlertsRequest, SendCommandRequest, StoreProfile,
};
use backroom_central::app::Settings;
use backroom_central::client::Client;
use backroom_central::server::{Running, ServeConfig, serve};
use backroom_daemon::clock::SystemClock;
use common::image::TestImage;
use common::{Namespace, bin, require_services, unique};

async fn start_central(data: &Path, listen: &str, api: &str) -> Running {
    let mut cfg =
        ServeConfig::new(data.to_path_buf(), listen.parse().unwrap(), api.parse().unwrap());
    cfg.settings =
        Settings { heartbeat_seconds: 1, session_timeout_ms: 5000, ..Settings::default() };
    cfg.alert_interval = Duration::from_millis(300);
    serve(cfg, Arc::new(SystemClock)).await.unwrap()
}

async fn admin(c: &Running, data: &Path) -> Client {
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    backroom_central::client::connect(&format!("https://{}", c.api), &c.ca_pem, &token)
        .await
        .unwrap()
}

fn profile(store: &str, version: &str, workloads: &str) -> (String, String) {
    let text = format!(
        "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: {store}, version: \"{version}\"}}\nworkloads:\n{workloads}"
    );
    let r = backroom_profiles::render_str("t.yaml", &text).unwrap();
    (r.revision.to_string(), r.to_yaml())
}

async fn push(admin: &mut Client, store: &str, (rev, yaml): &(String, String)) {
    let out = admin
        .fleet_push(FleetPushRequest {
            stores: vec![StoreProfile {
                store_id: store.into(),
                revision: rev.clone(),
                profile_yaml: yaml.clone(),
                source: "test".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(out.stores[0].changed);
}

struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nodeagent.log")).unwrap_or_default()
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(bin("nodectl"))
            .arg("--socket")
            .arg(self.dir.join("nodeagent.sock"))
            .args(["--json", "status"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

async fn until<F, Fut>(what: &str, secs: u64, agent: &Agent, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}\nnode status: {:#}\nnodeagent log (tail):\n{}",
            agent.status(),
            agent
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn store(admin: &Client, id: &str) -> backroom_api::operator::GetStoreReply {
    admin
        .clone()
        .get_store(GetStoreRequest { store_id: id.into(), events: 500 })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_node_runs_what_central_pushes_falls_back_and_survives_central_outages() {
    require_services();
    let ns = Namespace::new();
    let data = tempfile::tempdir().unwrap();
    let (listen, api) = (free_port(), free_port());
    let c = start_central(data.path(), &listen, &api).await;
    let mut admin = admin(&c, data.path()).await;
    let store_id = format!("store-t{}", std::process::id());
    let tag = unique("t");
    let web = TestImage::web("central").push("backroom-test/central-web", &tag).await;
    let crasher = TestImage::busybox(&["/bin/sh", "-c", "echo crashing; exit 3"], "c")
        .push("backroom-test/central-crash", &tag)
        .await;
    let web_wl = format!(
        "  - name: web\n    kind: container\n    image: {web}\n    health: {{http: {{port: 8080, path: /index.html}}, interval: 1s, timeout: 1s}}\n"
    );
    let rev1 = profile(&store_id, "1", &web_wl);
    push(&mut admin, &store_id, &rev1).await;

    // Enroll and run: the node gets revision 1 from central and reports it healthy.
    let token = admin
        .create_enroll_token(CreateEnrollTokenRequest {
            store_id: store_id.clone(),
            region: "test".into(),
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("nodeagent.log")).unwrap();
    let child = Command::new(bin("nodeagent"))
        .arg("--socket")
        .arg(dir.path().join("nodeagent.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--netd-socket", "none", "--vmd-socket", "none", "--containerd-namespace", &ns.name])
        .args([
            "--restart-backoff-ms",
            "100",
            "--stop-grace-seconds",
            "2",
            "--apply-deadline",
            "60s",
        ])
        .args(["--central", &format!("https://{listen}"), "--token", &token])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent = Agent { child, dir: dir.path().to_path_buf() };
    until("revision 1 applied and reported", 90, &agent, || {
        let a = admin.clone();
        let (sid, r) = (store_id.clone(), rev1.0.clone());
        async move {
            let s = store(&a, &sid).await.summary.unwrap();
            s.online
                && s.applied_revision == r
                && s.workloads_healthy == 1
                && s.workloads_total == 1
        }
    })
    .await;
    let st = agent.status();
    assert!(st["central"].as_str().unwrap().starts_with("online"), "{st:#}");
    // Key, certificate and CA: one file, replaced whole by each renewal.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("state/central/identity.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A change reaches the node and is applied.
    let rev2 = profile(&store_id, "2", &web_wl);
    push(&mut admin, &store_id, &rev2).await;
    until("revision 2 applied", 60, &agent, || {
        let a = admin.clone();
        let (sid, r) = (store_id.clone(), rev2.0.clone());
        async move { store(&a, &sid).await.summary.unwrap().applied_revision == r }
    })
    .await;

    // A bad revision (a workload that crash-loops) goes back to the last-known-good one.
    let bad = profile(
        &store_id,
        "3",
        &format!(
            "{web_wl}  - name: crasher\n    kind: container\n    image: {crasher}\n    restart: always\n"
        ),
    );
    push(&mut admin, &store_id, &bad).await;
    until("the bad revision is rolled back and reported", 120, &agent, || {
        let a = admin.clone();
        let sid = store_id.clone();
        let good = rev2.0.clone();
        async move {
            let s = store(&a, &sid).await.summary.unwrap();
            s.applied_revision == good
                && s.last_apply_error.contains("went back to the last-known-good revision")
        }
    })
    .await;
    let st = agent.status();
    assert_eq!(
        st["desired_revision"],
        rev2.0.as_str(),
        "the node runs its last-known-good revision again"
    );
    until("an apply_failed alert", 30, &agent, || {
        let mut a = admin.clone();
        async move {
            a.list_alerts(ListAlertsRequest { include_resolved: false, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .groups
                .iter()
                .any(|g| g.kind == "apply_failed")
        }
    })
    .await;

    // A command: restart web, with its result.
    let cmd = admin
        .send_command(SendCommandRequest {
            store_id: store_id.clone(),
            kind: "restart".into(),
            workload: "web".into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    until("the restart is done", 60, &agent, || {
        let mut a = admin.clone();
        let id = cmd.id.clone();
        async move {
            a.get_command(GetCommandRequest { id }).await.unwrap().into_inner().state == "done"
        }
    })
    .await;

    // central goes away: the workload keeps running, events raised meanwhile arrive later.
    c.stop().await;
    until("the node sees central gone", 30, &agent, || {
        let st = agent.status();
        async move { st["central"].as_str().unwrap_or_default().starts_with("offline") }
    })
    .await;
    // Restart policies, health checks and nodectl keep working while central is away, and
    // what happens is recorded for later.
    let out = Command::new(bin("nodectl"))
        .arg("--socket")
        .arg(dir.path().join("nodeagent.sock"))
        .args(["restart", "web"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    until("web healthy again without central", 60, &agent, || {
        let st = agent.status();
        async move {
            st["workloads"][0]["state"] == "running" && st["workloads"][0]["health"] == "healthy"
        }
    })
    .await;

    let c = start_central(data.path(), &listen, &api).await;
    let admin = self::admin(&c, data.path()).await;
    until("the offline events arrive", 60, &agent, || {
        let a = admin.clone();
        let sid = store_id.clone();
        async move {
            let s = store(&a, &sid).await;
            s.summary.unwrap().online
                && s.events.iter().filter(|e| e.kind == "workload_restarted").count() >= 2
        }
    })
    .await;
    let s = store(&admin, &store_id).await;
    let mut seqs: Vec<u64> = s.events.iter().map(|e| e.seq).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no event twice");
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "no event lost: {:?}", s.events);
    for kind in ["apply_done", "apply_failed", "workload_restarted"] {
        assert!(
            s.events.iter().any(|e| e.kind == kind),
            "{kind} missing from {:?}",
            s.events.iter().map(|e| &e.kind).collect::<Vec<_>>()
        );
    }
    c.stop().await;
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}
