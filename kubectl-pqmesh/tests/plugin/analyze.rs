//! `kubectl pqmesh analyze`: offline on manifest files, on the cluster through the stand-in
//! kubectl, and both combined. Each finding kind is shown by changing one thing in a clean set
//! that analyzes to nothing: the change must produce exactly that finding, and the clean set
//! none, so every rule is shown both to fire and to stay quiet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use pqmesh_tests::*;
use serde_json::{json, Value};

use super::support::*;

// ---- Offline: manifest files ----

const CLEAN_FILES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {pqmesh.io/inject: enabled}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  template:
    metadata: {labels: {app: orders}}
    spec: {serviceAccountName: orders, containers: [{name: app, image: "orders:1"}]}
---
apiVersion: v1
kind: Secret
metadata: {name: gateway, namespace: shop}
stringData: {client-secret: not-a-real-secret}
---
apiVersion: pqmesh.io/v1alpha1
kind: TokenIssuer
metadata: {name: corp, namespace: shop}
spec:
  issuer: https://login.example.test
  audiences: [orders]
  jwksUri: https://login.example.test/jwks
  introspection:
    endpoint: https://login.example.test/introspect
    clientId: gateway
    clientSecretRef: {name: gateway, key: client-secret}
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  peers: ["shop/web", "spiffe://cluster.local/ns/shop/sa/orders", "shop/*"]
  token: {issuers: [corp]}
"#;

/// Writes `text` as the one manifest in a fresh directory.
fn manifest_dir(text: &str) -> TempDir {
    let dir = TempDir::new("analyze-files");
    std::fs::write(dir.path().join("mesh.yaml"), text).unwrap();
    dir
}

fn findings(run: &Run) -> Vec<Value> {
    let v: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", run.stdout, run.stderr));
    v["findings"].as_array().cloned().unwrap_or_default()
}

