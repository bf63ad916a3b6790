//! The status parts of the Gateway API's CRDs (`gateway.networking.k8s.io/v1`, standard
//! channel, as of v1.3), transcribed for the recording API server: what kube-apiserver checks
//! when a controller writes the status of a GatewayClass, Gateway or HTTPRoute. Conditions are
//! `metav1.Condition`: `type`, `status` True/False/Unknown, `reason` matching
//! `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`, `message` up to 32768 characters,
//! `lastTransitionTime` (RFC 3339), `observedGeneration` ≥ 0; at most 8, one per type. The spec
//! parts are not transcribed (kept as written, `x-kubernetes-preserve-unknown-fields`).

use serde_json::{json, Value};

fn conditions() -> Value {
    json!({
        "type": "array", "maxItems": 8,
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "message": {"type": "string", "maxLength": 32768},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "reason": {"type": "string", "minLength": 1, "maxLength": 1024,
                           "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "type": {"type": "string", "maxLength": 316,
                         "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"}
            }
        }
    })
}

const DNS_SUBDOMAIN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const GROUP: &str = "^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const KIND: &str = "^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$";

fn status(kind: &str) -> Option<Value> {
    let status = match kind {
        "GatewayClass" => json!({"type": "object", "properties": {"conditions": conditions()}}),
        "Gateway" => json!({"type": "object", "properties": {
            "addresses": {"type": "array", "maxItems": 16,
                          "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "conditions": conditions(),
            "listeners": {
                "type": "array", "maxItems": 64,
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "required": ["attachedRoutes", "conditions", "name", "supportedKinds"],
                    "properties": {
                        "attachedRoutes": {"type": "integer", "format": "int32"},
                        "conditions": conditions(),
                        "name": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": DNS_SUBDOMAIN},
                        "supportedKinds": {"type": "array", "maxItems": 8, "items": {
                            "type": "object", "required": ["kind"],
                            "properties": {
                                "group": {"type": "string", "maxLength": 253, "pattern": GROUP},
                                "kind": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": KIND}
                            }
                        }}
                    }
                }
            }
        }}),
        "HTTPRoute" => {
            let mut route_conditions = conditions();
            route_conditions["minItems"] = json!(1);
            json!({"type": "object", "required": ["parents"], "properties": {
                "parents": {"type": "array", "maxItems": 32, "items": {
                    "type": "object",
                    "required": ["conditions", "controllerName", "parentRef"],
                    "properties": {
                        "conditions": route_conditions,
                        "controllerName": {"type": "string", "minLength": 1, "maxLength": 253,
                            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\\/[A-Za-z0-9\\/\\-._~%!$&'()*+,;=:]+$"},
                        "parentRef": {"type": "object", "required": ["name"], "properties": {
                            "group": {"type": "string", "maxLength": 253, "pattern": GROUP},
                            "kind": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": KIND},
                            "name": {"type": "string", "minLength": 1, "maxLength": 253},
                            "namespace": {"type": "string", "minLength": 1, "maxLength": 63,
                                          "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                            "port": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535},
                            "sectionName": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": DNS_SUBDOMAIN}
                        }}
                    }
                }}
            }})
        }
        _ => return None,
    };
    Some(status)
}

/// The `openAPIV3Schema` the recording API server checks a Gateway API object against.
pub fn schema_for(kind: &str) -> Option<Value> {
    Some(json!({"type": "object", "properties": {
        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        "status": status(kind)?,
    }}))
}
