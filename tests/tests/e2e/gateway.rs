//! The edge gateway end to end in local mode: a real OAuth server (oidc-provider), real outside
//! clients (curl with OpenSSL 3.0, Node 24 with OpenSSL 3.5) → `pqmesh-gateway` (Gateway API
//! YAML, outside TLS, EdgePolicy) → PQ mTLS with the gateway's identity → the service's sidecar
//! (which checks the gateway's identity and the JWT again) → an app that echoes what it
//! received. Every assertion about what passed is judged by what the app received.
//! Needs Node 24 and oidc-provider (installed by ./test.sh): `#[ignore]`d for a bare cargo test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::fixtures;
use pqmesh_tests::oauth::{self, decode_jwt, OAuthServer};
use pqmesh_tests::*;
use tokio::net::{TcpListener, TcpStream};

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

/// An app that answers with the path and every header it received, one per line.
pub(crate) async fn header_app(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut body = format!("app={name} {} {}\n", req.method(), req.uri());
                        for (k, v) in req.headers() {
                            body.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                        }
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, count)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn issuer_yaml(oauth: &OAuthServer) -> String {
    fixtures::corp_issuer(
        oauth,
        "  maxTokenLifetimeSeconds: 3600\n  jwks: {minRefetchSeconds: 1}\n",
        "",
    )
}

fn gateway_yaml(http: u16, https: u16, pq: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: pqmesh}}
spec: {{controllerName: pqmesh.io/gateway}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  gatewayClassName: pqmesh
  listeners:
    - {{name: http, port: {http}, protocol: HTTP}}
    - name: https
      port: {https}
      protocol: HTTPS
      hostname: shop.example
      tls: {{certificateRefs: [{{name: edge-cert}}]}}
    - name: other
      port: {https}
      protocol: HTTPS
      hostname: other.example
      tls: {{certificateRefs: [{{name: other-cert}}]}}
    - name: pq-only
      port: {pq}
      protocol: HTTPS
      tls: {{certificateRefs: [{{name: edge-cert}}], options: {{pqmesh.io/key-exchange: require-pq}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: orders, namespace: shop}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [shop.example]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /orders}}}}]
      filters:
        - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-edge, value: "yes"}}], remove: [x-drop]}}}}
        - {{type: ResponseHeaderModifier, responseHeaderModifier: {{add: [{{name: x-served-by, value: pqmesh-gateway}}]}}}}
      backendRefs: [{{name: orders, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /orders}}, headers: [{{name: x-version, value: "2"}}]}}]
      backendRefs: [{{name: orders-v2, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /orders}}}}}}]
      backendRefs: [{{name: orders, port: 80, weight: 1}}, {{name: orders-v2, port: 80, weight: 1}}]
    - matches: [{{path: {{type: Exact, value: /old}}}}]
      filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /orders/new}}, statusCode: 301}}}}]
---
apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {{name: orders-edge, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders}}
  token: {{issuer: corp, scopes: ["orders:read"]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: other, namespace: shop}}
spec:
  parentRefs: [{{name: edge, sectionName: other}}]
  rules: [{{backendRefs: [{{name: orders-v2, port: 80}}]}}]
---
apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {{name: other-edge, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: other}}
  token: {{issuer: corp, scopes: ["orders:read"]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: limited, namespace: shop}}
spec:
  parentRefs: [{{name: edge, sectionName: http}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /limited}}}}]
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /orders/limited}}}}}}]
      backendRefs: [{{name: orders, port: 80}}]
---
apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {{name: limited-edge, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: limited}}
  token: {{issuer: corp, scopes: ["orders:read"]}}
  rateLimit: {{key: clientId, requests: 1, periodSeconds: 2, burst: 2}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: admin, namespace: shop}}
spec:
  parentRefs: [{{name: edge, sectionName: http}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /admin}}}}]
      backendRefs: [{{name: orders, port: 80}}]
