//! The real hypervisor: libvirt through the `virt` crate.
//!
//! Lifecycle events need libvirt's default event loop, registered before the first connection
//! and run by a thread of its own; `virt` 0.5 has no safe wrapper for
//! `virConnectDomainEventRegisterAny`, so the callback is registered through `virt::sys` and
//! forwards each event into a channel. The connection sends keepalives; when libvirtd goes
//! away, the next call opens a new connection and registers the callback again.

use std::ffi::{CStr, c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use virt::connect::Connect;
use virt::domain::{Domain as VirtDomain, DomainState};
use virt::enumutil::Enum;
use virt::sys;

use crate::error::{Error, Result};
use crate::hypervisor::{DomState, Domain, Hypervisor, Lifecycle, LifecycleEvent, StopCause};
use crate::xml::{METADATA_NS, METADATA_PREFIX, Meta, parse_meta_element};

static EVENT_LOOP: OnceLock<Result<(), Arc<Error>>> = OnceLock::new();

/// The last failure of the event loop's thread, cleared by its next good turn: a loop that
/// keeps failing delivers no lifecycle events, which [`Libvirt::check_events`] reports.
static EVENT_LOOP_FAILING: Mutex<Option<virt::error::Error>> = Mutex::new(None);

/// Registers libvirt's default event loop once per process and runs it on a thread.
fn event_loop() -> Result<()> {
    EVENT_LOOP
        .get_or_init(|| {
            virt::error::clear_error_callback();
            virt::event::event_register_default_impl()
                .map_err(|e| Arc::new(Error::libvirt("registering the default event loop", e)))?;
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| {
                    loop {
                        let turn = virt::event::event_run_default_impl();
                        let failed = turn.as_ref().err().cloned();
                        if let Ok(mut f) = EVENT_LOOP_FAILING.lock() {
                            *f = failed;
                        }
                        if let Err(e) = turn {
                            tracing::error!(error = %e, "libvirt event loop failed");
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        }
                    }
                })
                .map(|_| ())
                .map_err(|e| Arc::new(Error::io("starting libvirt's event loop thread", e)))
        })
        .clone()
        .map_err(Error::EventLoop)
}

pub struct Libvirt {
    uri: String,
    conn: Mutex<Option<Connect>>,
    tx: UnboundedSender<LifecycleEvent>,
    rx: Mutex<Option<UnboundedReceiver<LifecycleEvent>>>,
}

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    if opaque.is_null() || dom.is_null() {
        return 0;
    }
    // SAFETY: opaque is the Box<UnboundedSender> registered below, freed only by free_cb;
    // dom is valid for the duration of the callback.
    let tx = unsafe { &*(opaque as *const UnboundedSender<LifecycleEvent>) };
    let name_ptr = unsafe { sys::virDomainGetName(dom) };
    if name_ptr.is_null() {
        return 0;
    }
    let domain = unsafe { CStr::from_ptr(name_ptr) }.to_string_lossy().into_owned();
    let what = match event as u32 {
        sys::VIR_DOMAIN_EVENT_STARTED => Lifecycle::Started,
        sys::VIR_DOMAIN_EVENT_STOPPED => Lifecycle::Stopped(match detail as u32 {
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => StopCause::Shutdown,
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => StopCause::Destroyed,
            sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED | sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => {
                StopCause::Crashed
            }
            _ => StopCause::Other,
        }),
        _ => Lifecycle::Other,
    };
    let _ = tx.send(LifecycleEvent { domain, what });
    0
}

unsafe extern "C" fn free_cb(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: the pointer came from Box::into_raw in `register`.
        drop(unsafe { Box::from_raw(opaque as *mut UnboundedSender<LifecycleEvent>) });
    }
}

type LifecycleCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type GenericCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

fn register(conn: &Connect, tx: &UnboundedSender<LifecycleEvent>) -> Result<()> {
    let opaque = Box::into_raw(Box::new(tx.clone())) as *mut c_void;
    // SAFETY: libvirt calls the lifecycle callback with the lifecycle signature; the generic
    // type is how the C API takes every callback.
    let cb: GenericCb = unsafe { std::mem::transmute::<LifecycleCb, GenericCb>(lifecycle_cb) };
    let rc = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(cb),
            opaque,
            Some(free_cb),
        )
    };
    if rc < 0 {
        // SAFETY: libvirt did not take ownership.
        unsafe { free_cb(opaque) };
        return Err(Error::libvirt(
            "registering for lifecycle events",
            virt::error::Error::last_error(),
        ));
    }
    Ok(())
}

