//! The cluster path through a stand-in kubectl: arguments passed through, port-forward output
//! parsed, webhook and CRD checks, kubectl or the API server missing.

use std::collections::HashMap;

use super::support::*;
use std::net::SocketAddr;
use std::path::PathBuf;

use pqmesh_tests::*;
use serde_json::{json, Value};

// ---- The cluster path, through a stand-in kubectl ----

struct FakeCluster {
    dir: TempDir,
    kubectl: PathBuf,
    env: HashMap<String, String>,
}

impl FakeCluster {
    fn new(cp: &ControlPlane, sidecar_admin: SocketAddr) -> Self {
        let dir = TempDir::new("kubectl");
        let kubectl = install_fake_kubectl(dir.path());
        let write = |name: &str, v: &Value| {
            std::fs::write(dir.path().join(name), serde_json::to_vec_pretty(v).unwrap()).unwrap()
        };
        write(
            "pod.json",
            &json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "orders-0", "namespace": "shop", "annotations": {"pqmesh.io/injected": "0.1.0"}},
                "spec": {
                    "initContainers": [
                        {"name": "pqmesh-init", "image": "pqmesh:0.1.0"},
                        {"name": "pqmesh-proxy", "image": "pqmesh:0.1.0", "restartPolicy": "Always",
                         "ports": [{"name": "pqmesh-admin", "containerPort": 15000}]}
                    ],
                    "containers": [{"name": "app", "image": "orders:1"}]
                },
                "status": {"phase": "Running"}
            }),
        );
        write(
            "cp-pods.json",
            &json!({
                "apiVersion": "v1", "kind": "List", "items": [{
                    "metadata": {"name": "pqmesh-control-plane-7c9d-x2x4q", "namespace": "pqmesh-system"},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
                }]
            }),
        );
        write(
            "crd.json",
            &json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "accesspolicies.pqmesh.io"},
                "spec": {"versions": [{"name": "v1alpha1", "served": true, "storage": true}]}
            }),
        );
        write(
            "slices.json",
            &json!({
                "apiVersion": "v1", "kind": "List", "items": [{
                    "metadata": {"name": "pqmesh-webhook-abcde", "labels": {"kubernetes.io/service-name": "pqmesh-webhook"}},
                    "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": true}}]
                }]
            }),
        );
        let bundle = std::fs::read(&cp.running.trust_bundle_path).unwrap();
        let ca_bundle = base64_encode(&bundle);
        write("webhook.json", &webhook(&ca_bundle));
        let env = [
            ("FAKE_DIR", dir.path().display().to_string()),
            ("FAKE_CP_PORT", cp.running.admin_addr.port().to_string()),
            ("FAKE_SIDECAR_PORT", sidecar_admin.port().to_string()),
            ("PQMESH_KUBECTL", kubectl.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self { dir, kubectl, env }
    }

    fn set(&self, name: &str, body: &str) {
        std::fs::write(self.dir.path().join(name), body).unwrap();
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }

    async fn run(&self, args: &[&str]) -> Run {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        plugin(args, &env).await
    }
}

