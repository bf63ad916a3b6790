//! The gateway's metrics, in the registry of the sidecar `Metrics` it reuses (one registry per
//! binary: certificate renewals, outbound handshakes and token metrics come from there).

use prometheus::{IntCounterVec, Opts};

#[derive(Clone)]
pub struct GatewayMetrics {
    /// Outside clients' handshakes: listener, TLS version, key-exchange group (the PQ share).
    pub outside_handshakes: IntCounterVec,
    pub outside_handshake_failures: IntCounterVec,
    /// Requests by route and status, and what the edge decided.
    pub requests: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub certificate_reloads: IntCounterVec,
    /// Connections closed at accept by the listener or per-IP cap.
    pub connections_refused: IntCounterVec,
    /// Connections closed because no request came in time, or they idled (`watchdog`).
    pub connections_timed_out: IntCounterVec,
    /// Abuse signals raised (`abuse`), by signal; the client is in the log event.
    pub abuse_signals: IntCounterVec,
}

impl GatewayMetrics {
    pub fn new(registry: &prometheus::Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registers once");
            c
        };
        GatewayMetrics {
            outside_handshakes: counter(
                "gateway_tls_handshakes_total",
                "Handshakes of outside clients by listener, TLS version and key-exchange group",
                &["listener", "version", "group"],
            ),
            outside_handshake_failures: counter(
                "gateway_tls_handshake_failures_total",
                "Failed handshakes of outside clients by listener and reason",
                &["listener", "reason"],
            ),
            requests: counter(
                "gateway_requests_total",
                "Requests by route (or none), status and decision",
                &["route", "status", "decision"],
            ),
            certificate_reloads: counter(
                "gateway_certificate_reloads_total",
                "Listener certificates re-read after their files changed, by listener and outcome",
                &["listener", "outcome"],
            ),
            connections_refused: counter(
                "gateway_connections_refused_total",
                "Outside connections closed at accept, by port and reason (listener_limit, per_ip_limit)",
                &["port", "reason"],
            ),
            connections_timed_out: counter(
                "gateway_connections_timed_out_total",
                "Outside connections closed by port: no first request within 10 s of accept or handshake, or idle (60 s; 300 s with a request in flight)",
                &["port"],
            ),
            abuse_signals: counter(
                "gateway_abuse_signals_total",
                "Abuse signals raised per client and window (refusals, enumeration, unexpected, untracked); the client is named in the pqmesh::abuse log event",
                &["signal"],
            ),
            rate_limited: counter(
                "gateway_rate_limited_total",
                "Requests refused with 429 by route",
                &["route"],
            ),
        }
    }
}
