//! Power loss of the outbox and every state file (issue 11's fault suite): each store daemon is
//! started for real with the sample fleet's coffee shop (store-0042), writes its state, is
//! killed with SIGKILL, one of its state files is damaged as a power cut or a bad disk would
//! (cut off at a random offset, or a random span of garbage; the seed is printed and
//! `BACKROOM_CHAOS_SEED` runs it again), and it is started again. Each time: it starts and
//! answers its socket, it converges (nodeagent: the same containers, exactly one per workload,
//! counted in containerd; netd: the kernel's links untouched, then the profile applied again;
//! vmd: no libvirt domain touched), the damaged file was set aside, an event or problem says
//! so, and the outbox never hands out a sequence number again (central must receive the event
//! after the restart, under a number above every one the node numbered before: central drops
//! a number it already has).
//!
//! Rounds: a fast number by default; `BACKROOM_CHAOS_STATE_ROUNDS` rounds per daemon for
//! `make chaos`. The last line of figures is what the README quotes; `BACKROOM_CHAOS_TABLE`
//! names a markdown file the table row is appended to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backroom_api::operator::{CreateEnrollTokenRequest, GetStoreRequest};
use backroom_integration::chaos::{self, Damage, Figures, Rng};
use backroom_integration::ociimage::TestImage;
use backroom_integration::procs::{CentralProc, require_bin};
use backroom_profiles::{HostAddress, Vlan, Workload};
use serde_json::Value;

const REGISTRY: &str = "127.0.0.1:5000";
const CONTAINERD: &str = "/run/containerd/containerd.sock";

