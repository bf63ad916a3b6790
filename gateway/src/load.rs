//! The model the gateway serves and the documents it is judged from (`crate::judge`); reading
//! local mode's directory. Every object is judged on its own (as
//! `pqmesh_policy::admit` does for TokenIssuers): an invalid object is left out with a verdict
//! saying why, and affects nothing else. What is left becomes the [`Model`] the proxy serves.
//!
//! Layout of the directory (`PQMESH_GATEWAY_DIR`):
//! - `config/*.yaml`: GatewayClass, Gateway, HTTPRoute, EdgePolicy and TokenIssuer documents;
//! - `secrets.yaml`: introspection client secrets (`secrets: [{namespace, name, data}]`, 0600);
//! - `certs/<namespace>/<secret name>/tls.crt` and `tls.key`: what a listener's
//!   `certificateRefs` name (a `kubernetes.io/tls` Secret's two keys, as files);
//! - `backends.yaml`: the mesh endpoints of each Service a `backendRef` names.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pqmesh_mtls::SpiffeId;
use pqmesh_policy::{CompiledIssuer, PolicySet, Secrets};
use serde::Deserialize;

use crate::api::*;
pub use crate::judge::{check_backends, is_service, judge, judge_with};

/// One object's verdict (what Kubernetes mode writes as `status.conditions`).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub kind: String,
    /// `<namespace>/<name>`.
    pub name: String,
    pub source: String,
    /// `Accepted`: `Err(message)` when refused.
    pub accepted: Result<(), String>,
    /// `ResolvedRefs`: `Err(message)` when a reference is missing (the object stays in force
    /// and fails closed where the reference was needed).
    pub resolved_refs: Result<(), String>,
    /// The Gateway API reasons of `accepted` and `resolved_refs` when they are `Err`.
    pub accepted_reason: &'static str,
    pub refs_reason: &'static str,
    /// The `metadata.generation` judged (status conditions' `observedGeneration`).
    pub generation: Option<i64>,
    /// A Gateway's listeners, in spec order.
    pub listeners: Vec<ListenerVerdict>,
    /// An HTTPRoute's verdict per parentRef naming a Gateway of ours.
    pub parents: Vec<ParentVerdict>,
}

