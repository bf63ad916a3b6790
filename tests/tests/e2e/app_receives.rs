//! What the app receives is what the policy judged: the bypasses an outside attacker found
//! (issue 14), each replayed byte for byte through a real mesh — A's sidecar → hybrid-PQ mTLS →
//! B's sidecar under an AccessPolicy, and plaintext into a PERMISSIVE sidecar B2 — against a raw
//! recording app that answers the way an h2c-capable server would. The oracle is the bytes the
//! app was sent; what stock servers (WSGI, Node, Java) *make* of such bytes is judged by the
//! differential suite, which this cannot show.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;
const FORGED: &str = "spiffe://cluster.local/ns/admin/sa/root";

/// An app that records every byte it is sent. It answers each request head with 200, or with
/// `101 Switching Protocols` when the head asks for an upgrade (or always, if `switch_always`),
/// and after a 101 only records (the pipe an h2c server would then read HTTP/2 from).
struct RecordingApp {
    addr: SocketAddr,
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Request heads the app acted on, lower-cased.
    heads: Arc<Mutex<Vec<String>>>,
}

impl RecordingApp {
    async fn start(switch_always: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (all, seen) = (bytes.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(record(tcp, all.clone(), seen.clone(), switch_always));
            }
        });
        RecordingApp { addr, bytes, heads }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    fn clear(&self) {
        self.bytes.lock().unwrap().clear();
        self.heads.lock().unwrap().clear();
    }
}

async fn record(
    mut tcp: TcpStream,
    all: Arc<Mutex<Vec<u8>>>,
    heads: Arc<Mutex<Vec<String>>>,
    switch_always: bool,
) {
    let mut pending = Vec::new();
    let mut switched = false;
    let mut chunk = [0u8; 4096];
    while let Ok(n) = tcp.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        all.lock().unwrap().extend_from_slice(&chunk[..n]);
        if switched {
            continue;
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            pending.drain(..end + 4);
            heads.lock().unwrap().push(head.clone());
            // Like a real server: no more requests after `connection: close` (bodies it does not
            // read, as many servers do on GET, are what it would take for the next request).
            let close = head.contains("\nconnection: close");
            let answer: &[u8] = if switch_always || head.contains("\nupgrade:") {
                switched = true;
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            };
            if tcp.write_all(answer).await.is_err() || switched {
                break;
            }
            if close {
                return;
            }
        }
    }
}

/// Writes `parts` (pausing `gap` between them) and returns everything answered until the
/// connection closes or 5 s pass.
async fn exchange(addr: SocketAddr, parts: &[&[u8]], gap: Duration) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
    let writer = tokio::spawn(async move {
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if wr.write_all(p).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(wr);
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5) + gap * 2, rd.read_to_end(&mut out)).await;
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(answer: &str) -> Vec<u16> {
    answer
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|s| s.get(..3)?.parse().ok())
        .collect()
}

/// Every identity header line the app was sent, lower-cased, `_` and `-` alike (what a WSGI
/// server would fold into one variable).
fn identity_lines(received: &str) -> Vec<String> {
    received
        .lines()
        .map(|l| l.to_ascii_lowercase().replace('_', "-"))
        .filter(|l| l.starts_with("x-pqmesh-peer-identity"))
        .collect()
}

struct Mesh {
    _cp: ControlPlane,
    a: pqmesh_sidecar::RunningSidecar,
    _b: pqmesh_sidecar::RunningSidecar,
    b2: pqmesh_sidecar::RunningSidecar,
    app: RecordingApp,
    app2: RecordingApp,
}

