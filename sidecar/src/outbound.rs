//! Outbound (15001): find the original destination and ask discovery what serves it.
//! - A pod address: connect with mTLS requiring its identity, or pass an unmeshed destination
//!   through / refuse it (`PQMESH_OUTBOUND_UNMESHED`).
//! - A Service address: pick one of its endpoints ([`crate::balance`]) and dial that endpoint's
//!   pod IP with mTLS requiring *that endpoint's* identity — once per connection, or once per
//!   request when the app speaks HTTP/2 with prior knowledge ([`crate::outbound_http2`]). A
//!   meshed endpoint never gets plaintext; an unmeshed one gets it only under `passthrough`. A
//!   failed connect tries another endpoint (at most [`crate::balance::MAX_ATTEMPTS`]).
//!
//! Explicit mode replaces discovery by one configured peer.

use std::net::SocketAddr;
use std::sync::Arc;

use pqmesh_mtls::tls::HandshakeInfo;
use pqmesh_mtls::SpiffeId;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::balance::{Balancer, InFlight, MAX_ATTEMPTS};
use crate::config::{OutboundTarget, Unmeshed};
use crate::discovery::{Discovery, Endpoint, Resolved};
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::original_dst::{canonical, OriginalDst};
use crate::outbound_observe::Observed;
use crate::proxy::{
    accept_until, relay, sniff, AppIo, Prefixed, TlsState, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT,
};
use crate::revocation::{until_revoked, RevokedState};
use crate::sniff::H2_PREFACE;

/// How the outbound listener decides where a connection goes.
pub enum Route {
    Explicit(OutboundTarget),
    Transparent {
        discovery: Discovery,
        unmeshed: Unmeshed,
        original_dst: Arc<dyn OriginalDst>,
        own_addr: SocketAddr,
    },
}

pub struct Outbound {
    pub route: Route,
    pub tls: TlsState,
    pub metrics: Arc<Metrics>,
    pub revoked: RevokedState,
    /// Ports whose protocol is not sniffed (server-first protocols): balanced per connection.
    pub opaque_ports: Vec<u16>,
    pub balancer: Balancer,
    pub http2: crate::outbound_http2::Pool,
}

pub async fn serve_outbound(
    listener: tokio::net::TcpListener,
    outbound: Arc<Outbound>,
    drain: Drain,
) {
    accept_until(listener, drain, "outbound", move |tcp, _remote| {
        let outbound = outbound.clone();
        async move { outbound.handle(tcp).await }
    })
    .await
}

enum Decision {
    Mesh {
        addr: String,
        peer: SpiffeId,
    },
    Passthrough(SocketAddr),
    Service {
        addr: SocketAddr,
        endpoints: Vec<Endpoint>,
    },
}

/// A connection to one upstream: mTLS to a sidecar (with the peer's identity and certificate
/// serial, watched for revocation) or plaintext to an unmeshed endpoint.
pub(crate) struct Upstream {
    pub io: Box<dyn AppIo>,
    pub peer: Option<(SpiffeId, Option<String>)>,
}

/// Whether the first bytes are HTTP/2's connection preface (`None`: not decided yet).
fn is_h2_preface(buf: &[u8]) -> Option<bool> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] != H2_PREFACE[..n] {
        Some(false)
    } else if n == H2_PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

impl Outbound {
    pub(crate) fn count(&self, outcome: &str) {
        self.metrics
            .connections
            .with_label_values(&["outbound", outcome])
            .inc();
        // The outbound side's policy: which destinations this workload may reach at all.
        let decision = match outcome {
            "established" | "passthrough" => Some(("allow", "allowed")),
            "denied_unmeshed" => Some(("deny", "unmeshed_destination")),
            "denied_revoked" => Some(("deny", "peer_revoked")),
            _ => None,
        };
        if let Some((decision, reason)) = decision {
            self.metrics
                .policy_decisions
                .with_label_values(&["outbound", decision, reason])
                .inc();
        }
    }

    fn unmeshed_setting(&self) -> Unmeshed {
        match &self.route {
            Route::Transparent { unmeshed, .. } => *unmeshed,
            Route::Explicit(_) => Unmeshed::Refuse,
        }
    }

    /// The endpoints of `service` this workload may use: meshed ones always, unmeshed ones only
    /// under `passthrough`. Refused (and counted) when none is left.
    fn usable(&self, service: SocketAddr, endpoints: &[Endpoint]) -> Result<Vec<Endpoint>, String> {
        let allow_plain = self.unmeshed_setting() == Unmeshed::Passthrough;
        let usable: Vec<Endpoint> = endpoints
            .iter()
            .filter(|e| e.identity.is_some() || allow_plain)
            .cloned()
            .collect();
        if usable.is_empty() {
            self.count("denied_unmeshed");
            return Err(format!(
                "service {service} has no meshed endpoint and this workload refuses unmeshed destinations"
            ));
        }
        Ok(usable)
    }

