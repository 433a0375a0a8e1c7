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
//!
//! Workload and problem alerts are keyed by names a node sends, so a node could open them
//! without end (a crash-looping workload with a new name each time): a store has at most
//! `max_open_alerts_per_store` of them open; past that, one `alert_limit` alert says that the
//! store has more than central shows, until enough resolve. `store_offline` and `apply_failed`
//! (one per store) are never held back.

use std::collections::HashSet;

use crate::app::{App, StatusJson};
use crate::db::{AlertOpened, AlertRow, Db, DbError, NewEvent};

/// The kinds whose subjects come from a node, and so are capped per store.
pub const CAPPED: &[&str] = &["workload_unhealthy", "crash_loop", "problem"];
/// The alert that stands for the ones a store is not shown.
pub const LIMIT_KIND: &str = "alert_limit";

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
        LIMIT_KIND => "stores with more alerts than central shows",
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
        if open.iter().any(|a| a.kind == LIMIT_KIND && a.store_id == store.id) {
            let n = db.count_open_alerts(&store.id, CAPPED).await?;
            if n < i64::from(s.max_open_alerts_per_store) {
                db.resolve_alert(LIMIT_KIND, &store.id, "", now).await?;
            }
        }
        let online = app.hub.is_online(&store.id);
        // A store enrolled but not yet connected counts from its enrollment.
        let last = store.last_seen_ms.max(store.enrolled_ms);
        let quiet = now - last;
        if !online && quiet > s.offline_alert_ms {
            let msg = format!("no session with the store for {}", minutes(quiet));
            open_alert(db, "store_offline", &store.id, "", &msg, last, u32::MAX).await?;
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
            open_alert(db, "apply_failed", &store.id, "", &msg, now, u32::MAX).await?;
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
                open_alert(
                    db,
                    "workload_unhealthy",
                    &store.id,
                    &w.name,
                    &msg,
                    w.since_ms,
                    s.max_open_alerts_per_store,
                )
                .await?;
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
    cap: u32,
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
    let limit = AlertRow {
        id: new_id(),
        kind: LIMIT_KIND.into(),
        store_id: store.into(),
        subject: String::new(),
        message: format!(
            "this store has {cap} open alerts about its workloads and problems: newer ones are \
             not shown until some resolve (see centralctl store get {store})"
        ),
        since_ms: since,
        resolved_ms: 0,
    };
    match db.open_alert_capped(&a, CAPPED, cap, &limit).await? {
        AlertOpened::Opened => {
            tracing::warn!(kind, store, subject, "alert: {msg}");
            Ok(true)
        }
        AlertOpened::AlreadyOpen => Ok(false),
        AlertOpened::Capped { limit_opened } => {
            if limit_opened {
                tracing::warn!(
                    store,
                    cap,
                    "store {store} reached its limit of {cap} open alerts: newer ones are not opened"
                );
            }
            Ok(false)
        }
    }
}

/// Alerts that come straight from events.
pub async fn from_events(db: &Db, events: &[NewEvent], cap: u32) {
    for e in events {
        let r = match e.kind.as_str() {
            "crash_loop" => {
                open_alert(db, "crash_loop", &e.store_id, &e.workload, &e.message, e.at_ms, cap)
                    .await
                    .map(|_| ())
            }
            "workload_recovered" => {
                db.resolve_alert("crash_loop", &e.store_id, &e.workload, e.at_ms).await.map(|_| ())
            }
            // A problem is keyed by its subject; one without a subject cannot be resolved later.
            "failing" if !e.subject.is_empty() => {
                open_alert(db, "problem", &e.store_id, &e.subject, &e.message, e.at_ms, cap)
                    .await
                    .map(|_| ())
            }
            "recovered" if !e.subject.is_empty() => {
                db.resolve_alert("problem", &e.store_id, &e.subject, e.at_ms).await.map(|_| ())
            }
            // What was done at the store's console is a record, not something to act on: it
            // shows in `store get` (a refused code too: the console rate-limits those itself).
            k if crate::db::CONSOLE_EVENT_KINDS.contains(&k) => Ok(()),
            _ => Ok(()),
        };
        if let Err(err) = r {
            tracing::error!(error = %backroom_daemon::Chain(&err), "could not update alerts from events");
        }
    }
}
