//! Bad input: unreadable bodies, pods that cannot be injected, other objects and operations,
//! and seeded random mutations of every fixture. Never a panic; always a precise answer.

use std::collections::BTreeMap;

use pqmesh_control_plane::inject::{self, inject_pod, review, Decision, Outcome, SkipReason};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::{apply, cfg, fixture, patch_of};

fn review_of(request: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}))
        .unwrap()
}

fn pod_request(object: Value) -> Value {
    json!({
        "uid": "11111111-2222-4333-8444-555555555555",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "shop",
        "operation": "CREATE",
        "userInfo": {"username": "alice"},
        "object": object,
    })
}

fn deployment_pod() -> Value {
    let v: Value = serde_json::from_slice(&fixture("deployment-pod.json")).unwrap();
    v["request"]["object"].clone()
}

fn insert(mut v: Value, pointer: &str, key: &str, value: Value) -> Value {
    let target = v.pointer_mut(pointer).and_then(Value::as_object_mut);
    target
        .unwrap_or_else(|| panic!("{pointer}"))
        .insert(key.into(), value);
    v
}

fn with(mut pod: Value, pointer: &str, value: Value) -> Value {
    *pod.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = value;
    pod
}

/// Unanswerable bodies are errors (HTTP 400 at the server); pods that cannot be injected are
/// refused with a message naming the problem; other objects and operations pass unchanged.
#[test]
fn malformed_reviews_get_precise_answers() {
    let unreadable: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"<AdmissionReview/>".to_vec(), "not JSON"),
        ("empty body", Vec::new(), "not JSON"),
        (
            "JSON array",
            b"[]".to_vec(),
            "expected an object, got an array",
        ),
        (
            "v1beta1",
            serde_json::to_vec(
                &json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
            "request": pod_request(deployment_pod())}),
            )
            .unwrap(),
            "admission.k8s.io/v1beta1",
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "request is missing",
        ),
        (
            "request not an object",
            review_of(json!("pod")),
            "request must be an object",
        ),
        (
            "no uid",
            review_of(with(pod_request(deployment_pod()), "/uid", Value::Null)),
            "request.uid",
        ),
        (
            "empty uid",
            review_of(with(pod_request(deployment_pod()), "/uid", json!(""))),
            "request.uid",
        ),
        (
            "no kind",
            review_of(with(pod_request(deployment_pod()), "/kind", Value::Null)),
            "request.kind",
        ),
        (
            "deeply nested",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            "recursion limit",
        ),
    ];
    for (what, body, want) in unreadable {
        let err = review(&body, &cfg()).expect_err(what).to_string();
        assert!(err.contains(want), "{what}: {err}");
    }

    let refused: Vec<(&str, Value, &str)> = vec![
        (
            "object missing",
            with(pod_request(Value::Null), "/object", Value::Null),
            "request.object is missing",
        ),
        (
            "object not a pod",
            pod_request(json!("nginx")),
            "not a Pod: expected an object, got a string",
        ),
        (
            "object of another kind",
            pod_request(with(deployment_pod(), "/kind", json!("Deployment"))),
            "kind is \"Deployment\"",
        ),
        (
            "containers not an array",
            pod_request(with(
                deployment_pod(),
                "/spec/containers",
                json!({"name": "web"}),
            )),
            "spec.containers: expected an array, got an object",
        ),
        (
            "container not an object",
            pod_request(with(deployment_pod(), "/spec/containers/0", json!("web"))),
            "spec.containers[0]: expected an object, got a string",
        ),
        (
            "container without name",
            pod_request(with(deployment_pod(), "/spec/containers/0/name", json!(7))),
            "spec.containers[0].name: missing or not a string",
        ),
        (
            "no spec",
            pod_request(with(deployment_pod(), "/spec", Value::Null)),
            "spec: missing",
        ),
        (
            "no containers",
            pod_request(with(deployment_pod(), "/spec/containers", json!([]))),
            "spec.containers: empty",
        ),
        (
            "annotations not strings",
            pod_request(with(
                deployment_pod(),
                "/metadata/annotations/prometheus.io~1port",
                json!(9090),
            )),
            "metadata.annotations[\"prometheus.io/port\"]: expected a string, got a number",
        ),
        (
            "hostNetwork not a boolean",
            pod_request(insert(
                deployment_pod(),
                "/spec",
                "hostNetwork",
                json!("yes"),
            )),
            "spec.hostNetwork: expected a boolean, got a string",
        ),
        (
            "bad inject annotation",
            pod_request(with(
                deployment_pod(),
                "/metadata/annotations",
                json!({"pqmesh.io/inject": "flase"}),
            )),
            "annotation pqmesh.io/inject=\"flase\": expected \"true\" or \"false\"",
        ),
        (
            "bad CIDR annotation",
            pod_request(with(
                deployment_pod(),
                "/metadata/annotations",
                json!({"pqmesh.io/exclude-outbound-cidrs": "10.0.0.0/33"}),
            )),
            "pqmesh.io/exclude-outbound-cidrs",
        ),
        (
            "bad port annotation",
            pod_request(with(
                deployment_pod(),
                "/metadata/annotations",
                json!({"pqmesh.io/exclude-inbound-ports": "http"}),
            )),
            "\"http\" is not a TCP port",
        ),
        (
            "reserved container name",
            pod_request(with(
                deployment_pod(),
                "/spec/containers/0/name",
                json!("pqmesh-proxy"),
            )),
            "spec.containers[0] is named \"pqmesh-proxy\"",
        ),
        (
            "reserved volume name",
            pod_request(with(
                deployment_pod(),
                "/spec/volumes/0/name",
                json!("pqmesh-token"),
            )),
            "spec.volumes[0] is named \"pqmesh-token\"",
        ),
        (
            "partially injected",
            pod_request(insert(
                deployment_pod(),
                "/spec",
                "initContainers",
                json!([{"name": "pqmesh-init", "image": "x"}]),
            )),
            "partially injected",
        ),
        (
            "port taken by the sidecar",
            pod_request(with(
                deployment_pod(),
                "/spec/containers/0/ports/0/containerPort",
                json!(15001),
            )),
            "containerPort 15001 is a port the pqmesh sidecar listens on",
        ),
        (
            "port out of range",
            pod_request(with(
                deployment_pod(),
                "/spec/containers/0/ports/0/containerPort",
                json!(70000),
            )),
            "spec.containers[0].ports[0].containerPort: missing or not a port number",
        ),
    ];
    for (what, request, want) in refused {
        let reviewed =
            review(&review_of(request), &cfg()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reviewed.outcome, Outcome::Refused, "{what}");
        let out: Value = serde_json::from_slice(&reviewed.body).unwrap();
        let response = &out["response"];
        assert_eq!(
            response["uid"], "11111111-2222-4333-8444-555555555555",
            "{what}"
        );
        assert_eq!(response["allowed"], false, "{what}");
        assert!(response.get("patch").is_none(), "{what}");
        assert_eq!(response["status"]["code"], 400, "{what}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{what}: {message}");
        assert!(
            message.contains("pod shop/"),
            "{what}: names the pod: {message}"
        );
    }

    let passed: Vec<(&str, Value, Outcome)> = vec![
        (
            "a Deployment",
            with(
                pod_request(json!({"kind": "Deployment"})),
                "/kind",
                json!({"group": "apps", "version": "v1", "kind": "Deployment"}),
            ),
            Outcome::NotAPod,
        ),
        (
            "a pod UPDATE",
            with(pod_request(deployment_pod()), "/operation", json!("UPDATE")),
            Outcome::NotACreate,
        ),
        (
            "a pod DELETE",
            with(
                with(pod_request(Value::Null), "/operation", json!("DELETE")),
                "/object",
                Value::Null,
            ),
            Outcome::NotACreate,
        ),
        (
            "a subresource",
            insert(
                pod_request(deployment_pod()),
                "",
                "subResource",
                json!("ephemeralcontainers"),
            ),
            Outcome::NotACreate,
        ),
    ];
    for (what, request, outcome) in passed {
        let reviewed =
            review(&review_of(request), &cfg()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reviewed.outcome, outcome, "{what}");
        let out: Value = serde_json::from_slice(&reviewed.body).unwrap();
        assert_eq!(
            out["response"],
            json!({"uid": "11111111-2222-4333-8444-555555555555", "allowed": true}),
            "{what}"
        );
    }
}

