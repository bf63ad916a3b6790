//! The judgement of one set of documents: every object on its own (as `pqmesh_policy::admit`
//! does for TokenIssuers), with the Gateway API's conditions and reasons. An invalid object is
//! left out with a verdict saying why and affects nothing else; what is left becomes the
//! [`Model`] the proxy serves. Rules a schema cannot express live here, not in the CRDs.

use std::collections::{HashMap, HashSet};

use pqmesh_policy::admit::{admit, candidates_from_yaml, Candidate};
use pqmesh_policy::{PolicySet, Secrets};

use crate::api::*;
use crate::load::{CertFiles, LastGood, ListenerVerdict, Model, RouteModel, Verdict};

mod edge_policies;
mod http_routes;
mod in_force;
mod lenient;
mod listeners;
mod refused;

use listeners::listener;
pub use listeners::{check_backends, is_service};

use in_force::Pick;
use refused::{Kind, RefusedPolicy, RefusedRoute};

/// Judges every document of `texts` (file name, content). `certs` reads a TLS Secret.
pub fn judge(
    texts: &[(String, String)],
    secrets: &dyn Secrets,
    certs: &dyn Fn(&str, &str) -> Result<CertFiles, String>,
) -> Model {
    judge_with(
        texts,
        secrets,
        certs,
        &PolicySet::default(),
        &LastGood::default(),
    )
}

