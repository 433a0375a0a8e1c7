//! `make run`'s store, end to end, as a test: central, the sample fleet plus the lab store (a
//! coffee shop with two containers and a VM), netd, vmd and nodeagent on the real containerd,
//! libvirtd and kernel; the node enrolls, applies, becomes healthy; real connections from the
//! stand-in POS terminal and guest phone prove the firewall; `make stop` leaves nothing behind.
//!
//! It runs scripts/run/up and scripts/run/down themselves (with their own folder and ports), so
//! `make run` is tested by `make test`. Do not run it while a `make run` store is up: both use
//! the `bkstore` namespace's bridge names.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use backroom_integration::procs::{free_port, require_bin};

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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
        Ok(())
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
