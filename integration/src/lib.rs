//! Integration tests that start real components together, the fleet simulator, and the
//! benchmarks. Today: the profile-engine benchmark (`make bench`) and its fleet generator.
