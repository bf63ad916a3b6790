//! Local-mode workload authentication: a YAML file in the local directory maps bootstrap tokens
//! to identities. The file is re-read when it changes; a broken edit keeps the last good table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use pqmesh_mtls::SpiffeId;

/// Shortest token accepted: bootstrap tokens are secrets, not names.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenEntry {
    token: String,
    namespace: String,
    service_account: String,
    /// RFC 3339; absent = no expiry.
    #[serde(default)]
    expires: Option<String>,
}

#[derive(Debug, Clone)]
struct Grant {
    namespace: String,
    service_account: String,
    expires: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bootstrap token presented")]
    Missing,
    #[error("unknown bootstrap token")]
    Unknown,
    #[error("bootstrap token for ns/{namespace}/sa/{service_account} expired at {expired}")]
    Expired {
        namespace: String,
        service_account: String,
        expired: String,
    },
    #[error("bootstrap token table is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Rejected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

struct Loaded {
    modified: Option<SystemTime>,
    by_hash: HashMap<[u8; 32], Grant>,
}

/// The file's name in the local-mode directory (the metrics' `file` label).
pub const TOKENS_FILE: &str = "bootstrap-tokens.yaml";
/// How often [`watch`] looks at the file's modification time.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The bootstrap token table, reloaded from `path` when its modification time changes: by
/// [`watch`] in the background (so a bad edit is reported when it is made) and before every
/// authentication (so a token added a moment ago works at once).
pub struct BootstrapTokens {
    path: PathBuf,
    trust_domain: String,
    state: Mutex<Option<Loaded>>,
    reloads: Option<(prometheus::IntCounterVec, prometheus::IntGaugeVec)>,
}

/// Re-reads the file when it changes until `tokens` is the last reference left.
pub fn watch(tokens: std::sync::Arc<BootstrapTokens>) {
    tokio::spawn(async move {
        while std::sync::Arc::strong_count(&tokens) > 1 {
            tokio::time::sleep(POLL_INTERVAL).await;
            tokens.reload_if_changed();
        }
    });
}

impl BootstrapTokens {
    /// Loads the file now; an invalid or missing file is an error at start-up.
    pub fn load(path: &Path, trust_domain: &str) -> Result<Self, TokenFileError> {
        let tokens = Self {
            path: path.to_owned(),
            trust_domain: trust_domain.to_owned(),
            state: Mutex::new(None),
            reloads: None,
        };
        let loaded = tokens.read_file()?;
        *tokens.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
        Ok(tokens)
    }

    /// Counts reloads in `config_reloads_total{file, outcome}` and the file's health in
    /// `config_valid{file}`.
    pub fn with_reload_metrics(
        mut self,
        reloads: prometheus::IntCounterVec,
        valid: prometheus::IntGaugeVec,
    ) -> Self {
        valid.with_label_values(&[TOKENS_FILE]).set(1);
        self.reloads = Some((reloads, valid));
        self
    }

    fn count_reload(&self, ok: bool) {
        if let Some((reloads, valid)) = &self.reloads {
            let outcome = if ok { "ok" } else { "invalid" };
            reloads.with_label_values(&[TOKENS_FILE, outcome]).inc();
            valid.with_label_values(&[TOKENS_FILE]).set(i64::from(ok));
        }
    }

    fn read_file(&self) -> Result<Loaded, TokenFileError> {
        let invalid = |reason: String| TokenFileError::Invalid {
            path: self.path.clone(),
            reason,
        };
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let text = std::fs::read_to_string(&self.path).map_err(|e| invalid(e.to_string()))?;
        parse_table(&text, &self.trust_domain)
            .map(|by_hash| Loaded { modified, by_hash })
            .map_err(|reason| invalid(crate::yaml_lines::locate(&text, &["tokens"], &reason)))
    }

    fn reload_if_changed(&self) {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.as_ref().map(|s| s.modified) == Some(modified) {
            return;
        }
        match self.read_file() {
            Ok(loaded) => {
                tracing::info!(path = %self.path.display(), tokens = loaded.by_hash.len(), "reloaded bootstrap tokens");
                self.count_reload(true);
                *state = Some(loaded);
            }
            Err(e) => {
                // The error names the file, the line (where known) and the reason.
                tracing::error!(error = %e, "bootstrap token file is invalid; keeping the last good table");
                self.count_reload(false);
                // Remember the bad mtime so we do not re-parse on every request.
                if let Some(s) = state.as_mut() {
                    s.modified = modified;
                }
            }
        }
    }

