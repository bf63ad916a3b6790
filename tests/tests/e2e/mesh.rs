//! End to end, in one process: a real control plane (local mode), real sidecars, an echo app.
//! A (shop/web) reaches B (shop/api) through A's outbound and B's inbound listener; B allows
//! only shop/web.

use std::time::Duration;

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Pair {
    cp: ControlPlane,
    app: EchoApp,
    a: pqmesh_sidecar::RunningSidecar,
    b: pqmesh_sidecar::RunningSidecar,
}

async fn pair(root_alg: KeyAlgorithm, leaf_alg: KeyAlgorithm) -> Pair {
    let cp = ControlPlane::start(root_alg, &["web", "api", "intruder"]).await;
    let app = EchoApp::start().await;
    let b = sidecar(with(
        cp.sidecar_env("api", leaf_alg),
        &[
            ("PQMESH_INBOUND_APP_ADDR", &app.addr.to_string()),
            ("PQMESH_INBOUND_ALLOW", &spiffe("web")),
        ],
    ))
    .await;
    let a = sidecar(with(
        cp.sidecar_env("web", leaf_alg),
        &[
            ("PQMESH_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("PQMESH_OUTBOUND_PEER_ADDR", &b.inbound_addr.to_string()),
            ("PQMESH_OUTBOUND_PEER_ID", &spiffe("api")),
        ],
    ))
    .await;
    Pair { cp, app, a, b }
}

/// Like `exchange`, for connections the mesh must refuse: returns what came back before the
/// close or reset (nothing, if the refusal works).
async fn refused_exchange(addr: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(data).await;
    let _ = stream.shutdown().await;
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return back,
            Ok(Ok(n)) => back.extend_from_slice(&buf[..n]),
            Err(_) => panic!("refused connection neither closed nor reset within 30 s"),
        }
    }
}

