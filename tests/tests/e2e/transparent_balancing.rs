//! Client-side load balancing in transparent mode, in one process: the app dials a Service
//! address (injected as the original destination), discovery answers with its endpoints — two
//! backends under two identities — and the client sidecar spreads connections (HTTP/1.1) and
//! requests (HTTP/2 on one connection) over both, each over mTLS requiring that backend's
//! identity. The same with real iptables and a ClusterIP DNAT: `tests/netns/run.sh` section 9.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;
use tokio::net::TcpStream;

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;
const SERVICE: &str = "10.96.0.10:80";

struct Backends {
    cp: ControlPlane,
    b: pqmesh_sidecar::RunningSidecar,
    d: pqmesh_sidecar::RunningSidecar,
    _apps: Vec<std::sync::Arc<http_app::AppStats>>,
}

/// B (shop/api, app "b") and D (shop/other, app "d"), each behind its sidecar.
async fn backends() -> Backends {
    let cp = ControlPlane::start(ECDSA, &["web", "api", "other"]).await;
    let (app_b, _, stats_b) = http_app::start("b").await;
    let (app_d, _, stats_d) = http_app::start("d").await;
    let env = |sa: &str, app: SocketAddr| {
        with(
            cp.sidecar_env(sa, ECDSA),
            &[
                ("PQMESH_INBOUND_APP_ADDR", &app.to_string()),
                ("PQMESH_INBOUND_ALLOW", "shop/*"),
            ],
        )
    };
    let (b, d) = tokio::join!(sidecar(env("api", app_b)), sidecar(env("other", app_d)));
    Backends {
        cp,
        b,
        d,
        _apps: vec![stats_b, stats_d],
    }
}

/// endpoints.yaml: the pods' inbound ports with their service accounts, and the Service with
/// `backends` (ports on 127.0.0.1). The number of entries differs between the steps of a test,
/// so `set_endpoints` can tell the reload happened.
fn table(pods: &[(u16, &str)], backends: &[u16], extra_backends: &str) -> String {
    let mut yaml = String::from("endpoints:\n");
    for (port, sa) in pods {
        yaml.push_str(&format!(
            "- {{ip: 127.0.0.1, ports: [{port}], namespace: shop, serviceAccount: {sa}}}\n"
        ));
    }
    yaml.push_str("services:\n- name: shop/api\n  ip: 10.96.0.10\n  port: 80\n  backends:\n");
    for port in backends {
        yaml.push_str(&format!("  - {{ip: 127.0.0.1, port: {port}}}\n"));
    }
    yaml.push_str(extra_backends);
    yaml
}

impl Backends {
    fn ports(&self) -> (u16, u16) {
        (self.b.inbound_addr.port(), self.d.inbound_addr.port())
    }
}

async fn client(m: &Backends, extra: &[(&str, &str)]) -> pqmesh_sidecar::RunningSidecar {
    sidecar_redirected(
        with(m.cp.sidecar_env("web", ECDSA), extra),
        Some(SERVICE.parse().unwrap()),
    )
    .await
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("?")
}

/// `n` requests, each on a new HTTP/1.1 connection; answers by app name. Every answer must
/// carry A's identity as B's or D's app received it.
async fn spread_http1(outbound: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let tcp = TcpStream::connect(outbound).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("/h1/{i}"))
            .header("host", "api.shop")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let line = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(field(&line, "peer"), spiffe("web"), "{line}");
        *counts.entry(field(&line, "app").to_owned()).or_insert(0) += 1;
    }
    counts
}

fn handshakes(s: &pqmesh_sidecar::RunningSidecar, direction: &str) -> f64 {
    metric(
        &s.metrics.registry,
        "pqmesh_tls_handshakes_total",
        &[("direction", direction)],
    )
}

fn allowed(s: &pqmesh_sidecar::RunningSidecar) -> f64 {
    metric(
        &s.metrics.registry,
        "pqmesh_connections_total",
        &[("direction", "inbound"), ("outcome", "allowed")],
    )
}

