//! `Certify` over the real gRPC/TLS path: every bad request gets a precise status and nothing is
//! issued; identity comes from the token only.

use std::sync::Arc;

use pqmesh_mtls::tls::{anonymous_client_config, ALPN_H2};
use pqmesh_mtls::{KeyAlgorithm, KeyExchangePolicy, TrustBundle};
use pqmesh_proto::identity::v1::identity_client::IdentityClient;
use pqmesh_proto::identity::v1::CertifyRequest;
use pqmesh_tests::*;
use tonic::Code;

pub(crate) async fn client(cp: &ControlPlane) -> IdentityClient<tonic::transport::Channel> {
    let bundle =
        TrustBundle::from_pem(&std::fs::read_to_string(&cp.running.trust_bundle_path).unwrap())
            .unwrap();
    let tls = anonymous_client_config(
        &bundle,
        &cp.running.identity,
        KeyExchangePolicy::HybridOnly,
        &[ALPN_H2],
    )
    .unwrap();
    let channel = tonic::transport::Endpoint::from_static("http://pqmesh-control-plane")
        .connect_with_connector(pqmesh_mtls::grpc_tls::tls_connector(
            cp.running.grpc_addr.to_string(),
            tls,
        ))
        .await
        .unwrap();
    IdentityClient::new(channel)
}

pub(crate) fn csr(alg: KeyAlgorithm) -> Vec<u8> {
    pqmesh_mtls::keys::workload_csr(&alg.generate().unwrap()).unwrap()
}

pub(crate) fn csr_with_san(san: &str) -> Vec<u8> {
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(san.try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

#[tokio::test]
async fn bad_requests_get_precise_statuses_and_nothing_is_issued() {
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web"]).await;
    let mut client = client(&cp).await;
    let good_token = cp.token("web").to_owned();
    let p384 = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        pqmesh_mtls::keys::workload_csr(&key).unwrap()
    };
    let mut bad_sig = csr(KeyAlgorithm::EcdsaP256);
    let n = bad_sig.len();
    bad_sig[n - 2] ^= 0x40;
    let cases: Vec<(&str, String, Vec<u8>, Code, &str)> = vec![
        (
            "no token",
            String::new(),
            csr(KeyAlgorithm::EcdsaP256),
            Code::Unauthenticated,
            "no bootstrap token",
        ),
        (
            "unknown token",
            "x".repeat(40),
            csr(KeyAlgorithm::EcdsaP256),
            Code::Unauthenticated,
            "unknown bootstrap token",
        ),
        (
            "garbage CSR",
            good_token.clone(),
            b"\x30\x03garbage".to_vec(),
            Code::InvalidArgument,
            "not a DER PKCS#10",
        ),
        (
            "empty CSR",
            good_token.clone(),
            vec![],
            Code::InvalidArgument,
            "CSR is empty",
        ),
        (
            "bad signature",
            good_token.clone(),
            bad_sig,
            Code::InvalidArgument,
            "proof of possession",
        ),
        (
            "unsupported key",
            good_token.clone(),
            p384,
            Code::InvalidArgument,
            "unsupported key type",
        ),
        (
            "CSR asks for kube-system/admin",
            good_token.clone(),
            csr_with_san("spiffe://cluster.local/ns/kube-system/sa/admin"),
            Code::InvalidArgument,
            "identities come only from the authenticated token",
        ),
        (
            "oversized request",
            good_token.clone(),
            vec![0x30; 100 * 1024],
            Code::OutOfRange,
            "",
        ),
    ];
    for (name, token, csr_der, code, text) in cases {
        let status = client
            .certify(CertifyRequest { token, csr_der })
            .await
            .expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(text),
            "{name}: {}",
            status.message()
        );
    }
    let m = &cp.running.metrics.registry;
    assert_eq!(
        metric(m, "pqmesh_certificates_issued_total", &[]),
        0.0,
        "nothing issued"
    );
    assert_eq!(metric(m, "pqmesh_certificates_refused_total", &[]), 7.0);
    assert_eq!(
        metric(
            m,
            "pqmesh_certificates_refused_total",
            &[("reason", "csr_requests_sans")]
        ),
        1.0
    );

    // The same channel then works for a good request, and the identity is the token's.
    let ok = client
        .certify(CertifyRequest {
            token: good_token,
            csr_der: csr(KeyAlgorithm::MlDsa65),
        })
        .await
        .unwrap()
        .into_inner();
    let id = pqmesh_mtls::x509::spiffe_id(&ok.chain_der[0]).unwrap();
    assert_eq!(id.to_string(), spiffe("web"));
    assert_eq!(ok.trust_bundle_der.len(), 1);
    assert!(ok.not_after > 0);
    assert_eq!(
        metric(
            m,
            "pqmesh_certificates_issued_total",
            &[("key_alg", "ml-dsa-65")]
        ),
        1.0
    );
}

#[tokio::test]
async fn an_expired_bootstrap_token_is_refused() {
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web"]).await;
    let path = cp.dir.path().join("bootstrap-tokens.yaml");
    std::fs::write(
        &path,
        "tokens:\n  - token: expired-token-0123456789\n    namespace: shop\n    serviceAccount: old\n    expires: 2020-01-01T00:00:00Z\n",
    )
    .unwrap();
    // Make the edit visible even on filesystems with coarse timestamps.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let mut client = client(&cp).await;
    let status = client
        .certify(CertifyRequest {
            token: "expired-token-0123456789".into(),
            csr_der: csr(KeyAlgorithm::EcdsaP256),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("expired at 2020-01-01"),
        "{}",
        status.message()
    );
    // The edit also revoked the old token (it is no longer in the file).
    let status = client
        .certify(CertifyRequest {
            token: cp.token("web").into(),
            csr_der: csr(KeyAlgorithm::EcdsaP256),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_classical_only_client_cannot_reach_the_ca() {
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web"]).await;
    let bundle =
        TrustBundle::from_pem(&std::fs::read_to_string(&cp.running.trust_bundle_path).unwrap())
            .unwrap();
    let mut provider = rustls_post_quantum::provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let provider = Arc::new(provider);
    let verifier = pqmesh_mtls::verify::SpiffeServerVerifier::new(
        bundle.store(),
        cp.running.identity.clone(),
        provider.clone(),
    );
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let result = tonic::transport::Endpoint::from_static("http://pqmesh-control-plane")
        .connect_with_connector(pqmesh_mtls::grpc_tls::tls_connector(
            cp.running.grpc_addr.to_string(),
            Arc::new(config),
        ))
        .await;
    assert!(
        result.is_err(),
        "X25519-only handshake with the control plane must fail"
    );
    eventually("the control plane counted it", || {
        metric(
            &cp.running.metrics.registry,
            "pqmesh_tls_handshake_failures_total",
            &[("reason", "no_common_group")],
        ) == 1.0
    })
    .await;
}
