//! What a refused object leaves behind (outside review 10): never an opening. A refused edit of
//! an HTTPRoute or EdgePolicy keeps its last accepted version in force ([`LastGood`]); with none,
//! what the raw object declares is read leniently and closed (503): a refused HTTPRoute becomes
//! a placeholder holding its hostnames and paths, a refused EdgePolicy closes every route it
//! might name. A local file that does not read as YAML (a typo, a tab, a duplicate key, an
//! editor's half-written file) keeps its last readable version as a whole, so no document of
//! it disappears by accident.

use std::collections::BTreeMap;

use serde_yaml::Value;

use crate::api::{HttpRouteSpec, PathMatchType};
use crate::load::{LastGood, RouteModel, Verdict};

/// The kinds judged, read case-insensitively so that a one-letter typo is still known for
/// what it meant (`kind: Edgepolicy` closes what it names instead of vanishing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    EdgePolicy,
    TokenIssuer,
    Other,
}

impl Kind {
    pub(super) fn canonical(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::EdgePolicy => "EdgePolicy",
            Kind::TokenIssuer => "TokenIssuer",
            Kind::Other => "",
        }
    }
}

/// A document's kind as meant: `kind` whatever its case, or with no readable `kind`, an
/// `apiVersion` of pqmesh.io with a `targetRef`/`targetRefs` (an EdgePolicy) or of the Gateway
/// API with `rules` (an HTTPRoute).
pub(super) fn kind_of(value: &Value) -> Kind {
    let all = [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::EdgePolicy,
        Kind::TokenIssuer,
    ];
    if let Some(kind) = value.get("kind").and_then(Value::as_str) {
        let found = all
            .into_iter()
            .find(|k| k.canonical().eq_ignore_ascii_case(kind.trim()));
        if let Some(k) = found {
            return k;
        }
    }
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let spec_has = |prefix: &str| {
        value
            .get("spec")
            .and_then(Value::as_mapping)
            .is_some_and(|m| {
                m.keys().filter_map(Value::as_str).any(|k| {
                    k.to_ascii_lowercase()
                        .starts_with(&prefix.to_ascii_lowercase())
                })
            })
    };
    if api.starts_with("pqmesh.io/") && spec_has("targetRef") {
        return Kind::EdgePolicy;
    } else if api.starts_with("gateway.networking.k8s.io/") && spec_has("rules") {
        return Kind::HttpRoute;
    }
    // Outside review 12, F3: a kind that is missing or a typo of ours (`HTTPRoutes`,
    // `EdgePolcy`), whatever its apiVersion, with a readable `metadata.name` and a spec shaped
    // like a route or a policy, is read as what it most likely is, and so closes what it
    // declares instead of vanishing. A kind further from ours (an Ingress, a GRPCRoute) is
    // left alone.
    let kind = value.get("kind");
    let near = match kind {
        None | Some(Value::Null) => true,
        Some(k) => k.as_str().is_some_and(|k| {
            let k = k.trim().to_ascii_lowercase();
            ["httproute", "edgepolicy"]
                .iter()
                .any(|ours| pqmesh_mtls::env::edit_distance(&k, ours) <= 2)
        }),
    };
    let named = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !(near && named) {
        Kind::Other
    } else if spec_has("targetRef") {
        Kind::EdgePolicy
    } else if spec_has("parentRefs") || spec_has("rules") {
        Kind::HttpRoute
    } else {
        Kind::Other
    }
}

/// The documents to judge, `(source, value)`; of files that did not read and have no readable
/// version to keep, the documents that do not parse on their own: as far as they read
/// (`partial`, judged refused by `lenient::judge_partial`) and their texts (scanned by
/// [`close_routes_named_in`]).
pub(super) struct Read {
    pub documents: Vec<(String, Value)>,
    pub partial: Vec<(String, Value)>,
    pub unread: Vec<(String, String)>,
}