/// Walks to a random node (deeper with some luck) and replaces it with a value of another shape.
fn replace_random_node(rng: &mut StdRng, v: &mut Value) {
    let children = match v {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    };
    if children > 0 && rng.random_range(0..10) < 8 {
        let i = rng.random_range(0..children);
        let child = match v {
            Value::Object(m) => m.values_mut().nth(i),
            Value::Array(a) => a.get_mut(i),
            _ => None,
        };
        if let Some(child) = child {
            return replace_random_node(rng, child);
        }
    }
    let shapes = [
        json!(null),
        json!(""),
        json!(0),
        json!(-1),
        json!(70000),
        json!([]),
        json!({}),
        json!("pqmesh-proxy"),
        json!(true),
        json!([{"name": 1}]),
        json!({"name": "pqmesh-init"}),
    ];
    *v = shapes[rng.random_range(0..shapes.len())].clone();
}

/// Seeded random mutations of every fixture: no panic, and whatever is allowed with a patch
/// is a patch that applies to the object it came with.
#[test]
fn mutated_reviews_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x1A7EC7);
    let names = [
        "deployment-pod.json",
        "job-pod.json",
        "init-containers-pod.json",
        "host-network-pod.json",
        "already-injected-pod.json",
        "opted-out-pod.json",
        "bare-pod.json",
    ];
    let seeds: Vec<Vec<u8>> = names.iter().map(|n| fixture(n)).collect();
    let fragments: [&[u8]; 10] = [
        b"\"",
        b"{}",
        b"[]",
        b"null",
        b"1e999",
        b"-0",
        b",",
        b"\"pqmesh-init\"",
        b"true",
        "\u{e9}".as_bytes(),
    ];
    let cfg = cfg();
    let mut seen = BTreeMap::<&str, usize>::new();
    for round in 0..1500 {
        let mut input = seeds[round % seeds.len()].clone();
        if round % 2 == 0 {
            // Structural: valid JSON with one node replaced, which reaches the pod checks.
            let mut v: Value = serde_json::from_slice(&input).unwrap();
            replace_random_node(&mut rng, &mut v);
            input = serde_json::to_vec(&v).unwrap();
            if round % 4 == 0 {
                inject::fuzz_review(&input, &cfg);
                continue;
            }
        }
        for _ in 0..rng.random_range(if round % 2 == 0 { 0..1 } else { 1..6 }) {
            let len = input.len();
            match rng.random_range(0..4) {
                0 if len > 0 => input[rng.random_range(0..len)] = rng.random(),
                1 if len > 0 => {
                    input.remove(rng.random_range(0..len));
                }
                2 if len > 0 => input.truncate(rng.random_range(0..len)),
                _ => {
                    let at = rng.random_range(0..=len);
                    let f = fragments[rng.random_range(0..fragments.len())];
                    input.splice(at..at, f.iter().copied());
                }
            }
        }
        inject::fuzz_review(&input, &cfg);
        let reviewed = review(&input, &cfg);
        *seen
            .entry(
                reviewed
                    .as_ref()
                    .map_or("error", |r| r.outcome.metric_label()),
            )
            .or_default() += 1;
        if let Ok(reviewed) = reviewed {
            let out: Value = serde_json::from_slice(&reviewed.body).expect("answers are JSON");
            if out["response"].get("patch").is_some() {
                let request: Value = serde_json::from_slice(&input).unwrap();
                let after = apply(&request["request"]["object"], &patch_of(&out["response"]));
                assert_eq!(
                    inject_pod(&after, None, &cfg),
                    Ok(Decision::Skip(SkipReason::AlreadyInjected))
                );
            }
        }
    }
    // The mutations reach every layer: unreadable bodies, refusals and successful injections.
    for outcome in ["error", "refused", "injected"] {
        assert!(
            seen.get(outcome).is_some_and(|n| *n > 10),
            "{outcome}: {seen:?}"
        );
    }
}
