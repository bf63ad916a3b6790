//! Local-mode discovery data: which workload identity serves which IP (and ports), and which
//! endpoints stand behind a Service address (ClusterIP:port), from `DIR/endpoints.yaml`. Kubernetes
//! mode builds the same table from Pods, Services and EndpointSlices. Polled for changes; an invalid edit is logged and the last good table
//! stays. Published through a `watch` channel so every Discovery stream re-evaluates its own
//! subscriptions when the table changes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pqmesh_mtls::SpiffeId;
use serde::Deserialize;
use tokio::sync::watch;

pub const ENDPOINTS_FILE: &str = "endpoints.yaml";
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    #[serde(default)]
    endpoints: Vec<EndpointEntry>,
    #[serde(default)]
    services: Vec<ServiceEntry>,
}

/// A Service address and its backends. Each backend's identity is what `endpoints` says about
/// its IP and port (one source of truth, as Pods are in Kubernetes); one not listed is unmeshed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceEntry {
    /// For logs only (`namespace/name`).
    #[serde(default)]
    name: Option<String>,
    ip: String,
    port: u16,
    /// The port the backends listen on; absent = `port`.
    #[serde(default)]
    target_port: Option<u16>,
    backends: Vec<BackendEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendEntry {
    ip: String,
    /// Absent = the service's target port.
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EndpointEntry {
    ip: String,
    /// Absent = every port of this IP is served by the workload's sidecar.
    #[serde(default)]
    ports: Option<Vec<u16>>,
    namespace: String,
    service_account: String,
}

/// What the mesh knows about one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Meshed(SpiffeId),
    NotMeshed,
    /// A Service address: the client balances over these endpoints itself.
    Service(Arc<[Backend]>),
}

/// One endpoint of a Service: the address its pod listens on and its identity (`None`: no
/// sidecar, plaintext only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub addr: SocketAddr,
    pub identity: Option<SpiffeId>,
}

/// The ports of an IP a workload serves (`None` = all) and its identity.
type Served = (Option<Vec<u16>>, SpiffeId);

#[derive(Debug, Default)]
pub struct EndpointTable {
    by_ip: HashMap<IpAddr, Vec<Served>>,
    services: HashMap<SocketAddr, Arc<[Backend]>>,
}

impl EndpointTable {
    pub fn parse(text: &str, trust_domain: &str) -> Result<Self, String> {
        let file: EndpointsFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut table = EndpointTable::default();
        for (i, e) in file.endpoints.into_iter().enumerate() {
            let at = |msg: String| format!("endpoints[{i}]: {msg}");
            let ip: IpAddr =
                e.ip.parse()
                    .map_err(|_| at(format!("ip {:?} is not an IP address", e.ip)))?;
            if let Some(ports) = &e.ports {
                if ports.is_empty() {
                    return Err(at("ports is empty; omit it to mean every port".into()));
                }
                if ports.contains(&0) {
                    return Err(at("port 0 is not a port".into()));
                }
            }
            let id = SpiffeId::new(trust_domain, &e.namespace, &e.service_account)
                .map_err(|err| at(err.to_string()))?;
            table.insert(ip, e.ports, id).map_err(at)?;
        }
        for (i, s) in file.services.into_iter().enumerate() {
            let at = |msg: String| match &s.name {
                Some(name) => format!("services[{i}] ({name}): {msg}"),
                None => format!("services[{i}]: {msg}"),
            };
            let ip: IpAddr =
                s.ip.parse()
                    .map_err(|_| at(format!("ip {:?} is not an IP address", s.ip)))?;
            let target_port = s.target_port.unwrap_or(s.port);
            if s.port == 0 || target_port == 0 {
                return Err(at("port 0 is not a port".into()));
            }
            if s.backends.is_empty() {
                return Err(at("backends is empty".into()));
            }
            let mut backends = Vec::with_capacity(s.backends.len());
            for (j, b) in s.backends.iter().enumerate() {
                let bip: IpAddr = b.ip.parse().map_err(|_| {
                    at(format!("backends[{j}]: ip {:?} is not an IP address", b.ip))
                })?;
                let port = b.port.unwrap_or(target_port);
                if port == 0 {
                    return Err(at(format!("backends[{j}]: port 0 is not a port")));
                }
                let addr = SocketAddr::new(bip, port);
                if backends.iter().any(|x: &Backend| x.addr == addr) {
                    return Err(at(format!("backends[{j}]: {addr} is listed twice")));
                }
                let identity = match table.lookup(bip, port) {
                    Answer::Meshed(id) => Some(id),
                    _ => None,
                };
                backends.push(Backend { addr, identity });
            }
            table.insert_service(ip, s.port, backends).map_err(at)?;
        }
        Ok(table)
    }

