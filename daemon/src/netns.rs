//! Network namespaces. A thread enters one with `setns`; since a namespace belongs to the
//! thread, never to the process, this is done only on a thread of our own, never on a tokio
//! worker (which would take every later task on it into that namespace).

use std::fs::File;
use std::path::{Path, PathBuf};

/// The file `ip netns add NAME` makes: `/run/netns/NAME`.
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// A path given as a name (`bkstore`) or as a path (`/proc/123/ns/net`).
pub fn resolve(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') { PathBuf::from(name_or_path) } else { named(name_or_path) }
}

/// Moves the calling thread into the network namespace at `path`. Only for a thread of your
/// own (see the module's header).
pub fn enter(path: &Path) -> std::io::Result<()> {
    let f = File::open(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
    })?;
    enter_file(&f).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot enter the namespace {}: {e}", path.display()))
    })
}

/// Moves the calling thread into the network namespace held open by `f`.
pub fn enter_file(f: &File) -> std::io::Result<()> {
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(f),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(std::io::Error::from)
}

/// Runs `f` on a new thread inside the network namespace at `path` and returns its result.
/// Blocking: call it from a blocking context (or `spawn_blocking`).
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let file = File::open(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
    })?;
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> std::io::Result<T> {
            enter_file(&file).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot enter the namespace {shown}: {e}"))
            })?;
            Ok(f())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the thread working inside the namespace panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netns_of(pid: &str) -> std::io::Result<std::path::PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
    }

    #[test]
    fn runs_on_its_own_thread_in_the_namespace() {
        // Our own namespace: entering it must work and leave the caller where it was.
        let mine = netns_of("thread-self").unwrap();
        let seen =
            run_in(Path::new("/proc/self/ns/net"), || netns_of("thread-self").unwrap()).unwrap();
        assert_eq!(seen, mine);
        assert_eq!(netns_of("thread-self").unwrap(), mine);
        let e = run_in(Path::new("/nonexistent/ns"), || ()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ns"), "{e}");
        assert_eq!(resolve("bkstore"), Path::new("/run/netns/bkstore"));
        assert_eq!(resolve("/proc/1/ns/net"), Path::new("/proc/1/ns/net"));
    }
}
