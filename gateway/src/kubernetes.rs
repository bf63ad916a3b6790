//! Kubernetes mode (`--kubernetes`): the gateway's documents come from the API server instead of
//! a directory, and go through the same judgement ([`crate::program`]).
//! - Reflectors (list, then watch; resumed with back-off) on GatewayClasses, Gateways and
//!   HTTPRoutes (`gateway.networking.k8s.io/v1`), EdgePolicies and TokenIssuers
//!   (`pqmesh.io/v1alpha1`), and Services (a backendRef's cluster IP and ports).
//! - Secrets are not listed or watched (that would need list/watch on every Secret of the
//!   cluster): the ones the configuration names — listener certificates of our Gateways, client
//!   Secrets of the TokenIssuers our EdgePolicies use — are read by name at every change and
//!   every [`SECRET_RECHECK`], as the control plane reads its client Secrets.
//! - Backends: a Service's cluster IP and port are asked of the control plane's discovery (the
//!   sidecar's client, over the gateway's mesh certificate), which answers with the endpoints
//!   and the identity each must present.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use pqmesh_mtls::reflect::reflect;
use pqmesh_sidecar::discovery::{Discovery, DiscoveryError, Resolved};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::CONTROLLER_NAME;
use crate::load::{CertSource, Documents, Endpoint, SecretData, SecretMap};

/// Changes arriving together (an apply of several objects) are judged once.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the named Secrets are read again (they are not watched).
pub const SECRET_RECHECK: Duration = Duration::from_secs(10);
/// How long the first list of every kind may take before start-up fails.
pub const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(60);

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const GATEWAY_VERSION: &str = "v1";
pub const PQMESH_GROUP: &str = "pqmesh.io";
pub const PQMESH_VERSION: &str = "v1alpha1";

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("cannot reach the Kubernetes API server: {0}")]
    Client(String),
    #[error("the {0} watch never completed its first list (is the API server reachable, are the Gateway API and pqmesh CRDs installed, does the RBAC allow list/watch?)")]
    NotReady(String),
}

/// The kinds the gateway reads, as `(kind, group, version)`.
pub const KINDS: &[(&str, &str, &str)] = &[
    ("GatewayClass", GATEWAY_GROUP, GATEWAY_VERSION),
    ("Gateway", GATEWAY_GROUP, GATEWAY_VERSION),
    ("HTTPRoute", GATEWAY_GROUP, GATEWAY_VERSION),
    ("EdgePolicy", PQMESH_GROUP, PQMESH_VERSION),
    ("TokenIssuer", PQMESH_GROUP, PQMESH_VERSION),
];

