//! Kubernetes CustomResourceDefinitions for the policy resources, generated from the Rust types
//! (the OpenAPI schema is the `JsonSchema` of each spec), so the chart's CRDs and the control
//! plane's parser cannot drift apart. Schemas are made structural (Kubernetes' rules: no `$ref`,
//! no `additionalProperties` beside `properties`) and unknown fields are pruned by the API server.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::edge::EdgePolicySpec;
use crate::model::{AccessPolicySpec, TokenIssuerSpec, GROUP, VERSION};

fn structural<T: JsonSchema>() -> Value {
    let settings = SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
    });
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut value = serde_json::to_value(schema).unwrap_or(Value::Null);
    clean(&mut value);
    value
}

// Removes what apiextensions/v1 rejects in structural schemas.
fn clean(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for key in ["$schema", "title", "definitions", "$defs", "examples"] {
                map.remove(key);
            }
            if map.contains_key("properties") {
                map.remove("additionalProperties");
            }
            if let Some(Value::String(f)) = map.get("format") {
                if !matches!(f.as_str(), "int32" | "int64" | "byte" | "date-time" | "uri") {
                    map.remove("format");
                }
            }
            // Optional fields: `anyOf: [{...}, {nullable}]` forms are flattened to the inner schema.
            if let Some(Value::Array(any)) = map.get("anyOf").cloned() {
                if let Some(inner) = any
                    .iter()
                    .find(|s| s.get("type").is_some_and(|t| t != "null"))
                {
                    map.remove("anyOf");
                    if let Value::Object(inner) = inner.clone() {
                        for (k, val) in inner {
                            map.entry(k).or_insert(val);
                        }
                    }
                }
            }
            if let Some(Value::Array(types)) = map.get("type").cloned() {
                if let Some(t) = types.iter().find(|t| *t != "null") {
                    map.insert("type".into(), t.clone());
                    map.insert("nullable".into(), Value::Bool(true));
                }
            }
            for val in map.values_mut() {
                clean(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(clean),
        _ => {}
    }
}

/// `status.conditions` (metav1.Condition), `description` saying which.
fn conditions(description: &str) -> Value {
    json!({
        "type": "array",
        "description": description,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "reason", "message", "lastTransitionTime"],
            "properties": {
                "type": {"type": "string"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string"},
                "message": {"type": "string", "maxLength": 32768},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time"}
            }
        }
    })
}

/// The status of the control plane's kinds: conditions and sidecar counts per replica.
fn policy_status() -> Value {
    json!({
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "selectedSidecars": {"type": "integer", "format": "int32", "description": "Connected sidecars this policy selects"},
            "ackedSidecars": {"type": "integer", "format": "int32", "description": "Of those, how many run the current version"},
            "rejectedSidecars": {"type": "integer", "format": "int32", "description": "Of those, how many NACKed it"},
            "conditions": conditions("Accepted (the object is valid; reason Invalid when not), ResolvedRefs (its TokenIssuers or client Secret exist and are accepted), Ready (AccessPolicy: every selected sidecar ACKed it)"),
            "replicas": {
                "type": "array",
                "description": "Per control-plane replica: the sidecars connected to it (each replica applies its own entry)",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "selected": {"type": "integer", "format": "int32"},
                        "acked": {"type": "integer", "format": "int32"},
                        "rejected": {"type": "integer", "format": "int32"},
                        "heartbeat": {"type": "string", "format": "date-time"}
                    }
                }
            }
        }
    })
}

fn crd(
    kind: &str,
    plural: &str,
    short: &str,
    spec_schema: Value,
    status: Value,
    columns: Value,
) -> Value {
    let mut top = Map::new();
    top.insert("spec".into(), spec_schema);
    top.insert("status".into(), status);
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{GROUP}"), "labels": {"app.kubernetes.io/part-of": "pqmesh"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "shortNames": [short], "categories": ["pqmesh"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {"type": "object", "required": ["spec"], "properties": Value::Object(top)}}
            }]
        }
    })
}

