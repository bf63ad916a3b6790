//! What a local file that does not parse as YAML declares, with no readable version to keep (at
//! start-up): read by a lenient parse, never by a text search alone (outside review 13, F4: a
//! target name written with a YAML escape, `"secr\u0065t"`, is only found by decoding it).
//!
//! The file is split into documents at its `---` lines, each parsed on its own: a document that
//! parses is judged as any other. One that does not is read as far as it does (the longest
//! prefix of its lines that parses and does not cut a value short), and that partial value is
//! REFUSED whatever it holds, closing (503) what it may declare:
//! - read as an HTTPRoute: a placeholder holds what it declares (as for a refused route);
//! - read as an EdgePolicy, or its kind does not read (or is a near typo of ours): every route
//!   its `targetRef(s)` name; when none reads, every route of its namespace; when that does not
//!   read either, every route of every namespace (the document may be an EdgePolicy of any
//!   namespace: nothing narrower is sound);
//! - read as a GatewayClass, Gateway or TokenIssuer, or a kind far from ours: refused, closing
//!   nothing more (what needed it fails closed already).
//!
//! As a last resort every route whose name appears in the document's text is closed as well,
//! the lines that did not read each decoded on its own when they parse alone.

use serde_yaml::Value;

use super::refused::{kind_of, raw_targets, Kind, RefusedPolicy, RefusedRoute};
use crate::load::Verdict;

/// One document of a file that does not parse.
pub(super) enum Doc {
    /// It parses on its own.
    Whole(String, Value),
    /// It does not: `value` is what its longest readable prefix holds; `text` is its text with
    /// what the lines that did not read decode to (for the last-resort name search).
    Partial {
        source: String,
        value: Value,
        error: String,
        text: String,
    },
}

/// The documents of `text` (`<file> document <n>`, numbered as a file that parses would be:
/// an empty first document before a leading `---` is not counted; empty ones are left out).
pub(super) fn recover(file: &str, text: &str) -> Vec<Doc> {
    let mut out = Vec::new();
    for (i, doc) in split(text).iter().enumerate() {
        let source = format!("{file} document {}", i + 1);
        match serde_yaml::from_str::<Value>(doc) {
            Ok(v) if v.is_null() => {}
            Ok(v) => out.push(Doc::Whole(source, v)),
            Err(e) => {
                let lines: Vec<&str> = doc.lines().collect();
                let (value, kept) = longest_prefix(&lines, e.location().map(|l| l.line()));
                let mut text = doc.clone();
                for line in &lines[kept..] {
                    for s in decode_line(line) {
                        text.push('\n');
                        text.push_str(&s);
                    }
                }
                out.push(Doc::Partial {
                    source,
                    value,
                    error: pqmesh_policy::redact::yaml_error(&e).to_string(),
                    text,
                });
            }
        }
    }
    out
}

/// Splits at document start markers (`---` alone or followed by a space: a marker inside a
/// block or quoted scalar is one too in YAML). Each document keeps its marker line.
fn split(text: &str) -> Vec<String> {
    let mut docs: Vec<String> = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") {
            docs.push(String::new());
        }
        docs.last_mut()
            .expect("one document at least")
            .push_str(line);
    }
    // The part before a leading marker is a document only when it has content.
    let first_empty = docs[0].lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t.starts_with('%')
    });
    if first_empty && docs.len() > 1 {
        docs.remove(0);
    }
    docs
}

