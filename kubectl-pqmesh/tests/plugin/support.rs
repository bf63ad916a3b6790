//! Shared by the plugin tests: running the built binary, a control plane with a policy and the
//! sidecar it selects, canned HTTP endpoints, and a stand-in `kubectl`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;
pub const CLIENT_SECRET: &str = "very-secret-client-credential-1234";

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Standard output with runs of spaces squashed, so assertions don't depend on column widths.
    pub fn out(&self) -> String {
        self.stdout
            .lines()
            .map(|l| {
                l.split(' ')
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub async fn plugin(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-pqmesh"));
    cmd.args(args)
        .env_remove("PQMESH_KUBECTL")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("plugin finished within 60 s")
        .expect("plugin ran");
    let run = Run {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // `SHOW_PLUGIN_OUTPUT=1 cargo test -p kubectl-pqmesh -- --nocapture --test-threads=1` prints
    // every run as a transcript (what a person would see).
    if std::env::var_os("SHOW_PLUGIN_OUTPUT").is_some() {
        println!(
            "$ kubectl pqmesh {}\n{}{}[exit {}]\n",
            args.join(" "),
            run.stdout,
            run.stderr,
            run.code
        );
    }
    assert!(
        !run.stderr.contains("panicked"),
        "the plugin panicked: {}",
        run.stderr
    );
    run
}

pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

pub fn policies() -> String {
    r#"
apiVersion: pqmesh.io/v1alpha1
kind: TokenIssuer
metadata: {name: corp, namespace: shop}
spec:
  issuer: https://login.example.test
  audiences: [orders]
  jwksUri: https://127.0.0.1:9/jwks
  allowedAlgorithms: [RS256]
  introspection:
    endpoint: https://127.0.0.1:9/introspect
    clientId: gateway
    clientSecretRef: {name: gateway, key: client-secret}
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  ports: [8080]
  peers: ["shop/*"]
  token: {issuers: [corp]}
  rules:
    - methods: [GET]
      paths: ["/orders/**"]
      scopes: ["orders:read"]
"#
    .to_owned()
}

/// A control plane with the `orders` policy, and the `api` sidecar it selects (pod orders-0).
pub async fn policy_setup() -> (ControlPlane, pqmesh_sidecar::RunningSidecar) {
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    cp.write_secrets(&format!(
        "secrets:\n  - namespace: shop\n    name: gateway\n    data: {{client-secret: {CLIENT_SECRET}}}\n"
    ));
    cp.write_policy("orders.yaml", &policies(), 2).await;
    let sidecar = sidecar(with(
        cp.sidecar_env("api", ECDSA),
        &[
            ("PQMESH_WORKLOAD_LABELS", "app=orders"),
            ("PQMESH_POD_NAME", "orders-0"),
        ],
    ))
    .await;
    let tracker = cp.running.policy_tracker.clone();
    eventually("the control plane recorded the sidecar's ACK", || {
        tracker.acked_count() == (1, 1)
    })
    .await;
    eventually("the sidecar applied the policy", || {
        sidecar.policy().is_some()
    })
    .await;
    (cp, sidecar)
}

pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// An HTTP server that answers every request with `status` and `body`.
pub async fn canned_http(status: &'static str, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// An HTTP server answering GETs from a table of path → (status, body); 404 otherwise.
pub async fn canned_routes(routes: Vec<(&'static str, &'static str, String)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = std::sync::Arc::new(routes);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = routes
                    .iter()
                    .find(|(p, _, _)| *p == path)
                    .map(|(_, s, b)| (*s, b.clone()))
                    .unwrap_or(("404 Not Found", "not found\n".into()));
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

pub const FAKE_KUBECTL: &str = r#"#!/bin/sh
# Stand-in for kubectl: records its arguments, answers `get` from fixture files and
# "port-forwards" by announcing the in-process admin port, as kubectl prints it.
echo "$*" >> "$FAKE_DIR/calls.log"
if [ -n "${FAKE_UNREACHABLE:-}" ]; then
  echo 'E1122 06:11:25.039601   18835 memcache.go:265] "Unhandled Error" err="couldn'"'"'t get current server API group list"' >&2
  echo "The connection to the server localhost:8080 was refused - did you specify the right host or port?" >&2
  exit 1
fi
case "$*" in
  *port-forward*pod/broken*)
    echo "error: unable to forward port because pod is not running. Current status=Pending" >&2
    exit 1 ;;
  *port-forward*pod/pqmesh-control-plane-*)
    echo "Forwarding from 127.0.0.1:$FAKE_CP_PORT -> 15015"
    echo "Forwarding from [::1]:$FAKE_CP_PORT -> 15015"
    exec sleep 30 ;;
  *port-forward*)
    echo "Forwarding from 127.0.0.1:$FAKE_SIDECAR_PORT -> 15000"
    exec sleep 30 ;;
  *"get pod "*) cat "$FAKE_DIR/pod.json" ;;
  *"get pods -l "*) cat "$FAKE_DIR/cp-pods.json" ;;
  *"get crd "*) cat "$FAKE_DIR/crd.json" ;;
  *"get mutatingwebhookconfiguration "*)
    if [ -s "$FAKE_DIR/webhook.json" ]; then cat "$FAKE_DIR/webhook.json"; else
      echo 'Error from server (NotFound): mutatingwebhookconfigurations.admissionregistration.k8s.io "pqmesh" not found' >&2; exit 1; fi ;;
  *"get endpointslices "*) cat "$FAKE_DIR/slices.json" ;;
  *"get deployment pqmesh-control-plane "*) cat "$FAKE_DIR/deployment.json" ;;
  *"get namespaces --all-namespaces"*) cat "$FAKE_DIR/namespaces.json" ;;
  *"get serviceaccounts --all-namespaces"*) cat "$FAKE_DIR/serviceaccounts.json" ;;
  *"get pods --all-namespaces"*) cat "$FAKE_DIR/pods.json" ;;
  *"get accesspolicies.pqmesh.io --all-namespaces"*) cat "$FAKE_DIR/accesspolicies.json" ;;
  *"get tokenissuers.pqmesh.io --all-namespaces"*) cat "$FAKE_DIR/tokenissuers.json" ;;
  *"get secret "*)
    # secret-NS-NAME.json per Secret (analyze), else the one secret.json (rotate-root)
    name=$(echo "$*" | sed 's/.*get secret \([^ ]*\).*/\1/')
    ns=$(echo "$*" | sed -n 's/.*--namespace=\([^ ]*\).*/\1/p')
    if [ -f "$FAKE_DIR/secret-$ns-$name.json" ]; then cat "$FAKE_DIR/secret-$ns-$name.json"
    elif [ -f "$FAKE_DIR/secret.json" ]; then cat "$FAKE_DIR/secret.json"
    else echo "Error from server (NotFound): secrets \"$name\" not found" >&2; exit 1; fi ;;
  *"replace -f -"*)
    if [ -n "${FAKE_CONFLICT:-}" ]; then
      # exits without reading the object: the plugin must report the 409, not the closed pipe
      echo 'Error from server (Conflict): Operation cannot be fulfilled on secrets "pqmesh-ca": the object has been modified; please apply your changes to the latest version and try again' >&2; exit 1; fi
    cat > "$FAKE_DIR/replaced.json" ;;
  *) echo "fake kubectl: unexpected arguments: $*" >&2; exit 1 ;;
esac
"#;

pub fn install_fake_kubectl(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let kubectl = dir.join("kubectl");
    std::fs::write(&kubectl, FAKE_KUBECTL).unwrap();
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    kubectl
}
