//! Local gRPC over unix sockets: the listener every daemon serves on, and the channel every
//! client dials.
//!
//! [`listen`] refuses to start when a live server already answers on the path, replaces a stale
//! socket file, and makes the socket reachable under its final name only after its mode is set
//! (it is bound under a temporary name, restricted, then renamed into place), so no connection
//! can arrive before the socket is restricted. Every connection is then checked by the peer's
//! credentials: root, or the [`Access`]'s group.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// Who may connect besides root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Members of this group (by gid) may connect too; the socket is then 0660, owned by it.
    pub group: Option<u32>,
}

impl Access {
    pub const ROOT: Access = Access { group: None };

    fn mode(&self) -> u32 {
        if self.group.is_some() { 0o660 } else { 0o600 }
    }

    /// Whether a peer with these credentials may talk to the daemon.
    pub fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 {
            return true;
        }
        let Some(group) = self.group else { return false };
        gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group))
    }
}

impl Access {
    /// Root, and the members of the group `name` when one is given (`--socket-group`); the
    /// name is looked up in `/etc/group` (where systemd-sysusers puts the `backroom` group), a
    /// number is taken as the gid itself. An unknown group is an error, never "root only".
    pub fn for_group(name: Option<&str>) -> Result<Access> {
        let Some(name) = name else { return Ok(Access::ROOT) };
        let group = Path::new("/etc/group");
        let text = std::fs::read_to_string(group).map_err(|e| Error::io("read", group, e))?;
        Access::for_group_in(name, &text)
    }

    /// [`Access::for_group`] with the group file's text.
    pub fn for_group_in(name: &str, group_file: &str) -> Result<Access> {
        let gid = name.parse::<u32>().ok().or_else(|| gid_of(name, group_file));
        match gid {
            Some(gid) => Ok(Access { group: Some(gid) }),
            None => Err(Error::UnknownGroup(name.to_string())),
        }
    }
}

/// The gid of `name` in the text of a group file (`name:x:gid:members`).
fn gid_of(name: &str, group_file: &str) -> Option<u32> {
    group_file.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        f.nth(1)?.trim().parse().ok()
    })
}

/// The `--socket-group` option every daemon takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SocketArgs {
    /// Besides root, members of this group may use the daemon's socket (it is then 0660 and
    /// owned by the group; peers are checked by their credentials too). Without it: root only.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
}

impl SocketArgs {
    pub fn access(&self) -> Result<Access> {
        Access::for_group(self.socket_group.as_deref())
    }
}

/// The supplementary groups of a process, from `/proc/PID/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect::<Vec<u32>>())
        })
        .unwrap_or_default()
}

/// The connections a daemon accepts, for `tonic`'s `serve_with_incoming`.
pub struct Incoming {
    listener: UnixListener,
    access: Access,
    path: PathBuf,
}

impl Incoming {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl futures::Stream for Incoming {
    type Item = std::io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, _))) => match stream.peer_cred() {
                    Ok(c) if this.access.allows(c.uid(), c.gid(), c.pid()) => {
                        return Poll::Ready(Some(Ok(stream)));
                    }
                    Ok(c) => tracing::warn!(
                        socket = %this.path.display(),
                        uid = c.uid(),
                        gid = c.gid(),
                        pid = c.pid(),
                        "refused a connection: only root or the daemon's group may connect"
                    ),
                    Err(e) => tracing::warn!(
                        socket = %this.path.display(),
                        "refused a connection whose credentials cannot be read: {e}"
                    ),
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Listens on the unix socket `path` for `access` (see the module's header).
pub fn listen(path: &Path, access: Access) -> Result<Incoming> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create the folder", dir, e))?;
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::AlreadyServing(path.to_path_buf()));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.binding", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove the leftover socket", &tmp, e)),
    }
    let listener = UnixListener::bind(&tmp).map_err(|e| Error::io("listen on", &tmp, e))?;
    let restrict = || -> std::io::Result<()> {
        if let Some(gid) = access.group {
            rustix::fs::chown(&tmp, None, Some(rustix::fs::Gid::from_raw(gid)))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(access.mode()))?;
        // Replaces a stale socket file in one step.
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = restrict() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("restrict and publish the socket", path, e));
    }
    Ok(Incoming { listener, access, path: path.to_path_buf() })
}

fn endpoint() -> Endpoint {
    // tonic needs a URI; the connector below ignores it and dials the socket.
    Endpoint::from_static("http://[::]:50051")
}

fn connector(
    path: &Path,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    let path = path.to_path_buf();
    tower::service_fn(move |_| {
        let p = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
    })
}

/// A channel to the gRPC server on `path` that connects on first use (and again after a
/// restart of that server), so a daemon may start before the ones it talks to.
pub fn channel(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path))
}

/// A channel to the gRPC server on `path`, connected now: fails when nothing answers there.
pub async fn connect(path: &Path) -> Result<Channel> {
    endpoint()
        .connect_with_connector(connector(path))
        .await
        .map_err(|source| Error::Connect { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[tokio::test]
    async fn restricted_before_published_and_refuses_a_live_server() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/x.sock");
        let first = listen(&p, Access::ROOT).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A second daemon on the same socket is refused while the first one listens.
        let e = listen(&p, Access::ROOT).err().expect("a second listener was allowed");
        assert!(matches!(e, Error::AlreadyServing(_)), "{e}");
        drop(first);
        // A stale socket (its server gone) is replaced.
        let again = listen(&p, Access::ROOT).unwrap();
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temporary");
        assert!(UnixStream::connect(&p).await.is_ok());
        drop(again);
    }

    #[test]
    fn peers_by_credentials() {
        let a = Access::ROOT;
        assert!(a.allows(0, 0, None));
        assert!(!a.allows(1000, 1000, None));
        let g = Access { group: Some(990) };
        assert!(g.allows(1000, 990, None));
        assert!(!g.allows(1000, 1000, Some(i32::MAX)));
        assert_eq!(g.mode(), 0o660);
    }

    #[test]
    fn socket_groups_by_name_or_number_and_unknown_ones_refused() {
        let etc = "root:x:0:\n# a comment\nbackroom:x:991:alice,bob\nback:x:5:\n";
        assert_eq!(Access::for_group_in("backroom", etc).unwrap(), Access { group: Some(991) });
        assert_eq!(Access::for_group_in("back", etc).unwrap(), Access { group: Some(5) });
        assert_eq!(Access::for_group_in("1234", etc).unwrap(), Access { group: Some(1234) });
        let e = Access::for_group_in("backroo", etc).unwrap_err();
        assert!(e.to_string().contains("\"backroo\" does not exist"), "{e}");
        assert_eq!(Access::for_group(None).unwrap(), Access::ROOT);
        assert_eq!(Access::for_group(Some("root")).unwrap(), Access { group: Some(0) });
    }

    #[tokio::test]
    async fn connect_names_the_socket_when_nothing_answers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nobody.sock");
        let e = connect(&p).await.unwrap_err();
        assert!(e.to_string().contains("nobody.sock"), "{e}");
    }
}
