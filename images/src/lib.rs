//! The store OS image: a generic server that boots, enrolls itself and converges.
//!
//! Not built yet: no issue has asked for it so far. This crate holds no code.