    /// Adds a Service address and its endpoints; refuses an address already known as a pod's
    /// (one destination, one meaning) or as another Service.
    pub fn insert_service(
        &mut self,
        ip: IpAddr,
        port: u16,
        mut backends: Vec<Backend>,
    ) -> Result<(), String> {
        let addr = SocketAddr::new(ip, port);
        if self.services.contains_key(&addr) {
            return Err(format!("{addr} is already a Service address"));
        }
        if let Answer::Meshed(id) = self.lookup(ip, port) {
            return Err(format!("{addr} is already served by {id} (a pod address)"));
        }
        // Sorted, so an unchanged set compares equal and no update is sent.
        backends.sort();
        self.services.insert(addr, backends.into());
        Ok(())
    }

    /// Adds that `id` serves `ports` of `ip` (`None` = every port); refuses an overlap with a
    /// different identity, since a destination must have exactly one expected identity.
    pub fn insert(
        &mut self,
        ip: IpAddr,
        ports: Option<Vec<u16>>,
        id: SpiffeId,
    ) -> Result<(), String> {
        if let Some(addr) = self
            .services
            .keys()
            .find(|a| a.ip() == ip && ports.as_ref().is_none_or(|p| p.contains(&a.port())))
        {
            return Err(format!("{addr} is already a Service address"));
        }
        let entries = self.by_ip.entry(ip).or_default();
        for (served, existing) in entries.iter() {
            let overlap = match (served, &ports) {
                (None, _) | (_, None) => true,
                (Some(a), Some(b)) => a.iter().any(|p| b.contains(p)),
            };
            if overlap && *existing != id {
                return Err(format!(
                    "{ip} is already served by {existing} on an overlapping port"
                ));
            }
        }
        entries.push((ports, id));
        Ok(())
    }

    pub fn lookup(&self, ip: IpAddr, port: u16) -> Answer {
        if let Some(backends) = self.services.get(&SocketAddr::new(ip, port)) {
            return Answer::Service(backends.clone());
        }
        self.by_ip
            .get(&ip)
            .and_then(|entries| {
                entries
                    .iter()
                    .find(|(ports, _)| ports.as_ref().is_none_or(|p| p.contains(&port)))
                    .map(|(_, id)| Answer::Meshed(id.clone()))
            })
            .unwrap_or(Answer::NotMeshed)
    }

