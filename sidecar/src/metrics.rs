//! The sidecar's one prometheus registry. Inbound and outbound record the same request,
//! latency, handshake and decision metrics, told apart by a `direction` label; every label set
//! known in advance exists at zero from start-up, so `rate()` and absence alerts work before the
//! first event. The full list, with meanings, is docs/metrics.md.

use std::sync::Arc;

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
            "HTTP requests by direction and proxying outcome (inbound: forwarded, upgraded, app_unreachable, bad_request, body_too_large, ...; outbound: forwarded, no_endpoint, upstream_failed)",
            &["direction", "outcome"],
        );
        let policy_decisions = counter(
            &registry,
            "policy_decisions_total",
            "Policy decisions, by direction, decision and reason (inbound: the workload's policy per request or connection; outbound: unmeshed or revoked destinations refused, mesh connections established)",
            &["direction", "decision", "reason"],
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
                "Time from a request's arrival to the response headers, by direction and status class (inbound: incl. policy and token checks and the app; outbound: the whole mesh round trip)",
            )
            // From 50 µs: a mesh hop on one node takes a few hundred microseconds.
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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
            "HTTP requests by direction, peer identity (inbound: the caller, outbound: the server; at most 512 identities, then \"other\"; \"none\" for plaintext) and status class",
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
        pqmesh_mtls::process_metrics::register_build_info(&registry, "sidecar")
            .expect("build_info registers once");
        let metrics = Self {
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
        };
        metrics.zero_known_series();
        metrics
    }

    /// Creates every label set known before the first event at zero (peers, issuers and policy
    /// names are not known here: they appear with their first event).
    fn zero_known_series(&self) {
        use pqmesh_mtls::process_metrics::zero_counters;
        for direction in DIRECTIONS {
            for class in STATUS_CLASSES {
                self.request_duration.with_label_values(&[direction, class]);
            }
            for group in ["X25519MLKEM768", "X25519", "secp256r1"] {
                for scheme in ["ecdsa_secp256r1_sha256", "ML-DSA-65"] {
                    self.handshakes
                        .with_label_values(&[direction, group, scheme]);
                }
            }
            for reason in [
                "timeout",
                "wrong_identity",
                "untrusted_certificate",
                "certificate_validity",
                "no_client_certificate",
                "no_common_group",
                "protocol_version",
                "connection_closed",
            ] {
                self.handshake_failures
                    .with_label_values(&[direction, reason]);
            }
            for flow in ["to_app", "from_app"] {
                self.bytes.with_label_values(&[direction, flow]);
            }
            for protocol in ["http1", "http2"] {
                self.http_connections
                    .with_label_values(&[direction, protocol]);
            }
            self.revoked_connections_closed
                .with_label_values(&[direction]);
            self.policy_decisions
                .with_label_values(&[direction, "allow", "allowed"]);
            self.requests.with_label_values(&[direction, "forwarded"]);
        }
        for outcome in [
            "allowed",
            "plaintext_permitted",
            "denied_plaintext",
            "denied_identity",
            "denied_revoked",
            "denied_policy",
            "no_certificate",
            "no_policy",
            "app_unreachable",
        ] {
            self.connections.with_label_values(&["inbound", outcome]);
        }
        for outcome in [
            "established",
            "passthrough",
            "peer_unreachable",
            "no_certificate",
            "denied_unmeshed",
            "denied_revoked",
            "discovery_unavailable",
        ] {
            self.connections.with_label_values(&["outbound", outcome]);
        }
        for reason in [
            "peer_not_allowed",
            "plaintext_refused",
            "no_policy_for_port",
            "token_missing",
            "token_invalid",
            "token_unavailable",
            "insufficient_scope",
            "claim_mismatch",
            "no_rule_matched",
        ] {
            self.policy_decisions
                .with_label_values(&["inbound", "deny", reason]);
        }
        for reason in ["unmeshed_destination", "peer_revoked"] {
            self.policy_decisions
                .with_label_values(&["outbound", "deny", reason]);
        }
        for outcome in [
            "app_unreachable",
            "bad_request",
            "body_too_large",
            "upgraded",
        ] {
            self.requests.with_label_values(&["inbound", outcome]);
        }
        for outcome in ["no_endpoint", "upstream_failed"] {
            self.requests.with_label_values(&["outbound", outcome]);
        }
        zero_counters(&self.cert_renewals, &[&["ok"], &["error"]]);
        zero_counters(&self.policy_updates, &[&["applied"], &["rejected"]]);
        for stream in ["policy", "discovery"] {
            self.control_plane_disconnects.with_label_values(&[stream]);
            self.control_plane_connect_failures
                .with_label_values(&[stream]);
        }
        for outcome in [
            "accepted",
            "malformed",
            "inactive",
            "unknown_issuer",
            "introspection_unavailable",
            "jwks_unavailable",
        ] {
            self.token.authentications.with_label_values(&[outcome]);
        }
    }

    /// One connection's request series towards or from `peer_label` (see [`RequestSeries`]).
    pub fn request_series(
        self: &Arc<Self>,
        direction: &'static str,
        peer_label: String,
    ) -> RequestSeries {
        RequestSeries {
            metrics: self.clone(),
            direction,
            peer_label,
            classes: Default::default(),
        }
    }
}

pub const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// The status class label of an HTTP status code; a code outside 100..=599 (HTTP allows three
/// digits, RFC 9110 defines these classes) is `other`, never blamed on the server as 5xx.
pub fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// The golden request series of one connection (one direction, one peer), each status class
/// looked up on first use: a labelled lookup hashes the labels and takes a lock, too much to
/// repeat per request.
pub struct RequestSeries {
    metrics: Arc<Metrics>,
    direction: &'static str,
    peer_label: String,
    classes: [std::sync::OnceLock<ClassSeries>; STATUS_CLASSES.len()],
}

struct ClassSeries {
    duration: prometheus::Histogram,
    by_peer: prometheus::IntCounter,
}

impl RequestSeries {
    /// Records one finished request: latency (to the response head) and the per-peer count.
    pub fn observe(&self, status: u16, elapsed: std::time::Duration) {
        let i = status_class(status);
        let series = self.classes[i].get_or_init(|| ClassSeries {
            duration: self
                .metrics
                .request_duration
                .with_label_values(&[self.direction, STATUS_CLASSES[i]]),
            by_peer: self.metrics.peer_requests.with_label_values(&[
                self.direction,
                &self.peer_label,
                STATUS_CLASSES[i],
            ]),
        });
        series.duration.observe(elapsed.as_secs_f64());
        series.by_peer.inc();
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
