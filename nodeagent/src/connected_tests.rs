//! Unit tests of `connected`: central's event kinds, failures told apart, the status report.
use super::*;
use crate::engine::WorkloadView;

#[test]
fn engine_events_map_to_central_kinds() {
    assert_eq!(
        central_kind("health", "c1 is unhealthy: 503", None).as_deref(),
        Some("workload_unhealthy")
    );
    assert_eq!(
        central_kind("health", "c1 is healthy: ok", None).as_deref(),
        Some("workload_recovered")
    );
    assert_eq!(
        central_kind("exit", "container c1 exited with code 1", None).as_deref(),
        Some("workload_crashed")
    );
    assert_eq!(
        central_kind("action", "restart: done", None).as_deref(),
        Some("workload_restarted")
    );
    assert_eq!(
        central_kind("state", "failed: crash loop (5 exits in a row)", None).as_deref(),
        Some("crash_loop")
    );
    assert_eq!(
        central_kind("state", "running", Some("failed")).as_deref(),
        Some("workload_recovered")
    );
    assert_eq!(central_kind("state", "running", Some("starting")), None);
    assert_eq!(central_kind("vm", "crashed: qemu died", None).as_deref(), Some("workload_crashed"));
    assert_eq!(central_kind("vm", "update_done: ok", None).as_deref(), Some("vm_update_done"));
    assert_eq!(central_kind("failing", "uplink eno1: gone", None).as_deref(), Some("failing"));
    assert_eq!(central_kind("recovered", "x works again", None).as_deref(), Some("recovered"));
    assert_eq!(
        central_kind("netd", "drift_repaired: rules put back", None).as_deref(),
        Some("drift_repaired")
    );
    assert_eq!(
        central_kind("netd", "override_expired: uplink override of segment mgmt ended", None)
            .as_deref(),
        Some("uplink_override_expired")
    );
}

fn status(network: &str, states: &[(&str, &str, &str)]) -> Status {
    Status {
        network: network.into(),
        workloads: states
            .iter()
            .map(|(n, st, h)| WorkloadView {
                name: (*n).into(),
                state: (*st).into(),
                health: (*h).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn failures_that_waiting_will_not_fix_are_told_apart() {
    assert!(
        hard_failure(&status("applied (revision x)", &[("a", "running", "healthy")])).is_none()
    );
    assert!(hard_failure(&status("pending", &[("a", "starting", "unknown")])).is_none());
    assert!(
        hard_failure(&status("failed: VLAN 10 refused; retrying", &[]))
            .unwrap()
            .contains("network failed")
    );
    assert!(
        hard_failure(&status("applied", &[("a", "failed", "unknown")]))
            .unwrap()
            .contains("a failed")
    );
    assert!(
        not_ready(&status(
            "applied",
            &[("a", "unhealthy", "unhealthy"), ("b", "running", "unknown")]
        ))
        .starts_with("a unhealthy")
    );
}

#[test]
fn a_local_daemon_out_of_reach_is_waited_for_not_a_failed_revision() {
    // kill -9 of vmd or netd during an apply (the chaos suite found it): the phase waits for
    // the daemon; the revision is not failed and rolled back for it.
    let mut s = status("waiting: netd apply failed: connection refused; retrying", &[]);
    assert!(hard_failure(&s).is_none());
    s.vms = "waiting: vmd apply failed: connection refused; retrying".into();
    assert!(hard_failure(&s).is_none());
    s.vms = "failed: vmd apply failed: the image's sha256 differs; retrying".into();
    assert!(hard_failure(&s).unwrap().contains("VMs failed"), "a real failure is still one");
    let gone = crate::Error::Vmd {
        op: "apply",
        source: crate::error::Rpc(tonic::Status::unavailable("connection refused")),
    };
    assert!(gone.unreachable());
    let refused = crate::Error::Vmd {
        op: "apply",
        source: crate::error::Rpc(tonic::Status::invalid_argument("no such image")),
    };
    assert!(!refused.unreachable());
}

#[test]
fn a_failed_revision_is_reported_with_where_the_node_went() {
    let d = CentralDesired {
        revision: "r2".into(),
        state: "failed".into(),
        message: "boom".into(),
        rolled_back_to: "r1".into(),
    };
    let mut s = status("applied", &[("a", "running", "unknown"), ("b", "unhealthy", "unhealthy")]);
    s.applied = "r1".into();
    s.problems.push(crate::problems::OpenProblem {
        source: crate::problems::Source::Netd,
        subject: "uplink eno1".into(),
        workload: String::new(),
        message: "the link eno1 does not exist".into(),
        since_ms: 1_000,
        failures: 3,
    });
    let r = report(&s, &d, "v");
    assert_eq!(r.problems.len(), 1);
    assert_eq!(
        (r.problems[0].subject.as_str(), r.problems[0].source.as_str()),
        ("uplink eno1", "netd")
    );
    assert_eq!(r.applied_revision, "r1");
    assert_eq!(r.desired_revision, "r2");
    let last = r.last_apply.unwrap();
    assert!(!last.ok);
    assert_eq!(last.rolled_back_to, "r1");
    assert_eq!(r.workloads.iter().filter(|w| w.healthy).count(), 1);
}

#[test]
fn the_console_secret_is_kept_in_the_central_folder_where_enrollment_writes_it() {
    let d = tempfile::tempdir().unwrap();
    let path = console_secret_path(d.path());
    assert_eq!(path, d.path().join("central").join(backroom_session::console_code::SECRET_FILE));
    // What the session crate writes there (at enrollment, at a welcome) is what reads back.
    let secret = backroom_session::console_code::Secret::generate();
    enroll::save_console_secret(&central_dir(d.path()), &secret).unwrap();
    assert_eq!(backroom_session::console_code::Secret::load(&path).unwrap(), Some(secret));
}
