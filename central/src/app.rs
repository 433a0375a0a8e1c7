//! What every part of central shares: the database, the CA, the clock, the open sessions, the
//! event writer, and the settings.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use backroom_daemon::SharedClock;

use crate::ca::Ca;
use crate::db::{AuditEntry, Db, NewEvent, Retention};
use crate::hub::Hub;
use crate::ingest::Ingest;

#[derive(Clone, Debug)]
pub struct Settings {
    /// How often nodes send a heartbeat.
    pub heartbeat_seconds: u32,
    /// A session that has said nothing for this long is closed (the store goes offline).
    pub session_timeout_ms: i64,
    /// A store offline for longer than this raises an alert.
    pub offline_alert_ms: i64,
    /// A workload unhealthy for longer than this raises an alert.
    pub unhealthy_alert_ms: i64,
    /// Node certificates are valid this long (nodes renew at two thirds).
    pub node_cert_days: u32,
    /// Open alerts of one store about its workloads and problems (subjects a node names); past
    /// it, one `alert_limit` alert says so. A store's offline and apply-failed alerts always open.
    pub max_open_alerts_per_store: u32,
    /// How long events and resolved alerts are kept, and how many events per store.
    pub retention: Retention,
    /// A node whose certificate expired less than this long ago may still renew it (and
    /// nothing else): a store closed for a season comes back by itself.
    pub renew_grace_days: u32,
    /// Commands waiting for one store (queued, or sent and not answered) at most; more are
    /// refused.
    pub max_queued_commands: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_seconds: 10,
            session_timeout_ms: 35_000,
            offline_alert_ms: 5 * 60_000,
            unhealthy_alert_ms: 5 * 60_000,
            node_cert_days: 30,
            max_open_alerts_per_store: 100,
            retention: Retention::default(),
            renew_grace_days: 90,
            max_queued_commands: 1000,
        }
    }
}

pub struct App {
    pub db: Db,
    pub ca: Ca,
    pub clock: SharedClock,
    pub hub: Hub,
    pub ingest: Ingest,
    pub settings: Settings,
    /// Set when central stops: session readers end, so their streams close.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Retention passes done (tests wait on it before saying a pass deleted nothing).
    pub sweeps: std::sync::atomic::AtomicU64,
}

impl App {
    pub fn new(db: Db, ca: Ca, clock: SharedClock, settings: Settings) -> Arc<App> {
        let ingest_db = db.clone();
        let ingest_clock = Arc::clone(&clock);
        // Crash-loop and problem alerts come straight from events; the others from periodic
        // checks.
        let alert_db = db.clone();
        let cap = settings.max_open_alerts_per_store;
        let ingest = Ingest::start(
            ingest_db,
            move || ingest_clock.now_ms(),
            move |events: &[NewEvent]| {
                let interesting: Vec<NewEvent> = events
                    .iter()
                    .filter(|e| crate::alerts::FROM_EVENTS.contains(&e.kind.as_str()))
                    .cloned()
                    .collect();
                if !interesting.is_empty() {
                    let db = alert_db.clone();
                    tokio::spawn(async move {
                        crate::alerts::from_events(&db, &interesting, cap).await
                    });
                }
            },
        );
        Arc::new(App {
            db,
            ca,
            clock,
            hub: Hub::default(),
            ingest,
            settings,
            stopping: tokio::sync::watch::Sender::new(false),
            sweeps: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// An audit record of `actor` doing `action` about `store_id`, to write with the change.
    pub fn audit_entry(
        &self,
        actor: &str,
        action: &str,
        store_id: &str,
        detail: impl Into<String>,
    ) -> AuditEntry {
        AuditEntry::new(actor, action, store_id, detail)
    }

    /// One retention pass, logged when it deleted anything.
    pub async fn sweep(&self) -> crate::db::Swept {
        let result = self.db.sweep(&self.settings.retention, self.now_ms()).await;
        self.sweeps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match result {
            Ok(s) => {
                if s != crate::db::Swept::default() {
                    tracing::info!(
                        old_events = s.old_events,
                        excess_events = s.excess_events,
                        resolved_alerts = s.resolved_alerts,
                        more = s.more,
                        "retention: deleted old events and alerts"
                    );
                }
                s
            }
            Err(e) => {
                tracing::error!(error = %backroom_daemon::Chain(&e), "retention: could not delete old events");
                crate::db::Swept::default()
            }
        }
    }

    /// Writes an audit record on its own; a failure is logged. For what a node did (an
    /// enrollment or a renewal has already happened when this runs); an operator's change
    /// writes its record in the change's own transaction instead.
    pub async fn audit(&self, actor: &str, action: &str, detail: &str) {
        let id = format!("{:032x}", rand::random::<u128>());
        if let Err(e) = self.db.audit(&id, actor, action, detail, self.now_ms()).await {
            tracing::error!(error = %backroom_daemon::Chain(&e), action, "could not write the audit trail");
        }
    }
}

/// A store's last status report as kept in the database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusJson {
    pub desired_revision: String,
    pub last_apply_revision: String,
    pub rolled_back_to: String,
    pub workloads: Vec<WorkloadJson>,
    /// What the node said is failing now (absent in statuses stored before problems existed).
    #[serde(default)]
    pub problems: Vec<ProblemJson>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProblemJson {
    pub subject: String,
    pub message: String,
    pub since_ms: i64,
    pub failures: u32,
    /// Who noticed: netd | vmd | nodeagent.
    pub source: String,
}

impl ProblemJson {
    pub fn to_proto(&self) -> backroom_api::common::Problem {
        backroom_api::common::Problem {
            subject: self.subject.clone(),
            message: self.message.clone(),
            since_unix_ms: self.since_ms,
            failures: self.failures,
            source: self.source.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadJson {
    pub name: String,
    pub kind: String,
    pub state: String,
    pub healthy: bool,
    pub since_ms: i64,
    pub restarts: u32,
    pub reason: String,
    pub addresses: Vec<String>,
}

impl StatusJson {
    pub fn parse(s: &str) -> StatusJson {
        serde_json::from_str(s).unwrap_or_default()
    }

    pub fn from_proto(s: &backroom_api::node::Status) -> StatusJson {
        let last = s.last_apply.clone().unwrap_or_default();
        StatusJson {
            desired_revision: s.desired_revision.clone(),
            last_apply_revision: last.revision,
            rolled_back_to: last.rolled_back_to,
            workloads: s
                .workloads
                .iter()
                .map(|w| WorkloadJson {
                    name: w.name.clone(),
                    kind: w.kind.clone(),
                    state: w.state.clone(),
                    healthy: w.healthy,
                    since_ms: w.since_unix_ms,
                    restarts: w.restarts,
                    reason: w.reason.clone(),
                    addresses: w.addresses.clone(),
                })
                .collect(),
            problems: s
                .problems
                .iter()
                .map(|p| ProblemJson {
                    subject: p.subject.clone(),
                    message: p.message.clone(),
                    since_ms: p.since_unix_ms,
                    failures: p.failures,
                    source: p.source.clone(),
                })
                .collect(),
        }
    }
}
