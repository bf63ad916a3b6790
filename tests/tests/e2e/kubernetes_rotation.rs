//! Root rotation with two control-plane replicas and the injection webhook, as it broke on a
//! real cluster: replica cp-0 runs from before `prepare`, cp-1 starts after `activate`. The
//! operator's three steps are edits of the CA Secret with the keys `kubectl pqmesh rotate-root`
//! writes. Throughout, a stand-in for the API server's webhook client sends AdmissionReviews
//! to every running replica: TLS to the replica's webhook, verified against the caBundle
//! stored in the MutatingWebhookConfiguration at that moment, for the Service name the API
//! server dials; then one review per step to each replica, the same way. Every admission must
//! succeed, the caBundle must go {old} → {old, new} → {new} and never back (a stale replica
//! writing an older bundle, or two replicas flapping, would show), and every write must name
//! its field manager (the recording API server refuses writes without one).
//!
//! What the stand-in cannot show: the real API server's Go TLS client (its TLS 1.2 fallback,
//! its x509 checks; here rustls verifies with the same roots and name), how long the real API
//! server's webhook informer takes to use a new caBundle (here it is read at every
//! connection, so a replica that swapped certificates before the new root reached the API
//! server would be missed only for that delay), real server-side apply field ownership and
//! conflicts between managers (the stand-in merges by key), Service load-balancing across
//! replicas and the kubelet's view of the pods.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::apiserver::ApiServer;
use pqmesh_tests::*;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kubernetes::{cluster, data, replica, CP_NS, WEBHOOK_NAME};

const CONFIGURATIONS: &str = "apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const REVIEW: &str =
    include_str!("../../../control-plane/tests/fixtures/admission/deployment-pod.json");

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn der(pem: &str) -> CertificateDer<'static> {
    pqmesh_mtls::x509::certs_from_pem(pem).unwrap().remove(0)
}

/// The caBundle stored now (the first webhook's; the chart has one).
fn stored_ca_bundle(api: &ApiServer) -> Vec<CertificateDer<'static>> {
    let configuration = api.get(CONFIGURATIONS, "", "pqmesh").unwrap_or(Value::Null);
    decode_ca_bundle(&configuration["webhooks"][0]["clientConfig"]["caBundle"])
}

fn decode_ca_bundle(value: &Value) -> Vec<CertificateDer<'static>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap_or_default())
        .unwrap_or_default();
    pqmesh_mtls::x509::certs_from_pem(&String::from_utf8_lossy(&bytes)).unwrap_or_default()
}

