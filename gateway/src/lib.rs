//! pqmesh's edge gateway: outside clients in through Gateway API listeners (outside TLS with
//! X25519MLKEM768 preferred), routed by HTTPRoutes, checked by an EdgePolicy (phantom-token
//! exchange, coarse scopes, rate limits), and forwarded into the mesh over PQ mTLS with the
//! gateway's own SPIFFE identity. Identity, mesh TLS and token validation are the sidecar's code.
#![forbid(unsafe_code)]

pub mod api;
pub mod backend;
pub mod config;
pub mod load;
pub mod metrics;
pub mod outside_tls;
pub mod proxy;
pub mod ratelimit;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use pqmesh_mtls::TrustBundle;
use pqmesh_sidecar::identity::GrpcCertifier;
use pqmesh_sidecar::metrics::Metrics;
use pqmesh_sidecar::tls::MeshTls;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::load::Verdict;
use crate::proxy::{Edge, EdgeRuntime};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1 request head must arrive within this (the sidecar's value): slowloris clients are
/// closed (review 7, F6).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of file descriptors): no busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("trust bundle {path}: {reason}")]
    Bundle { path: String, reason: String },
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error("PQMESH_GATEWAY_ADMIN_ADDR={addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {listener}: {reason}")]
    Listener { listener: String, reason: String },
}

pub struct RunningGateway {
    pub admin_addr: SocketAddr,
    /// `(gateway/listener name, bound address)` per programmed listener.
    pub listeners: Vec<(String, SocketAddr)>,
    pub verdicts: Vec<Verdict>,
    pub metrics: Arc<Metrics>,
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    _renew: mpsc::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Waits for the gateway's first mesh certificate.
    pub async fn ready(&self) {
        let mut rx = self.tls.clone();
        let _ = rx.wait_for(|t| t.is_some()).await;
    }

    pub fn current(&self) -> Option<Arc<MeshTls>> {
        self.tls.borrow().clone()
    }

