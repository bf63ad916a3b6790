//! Local-mode discovery data: which workload identity serves which IP (and ports), from
//! `DIR/endpoints.yaml`. Polled for changes; an invalid edit is logged and the last good table
//! stays. Published through a `watch` channel so every Discovery stream re-evaluates its own
//! subscriptions when the table changes.

use std::collections::HashMap;
use std::net::IpAddr;
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
}

/// The ports of an IP a workload serves (`None` = all) and its identity.
type Served = (Option<Vec<u16>>, SpiffeId);

#[derive(Debug, Default)]
pub struct EndpointTable {
    by_ip: HashMap<IpAddr, Vec<Served>>,
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
        Ok(table)
    }

    /// Adds that `id` serves `ports` of `ip` (`None` = every port); refuses an overlap with a
    /// different identity, since a destination must have exactly one expected identity.
    pub fn insert(
        &mut self,
        ip: IpAddr,
        ports: Option<Vec<u16>>,
        id: SpiffeId,
    ) -> Result<(), String> {
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

    pub fn len(&self) -> usize {
        self.by_ip.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loads the table (a missing file is an empty table) and keeps it fresh in the background.
pub fn watch_file(
    dir: &Path,
    trust_domain: &str,
    loaded: prometheus::IntGauge,
) -> Result<watch::Receiver<Arc<EndpointTable>>, String> {
    let path = dir.join(ENDPOINTS_FILE);
    let (initial, mtime) = load(&path, trust_domain)?;
    loaded.set(initial.len() as i64);
    let (tx, rx) = watch::channel(Arc::new(initial));
    let trust_domain = trust_domain.to_owned();
    tokio::spawn(poll(path, trust_domain, tx, mtime, loaded));
    Ok(rx)
}

fn load(path: &PathBuf, trust_domain: &str) -> Result<(EndpointTable, Option<SystemTime>), String> {
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match std::fs::read_to_string(path) {
        Ok(text) => EndpointTable::parse(&text, trust_domain)
            .map(|t| (t, mtime))
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((EndpointTable::default(), None)),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

async fn poll(
    path: PathBuf,
    trust_domain: String,
    tx: watch::Sender<Arc<EndpointTable>>,
    mut mtime: Option<SystemTime>,
    loaded: prometheus::IntGauge,
) {
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
                loaded.set(table.len() as i64);
                let _ = tx.send(Arc::new(table));
            }
            Err(e) => {
                tracing::error!(error = %e, "endpoints file is invalid; keeping the last good table")
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