/// `(code, severity, "Kind/ns/name")` of each finding.
fn summary(found: &[Value]) -> Vec<(String, String, String)> {
    found
        .iter()
        .map(|f| {
            let ns = f["namespace"]
                .as_str()
                .map(|n| format!("{n}/"))
                .unwrap_or_default();
            (
                f["code"].as_str().unwrap().to_owned(),
                f["severity"].as_str().unwrap().to_owned(),
                format!(
                    "{}/{ns}{}",
                    f["kind"].as_str().unwrap(),
                    f["name"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
    text.replacen(from, to, 1)
}

#[tokio::test]
async fn files_clean_set_has_no_finding() {
    let dir = manifest_dir(CLEAN_FILES);
    let path = dir.path().display().to_string();
    let run = plugin(&["analyze", "-f", &path], &[]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("No findings."), "{}", run.stdout);
    let run = plugin(
        &["analyze", "-f", &path, "-o", "json", "--fail-on", "info"],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["findings"], json!([]));
    assert_eq!(v["sources"], json!(["files"]));
    // Everything was read (a clean result over nothing would prove nothing).
    assert_eq!(
        v["analysed"],
        json!({"AccessPolicy": 1, "Deployment": 1, "Namespace": 1, "Secret": 1, "ServiceAccount": 2, "TokenIssuer": 1})
    );
}

/// The one finding expected: code, severity, `Kind/namespace/name`.
type Expected = (&'static str, &'static str, &'static str);

#[tokio::test]
async fn files_each_problem_is_one_finding() {
    // (what changes, from, to, the one expected finding)
    let cases: &[(&str, &str, &str, Expected)] = &[
        (
            "policy selector matches no pod",
            "selector: {matchLabels: {app: orders}}\n  peers",
            "selector: {matchLabels: {app: ordrs}}\n  peers",
            ("SelectsNoPod", "warning", "AccessPolicy/shop/orders"),
        ),
        (
            "the selected workload's namespace is not injected",
            "labels: {pqmesh.io/inject: enabled}",
            "labels: {team: shop}",
            ("SelectsOnlyUnmeshedPods", "warning", "AccessPolicy/shop/orders"),
        ),
        (
            "token requirement names a missing issuer",
            "token: {issuers: [corp]}",
            "token: {issuers: [corp2]}",
            ("TokenIssuerNotFound", "error", "AccessPolicy/shop/orders"),
        ),
        (
            "introspection Secret missing",
            "clientSecretRef: {name: gateway,",
            "clientSecretRef: {name: gateway-client,",
            ("SecretNotFound", "warning", "TokenIssuer/shop/corp"),
        ),
        (
            "introspection Secret lacks the key",
            "stringData: {client-secret:",
            "stringData: {secret:",
            ("SecretKeyNotFound", "error", "TokenIssuer/shop/corp"),
        ),
        (
            "peer names a missing service account",
            "\"shop/web\"",
            "\"shop/webb\"",
            ("PeerServiceAccountNotFound", "warning", "AccessPolicy/shop/orders"),
        ),
        (
            "exact SPIFFE peer names a missing service account",
            "spiffe://cluster.local/ns/shop/sa/orders",
            "spiffe://cluster.local/ns/shop/sa/billing",
            ("PeerServiceAccountNotFound", "warning", "AccessPolicy/shop/orders"),
        ),
        (
            "namespace pattern names a missing namespace",
            "\"shop/*\"",
            "\"billing/*\"",
            ("PeerNamespaceNotFound", "warning", "AccessPolicy/shop/orders"),
        ),
        (
            "peer in another trust domain",
            "spiffe://cluster.local/ns/shop/sa/orders",
            "spiffe://partner.example/ns/shop/sa/orders",
            ("PeerOtherTrustDomain", "info", "AccessPolicy/shop/orders"),
        ),
        (
            "invalid object (the control plane's own admission code refuses it)",
            "jwksUri: https://login.example.test/jwks",
            "jwksUri: http://login.example.test/jwks",
            ("Invalid", "error", "TokenIssuer/shop/corp"),
        ),
        (
            "an object defined twice",
            "kind: ServiceAccount\nmetadata: {name: web, namespace: shop}\n---\n",
            "kind: ServiceAccount\nmetadata: {name: web, namespace: shop}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: shop}\n---\n",
            ("Duplicate", "error", "ServiceAccount/shop/web"),
        ),
    ];
    for (what, from, to, (code, severity, object)) in cases {
        let dir = manifest_dir(&replace_once(CLEAN_FILES, from, to));
        let path = dir.path().display().to_string();
        let run = plugin(&["analyze", "-f", &path, "-o", "json"], &[]).await;
        let found = findings(&run);
        assert_eq!(
            summary(&found),
            vec![(code.to_string(), severity.to_string(), object.to_string())],
            "{what}: {}",
            run.stdout
        );
        let f = &found[0];
        assert!(
            !f["message"].as_str().unwrap().is_empty() && !f["fix"].as_str().unwrap().is_empty(),
            "{what}: {f}"
        );
        assert!(
            f["source"]
                .as_str()
                .unwrap()
                .contains("mesh.yaml document "),
            "{what}: {f}"
        );
        // Exit 1 only when a finding reaches --fail-on (default: error).
        let want_exit = i32::from(*severity == "error");
        assert_eq!(run.code, want_exit, "{what}: {}", run.stderr);
        let strict = plugin(&["analyze", "-f", &path, "--fail-on", "warning"], &[]).await;
        assert_eq!(
            strict.code,
            i32::from(*severity != "info"),
            "{what} --fail-on warning"
        );
    }
}

#[tokio::test]
async fn files_table_names_the_fix() {
    let text = replace_once(
        CLEAN_FILES,
        "token: {issuers: [corp]}",
        "token: {issuers: [corp2]}",
    );
    let text = replace_once(&text, "\"shop/web\"", "\"shop/webb\"");
    let dir = manifest_dir(&text);
    let run = plugin(&["analyze", "-f", &dir.path().display().to_string()], &[]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let out = run.out();
    for want in [
        "SEVERITY CODE OBJECT FINDING",
        "error TokenIssuerNotFound AccessPolicy/shop/orders spec.token.issuers names TokenIssuer \"corp2\", which does not exist in namespace shop",
        "fix: did you mean \"corp\"? correct spec.token.issuers: edit ",
        "warning PeerServiceAccountNotFound AccessPolicy/shop/orders",
        "fix: did you mean service account \"web\"?",
        "1 error(s), 1 warning(s), 0 info",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{}", run.stdout);
    }
    // Errors sort before warnings.
    assert!(out.find("TokenIssuerNotFound") < out.find("PeerServiceAccountNotFound"));
}

#[tokio::test]
async fn files_several_paths_and_directories() {
    // Policies in one file, workloads in a nested directory: -R reads it, without -R the
    // workloads are missing and the policy selects nothing.
    let dir = TempDir::new("analyze-tree");
    let (workloads, policies) =
        CLEAN_FILES.split_at(CLEAN_FILES.find("apiVersion: pqmesh.io").unwrap());
    std::fs::create_dir(dir.path().join("apps")).unwrap();
    std::fs::write(dir.path().join("apps/workloads.yml"), workloads).unwrap();
    std::fs::write(dir.path().join("apps/notes.txt"), "not yaml: [").unwrap();
    std::fs::write(dir.path().join("policies.yaml"), policies).unwrap();
    let root = dir.path().display().to_string();
    let run = plugin(&["analyze", "-R", "-f", &root], &[]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let run = plugin(&["analyze", "-f", &root, "-o", "json"], &[]).await;
    let codes: Vec<String> = summary(&findings(&run)).into_iter().map(|f| f.0).collect();
    assert!(codes.contains(&"SelectsNoPod".to_owned()), "{codes:?}");
    let apps = dir.path().join("apps/workloads.yml").display().to_string();
    let policies = dir.path().join("policies.yaml").display().to_string();
    let run = plugin(&["analyze", "-f", &policies, "-f", &apps], &[]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let run = plugin(&["analyze", "-f", &policies, &apps], &[]).await;
    assert_eq!(
        run.code, 0,
        "several paths after one -f: {}{}",
        run.stdout, run.stderr
    );
}

#[tokio::test]
async fn files_bad_input_is_a_one_line_error() {
    let dir = TempDir::new("analyze-bad");
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_yaml,
        "kind: Pod\nmetadata: {name: a}\n---\nkind: [unclosed\n",
    )
    .unwrap();
    let no_kind = dir.path().join("values.yaml");
    std::fs::write(&no_kind, "replicas: 3\n").unwrap();
    let cases = [
        (bad_yaml.display().to_string(), "bad.yaml document 2: "),
        (
            no_kind.display().to_string(),
            "values.yaml document 1: not a Kubernetes object: it has no `kind`",
        ),
        (
            "/nonexistent/policies.yaml".to_owned(),
            "/nonexistent/policies.yaml: ",
        ),
    ];
    for (path, want) in cases {
        let run = plugin(&["analyze", "-f", &path], &[]).await;
        assert_eq!(run.code, 1, "{path}");
        assert!(run.stdout.is_empty(), "{path}: {}", run.stdout);
        assert!(
            run.stderr.starts_with("error: kubectl pqmesh analyze: ") && run.stderr.contains(want),
            "{path}: {}",
            run.stderr
        );
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    }
    let run = plugin(&["analyze", "--fail-on", "fatal", "-f", "x"], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
}

// ---- The cluster, through the stand-in kubectl ----

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn accepted() -> Value {
    json!({"conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "valid; in force", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "every reference resolves", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    ]})
}

fn meshed_pod(name: &str, ns: &str, app: &str, owner: (&str, &str), hash: Option<&str>) -> Value {
    let mut labels = json!({"app": app});
    if let Some(h) = hash {
        labels["pod-template-hash"] = json!(h);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels,
            "annotations": {"pqmesh.io/injected": "0.1.0"},
            "ownerReferences": [{"kind": owner.0, "name": owner.1, "controller": true}]},
        "spec": {
            "initContainers": [
                {"name": "pqmesh-init", "image": "pqmesh:0.1.0"},
                {"name": "pqmesh-proxy", "image": "pqmesh:0.1.0", "restartPolicy": "Always",
                 "ports": [{"name": "pqmesh-admin", "containerPort": 15000}]}
            ],
            "containers": [{"name": "app", "image": format!("{app}:1")}],
            "serviceAccountName": app
        },
        "status": {"phase": "Running"}
    })
}

/// The stand-in kubectl's fixture files: a healthy mesh in which analyze finds nothing.
fn clean_cluster() -> BTreeMap<&'static str, Value> {
    let ns = |name: &str, labels: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    let sa = |name: &str| json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "shop"}});
    let policy = json!({
        "apiVersion": "pqmesh.io/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "orders", "namespace": "shop", "generation": 1},
        "spec": {"selector": {"matchLabels": {"app": "orders"}}, "ports": [8080], "mtls": "STRICT",
                 "peers": ["shop/*", "shop/web"], "token": {"issuers": ["corp"]}},
        "status": accepted()
    });
    let issuer = json!({
        "apiVersion": "pqmesh.io/v1alpha1", "kind": "TokenIssuer",
        "metadata": {"name": "corp", "namespace": "shop", "generation": 1},
        "spec": {"issuer": "https://login.example.test", "audiences": ["orders"],
                 "jwksUri": "https://127.0.0.1:9/jwks",
                 "introspection": {"endpoint": "https://127.0.0.1:9/introspect", "clientId": "gateway",
                                   "clientSecretRef": {"name": "gateway", "key": "client-secret"}}},
        "status": accepted()
    });
    let webhook = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "pqmesh"},
        "webhooks": [{
            "name": "inject.pqmesh.io",
            "namespaceSelector": {"matchLabels": {"pqmesh.io/inject": "enabled"},
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["pqmesh-system"]}]},
            "objectSelector": {"matchExpressions": [{"key": "pqmesh.io/inject", "operator": "NotIn", "values": ["false"]}]},
            "clientConfig": {"service": {"name": "pqmesh-webhook", "namespace": "pqmesh-system", "path": "/inject", "port": 443}}
        }]
    });
    let control_plane_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pqmesh-control-plane-7c9d-x2x4q", "namespace": "pqmesh-system",
                     "labels": {"app.kubernetes.io/name": "pqmesh", "app.kubernetes.io/component": "control-plane"}},
        "spec": {"containers": [{"name": "control-plane", "image": "pqmesh:0.1.0"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    });
    BTreeMap::from([
        (
            "namespaces.json",
            list(vec![
                ns(
                    "shop",
                    json!({"pqmesh.io/inject": "enabled", "kubernetes.io/metadata.name": "shop"}),
                ),
                ns(
                    "pqmesh-system",
                    json!({"kubernetes.io/metadata.name": "pqmesh-system"}),
                ),
            ]),
        ),
        (
            "serviceaccounts.json",
            list(vec![sa("default"), sa("web"), sa("orders")]),
        ),
        (
            "pods.json",
            list(vec![
                meshed_pod(
                    "orders-0",
                    "shop",
                    "orders",
                    ("StatefulSet", "orders"),
                    None,
                ),
                meshed_pod(
                    "web-5d8f7-abcde",
                    "shop",
                    "web",
                    ("ReplicaSet", "web-5d8f7"),
                    Some("5d8f7"),
                ),
                control_plane_pod.clone(),
            ]),
        ),
        ("accesspolicies.json", list(vec![policy])),
        ("tokenissuers.json", list(vec![issuer])),
        (
            "secret-shop-gateway.json",
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "gateway", "namespace": "shop"},
            "data": {"client-secret": "dmVyeS1zZWNyZXQ="}}),
        ),
        ("webhook.json", webhook),
        ("cp-pods.json", list(vec![control_plane_pod])),
    ])
}

