//! The public trust bundle as a ConfigMap in every namespace that has (or will have) meshed
//! pods: published on namespace (and pod) events — a namespace recreated under the same name is
//! recognised by its new uid and served at once — and re-checked every minute, so a deleted
//! ConfigMap is repaired within a minute. (The
//! webhook caBundle is `webhook_tls`'s.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use tokio::sync::watch;

use super::sources::{is_meshed, reflect, WorkloadStores};
use crate::inject::INJECT_KEY;

/// Every write of the control plane names this field manager (policy status adds the replica).
pub const FIELD_MANAGER: &str = "pqmesh-control-plane";
/// The key sidecars read the bundle from (the injector mounts it as a file of this name).
pub const TRUST_BUNDLE_KEY: &str = "trust-bundle.pem";
const RESYNC: Duration = Duration::from_secs(60);

/// Namespaces, reflected (their `pqmesh.io/inject` label says which need the bundle).
pub fn watch_namespaces(
    client: &kube::Client,
    changes: super::sources::Changes,
) -> Store<Namespace> {
    reflect(
        Api::all(client.clone()),
        Default::default(),
        changes,
        "Namespace",
    )
}

/// The namespaces that need the trust bundle: the control plane's own, every namespace labelled
/// for injection, and every namespace with a meshed pod (pods can opt in by annotation).
pub fn bundle_namespaces(
    own: &str,
    namespaces: &Store<Namespace>,
    workloads: &WorkloadStores,
) -> BTreeSet<String> {
    let mut out = BTreeSet::from([own.to_owned()]);
    for ns in namespaces.state() {
        let enabled = ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(INJECT_KEY))
            .is_some_and(|v| v == "enabled");
        if enabled {
            out.extend(ns.metadata.name.clone());
        }
    }
    for pod in workloads.pods.state() {
        if is_meshed(&pod) {
            out.extend(pod.metadata.namespace.clone());
        }
    }
    out
}

/// Keeps `name` (data `trust-bundle.pem`) current in every namespace that needs it.
pub fn spawn_trust_bundle_publisher(
    client: kube::Client,
    name: String,
    own_namespace: String,
    mut bundle: watch::Receiver<Arc<String>>,
    namespaces: Store<Namespace>,
    workloads: WorkloadStores,
    mut changed: watch::Receiver<u64>,
) {
    tokio::spawn(async move {
        // Namespace → the uid it had when published: a namespace deleted and recreated under
        // the same name is a new namespace (new uid) and gets the bundle at once, not at the
        // next resync.
        let mut published: BTreeMap<String, String> = BTreeMap::new();
        let mut last_bundle = String::new();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            let pem = bundle.borrow_and_update().clone();
            let wanted = bundle_namespaces(&own_namespace, &namespaces, &workloads);
            let uids: BTreeMap<String, String> = namespaces
                .state()
                .iter()
                .filter_map(|n| {
                    Some((
                        n.metadata.name.clone()?,
                        n.metadata.uid.clone().unwrap_or_default(),
                    ))
                })
                .collect();
            // Forget namespaces that are gone or were recreated (a different uid).
            published.retain(|ns, uid| {
                uids.get(ns) == Some(uid) || (!uids.contains_key(ns) && *ns == own_namespace)
            });
            let force_all = *pem != last_bundle;
            for ns in &wanted {
                if force_all || !published.contains_key(ns) {
                    match apply_bundle(&client, ns, &name, &pem).await {
                        Ok(()) => {
                            published.insert(ns.clone(), uids.get(ns).cloned().unwrap_or_default());
                        }
                        Err(e) => {
                            published.remove(ns);
                            tracing::warn!(namespace = %ns, configmap = %name, error = %e, "cannot publish the trust bundle; retrying");
                        }
                    }
                }
            }
            if wanted.iter().all(|ns| published.contains_key(ns)) {
                last_bundle = (*pem).clone();
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                r = bundle.changed() => if r.is_err() { return },
                _ = resync.tick() => published.clear(),
            }
        }
    });
}

async fn apply_bundle(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    pem: &str,
) -> kube::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "pqmesh", "app.kubernetes.io/component": "trust-bundle"},
        },
        "data": {TRUST_BUNDLE_KEY: pem},
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(cm),
    )
    .await?;
    tracing::debug!(%namespace, %name, "trust bundle published");
    Ok(())
}