/// Reads every file as a whole. One that does not read as YAML, or that has no documents any
/// more, keeps its last readable version (`last.files`) in force: a non-atomic write or a typo
/// must not drop the EdgePolicies it holds. `kept` receives the texts in force.
pub(super) fn read_files(
    texts: &[(String, String)],
    last: &LastGood,
    verdicts: &mut Vec<Verdict>,
    kept: &mut BTreeMap<String, String>,
) -> Read {
    let mut read = Read {
        documents: Vec::new(),
        partial: Vec::new(),
        unread: Vec::new(),
    };
    for (file, text) in texts {
        let previous = last
            .files
            .get(file)
            .and_then(|t| documents_of(file, t).ok().map(|d| (t, d)));
        match documents_of(file, text) {
            Ok(docs) if docs.is_empty() => {
                if let Some((old, docs)) = previous.filter(|(_, d)| !d.is_empty()) {
                    verdicts.push(super::refused(
                        "Unknown",
                        file,
                        file,
                        "the file has no documents any more: taken as a write in progress, its \
                         last version stays in force (delete the file to remove its objects)"
                            .into(),
                    ));
                    kept.insert(file.clone(), old.clone());
                    read.documents.extend(docs);
                }
            }
            Ok(docs) => {
                kept.insert(file.clone(), text.clone());
                read.documents.extend(docs);
            }
            Err((_, source, e)) => {
                match previous {
                    Some((old, docs)) => {
                        verdicts.push(super::refused(
                        "Unknown",
                        &source,
                        &source,
                        format!("{e}; the file is not read: its last readable version stays in force"),
                    ));
                        kept.insert(file.clone(), old.clone());
                        read.documents.extend(docs);
                    }
                    None => {
                        let mut any = false;
                        for doc in super::lenient::recover(file, text) {
                            match doc {
                                super::lenient::Doc::Whole(s, v) => read.documents.push((s, v)),
                                super::lenient::Doc::Partial {
                                    source,
                                    value,
                                    error,
                                    text,
                                } => {
                                    any = true;
                                    verdicts.push(super::refused(
                                        "Unknown",
                                        &source,
                                        &source,
                                        format!(
                                            "{error}; the file is read document by document: \
                                             this one, read as far as it does, is refused and \
                                             what it may declare answers 503 until the file reads"
                                        ),
                                    ));
                                    read.partial.push((source.clone(), value));
                                    read.unread.push((source, text));
                                }
                            }
                        }
                        if !any {
                            verdicts.push(super::refused(
                                "Unknown",
                                &source,
                                &source,
                                format!("{e}; every document of the file reads on its own, and is judged"),
                            ));
                        }
                    }
                }
            }
        }
    }
    read
}

type Documents = Vec<(String, Value)>;

/// A file's documents (`<file> document <n>`, empty ones left out), or those before the first
/// that does not read, that one's source and the error.
fn documents_of(file: &str, text: &str) -> Result<Documents, (Documents, String, String)> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let source = format!("{file} document {}", i + 1);
        match Value::deserialize(doc) {
            Ok(v) if v.is_null() => {}
            Ok(v) => out.push((source, v)),
            Err(e) => return Err((out, source, e.to_string())),
        }
    }
    Ok(out)
}

/// Closes (503) every route whose name appears as a word in the text of a document that does
/// not parse in a file with no readable version (with what its lines that did not read decode
/// to: `lenient::recover`): an EdgePolicy there may name that route. The last resort, beside
/// what the document reads as (`lenient::judge_partial`).
pub(super) fn close_routes_named_in(
    routes: &mut [RouteModel],
    verdicts: &mut [Verdict],
    unread: &[(String, String)],
) {
    for (source, text) in unread {
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
            .collect();
        for route in routes.iter_mut().filter(|r| r.closed.is_none()) {
            let short = route.name.split_once('/').map_or("", |(_, n)| n);
            if !words.contains(&short) {
                continue;
            }
            let message = format!(
                "{source} does not read as YAML and names this route (an EdgePolicy there may \
                 protect it); every request gets 503 until the file reads"
            );
            super::edge_policies::show_closure(
                verdicts,
                &route.name,
                "EdgePolicyRefused",
                &message,
            );
            route.closed = Some(message);
        }
    }
}

