//! What the injector adds to a pod: image, control-plane address, token and trust-bundle
//! volumes, resources and mesh-wide interception exclusions. Parsed once from `PQMESH_*`
//! variables (the chart sets them); every value is checked here so no bad value reaches a pod.

use std::collections::BTreeMap;
use std::time::Duration;

use pqmesh_mtls::env::{self, DefaultValue, Env, EnvError, Setting};
use pqmesh_mtls::SpiffeId;
use serde_json::{json, Map, Value};

use super::syntax;

/// What the webhook injects; the chart sets these from its `sidecar:` values.
pub const SETTINGS: &[Setting] = &[
    Setting::value("PQMESH_SIDECAR_IMAGE", "sidecar-image", DefaultValue::Text("`pqmesh:<version>`"), "image of the injected pqmesh-init and pqmesh-proxy containers"),
    Setting::value("PQMESH_SIDECAR_IMAGE_PULL_POLICY", "sidecar-image-pull-policy", DefaultValue::Value("IfNotPresent"), "imagePullPolicy of the injected containers: Always, IfNotPresent or Never"),
    Setting::value("PQMESH_SIDECAR_CONTROL_PLANE_ADDR", "sidecar-control-plane-addr", DefaultValue::Text("`pqmesh-control-plane.<PQMESH_NAMESPACE>.svc:15012`"), "host:port injected sidecars dial"),
    Setting::value("PQMESH_TRUST_BUNDLE_CONFIGMAP", "trust-bundle-configmap", DefaultValue::Value("pqmesh-trust-bundle"), "ConfigMap (in each meshed namespace) holding `trust-bundle.pem`, which injected sidecars mount"),
    Setting::value("PQMESH_SIDECAR_TOKEN_EXPIRY", "sidecar-token-expiry", DefaultValue::Value("1h"), "lifetime of the projected token injected sidecars present to Certify, at least 10m"),
    Setting::value("PQMESH_SIDECAR_RESOURCES", "sidecar-resources", DefaultValue::Text("`{\"requests\":{\"cpu\":\"10m\",\"memory\":\"16Mi\"},\"limits\":{\"memory\":\"128Mi\"}}`"), "ResourceRequirements (JSON) of the injected containers; per pod: annotations pqmesh.io/proxy-cpu, -cpu-limit, -memory, -memory-limit"),
    Setting::value("PQMESH_SIDECAR_EXCLUDE_OUTBOUND_CIDRS", "sidecar-exclude-outbound-cidrs", DefaultValue::Value(""), "mesh-wide: comma list of addresses/CIDRs the app reaches directly (merged with pqmesh.io/exclude-outbound-cidrs)"),
    Setting::value("PQMESH_SIDECAR_EXCLUDE_INBOUND_PORTS", "sidecar-exclude-inbound-ports", DefaultValue::Value(""), "mesh-wide: inbound ports that bypass the sidecar (merged with pqmesh.io/exclude-inbound-ports)"),
    Setting::value("PQMESH_SIDECAR_EXCLUDE_OUTBOUND_PORTS", "sidecar-exclude-outbound-ports", DefaultValue::Value(""), "mesh-wide: destination ports the app reaches directly (merged with pqmesh.io/exclude-outbound-ports)"),
    Setting::value("PQMESH_SIDECAR_LOG", "sidecar-log", DefaultValue::Value("info"), "PQMESH_LOG of injected sidecars; per pod: annotation pqmesh.io/log-level"),
    Setting::value("PQMESH_SIDECAR_LOG_FORMAT", "sidecar-log-format", DefaultValue::Value("json"), "PQMESH_LOG_FORMAT of injected sidecars (text or json); per pod: pqmesh.io/log-format"),
    Setting::value("PQMESH_SIDECAR_ACCESS_LOG", "sidecar-access-log", DefaultValue::Value("false"), "PQMESH_ACCESS_LOG of injected sidecars; per pod: pqmesh.io/access-log"),
    Setting::value("PQMESH_SIDECAR_WORKER_THREADS", "sidecar-worker-threads", DefaultValue::Value("1"), "PQMESH_WORKER_THREADS of injected sidecars (1 to 256); per pod: pqmesh.io/worker-threads"),
];

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
    /// The injected sidecar's log, access-log and thread settings (per pod: annotations).
    pub proxy: ProxySettings,
}

