//! CA throughput: Certify calls against a control plane process, `concurrency` in flight over a
//! few HTTP/2 channels, each with a CSR made beforehand (key generation is the sidecar's cost, not
//! the CA's). The CA verifies the CSR's proof of possession and signs a leaf on every call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pqmesh_mtls::tls::{anonymous_client_config, ALPN_H2};
use pqmesh_mtls::{KeyAlgorithm, KeyExchangePolicy, SpiffeId, TrustBundle};
use pqmesh_proto::identity::v1::identity_client::IdentityClient;
use pqmesh_proto::identity::v1::CertifyRequest;

pub struct IssuanceResult {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

pub async fn certify_rate(
    grpc: std::net::SocketAddr,
    trust_bundle_pem: &str,
    token: &str,
    alg: KeyAlgorithm,
    concurrency: usize,
    duration: Duration,
) -> IssuanceResult {
    let bundle = TrustBundle::from_pem(trust_bundle_pem).expect("trust bundle");
    let cp: SpiffeId = crate::peers::CP_ID.parse().expect("control plane id");
    let tls = anonymous_client_config(&bundle, &cp, KeyExchangePolicy::HybridOnly, &[ALPN_H2])
        .expect("client config");
    let csrs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..16)
            .map(|_| {
                let key = alg.generate().expect("key");
                pqmesh_mtls::keys::workload_csr(&key).expect("csr")
            })
            .collect(),
    );
    let mut channels = Vec::new();
    for _ in 0..4 {
        let ch = tonic::transport::Endpoint::from_static("http://pqmesh-control-plane")
            .connect_with_connector(pqmesh_mtls::grpc_tls::tls_connector(
                grpc.to_string(),
                tls.clone(),
            ))
            .await
            .expect("connect to the control plane");
        channels.push(ch);
    }
    // Warm-up: one call per channel.
    for ch in &channels {
        let _ = IdentityClient::new(ch.clone())
            .certify(CertifyRequest {
                token: token.to_owned(),
                csr_der: csrs[0].clone(),
            })
            .await
            .expect("warm-up Certify");
    }
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = IdentityClient::new(channels[i % channels.len()].clone());
        let (csrs, token) = (csrs.clone(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut n = i;
            while Instant::now() < end {
                n += 1;
                let t = Instant::now();
                let r = client
                    .certify(CertifyRequest {
                        token: token.clone(),
                        csr_der: csrs[n % csrs.len()].clone(),
                    })
                    .await;
                match r {
                    Ok(_) => {
                        ok += 1;
                        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, ok, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((h, o, e)) = t.await {
            let _ = hist.add(&h);
            ok += o;
            errors += e;
        }
    }
    IssuanceResult {
        per_second: ok as f64 / duration.as_secs_f64(),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    }
}
