//! Crash-safe small files: now the daemon crate's (`backroom_daemon::fs`). This re-export stays
//! while nodeagent's last caller moves over.

pub use backroom_daemon::fs::write_atomic;
