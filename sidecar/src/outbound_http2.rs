//! Per-request balancing for HTTP/2 (and so gRPC) to a Service: the app's connection is served
//! as HTTP/2 here, and each request goes to the endpoint [`crate::balance`] picks, over one
//! pooled, multiplexed mTLS connection per endpoint (requiring that endpoint's identity; h2c to
//! an unmeshed endpoint, only under `passthrough`). Without this a gRPC client's one long-lived
//! connection would pin all its calls to one backend. The Service's endpoints are looked up per
//! request, so endpoint changes reach requests on connections that are already open. A request
//! is retried on another endpoint only when it was never sent (connect failed, or the pooled
//! connection had closed); once sent, its failure is the app's to see (502).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pqmesh_mtls::SpiffeId;
use tokio::time::Instant;

use crate::balance::MAX_ATTEMPTS;
use crate::discovery::Endpoint;
use crate::http_proxy::{error_response, ProxyBody, MAX_HEADER_BYTES};
use crate::outbound::Outbound;
use crate::proxy::AppIo;
use crate::revocation::until_revoked;

/// A pooled connection unused this long is dropped from the pool (it closes once its last
/// request is done), so endpoints that went away do not keep connections open.
const IDLE_FOR: Duration = Duration::from_secs(60);
const MAX_CONCURRENT_STREAMS: u32 = 256;

struct Pooled {
    identity: Option<SpiffeId>,
    sender: SendRequest<Incoming>,
    used: Instant,
}

/// One multiplexed HTTP/2 connection per endpoint, shared by every app connection.
#[derive(Default)]
pub struct Pool {
    senders: Mutex<HashMap<SocketAddr, Pooled>>,
    /// One connect at a time per endpoint: concurrent first requests share its connection
    /// instead of each opening (and handshaking) their own.
    connecting: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Pooled>> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, endpoint: &Endpoint) -> Option<SendRequest<Incoming>> {
        let now = Instant::now();
        let mut senders = self.lock();
        senders.retain(|_, p| !p.sender.is_closed() && now.duration_since(p.used) < IDLE_FOR);
        let pooled = senders.get_mut(&endpoint.addr)?;
        // Same address, other identity (a pod replaced by another workload): a new connection.
        if pooled.identity != endpoint.identity {
            return None;
        }
        pooled.used = now;
        Some(pooled.sender.clone())
    }

    fn forget(&self, addr: SocketAddr) {
        self.lock().remove(&addr);
    }

    /// Pooled connections (for tests and `/config_dump`-style introspection).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn sender(
        &self,
        outbound: &Outbound,
        endpoint: &Endpoint,
    ) -> Result<SendRequest<Incoming>, String> {
        if let Some(sender) = self.cached(endpoint) {
            return Ok(sender);
        }
        let gate = self
            .connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint.addr)
            .or_default()
            .clone();
        let _connecting = gate.lock().await;
        if let Some(sender) = self.cached(endpoint) {
            return Ok(sender);
        }
        let result = self.connect(outbound, endpoint).await;
        let mut connecting = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
        // The last one out removes the gate (the map holds one reference, this call another).
        if Arc::strong_count(&gate) <= 2 {
            connecting.remove(&endpoint.addr);
        }
        result
    }

    async fn connect(
        &self,
        outbound: &Outbound,
        endpoint: &Endpoint,
    ) -> Result<SendRequest<Incoming>, String> {
        let upstream = outbound.connect_endpoint(endpoint).await?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .handshake::<_, Incoming>(TokioIo::new(upstream.io))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {}: {e}", endpoint.addr))?;
        let revoked = outbound.revoked.clone();
        let metrics = outbound.metrics.clone();
        let addr = endpoint.addr;
        tokio::spawn(async move {
            match upstream.peer {
                Some((peer, serial)) => tokio::select! {
                    _ = connection => {}
                    _ = until_revoked(revoked, peer.clone(), serial) => {
                        metrics.revoked_connections_closed.with_label_values(&["outbound"]).inc();
                        tracing::warn!(%peer, %addr, "closed a pooled HTTP/2 connection: the peer was revoked");
                    }
                },
                None => {
                    let _ = connection.await;
                }
            }
        });
        self.lock().insert(
            endpoint.addr,
            Pooled {
                identity: endpoint.identity.clone(),
                sender: sender.clone(),
                used: Instant::now(),
            },
        );
        Ok(sender)
    }
}

