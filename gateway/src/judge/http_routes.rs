//! HTTPRoutes: each judged on its own against the Gateways of ours (parents, hostnames,
//! backendRefs, the fields a schema cannot check). What a refused route leaves behind is
//! `super::refused`'s.

use std::collections::HashMap;

use super::{refs_ok, with};
use crate::api::*;
use crate::judge::is_service;
use crate::load::{ListenerModel, ParentVerdict, RouteModel, Verdict};

/// Judges one parsed route. The model is `Some` only when the route is accepted (it attaches
/// through at least one parentRef); its verdict says why not otherwise.
pub(super) fn judge_route(
    r: HttpRoute,
    source: &str,
    our_gateways: &HashMap<String, Vec<Listener>>,
    listeners: &[ListenerModel],
) -> (Verdict, Option<RouteModel>) {
    let name = format!("{}/{}", r.metadata.namespace, r.metadata.name);
    let mut verdict = refs_ok("HTTPRoute", &name, source);
    verdict.generation = r.metadata.generation;
    if let Err(e) =
        super::check_api(&r.api_version, GATEWAY_API_VERSION).and_then(|()| check_route(&r.spec))
    {
        verdict.accepted_reason = "UnsupportedValue";
        return (with(verdict, Err(e)), None);
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
        let Some(spec_listeners) = our_gateways.get(&gw) else {
            unknown.push(gw);
            continue;
        };
        let accepted = parent_accepts(&r, p, &gw, spec_listeners, listeners);
        if accepted.is_ok() {
            attached.push(p.clone());
        }
        verdict.parents.push(ParentVerdict {
            parent: p.clone(),
            accepted,
            resolved_refs: refs.clone(),
        });
    }
    if let Err((reason, message)) = &refs {
        // The route's own line (logs, `/verdicts`) names the reason its parents' status has.
        verdict.resolved_refs = Err(format!("{reason}: {message}"));
        verdict.refs_reason = reason;
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
        return (verdict, None);
    }
    let mut spec = r.spec;
    spec.parent_refs = attached;
    let route = RouteModel {
        name,
        namespace: r.metadata.namespace.clone(),
        created: r.metadata.creation_timestamp.clone(),
        spec,
        edge: None,
        closed: None,
    };
    (verdict, Some(route))
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
