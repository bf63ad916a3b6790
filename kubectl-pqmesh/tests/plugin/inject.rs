//! Offline injection through the control plane's injector.

use super::support::*;

use pqmesh_tests::*;
use serde_json::{json, Value};

// ---- Offline injection ----

const MANIFESTS: &str = r#"# GitOps repo: shop/orders
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: orders}
  template:
    metadata:
      labels: {app: orders, tier: backend}
    spec:
      serviceAccountName: orders
      containers:
        - name: app
          image: ghcr.io/example/orders:1.4.2
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  selector: {app: orders}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: node-report, namespace: shop}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          hostNetwork: true
          restartPolicy: OnFailure
          containers: [{name: report, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: shop
  annotations: {pqmesh.io/inject: "false"}
spec:
  containers: [{name: shell, image: busybox}]
"#;

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("the plugin printed valid YAML"))
        .collect()
}

#[tokio::test]
async fn inject_adds_the_sidecar_to_every_pod_template_and_is_idempotent() {
    let dir = TempDir::new("inject");
    let input = dir.path().join("orders.yaml");
    std::fs::write(&input, MANIFESTS).unwrap();
    let input_s = input.display().to_string();

    let run = plugin(
        &[
            "inject",
            "-f",
            &input_s,
            "--image",
            "registry.example/pqmesh:9.9.9",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let docs = yaml_docs(&run.stdout);
    assert_eq!(docs.len(), 4);
    let spec = &docs[0]["spec"]["template"]["spec"];
    let inits = spec["initContainers"]
        .as_array()
        .expect("init containers added");
    assert_eq!(inits[0]["name"], "pqmesh-init");
    assert_eq!(inits[1]["name"], "pqmesh-proxy");
    assert_eq!(inits[1]["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(inits[1]["image"], "registry.example/pqmesh:9.9.9");
    assert_eq!(
        spec["containers"][0]["image"],
        "ghcr.io/example/orders:1.4.2"
    );
    let token = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "pqmesh-token")
        .expect("projected token volume");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "pqmesh-ca"
    );
    assert_eq!(
        docs[0]["spec"]["template"]["metadata"]["annotations"]["pqmesh.io/injected"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(docs[1]["kind"], "Service");
    assert!(docs[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"].is_null());
    assert!(docs[3]["spec"]["initContainers"].is_null());
    assert!(
        run.stdout
            .starts_with("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: orders\n"),
        "{}",
        run.stdout
    );
    for want in [
        "Deployment/orders: injected",
        "Service/orders: passed through (no pod template)",
        "CronJob/node-report: unchanged (the pod uses the host network",
        "Pod/debug: unchanged (the pod is annotated pqmesh.io/inject: \"false\")",
    ] {
        assert!(
            run.stderr.contains(want),
            "{want:?} missing in:\n{}",
            run.stderr
        );
    }

    // Re-injecting the output changes nothing, byte for byte; -o writes a file.
    let once = dir.path().join("once.yaml");
    std::fs::write(&once, &run.stdout).unwrap();
    let twice = dir.path().join("twice.yaml");
    let run2 = plugin(
        &[
            "inject",
            "-f",
            &once.display().to_string(),
            "-o",
            &twice.display().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(run2.code, 0, "{}", run2.stderr);
    assert_eq!(run2.stdout, "");
    assert_eq!(std::fs::read_to_string(&twice).unwrap(), run.stdout);
    assert!(
        run2.stderr
            .contains("Deployment/orders: unchanged (the pod already has the pqmesh sidecar)"),
        "{}",
        run2.stderr
    );

    // A pod the injector refuses: a precise error, and no output file.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        MANIFESTS.replace("- name: app", "- name: pqmesh-proxy"),
    )
    .unwrap();
    let out = dir.path().join("bad-out.yaml");
    let run = plugin(
        &[
            "inject",
            "-f",
            &bad.display().to_string(),
            "-o",
            &out.display().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("error: kubectl pqmesh inject:")
            && run.stderr.contains(
                "document 1: Deployment/orders: spec.containers[0] is named \"pqmesh-proxy\""
            ),
        "{}",
        run.stderr
    );
    assert!(!out.exists(), "nothing written on error");
    for (text, want) in [
        ("kind: [", "document 1: not valid YAML"),
        ("# nothing\n", "no Kubernetes objects found"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let run = plugin(&["inject", "-f", &bad.display().to_string()], &[]).await;
        assert_eq!(run.code, 1);
        assert!(run.stderr.contains(want), "{}", run.stderr);
    }
    let run = plugin(&["inject", "-f", "/nonexistent/manifests.yaml"], &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("reading /nonexistent/manifests.yaml: No such file"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn inject_from_cluster_uses_the_installed_control_planes_settings() {
    let dir = TempDir::new("inject-cluster");
    let kubectl = install_fake_kubectl(dir.path());
    std::fs::write(
        dir.path().join("deployment.json"),
        serde_json::to_vec(&json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "pqmesh-control-plane", "namespace": "pqmesh-system"},
            "spec": {"template": {"spec": {
                "serviceAccountName": "pqmesh-control-plane",
                "containers": [{"name": "control-plane", "image": "cluster.example/pqmesh:1.2.3", "env": [
                    {"name": "PQMESH_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "PQMESH_SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "PQMESH_TRUST_DOMAIN", "value": "corp.example"},
                    {"name": "PQMESH_SIDECAR_IMAGE", "value": "cluster.example/pqmesh:1.2.3"},
                    {"name": "PQMESH_SIDECAR_IMAGE_PULL_POLICY", "value": "Always"}
                ]}]
            }}}
        }))
        .unwrap(),
    )
    .unwrap();
    let input = dir.path().join("orders.yaml");
    std::fs::write(&input, MANIFESTS).unwrap();
    let fake_dir = dir.path().display().to_string();
    let kubectl_s = kubectl.display().to_string();
    let run = plugin(
        &[
            "inject",
            "-f",
            &input.display().to_string(),
            "--from-cluster",
            "--context",
            "prod",
        ],
        &[("FAKE_DIR", &fake_dir), ("PQMESH_KUBECTL", &kubectl_s)],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let docs = yaml_docs(&run.stdout);
    let proxy = &docs[0]["spec"]["template"]["spec"]["initContainers"][1];
    assert_eq!(proxy["image"], "cluster.example/pqmesh:1.2.3");
    assert_eq!(proxy["imagePullPolicy"], "Always");
    let env = proxy["env"].as_array().unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        var("PQMESH_CONTROL_PLANE_ID"),
        Some(json!(
            "spiffe://corp.example/ns/pqmesh-system/sa/pqmesh-control-plane"
        ))
    );
    assert_eq!(var("PQMESH_TRUST_DOMAIN"), Some(json!("corp.example")));
    let calls = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
    assert!(
        calls.contains(
            "--context=prod --namespace=pqmesh-system get deployment pqmesh-control-plane -o json"
        ),
        "{calls}"
    );
}
