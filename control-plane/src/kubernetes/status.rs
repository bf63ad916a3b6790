//! Status of the policy objects, as `kubectl get accesspolicies,tokenissuers` shows it.
//! - `status.conditions` on every AccessPolicy and TokenIssuer: `Accepted` (the object is valid;
//!   `False` with reason `Invalid` and the message when not), `ResolvedRefs` (its TokenIssuers,
//!   or its client Secret, exist and are accepted) and, on AccessPolicies, `Ready` (every
//!   selected sidecar runs the current version). Each carries the `observedGeneration` it
//!   judged. Every replica judges the same objects the same way, so all force the same value.
//! - Sidecar counts: each replica only sees the sidecars connected to it, so each writes its own
//!   entry under `status.replicas` (server-side apply under its own field manager, a list keyed
//!   by replica name) and the totals over the fresh entries (under the shared field manager, as
//!   the conditions: every replica computes them alike).
//! - Hygiene: an entry whose heartbeat is older than 90 s belongs to a replica that is gone
//!   (crashed, or its Pod deleted): any replica removes it (JSON patch guarded by a `test` of the
//!   entry's name), and with it the gone replica's field manager, which then owns nothing. A
//!   replica shutting down removes its own entry at once; the others' next write (within 5 s)
//!   takes its counts out of the totals.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::Store;
use pqmesh_policy::admit::{ObjectKey, Verdict};
use pqmesh_policy::model::{GROUP, VERSION};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::sources::PolicyStores;
use crate::policies::PolicyState;
use crate::policy_push::{PolicyStatus, PushTracker};

const INTERVAL: Duration = Duration::from_secs(5);
/// Rewrite an unchanged entry this often, so the others know this replica is alive.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// An entry older than this belongs to a replica that is gone; it is removed.
pub const STALE: Duration = Duration::from_secs(90);
/// How long a replica shutting down spends removing its entries.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

/// The field manager of this replica's status writes.
pub fn field_manager(replica: &str) -> String {
    format!("{}/{replica}", super::publish::FIELD_MANAGER)
}

pub fn spawn_status_writer(
    client: kube::Client,
    replica: String,
    stores: PolicyStores,
    state: watch::Receiver<Arc<PolicyState>>,
    tracker: Arc<PushTracker>,
    mut stopping: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = stopping.wait_for(|s| *s) => true,
            };
            if stop {
                leave(&client, &replica, &stores.policies).await;
                return;
            }
            let verdicts = state.borrow().admitted.verdicts.clone();
            let own = tracker.policy_status();
            let now = Timestamp::now();
            for (kind, store) in [
                ("AccessPolicy", &stores.policies),
                ("TokenIssuer", &stores.issuers),
            ] {
                for object in store.state() {
                    let (Some(ns), Some(name)) = (
                        object.metadata.namespace.as_deref(),
                        object.metadata.name.as_deref(),
                    ) else {
                        continue;
                    };
                    let api = api(&client, kind, ns);
                    let gone = gone_replicas(&object, &replica, now);
                    if !gone.is_empty() {
                        let patch = removal(&object, &gone, None, now);
                        let params = PatchParams {
                            field_manager: Some(field_manager(&replica)),
                            ..Default::default()
                        };
                        match api.patch_status(name, &params, &json_patch(patch)).await {
                            Ok(_) => {
                                tracing::info!(object = %format!("{kind} {ns}/{name}"), replicas = %gone.join(","), "removed the status entries of gone replicas")
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "status entries of gone replicas not removed (someone else did, or will)")
                            }
                        }
                        continue; // the next tick writes ours against the fresh object
                    }
                    let Some(verdict) = verdicts.get(&ObjectKey::new(kind, ns, name)) else {
                        continue; // not judged yet
                    };
                    let counts = (kind == "AccessPolicy").then(|| {
                        own.get(&format!("{ns}/{name}"))
                            .cloned()
                            .unwrap_or_default()
                    });
                    let Some(status) =
                        desired_status(&object, &replica, verdict, counts.as_ref(), now)
                    else {
                        continue;
                    };
                    // Two managers: what every replica computes alike (conditions, totals) under
                    // the shared one, and only this replica's entry under its own. Applied under
                    // per-replica managers, the shared fields would be co-owned by every replica
                    // that ever ran, and a gone replica's manager would stay in managedFields.
                    let (shared, entry) = split_entry(status);
                    let writes = [
                        (shared, super::publish::FIELD_MANAGER.to_owned()),
                        (entry, field_manager(&replica)),
                    ];
                    for (part, manager) in writes {
                        let Some(part) = part else { continue };
                        let patch = json!({
                            "apiVersion": format!("{GROUP}/{VERSION}"),
                            "kind": kind,
                            "metadata": {"name": name, "namespace": ns},
                            "status": part,
                        });
                        let params = PatchParams::apply(&manager).force();
                        if let Err(e) = api.patch_status(name, &params, &Patch::Apply(patch)).await
                        {
                            tracing::warn!(object = %format!("{kind} {ns}/{name}"), error = %e, "cannot write status");
                        }
                    }
                }
            }
        }
    })
}

