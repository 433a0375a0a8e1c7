//! Commit-confirm through the engine: a Confirm, and what a passed deadline does (the
//! previous applied state back, or the network kept when there is none to go back to).

use super::{Deadline, Engine, parse_profile};
use crate::error::{Error, Result};
use crate::state::{self, AppliedFile};

impl Engine {
    /// Confirms the pending apply (`revision` empty: whatever is pending), or a network kept
    /// unconfirmed at its deadline (which clears its mark).
    pub fn confirm(&mut self, revision: &str) -> Result<String> {
        let mut f = self.applied()?;
        let Some(a) = f.applied.as_mut().filter(|a| f.pending.is_some() || a.unconfirmed_kept)
        else {
            return Err(Error::NothingPending);
        };
        if !revision.is_empty() && a.revision != revision {
            return Err(Error::OtherPending {
                pending: a.revision.clone(),
                asked: revision.into(),
            });
        }
        // An override's confirmation says nothing about the profile's network.
        if !f.pending.as_ref().is_some_and(|p| p.of_override) {
            a.unconfirmed_kept = false;
        }
        let rev = a.revision.clone();
        f.pending = None;
        self.state.save(state::APPLIED, &f)?;
        Ok(rev)
    }

    /// When a pending apply's deadline has passed (on the engine's clock): restores the
    /// previous applied state. With none to go back to (the first network, or the same one
    /// applied again), the applied network stays, marked [`Applied::unconfirmed_kept`]:
    /// removing it would cut the store off, and that is what the deadline exists to undo.
    pub fn rollback_if_due(&mut self) -> Result<Option<Deadline>> {
        let f = self.applied()?;
        let Some(p) = f.pending else { return Ok(None) };
        if self.clock.now_unix() < p.deadline_unix {
            return Ok(None);
        }
        let Some(mut applied) = f.applied else {
            // A pending mark without an applied state: nothing was applied to undo.
            self.state.save(state::APPLIED, &AppliedFile::default())?;
            return Ok(None);
        };
        match p.previous {
            Some(prev) if !prev.same_network(&applied) => {
                let r = parse_profile(&prev.revision, &prev.profile_yaml)?;
                let out = self.converge(
                    &r,
                    prev.uplink_override.as_deref(),
                    prev.segment_override.as_ref(),
                )?;
                self.state.save(
                    state::APPLIED,
                    &AppliedFile { applied: Some(prev.clone()), pending: None },
                )?;
                if p.of_override {
                    let segment = applied.segment_override.map(|o| o.segment).unwrap_or_default();
                    return Ok(Some(Deadline::OverrideRolledBack { segment, outcome: out }));
                }
                Ok(Some(Deadline::RolledBack { revision: prev.revision, outcome: out }))
            }
            prev => {
                // Already kept before (this very network, applied again and still unconfirmed).
                let again = prev.is_some_and(|p| p.unconfirmed_kept);
                applied.unconfirmed_kept = true;
                let revision = applied.revision.clone();
                self.state
                    .save(state::APPLIED, &AppliedFile { applied: Some(applied), pending: None })?;
                Ok(Some(Deadline::Kept { revision, again }))
            }
        }
    }
}