/// One listener's conditions (`status.listeners[]` of its Gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerVerdict {
    pub name: String,
    /// `Accepted`/`Programmed`: `Err((reason, message))` when the listener is left out.
    pub accepted: Result<(), (&'static str, String)>,
    /// `ResolvedRefs`: the certificate Secret.
    pub resolved_refs: Result<(), (&'static str, String)>,
    /// How many accepted routes attach to it.
    pub attached_routes: usize,
}

/// One parentRef of an HTTPRoute (`status.parents[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParentVerdict {
    pub parent: crate::api::ParentRef,
    pub accepted: Result<(), (&'static str, String)>,
    pub resolved_refs: Result<(), (&'static str, String)>,
}

/// An HTTPS listener's certificate as read from `certs/`.
pub struct CertFiles {
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub key: rustls_pki_types::PrivateKeyDer<'static>,
}

pub struct ListenerModel {
    /// `<namespace>/<gateway>`.
    pub gateway: String,
    pub name: String,
    pub hostname: Option<String>,
    pub port: u16,
    pub tls: Option<Arc<CertFiles>>,
    /// The Secret the certificate came from (`namespace`, `name`), watched for changes.
    pub cert_ref: Option<(String, String)>,
    pub require_pq: bool,
}

/// An EdgePolicy in force on one HTTPRoute, with its issuer compiled (secret resolved).
#[derive(PartialEq)]
pub struct EdgeModel {
    pub name: String,
    /// `None`: the TokenIssuer (or its secret) is missing: every request is refused (503).
    pub issuer: Option<CompiledIssuer>,
    pub token: Option<EdgeToken>,
    pub rate_limit: Option<RateLimitSpec>,
}

pub struct RouteModel {
    /// `<namespace>/<name>`.
    pub name: String,
    pub namespace: String,
    pub created: Option<String>,
    pub spec: HttpRouteSpec,
    pub edge: Option<EdgeModel>,
    /// Why the route fails closed (503 for every request): an EdgePolicy targeting it was
    /// refused, or several target it (review 7, F2/F3); or it is the placeholder of a refused
    /// HTTPRoute, holding what that route declares (review 10, F1).
    pub closed: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub identity: SpiffeId,
}

#[derive(Default)]
pub struct Model {
    pub listeners: Vec<ListenerModel>,
    pub routes: Vec<RouteModel>,
    /// `(<namespace>/<service>, port)` → endpoints.
    pub backends: HashMap<(String, u16), Vec<Endpoint>>,
    pub verdicts: Vec<Verdict>,
    /// The accepted GatewayClasses of ours (by name).
    pub our_classes: Vec<String>,
    /// The TokenIssuers in force (the last good versions for the next judgement).
    pub issuers: PolicySet,
    /// The HTTPRoutes, EdgePolicies and files in force, for the next judgement (review 10).
    pub last_good: LastGood,
}

/// What one judgement accepted, so that the next keeps it in force when an edit is refused
/// (review 10, F1/F2): a refused edit must never open what the accepted version closed. Lives
/// in the running gateway; a restart starts without it (refused objects then get placeholders).
#[derive(Debug, Clone, Default)]
pub struct LastGood {
    /// HTTPRoutes in force by `<namespace>/<name>`, with the source they were read from (the
    /// definition read from there is the object, whatever its content: outside review 12).
    pub routes: BTreeMap<String, (HttpRoute, String)>,
    /// EdgePolicies in force by `<namespace>/<name>`, with the source they were read from.
    pub edge_policies: BTreeMap<String, (EdgePolicy, String)>,
    /// Local mode: each file's text the last time it read as YAML (and had documents).
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct SecretsFile {
    #[serde(default)]
    secrets: Vec<SecretEntry>,
}

#[derive(Debug, Deserialize)]
struct SecretEntry {
    namespace: String,
    name: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// A Secret as the gateway uses it: its type (`None` in local mode, where files have none) and
/// its data as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretData {
    pub kind: Option<String>,
    pub data: BTreeMap<String, String>,
}

/// The Secrets one configuration is judged with, by `(namespace, name)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretMap(pub BTreeMap<(String, String), SecretData>);

impl Secrets for SecretMap {
    fn get(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        self.0
            .get(&(namespace.to_owned(), name.to_owned()))
            .and_then(|s| s.data.get(key).cloned())
    }
}

/// Where listener certificates are read from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// Local mode: `certs/<namespace>/<name>/tls.crt` and `tls.key` under this directory.
    Dir(std::path::PathBuf),
    /// Kubernetes mode: the `kubernetes.io/tls` Secrets in [`Documents::secrets`].
    Secrets,
}

/// Everything one configuration is judged from, whichever mode read it: local mode reads it
/// from the directory, Kubernetes mode from the API server; both then go through [`judge`].
pub struct Documents {
    /// `(source, YAML or JSON text)`: GatewayClass, Gateway, HTTPRoute, EdgePolicy and
    /// TokenIssuer documents.
    pub texts: Vec<(String, String)>,
    pub secrets: SecretMap,
    pub certs: CertSource,
    /// Local mode's `backends.yaml` (Kubernetes mode asks discovery instead).
    pub backends: HashMap<(String, u16), Vec<Endpoint>>,
}

impl Documents {
    /// The certificate and key of the TLS Secret `namespace/name`.
    pub fn cert(&self, namespace: &str, name: &str) -> Result<CertFiles, String> {
        match &self.certs {
            CertSource::Dir(dir) => read_cert(&cert_dir(dir, namespace, name)),
            CertSource::Secrets => {
                let secret = self
                    .secrets
                    .0
                    .get(&(namespace.to_owned(), name.to_owned()))
                    .ok_or("not found")?;
                if let Some(kind) = secret.kind.as_deref().filter(|k| *k != TLS_SECRET_TYPE) {
                    return Err(format!("type {kind:?} is not {TLS_SECRET_TYPE}"));
                }
                let get = |key: &str| {
                    secret
                        .data
                        .get(key)
                        .map(String::as_bytes)
                        .ok_or_else(|| format!("no {key}"))
                };
                parse_cert(get("tls.crt")?, get("tls.key")?)
            }
        }
    }
}

/// The type a listener's certificate Secret must have in Kubernetes mode.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> LoadError {
    LoadError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads the directory and judges it. Only an unreadable directory, `secrets.yaml` or
/// `backends.yaml` fails as a whole; every object in `config/` is judged on its own.
pub fn load(dir: &Path) -> Result<Model, LoadError> {
    Ok(judge_documents(&local_documents(dir)?))
}

/// Judges one set of documents (local or Kubernetes mode alike).
pub fn judge_documents(docs: &Documents) -> Model {
    let mut model = judge(&docs.texts, &docs.secrets, &|ns, name| docs.cert(ns, name));
    model.backends = docs.backends.clone();
    model
}

/// Reads the directory's documents, Secrets and backends (local mode).
pub fn local_documents(dir: &Path) -> Result<Documents, LoadError> {
    let mut texts = Vec::new();
    let config_dir = dir.join("config");
    let mut entries: Vec<_> = std::fs::read_dir(&config_dir)
        .map_err(|e| file_error(&config_dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
        texts.push((path.display().to_string(), text));
    }
    let secrets_path = dir.join("secrets.yaml");
    let secrets = match std::fs::read_to_string(&secrets_path) {
        Ok(text) => {
            check_private(&secrets_path)?;
            serde_yaml::from_str::<SecretsFile>(&text)
                .map_err(|e| file_error(&secrets_path, pqmesh_policy::redact::yaml_error(&e)))?
                .secrets
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(file_error(&secrets_path, e)),
    };
    let backends_path = dir.join("backends.yaml");
    let backends = match std::fs::read_to_string(&backends_path) {
        Ok(text) => serde_yaml::from_str::<BackendsFile>(&text)
            .map_err(|e| file_error(&backends_path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BackendsFile::default(),
        Err(e) => return Err(file_error(&backends_path, e)),
    };
    let secrets = SecretMap(
        secrets
            .into_iter()
            .map(|s| {
                let data = SecretData {
                    kind: None,
                    data: s.data,
                };
                ((s.namespace, s.name), data)
            })
            .collect(),
    );
    Ok(Documents {
        texts,
        secrets,
        certs: CertSource::Dir(dir.to_owned()),
        backends: backend_table(&backends).map_err(|e| file_error(&backends_path, e))?,
    })
}

fn check_private(path: &Path) -> Result<(), LoadError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| file_error(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(file_error(
            path,
            format!(
                "mode {:o} lets others read client secrets; chmod 600",
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

/// The files a TLS Secret is read from in local mode.
pub fn cert_dir(dir: &Path, namespace: &str, name: &str) -> std::path::PathBuf {
    dir.join("certs").join(namespace).join(name)
}

pub fn read_cert(dir: &Path) -> Result<CertFiles, String> {
    let read = |f: &str| {
        let path = dir.join(f);
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    parse_cert(&read("tls.crt")?, &read("tls.key")?).map_err(|e| format!("{}: {e}", dir.display()))
}

/// A `kubernetes.io/tls` Secret's two keys: the chain (leaf first) and a PKCS#8, PKCS#1 or
/// SEC1 key, as PEM.
pub fn parse_cert(crt: &[u8], key: &[u8]) -> Result<CertFiles, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt: no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("tls.key: {e}"))?;
    Ok(CertFiles { chain, key })
}

pub fn backend_table(file: &BackendsFile) -> Result<HashMap<(String, u16), Vec<Endpoint>>, String> {
    let mut out = HashMap::new();
    for s in &file.services {
        if !s.name.contains('/') {
            return Err(format!(
                "service {:?}: name must be <namespace>/<name>",
                s.name
            ));
        }
        let mut endpoints = Vec::new();
        for e in &s.endpoints {
            let addr = e
                .address
                .parse()
                .map_err(|err| format!("service {}: address {:?}: {err}", s.name, e.address))?;
            let identity = e
                .identity
                .parse()
                .map_err(|err| format!("service {}: identity {:?}: {err}", s.name, e.identity))?;
            endpoints.push(Endpoint { addr, identity });
        }
        out.insert((s.name.clone(), s.port), endpoints);
    }
    Ok(out)
}
