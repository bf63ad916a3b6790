//! Review 12 (an outside attack on the gateway, black box), end to end with the real
//! `pqmesh-gateway` binary, a real control plane and the service's real sidecar. No OAuth server
//! is needed: the gateway now refuses *every* request until the deny list is known, so open
//! routes show the window as well as protected ones.
//!
//! - F5: restarted under load, the gateway served for 5-56 ms between its first certificate and
//!   its first policy snapshot, with an empty deny list. The control plane is reached through a
//!   relay that lets the certification through and holds the policy stream back for seconds:
//!   every request in that window gets 503 (the `/ready` body says why) and the app receives
//!   nothing; once the snapshot arrives requests are served. The sidecar, started behind the
//!   same relay, refuses mesh peers while its policy and deny list are held back.
//! - F6a/b: a header value that is a list (`x-role: admin, user`) or carries whitespace or
//!   control characters, and a query value with controls or edge whitespace (`tier=gold%00`,
//!   `tier=%20gold`), on a name a route matches on, is refused (400): the open route's app never
//!   receives it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::gateway::{free_port, header_app};

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

/// A TCP relay to the control plane: the first connection (the certification) passes at once,
/// every later one (the policy stream) waits until [`Relay::release`].
struct Relay {
    addr: SocketAddr,
    released: Arc<AtomicBool>,
    notify: Arc<Notify>,
    connections: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let notify = Arc::new(Notify::new());
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, n, c) = (released.clone(), notify.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let first = c.fetch_add(1, Ordering::SeqCst) == 0;
                let (r, n) = (r.clone(), n.clone());
                tokio::spawn(async move {
                    while !first && !r.load(Ordering::SeqCst) {
                        let wait = n.notified();
                        if r.load(Ordering::SeqCst) {
                            break;
                        }
                        wait.await;
                    }
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut up).await;
                    }
                });
            }
        });
        Relay {
            addr,
            released,
            notify,
            connections,
        }
    }

    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// The gateway binary, killed on drop; its output goes to `log`.
struct GatewayProcess {
    _child: tokio::process::Child,
    admin: SocketAddr,
    log: std::path::PathBuf,
}

