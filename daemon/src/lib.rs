//! What every Backroom daemon does, done once.
//!
//! netd, vmd, nodeagent and central are different programs with the same outer shape: they serve
//! gRPC on a local unix socket (and talk to each other's), tell systemd when they are ready and
//! keep its watchdog fed only while their own loop is alive, log in one format, stop cleanly on
//! SIGTERM, keep their state in crash-safe files under a folder only one process may own, step
//! into network namespaces, print errors with their whole chain of causes, read time from one
//! [`clock::Clock`] (so timing logic is tested on a manual clock), back off the same way, and
//! turn a background loop's failures into one "failing" and one "recovered" notice instead of
//! one per retry ([`condition::Conditions`]).
//!
//! This crate owns none of the daemons' logic and no protocol of its own: it knows nothing of
//! profiles, networks, VMs or containers. It does not decide what a daemon does when something
//! fails; it only makes failures visible in the same way everywhere.

pub mod backoff;
pub mod clock;
pub mod condition;
pub mod error;
pub mod fs;
pub mod logging;
pub mod netns;
pub mod notify;
pub mod signal;
pub mod socket;
pub mod text;

pub use backoff::Backoff;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use condition::{Conditions, Transition};
pub use error::{Chain, Error, chain};
