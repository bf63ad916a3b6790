//! Kubernetes mode end to end. There is no kube-apiserver on this machine: the control plane's
//! real kube-rs client talks to `pqmesh_tests::apiserver`, which serves objects in the shape a
//! v1.33 API server returns (Pods as the injector leaves them, a Service and its EndpointSlice,
//! AccessPolicies, the chart's MutatingWebhookConfiguration) and TokenReview answers, and
//! records every request. Two replicas race to create the CA Secret, publish the trust bundle
//! ConfigMaps and the webhook caBundle; real sidecars authenticate with (service-account-shaped)
//! tokens checked by TokenReview, trust the bundle as mounted from the ConfigMap, get their
//! policy selected by their Pod's labels, and the policy's status counts their ACKs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pqmesh_control_plane::config::Config;
use pqmesh_control_plane::RunningControlPlane;
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::apiserver::ApiServer;
use pqmesh_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) const CP_NS: &str = "pqmesh-system";
pub(crate) const WEBHOOK_NAME: &str = "pqmesh-control-plane.pqmesh-system.svc";

pub(crate) fn pod(name: &str, sa: &str, ip: &str, app: &str, meshed: bool) -> Value {
    let mut init = vec![];
    if meshed {
        init.push(json!({"name": "pqmesh-init", "image": "pqmesh:dev", "args": ["init"]}));
        init.push(json!({"name": "pqmesh-proxy", "image": "pqmesh:dev", "restartPolicy": "Always",
                         "ports": [{"containerPort": 15000, "name": "pqmesh-admin", "protocol": "TCP"}]}));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app, "pod-template-hash": "7d9f8c6b5d"},
                     "annotations": if meshed { json!({"pqmesh.io/injected": "true"}) } else { json!({}) },
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7d9f8c6b5d"),
                                          "uid": "5f0c3a7e-1111-4a4b-9c1d-2b3c4d5e6f70", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"serviceAccountName": sa, "serviceAccount": sa, "nodeName": "node-1",
                 "initContainers": init,
                 "containers": [{"name": app, "image": "registry.example/shop/app:1.0", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.49.2",
                   "qosClass": "Burstable", "startTime": "2026-11-22T08:00:00Z"}
    })
}

pub(crate) fn token(sa: &str) -> String {
    // Shaped like a projected service-account token (a JWT); the API server, not the control
    // plane, verifies it, so only the shape and `exp` matter here.
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = 4_102_444_800u64; // fixed (2100-01-01), so the same service account gets the same token
    format!(
        "{}.{}.c2lnbmF0dXJlLW5vdC1jaGVja2VkLWhlcmU",
        b64(json!({"alg": "RS256", "kid": "k1"})),
        b64(
            json!({"aud": ["pqmesh-ca"], "exp": exp, "iss": "https://kubernetes.default.svc.cluster.local",
                   "sub": format!("system:serviceaccount:shop:{sa}")})
        )
    )
}