    /// The identity a token grants.
    pub fn authenticate(&self, token: &str, now: SystemTime) -> Result<SpiffeId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        self.reload_if_changed();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let table = state
            .as_ref()
            .ok_or_else(|| AuthError::Unavailable("never loaded".into()))?;
        // Look up by digest: the comparison never runs over the secret itself.
        let grant = table
            .by_hash
            .get(&digest(token))
            .ok_or(AuthError::Unknown)?;
        if let Some(expires) = grant.expires {
            if now >= expires {
                return Err(AuthError::Expired {
                    namespace: grant.namespace.clone(),
                    service_account: grant.service_account.clone(),
                    expired: format_time(expires),
                });
            }
        }
        SpiffeId::new(&self.trust_domain, &grant.namespace, &grant.service_account)
            .map_err(|e| AuthError::Unavailable(e.to_string()))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_table(text: &str, trust_domain: &str) -> Result<HashMap<[u8; 32], Grant>, String> {
    // The message leaves out the value serde found: here it is most likely a token.
    let file: TokenFile =
        serde_yaml::from_str(text).map_err(|e| pqmesh_policy::redact::yaml_error(&e))?;
    let mut table = HashMap::new();
    for (i, entry) in file.tokens.into_iter().enumerate() {
        let at = |msg: String| format!("tokens[{i}]: {msg}");
        if entry.token.len() < MIN_TOKEN_LEN {
            return Err(at(format!(
                "token is shorter than {MIN_TOKEN_LEN} characters"
            )));
        }
        // A token pasted into the wrong column (or aliased there) would become part of an
        // identity, certificates and logs: refuse it without repeating it.
        if entry.namespace == entry.token || entry.service_account == entry.token {
            return Err(at(
                "namespace or serviceAccount is the token itself (columns mixed up?)".to_owned(),
            ));
        }
        SpiffeId::new(trust_domain, &entry.namespace, &entry.service_account)
            .map_err(|e| at(e.to_string()))?;
        let expires = entry
            .expires
            .as_deref()
            .map(|s| parse_time(s).map_err(|e| at(format!("expires {s:?}: {e}"))))
            .transpose()?;
        let grant = Grant {
            namespace: entry.namespace,
            service_account: entry.service_account,
            expires,
        };
        if table.insert(digest(&entry.token), grant).is_some() {
            return Err(at("the same token appears twice".to_owned()));
        }
    }
    Ok(table)
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("not an RFC 3339 time: {e}"))
}

pub fn format_time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TD: &str = "cluster.local";

