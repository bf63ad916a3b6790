//! The judgement of one set of documents: every object on its own (as `pqmesh_policy::admit`
//! does for TokenIssuers), with the Gateway API's conditions and reasons. An invalid object is
//! left out with a verdict saying why and affects nothing else; what is left becomes the
//! [`Model`] the proxy serves. Rules a schema cannot express live here, not in the CRDs.

use std::collections::HashMap;
use std::sync::Arc;

use pqmesh_policy::admit::{admit, candidates_from_yaml, Candidate};
use pqmesh_policy::{PolicySet, Secrets};
use serde::Deserialize;

use crate::api::*;
use crate::load::{
    CertFiles, ListenerModel, ListenerVerdict, Model, ParentVerdict, RouteModel, Verdict,
};

mod edge_policies;

/// Judges every document of `texts` (file name, content). `certs` reads a TLS Secret.
pub fn judge(
    texts: &[(String, String)],
    secrets: &dyn Secrets,
    certs: &dyn Fn(&str, &str) -> Result<CertFiles, String>,
) -> Model {
    judge_with(texts, secrets, certs, &PolicySet::default())
}

/// As [`judge`], keeping the last good version of a TokenIssuer whose edit is refused.
pub fn judge_with(
    texts: &[(String, String)],
    secrets: &dyn Secrets,
    certs: &dyn Fn(&str, &str) -> Result<CertFiles, String>,
    last_good_issuers: &PolicySet,
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
                            let mut v = refused(&kind, &name, &source, e.to_string());
                            v.generation = value
                                .get("metadata")
                                .and_then(|m| m.get("generation"))
                                .and_then(|g| g.as_i64());
                            v.accepted_reason = "UnsupportedValue";
                            model.verdicts.push(v)
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
                        if let Some(target) = edge_policies::raw_target(&value) {
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

    let issuers = admit(issuer_candidates, last_good_issuers, "cluster.local");
    for v in issuers.verdicts.values() {
        let mut verdict = refs_ok(
            &v.key.kind,
            &format!("{}/{}", v.key.namespace, v.key.name),
            &v.source,
        );
        if !v.accepted.status {
            verdict.accepted = Err(v.accepted.message.clone());
        }
        verdict.generation = v.generation;
        model.verdicts.push(verdict);
    }

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
            model.our_classes.push(name.clone());
        }
        let mut v = with(refs_ok("GatewayClass", &name, &source), verdict);
        v.accepted_reason = "InvalidParameters";
        v.generation = c.metadata.generation;
        model.verdicts.push(v);
    }

    // Listeners may share a port when they share its protocol and differ in hostname (SNI and
    // Host pick one); anything else is a conflict, and the later listener is left out.
    let mut used_ports: HashMap<u16, Vec<(bool, Option<String>, String)>> = HashMap::new();
    let mut our_gateways: HashMap<String, Vec<Listener>> = HashMap::new();
    for (g, source) in gateways {
        let name = format!("{}/{}", g.metadata.namespace, g.metadata.name);
        let mut verdict = refs_ok("Gateway", &name, &source);
        verdict.generation = g.metadata.generation;
        let accepted = check_api(&g.api_version, GATEWAY_API_VERSION).and_then(|()| {
            if model.our_classes.contains(&g.spec.gateway_class_name) {
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
            let mut lv = ListenerVerdict {
                name: l.name.clone(),
                accepted: Ok(()),
                resolved_refs: Ok(()),
                attached_routes: 0,
            };
            match listener(&g.metadata.namespace, l, certs) {
                Ok(mut m) => {
                    let tls = m.tls.is_some();
                    let taken = used_ports.entry(l.port).or_default();
                    if let Some((_, _, other)) =
                        taken.iter().find(|(t, h, _)| *t != tls || *h == m.hostname)
                    {
                        let message = format!(
                            "port {} is already served by {other} with another protocol or the same hostname",
                            l.port
                        );
                        problems.push(format!("listener {}: {message}", l.name));
                        lv.accepted = Err(("PortUnavailable", message));
                    } else {
                        taken.push((
                            tls,
                            m.hostname.clone(),
                            format!("{name} listener {}", l.name),
                        ));
                        m.gateway = name.clone();
                        model.listeners.push(m);
                    }
                }
                Err((reason, e)) => {
                    problems.push(format!("listener {}: {e}", l.name));
                    if matches!(reason, "InvalidCertificateRef" | "RefNotPermitted") {
                        lv.resolved_refs = Err((reason, e));
                    } else {
                        lv.accepted = Err((reason, e));
                    }
                }
            }
            verdict.listeners.push(lv);
        }
        if !problems.is_empty() {
            verdict.resolved_refs = Err(problems.join("; "));
        }
        if verdict.listeners.iter().all(|l| l.accepted.is_err()) {
            verdict.accepted = Err("no listener is valid".into());
            verdict.accepted_reason = "ListenersNotValid";
        }
        our_gateways.insert(name.clone(), g.spec.listeners.clone());
        model.verdicts.push(verdict);
    }

    for (r, source) in routes {
        let name = format!("{}/{}", r.metadata.namespace, r.metadata.name);
        let mut verdict = refs_ok("HTTPRoute", &name, &source);
        verdict.generation = r.metadata.generation;
        if let Err(e) =
            check_api(&r.api_version, GATEWAY_API_VERSION).and_then(|()| check_route(&r.spec))
        {
            verdict.accepted_reason = "UnsupportedValue";
            model.verdicts.push(with(verdict, Err(e)));
            continue;
        }
        let refs = backend_refs(&r.metadata.namespace, &r.spec);
        let mut unknown = Vec::new();
        let mut attached = Vec::new();
        for p in &r.spec.parent_refs {
            let gw = format!(
                "{}/{}",
                p.namespace.as_deref().unwrap_or(&r.metadata.namespace),
                p.name
            );
            let Some(listeners) = our_gateways.get(&gw) else {
                unknown.push(gw);
                continue;
            };
            let accepted = parent_accepts(&r, p, &gw, listeners, &model.listeners);
            if accepted.is_ok() {
                attached.push(p.clone());
            }
            verdict.parents.push(ParentVerdict {
                parent: p.clone(),
                accepted,
                resolved_refs: refs.clone(),
            });
        }
        if attached.is_empty() {
            let mut why: Vec<String> = verdict
                .parents
                .iter()
                .filter_map(|p| p.accepted.as_ref().err())
                .map(|(reason, m)| format!("{reason}: {m}"))
                .collect();
            if !unknown.is_empty() {
                why.push(format!(
                    "parentRefs name no accepted Gateway: {}",
                    unknown.join(", ")
                ));
            }
            verdict.accepted = Err(why.join("; "));
            verdict.accepted_reason = "NoMatchingParent";
        }
        if let Err((reason, message)) = &refs {
            // The route's own line (logs, `/verdicts`) names the reason its parents' status has.
            verdict.resolved_refs = Err(format!("{reason}: {message}"));
            verdict.refs_reason = reason;
        }
        model.verdicts.push(verdict);
        let mut spec = r.spec;
        spec.parent_refs = attached;
        model.routes.push(RouteModel {
            name,
            namespace: r.metadata.namespace.clone(),
            created: r.metadata.creation_timestamp.clone(),
            spec,
            edge: None,
            closed: None,
        });
    }
    // Attached routes per listener, for the Gateways' listener status.
    for v in model.verdicts.iter_mut().filter(|v| v.kind == "Gateway") {
        for lv in &mut v.listeners {
            lv.attached_routes = model
                .routes
                .iter()
                .filter(|r| {
                    model.listeners.iter().any(|l| {
                        l.gateway == v.name && l.name == lv.name && crate::routes::attaches(r, l)
                    })
                })
                .count();
        }
    }

    edge_policies::judge_policies(
        &mut model,
        policies,
        &refused_targets,
        &issuers.set,
        secrets,
    );
    model.issuers = issuers.set;
    model
}

/// Whether the Gateway `gw` (of ours) accepts route `r` through parentRef `p`: listeners admit
/// routes of their own namespace only (`allowedRoutes` is not supported, and `Same` is its
/// default), the sectionName and port must name a listener, and hostnames must intersect.
fn parent_accepts(
    r: &HttpRoute,
    p: &ParentRef,
    gw: &str,
    spec_listeners: &[Listener],
    programmed: &[ListenerModel],
) -> Result<(), (&'static str, String)> {
    let gw_ns = gw.split_once('/').map_or("", |(ns, _)| ns);
    if gw_ns != r.metadata.namespace {
        return Err((
            "NotAllowedByListeners",
            format!(
                "Gateway {gw} admits routes of namespace {gw_ns} only (allowedRoutes is not supported)"
            ),
        ));
    }
    let named: Vec<&Listener> = spec_listeners
        .iter()
        .filter(|l| p.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|l| p.port.is_none_or(|port| port == l.port))
        .collect();
    if named.is_empty() {
        return Err((
            "NoMatchingParent",
            format!(
                "Gateway {gw} has no listener with sectionName {:?} and port {:?}",
                p.section_name, p.port
            ),
        ));
    }
    let live: Vec<&ListenerModel> = programmed
        .iter()
        .filter(|m| m.gateway == gw && named.iter().any(|l| l.name == m.name))
        .collect();
    if live.is_empty() {
        return Err((
            "NoMatchingParent",
            format!("the listeners of Gateway {gw} this parentRef names are not valid"),
        ));
    }
    let hosts_meet = r.spec.hostnames.is_empty()
        || live.iter().any(|l| match &l.hostname {
            None => true,
            Some(lh) => r
                .spec
                .hostnames
                .iter()
                .any(|h| crate::routes::hostnames_intersect(h, lh)),
        });
    if !hosts_meet {
        return Err((
            "NoMatchingListenerHostname",
            format!("no hostname of the route matches a listener of Gateway {gw}"),
        ));
    }
    Ok(())
}

/// The route's `ResolvedRefs` as far as it can be judged without the cluster: core Services of
/// the route's own namespace (ReferenceGrants are not supported).
fn backend_refs(namespace: &str, spec: &HttpRouteSpec) -> Result<(), (&'static str, String)> {
    for b in spec.rules.iter().flat_map(|r| &r.backend_refs) {
        if !is_service(b) {
            return Err((
                "InvalidKind",
                format!(
                    "backendRef {}: only core Services; requests picking it get 500",
                    b.name
                ),
            ));
        }
        if b.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return Err((
                "RefNotPermitted",
                format!(
                    "backendRef {}/{}: another namespace needs a ReferenceGrant (not supported yet); requests picking it get 500",
                    b.namespace.as_deref().unwrap_or_default(),
                    b.name
                ),
            ));
        }
    }
    Ok(())
}

