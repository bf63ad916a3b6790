//! The sidecar injection webhook against AdmissionReview v1 requests.
//!
//! The fixtures in `tests/fixtures/admission/` are recorded-shape: no API server exists on this
//! machine, so they were written field for field as a kube-apiserver sends them to a mutating
//! webhook (pods after defaulting and the ServiceAccount/priority/toleration admission plugins,
//! before name generation: `generateName` set, `creationTimestamp: null`, `status: {}`). Every
//! injected pod is checked against the Kubernetes 1.33 Pod schema with `kubernetes-validate`
//! (PyPI; the test fails, never skips, when it is missing), and every patch is applied with an
//! independent RFC 6902 implementation (the `json-patch` crate).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use pqmesh_control_plane::inject::{
    self, inject_pod, review, Decision, InjectConfig, Outcome, SkipReason,
};
use pqmesh_mtls::SpiffeId;
use serde_json::{json, Value};

#[path = "inject/malformed.rs"]
mod malformed;
#[path = "inject/server.rs"]
mod server;

pub fn cfg() -> InjectConfig {
    let cp = SpiffeId::new("cluster.local", "pqmesh-system", "pqmesh-control-plane").unwrap();
    let mut cfg = InjectConfig::new(&cp);
    cfg.image = "registry.example/pqmesh:0.1.0".into();
    cfg.exclude_outbound_cidrs = vec!["10.96.0.1/32".into()];
    cfg
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const INJECTED_FIXTURES: [&str; 4] = [
    "deployment-pod.json",
    "job-pod.json",
    "init-containers-pod.json",
    "bare-pod.json",
];

/// The review's `response`, after checking the envelope every answer must have.
fn respond(body: &[u8]) -> (Value, Value) {
    let request: Value = serde_json::from_slice(body).unwrap();
    let reviewed = review(body, &cfg()).expect("a readable review is answered");
    let out: Value = serde_json::from_slice(&reviewed.body).expect("the answer is JSON");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], request["request"]["uid"]);
    assert!(out.get("request").is_none());
    (
        request["request"]["object"].clone(),
        out["response"].clone(),
    )
}

fn patch_of(response: &Value) -> Value {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(
            response["patch"]
                .as_str()
                .expect("patch is a base64 string"),
        )
        .expect("patch is standard base64");
    serde_json::from_slice(&bytes).expect("patch is a JSON array")
}

/// Applies an RFC 6902 patch with the `json-patch` crate (not our code).
fn apply(pod: &Value, patch: &Value) -> Value {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).expect("valid RFC 6902");
    let mut out = pod.clone();
    json_patch::patch(&mut out, &ops)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{patch:#}"));
    out
}