impl GatewayProcess {
    fn spawn(cp: &ControlPlane, control_plane: SocketAddr, dir: &Path) -> GatewayProcess {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("gateway.log");
        let out = std::fs::File::create(&log).unwrap();
        let env = cp.sidecar_env("gateway", ECDSA);
        let child = tokio::process::Command::new(crate::cli::binary("pqmesh-gateway"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PQMESH_GATEWAY_DIR", dir)
            .env("PQMESH_GATEWAY_LISTEN_HOST", "127.0.0.1")
            .env("PQMESH_GATEWAY_ADMIN_ADDR", admin.to_string())
            .env("PQMESH_CONTROL_PLANE_ADDR", control_plane.to_string())
            .env("PQMESH_TRUST_BUNDLE", &env["PQMESH_TRUST_BUNDLE"])
            .env("PQMESH_BOOTSTRAP_TOKEN", &env["PQMESH_BOOTSTRAP_TOKEN"])
            .env("PQMESH_KEY_ALG", &env["PQMESH_KEY_ALG"])
            .env("PQMESH_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        GatewayProcess {
            _child: child,
            admin,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One GET on a new connection (status and body), `None` when nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "shop.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A request written byte for byte (header values hyper's client would not send), on its own
/// connection: the status and body.
async fn raw(addr: SocketAddr, target: &str, headers: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("GET {target} HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n")
        .into_bytes();
    head.extend_from_slice(headers);
    head.extend_from_slice(b"\r\n");
    tcp.write_all(&head).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The gateway's directory: one HTTP listener; `/` open to `shop/orders`, `x-role: admin` and
/// `tier=gold` matched to `shop/admin` (the same app here; a header filter says which route
/// served).
fn write_gateway_dir(dir: &Path, port: u16, backend: SocketAddr) {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let tag = |v: &str| {
        format!("filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-route, value: {v}}}]}}}}]")
    };
    std::fs::write(
        dir.join("config/edge.yaml"),
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
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: open, namespace: shop}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - {open}
      backendRefs: [{{name: orders, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: admin, namespace: shop}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{headers: [{{name: x-role, value: admin}}]}}, {{queryParams: [{{name: tier, value: gold}}]}}]
      {admin}
      backendRefs: [{{name: admin, port: 80}}]
"#,
            open = tag("open"),
            admin = tag("admin"),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("backends.yaml"),
        format!(
            "services:\n  - {{name: shop/orders, port: 80, endpoints: [{{address: \"{backend}\", identity: \"{id}\"}}]}}\n  - {{name: shop/admin, port: 80, endpoints: [{{address: \"{backend}\", identity: \"{id}\"}}]}}\n",
            id = spiffe("api")
        ),
    )
    .unwrap();
}

struct Stack {
    cp: ControlPlane,
    relay: Relay,
    app: Arc<AtomicUsize>,
    _api: pqmesh_sidecar::RunningSidecar,
    dir: TempDir,
    http: SocketAddr,
}

async fn stack() -> Stack {
    let cp = ControlPlane::start(ECDSA, &["api", "gateway", "web"]).await;
    let (app_addr, app) = header_app("orders").await;
    let api = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[("PQMESH_INBOUND_ALLOW", "shop/gateway")],
        ),
        Some(app_addr),
    )
    .await;
    let relay = Relay::start(cp.running.grpc_addr).await;
    let dir = TempDir::new("gateway-review12");
    let port = free_port();
    write_gateway_dir(dir.path(), port, api.inbound_addr);
    Stack {
        cp,
        relay,
        app,
        _api: api,
        dir,
        http: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// What one keep-alive client saw: (status, body, whether the relay had released the policy
/// stream when the request was sent).
type Seen = Arc<Mutex<Vec<(u16, String, bool)>>>;

/// A client that reconnects and sends requests on one connection as fast as answers come.
fn hammer(addr: SocketAddr, released: Arc<AtomicBool>, stop: Arc<AtomicBool>, seen: Seen) {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let Ok(tcp) = TcpStream::connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let Ok((mut send, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
            else {
                continue;
            };
            tokio::spawn(conn);
            while !stop.load(Ordering::SeqCst) {
                let after = released.load(Ordering::SeqCst);
                let req = Request::get("/orders/1")
                    .header("host", "shop.example")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let Ok(resp) = send.send_request(req).await else {
                    break;
                };
                let status = resp.status().as_u16();
                let body = match resp.into_body().collect().await {
                    Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                    Err(_) => break,
                };
                seen.lock().unwrap().push((status, body, after));
            }
        }
    });
}

/// F5: from the gateway's first instant, 16 keep-alive clients; the policy stream is held back
/// for 3 s after the gateway holds its certificate. Nothing reaches the app before the snapshot.
#[tokio::test]
async fn a_starting_gateway_answers_503_until_its_first_policy_snapshot() {
    let s = stack().await;
    s.cp.write_revocations("clients: [spam-bot-7]\n");
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Default::default();
    for _ in 0..16 {
        hammer(s.http, s.relay.released.clone(), stop.clone(), seen.clone());
    }
    let gw = GatewayProcess::spawn(&s.cp, s.relay.addr, s.dir.path());

    // The gateway certified (the first relayed connection) and serves its listener, but its
    // policy stream is held: /ready says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = get(gw.admin, "/ready").await;
        if ready
            .as_ref()
            .is_some_and(|(_, b)| b.contains("first policy snapshot"))
        {
            assert_eq!(ready.unwrap().0, 503);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never certified: {ready:?}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.relay.connections.load(Ordering::SeqCst) >= 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = get(gw.admin, "/metrics").await.unwrap().1;
    assert!(metrics.contains("pqmesh_ready 0"), "{metrics}");
    let held: Vec<_> = seen.lock().unwrap().clone();
    assert!(held.len() > 16, "the clients were served nothing: {held:?}");
    for (status, body, _) in &held {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("first policy snapshot"), "{body}");
    }
    assert_eq!(s.app.load(Ordering::SeqCst), 0, "the app got a request");

    // The snapshot arrives: served from then on, and ready.
    s.relay.release();
    let served = async {
        loop {
            if seen
                .lock()
                .unwrap()
                .iter()
                .any(|(st, b, _)| *st == 200 && b.contains("x-route: open"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .unwrap_or_else(|_| panic!("never served after the snapshot\n{}", gw.log()));
    stop.store(true, Ordering::SeqCst);
    let (status, body) = get(gw.admin, "/ready").await.unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));
    let all = seen.lock().unwrap().clone();
    let before: Vec<_> = all.iter().filter(|(_, _, after)| !after).collect();
    assert!(
        before.iter().all(|(st, _, _)| *st == 503),
        "a request sent before the snapshot was served"
    );
    println!(
        "{} requests before the policy snapshot (all 503), {} after",
        before.len(),
        all.len() - before.len()
    );
    let log = gw.log();
    assert!(log.contains("every request is answered 503"), "{log}");
    assert!(log.contains("first policy snapshot is applied"), "{log}");
    assert!(log.contains("awaiting_policy"), "{log}");
}

/// F5 for the sidecar: started behind the relay, it holds a certificate while its policy and
/// deny list are held back; a mesh peer it would admit is refused and its app gets nothing.
#[tokio::test]
async fn a_starting_sidecar_refuses_peers_while_its_policy_and_deny_list_are_held_back() {
    let cp = ControlPlane::start(ECDSA, &["api", "web"]).await;
    let relay = Relay::start(cp.running.grpc_addr).await;
    let (app_addr, app) = header_app("b").await;
    let web = sidecar(cp.sidecar_env("web", ECDSA)).await;
    let client = web
        .current()
        .unwrap()
        .client_for(&spiffe("api").parse().unwrap())
        .unwrap();
    let mut env = with(
        cp.sidecar_env("api", ECDSA),
        &[("PQMESH_INBOUND_ALLOW", "shop/web")],
    );
    env.insert("PQMESH_CONTROL_PLANE_ADDR".into(), relay.addr.to_string());
    let config = pqmesh_sidecar::config::Config::from_env(&env).unwrap();
    let b = pqmesh_sidecar::start_with(
        config,
        Arc::new(pqmesh_sidecar::original_dst::FixedOriginalDst(app_addr)),
    )
    .await
    .expect("B starts");
    eventually("B certified", || b.current().is_some()).await;
    let attempt = || {
        let client = client.clone();
        let addr = b.inbound_addr;
        async move {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let name = rustls_pki_types::ServerName::try_from("pqmesh.mesh").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"GET /early HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            Ok::<_, String>(String::from_utf8_lossy(&answer).into_owned())
        }
    };
    let until = Instant::now() + Duration::from_secs(2);
    let mut tries = 0;
    while Instant::now() < until {
        let answer = attempt().await;
        assert!(
            !answer.as_deref().unwrap_or("").contains("app=b"),
            "{answer:?}"
        );
        tries += 1;
    }
    assert!(b.policy().is_none() && !b.revoked().received());
    assert_eq!(
        app.load(Ordering::SeqCst),
        0,
        "{tries} attempts; the app got one"
    );

    relay.release();
    tokio::time::timeout(Duration::from_secs(20), b.ready())
        .await
        .expect("B ready once the snapshot arrived");
    assert!(b.revoked().received());
    let answer = attempt().await.unwrap();
    assert!(answer.contains("app=b"), "{answer}");
}

/// F6a/b: ambiguous values of a matched header or query parameter never reach the app.
#[tokio::test]
async fn ambiguous_values_of_matched_headers_and_query_parameters_never_reach_the_app() {
    let s = stack().await;
    s.relay.release();
    let gw = GatewayProcess::spawn(&s.cp, s.relay.addr, s.dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(gw.admin, "/ready").await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "not ready\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One plain reading: served by the route that matches it.
    for (target, headers, route) in [
        ("/a", &b"x-role: admin\r\n"[..], "admin"),
        ("/a", b"x-role: user\r\n", "open"),
        ("/a?tier=gold", b"", "admin"),
        ("/a?tier=go%6cd", b"", "admin"),
        ("/a?tier=silver", b"", "open"),
    ] {
        let (status, text) = raw(s.http, target, headers).await;
        assert_eq!(status, 200, "{target} {text}");
        assert!(
            text.contains(&format!("x-route: {route}")),
            "{target} {text}"
        );
    }
    let before = s.app.load(Ordering::SeqCst);
    for (target, headers) in [
        ("/a", &b"x-role: admin, user\r\n"[..]),
        ("/a", b"x-role: user,admin\r\n"),
        ("/a", b"x-role: admin\r\nx-role: user\r\n"),
        ("/a", b"x-role: ad\tmin\r\n"),
        ("/a", b"x-role: admin\xa0\r\n"),
        ("/a?tier=gold%00", b""),
        ("/a?tier=%20gold", b""),
        ("/a?tier=gold+", b""),
        ("/a?tier=gold%0a", b""),
        ("/a?tier=%c2%a0gold", b""),
    ] {
        let (status, text) = raw(s.http, target, headers).await;
        assert_eq!(
            status,
            400,
            "{target} {:?}: {text}",
            String::from_utf8_lossy(headers)
        );
        assert!(text.contains("pqmesh-gateway:"), "{text}");
    }
    assert_eq!(
        s.app.load(Ordering::SeqCst),
        before,
        "an ambiguous request reached the app"
    );
    // Whitespace around a header value: HTTP/1 parsing drops it (RFC 9110 §5.5), so what is
    // left is one plain value; whatever happens, the open route never gets an `admin` reading.
    for headers in [&b"x-role:  admin \r\n"[..], b"x-role:\tadmin\t\r\n"] {
        let (status, text) = raw(s.http, "/a", headers).await;
        assert!(
            status == 400 || (status == 200 && text.contains("x-route: admin")),
            "{text}"
        );
    }
}
