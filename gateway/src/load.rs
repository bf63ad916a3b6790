//! Reads the gateway's local directory and judges every object on its own (as
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
use pqmesh_policy::admit::{admit, candidates_from_yaml, Candidate};
use pqmesh_policy::{CompiledIssuer, PolicySet, Secrets};
use serde::Deserialize;

use crate::api::*;

/// One object's verdict (what Kubernetes mode would write as `status.conditions`).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// `allowedRoutes.namespaces.from: All`; otherwise (`Same`, the default) only routes in the
    /// Gateway's namespace attach.
    pub allow_all_namespaces: bool,
}

/// An EdgePolicy in force on one HTTPRoute, with its issuer compiled (secret resolved).
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
    /// refused, or several target it (review 7, F2/F3).
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

struct SecretTable(Vec<SecretEntry>);

impl Secrets for SecretTable {
    fn get(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
            .and_then(|s| s.data.get(key).cloned())
    }
}

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

/// Reads the directory. Only an unreadable directory, `secrets.yaml` or `backends.yaml` fails
/// as a whole; every object in `config/` is judged on its own.
pub fn load(dir: &Path) -> Result<Model, LoadError> {
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
    let mut model = judge(&texts, &SecretTable(secrets), &|ns, name| {
        read_cert(&cert_dir(dir, ns, name))
    });
    model.backends = backend_table(&backends).map_err(|e| file_error(&backends_path, e))?;
    Ok(model)
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
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let crt = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let chain = CertificateDer::pem_file_iter(&crt)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", crt.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", crt.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("{}: {e}", key.display()))?;
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