---
apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {{name: admin-edge, namespace: shop}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: admin}}
  token: {{issuer: corp, scopes: ["admin"]}}
"#
    )
}

fn access_policy() -> String {
    fixtures::orders_policy(
        &[],
        r#"["shop/gateway"]"#,
        "    - {methods: [GET], paths: [\"/orders/**\"], scopes: [\"orders:read\"]}\n    - {methods: [GET], paths: [\"/admin/**\"]}\n",
    )
}

pub(crate) struct Setup {
    pub(crate) cp: ControlPlane,
    pub(crate) oauth: OAuthServer,
    _services: Vec<pqmesh_sidecar::RunningSidecar>,
    web: pqmesh_sidecar::RunningSidecar,
    pub(crate) gateway: pqmesh_gateway::RunningGateway,
    pub(crate) _dir: TempDir,
    pub(crate) ca: std::path::PathBuf,
    /// Requests the `orders` app (v1) and `orders-v2` received.
    pub(crate) v1: Arc<AtomicUsize>,
    pub(crate) v2: Arc<AtomicUsize>,
    /// The HTTP, HTTPS and require-pq listener ports.
    pub(crate) ports: (u16, u16, u16),
}

pub(crate) async fn setup() -> Setup {
    setup_with("", &[]).await
}

/// `extra`: more config documents (then refused objects are expected); `settings`: more
/// gateway settings.
pub(crate) async fn setup_with(extra: &str, settings: &[(&str, &str)]) -> Setup {
    let oauth = OAuthServer::start(300).await;
    let cp = ControlPlane::start(ECDSA, &["api", "gateway", "web"]).await;
    cp.write_secrets(&format!(
        "secrets:\n  - namespace: shop\n    name: gateway\n    data: {{client-secret: {}}}\n",
        oauth::GATEWAY_CLIENT_SECRET
    ));
    cp.write_policy(
        "orders.yaml",
        &(issuer_yaml(&oauth) + "---\n" + &access_policy()),
        2,
    )
    .await;
    let (app1, v1) = header_app("orders").await;
    let (app2, v2) = header_app("orders-v2").await;
    let labels = [("PQMESH_WORKLOAD_LABELS", "app=orders")];
    let b1 = sidecar_redirected(with(cp.sidecar_env("api", ECDSA), &labels), Some(app1)).await;
    let b2 = sidecar_redirected(with(cp.sidecar_env("api", ECDSA), &labels), Some(app2)).await;
    let web = sidecar(with(
        cp.sidecar_env("web", ECDSA),
        &[
            ("PQMESH_OUTBOUND_PEER_ADDR", &b1.inbound_addr.to_string()),
            ("PQMESH_OUTBOUND_PEER_ID", &spiffe("api")),
        ],
    ))
    .await;

    let dir = TempDir::new("gateway");
    let ports = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/edge.yaml"),
        gateway_yaml(ports.0, ports.1, ports.2),
    )
    .unwrap();
    std::fs::write(dir.path().join("config/issuer.yaml"), issuer_yaml(&oauth)).unwrap();
    if !extra.is_empty() {
        std::fs::write(dir.path().join("config/extra.yaml"), extra).unwrap();
    }
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(
        &secrets,
        format!(
            "secrets:\n  - {{namespace: shop, name: gateway, data: {{client-secret: {}}}}}\n",
            oauth::GATEWAY_CLIENT_SECRET
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.path().join("backends.yaml"),
        format!(
            "services:\n  - name: shop/orders\n    port: 80\n    endpoints: [{{address: \"{}\", identity: \"{}\"}}]\n  - name: shop/orders-v2\n    port: 80\n    endpoints: [{{address: \"{}\", identity: \"{}\"}}]\n",
            b1.inbound_addr,
            spiffe("api"),
            b2.inbound_addr,
            spiffe("api")
        ),
    )
    .unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).unwrap();
    let certs = dir.path().join("certs/shop/edge-cert");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(certs.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    // A second hostname on the same port, with its own certificate (chosen by SNI).
    let other = rcgen::generate_simple_self_signed(vec!["other.example".to_owned()]).unwrap();
    let other_dir = dir.path().join("certs/shop/other-cert");
    std::fs::create_dir_all(&other_dir).unwrap();
    std::fs::write(other_dir.join("tls.crt"), other.cert.pem()).unwrap();
    std::fs::write(other_dir.join("tls.key"), other.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), other.cert.pem()).unwrap();

    let mut env: HashMap<String, String> = cp.sidecar_env("gateway", ECDSA);
    env.insert(
        "PQMESH_GATEWAY_DIR".into(),
        dir.path().display().to_string(),
    );
    env.insert("PQMESH_GATEWAY_LISTEN_HOST".into(), "127.0.0.1".into());
    env.insert("PQMESH_GATEWAY_ADMIN_ADDR".into(), "127.0.0.1:0".into());
    for (k, v) in settings {
        env.insert((*k).into(), (*v).into());
    }
    let config = pqmesh_gateway::config::Config::from_env(&env).expect("gateway config");
    let gateway = pqmesh_gateway::start(config).await.expect("gateway starts");
    tokio::time::timeout(Duration::from_secs(20), gateway.ready())
        .await
        .expect("gateway certified");
    for v in gateway.verdicts().iter().filter(|_| extra.is_empty()) {
        assert!(v.accepted.is_ok() && v.resolved_refs.is_ok(), "{v:?}");
    }
    if extra.is_empty() {
        assert_eq!(gateway.listeners().len(), 4);
    }
    assert_eq!(
        gateway.current().unwrap().creds.id.to_string(),
        spiffe("gateway"),
        "the gateway's own mesh identity"
    );
    Setup {
        cp,
        oauth,
        _services: vec![b1, b2],
        web,
        gateway,
        _dir: dir,
        ca,
        v1,
        v2,
        ports,
    }
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: String,
}

