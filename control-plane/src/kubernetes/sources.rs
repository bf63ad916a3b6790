//! Kubernetes mode's view of the cluster, kept by reflectors (list, then watch; resumed with
//! back-off after errors): AccessPolicies and TokenIssuers compile into the same `PolicyState`
//! local mode reads from files; meshed Pods, Services and EndpointSlices become the discovery
//! `EndpointTable`; Pods also answer "which labels does this sidecar's workload have".

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use pqmesh_mtls::SpiffeId;
use pqmesh_policy::admit::{admit, Candidate, ObjectKey, Reach};
use pqmesh_policy::model::{Resource as PolicyResource, GROUP, VERSION};
use pqmesh_policy::PolicySet;
use tokio::sync::watch;
use tonic::Status;

use crate::endpoints::{Backend, EndpointTable};
use crate::inject::PROXY_CONTAINER;
use crate::metrics::Metrics;
use crate::policies::{record, PolicyState, SecretTable};
use crate::policy_push::WorkloadLabels;

/// Changes arriving together (an apply of several objects) are compiled once.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the introspection client Secrets are read again (they are not watched).
pub const SECRET_RECHECK: Duration = Duration::from_secs(10);

/// A change counter: every reflector of a group bumps it after each change it applies.
pub type Changes = watch::Sender<u64>;

/// Drives a reflector (shared with the gateway: `pqmesh_mtls::reflect`).
pub use pqmesh_mtls::reflect::reflect;

/// The same for pqmesh's custom resources, whose type is only known at run time.
fn reflect_custom(client: &kube::Client, kind: &str, changes: Changes) -> Store<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, kind));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    reflect(api, reflector::store::Writer::new(ar), changes, kind)
}

/// The policy resources, as reflected from the API server.
#[derive(Clone)]
pub struct PolicyStores {
    pub policies: Store<DynamicObject>,
    pub issuers: Store<DynamicObject>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the {0} watch never completed its first list (is the API server reachable, are the CRDs installed, does the RBAC allow list/watch?)")]
    NotReady(String),
}

/// What policy compilation depends on: every object's spec, labels and annotations (not its
/// status or resourceVersion), so status writes never cause a reload.
type SpecFingerprint = Vec<(ObjectKey, String)>;

fn spec_fingerprint(stores: &PolicyStores) -> SpecFingerprint {
    let mut out = Vec::new();
    for (kind, store) in [
        ("TokenIssuer", &stores.issuers),
        ("AccessPolicy", &stores.policies),
    ] {
        for o in store.state() {
            let m = &o.metadata;
            let key = ObjectKey::new(
                kind,
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default(),
            );
            let relevant =
                serde_json::json!([o.data.get("spec"), m.labels, m.annotations, m.generation]);
            out.push((key, relevant.to_string()));
        }
    }
    out.sort();
    out
}

