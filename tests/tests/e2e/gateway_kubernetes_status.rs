//! Kubernetes mode's status, end to end: what the gateway writes on GatewayClasses, Gateways
//! and HTTPRoutes of the recording API server (`pqmesh_tests::apiserver`), and that the stand-in
//! refuses what the real API server refuses. The cluster is `gateway_kubernetes`'s.

use std::time::Duration;

use pqmesh_tests::apiserver::ApiServer;
use serde_json::{json, Value};

use crate::gateway::free_port;
use crate::gateway_kubernetes::{gateway, gateway_cluster, http_route, listener, within};

fn condition(conditions: &Value, kind: &str) -> Value {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `(status, reason, observedGeneration)` of condition `kind`.
fn state(conditions: &Value, kind: &str) -> (String, String, i64) {
    let c = condition(conditions, kind);
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["observedGeneration"].as_i64().unwrap_or(-1),
    )
}

fn is(s: &str, reason: &str, generation: i64) -> (String, String, i64) {
    (s.to_owned(), reason.to_owned(), generation)
}

const ROUTES: &str = "apis/gateway.networking.k8s.io/v1/httproutes";
const GATEWAYS: &str = "apis/gateway.networking.k8s.io/v1/gateways";
const CLASSES: &str = "apis/gateway.networking.k8s.io/v1/gatewayclasses";

/// Our entry of a route's `status.parents` (the first naming `pqmesh.io/gateway`).
fn our_parent(api: &ApiServer, ns: &str, name: &str) -> Value {
    api.get(ROUTES, ns, name)
        .and_then(|r| {
            r["status"]["parents"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["controllerName"] == "pqmesh.io/gateway")
                .cloned()
        })
        .unwrap_or(Value::Null)
}

fn status_writes(api: &ApiServer) -> Vec<pqmesh_tests::apiserver::Recorded> {
    api.requests()
        .into_iter()
        .filter(|r| {
            r.is_write()
                && r.path.ends_with("/status")
                && r.path.contains("/gateway.networking.k8s.io/")
        })
        .collect()
}

