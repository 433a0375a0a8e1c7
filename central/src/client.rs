//! The operator client used by `centralctl` (and tests): TLS to central's operator endpoint,
//! trusting central's CA, with the API token on every call.

use backroom_api::operator::operator_client::OperatorClient;
use backroom_session::tls;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Client = OperatorClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("the API token has characters that cannot go in a header")]
    BadToken,
}

/// Connects to central's operator API at `url` (https://host:port).
pub async fn connect(url: &str, ca_pem: &str, token: &str) -> Result<Client, ClientError> {
    let channel = tls::channel(url, tls::server_auth_config(ca_pem)?, false).await?;
    let value = format!("Bearer {}", token.trim()).parse().map_err(|_| ClientError::BadToken)?;
    Ok(OperatorClient::with_interceptor(channel, Bearer(value)).max_decoding_message_size(64 << 20))
}