/// Watches AccessPolicies and TokenIssuers; returns the compiled state (after the first full
/// list) and keeps it current. Objects are accepted one by one (`pqmesh_policy::admit`): an
/// invalid object — present at start or arriving later — affects only itself, so nothing a user
/// creates keeps the control plane from starting. Changes to status only are ignored.
pub async fn watch_policies(
    client: &kube::Client,
    trust_domain: &str,
    metrics: Arc<Metrics>,
    ready_within: Duration,
) -> Result<(watch::Receiver<Arc<PolicyState>>, PolicyStores), SourceError> {
    let (changes, mut changed) = watch::channel(0u64);
    let stores = PolicyStores {
        policies: reflect_custom(client, "AccessPolicy", changes.clone()),
        issuers: reflect_custom(client, "TokenIssuer", changes),
    };
    for (kind, store) in [
        ("AccessPolicy", &stores.policies),
        ("TokenIssuer", &stores.issuers),
    ] {
        tokio::time::timeout(ready_within, store.wait_until_ready())
            .await
            .map_err(|_| SourceError::NotReady(kind.to_owned()))?
            .map_err(|_| SourceError::NotReady(kind.to_owned()))?;
    }
    changed.borrow_and_update();
    let mut last_fingerprint = spec_fingerprint(&stores);
    let initial = compile(client, &stores, &PolicySet::default(), trust_domain).await;
    record(&metrics, &initial);
    let (tx, rx) = watch::channel(Arc::new(initial));
    let (client, trust_domain, loop_stores) =
        (client.clone(), trust_domain.to_owned(), stores.clone());
    tokio::spawn(async move {
        let mut recheck = tokio::time::interval(SECRET_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        loop {
            let secrets_only = tokio::select! {
                changed = changed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                _ = recheck.tick() => true,
            };
            if tx.is_closed() {
                return;
            }
            if secrets_only {
                // Secrets are not watched (that would need list/watch on every Secret): they
                // are re-read now and then, so a client Secret created or rotated after its
                // TokenIssuer takes effect without an edit of the issuer.
                let previous = tx.borrow().clone();
                if read_secrets(&client, &previous.set).await == previous.secrets {
                    continue; // nothing to recompile
                }
                let state = compile(&client, &loop_stores, &previous.set, &trust_domain).await;
                record(&metrics, &state);
                tracing::info!("introspection client Secrets changed");
                let _ = tx.send(Arc::new(state));
                continue;
            }
            tokio::time::sleep(DEBOUNCE).await;
            changed.borrow_and_update();
            let fingerprint = spec_fingerprint(&loop_stores);
            if fingerprint == last_fingerprint {
                continue; // a status write (ours or another replica's): nothing to compile
            }
            last_fingerprint = fingerprint;
            let previous = tx.borrow().set.clone();
            let state = compile(&client, &loop_stores, &previous, &trust_domain).await;
            record(&metrics, &state);
            tracing::info!(
                policies = state.set.policies.len(),
                issuers = state.set.issuers.len(),
                refused = state.admitted.rejected(),
                "policies changed"
            );
            let _ = tx.send(Arc::new(state));
        }
    });
    Ok((rx, stores))
}

/// Judges every reflected object, and reads the introspection client Secrets of the issuers in
/// force.
async fn compile(
    client: &kube::Client,
    stores: &PolicyStores,
    last_good: &PolicySet,
    trust_domain: &str,
) -> PolicyState {
    let mut candidates = Vec::new();
    for (kind, store) in [
        ("TokenIssuer", &stores.issuers),
        ("AccessPolicy", &stores.policies),
    ] {
        let mut objects = store.state();
        objects.sort_by_key(|o| (o.metadata.namespace.clone(), o.metadata.name.clone()));
        for object in objects {
            let m = &object.metadata;
            candidates.push(Candidate {
                key: ObjectKey::new(
                    kind,
                    m.namespace.as_deref().unwrap_or_default(),
                    m.name.as_deref().unwrap_or_default(),
                ),
                source: String::new(),
                generation: m.generation,
                created: m.creation_timestamp.as_ref().map(|t| t.0.to_string()),
                parsed: to_policy_resource(kind, &object),
                reach: (kind == "AccessPolicy").then(|| Reach::of(&object.data)),
            });
        }
    }
    let admitted = admit(candidates, last_good, trust_domain);
    let secrets = read_secrets(client, &admitted.set).await;
    PolicyState::new(admitted, secrets)
}

/// The introspection client Secrets of the issuers in force in `set`.
async fn read_secrets(client: &kube::Client, set: &PolicySet) -> SecretTable {
    let mut secrets = SecretTable::default();
    for issuer in &set.issuers {
        let Some(introspection) = &issuer.spec.introspection else {
            continue;
        };
        let (ns, name) = (
            issuer.metadata.namespace.as_str(),
            introspection.client_secret_ref.name.as_str(),
        );
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(secret)) => {
                let data: HashMap<String, String> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
                    .collect();
                secrets.insert(ns, name, data);
            }
            // The issuer's ResolvedRefs condition says so; the workloads using it keep their
            // last snapshot.
            Ok(None) => {}
            Err(e) => {
                tracing::error!(namespace = ns, secret = name, error = %e, "cannot read an introspection client Secret")
            }
        }
    }
    secrets
}