    #[test]
    fn maps_tokens_to_identities_and_checks_expiry() {
        let table = parse_table(
            "tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  namespace: shop\n  serviceAccount: web\n- token: bbbbbbbbbbbbbbbbbbbb\n  namespace: shop\n  serviceAccount: old\n  expires: 2020-01-01T00:00:00Z\n",
            TD,
        )
        .unwrap();
        assert_eq!(table.len(), 2);
        let dir = tempdir();
        let path = dir.join("tokens.yaml");
        std::fs::write(&path, "tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  namespace: shop\n  serviceAccount: web\n- token: bbbbbbbbbbbbbbbbbbbb\n  namespace: shop\n  serviceAccount: old\n  expires: 2020-01-01T00:00:00Z\n").unwrap();
        let tokens = BootstrapTokens::load(&path, TD).unwrap();
        let now = SystemTime::now();
        assert_eq!(
            tokens
                .authenticate("aaaaaaaaaaaaaaaaaaaa", now)
                .unwrap()
                .to_string(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(tokens.authenticate("", now), Err(AuthError::Missing));
        assert_eq!(
            tokens.authenticate("cccccccccccccccccccc", now),
            Err(AuthError::Unknown)
        );
        assert!(matches!(
            tokens.authenticate("bbbbbbbbbbbbbbbbbbbb", now),
            Err(AuthError::Expired { .. })
        ));
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        assert!(tokens.authenticate("bbbbbbbbbbbbbbbbbbbb", before).is_ok());
    }

    #[test]
    fn rejects_bad_files_with_the_reason() {
        let cases = [
            ("tokens: [yaml", "expected struct TokenEntry"),
            ("not: 1", "unknown field"),
            ("tokens:\n- token: short\n  namespace: a\n  serviceAccount: b\n", "shorter than"),
            ("tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  namespace: A\n  serviceAccount: b\n", "namespace"),
            ("tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  namespace: a\n  serviceAccount: b\n  role: admin\n", "unknown field"),
            ("tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  namespace: a\n  serviceAccount: b\n  expires: tomorrow\n", "RFC 3339"),
            ("tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  namespace: a\n  serviceAccount: b\n- token: aaaaaaaaaaaaaaaaaaaa\n  namespace: c\n  serviceAccount: d\n", "twice"),
        ];
        for (text, want) in cases {
            let err = parse_table(text, TD).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // Outside review (session 6): a token aliased into the namespace was accepted (lower
        // case) or repeated in the error (upper case).
        for token in [
            "a-long-random-secret-for-web",
            "A-Long-Random-Secret-For-Web",
        ] {
            for column in [
                "namespace: *t\n  serviceAccount: web",
                "namespace: shop\n  serviceAccount: *t",
            ] {
                let text = format!("tokens:\n- token: &t {token}\n  {column}\n");
                let err = parse_table(&text, TD).unwrap_err();
                assert!(err.contains("is the token itself"), "{text}: {err}");
                assert!(!err.contains(token), "{err}");
            }
        }
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_table() {
        let dir = tempdir();
        let path = dir.join("tokens.yaml");
        std::fs::write(
            &path,
            "tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  namespace: a\n  serviceAccount: b\n",
        )
        .unwrap();
        let tokens = BootstrapTokens::load(&path, TD).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "tokens: [broken").unwrap();
        bump_mtime(&path);
        assert!(tokens
            .authenticate("aaaaaaaaaaaaaaaaaaaa", SystemTime::now())
            .is_ok());
        std::fs::write(
            &path,
            "tokens:\n- token: dddddddddddddddddddd\n  namespace: a\n  serviceAccount: b\n",
        )
        .unwrap();
        bump_mtime(&path);
        assert_eq!(
            tokens.authenticate("aaaaaaaaaaaaaaaaaaaa", SystemTime::now()),
            Err(AuthError::Unknown)
        );
        assert!(tokens
            .authenticate("dddddddddddddddddddd", SystemTime::now())
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_edit_is_reported_and_counted_without_any_request() {
        let dir = tempdir();
        let path = dir.join(TOKENS_FILE);
        let good = "tokens:\n- token: aaaaaaaaaaaaaaaaaaaa\n  namespace: a\n  serviceAccount: b\n";
        std::fs::write(&path, good).unwrap();
        let metrics = crate::metrics::Metrics::new();
        let tokens = std::sync::Arc::new(
            BootstrapTokens::load(&path, TD)
                .unwrap()
                .with_reload_metrics(metrics.config_reloads.clone(), metrics.config_valid.clone()),
        );
        watch(tokens.clone());
        let count = |outcome: &str| {
            metrics
                .config_reloads
                .with_label_values(&[TOKENS_FILE, outcome])
                .get()
        };
        let valid = || metrics.config_valid.with_label_values(&[TOKENS_FILE]).get();
        assert_eq!((count("ok"), count("invalid"), valid()), (0, 0, 1));
        // The second entry (line 5) has a bad namespace.
        std::fs::write(
            &path,
            format!("{good}- token: bbbbbbbbbbbbbbbbbbbb\n  namespace: Bad\n  serviceAccount: b\n"),
        )
        .unwrap();
        bump_mtime(&path);
        tokio::time::sleep(POLL_INTERVAL * 2).await;
        assert_eq!((count("ok"), count("invalid"), valid()), (0, 1, 0));
        let err = tokens
            .read_file()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(TOKENS_FILE) && err.contains("line 5: tokens[1]"),
            "file, line and reason: {err}"
        );
        assert!(tokens
            .authenticate("aaaaaaaaaaaaaaaaaaaa", SystemTime::now())
            .is_ok());
        std::fs::write(&path, good).unwrap();
        bump_mtime(&path);
        tokio::time::sleep(POLL_INTERVAL * 2).await;
        assert_eq!((count("ok"), count("invalid"), valid()), (1, 1, 1));
    }

    fn bump_mtime(path: &Path) {
        // Filesystems with coarse timestamps: make each write visibly newer.
        static STEP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let t = SystemTime::now()
            + Duration::from_secs(STEP.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pqmesh-tokens-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
