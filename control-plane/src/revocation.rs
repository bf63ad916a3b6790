//! The mesh deny list: identities and certificate serials that are revoked. Local mode reads it
//! from `DIR/revocations.yaml` (polled; an invalid edit keeps the last good list). The list is
//! pushed to every sidecar on the Policy/Watch stream (they refuse and close such peers), Certify
//! refuses a revoked identity, and a revoked sidecar's own policy stream is closed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pqmesh_mtls::SpiffeId;
use serde::Deserialize;
use tokio::sync::watch;

use crate::metrics::Metrics;

pub const REVOCATIONS_FILE: &str = "revocations.yaml";
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Longest serial accepted: RFC 5280 allows 20 octets.
const MAX_SERIAL_HEX: usize = 40;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RevocationList {
    /// SPIFFE IDs, canonical text.
    pub identities: BTreeSet<String>,
    /// Serial numbers, upper-case hex without separators.
    pub serials: BTreeSet<String>,
    /// OAuth `client_id`s whose tokens are refused (the gateway and token-checking sidecars).
    pub clients: BTreeSet<String>,
    /// Token subjects (`sub`) refused the same way.
    pub subjects: BTreeSet<String>,
}

/// Longest client id or subject accepted in the deny list.
const MAX_NAME: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationsFile {
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    serials: Vec<String>,
    #[serde(default)]
    clients: Vec<String>,
    #[serde(default)]
    subjects: Vec<String>,
}

impl RevocationList {
    /// Parses the YAML document; identities are full SPIFFE IDs in `trust_domain` or
    /// `<namespace>/<service-account>`, serials hex (colons allowed, any case).
    pub fn parse(text: &str, trust_domain: &str) -> Result<Self, String> {
        let file: RevocationsFile = if text.trim().is_empty() {
            RevocationsFile {
                identities: vec![],
                serials: vec![],
                clients: vec![],
                subjects: vec![],
            }
        } else {
            serde_yaml::from_str(text).map_err(|e| e.to_string())?
        };
        let mut list = RevocationList::default();
        for raw in file.identities {
            let id = if raw.starts_with("spiffe://") {
                raw.parse::<SpiffeId>()
                    .map_err(|e| format!("identity {raw:?}: {e}"))?
            } else {
                match raw.split_once('/') {
                    Some((ns, sa)) => SpiffeId::new(trust_domain, ns, sa)
                        .map_err(|e| format!("identity {raw:?}: {e}"))?,
                    None => {
                        return Err(format!(
                        "identity {raw:?}: expected a SPIFFE ID or <namespace>/<service-account>"
                    ))
                    }
                }
            };
            if id.trust_domain() != trust_domain {
                return Err(format!(
                    "identity {raw:?} is not in trust domain {trust_domain}"
                ));
            }
            list.identities.insert(id.to_string());
        }
        for raw in file.serials {
            let hex: String = raw.chars().filter(|c| *c != ':').collect();
            if hex.is_empty()
                || hex.len() > MAX_SERIAL_HEX
                || !hex.chars().all(|c| c.is_ascii_hexdigit())
            {
                return Err(format!(
                    "serial {raw:?}: expected 1 to {MAX_SERIAL_HEX} hex digits"
                ));
            }
            list.serials.insert(hex.to_ascii_uppercase());
        }
        list.clients = names("client", file.clients)?;
        list.subjects = names("subject", file.subjects)?;
        Ok(list)
    }

