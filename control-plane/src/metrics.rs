//! The control plane's one prometheus registry.

use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

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
        Self {
            registry,
            certificates_issued,
            certificates_refused,
            certify_duration,
            root_expiry,
            serving_cert_expiry,
            handshake_failures,
            discovery_streams,
            endpoints,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
