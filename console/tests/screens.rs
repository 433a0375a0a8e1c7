//! Every screen of the console drawn for given states, at 80x24 (what a serial line has), as
//! snapshots (`cargo insta review` after a change that is meant), and the keys as a state
//! machine.

use backroom_api::common::Problem;
use backroom_api::netd as netpb;
use backroom_api::nodeagent as pb;
use backroom_console::app::{Action, App, Effect, Grant, Key, Modal, Msg, Screen};
use backroom_console::checks::{CheckKind, CheckResult, Outcome};
use backroom_console::model::{Facts, Host, Uplink};
use backroom_session::console_code::Role;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

/// 2026-12-04 14:02:11 UTC.
const NOW: i64 = 1_796_392_931_000;
const MIN: i64 = 60_000;

fn workload(
    name: &str,
    kind: &str,
    state: &str,
    health: &str,
    reason: &str,
    restarts: u32,
) -> pb::WorkloadStatus {
    pb::WorkloadStatus {
        name: name.into(),
        kind: kind.into(),
        state: state.into(),
        health: health.into(),
        reason: reason.into(),
        since_unix: (NOW - 42 * MIN) / 1000,
        restarts,
        addresses: vec!["172.30.0.10/24".into()],
        image: format!("registry.example/retail/{name}:3.2.0"),
        image_digest: "sha256:4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
            .into(),
        container_id: if kind == "container" { format!("{name}-7") } else { String::new() },
        revision: "3f2a91c0".repeat(8),
        health_reason: if health == "healthy" { "http 200 in 3 ms".into() } else { String::new() },
    }
}

fn segment(name: &str, vlan: &str, address: &str) -> pb::SegmentInfo {
    pb::SegmentInfo {
        name: name.into(),
        vlan: vlan.into(),
        address: address.into(),
        ..Default::default()
    }
}

/// The coffee shop of the sample fleet, one app failing, central away for 22 minutes.
fn coffee_shop() -> Facts {
    let rev = "3f2a91c0".repeat(8);
    let agent = pb::StatusReply {
        store_id: "store-0042".into(),
        profile_name: "coffee-shop".into(),
        profile_version: "2026.11.2".into(),
        desired_revision: rev.clone(),
        applied_revision: rev.clone(),
        last_known_good: "9b0e77d1".repeat(8),
        central: "offline since 2026-12-04T13:40:00Z (reconnecting, the store keeps running)"
            .into(),
        central_url: "https://central.example:7443".into(),
        central_since_unix_ms: NOW - 22 * MIN,
        central_last_contact_unix_ms: NOW - 23 * MIN,
        central_error: "transport error: tcp connect error: Connection refused (os error 111)"
            .into(),
        uplink_interface: "eno1".into(),
        segments: vec![
            segment("mgmt", "untagged", "dhcp"),
            segment("pos", "10", "10.42.10.2/24"),
            segment("guest", "40", "192.168.40.1/24"),
            segment("apps", "internal", "172.30.0.1/24"),
        ],
        registries: vec!["registry.example".into()],
        workloads: vec![
            workload("menu", "container", "running", "healthy", "", 0),
            workload(
                "orders",
                "container",
                "backoff",
                "unknown",
                "crash loop: exited 1 four times in 5 min",
                4,
            ),
            workload("pos-server", "vm", "running", "healthy", "", 0),
        ],
        problems: vec![Problem {
            subject: "workload orders".into(),
            message: "orders cannot stay up: exited with status 1".into(),
            since_unix_ms: NOW - 12 * MIN,
            ..Default::default()
        }],
        actions: vec![pb::ActionResult {
            at_unix_ms: NOW - 3 * MIN,
            workload: "orders".into(),
            action: "restart orders".into(),
            ok: false,
            message: "exited with status 1 after 2 s".into(),
        }],
        ..Default::default()
    };
    let net = netpb::ObserveReply {
        applied_revision: rev,
        segments: ["mgmt", "pos", "guest", "apps"]
            .iter()
            .map(|n| netpb::SegmentState {
                name: (*n).into(),
                bridge: format!("br-{n}"),
                present: true,
                addresses: match *n {
                    "mgmt" => vec!["192.168.1.20/24".into()],
                    "pos" => vec!["10.42.10.2/24".into()],
                    "guest" => vec!["192.168.40.1/24".into()],
                    _ => vec!["172.30.0.1/24".into()],
                },
                ports: vec![],
            })
            .collect(),
        ..Default::default()
    };
    Facts {
        at_ms: NOW,
        agent: Some(agent),
        net: Some(net),
        uplink: Uplink {
            interface: "eno1".into(),
            carrier: Some(true),
            addresses: vec!["192.168.1.20/24".into()],
            gateway: "192.168.1.1".into(),
            dns: vec!["192.168.1.1".into()],
        },
        host: Host {
            cpu_percent: Some(23),
            mem_used: 4_400_000_000,
            mem_total: 33_600_000_000,
            disk_used: 120_000_000_000,
            disk_total: 930_000_000_000,
        },
        events: vec![
            pb::Event {
                at_unix_ms: NOW - 2 * MIN,
                workload: "orders".into(),
                kind: "exit".into(),
                message: "exited with status 1 (restart 4 in 2 s)".into(),
                subject: String::new(),
            },
            pb::Event {
                at_unix_ms: NOW - 3 * MIN,
                workload: "orders".into(),
                kind: "state".into(),
                message: "backoff: crash loop".into(),
                subject: String::new(),
            },
        ],
        ..Default::default()
    }
}

