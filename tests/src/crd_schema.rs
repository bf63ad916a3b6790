//! What kube-apiserver does to a custom resource before storing it, for the recording API
//! server: prune unknown fields (what happens without strict field validation — how a misspelt
//! `peer:` silently vanished), apply defaults, and validate against the CRD's structural schema
//! (types, required, enum, pattern, ranges, lengths, the claim's `oneOf`), then the CRD's
//! `x-kubernetes-validations`. There is no CEL evaluator here: each rule the CRDs carry has a
//! hand-coded equivalent below, and a rule without one fails loudly, so a new rule cannot slip
//! through untested.

use serde_json::{Map, Value};

/// The `openAPIV3Schema` of the pqmesh CRD for `kind`, or the status schema of a Gateway API
/// kind (`crate::gateway_api_schema`).
pub fn schema_for(kind: &str) -> Option<Value> {
    pqmesh_policy::crd::crds()
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .map(|c| c["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
        .or_else(|| crate::gateway_api_schema::schema_for(kind))
}

/// Prunes, defaults and validates `object` (only `spec` and `status`; metadata is the server's).
/// Errors are the API server's `field: reason` lines.
pub fn admit(schema: &Value, object: &mut Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    for part in ["spec", "status"] {
        let sub = &schema["properties"][part];
        match object.get_mut(part) {
            Some(v) => check(sub, v, part, &mut errors),
            None if schema["required"]
                .as_array()
                .is_some_and(|r| r.contains(&Value::from(part))) =>
            {
                errors.push(format!("{part}: Required value"))
            }
            None => {}
        }
    }
    if let Some(obj) = object.as_object_mut() {
        obj.retain(|k, _| {
            matches!(
                k.as_str(),
                "apiVersion" | "kind" | "metadata" | "spec" | "status"
            )
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check(schema: &Value, v: &mut Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() && schema["nullable"] == Value::Bool(true) {
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let type_ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!("{path}: Invalid value: must be of type {ty}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            errors.push(format!(
                "{path}: Unsupported value: {v}: supported values: {allowed:?}"
            ));
        }
    }
    if let (Some(p), Some(s)) = (schema["pattern"].as_str(), v.as_str()) {
        if !regex::Regex::new(p)
            .expect("CRD pattern compiles")
            .is_match(s)
        {
            errors.push(format!("{path}: Invalid value: {s:?}: should match '{p}'"));
        }
    }
    if let Some(s) = v.as_str() {
        if schema["maxLength"]
            .as_u64()
            .is_some_and(|m| (s.chars().count() as u64) > m)
        {
            errors.push(format!(
                "{path}: Too long: may not be more than {} bytes",
                schema["maxLength"]
            ));
        }
        if schema["format"] == "date-time" && s.parse::<k8s_openapi::jiff::Timestamp>().is_err() {
            errors.push(format!(
                "{path}: Invalid value: {s:?}: {path} in body must be of type date-time"
            ));
        }
        if schema["minLength"]
            .as_u64()
            .is_some_and(|m| (s.chars().count() as u64) < m)
        {
            errors.push(format!(
                "{path}: Invalid value: should be at least {} chars long",
                schema["minLength"]
            ));
        }
    }
    if let Some(n) = v.as_i64() {
        if schema["minimum"].as_i64().is_some_and(|m| n < m) {
            errors.push(format!(
                "{path}: Invalid value: {n}: should be greater than or equal to {}",
                schema["minimum"]
            ));
        }
        if schema["maximum"].as_i64().is_some_and(|m| n > m) {
            errors.push(format!(
                "{path}: Invalid value: {n}: should be less than or equal to {}",
                schema["maximum"]
            ));
        }
    }
    match v {
        Value::Object(map) => {
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
            if let Some(props) = schema["properties"].as_object() {
                if !preserve {
                    map.retain(|k, _| props.contains_key(k));
                }
                for (k, sub) in props {
                    if !map.contains_key(k) {
                        if let Some(d) = sub.get("default") {
                            map.insert(k.clone(), d.clone());
                        }
                    }
                }
                for (k, sub) in props {
                    if let Some(child) = map.get_mut(k) {
                        check(sub, child, &format!("{path}.{k}"), errors);
                    }
                }
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                if !map.contains_key(r) {
                    errors.push(format!("{path}.{r}: Required value"));
                }
            }
            if let Some(branches) = schema["oneOf"].as_array() {
                let matching = branches
                    .iter()
                    .filter(|b| {
                        b["required"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .all(|r| r.as_str().is_some_and(|r| map.contains_key(r)))
                    })
                    .count();
                if matching != 1 {
                    errors.push(format!(
                        "{path}: Invalid value: must validate one and only one schema (oneOf)"
                    ));
                }
            }
            for rule in schema["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let text = rule["rule"].as_str().unwrap_or_default();
                if !cel(text, map) {
                    errors.push(format!(
                        "{path}: Invalid value: \"object\": {}",
                        rule["message"].as_str().unwrap_or(text)
                    ));
                }
            }
        }
        Value::Array(items) => {
            if schema["maxItems"]
                .as_u64()
                .is_some_and(|m| (items.len() as u64) > m)
            {
                errors.push(format!(
                    "{path}: Too many: {}: must have at most {} items",
                    items.len(),
                    schema["maxItems"]
                ));
            }
            if schema["x-kubernetes-list-type"] == "map" {
                let keys = schema["x-kubernetes-list-map-keys"].clone();
                let mut seen = Vec::new();
                for item in items.iter() {
                    let key: Vec<Value> = keys
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|k| item[k.as_str().unwrap_or_default()].clone())
                        .collect();
                    if seen.contains(&key) {
                        errors.push(format!("{path}: Duplicate value: {key:?}"));
                    }
                    seen.push(key);
                }
            }
            if schema["minItems"]
                .as_u64()
                .is_some_and(|m| (items.len() as u64) < m)
            {
                errors.push(format!(
                    "{path}: Invalid value: must have at least {} items",
                    schema["minItems"]
                ));
            }
            for (i, item) in items.iter_mut().enumerate() {
                check(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

fn size(map: &Map<String, Value>, key: &str) -> usize {
    map.get(key).and_then(Value::as_array).map_or(0, Vec::len)
}

/// Hand-coded equivalents of the CRDs' CEL rules (by their exact text).
fn cel(rule: &str, s: &Map<String, Value>) -> bool {
    match rule {
        "has(self.introspection) || (has(self.audiences) && size(self.audiences) > 0)" => {
            s.contains_key("introspection") || size(s, "audiences") > 0
        }
        "!self.peers.exists(p, p == '*') || size(self.peers) == 1" => {
            let peers = s.get("peers").and_then(Value::as_array).cloned().unwrap_or_default();
            !peers.iter().any(|p| p == "*") || peers.len() == 1
        }
        "has(self.token) || !has(self.rules) || self.rules.all(r, (!has(r.scopes) || size(r.scopes) == 0) && (!has(r.claims) || size(r.claims) == 0))" => {
            s.contains_key("token")
                || s.get("rules").and_then(Value::as_array).is_none_or(|rules| {
                    rules.iter().all(|r| {
                        r.as_object()
                            .is_none_or(|r| size(r, "scopes") == 0 && size(r, "claims") == 0)
                    })
                })
        }
        other => panic!(
            "the recording API server has no equivalent of the CEL rule {other:?}: add one to tests/src/crd_schema.rs"
        ),
    }
}
