//! The node ↔ central link.
//!
//! Both ends share: the bootstrap token format ([`token`]), certificate helpers ([`pki`]) and
//! TLS set-up ([`tls`]), including the first connection, where the node checks central against
//! the CA fingerprint its token carries, so no connection is ever unauthenticated.
//!
//! Both ends also share `provision.toml`, what a new box reads to find central and enroll
//! ([`provision`]): nodeagent reads it, centralctl writes it onto a USB stick image.
//!
//! Both ends also share the console codes of the store's recovery console ([`console_code`]):
//! central issues them, the node checks them with no WAN.
//!
//! The node's side: enrollment ([`enroll`]), the durable event outbox ([`outbox`]) and the
//! session loop ([`link`]) that keeps one stream to central open for as long as the node lives,
//! reconnecting with jittered backoff, renewing its certificate before it expires, and carrying
//! status, events (at least once, acked by central) and central's desired revisions and commands.
//!
//! It knows nothing of containers, VMs or networks: nodeagent plugs its reconcile loop in through
//! channels. The fleet simulator uses the same code.

pub mod console_code;
pub mod enroll;
pub mod link;
pub mod outbox;
pub mod pki;
pub mod provision;
pub mod tls;
pub mod token;

/// The system clock's reading, unix milliseconds. Code that keeps time (the link, the outbox)
/// reads a [`backroom_daemon::Clock`] instead, so tests can move it; this stays for callers
/// that only stamp things.
pub fn now_ms() -> i64 {
    backroom_daemon::Clock::now_ms(&backroom_daemon::SystemClock)
}