pub(crate) fn authenticated(sa: &str, audiences: &[&str]) -> Value {
    json!({"authenticated": true,
           "user": {"username": format!("system:serviceaccount:shop:{sa}"), "uid": "0d5c9a4e-2222-4f61-8a0e-3c7b1d2e4f55",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/pod-name": [format!("{sa}-7d9f8c6b5d-x2x9q")]}},
           "audiences": audiences})
}

/// The cluster the tests start from: namespace shop (labelled for injection), web and api pods
/// (meshed), Service api with its EndpointSlice, a policy admitting only shop/web to api, and the
/// chart's webhook configuration with an empty caBundle.
pub(crate) fn cluster(api: &ApiServer) {
    api.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"pqmesh.io/inject": "enabled", "kubernetes.io/metadata.name": "shop"}}}));
    api.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CP_NS, "labels": {"kubernetes.io/metadata.name": CP_NS}}}));
    api.put(pod(
        "web-7d9f8c6b5d-x2x9q",
        "web",
        "10.244.1.10",
        "web",
        true,
    ));
    api.put(pod(
        "api-7d9f8c6b5d-x2x9q",
        "api",
        "10.244.1.11",
        "api",
        true,
    ));
    api.put(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "selector": {"app": "api"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}));
    api.put(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "api-x7k2p", "namespace": "shop", "labels": {"kubernetes.io/service-name": "api", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.11"], "conditions": {"ready": true, "serving": true, "terminating": false},
                       "targetRef": {"kind": "Pod", "name": "api-7d9f8c6b5d-x2x9q", "namespace": "shop"}, "nodeName": "node-1"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}));
    api.put(json!({"apiVersion": "pqmesh.io/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "api", "namespace": "shop",
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"selector": {"matchLabels": {"app": "api"}}, "mtls": "STRICT", "peers": ["shop/web"]}}));
    api.put(json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "pqmesh", "labels": {"app.kubernetes.io/name": "pqmesh"}},
        "webhooks": [{"name": "inject.pqmesh.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "failurePolicy": "Fail", "timeoutSeconds": 10,
                      "clientConfig": {"service": {"name": "pqmesh-control-plane", "namespace": CP_NS, "path": "/inject", "port": 15017}},
                      "namespaceSelector": {"matchLabels": {"pqmesh.io/inject": "enabled"}},
                      "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}]}]}));
    for sa in ["web", "api", "intruder"] {
        api.review(&token(sa), authenticated(sa, &["pqmesh-ca"]));
    }
    api.review(
        "wrong-audience-token-0123456789",
        authenticated("web", &["https://kubernetes.default.svc"]),
    );
}

fn cp_env(replica: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("POD_NAMESPACE", CP_NS),
        ("POD_NAME", replica),
        ("PQMESH_GRPC_ADDR", "127.0.0.1:0"),
        ("PQMESH_ADMIN_ADDR", "127.0.0.1:0"),
        ("PQMESH_WEBHOOK_ADDR", "127.0.0.1:0"),
        ("PQMESH_WEBHOOK_CONFIGURATION", "pqmesh"),
        ("PQMESH_SERVING_NAMES", WEBHOOK_NAME),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

pub(crate) async fn replica(
    api: &ApiServer,
    name: &str,
    extra: &[(&str, &str)],
) -> Result<RunningControlPlane, String> {
    let config = Config::from_args_and_env(&["--kubernetes".into()], &cp_env(name, extra))
        .map_err(|e| e.to_string())?;
    pqmesh_control_plane::start_kubernetes_with_client(config, api.client())
        .await
        .map_err(|e| e.to_string())
}

pub(crate) fn data(object: &Value, key: &str) -> String {
    use base64::Engine;
    let b64 = object["data"][key].as_str().unwrap_or_default();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// Whether two PEM texts hold the same certificates.
fn same_certs(a: Option<&str>, b: &str) -> bool {
    let parse = |t: &str| pqmesh_mtls::x509::certs_from_pem(t).unwrap_or_default();
    a.is_some_and(|a| !parse(a).is_empty() && parse(a) == parse(b))
}

/// The webhook configuration's caBundle becomes `expected_root`, and the webhook's certificate
/// verifies against it for the Service name the API server dials.
async fn webhook_trusts(api: &ApiServer, cp: &RunningControlPlane, expected_root: &str) {
    eventually("webhook caBundle", || {
        api.get(
            "apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            "",
            "pqmesh",
        )
        .is_some_and(|w| {
            use base64::Engine;
            let got = w["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .unwrap_or_default();
            let got = base64::engine::general_purpose::STANDARD
                .decode(got)
                .unwrap_or_default();
            same_certs(std::str::from_utf8(&got).ok(), expected_root)
        })
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in pqmesh_mtls::x509::certs_from_pem(expected_root).unwrap() {
        roots.add(cert).unwrap();
    }
    // A plain TLS client trusting only the caBundle, as the API server does.
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(cp.webhook_addr.unwrap()).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(
            rustls_pki_types::ServerName::try_from(WEBHOOK_NAME).unwrap(),
            tcp,
        )
        .await
        .expect("the webhook's certificate verifies against the published caBundle");
}

/// What the kubelet would mount from the trust-bundle ConfigMap.
pub(crate) fn mounted_bundle(api: &ApiServer, dir: &TempDir) -> String {
    let cm = api
        .get("api/v1/configmaps", "shop", "pqmesh-trust-bundle")
        .expect("bundle ConfigMap in shop");
    let path = dir.path().join("trust-bundle.pem");
    std::fs::write(&path, cm["data"]["trust-bundle.pem"].as_str().unwrap()).unwrap();
    path.display().to_string()
}

pub(crate) fn sidecar_env(
    cp: &RunningControlPlane,
    bundle: &str,
    sa: &str,
    pod: &str,
) -> HashMap<String, String> {
    [
        ("PQMESH_CONTROL_PLANE_ADDR", cp.grpc_addr.to_string()),
        ("PQMESH_TRUST_BUNDLE", bundle.to_owned()),
        ("PQMESH_BOOTSTRAP_TOKEN", token(sa)),
        ("PQMESH_POD_NAME", pod.to_owned()),
        ("PQMESH_INBOUND_ADDR", "127.0.0.1:0".to_owned()),
        ("PQMESH_OUTBOUND_ADDR", "127.0.0.1:0".to_owned()),
        ("PQMESH_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        (
            "PQMESH_CONTROL_PLANE_ID",
            format!("spiffe://{TRUST_DOMAIN}/ns/{CP_NS}/sa/pqmesh-control-plane"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A sidecar for `sa` whose explicit outbound listener leads to api's sidecar `b`.
fn caller_env(
    cp: &RunningControlPlane,
    bundle: &str,
    sa: &str,
    pod: &str,
    b: &pqmesh_sidecar::RunningSidecar,
) -> HashMap<String, String> {
    with(
        sidecar_env(cp, bundle, sa, pod),
        &[
            ("PQMESH_OUTBOUND_PEER_ADDR", &b.inbound_addr.to_string()),
            ("PQMESH_OUTBOUND_PEER_ID", &spiffe("api")),
        ],
    )
}

async fn exchange(addr: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(data).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut back)).await;
    back
}

#[tokio::test]
async fn two_replicas_one_ca_bundles_webhook_policy_status_end_to_end() {
    let api = ApiServer::start().await;
    cluster(&api);
    let (a, b) = tokio::join!(replica(&api, "cp-0", &[]), replica(&api, "cp-1", &[]));
    let (cp0, cp1) = (a.expect("replica 0 starts"), b.expect("replica 1 starts"));

    // Exactly one CA Secret was created; the other replica read it (after a 409 or a get).
    let created: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.path == format!("/api/v1/namespaces/{CP_NS}/secrets")
                && r.status == 201
        })
        .collect();
    assert_eq!(created.len(), 1, "one CA Secret: {created:?}");
    let ca = api
        .get("api/v1/secrets", CP_NS, "pqmesh-ca")
        .expect("CA Secret");
    let root = data(&ca, "ca.crt");
    assert!(data(&ca, "ca.key").contains("BEGIN PRIVATE KEY"));

    // The trust bundle is published where sidecars mount it, in the meshed namespace and ours.
    eventually("trust bundle ConfigMaps", || {
        ["shop", CP_NS].iter().all(|ns| {
            api.get("api/v1/configmaps", ns, "pqmesh-trust-bundle")
                .is_some_and(|cm| same_certs(cm["data"]["trust-bundle.pem"].as_str(), &root))
        })
    })
    .await;
    assert!(
        api.get("api/v1/configmaps", "default", "pqmesh-trust-bundle")
            .is_none(),
        "unmeshed namespaces get nothing"
    );
    // A namespace deleted (its ConfigMaps go with it) and recreated under the same name gets
    // its trust bundle again within seconds, not at the one-minute resync (found on a real API
    // server: pods stuck in ContainerCreating for up to a minute).
    // (Both replicas have published by now: give the slower one its first round.)
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let shop = api
        .get("api/v1/namespaces", "", "shop")
        .expect("namespace shop");
    api.delete("api/v1/configmaps", "shop", "pqmesh-trust-bundle");
    api.delete("api/v1/namespaces", "", "shop");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    api.put(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "shop", "labels": shop["metadata"]["labels"].clone()}}),
    );
    eventually("the recreated namespace has its trust bundle again", || {
        api.get("api/v1/configmaps", "shop", "pqmesh-trust-bundle")
            .is_some_and(|cm| same_certs(cm["data"]["trust-bundle.pem"].as_str(), &root))
    })
    .await;

    // ECDSA root: the mesh CA signs the webhook's certificate too.
    webhook_trusts(&api, &cp0, &root).await;

    // Real sidecars: api behind replica 0, web behind replica 1, both trusting the mounted bundle.
    let dir = TempDir::new("k8s-sidecars");
    let bundle = mounted_bundle(&api, &dir);
    let app = EchoApp::start().await;
    let b = sidecar(with(
        sidecar_env(&cp0, &bundle, "api", "api-7d9f8c6b5d-x2x9q"),
        &[("PQMESH_INBOUND_APP_ADDR", &app.addr.to_string())],
    ))
    .await;
    let a = sidecar(caller_env(&cp1, &bundle, "web", "web-7d9f8c6b5d-x2x9q", &b)).await;
    let back = exchange(a.outbound_addr.unwrap(), b"hello through kubernetes mode").await;
    assert_eq!(
        String::from_utf8_lossy(&back),
        "hello through kubernetes modeEOF-SEEN"
    );

    // The intruder (shop/intruder) is authenticated but not admitted by the pushed policy.
    let intruder = sidecar(caller_env(&cp1, &bundle, "intruder", "intruder-0", &b));
    // Its pod is not in the cluster, so its policy stream is refused and it never becomes ready.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), intruder)
            .await
            .is_err(),
        "a sidecar whose pod is unknown must not become ready"
    );
    api.put(pod(
        "intruder-0",
        "intruder",
        "10.244.1.12",
        "intruder",
        true,
    ));
    let intruder = sidecar(caller_env(&cp1, &bundle, "intruder", "intruder-0", &b)).await;
    let before = app.connections();
    let refused = exchange(intruder.outbound_addr.unwrap(), b"let me in").await;
    assert!(refused.is_empty(), "the intruder got {refused:?}");
    assert_eq!(
        app.connections(),
        before,
        "the refused peer never reached the app"
    );

    // kubectl get accesspolicies: selected 1, acked 1 (api's sidecar, on replica 0).
    eventually_async("AccessPolicy status counts api's ACK", || async {
        api.get("apis/pqmesh.io/v1alpha1/accesspolicies", "shop", "api")
            .is_some_and(|p| {
                p["status"]["selectedSidecars"] == json!(1)
                    && p["status"]["ackedSidecars"] == json!(1)
                    && p["status"]["observedGeneration"] == json!(1)
                    && p["status"]["replicas"].as_array().is_some_and(|r| {
                        r.iter()
                            .any(|e| e["name"] == "cp-0" && e["acked"] == json!(1))
                    })
            })
    })
    .await;

    // A change arrives as a watch event: `kubectl apply` admitting shop/intruder too. The new
    // version is pushed, ACKed (observedGeneration 2), and the intruder now gets through.
    let mut policy = api
        .get("apis/pqmesh.io/v1alpha1/accesspolicies", "shop", "api")
        .unwrap();
    policy["spec"]["peers"] = json!(["shop/web", "shop/intruder"]);
    api.put(policy);
    eventually_async("the changed policy is ACKed", || async {
        api.get("apis/pqmesh.io/v1alpha1/accesspolicies", "shop", "api")
            .is_some_and(|p| {
                p["status"]["observedGeneration"] == json!(2)
                    && p["status"]["ackedSidecars"] == json!(1)
            })
    })
    .await;
    let admitted = exchange(intruder.outbound_addr.unwrap(), b"now allowed").await;
    assert_eq!(String::from_utf8_lossy(&admitted), "now allowedEOF-SEEN");

    // Discovery follows the cluster: pods and the Service's cluster IP are known; when api's
    // pod goes away, its IP and the Service (no meshed backend left) leave the table.
    eventually_async(
        "discovery has web, api, intruder and the api Service",
        || async { cp0.metrics.endpoints.get() == 4 },
    )
    .await;
    api.delete("api/v1/pods", "shop", "api-7d9f8c6b5d-x2x9q");
    eventually_async("api's pod and Service left discovery", || async {
        cp0.metrics.endpoints.get() == 2
    })
    .await;

    // No Secret other than the two CA Secrets was ever read or written, and nothing was logged.
    for r in api.requests() {
        if r.path.contains("/secrets") {
            assert!(
                r.path.ends_with("/secrets")
                    || r.path.ends_with("/pqmesh-ca")
                    || r.path.ends_with("/pqmesh-ca-webhook"),
                "{r:?}"
            );
        }
    }
    drop((a, b, intruder));
    cp0.shutdown().await;
    cp1.shutdown().await;
}

#[tokio::test]
async fn wrong_audience_and_unknown_tokens_get_no_certificate() {
    let api = ApiServer::start().await;
    cluster(&api);
    let cp = replica(&api, "cp-0", &[]).await.unwrap();
    eventually("trust bundle ConfigMap", || {
        api.get("api/v1/configmaps", "shop", "pqmesh-trust-bundle")
            .is_some()
    })
    .await;
    let dir = TempDir::new("k8s-bad-tokens");
    let bundle = mounted_bundle(&api, &dir);
    for bad in [
        "wrong-audience-token-0123456789",
        "not-a-token-anyone-issued-0123",
    ] {
        let config = pqmesh_sidecar::config::Config::from_env(&with(
            sidecar_env(&cp, &bundle, "web", "web-7d9f8c6b5d-x2x9q"),
            &[("PQMESH_BOOTSTRAP_TOKEN", bad)],
        ))
        .unwrap();
        let running = pqmesh_sidecar::start(config).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(3), running.ready())
                .await
                .is_err(),
            "{bad} got a certificate"
        );
    }
    let refused = |reason: &str| {
        metric(
            &cp.metrics.registry,
            "pqmesh_certificates_refused_total",
            &[("reason", reason)],
        )
    };
    eventually("refusals counted", || refused("token_rejected") >= 2.0).await;
    assert_eq!(
        metric(
            &cp.metrics.registry,
            "pqmesh_certificates_issued_total",
            &[("key_alg", "ecdsa-p256")]
        ),
        0.0
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn user_provided_ca_is_used_and_never_written() {
    let api = ApiServer::start().await;
    cluster(&api);
    // Missing: a clear error, nothing created.
    let err = replica(&api, "cp-0", &[("PQMESH_CA_USER_PROVIDED", "true")])
        .await
        .err()
        .expect("must fail without the Secret");
    assert!(
        err.contains("pqmesh-system/pqmesh-ca does not exist"),
        "{err}"
    );
    assert!(api.get("api/v1/secrets", CP_NS, "pqmesh-ca").is_none());

    let (cert, key) =
        pqmesh_control_plane::ca::create_root(TRUST_DOMAIN, KeyAlgorithm::MlDsa65).unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    api.put(json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "pqmesh-ca", "namespace": CP_NS, "annotations": {"cert-manager.io/certificate-name": "pqmesh-ca"}},
        "data": {"tls.crt": b64(&cert), "tls.key": b64(&key), "ca.crt": b64(&cert)}}));
    let before = api.requests().len();
    let cp = replica(
        &api,
        "cp-0",
        &[
            ("PQMESH_CA_USER_PROVIDED", "true"),
            ("PQMESH_CA_KEY_ALG", "ml-dsa-65"),
        ],
    )
    .await
    .unwrap();
    eventually("bundle published from the user's CA", || {
        api.get("api/v1/configmaps", "shop", "pqmesh-trust-bundle")
            .is_some_and(|cm| same_certs(cm["data"]["trust-bundle.pem"].as_str(), &cert))
    })
    .await;
    // ML-DSA root: the API server could not verify it, so an ECDSA webhook CA signs the
    // webhook's certificate.
    let webhook_root = data(
        &api.get("api/v1/secrets", CP_NS, "pqmesh-ca-webhook")
            .expect("webhook CA Secret"),
        "ca.crt",
    );
    assert!(!same_certs(Some(&webhook_root), &cert));
    webhook_trusts(&api, &cp, &webhook_root).await;
    let writes: Vec<_> = api.requests()[before..]
        .iter()
        .filter(|r| r.path.ends_with("/secrets/pqmesh-ca") && r.method != "GET")
        .cloned()
        .collect();
    assert!(
        writes.is_empty(),
        "the user's Secret was written: {writes:?}"
    );
    cp.shutdown().await;
}