struct FakeKube {
    dir: TempDir,
    env: Vec<(String, String)>,
}

impl FakeKube {
    fn new(fixtures: &BTreeMap<&'static str, Value>, control_plane: SocketAddr) -> Self {
        let dir = TempDir::new("analyze-kubectl");
        let kubectl = install_fake_kubectl(dir.path());
        for (name, v) in fixtures {
            std::fs::write(dir.path().join(name), serde_json::to_vec_pretty(v).unwrap()).unwrap();
        }
        let env = vec![
            ("FAKE_DIR".to_owned(), dir.path().display().to_string()),
            ("FAKE_CP_PORT".to_owned(), control_plane.port().to_string()),
            ("FAKE_SIDECAR_PORT".to_owned(), "9".to_owned()),
            ("PQMESH_KUBECTL".to_owned(), kubectl.display().to_string()),
        ];
        Self { dir, env }
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }

    fn path(&self) -> &Path {
        self.dir.path()
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

/// A control plane's admin endpoint answering /metrics and /policy_status as given.
async fn canned_control_plane(
    root_in_days: f64,
    serving_in_secs: f64,
    sidecars: Value,
) -> SocketAddr {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let metrics = format!(
        "# TYPE pqmesh_ca_root_expiry_timestamp_seconds gauge\npqmesh_ca_root_expiry_timestamp_seconds {}\n\
         # TYPE pqmesh_serving_cert_expiry_timestamp_seconds gauge\npqmesh_serving_cert_expiry_timestamp_seconds {}\n",
        now + root_in_days * 86_400.0,
        now + serving_in_secs
    );
    let status = json!({
        "connected_sidecars": sidecars.as_array().map_or(0, Vec::len),
        "sidecars_on_current_version": 0, "ca_version": "ca-2",
        "sidecars": sidecars,
    });
    canned_routes(vec![
        ("/metrics", "200 OK", metrics),
        ("/policy_status", "200 OK", status.to_string()),
    ])
    .await
}

fn sidecar_entry(extra: Value) -> Value {
    let mut s = json!({"identity": "spiffe://cluster.local/ns/shop/sa/orders", "pod": "orders-0",
        "sent_version": "v2", "acked_version": "v2", "nack": null, "ca_version": "ca-2"});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

#[tokio::test]
async fn cluster_clean_set_has_no_finding_with_a_real_control_plane() {
    // A real control plane and the sidecar of pod orders-0, ACKed, on the current CA.
    let (cp, _sidecar) = policy_setup().await;
    let fake = FakeKube::new(&clean_cluster(), cp.running.admin_addr);
    let run = fake.run(&["analyze", "--fail-on", "info"]).await;
    assert_eq!(
        run.code,
        0,
        "{}{}\ncalls:\n{}",
        run.stdout,
        run.stderr,
        fake.calls()
    );
    assert!(run.stdout.contains("No findings."), "{}", run.stdout);
    assert!(run.stdout.starts_with("pqmesh analyze: cluster + control-plane (1 AccessPolicy, 2 Namespace, 3 Pod, 1 Secret, 3 ServiceAccount, 1 TokenIssuer)"), "{}", run.stdout);
    let calls = fake.calls();
    for want in [
        "get namespaces --all-namespaces -o json",
        "get pods --all-namespaces -o json",
        "get accesspolicies.pqmesh.io --all-namespaces -o json",
        "get mutatingwebhookconfiguration pqmesh -o json",
        // Only the referenced Secret is read, never a list of Secrets.
        "--namespace=shop get secret gateway -o json",
        "port-forward --address 127.0.0.1 pod/pqmesh-control-plane-7c9d-x2x4q :15015",
    ] {
        assert!(calls.contains(want), "{want:?} missing in:\n{calls}");
    }
    assert!(!calls.contains("get secrets"), "{calls}");
    // The sidecar's own view agrees: no stale version to report.
    let run = fake.run(&["analyze", "-o", "json"]).await;
    assert_eq!(findings(&run), Vec::<Value>::new(), "{}", run.stdout);
}

type Mutation = fn(&mut BTreeMap<&'static str, Value>);

#[tokio::test]
async fn cluster_each_problem_is_one_finding() {
    let healthy = canned_control_plane(365.0, 86_400.0, json!([sidecar_entry(json!({}))])).await;
    let cases: Vec<(&str, Mutation, Expected, &str)> = vec![
        (
            "the control plane refused a policy",
            |f| {
                f.get_mut("accesspolicies.json").unwrap()["items"][0]["status"]["conditions"][0] = json!({
                    "type": "Accepted", "status": "False", "reason": "Invalid",
                    "message": "spec.rules[0].paths: \"orders\" must start with /; it has no effect",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"});
            },
            ("NotAccepted", "error", "AccessPolicy/shop/orders"),
            "the control plane refused it (Invalid): spec.rules[0].paths: \"orders\" must start with /",
        ),
        (
            "a policy selecting no pod",
            |f| {
                f.get_mut("accesspolicies.json").unwrap()["items"][0]["spec"]["selector"] =
                    json!({"matchLabels": {"app": "orders", "tier": "gold"}});
            },
            ("SelectsNoPod", "warning", "AccessPolicy/shop/orders"),
            "{app=orders,tier=gold} selects no pod in namespace shop",
        ),
        (
            "a missing issuer",
            |f| {
                f.get_mut("tokenissuers.json").unwrap()["items"] = json!([]);
            },
            ("TokenIssuerNotFound", "error", "AccessPolicy/shop/orders"),
            "names TokenIssuer \"corp\", which does not exist in namespace shop",
        ),
        (
            "a missing introspection Secret",
            |f| {
                f.remove("secret-shop-gateway.json");
            },
            ("SecretNotFound", "error", "TokenIssuer/shop/corp"),
            "Secret shop/gateway, which does not exist",
        ),
        (
            "a peer naming a missing service account",
            |f| {
                f.get_mut("serviceaccounts.json").unwrap()["items"].as_array_mut().unwrap().retain(|s| s["metadata"]["name"] != "web");
            },
            ("PeerServiceAccountNotFound", "warning", "AccessPolicy/shop/orders"),
            "names service account \"web\" in namespace shop, which does not exist",
        ),
        (
            "a pod created before the namespace was labelled",
            |f| {
                let pod = &mut f.get_mut("pods.json").unwrap()["items"][1]["spec"];
                pod["initContainers"] = json!([]);
            },
            ("PodWithoutSidecar", "warning", "Pod/shop/web-5d8f7-abcde"),
            "kubectl rollout restart deployment/web -n shop",
        ),
        (
            "a sidecar in a namespace no longer labelled",
            |f| {
                f.get_mut("namespaces.json").unwrap()["items"].as_array_mut().unwrap().push(json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "legacy", "labels": {"kubernetes.io/metadata.name": "legacy"}}}));
                f.get_mut("pods.json").unwrap()["items"][1]["metadata"]["namespace"] = json!("legacy");
            },
            ("SidecarWithoutInjection", "info", "Pod/legacy/web-5d8f7-abcde"),
            "namespace legacy is not selected for injection",
        ),
        (
            "a control-plane replica that cannot be reached",
            |f| {
                f.get_mut("cp-pods.json").unwrap()["items"][0]["status"]["phase"] = json!("Pending");
            },
            ("ControlPlaneUnreachable", "error", "ControlPlane/pqmesh-control-plane-7c9d-x2x4q"),
            "pod is Pending, not Running",
        ),
    ];
    let clean = clean_cluster();
    for (what, mutate, (code, severity, object), text) in cases {
        let mut fixtures = clean.clone();
        mutate(&mut fixtures);
        let fake = FakeKube::new(&fixtures, healthy);
        let run = fake.run(&["analyze", "-o", "json"]).await;
        let found = findings(&run);
        assert_eq!(
            summary(&found),
            vec![(code.to_owned(), severity.to_owned(), object.to_owned())],
            "{what}: {}{}",
            run.stdout,
            run.stderr
        );
        let f = &found[0];
        assert!(
            f["message"].as_str().unwrap().contains(text)
                || f["fix"].as_str().unwrap().contains(text),
            "{what}: {text:?} missing in {f}"
        );
        assert!(
            f.get("source").is_none(),
            "cluster objects have no file: {f}"
        );
        assert_eq!(run.code, i32::from(severity == "error"), "{what}");
    }
}

#[tokio::test]
async fn cluster_control_plane_findings() {
    let ok = sidecar_entry(json!({}));
    let cases = [
        (canned_control_plane(5.0, 86_400.0, json!([ok.clone()])).await, ("CARootExpiry", "warning", "ControlPlane/ca-root"), "kubectl pqmesh rotate-root prepare"),
        (canned_control_plane(365.0, -60.0, json!([ok.clone()])).await, ("ServingCertExpiry", "error", "ControlPlane/serving-certificate"), "the serving certificate EXPIRED"),
        (canned_control_plane(365.0, 86_400.0, json!([sidecar_entry(json!({"acked_version": "v1"}))])).await, ("PolicyNotAcked", "warning", "Pod/shop/orders-0"), "has not acknowledged policy version v2 (it runs v1)"),
        (canned_control_plane(365.0, 86_400.0, json!([sidecar_entry(json!({"acked_version": "v1", "nack": ["v2", "unknown claim operator"]}))])).await, ("PolicyRejected", "error", "Pod/shop/orders-0"), "rejected policy version v2: unknown claim operator"),
        (canned_control_plane(365.0, 86_400.0, json!([sidecar_entry(json!({"compile_error": "TokenIssuers shop/a and shop/b both configure introspection"}))])).await, ("PolicyUncompilable", "error", "Pod/shop/orders-0"), "both configure introspection"),
        (canned_control_plane(365.0, 86_400.0, json!([sidecar_entry(json!({"ca_version": "ca-1"}))])).await, ("StaleCA", "warning", "Pod/shop/orders-0"), "CA version ca-1, not the current ca-2"),
    ];
    let fixtures = clean_cluster();
    for (addr, (code, severity, object), text) in cases {
        let fake = FakeKube::new(&fixtures, addr);
        let run = fake.run(&["analyze", "-o", "json"]).await;
        let found = findings(&run);
        assert_eq!(
            summary(&found),
            vec![(code.to_owned(), severity.to_owned(), object.to_owned())],
            "{code}: {}{}",
            run.stdout,
            run.stderr
        );
        let f = &found[0];
        assert!(
            f["message"].as_str().unwrap().contains(text)
                || f["fix"].as_str().unwrap().contains(text),
            "{code}: {text:?} missing in {f}"
        );
        assert_eq!(run.code, i32::from(severity == "error"), "{code}");
        // The same facts through --admin-url, without kubectl (local mode).
        let dir = manifest_dir(CLEAN_FILES);
        let run = plugin(
            &[
                "analyze",
                "-f",
                &dir.path().display().to_string(),
                "--admin-url",
                &url(addr),
                "-o",
                "json",
            ],
            &[],
        )
        .await;
        assert_eq!(summary(&findings(&run))[0].0, code, "{}", run.stdout);
    }
}

#[tokio::test]
async fn files_and_cluster_combined() {
    let healthy = canned_control_plane(365.0, 86_400.0, json!([sidecar_entry(json!({}))])).await;
    // The cluster lacks the issuer; the file about to be applied brings it.
    let mut fixtures = clean_cluster();
    fixtures.get_mut("tokenissuers.json").unwrap()["items"] = json!([]);
    let fake = FakeKube::new(&fixtures, healthy);
    let run = fake.run(&["analyze", "-o", "json"]).await;
    assert_eq!(
        summary(&findings(&run))[0].0,
        "TokenIssuerNotFound",
        "{}",
        run.stdout
    );
    let issuer_file = fake.path().join("issuer.yaml");
    let issuer = &CLEAN_FILES[CLEAN_FILES
        .find("apiVersion: pqmesh.io/v1alpha1\nkind: TokenIssuer")
        .unwrap()
        ..CLEAN_FILES
            .find("---\napiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy")
            .unwrap()];
    std::fs::write(&issuer_file, issuer).unwrap();
    let file = issuer_file.display().to_string();
    let run = fake.run(&["analyze", "-f", &file, "--cluster"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .starts_with("pqmesh analyze: files + cluster + control-plane"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("No findings."), "{}", run.stdout);
    // The file's policy replaces the cluster's: a typo in it is found against cluster state.
    let policy = replace_once(
        &CLEAN_FILES[CLEAN_FILES
            .find("apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy")
            .unwrap()..],
        "\"shop/web\"",
        "\"shop/wbe\"",
    );
    std::fs::write(&issuer_file, format!("{issuer}---\n{policy}")).unwrap();
    let run = fake
        .run(&["analyze", "-f", &file, "--cluster", "-o", "json"])
        .await;
    assert_eq!(
        summary(&findings(&run)),
        vec![(
            "PeerServiceAccountNotFound".to_owned(),
            "warning".to_owned(),
            "AccessPolicy/shop/orders".to_owned()
        )],
        "{}",
        run.stdout
    );
    // Without --cluster the files are judged alone: the policy's workload is not among them.
    let run = plugin(&["analyze", "-f", &file, "-o", "json"], &[]).await;
    let codes: Vec<String> = summary(&findings(&run)).into_iter().map(|f| f.0).collect();
    assert!(codes.contains(&"SelectsNoPod".to_owned()), "{codes:?}");
    // -n limits the report to one namespace's objects.
    let run = fake
        .run(&["analyze", "-f", &file, "--cluster", "-n", "pqmesh-system"])
        .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("No findings."), "{}", run.stdout);
}
