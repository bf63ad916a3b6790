//! Per-pod annotations that override, for one pod, what the injected sidecar gets from the
//! mesh-wide settings (the chart's `sidecar:` values): log filter and format, access log, worker
//! threads and resources. Each value is checked with the parser the sidecar itself uses, so a
//! bad value is refused at admission with the annotation named, never at the sidecar's start.

use std::collections::BTreeMap;

use super::config::{InjectConfig, ProxyResources, ProxySettings};
use super::pod::{clip, InjectError};
use super::syntax;

pub const LOG_LEVEL: &str = "pqmesh.io/log-level";
pub const LOG_FORMAT: &str = "pqmesh.io/log-format";
pub const ACCESS_LOG: &str = "pqmesh.io/access-log";
pub const WORKER_THREADS: &str = "pqmesh.io/worker-threads";
pub const PROXY_CPU: &str = "pqmesh.io/proxy-cpu";
pub const PROXY_CPU_LIMIT: &str = "pqmesh.io/proxy-cpu-limit";
pub const PROXY_MEMORY: &str = "pqmesh.io/proxy-memory";
pub const PROXY_MEMORY_LIMIT: &str = "pqmesh.io/proxy-memory-limit";
pub const HTTP_RELAY_PORTS: &str = "pqmesh.io/http-relay-ports";

/// Every override annotation, what it sets and its values (docs/configuration.md lists these).
pub const ANNOTATIONS: &[(&str, &str)] = &[
    (LOG_LEVEL, "the sidecar's `PQMESH_LOG`: a level or EnvFilter directives (`debug`, `info,pqmesh_sidecar=trace`)"),
    (LOG_FORMAT, "the sidecar's `PQMESH_LOG_FORMAT`: `json` or `text`"),
    (ACCESS_LOG, "the sidecar's `PQMESH_ACCESS_LOG`: `true` or `false`"),
    (WORKER_THREADS, "the sidecar's `PQMESH_WORKER_THREADS`: 1 to 256"),
    (HTTP_RELAY_PORTS, "the sidecar's `PQMESH_HTTP_RELAY_PORTS`: app ports (`8080,9090`) whose app reads no identity header, relayed as bytes while their policy is identity-only"),
    (PROXY_CPU, "CPU request of the injected containers (a Kubernetes quantity, `100m`)"),
    (PROXY_CPU_LIMIT, "CPU limit of the injected containers"),
    (PROXY_MEMORY, "memory request of the injected containers (`64Mi`)"),
    (PROXY_MEMORY_LIMIT, "memory limit of the injected containers"),
];

