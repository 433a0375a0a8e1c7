//! What keeps VMs running between applies: lifecycle events from libvirt drive the restart
//! policy (with exponential backoff), a periodic resync catches events that were missed (a
//! libvirtd restart), and health checks probe running VMs that have one.

use std::time::{Duration, Instant};

use backroom_profiles::RestartPolicy;

use crate::hypervisor::{DomState, Lifecycle, LifecycleEvent, StopCause};
use crate::manager::{HealthState, VmState, Vmd, blocking};
use crate::xml::DOMAIN_PREFIX;

/// The background tasks of the daemon.
pub struct Supervisor {
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Supervisor {
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

fn policy_name(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
    }
}

impl Vmd {
    /// Starts the event, resync and health tasks. Call once.
    pub fn supervise(&self) -> Supervisor {
        let mut tasks = Vec::new();
        if let Some(mut rx) = self.inner.deps.hypervisor.take_events() {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    me.on_lifecycle(ev);
                }
                tracing::error!(
                    "libvirt's event channel closed: restart policy now runs on resync only"
                );
            }));
        }
        let me = self.clone();
        tasks.push(tokio::spawn(async move {
            let every = me.inner.cfg.resync_every;
            loop {
                tokio::time::sleep(every).await;
                me.resync().await;
            }
        }));
        let me = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                me.health_round().await;
            }
        }));
        Supervisor { tasks }
    }

    /// One lifecycle event from libvirt.
    pub fn on_lifecycle(&self, ev: LifecycleEvent) {
        let Some(vm) = ev.domain.strip_prefix(DOMAIN_PREFIX).map(str::to_string) else { return };
        match ev.what {
            Lifecycle::Started => {
                let fresh = {
                    let mut st = self.st();
                    let Some(r) = st.rt.get_mut(&vm) else { return };
                    if r.state != VmState::Running && !r.busy {
                        r.started_at = Some(Instant::now());
                        true
                    } else {
                        false
                    }
                };
                if fresh {
                    self.set_state(&vm, VmState::Running, "");
                }
            }
            Lifecycle::Stopped(cause) => self.on_stopped(&vm, cause),
            Lifecycle::Other => {}
        }
    }

    fn on_stopped(&self, vm: &str, cause: StopCause) {
        let crashed = cause == StopCause::Crashed;
        let (kind, what) = match cause {
            StopCause::Crashed => ("crashed", "its QEMU process died or the guest crashed"),
            StopCause::Shutdown => ("stopped", "the guest powered off"),
            StopCause::Destroyed => ("stopped", "it was destroyed outside vmd"),
            StopCause::Other => ("stopped", "it stopped"),
        };
        let decision = {
            let mut st = self.st();
            let cfg = &self.inner.cfg;
            let Some(r) = st.rt.get_mut(vm) else { return };
            if r.busy || matches!(r.state, VmState::Stopped | VmState::Crashed) && r.rec.parked {
                return;
            }
            r.state = if crashed { VmState::Crashed } else { VmState::Stopped };
            r.rec.since_unix = crate::manager::now_unix();
            r.health = HealthState::Unknown;
            let policy = r.policy();
            let restart = match policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => crashed,
                RestartPolicy::Never => false,
            };
            r.restart_gen += 1;
            if !restart {
                r.rec.parked = true;
                r.rec.reason =
                    format!("{what}; restart policy {} leaves it stopped", policy_name(policy));
                None
            } else {
                if r.started_at.is_some_and(|t| t.elapsed() >= cfg.stable_after) {
                    r.backoff = 0;
                }
                let factor = 1u32.checked_shl(r.backoff.min(20)).unwrap_or(u32::MAX);
                let delay = cfg.backoff_first.saturating_mul(factor).min(cfg.backoff_max);
                r.backoff += 1;
                r.rec.reason = format!(
                    "{what}; restarting in {}s (restart policy {})",
                    delay.as_secs_f64(),
                    policy_name(policy)
                );
                Some((delay, r.restart_gen))
            }
        };
        let reason = self.status(vm).map(|s| s.reason).unwrap_or_default();
        self.emit(vm, kind, format!("VM {vm}: {reason}"));
        self.save();
        if let Some((delay, gen_)) = decision {
            let me = self.clone();
            let vm = vm.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                me.restart_after_backoff(&vm, gen_, delay).await;
            });
        }
    }

    async fn restart_after_backoff(&self, vm: &str, gen_: u64, delay: Duration) {
        let _ops = self.inner.ops.lock().await;
        let still = {
            let st = self.st();
            st.rt.get(vm).is_some_and(|r| {
                r.restart_gen == gen_ && !r.busy && !r.rec.parked && r.state != VmState::Running
            })
        };
        if !still {
            return;
        }
        match self.start_domain(vm).await {
            Ok(()) => {
                let n = {
                    let mut st = self.st();
                    st.rt.get_mut(vm).map_or(0, |r| {
                        r.rec.restarts += 1;
                        r.rec.restarts
                    })
                };
                self.emit(
                    vm,
                    "restarted",
                    format!(
                        "VM {vm} restarted by its restart policy (restart #{n}, after {}s)",
                        delay.as_secs_f64()
                    ),
                );
                self.save();
            }
            Err(e) => {
                self.set_state(vm, VmState::Failed, format!("restart failed: {e}"));
                self.emit(vm, "failed", format!("VM {vm} could not be restarted: {e}"));
                // Try again later, with a longer backoff.
                self.on_stopped(vm, StopCause::Crashed);
            }
        }
    }

    /// Compares what vmd believes with libvirt, for events that never came.
    pub async fn resync(&self) {
        let hv = self.inner.deps.hypervisor.clone();
        let doms = match blocking(move || hv.list()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "resync: cannot list domains");
                return;
            }
        };
        let mut missed = Vec::new();
        {
            let mut st = self.st();
            for (vm, r) in st.rt.iter_mut() {
                if r.busy {
                    continue;
                }
                let dn = crate::xml::domain_name(vm);
                let running = doms.iter().any(|d| d.name == dn && d.state == DomState::Running);
                if running && r.state != VmState::Running {
                    r.state = VmState::Running;
                    r.started_at.get_or_insert_with(Instant::now);
                } else if !running && r.state == VmState::Running {
                    missed.push(vm.clone());
                }
            }
        }
        for vm in missed {
            tracing::warn!(vm, "resync: the VM is not running and no event said so");
            self.on_stopped(&vm, StopCause::Other);
        }
    }

    /// Probes every running VM whose check is due.
    pub async fn health_round(&self) {
        let due: Vec<(String, backroom_profiles::Health, std::net::IpAddr)> = {
            let mut st = self.st();
            let now = Instant::now();
            st.rt
                .iter_mut()
                // A booting guest is not judged before the settle time.
                .filter(|(_, r)| r.state == VmState::Running && !r.busy)
                .filter(|(_, r)| r.started_at.is_some_and(|t| t.elapsed() >= self.inner.cfg.settle))
                .filter_map(|(n, r)| {
                    let h = r.spec.health.clone()?;
                    let addr = r.nics.iter().find_map(|n| n.address)?.addr();
                    if r.health_due.is_some_and(|t| t > now) {
                        return None;
                    }
                    r.health_due = Some(now + h.interval.to_std());
                    Some((n.clone(), h, addr))
                })
                .collect()
        };
        for (vm, h, addr) in due {
            let res = crate::health::probe(&h, addr, self.inner.cfg.probe_netns.as_deref()).await;
            let change = {
                let mut st = self.st();
                let Some(r) = st.rt.get_mut(&vm) else { continue };
                let before = r.health;
                match &res {
                    Ok(()) => {
                        r.health_failures = 0;
                        r.health = HealthState::Healthy;
                    }
                    Err(_) => {
                        r.health_failures += 1;
                        if r.health_failures >= h.failure_threshold.max(1) {
                            r.health = HealthState::Unhealthy;
                        }
                    }
                }
                (before != r.health).then_some(r.health)
            };
            match (change, res) {
                (Some(HealthState::Healthy), _) => {
                    self.emit(&vm, "healthy", format!("VM {vm} is healthy"))
                }
                (Some(HealthState::Unhealthy), Err(e)) => {
                    self.emit(&vm, "unhealthy", format!("VM {vm} is unhealthy: {e}"))
                }
                _ => {}
            }
        }
    }
}