fn as_set(certs: &[CertificateDer<'static>]) -> Vec<Vec<u8>> {
    let mut set: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
    set.sort();
    set.dedup();
    set
}

/// What the API server does for a pod creation: TLS to the webhook verified against `roots`
/// (the stored caBundle) for the Service's name, `POST /inject`, and an allowed answer with a
/// patch for the review it sent.
async fn admit_with(roots: &[CertificateDer<'static>], addr: SocketAddr) -> Result<(), String> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| e.to_string())?;
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from(WEBHOOK_NAME).unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS to {addr}: {e}"))?;
    let request = format!(
        "POST /inject?timeout=10s HTTP/1.1\r\nHost: {WEBHOOK_NAME}:443\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{REVIEW}",
        REVIEW.len()
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .map_err(|_| format!("{addr}: no answer"))?
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let review: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {answer}"))?;
    let sent: Value = serde_json::from_str(REVIEW).unwrap();
    let response = &review["response"];
    if response["uid"] != sent["request"]["uid"]
        || response["allowed"] != json!(true)
        || response["patchType"] != json!("JSONPatch")
    {
        return Err(format!("{addr}: unexpected answer {review}"));
    }
    Ok(())
}

async fn admit(api: &ApiServer, addr: SocketAddr) -> Result<(), String> {
    admit_with(&stored_ca_bundle(api), addr).await
}

/// Admissions to every replica in `webhooks`, every 20 ms, until `stop`: (succeeded, failures).
fn admissions(
    api: Arc<ApiServer>,
    webhooks: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let addrs = webhooks.lock().unwrap().clone();
            for addr in addrs {
                match admit(&api, addr).await {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failed)
    })
}

/// The roots a replica's webhook certificate must chain to once `signing` signs: itself when
/// ECDSA, else the ECDSA webhook CA.
fn webhook_signer(api: &ApiServer, signing: &str, alg: KeyAlgorithm) -> CertificateDer<'static> {
    if alg == KeyAlgorithm::EcdsaP256 {
        der(signing)
    } else {
        let secret = api
            .get("api/v1/secrets", CP_NS, "pqmesh-ca-webhook")
            .expect("the webhook CA Secret exists once an ML-DSA root is trusted");
        der(&data(&secret, "ca.crt"))
    }
}

async fn rotate_with_two_replicas(new_alg: KeyAlgorithm) {
    let api = Arc::new(ApiServer::start().await);
    cluster(&api);
    let cp0 = replica(&api, "cp-0", &[]).await.expect("cp-0 starts");
    let secret = api.get("api/v1/secrets", CP_NS, "pqmesh-ca").unwrap();
    let (old_cert, old_key) = (data(&secret, "ca.crt"), data(&secret, "ca.key"));
    let old = der(&old_cert);
    eventually("the caBundle holds the first root", || {
        as_set(&stored_ca_bundle(&api)) == as_set(std::slice::from_ref(&old))
    })
    .await;

    let webhooks = Arc::new(Mutex::new(vec![cp0.webhook_addr.unwrap()]));
    let stop = Arc::new(AtomicBool::new(false));
    let background = admissions(api.clone(), webhooks.clone(), stop.clone());
    let reloads = |cp: &pqmesh_control_plane::RunningControlPlane| {
        metric(
            &cp.metrics.registry,
            "pqmesh_ca_reloads_total",
            &[("outcome", "ok")],
        )
    };
    let put_secret = |pairs: &[(&str, &str)]| {
        let data: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(b64(v))))
            .collect();
        api.put(
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "pqmesh-ca", "namespace": CP_NS}, "data": data}),
        );
    };
    // A replica's webhook serves a certificate from `root` (it verifies against that root alone).
    let serves_from = |addr: SocketAddr, root: CertificateDer<'static>| async move {
        admit_with(&[root], addr).await.is_ok()
    };
    let (new_cert, new_key) = pqmesh_control_plane::ca::create_root(TRUST_DOMAIN, new_alg).unwrap();

    // 1. prepare: the new root is trusted, not signing. The caBundle gains its signer.
    put_secret(&[
        ("ca.crt", &old_cert),
        ("ca.key", &old_key),
        ("next-root-cert.pem", &new_cert),
        ("next-root-key.pem", &new_key),
    ]);
    eventually("cp-0 loaded prepare", || reloads(&cp0) == 1.0).await;
    if new_alg != KeyAlgorithm::EcdsaP256 {
        eventually("the webhook CA Secret is created", || {
            api.get("api/v1/secrets", CP_NS, "pqmesh-ca-webhook")
                .is_some()
        })
        .await;
    }
    let new = webhook_signer(&api, &new_cert, new_alg);
    let during = as_set(&[old.clone(), new.clone()]);
    eventually("the caBundle holds old and new", || {
        as_set(&stored_ca_bundle(&api)) == during
    })
    .await;
    let addr0 = cp0.webhook_addr.unwrap();
    admit(&api, addr0).await.expect("cp-0 admits after prepare");

    // 2. activate: the new root signs; cp-0 re-issues its webhook certificate from it.
    put_secret(&[
        ("ca.crt", &new_cert),
        ("ca.key", &new_key),
        ("previous-root-cert.pem", &old_cert),
    ]);
    eventually("cp-0 loaded activate", || reloads(&cp0) == 2.0).await;
    eventually_async("cp-0's webhook serves from the new root", || {
        serves_from(addr0, new.clone())
    })
    .await;
    // The replica that broke it: started now, it sees only the activated Secret.
    let cp1 = replica(&api, "cp-1", &[]).await.expect("cp-1 starts");
    let addr1 = cp1.webhook_addr.unwrap();
    webhooks.lock().unwrap().push(addr1);
    assert!(
        serves_from(addr1, new.clone()).await,
        "cp-1 serves from the new root"
    );
    // Longer than a resync of both replicas would need to undo the other's write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        as_set(&stored_ca_bundle(&api)),
        during,
        "activate keeps both roots"
    );
    for addr in [addr0, addr1] {
        admit(&api, addr).await.expect("admitted after activate");
    }

    // 3. finish: the old root is dropped; the caBundle converges to the new root alone.
    put_secret(&[("ca.crt", &new_cert), ("ca.key", &new_key)]);
    eventually("both replicas loaded finish", || {
        reloads(&cp0) == 3.0 && reloads(&cp1) == 1.0
    })
    .await;
    eventually("the caBundle holds the new root alone", || {
        stored_ca_bundle(&api) == vec![new.clone()]
    })
    .await;
    for addr in [addr0, addr1] {
        admit(&api, addr).await.expect("admitted after finish");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = background.await.unwrap();
    eprintln!(
        "webhook through a {new_alg} rotation with two replicas: {ok} admissions, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "refused admissions: {failed:#?}");
    assert!(ok > 20, "admissions ran throughout ({ok})");
    assert_eq!(
        stored_ca_bundle(&api),
        vec![new.clone()],
        "one root in the end"
    );

    let requests = api.requests();
    // Every write named its field manager (the stand-in refuses one that does not, with 422).
    for r in requests.iter().filter(|r| r.is_write()) {
        if r.path.ends_with("/tokenreviews") {
            continue;
        }
        assert!(
            r.field_manager.as_deref().is_some_and(|m| !m.is_empty()) && r.status != 422,
            "a write without a field manager: {} {} -> {}",
            r.method,
            r.path,
            r.status
        );
    }
    // The caBundle writes: server-side apply as pqmesh-control-plane, and in order
    // {old} → {old, new} → {new}: never back to an older bundle, no flapping.
    let writes: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/mutatingwebhookconfigurations/pqmesh") && r.is_write())
        .collect();
    let mut written: Vec<Vec<Vec<u8>>> = Vec::new();
    for w in writes.iter().filter(|w| w.status == 200) {
        assert_eq!(w.method, "PATCH");
        assert!(w.content_type.starts_with("application/apply-patch"));
        assert_eq!(w.field_manager.as_deref(), Some("pqmesh-control-plane"));
        let set = as_set(&decode_ca_bundle(
            &w.body["webhooks"][0]["clientConfig"]["caBundle"],
        ));
        if written.last() != Some(&set) {
            written.push(set);
        }
    }
    assert_eq!(
        written,
        vec![
            as_set(std::slice::from_ref(&old)),
            during,
            as_set(std::slice::from_ref(&new))
        ],
        "caBundle writes in order"
    );
    let conflicts = writes.iter().filter(|w| w.status == 409).count();
    eprintln!(
        "caBundle: {} writes, {conflicts} answered 409 (a concurrent writer won)",
        writes.len() - conflicts
    );
    let configuration = api.get(CONFIGURATIONS, "", "pqmesh").unwrap();
    let managers: Vec<&str> = configuration["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["pqmesh-control-plane"]);
    cp0.shutdown().await;
    cp1.shutdown().await;
}

#[tokio::test]
async fn two_replicas_webhook_through_ecdsa_root_rotation() {
    rotate_with_two_replicas(KeyAlgorithm::EcdsaP256).await;
}

/// An ML-DSA root cannot sign for the API server: from `prepare` on, the ECDSA webhook CA
/// stands in for it in the caBundle, and signs the webhook's certificate after `activate`.
#[tokio::test]
async fn two_replicas_webhook_through_ecdsa_to_ml_dsa_root_rotation() {
    rotate_with_two_replicas(KeyAlgorithm::MlDsa65).await;
}

/// The stand-in's strictness the test above relies on: a write without a field manager is
/// refused, a stale resourceVersion is a 409 for replace and apply, and managers are recorded.
#[tokio::test]
async fn the_recording_api_server_checks_field_managers_and_resource_versions() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let api = ApiServer::start().await;
    api.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c", "namespace": CP_NS}, "data": {"k": "1"}}));
    let configmaps: Api<ConfigMap> = Api::namespaced(api.client(), CP_NS);
    let status = |r: kube::Result<ConfigMap>| match r {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("{e}"),
    };
    let read = configmaps.get("c").await.unwrap();
    let with_manager = PostParams {
        field_manager: Some("test-writer".into()),
        ..Default::default()
    };
    // No field manager: refused, whatever the version.
    assert_eq!(
        status(configmaps.replace("c", &PostParams::default(), &read).await),
        422
    );
    // A stale version: 409, for replace and for apply.
    api.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c", "namespace": CP_NS}, "data": {"k": "2"}}));
    assert_eq!(
        status(configmaps.replace("c", &with_manager, &read).await),
        409
    );
    let apply = |rv: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "c", "namespace": CP_NS, "resourceVersion": rv}, "data": {"k": "3"}})
    };
    let params = PatchParams::apply("test-applier").force();
    let stale_rv = read.metadata.resource_version.clone().unwrap();
    assert_eq!(
        status(
            configmaps
                .patch("c", &params, &Patch::Apply(apply(&stale_rv)))
                .await
        ),
        409
    );
    // The current version: accepted, and the managers are recorded.
    let current = configmaps.get("c").await.unwrap();
    let rv = current.metadata.resource_version.clone().unwrap();
    assert_eq!(
        status(
            configmaps
                .patch("c", &params, &Patch::Apply(apply(&rv)))
                .await
        ),
        200
    );
    let current = configmaps.get("c").await.unwrap();
    assert_eq!(
        status(configmaps.replace("c", &with_manager, &current).await),
        200
    );
    let managers: Vec<(String, String)> = configmaps
        .get("c")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        managers,
        [
            ("test-applier".to_owned(), "Apply".to_owned()),
            ("test-writer".to_owned(), "Update".to_owned())
        ]
    );
    let recorded: Vec<Option<String>> = api
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .map(|r| r.field_manager.clone())
        .collect();
    assert_eq!(recorded.first(), Some(&None));
    assert!(recorded[1..].iter().all(Option::is_some));
}