/// Judges every document of `texts` (file name, content). `certs` reads a TLS Secret.
pub fn judge(
    texts: &[(String, String)],
    secrets: &dyn Secrets,
    certs: &dyn Fn(&str, &str) -> Result<CertFiles, String>,
) -> Model {
    let mut model = Model::default();
    let mut classes = Vec::new();
    let mut gateways = Vec::new();
    let mut routes = Vec::new();
    let mut policies = Vec::new();
    // EdgePolicies refused before their spec was read: (`<ns>/<targetRef.name>`, policy name).
    let mut refused_targets: Vec<(String, String)> = Vec::new();
    let mut issuer_candidates: Vec<Candidate> = Vec::new();
    for (file, text) in texts {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let source = format!("{file} document {}", i + 1);
            let value = match serde_yaml::Value::deserialize(doc) {
                Ok(v) if v.is_null() => continue,
                Ok(v) => v,
                Err(e) => {
                    model
                        .verdicts
                        .push(refused("Unknown", &source, &source, e.to_string()));
                    break;
                }
            };
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .to_owned();
            let name = object_name(&value);
            macro_rules! parse {
                ($t:ty, $into:expr) => {
                    match serde_yaml::from_value::<$t>(value.clone()) {
                        Ok(o) => $into.push((o, source.clone())),
                        Err(e) => {
                            model
                                .verdicts
                                .push(refused(&kind, &name, &source, e.to_string()))
                        }
                    }
                };
            }
            match kind.as_str() {
                "GatewayClass" => parse!(GatewayClass, classes),
                "Gateway" => parse!(Gateway, gateways),
                "HTTPRoute" => parse!(HttpRoute, routes),
                "EdgePolicy" => {
                    if serde_yaml::from_value::<EdgePolicy>(value.clone()).is_err() {
                        if let Some(target) = raw_target(&value) {
                            refused_targets.push((target, name.clone()));
                        }
                    }
                    parse!(EdgePolicy, policies)
                }
                "TokenIssuer" => {
                    let text = serde_yaml::to_string(&value).unwrap_or_default();
                    issuer_candidates.extend(candidates_from_yaml(&text, &source));
                }
                other => model.verdicts.push(refused(
                    other,
                    &name,
                    &source,
                    format!(
                        "kind {other:?} is not supported here (GatewayClass, Gateway, HTTPRoute, \
                         EdgePolicy, TokenIssuer)"
                    ),
                )),
            }
        }
    }

    let issuers = admit(issuer_candidates, &PolicySet::default(), "cluster.local");
    for v in issuers.verdicts.values() {
        model.verdicts.push(Verdict {
            kind: v.key.kind.clone(),
            name: format!("{}/{}", v.key.namespace, v.key.name),
            source: v.source.clone(),
            accepted: if v.accepted.status {
                Ok(())
            } else {
                Err(v.accepted.message.clone())
            },
            resolved_refs: Ok(()),
        });
    }

    let mut our_classes = Vec::new();
    for (c, source) in classes {
        let name = c.metadata.name.clone();
        let verdict = check_api(&c.api_version, GATEWAY_API_VERSION).and_then(|()| {
            if c.spec.controller_name == CONTROLLER_NAME {
                Ok(())
            } else {
                Err(format!(
                    "controllerName {:?} is not this gateway's ({CONTROLLER_NAME}); its Gateways are left to that controller",
                    c.spec.controller_name
                ))
            }
        });
        if verdict.is_ok() {
            our_classes.push(name.clone());
        }
        model
            .verdicts
            .push(with(refs_ok("GatewayClass", &name, &source), verdict));
    }

    // Listeners may share a port when they share its protocol and differ in hostname (SNI and
    // Host pick one); anything else is a conflict, and the later listener is left out.
    let mut used_ports: HashMap<u16, Vec<(bool, Option<String>, String)>> = HashMap::new();
    let mut gateway_names = Vec::new();
    for (g, source) in gateways {
        let name = format!("{}/{}", g.metadata.namespace, g.metadata.name);
        let mut verdict = refs_ok("Gateway", &name, &source);
        let accepted = check_api(&g.api_version, GATEWAY_API_VERSION).and_then(|()| {
            if our_classes.contains(&g.spec.gateway_class_name) {
                Ok(())
            } else {
                Err(format!(
                    "gatewayClassName {:?} names no accepted GatewayClass of controller {CONTROLLER_NAME}",
                    g.spec.gateway_class_name
                ))
            }
        });
        if let Err(e) = accepted {
            model.verdicts.push(with(verdict, Err(e)));
            continue;
        }
        let mut problems = Vec::new();
        for l in &g.spec.listeners {
            match listener(&g.metadata.namespace, l, certs) {
                Ok(mut m) => {
                    let tls = m.tls.is_some();
                    let taken = used_ports.entry(l.port).or_default();
                    if let Some((_, _, other)) =
                        taken.iter().find(|(t, h, _)| *t != tls || *h == m.hostname)
                    {
                        problems.push(format!(
                            "listener {}: port {} is already served by {other} with another protocol or the same hostname",
                            l.name, l.port
                        ));
                        continue;
                    }
                    taken.push((
                        tls,
                        m.hostname.clone(),
                        format!("{name} listener {}", l.name),
                    ));
                    m.gateway = name.clone();
                    model.listeners.push(m);
                }
                Err(e) => problems.push(format!("listener {}: {e}", l.name)),
            }
        }
        if !problems.is_empty() {
            verdict.resolved_refs = Err(problems.join("; "));
        }
        gateway_names.push(name.clone());
        model.verdicts.push(verdict);
    }

    for (r, source) in routes {
        let name = format!("{}/{}", r.metadata.namespace, r.metadata.name);
        let mut verdict = refs_ok("HTTPRoute", &name, &source);
        if let Err(e) =
            check_api(&r.api_version, GATEWAY_API_VERSION).and_then(|()| check_route(&r.spec))
        {
            model.verdicts.push(with(verdict, Err(e)));
            continue;
        }
        let unknown: Vec<String> = r
            .spec
            .parent_refs
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.namespace.as_deref().unwrap_or(&r.metadata.namespace),
                    p.name
                )
            })
            .filter(|p| !gateway_names.contains(p))
            .collect();
        if !unknown.is_empty() {
            verdict.accepted = Err(format!(
                "parentRefs name no accepted Gateway: {}",
                unknown.join(", ")
            ));
        }
        let route = RouteModel {
            name,
            namespace: r.metadata.namespace.clone(),
            created: r.metadata.creation_timestamp.clone(),
            spec: r.spec,
            edge: None,
            closed: None,
        };
        if let Err(e) = listeners_allow(&route, &model.listeners) {
            verdict.accepted = verdict.accepted.and(Err(e));
        }
        verdict.resolved_refs = cross_namespace_backends(&route.namespace, &route.spec);
        model.verdicts.push(verdict);
        model.routes.push(route);
    }

    // Every EdgePolicy naming a route, accepted or not: more than one on a route is a conflict.
    let mut targeting: HashMap<String, Vec<String>> = HashMap::new();
    for (target, name) in &refused_targets {
        targeting
            .entry(target.clone())
            .or_default()
            .push(name.clone());
    }
    for (p, _) in &policies {
        targeting
            .entry(format!(
                "{}/{}",
                p.metadata.namespace, p.spec.target_ref.name
            ))
            .or_default()
            .push(format!("{}/{}", p.metadata.namespace, p.metadata.name));
    }

    for (p, source) in policies {
        let name = format!("{}/{}", p.metadata.namespace, p.metadata.name);
        let verdict = refs_ok("EdgePolicy", &name, &source);
        if let Err(e) =
            check_api(&p.api_version, PQMESH_API_VERSION).and_then(|()| check_policy(&p.spec))
        {
            model.verdicts.push(with(verdict, Err(e)));
            continue;
        }
        let target = format!("{}/{}", p.metadata.namespace, p.spec.target_ref.name);
        if let Some(all) = targeting.get(&target).filter(|all| all.len() > 1) {
            let others: Vec<&str> = all
                .iter()
                .map(String::as_str)
                .filter(|n| *n != name)
                .collect();
            model.verdicts.push(with(
                verdict,
                Err(format!(
                    "Conflicted: HTTPRoute {target} is also targeted by EdgePolicy {}; one EdgePolicy per route, and the route answers 503 until only one is left",
                    others.join(", ")
                )),
            ));
            continue;
        }
        let Some(route) = model.routes.iter_mut().find(|r| r.name == target) else {
            model.verdicts.push(with(
                verdict,
                Err(format!("targetRef: no HTTPRoute {target}")),
            ));
            continue;
        };
        let mut verdict = verdict;
        let issuer = match &p.spec.token {
            None => None,
            Some(t) => {
                let found = issuers.set.issuers.iter().find(|i| {
                    i.metadata.namespace == p.metadata.namespace && i.metadata.name == t.issuer
                });
                match found.map(|i| pqmesh_policy::compile::compile_issuer(i, secrets)) {
                    Some(Ok(c)) => Some(c),
                    Some(Err(e)) => {
                        verdict.resolved_refs =
                            Err(format!("token.issuer: {e}; requests on the route get 503"));
                        None
                    }
                    None => {
                        verdict.resolved_refs = Err(format!(
                            "token.issuer: no accepted TokenIssuer {}/{}; requests on the route get 503",
                            p.metadata.namespace, t.issuer
                        ));
                        None
                    }
                }
            }
        };
        model.verdicts.push(verdict);
        route.edge = Some(EdgeModel {
            name,
            issuer,
            token: p.spec.token.clone(),
            rate_limit: p.spec.rate_limit.clone(),
        });
    }
    close_unprotected_routes(&mut model, &targeting);
    model
}