    pub fn addr_of(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n.ends_with(&format!("/{listener}")))
            .map(|(_, a)| *a)
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reads the directory, certifies with the control plane and serves every programmed listener.
pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
    let bundle_err = |reason: String| StartError::Bundle {
        path: config.trust_bundle_path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(&config.trust_bundle_path)
        .map_err(|e| bundle_err(e.to_string()))?;
    let bundle = TrustBundle::from_pem(&text).map_err(bundle_err)?;
    let model = load::load(&config.dir)?;
    for v in &model.verdicts {
        match (&v.accepted, &v.resolved_refs) {
            (Err(e), _) => {
                tracing::warn!(kind = %v.kind, name = %v.name, source = %v.source, "refused (Accepted=False): {e}")
            }
            (Ok(()), Err(e)) => {
                tracing::warn!(kind = %v.kind, name = %v.name, source = %v.source, "ResolvedRefs=False: {e}")
            }
            _ => tracing::info!(kind = %v.kind, name = %v.name, "accepted"),
        }
    }
    let metrics = Arc::new(Metrics::new());
    let gateway_metrics = metrics::GatewayMetrics::new(&metrics.registry);
    let mut policies = Vec::new();
    for route in &model.routes {
        policies.push(route.edge.as_ref().and_then(|e| edge_runtime(e, &metrics)));
    }

    let (tls_tx, tls_rx) = watch::channel(None);
    let (renew_tx, renew_rx) = mpsc::channel(1);
    let certifier = GrpcCertifier {
        addr: config.control_plane_addr.clone(),
        server_id: config.control_plane_id.clone(),
        kx: config.kx,
        token: config.token.clone(),
        bundle: std::sync::Mutex::new(bundle),
    };
    let mut tasks = vec![tokio::spawn(pqmesh_sidecar::identity::maintain(
        certifier,
        config.key_alg,
        config.kx,
        tls_tx,
        renew_rx,
        metrics.clone(),
    ))];

    // One socket per port; listeners sharing it are told apart by SNI (HTTPS) or Host (HTTP).
    let mut bound = Vec::new();
    let mut ports: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
    let mut configs = Vec::new();
    for (i, l) in model.listeners.iter().enumerate() {
        let label = format!("{}/{}", l.gateway, l.name);
        configs.push(match &l.tls {
            Some(cert) => Some(outside_tls::server_config(cert, l.require_pq).map_err(|e| {
                StartError::Listener {
                    listener: label.clone(),
                    reason: e.to_string(),
                }
            })?),
            None => None,
        });
        ports.entry(l.port).or_default().push(i);
    }
    let mut sockets = Vec::new();
    for (port, indices) in ports {
        let addr = SocketAddr::new(config.listen_host, port);
        let socket = TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Listener {
                listener: format!("port {port}"),
                reason: format!("bind {addr}: {e}"),
            })?;
        let local = socket.local_addr().unwrap_or(addr);
        for i in &indices {
            let l = &model.listeners[*i];
            bound.push((format!("{}/{}", l.gateway, l.name), local));
        }
        sockets.push((Arc::<[usize]>::from(indices), socket));
    }
    let backends = backend::client(&model.backends, tls_rx.clone(), metrics.clone());
    let edge = Arc::new(Edge {
        token_failures: ratelimit::Limiter::new(
            proxy::TOKEN_FAILURES_PER_MINUTE,
            Duration::from_secs(60),
            proxy::TOKEN_FAILURE_BURST,
        ),
        model,
        policies,
        tls: tls_rx.clone(),
        backends,
        metrics: gateway_metrics,
    });
    let configs: Configs = configs
        .into_iter()
        .map(|c| c.map(std::sync::RwLock::new))
        .collect::<Vec<_>>()
        .into();
    for (i, l) in edge.model.listeners.iter().enumerate() {
        if let Some((ns, name)) = &l.cert_ref {
            tasks.push(tokio::spawn(watch_certificate(
                edge.clone(),
                configs.clone(),
                i,
                load::cert_dir(&config.dir, ns, name),
            )));
        }
    }
    let per_ip = Arc::new(PerIp {
        limit: config.max_connections_per_ip,
        open: Default::default(),
    });
    for (indices, socket) in sockets {
        tasks.push(tokio::spawn(serve_port(
            edge.clone(),
            indices,
            configs.clone(),
            socket,
            Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            per_ip.clone(),
        )));
    }
    // `pqmesh_ready` says what `/ready` says; the sidecar's control-plane gauge means nothing here
    // (review 7, F12).
    let _ = metrics
        .registry
        .unregister(Box::new(metrics.control_plane_connected.clone()));
    tasks.push(tokio::spawn({
        let (mut rx, ready) = (tls_rx.clone(), metrics.ready.clone());
        async move {
            loop {
                ready.set(i64::from(rx.borrow_and_update().is_some()));
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }));
    let admin_addr = spawn_admin(
        config.admin_addr,
        &metrics,
        tls_rx.clone(),
        &edge.model.verdicts,
    )
    .map_err(|source| StartError::Admin {
        addr: config.admin_addr,
        source,
    })?;
    tracing::info!(listeners = ?bound, %admin_addr, control_plane = %config.control_plane_addr, "gateway started");
    Ok(RunningGateway {
        admin_addr,
        listeners: bound,
        verdicts: edge.model.verdicts.clone(),
        metrics,
        tls: tls_rx,
        _renew: renew_tx,
        tasks,
    })
}

/// The admin port, on its own thread (the shared admin server of both daemons).
fn spawn_admin(
    addr: SocketAddr,
    metrics: &Metrics,
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    verdicts: &[Verdict],
) -> std::io::Result<SocketAddr> {
    use hyper::StatusCode;
    use pqmesh_mtls::admin::{render_metrics, Reply};
    let registry = metrics.registry.clone();
    let verdicts: String = verdicts
        .iter()
        .map(|v| {
            let state = |r: &Result<(), String>| match r {
                Ok(()) => "True".to_owned(),
                Err(e) => format!("False: {e}"),
            };
            format!(
                "{} {} ({}): Accepted={}; ResolvedRefs={}\n",
                v.kind,
                v.name,
                v.source,
                state(&v.accepted),
                state(&v.resolved_refs)
            )
        })
        .collect();
    let route: pqmesh_mtls::admin::Route = Arc::new(move |_method, path, _peer| match path {
        "/live" => Reply::text(StatusCode::OK, "live"),
        "/ready" if tls.borrow().is_some() => Reply::text(StatusCode::OK, "ready"),
        "/ready" => Reply::text(StatusCode::SERVICE_UNAVAILABLE, "no mesh certificate yet"),
        "/metrics" => render_metrics(&registry),
        "/verdicts" => Reply::text(StatusCode::OK, verdicts.clone()),
        _ => Reply::text(StatusCode::NOT_FOUND, "not found"),
    });
    pqmesh_mtls::admin::spawn(addr, route)
}

fn edge_runtime(e: &load::EdgeModel, metrics: &Metrics) -> Option<EdgeRuntime> {
    let (validator, scope_claim) = match (&e.token, &e.issuer) {
        (None, _) => (None, pqmesh_policy::ScopeClaim::default()),
        (Some(_), None) => return None,
        (Some(_), Some(issuer)) => {
            match pqmesh_sidecar::policy::validator_for(
                std::slice::from_ref(issuer),
                metrics.token.clone(),
            ) {
                Ok(v) => {
                    v.prefetch_keys();
                    (Some(v), issuer.scope_claim)
                }
                Err(err) => {
                    tracing::warn!(policy = %e.name, error = %err, "EdgePolicy's issuer is unusable; its route answers 503");
                    return None;
                }
            }
        }
    };
    let limiter = e.rate_limit.as_ref().map(|r| {
        (
            ratelimit::Limiter::new(
                r.requests,
                Duration::from_secs(u64::from(r.period_seconds)),
                r.burst.unwrap_or(r.requests),
            ),
            r.key,
            r.claim.clone(),
        )
    });
    Some(EdgeRuntime {
        validator,
        scope_claim,
        limiter,
    })
}

/// Each listener's outside TLS config (`None`: HTTP), replaced when its certificate changes.
type Configs = Arc<[Option<std::sync::RwLock<Arc<rustls::ServerConfig>>>]>;

/// How often certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(1);

/// Re-reads a listener's certificate when its files change; new connections get the new one
/// (open ones keep theirs). A change that does not load keeps the certificate in force.
async fn watch_certificate(
    edge: Arc<Edge>,
    configs: Configs,
    index: usize,
    dir: std::path::PathBuf,
) {
    let stamp = |dir: &std::path::Path| {
        ["tls.crt", "tls.key"].map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
    };
    let l = &edge.model.listeners[index];
    let label = format!("{}/{}", l.gateway, l.name);
    let mut last = stamp(&dir);
    loop {
        tokio::time::sleep(CERT_POLL).await;
        let now = stamp(&dir);
        if now == last {
            continue;
        }
        last = now;
        let loaded = load::read_cert(&dir)
            .and_then(|c| outside_tls::server_config(&c, l.require_pq).map_err(|e| e.to_string()));
        let outcome = match (loaded, &configs[index]) {
            (Ok(new), Some(slot)) => {
                *slot.write().unwrap_or_else(|p| p.into_inner()) = new;
                tracing::info!(listener = %label, "certificate reloaded");
                "ok"
            }
            (Err(e), _) => {
                tracing::warn!(listener = %label, error = %e, "certificate change not loaded; the previous certificate stays");
                "error"
            }
            (Ok(_), None) => "error",
        };
        edge.metrics
            .certificate_reloads
            .with_label_values(&[label.as_str(), outcome])
            .inc();
    }
}

/// Open connections per client IP (all ports), capped (review 7, F6).
struct PerIp {
    limit: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One open connection counted against its IP; uncounted when dropped.
struct IpSlot(Arc<PerIp>, std::net::IpAddr);

impl PerIp {
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

async fn serve_port(
    edge: Arc<Edge>,
    listeners: Arc<[usize]>,
    configs: Configs,
    socket: TcpListener,
    limit: Arc<tokio::sync::Semaphore>,
    per_ip: Arc<PerIp>,
) {
    let port = edge.model.listeners[listeners[0]].port;
    loop {
        let (tcp, client) = match socket.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and kin: say so and back off instead of spinning.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(port, %client, "connection refused: the listener's connection limit is reached");
            edge.metrics
                .connections_refused
                .with_label_values(&[&port.to_string(), "listener_limit"])
                .inc();
            continue;
        };
        let Some(slot) = per_ip.admit(client.ip()) else {
            tracing::debug!(port, %client, "connection refused: the client's connection limit is reached");
            edge.metrics
                .connections_refused
                .with_label_values(&[&port.to_string(), "per_ip_limit"])
                .inc();
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (edge, listeners, configs) = (edge.clone(), listeners.clone(), configs.clone());
        tokio::spawn(async move {
            serve_connection(edge, listeners, configs, tcp, client).await;
            drop((permit, slot));
        });
    }
}

async fn serve_connection(
    edge: Arc<Edge>,
    listeners: Arc<[usize]>,
    configs: Configs,
    tcp: tokio::net::TcpStream,
    client: SocketAddr,
) {
    let https = configs[listeners[0]].is_some();
    let scheme = if https { "https" } else { "http" };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let service = |listeners: Arc<[usize]>| {
        let edge = edge.clone();
        hyper::service::service_fn(move |req| {
            let (edge, listeners) = (edge.clone(), listeners.clone());
            async move {
                Ok::<_, std::convert::Infallible>(
                    proxy::handle(edge, listeners, client, scheme, req).await,
                )
            }
        })
    };
    if !https {
        let _ = builder
            .serve_connection(TokioIo::new(tcp), service(listeners))
            .await;
        return;
    }
    let fail = |label: &str, reason: &str| {
        edge.metrics
            .outside_handshake_failures
            .with_label_values(&[label, reason])
            .inc();
    };
    let port_label = format!("port {}", edge.model.listeners[listeners[0]].port);
    let handshake = async {
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = acceptor.await.map_err(|e| (port_label.clone(), e))?;
        let sni = start.client_hello().server_name().unwrap_or("").to_owned();
        let Some(index) = routes::listener_for(&edge.model.listeners, &listeners, &sni) else {
            return Err((
                port_label.clone(),
                std::io::Error::other(format!("no listener for SNI {sni:?}")),
            ));
        };
        let l = &edge.model.listeners[index];
        let label = format!("{}/{}", l.gateway, l.name);
        let config = configs[index]
            .as_ref()
            .map(|c| c.read().unwrap_or_else(|p| p.into_inner()).clone())
            .ok_or_else(|| (label.clone(), std::io::Error::other("not TLS")))?;
        let stream = start
            .into_stream(config)
            .await
            .map_err(|e| (label.clone(), e))?;
        Ok((index, label, stream))
    };
    let (index, label, stream) = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await
    {
        Ok(Ok(done)) => done,
        Ok(Err((label, e))) => {
            tracing::debug!(listener = %label, %client, error = %e, "outside TLS handshake failed");
            fail(&label, pqmesh_mtls::handshake_failure_reason(&e));
            return;
        }
        Err(_) => {
            fail(&port_label, "timeout");
            return;
        }
    };
    let conn = stream.get_ref().1;
    let group = conn
        .negotiated_key_exchange_group()
        .map(|g| pqmesh_mtls::provider::group_name(g.name()))
        .unwrap_or_else(|| "none".to_owned());
    let version = outside_tls::version_name(conn.protocol_version());
    edge.metrics
        .outside_handshakes
        .with_label_values(&[label.as_str(), version, group.as_str()])
        .inc();
    // The listener the SNI chose serves every request on this connection.
    let _ = builder
        .serve_connection(TokioIo::new(stream), service(Arc::from([index])))
        .await;
}

#[cfg(test)]
mod tests;
