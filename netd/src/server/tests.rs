//! The daemon's loops on the in-memory kernel and a manual clock: the drift-check interval, the
//! commit-confirm deadline, failing/recovered transitions, DHCP beside the engine's lock and the
//! link watcher's retries.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::Instant;

use backroom_api::netd::netd_server::Netd;
use backroom_daemon::ManualClock;

use super::*;
use crate::dhcp::{Lease, MemDhcp};
use crate::nft::MemFirewall;
use crate::rtnl::MemLinks;
use crate::state::StateDir;

const PROFILE: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: t}
network:
  uplink: {interface: up0}
  segments:
    - {name: mgmt, vlan: untagged, subnet: 10.9.0.0/24, address: 10.9.0.2/24, gateway: 10.9.0.1}
    - {name: pos, vlan: 10, subnet: 10.1.0.0/24, address: 10.1.0.1/24}
  firewall:
    allow:
      - {name: pos-to-mgmt, from: pos, to: mgmt, ports: [tcp/22]}
"#;

/// 2026-12-01T00:00:00Z.
const T0: i64 = 1_795_996_800_000;

struct Rig {
    daemon: Daemon,
    links: MemLinks,
    clock: ManualClock,
    events: broadcast::Receiver<pb::Event>,
    _dir: tempfile::TempDir,
}

fn rig_with(dhcp: Arc<dyn Dhcp>, text: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let links = MemLinks::default().with_link("up0");
    let clock = ManualClock::new(T0);
    let mut e = Engine::with(
        StateDir::open(dir.path()).unwrap(),
        Box::new(links.clone()),
        Box::new(MemFirewall::default()),
    )
    .clock_on(Arc::new(clock.clone()))
    .dhcp_on(dhcp);
    e.apply(&backroom_profiles::render_str("t.yaml", text).unwrap(), None, 0).unwrap();
    let daemon = Daemon::new(e);
    let events = daemon.subscribe();
    Rig { daemon, links, clock, events, _dir: dir }
}

fn rig() -> Rig {
    rig_with(Arc::new(MemDhcp::default()), PROFILE)
}

impl Rig {
    /// Every event sent so far.
    fn drain(&mut self) -> Vec<pb::Event> {
        let mut v = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            v.push(ev);
        }
        v
    }

    async fn problems(&self) -> Vec<backroom_api::common::Problem> {
        self.daemon
            .observe(Request::new(pb::ObserveRequest {}))
            .await
            .unwrap()
            .into_inner()
            .problems
    }

    /// Starts the background loop and waits for its first turn.
    async fn start(&self, interval: Duration) {
        tokio::spawn(self.daemon.clone().background(interval));
        self.wait_turn(0).await;
    }

    async fn wait_turn(&self, after: u64) {
        let start = Instant::now();
        while self.daemon.turns() <= after {
            assert!(start.elapsed() < Duration::from_secs(10), "the loop did not turn");
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One second of the clock, once the loop sleeps on it; returns when the loop has done
    /// that turn's work (its deadline check, and a drift check when one was due).
    async fn step(&self) {
        let turns = self.daemon.turns();
        assert!(
            self.clock.wait_for_timers(1, Duration::from_secs(10)).await,
            "the loop does not sleep on the clock"
        );
        self.clock.advance(Duration::from_secs(1));
        self.wait_turn(turns).await;
    }
}

fn kinds(evs: &[pb::Event]) -> Vec<&str> {
    evs.iter().map(|e| e.kind.as_str()).collect()
}

#[tokio::test]
async fn the_drift_check_runs_at_its_interval_and_not_before() {
    let mut r = rig();
    r.start(Duration::from_secs(30)).await;
    // A bridge removed by hand, with no link event to tell the loop.
    r.links.remove_link("br-pos").unwrap();
    let turns = r.daemon.turns();
    for _ in 0..29 {
        r.step().await;
    }
    // The loop was alive all along (it turned each second, checking the deadline): it could
    // have checked, and did not.
    assert!(r.daemon.turns() >= turns + 29, "{} turns", r.daemon.turns() - turns);
    assert_eq!(kinds(&r.drain()), Vec::<&str>::new(), "a drift check before the interval");
    assert!(r.links.state().link("br-pos").is_none());
    r.step().await;
    let evs = r.drain();
    assert_eq!(kinds(&evs), ["drift_found", "drift_repaired"]);
    assert!(evs[0].message.contains("create bridge br-pos"), "{}", evs[0].message);
    assert_eq!(evs[0].at_unix_ms, T0 + 30_000, "stamped by the daemon's clock");
    assert!(r.links.state().link("br-pos").is_some(), "repaired");
}

#[tokio::test]
async fn a_link_event_checks_at_once() {
    let mut r = rig();
    r.start(Duration::from_secs(3600)).await;
    r.links.remove_link("br-pos").unwrap();
    let turns = r.daemon.turns();
    r.daemon.check_soon();
    // The check waits for the burst to settle (300 ms of the clock), then runs: well before
    // the interval, which is an hour away.
    // The clock moves only while the loop sleeps on it (not while the check runs, which
    // takes real time), and never as far as the next tick.
    let (mut moved, start) = (Duration::ZERO, Instant::now());
    while r.daemon.turns() == turns {
        assert!(start.elapsed() < Duration::from_secs(10), "no check after a link event");
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(2));
        if r.clock.timers() > 0 && moved < Duration::from_millis(900) {
            r.clock.advance(Duration::from_millis(100));
            moved += Duration::from_millis(100);
        }
    }
    assert_eq!(kinds(&r.drain()), ["drift_found", "drift_repaired"]);
}