/// Fails closed (review 7, F2/F3): a route targeted by a refused EdgePolicy, or by several,
/// answers 503 rather than being served without the protection someone meant it to have.
fn close_unprotected_routes(model: &mut Model, targeting: &HashMap<String, Vec<String>>) {
    for route in &mut model.routes {
        let Some(all) = targeting.get(&route.name) else {
            continue;
        };
        let why = if all.len() > 1 {
            format!("Conflicted: EdgePolicies {} all target it", all.join(", "))
        } else if route.edge.is_none() {
            format!("EdgePolicy {} targeting it was refused", all[0])
        } else {
            continue;
        };
        let message = format!("{why}; every request gets 503 until that is fixed");
        if let Some(v) = model
            .verdicts
            .iter_mut()
            .find(|v| v.kind == "HTTPRoute" && v.name == route.name)
        {
            v.resolved_refs = Err(match &v.resolved_refs {
                Ok(()) => message.clone(),
                Err(e) => format!("{e}; {message}"),
            });
        }
        route.closed = Some(message);
    }
}

/// `<namespace>/<spec.targetRef.name>` of an EdgePolicy document that did not parse.
fn raw_target(value: &serde_yaml::Value) -> Option<String> {
    let ns = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    let name = value.get("spec")?.get("targetRef")?.get("name")?.as_str()?;
    Some(format!("{ns}/{name}"))
}

