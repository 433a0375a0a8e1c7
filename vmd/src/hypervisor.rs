//! The hypervisor as vmd needs it: defined domains, their state and metadata, lifecycle
//! operations and lifecycle events. [`crate::libvirt::Libvirt`] is the real one;
//! [`MemHypervisor`] serves the manager's unit tests. Calls block: callers run them off the
//! async runtime.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::{Error, Result};
use crate::xml::{Meta, parse_meta};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomState {
    Running,
    /// The guest has gone down and QEMU is on its way out (libvirt's "shutdown"): not running,
    /// and not stopped yet either (a start now fails with "already running").
    Stopping,
    Paused,
    ShutOff,
    Crashed,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub state: DomState,
    /// `None`: the domain is not Backroom's.
    pub meta: Option<Meta>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// The guest powered off.
    Shutdown,
    /// Someone (vmd, virsh) destroyed it.
    Destroyed,
    /// QEMU died, or the guest crashed.
    Crashed,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Started,
    Stopped(StopCause),
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub domain: String,
    pub what: Lifecycle,
}

pub trait Hypervisor: Send + Sync {
    /// Every persistent domain (Backroom's and others').
    fn list(&self) -> Result<Vec<Domain>>;
    fn get(&self, name: &str) -> Result<Option<Domain>>;
    /// Defines (or redefines) a persistent domain.
    fn define(&self, xml: &str) -> Result<()>;
    fn start(&self, name: &str) -> Result<()>;
    /// Asks the guest to power off (ACPI).
    fn shutdown(&self, name: &str) -> Result<()>;
    /// Pulls the plug.
    fn destroy(&self, name: &str) -> Result<()>;
    fn undefine(&self, name: &str) -> Result<()>;
    /// The persistent definition.
    fn xml(&self, name: &str) -> Result<String>;
    /// Rewrites vmd's metadata (live and persistent) without touching the rest.
    fn set_meta(&self, name: &str, meta: &Meta) -> Result<()>;
    /// The lifecycle events, once (the first caller gets the receiver).
    fn take_events(&self) -> Option<UnboundedReceiver<LifecycleEvent>>;
    /// Whether lifecycle events can arrive now, mending what it can (a dropped connection is
    /// opened again): `Err` says why they cannot. Called by the supervisor's loop each turn.
    fn events_live(&self) -> Result<()>;
}

/// Domains in a map; `start`, `destroy`, `shutdown` and [`MemHypervisor::crash`] send the
/// events libvirt would.
pub struct MemHypervisor {
    domains: Mutex<BTreeMap<String, (String, bool)>>,
    tx: UnboundedSender<LifecycleEvent>,
    rx: Mutex<Option<UnboundedReceiver<LifecycleEvent>>>,
    /// Domains whose `start` fails (to test rollback).
    pub failing: Mutex<Vec<String>>,
    /// Set: the event stream is broken, for this reason (to test the `libvirt events` problem).
    pub events_broken: Mutex<Option<String>>,
    pub calls: Mutex<Vec<String>>,
}

impl Default for MemHypervisor {
    fn default() -> Self {
        let (tx, rx) = unbounded_channel();
        MemHypervisor {
            domains: Mutex::default(),
            tx,
            rx: Mutex::new(Some(rx)),
            failing: Mutex::default(),
            events_broken: Mutex::default(),
            calls: Mutex::default(),
        }
    }
}

fn name_of(xml: &str) -> Option<String> {
    let a = xml.find("<name>")? + 6;
    let b = xml[a..].find("</name>")? + a;
    Some(xml[a..b].to_string())
}

impl MemHypervisor {
    /// Sends what libvirt would, unless the event stream is broken (then nothing arrives).
    fn send(&self, ev: LifecycleEvent) {
        if self.events_broken.lock().is_ok_and(|b| b.is_none()) {
            let _ = self.tx.send(ev);
        }
    }