/// As [`judge`], keeping in force the last good version of a TokenIssuer, HTTPRoute or
/// EdgePolicy whose edit is refused, and of a file that does not read (review 10).
pub fn judge_with(
    texts: &[(String, String)],
    secrets: &dyn Secrets,
    certs: &dyn Fn(&str, &str) -> Result<CertFiles, String>,
    last_good_issuers: &PolicySet,
    last: &LastGood,
) -> Model {
    let mut model = Model::default();
    let mut kept = LastGood::default();
    let mut classes = Vec::new();
    let mut gateways = Vec::new();
    let mut routes = Vec::new();
    let mut policies = Vec::new();
    let mut route_values: HashMap<String, serde_yaml::Value> = HashMap::new();
    let mut refused_routes: Vec<RefusedRoute> = Vec::new();
    let mut refused_policies: Vec<RefusedPolicy> = Vec::new();
    let mut issuer_candidates: Vec<Candidate> = Vec::new();
    let read = refused::read_files(texts, last, &mut model.verdicts, &mut kept.files);
    for (source, value) in read.documents {
        let kind_text = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let kind = refused::kind_of(&value);
        let name = object_name(&value);
        let namespace = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .map(str::to_owned);
        let generation = value
            .get("metadata")
            .and_then(|m| m.get("generation"))
            .and_then(|g| g.as_i64());
        let shown_kind = if kind_text.is_empty() {
            kind.canonical()
        } else {
            &kind_text
        };
        let mut refuse = |message: String| {
            let mut v = refused(shown_kind, &name, &source, message);
            v.generation = generation;
            v.accepted_reason = "UnsupportedValue";
            model.verdicts.push(v);
        };
        let checked = match kind {
            Kind::Other => {
                refuse(format!(
                    "kind {kind_text:?} is not supported here (GatewayClass, Gateway, HTTPRoute, \
                     EdgePolicy, TokenIssuer)"
                ));
                continue;
            }
            k if kind_text.eq_ignore_ascii_case(k.canonical()) && kind_text != k.canonical() => Err(format!(
                "kind {kind_text:?} is not supported: kinds are case-sensitive (did you mean {}?)",
                k.canonical()
            )),
            k if kind_text != k.canonical() => Err(format!(
                "kind {kind_text:?} is not supported (apiVersion {:?}); read as the {} its spec looks like, and refused (did you mean kind {}?)",
                value.get("apiVersion").and_then(|a| a.as_str()).unwrap_or(""),
                k.canonical(),
                k.canonical()
            )),
            Kind::EdgePolicy if namespace.is_none() => Err("metadata.namespace is required for an EdgePolicy: it protects an HTTPRoute of its own namespace, and taking `default` would leave the route it was written for open".into()),
            Kind::TokenIssuer => Ok(()),
            k => in_force::check_metadata(&value, k != Kind::GatewayClass),
        };
        macro_rules! parse {
            ($t:ty) => {
                checked.and_then(|()| {
                    serde_yaml::from_value::<$t>(value.clone()).map_err(|e| e.to_string())
                })
            };
        }
        match kind {
            Kind::Other => {}
            Kind::GatewayClass => match parse!(GatewayClass) {
                Ok(o) => classes.push((o, source)),
                Err(e) => refuse(e),
            },
            Kind::Gateway => match parse!(Gateway) {
                Ok(o) => gateways.push((o, source)),
                Err(e) => refuse(e),
            },
            Kind::HttpRoute => match parse!(HttpRoute) {
                Ok(o) => {
                    route_values.insert(source.clone(), value);
                    routes.push((o, source));
                }
                Err(e) => {
                    refuse(e);
                    refused_routes.push(RefusedRoute {
                        name,
                        source,
                        value,
                        duplicate: false,
                    });
                }
            },
            Kind::EdgePolicy => match parse!(EdgePolicy) {
                Ok(o) => match check_api(&o.api_version, PQMESH_API_VERSION)
                    .and_then(|()| edge_policies::check_policy(&o.spec))
                {
                    Ok(()) => policies.push((o, source)),
                    // A policy that parses but is invalid is a refused edit like one that
                    // does not parse (judged here, so that its file counts as refused).
                    Err(e) => {
                        let mut v = refused("EdgePolicy", &name, &source, e);
                        v.generation = o.metadata.generation;
                        model.verdicts.push(v);
                        refused_policies.push(RefusedPolicy {
                            why: format!("EdgePolicy {name} targeting it was refused"),
                            name,
                            source,
                            namespace: Some(o.metadata.namespace.clone()),
                            targets: Some(vec![(
                                Some(o.metadata.namespace.clone()),
                                o.spec.target_ref.name.clone(),
                            )]),
                            duplicate: false,
                        });
                    }
                },
                Err(e) => {
                    refuse(e);
                    refused_policies.push(RefusedPolicy {
                        why: format!("EdgePolicy {name} targeting it was refused"),
                        name,
                        source,
                        // A namespace that is no DNS label does not read: any namespace.
                        namespace: namespace.filter(|n| in_force::is_dns_label(n)),
                        targets: refused::raw_targets(&value),
                        duplicate: false,
                    });
                }
            },
            Kind::TokenIssuer => match checked {
                Ok(()) => {
                    let text = serde_yaml::to_string(&value).unwrap_or_default();
                    issuer_candidates.extend(candidates_from_yaml(&text, &source));
                }
                Err(e) => refuse(e),
            },
        }
    }
    lenient::judge_partial(
        read.partial,
        &mut model.verdicts,
        &mut refused_routes,
        &mut refused_policies,
    );
    // One definition per object (local mode can have two): of GatewayClasses and Gateways the
    // first read wins; HTTPRoutes and EdgePolicies go by the source of the version in force
    // (below). The other is refused as `Duplicate` and closes what it would govern.
    let (classes, _) = without_duplicates(
        classes,
        |c: &GatewayClass| c.metadata.name.clone(),
        |_, _| false,
        "GatewayClass",
        &mut model.verdicts,
    );
    let (gateways, _) = without_duplicates(
        gateways,
        |g: &Gateway| format!("{}/{}", g.metadata.namespace, g.metadata.name),
        |_, _| false,
        "Gateway",
        &mut model.verdicts,
    );
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

    // Every parsed route is judged on its own first, so that which documents are refused is
    // known before the definition in force is picked (outside review 12, F2/F3).
    let mut defs: Vec<RouteDef> = Vec::new();
    for (r, source) in routes {
        let (verdict, route) =
            http_routes::judge_route(r.clone(), &source, &our_gateways, &model.listeners);
        defs.push(RouteDef {
            name: verdict.name.clone(),
            value: route_values.remove(&source).unwrap_or_default(),
            source,
            parsed: Some((r, verdict, route)),
        });
    }
    for r in refused_routes.drain(..) {
        // Refused before they were parsed; their verdicts are given.
        defs.push(RouteDef {
            name: r.name,
            source: r.source,
            value: r.value,
            parsed: None,
        });
    }
    let files: HashSet<&str> = texts.iter().map(|(f, _)| f.as_str()).collect();
    let refused_files: HashSet<String> = model
        .verdicts
        .iter()
        .filter(|v| v.accepted.is_err())
        .map(|v| v.source.as_str())
        .chain(defs.iter().filter_map(|d| {
            d.parsed
                .as_ref()
                .filter(|(_, v, _)| v.accepted.is_err())
                .map(|_| d.source.as_str())
        }))
        .map(|s| in_force::file_of(s).to_owned())
        .collect();
    // Objects whose last accepted version is held because their file has a refused document:
    // (kind, name, source of that version).
    let mut held: Vec<(&str, String, String)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for n in defs.iter().map(|d| &d.name).chain(last.routes.keys()) {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut slots: Vec<Option<RouteDef>> = defs.into_iter().map(Some).collect();
    for name in names {
        let idx: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].as_ref().is_some_and(|d| d.name == name))
            .collect();
        let good = last.routes.get(&name);
        let sources: Vec<String> = idx
            .iter()
            .filter_map(|&i| slots[i].as_ref().map(|d| d.source.clone()))
            .collect();
        let cands: Vec<in_force::Candidate> = idx
            .iter()
            .filter_map(|&i| slots[i].as_ref())
            .map(|d| in_force::Candidate {
                source: &d.source,
                equal: good.is_some_and(|(g, _)| d.parsed.as_ref().is_some_and(|(r, _, _)| r == g)),
            })
            .collect();
        let (pick, message) = in_force::settle(
            "HTTPRoute",
            &name,
            &cands,
            good.map(|(_, s)| s.as_str()),
            &sources,
            &files,
            &refused_files,
        );
        drop(cands);
        if let (Pick::Hold, Some((g, src))) = (pick, good) {
            let (_, route) =
                http_routes::judge_route(g.clone(), src, &our_gateways, &model.listeners);
            if let Some(route) = route {
                kept.routes.insert(name.clone(), (g.clone(), src.clone()));
                model.routes.push(route);
                held.push(("HTTPRoute", name.clone(), src.clone()));
            }
        }
        for (k, &i) in idx.iter().enumerate() {
            let Some(d) = slots[i].take() else { continue };
            let duplicate = pick != Pick::Winner(k);
            match d.parsed {
                Some((r, verdict, Some(route))) if !duplicate => {
                    model.verdicts.push(verdict);
                    kept.routes.insert(name.clone(), (r, d.source));
                    model.routes.push(route);
                    continue;
                }
                Some((_, verdict, _)) if !duplicate => model.verdicts.push(verdict),
                Some((_, verdict, _)) => {
                    let mut v = refused("HTTPRoute", &name, &d.source, message.clone());
                    v.generation = verdict.generation;
                    v.accepted_reason = "Duplicate";
                    model.verdicts.push(v);
                }
                None if duplicate => amend(&mut model.verdicts, &d.source, &format!("; {message}")),
                None => {}
            }
            refused_routes.push(RefusedRoute {
                name: name.clone(),
                source: d.source,
                value: d.value,
                duplicate,
            });
        }
    }
    // A refused route never opens its paths to a broader route (review 10, F1): its last
    // accepted version stays in force, or a placeholder closes what it declares.
    let mut gateway_names: Vec<String> = our_gateways.keys().cloned().collect();
    gateway_names.sort();
    // Duplicates last, so that the definition in force of their name is known.
    refused_routes.sort_by_key(|r| r.duplicate);
    for r in refused_routes {
        let good = last.routes.get(&r.name).filter(|_| !r.duplicate);
        if let Some((good, _)) = good {
            let (_, route) =
                http_routes::judge_route(good.clone(), &r.source, &our_gateways, &model.listeners);
            if let Some(route) = route {
                amend(
                    &mut model.verdicts,
                    &r.source,
                    "; its last accepted version stays in force until it is fixed",
                );
                kept.routes
                    .insert(r.name.clone(), (good.clone(), r.source.clone()));
                model.routes.push(route);
                continue;
            }
        }
        // A refused edit that renamed the route held from this very document: the held
        // version is what it edits, so nothing more is closed.
        if let Some((_, name, _)) = held
            .iter()
            .find(|(k, n, s)| *k == "HTTPRoute" && *s == r.source && *n != r.name)
        {
            amend(
                &mut model.verdicts,
                &r.source,
                &format!("; read as an edit of HTTPRoute {name} (read from this document before), whose last accepted version stays in force until it is fixed"),
            );
            continue;
        }
        let closed = format!("HTTPRoute {} is refused (see its verdict)", r.name);
        let (mut placeholders, mut what) =
            refused::placeholder_routes(&r.value, &r.name, &gateway_names, &closed);
        // A duplicate never closes what the definition in force of its name serves (that
        // would let anyone who can write a file take the owner's route down): only what it
        // declares beyond that is closed.
        let winner = model
            .routes
            .iter()
            .find(|m| m.name == r.name && m.closed.is_none());
        if let Some(w) = winner.filter(|_| r.duplicate) {
            let served: Vec<(PathMatchType, String)> = w
                .spec
                .rules
                .iter()
                .flat_map(|rule| {
                    let all = [RouteMatch::default()];
                    let matches = if rule.matches.is_empty() {
                        &all[..]
                    } else {
                        &rule.matches[..]
                    };
                    matches.iter().map(path_of).collect::<Vec<_>>()
                })
                .collect();
            let mut hosts = w.spec.hostnames.clone();
            hosts.sort();
            for p in &mut placeholders {
                let mut mine = p.spec.hostnames.clone();
                mine.sort();
                if mine == hosts {
                    p.spec
                        .rules
                        .retain(|rule| rule.matches.iter().any(|m| !served.contains(&path_of(m))));
                }
            }
            placeholders.retain(|p| !p.spec.rules.is_empty());
            if placeholders.is_empty() {
                what = format!(
                    "what it declares is served by the definition in force of {} ({}), so it closes nothing",
                    r.name,
                    w.spec.hostnames.join(", ")
                );
            }
        }
        amend(&mut model.verdicts, &r.source, &format!("; {what}"));
        model.routes.extend(placeholders);
    }
    // Attached routes per listener, for the Gateways' listener status (placeholders, closed
    // already, are not accepted routes).
    for v in model.verdicts.iter_mut().filter(|v| v.kind == "Gateway") {
        for lv in &mut v.listeners {
            lv.attached_routes = model
                .routes
                .iter()
                .filter(|r| r.closed.is_none())
                .filter(|r| {
                    model.listeners.iter().any(|l| {
                        l.gateway == v.name && l.name == lv.name && crate::routes::attaches(r, l)
                    })
                })
                .count();
        }
    }

    // EdgePolicies: the definition in force picked by source, as for routes.
    let mut pdefs: Vec<PolicyDef> = policies
        .into_iter()
        .map(|(p, source)| PolicyDef {
            name: format!("{}/{}", p.metadata.namespace, p.metadata.name),
            source,
            parsed: Some(p),
            refused: None,
        })
        .collect();
    pdefs.extend(refused_policies.into_iter().map(|r| PolicyDef {
        name: r.name.clone(),
        source: r.source.clone(),
        parsed: None,
        refused: Some(r),
    }));
    let mut names: Vec<String> = Vec::new();
    for n in pdefs
        .iter()
        .map(|d| &d.name)
        .chain(last.edge_policies.keys())
    {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut slots: Vec<Option<PolicyDef>> = pdefs.into_iter().map(Some).collect();
    let mut policies = Vec::new();
    let mut refused_policies = Vec::new();
    let mut held_policies = Vec::new();
    for name in names {
        let idx: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].as_ref().is_some_and(|d| d.name == name))
            .collect();
        let good = last.edge_policies.get(&name);
        let sources: Vec<String> = idx
            .iter()
            .filter_map(|&i| slots[i].as_ref().map(|d| d.source.clone()))
            .collect();
        let cands: Vec<in_force::Candidate> = idx
            .iter()
            .filter_map(|&i| slots[i].as_ref())
            .map(|d| in_force::Candidate {
                source: &d.source,
                equal: good.is_some_and(|(g, _)| d.parsed.as_ref() == Some(g)),
            })
            .collect();
        let (pick, message) = in_force::settle(
            "EdgePolicy",
            &name,
            &cands,
            good.map(|(_, s)| s.as_str()),
            &sources,
            &files,
            &refused_files,
        );
        drop(cands);
        if let (Pick::Hold, Some((g, src))) = (pick, good) {
            held_policies.push((g.clone(), src.clone()));
            held.push(("EdgePolicy", name.clone(), src.clone()));
        }
        for (k, &i) in idx.iter().enumerate() {
            let Some(d) = slots[i].take() else { continue };
            let duplicate = pick != Pick::Winner(k);
            match (d.parsed, d.refused) {
                (Some(p), _) if !duplicate => policies.push((p, d.source)),
                (Some(p), _) => {
                    let mut v = refused("EdgePolicy", &name, &d.source, message.clone());
                    v.generation = p.metadata.generation;
                    v.accepted_reason = "Duplicate";
                    model.verdicts.push(v);
                    refused_policies.push(RefusedPolicy {
                        why: format!(
                            "a second definition of EdgePolicy {name} ({}) targets it and was refused as Duplicate",
                            d.source
                        ),
                        name: name.clone(),
                        namespace: Some(p.metadata.namespace.clone()),
                        targets: Some(vec![(
                            Some(p.metadata.namespace.clone()),
                            p.spec.target_ref.name.clone(),
                        )]),
                        source: d.source,
                        duplicate: true,
                    });
                }
                (None, Some(mut r)) => {
                    if duplicate {
                        amend(&mut model.verdicts, &r.source, &format!("; {message}"));
                        r.duplicate = true;
                    }
                    refused_policies.push(r);
                }
                (None, None) => {}
            }
        }
    }
    edge_policies::judge_policies(
        &mut model,
        (policies, held_policies),
        refused_policies,
        (last, &mut kept.edge_policies),
        &issuers.set,
        secrets,
    );
    refused::close_routes_named_in(&mut model.routes, &mut model.verdicts, &read.unread);
    // Say on each refused document of a file why an object it no longer defines stays in force.
    for (kind, name, src) in &held {
        let file = in_force::file_of(src);
        let more = format!(
            "; {kind} {name} (last accepted from {src}) is not found in {file}, which has this \
             refused document: its last accepted version stays in force until the file reads \
             cleanly (delete the file to remove it)"
        );
        for v in model
            .verdicts
            .iter_mut()
            .filter(|v| v.accepted.is_err() && in_force::file_of(&v.source) == file)
        {
            if let Err(e) = &mut v.accepted {
                e.push_str(&more);
            }
        }
    }
    model.issuers = issuers.set;
    model.last_good = kept;
    model
}