/// `Accepted=False` (`NotAllowedByListeners`) when the route names its Gateways' listeners but
/// none of them admits routes from its namespace.
fn listeners_allow(route: &RouteModel, listeners: &[ListenerModel]) -> Result<(), String> {
    let named = listeners
        .iter()
        .any(|l| crate::routes::parent_ref_matches(route, l));
    if !named || listeners.iter().any(|l| crate::routes::attaches(route, l)) {
        return Ok(());
    }
    Err(format!(
        "NotAllowedByListeners: no listener it names admits routes from namespace {:?} (allowedRoutes.namespaces.from defaults to Same)",
        route.namespace
    ))
}

fn object_name(value: &serde_yaml::Value) -> String {
    let meta = value.get("metadata");
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str());
    format!(
        "{}/{}",
        get("namespace").unwrap_or("default"),
        get("name").unwrap_or("?")
    )
}

fn refused(kind: &str, name: &str, source: &str, message: String) -> Verdict {
    Verdict {
        kind: kind.to_owned(),
        name: name.to_owned(),
        source: source.to_owned(),
        accepted: Err(message),
        resolved_refs: Ok(()),
    }
}

fn refs_ok(kind: &str, name: &str, source: &str) -> Verdict {
    Verdict {
        kind: kind.to_owned(),
        name: name.to_owned(),
        source: source.to_owned(),
        accepted: Ok(()),
        resolved_refs: Ok(()),
    }
}

fn with(mut v: Verdict, accepted: Result<(), String>) -> Verdict {
    v.accepted = accepted;
    v
}

fn check_api(got: &str, want: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("apiVersion {got:?} is not supported (use {want})"))
    }
}

fn listener(
    namespace: &str,
    l: &Listener,
    certs: &dyn Fn(&str, &str) -> Result<CertFiles, String>,
) -> Result<ListenerModel, String> {
    if l.port == 0 {
        return Err("port 0".into());
    }
    let mut model = ListenerModel {
        gateway: String::new(),
        name: l.name.clone(),
        hostname: l.hostname.clone(),
        port: l.port,
        tls: None,
        cert_ref: None,
        require_pq: false,
        allow_all_namespaces: allow_all_namespaces(l)?,
    };
    match (l.protocol, &l.tls) {
        (Protocol::HTTP, None) => Ok(model),
        (Protocol::HTTP, Some(_)) => Err("protocol HTTP takes no tls".into()),
        (Protocol::HTTPS, None) => Err("protocol HTTPS needs tls.certificateRefs".into()),
        (Protocol::HTTPS, Some(tls)) => {
            if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
                return Err(format!(
                    "tls.mode {:?}: only Terminate is supported",
                    tls.mode
                ));
            }
            for (k, v) in &tls.options {
                match (k.as_str(), v.as_str()) {
                    (KEY_EXCHANGE_OPTION, "require-pq") => model.require_pq = true,
                    (KEY_EXCHANGE_OPTION, "prefer-pq") => {}
                    (KEY_EXCHANGE_OPTION, _) => {
                        return Err(format!(
                            "tls.options {k}: {v:?} (use prefer-pq or require-pq)"
                        ))
                    }
                    _ => return Err(format!("tls.options {k:?} is not supported")),
                }
            }
            let Some(r) = tls.certificate_refs.first() else {
                return Err("tls.certificateRefs is empty".into());
            };
            if tls.certificate_refs.len() > 1 {
                return Err(
                    "several certificateRefs are not supported yet (one per listener)".into(),
                );
            }
            if r.kind.as_deref().is_some_and(|k| k != "Secret")
                || r.group.as_deref().is_some_and(|g| !g.is_empty())
            {
                return Err("certificateRefs: only core Secrets".into());
            }
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            if ns != namespace {
                return Err(
                    "certificateRefs in another namespace need a ReferenceGrant (not supported)"
                        .into(),
                );
            }
            let files = certs(ns, &r.name).map_err(|e| format!("Secret {ns}/{}: {e}", r.name))?;
            model.tls = Some(Arc::new(files));
            model.cert_ref = Some((ns.to_owned(), r.name.clone()));
            Ok(model)
        }
    }
}

