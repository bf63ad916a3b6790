//! EdgePolicies: each attached to one HTTPRoute of its namespace. What someone meant as
//! protection never leaves a route unprotected: a route targeted by a refused EdgePolicy, or by
//! several (`Conflicted`), fails closed and answers 503 (review 7, F2/F3).

use std::collections::{BTreeMap, HashMap};

use pqmesh_policy::Secrets;

use super::refused::RefusedPolicy;
use super::{refs_ok, with};
use crate::api::*;
use crate::load::{EdgeModel, LastGood, Model, Verdict};

/// EdgePolicies with the source each was read from.
type Sourced = Vec<(EdgePolicy, String)>;

fn name_of(p: &EdgePolicy) -> String {
    format!("{}/{}", p.metadata.namespace, p.metadata.name)
}

fn target_of(p: &EdgePolicy) -> String {
    format!("{}/{}", p.metadata.namespace, p.spec.target_ref.name)
}

/// Judges `policies` (parsed and valid, with their source; and the `held` last accepted versions
/// of policies whose file has a refused document) against the routes already in `model`.
/// `refused` are the EdgePolicies refused (duplicates keep no last version: theirs is another's). A refused edit keeps
/// the last accepted version of its object in force (`last`: found by name, or by the document
/// it was read from when the edit lost its name or namespace), and every route the refused
/// edit may target is closed as well (review 10, F2). `kept` receives the versions in force.
pub(super) fn judge_policies(
    model: &mut Model,
    (policies, held): (Sourced, Sourced),
    refused: Vec<RefusedPolicy>,
    (last, kept): (&LastGood, &mut BTreeMap<String, (EdgePolicy, String)>),
    issuers: &pqmesh_policy::PolicySet,
    secrets: &dyn Secrets,
) {
    // Checked when read (`super::judge_with`): every policy here is valid. Held versions (their
    // file has a refused document and no longer defines them) stay in force as kept ones.
    let mut valid: Vec<(EdgePolicy, String, bool)> =
        policies.into_iter().map(|(p, s)| (p, s, false)).collect();
    valid.extend(held.into_iter().map(|(p, s)| (p, s, true)));
    keep_retargeted(model, &mut valid, &refused, last);
    let mut kept_target: HashMap<String, String> = HashMap::new();
    for r in refused.iter().filter(|r| !r.duplicate) {
        let found = last.edge_policies.get(&r.name).or_else(|| {
            last.edge_policies
                .values()
                .find(|(_, source)| *source == r.source)
        });
        let Some((p, source)) = found else {
            continue;
        };
        if valid.iter().any(|(q, _, _)| name_of(q) == name_of(p)) {
            // Held already (its file has this refused document): this edit of it closes nothing
            // more than it does.
            if valid
                .iter()
                .any(|(q, s, kept)| *kept && q == p && s == source)
            {
                kept_target.insert(r.source.clone(), target_of(p));
            }
            continue;
        }
        super::amend(
            &mut model.verdicts,
            &r.source,
            &format!(
                "; its last accepted version (targeting HTTPRoute {}) stays in force until it is fixed",
                target_of(p)
            ),
        );
        kept_target.insert(r.source.clone(), target_of(p));
        valid.push((p.clone(), source.clone(), true));
    }

    // Every EdgePolicy naming a route, accepted or not: more than one on a route is a conflict.
    let mut targeting: HashMap<String, Vec<String>> = HashMap::new();
    let mut add = |route: String, policy: &str| {
        let all = targeting.entry(route).or_default();
        if !all.iter().any(|p| p == policy) {
            all.push(policy.to_owned());
        }
    };
    let mut refused_why: HashMap<String, String> = HashMap::new();
    for r in &refused {
        let named = |route: &crate::load::RouteModel| {
            let short = route.name.split_once('/').map_or("", |(_, n)| n);
            match &r.targets {
                Some(t) => t.iter().any(|(ns, n)| {
                    n == short && ns.as_ref().is_none_or(|ns| *ns == route.namespace)
                }),
                None => r.namespace.as_ref().is_none_or(|ns| *ns == route.namespace),
            }
        };
        for route in model.routes.iter().filter(|route| named(route)) {
            if kept_target.get(&r.source) != Some(&route.name) {
                add(route.name.clone(), &r.name);
            }
        }
        let why = if r.targets.is_none() {
            format!(
                "{}, and no targetRef of it reads, so it closes every HTTPRoute of its namespace",
                r.why
            )
        } else {
            r.why.clone()
        };
        refused_why.insert(r.name.clone(), why);
    }
    for (p, _, _) in &valid {
        add(target_of(p), &name_of(p));
    }

    for (p, source, was_kept) in valid {
        let name = name_of(&p);
        let mut verdict = refs_ok("EdgePolicy", &name, &source);
        verdict.generation = p.metadata.generation;
        // A kept version's verdict is its refused edit's, already given.
        let mut give = |v: Verdict| {
            if !was_kept {
                model.verdicts.push(v);
            }
        };
        let target = target_of(&p);
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
            give(v);
            continue;
        }
        kept.insert(name.clone(), (p.clone(), source.clone()));
        // A refused route's placeholder is closed already; the policy attaches to a route in force.
        let Some(route) = model
            .routes
            .iter_mut()
            .find(|r| r.name == target && r.closed.is_none())
        else {
            verdict.resolved_refs = Err(if model.routes.iter().any(|r| r.name == target) {
                format!("targetRef: HTTPRoute {target} is refused (see its verdict); what it declares answers 503 until it is fixed")
            } else {
                format!("targetRef: no HTTPRoute {target}: this EdgePolicy protects nothing until that route exists (check its name and namespace)")
            });
            verdict.refs_reason = "TargetNotFound";
            give(verdict);
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
        give(verdict);
        route.edge = Some(EdgeModel {
            name,
            issuer,
            token: p.spec.token.clone(),
            rate_limit: p.spec.rate_limit.clone(),
        });
    }
    close_unprotected_routes(model, &targeting, &refused_why);
}

