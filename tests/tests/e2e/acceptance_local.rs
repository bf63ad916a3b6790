//! Per-object acceptance in local mode (issue 15): a bad document in one file — another
//! namespace's `mtls: BOGUS`, a misspelt `peer:` — affects only itself. Another namespace's edit is
//! still pushed and applied, a control plane restarted with the bad file present starts and keeps
//! serving, and an invalid edit of a good object keeps that object's last accepted version in
//! force. The Kubernetes-mode equivalent (conditions on the objects, through the recording API
//! server) is `kubernetes_acceptance::a_bad_object_affects_only_itself_and_its_status_says_why`.

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

fn orders(app_port: u16, mtls: &str, extra_rule: &str) -> String {
    format!(
        "apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: orders, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: orders}}}}\n  ports: [{app_port}]\n  mtls: {mtls}\n\
         \x20 peers: [\"shop/web\"]\n  rules:\n    - {{methods: [GET], paths: [\"/orders/**\"]}}\n{extra_rule}"
    )
}

const TENANT_B: &str = r#"apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: bogus, namespace: tenant-b}
spec:
  selector: {matchLabels: {app: x}}
  mtls: BOGUS
  peers: ["*"]
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: typo, namespace: tenant-b}
spec:
  selector: {matchLabels: {app: y}}
  peer: ["tenant-b/*"]
"#;

fn rejected(cp: &ControlPlane) -> f64 {
    metric(
        &cp.running.metrics.registry,
        "pqmesh_policy_objects_rejected",
        &[],
    )
}

#[tokio::test]
async fn a_bad_document_affects_only_itself() {
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    let (app, _tcp, _stats) = http_app::start("orders").await;
    let port = app.port();
    cp.write_policy("orders.yaml", &orders(port, "STRICT", ""), 1)
        .await;
    let b = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[("PQMESH_WORKLOAD_LABELS", "app=orders")],
        ),
        Some(app),
    )
    .await;
    let rules = |b: &pqmesh_sidecar::RunningSidecar| {
        b.policy().map(|p| {
            p.policy
                .policies
                .iter()
                .map(|c| c.rules.len())
                .sum::<usize>()
        })
    };
    eventually("B runs orders v1", || rules(&b) == Some(1)).await;

    // Another namespace's broken objects: refused one by one, nothing else changes.
    let dir = cp.dir.path().join("policies");
    std::fs::write(dir.join("tenant-b.yaml"), TENANT_B).unwrap();
    eventually("both tenant-b objects refused", || rejected(&cp) == 2.0).await;

    // shop's edit still reaches B.
    let v2 = orders(
        port,
        "STRICT",
        "    - {methods: [POST], paths: [\"/orders\"]}\n",
    );
    std::fs::write(dir.join("orders.yaml"), &v2).unwrap();
    eventually("B runs orders v2 despite tenant-b", || rules(&b) == Some(2)).await;
    let v2_version = b.policy().unwrap().version.clone();

    // A control plane started with the bad file present starts and serves.
    let cp = cp.restart().await;
    eventually("the restarted control plane refuses the same two", || {
        rejected(&cp) == 2.0
    })
    .await;
    let fresh = sidecar(with(
        cp.sidecar_env("api", ECDSA),
        &[("PQMESH_WORKLOAD_LABELS", "app=orders")],
    ))
    .await;
    eventually(
        "a new sidecar gets orders v2 from the restarted one",
        || fresh.policy().is_some_and(|p| p.version == v2_version),
    )
    .await;

    // An invalid edit of a good object keeps its last accepted version in force.
    std::fs::write(dir.join("orders.yaml"), orders(port, "BOGUS", "")).unwrap();
    eventually("the edit refused", || rejected(&cp) == 3.0).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(fresh.policy().unwrap().version, v2_version);
    assert_eq!(b.policy().unwrap().version, v2_version);
}