/// Status on GatewayClass, Gateway (and its listeners) and HTTPRoute, written by server-side
/// apply under the field manager `pqmesh-gateway`, with the Gateway API's reasons and the
/// observedGeneration judged, only when it changes. The recording API server checks each write
/// against the Gateway API CRDs' status schema (metav1.Condition rules included), refuses a
/// write without fieldManager and a stale resourceVersion (409).
/// What the stand-in cannot show: real server-side-apply ownership (its field sets, conflicts
/// between managers, and `status.parents` being an atomic list owned as a whole by the last
/// forced apply), the Gateway API CRDs' spec validation and defaulting, and their CEL rules;
/// so a real cluster can still refuse or reshape what passes here.
#[tokio::test]
async fn status_conditions_follow_the_verdicts_by_server_side_apply_without_a_write_storm() {
    let c = gateway_cluster().await;
    let api = &c.api;
    // Another controller's entry on a route we also serve stays as it is.
    let mut shared = http_route("shared", "/shared", "orders");
    shared["status"] = json!({"parents": [{"parentRef": {"name": "theirs"},
        "controllerName": "example.com/other-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-11-22T08:00:00Z", "observedGeneration": 1}]}]});
    api.put_stored(shared);
    let mut kind = http_route("kind", "/kind", "orders");
    kind["spec"]["rules"][0]["backendRefs"][0]["kind"] = json!("ServiceImport");
    api.put(kind);
    api.put(http_route("gone", "/gone", "gone"));
    let mut foreign = http_route("foreign", "/foreign", "orders");
    foreign["spec"]["rules"][0]["backendRefs"][0]["namespace"] = json!("bank");
    api.put(foreign);
    let mut section = http_route("section", "/section", "orders");
    section["spec"]["parentRefs"][0]["sectionName"] = json!("nope");
    api.put(section);
    let mut evil = http_route("evil", "/evil", "orders");
    evil["metadata"]["namespace"] = json!("evil");
    evil["spec"]["parentRefs"][0]["namespace"] = json!("shop");
    api.put(evil);
    let mut bad = http_route("bad", "/bad", "orders");
    bad["spec"]["rules"][0]["timeouts"] = json!({"request": "10s"});
    api.put(bad);
    // Routes an EdgePolicy conflict or a refused EdgePolicy closes (review 7, F2/F3).
    api.put(http_route("conflict", "/conflict", "orders"));
    api.put(http_route("unprotected", "/unprotected", "orders"));
    for (name, route, rate_limit) in [
        ("conflict-a", "conflict", true),
        ("conflict-b", "conflict", true),
        ("checks-nothing", "unprotected", false),
    ] {
        let mut spec = json!({"targetRef": {"group": "gateway.networking.k8s.io",
                                            "kind": "HTTPRoute", "name": route}});
        if rate_limit {
            spec["rateLimit"] = json!({"key": "sourceIP", "requests": 10});
        }
        api.put(
            json!({"apiVersion": "pqmesh.io/v1alpha1", "kind": "EdgePolicy",
                       "metadata": {"name": name, "namespace": "shop"}, "spec": spec}),
        );
    }

    within(20, "every route of ours shows its verdict", || async {
        [
            "orders", "kind", "gone", "foreign", "section", "bad", "shared", "conflict",
            "unprotected",
        ]
        .iter()
        .all(|r| !our_parent(api, "shop", r).is_null())
            && !our_parent(api, "evil", "evil").is_null()
            // The EdgePolicies may be judged a round after their routes.
            && state(&our_parent(api, "shop", "unprotected")["conditions"], "ResolvedRefs").1
                == "EdgePolicyRefused"
            && state(&our_parent(api, "shop", "conflict")["conditions"], "ResolvedRefs").1
                == "Conflicted"
    })
    .await;
    let class = api.get(CLASSES, "", "pqmesh").unwrap();
    assert_eq!(
        state(&class["status"]["conditions"], "Accepted"),
        is("True", "Accepted", 1)
    );
    let gw = api.get(GATEWAYS, "shop", "edge").unwrap();
    assert_eq!(
        state(&gw["status"]["conditions"], "Accepted"),
        is("True", "Accepted", 1)
    );
    assert_eq!(
        state(&gw["status"]["conditions"], "Programmed"),
        is("True", "Programmed", 1)
    );
    let listeners = gw["status"]["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 2, "{listeners:?}");
    for l in listeners {
        for t in ["Accepted", "ResolvedRefs", "Programmed"] {
            assert_eq!(state(&l["conditions"], t).0, "True", "{l}");
        }
        assert_eq!(
            l["supportedKinds"],
            json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}])
        );
    }
    let web = listeners.iter().find(|l| l["name"] == "web").unwrap();
    // orders, plain, kind, gone, foreign, shared, conflict and unprotected attach; section,
    // evil and bad do not.
    assert_eq!(web["attachedRoutes"], json!(8), "{web}");
    // Other controllers' objects get nothing from us.
    assert!(api.get(CLASSES, "", "other").unwrap()["status"].is_null());
    assert!(api.get(GATEWAYS, "shop", "theirs").unwrap()["status"].is_null());

    let p = our_parent(api, "shop", "orders");
    assert_eq!(
        p["parentRef"],
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"})
    );
    assert_eq!(
        state(&p["conditions"], "Accepted"),
        is("True", "Accepted", 1)
    );
    assert_eq!(
        state(&p["conditions"], "ResolvedRefs"),
        is("True", "ResolvedRefs", 1)
    );
    for (route, reason) in [
        ("kind", "InvalidKind"),
        ("gone", "BackendNotFound"),
        ("foreign", "RefNotPermitted"),
        ("conflict", "Conflicted"),
        ("unprotected", "EdgePolicyRefused"),
    ] {
        let p = our_parent(api, "shop", route);
        assert_eq!(
            state(&p["conditions"], "Accepted"),
            is("True", "Accepted", 1),
            "{route}"
        );
        assert_eq!(
            state(&p["conditions"], "ResolvedRefs"),
            is("False", reason, 1),
            "{route}"
        );
    }
    assert_eq!(
        state(
            &our_parent(api, "shop", "section")["conditions"],
            "Accepted"
        ),
        is("False", "NoMatchingParent", 1)
    );
    assert_eq!(
        state(&our_parent(api, "evil", "evil")["conditions"], "Accepted"),
        is("False", "NotAllowedByListeners", 1)
    );
    let bad = our_parent(api, "shop", "bad");
    assert_eq!(state(&bad["conditions"], "Accepted").0, "False");
    assert!(condition(&bad["conditions"], "Accepted")["message"]
        .as_str()
        .unwrap()
        .contains("timeouts"));
    let shared = api.get(ROUTES, "shop", "shared").unwrap();
    let controllers: Vec<_> = shared["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["controllerName"].clone())
        .collect();
    assert_eq!(
        controllers,
        [
            json!("example.com/other-controller"),
            json!("pqmesh.io/gateway")
        ]
    );

    // Every write: a server-side apply of the status subresource under our field manager.
    let writes = status_writes(api);
    let ours: Vec<_> = writes.iter().collect();
    assert!(!ours.is_empty());
    for w in &ours {
        assert_eq!(w.field_manager.as_deref(), Some("pqmesh-gateway"), "{w:?}");
        assert!(
            w.content_type.starts_with("application/apply-patch"),
            "{w:?}"
        );
        assert!(w.query.contains("force=true"), "{w:?}");
        // 409: a concurrent change (another controller, or our own reflector lagging behind
        // our last write) — retried at the next round. Anything else is a refused write.
        assert!(
            w.status == 200 || w.status == 409,
            "the stand-in refused a write: {w:?}"
        );
    }

    // No write storm: nothing changes, nothing is written (two rounds of the 5 s interval).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = status_writes(api).len();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let after = status_writes(api);
    assert_eq!(
        after.len(),
        settled,
        "unchanged verdicts are not written again: {:?}",
        &after[settled.min(after.len())..]
    );

    // An edit moves observedGeneration; a broken listener certificate shows on its listener.
    let mut fixed = http_route("kind", "/kind", "orders");
    fixed["spec"]["rules"][0]["backendRefs"][0]["kind"] = json!("Service");
    api.put(fixed);
    api.put(gateway(
        "edge",
        "pqmesh",
        vec![
            listener("web", c.http, None),
            listener("secure", c.https, Some("edge-cert")),
            listener("missing", free_port(), Some("no-such-secret")),
        ],
    ));
    within(15, "the edit and the new listener show", || async {
        let p = our_parent(api, "shop", "kind");
        let gw = api.get(GATEWAYS, "shop", "edge").unwrap();
        state(&p["conditions"], "ResolvedRefs") == is("True", "ResolvedRefs", 2)
            && gw["status"]["listeners"]
                .as_array()
                .is_some_and(|l| l.len() == 3)
    })
    .await;
    let gw = api.get(GATEWAYS, "shop", "edge").unwrap();
    let missing = gw["status"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "missing")
        .unwrap()
        .clone();
    assert_eq!(
        state(&missing["conditions"], "ResolvedRefs"),
        is("False", "InvalidCertificateRef", 2)
    );
    assert_eq!(
        state(&missing["conditions"], "Programmed"),
        is("False", "Invalid", 2)
    );
    assert_eq!(
        state(&gw["status"]["conditions"], "Programmed"),
        is("True", "Programmed", 2)
    );
}