    /// Whether the list has no entry of any kind.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
            && self.serials.is_empty()
            && self.clients.is_empty()
            && self.subjects.is_empty()
    }

    pub fn is_identity_revoked(&self, id: &SpiffeId) -> bool {
        self.identities.contains(&id.to_string())
    }

    /// Whether a peer with this identity and certificate serial (upper-case hex) is revoked.
    pub fn covers(&self, id: &SpiffeId, serial: Option<&str>) -> bool {
        self.is_identity_revoked(id) || serial.is_some_and(|s| self.serials.contains(s))
    }

    /// A content hash ("" for an empty list, so a mesh without revocations shows none).
    pub fn version(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for i in &self.identities {
            h.update(b"i");
            h.update(i.as_bytes());
            h.update([0]);
        }
        for s in &self.serials {
            h.update(b"s");
            h.update(s.as_bytes());
            h.update([0]);
        }
        for c in &self.clients {
            h.update(b"c");
            h.update(c.as_bytes());
            h.update([0]);
        }
        for u in &self.subjects {
            h.update(b"u");
            h.update(u.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// Client ids or subjects as written: non-empty, at most [`MAX_NAME`] bytes, no control
/// characters (they are compared byte for byte with the verified token's claim).
fn names(what: &str, raw: Vec<String>) -> Result<BTreeSet<String>, String> {
    raw.into_iter()
        .map(|n| {
            if n.is_empty() || n.len() > MAX_NAME || n.chars().any(char::is_control) {
                Err(format!(
                    "{what} {n:?}: expected 1 to {MAX_NAME} bytes without control characters"
                ))
            } else {
                Ok(n)
            }
        })
        .collect()
}

fn load(path: &Path, trust_domain: &str) -> Result<RevocationList, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => RevocationList::parse(&text, trust_domain)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevocationList::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn fingerprint(path: &Path) -> (Option<SystemTime>, u64) {
    let meta = std::fs::metadata(path).ok();
    (
        meta.as_ref().and_then(|m| m.modified().ok()),
        meta.map(|m| m.len()).unwrap_or(0),
    )
}

/// Loads `DIR/revocations.yaml` now (invalid = start-up error) and keeps it fresh.
pub fn watch_file(
    dir: &Path,
    trust_domain: &str,
    metrics: Arc<Metrics>,
) -> Result<watch::Receiver<Arc<RevocationList>>, String> {
    let path: PathBuf = dir.join(REVOCATIONS_FILE);
    let list = load(&path, trust_domain)?;
    record(&list, &metrics);
    let (tx, rx) = watch::channel(Arc::new(list));
    let trust_domain = trust_domain.to_owned();
    tokio::spawn(async move {
        let mut last = fingerprint(&path);
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if tx.is_closed() {
                return;
            }
            let now = fingerprint(&path);
            if now == last {
                continue;
            }
            // A file still being written: wait until it is the same on two polls in a row.
            tokio::time::sleep(POLL_INTERVAL).await;
            if fingerprint(&path) != now {
                continue;
            }
            last = now;
            let emptied = std::fs::read_to_string(&path).is_ok_and(|t| t.trim().is_empty());
            let loaded = if emptied && !tx.borrow().is_empty() {
                // An editor's non-atomic save empties the file first: that must not lift every
                // revocation and deny entry for a moment (review 11, F5).
                Err(format!(
                    "{}: the file is empty; write `identities: []` (and the other lists) to clear the list",
                    path.display()
                ))
            } else {
                load(&path, &trust_domain)
            };
            match loaded {
                Ok(list) => {
                    if **tx.borrow() == list {
                        continue;
                    }
                    tracing::info!(
                        identities = list.identities.len(),
                        serials = list.serials.len(),
                        version = %list.version(),
                        "revocation list changed"
                    );
                    metrics.revocation_reloads.with_label_values(&["ok"]).inc();
                    record(&list, &metrics);
                    let _ = tx.send(Arc::new(list));
                }
                Err(e) => {
                    metrics
                        .revocation_reloads
                        .with_label_values(&["invalid"])
                        .inc();
                    tracing::error!(error = %e, "revocation list change rejected; the last good list stays in force");
                }
            }
        }
    });
    Ok(rx)
}

/// The list as `/config_dump` shows it.
pub fn summary(list: &RevocationList) -> serde_json::Value {
    serde_json::json!({
        "version": list.version(),
        "identities": list.identities,
        "serials": list.serials,
        "clients": list.clients,
        "subjects": list.subjects,
    })
}

fn record(list: &RevocationList, metrics: &Metrics) {
    metrics
        .revoked
        .with_label_values(&["identity"])
        .set(list.identities.len() as i64);
    metrics
        .revoked
        .with_label_values(&["serial"])
        .set(list.serials.len() as i64);
    metrics
        .revoked
        .with_label_values(&["client"])
        .set(list.clients.len() as i64);
    metrics
        .revoked
        .with_label_values(&["subject"])
        .set(list.subjects.len() as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_identity_forms_and_normalises_serials() {
        let list = RevocationList::parse(
            "identities: [\"spiffe://cluster.local/ns/shop/sa/web\", shop/intruder]\nserials: [\"0a:1B:ff\"]\n",
            "cluster.local",
        )
        .unwrap();
        assert!(
            list.is_identity_revoked(&SpiffeId::new("cluster.local", "shop", "intruder").unwrap())
        );
        assert!(list.is_identity_revoked(&SpiffeId::new("cluster.local", "shop", "web").unwrap()));
        assert!(!list.is_identity_revoked(&SpiffeId::new("cluster.local", "shop", "api").unwrap()));
        assert_eq!(list.serials.iter().next().unwrap(), "0A1BFF");
        assert!(!list.version().is_empty());
        assert_eq!(
            RevocationList::parse("", "cluster.local")
                .unwrap()
                .version(),
            ""
        );
    }

    /// The OAuth deny list: clients and subjects as written, in the version.
    #[test]
    fn clients_and_subjects_are_kept_as_written_and_change_the_version() {
        let none = RevocationList::parse("identities: [shop/web]", "cluster.local").unwrap();
        let list = RevocationList::parse(
            "identities: [shop/web]\nclients: [partner-app, \"Spam Bot\"]\nsubjects: [alice]\n",
            "cluster.local",
        )
        .unwrap();
        assert_eq!(
            list.clients.iter().collect::<Vec<_>>(),
            ["Spam Bot", "partner-app"]
        );
        assert_eq!(list.subjects.iter().collect::<Vec<_>>(), ["alice"]);
        assert_ne!(list.version(), none.version());
        let only = RevocationList::parse("subjects: [alice]", "cluster.local").unwrap();
        assert!(!only.version().is_empty());
    }

    #[test]
    fn bad_documents_are_refused_precisely() {
        let cases = [
            ("identities: [shop]", "expected a SPIFFE ID"),
            (
                "identities: [\"spiffe://other.domain/ns/a/sa/b\"]",
                "not in trust domain",
            ),
            ("identities: [\"spiffe://cluster.local/ns/a\"]", "identity"),
            ("identities: [\"a/b/c\"]", "identity"),
            ("serials: [\"xyz\"]", "hex digits"),
            ("serials: [\"\"]", "hex digits"),
            (
                "serials: [\"00112233445566778899aabbccddeeff0011223344\"]",
                "hex digits",
            ),
            ("identity: [shop/web]", "unknown field"),
            ("identities: shop/web", "invalid type"),
            ("[1, 2", ""),
            ("clients: [\"\"]", "client \"\""),
            ("subjects: [\"a\\nb\"]", "control characters"),
        ];
        for (doc, want) in cases {
            let err = RevocationList::parse(doc, "cluster.local").unwrap_err();
            assert!(err.contains(want), "{doc}: {err}");
        }
    }
}