/// `GET path` on `addr`; the status code and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// The kubelet's probes of a STRICT pod's app: the injector moves them to the sidecar's admin
/// port and the sidecar runs them against the app (which the kubelet's plaintext probe to the
/// app port could not reach through a STRICT inbound listener).
#[tokio::test]
async fn app_probes_reach_the_app_through_the_sidecar_admin_port() {
    let cp = ControlPlane::start(KeyAlgorithm::EcdsaP256, &["web"]).await;
    let (http_addr, tcp_addr, stats) = pqmesh_tests::http_app::start("web").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop"},
        "spec": {"containers": [{"name": "web", "image": "registry.example/shop/web:1",
            "ports": [{"name": "http", "containerPort": http_addr.port()}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
            "livenessProbe": {"tcpSocket": {"port": tcp_addr.port()}},
            "startupProbe": {"httpGet": {"path": "/", "port": closed}}}]}});
    let identity = pqmesh_mtls::SpiffeId::new(TRUST_DOMAIN, CP_NS, "pqmesh-control-plane").unwrap();
    let cfg = pqmesh_control_plane::inject::InjectConfig::from_env(
        &HashMap::<String, String>::new(),
        &identity,
    )
    .unwrap();
    let pqmesh_control_plane::inject::Plan::Inject(injected) =
        pqmesh_control_plane::inject::plan(&pod, None, &cfg).unwrap()
    else {
        panic!("the pod must be injected")
    };
    let app = &injected["spec"]["containers"][0];
    for (probe, kind) in [
        ("readinessProbe", "readyz"),
        ("livenessProbe", "livez"),
        ("startupProbe", "startupz"),
    ] {
        assert_eq!(
            app[probe]["httpGet"],
            json!({"path": format!("/app-health/web/{kind}"), "port": 15000, "scheme": "HTTP"})
        );
    }
    assert_eq!(app["readinessProbe"]["periodSeconds"], 5);
    let table = injected["spec"]["initContainers"][1]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "PQMESH_APP_PROBES")
        .and_then(|e| e["value"].as_str())
        .expect("PQMESH_APP_PROBES")
        .to_owned();

    let sidecar = sidecar(with(
        cp.sidecar_env("web", KeyAlgorithm::EcdsaP256),
        &[("PQMESH_APP_PROBES", &table)],
    ))
    .await;
    let before = stats.requests.load(std::sync::atomic::Ordering::SeqCst);
    let (status, body) = http_get(sidecar.admin_addr, "/app-health/web/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        stats.requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "the app itself answered"
    );
    assert_eq!(
        http_get(sidecar.admin_addr, "/app-health/web/livez")
            .await
            .0,
        200
    );
    let (status, body) = http_get(sidecar.admin_addr, "/app-health/web/startupz").await;
    assert_eq!(status, 503, "a closed app port fails the probe: {body}");
    assert_eq!(
        http_get(sidecar.admin_addr, "/app-health/other/readyz")
            .await
            .0,
        404
    );
}

