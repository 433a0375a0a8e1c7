//! The daemon's loops on the in-memory kernel and a manual clock.
