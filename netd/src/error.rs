//! netd's one error type.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused or failed a netlink or nftables request.
    #[error("{what}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Reading or writing netd's state directory failed.
    #[error("{what}")]
    State {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the profile cannot be used")]
    Profile(#[source] backroom_profiles::Invalid),
    #[error("the profile text has revision {actual}, not the {expected} the request names")]
    RevisionMismatch { expected: String, actual: String },
    /// Something the request names does not exist (a workload, an instance, a pending apply).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be carried out in the present state.
    #[error("{0}")]
    Rejected(String),
    /// Several independent steps failed (teardown, rollback); every failure is kept.
    #[error("{} steps failed: {}", .0.len(), join(.0))]
    Many(Vec<Error>),
}

fn join(errs: &[Error]) -> String {
    errs.iter().map(full).collect::<Vec<_>>().join("; ")
}

/// The error and its whole chain of causes, as one line.
pub fn full(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl Error {
    pub fn kernel(what: impl Into<String>, source: io::Error) -> Error {
        Error::Kernel { what: what.into(), source }
    }

    pub fn state(what: impl Into<String>, source: io::Error) -> Error {
        Error::State { what: what.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
