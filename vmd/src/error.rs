//! vmd's one error type. Messages are lower-case sentences that name what failed; the gRPC
//! boundary (`server.rs`) maps each variant to a status code in one `match`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the store profile does not render")]
    Invalid(#[source] backroom_profiles::Invalid),

    #[error("revision {given} does not match the profile text, whose revision is {actual}")]
    RevisionMismatch { given: String, actual: String },

    #[error("the VMs do not fit this node: {0}")]
    Admission(String),

    #[error("no VM named `{0}` in the applied profile")]
    UnknownVm(String),

    #[error("domain `{0}` exists in libvirt but is not Backroom's: vmd does not touch it")]
    Foreign(String),

    #[error(
        "VM `{vm}` asks for address auto on segment `{segment}`: auto addresses come from netd's \
         address management, so start vmd with --netd-socket, or give a fixed address"
    )]
    AutoAddressNeedsNetd { vm: String, segment: String },

    #[error("VM `{vm}`: {message}")]
    Spec { vm: String, message: String },

    #[error("libvirt: {op} failed: {message}")]
    Libvirt { op: String, message: String },

    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },

    #[error("image {image}: {message}")]
    Image { image: String, message: String },

    #[error("netd: {0}")]
    Netd(String),

    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },

    #[error(
        "state folder {0} is in use by another vmd (the daemon?): stop it first or use the daemon's socket"
    )]
    Locked(PathBuf),

    #[error("{count} VM change(s) failed: {}", .failures.join("; "))]
    Failed { count: usize, failures: Vec<String>, actions: Vec<String> },

    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }

    pub fn libvirt(op: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Libvirt { op: op.into(), message: e.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