    /// The current endpoints of a Service address (asked again per HTTP/2 request, so endpoint
    /// changes reach requests on long-lived connections).
    pub(crate) async fn service_endpoints(
        &self,
        service: SocketAddr,
    ) -> Result<Vec<Endpoint>, String> {
        let Route::Transparent { discovery, .. } = &self.route else {
            return Err("explicit mode has no Services".into());
        };
        match discovery.resolve(service).await {
            Ok(Resolved::Service(eps)) => self.usable(service, &eps),
            // The address stopped being a Service: it is one destination now.
            Ok(Resolved::Meshed(id)) => Ok(vec![Endpoint {
                addr: service,
                identity: Some(id),
            }]),
            Ok(Resolved::NotMeshed) => self.usable(
                service,
                &[Endpoint {
                    addr: service,
                    identity: None,
                }],
            ),
            Err(e) => {
                self.count("discovery_unavailable");
                Err(e.to_string())
            }
        }
    }

    async fn decide(&self, app: &TcpStream) -> Result<Decision, String> {
        match &self.route {
            Route::Explicit(t) => Ok(Decision::Mesh {
                addr: t.peer_addr.clone(),
                peer: t.peer_id.clone(),
            }),
            Route::Transparent {
                discovery,
                unmeshed,
                original_dst,
                own_addr,
            } => {
                let orig = original_dst.original_dst(app).map(canonical).map_err(|e| {
                    self.count("no_original_destination");
                    format!("no original destination: {e}")
                })?;
                let local = app.local_addr().map(canonical).unwrap_or(*own_addr);
                if orig == *own_addr || orig == local {
                    self.count("denied_loop");
                    return Err("connection was not redirected (it would loop)".into());
                }
                match discovery.resolve(orig).await {
                    Ok(Resolved::Meshed(peer)) => Ok(Decision::Mesh {
                        addr: orig.to_string(),
                        peer,
                    }),
                    Ok(Resolved::Service(endpoints)) => Ok(Decision::Service {
                        addr: orig,
                        endpoints: self.usable(orig, &endpoints)?,
                    }),
                    Ok(Resolved::NotMeshed) if *unmeshed == Unmeshed::Passthrough => {
                        Ok(Decision::Passthrough(orig))
                    }
                    Ok(Resolved::NotMeshed) => {
                        self.count("denied_unmeshed");
                        Err(format!("{orig} is not in the mesh and this workload refuses unmeshed destinations"))
                    }
                    Err(e) => {
                        self.count("discovery_unavailable");
                        Err(e.to_string())
                    }
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, app: TcpStream) -> Result<(), String> {
        let _ = app.set_nodelay(true);
        match self.decide(&app).await? {
            Decision::Passthrough(orig) => {
                let upstream = self.connect_plain(orig).await?;
                let upstream = Observed::new(
                    upstream,
                    "outbound",
                    self.metrics.clone(),
                    "none".to_owned(),
                );
                relay(upstream, app, "outbound", &self.metrics).await;
                Ok(())
            }
            Decision::Mesh { addr, peer } => {
                let (stream, serial) = self.connect_mesh(&addr, &peer).await?;
                let upstream = Upstream {
                    io: Box::new(stream),
                    peer: Some((peer, serial)),
                };
                self.relay_watched(upstream, app).await;
                Ok(())
            }
            Decision::Service { addr, endpoints } => {
                self.handle_service(app, addr, endpoints).await
            }
        }
    }

    /// A connection to a Service address: HTTP/2 with prior knowledge is balanced per request,
    /// anything else per connection.
    async fn handle_service(
        self: Arc<Self>,
        mut app: TcpStream,
        service: SocketAddr,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), String> {
        let (h2, prefix) = if self.opaque_ports.contains(&service.port()) {
            (false, Vec::new())
        } else {
            let (verdict, prefix) = sniff(&mut app, H2_PREFACE.len(), is_h2_preface).await;
            (verdict == Some(true), prefix)
        };
        let app = Prefixed::new(prefix, app);
        if h2 {
            self.metrics
                .http_connections
                .with_label_values(&["outbound", "http2"])
                .inc();
            return crate::outbound_http2::serve(app, self.clone(), service)
                .await
                .map_err(|e| format!("HTTP/2 from the app to {service}: {e}"));
        }
        let (upstream, _in_flight, endpoint) = self.connect_balanced(service, &endpoints).await?;
        tracing::debug!(%service, endpoint = %endpoint.addr, identity = %endpoint.identity.as_ref().map_or_else(|| "none".to_owned(), |i| i.to_string()), "balanced connection");
        self.relay_watched(upstream, app).await;
        Ok(())
    }

    /// Picks an endpoint and connects to it; a failed connect passes the endpoint over for a
    /// while and tries another, up to [`MAX_ATTEMPTS`] distinct endpoints.
    pub(crate) async fn connect_balanced(
        &self,
        service: SocketAddr,
        endpoints: &[Endpoint],
    ) -> Result<(Upstream, InFlight, Endpoint), String> {
        let mut tried = Vec::new();
        let mut errors = Vec::new();
        while tried.len() < MAX_ATTEMPTS {
            let Some(endpoint) = self.balancer.pick(endpoints, &tried).cloned() else {
                break;
            };
            tried.push(endpoint.addr);
            let in_flight = self.balancer.start(endpoint.addr);
            match self.connect_endpoint(&endpoint).await {
                Ok(upstream) => {
                    self.balancer.succeeded(endpoint.addr);
                    return Ok((upstream, in_flight, endpoint));
                }
                Err(e) => {
                    tracing::info!(%service, endpoint = %endpoint.addr, error = %e, "endpoint failed; trying another");
                    self.balancer.failed(endpoint.addr);
                    errors.push(e);
                }
            }
        }
        Err(format!(
            "no endpoint of {service} reachable ({} tried): {}",
            tried.len(),
            errors.join("; ")
        ))
    }

    /// mTLS requiring the endpoint's identity, or plaintext to an unmeshed one (only ever in
    /// the candidate list under `passthrough`).
    pub(crate) async fn connect_endpoint(&self, endpoint: &Endpoint) -> Result<Upstream, String> {
        match &endpoint.identity {
            Some(peer) => {
                let (stream, serial) = self.connect_mesh(&endpoint.addr.to_string(), peer).await?;
                Ok(Upstream {
                    io: Box::new(stream),
                    peer: Some((peer.clone(), serial)),
                })
            }
            None => Ok(Upstream {
                io: Box::new(self.connect_plain(endpoint.addr).await?),
                peer: None,
            }),
        }
    }

    async fn connect_plain(&self, addr: SocketAddr) -> Result<TcpStream, String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => {
                let _ = t.set_nodelay(true);
                self.count("passthrough");
                Ok(t)
            }
            _ => {
                self.count("peer_unreachable");
                Err(format!("connect {addr} failed"))
            }
        }
    }

    /// Connects with mTLS requiring `peer`; returns the stream and the peer's certificate serial.
    async fn connect_mesh(
        &self,
        addr: &str,
        peer: &SpiffeId,
    ) -> Result<(TlsStream<TcpStream>, Option<String>), String> {
        let Some(tls) = self.tls.borrow().clone() else {
            self.count("no_certificate");
            return Err("no workload certificate yet".into());
        };
        let config = tls.client_for(peer).map_err(|e| e.to_string())?;
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.count("peer_unreachable");
                return Err(format!("connect {addr}: {e}"));
            }
            Err(_) => {
                self.count("peer_unreachable");
                return Err(format!("connect {addr}: timed out"));
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
                return Err(format!("TLS to {addr} ({peer}): {e}"));
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
        if self
            .revoked
            .borrow()
            .covers(peer, hs.peer_serial.as_deref())
        {
            self.count("denied_revoked");
            return Err(format!("{peer} at {addr} is revoked"));
        }
        // "established", not "allowed": in TLS 1.3 the server may still refuse our identity
        // after our side of the handshake completed (its own metrics say so).
        self.count("established");
        tracing::debug!(%peer, %addr, group = %hs.group, "outbound connection established");
        Ok((stream, hs.peer_serial))
    }

    /// Relays until either side is done, or until the peer is revoked.
    async fn relay_watched(&self, upstream: Upstream, app: impl AppIo) {
        let peer_label = self
            .metrics
            .peer_label(upstream.peer.as_ref().map(|(p, _)| p));
        let io = Observed::new(upstream.io, "outbound", self.metrics.clone(), peer_label);
        let Some((peer, serial)) = upstream.peer else {
            relay(io, app, "outbound", &self.metrics).await;
            return;
        };
        let revoked = until_revoked(self.revoked.clone(), peer.clone(), serial);
        tokio::select! {
            _ = relay(io, app, "outbound", &self.metrics) => {}
            _ = revoked => {
                self.metrics.revoked_connections_closed.with_label_values(&["outbound"]).inc();
                tracing::warn!(%peer, "closed a connection: the peer was revoked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_h2_preface_is_recognised_byte_by_byte() {
        assert_eq!(is_h2_preface(b""), None);
        assert_eq!(is_h2_preface(b"PRI * HTTP/2"), None);
        assert_eq!(is_h2_preface(H2_PREFACE), Some(true));
        assert_eq!(is_h2_preface(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_h2_preface(b"PRX"), Some(false));
        assert_eq!(is_h2_preface(b"\x16\x03\x01"), Some(false));
    }
}
