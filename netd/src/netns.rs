//! Named network namespaces under `/run/netns`, made the way `ip netns add` makes them, so that
//! containerd, `ip netns exec` and every other process see them: `/run/netns` is a shared
//! mount, and each namespace is a bind mount of a thread's `/proc/thread-self/ns/net` made in
//! the host's mount namespace. A netd started in a private mount namespace (`ip netns exec`)
//! would make mounts nobody else sees, so it refuses to make namespaces there.
//!
//! Work inside a namespace happens on a short-lived thread that `setns`es into it; sockets opened
//! there stay bound to that namespace.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const RUN_NETNS: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(RUN_NETNS).join(name)
}

fn io_last(what: String) -> Error {
    Error::kernel(what, std::io::Error::last_os_error())
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default()
}

/// Moves the calling thread into the namespace at `/run/netns/<name>`. Called on the main
/// thread before any other thread exists, it moves the whole process.
pub fn enter(name: &str) -> Result<()> {
    let p = path(name);
    let f = File::open(&p)
        .map_err(|e| Error::kernel(format!("cannot open network namespace {}", p.display()), e))?;
    // SAFETY: setns on a namespace file we hold open.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io_last(format!("cannot enter network namespace {name}")));
    }
    Ok(())
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

/// Makes `/run/netns` exist as a shared mount, as iproute2 does.
fn prepare_run_netns() -> Result<()> {
    let dir = Path::new(RUN_NETNS);
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::kernel(format!("cannot create {RUN_NETNS}"), e))?;
    let c = cpath(dir);
    // SAFETY: mount(2) with valid C strings; null fs type/data are allowed for these flags.
    unsafe {
        if libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        ) == 0
        {
            return Ok(());
        }
        if !is_mount_point(dir)
            && libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
        {
            return Err(io_last(format!("cannot bind-mount {RUN_NETNS} on itself")));
        }
        if libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(io_last(format!("cannot make {RUN_NETNS} a shared mount")));
        }
    }
    Ok(())
}

/// Makes a new, empty network namespace at `/run/netns/<name>` (nothing if it exists).
pub fn create(name: &str) -> Result<()> {
    if exists(name) {
        return Ok(());
    }
    if !same_mount_ns_as_init() {
        return Err(Error::Rejected(format!(
            "netd runs in a mount namespace of its own (as under `ip netns exec`): namespace {name} would be invisible to containerd and `ip netns`; run netd directly and use --netns instead"
        )));
    }
    prepare_run_netns()?;
    let target = path(name);
    File::create(&target)
        .map_err(|e| Error::kernel(format!("cannot create {}", target.display()), e))?;
    let t = target.clone();
    let made = std::thread::spawn(move || -> Result<()> {
        // SAFETY: unshare affects only this short-lived thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io_last("cannot make a new network namespace".into()));
        }
        let src = cpath(Path::new("/proc/thread-self/ns/net"));
        let dst = cpath(&t);
        // SAFETY: bind mount between two valid paths.
        if unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        } != 0
        {
            return Err(io_last(format!("cannot bind-mount the new namespace on {}", t.display())));
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(Error::Rejected("the namespace thread panicked".into())));
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
    let (s, d) = (cpath(&src), cpath(&dst));
    // SAFETY: bind mount between two valid paths.
    if unsafe {
        libc::mount(s.as_ptr(), d.as_ptr(), c"none".as_ptr(), libc::MS_BIND, std::ptr::null())
    } != 0
    {
        return Err(io_last(format!("cannot bind-mount {} on {}", src.display(), dst.display())));
    }
    Ok(())
}

/// Removes the name `/run/netns/<name>` (the namespace lives on while a process uses it).
pub fn delete(name: &str) -> Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    let c = cpath(&p);
    // SAFETY: umount2 on a path; EINVAL (not a mount) is fine.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
    std::fs::remove_file(&p).map_err(|e| Error::kernel(format!("cannot remove {}", p.display()), e))
}

/// Runs `f` on a thread inside the namespace `/run/netns/<name>`.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let p = path(name);
    let file = File::open(&p)
        .map_err(|e| Error::kernel(format!("cannot open network namespace {}", p.display()), e))?;
    let name = name.to_string();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a namespace file we hold open.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io_last(format!("cannot enter network namespace {name}")));
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(Error::Rejected("a namespace thread panicked".into())))
}

/// Opens the namespace file (for `IFLA_NET_NS_FD`).
pub fn open(name: &str) -> Result<File> {
    let p = path(name);
    File::open(&p)
        .map_err(|e| Error::kernel(format!("cannot open network namespace {}", p.display()), e))
}