/// `allowedRoutes.namespaces.from` (review 7, F4): `Same` (default) or `All`; `Selector` needs
/// namespace labels, which local mode does not have.
fn allow_all_namespaces(l: &Listener) -> Result<bool, String> {
    let ns = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match ns.map(|n| (n.from, n.selector.is_some())) {
        None | Some((FromNamespaces::Same, false)) => Ok(false),
        Some((FromNamespaces::All, false)) => Ok(true),
        Some((FromNamespaces::Selector, _)) => Err(
            "allowedRoutes.namespaces.from: Selector is not supported in local mode (no namespace labels); use Same or All".into(),
        ),
        Some((_, true)) => Err("allowedRoutes.namespaces.selector only with from: Selector".into()),
    }
}

/// Refuses a cross-namespace `backendRef` (review 7, F4): it needs a ReferenceGrant, which this
/// gateway does not implement yet (Gateway API `ResolvedRefs=False`, reason `RefNotPermitted`).
fn cross_namespace_backends(namespace: &str, spec: &HttpRouteSpec) -> Result<(), String> {
    let other: Vec<String> = spec
        .rules
        .iter()
        .flat_map(|r| &r.backend_refs)
        .filter(|b| b.namespace.as_deref().is_some_and(|n| n != namespace))
        .map(|b| format!("{}/{}", b.namespace.as_deref().unwrap_or(namespace), b.name))
        .collect();
    if other.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "RefNotPermitted: backendRefs {} are in another namespace and no ReferenceGrant allows it (ReferenceGrant is not supported yet); requests to them get 500",
            other.join(", ")
        ))
    }
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn check_route(spec: &HttpRouteSpec) -> Result<(), String> {
    if spec.parent_refs.is_empty() {
        return Err("spec.parentRefs is empty".into());
    }
    for p in &spec.parent_refs {
        if p.kind.as_deref().is_some_and(|k| k != "Gateway") {
            return Err(format!("parentRefs kind {:?}: only Gateway", p.kind));
        }
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for m in &rule.matches {
            if let Some(p) = &m.path {
                if !p.value.starts_with('/') {
                    return Err(format!("{at}: path {:?} must start with /", p.value));
                }
            }
            if let Some(method) = &m.method {
                if !METHODS.contains(&method.as_str()) {
                    return Err(format!("{at}: method {method:?} is not an HTTP method"));
                }
            }
        }
        for f in &rule.filters {
            let present = [
                (
                    FilterType::RequestHeaderModifier,
                    f.request_header_modifier.is_some(),
                ),
                (
                    FilterType::ResponseHeaderModifier,
                    f.response_header_modifier.is_some(),
                ),
                (FilterType::URLRewrite, f.url_rewrite.is_some()),
                (FilterType::RequestRedirect, f.request_redirect.is_some()),
            ];
            for (kind, set) in present {
                if (kind == f.kind) != set {
                    return Err(format!(
                        "{at}: a filter of type {:?} must set exactly its own field",
                        f.kind
                    ));
                }
            }
            let path = f
                .url_rewrite
                .as_ref()
                .and_then(|u| u.path.as_ref())
                .or(f.request_redirect.as_ref().and_then(|r| r.path.as_ref()));
            if let Some(p) = path {
                for v in [&p.replace_full_path, &p.replace_prefix_match]
                    .into_iter()
                    .flatten()
                {
                    if pqmesh_policy::path::normalize(v).ok().as_deref() != Some(v.as_str()) {
                        return Err(format!("{at}: path modifier value {v:?} is not a normal path (no '//', '.', '..' or escapes the sidecar would resolve)"));
                    }
                }
                let ok = match p.kind {
                    PathModifierType::ReplaceFullPath => {
                        p.replace_full_path.is_some() && p.replace_prefix_match.is_none()
                    }
                    PathModifierType::ReplacePrefixMatch => {
                        p.replace_prefix_match.is_some()
                            && p.replace_full_path.is_none()
                            && rule.matches.iter().all(|m| {
                                m.path
                                    .as_ref()
                                    .is_some_and(|p| p.kind == PathMatchType::PathPrefix)
                            })
                    }
                };
                if !ok {
                    return Err(format!("{at}: path modifier {:?} needs its own value (and ReplacePrefixMatch a PathPrefix match)", p.kind));
                }
            }
            if let Some(code) = f.request_redirect.as_ref().and_then(|r| r.status_code) {
                if code != 301 && code != 302 {
                    return Err(format!("{at}: redirect statusCode {code} (301 or 302)"));
                }
            }
        }
        if rule
            .filters
            .iter()
            .any(|f| f.kind == FilterType::RequestRedirect)
            && !rule.backend_refs.is_empty()
        {
            return Err(format!(
                "{at}: RequestRedirect and backendRefs cannot be combined"
            ));
        }
        for b in &rule.backend_refs {
            if b.kind.as_deref().is_some_and(|k| k != "Service")
                || b.group.as_deref().is_some_and(|g| !g.is_empty())
            {
                return Err(format!("{at}: backendRef {}: only core Services", b.name));
            }
            if b.weight > 1_000_000 {
                return Err(format!("{at}: backendRef {}: weight above 1000000", b.name));
            }
        }
    }
    Ok(())
}

