//! Plain row types of central's database.

use sqlx::Row;
use sqlx::any::AnyRow;

pub const STORE_COLUMNS: &str = "id, region, desired_revision, applied_revision, agent_version, cert_serial, \
     cert_not_after, enrolled_ms, last_seen_ms, online, status_json, last_apply_ok, last_apply_message, acked_seq, created_ms";

#[derive(Clone, Debug, PartialEq)]
pub struct StoreRow {
    pub id: String,
    pub region: String,
    pub desired_revision: String,
    pub applied_revision: String,
    pub agent_version: String,
    pub cert_serial: String,
    pub cert_not_after: i64,
    pub enrolled_ms: i64,
    pub last_seen_ms: i64,
    pub online: bool,
    /// The last status report, as JSON (see `session::StatusJson`).
    pub status_json: String,
    pub last_apply_ok: bool,
    pub last_apply_message: String,
    pub acked_seq: u64,
    pub created_ms: i64,
}

impl StoreRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(StoreRow {
            id: r.try_get("id")?,
            region: r.try_get("region")?,
            desired_revision: r.try_get("desired_revision")?,
            applied_revision: r.try_get("applied_revision")?,
            agent_version: r.try_get("agent_version")?,
            cert_serial: r.try_get("cert_serial")?,
            cert_not_after: r.try_get("cert_not_after")?,
            enrolled_ms: r.try_get("enrolled_ms")?,
            last_seen_ms: r.try_get("last_seen_ms")?,
            online: r.try_get::<i64, _>("online")? != 0,
            status_json: r.try_get("status_json")?,
            last_apply_ok: r.try_get::<i64, _>("last_apply_ok")? != 0,
            last_apply_message: r.try_get("last_apply_message")?,
            acked_seq: u64::try_from(r.try_get::<i64, _>("acked_seq")?).unwrap_or(0),
            created_ms: r.try_get("created_ms")?,
        })
    }
}

/// What a session reports about a store.
pub struct SessionUpdate<'a> {
    pub store_id: &'a str,
    pub online: bool,
    pub now_ms: i64,
    pub agent_version: &'a str,
    pub applied_revision: &'a str,
    pub status_json: &'a str,
    pub last_apply_ok: bool,
    pub last_apply_message: &'a str,
}

pub struct NewEnrollToken<'a> {
    pub hash: &'a str,
    pub store_id: &'a str,
    pub region: &'a str,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub created_by: &'a str,
}

pub struct PushedStore<'a> {
    pub store_id: &'a str,
    pub region: &'a str,
    pub revision: &'a str,
    pub profile_yaml: &'a str,
    pub source: &'a str,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PushResult {
    pub store_id: String,
    pub revision: String,
    pub changed: bool,
    pub previous: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub store_id: String,
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    pub workload: String,
    pub message: String,
    /// For failing and recovered: what (e.g. "uplink eno1"); '' otherwise.
    pub subject: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    pub workload: String,
    pub message: String,
    pub subject: String,
}

impl EventRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(EventRow {
            seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
            at_ms: r.try_get("at_ms")?,
            kind: r.try_get("kind")?,
            workload: r.try_get("workload")?,
            message: r.try_get("message")?,
            subject: r.try_get("subject")?,
        })
    }
}

pub const COMMAND_COLUMNS: &str =
    "id, store_id, kind, workload, state, result, created_ms, expires_ms, finished_ms";

#[derive(Clone, Debug, PartialEq)]
pub struct CommandRow {
    pub id: String,
    pub store_id: String,
    pub kind: String,
    pub workload: String,
    /// queued (waiting, or pushed to the store's session and not acknowledged yet) | sent
    /// (the node acknowledged it) | done | failed | expired
    pub state: String,
    pub result: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub finished_ms: i64,
}

impl CommandRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(CommandRow {
            id: r.try_get("id")?,
            store_id: r.try_get("store_id")?,
            kind: r.try_get("kind")?,
            workload: r.try_get("workload")?,
            state: r.try_get("state")?,
            result: r.try_get("result")?,
            created_ms: r.try_get("created_ms")?,
            expires_ms: r.try_get("expires_ms")?,
            finished_ms: r.try_get("finished_ms")?,
        })
    }
}

pub const ALERT_COLUMNS: &str = "id, kind, store_id, subject, message, since_ms, resolved_ms";

#[derive(Clone, Debug, PartialEq)]
pub struct AlertRow {
    pub id: String,
    pub kind: String,
    pub store_id: String,
    pub subject: String,
    pub message: String,
    pub since_ms: i64,
    pub resolved_ms: i64,
}

impl AlertRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(AlertRow {
            id: r.try_get("id")?,
            kind: r.try_get("kind")?,
            store_id: r.try_get("store_id")?,
            subject: r.try_get("subject")?,
            message: r.try_get("message")?,
            since_ms: r.try_get("since_ms")?,
            resolved_ms: r.try_get("resolved_ms")?,
        })
    }
}

/// What [`super::Db::open_alert_capped`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertOpened {
    Opened,
    AlreadyOpen,
    /// The store is at its cap: the alert was not opened; `limit_opened` if the alert saying so
    /// was opened now (rather than already open).
    Capped {
        limit_opened: bool,
    },
}

/// Where a page of alerts ended: the (kind, since, id) of its last alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertKey {
    pub kind: String,
    pub since_ms: i64,
    pub id: String,
}

impl AlertKey {
    pub fn of(a: &AlertRow) -> Self {
        AlertKey { kind: a.kind.clone(), since_ms: a.since_ms, id: a.id.clone() }
    }

    /// As a page token: `kind/since/id` (kinds and ids are ours: no `/` in them).
    pub fn token(&self) -> String {
        format!("{}/{}/{}", self.kind, self.since_ms, self.id)
    }

    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.splitn(3, '/');
        let kind = parts.next()?.to_string();
        let since_ms = parts.next()?.parse().ok()?;
        let id = parts.next()?.to_string();
        Some(AlertKey { kind, since_ms, id })
    }
}

pub const ENROLL_TOKEN_COLUMNS: &str =
    "id, store_id, region, created_ms, expires_ms, used_ms, revoked_ms, created_by";

/// An enrollment token as central keeps it (never the token itself).
#[derive(Clone, Debug, PartialEq)]
pub struct EnrollTokenRow {
    pub id: String,
    pub store_id: String,
    pub region: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub used_ms: i64,
    pub revoked_ms: i64,
    pub created_by: String,
}

impl EnrollTokenRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(EnrollTokenRow {
            id: r.try_get("id")?,
            store_id: r.try_get("store_id")?,
            region: r.try_get("region")?,
            created_ms: r.try_get("created_ms")?,
            expires_ms: r.try_get("expires_ms")?,
            used_ms: r.try_get("used_ms")?,
            revoked_ms: r.try_get("revoked_ms")?,
            created_by: r.try_get("created_by")?,
        })
    }

    /// unused | used | expired | revoked, at `now_ms`.
    pub fn state(&self, now_ms: i64) -> &'static str {
        if self.revoked_ms != 0 {
            "revoked"
        } else if self.used_ms != 0 {
            "used"
        } else if self.expires_ms <= now_ms {
            "expired"
        } else {
            "unused"
        }
    }
}

pub const API_TOKEN_COLUMNS: &str = "id, name, role, created_ms, revoked_ms";

/// An API token as central keeps it (never the token itself).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiTokenRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_ms: i64,
    pub revoked_ms: i64,
}

impl ApiTokenRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(ApiTokenRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            role: r.try_get("role")?,
            created_ms: r.try_get("created_ms")?,
            revoked_ms: r.try_get("revoked_ms")?,
        })
    }
}
