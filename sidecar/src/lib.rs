//! pqmesh sidecar: obtains and renews the workload certificate, and proxies the workload's
//! traffic over hybrid post-quantum mutual TLS (explicit mode: a configured peer and allow-list).
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod proxy;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use pqmesh_mtls::TrustBundle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::identity::GrpcCertifier;
use crate::metrics::Metrics;
use crate::proxy::{Inbound, Outbound};
use crate::tls::MeshTls;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("trust bundle {path}: {reason}")]
    Bundle { path: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct RunningSidecar {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    renew_tx: mpsc::Sender<()>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningSidecar {
    /// Waits until the first certificate is in hand.
    pub async fn ready(&self) {
        let mut rx = self.tls.clone();
        let _ = rx.wait_for(|t| t.is_some()).await;
    }

    pub fn current(&self) -> Option<Arc<MeshTls>> {
        self.tls.borrow().clone()
    }

    /// Asks the identity task to re-issue now (as on a trust-bundle change).
    pub fn renew_now(&self) {
        let _ = self.renew_tx.try_send(());
    }

    /// Resolves when a shutdown was requested (admin `POST /shutdown`).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown_tx.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops accepting and stops renewing. Established connections finish on their own tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        drop(self.renew_tx);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

pub async fn start(config: Config) -> Result<RunningSidecar, StartError> {
    let bundle_text =
        std::fs::read_to_string(&config.trust_bundle_path).map_err(|e| StartError::Bundle {
            path: config.trust_bundle_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let bundle = TrustBundle::from_pem(&bundle_text).map_err(|reason| StartError::Bundle {
        path: config.trust_bundle_path.display().to_string(),
        reason,
    })?;
    if config.inbound_allow.is_empty() {
        tracing::warn!("PQMESH_INBOUND_ALLOW is empty: every inbound connection will be refused");
    }
    let metrics = Arc::new(Metrics::new());
    let (tls_tx, tls_rx) = watch::channel(None);
    let (renew_tx, renew_rx) = mpsc::channel(1);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let inbound_listener = bind(config.inbound_addr).await?;
    let inbound_addr = inbound_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.inbound_addr,
            source,
        })?;
    let mut tasks = Vec::new();
    let inbound = Arc::new(Inbound {
        app_addr: config.app_addr,
        allow: config.inbound_allow.clone(),
        tls: tls_rx.clone(),
        metrics: metrics.clone(),
    });
    tasks.push(tokio::spawn(proxy::serve_inbound(
        inbound_listener,
        inbound,
        shutdown_rx.clone(),
    )));

    let mut outbound_addr = None;
    if let Some(target) = config.outbound.clone() {
        let listener = bind(target.listen).await?;
        outbound_addr = Some(listener.local_addr().map_err(|source| StartError::Bind {
            addr: target.listen,
            source,
        })?);
        let outbound = Arc::new(Outbound {
            target,
            tls: tls_rx.clone(),
            metrics: metrics.clone(),
        });
        tasks.push(tokio::spawn(proxy::serve_outbound(
            listener,
            outbound,
            shutdown_rx.clone(),
        )));
    }

    let certifier = GrpcCertifier {
        addr: config.control_plane_addr.clone(),
        server_id: config.control_plane_id.clone(),
        kx: config.kx,
        token: config.token.clone(),
        bundle: std::sync::Mutex::new(bundle),
    };
    tasks.push(tokio::spawn(identity::maintain(
        certifier,
        config.key_alg,
        config.kx,
        tls_tx,
        renew_rx,
        metrics.clone(),
    )));

    let admin_addr = admin::spawn(
        &config,
        tls_rx.clone(),
        metrics.clone(),
        shutdown_tx.clone(),
    )
    .map_err(|source| StartError::Bind {
        addr: config.admin_addr,
        source,
    })?;
    tracing::info!(%inbound_addr, outbound = ?outbound_addr, %admin_addr, control_plane = %config.control_plane_addr,
        kx = ?config.kx, key_alg = %config.key_alg, "sidecar started");
    Ok(RunningSidecar {
        inbound_addr,
        outbound_addr,
        admin_addr,
        metrics,
        tls: tls_rx,
        renew_tx,
        shutdown_tx,
        tasks,
    })
}
