//! The engine asking the daemons it depends on whether they answer: a task sends one round of
//! answers every `liveness_interval`; the engine turns them into problems (through
//! [`crate::liveness`]) and applies the desired state again to a netd or vmd that comes back.

use std::future::Future;
use std::time::Duration;

use super::actor::Engine;
use super::{Msg, NoAnswer};
use crate::error::Result;
use crate::liveness::{Daemon, Turn, not_answering};
use crate::network::Network;
use crate::probe::Prober;
use crate::runtime::Runtime;
use crate::vms::Vms;

type Answer = std::result::Result<(), NoAnswer>;

/// `call`'s outcome within `timeout`, as the problem would say it.
async fn within<T>(
    daemon: Daemon,
    address: &str,
    timeout: Duration,
    call: impl Future<Output = Result<T>>,
) -> std::result::Result<T, NoAnswer> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(NoAnswer {
            message: not_answering(daemon, address, &backroom_daemon::chain(&e)),
            timed_out: false,
        }),
        Err(_) => Err(NoAnswer {
            message: not_answering(
                daemon,
                address,
                &format!("no answer within {}", humantime(timeout)),
            ),
            timed_out: true,
        }),
    }
}

fn humantime(d: Duration) -> String {
    backroom_daemon::condition::for_how_long(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl<R: Runtime, N: Network, V: Vms, P: Prober> Engine<R, N, V, P> {
    /// Starts the task that asks netd, vmd (and so libvirtd) and containerd every
    /// `liveness_interval`, all at once, each within `liveness_timeout`.
    pub(super) fn check_liveness(&self) {
        let (net, vms, runtime) =
            (self.ctx.net.clone(), self.vms.clone(), self.ctx.runtime.clone());
        let tx = self.tx.clone();
        let (every, timeout) = (self.cfg.liveness_interval, self.cfg.liveness_timeout);
        let (net_at, vms_at, ctd_at) = (net.address(), vms.address(), runtime.address());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let netd = async {
                    if !net.configured() {
                        return None;
                    }
                    Some(within(Daemon::Netd, &net_at, timeout, net.ping()).await)
                };
                let vmd = async {
                    if !vms.configured() {
                        return None;
                    }
                    Some(within(Daemon::Vmd, &vms_at, timeout, vms.ping()).await)
                };
                let ctd = within(Daemon::Containerd, &ctd_at, timeout, runtime.ping());
                let (netd, vmd, ctd) = tokio::join!(netd, vmd, ctd);
                let mut round: Vec<(Daemon, Answer)> = Vec::new();
                if let Some(a) = netd {
                    round.push((Daemon::Netd, a));
                }
                match vmd {
                    None => {}
                    Some(Ok(libvirt)) => {
                        round.push((Daemon::Vmd, Ok(())));
                        let answer = match libvirt {
                            None => Ok(()),
                            Some(why) => Err(NoAnswer {
                                message: not_answering(
                                    Daemon::Libvirtd,
                                    "",
                                    &format!("vmd's connection to it fails: {why}"),
                                ),
                                timed_out: false,
                            }),
                        };
                        round.push((Daemon::Libvirtd, answer));
                    }
                    // Whether libvirtd answers is not known while vmd does not.
                    Some(Err(e)) => round.push((Daemon::Vmd, Err(e))),
                }
                round.push((Daemon::Containerd, ctd.map(|_| ())));
                if tx.send(Msg::Alive(round)).await.is_err() {
                    return;
                }
            }
        });
    }

    /// One round of answers.
    pub(super) fn on_alive(&mut self, round: Vec<(Daemon, Answer)>) {
        for (daemon, answer) in round {
            match answer {
                Ok(()) => self.daemon_answers(daemon),
                // netd or vmd busy with nodeagent's own apply may take longer than a check:
                // that is not a daemon gone (its apply's result tells).
                Err(n) if n.timed_out && self.applying_on(daemon) => {}
                Err(n) => self.daemon_silent(daemon, n.message),
            }
        }
    }

    fn applying_on(&self, daemon: Daemon) -> bool {
        match daemon {
            Daemon::Netd => self.network.busy,
            Daemon::Vmd | Daemon::Libvirtd => self.vm_phase.busy,
            Daemon::Containerd => false,
        }
    }

    /// `daemon` answered (a check, or its event stream is back).
    pub(super) fn daemon_answers(&mut self, daemon: Daemon) {
        self.working(daemon.name());
        if self.liveness.answered(daemon) == Turn::CameBack {
            self.came_back(daemon);
        }
    }

    /// `daemon` did not answer, with the problem's sentence.
    pub(super) fn daemon_silent(&mut self, daemon: Daemon, message: String) {
        let now = self.cfg.clock.now_ms();
        self.liveness.failed(daemon, message.clone(), now);
        self.failing(daemon.name(), "", message);
    }

    /// A daemon answers again after an outage: a restarted netd or vmd adopts what it finds,
    /// and nodeagent makes sure it has the desired revision by applying it again (an unchanged
    /// revision changes nothing); containerd and libvirtd are looked at again.
    fn came_back(&mut self, daemon: Daemon) {
        let what = match daemon {
            Daemon::Netd => {
                again(&mut self.network);
                "the network"
            }
            Daemon::Vmd => {
                again(&mut self.vm_phase);
                self.refresh_vms();
                "the VMs"
            }
            Daemon::Libvirtd => {
                self.refresh_vms();
                return;
            }
            Daemon::Containerd => {
                self.resync();
                return;
            }
        };
        tracing::info!(
            "{} answers again: applying {what} of the desired revision again",
            daemon.name()
        );
    }
}

/// Makes a node-wide phase due now (unless an apply is in flight: its result stands).
fn again(p: &mut super::actor::PhaseState) {
    if !p.busy {
        p.done = None;
        p.retry_at_ms = 0;
    }
}
