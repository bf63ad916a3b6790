//! EdgePolicies: each attached to one HTTPRoute of its namespace. What someone meant as
//! protection never leaves a route unprotected: a route targeted by a refused EdgePolicy, or by
//! several (`Conflicted`), fails closed and answers 503 (review 7, F2/F3).

use std::collections::HashMap;

use pqmesh_policy::Secrets;

use super::{check_api, refs_ok, with};
use crate::api::*;
use crate::load::{EdgeModel, Model};

/// Judges `policies` (parsed, with their source) against the routes already in `model`.
/// `refused_targets` are the EdgePolicies that did not parse: (`<ns>/<targetRef.name>`, name).
pub(super) fn judge_policies(
    model: &mut Model,
    policies: Vec<(EdgePolicy, String)>,
    refused_targets: &[(String, String)],
    issuers: &pqmesh_policy::PolicySet,
    secrets: &dyn Secrets,
) {
    // Every EdgePolicy naming a route, accepted or not: more than one on a route is a conflict.
    let mut targeting: HashMap<String, Vec<String>> = HashMap::new();
    for (target, name) in refused_targets {
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
        let mut verdict = refs_ok("EdgePolicy", &name, &source);
        verdict.generation = p.metadata.generation;
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
            let mut v = with(
                verdict,
                Err(format!(
                    "Conflicted: HTTPRoute {target} is also targeted by EdgePolicy {}; one EdgePolicy per route, and the route answers 503 until only one is left",
                    others.join(", ")
                )),
            );
            v.accepted_reason = "Conflicted";
            model.verdicts.push(v);
            continue;
        }
        let Some(route) = model.routes.iter_mut().find(|r| r.name == target) else {
            model.verdicts.push(with(
                verdict,
                Err(format!("targetRef: no HTTPRoute {target}")),
            ));
            continue;
        };
        let issuer = match &p.spec.token {
            None => None,
            Some(t) => {
                let found = issuers.issuers.iter().find(|i| {
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
    close_unprotected_routes(model, &targeting);
}

/// Fails closed (review 7, F2/F3): a route targeted by a refused EdgePolicy, or by several,
/// answers 503 rather than being served without the protection someone meant it to have. Its
/// `ResolvedRefs` (the route's and each parent's, so the status shows it) says why.
fn close_unprotected_routes(model: &mut Model, targeting: &HashMap<String, Vec<String>>) {
    for route in &mut model.routes {
        let Some(all) = targeting.get(&route.name) else {
            continue;
        };
        let (reason, why) = if all.len() > 1 {
            (
                "Conflicted",
                format!("Conflicted: EdgePolicies {} all target it", all.join(", ")),
            )
        } else if route.edge.is_none() {
            (
                "EdgePolicyRefused",
                format!("EdgePolicy {} targeting it was refused", all[0]),
            )
        } else {
            continue;
        };
        let message = format!("{why}; every request gets 503 until that is fixed");
        let add = |e: &str| format!("{e}; {message}");
        if let Some(v) = model
            .verdicts
            .iter_mut()
            .find(|v| v.kind == "HTTPRoute" && v.name == route.name)
        {
            v.resolved_refs = match &v.resolved_refs {
                Ok(()) => {
                    v.refs_reason = reason;
                    Err(message.clone())
                }
                Err(e) => Err(add(e)),
            };
            for p in &mut v.parents {
                p.resolved_refs = match &p.resolved_refs {
                    Ok(()) => Err((reason, message.clone())),
                    Err((r, e)) => Err((*r, add(e))),
                };
            }
        }
        route.closed = Some(message);
    }
}

/// `<namespace>/<spec.targetRef.name>` of an EdgePolicy document that did not parse.
pub(super) fn raw_target(value: &serde_yaml::Value) -> Option<String> {
    let ns = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    let name = value.get("spec")?.get("targetRef")?.get("name")?.as_str()?;
    Some(format!("{ns}/{name}"))
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