pub(crate) async fn call(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header("host", "shop.example");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Answer {
        status,
        headers,
        body,
    }
}

pub(crate) fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The `authorization` line the app received (the JWT after `Bearer `).
fn received_jwt(body: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("authorization: Bearer "))
        .unwrap_or_else(|| panic!("the app received no bearer: {body}"))
        .to_owned()
}

pub(crate) async fn curl(args: &[&str]) -> (String, bool) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (text, out.status.success())
}

async fn node(port: u16, ca: &std::path::Path, token: &str) -> String {
    let script = format!(
        r#"const https = require('https'), fs = require('fs');
const req = https.request({{host: '127.0.0.1', port: {port}, path: '/orders/node', servername: 'shop.example',
  headers: {{host: 'shop.example', authorization: 'Bearer {token}'}}, ca: fs.readFileSync('{ca}')}}, res => {{
  let b = ''; res.on('data', d => b += d); res.on('end', () => console.log(res.statusCode + '\n' + b)); }});
req.on('error', e => console.log('error ' + e.message)); req.end();"#,
        ca = ca.display()
    );
    let out = tokio::process::Command::new(oauth::node24())
        .args(["-e", &script])
        .output()
        .await
        .expect("node runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn outside_clients_exchange_opaque_tokens_at_the_gateway_and_the_app_receives_the_jwt() {
    let mut s = setup().await;
    let registry = &s.gateway.metrics.registry;
    let token = s.oauth.token("orders:read").await;
    assert!(!token.contains('.'), "opaque: {token}");
    let https = format!("shop.example:{}:127.0.0.1", s.ports.1);
    let url = |p: &str| format!("https://shop.example:{}{p}", s.ports.1);
    let ca = s.ca.display().to_string();
    let auth = format!("authorization: Bearer {token}");

    // curl (OpenSSL 3.0: classical X25519) over TLS 1.3, then TLS 1.2.
    let (out, ok) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &https,
        "-H",
        &auth,
        &url("/orders/curl"),
    ])
    .await;
    assert!(ok, "{out}");
    assert!(out.starts_with("app=orders GET /orders/curl"), "{out}");
    let jwt = received_jwt(&out);
    let (header, payload) = decode_jwt(&jwt);
    assert_eq!(
        header["typ"], "token-introspection+jwt",
        "the JWT the OAuth server signed, as received"
    );
    assert_eq!(
        payload["token_introspection"]["client_id"],
        oauth::SHOP_CLIENT_ID
    );
    assert!(
        !out.contains(&token),
        "the opaque token never reaches the app"
    );
    assert!(
        out.contains(&format!("x-pqmesh-peer-identity: {}", spiffe("gateway"))),
        "{out}"
    );
    let (out, ok) = curl(&[
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cacert",
        &ca,
        "--resolve",
        &https,
        "-H",
        &auth,
        &url("/orders/tls12"),
    ])
    .await;
    assert!(
        ok && out.starts_with("app=orders GET /orders/tls12"),
        "{out}"
    );
    let group = |g: &str, v: &str| {
        metric(
            registry,
            "pqmesh_gateway_tls_handshakes_total",
            &[
                ("group", g),
                ("version", v),
                ("listener", "shop/edge/https"),
            ],
        )
    };
    assert_eq!(group("X25519", "TLS1.3"), 1.0);
    assert_eq!(group("X25519", "TLS1.2"), 1.0);

    // SNI: the same port serves other.example with its own certificate and its own route.
    let other_ca = s._dir.path().join("other-ca.pem").display().to_string();
    let other = format!("other.example:{}:127.0.0.1", s.ports.1);
    let (out, ok) = curl(&[
        "--cacert",
        &other_ca,
        "--resolve",
        &other,
        "-H",
        &auth,
        &format!("https://other.example:{}/orders/sni", s.ports.1),
    ])
    .await;
    assert!(
        ok && out.starts_with("app=orders-v2 GET /orders/sni"),
        "{out}"
    );
    let (out, ok) = curl(&[
        "--cacert",
        &other_ca,
        "--resolve",
        &https,
        "-H",
        &auth,
        &url("/orders/x"),
    ])
    .await;
    assert!(
        !ok,
        "shop.example's certificate is not other.example's: {out}"
    );

    // Certificate hot reload: new files for edge-cert are served to new connections.
    let renewed = rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).unwrap();
    let certs = s._dir.path().join("certs/shop/edge-cert");
    std::fs::write(certs.join("tls.key"), renewed.signing_key.serialize_pem()).unwrap();
    std::fs::write(certs.join("tls.crt"), renewed.cert.pem()).unwrap();
    let renewed_ca = s._dir.path().join("renewed-ca.pem");
    std::fs::write(&renewed_ca, renewed.cert.pem()).unwrap();
    let renewed_ca = renewed_ca.display().to_string();
    let mut reloaded = false;
    for _ in 0..50 {
        let (out, ok) = curl(&[
            "--cacert",
            &renewed_ca,
            "--resolve",
            &https,
            "-H",
            &auth,
            &url("/orders/renewed"),
        ])
        .await;
        if ok {
            assert!(out.starts_with("app=orders GET /orders/renewed"), "{out}");
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reloaded, "the renewed certificate was never served");
    let (out, ok) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &https,
        "-H",
        &auth,
        &url("/orders/x"),
    ])
    .await;
    assert!(!ok, "the old certificate is no longer served: {out}");
    std::fs::write(&s.ca, renewed.cert.pem()).unwrap();
    let before_handshakes = group("X25519MLKEM768", "TLS1.3");
    assert_eq!(before_handshakes, 0.0);

    // Node 24 (OpenSSL 3.5) negotiates the hybrid group.
    let out = node(s.ports.1, &s.ca, &token).await;
    assert!(out.starts_with("200\napp=orders GET /orders/node"), "{out}");
    assert_eq!(group("X25519MLKEM768", "TLS1.3"), 1.0);

    // A listener that requires PQ: Node gets in, curl's classical-only handshake fails.
    let out = node(s.ports.2, &s.ca, &token).await;
    assert!(out.starts_with("200\n"), "{out}");
    let pq = format!("shop.example:{}:127.0.0.1", s.ports.2);
    let (out, ok) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &pq,
        "-H",
        &auth,
        &format!("https://shop.example:{}/orders/x", s.ports.2),
    ])
    .await;
    assert!(
        !ok,
        "classical client must fail on a require-pq listener: {out}"
    );
    // Review 7 F12: the refused outside handshake is counted, as documented.
    let failures = s
        .gateway
        .metrics
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == "pqmesh_gateway_tls_handshake_failures_total")
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()))
        .sum::<f64>();
    assert!(
        failures >= 1.0,
        "no pqmesh_gateway_tls_handshake_failures_total"
    );
    let before = s.v1.load(Ordering::SeqCst);

    // Refusals at the edge: the app sees none of them.
    let http = SocketAddr::from(([127, 0, 0, 1], s.ports.0));
    let r = call(http, "/orders/1", &[]).await;
    assert_eq!(
        (r.status, r.headers["www-authenticate"].to_str().unwrap()),
        (401, "Bearer")
    );
    let write_only = s.oauth.token("orders:write").await;
    let r = call(
        http,
        "/orders/1",
        &[("authorization", &bearer(&write_only))],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    let r = call(http, "/orders/1", &[("authorization", &bearer(&jwt))]).await;
    assert_eq!(
        r.status, 401,
        "a JWT from outside is refused on an opaque-token route"
    );
    assert!(r.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    let r = call(
        http,
        "/orders/1",
        &[("authorization", "Bearer not-a-real-token")],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        s.v1.load(Ordering::SeqCst),
        before,
        "no refused request reached the app"
    );

    // Bypassing the gateway: a mesh peer other than the gateway, with a valid token, is refused
    // by the service's sidecar; so is a plaintext connection to it.
    let r = call(
        s.web.outbound_addr.unwrap(),
        "/orders/1",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(
        s.web.outbound_addr.unwrap(),
        "/orders/1",
        &[("authorization", &bearer(&jwt))],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let direct = s._services[0].inbound_addr;
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        let tcp = TcpStream::connect(direct).await.unwrap();
        match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await {
            Ok((mut send, conn)) => {
                tokio::spawn(conn);
                let req = Request::builder()
                    .uri("/orders/1")
                    .header("host", "x")
                    .header("authorization", bearer(&jwt))
                    .body(Empty::new())
                    .unwrap();
                send.send_request(req)
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
            Err(_) => 0,
        }
    })
    .await
    .unwrap_or(0);
    assert_ne!(
        refused, 200,
        "plaintext straight to the service's sidecar is refused"
    );
    assert_eq!(
        s.v1.load(Ordering::SeqCst),
        before,
        "nothing that bypassed the gateway reached the app"
    );
    // The admin port shows the outside handshakes and each object's verdict.
    let admin = s.gateway.admin_addr;
    let r = call(admin, "/metrics", &[]).await;
    assert!(
        r.body
            .contains("pqmesh_gateway_tls_handshakes_total{group=\"X25519MLKEM768\""),
        "{}",
        r.body
    );
    let r = call(admin, "/verdicts", &[]).await;
    assert!(
        r.body.contains("EdgePolicy shop/orders-edge") && !r.body.contains("False"),
        "{}",
        r.body
    );
    assert_eq!(call(admin, "/ready", &[]).await.status, 200);
    // Review 7 F12: pqmesh_ready agrees with /ready; the control-plane gauge follows the
    // gateway's policy stream (which brings the deny list).
    let r = call(admin, "/metrics", &[]).await;
    assert!(
        r.body.lines().any(|l| l == "pqmesh_ready 1")
            && r.body
                .lines()
                .any(|l| l == "pqmesh_control_plane_connected 1")
            && r.body
                .contains("pqmesh_gateway_tls_handshake_failures_total{"),
        "{}",
        r.body
    );

    // The OAuth server down: a token not yet exchanged gets 503, never a pass.
    let fresh = s.oauth.token("orders:read").await;
    s.oauth.stop().await;
    let r = call(http, "/orders/1", &[("authorization", &bearer(&fresh))]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        s.v1.load(Ordering::SeqCst),
        before,
        "nothing reached the app"
    );
}

#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn routes_filters_weights_and_rate_limits_as_the_app_sees_them() {
    let s = setup().await;
    let http = SocketAddr::from(([127, 0, 0, 1], s.ports.0));
    let token = s.oauth.token("orders:read").await;
    let auth = bearer(&token);

    // Header modifiers: the app gets x-edge and not x-drop; the client gets x-served-by.
    let r = call(
        http,
        "/orders/a?q=1",
        &[
            ("authorization", &auth),
            ("x-drop", "secret"),
            ("x-pqmesh-peer-identity", "spoofed"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.starts_with("app=orders GET /orders/a?q=1"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("x-edge: yes") && !r.body.contains("x-drop") && !r.body.contains("spoofed"),
        "{}",
        r.body
    );
    assert_eq!(r.headers["x-served-by"], "pqmesh-gateway");
    // A header match selects the v2 backend.
    let r = call(
        http,
        "/orders/b",
        &[("authorization", &auth), ("x-version", "2")],
    )
    .await;
    assert!(
        r.body.starts_with("app=orders-v2 GET /orders/b"),
        "{}",
        r.body
    );
    // Redirect.
    let r = call(http, "/old?x=1", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "http://shop.example/orders/new?x=1");
    // No route: 404; the route's hostname does not match: 404.
    assert_eq!(
        call(http, "/nothing", &[("authorization", &auth)])
            .await
            .status,
        404
    );
    // URL rewrite and weights 1:1 over two backends.
    let (v1, v2) = (s.v1.load(Ordering::SeqCst), s.v2.load(Ordering::SeqCst));
    for i in 0..40 {
        let r = call(http, &format!("/split/{i}"), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body.contains(&format!(" GET /orders/{i}\n")),
            "rewritten: {}",
            r.body
        );
    }
    let (d1, d2) = (
        s.v1.load(Ordering::SeqCst) - v1,
        s.v2.load(Ordering::SeqCst) - v2,
    );
    assert_eq!(d1 + d2, 40);
    assert!(
        d1 >= 8 && d2 >= 8,
        "both weighted backends served: {d1} and {d2}"
    );
    // Pooled: the requests so far did not take a handshake each to the backends' sidecars.
    let handshakes = metric(
        &s.gateway.metrics.registry,
        "pqmesh_tls_handshakes_total",
        &[("direction", "outbound")],
    );
    assert!(
        (2.0..=10.0).contains(&handshakes),
        "{handshakes} mesh handshakes for 45 requests"
    );

    // Rate limit per client_id: a burst of 2, then 429 with Retry-After, then recovery.
    let before = s.v1.load(Ordering::SeqCst);
    for _ in 0..2 {
        let r = call(http, "/limited/x", &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("GET /orders/limited/x"), "{}", r.body);
    }
    // Another token of the same client shares the budget.
    let other = s.oauth.token("orders:read").await;
    let r = call(http, "/limited/x", &[("authorization", &bearer(&other))]).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        s.v1.load(Ordering::SeqCst),
        before + 2,
        "the refused request never reached the app"
    );
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = call(http, "/limited/x", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "recovered after Retry-After: {}", r.body);
    assert_eq!(
        metric(
            &s.gateway.metrics.registry,
            "pqmesh_gateway_rate_limited_total",
            &[("route", "shop/limited")]
        ),
        1.0
    );
}
