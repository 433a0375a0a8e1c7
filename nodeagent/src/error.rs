//! The one error type of the nodeagent library.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("profile refused: {0}")]
    Refused(String),
    #[error("containerd {op} failed: {message}")]
    Containerd { op: String, message: String },
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("netd {op} failed: {message}")]
    Netd { op: &'static str, message: String },
    #[error("vmd {op} failed: {message}")]
    Vmd { op: &'static str, message: String },
    #[error("cannot connect to {what} at {path}: {message}")]
    Connect { what: &'static str, path: PathBuf, message: String },
    #[error("no workload named `{0}` in the desired profile")]
    NoSuchWorkload(String),
    #[error("{0} is not configured on this node")]
    NotConfigured(&'static str),
    #[error("nodeagent is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { what, path: path.into(), source }
    }

    pub fn containerd(op: impl Into<String>, status: &tonic::Status) -> Self {
        Error::Containerd { op: op.into(), message: status_message(status) }
    }
}

/// A tonic status as a short sentence (its code and message).
pub fn status_message(s: &tonic::Status) -> String {
    if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
