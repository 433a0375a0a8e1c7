//! `netd serve` against this host's kernel, in namespaces the tests make: a store's uplink
//! pulled out and put back (failing, Observe's problems, recovered), a graceful stop on SIGTERM,
//! and an Apply that does not wait for a DHCP exchange in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod store;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backroom_api::netd as pb;
use common::serve::{Serve, until};
use common::{must, serial};
use store::{Store, Upstream};

/// The coffee shop's networks: the uplink carries `mgmt` untagged.
const SHOP: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: shop}
network:
  uplink: {interface: eno1}
  segments:
    - {name: mgmt, vlan: untagged, subnet: 10.9.0.0/24, address: 10.9.0.2/24, gateway: 10.9.0.1}
    - {name: pos, internal: true, subnet: 10.1.0.0/24, address: 10.1.0.1/24}
  firewall:
    default: drop
    allow:
      - {name: pos-to-mgmt, from: pos, to: mgmt, ports: [tcp/22]}
      - {name: mgmt-ssh, from: mgmt, to: host, ports: [tcp/22]}
"#;

#[test]
fn an_uplink_pulled_out_is_one_failing_problem_until_it_is_back_and_repaired() {
    let _g = serial();
    let s = Store::new(SHOP, &Upstream { router_addr: "10.9.0.1/24".into(), dhcp: false });
    // A long interval: the link events, not the interval, tell netd.
    let mut serve = Serve::start(&s.netd, 300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = backroom_netd::server::client(serve.sock.clone()).await.unwrap();
        let mut events = c.events(pb::EventsRequest {}).await.unwrap().into_inner();
        let o = c.observe(pb::ObserveRequest {}).await.unwrap().into_inner();
        assert!(o.problems.is_empty() && o.drift.is_empty(), "{o:?}");

        // The uplink goes (a veth: its router end goes with it).
        s.store.ip("link del up0");
        let seen = until(&mut events, "failing", "uplink up0", Duration::from_secs(20)).await;
        let failing = seen.last().unwrap();
        assert!(failing.message.contains("uplink up0 does not exist"), "{}", failing.message);
        assert!(failing.message.starts_with("uplink up0: "), "{}", failing.message);
        let o = c.observe(pb::ObserveRequest {}).await.unwrap().into_inner();
        assert_eq!(o.problems.len(), 1, "{:?}", o.problems);
        let p = &o.problems[0];
        assert_eq!((p.subject.as_str(), p.source.as_str()), ("uplink up0", "netd"));
        assert!(p.message.contains("uplink up0 does not exist") && p.failures >= 1, "{p:?}");
        assert!(o.drift.iter().any(|d| d.contains("uplink up0 does not exist")), "{:?}", o.drift);
        let show = s.netd.ok(&["show", "--socket", serve.sock.to_str().unwrap()]);
        assert!(show.contains("failing since") && show.contains("uplink up0"), "{show}");

        // Put back: netd repairs the network (the uplink joins br-mgmt again), then it has
        // recovered.
        must(&format!(
            "ip link add up0 netns {} type veth peer name rt0 netns {}",
            s.store.name, s.router.name
        ));
        s.router.ip("addr add 10.9.0.1/24 dev rt0");
        s.router.ip("link set rt0 up");
        let seen = until(&mut events, "recovered", "uplink up0", Duration::from_secs(20)).await;
        let kinds: Vec<&str> = seen.iter().map(|e| e.kind.as_str()).collect();
        assert!(kinds.contains(&"drift_repaired"), "recovered before the repair: {kinds:?}");
        assert!(!kinds.contains(&"failing"), "one failing event, not one per retry: {seen:#?}");
        assert!(s.store.ip("link show up0").contains("master br-mgmt"));
        let o = c.observe(pb::ObserveRequest {}).await.unwrap().into_inner();
        assert!(o.problems.is_empty(), "{:?}", o.problems);
    });
    drop(rt);

    // SIGTERM: netd stops serving, exits cleanly, and the network stays.
    let st = serve.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st:?}");
    assert!(s.store.ip("-br link show br-mgmt").contains("br-mgmt"), "the network was left");
    assert!(!serve.sock.exists(), "the socket is gone with the daemon");
    assert!(s.apply().contains("nothing to do"), "nothing changed by the stop");
}

