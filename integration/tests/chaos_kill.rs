//! kill -9 at random moments during applies (issue 11's fault suite): `make run`'s lab store (the
//! sample fleet's coffee shop with fractional cpus, two containers and a TCG VM, connected to
//! central) has its profile changed by `centralctl fleet push`, and while the node applies it one
//! of netd, vmd, nodeagent, central and containerd is killed with SIGKILL and started again. After
//! every kill the store converges: central sees the new revision applied with every workload
//! healthy, containerd holds exactly one container per workload, libvirt one domain for the VM,
//! and no problem is left open. At the end no event is lost or doubled: central holds every
//! sequence number the node handed out, once (numbers skipped only where a start of nodeagent
//! left the rest of its reserved block), and no notice twice.
//!
//! `make test` runs a few kills (BACKROOM_CHAOS_KILLS, default 10: every victim twice); `make
//! chaos` runs 100 or more. BACKROOM_CHAOS_SEED repeats a run; BACKROOM_CHAOS_VICTIMS (a comma
//! list) narrows the victims. It uses the `bkstore` namespace like `make run`: do not run it
//! while a `make run` store is up.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use backroom_integration::chaos::{
    LabStack, Rng, VICTIMS, central_events, env_count, percentile, table_row,
};
use backroom_integration::procs::require_bin;
use backroom_session::outbox::{Limits, Outbox, RESERVED_BLOCK};

