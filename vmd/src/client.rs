//! vmd's own API as a client sees it (the CLI, tests): a channel over the daemon's socket.

use std::path::Path;

use tonic::transport::Channel;

/// A client of vmd's API on `path`, connected now (fails when no vmd answers there).
pub async fn vmd_client(
    path: &Path,
) -> Result<backroom_api::vmd::vmd_client::VmdClient<Channel>, backroom_daemon::Error> {
    Ok(backroom_api::vmd::vmd_client::VmdClient::new(backroom_daemon::socket::connect(path).await?))
}
