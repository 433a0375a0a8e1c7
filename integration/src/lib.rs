//! Integration tests that start real components together, the fleet simulator, and the
//! benchmarks (`make bench`).
//!
//! - [`chaos`]: the fault suite's shared parts (seeded randomness, the figures table, the lab
//!   store whose daemons are killed and started again, state files damaged as a power cut would);
//! - [`genfleet`]: writes synthetic fleet folders (the profile-engine benchmark);
//! - [`sim`]: simulated store nodes holding real mTLS sessions to a real central, through the
//!   same link code nodeagent uses (the `fleetsim` binary and the fleet benchmark);
//! - [`procs`]: starting and measuring real processes (central) for tests and benchmarks;
//! - [`ociimage`]: small OCI images built around busybox-static, for tests and `make run`;
//! - [`kernel_lab`]: running a test inside Debian's kernel (VLANs, bridge conntrack, netem).

pub mod chaos;
pub mod genfleet;
pub mod kernel_lab;
pub mod ociimage;
pub mod procs;
pub mod sim;