    fn note(&self, s: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(s);
        }
    }

    fn set_running(&self, name: &str, running: bool) -> Result<()> {
        let mut d = self.domains.lock().map_err(|_| Error::libvirt_found("lock", "poisoned"))?;
        match d.get_mut(name) {
            Some(e) => {
                e.1 = running;
                Ok(())
            }
            None => Err(Error::libvirt_found(format!("lookup of {name}"), "no such domain")),
        }
    }

    /// QEMU dies under the domain.
    pub fn crash(&self, name: &str) {
        let _ = self.set_running(name, false);
        self.send(LifecycleEvent {
            domain: name.into(),
            what: Lifecycle::Stopped(StopCause::Crashed),
        });
    }

    /// Calls so far, e.g. `start bk-nvr`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Hypervisor for MemHypervisor {
    fn list(&self) -> Result<Vec<Domain>> {
        let d = self.domains.lock().map_err(|_| Error::libvirt_found("lock", "poisoned"))?;
        Ok(d.iter()
            .map(|(n, (xml, run))| Domain {
                name: n.clone(),
                state: if *run { DomState::Running } else { DomState::ShutOff },
                meta: parse_meta(xml),
            })
            .collect())
    }

    fn get(&self, name: &str) -> Result<Option<Domain>> {
        Ok(self.list()?.into_iter().find(|d| d.name == name))
    }

    fn define(&self, xml: &str) -> Result<()> {
        let name = name_of(xml).ok_or_else(|| Error::libvirt_found("define", "no <name>"))?;
        self.note(format!("define {name}"));
        let mut d = self.domains.lock().map_err(|_| Error::libvirt_found("lock", "poisoned"))?;
        let running = d.get(&name).is_some_and(|e| e.1);
        d.insert(name, (xml.to_string(), running));
        Ok(())
    }

    fn start(&self, name: &str) -> Result<()> {
        self.note(format!("start {name}"));
        if self.failing.lock().map(|f| f.iter().any(|n| n == name)).unwrap_or(false) {
            return Err(Error::libvirt_found(format!("start of {name}"), "it fails on purpose"));
        }
        self.set_running(name, true)?;
        self.send(LifecycleEvent { domain: name.into(), what: Lifecycle::Started });
        Ok(())
    }

    fn shutdown(&self, name: &str) -> Result<()> {
        self.note(format!("shutdown {name}"));
        self.set_running(name, false)?;
        self.send(LifecycleEvent {
            domain: name.into(),
            what: Lifecycle::Stopped(StopCause::Shutdown),
        });
        Ok(())
    }

    fn destroy(&self, name: &str) -> Result<()> {
        self.note(format!("destroy {name}"));
        self.set_running(name, false)?;
        self.send(LifecycleEvent {
            domain: name.into(),
            what: Lifecycle::Stopped(StopCause::Destroyed),
        });
        Ok(())
    }

    fn undefine(&self, name: &str) -> Result<()> {
        self.note(format!("undefine {name}"));
        let mut d = self.domains.lock().map_err(|_| Error::libvirt_found("lock", "poisoned"))?;
        d.remove(name);
        Ok(())
    }

    fn xml(&self, name: &str) -> Result<String> {
        let d = self.domains.lock().map_err(|_| Error::libvirt_found("lock", "poisoned"))?;
        d.get(name)
            .map(|e| e.0.clone())
            .ok_or_else(|| Error::libvirt_found(format!("xml of {name}"), "no such domain"))
    }

    fn set_meta(&self, name: &str, meta: &Meta) -> Result<()> {
        self.note(format!("set_meta {name} {}", meta.revision));
        let mut d = self.domains.lock().map_err(|_| Error::libvirt_found("lock", "poisoned"))?;
        let e =
            d.get_mut(name).ok_or_else(|| Error::libvirt_found("set_meta", "no such domain"))?;
        if let Some(old) = parse_meta(&e.0) {
            e.0 = e.0.replace(
                &format!(":revision>{}</", old.revision),
                &format!(":revision>{}</", meta.revision),
            );
        }
        Ok(())
    }

    fn take_events(&self) -> Option<UnboundedReceiver<LifecycleEvent>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }

    fn events_live(&self) -> Result<()> {
        match self.events_broken.lock().ok().and_then(|b| b.clone()) {
            Some(why) => Err(Error::libvirt_found("receiving lifecycle events", why)),
            None => Ok(()),
        }
    }
}
