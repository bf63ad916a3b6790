//! Raw rustls clients with valid mesh credentials probe the inbound listener's TLS policy:
//! only TLS 1.3 with X25519MLKEM768 and ALPN pqmesh/1 reaches the app.

use std::sync::Arc;
use std::time::Duration;

use pqmesh_mtls::{KeyAlgorithm, KeyExchangePolicy};
use pqmesh_sidecar::config::TokenSource;
use pqmesh_sidecar::identity::{obtain, GrpcCertifier};
use pqmesh_tests::*;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) struct Target {
    pub cp: ControlPlane,
    pub app: EchoApp,
    pub b: pqmesh_sidecar::RunningSidecar,
}

pub(crate) async fn target(extra: &[(&str, &str)]) -> Target {
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web", "api"]).await;
    let app = EchoApp::start().await;
    let mut env = with(
        cp.sidecar_env("api", KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_INBOUND_APP_ADDR", &app.addr.to_string()),
            ("PQMESH_INBOUND_ALLOW", &spiffe("web")),
        ],
    );
    env = with(env, extra);
    let b = sidecar(env).await;
    Target { cp, app, b }
}

/// Valid shop/web credentials, obtained from the control plane like a sidecar does.
pub(crate) async fn web_credentials(cp: &ControlPlane) -> Arc<pqmesh_sidecar::tls::MeshTls> {
    credentials_for(cp, "web").await
}

pub(crate) async fn credentials_for(
    cp: &ControlPlane,
    sa: &str,
) -> Arc<pqmesh_sidecar::tls::MeshTls> {
    let bundle = pqmesh_mtls::TrustBundle::from_pem(
        &std::fs::read_to_string(&cp.running.trust_bundle_path).unwrap(),
    )
    .unwrap();
    let certifier = GrpcCertifier {
        addr: cp.running.grpc_addr.to_string(),
        server_id: cp.running.identity.clone(),
        kx: KeyExchangePolicy::HybridOnly,
        token: TokenSource::Inline(cp.token(sa).to_owned()),
        bundle: std::sync::Mutex::new(bundle),
    };
    obtain(
        &certifier,
        KeyAlgorithm::EcdsaP256,
        KeyExchangePolicy::HybridOnly,
        None,
    )
    .await
    .unwrap()
}

/// A client config with the mesh credentials but the given groups / versions / ALPN.
pub(crate) fn probe_config(
    creds: &pqmesh_sidecar::tls::MeshTls,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: Vec<Vec<u8>>,
) -> Arc<rustls::ClientConfig> {
    probe_config_trusting(creds, creds.creds.bundle.store(), groups, versions, alpn)
}

/// As `probe_config`, verifying the server against `roots` instead of the creds' own bundle.
pub(crate) fn probe_config_trusting(
    creds: &pqmesh_sidecar::tls::MeshTls,
    roots: Arc<rustls::RootCertStore>,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: Vec<Vec<u8>>,
) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls_post_quantum::provider();
    provider.kx_groups = groups;
    let provider = Arc::new(provider);
    let verifier = pqmesh_mtls::verify::SpiffeServerVerifier::new(
        roots,
        spiffe("api").parse().unwrap(),
        provider.clone(),
    );
    let key =
        rustls::pki_types::PrivateKeyDer::Pkcs8(creds.creds.key_pkcs8_for_tests().clone_key());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.creds.chain.clone(), key)
        .unwrap();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// Handshakes and sends a line; Ok(echo) if the app answered, Err(reason) otherwise.
pub(crate) async fn probe(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("pqmesh.mesh").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Ok(buf.to_vec()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("timeout".into()),
    }
}

