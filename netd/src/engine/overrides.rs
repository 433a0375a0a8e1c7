//! The uplink override through the engine: set (with commit-confirm), clear, expire, and the
//! DNS file it writes. The override is part of the applied state ([`Applied::segment_override`]),
//! so every convergence (apply, drift repair, DHCP, rollback) plans with it.

use backroom_daemon::fs::write_atomic;

use super::{Engine, Outcome};
use crate::error::{Error, Result};
use crate::overrides::{self, OverrideRequest, ResolvOp, SegmentOverride};
use crate::state::{self, AppliedFile, Pending, ResolvFile};

/// How an override ended (by its expiry or a clear), and what netd did about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideEnd {
    pub ended: SegmentOverride,
    pub outcome: Outcome,
}

impl Engine {
    /// Puts `req` in force on top of the applied profile. With `confirm_seconds > 0` the
    /// network before it comes back unless [`Engine::confirm`] is called in time. Refused
    /// (nothing changed) when it does not validate, when nothing is applied, or while a
    /// profile apply awaits its confirmation. A new override replaces one in force; one
    /// awaiting its confirmation keeps the network before it to go back to.
    pub fn set_override(
        &mut self,
        req: &OverrideRequest,
        confirm_seconds: u32,
    ) -> Result<(SegmentOverride, Outcome)> {
        let before = self.applied()?;
        let a = before.applied.clone().ok_or(Error::NotApplied)?;
        if let Some(p) = before.pending.as_ref().filter(|p| !p.of_override) {
            return Err(Error::ApplyPending {
                revision: a.revision.clone(),
                deadline_unix: p.deadline_unix,
            });
        }
        let r = self.parse_cached(&a)?;
        let now = self.clock.now_unix();
        let o = overrides::validate(req, &r.profile, now)?;
        let mut out = self.converge(&r, a.uplink_override.as_deref(), Some(&o))?;
        let pending = (confirm_seconds > 0).then(|| {
            let previous = match &before.pending {
                Some(p) => p.previous.clone(),
                None => Some(a.clone()),
            };
            out.confirm_deadline_unix = now + i64::from(confirm_seconds);
            Pending { deadline_unix: out.confirm_deadline_unix, previous, of_override: true }
        });
        let mut applied = a;
        applied.segment_override = Some(o.clone());
        self.state.save(state::APPLIED, &AppliedFile { applied: Some(applied), pending })?;
        Ok((o, out))
    }

    /// Ends the override in force at once: the segment is the profile's again. An override
    /// awaiting its confirmation goes with its pending mark (the network before it is back);
    /// a profile apply awaiting its own keeps it, without the override to go back to.
    pub fn clear_override(&mut self) -> Result<OverrideEnd> {
        let now = self.clock.now_unix();
        let mut f = self.applied()?;
        let a = f.applied.as_mut().ok_or(Error::NotApplied)?;
        let ended =
            a.segment_override.clone().filter(|o| o.active_at(now)).ok_or(Error::NoOverride)?;
        self.end_override(f, ended)
    }

    /// Removes the override once it has expired (on the engine's clock): netd's loop calls it
    /// every turn, nodeagent or not.
    pub fn expire_override_if_due(&mut self) -> Result<Option<OverrideEnd>> {
        let now = self.clock.now_unix();
        let f = self.applied()?;
        let Some(ended) = f
            .applied
            .as_ref()
            .and_then(|a| a.segment_override.clone())
            .filter(|o| !o.active_at(now))
        else {
            return Ok(None);
        };
        self.end_override(f, ended).map(Some)
    }

    fn end_override(&mut self, mut f: AppliedFile, ended: SegmentOverride) -> Result<OverrideEnd> {
        let Some(a) = f.applied.as_mut() else { return Err(Error::NotApplied) };
        a.segment_override = None;
        match f.pending.as_mut() {
            Some(p) if p.of_override => f.pending = None,
            Some(p) => {
                if let Some(prev) = p.previous.as_mut() {
                    prev.segment_override = None;
                }
            }
            None => {}
        }
        let a = a.clone();
        let r = self.parse_cached(&a)?;
        let outcome = self.converge(&r, a.uplink_override.as_deref(), None)?;
        self.state.save(state::APPLIED, &f)?;
        Ok(OverrideEnd { ended, outcome })
    }

    /// The step the DNS file needs for `active` (the override in force), if any.
    pub(super) fn resolv_plan(&self, active: Option<&SegmentOverride>) -> Result<Option<ResolvOp>> {
        let kept: ResolvFile = self.state.load(state::RESOLV)?;
        let path = self.resolv_conf.as_deref();
        let current = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(Error::Resolv { what: "read", path: p.to_path_buf(), source });
                }
            },
            None => None,
        };
        Ok(overrides::plan_resolv(path, active, current.as_deref(), kept.as_ref()))
    }

    /// Carries out a DNS file step: what it replaces is kept (in the state directory) before
    /// the file is written, and forgotten only once it is back.
    pub(super) fn run_resolv(&mut self, op: ResolvOp) -> Result<()> {
        match op {
            ResolvOp::Write { path, text, keep } => {
                if let Some(k) = keep {
                    self.state.save(state::RESOLV, &Some(k))?;
                }
                write_atomic(&path, text.as_bytes(), 0o644).map_err(|source| Error::Resolv {
                    what: "write",
                    path,
                    source,
                })
            }
            ResolvOp::Restore(k) => {
                let r = match &k.text {
                    Some(t) => write_atomic(&k.path, t.as_bytes(), 0o644),
                    None => match std::fs::remove_file(&k.path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    },
                };
                r.map_err(|source| Error::Resolv {
                    what: "restore",
                    path: k.path.clone(),
                    source,
                })?;
                self.state.save(state::RESOLV, &ResolvFile::None)
            }
        }
    }

    /// Puts the DNS file back when netd wrote an override's servers into it (teardown).
    pub(super) fn restore_resolv(&mut self) -> Result<Option<String>> {
        let kept: ResolvFile = self.state.load(state::RESOLV)?;
        let Some(k) = kept else { return Ok(None) };
        let op = ResolvOp::Restore(k);
        let line = op.to_string();
        self.run_resolv(op)?;
        Ok(Some(line))
    }
}
