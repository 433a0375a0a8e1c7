//! Alerts: raw state and events turned into a short list of things to act on.
//!
//! - `store_offline`: a store without a session for longer than the setting;
//! - `workload_unhealthy`: a workload unhealthy (or failed) for longer than the setting;
//! - `apply_failed`: the last revision a store tried failed (it runs its last-known-good);
//! - `crash_loop`: a node reported a workload crash-looping (resolved when it recovers);
//! - `problem`: a node's background loop reported something failing (`failing` event, e.g.
//!   subject `uplink eno1`), resolved by its `recovered` event.
//!
//! Each opens once per (kind, store, subject) and resolves by itself when the cause goes.

use std::collections::HashSet;

use crate::app::{App, StatusJson};
use crate::db::{AlertRow, Db, DbError, NewEvent};

fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub fn title(kind: &str) -> &'static str {
    match kind {
        "store_offline" => "stores offline",
        "workload_unhealthy" => "workloads unhealthy",
        "apply_failed" => "profile revisions that failed to apply",
        "crash_loop" => "workloads crash-looping",
        "problem" => "things failing on store servers",
        _ => "other",
    }
}

fn minutes(ms: i64) -> String {
    format!("{}m", ms / 60_000)
}

/// One pass over every store: open what is due, resolve what is over.
pub async fn evaluate(app: &App) -> Result<(), DbError> {
    let now = app.now_ms();
    let s = &app.settings;
    let db = &app.db;
    let open = db.alerts(false).await?;
    for store in db.list_stores().await? {
        if store.enrolled_ms == 0 {
            continue;
        }
        let online = app.hub.is_online(&store.id);
        // A store enrolled but not yet connected counts from its enrollment.
        let last = store.last_seen_ms.max(store.enrolled_ms);
        let quiet = now - last;
        if !online && quiet > s.offline_alert_ms {
            let msg = format!("no session with the store for {}", minutes(quiet));
            open_alert(db, "store_offline", &store.id, "", &msg, last).await?;
        } else if online {
            db.resolve_alert("store_offline", &store.id, "", now).await?;
        }
        if !store.last_apply_ok {
            let status = StatusJson::parse(&store.status_json);
            let msg = format!(
                "revision {} failed: {}; running {}",
                short(&status.last_apply_revision),
                store.last_apply_message,
                short(&store.applied_revision)
            );
            open_alert(db, "apply_failed", &store.id, "", &msg, now).await?;
        } else {
            db.resolve_alert("apply_failed", &store.id, "", now).await?;
        }
        // Workload health is only known while the store reports; an offline store keeps its
        // last known state (and its offline alert says why it is stale).
        let status = StatusJson::parse(&store.status_json);
        let mut bad = HashSet::new();
        for w in &status.workloads {
            let unhealthy = !w.healthy && w.state != "stopped" && w.state != "pending";
            if unhealthy && now - w.since_ms > s.unhealthy_alert_ms {
                let why = if w.reason.is_empty() {
                    w.state.clone()
                } else {
                    format!("{}: {}", w.state, w.reason)
                };
                let msg = format!("{} {} for {}", w.kind, why, minutes(now - w.since_ms));
                open_alert(db, "workload_unhealthy", &store.id, &w.name, &msg, w.since_ms).await?;
            }
            if unhealthy {
                bad.insert(w.name.as_str());
            }
        }
        for a in open.iter().filter(|a| a.kind == "workload_unhealthy" && a.store_id == store.id) {
            if !bad.contains(a.subject.as_str()) && online {
                db.resolve_alert("workload_unhealthy", &store.id, &a.subject, now).await?;
            }
        }
    }
    Ok(())
}

fn short(rev: &str) -> &str {
    backroom_daemon::text::short(rev, 12)
}

/// The event kinds [`from_events`] acts on.
pub const FROM_EVENTS: &[&str] = &["crash_loop", "workload_recovered", "failing", "recovered"];

async fn open_alert(
    db: &Db,
    kind: &str,
    store: &str,
    subject: &str,
    msg: &str,
    since: i64,
) -> Result<bool, DbError> {
    let a = AlertRow {
        id: new_id(),
        kind: kind.into(),
        store_id: store.into(),
        subject: subject.into(),
        message: msg.into(),
        since_ms: since,
        resolved_ms: 0,
    };
    let opened = db.open_alert(&a).await?;
    if opened {
        tracing::warn!(kind, store, subject, "alert: {msg}");
    }
    Ok(opened)
}

/// Alerts that come straight from events.
pub async fn from_events(db: &Db, events: &[NewEvent]) {
    for e in events {
        let r = match e.kind.as_str() {
            "crash_loop" => {
                open_alert(db, "crash_loop", &e.store_id, &e.workload, &e.message, e.at_ms)
                    .await
                    .map(|_| ())
            }
            "workload_recovered" => {
                db.resolve_alert("crash_loop", &e.store_id, &e.workload, e.at_ms).await.map(|_| ())
            }
            // A problem is keyed by its subject; one without a subject cannot be resolved later.
            "failing" if !e.subject.is_empty() => {
                open_alert(db, "problem", &e.store_id, &e.subject, &e.message, e.at_ms)
                    .await
                    .map(|_| ())
            }
            "recovered" if !e.subject.is_empty() => {
                db.resolve_alert("problem", &e.store_id, &e.subject, e.at_ms).await.map(|_| ())
            }
            _ => Ok(()),
        };
        if let Err(err) = r {
            tracing::error!(error = %backroom_daemon::Chain(&err), "could not update alerts from events");
        }
    }
}