/// A reflected custom resource as the policy crate's resource: only name, namespace, labels,
/// annotations and spec are carried over (status and server-set metadata are not policy).
pub fn to_policy_resource(kind: &str, object: &DynamicObject) -> Result<PolicyResource, String> {
    let meta = &object.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let value = serde_json::json!({
        "kind": kind,
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta.labels.clone().unwrap_or_default(),
            "annotations": meta.annotations.clone().unwrap_or_default(),
        },
        "spec": object.data.get("spec").cloned().unwrap_or(serde_json::Value::Null),
    });
    serde_json::from_value(value).map_err(|e| format!("{kind} {namespace}/{name}: {e}"))
}

/// Pods, Services and EndpointSlices, reflected cluster-wide.
#[derive(Clone)]
pub struct WorkloadStores {
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
}

/// Watches pods, services and slices; returns the discovery table and the pod store.
pub async fn watch_workloads(
    client: &kube::Client,
    trust_domain: &str,
    metrics: Arc<Metrics>,
    ready_within: Duration,
) -> Result<(watch::Receiver<Arc<EndpointTable>>, WorkloadStores), SourceError> {
    let (changes, mut changed) = watch::channel(0u64);
    let stores = WorkloadStores {
        pods: reflect(
            Api::all(client.clone()),
            Default::default(),
            changes.clone(),
            "Pod",
        ),
        services: reflect(
            Api::all(client.clone()),
            Default::default(),
            changes.clone(),
            "Service",
        ),
        slices: reflect(
            Api::all(client.clone()),
            Default::default(),
            changes,
            "EndpointSlice",
        ),
    };
    let wait = async {
        stores.pods.wait_until_ready().await.ok();
        stores.services.wait_until_ready().await.ok();
        stores.slices.wait_until_ready().await.ok();
    };
    tokio::time::timeout(ready_within, wait)
        .await
        .map_err(|_| SourceError::NotReady("Pod/Service/EndpointSlice".into()))?;
    changed.borrow_and_update();
    let table = endpoint_table(&stores, trust_domain);
    metrics.endpoints.set(table.len() as i64);
    let (tx, rx) = watch::channel(Arc::new(table));
    let (trust_domain, loop_stores) = (trust_domain.to_owned(), stores.clone());
    tokio::spawn(async move {
        while changed.changed().await.is_ok() {
            tokio::time::sleep(DEBOUNCE).await;
            changed.borrow_and_update();
            let table = endpoint_table(&loop_stores, &trust_domain);
            metrics.endpoints.set(table.len() as i64);
            if tx.send(Arc::new(table)).is_err() {
                return;
            }
        }
    });
    Ok((rx, stores))
}

/// Whether the injector gave this pod a sidecar (the native sidecar init container).
pub fn is_meshed(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .any(|c| c.name == PROXY_CONTAINER)
    })
}

