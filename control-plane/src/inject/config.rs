//! What the injector adds to a pod: image, control-plane address, token and trust-bundle
//! volumes, resources and mesh-wide interception exclusions. Parsed once from `PQMESH_*`
//! variables (the chart sets them); every value is checked here so no bad value reaches a pod.

use std::collections::BTreeMap;
use std::time::Duration;

use pqmesh_mtls::env::{self, Env, EnvError};
use pqmesh_mtls::SpiffeId;
use serde_json::{json, Map, Value};

use super::syntax;

/// Projected service-account tokens must live at least 10 minutes (API server validation).
const MIN_TOKEN_EXPIRY: i64 = 600;
/// And at most 2^32 seconds.
const MAX_TOKEN_EXPIRY: i64 = 1 << 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of both injected containers (it holds `pqmesh-sidecar`).
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub pull_policy: String,
    /// `host:port` of the control plane's gRPC service, as the sidecar dials it.
    pub control_plane_addr: String,
    /// The control plane's SPIFFE ID, which the sidecar requires of the server it dials.
    pub control_plane_id: String,
    pub trust_domain: String,
    /// ConfigMap (in the pod's namespace) holding the trust bundle under `trust-bundle.pem`.
    pub trust_bundle_configmap: String,
    /// Audience of the projected token the sidecar presents to Certify.
    pub token_audience: String,
    pub token_expiry_seconds: i64,
    /// UID and GID of the sidecar; pqmesh-init's iptables rules exempt this UID.
    pub proxy_uid: i64,
    pub resources: ProxyResources,
    /// Mesh-wide exclusions, merged with each pod's annotations.
    pub exclude_outbound_cidrs: Vec<String>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// Written to the `pqmesh.io/injected` annotation.
    pub version: String,
}

/// A Kubernetes `ResourceRequirements` (requests and limits only), copied into both containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyResources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl Default for ProxyResources {
    fn default() -> Self {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Self {
            requests: map(&[("cpu", "10m"), ("memory", "16Mi")]),
            limits: map(&[("memory", "128Mi")]),
        }
    }
}

impl ProxyResources {
    /// Parses a `ResourceRequirements` JSON object (`{"requests":{"cpu":"50m"},"limits":{...}}`),
    /// as the chart passes it; quantities may be JSON numbers (Helm renders `cpu: 1` as `1`).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
        let object = value
            .as_object()
            .ok_or("not a JSON object (expected {\"requests\":{...},\"limits\":{...}})")?;
        let mut out = Self {
            requests: BTreeMap::new(),
            limits: BTreeMap::new(),
        };
        for (key, value) in object {
            let target = match key.as_str() {
                "requests" => &mut out.requests,
                "limits" => &mut out.limits,
                other => {
                    return Err(format!(
                        "unknown field {other:?} (only requests and limits)"
                    ))
                }
            };
            let entries = value
                .as_object()
                .ok_or_else(|| format!("{key} must be an object of quantities"))?;
            for (name, quantity) in entries {
                let text = match quantity {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => return Err(format!("{key}.{name}: {other} is not a quantity")),
                };
                if name.is_empty() {
                    return Err(format!("{key}: empty resource name"));
                }
                syntax::quantity(&text).map_err(|e| format!("{key}.{name}: {e}"))?;
                target.insert(name.clone(), text);
            }
        }
        Ok(out)
    }

    /// The `resources` object of a container.
    pub fn to_json(&self) -> Value {
        let to_map = |m: &BTreeMap<String, String>| -> Map<String, Value> {
            m.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect()
        };
        let mut out = Map::new();
        if !self.limits.is_empty() {
            out.insert("limits".into(), Value::Object(to_map(&self.limits)));
        }
        if !self.requests.is_empty() {
            out.insert("requests".into(), Value::Object(to_map(&self.requests)));
        }
        Value::Object(out)
    }
}

impl InjectConfig {
    /// Defaults for a control plane with identity `control_plane` (its namespace names the
    /// Service the sidecars dial).
    pub fn new(control_plane: &SpiffeId) -> Self {
        Self {
            image: format!("pqmesh:{}", super::VERSION),
            pull_policy: "IfNotPresent".to_owned(),
            control_plane_addr: format!(
                "pqmesh-control-plane.{}.svc:15012",
                control_plane.namespace()
            ),
            control_plane_id: control_plane.to_string(),
            trust_domain: control_plane.trust_domain().to_owned(),
            trust_bundle_configmap: "pqmesh-trust-bundle".to_owned(),
            token_audience: "pqmesh-ca".to_owned(),
            token_expiry_seconds: 3600,
            proxy_uid: 1337,
            resources: ProxyResources::default(),
            exclude_outbound_cidrs: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            version: super::VERSION.to_owned(),
        }
    }

