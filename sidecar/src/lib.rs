//! pqmesh sidecar: obtains and renews the workload certificate, and proxies the workload's
//! traffic over hybrid post-quantum mutual TLS (explicit mode: a configured peer and allow-list).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app_probe;
pub mod balance;
pub mod canonical;
pub mod config;
pub mod control_plane;
pub mod copy;
pub mod delivery;
pub mod discovery;
pub mod drain;
pub mod http_proxy;
pub mod identity;
pub mod init;
pub mod listen;
pub mod metrics;
pub mod opaque_guard;
pub mod original_dst;
pub mod outbound;
pub mod outbound_http2;
pub mod outbound_observe;
pub mod policy;
pub mod proxy;
pub mod readiness;
pub mod revocation;
pub mod sniff;
pub mod tls;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use pqmesh_mtls::TrustBundle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, Outbound as OutboundConfig};
use crate::discovery::Discovery;
use crate::drain::Drain;
use crate::identity::GrpcCertifier;
use crate::metrics::Metrics;
use crate::original_dst::{OriginalDst, SoOriginalDst};
use crate::outbound::{Outbound, Route};
use crate::proxy::Inbound;
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
    /// The IPv6 twins of the interception listeners (`listen::ipv6_twin`), when bound.
    pub inbound_addr_v6: Option<SocketAddr>,
    pub outbound_addr_v6: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    discovery: Option<Discovery>,
    policy: policy::PolicyState,
    readiness: watch::Receiver<readiness::Readiness>,
    link: control_plane::Link,
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    revoked: revocation::RevokedState,
    renew_tx: mpsc::Sender<()>,
    shutdown_tx: watch::Sender<bool>,
    drain: Drain,
    drain_timeout: std::time::Duration,
    /// The accept loops, IPv4 and IPv6 (they end when shutdown begins).
    listeners: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningSidecar {
    /// Waits until `/ready` would answer 200: an unexpired certificate, the first policy
    /// snapshot applied and, in transparent mode, discovery connected once.
    pub async fn ready(&self) {
        let mut rx = self.readiness.clone();
        let _ = rx.wait_for(|r| *r == readiness::Readiness::Ready).await;
    }

    /// What `/ready` follows (draining aside).
    pub fn readiness(&self) -> readiness::Readiness {
        self.readiness.borrow().clone()
    }

    /// True while every stream to the control plane is connected.
    pub fn control_plane_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// The policy in force (`None` until the first snapshot arrived).
    pub fn policy(&self) -> Option<Arc<policy::ActivePolicy>> {
        self.policy.borrow().clone()
    }

    pub fn discovery(&self) -> Option<&Discovery> {
        self.discovery.as_ref()
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

    /// The deny list in force.
    pub fn revoked(&self) -> Arc<revocation::Revoked> {
        self.revoked.borrow().clone()
    }

    /// Connections in flight (what a drain waits for).
    pub fn active_connections(&self) -> usize {
        self.drain.active()
    }

    /// Graceful drain: stops accepting, lets in-flight connections finish for up to the drain
    /// deadline (`PQMESH_DRAIN_TIMEOUT`), then stops renewing and the control-plane streams.
    /// Returns how many connections were still open at the deadline (they close when the
    /// runtime ends).
    pub async fn shutdown(self) -> usize {
        let timeout = self.drain_timeout;
        self.shutdown_with_deadline(timeout).await
    }

    pub async fn shutdown_with_deadline(self, deadline: std::time::Duration) -> usize {
        let _ = self.shutdown_tx.send(true);
        for listener in self.listeners {
            let _ = listener.await;
        }
        let in_flight = self.drain.active();
        self.metrics.draining_connections.set(in_flight as i64);
        tracing::info!(
            in_flight,
            deadline_s = deadline.as_secs_f64(),
            "draining: listeners closed"
        );
        let left = self.drain.wait_idle(deadline).await;
        self.metrics.draining_connections.set(left as i64);
        if left > 0 {
            tracing::warn!(
                left,
                "drain deadline reached; closing the remaining connections"
            );
        } else {
            tracing::info!("drained: no connection in flight");
        }
        drop(self.renew_tx);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        left
    }
}

/// Starts the sidecar; original destinations come from the kernel (`SO_ORIGINAL_DST`).
pub async fn start(config: Config) -> Result<RunningSidecar, StartError> {
    start_with(config, Arc::new(SoOriginalDst)).await
}

/// Starts the sidecar with an explicit source of original destinations (tests inject one).
pub async fn start_with(
    config: Config,
    original_dst: Arc<dyn OriginalDst>,
) -> Result<RunningSidecar, StartError> {
    let bundle_text =
        std::fs::read_to_string(&config.trust_bundle_path).map_err(|e| StartError::Bundle {
            path: config.trust_bundle_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let bundle = TrustBundle::from_pem(&bundle_text).map_err(|reason| StartError::Bundle {
        path: config.trust_bundle_path.display().to_string(),
        reason,
    })?;
    let uid = nix::unistd::getuid().as_raw();
    if matches!(config.outbound, OutboundConfig::Transparent { .. }) && uid != 1337 {
        tracing::warn!(uid, "transparent mode expects the sidecar to run as UID 1337 (the UID iptables exempts); \
            running as another UID makes its own connections loop through 15001 when interception rules are installed");
    }
    let metrics = Arc::new(Metrics::new());
    let (tls_tx, tls_rx) = watch::channel(None);
    let (renew_tx, renew_rx) = mpsc::channel(1);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let inbound_listener = listen::bind(config.inbound_addr).await?;
    let inbound_addr = inbound_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.inbound_addr,
            source,
        })?;
    let outbound_listen = match &config.outbound {
        OutboundConfig::Transparent { listen, .. } => *listen,
        OutboundConfig::Explicit(t) => t.listen,
    };
    let outbound_listener = listen::bind(outbound_listen).await?;
    let outbound_addr = outbound_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: outbound_listen,
            source,
        })?;
    let inbound_listener_v6 = listen::bind_ipv6_twin(config.inbound_addr)?;
    let outbound_listener_v6 = listen::bind_ipv6_twin(outbound_listen)?;
    let local_addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let inbound_addr_v6 = local_addr(&inbound_listener_v6);
    let outbound_addr_v6 = local_addr(&outbound_listener_v6);
    let mut tasks = Vec::new();
    let mut listeners = Vec::new();
    let drain = Drain::new(shutdown_rx.clone());
    let (revoked_tx, revoked_rx) = watch::channel(Arc::new(revocation::Revoked::default()));
    let certifier = Arc::new(GrpcCertifier {
        addr: config.control_plane_addr.clone(),
        server_id: config.control_plane_id.clone(),
        kx: config.kx,
        token: config.token.clone(),
        bundle: std::sync::Mutex::new(bundle),
    });
    let (policy_tx, policy_rx) = watch::channel(None);
    let transparent = matches!(config.outbound, OutboundConfig::Transparent { .. });
    let link = control_plane::Link::new(
        if transparent {
            &[
                control_plane::Stream::Policy,
                control_plane::Stream::Discovery,
            ]
        } else {
            &[control_plane::Stream::Policy]
        },
        metrics.clone(),
    );
    tasks.push(tokio::spawn(
        policy::PolicyClientTask {
            labels: config.labels.clone(),
            pod_name: config.pod_name.clone(),
            state: policy_tx,
            metrics: metrics.clone(),
            revoked: revoked_tx,
            renew: renew_tx.clone(),
            certifier: certifier.clone(),
            link: link.clone(),
            inbound_allow_empty: config.inbound_allow.is_empty(),
        }
        .run(
            config.control_plane_addr.clone(),
            config.control_plane_id.clone(),
            tls_rx.clone(),
        ),
    ));
    let inbound = Arc::new(Inbound {
        app_addr: config.app_addr,
        ports: config.inbound_ports.clone(),
        allow: config.inbound_allow.clone(),
        mode: config.inbound_mode,
        own_ports: vec![
            inbound_addr.port(),
            outbound_addr.port(),
            config.admin_addr.port(),
        ],
        opaque_ports: config.opaque_ports.clone(),
        http_relay_ports: config.http_relay_ports.clone(),
        tls: tls_rx.clone(),
        original_dst: original_dst.clone(),
        clients: Arc::new(http_proxy::AppClients::new(false)),
        redirected_clients: Arc::new(http_proxy::AppClients::new(true)),
        metrics: metrics.clone(),
        policy: policy_rx.clone(),
        trust_domain: config.trust_domain.clone(),
        revoked: revoked_rx.clone(),
        access_log: config.access_log,
    });
    for listener in std::iter::once(inbound_listener).chain(inbound_listener_v6) {
        listeners.push(tokio::spawn(proxy::serve_inbound(
            listener,
            inbound.clone(),
            drain.clone(),
        )));
    }

    let mut discovery = None;
    let route = match config.outbound.clone() {
        OutboundConfig::Explicit(target) => Route::Explicit(target),
        OutboundConfig::Transparent { unmeshed, .. } => {
            let (d, task) = Discovery::new();
            tasks.push(tokio::spawn(task.run(
                config.control_plane_addr.clone(),
                config.control_plane_id.clone(),
                tls_rx.clone(),
                link.clone(),
            )));
            discovery = Some(d.clone());
            Route::Transparent {
                discovery: d,
                unmeshed,
                original_dst,
                own_addr: outbound_addr,
            }
        }
    };
    let outbound = Arc::new(Outbound {
        route,
        tls: tls_rx.clone(),
        metrics: metrics.clone(),
        revoked: revoked_rx.clone(),
        opaque_ports: config.opaque_ports.clone(),
        balancer: balance::Balancer::default(),
        http2: outbound_http2::Pool::default(),
    });
    for listener in std::iter::once(outbound_listener).chain(outbound_listener_v6) {
        listeners.push(tokio::spawn(outbound::serve_outbound(
            listener,
            outbound.clone(),
            drain.clone(),
        )));
    }

    tasks.push(tokio::spawn(identity::maintain(
        certifier,
        config.key_alg,
        config.kx,
        tls_tx,
        renew_rx,
        metrics.clone(),
    )));

    let (readiness, tracker) = readiness::spawn(
        readiness::Inputs {
            certificate: tls_rx.clone(),
            policy: policy_rx.clone(),
            discovery: discovery.as_ref().map(|d| d.ever_connected()),
        },
        metrics.clone(),
    );
    tasks.push(tracker);
    let admin_addr = admin::spawn(
        &config,
        tls_rx.clone(),
        readiness.clone(),
        policy_rx.clone(),
        revoked_rx.clone(),
        metrics.clone(),
        shutdown_tx.clone(),
    )
    .map_err(|source| StartError::Bind {
        addr: config.admin_addr,
        source,
    })?;
    let or_none = |a: Option<SocketAddr>| a.map_or_else(|| "none".to_owned(), |a| a.to_string());
    tracing::info!(%inbound_addr, %outbound_addr, inbound_addr_v6 = %or_none(inbound_addr_v6),
        outbound_addr_v6 = %or_none(outbound_addr_v6), %admin_addr, control_plane = %config.control_plane_addr,
        kx = %config.kx, key_alg = %config.key_alg, inbound_mode = %config.inbound_mode, "sidecar started");
    Ok(RunningSidecar {
        inbound_addr,
        outbound_addr: Some(outbound_addr),
        inbound_addr_v6,
        outbound_addr_v6,
        admin_addr,
        metrics,
        discovery,
        policy: policy_rx.clone(),
        readiness,
        link,
        tls: tls_rx,
        revoked: revoked_rx,
        renew_tx,
        shutdown_tx,
        drain,
        drain_timeout: config.drain_timeout,
        listeners,
        tasks,
    })
}
pub use pqmesh_mtls::tls::ALPN_MESH;
