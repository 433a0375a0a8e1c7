//! Helpers of vmd's tests against the real libvirtd (`qemu:///system`, libvirtd in the `bkstore`
//! network namespace, see scripts/services.d/libvirt): the test guests, unique names, bridges
//! in `bkstore`, a vmd daemon process, a loopback HTTP server and a stand-in netd.
//! Every helper that makes something removes it when dropped, also when a test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const NS: &str = "bkstore";
pub const VMD: &str = env!("CARGO_BIN_EXE_vmd");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this test process and call: `t<pid><n>`.
pub fn uniq() -> String {
    format!("t{}{}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::SeqCst))
}

pub struct Guest {
    pub dir: PathBuf,
}

impl Guest {
    pub fn kernel(&self) -> String {
        self.dir.join("vmlinuz").display().to_string()
    }
    pub fn initrd(&self) -> String {
        self.dir.join("initrd.img").display().to_string()
    }
    pub fn disk(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.qcow2"))
    }
}

/// The test guests, built (once, cached) by vmd/testguest/build.sh from Debian packages.
pub fn guest() -> &'static Guest {
    static G: OnceLock<Guest> = OnceLock::new();
    G.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testguest/build.sh");
        let out = Command::new(&script).output().expect("run vmd/testguest/build.sh");
        assert!(
            out.status.success(),
            "the test guest did not build ({}): {}\nrun scripts/install-deps",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir =
            String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_string();
        Guest { dir: dir.into() }
    })
}

/// Fails (never skips) when libvirtd does not answer.
pub fn require_libvirt() {
    let out = Command::new("virsh").args(["-c", "qemu:///system", "version"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "libvirtd does not answer on qemu:///system ({}): run scripts/start-services",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("virsh not found ({e}): run scripts/install-deps"),
    }
    assert!(
        Path::new("/run/netns/bkstore").exists(),
        "network namespace bkstore missing: run scripts/start-services"
    );
}

pub fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

pub fn virsh(args: &[&str]) -> String {
    let mut a = vec!["-c", "qemu:///system"];
    a.extend_from_slice(args);
    String::from_utf8_lossy(&sh("virsh", &a).stdout).into_owned()
}

/// A bridge inside `bkstore` with a host address, removed on drop.
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    pub fn new(segment: &str, host_cidr: &str) -> Bridge {
        let name = format!("br-{segment}");
        let o = sh("ip", &["-n", NS, "link", "add", &name, "type", "bridge"]);
        assert!(
            o.status.success(),
            "cannot create {name} in {NS}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let b = Bridge { name };
        sh("ip", &["-n", NS, "addr", "add", host_cidr, "dev", &b.name]);
        sh("ip", &["-n", NS, "link", "set", &b.name, "up"]);
        b
    }

    /// The ports of the bridge: `(name, mac)`.
    pub fn ports(&self) -> Vec<(String, String)> {
        let o = sh("ip", &["-n", NS, "-o", "link", "show", "master", &self.name]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let name = l.split(':').nth(1)?.trim().split('@').next()?.to_string();
                let mac = l.split("link/ether ").nth(1)?.split_whitespace().next()?.to_string();
                Some((name, mac))
            })
            .collect()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        sh("ip", &["-n", NS, "link", "del", &self.name]);
    }
}

/// Destroys and undefines the named workloads' domains on drop.
pub struct Domains(pub Vec<String>);

impl Drop for Domains {
    fn drop(&mut self) {
        for w in &self.0 {
            let d = format!("bk-{w}");
            virsh(&["destroy", &d]);
            virsh(&["undefine", "--nvram", &d]);
        }
    }
}