/// A backendRef to a core Service (the only kind the gateway forwards to).
pub fn is_service(b: &BackendRef) -> bool {
    !(b.kind.as_deref().is_some_and(|k| k != "Service")
        || b.group.as_deref().is_some_and(|g| !g.is_empty()))
}

/// Marks routes whose backendRefs name Services `known` does not have (`BackendNotFound`).
pub fn check_backends(model: &mut Model, known: &dyn Fn(&str, u16) -> bool) {
    for route in &model.routes {
        let missing: Vec<String> = route
            .spec
            .rules
            .iter()
            .flat_map(|r| &r.backend_refs)
            .filter(|b| {
                is_service(b) && b.namespace.as_deref().is_none_or(|n| n == route.namespace)
            })
            .map(|b| (format!("{}/{}", route.namespace, b.name), b.port))
            .filter(|(s, port)| !known(s, *port))
            .map(|(s, port)| format!("{s}:{port}"))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let message = format!("backendRefs name no known Service: {}", missing.join(", "));
        if let Some(v) = model
            .verdicts
            .iter_mut()
            .find(|v| v.kind == "HTTPRoute" && v.name == route.name && v.resolved_refs.is_ok())
        {
            v.resolved_refs = Err(format!("BackendNotFound: {message}"));
            v.refs_reason = "BackendNotFound";
            for p in &mut v.parents {
                p.resolved_refs = Err(("BackendNotFound", message.clone()));
            }
        }
    }
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
    with(refs_ok(kind, name, source), Err(message))
}