/// The CRDs (TokenIssuer, AccessPolicy, and the gateway's EdgePolicy), as JSON values.
pub fn crds() -> Vec<Value> {
    vec![
        crd(
            "TokenIssuer",
            "tokenissuers",
            "ti",
            structural::<TokenIssuerSpec>(),
            policy_status(),
            json!([
                {"name": "Issuer", "type": "string", "jsonPath": ".spec.issuer"},
                {"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"},
                {"name": "Introspection", "type": "string", "jsonPath": ".spec.introspection.endpoint", "priority": 1},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]),
        ),
        crd(
            "AccessPolicy",
            "accesspolicies",
            "ap",
            structural::<AccessPolicySpec>(),
            policy_status(),
            json!([
                {"name": "mTLS", "type": "string", "jsonPath": ".spec.mtls"},
                {"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"},
                {"name": "Selected", "type": "integer", "jsonPath": ".status.selectedSidecars"},
                {"name": "Acked", "type": "integer", "jsonPath": ".status.ackedSidecars"},
                {"name": "Rejected", "type": "integer", "jsonPath": ".status.rejectedSidecars", "priority": 1},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]),
        ),
        // Judged by pqmesh-gateway; the verdict is on its admin port (`/verdicts`), not written here yet.
        crd(
            "EdgePolicy",
            "edgepolicies",
            "ep",
            structural::<EdgePolicySpec>(),
            json!({"type": "object", "properties": {
                "conditions": conditions("Reserved: Accepted and ResolvedRefs, once pqmesh-gateway writes them"),
            }}),
            json!([
                {"name": "Route", "type": "string", "jsonPath": ".spec.targetRef.name"},
                {"name": "Issuer", "type": "string", "jsonPath": ".spec.token.issuer"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]),
        ),
    ]
}

/// The CRDs as a multi-document YAML text (what the chart ships).
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|c| serde_yaml::to_string(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_crds_are_the_generated_ones() {
        let shipped = include_str!("../../charts/pqmesh/crds/pqmesh-crds.yaml");
        assert!(
            shipped == crds_yaml(),
            "charts/pqmesh/crds/pqmesh-crds.yaml is out of date with the Rust types: run \
             `pqmesh-control-plane crds > charts/pqmesh/crds/pqmesh-crds.yaml`"
        );
    }

    fn walk(v: &Value, path: &str, problems: &mut Vec<String>) {
        if let Value::Object(m) = v {
            if m.contains_key("$ref") {
                problems.push(format!("{path}: $ref"));
            }
            if m.contains_key("properties") && m.contains_key("additionalProperties") {
                problems.push(format!("{path}: properties + additionalProperties"));
            }
            if m.get("type").is_some_and(Value::is_array) {
                problems.push(format!("{path}: type array"));
            }
            // Structural schemas: junctors (oneOf/anyOf/allOf) may not declare types. (An
            // object under these names is a property called so, like a claim's `anyOf`.)
            for junctor in ["oneOf", "anyOf", "allOf"] {
                let Some(Value::Array(branches)) = m.get(junctor) else {
                    continue;
                };
                if branches.iter().any(|b| b.get("type").is_some()) {
                    problems.push(format!("{path}.{junctor}: typed branch"));
                }
            }
            for (k, val) in m {
                walk(val, &format!("{path}.{k}"), problems);
            }
        } else if let Value::Array(a) = v {
            for (i, val) in a.iter().enumerate() {
                walk(val, &format!("{path}[{i}]"), problems);
            }
        }
    }

    #[test]
    fn crds_are_structural_and_describe_every_field() {
        let crds = crds();
        assert_eq!(crds.len(), 3);
        for c in &crds {
            let schema = &c["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let mut problems = Vec::new();
            walk(schema, "schema", &mut problems);
            assert!(
                problems.is_empty(),
                "{}: {problems:?}",
                c["metadata"]["name"]
            );
            assert_eq!(
                c["spec"]["versions"][0]["subresources"]["status"],
                json!({})
            );
        }
        let policy = &crds[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"];
        for field in ["selector", "ports", "mtls", "peers", "token", "rules"] {
            assert!(
                policy.get(field).is_some(),
                "AccessPolicy spec lacks {field}: {policy}"
            );
        }
        let rule = &policy["rules"]["items"]["properties"];
        for field in ["methods", "paths", "scopes", "claims"] {
            assert!(rule.get(field).is_some(), "rule lacks {field}");
        }
        let issuer = &crds[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"];
        assert!(
            issuer["introspection"]["properties"]["clientSecretRef"]["properties"]
                .get("name")
                .is_some()
        );
        // The new fields carry their rules in the schema too (enum, range, exactly-one-of).
        assert_eq!(issuer["scopeClaim"]["enum"], json!(["scope", "scp"]));
        assert_eq!(issuer["maxTokenLifetimeSeconds"]["minimum"], json!(60));
        assert_eq!(
            issuer["maxTokenLifetimeSeconds"]["maximum"],
            json!(2_592_000)
        );
        assert_eq!(issuer["clockSkewSeconds"]["maximum"], json!(300));
        let claim = &rule["claims"]["items"];
        for field in ["name", "values", "anyOf", "allOf"] {
            assert!(
                claim["properties"].get(field).is_some(),
                "claim lacks {field}"
            );
        }
        assert_eq!(
            claim["oneOf"],
            json!([{"required": ["values"]}, {"required": ["anyOf"]}, {"required": ["allOf"]}])
        );
        assert_eq!(claim["properties"]["anyOf"]["minItems"], json!(1));
        // Every rule the control plane enforces that a schema can express.
        let spec = |i: usize| {
            &crds[i]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        };
        assert_eq!(policy["mtls"]["enum"], json!(["STRICT", "PERMISSIVE"]));
        assert!(spec(1)["required"]
            .as_array()
            .unwrap()
            .contains(&json!("peers")));
        assert_eq!(policy["peers"]["minItems"], json!(1));
        assert_eq!(policy["ports"]["items"]["minimum"], json!(1));
        assert_eq!(
            issuer["allowedAlgorithms"]["items"]["enum"],
            json!(crate::model::ALLOWED_ALGORITHMS)
        );
        assert_eq!(
            issuer["introspection"]["properties"]["responseFormat"]["enum"],
            json!(["token-introspection+jwt", "jwt"])
        );
        assert_eq!(issuer["clockSkewSeconds"]["minimum"], json!(0));
        assert_eq!(
            issuer["jwksUri"]["pattern"],
            json!(crate::model::URL_PATTERN)
        );
        assert_eq!(
            issuer["introspection"]["properties"]["endpoint"]["pattern"],
            json!(crate::model::URL_PATTERN)
        );
        let cel = |i: usize| {
            spec(i)["x-kubernetes-validations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        assert!(cel(0).iter().any(|r| r["rule"]
            .as_str()
            .unwrap()
            .contains("has(self.introspection)")));
        assert_eq!(cel(1).len(), 2);
        assert_eq!(
            crds[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
                ["properties"]["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
        let edge = &crds[2]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"];
        assert_eq!(
            edge["targetRef"]["properties"]["kind"]["enum"],
            json!(["HTTPRoute"])
        );
        assert_eq!(
            edge["rateLimit"]["properties"]["key"]["enum"],
            json!(["clientId", "sub", "claim", "sourceIP"])
        );
        assert_eq!(
            edge["rateLimit"]["properties"]["requests"]["minimum"],
            json!(1)
        );
        assert_eq!(
            edge["token"]["properties"]["accept"]["enum"],
            json!(["opaque", "jwt", "any"])
        );
        let yaml = crds_yaml();
        assert!(
            yaml.contains("name: accesspolicies.pqmesh.io")
                && yaml.contains("name: tokenissuers.pqmesh.io")
                && yaml.contains("name: edgepolicies.pqmesh.io")
        );
    }
}

#[cfg(test)]
mod agreement {
    //! The schema's patterns accept exactly what the control plane's checks accept.
    use crate::model::{NAME_PATTERN, URL_PATTERN};

    #[test]
    fn url_and_name_patterns_agree_with_the_checks() {
        let url = regex::Regex::new(URL_PATTERN).unwrap();
        for u in [
            "https://idp.example/jwks",
            "http://127.0.0.1:9000/jwks",
            "http://localhost/x",
            "http://[::1]:80",
            "http://127.0.0.1",
            "http://evil.example/jwks",
            "https://",
            "http://127.0.0.1.evil.example/",
            "http://localhostx/",
            "ftp://x",
            "",
            "https://u:p@idp.example/jwks",
            "https://idp.example@evil.example/jwks",
            "http://127.0.0.1:9@evil.example/",
            "http://127.0.0.1@evil.example/",
            "https://idp.example /jwks",
            "http://127.0.0.1:x/",
            "https://idp.example:8443/jwks?x=1",
            "https://idp.example/a@b",
        ] {
            let code = crate::compile::check_url("x", "f", u).is_ok();
            assert_eq!(url.is_match(u), code, "{u:?}: schema vs check_url");
        }
        let name = regex::Regex::new(NAME_PATTERN).unwrap();
        for n in ["gateway", "a", "a.b-c", "-a", "a-", "A", "a_b", "", "a..b"] {
            let code = crate::compile::check_name("x", "f", n).is_ok();
            // `a..b`: both accept it (DNS-1123 subdomain rules are stricter; the API server
            // checks object names itself).
            assert_eq!(name.is_match(n), code, "{n:?}: schema vs check_name");
        }
    }
}
