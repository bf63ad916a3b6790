//! Kubernetes mode: the verdicts of the configuration in force, written back as the Gateway
//! API's status.
//! - GatewayClass (ours only): `Accepted`.
//! - Gateway (of our classes only): `Accepted`, `Programmed`, and `status.listeners[]` with
//!   `supportedKinds`, `attachedRoutes` and the listener's `Accepted`, `ResolvedRefs` (its
//!   certificate Secret) and `Programmed` (served: valid, and its port bound).
//! - HTTPRoute: one `status.parents[]` entry per parentRef naming a Gateway of ours, with
//!   `controllerName: pqmesh.io/gateway`, `Accepted` and `ResolvedRefs`.
//!
//! Every condition carries the `observedGeneration` judged; `lastTransitionTime` moves only when
//! its status does. Writes are server-side applies of the status subresource under the field
//! manager [`FIELD_MANAGER`], made only when what the object shows differs from what it should
//! (no write storm: an unchanged verdict is never written again, whatever the number of
//! replicas). `status.parents` is an atomic list in the Gateway API's CRD, so an HTTPRoute's
//! apply carries the entries of other controllers unchanged and the resourceVersion it read:
//! a concurrent change by another controller is a 409, retried at the next round with a fresh read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::CONTROLLER_NAME;
use crate::kubernetes::{api_resource, Sources, GATEWAY_GROUP};
use crate::load::Verdict;
use crate::ports::Ports;
use crate::program::Programmed;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "pqmesh-gateway";
/// How often what objects show is compared with what they should show, besides every change.
const INTERVAL: Duration = Duration::from_secs(5);

/// Writes status for as long as the gateway runs.
pub async fn write_status(
    client: kube::Client,
    sources: Sources,
    mut config: watch::Receiver<Arc<Programmed>>,
    ports: Arc<Ports>,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    // Objects written at a resourceVersion the reflector still shows: its view is older than
    // our write, so they wait for the next round instead of a write bound to conflict.
    let mut written: HashMap<String, Option<String>> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = config.changed() => if changed.is_err() { return },
        }
        let current = config.borrow_and_update().clone();
        let mut next = HashMap::new();
        for (kind, object, status) in desired(&sources, &current, &ports, Timestamp::now()) {
            let key = format!(
                "{kind} {:?}/{:?}",
                object.metadata.namespace, object.metadata.name
            );
            let seen = object.metadata.resource_version.clone();
            if written.get(&key) == Some(&seen) {
                next.insert(key, seen);
                continue;
            }
            if apply(&client, kind, &object, status).await {
                next.insert(key, seen);
            }
        }
        written = next;
    }
}

/// Applies `status`; false when the write failed.
async fn apply(client: &kube::Client, kind: &str, object: &DynamicObject, status: Value) -> bool {
    let ar = api_resource(kind);
    let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let name = object.metadata.name.clone().unwrap_or_default();
    let mut metadata = json!({"name": name});
    if let Some(ns) = &object.metadata.namespace {
        metadata["namespace"] = json!(ns);
    }
    if kind == "HTTPRoute" {
        // `parents` is atomic: apply only over the version whose other entries were copied.
        metadata["resourceVersion"] = json!(object.metadata.resource_version);
    }
    let patch =
        json!({"apiVersion": ar.api_version, "kind": kind, "metadata": metadata, "status": status});
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(&name, &params, &Patch::Apply(patch)).await {
        Ok(_) => {
            tracing::debug!(object = %format!("{kind} {name}"), "status written");
            true
        }
        Err(e) => {
            tracing::warn!(object = %format!("{kind} {name}"), error = %e, "cannot write status; retried at the next round");
            false
        }
    }
}