#[tokio::test]
async fn an_unconfirmed_apply_is_rolled_back_by_the_loop_at_its_deadline() {
    let mut r = rig();
    r.start(Duration::from_secs(3600)).await;
    let text = PROFILE.replace("address: 10.1.0.1/24", "address: 10.1.0.3/24");
    let next = backroom_profiles::render_str("t.yaml", &text).unwrap();
    let reply = r
        .daemon
        .apply(Request::new(pb::ApplyRequest {
            revision: next.revision.as_str().into(),
            profile_yaml: next.to_yaml(),
            confirm_seconds: 5,
            uplink_override: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.confirm_deadline_unix, T0 / 1000 + 5);
    assert_eq!(kinds(&r.drain()), ["apply_done"]);
    for _ in 0..4 {
        r.step().await;
    }
    assert!(r.daemon.turns() >= 5, "the loop turned and checked the deadline each second");
    assert_eq!(kinds(&r.drain()), Vec::<&str>::new(), "rolled back before the deadline");
    r.step().await;
    let evs = r.drain();
    assert_eq!(kinds(&evs), ["rollback_done"]);
    assert!(evs[0].message.contains("not confirmed in time"), "{}", evs[0].message);
    let o = r.daemon.observe(Request::new(pb::ObserveRequest {})).await.unwrap().into_inner();
    assert!(o.pending_revision.is_empty());
    assert_ne!(o.applied_revision, next.revision.as_str());
}

#[tokio::test]
async fn a_first_network_left_unconfirmed_is_kept_by_the_loop_with_one_event() {
    // A connected node's first apply, with central away: nothing earlier to go back to.
    let dir = tempfile::tempdir().unwrap();
    let links = MemLinks::default().with_link("up0");
    let clock = ManualClock::new(T0);
    let e = Engine::with(
        StateDir::open(dir.path()).unwrap(),
        Box::new(links.clone()),
        Box::new(MemFirewall::default()),
    )
    .clock_on(Arc::new(clock.clone()));
    let daemon = Daemon::new(e);
    let events = daemon.subscribe();
    let mut r = Rig { daemon, links, clock, events, _dir: dir };
    r.start(Duration::from_secs(3600)).await;
    let first = backroom_profiles::render_str("t.yaml", PROFILE).unwrap();
    let apply = |r: &Rig| {
        let d = r.daemon.clone();
        let req = pb::ApplyRequest {
            revision: first.revision.as_str().into(),
            profile_yaml: first.to_yaml(),
            confirm_seconds: 5,
            uplink_override: String::new(),
        };
        async move { d.apply(Request::new(req)).await.unwrap().into_inner() }
    };
    assert_eq!(apply(&r).await.confirm_deadline_unix, T0 / 1000 + 5);
    assert_eq!(kinds(&r.drain()), ["apply_done"]);
    for _ in 0..5 {
        r.step().await;
    }
    let evs = r.drain();
    assert_eq!(kinds(&evs), ["unconfirmed_kept"], "kept, not torn down");
    assert!(evs[0].message.contains("no earlier network to go back to"), "{}", evs[0].message);
    assert!(evs[0].message.contains("cut the store off"), "{}", evs[0].message);
    assert!(r.links.state().link("br-pos").is_some(), "the network is still there");
    let o = r.daemon.observe(Request::new(pb::ObserveRequest {})).await.unwrap().into_inner();
    assert_eq!(o.applied_revision, first.revision.as_str());
    assert!(o.pending_revision.is_empty() && o.unconfirmed_kept, "{o:?}");
    // Minutes later nothing flaps: no second event, the bridges stay.
    for _ in 0..120 {
        r.step().await;
    }
    assert_eq!(kinds(&r.drain()), Vec::<&str>::new());
    // nodeagent applies again and still cannot confirm: kept again, without a second event.
    apply(&r).await;
    for _ in 0..6 {
        r.step().await;
    }
    assert_eq!(kinds(&r.drain()), ["apply_done"]);
    assert!(r.links.state().link("br-pos").is_some());
    // Central answers at last: the confirmation clears the mark.
    r.daemon.confirm(Request::new(pb::ConfirmRequest { revision: String::new() })).await.unwrap();
    assert_eq!(kinds(&r.drain()), ["confirmed"]);
    let o = r.daemon.observe(Request::new(pb::ObserveRequest {})).await.unwrap().into_inner();
    assert!(!o.unconfirmed_kept);
}

#[tokio::test]
async fn a_missing_uplink_is_one_failing_event_and_one_recovered_after_the_repair() {
    let mut r = rig();
    r.daemon.check().await;
    assert_eq!(kinds(&r.drain()), Vec::<&str>::new(), "nothing to say while all is well");
    r.links.remove_link("up0").unwrap();
    r.daemon.check().await;
    let evs = r.drain();
    assert_eq!(kinds(&evs), ["drift_found", "failing"]);
    let failing = &evs[1];
    assert_eq!(failing.subject, "uplink up0");
    assert!(failing.message.contains("uplink up0 does not exist"), "{}", failing.message);
    assert!(failing.message.starts_with("uplink up0: netd cannot repair"), "{}", failing.message);
    assert!(evs[0].message.contains("uplink up0 does not exist"), "{}", evs[0].message);
    // Every later check fails again, and nobody is told again.
    for _ in 0..3 {
        r.daemon.check().await;
    }
    assert_eq!(kinds(&r.drain()), Vec::<&str>::new());
    let p = r.problems().await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].subject.as_str(), p[0].source.as_str()), ("uplink up0", "netd"));
    assert_eq!(p[0].failures, 4, "the checks did run, and failed");
    assert_eq!(p[0].since_unix_ms, T0);
    // The uplink comes back: the network is repaired, and then it has recovered.
    r.clock.advance(Duration::from_secs(125));
    r.links.add_link("up0");
    r.daemon.check().await;
    let evs = r.drain();
    assert_eq!(kinds(&evs), ["drift_found", "drift_repaired", "recovered"]);
    assert!(evs[1].message.contains("enslave up0 to br-mgmt"), "{}", evs[1].message);
    assert_eq!(evs[2].subject, "uplink up0");
    assert!(evs[2].message.contains("works again (it had failed for 2m 5s"), "{}", evs[2].message);
    assert!(r.problems().await.is_empty());
}

