//! netd's one error type. Every failure that reaches an operator names its object (the uplink,
//! the link, the bridge, the segment); [`Error::subject`] says which object a background loop's
//! failure is about, so that it opens one problem for it.

use std::io;
use std::path::PathBuf;

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
    /// Another netd (usually `netd serve`) holds the state directory.
    #[error(
        "another netd is using {} (is `netd serve` running? then talk to its socket)",
        dir.display()
    )]
    Busy { dir: PathBuf },
    /// The daemon plumbing (socket, lock file) failed; its error names the path.
    #[error(transparent)]
    Daemon(#[from] backroom_daemon::Error),
    #[error("the profile cannot be used")]
    Profile(#[source] backroom_profiles::Invalid),
    #[error("the profile text has revision {actual}, not the {expected} the request names")]
    RevisionMismatch { expected: String, actual: String },
    /// Nothing is applied yet: the loops have nothing to keep, which is no failure.
    #[error("no profile has been applied yet")]
    NotApplied,
    #[error("workload {workload} is not in the applied profile")]
    NoSuchWorkload { workload: String },
    #[error("segment {segment} is not in the applied profile")]
    NoSuchSegment { segment: String },
    #[error("workload {workload} has no instance `{instance}` attached")]
    NoSuchInstance { workload: String, instance: String },
    #[error("no apply is waiting for confirmation")]
    NothingPending,
    #[error("the pending apply is revision {pending}, not {asked}")]
    OtherPending { pending: String, asked: String },
    #[error("link {name} does not exist")]
    NoSuchLink { name: String },
    /// The store's uplink is not there (unplugged, renamed, or the profile names another).
    #[error(
        "the store's uplink {uplink} does not exist, so the store's networks cannot reach it: check its cable and name (another uplink can be given with --uplink or in the profile)"
    )]
    UplinkMissing { uplink: String },
    /// A link netd did not make has the name netd needs.
    #[error("a link named {name} exists and netd did not make it: remove or rename it first")]
    ForeignLink { name: String },
    #[error("no DHCP server answered on {bridge} (segment {segment}) after {tries} tries")]
    NoDhcpServer { segment: String, bridge: String, tries: u32 },
    #[error("cannot encode a DHCP message for {bridge}")]
    DhcpEncode {
        bridge: String,
        #[source]
        source: dhcproto::error::EncodeError,
    },
    #[error("segment {segment} has no free address left in {subnet}")]
    NoFreeAddress { segment: String, subnet: String },
    #[error("segment {segment} has no subnet: `auto` addresses need one")]
    NoSubnet { segment: String },
    #[error("the primary instance of {workload} is already primary: name the instance to promote")]
    AlreadyPrimary { workload: String },
    #[error("{workload} is a VM: VMs have no instances to promote")]
    VmInstance { workload: String },
    #[error("the container endpoint of {workload} has no network namespace")]
    NoNamespace { workload: String },
    #[error(
        "netd runs in a mount namespace of its own (as under `ip netns exec`): namespace {netns} would be invisible to containerd and `ip netns`; run netd directly and use --netns instead"
    )]
    PrivateMounts { netns: String },
    /// An uplink override that cannot be taken as given (nothing was changed).
    #[error("the uplink override of segment {segment} is refused: {why}")]
    OverrideRefused { segment: String, why: String },
    #[error(
        "revision {revision} awaits its confirmation (until unix time {deadline_unix}): confirm it or let it roll back before setting an uplink override"
    )]
    ApplyPending { revision: String, deadline_unix: i64 },
    #[error(
        "the uplink override of segment {segment} awaits its confirmation (until unix time {deadline_unix}): confirm it, clear it or let it roll back before applying a profile"
    )]
    OverridePending { segment: String, deadline_unix: i64 },
    #[error("no uplink override is in force")]
    NoOverride,
    /// Writing or restoring the DNS file (`--resolv-conf`) failed.
    #[error("cannot {what} {}", path.display())]
    Resolv {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A blocking task of the engine died (it panicked or was cancelled).
    #[error("{what} did not finish")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("the gRPC server stopped")]
    Serve(#[source] tonic::transport::Error),
    /// Several independent steps failed (teardown, rollback); every failure is kept.
    #[error("{} steps failed: {}", .0.len(), join(.0))]
    Many(Vec<Error>),
}

fn join(errs: &[Error]) -> String {
    errs.iter().map(|e| backroom_daemon::chain(e)).collect::<Vec<_>>().join("; ")
}

impl Error {
    pub fn kernel(what: impl Into<String>, source: io::Error) -> Error {
        Error::Kernel { what: what.into(), source }
    }

    pub fn state(what: impl Into<String>, source: io::Error) -> Error {
        Error::State { what: what.into(), source }
    }

    /// One error from several: none is `Ok`, one is itself, more are [`Error::Many`].
    pub fn all(mut errs: Vec<Error>) -> Result<()> {
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(Error::Many(errs)),
        }
    }

    /// What a store manager would call the failing thing, when the error names one: a
    /// background loop's problem is filed under it (`uplink eno1`, `DHCP on br-mgmt`).
    pub fn subject(&self) -> Option<String> {
        match self {
            Error::UplinkMissing { uplink } => Some(format!("uplink {uplink}")),
            Error::ForeignLink { name } => Some(format!("link {name}")),
            Error::NoDhcpServer { bridge, .. } | Error::DhcpEncode { bridge, .. } => {
                Some(format!("DHCP on {bridge}"))
            }
            Error::NoFreeAddress { segment, .. } | Error::NoSubnet { segment } => {
                Some(format!("addresses of segment {segment}"))
            }
            Error::Resolv { path, .. } => Some(format!("DNS file {}", path.display())),
            Error::Many(v) => v.iter().find_map(Error::subject),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