fn text(c: &mut Command) -> Result<String, String> {
    let o = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{c:?}: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Containers of the lab store by workload (containerd namespace `backroom-run`, the label
/// nodeagent puts on each).
fn containers() -> Result<BTreeMap<String, usize>, String> {
    let mut by = BTreeMap::new();
    let ids = text(Command::new("ctr").args(["-n", "backroom-run", "containers", "ls", "-q"]))?;
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let info =
            text(Command::new("ctr").args(["-n", "backroom-run", "containers", "info", id]))?;
        let v: serde_json::Value =
            serde_json::from_str(&info).map_err(|e| format!("ctr containers info {id}: {e}"))?;
        let w = v["Labels"]["backroom.workload"].as_str().unwrap_or("(no workload label)");
        *by.entry(w.to_string()).or_insert(0) += 1;
    }
    Ok(by)
}

/// libvirt's domains for the lab store's VM (`nvr`), with their states.
fn nvr_domains() -> Result<Vec<(String, String)>, String> {
    let names =
        text(Command::new("virsh").args(["-c", "qemu:///system", "list", "--all", "--name"]))?;
    let mut out = Vec::new();
    for n in names.lines().map(str::trim).filter(|n| n.ends_with("nvr")) {
        let st = text(Command::new("virsh").args(["-c", "qemu:///system", "domstate", n]))?;
        out.push((n.to_string(), st.trim().to_string()));
    }
    Ok(out)
}

/// Whether the store has converged on `desired`; the reason it has not, otherwise.
fn converged(s: &LabStack, desired: &str) -> Result<(), String> {
    let list = s.centralctl(&["store", "list"])?;
    let row = list
        .as_array()
        .and_then(|a| a.iter().find(|x| x["store"] == "store-lab"))
        .ok_or("store-lab is not in the store list")?;
    let (applied, want) = (row["applied_revision"].as_str(), row["desired_revision"].as_str());
    if row["online"] != true
        || want != Some(desired)
        || applied != Some(desired)
        || row["workloads_total"] != 3
        || row["workloads_healthy"] != 3
    {
        return Err(format!("central sees: {row}"));
    }
    let c = containers()?;
    let one: BTreeMap<String, usize> = [("menu".into(), 1), ("orders".into(), 1)].into();
    if c != one {
        return Err(format!("containers by workload: {c:?}"));
    }
    let d = nvr_domains()?;
    if d.len() != 1 || d[0].1 != "running" {
        return Err(format!("nvr domains: {d:?}"));
    }
    let st = text(
        Command::new(require_bin("nodectl"))
            .arg("--socket")
            .arg(s.run.join("nodeagent.sock"))
            .args(["--json", "status"]),
    )?;
    let st: serde_json::Value = serde_json::from_str(&st).map_err(|e| e.to_string())?;
    if st["problems"].as_array().is_some_and(|p| !p.is_empty()) {
        return Err(format!("problems still open on the node: {}", st["problems"]));
    }
    Ok(())
}

fn wait_converged(s: &LabStack, desired: &str, limit: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        match converged(s, desired) {
            Ok(()) => return Ok(t.elapsed()),
            Err(e) if t.elapsed() > limit => {
                return Err(format!("not converged on {desired} within {limit:?}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Writes round `i`'s change into the lab store's profile (from the one scripts/run/up wrote,
/// kept as `store-lab.yaml.orig`): every round a new `chaos` label (a new revision that every
/// daemon applies), and every even round a new environment variable for `menu` (nodeagent
/// replaces the container, start-first).
fn change(run: &Path, i: u64) {
    let p = run.join("fleet/stores/store-lab.yaml");
    let orig = p.with_extension("yaml.orig");
    if !orig.exists() {
        std::fs::copy(&p, &orig).unwrap();
    }
    let y = std::fs::read_to_string(&orig).unwrap();
    assert!(
        y.contains("  labels: {") && y.contains("  - name: menu\n"),
        "the lab store changed shape"
    );
    let y = y.replacen("  labels: {", &format!("  labels: {{ chaos: \"{i}\","), 1).replacen(
        "  - name: menu\n",
        &format!("  - name: menu\n    env: {{ CHAOS_ROUND: \"{}\" }}\n", i / 2),
        1,
    );
    std::fs::write(&p, y).unwrap();
}

fn desired(s: &LabStack) -> Result<String, String> {
    let v = s.centralctl(&["store", "get", "store-lab"])?;
    v["summary"][0]["desired_revision"]
        .as_str()
        .map(String::from)
        .ok_or(format!("no desired revision: {v}"))
}

/// Every event the node handed out reached central once (numbers skipped only where a start of
/// nodeagent left the rest of a reserved block), and none was raised twice.
fn events_once(s: &mut LabStack, starts: u64) -> Result<(u64, u64), String> {
    // Stop nodeagent gracefully so its outbox can be opened here.
    let pid = s.pid("nodeagent").ok_or("no nodeagent pid")?;
    // SAFETY: kill(2) on the pid recorded for the stack's nodeagent.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z")
    {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("nodeagent did not stop on SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let outbox = Outbox::open(&s.run.join("node/central/outbox"), Limits::default())
        .map_err(|e| format!("the node's outbox: {e}"))?;
    let handed_out = outbox.next_seq() - 1;
    if outbox.pending() != 0 || outbox.dropped_total() != 0 {
        return Err(format!(
            "the outbox holds {} unsent events and dropped {}",
            outbox.pending(),
            outbox.dropped_total()
        ));
    }
    let events = central_events(&s.run.join("central/central.db"), "store-lab")?;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    // Numbers are reserved in blocks (`outbox.state`): each start of nodeagent (and the open
    // above) goes on above its block, so a run of numbers never handed out ends at a block's
    // end. Any other gap is an event lost.
    let missing: Vec<u64> = (1..=handed_out).filter(|q| seqs.binary_search(q).is_err()).collect();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for q in missing {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == q => *end = q,
            _ => runs.push((q, q)),
        }
    }
    let lost: Vec<&(u64, u64)> = runs.iter().filter(|(_, end)| end % RESERVED_BLOCK != 0).collect();
    if !lost.is_empty() || runs.len() as u64 > starts + 1 || seqs.last().copied() > Some(handed_out)
    {
        return Err(format!(
            "the node handed out up to {handed_out} over {starts} starts; central has {} events; \
             runs missing {runs:?} (lost: {lost:?})",
            seqs.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in &events {
        if !seen.insert((e.at_ms, &e.kind, &e.workload, &e.subject, &e.message)) {
            return Err(format!("an event raised twice: {e:?}"));
        }
    }
    // failing and recovered alternate per subject: a notice told twice is a doubled event.
    let mut open: BTreeMap<&str, &str> = BTreeMap::new();
    let mut notices = 0;
    for e in events.iter().filter(|e| e.kind == "failing" || e.kind == "recovered") {
        notices += 1;
        if open.get(e.subject.as_str()) == Some(&e.kind.as_str()) {
            return Err(format!(
                "{} told twice in a row for {} (seq {})",
                e.kind, e.subject, e.seq
            ));
        }
        open.insert(&e.subject, &e.kind);
    }
    Ok((seqs.len() as u64, notices))
}

#[test]
fn kill_9_at_random_moments_during_applies_converges_with_nothing_doubled_or_lost() {
    let kills = env_count("BACKROOM_CHAOS_KILLS", 10);
    let victims: Vec<String> = std::env::var("BACKROOM_CHAOS_VICTIMS")
        .map(|v| v.split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from).collect())
        .unwrap_or_else(|_| VICTIMS.iter().map(|v| v.to_string()).collect());
    assert!(victims.iter().all(|v| VICTIMS.contains(&v.as_str())), "victims are {VICTIMS:?}");
    let mut rng = Rng::from_env("chaos_kill");
    // Every victim as often as the others, in a random order.
    let mut order: Vec<String> =
        (0..kills).map(|i| victims[i as usize % victims.len()].clone()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }

    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let started = Instant::now();
    let mut s = LabStack::up(&run).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("chaos_kill: the lab store is up after {:?}", started.elapsed());
    let mut rev = desired(&s).unwrap();
    if let Err(e) = wait_converged(&s, &rev, Duration::from_secs(300)) {
        panic!("the lab store did not settle before the first kill: {e}\n{}", s.logs());
    }

    let mut recover: Vec<Duration> = Vec::new();
    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    for (i, victim) in order.iter().enumerate() {
        change(&run, i as u64);
        s.push().unwrap_or_else(|e| panic!("round {i}: {e}"));
        let new = desired(&s).unwrap();
        assert_ne!(new, rev, "round {i}: the push made no new revision");
        rev = new;
        // A random moment of the apply: from at once to a few seconds in.
        std::thread::sleep(rng.millis(3000));
        s.kill9(victim).unwrap_or_else(|e| panic!("round {i}: {e}"));
        std::thread::sleep(rng.millis(1000));
        s.restart(victim).unwrap_or_else(|e| panic!("round {i}: {e}"));
        *per.entry(victim.clone()).or_insert(0) += 1;
        match wait_converged(&s, &rev, Duration::from_secs(240)) {
            Ok(d) => {
                eprintln!("chaos_kill: round {i}: {victim} killed, converged after {d:?}");
                recover.push(d);
            }
            Err(e) => panic!("round {i} ({victim} killed): {e}\n{}", s.logs()),
        }
    }
    let starts = per.get("nodeagent").copied().unwrap_or(0) + 1;
    let (events, notices) =
        events_once(&mut s, starts).unwrap_or_else(|e| panic!("{e}\n{}", s.logs()));
    let down = s.down();
    let (p50, p95, max) =
        (percentile(&mut recover, 50), percentile(&mut recover, 95), percentile(&mut recover, 100));
    let per_text: Vec<String> = per.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "chaos_kill: {kills} kills ({}), converged every time: p50 {p50:.1?}, p95 {p95:.1?}, max {max:.1?}; \
         {events} events, every one at central once ({notices} failing/recovered notices), \
         no duplicate container or domain; {:?} in all",
        per_text.join(", "),
        started.elapsed()
    );
    table_row(
        "kill -9 during applies (lab store, TCG VM, connected)",
        &format!("{kills} kills: {}", per_text.join(", ")),
        &format!(
            "converged every time (p50 {p50:.1?}, p95 {p95:.1?}, max {max:.1?}); no duplicate container or domain; {events} events, 0 lost, 0 doubled"
        ),
    );
    down.unwrap();
}
