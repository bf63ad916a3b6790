//! The webhook's HTTPS server: real TLS clients (including the TLS 1.2 / classical key exchange
//! a Go API server may use), HTTP/1.1 over hyper, the routes and limits, and the control plane
//! serving it with its mesh-CA certificate when `PQMESH_WEBHOOK_ADDR` is set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, ALLOW, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use pqmesh_control_plane::inject::{self, InjectMetrics};
use pqmesh_mtls::{crypto_provider, KeyExchangePolicy};
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use super::{cfg, fixture};

struct Webhook {
    addr: SocketAddr,
    roots: RootCertStore,
    registry: prometheus::Registry,
    tls: watch::Sender<Arc<ServerConfig>>,
    task: tokio::task::JoinHandle<()>,
}

/// `serve` on 127.0.0.1:0 with a self-signed certificate for `localhost`.
async fn start() -> Webhook {
    let self_signed = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert: CertificateDer<'static> = self_signed.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        self_signed.signing_key.serialize_der(),
    ));
    let base = ServerConfig::builder_with_provider(crypto_provider(KeyExchangePolicy::HybridOnly))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let (tls, rx) =
        watch::channel(inject::webhook_server_config(base.cert_resolver.clone()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = prometheus::Registry::new_custom(Some("pqmesh".into()), None).unwrap();
    let metrics = InjectMetrics::register(&registry).unwrap();
    let task = tokio::spawn(inject::serve(listener, rx, Arc::new(cfg()), metrics));
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    Webhook {
        addr,
        roots,
        registry,
        tls,
        task,
    }
}

/// A client offering exactly `versions` and `groups` (rustls' own provider, not pqmesh's).
fn client(
    roots: &RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = groups;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What the Go API server offers by default: TLS 1.2 and 1.3, classical groups.
fn go_like(roots: &RootCertStore) -> Arc<ClientConfig> {
    client(
        roots,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        vec![kx_group::X25519, kx_group::SECP256R1],
    )
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    version: Option<ProtocolVersion>,
    group: Option<rustls::NamedGroup>,
}

async fn call(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (_, conn) = stream.get_ref();
    let version = conn.protocol_version();
    let group = conn.negotiated_key_exchange_group().map(|g| g.name());
    assert_eq!(
        conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "the webhook speaks HTTP/1.1"
    );
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.expect("an HTTP answer");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
        version,
        group,
    }
}

fn counter(registry: &prometheus::Registry, outcome: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "pqmesh_injections_total")
        .flat_map(|f| f.get_metric())
        .find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "outcome" && l.value() == outcome)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn answers_a_review_like_the_pure_core() {
    let webhook = start().await;
    let body = fixture("deployment-pod.json");
    // The API server appends ?timeout=...; the route ignores the query.
    let answer = call(
        webhook.addr,
        go_like(&webhook.roots),
        Method::POST,
        "/inject?timeout=10s",
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.headers[CONTENT_TYPE], "application/json");
    assert_eq!(answer.body, inject::review(&body, &cfg()).unwrap().body);
    let out: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    assert_eq!(counter(&webhook.registry, "injected"), 1);
    assert_eq!(
        counter(&webhook.registry, "refused"),
        0,
        "every outcome exists from the start"
    );
    let text = pqmesh_mtls::admin::render_metrics(&webhook.registry).body;
    assert!(
        text.contains("pqmesh_injections_total{outcome=\"injected\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn routes_and_limits() {
    let webhook = start().await;
    let tls = go_like(&webhook.roots);
    let review = fixture("job-pod.json");
    let no_uid = {
        let mut v: Value = serde_json::from_slice(&review).unwrap();
        v["request"].as_object_mut().unwrap().remove("uid");
        serde_json::to_vec(&v).unwrap()
    };
    // method, path, content type, body, expected status, expected text in the answer
    type Case = (
        Method,
        &'static str,
        &'static str,
        Vec<u8>,
        StatusCode,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/inject",
            "application/json",
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
            "takes POST",
        ),
        (
            Method::PUT,
            "/inject",
            "application/json",
            review.clone(),
            StatusCode::METHOD_NOT_ALLOWED,
            "takes POST",
        ),
        (
            Method::POST,
            "/mutate",
            "application/json",
            review.clone(),
            StatusCode::NOT_FOUND,
            "POST /inject",
        ),
        (
            Method::GET,
            "/",
            "application/json",
            vec![],
            StatusCode::NOT_FOUND,
            "POST /inject",
        ),
        (
            Method::POST,
            "/inject",
            "text/plain",
            review.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            Method::POST,
            "/inject",
            "application/json",
            b"{\"apiVersion\":".to_vec(),
            StatusCode::BAD_REQUEST,
            "not JSON: EOF while parsing",
        ),
        (
            Method::POST,
            "/inject",
            "application/json",
            no_uid,
            StatusCode::BAD_REQUEST,
            "request.uid is missing",
        ),
        (
            Method::POST,
            "/inject",
            "application/json",
            vec![b' '; 2 << 20],
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit is 1048576 bytes",
        ),
        (
            Method::POST,
            "/inject",
            "application/json; charset=utf-8",
            review.clone(),
            StatusCode::OK,
            "\"allowed\":true",
        ),
    ];
    for (method, path, content_type, body, status, want) in cases {
        let what = format!("{method} {path} ({content_type}, {} bytes)", body.len());
        let answer = call(webhook.addr, tls.clone(), method, path, content_type, body).await;
        let text = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, status, "{what}: {text}");
        assert!(text.contains(want), "{what}: {text}");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(answer.headers[ALLOW], "POST", "{what}");
        }
    }
    assert_eq!(
        counter(&webhook.registry, "error"),
        4,
        "415, 400, 400 and 413 count as errors"
    );
    assert_eq!(counter(&webhook.registry, "injected"), 1);
}

