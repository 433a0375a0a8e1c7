//! central: the HQ plane that stores report to, and `centralctl`, its operator CLI.
//!
//! It owns the fleet's durable record (stores, profile revisions, enrollment, certificates,
//! events, commands, alerts, operator tokens, audit, the stores' console secrets) in SQLite or PostgreSQL, its own CA, the
//! node-facing gRPC service (enrollment, one mTLS session per store) and the operator-facing
//! one. It never reaches into a store: nodes open every connection.
//!
//! `centralctl profile …` works on fleet folders locally through the profiles crate; every
//! other `centralctl` command talks to the operator service.

pub mod alerts;
pub mod app;
pub mod ca;
pub mod client;
pub mod console_codes;
pub mod ctl_report;
pub mod db;
pub mod error_size;
pub mod hub;
pub mod ingest;
pub mod limits;
pub mod listener;
pub mod node_service;
pub mod node_tls;
pub mod operator_service;
pub mod profile_report;
pub mod redact;
pub mod server;
pub mod stick;
