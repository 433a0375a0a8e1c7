//! The link watcher: a thread that wakes the drift check on every link, address or route
//! change in netd's namespace, and reports when it cannot listen (`link events`).

use std::time::Duration;

use backroom_daemon::Backoff;

use super::{Daemon, LINK_EVENTS};

/// Reopening the link-event socket after it failed.
pub const LINK_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Where link events come from: the kernel (see [`KernelLinkEvents`]) or a test's script.
pub trait LinkEvents: Send {
    /// Blocks until something changed (links, addresses or routes).
    fn wait(&mut self) -> std::io::Result<()>;
}

/// The rtnetlink multicast groups of links, IPv4 addresses and IPv4 routes, in the namespace
/// of the thread that opens it.
pub struct KernelLinkEvents {
    sock: netlink_sys::Socket,
    buf: Vec<u8>,
}

impl KernelLinkEvents {
    pub fn open() -> std::io::Result<KernelLinkEvents> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        let groups = libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV4_ROUTE;
        sock.bind(&netlink_sys::SocketAddr::new(0, groups as u32))?;
        Ok(KernelLinkEvents { sock, buf: vec![0u8; 65536] })
    }
}

impl LinkEvents for KernelLinkEvents {
    fn wait(&mut self) -> std::io::Result<()> {
        let mut slice = &mut self.buf[..];
        match self.sock.recv(&mut slice, 0) {
            Ok(_) => Ok(()),
            // Events were lost: something changed, which is all a check needs to know.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Wakes the drift check on every link change, until the daemon stops. When the events cannot
/// be listened to, that is a problem (`link events`; the interval's checks go on) and the
/// socket is opened again after a backoff; `pause` waits out each backoff.
pub fn watch_links(
    daemon: &Daemon,
    mut open: impl FnMut() -> std::io::Result<Box<dyn LinkEvents>>,
    mut pause: impl FnMut(Duration),
) {
    let mut retries = LINK_RETRY.retries();
    while !daemon.stopped() {
        match open() {
            Ok(mut events) => {
                daemon.succeeded(LINK_EVENTS);
                retries.reset();
                loop {
                    match events.wait() {
                        Ok(()) => daemon.check_soon(),
                        Err(e) => {
                            daemon.failed(
                                LINK_EVENTS,
                                format!("netd stopped hearing of link changes (it still checks for drift every interval): {e}"),
                            );
                            break;
                        }
                    }
                    if daemon.stopped() {
                        return;
                    }
                }
            }
            Err(e) => daemon.failed(
                LINK_EVENTS,
                format!("netd cannot listen for link changes (it still checks for drift every interval): {e}"),
            ),
        }
        pause(retries.fail());
    }
}