/// An EdgePolicy as far as a refused document reads: `(namespace, route name)` it may target
/// (`None` namespace: not stated, so any), or `None` when no target reads at all.
pub(super) fn raw_targets(value: &Value) -> Option<Vec<(Option<String>, String)>> {
    // A namespace that is no DNS label (`Shop`) does not read: any namespace (review 12, F4).
    let ns = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|n| super::in_force::is_dns_label(n))
        .map(str::to_owned);
    let spec = value.get("spec")?.as_mapping()?;
    let mut out = Vec::new();
    for (k, v) in spec {
        let is_target = k
            .as_str()
            .is_some_and(|k| k.to_ascii_lowercase().starts_with("targetref"));
        if !is_target {
            continue;
        }
        let refs: Vec<&Value> = match v {
            Value::Sequence(s) => s.iter().collect(),
            other => vec![other],
        };
        for r in refs {
            let Some(m) = r.as_mapping() else {
                for name in scalars(r) {
                    out.push((ns.clone(), name));
                }
                continue;
            };
            let other_ns = m.get("namespace").and_then(Value::as_str);
            for (k2, n) in m {
                if !k2.as_str().is_some_and(|k| k.eq_ignore_ascii_case("name")) {
                    continue;
                }
                for name in scalars(n) {
                    out.push((ns.clone(), name.clone()));
                    if let Some(o) = other_ns {
                        out.push((Some(o.to_owned()), name));
                    }
                }
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Every scalar in `v` as text (a name written as a list, a number or a map still names).
fn scalars(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Sequence(s) => s.iter().flat_map(scalars).collect(),
        Value::Mapping(m) => m.values().flat_map(scalars).collect(),
        Value::Tagged(t) => scalars(&t.value),
        Value::Null => Vec::new(),
    }
}

/// Placeholders for a refused HTTPRoute with no accepted version: routes that answer 503 for
/// what the raw object declares, read leniently and always towards closing more: its parentRefs'
/// Gateways of its own namespace whatever their `sectionName` or `port` (all Gateways of its
/// namespace when none reads; of any namespace when local mode's file states none), its hostnames (every hostname when they do not read), and its path matches
/// (`Exact` and `PathPrefix` as written; any other type by its literal start, cut at the last
/// `/`; a match, rule or path that does not read is `/`, the whole hostname). Method, header
/// and query matches are ignored, which closes more; on a tie a placeholder counts as oldest. `gateways` are ours (`<ns>/<name>`).
/// Returns the placeholders and a description for the verdict.
pub(super) fn placeholder_routes(
    value: &Value,
    name: &str,
    gateways: &[String],
    closed: &str,
) -> (Vec<RouteModel>, String) {
    let ns = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|n| super::in_force::is_dns_label(n));
    let spec = value.get("spec");
    let named: Vec<(Option<&str>, &str)> = spec
        .and_then(|s| s.get("parentRefs"))
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?;
            let pns = p.get("namespace").and_then(Value::as_str).or(ns);
            Some((pns, name))
        })
        .collect();
    let selected: Vec<(&str, &str)> = gateways
        .iter()
        .filter_map(|g| g.split_once('/'))
        // Listeners admit routes of their own namespace only, so a placeholder never reaches
        // another namespace's Gateway (a refused route must not close what others serve).
        .filter(|(gns, _)| ns.is_none_or(|n| n == *gns))
        .filter(|(gns, gname)| {
            named.is_empty()
                || named
                    .iter()
                    .any(|(pns, pname)| pname == gname && pns.is_none_or(|n| n == *gns))
        })
        .collect();
    let hostnames: Vec<String> = spec
        .and_then(|s| s.get("hostnames"))
        .and_then(Value::as_sequence)
        .and_then(|h| h.iter().map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let paths = lenient_paths(spec.and_then(|s| s.get("rules")));
    let rules: Vec<serde_json::Value> = paths
        .iter()
        .map(|(kind, value)| {
            let kind = match kind {
                PathMatchType::Exact => "Exact",
                PathMatchType::PathPrefix => "PathPrefix",
            };
            serde_json::json!({"matches": [{"path": {"type": kind, "value": value}}]})
        })
        .collect();
    // Sorts before every timestamp: on equal specificity the placeholder wins the tie, so a
    // broader or equal route never serves what the refused route declared.
    let created = Some(String::new());
    let mut by_namespace: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (gns, gname) in &selected {
        by_namespace.entry(gns).or_default().push(gname);
    }
    let mut out = Vec::new();
    for (gns, names) in by_namespace {
        let parent_refs: Vec<serde_json::Value> = names
            .iter()
            .map(|n| serde_json::json!({"name": n}))
            .collect();
        let spec = serde_json::json!({
            "parentRefs": parent_refs,
            "hostnames": hostnames,
            "rules": rules,
        });
        // Built from values read above, so it always deserializes; a failure closes nothing
        // less than the `/` below would, so fall back to it.
        let spec: HttpRouteSpec = serde_json::from_value(spec).unwrap_or_else(|_| HttpRouteSpec {
            parent_refs: Vec::new(),
            hostnames: Vec::new(),
            rules: Vec::new(),
        });
        out.push(RouteModel {
            name: name.to_owned(),
            namespace: gns.to_owned(),
            created: created.clone(),
            spec,
            edge: None,
            closed: Some(closed.to_owned()),
        });
    }
    let hosts = if hostnames.is_empty() {
        "every hostname".to_owned()
    } else {
        hostnames.join(", ")
    };
    let paths: Vec<String> = paths.iter().map(|(k, v)| format!("{k:?} {v}")).collect();
    let on: Vec<String> = selected.iter().map(|(n, g)| format!("{n}/{g}")).collect();
    let description = if on.is_empty() {
        "no Gateway of ours is named, so nothing is served for it".to_owned()
    } else {
        format!(
            "until it is fixed, {hosts} with paths {} on Gateway {} answer 503",
            paths.join(", "),
            on.join(", ")
        )
    };
    (out, description)
}