/// A `vmd serve` process, killed (by its pid) on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let socket = dir.join("vmd.sock");
        let state = dir.join("state");
        let log = dir.join("vmd.log");
        let mut args: Vec<String> = vec![
            "--socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--virt-type".into(),
            "qemu".into(),
            "--shutdown-timeout".into(),
            "2s".into(),
            "--settle".into(),
            "12s".into(),
            "--probe-netns".into(),
            NS.into(),
            // The test guests' kernels and initrds are read from their folder.
            "--image-folder".into(),
            guest().dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Daemon { child: spawn(&args, &log), socket, state, args, log };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "vmd serve exited ({st}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if self.socket.exists() && self.cli(&["list"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "vmd serve did not answer within 30s: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill9();
        // What systemd's unit does too (ExecStartPre); here so that no one-shot command sees
        // a stale socket and works on the state folder while the daemon comes up.
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn(&self.args, &self.log);
        self.wait_ready();
    }

    /// Runs a one-shot `vmd` command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend([
            "--socket".into(),
            self.socket.display().to_string(),
            "--state-dir".into(),
            self.state.display().to_string(),
        ]);
        Command::new(VMD).args(&a).output().unwrap()
    }

    pub fn logs(&self, vm: &str) -> String {
        String::from_utf8_lossy(&self.cli(&["logs", vm]).stdout).into_owned()
    }

    /// Waits until `vm`'s console log (read through `vmd logs`) holds `needle` `count` times.
    pub fn wait_log(&self, vm: &str, needle: &str, count: usize, timeout: Duration) -> String {
        let t = Instant::now();
        loop {
            let l = self.logs(vm);
            if l.matches(needle).count() >= count {
                return l;
            }
            if t.elapsed() > timeout {
                panic!(
                    "{vm}: `{needle}` x{count} not on the console within {timeout:?}; console:\n{l}\nvmd log tail:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        t.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `vmd list` as (name, state, restarts) rows.
    pub fn list(&self) -> Vec<(String, String, u32, String)> {
        let o = self.cli(&["list"]);
        assert!(o.status.success(), "vmd list failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.to_string(),
                    f.get(3)?.parse().ok()?,
                    l.to_string(),
                ))
            })
            .collect()
    }

    pub fn vm(&self, name: &str) -> (String, u32, String) {
        self.list()
            .into_iter()
            .find(|r| r.0 == name)
            .map(|r| (r.1, r.2, r.3))
            .unwrap_or_else(|| panic!("{name} not in vmd list"))
    }

    pub fn wait_state(&self, name: &str, state: &str, min_restarts: u32, timeout: Duration) {
        let t = Instant::now();
        loop {
            let (s, r, line) = self.vm(name);
            if s == state && r >= min_restarts {
                return;
            }
            if t.elapsed() > timeout {
                panic!(
                    "{name}: wanted {state} with ≥{min_restarts} restarts, have: {line}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(VMD)
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("spawn vmd serve")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The pid of a running domain's QEMU (libvirt's pid file).
pub fn qemu_pid(workload: &str) -> Option<i32> {
    std::fs::read_to_string(format!("/run/libvirt/qemu/bk-{workload}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Running domains named `bk-<workload>` (to check there is no duplicate).
pub fn running_domains(workload: &str) -> usize {
    virsh(&["list", "--name"]).lines().filter(|l| l.trim() == format!("bk-{workload}")).count()
}

/// A loopback HTTP/1.1 server for files, with `Range` support. The first `cut_first` GETs are
/// cut off after half the body (a broken download to resume). Stops when dropped.
pub struct HttpServer {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// A certificate authority made for one test, and an https server certificate for 127.0.0.1.
pub struct TestTls {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestTls {
    pub fn new() -> TestTls {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "Backroom test image CA");
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        TestTls { ca_pem, server: Arc::new(server) }
    }
}

impl HttpServer {
    pub fn start(root: PathBuf, cut_first: u32) -> HttpServer {
        Self::start_with(root, cut_first, None)
    }

    /// An https server (the certificate of `tls`) with the same behaviour.
    pub fn start_tls(root: PathBuf, tls: &TestTls) -> HttpServer {
        Self::start_with(root, 0, Some(tls.server.clone()))
    }

    fn start_with(
        root: PathBuf,
        cut_first: u32,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> HttpServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (req2, stop2) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut cuts = cut_first;
            while !stop2.load(Ordering::SeqCst) {
                let (s, _) = match l.accept() {
                    Ok(x) => x,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                s.set_nonblocking(false).unwrap();
                let cut = cuts > 0;
                cuts = cuts.saturating_sub(1);
                match &tls {
                    None => serve_one(s, &root, cut, &req2),
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                            continue;
                        };
                        serve_one(rustls::StreamOwned::new(conn, s), &root, cut, &req2)
                    }
                }
            }
        });
        HttpServer { port, requests, stop }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_one(s: impl Read + Write, root: &Path, cut: bool, log: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(s);
    let mut first = String::new();
    if r.read_line(&mut first).is_err() {
        return;
    }
    let mut range_from = 0u64;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    log.lock()
        .unwrap()
        .push(format!("GET /{path} from {range_from}{}", if cut { " (cut)" } else { "" }));
    let Ok(mut f) = std::fs::File::open(root.join(&path)) else {
        let _ = r
            .get_mut()
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let mut body = Vec::new();
    f.read_to_end(&mut body).unwrap();
    let total = body.len() as u64;
    let part = &body[range_from.min(total) as usize..];
    let head = if range_from > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {range_from}-{}/{total}\r\nConnection: close\r\n\r\n",
            part.len(),
            total - 1
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", part.len())
    };
    let s = r.get_mut();
    let _ = s.write_all(head.as_bytes());
    let send = if cut { &part[..part.len() / 2] } else { part };
    let _ = s.write_all(send);
    let _ = s.flush();
    // A cut: the connection closes before Content-Length bytes arrived.
}

pub fn sha256_file(p: &Path) -> String {
    let o = sh("sha256sum", &[&p.display().to_string()]);
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
}
pub mod fake_netd;

/// Runs the vmd command line once (one-shot commands, no daemon). A command that works on a
/// state folder also gets the test guests' folder as an image folder (their kernels and
/// initrds are read from there).
pub fn vmd(args: &[&str]) -> Output {
    let mut c = Command::new(VMD);
    c.args(args);
    if args.contains(&"--state-dir") {
        c.arg("--image-folder").arg(&guest().dir);
    }
    c.output().unwrap()
}

/// A command's stdout and stderr together, for messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Polls `vmd logs VM --direct` (state folder `state`) until the console shows `needle`.
pub fn wait_direct_log(vm: &str, state: &str, needle: &str, timeout: Duration) -> String {
    let t = Instant::now();
    loop {
        let o = vmd(&["logs", vm, "--state-dir", state, "--direct"]);
        let l = String::from_utf8_lossy(&o.stdout).to_string();
        if l.contains(needle) {
            return l;
        }
        assert!(t.elapsed() < timeout, "no `{needle}` on {vm}'s console: {l}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