fn healthy_online() -> Facts {
    let mut f = coffee_shop();
    let a = f.agent.as_mut().expect("the fixture has a status");
    a.central = "online (store-0042 at https://central.example:7443)".into();
    a.central_error.clear();
    a.last_known_good = a.desired_revision.clone();
    a.problems.clear();
    a.actions.clear();
    a.workloads[1] = workload("orders", "container", "running", "healthy", "", 0);
    f
}

fn agent_down() -> Facts {
    let mut f = coffee_shop();
    f.agent = None;
    f.store_id = "store-0042".into();
    f.agent_error =
        "cannot connect to /run/backroom/nodeagent.sock: No such file or directory".into();
    f.daemons = vec![
        ("netd.service".into(), "active".into()),
        ("vmd.service".into(), "active".into()),
        ("nodeagent.service".into(), "failed".into()),
    ];
    f
}

fn app(f: Facts) -> App {
    let mut a = App::new(NOW);
    a.update(Msg::Facts(Box::new(f)));
    a
}

fn screen(a: &App) -> String {
    let mut t = Terminal::new(TestBackend::new(80, 24)).expect("a test terminal");
    t.draw(|f| backroom_console::view::draw(f, a)).expect("drawn");
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    // Nothing but ASCII: a vt100 serial line shows nothing else.
    assert!(out.is_ascii(), "not ASCII:\n{out}");
    out
}

fn keys(a: &mut App, ks: &[Key]) -> Vec<Effect> {
    ks.iter().flat_map(|k| a.key(*k)).collect()
}

fn technician() -> Grant {
    Grant { role: Role::Technician, expires_ms: NOW + 60 * MIN, code: "K7QMX-2HD9P".into() }
}

