//! HTTP relay ports (`PQMESH_HTTP_RELAY_PORTS`): HTTP/1.1 relayed as bytes while the port's
//! policy is identity-only. Through a real mesh (A's sidecar → hybrid-PQ mTLS → B's sidecar →
//! the test app, a hyper server that reports what it received): requests on a relayed keep-alive
//! connection reach the app without any identity header and are counted in B's golden metrics;
//! a policy change that needs per-request checks closes the relayed connection, and the next
//! connection is judged request by request (403 for a path the rules refuse, the identity header
//! stamped again). What stock servers make of relayed bytes is the differential suite's relay
//! port; this test cannot show timing races between a policy push and bytes in flight.

use std::time::Duration;

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

fn policy(port: u16, rules: &str) -> String {
    format!(
        "apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: api}}}}\n  ports: [{port}]\n  peers: [\"shop/web\"]\n{rules}"
    )
}

/// Sends one request on `tcp` and reads one `content-length` response (the test app's).
async fn round_trip(tcp: &mut TcpStream, path: &str) -> String {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: api\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn a_relayed_port_passes_requests_unparsed_until_the_policy_needs_them_read() {
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    let (app, _, stats) = http_app::start("api").await;
    cp.write_policy("api.yaml", &policy(app.port(), ""), 1)
        .await;
    let b = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[
                ("PQMESH_WORKLOAD_LABELS", "app=api"),
                ("PQMESH_HTTP_RELAY_PORTS", &app.port().to_string()),
            ],
        ),
        Some(app),
    )
    .await;
    cp.set_endpoints(
        &format!("endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n", b.inbound_addr.port()),
        1,
    )
    .await;
    let a = sidecar_redirected(cp.sidecar_env("web", ECDSA), Some(b.inbound_addr)).await;
    eventually("B runs the identity-only policy", || b.policy().is_some()).await;
    let registry = &b.metrics.registry;

    // Relayed: every answer is the app's, with no identity header (none is stamped on a relay).
    let mut relayed = TcpStream::connect(a.outbound_addr.unwrap()).await.unwrap();
    for path in ["/orders/1", "/admin"] {
        let answer = round_trip(&mut relayed, path).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(&format!("path={path} ")) && answer.contains("peer=none"),
            "{answer}"
        );
    }
    eventually("B counted both relayed requests", || {
        metric(
            registry,
            "pqmesh_http_requests_total",
            &[("direction", "inbound"), ("outcome", "forwarded")],
        ) == 2.0
    })
    .await;
    let counted: u64 = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "pqmesh_http_request_duration_seconds")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "direction" && l.value() == "inbound")
        })
        .map(|m| m.get_histogram().get_sample_count())
        .sum();
    assert_eq!(
        counted, 2,
        "both requests are in B's inbound latency histogram"
    );

    // The policy gains rules: the relayed connection is closed, and HTTP is judged per request.
    cp.write_policy(
        "api.yaml",
        &policy(
            app.port(),
            "  rules:\n    - {methods: [GET], paths: [\"/orders/**\"]}\n",
        ),
        1,
    )
    .await;
    eventually("B closed the relayed connection", || {
        metric(
            registry,
            "pqmesh_connections_total",
            &[("direction", "inbound"), ("outcome", "closed_policy")],
        ) == 1.0
    })
    .await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), relayed.read_to_end(&mut rest))
        .await
        .expect("the caller sees the close")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing more on the closed connection");
    let served = stats.requests.load(std::sync::atomic::Ordering::SeqCst);

    let mut judged = TcpStream::connect(a.outbound_addr.unwrap()).await.unwrap();
    let answer = round_trip(&mut judged, "/admin").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = round_trip(&mut judged, "/orders/2").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("peer={}", spiffe("web"))),
        "stamped again: {answer}"
    );
    assert_eq!(
        stats.requests.load(std::sync::atomic::Ordering::SeqCst),
        served + 1,
        "only the allowed request reached the app"
    );
}