#[tokio::test]
async fn a_failure_that_changes_its_cause_recovers_the_old_subject() {
    let mut r = rig();
    r.links.remove_link("up0").unwrap();
    r.daemon.check().await;
    assert_eq!(r.drain().iter().filter(|e| e.kind == "failing").count(), 1);
    // The uplink is back, but a link that is not netd's now has the VLAN's name.
    r.links.add_link("up0");
    r.links.remove_link("up0.10").unwrap();
    r.links.add_link("up0.10");
    r.daemon.check().await;
    let evs = r.drain();
    let t: Vec<(&str, &str)> = evs
        .iter()
        .filter(|e| !e.subject.is_empty())
        .map(|e| (e.kind.as_str(), e.subject.as_str()))
        .collect();
    assert_eq!(t, [("recovered", "uplink up0"), ("failing", "link up0.10")]);
}

const DHCP_PROFILE: &str = r#"
apiVersion: backroom/v1
kind: StoreProfile
metadata: {name: t}
network:
  uplink: {interface: up0}
  segments:
    - {name: mgmt, vlan: untagged, address: dhcp}
    - {name: pos, vlan: 10, subnet: 10.1.0.0/24, address: 10.1.0.1/24}
  firewall:
    allow:
      - {name: pos-to-mgmt, from: pos, to: mgmt, ports: [tcp/22]}
