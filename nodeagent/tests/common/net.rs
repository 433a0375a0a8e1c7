//! A test-only [`Network`]: namespaces and veths into a bridge that lives in a hub namespace
//! of its own (10.250.<n>.0/24), so containers get real addresses without netd and without
//! touching the root namespace. Everything it made is deleted on drop.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;

use backroom_nodeagent::error::{Error, Result, Rpc};
use backroom_nodeagent::network::{Endpoints, NetEvents, Network, NetworkApplied};
use backroom_nodeagent::problems::OpenProblem;

/// The test network's failures, as netd would answer them.
fn netd(op: &'static str) -> impl FnOnce(String) -> Error {
    move |message| Error::Netd { op, source: Rpc(tonic::Status::internal(message)) }
}

pub struct TestNetwork {
    pub hub: String,
    pub subnet: u8,
    tag: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_host: u8,
    /// (workload, instance) → (namespace, address)
    endpoints: BTreeMap<(String, String), (String, String)>,
    stable: BTreeMap<String, String>,
    namespaces: Vec<String>,
    vethn: u32,
}

fn ip(args: &[&str]) -> std::result::Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl TestNetwork {
    pub fn new(subnet: u8) -> Self {
        let tag = format!("{}{}", std::process::id() % 100_000, subnet);
        let hub = format!("bkt{tag}-hub");
        ip(&["netns", "add", &hub]).expect("ip netns add (iproute2)");
        ip(&["-n", &hub, "link", "set", "lo", "up"]).unwrap();
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]).unwrap();
        ip(&["-n", &hub, "addr", "add", &format!("10.250.{subnet}.1/24"), "dev", "br0"]).unwrap();
        ip(&["-n", &hub, "link", "set", "br0", "up"]).unwrap();
        TestNetwork {
            hub,
            subnet,
            tag,
            state: Mutex::new(State { next_host: 10, ..Default::default() }),
        }
    }

    pub fn hub_path(&self) -> String {
        format!("/run/netns/{}", self.hub)
    }

    fn make(&self, workload: &str, instance: &str) -> std::result::Result<Endpoints, String> {
        let mut s = self.state.lock().unwrap();
        let ns = if instance.is_empty() {
            format!("bkt{}-{workload}", self.tag)
        } else {
            format!("bkt{}-{workload}--{instance}", self.tag)
        };
        s.next_host += 1;
        let host = s.next_host;
        let address = if instance.is_empty() {
            s.stable
                .entry(workload.to_string())
                .or_insert_with(|| format!("10.250.{}.{host}/24", self.subnet))
                .clone()
        } else {
            format!("10.250.{}.{host}/24", self.subnet)
        };
        s.vethn += 1;
        let veth = format!("bt{}{}", std::process::id() % 10_000, s.vethn);
        ip(&["netns", "add", &ns])?;
        s.namespaces.push(ns.clone());
        ip(&[
            "-n", &self.hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", &self.hub, "link", "set", &veth, "master", "br0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        s.endpoints.insert((workload.into(), instance.into()), (ns.clone(), address.clone()));
        Ok(Endpoints { netns_path: format!("/run/netns/{ns}"), addresses: vec![address] })
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let s = self.state.lock().unwrap();
        let mut failures = Vec::new();
        for ns in s.namespaces.iter().chain(std::iter::once(&self.hub)) {
            if let Err(e) = ip(&["netns", "del", ns])
                && !e.contains("No such file")
            {
                failures.push(e);
            }
        }
        if !failures.is_empty() {
            eprintln!("test network cleanup: {}", failures.join("; "));
        }
    }
}

impl Network for TestNetwork {
    async fn apply(&self, _: &str, _: &str, _: u32) -> Result<NetworkApplied> {
        Ok(NetworkApplied {
            changed: false,
            actions: vec!["test network".into()],
            confirm_deadline: 0,
        })
    }
    async fn confirm(&self, _: &str) -> Result<()> {
        Ok(())
    }
    async fn attach(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        if let Some((ns, a)) =
            self.state.lock().unwrap().endpoints.get(&(workload.into(), instance.into()))
        {
            return Ok(Endpoints {
                netns_path: format!("/run/netns/{ns}"),
                addresses: vec![a.clone()],
            });
        }
        self.make(workload, instance).map_err(netd("attach"))
    }
    async fn detach(&self, workload: &str, instance: &str) -> Result<()> {
        let removed =
            self.state.lock().unwrap().endpoints.remove(&(workload.into(), instance.into()));
        if let Some((ns, _)) = removed {
            ip(&["netns", "del", &ns]).map_err(netd("detach"))?;
        }
        Ok(())
    }
    async fn promote(&self, workload: &str, instance: &str) -> Result<Endpoints> {
        let mut s = self.state.lock().unwrap();
        let (next_ns, temp) = s
            .endpoints
            .remove(&(workload.into(), instance.into()))
            .ok_or_else(|| netd("promote")("no such instance".into()))?;
        let primary_ns = format!("bkt{}-{workload}", self.tag);
        if let Some((old_ns, _)) = s.endpoints.remove(&(workload.into(), String::new())) {
            let _ = ip(&["netns", "del", &old_ns]);
        }
        let stable = s.stable.get(workload).cloned().unwrap_or(temp.clone());
        let r = ip(&["-n", &next_ns, "addr", "del", &temp, "dev", "eth0"])
            .and_then(|_| ip(&["-n", &next_ns, "addr", "add", &stable, "dev", "eth0"]))
            .and_then(|_| {
                // As netd does: the instance's namespace takes the primary's name.
                let target = format!("/run/netns/{primary_ns}");
                std::fs::File::create(&target).map_err(|e| format!("create {target}: {e}"))?;
                let out = Command::new("mount")
                    .args(["--bind", &format!("/run/netns/{next_ns}"), &target])
                    .output()
                    .map_err(|e| format!("mount: {e}"))?;
                if !out.status.success() {
                    return Err(format!("mount --bind: {}", String::from_utf8_lossy(&out.stderr)));
                }
                ip(&["netns", "del", &next_ns])
            });
        r.map_err(netd("promote"))?;
        if !s.namespaces.contains(&primary_ns) {
            s.namespaces.push(primary_ns.clone());
        }
        s.endpoints.insert((workload.into(), String::new()), (primary_ns.clone(), stable.clone()));
        Ok(Endpoints { netns_path: format!("/run/netns/{primary_ns}"), addresses: vec![stable] })
    }
    async fn events(&self) -> Result<NetEvents> {
        // A network without loops of its own: nothing ever fails in it.
        Ok(Box::pin(futures::stream::pending()))
    }
    async fn problems(&self) -> Result<Vec<OpenProblem>> {
        Ok(Vec::new())
    }
    fn configured(&self) -> bool {
        true
    }
}

/// GET `path` from `addr` with a socket made inside the namespace at `netns` (blocking; a thread).
pub fn http_get_in(netns: &str, addr: &str, path: &str) -> std::result::Result<String, String> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let path = path.to_string();
    backroom_daemon::netns::run_in(std::path::Path::new(netns), move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .map_err(|e| e.to_string())?
}