    /// Pod entries plus Service addresses.
    pub fn len(&self) -> usize {
        self.by_ip.values().map(Vec::len).sum::<usize>() + self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loads the table (a missing file is an empty table) and keeps it fresh in the background.
pub fn watch_file(
    dir: &Path,
    trust_domain: &str,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<watch::Receiver<Arc<EndpointTable>>, String> {
    let path = dir.join(ENDPOINTS_FILE);
    let (initial, mtime) = load(&path, trust_domain)?;
    metrics.endpoints.set(initial.len() as i64);
    metrics
        .config_valid
        .with_label_values(&[ENDPOINTS_FILE])
        .set(1);
    let (tx, rx) = watch::channel(Arc::new(initial));
    let trust_domain = trust_domain.to_owned();
    tokio::spawn(poll(path, trust_domain, tx, mtime, metrics));
    Ok(rx)
}

fn load(path: &PathBuf, trust_domain: &str) -> Result<(EndpointTable, Option<SystemTime>), String> {
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match std::fs::read_to_string(path) {
        Ok(text) => EndpointTable::parse(&text, trust_domain)
            .map(|t| (t, mtime))
            .map_err(|e| {
                let at = crate::yaml_lines::locate(&text, &["endpoints", "services"], &e);
                format!("{}: {at}", path.display())
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((EndpointTable::default(), None)),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

async fn poll(
    path: PathBuf,
    trust_domain: String,
    tx: watch::Sender<Arc<EndpointTable>>,
    mut mtime: Option<SystemTime>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let count = |outcome: &str| {
        metrics
            .config_reloads
            .with_label_values(&[ENDPOINTS_FILE, outcome])
            .inc();
        metrics
            .config_valid
            .with_label_values(&[ENDPOINTS_FILE])
            .set(i64::from(outcome == "ok"));
    };
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        if tx.is_closed() {
            return;
        }
        let now = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if now == mtime {
            continue;
        }
        mtime = now;
        match load(&path, &trust_domain) {
            Ok((table, _)) => {
                tracing::info!(path = %path.display(), endpoints = table.len(), "reloaded endpoints");
                metrics.endpoints.set(table.len() as i64);
                count("ok");
                let _ = tx.send(Arc::new(table));
            }
            Err(e) => {
                // The error names the file, the line (where known) and the reason.
                tracing::error!(error = %e, "endpoints file is invalid; keeping the last good table");
                count("invalid");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "cluster.local";

    #[test]
    fn looks_up_by_ip_and_port() {
        let t = EndpointTable::parse(
            "endpoints:\n- ip: 10.0.0.2\n  ports: [8080]\n  namespace: shop\n  serviceAccount: api\n- ip: 10.0.0.3\n  namespace: shop\n  serviceAccount: web\n- ip: fd00::5\n  namespace: shop\n  serviceAccount: db\n",
            TD,
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            t.lookup(ip("10.0.0.2"), 8080),
            Answer::Meshed("spiffe://cluster.local/ns/shop/sa/api".parse().unwrap())
        );
        assert_eq!(t.lookup(ip("10.0.0.2"), 9090), Answer::NotMeshed);
        assert_eq!(
            t.lookup(ip("10.0.0.3"), 1),
            Answer::Meshed("spiffe://cluster.local/ns/shop/sa/web".parse().unwrap())
        );
        assert_eq!(
            t.lookup(ip("fd00::5"), 443),
            Answer::Meshed("spiffe://cluster.local/ns/shop/sa/db".parse().unwrap())
        );
        assert_eq!(t.lookup(ip("10.0.0.9"), 80), Answer::NotMeshed);
        assert_eq!(EndpointTable::parse("", TD).map(|t| t.len()), Ok(0));
    }

    #[test]
    fn rejects_bad_files_precisely() {
        let cases = [
            ("endpoints:\n- ip: 10.0.0.300\n  namespace: a\n  serviceAccount: b\n", "not an IP address"),
            ("endpoints:\n- ip: 10.0.0.1\n  ports: []\n  namespace: a\n  serviceAccount: b\n", "ports is empty"),
            ("endpoints:\n- ip: 10.0.0.1\n  ports: [0]\n  namespace: a\n  serviceAccount: b\n", "port 0"),
            ("endpoints:\n- ip: 10.0.0.1\n  ports: [70000]\n  namespace: a\n  serviceAccount: b\n", "invalid value"),
            ("endpoints:\n- ip: 10.0.0.1\n  namespace: A\n  serviceAccount: b\n", "namespace"),
            ("endpoints:\n- ip: 10.0.0.1\n  namespace: a\n  serviceAccount: b\n  weight: 3\n", "unknown field"),
            (
                "endpoints:\n- ip: 10.0.0.1\n  namespace: a\n  serviceAccount: b\n- ip: 10.0.0.1\n  ports: [80]\n  namespace: a\n  serviceAccount: c\n",
                "already served",
            ),
        ];
        for (text, want) in cases {
            let err = EndpointTable::parse(text, TD).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;

    const TD: &str = "cluster.local";
    const PODS: &str = "endpoints:\n- {ip: 10.0.0.2, namespace: shop, serviceAccount: api}\n- {ip: 10.0.0.5, ports: [8080], namespace: shop, serviceAccount: api-v2}\n";

    fn backend(addr: &str, sa: Option<&str>) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            identity: sa.map(|sa| SpiffeId::new(TD, "shop", sa).unwrap()),
        }
    }

    #[test]
    fn a_service_lists_its_backends_with_the_identity_of_each() {
        let t = EndpointTable::parse(
            &format!("{PODS}services:\n- name: shop/api\n  ip: 10.96.0.10\n  port: 80\n  targetPort: 8080\n  backends:\n  - {{ip: 10.0.0.5}}\n  - {{ip: 10.0.0.2}}\n  - {{ip: 10.0.0.7}}\n  - {{ip: 10.0.0.5, port: 9090}}\n"),
            TD,
        )
        .unwrap();
        let want: Vec<Backend> = vec![
            backend("10.0.0.2:8080", Some("api")),
            backend("10.0.0.5:8080", Some("api-v2")),
            backend("10.0.0.5:9090", None), // api-v2 serves 8080 only
            backend("10.0.0.7:8080", None),
        ];
        assert_eq!(
            t.lookup("10.96.0.10".parse().unwrap(), 80),
            Answer::Service(want.into())
        );
        // Another port of the ClusterIP is not the Service.
        assert_eq!(
            t.lookup("10.96.0.10".parse().unwrap(), 81),
            Answer::NotMeshed
        );
        // Pods are still answered as before.
        assert_eq!(
            t.lookup("10.0.0.2".parse().unwrap(), 8080),
            Answer::Meshed(SpiffeId::new(TD, "shop", "api").unwrap())
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn backend_order_does_not_change_the_answer() {
        let a = EndpointTable::parse(&format!("{PODS}services:\n- {{ip: 10.96.0.10, port: 80, targetPort: 8080, backends: [{{ip: 10.0.0.2}}, {{ip: 10.0.0.5}}]}}\n"), TD).unwrap();
        let b = EndpointTable::parse(&format!("{PODS}services:\n- {{ip: 10.96.0.10, port: 80, targetPort: 8080, backends: [{{ip: 10.0.0.5}}, {{ip: 10.0.0.2}}]}}\n"), TD).unwrap();
        let ip = "10.96.0.10".parse().unwrap();
        assert_eq!(a.lookup(ip, 80), b.lookup(ip, 80));
    }

    #[test]
    fn rejects_bad_services_precisely() {
        let cases = [
            ("services:\n- {ip: 10.96.0.300, port: 80, backends: [{ip: 10.0.0.2}]}\n", "services[0]: ip"),
            ("services:\n- {ip: 10.96.0.1, port: 0, backends: [{ip: 10.0.0.2}]}\n", "port 0"),
            ("services:\n- {ip: 10.96.0.1, port: 80, targetPort: 0, backends: [{ip: 10.0.0.2}]}\n", "port 0"),
            ("services:\n- {ip: 10.96.0.1, port: 80, backends: []}\n", "backends is empty"),
            ("services:\n- {ip: 10.96.0.1, port: 80}\n", "missing field `backends`"),
            ("services:\n- {name: shop/x, ip: 10.96.0.1, port: 80, backends: [{ip: nope}]}\n", "services[0] (shop/x): backends[0]: ip"),
            ("services:\n- {ip: 10.96.0.1, port: 80, backends: [{ip: 10.0.0.2, port: 0}]}\n", "backends[0]: port 0"),
            ("services:\n- {ip: 10.96.0.1, port: 80, backends: [{ip: 10.0.0.2}, {ip: 10.0.0.2, port: 80}]}\n", "listed twice"),
            ("services:\n- {ip: 10.96.0.1, port: 80, backends: [{ip: 10.0.0.2, namespace: a}]}\n", "unknown field"),
            ("services:\n- {ip: 10.96.0.1, port: 80, weight: 2, backends: [{ip: 10.0.0.2}]}\n", "unknown field"),
            ("services:\n- {ip: 10.96.0.1, port: 80, backends: [{ip: 10.0.0.2}]}\n- {ip: 10.96.0.1, port: 80, backends: [{ip: 10.0.0.3}]}\n", "already a Service address"),
            ("endpoints:\n- {ip: 10.96.0.1, namespace: a, serviceAccount: b}\nservices:\n- {ip: 10.96.0.1, port: 80, backends: [{ip: 10.0.0.3}]}\n", "(a pod address)"),
        ];
        for (text, want) in cases {
            let err = EndpointTable::parse(text, TD).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
