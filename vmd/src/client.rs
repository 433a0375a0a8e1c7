//! gRPC over a unix socket: the channel vmd uses to reach netd, and the CLI to reach vmd.

use std::path::Path;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by tonic and ignored: the connector below dials the socket.
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
}

/// A client of vmd's own API on `path`.
pub async fn vmd_client(
    path: &Path,
) -> Result<backroom_api::vmd::vmd_client::VmdClient<Channel>, tonic::transport::Error> {
    Ok(backroom_api::vmd::vmd_client::VmdClient::new(unix_channel(path).await?))
}