/// Every object whose status differs from what the verdicts say, with the status to apply.
pub fn desired(
    sources: &Sources,
    config: &Programmed,
    ports: &Ports,
    now: Timestamp,
) -> Vec<(&'static str, Arc<DynamicObject>, Value)> {
    let verdict = |kind: &str, name: &str| {
        config
            .model
            .verdicts
            .iter()
            .find(|v| v.kind == kind && v.name == name)
    };
    let ours = |class: &str| config.model.our_classes.iter().any(|c| c == class);
    let mut out = Vec::new();
    for (kind, store) in &sources.objects {
        for object in store.state() {
            let name = match &object.metadata.namespace {
                Some(ns) => format!("{ns}/{}", object.metadata.name.as_deref().unwrap_or("")),
                None => object.metadata.name.clone().unwrap_or_default(),
            };
            let spec = &object.data["spec"];
            let wanted = match *kind {
                "GatewayClass" if spec["controllerName"] == CONTROLLER_NAME => {
                    verdict(kind, &name).map(|v| class_status(&object, v, now))
                }
                "Gateway" if ours(spec["gatewayClassName"].as_str().unwrap_or_default()) => {
                    verdict(kind, &name).map(|v| gateway_status(&object, v, config, ports, now))
                }
                "HTTPRoute" => {
                    verdict(kind, &name).and_then(|v| route_status(&object, v, config, now))
                }
                _ => None,
            };
            let Some(wanted) = wanted else { continue };
            let shown = &object.data["status"];
            let current = wanted
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| shown.get(k) == Some(v));
            if !current {
                out.push((*kind, object, wanted));
            }
        }
    }
    out
}

/// One condition; its `lastTransitionTime` is the one shown while its status stays.
fn condition(
    kind: &str,
    status: Result<(), (&str, &str)>,
    ok_reason: &str,
    ok_message: &str,
    generation: i64,
    previous: &Value,
    now: Timestamp,
) -> Value {
    let (status, reason, message) = match status {
        Ok(()) => ("True", ok_reason, ok_message),
        Err((reason, message)) => ("False", reason, message),
    };
    condition_with(kind, status, reason, message, generation, previous, now)
}

fn condition_with(
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: i64,
    previous: &Value,
    now: Timestamp,
) -> Value {
    // metav1.Condition allows 32768 characters; a message is cut well before that.
    let message: String = message.chars().take(4096).collect();
    let since = previous
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
        .unwrap_or_else(|| now.to_string());
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": since})
}

fn generation(object: &DynamicObject, v: &Verdict) -> i64 {
    v.generation.or(object.metadata.generation).unwrap_or(0)
}

fn err<'a>(r: &'a Result<(), String>, reason: &'a str) -> Result<(), (&'a str, &'a str)> {
    r.as_ref().map_err(|m| (reason, m.as_str())).copied()
}

fn class_status(object: &DynamicObject, v: &Verdict, now: Timestamp) -> Value {
    let previous = &object.data["status"]["conditions"];
    json!({"conditions": [condition(
        "Accepted",
        err(&v.accepted, v.accepted_reason),
        "Accepted",
        "pqmesh-gateway serves the Gateways of this class",
        generation(object, v),
        previous,
        now,
    )]})
}

