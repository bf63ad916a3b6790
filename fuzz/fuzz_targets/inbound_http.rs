//! Raw request bytes through the sidecar's real inbound HTTP/1 path (canonical form, policy,
//! identity stamping, forwarding) to a recording app, with the invariant of "what the app
//! receives" checked on every request head the app gets: exactly one identity header (with `_`
//! and `-` folded, as WSGI servers fold them) and it is the verified caller's; no header name the
//! canonical form refuses; the method and path are ones the policy allows (`GET /orders/**`,
//! canonical form).
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pqmesh_mtls::SpiffeId;
use pqmesh_sidecar::http_proxy::{self, AppClients, Ctx};
use pqmesh_sidecar::policy::ActivePolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const CALLER: &str = "spiffe://cluster.local/ns/shop/sa/web";
const POLICY: &str = r#"
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  peers: ["shop/web"]
  rules:
    - {methods: [GET], paths: ["/orders/**"]}
"#;

struct Harness {
    rt: tokio::runtime::Runtime,
    app: SocketAddr,
    /// The first request head of every connection the app accepted (it closes after answering).
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
    policy: watch::Sender<Option<Arc<ActivePolicy>>>,
    clients: Arc<AppClients>,
    metrics: Arc<pqmesh_sidecar::metrics::Metrics>,
}

struct NoSecrets;
impl pqmesh_policy::compile::Secrets for NoSecrets {
    fn get(&self, _: &str, _: &str, _: &str) -> Option<String> {
        None
    }
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let app = listener.local_addr().unwrap();
        let recorded = heads.clone();
        rt.spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if !head.is_empty() {
                        recorded.lock().unwrap().push(head);
                    }
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                });
            }
        });
        let resources = pqmesh_policy::compile::parse_documents(POLICY, "fuzz").unwrap();
        let set = pqmesh_policy::compile::PolicySet::build(resources, "cluster.local").unwrap();
        let workload = pqmesh_policy::compile::Workload {
            namespace: "shop".into(),
            labels: [("app".to_owned(), "orders".to_owned())].into(),
        };
        let policy = set.compile(&workload, &NoSecrets).unwrap();
        let active = ActivePolicy {
            version: policy.version(),
            policy,
            validator: None,
        };
        let (policy, _) = watch::channel(Some(Arc::new(active)));
        Harness {
            rt,
            app,
            heads,
            policy,
            clients: Arc::new(AppClients::default()),
            metrics: Arc::new(pqmesh_sidecar::metrics::Metrics::new()),
        }
    })
}

fn judge(head: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(head);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(_))),
        "the app got a head it cannot parse: {:?}",
        String::from_utf8_lossy(head)
    );
    assert_eq!(req.method, Some("GET"), "method outside the policy");
    let path = req.path.unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    assert_eq!(
        pqmesh_policy::path::normalize(path).as_deref(),
        Ok(path),
        "the app got a path that is not in canonical form"
    );
    assert!(path == "/orders" || path.starts_with("/orders/"), "path outside the policy: {path}");
    let mut identities = Vec::new();
    for h in req.headers.iter() {
        assert!(!h.name.contains('_'), "header name with '_' reached the app: {}", h.name);
        if h.name.to_ascii_lowercase().replace('_', "-") == http_proxy::PEER_IDENTITY_HEADER {
            identities.push(h.value.to_vec());
        }
    }
    assert_eq!(identities, [CALLER.as_bytes().to_vec()], "identity header forged or missing");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let h = harness();
    h.heads.lock().unwrap().clear();
    let ctx = Ctx::new(
        Some(CALLER.parse::<SpiffeId>().unwrap()),
        h.app,
        h.clients.clone(),
        "inbound",
        h.metrics.clone(),
        Some(h.policy.subscribe()),
        "cluster.local".into(),
        false,
    );
    let input = data.to_vec();
    h.rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(http_proxy::serve_http1(server, ctx));
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        let mut answers = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answers)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), serve).await;
    });
    for head in h.heads.lock().unwrap().iter() {
        judge(head);
    }
});
