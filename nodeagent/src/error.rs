//! The one error type of the nodeagent library. Each variant says what failed, with what, and
//! keeps what caused it as its `#[source]`: a log line or a CLI prints the whole chain
//! ([`backroom_daemon::Chain`]), an event carries it ([`backroom_daemon::chain`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A state file nodeagent wrote does not read back.
    #[error("cannot read the state file {}", path.display())]
    StateFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {what}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A profile kept on disk (or handed over by a peer) does not render.
    #[error("cannot read the profile {what}")]
    Profile {
        what: String,
        #[source]
        source: backroom_profiles::Invalid,
    },
    #[error("the stored revision {} renders to revision {found}, not {wanted}", path.display())]
    RevisionMismatch { path: PathBuf, found: String, wanted: String },
    /// The downloaded OS image is not the one the profile names.
    #[error("the OS image {url} has sha256 {found}, but node.os.sha256 is {wanted}")]
    OsImageMismatch { url: String, found: String, wanted: String },
    #[error("cannot download the OS image {url}: {what}")]
    OsDownload {
        url: String,
        what: String,
        #[source]
        source: Option<reqwest::Error>,
    },
    /// A command of the OS update (mount, umount, systemctl) failed.
    #[error("`{command}` failed: {message}")]
    OsCommand { command: String, message: String },
    /// Something nodeagent itself refuses to do (a sentence of its own, with no cause below).
    #[error("{0}")]
    Invalid(String),
    #[error("profile refused")]
    Refused(#[source] crate::admission::Refusal),
    #[error("containerd {op} failed")]
    Containerd {
        op: String,
        #[source]
        source: Rpc,
    },
    /// Removing a container collected several failures (each with its chain).
    #[error("cannot remove container {id} cleanly: {}", list(failures))]
    Teardown { id: String, failures: Vec<Error> },
    #[error("exec in container {container} did not end within {} ms", timeout.as_millis())]
    ExecTimeout { container: String, timeout: Duration },
    /// An image that cannot be used as it is (a sentence of its own).
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("the image config is not valid JSON")]
    ImageConfig {
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot build the container's runtime spec")]
    RuntimeSpec {
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("image {image}: its {what} is not valid JSON")]
    ImageJson {
        image: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {image}: cannot pull it")]
    Pull {
        image: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("cannot read the blob {digest}")]
    Blob {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netd {op} failed")]
    Netd {
        op: &'static str,
        #[source]
        source: Rpc,
    },
    #[error("vmd {op} failed")]
    Vmd {
        op: &'static str,
        #[source]
        source: Rpc,
    },
    /// Connected mode: the network change was not confirmed, so netd takes it back.
    #[error(
        "central did not answer within {seconds} s of the network change; netd restores the previous network"
    )]
    NotConfirmed { seconds: u32 },
    /// A local daemon's socket does not answer.
    #[error("cannot connect to {what}")]
    Connect {
        what: &'static str,
        #[source]
        source: backroom_daemon::Error,
    },
    /// Something answers on the socket, but not as `what` would.
    #[error("{what} at {} does not answer", path.display())]
    Handshake {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Rpc,
    },
    #[error("{0} closed its event stream")]
    StreamClosed(&'static str),
    #[error("a background task of {what} failed")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(transparent)]
    Daemon(#[from] backroom_daemon::Error),
    #[error("no workload named `{0}` in the desired profile")]
    NoSuchWorkload(String),
    #[error("{0} is not configured on this node")]
    NotConfigured(&'static str),
    #[error("nodeagent is shutting down")]
    ShuttingDown,
}

fn list(failures: &[Error]) -> String {
    failures.iter().map(|e| backroom_daemon::chain(e)).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// Whether this says a local daemon could not be reached (its socket does not answer, its
    /// stream closed, its RPC came back `unavailable`): a daemon restarting, not a fault of the
    /// profile being applied.
    pub fn unreachable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Handshake { .. } | Error::StreamClosed(_) => true,
            Error::Netd { source, .. }
            | Error::Vmd { source, .. }
            | Error::Containerd { source, .. } => {
                matches!(source.0.code(), tonic::Code::Unavailable)
            }
            _ => false,
        }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { what, path: path.into(), source }
    }

    pub fn containerd(op: impl Into<String>, status: tonic::Status) -> Self {
        Error::Containerd { op: op.into(), source: Rpc(status) }
    }

    /// The gRPC status under this error, if it came from a gRPC call.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Containerd { source, .. }
            | Error::Netd { source, .. }
            | Error::Vmd { source, .. }
            | Error::Handshake { source, .. } => Some(&source.0),
            _ => None,
        }
    }
}

/// A gRPC error as a sentence: its message (its code when it has none), with the transport
/// error under it as its source. (`tonic::Status`'s own Display is for debugging: code,
/// quoted message and the source's Debug in one line.)
#[derive(Debug)]
pub struct Rpc(pub tonic::Status);

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.message().is_empty() {
            write!(f, "{:?}", self.0.code())
        } else {
            f.write_str(self.0.message())
        }
    }
}

impl std::error::Error for Rpc {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

impl From<tonic::Status> for Rpc {
    fn from(s: tonic::Status) -> Self {
        Rpc(s)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_name_every_cause_once_in_plain_words() {
        let e = Error::Netd {
            op: "attach",
            source: Rpc(tonic::Status::unavailable("the uplink eno1 is missing")),
        };
        assert_eq!(backroom_daemon::chain(&e), "netd attach failed: the uplink eno1 is missing");
        let e = Error::Vmd { op: "list", source: Rpc(tonic::Status::unknown("")) };
        assert_eq!(backroom_daemon::chain(&e), "vmd list failed: Unknown");
        let io = Error::io("write", "/x/y", std::io::Error::from_raw_os_error(28));
        let t = Error::Teardown { id: "w.1".into(), failures: vec![io] };
        assert!(
            t.to_string().starts_with("cannot remove container w.1 cleanly: cannot write /x/y: ")
        );
    }
}
