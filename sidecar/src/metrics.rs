//! The sidecar's one prometheus registry.

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub handshakes: IntCounterVec,
    pub handshake_failures: IntCounterVec,
    pub connections: IntCounterVec,
    pub connections_open: IntGauge,
    pub bytes: IntCounterVec,
    pub cert_expiry: Gauge,
    pub cert_renewals: IntCounterVec,
    pub http_connections: IntCounterVec,
    pub requests: IntCounterVec,
    pub policy_decisions: IntCounterVec,
    pub policy_updates: IntCounterVec,
    pub policy_policies: IntGauge,
    /// 1 for the policy version in force (one series at a time).
    pub policy_version: IntGaugeVec,
    pub request_duration: HistogramVec,
    pub trust_bundle_roots: IntGauge,
    pub revocation_entries: IntGauge,
    pub revoked_connections_closed: IntCounterVec,
    /// Connections still open while draining.
    pub draining_connections: IntGauge,
    pub peer_requests: IntCounterVec,
    /// Allowed requests by AccessPolicy and rule index (both bounded by the pushed policy).
    pub policy_allows: IntCounterVec,
    /// Peers that have a series of their own in `peer_requests` (bounded).
    peers_seen: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Token outcomes, introspection and JWKS counters (shared by every policy's validator).
    pub token: crate::token::TokenMetrics,
    /// 1 while every stream to the control plane is connected, 0 during an outage.
    pub control_plane_connected: IntGauge,
    /// Established control-plane streams that ended, by stream.
    pub control_plane_disconnects: IntCounterVec,
    /// Attempts to open a control-plane stream that failed, by stream.
    pub control_plane_connect_failures: IntCounterVec,
    /// 1 while `/ready` answers 200.
    pub ready: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("pqmesh".into()), None).expect("static prefix");
        let handshakes = counter(
            &registry,
            "tls_handshakes_total",
            "Completed mesh TLS handshakes, by direction, negotiated key-exchange group and peer signature scheme",
            &["direction", "group", "signature_scheme"],
        );
        let handshake_failures = counter(
            &registry,
            "tls_handshake_failures_total",
            "Failed mesh TLS handshakes, by direction and reason",
            &["direction", "reason"],
        );
        let connections = counter(
            &registry,
            "connections_total",
            "Proxied connections, by direction and outcome",
            &["direction", "outcome"],
        );
        let bytes = counter(
            &registry,
            "proxied_bytes_total",
            "Bytes proxied, by direction and flow (to_app / from_app)",
            &["direction", "flow"],
        );
        let cert_renewals = counter(
            &registry,
            "certificate_renewals_total",
            "Certify attempts, by outcome",
            &["outcome"],
        );
        let http_connections = counter(
            &registry,
            "http_connections_total",
            "Connections proxied per request, by direction and protocol",
            &["direction", "protocol"],
        );
        let requests = counter(
            &registry,
            "http_requests_total",
            "HTTP requests proxied to the app, by direction and outcome (forwarded, upgraded, app_unreachable, bad_request)",
            &["direction", "outcome"],
        );
        let policy_decisions = counter(
            &registry,
            "policy_decisions_total",
            "Inbound policy decisions, by decision and reason",
            &["decision", "reason"],
        );
        let policy_updates = counter(
            &registry,
            "policy_updates_total",
            "Policy snapshots received, by outcome (applied, rejected)",
            &["outcome"],
        );
        let policy_policies = IntGauge::new(
            "policy_access_policies",
            "AccessPolicies selecting this workload",
        )
        .expect("static metric");
        registry
            .register(Box::new(policy_policies.clone()))
            .expect("unique metric");
        let connections_open =
            IntGauge::new("connections_open", "Proxied connections currently open")
                .expect("static metric");
        registry
            .register(Box::new(connections_open.clone()))
            .expect("unique metric");
        let cert_expiry = Gauge::new(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the workload certificate in use",
        )
        .expect("static metric");
        registry
            .register(Box::new(cert_expiry.clone()))
            .expect("unique metric");
        let policy_version = IntGaugeVec::new(
            Opts::new(
                "policy_version_info",
                "1 for the policy snapshot version in force",
            ),
            &["version"],
        )
        .expect("static metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from a request's arrival to the app's response headers (incl. policy and token checks), by direction and status class",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["direction", "status_class"],
        )
        .expect("static metric");
        let trust_bundle_roots = IntGauge::new(
            "trust_bundle_roots",
            "Roots in the trust bundle of the certificate in use",
        )
        .expect("static metric");
        let revocation_entries = IntGauge::new(
            "revocation_entries",
            "Revoked identities and serials enforced",
        )
        .expect("static metric");
        let draining_connections = IntGauge::new(
            "draining_connections",
            "Connections still open after a shutdown began",
        )
        .expect("static metric");
        let control_plane_connected = IntGauge::new(
            "control_plane_connected",
            "1 while every stream to the control plane (policy; discovery in transparent mode) is connected",
        )
        .expect("static metric");
        let ready = IntGauge::new(
            "ready",
            "1 while the sidecar can serve (/ready answers 200): an unexpired certificate, a policy applied, discovery connected once",
        )
        .expect("static metric");
        for m in [
            Box::new(policy_version.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(control_plane_connected.clone()),
            Box::new(ready.clone()),
            Box::new(request_duration.clone()),
            Box::new(trust_bundle_roots.clone()),
            Box::new(revocation_entries.clone()),
            Box::new(draining_connections.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        let revoked_connections_closed = counter(
            &registry,
            "revoked_connections_closed_total",
            "Established connections closed because the peer was revoked, by direction",
            &["direction"],
        );
        let peer_requests = counter(
            &registry,
            "peer_requests_total",
            "HTTP requests by direction, caller identity (at most 512 identities, then \"other\"; \"none\" for plaintext) and status class",
            &["direction", "peer", "status_class"],
        );
        let policy_allows = counter(
            &registry,
            "policy_allows_total",
            "Requests allowed, by AccessPolicy (namespace/name) and the index of the rule that matched (none: the policy has no rules)",
            &["policy", "rule"],
        );
        let control_plane_disconnects = counter(
            &registry,
            "control_plane_disconnects_total",
            "Established streams to the control plane that ended, by stream (policy, discovery)",
            &["stream"],
        );
        let control_plane_connect_failures = counter(
            &registry,
            "control_plane_connect_failures_total",
            "Attempts to open a stream to the control plane that failed, by stream (policy, discovery)",
            &["stream"],
        );
        let token =
            crate::token::TokenMetrics::new(&registry).expect("token metrics register once");
        Self {
            control_plane_connected,
            control_plane_disconnects,
            control_plane_connect_failures,
            ready,
            policy_allows,
            peer_requests,
            peers_seen: Default::default(),
            policy_version,
            request_duration,
            trust_bundle_roots,
            revocation_entries,
            revoked_connections_closed,
            draining_connections,
            token,
            registry,
            handshakes,
            handshake_failures,
            connections,
            connections_open,
            bytes,
            cert_expiry,
            cert_renewals,
            http_connections,
            requests,
            policy_decisions,
            policy_updates,
            policy_policies,
        }
    }
}

/// Distinct peer identities that get their own series; the rest count as "other", so a flood
/// of identities cannot grow the registry without bound.
const MAX_PEER_SERIES: usize = 512;

impl Metrics {
    /// The `peer` label for a caller: its SPIFFE ID while fewer than [`MAX_PEER_SERIES`] peers
    /// have a series, then "other"; "none" for a plaintext caller. Resolved once per connection.
    pub fn peer_label(&self, peer: Option<&pqmesh_mtls::SpiffeId>) -> String {
        match peer {
            None => "none".to_owned(),
            Some(p) => {
                let id = p.to_string();
                let mut seen = self.peers_seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.contains(&id) || seen.len() < MAX_PEER_SERIES {
                    seen.insert(id.clone());
                    id
                } else {
                    "other".to_owned()
                }
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_series_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_PEER_SERIES + 100 {
            let id =
                pqmesh_mtls::SpiffeId::new("cluster.local", "shop", &format!("sa{i}")).unwrap();
            let label = m.peer_label(Some(&id));
            m.peer_requests
                .with_label_values(&["inbound", &label, "2xx"])
                .inc();
        }
        m.peer_requests
            .with_label_values(&["inbound", &m.peer_label(None), "4xx"])
            .inc();
        let series = m.peer_requests.clone();
        let family = prometheus::core::Collector::collect(&series);
        let count = family[0].get_metric().len();
        assert_eq!(
            count,
            MAX_PEER_SERIES + 2,
            "512 peers, \"other\" and \"none\""
        );
        assert_eq!(
            series.with_label_values(&["inbound", "other", "2xx"]).get(),
            100
        );
    }
}