fn rounds(default: usize) -> usize {
    std::env::var("BACKROOM_CHAOS_STATE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn until<T>(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> Option<T>,
    log: &dyn Fn() -> String,
) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// A daemon process: spawned with its log appended to a file, killed with SIGKILL (by pid).
struct Daemon {
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Daemon {
    fn new(bin: PathBuf, args: Vec<String>, log: PathBuf) -> Daemon {
        Daemon { child: None, bin, args, log }
    }

    fn spawn(&mut self) {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Exited already (it refused to start)?
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Picks the file of round `i`: each candidate once in order, then at random.
fn pick<'a>(i: usize, files: &'a [PathBuf], rng: &mut Rng) -> &'a PathBuf {
    if i < files.len() { &files[i] } else { &files[rng.below(files.len() as u64) as usize] }
}

/// Damages `path` and says whether a reader can tell (`told`) and what was done.
fn damage(path: &Path, rng: &mut Rng, figures: &mut Figures) -> (Damage, Vec<u8>) {
    let (d, before) = chaos::damage(path, rng).unwrap();
    figures.files_damaged += 1;
    (d, before)
}

/// The newest set-aside copy of `path`.
fn newest_copy(path: &Path) -> Option<PathBuf> {
    chaos::set_aside_copies(path).pop()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// nodeagent (with central, for the outbox)

/// A containerd namespace emptied and removed on drop (with `ctr`).
struct CtrNamespace(String);

impl CtrNamespace {
    fn ctr(&self, args: &str) -> String {
        must(&format!("ctr -a {CONTAINERD} -n {} {args}", self.0))
    }

    /// (container id, task status) of every container.
    fn containers(&self) -> Vec<(String, String)> {
        let ids: Vec<String> = self.ctr("containers ls -q").lines().map(str::to_string).collect();
        let tasks = self.ctr("tasks ls");
        ids.into_iter()
            .map(|id| {
                let status = tasks
                    .lines()
                    .find(|l| l.split_whitespace().next() == Some(id.as_str()))
                    .and_then(|l| l.split_whitespace().nth(2))
                    .unwrap_or("NONE")
                    .to_string();
                (id, status)
            })
            .collect()
    }
}

impl Drop for CtrNamespace {
    fn drop(&mut self) {
        let ns = &self.0;
        let ctr = format!("ctr -a {CONTAINERD} -n {ns}");
        for pass in 0..2 {
            if pass == 1 {
                std::thread::sleep(Duration::from_millis(1500));
            }
            let ids = sh(&format!("{ctr} containers ls -q"));
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = sh(&format!(
                    "{ctr} tasks kill -s SIGKILL {id}; sleep 0.3; {ctr} tasks rm -f {id}; {ctr} containers rm {id}"
                ));
            }
        }
        let _ = sh(&format!(
            "for s in $({ctr} snapshots ls | awk 'NR>1 {{print $1}}'); do {ctr} snapshots rm $s; done"
        ));
        let _ = sh(&format!("{ctr} images ls -q | xargs -r {ctr} images rm"));
        let _ = sh(&format!("for l in $({ctr} leases ls -q); do {ctr} leases rm $l; done"));
        let _ = sh(&format!("{ctr} content ls -q | xargs -r {ctr} content rm"));
        let o = sh(&format!("ctr -a {CONTAINERD} namespaces rm {ns}"));
        if !o.status.success() {
            eprintln!(
                "cleanup of containerd namespace {ns}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

fn nodectl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(require_bin("nodectl"))
        .arg("--socket")
        .arg(dir.join("nodeagent.sock"))
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(dir: &Path) -> Option<Value> {
    let (ok, out) = nodectl(dir, &["--json", "status"]);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

fn workload_ids(s: &Value) -> Vec<(String, String, String)> {
    s["workloads"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| {
                    (
                        w["name"].as_str().unwrap_or("").to_string(),
                        w["state"].as_str().unwrap_or("").to_string(),
                        w["container_id"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The highest sequence number in an outbox log (0 when none reads).
fn max_seq_in(log: &[u8]) -> u64 {
    log.split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64().or_else(|| v["next_seq"].as_u64().map(|n| n - 1)))
        .max()
        .unwrap_or(0)
}

/// The coffee shop as the fleet renders store-0042, with only what this machine cannot have
/// replaced: busybox stand-ins for the images (serving the health checks on free ports), no
/// networks (`--netd-socket none`), no VM (`--vmd-socket none`).
async fn coffee_shop(dir: &Path, tag: &str) -> PathBuf {
    let store =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/fleet/stores/store-0042.yaml");
    let mut r = backroom_profiles::render_file(&store).unwrap_or_else(|e| panic!("{e}"));
    r.profile.workloads.retain(|w| matches!(w, Workload::Container(_)));
    r.profile.network = Default::default();
    let base = 20_000 + (std::process::id() % 20_000) as u16;
    let stand_in = |port: u16, extra: &str| {
        vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("echo ok > /www/healthz; {extra}exec /bin/busybox httpd -f -p {port} -h /www"),
        ]
    };
    for (i, w) in r.profile.workloads.iter_mut().enumerate() {
        let Workload::Container(c) = w else { continue };
        let port = base + i as u16;
        c.networks.clear();
        if let Some(h) = c.health.as_mut().and_then(|h| h.http.as_mut()) {
            h.port = port;
        }
        let id = format!("chaos-{}-{tag}-{}", std::process::id(), c.name.as_str());
        let image = TestImage::busybox(&["/bin/busybox", "sleep", "100000"], c.name.as_str(), &id)
            .push_to(REGISTRY, &format!("backroom-test/chaos-{}", c.name.as_str()), tag)
            .await;
        c.image = Some(image.parse().unwrap());
        c.command = stand_in(port, "");
    }
    let text = r.to_yaml();
    let rendered = backroom_profiles::render_str("store-0042.yaml", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let file = dir.join("store-0042.yaml");
    std::fs::write(&file, rendered.to_yaml()).unwrap();
    file
}

async fn nodeagent_rounds(rng: &mut Rng, figures: &mut Figures, n: usize) {
    assert!(
        Path::new(CONTAINERD).exists(),
        "containerd is not running at {CONTAINERD}: run scripts/start-services"
    );
    assert!(
        std::net::TcpStream::connect_timeout(&REGISTRY.parse().unwrap(), Duration::from_secs(2))
            .is_ok(),
        "the test registry does not answer on {REGISTRY}: run scripts/start-services"
    );
    assert!(Path::new("/bin/busybox").exists(), "/bin/busybox is missing: install busybox-static");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ns = CtrNamespace(format!("bkchaos-{}", std::process::id()));

    // Central, and a token for store-0042.
    let central_dir = dir.join("central");
    std::fs::create_dir_all(&central_dir).unwrap();
    let central = CentralProc::start(
        &require_bin("central"),
        &central_dir,
        None,
        None,
        &["--heartbeat", "1s"],
    )
    .unwrap();
    let mut admin = backroom_central::client::connect(
        &format!("https://{}", central.api),
        &central.ca_pem().unwrap(),
        &central.admin_token().unwrap(),
    )
    .await
    .unwrap();
    let token = admin
        .create_enroll_token(CreateEnrollTokenRequest {
            store_id: "store-0042".into(),
            region: String::new(),
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let profile = coffee_shop(dir, &format!("t{}", std::process::id())).await;

    let state = dir.join("state");
    let args: Vec<String> = [
        "--socket",
        &dir.join("nodeagent.sock").display().to_string(),
        "--state-dir",
        &state.display().to_string(),
        "--netd-socket",
        "none",
        "--vmd-socket",
        "none",
        "--containerd-namespace",
        &ns.0,
        "--restart-backoff-ms",
        "200",
        "--stop-grace-seconds",
        "2",
        "--profile",
        &profile.display().to_string(),
        "--central",
        &format!("https://{}", central.listen),
        "--token",
        &token,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = Daemon::new(require_bin("nodeagent"), args, dir.join("nodeagent.log"));
    agent.spawn();
    let log = || std::fs::read_to_string(dir.join("nodeagent.log")).unwrap_or_default();
    let s = until(
        "the coffee shop running and healthy",
        120,
        || {
            let s = status(dir)?;
            let w = s["workloads"].as_array()?;
            let ok = w.len() == 2
                && w.iter().all(|w| w["state"] == "running" && w["health"] == "healthy");
            ok.then_some(s)
        },
        &log,
    );
    let ids: Vec<(String, String, String)> = workload_ids(&s);
    let events = async |admin: &mut backroom_central::client::Client| {
        admin
            .get_store(GetStoreRequest { store_id: "store-0042".into(), events: 1000 })
            .await
            .map(|r| r.into_inner().events)
            .unwrap_or_default()
    };
    // Enrolled, and the session up: events reach central.
    let t0 = Instant::now();
    while !status(dir).is_some_and(|s| s["central"].as_str().unwrap_or("").contains("online")) {
        assert!(t0.elapsed() < Duration::from_secs(60), "never online with central: {}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let outbox = state.join("central/outbox");
    let mut files: Vec<PathBuf> = vec![outbox.join("outbox.log"), outbox.join("outbox.state")];
    for f in ["workloads.json", "node.json", "actions.json", "problems.json"] {
        files.push(state.join(f));
    }
    let desired = s["desired_revision"].as_str().unwrap().to_string();
    files.push(state.join(format!("revisions/{desired}.yaml")));

    for i in 0..n {
        let candidates: Vec<PathBuf> = files.iter().filter(|p| p.exists()).cloned().collect();
        let path = pick(i, &candidates, rng).clone();
        let name = file_name(&path);
        // What the node numbered, and what central holds, before the power cut.
        let before_log = std::fs::read(outbox.join("outbox.log")).unwrap_or_default();
        let central_max = events(&mut admin).await.iter().map(|e| e.seq).max().unwrap_or(0);
        agent.kill9();
        let numbered = max_seq_in(&before_log).max(central_max);
        let copy_before = newest_copy(&path);
        let (dmg, original) = damage(&path, rng, figures);
        // What a reader can tell: a log cut at a line's end looks whole; a revision that still
        // renders to itself (only its final newline cut) is whole.
        let told = match name.as_str() {
            "outbox.log" => !dmg.cut_at_line_end(&original),
            n if n.ends_with(".yaml") => {
                let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap_or_default();
                backroom_profiles::render_str("r.yaml", &text)
                    .map(|r| r.revision.as_str() != desired)
                    .unwrap_or(true)
            }
            _ => true,
        };
        eprintln!("chaos_state: nodeagent round {i}: {name} {dmg}");
        figures.starts += 1;
        agent.spawn();
        until("nodectl status to answer", 30, || status(dir), &|| agent.log());
        figures.started += 1;
        // Converged: the same containers, exactly one per workload, running.
        let s = until(
            "the same containers running",
            60,
            || {
                let s = status(dir)?;
                let now = workload_ids(&s);
                let same = now.len() == ids.len()
                    && now
                        .iter()
                        .zip(&ids)
                        .all(|(a, b)| a.0 == b.0 && a.1 == "running" && a.2 == b.2);
                same.then_some(s)
            },
            &|| format!("{}\nstatus: {:#}", agent.log(), status(dir).unwrap_or_default()),
        );
        let in_containerd = until(
            "containerd to show one running task per workload",
            30,
            || {
                let c = ns.containers();
                (c.len() == ids.len() && c.iter().all(|(_, st)| st == "RUNNING")).then_some(c)
            },
            &|| format!("containerd: {:?}", ns.containers()),
        );
        let mut got: Vec<&str> = in_containerd.iter().map(|(id, _)| id.as_str()).collect();
        got.sort_unstable();
        let mut want: Vec<&str> = ids.iter().map(|w| w.2.as_str()).collect();
        want.sort_unstable();
        assert_eq!(got, want, "no container duplicated or replaced ({name} {dmg})");
        if !told {
            eprintln!(
                "chaos_state: nodeagent round {i}: {name} still reads whole; nothing to set aside"
            );
            figures.still_whole += 1;
            figures.rounds += 1;
            continue;
        }
        let kept = newest_copy(&path);
        assert!(
            kept.is_some() && kept != copy_before,
            "{} was not set aside ({dmg})",
            path.display()
        );
        let kept_name = file_name(&kept.unwrap());
        // Told: on the node (the problem's notice in the action history, for the node's own
        // files) and at central, under a number above every one the node numbered before.
        if !name.starts_with("outbox") {
            let noticed = s["actions"].as_array().unwrap().iter().any(|a| {
                a["action"].as_str().unwrap_or("").contains(&format!("state file {}", name))
                    || a["message"].as_str().unwrap_or("").contains(&kept_name)
            });
            let s2 = status(dir).unwrap_or_default();
            let noticed = noticed
                || s2["actions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["message"].as_str().unwrap_or("").contains(&kept_name));
            assert!(noticed, "no notice of {kept_name} on the node: {s2:#}");
        }
        let t0 = Instant::now();
        let ev = loop {
            let evs = events(&mut admin).await;
            if let Some(e) = evs.iter().find(|e| e.message.contains(&kept_name)) {
                break e.clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "central never got the notice of {kept_name} (a reused number is dropped by central): {:#?}\n{}",
                evs.iter().rev().take(10).collect::<Vec<_>>(),
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        if ev.seq <= numbered {
            figures.seq_reused += 1;
        }
        assert!(
            ev.seq > numbered,
            "the notice after the restart got number {} but the node had numbered up to {numbered}",
            ev.seq
        );
        figures.rounds += 1;
    }

    // Last: the identity. The node cannot talk to central any more and must say why, and keep
    // running what it runs.
    agent.kill9();
    let identity = state.join("central/identity.json");
    let (dmg, _) = damage(&identity, rng, figures);
    eprintln!("chaos_state: nodeagent identity round: {dmg}");
    figures.starts += 1;
    agent.spawn();
    until("nodectl status to answer", 30, || status(dir), &|| agent.log());
    figures.started += 1;
    let s = until(
        "nodectl status to say the identity was set aside",
        60,
        || status(dir).filter(|s| s["central"].as_str().unwrap_or("").contains("set aside")),
        &|| format!("{}\n{:#}", agent.log(), status(dir).unwrap_or_default()),
    );
    let said = s["central"].as_str().unwrap();
    let kept = newest_copy(&identity).expect("the identity set aside");
    assert!(
        said.starts_with("not enrolled: identity file unreadable, set aside as ")
            && said.contains(&kept.display().to_string())
            && said.contains("enroll again with a new token"),
        "{said}"
    );
    let (_, text) = nodectl(dir, &["status"]);
    assert!(text.contains("identity file unreadable"), "{text}");
    assert_eq!(ns.containers().len(), ids.len(), "the containers keep running");
    figures.rounds += 1;
    figures.per_daemon.push(("nodeagent".into(), n + 1));
    agent.kill9();
    drop(central);
}

// ---------------------------------------------------------------------------------------------
// netd, in a namespace of its own

struct NetNs(String);

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.0));
    }
}

fn links(ns: &str) -> BTreeSet<String> {
    must(&format!("ip -n {ns} -o link show"))
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

async fn netd_client(
    sock: &Path,
) -> Option<backroom_api::netd::netd_client::NetdClient<tonic::transport::Channel>> {
    let ch = backroom_daemon::socket::connect(sock).await.ok()?;
    Some(backroom_api::netd::netd_client::NetdClient::new(ch))
}

async fn netd_rounds(rng: &mut Rng, figures: &mut Figures, n: usize) {
    use backroom_api::netd as pb;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ns = NetNs(format!("bkcs{}", std::process::id() % 100_000));
    must(&format!("ip netns add {}", ns.0));
    must(&format!(
        "ip -n {0} link set lo up && ip -n {0} link add eno1 type veth peer name eno1p && ip -n {0} link set eno1 up && ip -n {0} link set eno1p up",
        ns.0
    ));
    // The coffee shop's networks (store-0042), with what this host cannot have replaced: the
    // management segment gets no DHCP (no server answers here) and the tagged segments are
    // internal bridges (this host's kernel has no VLAN support; netd's kernel lab tests those).
    let store =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/fleet/stores/store-0042.yaml");
    let mut r = backroom_profiles::render_file(&store).unwrap_or_else(|e| panic!("{e}"));
    for s in &mut r.profile.network.segments {
        if s.address == HostAddress::Dhcp {
            s.address = HostAddress::None;
        }
        if matches!(s.vlan, Some(Vlan::Id(_))) {
            s.vlan = None;
            s.internal = true;
            s.gateway = None;
        }
    }
    let rendered = backroom_profiles::render_str("store-0042.yaml", &r.to_yaml()).unwrap();
    let file = dir.join("store-0042.yaml");
    std::fs::write(&file, rendered.to_yaml()).unwrap();
    let state = dir.join("state");
    let netd = require_bin("netd");
    let out = Command::new(&netd)
        .args(["--netns", &ns.0, "--state-dir"])
        .arg(&state)
        .arg("apply")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "netd apply: {}", String::from_utf8_lossy(&out.stderr));
    let sock = dir.join("netd.sock");
    let args: Vec<String> = vec![
        "--netns".into(),
        ns.0.clone(),
        "--state-dir".into(),
        state.display().to_string(),
        "serve".into(),
        "--check-interval".into(),
        "1".into(),
        "--socket".into(),
        sock.display().to_string(),
    ];
    let mut d = Daemon::new(netd, args, dir.join("netd.log"));
    let links_applied = links(&ns.0);
    assert!(links_applied.iter().any(|l| l.starts_with("br-")), "{links_applied:?}");
    let files: Vec<PathBuf> = ["applied.json", "ipam.json", "endpoints.json", "dhcp.json"]
        .iter()
        .map(|f| state.join(f))
        .collect();
    let observe = async |sock: &Path| {
        let mut c = netd_client(sock).await?;
        c.observe(pb::ObserveRequest {}).await.ok().map(|r| r.into_inner())
    };
    let start = async |d: &mut Daemon| {
        let _ = std::fs::remove_file(&sock);
        d.spawn();
        let t0 = Instant::now();
        loop {
            if let Some(o) = observe(&sock).await {
                return o;
            }
            if let Some(st) = d.exited() {
                panic!("netd serve exited at start ({st}): {}", d.log());
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "netd did not answer: {}", d.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    start(&mut d).await;
    for i in 0..n {
        let candidates: Vec<PathBuf> = files.iter().filter(|p| p.exists()).cloned().collect();
        let path = pick(i, &candidates, rng).clone();
        let name = file_name(&path);
        d.kill9();
        let copy_before = newest_copy(&path);
        let (dmg, _) = damage(&path, rng, figures);
        eprintln!("chaos_state: netd round {i}: {name} {dmg}");
        figures.starts += 1;
        let o = start(&mut d).await;
        figures.started += 1;
        let kept = newest_copy(&path);
        assert!(
            kept.is_some() && kept != copy_before,
            "{} was not set aside ({dmg})",
            path.display()
        );
        let kept_name = file_name(&kept.unwrap());
        let subject = format!("state file {name}");
        let p = o.problems.iter().find(|p| p.subject == subject);
        assert!(
            p.is_some_and(|p| p.message.contains(&kept_name) && p.source == "netd"),
            "no problem {subject}: {:?}",
            o.problems
        );
        // The kernel's network is left as it was (nothing torn down for want of the file).
        assert_eq!(links(&ns.0), links_applied, "netd changed the links ({name} {dmg})");
        // nodeagent applies its desired profile again: the file is written, the problem over.
        let mut c = netd_client(&sock).await.unwrap();
        let mut events = c.events(pb::EventsRequest {}).await.unwrap().into_inner();
        c.apply(pb::ApplyRequest {
            revision: rendered.revision.to_string(),
            profile_yaml: rendered.to_yaml(),
            confirm_seconds: 0,
            uplink_override: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("apply after {name} {dmg}: {e}\n{}", d.log()));
        let t0 = Instant::now();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(20), events.message()).await;
            match ev {
                Ok(Ok(Some(e))) if e.kind == "recovered" && e.subject == subject => break,
                Ok(Ok(Some(_))) => {}
                other => panic!("no recovered event for {subject}: {other:?}\n{}", d.log()),
            }
            assert!(t0.elapsed() < Duration::from_secs(20));
        }
        let o = observe(&sock).await.unwrap();
        assert_eq!(o.applied_revision, rendered.revision.as_str());
        assert!(o.problems.iter().all(|p| p.subject != subject), "{:?}", o.problems);
        assert_eq!(links(&ns.0), links_applied);
        figures.rounds += 1;
    }
    figures.per_daemon.push(("netd".into(), n));
    d.kill9();
    let _ = Command::new(require_bin("netd"))
        .args(["--netns", &ns.0, "--state-dir"])
        .arg(&state)
        .arg("teardown")
        .output();
}

// ---------------------------------------------------------------------------------------------
// vmd, with no VM booted

fn domains() -> BTreeSet<String> {
    must("virsh -c qemu:///system list --all --name")
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

async fn vmd_rounds(rng: &mut Rng, figures: &mut Figures, n: usize) {
    use backroom_api::vmd as pb;
    let o = sh("virsh -c qemu:///system version");
    assert!(
        o.status.success(),
        "libvirtd does not answer on qemu:///system ({}): run scripts/start-services",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let sock = dir.join("vmd.sock");
    // The coffee shop without its NVR: an Apply on this machine's shared libvirt would remove
    // every Backroom domain the profile does not name (other tests' too), so the state an
    // Apply leaves is written here, and vmd's start-up (adoption) writes it again itself.
    let store =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/fleet/stores/store-0042.yaml");
    let mut r = backroom_profiles::render_file(&store).unwrap_or_else(|e| panic!("{e}"));
    r.profile.workloads.retain(|w| !matches!(w, Workload::Vm(_)));
    r.profile.network.firewall.allow.retain(|a| a.to.as_str() != "nvr" && a.from.as_str() != "nvr");
    let rendered = backroom_profiles::render_str("store-0042.yaml", &r.to_yaml())
        .unwrap_or_else(|e| panic!("{e}"));
    let seed = serde_json::json!({
        "revision": rendered.revision.as_str(),
        "profile_yaml": rendered.to_yaml(),
        "vms": {},
    });
    let state_file = state.join("state.json");
    let args: Vec<String> = vec![
        "serve".into(),
        "--socket".into(),
        sock.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--virt-type".into(),
        "qemu".into(),
    ];
    let mut d = Daemon::new(require_bin("vmd"), args, dir.join("vmd.log"));
    let list = async |sock: &Path| {
        let ch = backroom_daemon::socket::connect(sock).await.ok()?;
        let mut c = pb::vmd_client::VmdClient::new(ch);
        c.list(pb::ListRequest {}).await.ok().map(|r| r.into_inner())
    };
    let start = async |d: &mut Daemon| {
        let _ = std::fs::remove_file(&sock);
        d.spawn();
        let t0 = Instant::now();
        loop {
            if let Some(l) = list(&sock).await {
                return l;
            }
            if let Some(st) = d.exited() {
                panic!("vmd serve exited at start ({st}): {}", d.log());
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "vmd did not answer: {}", d.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let before = domains();
    for i in 0..n {
        std::fs::write(&state_file, serde_json::to_vec_pretty(&seed).unwrap()).unwrap();
        let written = std::fs::metadata(&state_file).unwrap().modified().unwrap();
        start(&mut d).await;
        // Adopted (nothing to adopt) and saved by vmd itself.
        let t0 = Instant::now();
        while std::fs::metadata(&state_file).and_then(|m| m.modified()).ok() == Some(written) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "vmd did not save its state: {}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d.kill9();
        let copy_before = newest_copy(&state_file);
        let (dmg, _) = damage(&state_file, rng, figures);
        eprintln!("chaos_state: vmd round {i}: state.json {dmg}");
        figures.starts += 1;
        let l = start(&mut d).await;
        figures.started += 1;
        let kept = newest_copy(&state_file);
        assert!(kept.is_some() && kept != copy_before, "state.json was not set aside ({dmg})");
        let kept_name = file_name(&kept.unwrap());
        assert!(
            l.problems
                .iter()
                .any(|p| p.subject == "state file state.json" && p.message.contains(&kept_name)),
            "no problem for state.json: {:?}",
            l.problems
        );
        assert!(l.vms.is_empty(), "{:?}", l.vms);
        d.kill9();
        figures.rounds += 1;
    }
    assert_eq!(domains(), before, "no libvirt domain was touched");
    figures.per_daemon.push(("vmd".into(), n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_of_state_files_never_keeps_a_daemon_down_nor_reuses_a_number() {
    let mut rng = Rng::from_env("chaos_state");
    let mut figures = Figures::default();
    nodeagent_rounds(&mut rng, &mut figures, rounds(7)).await;
    netd_rounds(&mut rng, &mut figures, rounds(3)).await;
    vmd_rounds(&mut rng, &mut figures, rounds(2)).await;
    assert_eq!(figures.started, figures.starts);
    assert_eq!(figures.seq_reused, 0);
    eprintln!("{}", figures.line());
    figures.append_table_row();
}