/// The path matches of raw `rules`, each towards closing more (see [`placeholder_routes`]).
fn lenient_paths(rules: Option<&Value>) -> Vec<(PathMatchType, String)> {
    let everything = vec![(PathMatchType::PathPrefix, "/".to_owned())];
    let Some(rules) = rules else {
        return everything;
    };
    let Some(rules) = rules.as_sequence().filter(|r| !r.is_empty()) else {
        return everything;
    };
    let mut out = Vec::new();
    for rule in rules {
        let matches = rule.get("matches").and_then(Value::as_sequence);
        let Some(matches) = matches.filter(|m| !m.is_empty()) else {
            return everything;
        };
        for m in matches {
            out.push(lenient_path(m.get("path")));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out.dedup();
    out
}

fn lenient_path(path: Option<&Value>) -> (PathMatchType, String) {
    let everything = (PathMatchType::PathPrefix, "/".to_owned());
    let Some(path) = path else {
        return everything;
    };
    let kind = path
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("PathPrefix");
    let value = match path.get("value") {
        None => "/",
        Some(v) => match v.as_str() {
            Some(s) => s,
            None => return everything,
        },
    };
    match kind {
        "Exact" if value.starts_with('/') => (PathMatchType::Exact, value.to_owned()),
        "PathPrefix" if value.starts_with('/') => (PathMatchType::PathPrefix, value.to_owned()),
        _ => (PathMatchType::PathPrefix, literal_start(value)),
    }
}

/// The literal start of a pattern (a regular expression, a glob), cut at the last `/` before
/// its first special character: `/victim/.*` → `/victim/`, `/victim.*` → `/`.
fn literal_start(pattern: &str) -> String {
    let p = pattern.strip_prefix('^').unwrap_or(pattern);
    if !p.starts_with('/') {
        return "/".to_owned();
    }
    let cut = p
        .find(|c: char| "\\^$.|?*+()[]{}".contains(c))
        .unwrap_or(p.len());
    let literal = &p[..cut];
    if cut == p.len() {
        return literal.to_owned();
    }
    literal[..=literal.rfind('/').unwrap_or(0)].to_owned()
}

/// An HTTPRoute refused in this judgement.
pub(super) struct RefusedRoute {
    pub name: String,
    pub source: String,
    pub value: Value,
    /// A second definition of a name: the last accepted version is the other's, not this one's.
    pub duplicate: bool,
}

/// An EdgePolicy refused in this judgement, with what it may target.
pub(super) struct RefusedPolicy {
    pub name: String,
    pub source: String,
    /// `metadata.namespace` as read (`None`: not stated).
    pub namespace: Option<String>,
    /// `(namespace, route name)` (see [`raw_targets`]); `None`: no target reads, so every
    /// route of its namespace (of every namespace, when that does not read either).
    pub targets: Option<Vec<(Option<String>, String)>>,
    /// Why the routes it targets are closed, for their verdicts.
    pub why: String,
    /// A second definition of a name: the last accepted version is not this one's to keep.
    pub duplicate: bool,
}
