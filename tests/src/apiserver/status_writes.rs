//! Status writes of the recording API server: which status fields an apply names, the
//! approximate field ownership after a write, and JSON patches (RFC 6902) on `status`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Key, State};

/// The status fields an apply names: top-level keys, and `replicas[<name>]` entries.
pub(super) fn status_fields(status: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (k, v) in status.as_object().into_iter().flatten() {
        if k == "replicas" {
            for e in v.as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default();
                out.insert(format!("replicas[{name}]"), e.clone());
            }
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Approximate field ownership after a status write; returns the managers left owning nothing.
/// As on the real server, an apply that sets a field to the value it already has *shares* it
/// with its other owners (so a replica that is gone keeps co-owning what all replicas applied
/// alike); one that changes the value takes it over (a forced apply).
pub(super) fn reown(
    state: &mut State,
    key: &Key,
    manager: Option<&str>,
    applied: &BTreeMap<String, Value>,
    before: &BTreeMap<String, Value>,
    removed: &[String],
) -> Vec<String> {
    let owners = state.owned.entry(key.clone()).or_default();
    let taken = |f: &String| applied.get(f).is_some_and(|v| before.get(f) != Some(v));
    for fields in owners.values_mut() {
        fields.retain(|f| !taken(f) && !removed.contains(f));
    }
    if let Some(m) = manager {
        owners
            .entry(m.to_owned())
            .or_default()
            .extend(applied.keys().cloned());
    }
    let empty: Vec<String> = owners
        .iter()
        .filter(|(_, f)| f.is_empty())
        .map(|(m, _)| m.clone())
        .collect();
    owners.retain(|_, f| !f.is_empty());
    empty
}

/// JSON patch (RFC 6902) on `status`: test, remove, add, replace, with `/status/...` paths.
pub(super) fn json_patch(object: &mut Value, ops: &Value) -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    for op in ops.as_array().ok_or("a JSON patch is an array")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        let (parent, last) = path.rsplit_once('/').ok_or("bad path")?;
        let target = object
            .pointer_mut(parent)
            .ok_or_else(|| format!("{parent}: not found"))?;
        match op["op"].as_str().unwrap_or_default() {
            "test" => {
                if object.pointer(path) != Some(&op["value"]) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            "remove" => {
                let gone = match target {
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if i >= a.len() {
                            return Err(format!("{path}: not found"));
                        }
                        a.remove(i)
                    }
                    Value::Object(m) => {
                        m.remove(last).ok_or_else(|| format!("{path}: not found"))?
                    }
                    _ => return Err(format!("{path}: not found")),
                };
                if parent == "/status/replicas" {
                    removed.push(format!(
                        "replicas[{}]",
                        gone["name"].as_str().unwrap_or_default()
                    ));
                } else if parent == "/status" {
                    removed.push(last.to_owned());
                }
            }
            "add" | "replace" => match target {
                Value::Object(m) => {
                    m.insert(last.to_owned(), op["value"].clone());
                }
                _ => return Err(format!("{path}: unsupported")),
            },
            other => {
                return Err(format!(
                    "op {other:?} not supported by the recorded API server"
                ))
            }
        }
    }
    Ok(removed)
}