/// Writes `data`, half-closes, and reads until EOF; returns what came back.
async fn exchange(addr: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let payload = data.to_vec();
    let writer = tokio::spawn(async move {
        wr.write_all(&payload).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut back))
        .await
        .expect("response within 30 s")
        .unwrap();
    let _ = writer.await;
    back
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

#[tokio::test]
async fn one_mebibyte_arrives_exact_in_both_directions_and_half_close_propagates() {
    let p = pair(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256).await;
    let data = random_bytes(1 << 20);
    let back = exchange(p.a.outbound_addr.unwrap(), &data).await;
    // The app echoed everything, then saw our half-close (EOF) and said so, through both sidecars.
    assert_eq!(back.len(), data.len() + EOF_TRAILER.len());
    assert!(back[..data.len()] == data[..], "echoed bytes differ");
    assert_eq!(&back[data.len()..], EOF_TRAILER);
    assert_eq!(
        metric(
            &p.a.metrics.registry,
            "pqmesh_tls_handshakes_total",
            &[("group", "X25519MLKEM768")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &p.b.metrics.registry,
            "pqmesh_tls_handshakes_total",
            &[("signature_scheme", "ecdsa_secp256r1_sha256")]
        ),
        1.0
    );
}

#[tokio::test]
async fn many_small_writes_and_round_trips_arrive_in_order() {
    let p = pair(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256).await;
    let stream = TcpStream::connect(p.a.outbound_addr.unwrap())
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // Ping-pong: 300 round trips of small messages of varying size.
    for i in 0..300usize {
        let msg = vec![(i % 251) as u8; 1 + i % 97];
        wr.write_all(&msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        rd.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg, "round trip {i}");
    }
    // Then 5,000 tiny writes back to back.
    let mut sent = Vec::new();
    for i in 0..5000u32 {
        let chunk = i.to_be_bytes();
        sent.extend_from_slice(&chunk[1 + (i % 3) as usize..]);
        wr.write_all(&chunk[1 + (i % 3) as usize..]).await.unwrap();
    }
    wr.shutdown().await.unwrap();
    let mut back = Vec::new();
    rd.read_to_end(&mut back).await.unwrap();
    assert_eq!(&back[..sent.len()], &sent[..]);
    assert_eq!(&back[sent.len()..], EOF_TRAILER);
}

#[tokio::test]
async fn renewal_during_an_open_connection_breaks_nothing() {
    let p = pair(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256).await;
    let stream = TcpStream::connect(p.a.outbound_addr.unwrap())
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"before").await.unwrap();
    let mut got = [0u8; 6];
    rd.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"before");

    let serial_a = p.a.current().unwrap().creds.serial_hex.clone();
    let serial_b = p.b.current().unwrap().creds.serial_hex.clone();
    p.a.renew_now();
    p.b.renew_now();
    tokio::time::timeout(Duration::from_secs(20), async {
        while p.a.current().unwrap().creds.serial_hex == serial_a
            || p.b.current().unwrap().creds.serial_hex == serial_b
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both sidecars renewed");

    // The established connection keeps working on its original session...
    wr.write_all(b"after").await.unwrap();
    let mut got = [0u8; 5];
    rd.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"after");
    // ...and a new connection is made with the new certificates.
    assert_eq!(
        exchange(p.a.outbound_addr.unwrap(), b"new").await,
        [b"new".as_slice(), EOF_TRAILER].concat()
    );
    assert_eq!(
        metric(
            &p.a.metrics.registry,
            "pqmesh_certificate_renewals_total",
            &[("outcome", "ok")]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_peer_with_an_identity_b_does_not_allow_is_refused_before_the_app() {
    let p = pair(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256).await;
    let c = sidecar(with(
        p.cp.sidecar_env("intruder", KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("PQMESH_OUTBOUND_PEER_ADDR", &p.b.inbound_addr.to_string()),
            ("PQMESH_OUTBOUND_PEER_ID", &spiffe("api")),
        ],
    ))
    .await;
    let back = refused_exchange(c.outbound_addr.unwrap(), b"let me in").await;
    assert!(back.is_empty(), "intruder got {back:?}");
    assert_eq!(p.app.connections(), 0, "the app never saw the intruder");
    eventually("B counted the denied identity", || {
        metric(
            &p.b.metrics.registry,
            "pqmesh_connections_total",
            &[("outcome", "denied_identity")],
        ) == 1.0
    })
    .await;
    // The allowed peer still gets through.
    assert!(!exchange(p.a.outbound_addr.unwrap(), b"hi").await.is_empty());
    assert_eq!(p.app.connections(), 1);
}

#[tokio::test]
async fn a_client_requiring_another_identity_refuses_the_server() {
    let p = pair(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256).await;
    // A second client sidecar for shop/web that believes B must be shop/payments.
    let confused = sidecar(with(
        p.cp.sidecar_env("web", KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("PQMESH_OUTBOUND_PEER_ADDR", &p.b.inbound_addr.to_string()),
            ("PQMESH_OUTBOUND_PEER_ID", &spiffe("payments")),
        ],
    ))
    .await;
    let back = refused_exchange(confused.outbound_addr.unwrap(), b"secret").await;
    assert!(back.is_empty());
    assert_eq!(p.app.connections(), 0);
    eventually("the confused client counted its refusal", || {
        metric(
            &confused.metrics.registry,
            "pqmesh_tls_handshake_failures_total",
            &[("reason", "wrong_identity")],
        ) == 1.0
    })
    .await;
}

#[tokio::test]
async fn peers_with_certificates_from_another_ca_are_refused_both_ways() {
    let p = pair(KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256).await;
    // A second, unrelated mesh issues the same identity names.
    let other = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web", "api"]).await;
    let foreign_client = sidecar(with(
        other.sidecar_env("web", KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("PQMESH_OUTBOUND_PEER_ADDR", &p.b.inbound_addr.to_string()),
            ("PQMESH_OUTBOUND_PEER_ID", &spiffe("api")),
        ],
    ))
    .await;
    assert!(
        refused_exchange(foreign_client.outbound_addr.unwrap(), b"x")
            .await
            .is_empty()
    );
    assert_eq!(p.app.connections(), 0);
    // Both sides distrust each other; the client notices first and aborts with an alert.
    eventually("the foreign client refused B's certificate", || {
        metric(
            &foreign_client.metrics.registry,
            "pqmesh_tls_handshake_failures_total",
            &[("reason", "untrusted_certificate")],
        ) == 1.0
    })
    .await;
    eventually("B counted the failed handshake", || {
        metric(
            &p.b.metrics.registry,
            "pqmesh_tls_handshake_failures_total",
            &[("direction", "inbound")],
        ) == 1.0
    })
    .await;

    let foreign_app = EchoApp::start().await;
    let foreign_server = sidecar(with(
        other.sidecar_env("api", KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_INBOUND_APP_ADDR", &foreign_app.addr.to_string()),
            ("PQMESH_INBOUND_ALLOW", &spiffe("web")),
        ],
    ))
    .await;
    let a_to_foreign = sidecar(with(
        p.cp.sidecar_env("web", KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_OUTBOUND_ADDR", "127.0.0.1:0"),
            (
                "PQMESH_OUTBOUND_PEER_ADDR",
                &foreign_server.inbound_addr.to_string(),
            ),
            ("PQMESH_OUTBOUND_PEER_ID", &spiffe("api")),
        ],
    ))
    .await;
    assert!(refused_exchange(a_to_foreign.outbound_addr.unwrap(), b"x")
        .await
        .is_empty());
    assert_eq!(foreign_app.connections(), 0);
    eventually("A counted the untrusted server", || {
        metric(
            &a_to_foreign.metrics.registry,
            "pqmesh_tls_handshake_failures_total",
            &[("reason", "untrusted_certificate")],
        ) == 1.0
    })
    .await;
}

#[tokio::test]
async fn ml_dsa_65_mode_works_end_to_end() {
    let p = pair(KeyAlgorithm::MlDsa65, KeyAlgorithm::MlDsa65).await;
    let data = random_bytes(256 * 1024);
    let back = exchange(p.a.outbound_addr.unwrap(), &data).await;
    assert!(back[..data.len()] == data[..]);
    assert_eq!(
        metric(
            &p.a.metrics.registry,
            "pqmesh_tls_handshakes_total",
            &[
                ("group", "X25519MLKEM768"),
                ("signature_scheme", "ML-DSA-65")
            ]
        ),
        1.0,
        "A saw B sign with ML-DSA-65"
    );
    assert_eq!(
        metric(
            &p.b.metrics.registry,
            "pqmesh_tls_handshakes_total",
            &[("signature_scheme", "ML-DSA-65")]
        ),
        1.0,
        "B saw A sign with ML-DSA-65"
    );
    let root = p.a.current().unwrap().creds.bundle.roots()[0].clone();
    assert_eq!(
        pqmesh_mtls::verify::signature_scheme_name(&root),
        "ML-DSA-65",
        "the root is ML-DSA-65 too"
    );
}
