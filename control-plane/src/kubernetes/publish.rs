//! What the control plane writes to the cluster besides policy status: the public trust bundle
//! as a ConfigMap in every namespace that has (or will have) meshed pods, and the webhook
//! configuration's caBundle. Both are re-checked periodically, so a deleted ConfigMap or a
//! caBundle reset by `helm upgrade` is repaired within a minute.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use tokio::sync::watch;

use super::sources::{is_meshed, reflect, WorkloadStores};
use crate::inject::INJECT_KEY;

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
        let mut published: BTreeSet<String> = BTreeSet::new();
        let mut last_bundle = String::new();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            let pem = bundle.borrow_and_update().clone();
            let wanted = bundle_namespaces(&own_namespace, &namespaces, &workloads);
            let force_all = *pem != last_bundle;
            for ns in &wanted {
                if force_all || !published.contains(ns) {
                    match apply_bundle(&client, ns, &name, &pem).await {
                        Ok(()) => {
                            published.insert(ns.clone());
                        }
                        Err(e) => {
                            published.remove(ns);
                            tracing::warn!(namespace = %ns, configmap = %name, error = %e, "cannot publish the trust bundle; retrying");
                        }
                    }
                }
            }
            if wanted.iter().all(|ns| published.contains(ns)) {
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

/// Keeps every webhook's `clientConfig.caBundle` in `configuration` equal to `ca_pem`.
pub fn spawn_webhook_ca_sync(client: kube::Client, configuration: String, ca_pem: String) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            match sync_webhook_ca(&client, &configuration, &ca_pem).await {
                Ok(true) => tracing::info!(%configuration, "webhook caBundle updated"),
                Ok(false) => {}
                // Another replica (or helm) changed it since we read it: the next pass looks again.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(%configuration, "webhook configuration changed concurrently")
                }
                Err(e) => {
                    tracing::warn!(%configuration, error = %e, "cannot update the webhook caBundle; retrying")
                }
            }
        }
    });
}

/// One pass: read, fix any webhook whose caBundle differs, write back with the read
/// resourceVersion (a concurrent change makes it 409 and the next pass retries).
pub async fn sync_webhook_ca(
    client: &kube::Client,
    configuration: &str,
    ca_pem: &str,
) -> kube::Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut config = api.get(configuration).await?;
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        let current = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice());
        if current != Some(ca_pem.as_bytes()) {
            webhook.client_config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
            changed = true;
        }
    }
    if changed {
        config.metadata.managed_fields = None;
        api.replace(configuration, &PostParams::default(), &config)
            .await?;
    }
    Ok(changed)
}