fn injected(name: &str) -> (Value, Value, Value) {
    let (pod, response) = respond(&fixture(name));
    let patch = patch_of(&response);
    let after = apply(&pod, &patch);
    (pod, patch, after)
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = e
                .get("value")
                .cloned()
                .unwrap_or_else(|| e["valueFrom"].clone());
            (e["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

/// What every injected pod must look like, whatever it started as.
fn assert_injected_shape(before: &Value, after: &Value) {
    let spec = &after["spec"];
    let inits = names(&spec["initContainers"]);
    let mut want = vec!["pqmesh-init", "pqmesh-proxy"];
    want.extend(names(&before["spec"]["initContainers"]));
    assert_eq!(
        inits, want,
        "pqmesh-init first, pqmesh-proxy second, the pod's own after"
    );
    assert_eq!(
        spec["initContainers"].as_array().unwrap()[2..],
        before["spec"]["initContainers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])[..],
        "the pod's own init containers are unchanged"
    );
    // App containers are unchanged but for probes moved to the sidecar's admin port, whose
    // original targets the sidecar gets in PQMESH_APP_PROBES.
    let probe_table: serde_json::Map<String, Value> = env_of(&after["spec"]["initContainers"][1])
        .get("PQMESH_APP_PROBES")
        .and_then(|v| v.as_str())
        .map(|t| serde_json::from_str(t).expect("PQMESH_APP_PROBES is JSON"))
        .unwrap_or_default();
    let original = before["spec"]["containers"].as_array().unwrap();
    let injected = spec["containers"].as_array().unwrap();
    assert_eq!(original.len(), injected.len());
    for (was, now) in original.iter().zip(injected) {
        let strip = |c: &Value| {
            let mut c = c.clone();
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                c.as_object_mut().unwrap().remove(probe);
            }
            c
        };
        assert_eq!(
            strip(was),
            strip(now),
            "app containers unchanged but for probes"
        );
        for (probe, kind) in [
            ("livenessProbe", "livez"),
            ("readinessProbe", "readyz"),
            ("startupProbe", "startupz"),
        ] {
            let key = format!("/app-health/{}/{kind}", now["name"].as_str().unwrap());
            match probe_table.get(&key) {
                Some(target) => {
                    assert_eq!(
                        now[probe]["httpGet"],
                        serde_json::json!({"path": key, "port": 15000, "scheme": "HTTP"})
                    );
                    assert!(target["port"].as_u64().is_some(), "{target}");
                    assert_eq!(now[probe]["periodSeconds"], was[probe]["periodSeconds"]);
                }
                None => assert_eq!(now.get(probe), was.get(probe), "{probe} unchanged"),
            }
        }
    }
    for key in [
        "restartPolicy",
        "serviceAccountName",
        "hostNetwork",
        "securityContext",
    ] {
        assert_eq!(
            spec.get(key),
            before["spec"].get(key),
            "spec.{key} unchanged"
        );
    }
    assert_eq!(
        after["metadata"]["annotations"]["pqmesh.io/injected"],
        inject::VERSION
    );
    for (k, v) in before["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        assert_eq!(
            &after["metadata"]["annotations"][k], v,
            "annotation {k} kept"
        );
    }

    let init = &spec["initContainers"][0];
    assert_eq!(init["image"], "registry.example/pqmesh:0.1.0");
    assert_eq!(init["command"], json!(["/usr/local/bin/pqmesh-sidecar"]));
    assert_eq!(init["args"][0], "init");
    assert_eq!(
        init["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert!(
        init.get("restartPolicy").is_none(),
        "pqmesh-init runs to completion"
    );

    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(
        proxy["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 1337,
            "runAsNonRoot": true,
            "runAsUser": 1337,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    let ports: Vec<(String, u64)> = proxy["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("pqmesh-outbound".into(), 15001),
            ("pqmesh-inbound".into(), 15006),
            ("pqmesh-admin".into(), 15000)
        ]
    );
    for (probe, path) in [
        ("readinessProbe", "/ready"),
        ("startupProbe", "/ready"),
        ("livenessProbe", "/live"),
    ] {
        assert_eq!(proxy[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(proxy[probe]["httpGet"]["port"], 15000, "{probe}");
    }
    assert_eq!(
        proxy["resources"],
        json!({"limits": {"memory": "128Mi"}, "requests": {"cpu": "10m", "memory": "16Mi"}})
    );
    let env = env_of(proxy);
    assert_eq!(
        env["PQMESH_CONTROL_PLANE_ADDR"],
        "pqmesh-control-plane.pqmesh-system.svc:15012"
    );
    assert_eq!(
        env["PQMESH_TRUST_BUNDLE"],
        "/var/run/pqmesh/trust/trust-bundle.pem"
    );
    assert_eq!(
        env["PQMESH_BOOTSTRAP_TOKEN_FILE"],
        "/var/run/secrets/pqmesh/token"
    );
    assert_eq!(env["PQMESH_TRUST_DOMAIN"], "cluster.local");
    assert_eq!(
        env["PQMESH_POD_NAME"],
        json!({"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}})
    );
    assert_eq!(
        proxy["volumeMounts"],
        json!([
            {"name": "pqmesh-token", "mountPath": "/var/run/secrets/pqmesh", "readOnly": true},
            {"name": "pqmesh-trust", "mountPath": "/var/run/pqmesh/trust", "readOnly": true},
        ])
    );

    let volumes = spec["volumes"].as_array().unwrap();
    let own = before["spec"]["volumes"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(
        volumes[..own],
        before["spec"]["volumes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])[..]
    );
    assert_eq!(
        volumes[own..],
        [
            json!({"name": "pqmesh-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "pqmesh-ca", "expirationSeconds": 3600, "path": "token"}}]}}),
            json!({"name": "pqmesh-trust", "configMap": {"name": "pqmesh-trust-bundle",
                "items": [{"key": "trust-bundle.pem", "path": "trust-bundle.pem"}]}}),
            json!({"name": "pqmesh-xtables-lock", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        ]
    );
}

#[test]
fn deployment_pod_is_injected() {
    let (before, patch, after) = injected("deployment-pod.json");
    assert_injected_shape(&before, &after);
    // initContainers was absent: one `add` of the whole array; annotations existed: one key;
    // the readiness probe (httpGet on the intercepted port "http") moves to the admin port.
    assert_eq!(
        patch
            .as_array()
            .unwrap()
            .iter()
            .map(|op| (op["op"].as_str().unwrap(), op["path"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [
            ("add", "/metadata/annotations/pqmesh.io~1injected"),
            ("replace", "/spec/containers/0/readinessProbe/httpGet/path"),
            ("replace", "/spec/containers/0/readinessProbe/httpGet/port"),
            ("add", "/spec/initContainers"),
            ("add", "/spec/volumes/1"),
            ("add", "/spec/volumes/2"),
            ("add", "/spec/volumes/3"),
        ]
    );
    let env = env_of(&after["spec"]["initContainers"][1]);
    assert_eq!(env["PQMESH_INBOUND_PORTS"], "8080,9090");
    assert_eq!(
        env["PQMESH_APP_PROBES"], r#"{"/app-health/web/readyz":{"path":"/healthz","port":8080}}"#,
        "the named port is resolved for the sidecar"
    );
    assert_eq!(
        env["PQMESH_WORKLOAD_LABELS"],
        "app.kubernetes.io/name=web,app.kubernetes.io/version=2.4.1,pod-template-hash=7c5ddbdf54"
    );
    assert_eq!(
        after["spec"]["initContainers"][0]["args"],
        json!([
            "init",
            "--proxy-uid",
            "1337",
            "--outbound-port",
            "15001",
            "--inbound-port",
            "15006",
            "--exclude-outbound-cidrs",
            "10.96.0.1/32"
        ])
    );
}

#[test]
fn job_pod_is_injected_with_a_native_sidecar() {
    let (before, patch, after) = injected("job-pod.json");
    assert_injected_shape(&before, &after);
    assert_eq!(
        after["spec"]["restartPolicy"], "Never",
        "the Job's pod still completes"
    );
    assert_eq!(
        patch[0],
        json!({"op": "add", "path": "/metadata/annotations",
        "value": {"pqmesh.io/injected": inject::VERSION}})
    );
    let env = env_of(&after["spec"]["initContainers"][1]);
    assert!(
        !env.contains_key("PQMESH_INBOUND_PORTS"),
        "no declared ports: every port is served"
    );
}

#[test]
fn existing_init_containers_run_after_the_mesh() {
    let (before, patch, after) = injected("init-containers-pod.json");
    assert_injected_shape(&before, &after);
    assert_eq!(
        names(&after["spec"]["initContainers"]),
        ["pqmesh-init", "pqmesh-proxy", "migrate", "log-shipper"]
    );
    let paths: Vec<&str> = patch
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/spec/initContainers/0") && paths.contains(&"/spec/initContainers/1"),
        "{paths:?}"
    );
    assert_eq!(
        after["spec"]["initContainers"][0]["args"],
        json!([
            "init",
            "--proxy-uid",
            "1337",
            "--outbound-port",
            "15001",
            "--inbound-port",
            "15006",
            "--exclude-inbound-ports",
            "9102",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "10.96.0.1/32,169.254.169.254/32"
        ])
    );
    // TCP ports of the app and of the pod's own native sidecar; UDP and excluded ports are not.
    let env = env_of(&after["spec"]["initContainers"][1]);
    assert_eq!(env["PQMESH_INBOUND_PORTS"], "8443,24224");
}

#[test]
fn bare_pod_gets_whole_arrays_and_objects() {
    let (before, patch, after) = injected("bare-pod.json");
    assert_injected_shape(&before, &after);
    assert_eq!(
        patch
            .as_array()
            .unwrap()
            .iter()
            .map(|op| (op["op"].as_str().unwrap(), op["path"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [
            ("add", "/metadata/annotations"),
            ("add", "/spec/initContainers"),
            ("add", "/spec/volumes")
        ]
    );
}

#[test]
fn skipped_pods_are_allowed_unchanged() {
    for (name, warns) in [
        ("host-network-pod.json", true),
        ("opted-out-pod.json", false),
        ("already-injected-pod.json", false),
    ] {
        let (_, response) = respond(&fixture(name));
        assert_eq!(response["allowed"], true, "{name}");
        assert!(
            response.get("patch").is_none() && response.get("patchType").is_none(),
            "{name}: {response}"
        );
        assert_eq!(
            response.get("warnings").is_some(),
            warns,
            "{name}: {response}"
        );
    }
    let outcome = |name| review(&fixture(name), &cfg()).unwrap().outcome;
    assert_eq!(
        outcome("host-network-pod.json"),
        Outcome::Skipped(SkipReason::HostNetwork)
    );
    assert_eq!(
        outcome("opted-out-pod.json"),
        Outcome::Skipped(SkipReason::OptedOut)
    );
    assert_eq!(
        outcome("already-injected-pod.json"),
        Outcome::Skipped(SkipReason::AlreadyInjected)
    );
    assert_eq!(outcome("deployment-pod.json"), Outcome::Injected);
}

#[test]
fn reinjecting_an_injected_pod_changes_nothing() {
    for name in INJECTED_FIXTURES {
        let (_, _, after) = injected(name);
        assert_eq!(
            inject_pod(&after, None, &cfg()),
            Ok(Decision::Skip(SkipReason::AlreadyInjected)),
            "{name}"
        );
        let mut again: Value = serde_json::from_slice(&fixture(name)).unwrap();
        again["request"]["object"] = after;
        let (_, response) = respond(&serde_json::to_vec(&again).unwrap());
        assert!(response.get("patch").is_none(), "{name}: {response}");
    }
}

#[test]
fn patch_yields_exactly_the_planned_pod() {
    for name in INJECTED_FIXTURES {
        let (pod, _, after) = injected(name);
        let inject::Plan::Inject(planned) = inject::plan(&pod, None, &cfg()).unwrap() else {
            panic!("{name} is injected")
        };
        assert_eq!(after, *planned, "{name}");
    }
}

#[test]
fn init_containers_put_in_front_by_another_webhook_move_back() {
    let (_, _, mut after) = injected("init-containers-pod.json");
    let inits = after["spec"]["initContainers"].as_array_mut().unwrap();
    inits.insert(
        0,
        json!({"name": "vault-agent-init", "image": "vault:1.17"}),
    );
    let pod = after.clone();
    let Decision::Patch(ops) = inject_pod(&pod, None, &cfg()).unwrap() else {
        panic!("reordered")
    };
    let fixed = apply(&pod, &serde_json::to_value(ops).unwrap());
    assert_eq!(
        names(&fixed["spec"]["initContainers"]),
        [
            "pqmesh-init",
            "pqmesh-proxy",
            "vault-agent-init",
            "migrate",
            "log-shipper"
        ]
    );
    assert_eq!(
        inject_pod(&fixed, None, &cfg()),
        Ok(Decision::Skip(SkipReason::AlreadyInjected))
    );
}

#[test]
fn offline_injection_follows_namespace_labels() {
    let pod = |annotation: Option<&str>| {
        let mut p: Value = serde_json::from_slice(&fixture("bare-pod.json")).unwrap();
        let mut pod = p["request"]["object"].take();
        if let Some(v) = annotation {
            pod["metadata"]["annotations"] = json!({"pqmesh.io/inject": v});
        }
        pod
    };
    let ns = |v: Option<&str>| -> BTreeMap<String, String> {
        v.map(|v| [("pqmesh.io/inject".to_owned(), v.to_owned())].into())
            .unwrap_or_default()
    };
    let injects = |pod: &Value, labels: &BTreeMap<String, String>| {
        matches!(
            inject_pod(pod, Some(labels), &cfg()),
            Ok(Decision::Patch(_))
        )
    };
    assert!(injects(&pod(None), &ns(Some("enabled"))));
    assert!(injects(&pod(Some("true")), &ns(None)));
    assert!(!injects(&pod(None), &ns(None)));
    assert!(!injects(&pod(Some("false")), &ns(Some("enabled"))));
    assert!(!injects(&pod(Some("true")), &ns(Some("disabled"))));
    assert_eq!(
        inject_pod(&pod(None), Some(&ns(None)), &cfg()),
        Ok(Decision::Skip(SkipReason::NotSelected))
    );
}

/// Every injected fixture is a valid Pod for Kubernetes 1.33 (strict: no unknown fields).
#[test]
fn injected_pods_validate_against_the_kubernetes_schema() {
    let dir = std::env::temp_dir().join(format!("pqmesh-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for name in INJECTED_FIXTURES {
        let (_, _, mut after) = injected(name);
        // The API server generates the name (generateName + 5 characters) before validating.
        if after["metadata"].get("name").is_none() {
            let generated = format!(
                "{}x7k2q",
                after["metadata"]["generateName"].as_str().unwrap()
            );
            after["metadata"]["name"] = json!(generated);
        }
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&after).unwrap()).unwrap();
        files.push(path);
    }
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubernetes-validate could not be run ({e}): install it with \
                 `pip install kubernetes-validate`; this test fails rather than skip without it"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{text}"
    );
    assert_eq!(
        text.matches(" passed for resource pod/").count(),
        files.len(),
        "{text}"
    );
}