fn dom_state(d: &VirtDomain) -> DomState {
    match d.info().map(|i| i.state) {
        Ok(Enum::Known(DomainState::Running | DomainState::Blocked)) => DomState::Running,
        Ok(Enum::Known(DomainState::Paused | DomainState::PMSuspended)) => DomState::Paused,
        Ok(Enum::Known(DomainState::Shutdown)) => DomState::Stopping,
        Ok(Enum::Known(DomainState::Shutoff)) => DomState::ShutOff,
        Ok(Enum::Known(DomainState::Crashed)) => DomState::Crashed,
        _ => DomState::Other,
    }
}

fn is_no_domain(e: &virt::error::Error) -> bool {
    matches!(e.code(), Enum::Known(virt::error::ErrorNumber::NoDomain))
}

impl Libvirt {
    /// Connects to `uri` (e.g. `qemu:///system`) and subscribes to lifecycle events.
    pub fn open(uri: &str) -> Result<Self> {
        event_loop()?;
        let (tx, rx) = unbounded_channel();
        let me = Libvirt { uri: uri.into(), conn: Mutex::new(None), tx, rx: Mutex::new(Some(rx)) };
        me.with(|_| Ok(()))?;
        Ok(me)
    }

    fn connect(&self) -> Result<Connect> {
        let c = Connect::open(Some(&self.uri))
            .map_err(|e| Error::libvirt(format!("connecting to {}", self.uri), e))?;
        // Keepalives make a vanished libvirtd visible (is_alive turns false).
        let _ = c.set_keep_alive(5, 3);
        register(&c, &self.tx)?;
        Ok(c)
    }

    /// Runs `f` with a live connection, reconnecting once when libvirtd went away.
    fn with<T>(&self, f: impl Fn(&Connect) -> Result<T>) -> Result<T> {
        // A panic while holding it leaves at worst a dead connection, replaced below.
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            let alive = guard.as_ref().is_some_and(|c| c.is_alive().unwrap_or(false));
            if !alive {
                if let Some(dead) = guard.take() {
                    // Closing a dead connection can fail, and virt panics when it does.
                    std::mem::forget(dead);
                }
                *guard = Some(self.connect()?);
            }
            let Some(conn) = guard.as_ref() else { continue };
            match f(conn) {
                Err(e) if attempt == 0 && !conn.is_alive().unwrap_or(false) => {
                    tracing::warn!(error = %backroom_daemon::Chain(&e), "libvirt connection lost; reconnecting");
                    continue;
                }
                r => return r,
            }
        }
        Err(Error::libvirt_found(
            format!("connecting to {}", self.uri),
            "the connection keeps dropping",
        ))
    }

    fn lookup(c: &Connect, name: &str) -> Result<Option<VirtDomain>> {
        match c.lookup_domain_by_name(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if is_no_domain(&e) => Ok(None),
            Err(e) => Err(Error::libvirt(format!("looking up {name}"), e)),
        }
    }

    fn must(c: &Connect, name: &str) -> Result<VirtDomain> {
        Self::lookup(c, name)?
            .ok_or_else(|| Error::libvirt_found(format!("looking up {name}"), "no such domain"))
    }

    fn describe(d: &VirtDomain) -> Result<Domain> {
        let name = d.name().map_err(|e| Error::libvirt("reading a domain name", e))?;
        let meta = d
            .metadata(sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(METADATA_NS), 0)
            .ok()
            .and_then(|x| parse_meta_element(&x));
        Ok(Domain { state: dom_state(d), name, meta })
    }

    /// Whether lifecycle events can arrive: the event loop turns, and the connection (which
    /// carries the registration) is alive. A dead connection is opened again and the callback
    /// registered again here, so events resume without waiting for some other call.
    fn check_events(&self) -> Result<()> {
        if let Some(e) = EVENT_LOOP_FAILING.lock().ok().and_then(|f| f.clone()) {
            return Err(Error::libvirt("running the event loop", e));
        }
        // Busy: a call is under way on the connection, and reconnects by itself if it must.
        let Ok(mut guard) = self.conn.try_lock() else { return Ok(()) };
        if guard.as_ref().is_some_and(|c| c.is_alive().unwrap_or(false)) {
            return Ok(());
        }
        if let Some(dead) = guard.take() {
            // Closing a dead connection can fail, and virt panics when it does.
            std::mem::forget(dead);
        }
        *guard = Some(self.connect()?);
        tracing::info!(uri = %self.uri, "connected to libvirt again; lifecycle events resume");
        Ok(())
    }

    /// The URI this talks to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A connection for the interactive console (its own, so the console's stream does not
    /// hold up everything else).
    pub fn console_connection(&self) -> Result<Connect> {
        Connect::open(Some(&self.uri))
            .map_err(|e| Error::libvirt(format!("connecting to {}", self.uri), e))
    }
}

