//! Connections to backends' sidecars: pqmesh mTLS with the gateway's certificate, requiring the
//! endpoint's SPIFFE ID, pooled per endpoint by hyper's client (a TLS handshake per request would
//! dominate the gateway's latency). A pooled connection is only reused for the address it was
//! verified at, so for the identity it presented; when discovery names another identity for an
//! address, new connections require the new one.
//!
//! Which endpoints serve a Service: local mode's `backends.yaml`, or in Kubernetes mode the
//! Service's cluster IP asked of the control plane's discovery ([`crate::kubernetes`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pqmesh_mtls::tls::HandshakeInfo;
use pqmesh_mtls::SpiffeId;
use pqmesh_sidecar::tls::MeshTls;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use crate::proxy::Body;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are closed after this (the sidecar's own idle limit is longer).
const POOL_IDLE: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One mTLS connection, as hyper's client needs it.
pub struct MeshConn(Pin<Box<TokioIo<TlsStream<TcpStream>>>>);

impl Connection for MeshConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for MeshConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().0.as_mut().poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().0.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().0.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().0.as_mut().poll_shutdown(cx)
    }
}

/// Dials `http://<endpoint address>` URIs with mTLS requiring that endpoint's identity.
#[derive(Clone)]
pub struct MeshConnector {
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    identities: Identities,
    metrics: Arc<pqmesh_sidecar::metrics::Metrics>,
}

impl tower_service::Service<Uri> for MeshConnector {
    type Response = MeshConn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MeshConn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map_err(BoxError::from) })
    }
}

impl MeshConnector {
    async fn connect(&self, uri: Uri) -> Result<MeshConn, String> {
        let addr: SocketAddr = uri
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("backend address {uri}: {e}"))?;
        let identity = self
            .identities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
            .ok_or_else(|| format!("{addr} is not a known backend endpoint"))?;
        let identity = &identity;
        let Some(tls) = self.tls.borrow().clone() else {
            return Err("no gateway certificate yet".into());
        };
        let config = tls.client_for(identity).map_err(|e| e.to_string())?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timed out"))?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        // The verifier pins the peer's SPIFFE ID; the name only fills SNI.
        let name =
            rustls_pki_types::ServerName::try_from("pqmesh.mesh").map_err(|e| e.to_string())?;
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| {
                self.metrics
                    .handshake_failures
                    .with_label_values(&["outbound", pqmesh_mtls::handshake_failure_reason(&e)])
                    .inc();
                format!("TLS to {addr} ({identity}): {e}")
            })?;
        let hs = HandshakeInfo::of(stream.get_ref().1);
        self.metrics
            .handshakes
            .with_label_values(&["outbound", &hs.group, hs.peer_scheme])
            .inc();
        Ok(MeshConn(Box::pin(TokioIo::new(stream))))
    }
}

pub type BackendClient = hyper_util::client::legacy::Client<MeshConnector, Body>;

const MAX_IDENTITIES: usize = 10_000;

/// The identity each endpoint address must present, as last resolved.
pub type Identities = Arc<std::sync::RwLock<HashMap<SocketAddr, SpiffeId>>>;

/// A pooled client for the endpoints [`Endpoints::resolve`] names.
pub fn client(
    identities: Identities,
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    metrics: Arc<pqmesh_sidecar::metrics::Metrics>,
) -> BackendClient {
    let connector = MeshConnector {
        tls,
        identities,
        metrics,
    };
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector)
}

/// Where a Service's endpoints come from.
pub struct Endpoints {
    pub identities: Identities,
    /// Kubernetes mode: Services and the control plane's discovery; `None`: local mode's table.
    pub discovered: Option<crate::kubernetes::ServiceEndpoints>,
}

impl Endpoints {
    /// The mesh endpoints of `service` (`<namespace>/<name>`) at `port`, remembered with their
    /// identities for the connector. An error carries the status to answer with.
    pub async fn resolve(
        &self,
        table: &HashMap<(String, u16), Vec<crate::load::Endpoint>>,
        service: &str,
        port: u16,
    ) -> Result<Vec<crate::load::Endpoint>, (hyper::StatusCode, String)> {
        let endpoints = match &self.discovered {
            Some(d) => d.resolve(service, port).await?,
            None => table
                .get(&(service.to_owned(), port))
                .cloned()
                .ok_or_else(|| {
                    (
                        hyper::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("backend {service}:{port} is not known"),
                    )
                })?,
        };
        let known = {
            let ids = self.identities.read().unwrap_or_else(|p| p.into_inner());
            endpoints
                .iter()
                .all(|e| ids.get(&e.addr) == Some(&e.identity))
        };
        if !known {
            let mut ids = self.identities.write().unwrap_or_else(|p| p.into_inner());
            // Bounded: pod addresses churn; what is dropped is re-learnt at its next resolve.
            if ids.len() >= MAX_IDENTITIES {
                ids.clear();
            }
            for e in &endpoints {
                ids.insert(e.addr, e.identity.clone());
            }
        }
        Ok(endpoints)
    }
}
