//! The control plane's one prometheus registry.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub certificates_issued: IntCounterVec,
    pub certificates_refused: IntCounterVec,
    pub certify_duration: HistogramVec,
    pub root_expiry: Gauge,
    pub serving_cert_expiry: Gauge,
    pub handshake_failures: IntCounterVec,
    pub discovery_streams: IntGauge,
    pub endpoints: IntGauge,
    pub policy_streams: IntGauge,
    pub policy_resources: IntGauge,
    pub policy_reloads: IntCounterVec,
    pub policy_objects_rejected: IntGauge,
    pub policy_snapshots_sent: IntCounter,
    pub policy_acks: IntCounter,
    pub policy_nacks: IntCounter,
    pub policy_compile_errors: IntCounter,
    pub policy_push_seconds: Histogram,
    pub ca_reloads: IntCounterVec,
    pub trusted_roots: IntGauge,
    pub sidecars_on_current_ca: IntGauge,
    pub sidecars_on_current_policy: IntGauge,
    pub revocation_reloads: IntCounterVec,
    pub revoked: IntGaugeVec,
    pub revoked_streams_closed: IntCounter,
    /// Re-reads of local-mode files other than policies and CA, by file and outcome.
    pub config_reloads: IntCounterVec,
    /// 1 while the file's current content is in force, 0 while an edit is refused.
    pub config_valid: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("pqmesh".into()), None).expect("static prefix is valid");
        let certificates_issued = IntCounterVec::new(
            Opts::new(
                "certificates_issued_total",
                "Workload certificates issued, by key algorithm",
            ),
            &["key_alg"],
        )
        .expect("static metric");
        let certificates_refused = IntCounterVec::new(
            Opts::new(
                "certificates_refused_total",
                "Certify requests refused, by reason",
            ),
            &["reason"],
        )
        .expect("static metric");
        let certify_duration = HistogramVec::new(
            HistogramOpts::new(
                "certify_duration_seconds",
                "Time to answer a Certify request",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["outcome"],
        )
        .expect("static metric");
        let root_expiry = Gauge::new(
            "ca_root_expiry_timestamp_seconds",
            "notAfter of the active CA root",
        )
        .expect("static metric");
        let serving_cert_expiry = Gauge::new(
            "serving_cert_expiry_timestamp_seconds",
            "notAfter of the control plane's own serving certificate",
        )
        .expect("static metric");
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "tls_handshake_failures_total",
                "TLS handshakes refused on the gRPC port, by reason",
            ),
            &["reason"],
        )
        .expect("static metric");
        for c in [
            &certificates_issued,
            &certificates_refused,
            &handshake_failures,
        ] {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
        }
        registry
            .register(Box::new(certify_duration.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(root_expiry.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(serving_cert_expiry.clone()))
            .expect("unique metric");
        let discovery_streams =
            IntGauge::new("discovery_streams", "Connected sidecar discovery streams")
                .expect("static metric");
        registry
            .register(Box::new(discovery_streams.clone()))
            .expect("unique metric");
        let endpoints =
            IntGauge::new("endpoints", "Endpoints in the discovery table").expect("static metric");
        registry
            .register(Box::new(endpoints.clone()))
            .expect("unique metric");
        let policy_streams = IntGauge::new("policy_streams", "Connected sidecar policy streams")
            .expect("static metric");
        let policy_resources = IntGauge::new(
            "policy_resources",
            "TokenIssuers and AccessPolicies in force",
        )
        .expect("static metric");
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "policy_reloads_total",
                "Policy source changes, by outcome (ok: every object accepted; invalid: some object refused, it alone keeps its last good version)",
            ),
            &["outcome"],
        )
        .expect("static metric");
        let policy_objects_rejected = IntGauge::new(
            "policy_objects_rejected",
            "TokenIssuers and AccessPolicies whose current version is refused (Accepted=False)",
        )
        .expect("static metric");
        registry
            .register(Box::new(policy_objects_rejected.clone()))
            .expect("unique metric");
        let policy_snapshots_sent = IntCounter::new(
            "policy_snapshots_sent_total",
            "Policy snapshots pushed to sidecars",
        )
        .expect("static metric");
        let policy_acks =
            IntCounter::new("policy_acks_total", "Policy snapshots ACKed by sidecars")
                .expect("static metric");
        let policy_nacks = IntCounter::new(
            "policy_nacks_total",
            "Policy snapshots rejected (NACKed) by sidecars",
        )
        .expect("static metric");
        let policy_compile_errors = IntCounter::new(
            "policy_compile_errors_total",
            "Workload policies that could not be compiled (e.g. a missing secret)",
        )
        .expect("static metric");
        let policy_push_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "policy_push_seconds",
                "Time from sending a policy snapshot to its ACK",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("static metric");
        registry
            .register(Box::new(policy_streams.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(policy_resources.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(policy_reloads.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(policy_snapshots_sent.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(policy_acks.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(policy_nacks.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(policy_compile_errors.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(policy_push_seconds.clone()))
            .expect("unique metric");
        let ca_reloads = IntCounterVec::new(
            Opts::new(
                "ca_reloads_total",
                "Changes of the CA roots, by outcome (ok, invalid: last good kept)",
            ),
            &["outcome"],
        )
        .expect("static metric");
        let trusted_roots =
            IntGauge::new("ca_trusted_roots", "Roots in the trust bundle").expect("static metric");
        let sidecars_on_current_ca = IntGauge::new(
            "sidecars_on_current_ca",
            "Connected sidecars whose certificate was issued under the current CA version",
        )
        .expect("static metric");
        let sidecars_on_current_policy = IntGauge::new(
            "sidecars_on_current_policy",
            "Connected sidecars that ACKed the policy snapshot last sent to them",
        )
        .expect("static metric");
        let revocation_reloads = IntCounterVec::new(
            Opts::new(
                "revocation_reloads_total",
                "Changes of the revocation list, by outcome (ok, invalid: last good kept)",
            ),
            &["outcome"],
        )
        .expect("static metric");
        let revoked = IntGaugeVec::new(
            Opts::new("revoked_entries", "Entries in the revocation list, by kind"),
            &["kind"],
        )
        .expect("static metric");
        let revoked_streams_closed = IntCounter::new(
            "revoked_streams_closed_total",
            "Policy streams refused or closed because the sidecar's identity or certificate is revoked",
        )
        .expect("static metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Re-reads of a changed local-mode file (bootstrap-tokens.yaml, endpoints.yaml), by file and outcome (ok, invalid: last good kept)",
            ),
            &["file", "outcome"],
        )
        .expect("static metric");
        let config_valid = IntGaugeVec::new(
            Opts::new(
                "config_valid",
                "1 while a local-mode file's current content is in force, 0 while its last edit is refused (the last good version serves)",
            ),
            &["file"],
        )
        .expect("static metric");
        for m in [
            Box::new(config_reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(config_valid.clone()),
            Box::new(ca_reloads.clone()),
            Box::new(trusted_roots.clone()),
            Box::new(sidecars_on_current_ca.clone()),
            Box::new(sidecars_on_current_policy.clone()),
            Box::new(revocation_reloads.clone()),
            Box::new(revoked.clone()),
            Box::new(revoked_streams_closed.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        pqmesh_mtls::process_metrics::register_build_info(&registry, "control-plane")
            .expect("build_info registers once");
        let metrics = Self {
            registry,
            config_reloads,
            config_valid,
            ca_reloads,
            trusted_roots,
            sidecars_on_current_ca,
            sidecars_on_current_policy,
            revocation_reloads,
            revoked,
            revoked_streams_closed,
            certificates_issued,
            certificates_refused,
            certify_duration,
            root_expiry,
            serving_cert_expiry,
            handshake_failures,
            discovery_streams,
            endpoints,
            policy_streams,
            policy_resources,
            policy_reloads,
            policy_objects_rejected,
            policy_snapshots_sent,
            policy_acks,
            policy_nacks,
            policy_compile_errors,
            policy_push_seconds,
        };
        metrics.zero_known_series();
        metrics
    }

    /// Creates every label set known before the first event at zero, so `rate()` and absence
    /// alerts work from start-up.
    fn zero_known_series(&self) {
        use pqmesh_mtls::process_metrics::zero_counters;
        let outcomes: &[&[&str]] = &[&["ok"], &["invalid"]];
        zero_counters(&self.policy_reloads, outcomes);
        zero_counters(&self.ca_reloads, outcomes);
        zero_counters(&self.revocation_reloads, outcomes);
        for file in [crate::tokens::TOKENS_FILE, crate::endpoints::ENDPOINTS_FILE] {
            zero_counters(&self.config_reloads, &[&[file, "ok"], &[file, "invalid"]]);
        }
        for alg in ["ecdsa-p256", "ml-dsa-44", "ml-dsa-65"] {
            self.certificates_issued.with_label_values(&[alg]);
        }
        for outcome in ["issued", "refused"] {
            self.certify_duration.with_label_values(&[outcome]);
        }
        for kind in ["identity", "serial"] {
            self.revoked.with_label_values(&[kind]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
