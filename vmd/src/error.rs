//! vmd's one error type. Messages are lower-case sentences that name what failed and never
//! repeat their `#[source]` (the whole chain is printed by `backroom_daemon::chain`); the gRPC
//! boundary (`server.rs`) maps each variant to a status code in one `match`.

use std::path::PathBuf;
use std::sync::Arc;

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

    /// A libvirt call failed; the source is libvirt's own error (code, domain, message).
    #[error("libvirt: {op} failed")]
    Libvirt {
        op: String,
        #[source]
        source: LibvirtCause,
    },

    /// libvirt's event loop could not be set up (once per process, so shared).
    #[error("libvirt's event loop is not running")]
    EventLoop(#[source] Arc<Error>),

    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` could not run")]
    CommandSpawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },

    #[error("image {image}: {message}")]
    Image { image: String, message: String },

    /// A boot image named by a node path that is not a regular file inside the image folders.
    #[error(
        "boot image {image} is refused: {why}; vmd takes node-path images only from regular \
         files inside its image folders ({folders}; see vmd --image-folder)"
    )]
    ImageOutsideFolders { image: String, why: String, folders: String },

    /// A data disk that is there but unreadable: it may hold data, so vmd does not replace it.
    #[error(
        "VM `{vm}`: its data disk {} is not a readable qcow2 image ({why}); vmd does not replace \
         a data disk that may hold data: move it away to have an empty one made",
        path.display()
    )]
    DataDiskUnreadable { vm: String, path: PathBuf, why: String },

    #[error("image {image}: {what}")]
    ImageHttp {
        image: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },

    /// Every attempt of a download broke; the source is the last attempt's error.
    #[error("image {image}: the download failed {attempts} times")]
    DownloadFailed {
        image: String,
        attempts: u32,
        #[source]
        source: Box<Error>,
    },

    /// A health probe could not reach the VM (`what`: `tcp 10.1.20.5:8080`, `http …/healthz`).
    #[error("health probe {what} failed")]
    Probe {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A health probe reached the VM, which answered something other than healthy.
    #[error("health probe {what} {answer}")]
    ProbeAnswer { what: String, answer: String },

    /// KVM cannot be used (why, and the system error under it when there is one).
    #[error("{what}")]
    Kvm {
        what: String,
        #[source]
        source: Option<std::io::Error>,
    },

    /// An update of a VM did not come up, and was rolled back; the source says why.
    #[error("the update of VM `{vm}` did not come up and was rolled back")]
    UpdateRolledBack {
        vm: String,
        #[source]
        source: Box<Error>,
    },

    /// A step of an update failed (the source says how).
    #[error("{step}")]
    UpdateStep {
        step: String,
        #[source]
        source: Option<Box<Error>>,
    },

    #[error("cannot reach netd")]
    NetdUnreachable(#[source] backroom_daemon::Error),

    #[error("netd refused the {what} of VM `{vm}`")]
    NetdRefused {
        what: &'static str,
        vm: String,
        #[source]
        source: tonic::Status,
    },

    #[error("netd: {0}")]
    Netd(String),

    #[error("state file {} is unreadable", path.display())]
    StateUnreadable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "state folder {} is in use by another vmd (the daemon?): stop it first or use the daemon's socket",
        .0.display()
    )]
    Locked(PathBuf),

    /// vmd's plumbing (its socket, its state folder's lock) failed.
    #[error(transparent)]
    Daemon(backroom_daemon::Error),

    #[error("{count} VM change(s) failed: {}", .failures.join("; "))]
    Failed { count: usize, failures: Vec<String>, actions: Vec<String> },

    #[error("{0}")]
    Unsupported(String),
}

/// What lies under a failed libvirt call: libvirt's own error, or what vmd found itself (a
/// domain that should exist does not; the in-memory hypervisor of the tests).
#[derive(Clone, Debug, thiserror::Error)]
pub enum LibvirtCause {
    #[error(transparent)]
    Virt(#[from] virt::error::Error),
    #[error("{0}")]
    Found(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }

    /// A libvirt call `op` failed with libvirt's error `e`.
    pub fn libvirt(op: impl Into<String>, e: virt::error::Error) -> Self {
        Error::Libvirt { op: op.into(), source: LibvirtCause::Virt(e) }
    }

    /// A libvirt call `op` cannot be done for a reason vmd found itself.
    pub fn libvirt_found(op: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Libvirt { op: op.into(), source: LibvirtCause::Found(why.into()) }
    }

    /// A step of an update that failed without an error of its own.
    pub fn update_step(step: impl Into<String>) -> Self {
        Error::UpdateStep { step: step.into(), source: None }
    }
}

impl From<backroom_daemon::Error> for Error {
    fn from(e: backroom_daemon::Error) -> Self {
        match e {
            // vmd's own wording says what to do about it.
            backroom_daemon::Error::Locked { dir, .. } => Error::Locked(dir),
            e => Error::Daemon(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
