//! Kubernetes mode, per-object acceptance and status hygiene, against the recording API server
//! (`pqmesh_tests::apiserver`, with the CRD schemas applied as the real server would): a bad
//! object affects only itself and its status says why, status-only writes cause no reload, a
//! gone replica leaves no status entry and no field manager, and a missing introspection client
//! Secret shows on its TokenIssuer until it exists. What the stand-in cannot show is said in
//! `apiserver`'s module doc (real CEL, real field ownership, timing).

use std::time::Duration;

use pqmesh_control_plane::RunningControlPlane;
use pqmesh_tests::apiserver::ApiServer;
use pqmesh_tests::*;
use serde_json::{json, Value};

use crate::kubernetes::*;

fn condition(object: &Value, kind: &str) -> Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned())
        .unwrap_or(Value::Null)
}

fn reloads(cp: &RunningControlPlane) -> f64 {
    ["ok", "invalid"]
        .iter()
        .map(|o| {
            metric(
                &cp.metrics.registry,
                "pqmesh_policy_reloads_total",
                &[("outcome", o)],
            )
        })
        .sum()
}

/// Per-object acceptance: a bad AccessPolicy in tenant-b (stored under an older, laxer CRD —
/// today's schema refuses `mtls: BOGUS`, and a misspelt `peer:` is pruned so `peers` is
/// missing) neither stops a replica from starting nor blocks shop's edits; its status says why.
/// Status-only writes cause no reload; a replica's status entry leaves with it (shutdown) or
/// once stale (crash).
#[tokio::test]
async fn a_bad_object_affects_only_itself_and_its_status_says_why() {
    const AP: &str = "apis/pqmesh.io/v1alpha1/accesspolicies";
    let api = ApiServer::start().await;
    cluster(&api);
    let bogus = json!({"apiVersion": "pqmesh.io/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "bogus", "namespace": "tenant-b"},
        "spec": {"selector": {}, "mtls": "BOGUS", "peers": ["*"]}});
    let refused = api.try_put(bogus.clone()).unwrap_err();
    assert!(
        refused.contains("spec.mtls: Unsupported value"),
        "{refused}"
    );
    let misspelt = json!({"apiVersion": "pqmesh.io/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "typo", "namespace": "tenant-b"},
        "spec": {"selector": {}, "peer": ["tenant-b/web"]}});
    let refused = api.try_put(misspelt.clone()).unwrap_err();
    assert!(refused.contains("spec.peers: Required value"), "{refused}");
    // Stored under the older CRD: the control plane refuses both itself.
    api.put_stored(bogus);
    api.put_stored(misspelt);

    let (a, b) = tokio::join!(replica(&api, "cp-0", &[]), replica(&api, "cp-1", &[]));
    let (cp0, cp1) = (
        a.expect("starts despite bad objects"),
        b.expect("replica 1 starts"),
    );
    for (name, want) in [
        ("bogus", "STRICT or PERMISSIVE"),
        ("typo", "unknown field `peer`"),
    ] {
        eventually(&format!("tenant-b/{name} says Accepted=False"), || {
            api.get(AP, "tenant-b", name).is_some_and(|p| {
                let c = condition(&p, "Accepted");
                c["status"] == "False"
                    && c["reason"] == "Invalid"
                    && c["observedGeneration"] == json!(1)
                    && c["message"].as_str().is_some_and(|m| m.contains(want))
            })
        })
        .await;
    }

    let dir = TempDir::new("k8s-accept");
    eventually("trust bundle in shop", || {
        api.get("api/v1/configmaps", "shop", "pqmesh-trust-bundle")
            .is_some()
    })
    .await;
    let bundle = mounted_bundle(&api, &dir);
    let app = EchoApp::start().await;
    let sidecar_b = sidecar(with(
        sidecar_env(&cp0, &bundle, "api", "api-7d9f8c6b5d-x2x9q"),
        &[("PQMESH_INBOUND_APP_ADDR", &app.addr.to_string())],
    ))
    .await;
    // shop's edit is pushed and ACKed while tenant-b's objects stay bad.
    let mut policy = api.get(AP, "shop", "api").unwrap();
    policy["spec"]["peers"] = json!(["shop/web", "shop/intruder"]);
    api.put(policy.clone());
    eventually("shop/api generation 2 is ACKed and Ready", || {
        api.get(AP, "shop", "api").is_some_and(|p| {
            p["status"]["observedGeneration"] == json!(2)
                && p["status"]["ackedSidecars"] == json!(1)
                && condition(&p, "Accepted")["status"] == "True"
                && condition(&p, "Ready")["status"] == "True"
        })
    })
    .await;
    let v2 = sidecar_b.policy().unwrap().version.clone();

    // An invalid edit (a glob the schema cannot judge) keeps the last good version in force.
    policy["spec"]["rules"] = json!([{"paths": ["/orders*"]}]);
    api.put(policy);
    eventually("the invalid edit is refused on its object", || {
        api.get(AP, "shop", "api").is_some_and(|p| {
            let c = condition(&p, "Accepted");
            c["status"] == "False"
                && c["observedGeneration"] == json!(3)
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("last accepted version stays in force"))
        })
    })
    .await;
    assert_eq!(sidecar_b.policy().unwrap().version, v2, "last good kept");

    // Status-only writes (14, like a minute of the old behaviour) cause no reload.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (reloads(&cp0), reloads(&cp1));
    for i in 0..14 {
        let mut p = api.get(AP, "shop", "api").unwrap();
        p["status"]["selectedSidecars"] = json!(i);
        api.put_stored(p);
    }
    tokio::time::sleep(Duration::from_secs(6)).await; // and one round of the writers' own
    assert_eq!(
        (reloads(&cp0), reloads(&cp1)),
        before,
        "no reload from status writes"
    );
    assert_eq!(
        api.get(AP, "shop", "api").unwrap()["metadata"]["generation"],
        json!(3),
        "status writes do not bump the generation"
    );

    // A replica shutting down takes its entry (and its field manager) along.
    eventually("cp-1 has an entry", || {
        api.get(AP, "shop", "api").is_some_and(|p| {
            p["status"]["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().any(|e| e["name"] == "cp-1"))
        })
    })
    .await;
    cp1.shutdown().await;
    let p = api.get(AP, "shop", "api").unwrap();
    assert!(
        p["status"]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "cp-1"),
        "{p}"
    );
    // ...and its field manager: it co-owned nothing the others applied alike.
    let managers = |p: &Value| -> Vec<String> {
        p["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["manager"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(
        !managers(&p).iter().any(|m| m.ends_with("/cp-1")),
        "{:?}",
        p["metadata"]["managedFields"]
    );
    // A crashed replica's entry goes once stale (its heartbeat is set 2 minutes back here).
    let cp2 = replica(&api, "cp-2", &[]).await.unwrap();
    eventually("cp-2 has an entry", || {
        api.get(AP, "shop", "api").is_some_and(|p| {
            p["status"]["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().any(|e| e["name"] == "cp-2"))
        })
    })
    .await;
    cp2.kill();
    let mut p = api.get(AP, "shop", "api").unwrap();
    for e in p["status"]["replicas"].as_array_mut().unwrap() {
        if e["name"] == "cp-2" {
            e["heartbeat"] = json!("2020-01-01T00:00:00Z");
        }
    }
    api.put_stored(p);
    eventually("cp-2's stale entry is removed", || {
        api.get(AP, "shop", "api").is_some_and(|p| {
            p["status"]["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().all(|e| e["name"] != "cp-2"))
        })
    })
    .await;
    // A crashed replica's field manager goes with its entry (rollouts leave no trail).
    let p = api.get(AP, "shop", "api").unwrap();
    assert!(
        !managers(&p).iter().any(|m| m.ends_with("/cp-2")),
        "{:?}",
        managers(&p)
    );
    drop(sidecar_b);
    cp0.shutdown().await;
}

/// A TokenIssuer whose introspection client Secret is missing says so on itself
/// (`ResolvedRefs=False`, reason `SecretNotFound`), and creating the Secret later clears it with
/// no edit of the TokenIssuer: Secrets are not watched but re-read every
/// `SECRET_RECHECK` (10 s). The stand-in cannot show the real server's Secret RBAC (the chart
/// grants `get` only).
#[tokio::test]
async fn a_missing_client_secret_shows_on_the_issuer_and_clears_once_created() {
    use base64::Engine;
    const TI: &str = "apis/pqmesh.io/v1alpha1/tokenissuers";
    let api = ApiServer::start().await;
    cluster(&api);
    api.put(json!({"apiVersion": "pqmesh.io/v1alpha1", "kind": "TokenIssuer",
        "metadata": {"name": "corp", "namespace": "shop"},
        "spec": {"issuer": "https://login.example.com", "audiences": ["orders"],
                 "jwksUri": "https://login.example.com/jwks", "allowedAlgorithms": ["RS256"],
                 "introspection": {"endpoint": "https://login.example.com/introspect",
                                   "clientId": "gateway",
                                   "clientSecretRef": {"name": "gateway", "key": "client-secret"}}}}));
    let cp = replica(&api, "cp-0", &[]).await.expect("starts");
    let resolved_refs = || -> Option<(String, String)> {
        let issuer = api.get(TI, "shop", "corp")?;
        let c = issuer["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")?
            .clone();
        Some((
            c["status"].as_str()?.to_owned(),
            c["reason"].as_str()?.to_owned(),
        ))
    };
    let wait = |what: &'static str, want: fn(&(String, String)) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(25);
        let resolved_refs = &resolved_refs;
        async move {
            while !resolved_refs().is_some_and(|r| want(&r)) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "timed out waiting for {what}: {:?}",
                    resolved_refs()
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    wait("ResolvedRefs=False SecretNotFound", |r| {
        r.0 == "False" && r.1 == "SecretNotFound"
    })
    .await;
    let secret = base64::engine::general_purpose::STANDARD.encode("s3cret");
    api.put(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "gateway", "namespace": "shop"},
        "data": {"client-secret": secret}}));
    wait("ResolvedRefs=True once the Secret exists", |r| {
        r.0 == "True"
    })
    .await;
    cp.shutdown().await;
}