pub(super) fn refs_ok(kind: &str, name: &str, source: &str) -> Verdict {
    Verdict {
        kind: kind.to_owned(),
        name: name.to_owned(),
        source: source.to_owned(),
        accepted: Ok(()),
        resolved_refs: Ok(()),
        accepted_reason: "Invalid",
        refs_reason: "RefNotPermitted",
        generation: None,
        listeners: Vec::new(),
        parents: Vec::new(),
    }
}

pub(super) fn with(mut v: Verdict, accepted: Result<(), String>) -> Verdict {
    v.accepted = accepted;
    v
}

pub(super) fn check_api(got: &str, want: &str) -> Result<(), String> {
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
) -> Result<ListenerModel, (&'static str, String)> {
    let unsupported = |m: String| ("UnsupportedValue", m);
    if l.port == 0 {
        return Err(unsupported("port 0".into()));
    }
    if let Some(a) = &l.allowed_routes {
        let from = a.namespaces.as_ref().and_then(|n| n.from.as_deref());
        if from.is_some_and(|f| f != "Same") {
            return Err(unsupported(format!(
                "allowedRoutes.namespaces.from {from:?}: only Same (routes of the Gateway's namespace)"
            )));
        }
        if a.kinds.iter().any(|k| {
            k.kind != "HTTPRoute"
                || k.group
                    .as_deref()
                    .is_some_and(|g| g != "gateway.networking.k8s.io")
        }) {
            return Err((
                "InvalidRouteKinds",
                "allowedRoutes.kinds: only HTTPRoute".into(),
            ));
        }
    }
    let mut model = ListenerModel {
        gateway: String::new(),
        name: l.name.clone(),
        hostname: l.hostname.clone(),
        port: l.port,
        tls: None,
        cert_ref: None,
        require_pq: false,
    };
    match (l.protocol, &l.tls) {
        (Protocol::HTTP, None) => Ok(model),
        (Protocol::HTTP, Some(_)) => Err(unsupported("protocol HTTP takes no tls".into())),
        (Protocol::HTTPS, None) => Err(unsupported(
            "protocol HTTPS needs tls.certificateRefs".into(),
        )),
        (Protocol::HTTPS, Some(tls)) => {
            if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
                return Err(unsupported(format!(
                    "tls.mode {:?}: only Terminate is supported",
                    tls.mode
                )));
            }
            for (k, v) in &tls.options {
                match (k.as_str(), v.as_str()) {
                    (KEY_EXCHANGE_OPTION, "require-pq") => model.require_pq = true,
                    (KEY_EXCHANGE_OPTION, "prefer-pq") => {}
                    (KEY_EXCHANGE_OPTION, _) => {
                        return Err(unsupported(format!(
                            "tls.options {k}: {v:?} (use prefer-pq or require-pq)"
                        )))
                    }
                    _ => return Err(unsupported(format!("tls.options {k:?} is not supported"))),
                }
            }
            let Some(r) = tls.certificate_refs.first() else {
                return Err((
                    "InvalidCertificateRef",
                    "tls.certificateRefs is empty".into(),
                ));
            };
            if tls.certificate_refs.len() > 1 {
                return Err(unsupported(
                    "several certificateRefs are not supported yet (one per listener)".into(),
                ));
            }
            if r.kind.as_deref().is_some_and(|k| k != "Secret")
                || r.group.as_deref().is_some_and(|g| !g.is_empty())
            {
                return Err((
                    "InvalidCertificateRef",
                    "certificateRefs: only core Secrets".into(),
                ));
            }
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            if ns != namespace {
                return Err((
                    "RefNotPermitted",
                    "certificateRefs in another namespace need a ReferenceGrant (not supported)"
                        .into(),
                ));
            }
            let files = certs(ns, &r.name).map_err(|e| {
                (
                    "InvalidCertificateRef",
                    format!("Secret {ns}/{}: {e}", r.name),
                )
            })?;
            model.tls = Some(Arc::new(files));
            model.cert_ref = Some((ns.to_owned(), r.name.clone()));
            Ok(model)
        }
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
            if b.weight > 1_000_000 {
                return Err(format!("{at}: backendRef {}: weight above 1000000", b.name));
            }
        }
    }
    Ok(())
}
