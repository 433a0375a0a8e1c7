//! Updates: a VM whose definition changed is restarted into the new one; when the new one does
//! not stay up (or does not get healthy), its old definition and overlay come back.

use std::time::Duration;

use backroom_daemon::Chain;

use crate::error::{Error, Result};
use crate::hypervisor::DomState;
use crate::layout::Layout;
use crate::manager::{HealthState, VmState, Vmd, blocking, duration_ms, short};
use crate::plan::DesiredVm;
use crate::xml;

impl Vmd {
    /// Redefines a VM whose definition changed, restarting it into the new one; if the new
    /// one does not stay up (or get healthy), the old definition and overlay come back.
    pub(crate) async fn update(&self, d: &DesiredVm, revision: &str) -> Result<String> {
        let name = d.name.clone();
        let notes = self.prepare(d).await?;
        let (hv, dn) = (self.hv(), d.domain_name());
        let old_xml = {
            let (hv, dn) = (hv.clone(), dn.clone());
            blocking(move || hv.xml(&dn)).await?
        };
        let was_running = {
            let (hv, dn) = (hv.clone(), dn.clone());
            blocking(move || hv.get(&dn)).await?.is_some_and(|x| x.state == DomState::Running)
        };
        self.set_busy(&name, true);
        self.set_state(&name, VmState::Updating, "");
        let result = self.update_inner(d, revision, was_running).await;
        let line = match result {
            Ok(()) => {
                self.cleanup_replaced(d).await;
                if let Some(r) = self.st().rt.get_mut(&name) {
                    r.revision = revision.into();
                }
                let msg = format!(
                    "VM {name} updated to revision {}{}",
                    short(revision),
                    if notes.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", notes.join(", "))
                    }
                );
                self.emit(&name, "update_done", msg.clone());
                Ok(format!("{name}: updated"))
            }
            Err(why) => {
                let rb = self.rollback(d, &old_xml, was_running).await;
                let shown = backroom_daemon::chain(&why);
                let msg = match &rb {
                    Ok(()) => format!(
                        "VM {name}: the update did not come up ({shown}); rolled back to the previous definition"
                    ),
                    Err(e) => format!(
                        "VM {name}: the update did not come up ({shown}); rollback failed too: {}",
                        backroom_daemon::chain(e)
                    ),
                };
                self.emit(&name, "update_rolled_back", msg.clone());
                self.set_busy(&name, false);
                if rb.is_err() {
                    self.set_state(&name, VmState::Failed, msg.clone());
                }
                return Err(Error::UpdateRolledBack { vm: name, source: Box::new(why) });
            }
        };
        self.set_busy(&name, false);
        line
    }

    async fn update_inner(&self, d: &DesiredVm, revision: &str, was_running: bool) -> Result<()> {
        let name = &d.name;
        let step = |what: &str| {
            let what = what.to_string();
            move |e: Error| Error::UpdateStep { step: what, source: Some(Box::new(e)) }
        };
        if was_running {
            self.stop_domain(name).await.map_err(step("cannot stop the old VM"))?;
        }
        let xml = xml::domain_xml(&d.domain, revision);
        let hv = self.hv();
        blocking(move || hv.define(&xml)).await.map_err(step("cannot define the new VM"))?;
        if self.is_parked(name) {
            return Ok(());
        }
        self.start_domain(name).await.map_err(step("cannot start the new VM"))?;
        self.wait_up(d).await
    }

    /// Up = still running after the settle time, and healthy when a check is given.
    async fn wait_up(&self, d: &DesiredVm) -> Result<()> {
        let cfg = &self.inner.cfg;
        let clock = self.clock();
        let start = clock.now_ms();
        let dn = d.domain_name();
        loop {
            clock.sleep(Duration::from_millis(250)).await;
            let (hv, n) = (self.hv(), dn.clone());
            let dom = blocking(move || hv.get(&n)).await?;
            let ran_ms = clock.now_ms() - start;
            if !dom.is_some_and(|x| x.state == DomState::Running) {
                return Err(Error::update_step(format!(
                    "it stopped {:.1}s after starting",
                    ran_ms as f64 / 1000.0
                )));
            }
            if ran_ms >= duration_ms(cfg.settle) {
                break;
            }
        }
        let (Some(h), Some(addr)) = (&d.spec.health, d.nics.iter().find_map(|n| n.address)) else {
            return Ok(());
        };
        let deadline = start + duration_ms(cfg.update_timeout);
        let mut last = None;
        while clock.now_ms() < deadline {
            match crate::health::probe(h, addr.addr(), cfg.probe_netns.as_deref()).await {
                Ok(()) => {
                    if let Some(r) = self.st().rt.get_mut(&d.name) {
                        r.health = HealthState::Healthy;
                    }
                    return Ok(());
                }
                Err(e) => last = Some(Box::new(e)),
            }
            clock.sleep(h.interval.to_std().min(Duration::from_secs(2))).await;
        }
        Err(Error::UpdateStep {
            step: format!("not healthy within {}s", cfg.update_timeout.as_secs()),
            source: last,
        })
    }

    async fn rollback(&self, d: &DesiredVm, old_xml: &str, was_running: bool) -> Result<()> {
        let (hv, dn) = (self.hv(), d.domain_name());
        {
            let (hv, dn) = (hv.clone(), dn.clone());
            let running =
                blocking(move || hv.get(&dn)).await?.is_some_and(|x| x.state == DomState::Running);
            if running {
                let (hv, dn) = (self.hv(), d.domain_name());
                blocking(move || hv.destroy(&dn)).await?;
            }
        }
        let x = old_xml.to_string();
        blocking(move || hv.define(&x)).await?;
        // The new files go; the old ones (named in old_xml) stay.
        let storage = self.storage();
        for f in d.replaceable_files() {
            if !old_xml.contains(&f.display().to_string()) {
                let _ = storage.remove(&f);
            }
        }
        let old_rev = xml::parse_meta(old_xml).map(|m| m.revision).unwrap_or_default();
        if let Some(r) = self.st().rt.get_mut(&d.name) {
            r.revision = old_rev;
        }
        if was_running && !self.is_parked(&d.name) {
            self.start_domain(&d.name).await?;
        } else {
            self.set_state(&d.name, VmState::Stopped, "");
        }
        Ok(())
    }

    /// Removes the overlays and seeds of a VM that its current definition no longer uses.
    async fn cleanup_replaced(&self, d: &DesiredVm) {
        let keep = d.replaceable_files();
        let storage = self.storage();
        for f in storage.list(&self.inner.layout.vm_dir(&d.name)) {
            if Layout::is_replaceable(&f)
                && !keep.contains(&f)
                && let Err(e) = storage.remove(&f)
            {
                tracing::warn!(vm = %d.name, error = %Chain(&e), "cannot remove an old overlay or seed");
            }
        }
    }
}