pub(crate) const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub(crate) const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[tokio::test]
async fn only_hybrid_tls13_with_mesh_alpn_reaches_the_app() {
    let t = target(&[]).await;
    let creds = web_credentials(&t.cp).await;
    let addr = t.b.inbound_addr;
    let alpn = || vec![b"pqmesh/1".to_vec()];

    // Positive control: the same credentials with the hybrid group work.
    let ok = probe(
        addr,
        probe_config(&creds, vec![kx_group::X25519MLKEM768], TLS13, alpn()),
    )
    .await;
    assert_eq!(ok, Ok(b"ping".to_vec()));
    assert_eq!(t.app.connections(), 1);

    let refused = [
        (
            "X25519 only",
            probe_config(&creds, vec![kx_group::X25519], TLS13, alpn()),
        ),
        (
            "P-256 only",
            probe_config(&creds, vec![kx_group::SECP256R1], TLS13, alpn()),
        ),
        (
            "MLKEM768 alone (no hybrid)",
            probe_config(&creds, vec![kx_group::MLKEM768], TLS13, alpn()),
        ),
        (
            "TLS 1.2 only",
            probe_config(
                &creds,
                vec![kx_group::X25519, kx_group::SECP256R1],
                TLS12,
                alpn(),
            ),
        ),
        (
            "no ALPN",
            probe_config(&creds, vec![kx_group::X25519MLKEM768], TLS13, vec![]),
        ),
        (
            "h2 ALPN",
            probe_config(
                &creds,
                vec![kx_group::X25519MLKEM768],
                TLS13,
                vec![b"h2".to_vec()],
            ),
        ),
    ];
    for (name, config) in refused {
        let result = probe(addr, config).await;
        assert!(result.is_err(), "{name}: expected refusal, got {result:?}");
    }
    assert_eq!(t.app.connections(), 1, "no refused client reached the app");
    assert!(
        metric(
            &t.b.metrics.registry,
            "pqmesh_tls_handshake_failures_total",
            &[("direction", "inbound")]
        ) >= 4.0,
        "group and version refusals are counted as handshake failures"
    );
}

#[tokio::test]
async fn the_migration_setting_admits_classical_groups_and_metrics_show_it() {
    let t = target(&[("PQMESH_ALLOW_CLASSICAL_KX", "true")]).await;
    let creds = web_credentials(&t.cp).await;
    let alpn = vec![b"pqmesh/1".to_vec()];
    let ok = probe(
        t.b.inbound_addr,
        probe_config(&creds, vec![kx_group::X25519], TLS13, alpn),
    )
    .await;
    assert_eq!(ok, Ok(b"ping".to_vec()));
    assert_eq!(
        metric(
            &t.b.metrics.registry,
            "pqmesh_tls_handshakes_total",
            &[("group", "X25519")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let t = target(&[]).await;
    let mut provider = rustls_post_quantum::provider();
    provider.kx_groups = vec![kx_group::X25519MLKEM768];
    let provider = Arc::new(provider);
    let creds = web_credentials(&t.cp).await;
    let verifier = pqmesh_mtls::verify::SpiffeServerVerifier::new(
        creds.creds.bundle.store(),
        spiffe("api").parse().unwrap(),
        provider.clone(),
    );
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"pqmesh/1".to_vec()];
    assert!(probe(t.b.inbound_addr, Arc::new(config)).await.is_err());
    assert_eq!(t.app.connections(), 0);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_even_when_the_client_trusts_b() {
    let t = target(&[]).await;
    let other = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web"]).await;
    let foreign = credentials_for(&other, "web").await;
    let trusts_b = web_credentials(&t.cp).await.creds.bundle.store();
    let config = probe_config_trusting(
        &foreign,
        trusts_b,
        vec![kx_group::X25519MLKEM768],
        TLS13,
        vec![b"pqmesh/1".to_vec()],
    );
    assert!(probe(t.b.inbound_addr, config).await.is_err());
    assert_eq!(t.app.connections(), 0);
    eventually("B counted the untrusted client certificate", || {
        metric(
            &t.b.metrics.registry,
            "pqmesh_tls_handshake_failures_total",
            &[("reason", "untrusted_certificate")],
        ) == 1.0
    })
    .await;
}