/// A chunked body (no Content-Length) is cut off at the limit too, and the 413 still arrives.
#[tokio::test]
async fn chunked_oversize_body_is_refused() {
    let webhook = start().await;
    let tcp = TcpStream::connect(webhook.addr).await.unwrap();
    let stream = TlsConnector::from(go_like(&webhook.roots))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let chunks = (0..40).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
            b' ';
            64 << 10
        ])))
    });
    let body = http_body_util::StreamBody::new(tokio_stream::iter(chunks));
    let request = Request::builder()
        .method(Method::POST)
        .uri("/inject")
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.expect("an HTTP answer");
    assert!(response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .is_some());
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(counter(&webhook.registry, "error"), 1);
}

#[tokio::test]
async fn accepts_the_tls_an_api_server_offers() {
    let webhook = start().await;
    let body = fixture("opted-out-pod.json");
    let tls12 = client(
        &webhook.roots,
        &[&rustls::version::TLS12],
        vec![kx_group::X25519],
    );
    let tls13_classical = client(
        &webhook.roots,
        &[&rustls::version::TLS13],
        vec![kx_group::SECP256R1],
    );
    let hybrid = crypto_provider(KeyExchangePolicy::HybridOnly);
    let mut pq = ClientConfig::builder_with_provider(hybrid)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(webhook.roots.clone())
        .with_no_client_auth();
    pq.alpn_protocols = vec![b"http/1.1".to_vec()];
    for (what, tls, version, group) in [
        (
            "TLS 1.2 with X25519",
            tls12,
            ProtocolVersion::TLSv1_2,
            rustls::NamedGroup::X25519,
        ),
        (
            "TLS 1.3 with P-256",
            tls13_classical,
            ProtocolVersion::TLSv1_3,
            rustls::NamedGroup::secp256r1,
        ),
        (
            "TLS 1.3 hybrid",
            Arc::new(pq),
            ProtocolVersion::TLSv1_3,
            rustls::NamedGroup::X25519MLKEM768,
        ),
    ] {
        let answer = call(
            webhook.addr,
            tls,
            Method::POST,
            "/inject",
            "application/json",
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{what}");
        assert_eq!(
            (answer.version, answer.group),
            (Some(version), Some(group)),
            "{what}"
        );
    }
}

#[tokio::test]
async fn stops_when_its_tls_source_goes_away() {
    let webhook = start().await;
    drop(webhook.tls);
    tokio::time::timeout(Duration::from_secs(5), webhook.task)
        .await
        .expect("serve returns once the TLS config sender is dropped")
        .unwrap();
    assert!(
        TcpStream::connect(webhook.addr).await.is_err(),
        "the listener is closed"
    );
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The control plane serves the webhook with a certificate from its own CA (for the names in
/// `PQMESH_SERVING_NAMES`) only when `PQMESH_WEBHOOK_ADDR` is set.
#[tokio::test]
async fn control_plane_serves_the_webhook_when_configured() {
    let dir = TempDir(std::env::temp_dir().join(format!(
        "pqmesh-webhook-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    )));
    let env = |webhook: bool| {
        let mut env: HashMap<String, String> = [
            ("PQMESH_GRPC_ADDR", "127.0.0.1:0"),
            ("PQMESH_ADMIN_ADDR", "127.0.0.1:0"),
            ("PQMESH_SIDECAR_IMAGE", "registry.example/pqmesh:0.1.0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if webhook {
            env.insert("PQMESH_WEBHOOK_ADDR".into(), "127.0.0.1:0".into());
        }
        env
    };
    use pqmesh_control_plane::config::Config;
    let off = pqmesh_control_plane::start(Config::from_env(dir.0.clone(), &env(false)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        off.webhook_addr, None,
        "local mode has no webhook unless asked"
    );
    off.shutdown().await;

    let running = pqmesh_control_plane::start(Config::from_env(dir.0.clone(), &env(true)).unwrap())
        .await
        .unwrap();
    let addr = running.webhook_addr.expect("webhook listening");
    let pem = std::fs::read_to_string(&running.trust_bundle_path).unwrap();
    let mut roots = RootCertStore::empty();
    for cert in pqmesh_mtls::x509::certs_from_pem(&pem).unwrap() {
        roots.add(cert).unwrap();
    }
    let body = fixture("bare-pod.json");
    let answer = call(
        addr,
        go_like(&roots),
        Method::POST,
        "/inject",
        "application/json",
        body,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let out: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(out["response"]["allowed"], true);
    let registry = &running.metrics.registry;
    assert_eq!(
        counter(registry, "injected"),
        1,
        "counted on the control plane's registry"
    );
    running.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the webhook stops with the control plane");
}
