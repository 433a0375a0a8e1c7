//! This crate's error type, and printing any error with its whole chain of causes.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system call failed: `what` says what was being done, with which path.
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A live server already answers on the socket this daemon was told to serve on.
    #[error(
        "another process already serves on {}: stop it first, or give this one another socket",
        .0.display()
    )]
    AlreadyServing(PathBuf),
    /// Another process holds the state folder's lock.
    #[error("another process is using {} (its lock {} is held)", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },
    /// `--socket-group` names a group this host does not have.
    #[error(
        "the socket group {0:?} does not exist in /etc/group: create it (packaging/sysusers.d/backroom.conf does) or leave --socket-group out"
    )]
    UnknownGroup(String),
    /// The gRPC transport to a local daemon failed.
    #[error("cannot connect to {}", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

impl Error {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { what, path: path.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error and every cause under it, as one line: `a: b: c`. A cause whose text the level
/// above already ends with is not repeated (some libraries print their source themselves).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let text = c.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = c.source();
    }
    out
}

/// Displays an error with its whole chain, for log fields: `error = %Chain(&e)`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot apply revision abc")]
    struct Top(#[source] Mid);

    #[derive(Debug, thiserror::Error)]
    #[error("uplink eno1 is missing")]
    struct Mid(#[source] std::io::Error);

    #[test]
    fn prints_every_cause_once() {
        let e = Top(Mid(std::io::Error::from_raw_os_error(19)));
        let s = chain(&e);
        assert!(s.starts_with("cannot apply revision abc: uplink eno1 is missing: "), "{s}");
        assert!(s.contains("No such device"), "{s}");
        assert_eq!(Chain(&e).to_string(), s);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: inner")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn a_cause_already_printed_is_not_repeated() {
        assert_eq!(chain(&Repeats(Inner)), "outer: inner");
    }
}