/// Root rotation and revocation in Kubernetes mode: the operator edits the CA Secret in the
/// three steps of the local-mode rotation (next root trusted → it signs, the old one still
/// trusted → the old one dropped) — here from an ECDSA to an ML-DSA-65 root — while web's sidecar
/// keeps calling api's; then revokes web through the revocations ConfigMap.
#[tokio::test]
async fn ca_secret_rotation_under_traffic_then_revocation_by_configmap() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let api = ApiServer::start().await;
    cluster(&api);
    let cp = replica(&api, "cp-0", &[]).await.unwrap();
    eventually("trust bundle ConfigMap", || {
        api.get("api/v1/configmaps", "shop", "pqmesh-trust-bundle")
            .is_some()
    })
    .await;
    let dir = TempDir::new("k8s-rotation");
    let bundle = mounted_bundle(&api, &dir);
    let app = EchoApp::start().await;
    let b = sidecar(with(
        sidecar_env(&cp, &bundle, "api", "api-7d9f8c6b5d-x2x9q"),
        &[("PQMESH_INBOUND_APP_ADDR", &app.addr.to_string())],
    ))
    .await;
    let a = sidecar(caller_env(&cp, &bundle, "web", "web-7d9f8c6b5d-x2x9q", &b)).await;
    let outbound = a.outbound_addr.unwrap();

    // Continuous traffic through the whole rotation.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let back = exchange(outbound, b"ping").await;
                if back == b"pingEOF-SEEN" {
                    ok += 1;
                } else {
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };
    let on_current_ca = || async {
        let (_, body) = http_get(cp.admin_addr, "/policy_status").await;
        let body = &body[body.find("\r\n\r\n").map_or(0, |i| i + 4)..];
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        v["sidecars_on_current_ca"] == json!(2) && v["connected_sidecars"] == json!(2)
    };
    let bundle_roots = || {
        api.get("api/v1/configmaps", "shop", "pqmesh-trust-bundle")
            .and_then(|cm| cm["data"]["trust-bundle.pem"].as_str().map(str::to_owned))
            .map(|pem| pqmesh_mtls::x509::certs_from_pem(&pem).unwrap_or_default())
            .unwrap_or_default()
    };
    let old = api.get("api/v1/secrets", CP_NS, "pqmesh-ca").unwrap();
    let (old_cert, old_key) = (data(&old, "ca.crt"), data(&old, "ca.key"));
    let (new_cert, new_key) =
        pqmesh_control_plane::ca::create_root(TRUST_DOMAIN, KeyAlgorithm::MlDsa65).unwrap();
    let secret = |pairs: &[(&str, &str)]| {
        let data: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(b64(v))))
            .collect();
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "pqmesh-ca", "namespace": CP_NS}, "data": data})
    };
    eventually_async("both sidecars on the first CA", on_current_ca).await;
    let reloads = || {
        metric(
            &cp.metrics.registry,
            "pqmesh_ca_reloads_total",
            &[("outcome", "ok")],
        )
    };

    // 1. prepare: the next root is trusted, not yet signing.
    api.put(secret(&[
        ("ca.crt", &old_cert),
        ("ca.key", &old_key),
        ("next-root-cert.pem", &new_cert),
        ("next-root-key.pem", &new_key),
    ]));
    eventually("the CA Secret change is loaded (prepare)", || {
        reloads() == 1.0
    })
    .await;
    eventually("the bundle trusts both roots", || bundle_roots().len() == 2).await;
    eventually_async("both sidecars re-certified (prepare)", on_current_ca).await;
    // 2. activate: the new root signs; the old one stays trusted.
    api.put(secret(&[
        ("ca.crt", &new_cert),
        ("ca.key", &new_key),
        ("previous-root-cert.pem", &old_cert),
    ]));
    eventually("the CA Secret change is loaded (activate)", || {
        reloads() == 2.0
    })
    .await;
    eventually_async("both sidecars re-certified (activate)", on_current_ca).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 3. finish: only the new root.
    api.put(secret(&[("ca.crt", &new_cert), ("ca.key", &new_key)]));
    eventually("the CA Secret change is loaded (finish)", || {
        reloads() == 3.0
    })
    .await;
    eventually("the bundle trusts only the new root", || {
        bundle_roots() == pqmesh_mtls::x509::certs_from_pem(&new_cert).unwrap()
    })
    .await;
    eventually_async("both sidecars re-certified (finish)", on_current_ca).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = traffic.await.unwrap();
    eprintln!("rotation ECDSA -> ML-DSA-65 through the CA Secret: {ok} requests, {failed} failed");
    assert!(ok > 20, "traffic ran through the rotation ({ok} requests)");
    assert_eq!(failed, 0, "no request failed across the rotation");
    // A broken edit (a key that does not match its certificate) changes nothing.
    api.put(secret(&[("ca.crt", &new_cert), ("ca.key", &old_key)]));
    eventually("the broken edit is rejected", || {
        metric(
            &cp.metrics.registry,
            "pqmesh_ca_reloads_total",
            &[("outcome", "invalid")],
        ) >= 1.0
    })
    .await;
    assert_eq!(exchange(outbound, b"still").await, b"stillEOF-SEEN");

    // Revocation: web is listed in the revocations ConfigMap; its calls are refused.
    let started = std::time::Instant::now();
    api.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "pqmesh-revocations", "namespace": CP_NS},
        "data": {"revocations.yaml": format!("identities:\n  - {}\n", spiffe("web"))}}));
    let before = app.connections();
    eventually_async("web is refused after its revocation", || async {
        exchange(outbound, b"revoked?").await.is_empty()
    })
    .await;
    eprintln!(
        "revocation through the ConfigMap took effect after {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = app.connections();
    assert!(exchange(outbound, b"again").await.is_empty());
    assert_eq!(
        app.connections(),
        after,
        "a revoked caller never reaches the app"
    );
    assert!(after >= before);
}
