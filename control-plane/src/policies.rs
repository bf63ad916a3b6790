//! Local-mode policy source: every `*.yaml`/`*.yml` file in `DIR/policies/` (TokenIssuers and
//! AccessPolicies, the same YAML as the CRDs) and the introspection client secrets in
//! `DIR/secrets.yaml` (mode 0600). Polled for changes; a change that does not validate as a whole
//! is logged and the last good state stays in force.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pqmesh_policy::{parse_documents, PolicySet, Secrets};
use serde::Deserialize;
use tokio::sync::watch;

pub const POLICIES_DIR: &str = "policies";
pub const SECRETS_FILE: &str = "secrets.yaml";
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Secrets by (namespace, name) → key → value. Never logged.
#[derive(Default)]
pub struct SecretTable(HashMap<(String, String), HashMap<String, String>>);

impl SecretTable {
    /// Adds Secret `namespace/name`'s data; false if it was already there.
    pub fn insert(&mut self, namespace: &str, name: &str, data: HashMap<String, String>) -> bool {
        self.0
            .insert((namespace.to_owned(), name.to_owned()), data)
            .is_none()
    }
}

impl Secrets for SecretTable {
    fn get(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        self.0
            .get(&(namespace.to_owned(), name.to_owned()))?
            .get(key)
            .cloned()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    #[serde(default)]
    secrets: Vec<SecretEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretEntry {
    namespace: String,
    name: String,
    data: HashMap<String, String>,
}

/// The policy state every push stream compiles from.
pub struct PolicyState {
    pub set: PolicySet,
    pub secrets: SecretTable,
}

/// Loads now (an invalid directory is a start-up error) and keeps it fresh in the background.
pub fn watch_dir(
    dir: &Path,
    trust_domain: &str,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<watch::Receiver<Arc<PolicyState>>, String> {
    let dir = dir.to_owned();
    let (state, fingerprint) = load(&dir, trust_domain)?;
    metrics
        .policy_resources
        .set((state.set.policies.len() + state.set.issuers.len()) as i64);
    let (tx, rx) = watch::channel(Arc::new(state));
    let trust_domain = trust_domain.to_owned();
    tokio::spawn(async move {
        let mut last = fingerprint;
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if tx.is_closed() {
                return;
            }
            let now = fingerprint_of(&dir);
            if now == last {
                continue;
            }
            last = now;
            match load(&dir, &trust_domain) {
                Ok((state, _)) => {
                    tracing::info!(
                        policies = state.set.policies.len(),
                        issuers = state.set.issuers.len(),
                        "reloaded policies"
                    );
                    metrics
                        .policy_resources
                        .set((state.set.policies.len() + state.set.issuers.len()) as i64);
                    metrics.policy_reloads.with_label_values(&["ok"]).inc();
                    let _ = tx.send(Arc::new(state));
                }
                Err(e) => {
                    metrics.policy_reloads.with_label_values(&["invalid"]).inc();
                    tracing::error!(error = %e, "policy change rejected; the last good policies stay in force");
                }
            }
        }
    });
    Ok(rx)
}

type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn policy_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(POLICIES_DIR))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn fingerprint_of(dir: &Path) -> Fingerprint {
    let mut files = policy_files(dir);
    files.push(dir.join(SECRETS_FILE));
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (p, mtime, len)
        })
        .collect()
}

fn load(dir: &Path, trust_domain: &str) -> Result<(PolicyState, Fingerprint), String> {
    let fingerprint = fingerprint_of(dir);
    let mut resources = Vec::new();
    for file in policy_files(dir) {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        resources.extend(
            parse_documents(&text, &file.display().to_string()).map_err(|e| e.to_string())?,
        );
    }
    let set = PolicySet::build(resources, trust_domain).map_err(|e| e.to_string())?;
    let secrets = load_secrets(&dir.join(SECRETS_FILE))?;
    Ok((PolicyState { set, secrets }, fingerprint))
}

fn load_secrets(path: &Path) -> Result<SecretTable, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SecretTable::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:o}); it must be 0600",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: SecretsFile =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut table = SecretTable::default();
    for s in file.secrets {
        if table
            .0
            .insert((s.namespace.clone(), s.name.clone()), s.data)
            .is_some()
        {
            return Err(format!(
                "{}: secret {}/{} is defined twice",
                path.display(),
                s.namespace,
                s.name
            ));
        }
    }
    Ok(table)
}