/// Serves the app's HTTP/2 connection to `service`, balancing each request.
pub async fn serve(
    app: impl AppIo + 'static,
    outbound: Arc<Outbound>,
    service: SocketAddr,
) -> Result<(), hyper::Error> {
    let handler = hyper::service::service_fn(move |req| {
        let outbound = outbound.clone();
        async move { Ok::<_, Infallible>(forward(req, &outbound, service).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .serve_connection(TokioIo::new(app), handler)
        .await
}

/// `forward`, recorded in the golden request metrics (outbound direction, the endpoint's
/// identity as peer).
async fn forward(
    req: Request<Incoming>,
    outbound: &Outbound,
    service: SocketAddr,
) -> Response<ProxyBody> {
    let started = std::time::Instant::now();
    let (resp, peer, outcome) = forward_to_endpoint(req, outbound, service).await;
    let metrics = &outbound.metrics;
    let series = metrics.request_series("outbound", metrics.peer_label(peer.as_ref()));
    series.observe(resp.status().as_u16(), started.elapsed());
    metrics
        .requests
        .with_label_values(&["outbound", outcome])
        .inc();
    resp
}

/// The response, the identity of the endpoint that gave it (`None`: plaintext or none reached)
/// and the outcome label.
async fn forward_to_endpoint(
    req: Request<Incoming>,
    outbound: &Outbound,
    service: SocketAddr,
) -> (Response<ProxyBody>, Option<SpiffeId>, &'static str) {
    let endpoints = match outbound.service_endpoints(service).await {
        Ok(e) => e,
        Err(e) => {
            return (
                error_response(StatusCode::SERVICE_UNAVAILABLE, &e),
                None,
                "no_endpoint",
            )
        }
    };
    let mut pending = req;
    let mut tried = Vec::new();
    let mut errors = Vec::new();
    while tried.len() < MAX_ATTEMPTS {
        let Some(endpoint) = outbound.balancer.pick(&endpoints, &tried).cloned() else {
            break;
        };
        tried.push(endpoint.addr);
        let in_flight = outbound.balancer.start(endpoint.addr);
        let mut sender = match outbound.http2.sender(outbound, &endpoint).await {
            Ok(s) => {
                outbound.balancer.succeeded(endpoint.addr);
                s
            }
            Err(e) => {
                outbound.balancer.failed(endpoint.addr);
                errors.push(e);
                continue;
            }
        };
        match sender.try_send_request(pending).await {
            // In flight until the response body is done or dropped.
            Ok(resp) => {
                let resp = resp.map(move |body| {
                    body.map_frame(move |frame| {
                        let _ = &in_flight;
                        frame
                    })
                    .boxed()
                });
                return (resp, endpoint.identity, "forwarded");
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => {
                    outbound.http2.forget(endpoint.addr);
                    errors.push(format!("{}: {}", endpoint.addr, e.error()));
                    pending = unsent;
                }
                None => {
                    let resp = error_response(
                        StatusCode::BAD_GATEWAY,
                        &format!("request to {} failed: {}", endpoint.addr, e.error()),
                    );
                    return (resp, endpoint.identity, "upstream_failed");
                }
            },
        }
    }
    let resp = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "no endpoint of {service} reachable ({} tried): {}",
            tried.len(),
            errors.join("; ")
        ),
    );
    (resp, None, "no_endpoint")
}
