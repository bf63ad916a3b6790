//! `kubectl get accesspolicies` shows how many connected sidecars each policy selects and how
//! many run its current version. Each replica only sees the sidecars connected to it, so each
//! writes its own entry under `status.replicas` (server-side apply, one field manager per
//! replica, a list keyed by replica name) and the totals over the entries that are fresh (a
//! replica that stopped heart-beating for 90 s no longer counts).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use pqmesh_policy::model::{GROUP, VERSION};
use serde_json::{json, Value};

use super::sources::PolicyStores;
use crate::policy_push::{PolicyStatus, PushTracker};

const INTERVAL: Duration = Duration::from_secs(5);
/// Rewrite an unchanged entry this often, so the others know this replica is alive.
const HEARTBEAT: Duration = Duration::from_secs(30);
const STALE: Duration = Duration::from_secs(90);

pub fn spawn_status_writer(
    client: kube::Client,
    replica: String,
    stores: PolicyStores,
    tracker: Arc<PushTracker>,
) {
    tokio::spawn(async move {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, "AccessPolicy"));
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tick.tick().await;
            let own = tracker.policy_status();
            for object in stores.policies.state() {
                let (Some(ns), Some(name)) = (
                    object.metadata.namespace.as_deref(),
                    object.metadata.name.as_deref(),
                ) else {
                    continue;
                };
                let counts = own
                    .get(&format!("{ns}/{name}"))
                    .cloned()
                    .unwrap_or_default();
                let Some(status) = desired_status(&object, &replica, &counts, Timestamp::now())
                else {
                    continue;
                };
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
                let patch = json!({
                    "apiVersion": format!("{GROUP}/{VERSION}"),
                    "kind": "AccessPolicy",
                    "metadata": {"name": name, "namespace": ns},
                    "status": status,
                });
                let params = PatchParams::apply(&format!("pqmesh-control-plane/{replica}")).force();
                if let Err(e) = api.patch_status(name, &params, &Patch::Apply(patch)).await {
                    tracing::warn!(policy = %format!("{ns}/{name}"), error = %e, "cannot write policy status");
                }
            }
        }
    });
}

fn entry_time(entry: &Value) -> Option<Timestamp> {
    entry.get("heartbeat")?.as_str()?.parse().ok()
}

fn count(entry: &Value, key: &str) -> u64 {
    entry.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The status this replica should apply, or `None` when what the object shows is already right
/// and this replica's heartbeat is recent.
pub fn desired_status(
    object: &DynamicObject,
    replica: &str,
    counts: &PolicyStatus,
    now: Timestamp,
) -> Option<Value> {
    let status = object.data.get("status");
    let entries: Vec<Value> = status
        .and_then(|s| s.get("replicas"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let fresh =
        |e: &Value| entry_time(e).is_some_and(|t| now.duration_since(t).unsigned_abs() < STALE);
    let mine = entries
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(replica));
    let others = entries
        .iter()
        .filter(|e| e.get("name").and_then(Value::as_str) != Some(replica) && fresh(e));
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
    let generation = object.metadata.generation.unwrap_or(0);
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
    if entry_current && totals_current {
        return None;
    }
    Some(json!({
        "observedGeneration": generation,
        "selectedSidecars": selected,
        "ackedSidecars": acked,
        "rejectedSidecars": rejected,
        "replicas": [{
            "name": replica,
            "selected": counts.selected,
            "acked": counts.acked,
            "rejected": counts.rejected,
            "heartbeat": now.to_string(),
        }],
    }))
}
