//! Day-2 operations, end to end in one process with real sidecars and a real control plane:
//! metrics scraped over HTTP and parsed, `/config_dump` without secrets, the runtime log level,
//! the access log, graceful drain (in-flight requests finish, new ones are refused, a deadline
//! cuts the rest), and revocation (existing connections closed and new ones refused within
//! seconds — the latency is measured and printed; a revoked identity gets no certificate; a
//! revoked serial refuses only that certificate).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;
use tokio::net::{TcpListener, TcpStream};

use crate::rotation::{client, connect, get, get_on, mesh};

/// One request to an admin port: (status, body).
async fn admin(addr: SocketAddr, method: Method, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A sample of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the text exposition format strictly enough that a malformed line fails the test.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), HashMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let mut labels = HashMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label k=\"v\"");
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn metrics_are_scraped_over_http_parsed_and_bounded() {
    let m = mesh(KeyAlgorithm::EcdsaP256, &[]).await;
    let out = m.a.outbound_addr.unwrap();
    for i in 0..5 {
        get(out, &format!("/orders/{i}?token=secret-{i}"))
            .await
            .unwrap();
    }
    let (status, text) = admin(m.b.admin_addr, Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    let b = parse_prometheus(&text);
    assert_eq!(
        sum(
            &b,
            "pqmesh_tls_handshakes_total",
            &[("direction", "inbound"), ("group", "X25519MLKEM768")]
        ),
        5.0
    );
    assert_eq!(
        sum(
            &b,
            "pqmesh_connections_total",
            &[("direction", "inbound"), ("outcome", "allowed")]
        ),
        5.0
    );
    assert_eq!(
        sum(
            &b,
            "pqmesh_http_request_duration_seconds_count",
            &[("direction", "inbound"), ("status_class", "2xx")]
        ),
        5.0
    );
    assert!(
        sum(
            &b,
            "pqmesh_http_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ) >= 5.0,
        "histogram buckets are exported"
    );
    let expiry = sum(&b, "pqmesh_certificate_expiry_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now && expiry < now + 25.0 * 3600.0, "{expiry}");
    assert_eq!(
        sum(
            &b,
            "pqmesh_peer_requests_total",
            &[("peer", &spiffe("web")), ("status_class", "2xx")]
        ),
        5.0
    );
    assert_eq!(sum(&b, "pqmesh_trust_bundle_roots", &[]), 1.0);
    assert_eq!(
        sum(&b, "pqmesh_policy_version_info", &[]),
        1.0,
        "one version series"
    );
    // Bounded cardinality: no path, query or token ever becomes a label value.
    for s in &b {
        for v in s.labels.values() {
            assert!(
                !v.contains("/orders") && !v.contains("secret"),
                "unbounded label value {v:?} on {}",
                s.name
            );
        }
    }

    let (status, text) = admin(m.cp.running.admin_addr, Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    let cp = parse_prometheus(&text);
    assert_eq!(
        sum(
            &cp,
            "pqmesh_certificates_issued_total",
            &[("key_alg", "ecdsa-p256")]
        ),
        2.0
    );
    assert!(sum(&cp, "pqmesh_certify_duration_seconds_count", &[]) >= 2.0);
    assert!(sum(&cp, "pqmesh_ca_root_expiry_timestamp_seconds", &[]) > now);
    assert_eq!(sum(&cp, "pqmesh_ca_trusted_roots", &[]), 1.0);
    assert_eq!(sum(&cp, "pqmesh_policy_streams", &[]), 2.0);
    assert_eq!(sum(&cp, "pqmesh_sidecars_on_current_ca", &[]), 2.0);
    assert_eq!(sum(&cp, "pqmesh_sidecars_on_current_policy", &[]), 2.0);
    assert_eq!(sum(&cp, "pqmesh_revoked_entries", &[]), 0.0);
}

#[tokio::test]
async fn config_dump_shows_versions_and_no_secrets() {
    let m = mesh(KeyAlgorithm::EcdsaP256, &[]).await;
    let (status, text) = admin(m.b.admin_addr, Method::GET, "/config_dump").await;
    assert_eq!(status, 200);
    assert!(
        !text.contains(m.cp.token("api")),
        "the bootstrap token is never dumped"
    );
    let dump: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cert = &dump["certificate"];
    assert_eq!(cert["spiffe_id"], spiffe("api"));
    assert_eq!(cert["ca_version"], m.cp.running.ca.borrow().version());
    assert_eq!(cert["trust_bundle"].as_array().unwrap().len(), 1);
    assert!(dump["policy"]["version"].is_string());
    assert_eq!(dump["revocations"]["entries"], 0);
    assert_eq!(dump["config"]["drain_timeout_seconds"], 20.0);

    let (status, text) = admin(m.cp.running.admin_addr, Method::GET, "/policy_status").await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["sidecars_on_current_ca"], 2);
    assert_eq!(status["connected_sidecars"], 2);
}

#[tokio::test]
async fn the_log_filter_changes_at_runtime_and_a_bad_one_changes_nothing() {
    pqmesh_mtls::logging::init();
    let m = mesh(KeyAlgorithm::EcdsaP256, &[]).await;
    let addr = m.b.admin_addr;
    let (status, before) = admin(addr, Method::GET, "/logging").await;
    assert_eq!(status, 200, "{before}");
    let (status, body) = admin(addr, Method::POST, "/logging?level=debug,h2=info").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        admin(addr, Method::GET, "/logging").await.1.trim(),
        "debug,h2=info"
    );
    let (status, body) = admin(addr, Method::POST, "/logging?level=[[[").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid"), "{body}");
    assert_eq!(
        admin(addr, Method::GET, "/logging").await.1.trim(),
        "debug,h2=info",
        "unchanged"
    );
    assert_eq!(admin(addr, Method::POST, "/logging").await.0, 400);
    // The control plane's admin port serves the same endpoint (same process, same filter).
    let (status, body) = admin(m.cp.running.admin_addr, Method::POST, "/logging?level=info").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin(addr, Method::GET, "/logging").await.1.trim(), "info");
}

/// A `MakeWriter` collecting JSON log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

// Current-thread runtime: every sidecar task runs on this thread, under the capturing subscriber.
#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_and_no_token() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let m = mesh(KeyAlgorithm::EcdsaP256, &[("PQMESH_ACCESS_LOG", "true")]).await;
    let out = m.a.outbound_addr.unwrap();
    let mut send = connect(out).await.unwrap();
    for path in ["/a", "/b?x=1"] {
        let req = Request::get(path)
            .header("host", "b.shop")
            .header("authorization", "Bearer very-secret-token-value")
            .body(Empty::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
    }
    get_on(&mut send, "/c").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("very-secret-token-value"), "token in logs");
    let access: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "pqmesh::access")
        .collect();
    assert_eq!(access.len(), 3, "one line per request: {text}");
    println!("access log line: {}", access[0]);
    for line in &access {
        assert_eq!(line["peer"], spiffe("web"));
        assert_eq!(line["status"], 200);
        assert_eq!(line["decision"], "allow");
        assert_eq!(line["direction"], "inbound");
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(access[1]["path"], "/b", "no query string");
}