impl Hypervisor for Libvirt {
    fn list(&self) -> Result<Vec<Domain>> {
        self.with(|c| {
            let doms = c
                .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
                .map_err(|e| Error::libvirt("listing domains", e))?;
            doms.iter().map(Self::describe).collect()
        })
    }

    fn get(&self, name: &str) -> Result<Option<Domain>> {
        self.with(|c| Self::lookup(c, name)?.as_ref().map(Self::describe).transpose())
    }

    fn define(&self, xml: &str) -> Result<()> {
        self.with(|c| {
            c.define_domain_xml(xml).map(|_| ()).map_err(|e| Error::libvirt("defining a domain", e))
        })
    }

    fn start(&self, name: &str) -> Result<()> {
        self.with(|c| {
            Self::must(c, name)?
                .create()
                .map(|_| ())
                .map_err(|e| Error::libvirt(format!("starting {name}"), e))
        })
    }

    fn shutdown(&self, name: &str) -> Result<()> {
        self.with(|c| {
            Self::must(c, name)?
                .shutdown()
                .map(|_| ())
                .map_err(|e| Error::libvirt(format!("shutting down {name}"), e))
        })
    }

    fn destroy(&self, name: &str) -> Result<()> {
        self.with(|c| {
            Self::must(c, name)?
                .destroy()
                .map(|_| ())
                .map_err(|e| Error::libvirt(format!("destroying {name}"), e))
        })
    }

    fn undefine(&self, name: &str) -> Result<()> {
        self.with(|c| {
            let Some(d) = Self::lookup(c, name)? else { return Ok(()) };
            // UEFI domains have an NVRAM file to remove too; drivers without NVRAM refuse the flag.
            match d.undefine_flags(
                sys::VIR_DOMAIN_UNDEFINE_NVRAM | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
            ) {
                Ok(()) => Ok(()),
                Err(e) if matches!(e.code(), Enum::Known(virt::error::ErrorNumber::InvalidArg)) => {
                    d.undefine().map_err(|e| Error::libvirt(format!("undefining {name}"), e))
                }
                Err(e) => Err(Error::libvirt(format!("undefining {name}"), e)),
            }
        })
    }

    fn xml(&self, name: &str) -> Result<String> {
        self.with(|c| {
            Self::must(c, name)?
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .map_err(|e| Error::libvirt(format!("reading the definition of {name}"), e))
        })
    }

    fn set_meta(&self, name: &str, meta: &Meta) -> Result<()> {
        let body = format!(
            "<vm><workload>{}</workload><revision>{}</revision><spec>{}</spec></vm>",
            meta.workload, meta.revision, meta.spec
        );
        self.with(|c| {
            let d = Self::must(c, name)?;
            let live = d.is_active().unwrap_or(false);
            let flags =
                sys::VIR_DOMAIN_AFFECT_CONFIG | if live { sys::VIR_DOMAIN_AFFECT_LIVE } else { 0 };
            d.set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(&body),
                Some(METADATA_PREFIX),
                Some(METADATA_NS),
                flags,
            )
            .map_err(|e| Error::libvirt(format!("writing the metadata of {name}"), e))
        })
    }

    fn take_events(&self) -> Option<UnboundedReceiver<LifecycleEvent>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }

    fn events_live(&self) -> Result<()> {
        self.check_events()
    }
}