#[test]
fn board_offline_with_a_failing_app() {
    let a = app(coffee_shop());
    let s = screen(&a);
    // Worst first: orders before menu; central's outage named by its layer.
    assert!(s.find("orders").unwrap() < s.find("menu ").unwrap(), "{s}");
    assert!(s.contains("OFFLINE 22 min (since 13:40") && s.contains("TCP"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn board_all_good() {
    let s = screen(&app(healthy_online()));
    assert!(s.contains("OK: everything is working"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn board_with_nodeagent_down() {
    let s = screen(&app(agent_down()));
    assert!(s.contains("nodeagent is not running"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn board_at_first_boot_says_what_it_is_waiting_for() {
    // A box off the shelf: not enrolled, nodeagent standalone with nothing to run, the image's
    // first boot looking for its stick.
    let mut f = healthy_online();
    f.store_id = String::new();
    if let Some(a) = f.agent.as_mut() {
        a.workloads.clear();
        a.store_id.clear();
    }
    f.first_boot = "looking for a stick labelled BACKROOM".into();
    let s = screen(&app(f.clone()));
    assert!(s.contains("first boot: looking for a stick labelled BACKROOM"), "{s}");
    insta::assert_snapshot!(s);
    // Once enrolled (the store has an id) the first boot's word is no longer the headline.
    f.store_id = "store-0042".into();
    let s = screen(&app(f));
    assert!(!s.contains("first boot:"), "{s}");
}

#[test]
fn board_with_the_cable_out() {
    let mut f = healthy_online();
    f.uplink.carrier = Some(false);
    f.uplink.addresses.clear();
    f.uplink.gateway.clear();
    let s = screen(&app(f));
    assert!(s.contains("unplugged"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn workload_screen_with_its_log() {
    let mut a = app(coffee_shop());
    let e = keys(&mut a, &[Key::Enter]);
    assert_eq!(e, vec![Effect::FollowLog("orders".into())]);
    a.update(Msg::Log("2026-12-04T14:01:02Z orders: listening on :8443\n2026-12-04T14:01:04Z orders: panic: no database at /data/orders.db\n".into()));
    insta::assert_snapshot!(screen(&a));
}

#[test]
fn vm_screen_offers_the_serial_console() {
    let mut a = app(coffee_shop());
    let e = keys(&mut a, &[Key::Down, Key::Down, Key::Enter]);
    assert_eq!(e, vec![Effect::FollowLog("pos-server".into())]);
    a.update(Msg::Log("Debian GNU/Linux 12 pos-server ttyS0\n\npos-server login: ".into()));
    assert_eq!(a.key(Key::Char('s')), vec![Effect::Serial("pos-server".into())]);
    insta::assert_snapshot!(screen(&a));
}

#[test]
fn network_screen_with_checks_and_an_override() {
    let mut f = coffee_shop();
    f.net.as_mut().unwrap().r#override = Some(netpb::Override {
        segment: "mgmt".into(),
        address: "192.168.1.50/24".into(),
        gateway: "192.168.1.1".into(),
        dns: vec!["192.168.1.1".into()],
        expires_unix: (NOW + 4 * 60 * MIN) / 1000,
        ..Default::default()
    });
    f.net.as_mut().unwrap().confirm_deadline_unix = (NOW + 2 * MIN) / 1000;
    let mut a = app(f);
    let e = keys(&mut a, &[Key::Char('n'), Key::Char('1'), Key::Char('2')]);
    assert_eq!(
        e,
        vec![Effect::Refresh, Effect::Check(CheckKind::Gateway), Effect::Check(CheckKind::Central)]
    );
    a.update(Msg::Check(CheckResult {
        kind: CheckKind::Gateway,
        outcome: Outcome::Passed,
        text: "192.168.1.1 answers (1 ms)".into(),
    }));
    a.update(Msg::Check(CheckResult {
        kind: CheckKind::Central,
        outcome: Outcome::Failed,
        text: "central.example is 203.0.113.7, TCP port 7443: Connection refused (os error 111)"
            .into(),
    }));
    insta::assert_snapshot!(screen(&a));
}

#[test]
fn actions_screen_locked_and_unlocked() {
    let mut a = app(coffee_shop());
    keys(&mut a, &[Key::Char('a')]);
    assert_eq!(a.screen, Screen::Actions);
    insta::assert_snapshot!("actions_locked", screen(&a));
    a.grant = Some(technician());
    insta::assert_snapshot!("actions_unlocked", screen(&a));
}

#[test]
fn actions_with_nodeagent_down_offer_what_works_without_it() {
    let mut a = app(agent_down());
    keys(&mut a, &[Key::Char('a')]);
    insta::assert_snapshot!(screen(&a));
    // Rollback needs nodeagent: refused in words, nothing asked of the node.
    let e = keys(&mut a, &[Key::Char('2')]);
    assert!(e.is_empty());
    assert!(
        matches!(&a.modal, Some(Modal::Message { ok: false, text }) if text.contains("nodeagent is not running"))
    );
}

#[test]
fn restart_asks_for_a_code_then_confirms_then_acts() {
    let mut a = app(coffee_shop());
    // Enter on orders (the worst, first), then r.
    keys(&mut a, &[Key::Enter]);
    let e = keys(&mut a, &[Key::Char('r')]);
    assert!(e.is_empty());
    assert!(
        matches!(&a.modal, Some(Modal::Code { then: Some(Action::Restart(w)), .. }) if w == "orders")
    );
    insta::assert_snapshot!("code_entry", screen(&a));
    let e = keys(&mut a, &[Key::Char('k'), Key::Char('7'), Key::Char('q'), Key::Enter]);
    assert_eq!(e, vec![Effect::Unlock("K7Q".into())]);
    // Wrong: the box stays with the reason.
    a.update(Msg::Unlocked(Err("this code is not for this store, or was mistyped".into())));
    assert!(matches!(&a.modal, Some(Modal::Code { error, .. }) if error.contains("mistyped")));
    insta::assert_snapshot!("code_refused", screen(&a));
    // Right (a staff code is enough to restart): the question comes.
    let staff = Grant { role: Role::Staff, expires_ms: NOW + 60 * MIN, code: "K7Q".into() };
    a.update(Msg::Unlocked(Ok(staff)));
    assert!(matches!(&a.modal, Some(Modal::Confirm(Action::Restart(_)))));
    insta::assert_snapshot!("confirm_restart", screen(&a));
    let e = keys(&mut a, &[Key::Char('y')]);
    assert_eq!(
        e,
        vec![Effect::Act { code: "K7Q".into(), action: Action::Restart("orders".into()) }]
    );
    let e = a.update(Msg::Done {
        action: Action::Restart("orders".into()),
        result: Ok("orders restarted (task 4242 -> 4390)".into()),
    });
    assert_eq!(e, vec![Effect::Refresh]);
    insta::assert_snapshot!("restart_done", screen(&a));
}

#[test]
fn a_staff_code_cannot_roll_back() {
    let mut a = app(coffee_shop());
    a.grant = Some(Grant { role: Role::Staff, expires_ms: NOW + 60 * MIN, code: "S".into() });
    keys(&mut a, &[Key::Char('a'), Key::Char('2')]);
    assert!(
        matches!(&a.modal, Some(Modal::Code { then: Some(Action::Rollback), error, .. }) if error.contains("technician"))
    );
}

#[test]
fn the_override_form_checks_what_is_typed() {
    let mut a = app(coffee_shop());
    a.grant = Some(technician());
    keys(&mut a, &[Key::Char('n'), Key::Char('o')]);
    for c in "192.168.1.50".chars() {
        a.key(Key::Char(c));
    }
    keys(&mut a, &[Key::Enter]);
    assert!(matches!(&a.modal, Some(Modal::Form(f)) if f.error.starts_with("Address")));
    insta::assert_snapshot!("override_form_error", screen(&a));
    for c in "/24\t192.168.1.1\t192.168.1.1\t\t0.5".chars() {
        a.key(if c == '\t' { Key::Tab } else { Key::Char(c) });
    }
    keys(&mut a, &[Key::Enter]);
    let Some(Modal::Confirm(Action::Override(o))) = &a.modal else { panic!("{:?}", a.modal) };
    assert_eq!(
        (o.address.as_str(), o.gateway.as_str(), o.minutes, o.vlan),
        ("192.168.1.50/24", "192.168.1.1", 30, 0)
    );
    insta::assert_snapshot!("override_confirm", screen(&a));
}

#[test]
fn a_grant_ends_at_its_expiry_and_after_idle_time() {
    let mut a = app(coffee_shop());
    a.grant = Some(technician());
    a.update(Msg::Tick(NOW + 10 * MIN));
    assert!(a.grant().is_some());
    a.update(Msg::Tick(NOW + 16 * MIN));
    assert!(a.grant.is_none(), "locked after 15 minutes without a key");
    a.grant = Some(technician());
    a.key(Key::Char('r'));
    a.update(Msg::Tick(NOW + 61 * MIN));
    assert!(a.grant.is_none());
    assert!(a.note.contains("expired"), "{}", a.note);
}

#[test]
fn q_asks_first_and_ctrl_l_redraws() {
    let mut a = app(coffee_shop());
    assert!(keys(&mut a, &[Key::Char('q')]).is_empty());
    assert!(!a.quit);
    assert!(keys(&mut a, &[Key::Char('n')]).is_empty(), "n in the question means stay");
    assert_eq!(a.screen, Screen::Board);
    assert_eq!(keys(&mut a, &[Key::Redraw]), vec![Effect::Redraw]);
    assert_eq!(keys(&mut a, &[Key::Char('q'), Key::Char('y')]), vec![Effect::Quit]);
    assert!(a.quit);
}

#[test]
fn every_screen_shows_its_keys() {
    let mut a = app(coffee_shop());
    for ks in
        [vec![], vec![Key::Enter], vec![Key::Esc, Key::Char('n')], vec![Key::Esc, Key::Char('a')]]
    {
        keys(&mut a, &ks);
        let s = screen(&a);
        let last = s.lines().last().expect("a screen has lines");
        assert!(last.contains("Esc back") || last.contains("q quit"), "{last}");
    }
}

#[test]
fn line_noise_in_a_log_is_shown_as_text() {
    let mut a = app(coffee_shop());
    keys(&mut a, &[Key::Enter]);
    a.update(Msg::Log("ok \u{1b}[2J\u{1b}]0;title\u{7} done\n".into()));
    let s = screen(&a);
    assert!(s.contains("ok ?[2J?]0;title? done"), "{s}");
}