fn pod_identity(pod: &Pod, trust_domain: &str) -> Option<SpiffeId> {
    let ns = pod.metadata.namespace.as_deref()?;
    let sa = pod
        .spec
        .as_ref()?
        .service_account_name
        .as_deref()
        .unwrap_or("default");
    SpiffeId::new(trust_domain, ns, sa).ok()
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return vec![];
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// The discovery table: every meshed pod's IPs (all ports) with its service account's identity,
/// and each Service's cluster IPs and ports with their ready endpoints (pod IP, target port from
/// the EndpointSlice, each with its own identity or unmeshed), so the client sidecar balances
/// over them itself and requires each endpoint's identity. A Service without any meshed endpoint
/// is left out (unmeshed: plaintext through kube-proxy, or refused, per the client's setting).
pub fn endpoint_table(stores: &WorkloadStores, trust_domain: &str) -> EndpointTable {
    let mut table = EndpointTable::default();
    let mut by_ip: HashMap<IpAddr, Option<SpiffeId>> = HashMap::new();
    for pod in stores.pods.state() {
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if finished || pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            continue;
        }
        let id = if is_meshed(&pod) {
            pod_identity(&pod, trust_domain)
        } else {
            None
        };
        for ip in pod_ips(&pod) {
            by_ip.insert(ip, id.clone());
            if let Some(id) = &id {
                if let Err(e) = table.insert(ip, None, id.clone()) {
                    tracing::warn!(error = %e, pod = pod.metadata.name.as_deref().unwrap_or_default(), "pod IP left out of discovery");
                }
            }
        }
    }
    for service in stores.services.state() {
        let (Some(ns), Some(name), Some(spec)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
            service.spec.as_ref(),
        ) else {
            continue;
        };
        // clusterIPs repeats clusterIP (its first entry) on current API servers.
        let cluster_ips: std::collections::BTreeSet<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if cluster_ips.is_empty() {
            continue; // headless: clients dial pod IPs, which are in the table already
        }
        let slices: Vec<_> = stores
            .slices
            .state()
            .into_iter()
            .filter(|slice| {
                slice.metadata.namespace.as_deref() == Some(ns)
                    && slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .map(String::as_str)
                        == Some(name)
            })
            .collect();
        for service_port in spec.ports.iter().flatten() {
            let Ok(port) = u16::try_from(service_port.port) else {
                continue;
            };
            // An EndpointSlice names its ports like the Service's (unnamed: empty or absent).
            let port_name = service_port.name.as_deref().unwrap_or("");
            let mut backends: Vec<Backend> = Vec::new();
            for slice in &slices {
                let Some(target) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for endpoint in &slice.endpoints {
                    // Not ready (starting, failing its probe, terminating): kube-proxy skips it too.
                    if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for ip in endpoint
                        .addresses
                        .iter()
                        .filter_map(|a| a.parse::<IpAddr>().ok())
                    {
                        let addr = std::net::SocketAddr::new(ip, target);
                        if backends.iter().any(|b| b.addr == addr) {
                            continue;
                        }
                        let identity = by_ip.get(&ip).cloned().flatten();
                        backends.push(Backend { addr, identity });
                    }
                }
            }
            // Without a meshed backend nothing changes for clients: plaintext through kube-proxy
            // (or refused, per the client's setting), as before the mesh.
            if backends.iter().all(|b| b.identity.is_none()) {
                continue;
            }
            let identities: std::collections::BTreeSet<_> =
                backends.iter().map(|b| b.identity.as_ref()).collect();
            if identities.len() > 1 {
                tracing::debug!(service = %format!("{ns}/{name}"), port, identities = identities.len(),
                    "service has backends of several identities (or unmeshed ones): clients balance per endpoint");
            }
            for ip in &cluster_ips {
                if let Err(e) = table.insert_service(*ip, port, backends.clone()) {
                    tracing::warn!(error = %e, service = %format!("{ns}/{name}"), "service left out of discovery");
                }
            }
        }
    }
    table
}

/// Labels straight from the Pod object, for policy selection.
pub struct PodLabels(pub Store<Pod>);

impl WorkloadLabels for PodLabels {
    fn labels(
        &self,
        namespace: &str,
        pod: &str,
        service_account: &str,
    ) -> Result<BTreeMap<String, String>, Status> {
        if pod.is_empty() {
            return Err(Status::invalid_argument(
                "hello.pod_name is required in Kubernetes mode (POD_NAME from the downward API)",
            ));
        }
        let object = self
            .0
            .get(&ObjectRef::new(pod).within(namespace))
            .ok_or_else(|| {
                Status::unavailable(format!("pod {namespace}/{pod} is not known (yet); retry"))
            })?;
        let runs_as = object
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        if runs_as != service_account {
            return Err(Status::permission_denied(format!(
                "pod {namespace}/{pod} runs as service account {runs_as:?}, not {service_account:?}"
            )));
        }
        Ok(object.metadata.labels.clone().unwrap_or_default())
    }
}
