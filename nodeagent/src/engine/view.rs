//! What the engine shows: each workload's state with its reason, the action results, the events.
//! `derive_state` is a pure function of a record (unit-tested).

use serde::{Deserialize, Serialize};

use crate::problems::OpenProblem;
use crate::record::{HealthStatus, WorkloadRecord};
use crate::restart::{Timing, should_restart};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub workload: String,
    /// state | action | health | exit | revision | vm | netd | failing | recovered
    pub kind: String,
    pub message: String,
    /// failing | recovered: the problem's subject ("" otherwise).
    pub subject: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResult {
    pub at_ms: u64,
    pub workload: String,
    pub action: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkloadView {
    pub name: String,
    pub kind: String,
    pub state: String,
    pub health: String,
    pub reason: String,
    pub since_ms: u64,
    pub restarts: u32,
    pub addresses: Vec<String>,
    pub image: String,
    pub image_digest: String,
    pub container_id: String,
    pub revision: String,
    pub health_reason: String,
    /// When its health was last checked (unix ms; 0: not yet).
    pub health_checked_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub desired: String,
    pub applied: String,
    pub last_known_good: String,
    pub source: String,
    pub profile_name: String,
    pub profile_version: String,
    pub network: String,
    /// Like `network`, for the VM phase (vmd's apply).
    pub vms: String,
    /// containerd: `2 of 3 running (containerd answers)`, or since when it does not answer.
    pub containers: String,
    pub workloads: Vec<WorkloadView>,
    pub actions: Vec<ActionResult>,
    /// What fails now, on this node (nodeagent's, netd's and vmd's): the worst and oldest first.
    pub problems: Vec<OpenProblem>,
}

fn secs(ms: u64) -> String {
    format!("{}s", ms.div_ceil(1000))
}

/// A container workload's state and its reason.
pub fn derive_state(
    rec: &WorkloadRecord,
    busy: Option<&str>,
    waiting: Option<&str>,
    timing: &Timing,
    now_ms: u64,
) -> (String, String) {
    let s = |a: &str, b: String| (a.to_string(), b);
    if let Some(line) = busy {
        let state =
            if rec.next.is_some() || rec.update.is_some() { "updating" } else { "starting" };
        return s(state, line.to_string());
    }
    if rec.next.is_some() || rec.update.is_some() {
        return s("updating", waiting.unwrap_or("").to_string());
    }
    let left = rec.backoff_until_ms.saturating_sub(now_ms);
    let crash_loop = timing.crash_loop(rec);
    let Some(p) = &rec.primary else {
        if let Some(err) = &rec.start_error {
            let state = if crash_loop { "failed" } else { "backoff" };
            let prefix = if crash_loop {
                format!("crash loop ({} failures in a row): ", rec.consecutive_failures)
            } else {
                String::new()
            };
            let next =
                if left > 0 { format!("; next try in {}", secs(left)) } else { String::new() };
            return s(state, format!("{prefix}{err}{next}"));
        }
        if let Some(b) = &rec.bad {
            return s("failed", format!("{} failed: {}", b.image, b.reason));
        }
        return s("pending", waiting.unwrap_or("").to_string());
    };
    if let Some(e) = &p.exit {
        if !should_restart(p.spec.restart, e) {
            let state = if e.code == 0 && !e.oom { "stopped" } else { "failed" };
            return s(
                state,
                format!("{}; restart policy {:?}", e.describe(), p.spec.restart).to_lowercase(),
            );
        }
        let next = if left > 0 { format!("; next try in {}", secs(left)) } else { String::new() };
        if crash_loop {
            return s(
                "failed",
                format!(
                    "crash loop ({} exits in a row), last {}{next}",
                    rec.consecutive_failures,
                    e.describe()
                ),
            );
        }
        return s("backoff", format!("{}{next}", e.describe()));
    }
    let held = rec.bad.as_ref().map(|b| format!("update to {} rolled back: {}", b.image, b.reason));
    let has_check = p.spec.health.as_ref().and_then(|h| h.probe()).is_some();
    match (has_check, p.health.status) {
        (true, HealthStatus::Unknown) => s("starting", "waiting for the first health check".into()),
        (true, HealthStatus::Unhealthy) => s("unhealthy", p.health.reason.clone()),
        _ => s("running", held.or_else(|| waiting.map(str::to_string)).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Exit, HealthState, Instance, Role, spec_hash};

    fn rec(text_extra: &str) -> WorkloadRecord {
        let text = format!(
            "apiVersion: backroom/v1\nkind: StoreProfile\nmetadata: {{name: t}}\nworkloads:\n  - name: w\n    kind: container\n    image: r/w:1\n{text_extra}"
        );
        let p = backroom_profiles::render_str("t.yaml", &text).unwrap().profile;
        let spec = p.containers().next().unwrap().clone();
        let mut r = WorkloadRecord::new("w");
        r.primary = Some(Instance {
            container_id: "w.1".into(),
            role: Role::Primary,
            spec_hash: spec_hash(&spec),
            spec,
            revision: String::new(),
            image: "r/w:1".into(),
            image_digest: String::new(),
            netns: None,
            addresses: vec![],
            pid: 1,
            started_ms: 0,
            exit: None,
            health: HealthState::default(),
        });
        r
    }

    #[test]
    fn states_and_reasons() {
        let b = Timing::default();
        let mut r = rec("    health: {tcp: {port: 80}}\n");
        assert_eq!(derive_state(&r, None, None, &b, 0).0, "starting");
        r.primary.as_mut().unwrap().health.status = HealthStatus::Healthy;
        assert_eq!(derive_state(&r, None, None, &b, 0), ("running".into(), String::new()));
        r.primary.as_mut().unwrap().health = HealthState {
            status: HealthStatus::Unhealthy,
            reason: "tcp 127.0.0.1:80: connection refused".into(),
            ..Default::default()
        };
        assert_eq!(derive_state(&r, None, None, &b, 0).0, "unhealthy");
        r.primary.as_mut().unwrap().exit = Some(Exit { code: 1, at_ms: 0, oom: false });
        r.consecutive_failures = 5;
        r.backoff_until_ms = 16_000;
        let (st, why) = derive_state(&r, None, None, &b, 0);
        assert_eq!(st, "failed");
        assert_eq!(why, "crash loop (5 exits in a row), last exited with code 1; next try in 16s");
        r.consecutive_failures = 1;
        assert_eq!(derive_state(&r, None, None, &b, 0).0, "backoff");

        let mut once = rec("    restart: on-failure\n");
        once.primary.as_mut().unwrap().exit = Some(Exit { code: 0, at_ms: 0, oom: false });
        assert_eq!(derive_state(&once, None, None, &b, 0).0, "stopped");
        assert_eq!(derive_state(&once, Some("restart w"), None, &b, 0).0, "starting");
    }
}