/// A match's path as the proxy reads it (no path: every path).
fn path_of(m: &RouteMatch) -> (PathMatchType, String) {
    m.path
        .as_ref()
        .map_or((PathMatchType::PathPrefix, "/".to_owned()), |p| {
            (p.kind, p.value.clone())
        })
}

/// One definition of an HTTPRoute: parsed (with its verdict, and its model when accepted), or
/// refused before it parsed (its verdict given).
struct RouteDef {
    name: String,
    source: String,
    value: serde_yaml::Value,
    parsed: Option<(HttpRoute, Verdict, Option<RouteModel>)>,
}

/// One definition of an EdgePolicy: parsed and valid, or refused.
struct PolicyDef {
    name: String,
    source: String,
    parsed: Option<EdgePolicy>,
    refused: Option<RefusedPolicy>,
}

/// Objects with the source each was read from.
type Sourced<T> = Vec<(T, String)>;

/// Of several definitions of one object, the one `in_force` says is the version in force wins,
/// then the first read; the others are refused (`Duplicate`, naming the winner's source) and
/// returned (review 10, F10).
fn without_duplicates<T>(
    objects: Vec<(T, String)>,
    key: impl Fn(&T) -> String,
    in_force: impl Fn(&str, &T) -> bool,
    kind: &str,
    verdicts: &mut Vec<Verdict>,
) -> (Sourced<T>, Sourced<T>) {
    let mut winners: Vec<(T, String)> = Vec::new();
    let mut losers = Vec::new();
    for (o, source) in objects {
        let k = key(&o);
        match winners.iter().position(|(w, _)| key(w) == k) {
            None => winners.push((o, source)),
            Some(i) if in_force(&k, &o) && !in_force(&k, &winners[i].0) => {
                losers.push(std::mem::replace(&mut winners[i], (o, source)));
            }
            Some(_) => losers.push((o, source)),
        }
    }
    for (o, source) in &losers {
        let k = key(o);
        let winner = winners
            .iter()
            .find(|(w, _)| key(w) == k)
            .map_or("", |(_, s)| s.as_str());
        let mut v = refused(
            kind,
            &k,
            source,
            format!("Duplicate: {winner} already defines {k}, and that definition is the one in force; one definition per object"),
        );
        v.accepted_reason = "Duplicate";
        verdicts.push(v);
    }
    (winners, losers)
}

/// Adds `more` to the message of the refused object read from `source`.
fn amend(verdicts: &mut [Verdict], source: &str, more: &str) {
    if let Some(Err(e)) = verdicts
        .iter_mut()
        .rev()
        .find(|v| v.source == source && v.kind != "Unknown")
        .map(|v| &mut v.accepted)
    {
        e.push_str(more);
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