    /// Reads the `PQMESH_SIDECAR_*` settings (and `PQMESH_TRUST_BUNDLE_CONFIGMAP`) over the
    /// defaults of [`InjectConfig::new`].
    pub fn from_env(env: &dyn Env, control_plane: &SpiffeId) -> Result<Self, EnvError> {
        let mut cfg = Self::new(control_plane);
        if let Some(v) = env.var("PQMESH_SIDECAR_IMAGE") {
            if v.trim().is_empty() || v.chars().any(char::is_whitespace) {
                return Err(EnvError::new(
                    "PQMESH_SIDECAR_IMAGE",
                    &v,
                    "not an image reference",
                ));
            }
            cfg.image = v;
        }
        if let Some(v) = env.var("PQMESH_SIDECAR_IMAGE_PULL_POLICY") {
            if !matches!(v.as_str(), "Always" | "IfNotPresent" | "Never") {
                return Err(EnvError::new(
                    "PQMESH_SIDECAR_IMAGE_PULL_POLICY",
                    &v,
                    "expected Always, IfNotPresent or Never",
                ));
            }
            cfg.pull_policy = v;
        }
        if let Some(v) = env.var("PQMESH_SIDECAR_CONTROL_PLANE_ADDR") {
            let valid = v
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(EnvError::new(
                    "PQMESH_SIDECAR_CONTROL_PLANE_ADDR",
                    &v,
                    "expected host:port",
                ));
            }
            cfg.control_plane_addr = v;
        }
        if let Some(v) = env.var("PQMESH_TRUST_BUNDLE_CONFIGMAP") {
            if !is_dns_subdomain(&v) {
                return Err(EnvError::new(
                    "PQMESH_TRUST_BUNDLE_CONFIGMAP",
                    &v,
                    "not a valid ConfigMap name (lowercase DNS subdomain)",
                ));
            }
            cfg.trust_bundle_configmap = v;
        }
        let expiry = env::duration_or(
            env,
            "PQMESH_SIDECAR_TOKEN_EXPIRY",
            Duration::from_secs(cfg.token_expiry_seconds as u64),
        )?;
        let seconds = i64::try_from(expiry.as_secs()).unwrap_or(i64::MAX);
        if !(MIN_TOKEN_EXPIRY..=MAX_TOKEN_EXPIRY).contains(&seconds) || expiry.subsec_nanos() != 0 {
            return Err(EnvError::new(
                "PQMESH_SIDECAR_TOKEN_EXPIRY",
                &env.var("PQMESH_SIDECAR_TOKEN_EXPIRY").unwrap_or_default(),
                "must be whole seconds, at least 10m (the API server's minimum for projected tokens)",
            ));
        }
        cfg.token_expiry_seconds = seconds;
        if let Some(v) = env.var("PQMESH_SIDECAR_RESOURCES") {
            cfg.resources = ProxyResources::from_json(&v)
                .map_err(|e| EnvError::new("PQMESH_SIDECAR_RESOURCES", &v, e))?;
        }
        let list = |name: &str| env.var(name).unwrap_or_default();
        cfg.exclude_outbound_cidrs = syntax::cidrs(&list("PQMESH_SIDECAR_EXCLUDE_OUTBOUND_CIDRS"))
            .map_err(|e| {
                EnvError::new(
                    "PQMESH_SIDECAR_EXCLUDE_OUTBOUND_CIDRS",
                    &list("PQMESH_SIDECAR_EXCLUDE_OUTBOUND_CIDRS"),
                    e,
                )
            })?;
        cfg.exclude_inbound_ports = syntax::ports(&list("PQMESH_SIDECAR_EXCLUDE_INBOUND_PORTS"))
            .map_err(|e| {
                EnvError::new(
                    "PQMESH_SIDECAR_EXCLUDE_INBOUND_PORTS",
                    &list("PQMESH_SIDECAR_EXCLUDE_INBOUND_PORTS"),
                    e,
                )
            })?;
        cfg.exclude_outbound_ports = syntax::ports(&list("PQMESH_SIDECAR_EXCLUDE_OUTBOUND_PORTS"))
            .map_err(|e| {
                EnvError::new(
                    "PQMESH_SIDECAR_EXCLUDE_OUTBOUND_PORTS",
                    &list("PQMESH_SIDECAR_EXCLUDE_OUTBOUND_PORTS"),
                    e,
                )
            })?;
        Ok(cfg)
    }

    /// The projected-token and trust-bundle volumes, and the xtables lock emptyDir.
    pub(crate) fn volumes(&self) -> [Value; 3] {
        [
            json!({
                "name": super::TOKEN_VOLUME,
                "projected": {
                    "sources": [{
                        "serviceAccountToken": {
                            "audience": self.token_audience,
                            "expirationSeconds": self.token_expiry_seconds,
                            "path": "token",
                        }
                    }]
                }
            }),
            json!({
                "name": super::TRUST_VOLUME,
                "configMap": {
                    "name": self.trust_bundle_configmap,
                    "items": [{"key": super::TRUST_BUNDLE_KEY, "path": super::TRUST_BUNDLE_KEY}],
                }
            }),
            json!({
                "name": super::XTABLES_LOCK_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
            }),
        ]
    }
}