/// The mesh-wide proxy settings and resources with this pod's annotations applied.
pub(crate) fn apply(
    annotations: &BTreeMap<String, String>,
    cfg: &InjectConfig,
) -> Result<(ProxySettings, ProxyResources), InjectError> {
    let bad = |key: &str, value: &str, reason: String| InjectError::BadAnnotation {
        key: key.into(),
        value: clip(value),
        reason,
    };
    let mut proxy = cfg.proxy.clone();
    if let Some(v) = annotations.get(LOG_LEVEL) {
        proxy.log = ProxySettings::check_log(v).map_err(|e| bad(LOG_LEVEL, v, e))?;
    }
    if let Some(v) = annotations.get(LOG_FORMAT) {
        proxy.log_format = ProxySettings::check_log_format(v).map_err(|e| bad(LOG_FORMAT, v, e))?;
    }
    if let Some(v) = annotations.get(ACCESS_LOG) {
        proxy.access_log =
            pqmesh_mtls::env::bool_value(v).map_err(|e| bad(ACCESS_LOG, v, e.into()))?;
    }
    if let Some(v) = annotations.get(WORKER_THREADS) {
        proxy.worker_threads =
            pqmesh_mtls::env::worker_threads(v).map_err(|e| bad(WORKER_THREADS, v, e.into()))?;
    }
    if let Some(v) = annotations.get(HTTP_RELAY_PORTS) {
        let ports = pqmesh_mtls::env::ports(v).map_err(|e| bad(HTTP_RELAY_PORTS, v, e))?;
        proxy.http_relay_ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
    }
    let mut resources = cfg.resources.clone();
    for (key, limit, name) in [
        (PROXY_CPU, false, "cpu"),
        (PROXY_CPU_LIMIT, true, "cpu"),
        (PROXY_MEMORY, false, "memory"),
        (PROXY_MEMORY_LIMIT, true, "memory"),
    ] {
        if let Some(v) = annotations.get(key) {
            let v = v.trim();
            syntax::quantity(v).map_err(|e| bad(key, v, e))?;
            if v.starts_with('-') {
                return Err(bad(
                    key,
                    v,
                    "a resource quantity must not be negative".into(),
                ));
            }
            let target = if limit {
                &mut resources.limits
            } else {
                &mut resources.requests
            };
            target.insert(name.to_owned(), v.to_owned());
        }
    }
    // The API server refuses a pod whose request exceeds its limit; say which annotation did it.
    for (name, request_key, limit_key) in [
        ("cpu", PROXY_CPU, PROXY_CPU_LIMIT),
        ("memory", PROXY_MEMORY, PROXY_MEMORY_LIMIT),
    ] {
        let value =
            |m: &BTreeMap<String, String>| m.get(name).and_then(|q| syntax::quantity_value(q));
        if let (Some(request), Some(limit)) = (value(&resources.requests), value(&resources.limits))
        {
            if request > limit
                && (annotations.contains_key(request_key) || annotations.contains_key(limit_key))
            {
                let (key, v) = match annotations.get_key_value(request_key) {
                    Some((k, v)) => (k.as_str(), v.as_str()),
                    None => (
                        limit_key,
                        annotations.get(limit_key).map_or("", |v| v.as_str()),
                    ),
                };
                return Err(bad(
                    key,
                    v,
                    format!(
                        "the {name} request {} exceeds the limit {}",
                        resources.requests[name], resources.limits[name]
                    ),
                ));
            }
        }
    }
    Ok((proxy, resources))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pqmesh_mtls::SpiffeId;

    fn cfg() -> InjectConfig {
        InjectConfig::new(
            &SpiffeId::new("cluster.local", "pqmesh-system", "pqmesh-control-plane").unwrap(),
        )
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_override_the_mesh_wide_settings() {
        let (proxy, resources) = apply(
            &annotations(&[
                (LOG_LEVEL, "info,pqmesh_sidecar=debug"),
                (LOG_FORMAT, "TEXT"),
                (ACCESS_LOG, "true"),
                (WORKER_THREADS, "4"),
                (HTTP_RELAY_PORTS, " 8080, 9090 "),
                (PROXY_CPU, "250m"),
                (PROXY_MEMORY_LIMIT, "1Gi"),
            ]),
            &cfg(),
        )
        .unwrap();
        assert_eq!(
            proxy,
            ProxySettings {
                log: "info,pqmesh_sidecar=debug".into(),
                log_format: "text".into(),
                access_log: true,
                worker_threads: 4,
                http_relay_ports: "8080,9090".into(),
            }
        );
        assert_eq!(
            resources.to_json(),
            serde_json::json!({"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m", "memory": "16Mi"}})
        );
        let (proxy, resources) = apply(&annotations(&[]), &cfg()).unwrap();
        assert_eq!(proxy, ProxySettings::default());
        assert_eq!(resources, ProxyResources::default());
    }

    #[test]
    fn bad_values_are_refused_naming_the_annotation() {
        let cases = [
            (LOG_LEVEL, "loud", "not a log filter"),
            (LOG_FORMAT, "yaml", "expected text or json"),
            (ACCESS_LOG, "sometimes", "expected true or false"),
            (WORKER_THREADS, "0", "1 to 256"),
            (WORKER_THREADS, "many", "1 to 256"),
            (HTTP_RELAY_PORTS, "8080,http", "is not a TCP port"),
            (HTTP_RELAY_PORTS, "0", "is not a TCP port"),
            (PROXY_CPU, "lots", "Kubernetes quantity"),
            (PROXY_MEMORY_LIMIT, "1 Gi", "Kubernetes quantity"),
            // Found by the outside review (F6): the API server would refuse these pods.
            (PROXY_CPU, "-1", "must not be negative"),
            (PROXY_MEMORY, "100Gi", "exceeds the limit"),
        ];
        for (key, value, want) in cases {
            let e = apply(&annotations(&[(key, value)]), &cfg())
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("annotation {key}=")) && e.contains(want),
                "{key}={value}: {e}"
            );
        }
    }
}