fn json_patch(ops: Value) -> Patch<()> {
    // `removal` builds only well-formed operations, so this cannot fail; an empty patch if it did.
    Patch::Json(serde_json::from_value(ops).unwrap_or_else(|_| kube_json_patch::Patch(vec![])))
}

fn api(client: &kube::Client, kind: &str, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Shutting down: this replica's entries leave every AccessPolicy, and its counts the totals.
async fn leave(client: &kube::Client, replica: &str, policies: &Store<DynamicObject>) {
    let work = async {
        for object in policies.state() {
            let (Some(ns), Some(name)) = (
                object.metadata.namespace.as_deref(),
                object.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let mine = [replica.to_owned()];
            if entries(&object)
                .iter()
                .all(|e| entry_name(e) != Some(replica))
            {
                continue;
            }
            // Only the entry: the other replicas recompute the totals within one interval
            // (5 s), and writing them here would leave this replica's manager owning them.
            let patch = removal(&object, &mine, None, Timestamp::now());
            let params = PatchParams {
                field_manager: Some(field_manager(replica)),
                ..Default::default()
            };
            if let Err(e) = api(client, "AccessPolicy", ns)
                .patch_status(name, &params, &json_patch(patch))
                .await
            {
                tracing::warn!(policy = %format!("{ns}/{name}"), error = %e, "cannot remove this replica's status entry");
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_BUDGET, work).await.is_err() {
        tracing::warn!(
            "gave up removing this replica's status entries; others remove them after 90 s"
        );
    }
}

fn entries(object: &DynamicObject) -> Vec<Value> {
    object
        .data
        .get("status")
        .and_then(|s| s.get("replicas"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn entry_name(e: &Value) -> Option<&str> {
    e.get("name").and_then(Value::as_str)
}

fn entry_time(entry: &Value) -> Option<Timestamp> {
    entry.get("heartbeat")?.as_str()?.parse().ok()
}

fn count(entry: &Value, key: &str) -> u64 {
    entry.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn fresh(e: &Value, now: Timestamp) -> bool {
    entry_time(e).is_some_and(|t| now.duration_since(t).unsigned_abs() < STALE)
}

/// Other replicas whose entries are stale: they are gone.
pub fn gone_replicas(object: &DynamicObject, replica: &str, now: Timestamp) -> Vec<String> {
    entries(object)
        .iter()
        .filter(|e| entry_name(e) != Some(replica) && !fresh(e, now))
        .filter_map(|e| entry_name(e).map(str::to_owned))
        .collect()
}

/// A JSON patch removing the entries of `names` (each guarded by a `test` of its name, so a
/// concurrent change makes it fail rather than remove the wrong entry) and, when `leaving`,
/// taking that replica's counts out of the totals.
pub fn removal(
    object: &DynamicObject,
    names: &[String],
    leaving: Option<&str>,
    now: Timestamp,
) -> Value {
    let all = entries(object);
    let mut ops = Vec::new();
    for (i, e) in all.iter().enumerate().rev() {
        if let Some(n) = entry_name(e).filter(|n| names.iter().any(|g| g == n)) {
            ops.push(
                json!({"op": "test", "path": format!("/status/replicas/{i}/name"), "value": n}),
            );
            ops.push(json!({"op": "remove", "path": format!("/status/replicas/{i}")}));
        }
    }
    if leaving.is_some() {
        let remaining = all.iter().filter(|e| {
            !entry_name(e).is_some_and(|n| names.iter().any(|g| g == n)) && fresh(e, now)
        });
        let (mut s, mut a, mut r) = (0, 0, 0);
        for e in remaining {
            s += count(e, "selected");
            a += count(e, "acked");
            r += count(e, "rejected");
        }
        for (key, v) in [
            ("selectedSidecars", s),
            ("ackedSidecars", a),
            ("rejectedSidecars", r),
        ] {
            ops.push(json!({"op": "add", "path": format!("/status/{key}"), "value": v}));
        }
    }
    Value::Array(ops)
}

fn condition(
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
    previous: &[Value],
    now: Timestamp,
) -> Value {
    let status = if status { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = previous
        .iter()
        .find(|c| c["type"] == kind && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
        .unwrap_or_else(|| now.to_string());
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": since})
}

/// The status this replica should apply, or `None` when what the object shows is already right
/// and this replica's heartbeat is recent. `counts` is `None` for TokenIssuers.
pub fn desired_status(
    object: &DynamicObject,
    replica: &str,
    verdict: &Verdict,
    counts: Option<&PolicyStatus>,
    now: Timestamp,
) -> Option<Value> {
    let status = object.data.get("status");
    let previous: Vec<Value> = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let generation = verdict
        .generation
        .or(object.metadata.generation)
        .unwrap_or(0);
    let mut conditions = vec![
        condition(
            "Accepted",
            verdict.accepted.status,
            &verdict.accepted.reason,
            &verdict.accepted.message,
            generation,
            &previous,
            now,
        ),
        condition(
            "ResolvedRefs",
            verdict.resolved_refs.status,
            &verdict.resolved_refs.reason,
            &verdict.resolved_refs.message,
            generation,
            &previous,
            now,
        ),
    ];
    let Some(counts) = counts else {
        let conditions_current = same_conditions(&previous, &conditions);
        return (!conditions_current).then(|| json!({"conditions": conditions}));
    };
    let all = entries(object);
    let mine = all.iter().find(|e| entry_name(e) == Some(replica));
    let others = all
        .iter()
        .filter(|e| entry_name(e) != Some(replica) && fresh(e, now));
    let (mut selected, mut acked, mut rejected) = (
        counts.selected as u64,
        counts.acked as u64,
        counts.rejected as u64,
    );
    for e in others {
        selected += count(e, "selected");
        acked += count(e, "acked");
        rejected += count(e, "rejected");
    }
    let ready = verdict.accepted.status && acked == selected;
    conditions.push(condition(
        "Ready",
        ready,
        if ready { "Acked" } else { "Pending" },
        &format!("{acked} of {selected} selected sidecars run the current version"),
        generation,
        &previous,
        now,
    ));
    let shown = |key: &str| status.and_then(|s| s.get(key)).and_then(Value::as_u64);
    let entry_current = mine.is_some_and(|e| {
        count(e, "selected") == counts.selected as u64
            && count(e, "acked") == counts.acked as u64
            && count(e, "rejected") == counts.rejected as u64
            && entry_time(e).is_some_and(|t| now.duration_since(t).unsigned_abs() < HEARTBEAT)
    });
    let totals_current = shown("selectedSidecars") == Some(selected)
        && shown("ackedSidecars") == Some(acked)
        && shown("rejectedSidecars") == Some(rejected)
        && shown("observedGeneration") == Some(generation as u64);
    if entry_current && totals_current && same_conditions(&previous, &conditions) {
        return None;
    }
    Some(json!({
        "observedGeneration": generation,
        "selectedSidecars": selected,
        "ackedSidecars": acked,
        "rejectedSidecars": rejected,
        "conditions": conditions,
        "replicas": [{
            "name": replica,
            "selected": counts.selected,
            "acked": counts.acked,
            "rejected": counts.rejected,
            "heartbeat": now.to_string(),
        }],
    }))
}

/// `status` without this replica's `replicas` entry, and the entry alone (`None` for a part with
/// nothing in it).
fn split_entry(mut status: Value) -> (Option<Value>, Option<Value>) {
    let entry = status
        .as_object_mut()
        .and_then(|s| s.remove("replicas"))
        .map(|r| json!({"replicas": r}));
    let shared = status
        .as_object()
        .is_some_and(|s| !s.is_empty())
        .then_some(status);
    (shared, entry)
}

fn same_conditions(previous: &[Value], wanted: &[Value]) -> bool {
    wanted.iter().all(|w| {
        previous.iter().any(|p| {
            ["type", "status", "reason", "message", "observedGeneration"]
                .iter()
                .all(|k| p.get(*k) == w.get(*k))
        })
    })
}
