//! The recovery console end to end, as a technician on the phone uses it: `nodectl console` in
//! tmux (80x24, keys sent with send-keys, the screen read with capture-pane) against `make run`'s
//! lab store (the sample fleet's coffee shop on the real nodeagent, netd, vmd and containerd),
//! with central killed:
//!
//! - the board shows the apps and "OFFLINE";
//! - a wrong code and an expired code are refused; a technician code made by central before the
//!   link was cut restarts a container (its task pid changes);
//! - the uplink override for the management segment applies (netd puts the address on
//!   br-mgmt), is kept with `k`, and expires by itself;
//! - a support bundle is written to the "stick" with env values redacted;
//! - when central comes back the board says online, and `centralctl store get` lists what was
//!   done at the console.
//!
//! The screens it saw are kept in target/console-e2e/ (a failure prints the last one). It uses
//! the `bkstore` namespace like `make run`: do not run it while a `make run` store is up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use backroom_integration::chaos::LabStack;
use backroom_integration::procs::require_bin;
use backroom_session::console_code::{self, Role, Secret};

const STORE: &str = "store-lab";

struct Tmux {
    socket: String,
    shots: PathBuf,
    n: usize,
}

impl Tmux {
    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn start(cmd: &[String], shots: PathBuf) -> Tmux {
        let t = Tmux { socket: format!("bkconsole-{}", std::process::id()), shots, n: 0 };
        // The console under TERM=linux, as on the server's own screen; if it ends, its last
        // words stay on screen.
        let script = format!(
            "TERM=linux {} ; echo; echo \"the console ended with status $?\"; sleep 3600",
            cmd.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
        );
        let st = t
            .tmux()
            .args([
                "new-session",
                "-d",
                "-s",
                "console",
                "-x",
                "80",
                "-y",
                "24",
                "sh",
                "-c",
                &script,
            ])
            .status()
            .expect("tmux runs (scripts/install-deps installs it)");
        assert!(st.success(), "tmux new-session failed");
        t
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let st = self.tmux().args(["send-keys", "-t", "console", k]).status().unwrap();
            assert!(st.success());
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn type_text(&self, s: &str) {
        let st = self.tmux().args(["send-keys", "-t", "console", "-l", s]).status().unwrap();
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(200));
    }