/// B (`shop/api`, STRICT, AccessPolicy: `shop/web` may `GET /orders/**`), A (`shop/web`) dialling
/// B, and B2 (PERMISSIVE, no AccessPolicy) in front of an app that switches protocols on every
/// request.
async fn mesh() -> Mesh {
    let cp = ControlPlane::start(ECDSA, &["web", "api", "api2"]).await;
    let app = RecordingApp::start(false).await;
    let app2 = RecordingApp::start(true).await;
    let policy = format!(
        "apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: orders, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: orders}}}}\n  ports: [{}]\n  peers: [\"shop/web\"]\n\
         \x20 rules:\n    - {{methods: [GET], paths: [\"/orders/**\"]}}\n",
        app.addr.port()
    );
    cp.write_policy("orders.yaml", &policy, 1).await;
    let b = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[("PQMESH_WORKLOAD_LABELS", "app=orders")],
        ),
        Some(app.addr),
    )
    .await;
    let b2 = sidecar_redirected(
        with(
            cp.sidecar_env("api2", ECDSA),
            &[
                ("PQMESH_INBOUND_MODE", "PERMISSIVE"),
                ("PQMESH_INBOUND_ALLOW", &spiffe("web")),
            ],
        ),
        Some(app2.addr),
    )
    .await;
    cp.set_endpoints(
        &format!("endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n", b.inbound_addr.port()),
        1,
    )
    .await;
    let a = sidecar_redirected(cp.sidecar_env("web", ECDSA), Some(b.inbound_addr)).await;
    eventually("B runs the pushed policy", || {
        b.policy().is_some_and(|p| p.policy.policies.len() == 1)
    })
    .await;
    Mesh {
        _cp: cp,
        a,
        _b: b,
        b2,
        app,
        app2,
    }
}

const NO_GAP: Duration = Duration::ZERO;