fn check_policy(spec: &EdgePolicySpec) -> Result<(), String> {
    if spec.token.is_none() && spec.rate_limit.is_none() {
        return Err("sets neither token nor rateLimit: an EdgePolicy that checks nothing is refused (it would look like protection); its route answers 503".into());
    }
    let t = &spec.target_ref;
    if t.group != "gateway.networking.k8s.io" || t.kind != "HTTPRoute" {
        return Err("targetRef: only group gateway.networking.k8s.io, kind HTTPRoute".into());
    }
    if let Some(r) = &spec.rate_limit {
        if r.requests == 0 || r.period_seconds == 0 || r.burst == Some(0) {
            return Err("rateLimit: requests, periodSeconds and burst must be at least 1".into());
        }
        match (r.key, &r.claim) {
            (RateLimitKey::Claim, None) => return Err("rateLimit: key claim needs `claim`".into()),
            (RateLimitKey::Claim, Some(_)) => {}
            (_, Some(_)) => return Err("rateLimit: `claim` only with key claim".into()),
            _ => {}
        }
        if r.key != RateLimitKey::SourceIp && spec.token.is_none() {
            return Err("rateLimit: a key from the token needs `token`".into());
        }
    }
    if let Some(t) = &spec.token {
        if t.scopes
            .iter()
            .any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err("token.scopes: a scope is non-empty and has no whitespace".into());
        }
    }
    Ok(())
}
