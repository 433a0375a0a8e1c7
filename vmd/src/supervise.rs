//! What keeps VMs running between applies: lifecycle events from libvirt drive the restart
//! policy (with exponential backoff), a periodic resync catches events that were missed (a
//! libvirtd restart), and health checks probe running VMs that have one.
//!
//! One loop turns every second on vmd's clock: it beats the heartbeat systemd's watchdog asks
//! about (so a wedged loop gets vmd restarted), checks that libvirt's lifecycle events can
//! still arrive (reconnecting when the connection dropped; a `libvirt events` problem while
//! they cannot), probes the VMs whose check is due and resyncs when that is due. Restart timers
//! run on the same clock, so the backoff is tested by moving a manual clock.

use std::time::Duration;

use backroom_daemon::Chain;
use backroom_profiles::RestartPolicy;

use crate::hypervisor::{DomState, Lifecycle, LifecycleEvent, StopCause};
use crate::manager::{HealthState, VmState, Vmd, blocking, duration_ms, vm_subject};
use crate::xml::DOMAIN_PREFIX;

/// The subject of the problem "lifecycle events do not arrive".
pub const EVENTS_SUBJECT: &str = "libvirt events";

/// How often the supervisor's loop turns.
pub const TURN: Duration = Duration::from_secs(1);

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
    /// Starts the event task and the supervisor's loop. Call once.
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
            let resync_every = duration_ms(me.inner.cfg.resync_every);
            let mut next_resync = me.now_ms() + resync_every;
            loop {
                me.inner.heartbeat.beat();
                let was_failing = me.is_failing(EVENTS_SUBJECT);
                let live = me.events_live().await;
                me.report(EVENTS_SUBJECT, "", &live);
                if live.is_ok() && was_failing {
                    // Events were lost while the stream was down: look at libvirt now.
                    next_resync = me.now_ms();
                }
                me.health_round().await;
                if me.now_ms() >= next_resync {
                    me.resync().await;
                    next_resync = me.now_ms() + resync_every;
                }
                me.clock().sleep(TURN).await;
            }
        }));
        Supervisor { tasks }
    }

    async fn events_live(&self) -> crate::Result<()> {
        let hv = self.hv();
        blocking(move || hv.events_live()).await
    }

    /// One lifecycle event from libvirt.
    pub fn on_lifecycle(&self, ev: LifecycleEvent) {
        let Some(vm) = ev.domain.strip_prefix(DOMAIN_PREFIX).map(str::to_string) else { return };
        match ev.what {
            Lifecycle::Started => {
                let now = self.now_ms();
                let fresh = {
                    let mut st = self.st();
                    let Some(r) = st.rt.get_mut(&vm) else { return };
                    if r.state != VmState::Running && !r.busy {
                        r.started_ms = Some(now);
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
        let now = self.now_ms();
        let decision = {
            let mut st = self.st();
            let Some(r) = st.rt.get_mut(vm) else { return };
            if r.busy || matches!(r.state, VmState::Stopped | VmState::Crashed) && r.rec.parked {
                return;
            }
            r.state = if crashed { VmState::Crashed } else { VmState::Stopped };
            r.rec.since_unix = now.div_euclid(1000);
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
                let stable = duration_ms(self.inner.cfg.stable_after);
                if r.started_ms.is_some_and(|t| now - t >= stable) {
                    r.backoff = 0;
                }
                r.backoff = r.backoff.saturating_add(1);
                let delay = self.inner.cfg.restart_backoff.delay(r.backoff);
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
            self.restart_later(vm, delay, gen_);
        }
    }

    fn restart_later(&self, vm: &str, delay: Duration, gen_: u64) {
        let me = self.clone();
        let vm = vm.to_string();
        tokio::spawn(async move {
            me.clock().sleep(delay).await;
            me.restart_after_backoff(&vm, gen_, delay).await;
        });
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
        let started = self.start_domain(vm).await;
        self.report(&vm_subject(vm), vm, &started);
        match started {
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
                // Try again later, with a longer backoff. The `failing` event said it once;
                // each further try only updates the reason (never one event per retry).
                let next = {
                    let mut st = self.st();
                    st.rt.get_mut(vm).map(|r| {
                        r.backoff = r.backoff.saturating_add(1);
                        r.restart_gen += 1;
                        (self.inner.cfg.restart_backoff.delay(r.backoff), r.restart_gen)
                    })
                };
                let Some((delay, gen_)) = next else { return };
                self.set_state(
                    vm,
                    VmState::Failed,
                    format!(
                        "restart failed: {}; trying again in {}s",
                        backroom_daemon::chain(&e),
                        delay.as_secs_f64()
                    ),
                );
                self.save();
                self.restart_later(vm, delay, gen_);
            }
        }
    }

    /// Compares what vmd believes with libvirt, for events that never came.
    pub async fn resync(&self) {
        let hv = self.inner.deps.hypervisor.clone();
        let doms = match blocking(move || hv.list()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "resync: cannot list domains");
                return;
            }
        };
        let now = self.now_ms();
        let mut missed = Vec::new();
        {
            let mut st = self.st();
            for (vm, r) in st.rt.iter_mut() {
                if r.busy {
                    continue;
                }
                let dn = crate::xml::domain_name(vm);
                let state = doms.iter().find(|d| d.name == dn).map(|d| d.state);
                if state == Some(DomState::Stopping) {
                    // On its way down: its stopped event decides.
                    continue;
                }
                let running = state == Some(DomState::Running);
                if running && r.state != VmState::Running {
                    r.state = VmState::Running;
                    r.started_ms.get_or_insert(now);
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

    /// Probes every running VM whose check is due, all at once (a slow probe does not hold up
    /// the others, nor the loop for longer than the longest timeout).
    pub async fn health_round(&self) {
        let now = self.now_ms();
        let settle = duration_ms(self.inner.cfg.settle);
        let due: Vec<(String, backroom_profiles::Health, std::net::IpAddr)> = {
            let mut st = self.st();
            st.rt
                .iter_mut()
                // A booting guest is not judged before the settle time.
                .filter(|(_, r)| r.state == VmState::Running && !r.busy)
                .filter(|(_, r)| r.started_ms.is_some_and(|t| now - t >= settle))
                .filter_map(|(n, r)| {
                    let h = r.spec.health.clone()?;
                    let addr = r.nics.iter().find_map(|n| n.address)?.addr();
                    if r.health_due.is_some_and(|t| t > now) {
                        return None;
                    }
                    r.health_due = Some(now + duration_ms(h.interval.to_std()));
                    Some((n.clone(), h, addr))
                })
                .collect()
        };
        let netns = self.inner.cfg.probe_netns.as_deref();
        let results = futures::future::join_all(
            due.iter().map(|(_, h, addr)| crate::health::probe(h, *addr, netns)),
        )
        .await;
        for ((vm, h, _), res) in due.into_iter().zip(results) {
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
                (Some(HealthState::Unhealthy), Err(e)) => self.emit(
                    &vm,
                    "unhealthy",
                    format!("VM {vm} is unhealthy: {}", backroom_daemon::chain(&e)),
                ),
                _ => {}
            }
        }
    }
}