/// The value of the longest prefix of `lines` that parses (in a document of more than 2000
/// lines, at most up to the error's line, 1-based), and that does not cut a value short (the first line left out is no deeper than
/// the last one kept, unless that one opens a block with `:`), and how many lines it keeps.
fn longest_prefix(lines: &[&str], error_line: Option<usize>) -> (Value, usize) {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let blank = |l: &str| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    };
    // The error's line may be before the value that breaks (a duplicate key is reported where
    // its mapping starts): every line is tried, except in a long document.
    let start = match error_line {
        Some(l) if lines.len() > 2000 => l.min(lines.len()),
        _ => lines.len(),
    };
    for n in (1..=start).rev() {
        let last = lines[..n].iter().rev().find(|l| !blank(l));
        let next = lines[n..].iter().find(|l| !blank(l));
        let whole = match (last, next) {
            (Some(last), Some(next)) => {
                indent(next) <= indent(last) || last.trim_end().ends_with(':')
            }
            _ => true,
        };
        if !whole {
            continue;
        }
        if let Ok(v) = serde_yaml::from_str::<Value>(&lines[..n].join("\n")) {
            return (v, n);
        }
    }
    (Value::Null, 0)
}

/// Every string a line that did not read holds when parsed on its own (a list item's dash
/// dropped), so that an escaped name there is still seen by the name search.
fn decode_line(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix("- ").unwrap_or(t);
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Sequence(s) => s.iter().for_each(|x| strings(x, out)),
            Value::Mapping(m) => m.iter().for_each(|(k, x)| {
                strings(k, out);
                strings(x, out);
            }),
            Value::Tagged(t) => strings(&t.value, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_yaml::from_str::<Value>(t) {
        strings(&v, &mut out);
    }
    out
}

/// Judges the partial documents of files that do not parse: each is refused, and closes what it
/// may declare (see the module's documentation).
pub(super) fn judge_partial(
    partial: Vec<(String, Value)>,
    verdicts: &mut Vec<Verdict>,
    routes: &mut Vec<RefusedRoute>,
    policies: &mut Vec<RefusedPolicy>,
) {
    for (source, value) in partial {
        let value = if value.is_mapping() {
            value
        } else {
            Value::Null
        };
        let kind_text = value.get("kind").and_then(Value::as_str);
        let name = super::object_name(&value);
        let namespace = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|n| super::in_force::is_dns_label(n))
            .map(str::to_owned);
        let kind = kind_of(&value);
        let near = kind_text.is_none_or(|k| {
            let k = k.trim().to_ascii_lowercase();
            ["httproute", "edgepolicy"]
                .iter()
                .any(|ours| pqmesh_mtls::env::edit_distance(&k, ours) <= 2)
        });
        let read_as = match kind {
            Kind::Other if near => Kind::EdgePolicy,
            k => k,
        };
        let shown = match read_as {
            Kind::Other => kind_text.unwrap_or("Unknown"),
            k => k.canonical(),
        };
        let what = match read_as {
            Kind::HttpRoute => "refused".to_owned(),
            Kind::EdgePolicy => {
                let targets = raw_targets(&value);
                let closes = match (&targets, &namespace) {
                    (Some(_), _) => "every HTTPRoute its targetRef names".to_owned(),
                    (None, Some(ns)) => {
                        format!("no targetRef reads, so every HTTPRoute of namespace {ns}")
                    }
                    (None, None) => "neither a targetRef nor its namespace reads, so every \
                         HTTPRoute of every namespace"
                        .to_owned(),
                };
                policies.push(RefusedPolicy {
                    why: format!(
                        "EdgePolicy {name} ({source}) does not read as YAML and may target it"
                    ),
                    name: name.clone(),
                    source: source.clone(),
                    namespace: namespace.clone(),
                    targets,
                    duplicate: false,
                });
                format!("refused, and {closes} answers 503 until the file reads")
            }
            _ => "refused (it closes nothing more)".to_owned(),
        };
        let mut v = super::refused(
            shown,
            &name,
            &source,
            format!(
                "this document does not read as YAML (see the file's verdict); read as far as it \
                 does, as {shown}: {what}"
            ),
        );
        v.accepted_reason = "UnsupportedValue";
        verdicts.push(v);
        if read_as == Kind::HttpRoute {
            routes.push(RefusedRoute {
                name,
                source,
                value,
                duplicate: false,
            });
        }
    }
}
