//! Local mode: policy objects from YAML files, one candidate per document, each judged as what
//! it means even when it does not read as what it says (outside reviews 12 and 13).

use serde::Deserialize;
use serde_yaml::Value;

use super::{Candidate, ObjectKey, Reach};
use crate::model::Resource;

/// The kind a document means (outside review 12 F1): `kind` whatever its case and spacing, or,
/// when `kind` names neither kind (a typo, missing), what its `spec` is shaped like — a
/// selector, peers, rules or ports make an AccessPolicy, an issuer or keys a TokenIssuer — so
/// that `kind: AccessPolcy` is judged (and refused) as the AccessPolicy it was, keeping that
/// policy's last accepted version or failing closed, instead of vanishing.
fn kind_meant(kind: &str, value: &serde_yaml::Value) -> Option<&'static str> {
    for meant in ["AccessPolicy", "TokenIssuer"] {
        if kind.trim().eq_ignore_ascii_case(meant) {
            return Some(meant);
        }
    }
    let api = value
        .get("apiVersion")
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or_default();
    if !(api.is_empty() || api.trim().to_ascii_lowercase().starts_with("pqmesh")) {
        return None; // another API's object (an HTTPRoute has `rules` too)
    }
    let spec = value.get("spec")?;
    let has = |fields: &[&str]| fields.iter().any(|f| spec.get(*f).is_some());
    if has(&["selector", "peers", "rules", "ports", "mtls", "token"]) {
        Some("AccessPolicy")
    } else if has(&["issuer", "jwksUri", "audiences", "introspection"]) {
        Some("TokenIssuer")
    } else {
        None
    }
}

/// Candidates from one (multi-document) YAML text: each document is its own object, keyed by
/// its `kind` and `metadata` even when the rest of it does not parse. A document without a
/// readable key is reported under `<source> document N`.
pub fn candidates_from_yaml(text: &str, source: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = format!("{source} document {}", i + 1);
        match Value::deserialize(doc) {
            Ok(v) if v.is_null() => {}
            Ok(v) => out.push(candidate(v, at, None)),
            Err(e) => {
                // A YAML error ends the stream. What this document and the next ones declare is
                // recovered leniently (outside review 13 F2: a duplicate key or a half-written
                // file used to leave a restarted control plane nothing to close).
                out.extend(recovered(text, source, i, &e.to_string()));
                break;
            }
        }
    }
    out
}

/// Documents `from..` of `text`, split at `---` lines and each read on its own; one that does
/// not read is read as far as it does (the longest prefix of its lines that parses), so its
/// kind, name, namespace and selector still count, and it is refused with `error`.
fn recovered(text: &str, source: &str, from: usize, error: &str) -> Vec<Candidate> {
    let mut docs: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(Vec::new());
        } else if let Some(d) = docs.last_mut() {
            d.push(line);
        }
    }
    let blank = |d: &Vec<&str>| {
        d.iter()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    };
    if docs.len() > 1 && blank(&docs[0]) {
        docs.remove(0);
    }
    let mut out = Vec::new();
    for (i, lines) in docs.iter().enumerate().skip(from) {
        let at = format!("{source} document {}", i + 1);
        match serde_yaml::from_str::<Value>(&lines.join("\n")) {
            Ok(v) if v.is_null() => {}
            Ok(v) => out.push(candidate(v, at, None)),
            Err(e) => {
                let why = if i == from {
                    error.to_owned()
                } else {
                    e.to_string()
                };
                let partial = (1..lines.len().min(2000))
                    .rev()
                    .find_map(|n| serde_yaml::from_str::<Value>(&lines[..n].join("\n")).ok())
                    .filter(Value::is_mapping);
                out.push(match partial {
                    Some(v) => candidate(v, at, Some(why)),
                    None => Candidate {
                        key: ObjectKey::new("Unknown", "", &at),
                        source: at,
                        generation: None,
                        created: None,
                        parsed: Err(why),
                        reach: None,
                    },
                });
            }
        }
    }
    out
}

/// One document as a candidate: keyed by the kind it means, its name and namespace; refused
/// with `unreadable` when it was only read in part.
fn candidate(value: Value, at: String, unreadable: Option<String>) -> Candidate {
    let text_of = |v: Option<&serde_yaml::Value>| {
        v.and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let kind = text_of(value.get("kind"));
    let meta = value.get("metadata");
    let name = text_of(meta.and_then(|m| m.get("name")));
    let given = meta
        .and_then(|m| m.get("namespace"))
        .and_then(serde_yaml::Value::as_str);
    let namespace = given.unwrap_or("default").to_owned();
    let key = match (kind_meant(&kind, &value), name.is_empty()) {
        (Some(kind), false) => ObjectKey::new(kind, &namespace, &name),
        // A nameless AccessPolicy still selects what it selects (it fails closed below).
        (Some("AccessPolicy"), true) => ObjectKey::new("AccessPolicy", &namespace, &at),
        _ => ObjectKey::new("Unknown", "", &at),
    };
    let reach = (key.kind == "AccessPolicy").then(|| Reach::of_yaml(&value));
    let parsed = match unreadable {
        Some(why) => Err(why),
        // Outside review 13 F3: an edit that dropped the namespace moved the policy to
        // `default` and so removed it from its workloads. Refused, the object it was keeps its
        // last good version (`keep_hidden`), or it fails closed where it now points.
        None if given.is_none() && key.kind != "Unknown" => Err(
            "metadata.namespace is required in local mode (without it the object would \
             silently belong to namespace default)"
                .to_owned(),
        ),
        None => serde_yaml::from_value::<Resource>(value).map_err(|e| e.to_string()),
    };
    Candidate {
        key,
        source: at,
        generation: None,
        created: None,
        parsed,
        reach,
    }
}
