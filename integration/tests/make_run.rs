//! `make run`'s store, end to end, as a test: central, the sample fleet plus the lab store (a
//! coffee shop with two containers and a VM), netd, vmd and nodeagent on the real containerd,
//! libvirtd and kernel; the node enrolls, applies, becomes healthy; real connections from the
//! stand-in POS terminal and guest phone prove the firewall; the store's uplink is pulled out and
//! the problem reaches `nodectl status` and `centralctl store get`, then closes when it is put
//! back; `make stop` leaves nothing behind.
//!
//! It runs scripts/run/up and scripts/run/down themselves (with their own folder and ports), so
//! `make run` is tested by `make test`. Do not run it while a `make run` store is up: both use
//! the `bkstore` namespace's bridge names.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use backroom_integration::procs::{free_port, require_bin};

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command and returns its stdout, or says what failed.
fn output(c: &mut Command) -> Result<String, String> {
    let o = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Polls `f` every half second until it says yes or `limit` passes; the last answer explains.
fn wait_until(
    limit: Duration,
    mut f: impl FnMut() -> Result<bool, String>,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let last = f();
        if let Ok(true) = last {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!("not within {limit:?}: {last:?}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Where a problem about `subject` shows: nodectl's open problems, and central's view of the
/// store (its open problems, and events of `kind` for it).
struct Views {
    node_open: bool,
    central_open: bool,
    central_event: bool,
}

fn views(run: &Path, api: u16, subject: &str, kind: &str) -> Result<Views, String> {
    let node: serde_json::Value = serde_json::from_str(&output(
        Command::new(require_bin("nodectl"))
            .arg("--socket")
            .arg(run.join("nodeagent.sock"))
            .args(["--json", "status"]),
    )?)
    .map_err(|e| format!("nodectl status --json: {e}"))?;
    let central: serde_json::Value = serde_json::from_str(&output(
        Command::new(require_bin("centralctl"))
            .args(["--server", &format!("https://127.0.0.1:{api}"), "--json"])
            .arg("--ca")
            .arg(run.join("central/ca.crt"))
            .arg("--token-file")
            .arg(run.join("central/admin.token"))
            .args(["store", "get", "store-lab"]),
    )?)
    .map_err(|e| format!("centralctl store get --json: {e}"))?;
    let has = |v: &serde_json::Value, key: &str, want: &dyn Fn(&serde_json::Value) -> bool| {
        v[key].as_array().is_some_and(|a| a.iter().any(want))
    };
    Ok(Views {
        node_open: has(&node, "problems", &|p| p["subject"] == subject),
        central_open: has(&central, "problems", &|p| p["subject"] == subject),
        central_event: has(&central, "events", &|e| e["subject"] == subject && e["kind"] == kind),
    })
}

/// The store's uplink is pulled out while everything runs: netd notices, the technician's
/// `nodectl status` and HQ's `centralctl store get` name the missing uplink; it is plugged back
/// in: the problem closes everywhere with a `recovered` event.
fn uplink_pulled_out_and_put_back(run: &Path, api: u16) -> Result<(), String> {
    let subject = "uplink up0";
    let before = views(run, api, subject, "failing")?;
    if before.node_open || before.central_open || before.central_event {
        return Err("the uplink was reported missing before it was pulled out".into());
    }
    // The veth's peer (the stand-in router's eth0) goes with it, as when a cable is pulled
    // and the port is gone.
    output(Command::new("ip").args(["-n", "bkstore", "link", "del", "up0"]))?;
    let seen = wait_until(Duration::from_secs(60), || {
        let v = views(run, api, subject, "failing")?;
        Ok(v.node_open && v.central_open && v.central_event)
    })
    .map_err(|e| format!("the missing uplink did not reach nodectl and central: {e}"))?;
    eprintln!("uplink pulled out: nodectl and central name it after {seen:?}");
    for args in [
        &[
            "link",
            "add",
            "up0",
            "netns",
            "bkstore",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            "bkrun-wan",
        ][..],
        &["-n", "bkrun-wan", "addr", "add", "10.99.0.1/24", "dev", "eth0"],
        &["-n", "bkrun-wan", "link", "set", "eth0", "up"],
        &["-n", "bkstore", "link", "set", "up0", "up"],
    ] {
        output(Command::new("ip").args(args))?;
    }
    let back = wait_until(Duration::from_secs(60), || {
        let v = views(run, api, subject, "recovered")?;
        Ok(!v.node_open && !v.central_open && v.central_event)
    })
    .map_err(|e| format!("the uplink's return did not close the problem: {e}"))?;
    eprintln!("uplink back: the problem closed everywhere after {back:?}");
    Ok(())
}

#[test]
fn the_lab_store_runs_containers_and_a_vm_behind_its_firewall_and_stops_cleanly() {
    for b in ["central", "centralctl", "netd", "vmd", "nodeagent", "nodectl", "demo-images"] {
        require_bin(b);
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (node, api) = (free_port().unwrap().port(), free_port().unwrap().port());
    let env = |c: &mut Command| {
        c.env("BACKROOM_RUN_DIR", &run)
            .env("BACKROOM_RUN_NODE_PORT", node.to_string())
            .env("BACKROOM_RUN_API_PORT", api.to_string());
    };
    let mut up = Command::new(repo().join("scripts/run/up"));
    env(&mut up);
    let out = up.output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let logs = || {
        let mut all = String::new();
        for e in std::fs::read_dir(run.join("logs")).into_iter().flatten().flatten() {
            let t = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> =
                t.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect();
            all.push_str(&format!("--- {}\n{}\n", e.path().display(), tail.join("\n")));
        }
        all
    };
    let check = || -> Result<(), String> {
        if !out.status.success() {
            return Err("scripts/run/up failed".into());
        }
        for (line, want) in [
            ("POS terminal -> orders", "reached"),
            ("guest phone  -> orders", "blocked"),
            ("guest phone  -> internet", "reached"),
            ("POS terminal -> internet", "blocked"),
        ] {
            let l = text.lines().find(|l| l.contains(line)).ok_or(format!("no line `{line}`"))?;
            if !l.contains(want) {
                return Err(format!("`{l}`: expected {want}"));
            }
        }
        // central sees the store healthy: two containers and a VM.
        let get = Command::new(require_bin("centralctl"))
            .args([
                "--server",
                &format!("https://127.0.0.1:{api}"),
                "--json",
                "store",
                "get",
                "store-lab",
            ])
            .arg("--ca")
            .arg(run.join("central/ca.crt"))
            .arg("--token-file")
            .arg(run.join("central/admin.token"))
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&get.stdout).map_err(|e| format!("store get: {e}"))?;
        let wl = v["workloads"].as_array().ok_or("no workloads")?;
        let kinds: Vec<(&str, &str, bool)> = wl
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap(),
                    w["kind"].as_str().unwrap(),
                    w["healthy"].as_bool().unwrap(),
                )
            })
            .collect();
        if kinds
            != [("menu", "container", true), ("nvr", "vm", true), ("orders", "container", true)]
        {
            return Err(format!("workloads as central sees them: {kinds:?}"));
        }
        uplink_pulled_out_and_put_back(&run, api)
    };
    let verdict = check();
    let mut down = Command::new(repo().join("scripts/run/down"));
    env(&mut down);
    let stopped = down.output().unwrap();
    if let Err(e) = verdict {
        panic!("{e}\n{text}\n{}", logs());
    }
    assert!(stopped.status.success(), "make stop: {}", String::from_utf8_lossy(&stopped.stdout));
    // Nothing left: no domain, no stand-in namespace, no bridge, no table in bkstore.
    let virsh = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&virsh.stdout).contains("nvr"), "a VM was left behind");
    for ns in ["bkrun-wan", "bkrun-pos", "bkrun-phone"] {
        assert!(!Path::new("/run/netns").join(ns).exists(), "{ns} was left behind");
    }
    let links = Command::new("ip").args(["-n", "bkstore", "-br", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("br-pos") && !links.contains("up0"), "links left in bkstore:\n{links}");
    let tables = Command::new("ip")
        .args(["netns", "exec", "bkstore", "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("backroom"),
        "netd's tables were left behind"
    );
}
