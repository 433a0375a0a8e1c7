//! nodeagent: the node's brain, and nodectl, its local command line.
//!
//! nodeagent runs a whole store profile on one node: it persists the desired revision before
//! acting on it, asks netd for the networks (first), vmd for the VMs (second), and runs the
//! containers itself on containerd (third): images (pull with `oci-client`, import from OCI
//! archives), OCI runtime specs, tasks, rotated logs, restart policies with backoff and
//! crash-loop detection, health probes, `depends_on` ordering, start-first and stop-first
//! updates with rollback, and adoption of what runs after a restart of nodeagent itself.
//!
//! The shape: [`plan::plan`] turns (desired profile, observed workload records) into a list of
//! [`plan::Action`]s, a pure function with unit tests; [`engine::Engine`] is the one actor that
//! owns the records, carries the actions out (each workload's long operations run as tasks) and
//! publishes [`engine::Event`]s; [`server`] is the gRPC front end nodectl talks to. Outside
//! systems are behind traits with a real and an in-memory implementation each:
//! [`runtime::Runtime`] (containerd), [`network::Network`] (netd), [`vms::Vms`] (vmd),
//! [`probe::Prober`] (health probes); time is a [`backroom_daemon::Clock`] in the engine's
//! [`engine::Config`]. What fails in a background loop (a restart policy that cannot start a
//! workload, a pull, netd, vmd, containerd or libvirtd not answering ([`liveness`]), and netd's
//! and vmd's own problems) becomes one
//! `failing` and one `recovered` event and an open problem in the status ([`problems`]).
//!
//! The plumbing every daemon shares (sockets, readiness and watchdog, logging, signals, atomic
//! files, error chains, the clock, backoff, conditions) is `backroom-daemon`'s.
//!
//! It does not own network objects (netd does), libvirt domains (vmd does), or the session to
//! central (issue 6 feeds revisions in through [`engine::EngineHandle::apply`] and reads
//! [`engine::EngineHandle::status`] and [`engine::EngineHandle::subscribe`]).

pub mod admission;
pub mod connected;
pub mod console;
pub mod engine;
pub mod error;
pub mod etc;
pub mod liveness;
pub mod logs;
pub mod network;
pub mod os;
pub mod plan;
pub mod probe;
pub mod problems;
pub mod provision;
pub mod record;
pub mod restart;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod store;
pub mod vms;

pub use error::Error;

#[cfg(test)]
mod roundtrip_tests;
