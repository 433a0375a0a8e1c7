//! The real `nodeagent` provisioned from `provision.toml` with `--provision`, against a real
//! central (in this process, TLS on loopback) and the real containerd: the first candidate is
//! missing, the second is used and the node enrolls with the token in it; restarted with the
//! file gone, or with a wrong one, the enrolled node reaches central again; a wrong file stops
//! a node that has not enrolled, naming the file, line and column.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backroom_api::operator::{CreateEnrollTokenRequest, GetStoreRequest};
use backroom_central::app::Settings;
use backroom_central::client::Client;
use backroom_central::server::{Running, ServeConfig, serve};
use backroom_daemon::clock::SystemClock;
use backroom_nodeagent::provision::Record;
use common::{CONTAINERD_SOCKET, Namespace, bin};

async fn start_central(data: &Path, listen: &str, api: &str) -> Running {
    let mut cfg =
        ServeConfig::new(data.to_path_buf(), listen.parse().unwrap(), api.parse().unwrap());
    cfg.settings =
        Settings { heartbeat_seconds: 1, session_timeout_ms: 5000, ..Settings::default() };
    serve(cfg, Arc::new(SystemClock)).await.unwrap()
}

async fn admin(c: &Running, data: &Path) -> Client {
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    backroom_central::client::connect(&format!("https://{}", c.api), &c.ca_pem, &token)
        .await
        .unwrap()
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
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
    /// nodeagent with the image's two candidates, and nothing else about central.
    fn start(dir: &Path, ns: &str, candidates: &[PathBuf]) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nodeagent.log"))
            .unwrap();
        let mut cmd = Command::new(bin("nodeagent"));
        cmd.arg("--socket")
            .arg(dir.join("nodeagent.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--netd-socket", "none", "--vmd-socket", "none", "--containerd-namespace", ns])
            .env_remove("BACKROOM_CENTRAL")
            .env_remove("BACKROOM_TOKEN");
        for c in candidates {
            cmd.arg("--provision").arg(c);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Agent { child, dir: dir.to_path_buf() }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

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

    fn record(&self) -> Record {
        Record::load(&self.dir.join("state")).expect("provision.json is written")
    }

    /// Waits until nodeagent says its link with central is online.
    async fn until_online(&self, what: &str) {
        let t0 = Instant::now();
        loop {
            let st = self.status();
            if st["central"].as_str().unwrap_or_default().starts_with("online") {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}\nnode status: {st:#}\nnodeagent log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_enrolls_from_the_second_provision_candidate_and_runs_on_without_it() {
    assert!(
        Path::new(CONTAINERD_SOCKET).exists(),
        "containerd is not running at {CONTAINERD_SOCKET}: run scripts/install-deps and scripts/start-services"
    );
    let ns = Namespace::new();
    let data = tempfile::tempdir().unwrap();
    let (listen, api) = (free_port(), free_port());
    let c = start_central(data.path(), &listen, &api).await;
    let mut admin = admin(&c, data.path()).await;
    let store_id = format!("store-p{}", std::process::id());
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

    // What a technician's file looks like: the stick is not plugged in, the ESP has the file.
    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick/provision.toml");
    let esp = dir.path().join("esp/backroom/provision.toml");
    std::fs::create_dir_all(esp.parent().unwrap()).unwrap();
    std::fs::write(
        &esp,
        format!(
            "# store {store_id}\ncentral = [\"https://{listen}\", \"https://central-2.invalid:7443\"]\ntoken = \"{token}\"\ninsecure_registries = [\"127.0.0.1:5055\"]\n"
        ),
    )
    .unwrap();
    let candidates = [stick.clone(), esp.clone()];
    let agent = Agent::start(dir.path(), &ns.name, &candidates);
    agent.until_online("enrollment from the ESP's provision.toml").await;
    let s = admin
        .get_store(GetStoreRequest { store_id: store_id.clone(), events: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(s.summary.unwrap().online, "central sees the store online");
    let r = agent.record();
    assert_eq!(r.source.as_deref(), Some(esp.as_path()), "{r:?}");
    assert_eq!(r.error, None);
    assert_eq!(r.central[0], format!("https://{listen}"));
    let raw = std::fs::read_to_string(dir.path().join("state/provision.json")).unwrap();
    assert!(!raw.contains(&token), "the token is not kept: {raw}");
    let log = agent.log();
    assert!(log.contains("uses only the first"), "the second URL is said to be unused: {log}");
    agent.stop();

    // The file is gone (the token is used up anyway): the enrolled node finds central again.
    std::fs::remove_file(&esp).unwrap();
    let agent = Agent::start(dir.path(), &ns.name, &candidates);
    agent.until_online("the enrolled node without a provision.toml").await;
    assert_eq!(agent.record().source.as_deref(), Some(esp.as_path()), "still says where from");
    agent.stop();

    // A wrong stick on an enrolled node: a warning with where, and the node runs on.
    std::fs::create_dir_all(stick.parent().unwrap()).unwrap();
    std::fs::write(&stick, format!("central = [\"https://{listen}\"]\ntokn = \"x\"\n")).unwrap();
    let agent = Agent::start(dir.path(), &ns.name, &candidates);
    agent.until_online("the enrolled node with a wrong stick").await;
    let r = agent.record();
    assert_eq!(r.source.as_deref(), Some(stick.as_path()));
    let e = r.error.unwrap();
    assert!(e.contains("provision.toml:2:1: unknown field `tokn`"), "{e}");
    assert!(agent.log().contains("carries on without the file"), "{}", agent.log());
    agent.stop();
    c.stop().await;
}

#[test]
fn a_wrong_provision_file_stops_a_node_that_has_not_enrolled() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("provision.toml");
    std::fs::write(
        &bad,
        "central = [\"https://central.example:7443\"]\nfleet_key = \"bkf1.abc\"\n",
    )
    .unwrap();
    let out = Command::new(bin("nodeagent"))
        .arg("--socket")
        .arg(dir.path().join("nodeagent.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--netd-socket", "none", "--vmd-socket", "none"])
        .arg("--provision")
        .arg(dir.path().join("missing.toml"))
        .arg("--provision")
        .arg(&bad)
        .env_remove("BACKROOM_CENTRAL")
        .env_remove("BACKROOM_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = format!(
        "{}:2:13: zero-touch enrollment with a fleet key is not supported yet",
        bad.display()
    );
    assert!(err.contains(&want), "{err}");
    let r = Record::load(&dir.path().join("state")).unwrap();
    assert_eq!(r.source.as_deref(), Some(bad.as_path()));
    assert!(r.error.unwrap().contains(&want));
}