fn webhook(ca_bundle: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "pqmesh"},
        "webhooks": [{
            "name": "inject.pqmesh.io", "failurePolicy": "Fail", "admissionReviewVersions": ["v1"],
            "clientConfig": {"caBundle": ca_bundle,
                "service": {"name": "pqmesh-webhook", "namespace": "pqmesh-system", "path": "/inject", "port": 443}},
            "sideEffects": "None"
        }]
    })
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn cluster_path_goes_through_kubectl_and_port_forward() {
    let (cp, sidecar) = policy_setup().await;
    let fake = FakeCluster::new(&cp, sidecar.admin_addr);
    let version = sidecar.policy().unwrap().version.clone();

    // identity: `get pod`, then a port-forward to the pod's admin port, with the global flags.
    let run = fake
        .run(&[
            "identity",
            "orders-0",
            "-n",
            "shop",
            "--context",
            "kind-mesh",
        ])
        .await;
    assert_eq!(
        run.code,
        0,
        "{}{}\ncalls:\n{}",
        run.stdout,
        run.stderr,
        fake.calls()
    );
    assert!(run.out().contains("Pod: shop/orders-0"), "{}", run.stdout);
    assert!(
        run.out().contains("(kubectl port-forward)"),
        "{}",
        run.stdout
    );
    assert!(run.out().contains(&spiffe("api")), "{}", run.stdout);
    let calls = fake.calls();
    assert!(
        calls.contains("--context=kind-mesh --namespace=shop get pod orders-0 -o json"),
        "{calls}"
    );
    assert!(
        calls.contains("--context=kind-mesh --namespace=shop port-forward --address 127.0.0.1 pod/orders-0 :15000"),
        "{calls}"
    );

    // policy: the sidecar, and every control-plane replica for the ACK status.
    let run = fake.run(&["policy", "pod/orders-0", "-n", "shop"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.out().contains(&format!("Policy version: {version}")),
        "{}",
        run.stdout
    );
    assert!(
        run.out()
            .contains("ACKed: the sidecar runs the latest version"),
        "{}",
        run.stdout
    );
    let calls = fake.calls();
    assert!(calls.contains("--namespace=pqmesh-system get pods -l app.kubernetes.io/name=pqmesh,app.kubernetes.io/component=control-plane -o json"), "{calls}");
    assert!(calls.contains("--namespace=pqmesh-system port-forward --address 127.0.0.1 pod/pqmesh-control-plane-7c9d-x2x4q :15015"), "{calls}");

    // check: CRDs, webhook (caBundle = the mesh CA, a ready backend), the replica.
    let run = fake.run(&["check"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for want in [
        "CRD accesspolicies.pqmesh.io",
        "webhook inject.pqmesh.io caBundle OK",
        "1 certificate(s), first expiry",
        "Service pqmesh-system/pqmesh-webhook: 1 ready endpoint(s)",
        "1 connected, 1 on the current policy version",
        "pqmesh is healthy.",
    ] {
        assert!(
            run.out().contains(want),
            "{want:?} missing in:\n{}",
            run.stdout
        );
    }

    // An empty caBundle and no ready webhook backend are problems, each named.
    fake.set("webhook.json", &webhook("").to_string());
    fake.set(
        "slices.json",
        r#"{"apiVersion": "v1", "kind": "List", "items": []}"#,
    );
    let run = fake.run(&["check"]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.out().contains("2 problems:"), "{}", run.stdout);
    assert!(
        run.out()
            .contains("caBundle is empty: the API server cannot trust the webhook"),
        "{}",
        run.stdout
    );
    assert!(run.out().contains("has no ready endpoints: with failurePolicy Fail pods in meshed namespaces cannot be created"), "{}", run.stdout);
    fake.set("webhook.json", "");
    let run = fake.run(&["check", "-o", "json"]).await;
    assert_eq!(run.code, 1);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("MutatingWebhookConfiguration pqmesh not found"),
        "{v}"
    );

    // A port-forward kubectl refuses: its own message, and which command failed.
    let run = fake.run(&["identity", "broken"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("error: kubectl pqmesh identity: port-forward to shop/pod/broken port 15000 failed: error: unable to forward port because pod is not running"),
        "{}",
        run.stderr
    );
    assert!(fake.kubectl.exists());
}

#[tokio::test]
async fn a_missing_kubectl_or_cluster_is_named() {
    for args in [
        &["identity", "orders-0"][..],
        &["check"][..],
        &["policy", "x"][..],
    ] {
        let run = plugin(args, &[("PQMESH_KUBECTL", "/nonexistent/kubectl")]).await;
        assert_eq!(run.code, 1, "{args:?}");
        assert!(
            run.stderr
                .contains("kubectl not found (looked for \"/nonexistent/kubectl\")")
                && run.stderr.contains("--admin-url"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let dir = TempDir::new("no-cluster");
    let kubectl = install_fake_kubectl(dir.path()).display().to_string();
    let fake_dir = dir.path().display().to_string();
    for (args, cmd) in [
        (&["check"][..], "check"),
        (&["identity", "orders-0"][..], "identity"),
    ] {
        let run = plugin(
            args,
            &[
                ("PQMESH_KUBECTL", &kubectl),
                ("FAKE_DIR", &fake_dir),
                ("FAKE_UNREACHABLE", "1"),
            ],
        )
        .await;
        assert_eq!(run.code, 1, "{args:?}");
        assert!(
            run.stderr.starts_with(&format!(
                "error: kubectl pqmesh {cmd}: cannot reach the Kubernetes API server"
            )) && run
                .stderr
                .contains("The connection to the server localhost:8080 was refused")
                && !run.stderr.contains("memcache.go"),
            "{}",
            run.stderr
        );
    }
}