/// Every DHCP request that reaches `ns` on UDP port 67, stamped when it arrived.
struct DhcpWatch {
    seen: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DhcpWatch {
    fn start(ns: &str) -> DhcpWatch {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2, path) = (seen.clone(), stop.clone(), format!("/run/netns/{ns}"));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            backroom_daemon::netns::enter(Path::new(&path)).unwrap();
            let sock = UdpSocket::bind(("0.0.0.0", 67)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !st2.load(Ordering::SeqCst) {
                // A BOOTREQUEST: nobody answers it.
                if let Ok(n) = sock.recv(&mut buf)
                    && n > 240
                    && buf[0] == 1
                {
                    s2.lock().unwrap().push(Instant::now());
                }
            }
        });
        rx.recv().unwrap();
        DhcpWatch { seen, stop, thread: Some(thread) }
    }

    fn times(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for DhcpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn request(text: &str) -> pb::ApplyRequest {
    let r = backroom_profiles::render_str("shop.yaml", text).unwrap();
    pb::ApplyRequest {
        revision: r.revision.as_str().into(),
        profile_yaml: r.to_yaml(),
        confirm_seconds: 0,
        uplink_override: "up0".into(),
    }
}

#[test]
fn an_apply_returns_while_a_dhcp_exchange_is_in_flight() {
    let _g = serial();
    // mgmt asks for its address by DHCP; the router is no DHCP server, so an exchange runs its
    // full course (about 12 s) without an answer.
    let before = SHOP.replace(
        "{name: mgmt, vlan: untagged, subnet: 10.9.0.0/24, address: 10.9.0.2/24, gateway: 10.9.0.1}",
        "{name: mgmt, vlan: untagged, address: dhcp}",
    );
    let after = before.replace(
        "ports: [tcp/22]}\n      - {name: mgmt-ssh",
        "ports: [tcp/22, tcp/443]}\n      - {name: mgmt-ssh",
    );
    assert_ne!(before, after);
    let s = Store::new(&before, &Upstream { router_addr: "10.9.0.1/24".into(), dhcp: true });
    let watch = DhcpWatch::start(&s.router.name);
    let serve = Serve::start(&s.netd, 300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = backroom_netd::server::client(serve.sock.clone()).await.unwrap();
        let mut events = c.events(pb::EventsRequest {}).await.unwrap().into_inner();
        // The first apply starts the exchange (beside the API: it returns at once).
        c.apply(request(&before)).await.unwrap();
        let start = Instant::now();
        while watch.times().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10), "no DHCP request left the store");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first_request = watch.times()[0];

        // Held: the firewall change while the exchange is in flight.
        let t = Instant::now();
        let rep = c.apply(request(&after)).await.unwrap().into_inner();
        let held = t.elapsed();
        let held_end = Instant::now();
        assert!(rep.changed, "{:?}", rep.actions);
        let seen = until(&mut events, "failing", "DHCP on br-mgmt", Duration::from_secs(30)).await;
        let exchange_end = Instant::now();
        assert!(seen.last().unwrap().message.contains("no DHCP server answered on br-mgmt"));
        // From the outside: the exchange began before the apply and went on after it.
        assert!(first_request < t, "the exchange started before the apply");
        assert!(
            watch.times().iter().any(|r| *r > held_end) && exchange_end > held_end + Duration::from_secs(1),
            "the exchange was still in flight after the apply returned"
        );

        // Baseline, same run: the same firewall change with no exchange in flight (the failed
        // segment waits out its backoff, 9 s at least).
        c.apply(request(&before)).await.unwrap();
        let requests = watch.times().len();
        let t = Instant::now();
        let rep = c.apply(request(&after)).await.unwrap().into_inner();
        let baseline = t.elapsed();
        assert!(rep.changed);
        assert_eq!(watch.times().len(), requests, "no exchange ran during the baseline");
        println!(
            "firewall-change apply: {held:?} with a DHCP exchange in flight, {baseline:?} without (baseline)"
        );
        assert!(
            held <= baseline + Duration::from_secs(1),
            "the apply waited for the DHCP exchange: {held:?} against a baseline of {baseline:?}"
        );
    });
}
