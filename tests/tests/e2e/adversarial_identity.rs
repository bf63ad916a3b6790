//! Adversarial suite, identity and transport: a workload asking the CA for another identity,
//! unknown and expired bootstrap tokens, a peer certificate from another CA, downgrade attempts
//! (classical-only groups, TLS 1.2, no or wrong ALPN, no client certificate) and plaintext to a
//! STRICT inbound. Reuses the probes of `handshake_policy` and the Certify client of `certify`;
//! the rows join the results table in docs/reliability.md.

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_proto::identity::v1::CertifyRequest;
use pqmesh_tests::report::Table;
use pqmesh_tests::*;
use rustls::crypto::aws_lc_rs::kx_group;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certify::{client, csr, csr_with_san};
use crate::handshake_policy::{
    credentials_for, probe, probe_config, probe_config_trusting, target, web_credentials, TLS12,
    TLS13,
};

#[tokio::test]
async fn identity_spoofing_and_downgrade_table() {
    let mut t = Table::new("adversarial-identity-transport");

    // The CA: identity comes only from the authenticated token.
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web", "api"]).await;
    let mut ca = client(&cp).await;
    let issued = |cp: &ControlPlane| {
        metric(
            &cp.running.metrics.registry,
            "pqmesh_certificates_issued_total",
            &[],
        ) as usize
    };
    let certify = |token: String, csr_der: Vec<u8>| {
        let mut ca = ca.clone();
        async move {
            match ca.certify(CertifyRequest { token, csr_der }).await {
                Ok(r) => format!(
                    "issued {}",
                    pqmesh_mtls::x509::spiffe_id(&r.into_inner().chain_der[0]).unwrap()
                ),
                Err(s) => format!("{:?}", s.code()),
            }
        }
    };
    let before = issued(&cp);
    let got = certify(cp.token("web").into(), csr_with_san(&spiffe("api"))).await;
    t.deny(
        "web's token, CSR with URI SAN shop/api",
        "InvalidArgument",
        got,
        issued(&cp) - before,
    );
    let got = certify(
        cp.token("web").into(),
        csr_with_san(&format!("spiffe://{TRUST_DOMAIN}/ns/kube-system/sa/admin")),
    )
    .await;
    t.deny(
        "web's token, CSR with URI SAN kube-system/admin",
        "InvalidArgument",
        got,
        issued(&cp) - before,
    );
    let got = certify(
        "tok-api-guessed-0123456789abcdef".into(),
        csr(KeyAlgorithm::EcdsaP256),
    )
    .await;
    t.deny(
        "guessed bootstrap token",
        "Unauthenticated",
        got,
        issued(&cp) - before,
    );
    let got = certify(String::new(), csr(KeyAlgorithm::EcdsaP256)).await;
    t.deny(
        "no bootstrap token",
        "Unauthenticated",
        got,
        issued(&cp) - before,
    );
    let cn_only = {
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, spiffe("api"));
        params.serialize_request(&key).unwrap().der().to_vec()
    };
    let got = certify(cp.token("web").into(), cn_only).await;
    t.allow(
        "web's token, CSR subject CN = shop/api's SPIFFE ID",
        format!("issued {}", spiffe("web")),
        got,
        issued(&cp) - before,
        1,
    );
    let _ = &mut ca;

    // Transport: B admits only shop/web; its app is an echo server counting connections.
    let b = target(&[]).await;
    let creds = web_credentials(&b.cp).await;
    let addr = b.b.inbound_addr;
    let alpn = || vec![b"pqmesh/1".to_vec()];
    let conns = || b.app.connections();
    let before = conns();
    let ok = probe(
        addr,
        probe_config(&creds, vec![kx_group::X25519MLKEM768], TLS13, alpn()),
    )
    .await;
    t.allow(
        "control: shop/web, TLS 1.3, X25519MLKEM768, ALPN pqmesh/1",
        "echo",
        if ok.is_ok() { "echo" } else { "refused" },
        conns() - before,
        1,
    );
    let other = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web"]).await;
    let foreign = credentials_for(&other, "web").await;
    let refused: Vec<(&str, std::sync::Arc<rustls::ClientConfig>)> = vec![
        (
            "forged peer: shop/web certificate from another CA",
            probe_config_trusting(
                &foreign,
                creds.creds.bundle.store(),
                vec![kx_group::X25519MLKEM768],
                TLS13,
                alpn(),
            ),
        ),
        (
            "downgrade: X25519 only",
            probe_config(&creds, vec![kx_group::X25519], TLS13, alpn()),
        ),
        (
            "downgrade: P-256 only",
            probe_config(&creds, vec![kx_group::SECP256R1], TLS13, alpn()),
        ),
        (
            "downgrade: MLKEM768 alone",
            probe_config(&creds, vec![kx_group::MLKEM768], TLS13, alpn()),
        ),
        (
            "downgrade: TLS 1.2 only",
            probe_config(
                &creds,
                vec![kx_group::X25519, kx_group::SECP256R1],
                TLS12,
                alpn(),
            ),
        ),
        (
            "downgrade: no ALPN",
            probe_config(&creds, vec![kx_group::X25519MLKEM768], TLS13, vec![]),
        ),
        (
            "downgrade: ALPN h2 only",
            probe_config(
                &creds,
                vec![kx_group::X25519MLKEM768],
                TLS13,
                vec![b"h2".to_vec()],
            ),
        ),
    ];
    for (name, config) in refused {
        let before = conns();
        let got = probe(addr, config).await;
        t.deny(
            name,
            "refused",
            if got.is_ok() { "echo" } else { "refused" },
            conns() - before,
        );
    }
    let intruder = credentials_for(&b.cp, "api").await;
    let before = conns();
    let got = probe(
        addr,
        probe_config(&intruder, vec![kx_group::X25519MLKEM768], TLS13, alpn()),
    )
    .await;
    t.deny(
        "valid mesh certificate of a peer not on the allow-list",
        "refused",
        if got.is_ok() { "echo" } else { "refused" },
        conns() - before,
    );
    let before = conns();
    let plain = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: b\r\nx-pqmesh-peer-identity: spiffe://cluster.local/ns/shop/sa/web\r\n\r\n").await?;
        let mut buf = [0u8; 1];
        tcp.read(&mut buf).await
    };
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), plain).await;
    t.deny(
        "plaintext HTTP with a forged identity header to a STRICT inbound",
        "refused",
        if matches!(got, Ok(Ok(n)) if n > 0) {
            "answered"
        } else {
            "refused"
        },
        conns() - before,
    );
    t.check();
}
