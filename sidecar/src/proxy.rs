//! Explicit-mode L4 proxying. Outbound: app → this listener → mTLS to the configured peer sidecar,
//! which must present the configured SPIFFE ID. Inbound: mTLS from a peer whose SPIFFE ID is on
//! the allow-list → the local app. Bytes are copied both ways with half-close preserved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pqmesh_mtls::tls::{HandshakeInfo, ALPN_MESH};
use pqmesh_mtls::PeerPattern;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::OutboundTarget;
use crate::metrics::Metrics;
use crate::tls::MeshTls;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub type TlsState = watch::Receiver<Option<Arc<MeshTls>>>;

pub struct Inbound {
    pub app_addr: SocketAddr,
    pub allow: Vec<PeerPattern>,
    pub tls: TlsState,
    pub metrics: Arc<Metrics>,
}

pub struct Outbound {
    pub target: OutboundTarget,
    pub tls: TlsState,
    pub metrics: Arc<Metrics>,
}

/// Accepts until `shutdown` flips to true; each connection is handled on its own task.
pub async fn serve_inbound(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => { tracing::warn!(error = %e, "inbound accept failed"); continue; }
            },
        };
        let inbound = inbound.clone();
        tokio::spawn(async move {
            if let Err(reason) = inbound.handle(tcp, remote).await {
                tracing::info!(%remote, reason, "inbound connection refused");
            }
        });
    }
}

impl Inbound {
    async fn handle(&self, tcp: TcpStream, remote: SocketAddr) -> Result<(), &'static str> {
        let _ = tcp.set_nodelay(true);
        let Some(tls) = self.tls.borrow().clone() else {
            self.metrics
                .connections
                .with_label_values(&["inbound", "no_certificate"])
                .inc();
            return Err("no workload certificate yet");
        };
        let acceptor = TlsAcceptor::from(tls.server.clone());
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = pqmesh_mtls::handshake_failure_reason(&e);
                tracing::info!(%remote, error = %e, "inbound handshake failed");
                self.metrics
                    .handshake_failures
                    .with_label_values(&["inbound", reason])
                    .inc();
                return Err("TLS handshake failed");
            }
            Err(_) => {
                self.metrics
                    .handshake_failures
                    .with_label_values(&["inbound", "timeout"])
                    .inc();
                return Err("TLS handshake timed out");
            }
        };
        let hs = HandshakeInfo::of(stream.get_ref().1);
        self.metrics
            .handshakes
            .with_label_values(&["inbound", &hs.group, hs.peer_scheme])
            .inc();
        if hs.alpn.as_deref() != Some(ALPN_MESH) {
            self.metrics
                .connections
                .with_label_values(&["inbound", "denied_alpn"])
                .inc();
            return Err("peer did not negotiate ALPN pqmesh/1");
        }
        let Some(peer) = hs.peer_id else {
            self.metrics
                .connections
                .with_label_values(&["inbound", "denied_identity"])
                .inc();
            return Err("peer certificate has no SPIFFE ID");
        };
        if !self.allow.iter().any(|p| p.matches(&peer)) {
            self.metrics
                .connections
                .with_label_values(&["inbound", "denied_identity"])
                .inc();
            tracing::warn!(%remote, peer = %peer, "peer identity not allowed");
            return Err("peer identity not on the allow-list");
        }
        let app =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.app_addr)).await {
                Ok(Ok(app)) => app,
                _ => {
                    self.metrics
                        .connections
                        .with_label_values(&["inbound", "app_unreachable"])
                        .inc();
                    return Err("local app unreachable");
                }
            };
        let _ = app.set_nodelay(true);
        tracing::debug!(%remote, peer = %peer, group = %hs.group, "inbound connection allowed");
        self.metrics
            .connections
            .with_label_values(&["inbound", "allowed"])
            .inc();
        relay(stream, app, "inbound", &self.metrics).await;
        Ok(())
    }
}

pub async fn serve_outbound(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => { tracing::warn!(error = %e, "outbound accept failed"); continue; }
            },
        };
        let outbound = outbound.clone();
        tokio::spawn(async move {
            if let Err(reason) = outbound.handle(tcp).await {
                tracing::info!(%remote, reason = %reason, "outbound connection failed");
            }
        });
    }
}

impl Outbound {
    async fn handle(&self, app: TcpStream) -> Result<(), String> {
        let _ = app.set_nodelay(true);
        let Some(tls) = self.tls.borrow().clone() else {
            self.metrics
                .connections
                .with_label_values(&["outbound", "no_certificate"])
                .inc();
            return Err("no workload certificate yet".into());
        };
        let target = &self.target;
        let config = tls.client_for(&target.peer_id).map_err(|e| e.to_string())?;
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.peer_addr))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.metrics
                    .connections
                    .with_label_values(&["outbound", "peer_unreachable"])
                    .inc();
                return Err(format!("connect {}: {e}", target.peer_addr));
            }
            Err(_) => {
                self.metrics
                    .connections
                    .with_label_values(&["outbound", "peer_unreachable"])
                    .inc();
                return Err(format!("connect {}: timed out", target.peer_addr));
            }
        };
        let _ = tcp.set_nodelay(true);
        // The verifier pins the peer's SPIFFE ID; the name only fills SNI.
        let name = ServerName::try_from("pqmesh.mesh").map_err(|e| e.to_string())?;
        let stream = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsConnector::from(config).connect(name, tcp),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = pqmesh_mtls::handshake_failure_reason(&e);
                self.metrics
                    .handshake_failures
                    .with_label_values(&["outbound", reason])
                    .inc();
                return Err(format!(
                    "TLS to {} ({}): {e}",
                    target.peer_addr, target.peer_id
                ));
            }
            Err(_) => {
                self.metrics
                    .handshake_failures
                    .with_label_values(&["outbound", "timeout"])
                    .inc();
                return Err("TLS handshake timed out".into());
            }
        };
        let hs = HandshakeInfo::of(stream.get_ref().1);
        self.metrics
            .handshakes
            .with_label_values(&["outbound", &hs.group, hs.peer_scheme])
            .inc();
        self.metrics
            .connections
            .with_label_values(&["outbound", "allowed"])
            .inc();
        tracing::debug!(peer = %target.peer_id, group = %hs.group, "outbound connection established");
        relay(stream, app, "outbound", &self.metrics).await;
        Ok(())
    }
}

/// Copies both ways until both sides are done; an EOF on one side is passed on as a half-close.
async fn relay<A, B>(mut mesh: A, mut app: B, direction: &'static str, metrics: &Metrics)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    metrics.connections_open.inc();
    match tokio::io::copy_bidirectional(&mut mesh, &mut app).await {
        Ok((from_mesh, from_app)) => {
            let (to_app, from_app_label) = ("to_app", "from_app");
            metrics
                .bytes
                .with_label_values(&[direction, to_app])
                .inc_by(from_mesh);
            metrics
                .bytes
                .with_label_values(&[direction, from_app_label])
                .inc_by(from_app);
        }
        Err(e) => tracing::debug!(error = %e, direction, "connection ended with an error"),
    }
    metrics.connections_open.dec();
}