/// An EdgePolicy edit whose targetRef names no route (outside review 13, F3: retargeted to
/// another namespace, `namespace: default`, or a typo, `name: secrte`) is refused for what stays
/// in force: the last accepted version of that EdgePolicy, found by name, then by the document
/// it was read from, then as the only one of that file (the edit may have changed its namespace
/// or name), stays in force on the route it protected (when that route still exists and no
/// other definition of it is in force). The edit's verdict is `Accepted=True`,
/// `ResolvedRefs=False` saying so, and it is not kept as a last accepted version itself. With
/// no last accepted version (a restart) it protects nothing: the route it was meant to name
/// cannot be known (docs/gateway.md).
fn keep_retargeted(
    model: &mut Model,
    valid: &mut [(EdgePolicy, String, bool)],
    refused: &[RefusedPolicy],
    last: &LastGood,
) {
    let exists = |model: &Model, route: &str| model.routes.iter().any(|r| r.name == route);
    for i in 0..valid.len() {
        let (p, source, was_kept) = &valid[i];
        if *was_kept || exists(model, &target_of(p)) {
            continue;
        }
        let name = name_of(p);
        // Defined now (other than by this edit): that definition is its own edit.
        let defined = |n: &str| {
            n != name
                && (valid.iter().any(|(q, _, _)| name_of(q) == n)
                    || refused.iter().any(|r| r.name == n))
        };
        let usable = |(n, (q, _)): &(&String, &(EdgePolicy, String))| {
            !defined(n) && exists(model, &target_of(q))
        };
        let file = super::in_force::file_of(source);
        let same_file: Vec<_> = last
            .edge_policies
            .iter()
            .filter(|(_, (_, s))| super::in_force::file_of(s) == file)
            .filter(usable)
            .collect();
        let found = last
            .edge_policies
            .get_key_value(&name)
            .filter(usable)
            .or_else(|| {
                last.edge_policies
                    .iter()
                    .filter(|(_, (_, s))| s == source)
                    .find(usable)
            })
            .or(match same_file.as_slice() {
                [one] => Some(*one),
                _ => None,
            });
        let Some((_, (good, good_source))) = found else {
            continue;
        };
        let mut v = refs_ok("EdgePolicy", &name, source);
        v.generation = p.metadata.generation;
        v.refs_reason = "TargetNotFound";
        v.resolved_refs = Err(format!(
            "targetRef: no HTTPRoute {}: this edit of EdgePolicy {} (last accepted from {}) \
             names no route, so the last accepted version (targeting HTTPRoute {}) stays in force \
             until the targetRef names a route (delete the document to remove it)",
            target_of(p),
            name_of(good),
            good_source,
            target_of(good)
        ));
        model.verdicts.push(v);
        valid[i] = (good.clone(), good_source.clone(), true);
    }
}

/// Fails closed (review 7, F2/F3): a route targeted by a refused EdgePolicy, or by several,
/// answers 503 rather than being served without the protection someone meant it to have. Its
/// `ResolvedRefs` (the route's and each parent's, so the status shows it) says why.
fn close_unprotected_routes(
    model: &mut Model,
    targeting: &HashMap<String, Vec<String>>,
    refused_why: &HashMap<String, String>,
) {
    for route in &mut model.routes {
        let Some(all) = targeting
            .get(&route.name)
            .filter(|_| route.closed.is_none())
        else {
            continue;
        };
        let (reason, why) = if all.len() > 1 {
            (
                "Conflicted",
                format!("Conflicted: EdgePolicies {} all target it", all.join(", ")),
            )
        } else if route.edge.is_none() {
            let why = refused_why
                .get(&all[0])
                .cloned()
                .unwrap_or_else(|| format!("EdgePolicy {} targeting it was refused", all[0]));
            ("EdgePolicyRefused", why)
        } else {
            continue;
        };
        let message = format!("{why}; every request gets 503 until that is fixed");
        show_closure(&mut model.verdicts, &route.name, reason, &message);
        route.closed = Some(message);
    }
}

/// Shows on a route's verdict (its own `ResolvedRefs` and each parent's, so the status shows
/// it) why the route is closed.
pub(super) fn show_closure(
    verdicts: &mut [Verdict],
    route: &str,
    reason: &'static str,
    message: &str,
) {
    let add = |e: &str| format!("{e}; {message}");
    for v in verdicts
        .iter_mut()
        .filter(|v| v.kind == "HTTPRoute" && v.name == route && v.accepted.is_ok())
    {
        v.resolved_refs = match &v.resolved_refs {
            Ok(()) => {
                v.refs_reason = reason;
                Err(message.to_owned())
            }
            Err(e) => Err(add(e)),
        };
        for p in &mut v.parents {
            p.resolved_refs = match &p.resolved_refs {
                Ok(()) => Err((reason, message.to_owned())),
                Err((r, e)) => Err((*r, add(e))),
            };
        }
    }
}

pub(super) fn check_policy(spec: &EdgePolicySpec) -> Result<(), String> {
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