/// Settings of the injected sidecar that a pod's annotations may override, as the sidecar's
/// `PQMESH_*` values (each checked with the parser the sidecar uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    pub log: String,
    pub log_format: String,
    pub access_log: bool,
    pub worker_threads: usize,
    /// `PQMESH_HTTP_RELAY_PORTS` (per pod only: which ports' apps need no identity header is a
    /// property of the app), as a checked comma list; empty: unset.
    pub http_relay_ports: String,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            log: "info".to_owned(),
            log_format: "json".to_owned(),
            access_log: false,
            worker_threads: 1,
            http_relay_ports: String::new(),
        }
    }
}

impl ProxySettings {
    pub fn check_log(v: &str) -> Result<String, String> {
        let env = std::collections::HashMap::from([("PQMESH_LOG".to_owned(), v.to_owned())]);
        pqmesh_mtls::logging::settings(&env)
            .map(|_| v.trim().to_owned())
            .map_err(|e| e.reason)
    }

    pub fn check_log_format(v: &str) -> Result<String, String> {
        let env = std::collections::HashMap::from([("PQMESH_LOG_FORMAT".to_owned(), v.to_owned())]);
        pqmesh_mtls::logging::settings(&env)
            .map(|_| v.trim().to_ascii_lowercase())
            .map_err(|e| e.reason)
    }

    /// The sidecar container's variables.
    pub fn env(&self) -> Vec<Value> {
        let mut env = vec![
            json!({"name": "PQMESH_LOG", "value": self.log}),
            json!({"name": "PQMESH_LOG_FORMAT", "value": self.log_format}),
            json!({"name": "PQMESH_ACCESS_LOG", "value": self.access_log.to_string()}),
            json!({"name": "PQMESH_WORKER_THREADS", "value": self.worker_threads.to_string()}),
        ];
        if !self.http_relay_ports.is_empty() {
            env.push(json!({"name": "PQMESH_HTTP_RELAY_PORTS", "value": self.http_relay_ports}));
        }
        env
    }
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
            proxy: ProxySettings::default(),
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
        let checked = |name: &str, check: fn(&str) -> Result<String, String>| {
            env.var(name)
                .map(|v| check(&v).map_err(|e| EnvError::new(name, &v, e)))
                .transpose()
        };
        if let Some(v) = checked("PQMESH_SIDECAR_LOG", ProxySettings::check_log)? {
            cfg.proxy.log = v;
        }
        if let Some(v) = checked("PQMESH_SIDECAR_LOG_FORMAT", ProxySettings::check_log_format)? {
            cfg.proxy.log_format = v;
        }
        cfg.proxy.access_log =
            env::parse_bool(env, "PQMESH_SIDECAR_ACCESS_LOG", cfg.proxy.access_log)?;
        if let Some(v) = env.var("PQMESH_SIDECAR_WORKER_THREADS") {
            cfg.proxy.worker_threads = env::worker_threads(&v)
                .map_err(|e| EnvError::new("PQMESH_SIDECAR_WORKER_THREADS", &v, e))?;
        }
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
        assert_eq!(c.proxy, ProxySettings::default(), "json at info by default");
        let c = InjectConfig::from_env(
            &env(&[
                ("PQMESH_SIDECAR_LOG", "debug"),
                ("PQMESH_SIDECAR_LOG_FORMAT", "Text"),
                ("PQMESH_SIDECAR_ACCESS_LOG", "true"),
                ("PQMESH_SIDECAR_WORKER_THREADS", "2"),
            ]),
            &cp(),
        )
        .unwrap();
        assert_eq!(
            c.proxy,
            ProxySettings {
                log: "debug".into(),
                log_format: "text".into(),
                access_log: true,
                worker_threads: 2,
                http_relay_ports: String::new(),
            }
        );
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
            ("PQMESH_SIDECAR_LOG", "info,=x=", "not a log filter"),
            ("PQMESH_SIDECAR_LOG_FORMAT", "yaml", "text or json"),
            ("PQMESH_SIDECAR_ACCESS_LOG", "sometimes", "true or false"),
            ("PQMESH_SIDECAR_WORKER_THREADS", "0", "1 to 256"),
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
