//! gRPC (tonic) over pqmesh's own TLS configs: a listener stream that completes handshakes
//! concurrently and tags each connection with the peer's verified identity, and a client connector.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{server::TlsStream, TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;

use crate::spiffe::SpiffeId;
use crate::tls::HandshakeInfo;

/// What a gRPC handler can learn about its caller (a request extension).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// Set only when the client presented a certificate that verified against the bundle.
    pub peer_id: Option<SpiffeId>,
    /// The client certificate's serial (upper-case hex), when one was presented.
    pub peer_serial: Option<String>,
    pub group: String,
}

/// The caller's verified mesh identity, or `Unauthenticated` naming `api` (the streams that need
/// mutual TLS, on a port where client certificates are optional).
pub fn authenticated_peer<T>(
    request: &tonic::Request<T>,
    api: &str,
) -> Result<SpiffeId, tonic::Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.peer_id.clone())
        .ok_or_else(|| {
            tonic::Status::unauthenticated(format!(
                "{api} requires the workload's mesh certificate (mutual TLS)"
            ))
        })
}

pub struct TlsServerStream {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsServerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsServerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsServerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow or hostile client
/// never blocks others), using whatever server config is current when the connection arrives.
/// Failed handshakes are logged and reported through `on_failure` (for metrics).
pub fn tls_incoming(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    handshake_timeout: Duration,
    on_failure: Arc<dyn Fn(&str) + Send + Sync>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsServerStream, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                // The server went away: stop accepting and release the port.
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.borrow().clone());
            let tx = tx.clone();
            let on_failure = on_failure.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let hs = HandshakeInfo::of(tls.get_ref().1);
                        let info = PeerInfo {
                            remote,
                            peer_id: hs.peer_id,
                            peer_serial: hs.peer_serial,
                            group: hs.group,
                        };
                        let _ = tx.send(Ok(TlsServerStream { inner: tls, info })).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "control-plane TLS handshake refused");
                        on_failure(crate::handshake_failure_reason(&e));
                    }
                    Err(_) => {
                        tracing::info!(%remote, "control-plane TLS handshake timed out");
                        on_failure("timeout");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The connection a tonic channel runs over.
pub type ClientIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
type ConnectFuture = Pin<Box<dyn std::future::Future<Output = Result<ClientIo, io::Error>> + Send>>;

/// A tonic connector that dials `addr` and speaks TLS with `config` (which pins the server's
/// SPIFFE ID through its verifier).
pub fn tls_connector(
    addr: String,
    config: Arc<ClientConfig>,
) -> impl tower::Service<http::Uri, Response = ClientIo, Error = io::Error, Future = ConnectFuture>
       + Clone
       + Send
       + 'static {
    tower::service_fn(move |_uri: http::Uri| {
        let addr = addr.clone();
        let config = config.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&addr).await?;
            let _ = tcp.set_nodelay(true);
            // The name is not checked (the verifier pins the SPIFFE ID); it only fills SNI.
            let name = ServerName::try_from("pqmesh-control-plane").map_err(io::Error::other)?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        }) as ConnectFuture
    })
}
