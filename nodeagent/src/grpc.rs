//! Local gRPC over unix sockets: the client channel (lazy, so nodeagent may start before netd
//! and vmd) and the server's listener (mode 0600, a stale socket file replaced).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// A channel to the gRPC server on the unix socket `path`; it connects on first use.
pub fn channel(path: &Path) -> Result<Channel> {
    let path: PathBuf = path.to_path_buf();
    let endpoint = Endpoint::try_from("http://[::]:50051")
        .map_err(|e| Error::Other(format!("bad endpoint: {e}")))?;
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let p = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(p).await?,
            ))
        }
    })))
}

/// Listens on the unix socket `path` (its folder is made; a stale socket is replaced; 0600).
pub fn listen(path: &Path) -> Result<UnixListenerStream> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create the folder", dir, e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Other(format!(
                "another process already serves on {}: stop it first or pick another --socket",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| Error::io("remove the stale socket", path, e))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| Error::io("listen on", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("set the mode of", path, e))?;
    Ok(UnixListenerStream::new(listener))
}
