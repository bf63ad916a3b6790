//! Local-mode policy source: every `*.yaml`/`*.yml` file in `DIR/policies/` (TokenIssuers and
//! AccessPolicies, the same YAML as the CRDs) and the introspection client secrets in
//! `DIR/secrets.yaml` (mode 0600). Polled for changes. Every document is its own object, accepted
//! or refused on its own (`pqmesh_policy::admit`): an invalid document (or a file that does not
//! parse) affects only its objects, whose last accepted versions stay in force; the verdicts are
//! in `/policy_status`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pqmesh_policy::admit::{admit, candidates_from_yaml, Admitted, Candidate};
use pqmesh_policy::{PolicySet, Secrets};
use serde::Deserialize;
use tokio::sync::watch;

pub const POLICIES_DIR: &str = "policies";
pub const SECRETS_FILE: &str = "secrets.yaml";
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Secrets by (namespace, name) → key → value. Never logged.
#[derive(Default, PartialEq, Eq)]
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

/// The policy state every push stream compiles from, with the verdict on every object.
pub struct PolicyState {
    pub set: PolicySet,
    pub secrets: SecretTable,
    pub admitted: Admitted,
}

impl PolicyState {
    pub fn new(mut admitted: Admitted, secrets: SecretTable) -> Self {
        admitted.resolve_secrets(&secrets);
        Self {
            set: admitted.set.clone(),
            secrets,
            admitted,
        }
    }

    /// The verdicts as `/policy_status` shows them.
    pub fn verdicts_json(&self) -> serde_json::Value {
        serde_json::to_value(self.admitted.verdicts.values().collect::<Vec<_>>())
            .unwrap_or_default()
    }
}

/// Records a (re)load in the metrics: `policy_reloads_total{outcome}` is `ok` when every object
/// was accepted, `invalid` when some were refused (each alone keeps its last good version);
/// `policy_objects_rejected` counts the objects whose current version is refused.
pub fn record(metrics: &crate::metrics::Metrics, state: &PolicyState) {
    metrics
        .policy_resources
        .set((state.set.policies.len() + state.set.issuers.len()) as i64);
    let rejected = state.admitted.rejected();
    metrics.policy_objects_rejected.set(rejected as i64);
    let outcome = if rejected == 0 { "ok" } else { "invalid" };
    metrics.policy_reloads.with_label_values(&[outcome]).inc();
    for v in state.admitted.verdicts.values() {
        if !v.accepted.status {
            tracing::error!(object = %v.key, source = %v.source, reason = %v.accepted.reason,
                message = %v.accepted.message, "policy object refused; it alone is affected");
        } else if !v.resolved_refs.status {
            tracing::warn!(object = %v.key, reason = %v.resolved_refs.reason,
                message = %v.resolved_refs.message, "policy object has an unresolved reference");
        }
    }
}

/// Loads now and keeps it fresh in the background. Only an unreadable or insecure
/// `secrets.yaml` stops the start; policy documents are judged one by one.
pub fn watch_dir(
    dir: &Path,
    trust_domain: &str,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<watch::Receiver<Arc<PolicyState>>, String> {
    let dir = dir.to_owned();
    let secrets = load_secrets(&dir.join(SECRETS_FILE))?;
    let fingerprint = fingerprint_of(&dir);
    let state = PolicyState::new(
        admit(candidates(&dir), &PolicySet::default(), trust_domain),
        secrets,
    );
    record(&metrics, &state);
    let (tx, rx) = watch::channel(Arc::new(state));
    let trust_domain = trust_domain.to_owned();
    tokio::spawn(async move {
        // The reload generation: 1 is the start-up load, each accepted change adds one.
        let mut version: u64 = 1;
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
            let secrets = match load_secrets(&dir.join(SECRETS_FILE)) {
                Ok(s) => s,
                Err(e) => {
                    metrics.policy_reloads.with_label_values(&["invalid"]).inc();
                    tracing::error!(error = %e, "secrets change rejected; the last good policies and secrets stay in force");
                    continue;
                }
            };
            let previous = tx.borrow().set.clone();
            let state =
                PolicyState::new(admit(candidates(&dir), &previous, &trust_domain), secrets);
            record(&metrics, &state);
            version += 1;
            tracing::info!(
                version,
                policies = state.set.policies.len(),
                issuers = state.set.issuers.len(),
                refused = state.admitted.rejected(),
                "reloaded policies"
            );
            let _ = tx.send(Arc::new(state));
        }
    });
    Ok(rx)
}

/// Every document of every policy file; an unreadable file is one refused candidate.
fn candidates(dir: &Path) -> Vec<Candidate> {
    let mut out = Vec::new();
    for file in policy_files(dir) {
        let source = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => out.extend(candidates_from_yaml(&text, &source)),
            Err(e) => out.push(Candidate {
                key: pqmesh_policy::admit::ObjectKey::new("Unknown", "", &source),
                source,
                generation: None,
                created: None,
                parsed: Err(e.to_string()),
                reach: None,
            }),
        }
    }
    out
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

pub(crate) fn load_secrets(path: &Path) -> Result<SecretTable, String> {
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
    // The message leaves out the value serde found: here it is most likely a secret.
    let file: SecretsFile = serde_yaml::from_str(&text).map_err(|e| {
        format!(
            "{}: {}",
            path.display(),
            pqmesh_policy::redact::yaml_error(&e)
        )
    })?;
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
