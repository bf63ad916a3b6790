//! The app's probes, moved to the sidecar. The kubelet probes from the node in plaintext; in a
//! STRICT pod the inbound listener refuses that, so httpGet (HTTP scheme) and tcpSocket probes of
//! the app's containers become httpGet probes on the sidecar's admin port at
//! `/app-health/<container>/<livez|readyz|startupz>` (the admin port is not intercepted), and the
//! original targets go to the sidecar in `PQMESH_APP_PROBES`, which runs them against
//! 127.0.0.1 (see the sidecar's `app_probe`). Left alone: HTTPS, gRPC and exec probes, probes
//! with an explicit `host`, probes on excluded inbound ports, and named ports that do not resolve.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::ADMIN_PORT;

const KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The containers with their probes rewritten, and the table for `PQMESH_APP_PROBES`.
pub(super) fn rewrite(
    containers: &[(&str, &Map<String, Value>)],
    excluded_ports: &[u16],
) -> (Vec<Value>, BTreeMap<String, Value>) {
    let mut table = BTreeMap::new();
    let out = containers
        .iter()
        .map(|(name, container)| {
            let mut container = (*container).clone();
            for (field, kind) in KINDS {
                let Some(probe) = container.get(field).and_then(Value::as_object) else {
                    continue;
                };
                let admin_path = format!("/app-health/{name}/{kind}");
                if let Some((rewritten, target)) =
                    rewrite_one(probe, &container, excluded_ports, &admin_path)
                {
                    container.insert(field.into(), Value::Object(rewritten));
                    table.insert(admin_path, target);
                }
            }
            Value::Object(container)
        })
        .collect();
    (out, table)
}

fn rewrite_one(
    probe: &Map<String, Value>,
    container: &Map<String, Value>,
    excluded_ports: &[u16],
    admin_path: &str,
) -> Option<(Map<String, Value>, Value)> {
    let (action, target) = if let Some(http) = probe.get("httpGet").and_then(Value::as_object) {
        let scheme = http.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
        if !scheme.eq_ignore_ascii_case("HTTP") || http.get("host").is_some_and(|h| !h.is_null()) {
            return None;
        }
        let port = resolve_port(http.get("port")?, container)?;
        let path = http.get("path").and_then(Value::as_str).unwrap_or("/");
        let headers: Vec<Value> = http
            .get("httpHeaders")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|h| Some(json!([h.get("name")?.as_str()?, h.get("value")?.as_str()?])))
            .collect();
        let mut target = json!({"port": port, "path": path});
        if !headers.is_empty() {
            target["headers"] = Value::Array(headers);
        }
        ("httpGet", (port, target))
    } else if let Some(tcp) = probe.get("tcpSocket").and_then(Value::as_object) {
        if tcp.get("host").is_some_and(|h| !h.is_null()) {
            return None;
        }
        let port = resolve_port(tcp.get("port")?, container)?;
        ("tcpSocket", (port, json!({"port": port})))
    } else {
        return None;
    };
    let (port, target) = target;
    if excluded_ports.contains(&port) {
        return None; // not intercepted: the kubelet reaches the app directly
    }
    let mut rewritten = probe.clone();
    rewritten.remove(action);
    rewritten.insert(
        "httpGet".into(),
        json!({"path": admin_path, "port": ADMIN_PORT, "scheme": "HTTP"}),
    );
    Some((rewritten, target))
}

/// A probe port: a number, or the name of one of the container's ports.
fn resolve_port(port: &Value, container: &Map<String, Value>) -> Option<u16> {
    match port {
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0),
        Value::String(name) => container
            .get("ports")?
            .as_array()?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
            .get("containerPort")?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite_json(container: Value, excluded: &[u16]) -> (Value, BTreeMap<String, Value>) {
        let map = container.as_object().unwrap().clone();
        let (mut out, table) = rewrite(&[("app", &map)], excluded);
        (out.remove(0), table)
    }

    #[test]
    fn http_and_tcp_probes_move_to_the_admin_port() {
        let (c, table) = rewrite_json(
            json!({"name": "app", "ports": [{"name": "http", "containerPort": 8080}],
                   "readinessProbe": {"httpGet": {"path": "/ready", "port": "http",
                                      "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "periodSeconds": 3},
                   "livenessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 5},
                   "startupProbe": {"exec": {"command": ["true"]}}}),
            &[],
        );
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15000, "scheme": "HTTP"}, "periodSeconds": 3})
        );
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/app/livez", "port": 15000, "scheme": "HTTP"}, "failureThreshold": 5})
        );
        assert_eq!(
            c["startupProbe"],
            json!({"exec": {"command": ["true"]}}),
            "exec probes stay"
        );
        assert_eq!(
            table["/app-health/app/readyz"],
            json!({"port": 8080, "path": "/ready", "headers": [["X-Probe", "1"]]})
        );
        assert_eq!(table["/app-health/app/livez"], json!({"port": 8080}));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn left_alone_when_not_intercepted_or_not_plain_http() {
        for probe in [
            json!({"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}}),
            json!({"httpGet": {"path": "/", "port": 8080, "host": "10.0.0.1"}}),
            json!({"httpGet": {"path": "/", "port": "missing-name"}}),
            json!({"httpGet": {"path": "/", "port": 9090}}),
            json!({"grpc": {"port": 8080}}),
        ] {
            let (c, table) = rewrite_json(
                json!({"name": "app", "readinessProbe": probe.clone()}),
                &[9090],
            );
            assert_eq!(c["readinessProbe"], probe);
            assert!(table.is_empty());
        }
    }
}