/// RFC 1123 subdomain, as Kubernetes object names are.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cp() -> SpiffeId {
        SpiffeId::new("cluster.local", "pqmesh-system", "pqmesh-control-plane").unwrap()
    }

    #[test]
    fn defaults() {
        let c = InjectConfig::from_env(&env(&[]), &cp()).unwrap();
        assert_eq!(
            c.control_plane_addr,
            "pqmesh-control-plane.pqmesh-system.svc:15012"
        );
        assert_eq!(
            c.control_plane_id,
            "spiffe://cluster.local/ns/pqmesh-system/sa/pqmesh-control-plane"
        );
        assert_eq!(c.trust_bundle_configmap, "pqmesh-trust-bundle");
        assert_eq!(c.token_audience, "pqmesh-ca");
        assert_eq!(c.token_expiry_seconds, 3600);
        assert_eq!(c.proxy_uid, 1337);
        assert_eq!(
            c.resources.to_json(),
            json!({"limits": {"memory": "128Mi"}, "requests": {"cpu": "10m", "memory": "16Mi"}})
        );
    }

    #[test]
    fn reads_the_chart_settings() {
        let c = InjectConfig::from_env(
            &env(&[
                ("PQMESH_SIDECAR_IMAGE", "registry.example/pqmesh:1.2.3"),
                ("PQMESH_SIDECAR_IMAGE_PULL_POLICY", "Always"),
                (
                    "PQMESH_SIDECAR_RESOURCES",
                    r#"{"requests":{"cpu":"50m","memory":"64Mi"},"limits":{"memory":"256Mi","cpu":1}}"#,
                ),
                ("PQMESH_SIDECAR_TOKEN_EXPIRY", "20m"),
                ("PQMESH_SIDECAR_EXCLUDE_OUTBOUND_CIDRS", "169.254.169.254/32"),
                ("PQMESH_SIDECAR_EXCLUDE_INBOUND_PORTS", "9090"),
                ("PQMESH_TRUST_BUNDLE_CONFIGMAP", "mesh-roots"),
            ]),
            &cp(),
        )
        .unwrap();
        assert_eq!(c.image, "registry.example/pqmesh:1.2.3");
        assert_eq!(c.pull_policy, "Always");
        assert_eq!(c.resources.limits.get("cpu").map(String::as_str), Some("1"));
        assert_eq!(c.token_expiry_seconds, 1200);
        assert_eq!(c.exclude_outbound_cidrs, vec!["169.254.169.254/32"]);
        assert_eq!(c.exclude_inbound_ports, vec![9090]);
        assert_eq!(c.trust_bundle_configmap, "mesh-roots");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            (
                "PQMESH_SIDECAR_IMAGE_PULL_POLICY",
                "always",
                "Always, IfNotPresent or Never",
            ),
            ("PQMESH_SIDECAR_IMAGE", "pqmesh 1", "image reference"),
            (
                "PQMESH_SIDECAR_CONTROL_PLANE_ADDR",
                "pqmesh-control-plane",
                "host:port",
            ),
            (
                "PQMESH_TRUST_BUNDLE_CONFIGMAP",
                "Trust_Bundle",
                "ConfigMap name",
            ),
            ("PQMESH_SIDECAR_TOKEN_EXPIRY", "5m", "at least 10m"),
            ("PQMESH_SIDECAR_TOKEN_EXPIRY", "1500ms", "whole seconds"),
            (
                "PQMESH_SIDECAR_RESOURCES",
                "{\"requests\":{\"cpu\":\"lots\"}}",
                "requests.cpu",
            ),
            (
                "PQMESH_SIDECAR_RESOURCES",
                "{\"claims\":[]}",
                "unknown field",
            ),
            ("PQMESH_SIDECAR_RESOURCES", "[]", "not a JSON object"),
            (
                "PQMESH_SIDECAR_EXCLUDE_OUTBOUND_CIDRS",
                "fd00::/129",
                "IPv6",
            ),
            ("PQMESH_SIDECAR_EXCLUDE_OUTBOUND_PORTS", "0", "TCP port"),
        ];
        for (name, value, want) in cases {
            let err = InjectConfig::from_env(&env(&[(name, value)]), &cp())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(name) && err.contains(want),
                "{name}={value}: {err}"
            );
        }
    }
}
