//! The name-resolution files a container sees: `/etc/resolv.conf` and `/etc/hosts`, bind-mounted
//! read-only from files nodeagent writes under `<state-dir>/etc/`.
//!
//! - `resolv.conf` is the host's, without the nameservers a container cannot reach: loopback
//!   addresses belong to the host's own network namespace, not the container's. When only
//!   loopback resolvers remain and the host runs systemd-resolved (127.0.0.53), its upstream
//!   servers (`/run/systemd/resolve/resolv.conf`) are used instead, as Docker does. A container
//!   whose segment's firewall does not allow DNS to those servers still cannot resolve: that is
//!   the profile's decision.
//! - `hosts` names `localhost` and the workload's hostname (on 127.0.1.1, Debian's convention,
//!   so the file does not depend on the address netd hands out).
//!
//! The files are rewritten (atomically, only when their content changes) each time a container
//! starts; a running container keeps the content it started with, as with Docker.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where systemd-resolved writes the servers it forwards to.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

fn is_loopback(addr: &str) -> bool {
    let addr = addr.split('%').next().unwrap_or(addr);
    addr.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// The host's resolv.conf without loopback nameservers; `None` when no nameserver is left.
pub fn container_resolv_conf(host: &str) -> Option<String> {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            match words.next() {
                Some(a) if is_loopback(a) => continue,
                Some(_) => servers += 1,
                None => continue,
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    (servers > 0).then_some(out)
}

/// The `/etc/hosts` of a container whose hostname is `hostname`.
pub fn container_hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// Writes the files of `workload` under `dir` (from the host's `resolv_source`) and returns
/// their paths (resolv.conf, hosts).
pub fn prepare(dir: &Path, resolv_source: &Path, workload: &str) -> Result<(PathBuf, PathBuf)> {
    let read = |p: &Path| match std::fs::read_to_string(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", p, e)),
    };
    let mut resolv = read(resolv_source)?.and_then(|t| container_resolv_conf(&t));
    if resolv.is_none() {
        resolv = read(Path::new(RESOLVED_UPSTREAM))?.and_then(|t| container_resolv_conf(&t));
    }
    let resolv = resolv.unwrap_or_else(|| {
        format!(
            "# {}: no nameserver a container can reach (only loopback ones, or none)\n",
            resolv_source.display()
        )
    });
    let wdir = dir.join(workload);
    std::fs::create_dir_all(&wdir).map_err(|e| Error::io("create the folder", &wdir, e))?;
    let files = (wdir.join("resolv.conf"), wdir.join("hosts"));
    for (path, text) in [(&files.0, resolv), (&files.1, container_hosts(workload))] {
        if read(path)?.as_deref() != Some(text.as_str()) {
            // 0644: readable by the container's (possibly unprivileged) user.
            backroom_daemon::fs::save(path, text.as_bytes(), 0o644)?;
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_nameservers_are_dropped_and_the_rest_kept() {
        let host = "# from DHCP\nsearch store.example\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.53\noptions edns0\n";
        let c = container_resolv_conf(host).unwrap();
        assert_eq!(c, "# from DHCP\nsearch store.example\nnameserver 192.0.2.53\noptions edns0\n");
    }

    #[test]
    fn only_loopback_nameservers_leave_nothing() {
        assert_eq!(container_resolv_conf("nameserver 127.0.0.53\noptions edns0\n"), None);
        assert_eq!(container_resolv_conf(""), None);
        assert!(container_resolv_conf("nameserver fe80::1%eth0\n").is_some());
    }

    #[test]
    fn files_are_written_once_and_kept_when_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("host-resolv.conf");
        std::fs::write(&src, "nameserver 198.51.100.1\n").unwrap();
        let (r, h) = prepare(&d.path().join("etc"), &src, "orders").unwrap();
        assert_eq!(std::fs::read_to_string(&r).unwrap(), "nameserver 198.51.100.1\n");
        assert!(std::fs::read_to_string(&h).unwrap().contains("127.0.1.1\torders\n"));
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = inode(&r);
        prepare(&d.path().join("etc"), &src, "orders").unwrap();
        assert_eq!(inode(&r), before, "unchanged content is not rewritten");
    }
}