pub fn api_resource(kind: &str) -> ApiResource {
    let (_, group, version) = KINDS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .copied()
        .unwrap_or((kind, PQMESH_GROUP, PQMESH_VERSION));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// The reflected objects.
#[derive(Clone)]
pub struct Sources {
    /// Per entry of [`KINDS`], same order.
    pub objects: Vec<(&'static str, Store<DynamicObject>)>,
    pub services: Store<Service>,
}

impl Sources {
    pub fn store(&self, kind: &str) -> Option<&Store<DynamicObject>> {
        self.objects
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| s)
    }

    fn state(&self, kind: &str) -> Vec<Arc<DynamicObject>> {
        let mut objects = self.store(kind).map(|s| s.state()).unwrap_or_default();
        objects.sort_by_key(|o| (o.metadata.namespace.clone(), o.metadata.name.clone()));
        objects
    }
}

/// Starts the reflectors and waits for every first list. `changes` moves on every change.
pub async fn watch_sources(
    client: &kube::Client,
    ready_within: Duration,
) -> Result<(Sources, watch::Receiver<u64>), KubernetesError> {
    let (changes, changed) = watch::channel(0u64);
    let mut objects = Vec::new();
    for (kind, _, _) in KINDS {
        let ar = api_resource(kind);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let store = reflect(
            api,
            reflector::store::Writer::new(ar),
            changes.clone(),
            kind,
        );
        objects.push((*kind, store));
    }
    let services = reflect(
        Api::all(client.clone()),
        Default::default(),
        changes,
        "Service",
    );
    let sources = Sources { objects, services };
    for (kind, store) in &sources.objects {
        tokio::time::timeout(ready_within, store.wait_until_ready())
            .await
            .map_err(|_| KubernetesError::NotReady((*kind).to_owned()))?
            .map_err(|_| KubernetesError::NotReady((*kind).to_owned()))?;
    }
    tokio::time::timeout(ready_within, sources.services.wait_until_ready())
        .await
        .map_err(|_| KubernetesError::NotReady("Service".into()))?
        .map_err(|_| KubernetesError::NotReady("Service".into()))?;
    Ok((sources, changed))
}

/// A reflected object as the document local mode would read from a file: apiVersion, kind,
/// the metadata judgement uses, and spec (status and server-set metadata are not configuration).
pub fn document(kind: &str, object: &DynamicObject) -> Value {
    let m = &object.metadata;
    let ar = api_resource(kind);
    let mut metadata = json!({"name": m.name.clone().unwrap_or_default()});
    if let Some(ns) = &m.namespace {
        metadata["namespace"] = json!(ns);
    }
    if let Some(t) = &m.creation_timestamp {
        metadata["creationTimestamp"] = json!(t.0.to_string());
    }
    if let Some(l) = &m.labels {
        metadata["labels"] = json!(l);
    }
    if let Some(a) = &m.annotations {
        metadata["annotations"] = json!(a);
    }
    if let Some(g) = m.generation {
        metadata["generation"] = json!(g);
    }
    json!({
        "apiVersion": ar.api_version,
        "kind": kind,
        "metadata": metadata,
        "spec": object.data.get("spec").cloned().unwrap_or(Value::Null),
    })
}

fn name_of(o: &DynamicObject) -> String {
    format!(
        "{}/{}",
        o.metadata.namespace.as_deref().unwrap_or_default(),
        o.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The Secrets the configuration names: certificates of the listeners of our Gateways, and the
/// client Secrets of TokenIssuers that EdgePolicies use. Only these are read.
pub fn named_secrets(sources: &Sources) -> Vec<(String, String)> {
    let ours: Vec<String> = sources
        .state("GatewayClass")
        .iter()
        .filter(|c| c.data["spec"]["controllerName"] == CONTROLLER_NAME)
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let mut out = Vec::new();
    for g in sources.state("Gateway") {
        let class = g.data["spec"]["gatewayClassName"]
            .as_str()
            .unwrap_or_default();
        let Some(ns) = g
            .metadata
            .namespace
            .clone()
            .filter(|_| ours.iter().any(|c| c == class))
        else {
            continue;
        };
        for l in g.data["spec"]["listeners"].as_array().into_iter().flatten() {
            for r in l["tls"]["certificateRefs"].as_array().into_iter().flatten() {
                // Only the Gateway's own namespace: others need a ReferenceGrant (refused).
                let same_ns = r["namespace"].as_str().is_none_or(|n| n == ns);
                if let (Some(name), true) = (r["name"].as_str(), same_ns) {
                    out.push((ns.clone(), name.to_owned()));
                }
            }
        }
    }
    let issuers = sources.state("TokenIssuer");
    for p in sources.state("EdgePolicy") {
        let (Some(ns), Some(issuer)) = (
            p.metadata.namespace.as_deref(),
            p.data["spec"]["token"]["issuer"].as_str(),
        ) else {
            continue;
        };
        let found = issuers.iter().find(|i| {
            i.metadata.namespace.as_deref() == Some(ns)
                && i.metadata.name.as_deref() == Some(issuer)
        });
        if let Some(secret) =
            found.and_then(|i| i.data["spec"]["introspection"]["clientSecretRef"]["name"].as_str())
        {
            out.push((ns.to_owned(), secret.to_owned()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Reads `names` (absent ones are left out: the verdicts say what is missing).
pub async fn read_secrets(client: &kube::Client, names: &[(String, String)]) -> SecretMap {
    let mut out = BTreeMap::new();
    for (ns, name) in names {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(secret)) => {
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
                    .collect();
                out.insert(
                    (ns.clone(), name.clone()),
                    SecretData {
                        kind: Some(secret.type_.unwrap_or_else(|| "Opaque".into())),
                        data,
                    },
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(secret = %format!("{ns}/{name}"), error = %e, "cannot read a Secret the gateway's configuration names")
            }
        }
    }
    SecretMap(out)
}

/// The documents of the reflected objects, with the Secrets they name.
pub fn documents(sources: &Sources, secrets: SecretMap) -> Documents {
    let mut texts = Vec::new();
    for (kind, _, _) in KINDS {
        for o in sources.state(kind) {
            texts.push((
                format!("{kind} {}", name_of(&o)),
                document(kind, &o).to_string(),
            ));
        }
    }
    Documents {
        texts,
        secrets,
        certs: CertSource::Secrets,
        backends: Default::default(),
    }
}

/// A Service's endpoints in Kubernetes mode: its cluster IP from the Service, its endpoints
/// and their identities from the control plane's discovery.
#[derive(Clone)]
pub struct ServiceEndpoints {
    pub services: Store<Service>,
    pub discovery: Discovery,
}

impl ServiceEndpoints {
    fn service(&self, service: &str) -> Option<Arc<Service>> {
        let (ns, name) = service.split_once('/')?;
        self.services.get(&ObjectRef::new(name).within(ns))
    }

    /// Whether `service` (`<namespace>/<name>`) exists and has `port`.
    pub fn knows(&self, service: &str, port: u16) -> bool {
        self.service(service).is_some_and(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .is_some_and(|ports| ports.iter().any(|p| p.port == i32::from(port)))
        })
    }

    /// The mesh endpoints of `service` at `port`. Unmeshed endpoints are never used (the
    /// gateway forwards only over mesh mTLS); no answer from discovery is 503, never a guess.
    pub async fn resolve(
        &self,
        service: &str,
        port: u16,
    ) -> Result<Vec<Endpoint>, (StatusCode, String)> {
        let unknown = || {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("backend {service}:{port} is not known"),
            )
        };
        if !self.knows(service, port) {
            return Err(unknown());
        }
        let object = self.service(service).ok_or_else(unknown)?;
        let ip: IpAddr = object
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("backend {service}: headless or without a cluster IP (not supported)"),
                )
            })?;
        let unavailable = |e: DiscoveryError| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        match self
            .discovery
            .resolve(SocketAddr::new(ip, port))
            .await
            .map_err(unavailable)?
        {
            Resolved::Meshed(identity) => Ok(vec![Endpoint {
                addr: SocketAddr::new(ip, port),
                identity,
            }]),
            Resolved::Service(endpoints) => Ok(endpoints
                .iter()
                .filter_map(|e| {
                    Some(Endpoint {
                        addr: e.addr,
                        identity: e.identity.clone()?,
                    })
                })
                .collect()),
            Resolved::NotMeshed => Err((
                StatusCode::BAD_GATEWAY,
                format!("backend {service}:{port} is not in the mesh (the gateway forwards over mesh mTLS only)"),
            )),
        }
    }
}