/// An HTTP app that answers after `delay`.
async fn slow_app(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        "app=b slow\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web", "api"]).await;
    let app = slow_app(Duration::from_millis(800)).await;
    let b = sidecar(with(
        cp.sidecar_env("api", KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_INBOUND_APP_ADDR", &app.to_string()),
            ("PQMESH_INBOUND_ALLOW", "shop/web"),
        ],
    ))
    .await;
    let a = client(&cp, "web", &b).await;
    let out = a.outbound_addr.unwrap();
    let inbound = b.inbound_addr;
    let in_flight = tokio::spawn(async move { get(out, "/slow").await });
    eventually("the request reached B", || b.active_connections() == 1).await;

    // POST /shutdown from loopback starts the drain (what main does on SIGTERM too).
    let (status, _) = admin(b.admin_addr, Method::POST, "/shutdown").await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(1), b.shutdown_requested())
        .await
        .expect("shutdown requested");
    let (status, body) = admin(b.admin_addr, Method::GET, "/ready").await;
    assert_eq!((status, body.trim()), (503, "draining"));
    let started = Instant::now();
    let drain = tokio::spawn(b.shutdown_with_deadline(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(inbound).await.is_err(),
        "the inbound listener is closed while draining"
    );
    let body = in_flight
        .await
        .unwrap()
        .expect("the in-flight request finished");
    assert!(body.contains("slow"));
    let left = drain.await.unwrap();
    assert_eq!(left, 0, "nothing was cut");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "done when drained, not at the deadline"
    );
}

