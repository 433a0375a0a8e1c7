//! The uplink override as the daemon serves it: protobuf to and from the engine's types, its
//! events (`override_set`, `override_expired`, `override_cleared`, `override_rolled_back`)
//! and the expiry the background loop runs every turn.

use backroom_api::netd as pb;
use backroom_daemon::{Chain, chain};
use tracing::{info, warn};

use super::Daemon;
use crate::engine::{Engine, Outcome, OverrideEnd};
use crate::error::Error;
use crate::overrides::{OverrideRequest, SegmentOverride};

pub fn to_pb(o: &SegmentOverride) -> pb::Override {
    pb::Override {
        segment: o.segment.clone(),
        address: o.address.to_string(),
        gateway: o.gateway.to_string(),
        dns: o.dns.iter().map(ToString::to_string).collect(),
        vlan: o.vlan.map(u32::from).unwrap_or(0),
        expires_unix: o.expires_unix,
        set_unix: o.set_unix,
        reason: o.reason.clone(),
    }
}

/// A request as the engine validates it (`set_unix` is netd's to fill).
pub fn request(o: pb::Override) -> OverrideRequest {
    OverrideRequest {
        segment: o.segment,
        address: o.address,
        gateway: o.gateway,
        dns: o.dns,
        vlan: o.vlan,
        expires_unix: o.expires_unix,
        reason: o.reason,
    }
}

/// The segment of the override awaiting its confirmation, if that is what is pending.
pub fn pending_override(e: &Engine) -> Result<Option<String>, Error> {
    let f = e.applied()?;
    Ok(f.pending
        .filter(|p| p.of_override)
        .and(f.applied)
        .and_then(|a| a.segment_override)
        .map(|o| o.segment))
}

/// The subject of an override's events and of its expiry's problem.
fn subject(segment: &str) -> String {
    format!("uplink override of segment {segment}")
}

impl Daemon {
    pub(super) fn emit_override(&self, kind: &str, message: String, segment: &str) {
        let subject = subject(segment);
        info!(kind, subject, "{message}");
        self.send(kind, message, "", &subject);
    }

    pub(super) fn override_set(&self, o: &SegmentOverride, out: &Outcome) {
        let until = if out.confirm_deadline_unix > 0 {
            format!(", to be confirmed before unix time {}", out.confirm_deadline_unix)
        } else {
            String::new()
        };
        let why = if o.reason.is_empty() { String::new() } else { format!(" ({})", o.reason) };
        self.emit_override(
            "override_set",
            format!(
                "segment {} uses {} instead of its profile's settings until unix time {}{until}{why}",
                o.segment,
                o.describe(),
                o.expires_unix
            ),
            &o.segment,
        );
    }

    pub(super) fn override_ended(&self, kind: &str, end: &OverrideEnd) {
        let how = if kind == "override_expired" { "expired" } else { "was cleared" };
        self.emit_override(
            kind,
            format!(
                "the uplink override of segment {} ({}) {how}: the segment is back to its profile's settings ({} steps)",
                end.ended.segment,
                end.ended.describe(),
                end.outcome.actions.len()
            ),
            &end.ended.segment,
        );
    }

    /// Removes an override whose time is up (netd's own loop: nodeagent may be down). A
    /// removal that fails is one problem under the override's subject, retried every turn.
    pub async fn override_expiry(&self) {
        match self.run(|e| e.expire_override_if_due()).await {
            Ok(Some(end)) => {
                self.override_ended("override_expired", &end);
                self.succeeded(&subject(&end.ended.segment));
            }
            Ok(None) | Err(Error::NotApplied) => {}
            Err(e) => {
                let segment = self
                    .run(|e| Ok(e.applied()?.applied.and_then(|a| a.segment_override)))
                    .await
                    .ok()
                    .flatten()
                    .map(|o| o.segment)
                    .unwrap_or_default();
                warn!(error = %Chain(&e), "cannot end the expired uplink override");
                self.failed(
                    &subject(&segment),
                    format!(
                        "netd cannot end the expired uplink override of segment {segment}: {}",
                        chain(&e)
                    ),
                );
            }
        }
    }
}
