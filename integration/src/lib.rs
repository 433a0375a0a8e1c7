//! Integration tests that start real components together, the fleet simulator, and the
//! benchmarks (`make bench`).
//!
//! Today it holds the generator of synthetic fleets used by the profile-engine benchmark.

pub mod genfleet;