#[tokio::test]
async fn connections_to_a_service_spread_over_backends_of_two_identities() {
    let m = backends().await;
    let (b, d) = m.ports();
    m.cp.set_endpoints(&table(&[(b, "api"), (d, "other")], &[b, d], ""), 3)
        .await;
    let a = client(&m, &[]).await;
    let counts = spread_http1(a.outbound_addr.unwrap(), 40).await;
    println!("HTTP/1.1, 40 connections to {SERVICE}: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 40, "{counts:?}");
    assert!(counts.get("b").copied().unwrap_or(0) >= 5, "{counts:?}");
    assert!(counts.get("d").copied().unwrap_or(0) >= 5, "{counts:?}");
    // Every connection was mutual TLS accepted by the backend that answered it.
    assert_eq!(allowed(&m.b) as usize, counts["b"]);
    assert_eq!(allowed(&m.d) as usize, counts["d"]);
    assert_eq!(handshakes(&a, "outbound"), 40.0);
    assert_eq!(
        metric(
            &a.metrics.registry,
            "pqmesh_connections_total",
            &[("direction", "outbound"), ("outcome", "passthrough")]
        ),
        0.0
    );
}

#[tokio::test]
async fn http2_requests_on_one_connection_spread_over_the_backends() {
    let m = backends().await;
    let (b, d) = m.ports();
    m.cp.set_endpoints(&table(&[(b, "api"), (d, "other")], &[b, d], ""), 3)
        .await;
    let a = client(&m, &[]).await;
    let tcp = TcpStream::connect(a.outbound_addr.unwrap()).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut counts = BTreeMap::new();
    // Some sequential, some concurrent (in flight together on the one connection).
    for round in 0..8 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..5 {
            let mut send = send.clone();
            calls.spawn(async move {
                let req = Request::get(format!("http://api.shop/h2/{round}/{i}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8_lossy(&body).into_owned()
            });
        }
        for line in calls.join_all().await {
            assert_eq!(field(&line, "peer"), spiffe("web"), "{line}");
            assert_eq!(field(&line, "proto"), "HTTP/2.0", "{line}");
            *counts.entry(field(&line, "app").to_owned()).or_insert(0) += 1;
        }
    }
    println!("HTTP/2, 40 requests on one connection to {SERVICE}: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 40, "{counts:?}");
    assert!(counts.get("b").copied().unwrap_or(0) >= 5, "{counts:?}");
    assert!(counts.get("d").copied().unwrap_or(0) >= 5, "{counts:?}");
    // One multiplexed mTLS connection per backend, not one per request.
    assert_eq!(handshakes(&a, "outbound"), 2.0);
    assert_eq!(allowed(&m.b), 1.0);
    assert_eq!(allowed(&m.d), 1.0);
}

#[tokio::test]
async fn each_backend_must_present_its_own_identity_and_a_failure_fails_over() {
    let m = backends().await;
    let (b, d) = m.ports();
    // Discovery says D's address is shop/api: D (shop/other) cannot present that, so every
    // connection that picks it fails the handshake and fails over to B.
    m.cp.set_endpoints(&table(&[(b, "api"), (d, "api")], &[b, d], ""), 3)
        .await;
    let a = client(&m, &[]).await;
    let counts = spread_http1(a.outbound_addr.unwrap(), 20).await;
    assert_eq!(counts.get("b"), Some(&20), "{counts:?}");
    assert_eq!(allowed(&m.d), 0.0);
    let failures = metric(
        &a.metrics.registry,
        "pqmesh_tls_handshake_failures_total",
        &[("direction", "outbound")],
    );
    assert!(failures >= 1.0, "the wrong identity was never refused");

    // A backend that is down (nothing listens): connects fail over, every request is served.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    m.cp.set_endpoints(&table(&[(b, "api")], &[b, dead_port], ""), 2)
        .await;
    let counts = spread_http1(a.outbound_addr.unwrap(), 20).await;
    assert_eq!(counts.get("b"), Some(&20), "{counts:?}");
}

#[tokio::test]
async fn endpoint_changes_reach_new_connections_without_a_restart() {
    let m = backends().await;
    let (b, d) = m.ports();
    m.cp.set_endpoints(&table(&[(b, "api")], &[b], ""), 2).await;
    let a = client(&m, &[]).await;
    let outbound = a.outbound_addr.unwrap();
    assert_eq!(spread_http1(outbound, 10).await.get("b"), Some(&10));
    // Scale up: D joins.
    m.cp.set_endpoints(&table(&[(b, "api"), (d, "other")], &[b, d], ""), 3)
        .await;
    let counts = spread_http1(outbound, 30).await;
    assert!(counts.get("d").copied().unwrap_or(0) >= 3, "{counts:?}");
    // Scale down: B leaves; an HTTP/2 connection opened before sees it on its next requests.
    let tcp = TcpStream::connect(outbound).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    m.cp.set_endpoints(&table(&[(d, "other")], &[d], ""), 2)
        .await;
    assert_eq!(spread_http1(outbound, 10).await.get("d"), Some(&10));
    for i in 0..10 {
        let req = Request::get(format!("http://api.shop/after/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = send
            .send_request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(field(&String::from_utf8_lossy(&body), "app"), "d");
    }
}

#[tokio::test]
async fn an_unmeshed_backend_gets_plaintext_only_under_passthrough() {
    let m = backends().await;
    let (plain_app, _tcp, _stats) = http_app::start("plain").await;
    let extra = format!("  - {{ip: 127.0.0.1, port: {}}}\n", plain_app.port());
    let (b, _) = m.ports();
    m.cp.set_endpoints(&table(&[(b, "api")], &[b], &extra), 2)
        .await;

    let pass = client(&m, &[("PQMESH_OUTBOUND_UNMESHED", "passthrough")]).await;
    let counts = spread_http1_any(pass.outbound_addr.unwrap(), 30).await;
    assert!(counts.get("plain").copied().unwrap_or(0) >= 3, "{counts:?}");
    assert!(counts.get("b").copied().unwrap_or(0) >= 3, "{counts:?}");

    let refuse = client(&m, &[("PQMESH_OUTBOUND_UNMESHED", "refuse")]).await;
    let counts = spread_http1(refuse.outbound_addr.unwrap(), 20).await;
    assert_eq!(counts.get("b"), Some(&20), "{counts:?}");
    // Only unmeshed backends left: refused under `refuse`, nothing sent.
    let only_plain = format!(
        "services:\n- {{ip: 10.96.0.10, port: 80, backends: [{{ip: 127.0.0.1, port: {}}}]}}\n",
        plain_app.port()
    );
    m.cp.set_endpoints(&only_plain, 1).await;
    let tcp = TcpStream::connect(refuse.outbound_addr.unwrap())
        .await
        .unwrap();
    let refused = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await;
    let outcome = match refused {
        Ok((mut send, conn)) => {
            tokio::spawn(conn);
            send.send_request(Request::get("/x").body(Empty::new()).unwrap())
                .await
                .map(|r| r.status().as_u16())
        }
        Err(e) => Err(e),
    };
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(
        metric(
            &refuse.metrics.registry,
            "pqmesh_connections_total",
            &[("direction", "outbound"), ("outcome", "denied_unmeshed")]
        ),
        1.0
    );
}

/// As [`spread_http1`] without the identity check (an unmeshed backend sees none).
async fn spread_http1_any(outbound: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let tcp = TcpStream::connect(outbound).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("/any/{i}"))
            .header("host", "api.shop")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = send
            .send_request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let line = String::from_utf8_lossy(&body).into_owned();
        let app = field(&line, "app").to_owned();
        let peer = field(&line, "peer");
        match app.as_str() {
            "plain" => assert_eq!(peer, "none", "{line}"),
            _ => assert_eq!(peer, spiffe("web"), "{line}"),
        }
        *counts.entry(app).or_insert(0) += 1;
    }
    counts
}