#[tokio::test]
async fn the_drain_deadline_cuts_connections_that_do_not_finish() {
    let m = mesh(KeyAlgorithm::EcdsaP256, &[]).await;
    // An idle keep-alive connection never finishes on its own.
    let mut send = connect(m.a.outbound_addr.unwrap()).await.unwrap();
    get_on(&mut send, "/one").await.unwrap();
    let started = Instant::now();
    let left = m.b.shutdown_with_deadline(Duration::from_millis(300)).await;
    assert_eq!(
        left, 1,
        "the idle connection was still open at the deadline"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_workload_is_cut_off_within_seconds() {
    let m = mesh(KeyAlgorithm::EcdsaP256, &[]).await;
    let other = client(&m.cp, "other", &m.b).await;
    let out = m.a.outbound_addr.unwrap();
    let mut keep_alive = connect(out).await.unwrap();
    get_on(&mut keep_alive, "/before").await.unwrap();
    get(out, "/before").await.unwrap();

    let revoked_at = Instant::now();
    m.cp.write_revocations("identities: [shop/web]\n");
    // Each latency ends when the client sees the failure; B's metrics must then show that B's
    // revocation enforcement caused it (so an unrelated error cannot pass for a fast revocation;
    // B counts right after it dropped the connection, hence the short wait).
    let caused_by_b = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let registry = m.b.metrics.registry.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(1);
            while metric(&registry, name, labels) < 1.0 {
                assert!(
                    Instant::now() < deadline,
                    "a request failed, but not because B enforced the revocation ({name})"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let existing = async {
        loop {
            if get_on(&mut keep_alive, "/existing").await.is_err() {
                let at = revoked_at.elapsed();
                caused_by_b(
                    "pqmesh_revoked_connections_closed_total",
                    &[("direction", "inbound")],
                )
                .await;
                return at;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(10),
                "never closed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let fresh = async {
        loop {
            if get(out, "/new").await.is_err() {
                let at = revoked_at.elapsed();
                // Refused after its handshake, or (when it was already open as the list
                // arrived) closed like the keep-alive connection.
                caused_by_b(
                    "pqmesh_revoked_connections_closed_total",
                    &[("direction", "inbound")],
                )
                .await;
                return at;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(10),
                "never refused"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (closed_after, refused_after) = tokio::join!(existing, fresh);
    println!(
        "revocation latency (file write -> effect): existing connection closed after {} ms, new connections refused after {} ms",
        closed_after.as_millis(),
        refused_after.as_millis()
    );
    assert!(closed_after < Duration::from_secs(5));
    assert!(refused_after < Duration::from_secs(5));
    // Refused for good, and by B's enforcement (not a transient error).
    for _ in 0..3 {
        assert!(get(out, "/again").await.is_err());
    }
    let b = &m.b.metrics.registry;
    assert!(
        metric(
            b,
            "pqmesh_connections_total",
            &[("outcome", "denied_revoked")]
        ) >= 1.0
    );
    assert!(
        metric(
            b,
            "pqmesh_revoked_connections_closed_total",
            &[("direction", "inbound")]
        ) >= 1.0
    );
    // Others are unaffected.
    get(other.outbound_addr.unwrap(), "/other").await.unwrap();

    // With its still-valid certificate it gets neither discovery answers nor policy.
    let tls = m.a.current().unwrap();
    let cp_addr = m.cp.running.grpc_addr.to_string();
    let channel = tls
        .control_plane_channel(&cp_addr, &m.cp.running.identity)
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let status =
        pqmesh_proto::discovery::v1::discovery_client::DiscoveryClient::new(channel.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect_err("discovery refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let status = pqmesh_proto::policy::v1::policy_client::PolicyClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("policy refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // The revoked workload cannot obtain a new certificate.
    let certifier = pqmesh_sidecar::identity::GrpcCertifier {
        addr: m.cp.running.grpc_addr.to_string(),
        server_id: m.cp.running.identity.clone(),
        kx: pqmesh_mtls::KeyExchangePolicy::default(),
        token: pqmesh_sidecar::config::TokenSource::Inline(m.cp.token("web").to_owned()),
        bundle: std::sync::Mutex::new(
            pqmesh_mtls::TrustBundle::from_pem(
                &std::fs::read_to_string(&m.cp.running.trust_bundle_path).unwrap(),
            )
            .unwrap(),
        ),
    };
    let err = pqmesh_sidecar::identity::obtain(
        &certifier,
        KeyAlgorithm::EcdsaP256,
        Default::default(),
        None,
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(&err, pqmesh_sidecar::identity::IdentityError::Refused { code: tonic::Code::PermissionDenied, message } if message.contains("revoked")),
        "{err}"
    );
    assert_eq!(
        metric(
            &m.cp.running.metrics.registry,
            "pqmesh_certificates_refused_total",
            &[("reason", "revoked")]
        ),
        1.0
    );

    // Lifting the revocation lets it back in.
    m.cp.write_revocations("identities: []\n");
    eventually_async("web is admitted again", || async {
        get(out, "/after").await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_revoked_serial_refuses_that_certificate_until_it_is_replaced() {
    let m = mesh(KeyAlgorithm::EcdsaP256, &[]).await;
    let out = m.a.outbound_addr.unwrap();
    get(out, "/before").await.unwrap();
    let b_serial = m.b.current().unwrap().creds.serial_hex.clone();
    m.cp.write_revocations(&format!("serials: [\"{}\"]\n", b_serial.to_lowercase()));
    eventually("A enforces the list", || m.a.revoked().len() == 1).await;
    // A (the client) refuses B's revoked certificate itself.
    assert!(get(out, "/refused").await.is_err());
    assert!(
        metric(
            &m.a.metrics.registry,
            "pqmesh_connections_total",
            &[("direction", "outbound"), ("outcome", "denied_revoked")]
        ) >= 1.0
    );
    // A new certificate for B (new serial) is accepted.
    m.b.renew_now();
    eventually("B has a new serial", || {
        m.b.current().unwrap().creds.serial_hex != b_serial
    })
    .await;
    get(out, "/after").await.unwrap();
}

#[tokio::test]
async fn an_invalid_revocation_edit_keeps_the_last_good_list() {
    let m = mesh(KeyAlgorithm::EcdsaP256, &[]).await;
    let out = m.a.outbound_addr.unwrap();
    m.cp.write_revocations("identities: [shop/other]\n");
    eventually("the list arrived", || m.a.revoked().len() == 1).await;
    m.cp.write_revocations("identities: [not-an-identity]\n");
    let cp = m.cp.running.metrics.registry.clone();
    eventually("the bad edit was refused", || {
        metric(
            &cp,
            "pqmesh_revocation_reloads_total",
            &[("outcome", "invalid")],
        ) >= 1.0
    })
    .await;
    assert_eq!(m.a.revoked().len(), 1, "last good list kept");
    get(out, "/fine").await.unwrap();
}

#[tokio::test]
async fn policy_decisions_are_counted_by_policy_rule_and_reason() {
    let m = mesh(
        KeyAlgorithm::EcdsaP256,
        &[("PQMESH_WORKLOAD_LABELS", "app=orders")],
    )
    .await;
    m.cp.write_policy(
        "orders.yaml",
        "apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {name: orders, namespace: shop}\nspec:\n  selector: {matchLabels: {app: orders}}\n  peers: [\"shop/web\"]\n  rules:\n    - {methods: [POST], paths: [\"/admin\"]}\n    - {methods: [GET], paths: [\"/orders/**\"]}\n",
        1,
    )
    .await;
    eventually("B applied the policy", || {
        m.b.policy().is_some_and(|p| !p.policy.policies.is_empty())
    })
    .await;
    let out = m.a.outbound_addr.unwrap();
    get(out, "/orders/7").await.unwrap();
    get(out, "/orders/8").await.unwrap();
    assert!(get(out, "/elsewhere").await.is_err(), "no rule matches");
    let (_, text) = admin(m.b.admin_addr, Method::GET, "/metrics").await;
    let b = parse_prometheus(&text);
    assert_eq!(
        sum(
            &b,
            "pqmesh_policy_allows_total",
            &[("policy", "shop/orders"), ("rule", "1")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &b,
            "pqmesh_policy_decisions_total",
            &[("decision", "deny"), ("reason", "no_rule_matched")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &b,
            "pqmesh_peer_requests_total",
            &[("peer", &spiffe("web")), ("status_class", "4xx")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_revoked_sidecars_control_plane_streams_are_closed() {
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web"]).await;
    let a = sidecar_redirected(
        cp.sidecar_env("web", KeyAlgorithm::EcdsaP256),
        Some("127.0.0.1:9".parse().unwrap()),
    )
    .await;
    let registry = cp.running.metrics.registry.clone();
    let streams = |name: &str| metric(&registry, name, &[]);
    assert_eq!(streams("pqmesh_discovery_streams"), 1.0);
    assert_eq!(streams("pqmesh_policy_streams"), 1.0);
    cp.write_revocations("identities: [shop/web]\n");
    eventually("both streams were closed", || {
        streams("pqmesh_discovery_streams") == 0.0 && streams("pqmesh_policy_streams") == 0.0
    })
    .await;
    assert!(streams("pqmesh_revoked_streams_closed_total") >= 2.0);
    drop(a);
}