fn gateway_status(
    object: &DynamicObject,
    v: &Verdict,
    config: &Programmed,
    ports: &Ports,
    now: Timestamp,
) -> Value {
    let g = generation(object, v);
    let shown = &object.data["status"];
    let mut any_programmed = false;
    let listeners: Vec<Value> = v
        .listeners
        .iter()
        .map(|l| {
            let served = config
                .model
                .listeners
                .iter()
                .find(|m| m.gateway == v.name && m.name == l.name);
            let programmed = match (served, &l.accepted, &l.resolved_refs) {
                (Some(m), _, _) => match ports.failure(m.port) {
                    Some(e) => Err(("Invalid", e)),
                    None => Ok(()),
                },
                (None, Err((_, e)), _) | (None, _, Err((_, e))) => Err(("Invalid", e.clone())),
                (None, Ok(()), Ok(())) => Err(("Invalid", "not served".to_owned())),
            };
            any_programmed |= programmed.is_ok();
            let previous = shown["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == json!(l.name))
                .map(|p| p["conditions"].clone())
                .unwrap_or(Value::Null);
            let pair = |r: &Result<(), (&'static str, String)>| {
                r.as_ref().map_err(|(a, b)| (*a, b.clone())).err()
            };
            let c = |kind: &str, r: Option<(&str, String)>, ok: &str, msg: &str| match r {
                None => condition(kind, Ok(()), ok, msg, g, &previous, now),
                Some((reason, m)) => condition(kind, Err((reason, &m)), ok, msg, g, &previous, now),
            };
            json!({
                "name": l.name,
                "supportedKinds": [{"group": GATEWAY_GROUP, "kind": "HTTPRoute"}],
                "attachedRoutes": l.attached_routes,
                "conditions": [
                    c("Accepted", pair(&l.accepted), "Accepted", "the listener is valid"),
                    c("ResolvedRefs", pair(&l.resolved_refs), "ResolvedRefs", "its references resolve"),
                    c("Programmed", programmed.err(), "Programmed", "served"),
                ],
            })
        })
        .collect();
    let previous = &shown["conditions"];
    let accepted = condition(
        "Accepted",
        err(&v.accepted, v.accepted_reason),
        "Accepted",
        "pqmesh-gateway serves this Gateway",
        g,
        previous,
        now,
    );
    let programmed = match (&v.accepted, any_programmed) {
        (Ok(()), true) => Ok(()),
        (Err(e), _) => Err(("Invalid", e.as_str())),
        (Ok(()), false) => Err(("Invalid", "no listener is served")),
    };
    let programmed = condition(
        "Programmed",
        programmed,
        "Programmed",
        "at least one listener is served",
        g,
        previous,
        now,
    );
    json!({"conditions": [accepted, programmed], "listeners": listeners})
}

/// `None` when no parentRef names a Gateway of ours and none of our entries is shown.
fn route_status(
    object: &DynamicObject,
    v: &Verdict,
    config: &Programmed,
    now: Timestamp,
) -> Option<Value> {
    let g = generation(object, v);
    let shown: Vec<Value> = object.data["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ns = object.metadata.namespace.clone().unwrap_or_default();
    // A route that was not parsed has no per-parent verdicts: its parentRefs are read raw.
    let raw_parents: Vec<crate::api::ParentRef> = match v.accepted {
        Err(_) if v.parents.is_empty() => object.data["spec"]["parentRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| serde_json::from_value(p.clone()).ok())
            .filter(|p: &crate::api::ParentRef| {
                let gw = format!("{}/{}", p.namespace.as_deref().unwrap_or(&ns), p.name);
                config
                    .model
                    .verdicts
                    .iter()
                    .any(|x| x.kind == "Gateway" && x.name == gw && x.accepted.is_ok())
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut ours = Vec::new();
    let previous_of = |p: &Value| {
        shown
            .iter()
            .find(|s| s["controllerName"] == CONTROLLER_NAME && s["parentRef"] == *p)
            .map(|s| s["conditions"].clone())
            .unwrap_or(Value::Null)
    };
    for p in &v.parents {
        let parent_ref = parent_ref_json(&p.parent);
        let previous = previous_of(&parent_ref);
        fn pair<'a>(r: &'a Result<(), (&'static str, String)>) -> Result<(), (&'a str, &'a str)> {
            r.as_ref().map_err(|(a, b)| (*a, b.as_str())).copied()
        }
        ours.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition("Accepted", pair(&p.accepted), "Accepted", "the route is attached", g, &previous, now),
                condition("ResolvedRefs", pair(&p.resolved_refs), "ResolvedRefs", "every backendRef resolves", g, &previous, now),
            ],
        }));
    }
    for p in &raw_parents {
        let parent_ref = parent_ref_json(p);
        let previous = previous_of(&parent_ref);
        let message = v.accepted.as_ref().err().cloned().unwrap_or_default();
        ours.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition("Accepted", Err((v.accepted_reason, &message)), "Accepted", "", g, &previous, now),
                condition_with("ResolvedRefs", "Unknown", v.accepted_reason, "the route is not accepted; its references were not resolved", g, &previous, now),
            ],
        }));
    }
    let had_ours = shown.iter().any(|s| s["controllerName"] == CONTROLLER_NAME);
    if ours.is_empty() && !had_ours {
        return None;
    }
    let mut parents: Vec<Value> = shown
        .into_iter()
        .filter(|s| s["controllerName"] != CONTROLLER_NAME)
        .collect();
    parents.extend(ours);
    Some(json!({"parents": parents}))
}

/// A parentRef as status shows it: as written, without empty optional fields.
fn parent_ref_json(p: &crate::api::ParentRef) -> Value {
    let mut v = json!({"name": p.name});
    for (k, value) in [
        ("group", p.group.clone()),
        ("kind", p.kind.clone()),
        ("namespace", p.namespace.clone()),
        ("sectionName", p.section_name.clone()),
    ] {
        if let Some(value) = value {
            v[k] = json!(value);
        }
    }
    if let Some(port) = p.port {
        v["port"] = json!(port);
    }
    v
}
