//! central: the HQ plane that stores report to, and `centralctl`, its operator CLI.
//!
//! Today it holds the operator's profile tooling: `centralctl profile validate|render|diff`,
//! which work on fleet folders through the profiles crate and need no server. The central
//! server itself (enrollment, sessions, fleet push, alerts) is not built yet (issue 6); the
//! `central` binary says so.

pub mod profile_report;