"#;

/// A DHCP client whose exchanges last until the test lets each one end.
struct HeldDhcp {
    started: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
    inner: MemDhcp,
}

impl Dhcp for HeldDhcp {
    fn obtain(&self, req: &DhcpRequest, now: i64) -> Result<Lease, Error> {
        let _ = self.started.lock().unwrap().send(());
        let _ = self.release.lock().unwrap().recv();
        self.inner.obtain(req, now)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_does_not_wait_for_a_dhcp_exchange() {
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let held = Arc::new(HeldDhcp {
        started: Mutex::new(started_tx),
        release: Mutex::new(release_rx),
        inner: MemDhcp::default(),
    });
    held.inner.serve("br-mgmt", "10.9.0.50/24".parse().unwrap(), None, 600);
    let mut r = rig_with(held.clone(), DHCP_PROFILE);
    let exchange = tokio::spawn(r.daemon.clone().dhcp());
    tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the exchange started");
    // While the exchange is held open, a firewall change is applied.
    let text = DHCP_PROFILE.replace("ports: [tcp/22]", "ports: [tcp/22, tcp/443]");
    let next = backroom_profiles::render_str("t.yaml", &text).unwrap();
    let t = Instant::now();
    let applied = tokio::time::timeout(
        Duration::from_secs(5),
        r.daemon.apply(Request::new(pb::ApplyRequest {
            revision: next.revision.as_str().into(),
            profile_yaml: next.to_yaml(),
            confirm_seconds: 0,
            uplink_override: String::new(),
        })),
    )
    .await
    .expect("the apply waited for the DHCP exchange");
    assert!(applied.unwrap().into_inner().changed);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(!exchange.is_finished(), "the exchange was still in flight during the apply");
    // The apply's own DHCP pass sees the exchange in flight and starts none.
    release.send(()).unwrap();
    exchange.await.unwrap();
    let obs = r.daemon.observe(Request::new(pb::ObserveRequest {})).await.unwrap().into_inner();
    assert_eq!(obs.applied_revision, next.revision.as_str(), "the lease kept the new revision");
    let mgmt = obs.segments.iter().find(|s| s.name == "mgmt").unwrap();
    assert_eq!(mgmt.addresses, ["10.9.0.50/24"]);
    assert!(r.drain().iter().all(|e| e.kind != "failing"));
}

#[tokio::test]
async fn a_silent_dhcp_server_is_one_failing_event_retried_with_backoff() {
    let server = Arc::new(MemDhcp::default());
    let mut r = rig_with(server.clone(), DHCP_PROFILE);
    r.daemon.clone().dhcp().await;
    let evs = r.drain();
    assert_eq!(kinds(&evs), ["failing"]);
    assert_eq!(evs[0].subject, "DHCP on br-mgmt");
    assert!(evs[0].message.contains("no DHCP server answered on br-mgmt"), "{}", evs[0].message);
    assert_eq!(server.exchanges(), 1);
    // Right away: the backoff holds the next try off.
    r.daemon.clone().dhcp().await;
    assert_eq!(server.exchanges(), 1);
    // After the backoff (10 s, ±10 %): tried again, failing still, and not told again.
    r.clock.advance(Duration::from_secs(12));
    r.daemon.clone().dhcp().await;
    assert_eq!(server.exchanges(), 2, "tried again after the backoff");
    assert_eq!(kinds(&r.drain()), Vec::<&str>::new());
    assert_eq!(r.problems().await[0].failures, 2);
    // A server answers at the next try (20 s later at most, ±10 %).
    server.serve("br-mgmt", "10.9.0.50/24".parse().unwrap(), None, 600);
    r.clock.advance(Duration::from_secs(23));
    r.daemon.clone().dhcp().await;
    let evs = r.drain();
    assert_eq!(kinds(&evs), ["recovered"]);
    assert_eq!(evs[0].subject, "DHCP on br-mgmt");
    assert!(r.problems().await.is_empty());
}

/// Link events from a script: each `open` takes the next entry; a source yields its events,
/// then fails.
struct Script(VecDeque<Option<usize>>);

struct Events(usize);

impl LinkEvents for Events {
    fn wait(&mut self) -> std::io::Result<()> {
        if self.0 == 0 {
            return Err(std::io::Error::other("the socket broke"));
        }
        self.0 -= 1;
        Ok(())
    }
}

#[tokio::test]
async fn the_link_watcher_is_told_failing_once_and_backs_off() {
    let mut r = rig();
    // Two opens fail, one works for 3 events and breaks, then one more fails.
    let mut script = Script(VecDeque::from([None, None, Some(3), None]));
    let mut pauses = Vec::new();
    let d = r.daemon.clone();
    watch_links(
        &r.daemon,
        || match script.0.pop_front().flatten() {
            Some(n) => Ok(Box::new(Events(n)) as Box<dyn LinkEvents>),
            None => Err(std::io::Error::from_raw_os_error(libc::EPERM)),
        },
        |wait| {
            pauses.push(wait);
            if pauses.len() == 4 {
                d.stop();
            }
        },
    );
    let evs = r.drain();
    let t: Vec<(&str, &str)> = evs.iter().map(|e| (e.kind.as_str(), e.subject.as_str())).collect();
    assert_eq!(
        t,
        [("failing", LINK_EVENTS), ("recovered", LINK_EVENTS), ("failing", LINK_EVENTS)],
        "one event per change, not per try"
    );
    let secs: Vec<u64> = pauses.iter().map(|p| p.as_secs()).collect();
    assert_eq!(secs, [1, 2, 1, 2], "the backoff doubles, and starts over after a success");
    assert_eq!(r.problems().await[0].failures, 2, "the second failure was seen, and not told");
}

#[tokio::test]
async fn the_loop_ends_an_uplink_override_at_its_expiry_with_one_event() {
    let mut r = rig();
    r.start(Duration::from_secs(3600)).await;
    let o = pb::Override {
        segment: "mgmt".into(),
        address: "192.168.7.20/24".into(),
        gateway: "192.168.7.1".into(),
        dns: vec![],
        vlan: 0,
        expires_unix: T0 / 1000 + 3,
        set_unix: 0,
        reason: "console: technician".into(),
    };
    r.daemon
        .set_override(Request::new(pb::SetOverrideRequest {
            r#override: Some(o),
            confirm_seconds: 0,
        }))
        .await
        .unwrap();
    assert_eq!(kinds(&r.drain()), ["override_set"]);
    let observed = r.daemon.observe(Request::new(pb::ObserveRequest {})).await.unwrap();
    assert_eq!(observed.into_inner().r#override.unwrap().set_unix, T0 / 1000);
    for _ in 0..2 {
        r.step().await;
    }
    assert_eq!(kinds(&r.drain()), Vec::<&str>::new(), "ended before its time");
    r.step().await;
    let evs = r.drain();
    assert_eq!(kinds(&evs), ["override_expired"]);
    assert_eq!(evs[0].subject, "uplink override of segment mgmt");
    assert_eq!(evs[0].at_unix_ms, T0 + 3_000);
    let st = r.links.state();
    let br = st.link("br-mgmt").unwrap().index;
    let addrs: Vec<String> = st.addrs_of(br).map(|a| a.net.to_string()).collect();
    assert_eq!(addrs, ["10.9.0.2/24"], "the profile's address is back");
    drop(st);
    for _ in 0..3 {
        r.step().await;
    }
    assert_eq!(kinds(&r.drain()), Vec::<&str>::new(), "told once");
    let observed = r.daemon.observe(Request::new(pb::ObserveRequest {})).await.unwrap();
    assert!(observed.into_inner().r#override.is_none());
}
