//! The TCP side of central's two gRPC ports, ahead of tonic: a limit on open connections and a
//! deadline on each TLS handshake, so a flood of connections (or of half-open ones that never
//! finish a handshake) cannot take every file descriptor and every task central has.
//!
//! TLS is done here with rustls (tonic then speaks HTTP/2 over the stream), so a refused or
//! timed-out connection is ours to log: one line when a limit is first hit, then at most one a
//! minute with how many more were refused, never one per connection. The handshake deadline
//! reads central's clock, so tests move it by hand.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use backroom_daemon::SharedClock;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("central's TLS certificate or key cannot be used: {0}")]
    Material(String),
}

/// What one port allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortLimits {
    /// Connections open at once, handshakes in progress included.
    pub max_connections: usize,
    /// A TLS handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
}

impl PortLimits {
    /// The node port: every store holds one connection; room for reconnect storms.
    pub fn node_default() -> Self {
        PortLimits { max_connections: 20_000, handshake_timeout: Duration::from_secs(10) }
    }

    /// The operator port: a few people and tools.
    pub fn api_default() -> Self {
        PortLimits { max_connections: 256, handshake_timeout: Duration::from_secs(10) }
    }
}

/// A TLS server configuration for central's certificate `chain_pem`/`key_pem`; with
/// `client_ca_pem`, client certificates signed by that CA are asked for (and optional, since a
/// node enrolls before it has one; the services check who needs one).
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<Arc<ServerConfig>, ListenError> {
    let bad = |e: &dyn std::fmt::Display| ListenError::Material(e.to_string());
    let provider = backroom_session::tls::provider();
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| bad(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A connection that finished its handshake; it holds its place under the connection limit
/// until it closes.
pub struct Conn {
    io: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Conn {
    // The same as tonic's own TLS streams, so `Request::peer_certs` finds the client's chain.
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// One kind of refusal, logged when it starts and then at most once a minute (central's clock).
struct Refusals {
    what: String,
    count: AtomicU64,
    last_logged_ms: Mutex<Option<i64>>,
}

impl Refusals {
    fn new(what: String) -> Self {
        Refusals { what, count: AtomicU64::new(0), last_logged_ms: Mutex::new(None) }
    }

    fn note(&self, peer: SocketAddr, now_ms: i64) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last =
            self.last_logged_ms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now_ms - t < 60_000) {
            return;
        }
        *last = Some(now_ms);
        self.count.store(0, Ordering::Relaxed);
        tracing::warn!(%peer, refused = n, "{} (the last from {peer}; {n} since the last such line)", self.what);
    }
}

/// The connections of `listener`, TLS done, at most `limits.max_connections` open at once;
/// until `stop` turns true. `port` names the port in log lines ("node", "operator").
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    limits: PortLimits,
    port: &'static str,
    clock: SharedClock,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<Result<Conn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let full = Arc::new(Refusals::new(format!(
        "{port} port: {} connections are open, its limit: refusing new connections",
        limits.max_connections
    )));
    let slow = Arc::new(Refusals::new(format!(
        "{port} port: a TLS handshake did not finish within {:?}: connection dropped",
        limits.handshake_timeout
    )));
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|v| *v) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    tracing::error!(error = %e, "{port} port: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                full.note(peer, clock.now_ms());
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, clock, slow) =
                (acceptor.clone(), tx.clone(), clock.clone(), Arc::clone(&slow));
            tokio::spawn(async move {
                let deadline = clock.sleep(limits.handshake_timeout);
                tokio::select! {
                    done = acceptor.accept(tcp) => match done {
                        Ok(io) => {
                            let _ = tx.send(Ok(Conn { io, _permit: permit })).await;
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "{port} port: TLS handshake failed"),
                    },
                    _ = deadline => slow.note(peer, clock.now_ms()),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
