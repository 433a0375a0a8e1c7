//! Named network namespaces under `/run/netns`, made the way `ip netns add` makes them, so that
//! containerd, `ip netns exec` and every other process see them: `/run/netns` is a shared
//! mount, and each namespace is a bind mount of a thread's `/proc/thread-self/ns/net` made in
//! the host's mount namespace. A netd started in a private mount namespace (`ip netns exec`)
//! would make mounts nobody else sees, so it refuses to make namespaces there.
//!
//! Entering a namespace is `backroom_daemon::netns`: work inside one happens on a short-lived
//! thread of its own; sockets opened there stay bound to that namespace.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountPropagationFlags, UnmountFlags};

use crate::error::{Error, Result};

pub const RUN_NETNS: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(RUN_NETNS).join(name)
}

/// Moves the calling thread into the namespace `/run/netns/<name>` (or at a path). Called on the
/// main thread before any other thread exists, it moves the whole process.
pub fn enter(name: &str) -> Result<()> {
    let p = backroom_daemon::netns::resolve(name);
    backroom_daemon::netns::enter(&p)
        .map_err(|e| Error::kernel(format!("cannot enter network namespace {name}"), e))
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

fn same_mount_ns_as_init() -> bool {
    let a = std::fs::metadata("/proc/self/ns/mnt").map(|m| m.ino());
    let b = std::fs::metadata("/proc/1/ns/mnt").map(|m| m.ino());
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    }
}

fn is_mount_point(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = p.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4) == Some(&want))
}

fn kernel(what: String) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::kernel(what, e.into())
}

/// Makes `/run/netns` exist as a shared mount, as iproute2 does.
fn prepare_run_netns() -> Result<()> {
    let dir = Path::new(RUN_NETNS);
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::kernel(format!("cannot create {RUN_NETNS}"), e))?;
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    if rustix::mount::mount_change(dir, shared).is_ok() {
        return Ok(());
    }
    // Not a mount point yet: make it one (bound on itself), then shared.
    if !is_mount_point(dir) {
        rustix::mount::mount_bind_recursive(dir, dir)
            .map_err(kernel(format!("cannot bind-mount {RUN_NETNS} on itself")))?;
    }
    rustix::mount::mount_change(dir, shared)
        .map_err(kernel(format!("cannot make {RUN_NETNS} a shared mount")))
}

/// Makes a new, empty network namespace at `/run/netns/<name>` (nothing if it exists).
pub fn create(name: &str) -> Result<()> {
    if exists(name) {
        return Ok(());
    }
    if !same_mount_ns_as_init() {
        return Err(Error::PrivateMounts { netns: name.to_string() });
    }
    prepare_run_netns()?;
    let target = path(name);
    File::create(&target)
        .map_err(|e| Error::kernel(format!("cannot create {}", target.display()), e))?;
    let t = target.clone();
    let made = std::thread::spawn(move || -> Result<()> {
        // SAFETY: only the network namespace is unshared, and only on this short-lived thread,
        // which shares no file descriptor table change with anyone.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
            .map_err(kernel("cannot make a new network namespace".into()))?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &t)
            .map_err(kernel(format!("cannot bind-mount the new namespace on {}", t.display())))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(Error::kernel(
            format!("cannot make network namespace {name}"),
            std::io::Error::other("the thread making it panicked"),
        ))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&target);
    }
    made
}

/// Gives the namespace at `/run/netns/<from>` a second name `<to>` (a second bind mount).
pub fn link(from: &str, to: &str) -> Result<()> {
    prepare_run_netns()?;
    let (src, dst) = (path(from), path(to));
    if !dst.exists() {
        File::create(&dst)
            .map_err(|e| Error::kernel(format!("cannot create {}", dst.display()), e))?;
    }
    rustix::mount::mount_bind(&src, &dst).map_err(kernel(format!(
        "cannot bind-mount {} on {}",
        src.display(),
        dst.display()
    )))
}

/// Removes the name `/run/netns/<name>` (the namespace lives on while a process uses it).
pub fn delete(name: &str) -> Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    // EINVAL (not a mount point) is fine: the file is removed below either way.
    let _ = rustix::mount::unmount(&p, UnmountFlags::DETACH);
    std::fs::remove_file(&p).map_err(|e| Error::kernel(format!("cannot remove {}", p.display()), e))
}

/// Runs `f` on a thread inside the namespace `/run/netns/<name>`.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    backroom_daemon::netns::run_in(&path(name), f)
        .map_err(|e| Error::kernel(format!("cannot work inside network namespace {name}"), e))?
}

/// Opens the namespace file (for `IFLA_NET_NS_FD`).
pub fn open(name: &str) -> Result<File> {
    let p = path(name);
    File::open(&p)
        .map_err(|e| Error::kernel(format!("cannot open network namespace {}", p.display()), e))
}
