//! Test plumbing: namespaces that clean themselves up, the netd binary, real TCP/UDP traffic
//! between namespaces, and the allow matrix a profile implies.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backroom_profiles::{HOST, INTERNET, Profile, Proto};

pub mod serve;

static COUNTER: AtomicUsize = AtomicUsize::new(0);
/// Tests that make workload namespaces (`bk-<workload>`, names fixed by the contract) take turns.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("nt{}{}{tag}", std::process::id() % 100_000, n)
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

/// Runs a shell command and fails the test when it fails.
pub fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A network namespace removed (with every workload namespace it lists) on drop.
pub struct Ns {
    pub name: String,
    also: Vec<String>,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let name = unique(tag);
        must(&format!("ip netns add {name}"));
        must(&format!("ip -n {name} link set lo up"));
        Ns { name, also: Vec::new() }
    }

    /// Removes these namespace names too when dropped (workload namespaces netd made).
    pub fn also_remove(&mut self, names: &[&str]) {
        self.also.extend(names.iter().map(|s| s.to_string()));
    }

    pub fn ip(&self, args: &str) -> String {
        must(&format!("ip -n {} {args}", self.name))
    }

    /// Several `ip` commands in one process (each `ip` start is slow under the lab's TCG).
    pub fn ip_batch(&self, cmds: &[String]) {
        let file = std::env::temp_dir().join(format!(
            "{}-{}.ip",
            self.name,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&file, cmds.join("\n") + "\n").unwrap();
        must(&format!("ip -n {} -batch {}", self.name, file.display()));
        let _ = std::fs::remove_file(file);
    }

    pub fn exec(&self, cmd: &str) -> Output {
        sh(&format!("ip netns exec {} {cmd}", self.name))
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_ns(&format!("/run/netns/{}", self.name), f)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        for n in &self.also {
            let _ = sh(&format!("ip netns del {n} 2>/dev/null"));
        }
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

pub fn in_ns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    backroom_daemon::netns::run_in(Path::new(path), f).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Connects `a` (a new namespace `tag` on `a` side) to bridge `bridge` of the store namespace:
/// a client device on a segment.
pub fn plug_client(store: &Ns, bridge: &str, addr: &str, gw: Option<&str>) -> Ns {
    let port = format!("tc{}", COUNTER.fetch_add(1, Ordering::SeqCst) % 100_000);
    plug_client_as(store, &port, bridge, addr, gw)
}

/// Like [`plug_client`], with the bridge port named `port` (e.g. as vmd names a VM's tap).
pub fn plug_client_as(store: &Ns, port: &str, bridge: &str, addr: &str, gw: Option<&str>) -> Ns {
    let c = Ns::new("c");
    must(&format!(
        "ip link add {port} netns {} type veth peer name eth0 netns {}",
        store.name, c.name
    ));
    store.ip(&format!("link set {port} master {bridge} up"));
    c.ip(&format!("addr add {addr} dev eth0"));
    c.ip("link set eth0 up");
    if let Some(g) = gw {
        c.ip(&format!("route add default via {g}"));
    }
    c
}

pub struct Netd {
    pub bin: PathBuf,
    pub state: tempfile::TempDir,
    pub netns: String,
}

impl Netd {
    pub fn new(store: &Ns) -> Netd {
        Netd {
            bin: std::env::var_os("BACKROOM_NETD_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_netd"))),
            state: tempfile::tempdir().unwrap(),
            netns: store.name.clone(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--netns")
            .arg(&self.netns)
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(
            o.status.success(),
            "netd {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// Listeners for TCP and UDP ports inside a namespace; each TCP accept answers `reply`, each
/// UDP datagram is echoed back prefixed with it.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    pub fn start(ns_path: &str, tcp: &[u16], udp: &[u16], reply: &str) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &p in tcp {
            let (stop, path, reply) = (stop.clone(), ns_path.to_string(), reply.to_string());
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                backroom_daemon::netns::enter(Path::new(&path)).unwrap();
                let l = TcpListener::bind(("0.0.0.0", p)).unwrap();
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(reply.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            rx.recv().unwrap();
        }
        for &p in udp {
            let (stop, path, reply) = (stop.clone(), ns_path.to_string(), reply.to_string());
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                backroom_daemon::netns::enter(Path::new(&path)).unwrap();
                let s = UdpSocket::bind(("0.0.0.0", p)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((_, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(reply.as_bytes(), from);
                    }
                }
            }));
            rx.recv().unwrap();
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

/// Whether a connection from inside `ns_path` to `dst` gets an answer (what the server sent).
pub fn probe(ns_path: &str, l4: L4, dst: SocketAddr, timeout: Duration) -> Option<String> {
    in_ns(ns_path, move || match l4 {
        L4::Tcp => {
            let mut s = TcpStream::connect_timeout(&dst, timeout).ok()?;
            s.set_read_timeout(Some(timeout)).ok()?;
            let mut buf = [0u8; 32];
            let n = s.read(&mut buf).ok()?;
            (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
        }
        L4::Udp => {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.set_read_timeout(Some(timeout)).ok()?;
            s.send_to(b"ping", dst).ok()?;
            let mut buf = [0u8; 32];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        }
    })
}

/// One end of a flow in the allow matrix: where it runs, what it is called in rules.
#[derive(Clone, Debug)]
pub struct End {
    pub label: String,
    pub ns_path: String,
    /// Names rules may use for it as a source (its segment, its workload name, host, internet).
    pub from_ids: BTreeSet<String>,
    /// Only destinations in this subnet are reachable from it (a device whose gateway is not
    /// the store); `None`: everything.
    pub reach: Option<ipnet::IpNet>,
}

/// A destination: an address and what rules may call it.
#[derive(Clone, Debug)]
pub struct Dest {
    pub label: String,
    pub addr: IpAddr,
    pub to_ids: BTreeSet<String>,
}

pub fn ids(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Whether the profile's rules allow `from` to reach `to` on (l4, port).
pub fn allowed(
    p: &Profile,
    from: &BTreeSet<String>,
    to: &BTreeSet<String>,
    l4: L4,
    port: u16,
) -> bool {
    if p.network.firewall.default == backroom_profiles::Verdict::Accept {
        return true;
    }
    p.network.firewall.allow.iter().any(|r| {
        from.contains(r.from.as_str())
            && to.contains(r.to.as_str())
            && (r.ports.is_empty()
                || r.ports.iter().any(|s| {
                    let proto_ok =
                        matches!((s.proto, l4), (Proto::Tcp, L4::Tcp) | (Proto::Udp, L4::Udp));
                    proto_ok && s.ports.is_some_and(|(lo, hi)| lo <= port && port <= hi)
                }))
    })
}

/// The flows worth checking towards `d`: the ports of every rule that names it (allowed or not
/// depending on the source) and the given `others` (which no rule should allow).
pub fn focused(p: &Profile, d: &Dest, others: &[(L4, u16)]) -> Vec<(L4, u16)> {
    let mut v: Vec<(L4, u16)> = p
        .network
        .firewall
        .allow
        .iter()
        .filter(|r| d.to_ids.contains(r.to.as_str()))
        .flat_map(|r| r.ports.iter())
        .filter_map(|s| match (s.proto, s.ports) {
            (Proto::Tcp, Some((lo, _))) => Some((L4::Tcp, lo)),
            (Proto::Udp, Some((lo, _))) => Some((L4::Udp, lo)),
            _ => None,
        })
        .collect();
    v.extend_from_slice(others);
    v.sort_by_key(|f| (f.0 == L4::Udp, f.1));
    v.dedup();
    v
}

/// Every (source, destination, protocol, port) of the matrix, checked with real connections
/// in parallel; returns the mismatches. With `focus`, each destination gets the flows
/// [`focused`] picks (`flows` then being the unrelated ones) instead of all of `flows`.
pub fn check_matrix(
    p: &Profile,
    froms: &[End],
    dests: &[Dest],
    flows: &[(L4, u16)],
) -> (usize, Vec<String>) {
    check_matrix_with(p, froms, dests, flows, false)
}

pub fn check_matrix_with(
    p: &Profile,
    froms: &[End],
    dests: &[Dest],
    flows: &[(L4, u16)],
    focus: bool,
) -> (usize, Vec<String>) {
    run_jobs(p, jobs(p, froms, dests, flows, focus))
}

/// One flow to check: from, to, protocol, port.
pub type Job = (End, Dest, L4, u16);

/// The flows of the matrix between `froms` and `dests`.
pub fn jobs(
    p: &Profile,
    froms: &[End],
    dests: &[Dest],
    flows: &[(L4, u16)],
    focus: bool,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    for f in froms {
        for d in dests {
            // Not through the store: a source to itself, the router or internet to the internet.
            let upstream = f.label.starts_with("router") || f.from_ids.contains(INTERNET);
            let beyond_store = d.to_ids.contains(INTERNET) || d.label.contains("behind the router");
            if f.from_ids.contains(HOST) || f.label == d.label || (beyond_store && upstream) {
                continue;
            }
            if f.reach.is_some_and(|n| !n.contains(&d.addr)) {
                continue;
            }
            let picked = if focus { focused(p, d, flows) } else { flows.to_vec() };
            for (l4, port) in picked {
                jobs.push((f.clone(), d.clone(), l4, port));
            }
        }
    }
    jobs
}

/// Checks every job with real connections, in parallel; returns (count, mismatches).
pub fn run_jobs(p: &Profile, jobs: Vec<Job>) -> (usize, Vec<String>) {
    let total = jobs.len();
    let jobs = Arc::new(Mutex::new(jobs));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let profile = Arc::new(p.clone());
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (jobs, bad, profile) = (jobs.clone(), bad.clone(), profile.clone());
            std::thread::spawn(move || {
                loop {
                    let Some((f, d, l4, port)) = jobs.lock().unwrap().pop() else { return };
                    let want = allowed(&profile, &f.from_ids, &d.to_ids, l4, port);
                    let got = probe(
                        &f.ns_path,
                        l4,
                        SocketAddr::new(d.addr, port),
                        Duration::from_millis(700),
                    )
                    .is_some();
                    if want != got {
                        // One more try before calling it: a lost first packet is not a verdict.
                        let again = probe(
                            &f.ns_path,
                            l4,
                            SocketAddr::new(d.addr, port),
                            Duration::from_millis(1500),
                        )
                        .is_some();
                        if again != want {
                            bad.lock().unwrap().push(format!(
                                "{} -> {} ({}) {l4:?}/{port}: expected {}, got {}",
                                f.label,
                                d.label,
                                d.addr,
                                if want { "allowed" } else { "blocked" },
                                if again { "allowed" } else { "blocked" }
                            ));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let mut v = bad.lock().unwrap().clone();
    v.sort();
    (total, v)
}

/// `nft -j list table FAMILY backroom` in a namespace: (rule handles, raw JSON).
pub fn nft_handles(ns: &str, family: &str) -> Vec<u64> {
    let o = sh(&format!("ip netns exec {ns} nft -j list table {family} backroom"));
    if !o.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut out: Vec<u64> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.get("rule").and_then(|r| r["handle"].as_u64()))
        .collect();
    out.sort_unstable();
    out
}

pub fn render(path: &Path) -> backroom_profiles::Rendered {
    backroom_profiles::render_file(path).unwrap()
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}