    fn screen(&self) -> String {
        let out = self.tmux().args(["capture-pane", "-p", "-t", "console"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `ok`; keeps it as `<n>-<name>.txt`.
    fn wait(&mut self, name: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                self.n += 1;
                let _ = std::fs::write(self.shots.join(format!("{:02}-{name}.txt", self.n)), &s);
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "timed out waiting for the screen: {name}\n{s}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

fn nodectl_status(run: &Path) -> serde_json::Value {
    let out = Command::new(require_bin("nodectl"))
        .arg("--socket")
        .arg(run.join("nodeagent.sock"))
        .args(["--json", "status"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The task pid of workload `w`'s container (containerd namespace `backroom-run`).
fn task_pid(run: &Path, w: &str) -> Option<u32> {
    let s = nodectl_status(run);
    let id = s["workloads"].as_array()?.iter().find(|x| x["name"] == w)?["container_id"]
        .as_str()?
        .to_string();
    let out = Command::new("ctr").args(["-n", "backroom-run", "task", "ls"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id.as_str()) && f.get(2) == Some(&"RUNNING"))
            .then(|| f[1].parse().ok())
            .flatten()
    })
}

fn mgmt_addresses() -> String {
    let out = Command::new("ip")
        .args(["-n", "bkstore", "-4", "-o", "addr", "show", "dev", "br-mgmt"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn until(what: &str, secs: u64, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_technician_brings_the_store_back_with_central_away() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut lab = LabStack::up(&run).unwrap_or_else(|e| panic!("{e}"));
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-e2e");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    // HQ makes a technician code while the link works.
    let code = lab
        .centralctl(&["store", "console-code", STORE, "--role", "technician", "--ttl", "1h"])
        .unwrap();
    let code = code["code"].as_str().unwrap().to_string();
    // A code that expired two hours ago, made with the store's own secret.
    let secret = Secret::load(&run.join("node/central").join(console_code::SECRET_FILE))
        .unwrap()
        .expect("the node got its console secret at enrollment");
    let now = backroom_session::now_ms();
    let expired = console_code::issue(
        &secret,
        STORE,
        Role::Technician,
        now - 3 * 3_600_000,
        Duration::from_secs(3600),
    )
    .unwrap()
    .text;

    // The WAN is cut: central is gone.
    lab.kill9("central").unwrap();

    // `make console`'s script, on this stack's folder; its stick is <run>/stick.
    let stick = run.join("stick");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = require_bin("nodectl").parent().unwrap().to_path_buf();
    let cmd = vec![
        "env".to_string(),
        format!("BACKROOM_RUN_DIR={}", run.display()),
        format!("BACKROOM_RUN_BIN={}", bin_dir.display()),
        repo.join("scripts/run/console").display().to_string(),
        "--refresh-seconds".into(),
        "1".into(),
    ];
    let mut t = Tmux::start(&cmd, shots.clone());

    let board = t.wait("board-offline", 60, |s| {
        s.contains("OFFLINE") && s.contains("orders") && s.contains("menu")
    });
    assert!(board.contains("store-lab"), "{board}");
    assert!(
        board.lines().last().unwrap_or_default().contains("q quit"),
        "the keys are shown:\n{board}"
    );

    // Restart orders: Actions, 1, choose orders.
    let before = task_pid(&run, "orders").expect("orders runs");
    t.keys(&["a", "1"]);
    for _ in 0..8 {
        if t.screen().contains("> orders") {
            break;
        }
        t.keys(&["Down"]);
    }
    t.wait("pick-orders", 10, |s| s.contains("> orders"));
    t.keys(&["Enter"]);
    t.wait("code-asked", 10, |s| s.contains("Code:"));
    t.type_text("AAAAA-AAAAA");
    t.keys(&["Enter"]);
    t.wait("code-wrong", 15, |s| s.contains("mistyped"));
    for _ in 0..12 {
        t.keys(&["BSpace"]);
    }
    t.type_text(&expired);
    t.keys(&["Enter"]);
    t.wait("code-expired", 15, |s| s.contains("expired"));
    assert_eq!(task_pid(&run, "orders"), Some(before), "refused codes changed nothing");
    for _ in 0..14 {
        t.keys(&["BSpace"]);
    }
    t.type_text(&code);
    t.keys(&["Enter"]);
    t.wait("confirm-restart", 15, |s| s.contains("Restart orders?"));
    t.keys(&["y"]);
    t.wait("restart-done", 60, |s| s.contains("Done"));
    until("orders runs with a new task", 60, || {
        task_pid(&run, "orders").is_some_and(|p| p != before)
    });
    t.keys(&["Escape"]);

    // The uplink override: a static address on the management segment for about a minute.
    t.keys(&["Escape", "n"]);
    t.wait("network", 10, |s| s.contains("Segments") && s.contains("br-mgmt"));
    t.keys(&["o"]);
    t.wait("override-form", 10, |s| s.contains("Uplink override"));
    t.type_text("10.99.0.77/24");
    t.keys(&["Tab"]);
    t.type_text("10.99.0.1");
    t.keys(&["Tab"]);
    t.type_text("10.99.0.1");
    t.keys(&["Tab", "Tab"]);
    t.type_text("0.02");
    t.keys(&["Enter"]);
    t.wait("override-confirm", 10, |s| s.contains("goes back by itself"));
    t.keys(&["y"]);
    t.wait("override-set", 60, |s| s.contains("Done") && s.contains("10.99.0.77/24"));
    until("10.99.0.77 on br-mgmt", 30, || mgmt_addresses().contains("10.99.0.77/24"));
    t.keys(&["Escape"]);
    t.wait("override-pending", 20, |s| s.contains("NOT KEPT YET"));
    t.keys(&["k"]);
    t.wait("keep-confirm", 10, |s| s.contains("Keep the uplink override"));
    t.keys(&["y"]);
    t.wait("override-kept", 30, |s| s.contains("is kept"));
    t.keys(&["Escape"]);
    t.wait("override-shown", 20, |s| {
        s.contains("Override 10.99.0.77/24 on mgmt") && !s.contains("NOT KEPT YET")
    });

    // A support bundle on the stick.
    t.keys(&["a", "6"]);
    t.wait("bundle-confirm", 10, |s| s.contains("support bundle"));
    t.keys(&["y"]);
    t.wait("bundle-written", 60, |s| s.contains("bundle written"));
    t.keys(&["Escape"]);
    let bundles: Vec<_> =
        std::fs::read_dir(&stick).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    let listing = Command::new("tar").arg("tzf").arg(&bundles[0]).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for part in ["status.txt", "profile.yaml", "logs/orders.log", "journal.txt"] {
        assert!(listing.contains(part), "{part} in the bundle:\n{listing}");
    }
    assert!(!listing.contains("identity") && !listing.contains("console.key"), "{listing}");

    // The override expires by itself.
    until("the override expires", 150, || !mgmt_addresses().contains("10.99.0.77/24"));
    t.keys(&["n"]);
    t.wait("override-gone", 30, |s| s.contains("Override none"));

    // central returns: the board says online, and central lists what was done.
    lab.restart("central").unwrap();
    t.keys(&["Escape"]);
    t.wait("board-online", 90, |s| s.contains("Central  online"));
    let mut last = serde_json::Value::Null;
    let t0 = Instant::now();
    loop {
        last = lab.centralctl(&["store", "get", STORE]).unwrap_or(last);
        let kinds: Vec<String> = last["local_console"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["kind"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let has = |k: &str, m: &str| kinds.iter().any(|x| x.starts_with(k) && x.contains(m));
        if has("console_refused", "mistyped")
            && has("console_refused", "expired")
            && has("console_unlocked", "technician")
            && has("console_action", "restart orders")
            && has("console_action", "uplink override")
            && has("console_action", "support bundle written")
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "central lists the console's actions: {kinds:#?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // nodeagent dies: the console says so, and still writes a support bundle (checking the
    // code itself); nodeagent, started again, sends that record to central.
    lab.kill9("nodeagent").unwrap();
    t.wait("board-no-nodeagent", 30, |s| s.contains("nodeagent is not running"));
    t.keys(&["a", "6"]);
    t.wait("bundle-confirm-alone", 10, |s| s.contains("support bundle"));
    t.keys(&["y"]);
    t.wait("bundle-written-alone", 60, |s| s.contains("bundle written"));
    t.keys(&["Escape", "Escape"]);
    assert_eq!(std::fs::read_dir(&stick).unwrap().count(), 2, "a second bundle");
    lab.restart("nodeagent").unwrap();
    t.wait("board-back", 60, |s| s.contains("Central  online") && s.contains("orders"));
    let t0 = Instant::now();
    loop {
        let r = lab.centralctl(&["store", "get", STORE]).unwrap_or_default();
        let found = r["local_console"].as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["message"].as_str().is_some_and(|m| {
                    m.contains("support bundle written") && m.contains("nodeagent was down")
                })
            })
        });
        if found {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the record made with nodeagent down reaches central: {r:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(t);
    lab.down().unwrap();
}