/// The recording API server refuses what the real one refuses on these kinds' status: a write
/// without fieldManager, a stale resourceVersion (409), an apply without apiVersion/kind, and
/// conditions that break metav1.Condition (status, reason pattern, message length, time,
/// observedGeneration, duplicate types) or a route parent without controllerName.
#[tokio::test]
async fn the_recording_api_server_refuses_bad_gateway_api_status() {
    use kube::api::{Api, DynamicObject, Patch, PatchParams};
    let api = ApiServer::start().await;
    api.put(http_route("r", "/", "orders"));
    let client = api.client();
    let ar = pqmesh_gateway::kubernetes::api_resource("HTTPRoute");
    let routes: Api<DynamicObject> = Api::namespaced_with(client, "shop", &ar);
    let good_condition = json!({"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok",
                                "lastTransitionTime": "2026-11-22T08:00:00Z", "observedGeneration": 1});
    let apply = |conditions: Value, extra: Value| {
        let mut parent = json!({"parentRef": {"name": "edge"}, "controllerName": "pqmesh.io/gateway", "conditions": conditions});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                parent.as_object_mut().unwrap().remove(k);
            } else {
                parent[k] = v.clone();
            }
        }
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "r", "namespace": "shop"}, "status": {"parents": [parent]}})
    };
    let code = |r: Result<DynamicObject, kube::Error>| match r {
        Ok(_) => 200,
        Err(kube::Error::Api(e)) => e.code,
        Err(e) => panic!("{e}"),
    };
    let params = PatchParams::apply("pqmesh-gateway").force();
    let ok = routes
        .patch_status(
            "r",
            &params,
            &Patch::Apply(apply(json!([good_condition.clone()]), json!({}))),
        )
        .await;
    assert_eq!(code(ok), 200, "a valid status is accepted");
    let with = |k: &str, v: Value| {
        let mut c = good_condition.clone();
        c[k] = v;
        json!([c])
    };
    let bad = [
        ("status Maybe", with("status", json!("Maybe")), json!({})),
        (
            "reason with a space",
            with("reason", json!("Not Allowed")),
            json!({}),
        ),
        (
            "reason ending in a colon",
            with("reason", json!("Bad:")),
            json!({}),
        ),
        ("empty reason", with("reason", json!("")), json!({})),
        (
            "message too long",
            with("message", json!("x".repeat(32769))),
            json!({}),
        ),
        (
            "no lastTransitionTime",
            with("lastTransitionTime", Value::Null),
            json!({}),
        ),
        (
            "lastTransitionTime not a time",
            with("lastTransitionTime", json!("yesterday")),
            json!({}),
        ),
        (
            "negative observedGeneration",
            with("observedGeneration", json!(-1)),
            json!({}),
        ),
        (
            "two Accepted",
            json!([good_condition.clone(), good_condition.clone()]),
            json!({}),
        ),
        ("no conditions", json!([]), json!({})),
        (
            "no controllerName",
            json!([good_condition.clone()]),
            json!({"controllerName": null}),
        ),
    ];
    for (what, conditions, extra) in bad {
        let r = routes
            .patch_status("r", &params, &Patch::Apply(apply(conditions, extra)))
            .await;
        assert_eq!(code(r), 422, "{what} is refused");
    }
    let unmanaged = PatchParams {
        field_manager: None,
        ..Default::default()
    };
    let r = routes
        .patch_status("r", &unmanaged, &Patch::Merge(json!({"status": {}})))
        .await;
    assert_eq!(code(r), 422, "a write without fieldManager is refused");
    let mut stale = apply(json!([good_condition.clone()]), json!({}));
    stale["metadata"]["resourceVersion"] = json!("1");
    let r = routes
        .patch_status("r", &params, &Patch::Apply(stale))
        .await;
    assert_eq!(code(r), 409, "a stale resourceVersion is a conflict");
    let mut kindless = apply(json!([good_condition]), json!({}));
    kindless.as_object_mut().unwrap().remove("kind");
    let r = routes
        .patch_status("r", &params, &Patch::Apply(kindless))
        .await;
    assert_eq!(code(r), 400, "an apply without kind is refused");
}