#[tokio::test]
async fn the_app_receives_exactly_what_the_policy_judged() {
    let m = mesh().await;
    let via_a = m.a.outbound_addr.unwrap();
    let web = spiffe("web");

    // 1. A caller naming the identity header in `Connection` cannot delete it.
    let answer = exchange(
        via_a,
        &[b"GET /orders/1 HTTP/1.1\r\nhost: b\r\nconnection: x-pqmesh-peer-identity, close\r\n\r\n"],
        NO_GAP,
    )
    .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(
        identity_lines(&m.app.received()),
        [format!("x-pqmesh-peer-identity: {web}")],
        "exactly the stamped identity"
    );
    m.app.clear();

    // 2. Underscore twins are refused before the app (mTLS and PERMISSIVE plaintext alike).
    for twin in [
        "x_pqmesh_peer_identity",
        "X_PQMESH_PEER_IDENTITY",
        "x-pqmesh_peer-identity",
    ] {
        let req = format!(
            "GET /orders/1 HTTP/1.1\r\nhost: b\r\n{twin}: {FORGED}\r\nconnection: close\r\n\r\n"
        );
        for addr in [via_a, m.b2.inbound_addr] {
            let answer = exchange(addr, &[req.as_bytes()], NO_GAP).await;
            assert_eq!(statuses(&answer), [400], "{twin} via {addr}: {answer}");
        }
    }
    assert_eq!(m.app.received(), "", "no twin reached B's app");
    assert_eq!(m.app2.received(), "", "no twin reached B2's app");

    // 3. An h2c upgrade is not forwarded: the connection stays HTTP/1.1, checked per request.
    let h2c = b"GET /orders/1 HTTP/1.1\r\nhost: b\r\nconnection: Upgrade, HTTP2-Settings\r\n\
        upgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let next = b"DELETE /admin HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n";
    let answer = exchange(via_a, &[h2c, next], Duration::from_millis(300)).await;
    assert_eq!(statuses(&answer), [200, 403], "{answer}");
    let got = m.app.received().to_ascii_lowercase();
    assert!(
        !got.contains("upgrade") && !got.contains("http2-settings"),
        "{got}"
    );
    assert!(
        !got.contains("delete"),
        "the second request was judged, not piped: {got}"
    );
    m.app.clear();
    //    An app that switches protocols anyway gets no pipe: 502, and nothing after it reaches it.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let answer = exchange(
        m.b2.inbound_addr,
        &[h2c, preface],
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(statuses(&answer)[0], 502, "{answer}");
    assert!(
        !m.app2.received().contains("PRI *"),
        "{}",
        m.app2.received()
    );
    m.app2.clear();

    // 4. Path parameters are refused; so are method overrides, methods not in upper case (review
    //    10 F5: Werkzeug runs `get` as GET) and CONNECT.
    for (req, want) in [
        (&b"GET /orders/..;/admin HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n"[..], 400),
        (b"GET /orders/1;jsessionid=x HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n", 400),
        (b"GET /orders/%2e%2e%3b/admin HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n", 400),
        (b"GET /orders/%252e%252e/admin HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n", 400),
        (b"GET /orders/1 HTTP/1.1\r\nhost: b\r\nx-http-method-override: DELETE\r\nconnection: close\r\n\r\n", 400),
        (b"get /orders/1 HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n", 400),
        (b"CONNECT b:443 HTTP/1.1\r\nhost: b:443\r\n\r\n", 405),
    ] {
        let answer = exchange(via_a, &[req], NO_GAP).await;
        assert_eq!(statuses(&answer), [want], "{}: {answer}", String::from_utf8_lossy(req));
    }
    assert_eq!(m.app.received(), "", "none of those reached the app");

    // 5. Bytes the sniffer once relayed raw (empty lines first; a client silent through
    //    detection) reach the app only through the HTTP path, so a forged header never does.
    let forged = format!("GET / HTTP/1.1\r\nhost: b\r\nx-pqmesh-peer-identity: {FORGED}\r\nconnection: close\r\n\r\n");
    let leading_empty_lines = format!("\r\n\r\n{forged}");
    for (parts, gap) in [
        (vec![leading_empty_lines.as_bytes()], NO_GAP),
        (
            vec![&b""[..], forged.as_bytes()],
            Duration::from_millis(2500),
        ),
        (
            vec![&b"GET "[..], &forged.as_bytes()[4..]],
            Duration::from_millis(2500),
        ),
    ] {
        let answer = exchange(m.b2.inbound_addr, &parts, gap).await;
        let got = m.app2.received();
        assert!(
            identity_lines(&got).is_empty(),
            "plaintext caller forged an identity ({answer}): {got}"
        );
        m.app2.clear();
    }

    // 6. Found from outside (second review): request lines that Java's HttpServer (`get /admin x`)
    //    or Python's http.server (`GET\t/admin`, HTTP/0.9 with headers) accept, relayed opaque,
    //    never carry a client's identity header to the app.
    for raw in [
        format!("get /admin x\r\nHost: b\r\nX-Pqmesh-Peer-Identity: {FORGED}\r\n\r\n"),
        format!("GET\t/admin\r\nX-Pqmesh-Peer-Identity: {FORGED}\r\n\r\n"),
        format!("x\nGET /admin HTTP/1.1\r\nx_pqmesh_peer_identity: {FORGED}\r\n\r\n"),
    ] {
        let answer = exchange(m.b2.inbound_addr, &[raw.as_bytes()], NO_GAP).await;
        let got = m.app2.received();
        assert!(identity_lines(&got).is_empty(), "{raw:?} ({answer}): {got}");
        m.app2.clear();
    }

    // 7. A body the app does not read (a GET's) cannot become a second request on a pooled app
    //    connection: a request with a body gets its own app connection.
    let smuggled =
        format!("GET /admin HTTP/1.1\r\nhost: b\r\nx-pqmesh-peer-identity: {FORGED}\r\n\r\n");
    let req = format!(
        "GET /orders/1 HTTP/1.1\r\nhost: b\r\ncontent-length: {}\r\n\r\n{smuggled}GET /orders/2 HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
        smuggled.len()
    );
    let answer = exchange(via_a, &[req.as_bytes()], NO_GAP).await;
    assert_eq!(statuses(&answer), [200, 200], "{answer}");
    let heads = m.app.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "only the two judged requests: {heads:?}");
    assert!(heads.iter().all(|h| !h.contains("/admin")), "{heads:?}");
}
