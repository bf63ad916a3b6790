//! Zero-downtime root rotation in local mode. The CA files in `DIR/ca/` are polled; a change that
//! loads as a whole replaces the CA (new leaves, new trust bundle, a new CA version pushed to
//! sidecars, which re-certify at once), anything else is logged and the last good CA stays.
//!
//! The three operator steps (`pqmesh-control-plane rotate-root DIR prepare|activate|finish`):
//! 1. `prepare`: a new root is staged as `next-root-*.pem`; it is trusted, not yet signing.
//! 2. `activate`: the next root signs; the old one moves to `previous-root-cert.pem`, still trusted.
//! 3. `finish`: the previous root is dropped from the trust bundle.
//!
//! Between steps, wait until every sidecar runs the current CA version (`GET :15015/policy_status`
//! → `sidecars_on_current_ca` equals `connected_sidecars`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pqmesh_mtls::KeyAlgorithm;
use tokio::sync::watch;

use crate::ca::{write_atomic, CaError, CaPaths, CaRoots, CertificateAuthority};
use crate::metrics::Metrics;

const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("{0}")]
    Step(String),
}

/// Step 1: stages a new root (`alg`) as the next root. Refused while one is staged already.
pub fn prepare(dir: &Path, trust_domain: &str, alg: KeyAlgorithm) -> Result<String, RotationError> {
    let paths = CaPaths::in_dir(dir);
    if !paths.root_cert.exists() {
        return Err(RotationError::Step(format!(
            "{} does not exist: start the control plane once first",
            paths.root_cert.display()
        )));
    }
    if paths.next_cert.exists() || paths.next_key.exists() {
        return Err(RotationError::Step(format!(
            "a next root is staged already ({}); activate it or remove it first",
            paths.next_cert.display()
        )));
    }
    let (cert, key) = crate::ca::generate_root(trust_domain, alg)?;
    write_atomic(&paths.next_key, key.as_bytes(), 0o600)?;
    write_atomic(&paths.next_cert, cert.as_bytes(), 0o644)?;
    Ok(format!(
        "staged a new {alg} root in {}; it is trusted now and signs after `activate`",
        paths.next_cert.display()
    ))
}

/// Step 2: the staged root becomes the signing root; the old one stays trusted.
pub fn activate(dir: &Path, trust_domain: &str) -> Result<String, RotationError> {
    let paths = CaPaths::in_dir(dir);
    if !paths.next_cert.exists() || !paths.next_key.exists() {
        return Err(RotationError::Step(
            "no next root is staged: run `prepare` first".into(),
        ));
    }
    if paths.previous_cert.exists() {
        return Err(RotationError::Step(format!(
            "{} still exists: run `finish` for the last rotation first",
            paths.previous_cert.display()
        )));
    }
    // Check the staged pair before touching anything.
    let staged = CaRoots {
        signing_cert_pem: read(&paths.next_cert)?,
        signing_key_pem: read(&paths.next_key)?,
        also_trusted_pem: vec![],
    };
    CertificateAuthority::from_roots(&staged, trust_domain, crate::ca::MIN_LEAF_LIFETIME)?;
    let old_cert = read(&paths.root_cert)?;
    write_atomic(&paths.previous_cert, old_cert.as_bytes(), 0o644)?;
    rename(&paths.next_key, &paths.root_key)?;
    rename(&paths.next_cert, &paths.root_cert)?;
    Ok(format!(
        "the new root signs now; the old one stays trusted as {} until `finish`",
        paths.previous_cert.display()
    ))
}

/// Step 3: the previous root is no longer trusted.
pub fn finish(dir: &Path) -> Result<String, RotationError> {
    let paths = CaPaths::in_dir(dir);
    if paths.next_cert.exists() {
        return Err(RotationError::Step(
            "a next root is staged but not active: run `activate` first".into(),
        ));
    }
    if !paths.previous_cert.exists() {
        return Err(RotationError::Step(
            "no previous root to drop: nothing to finish".into(),
        ));
    }
    std::fs::remove_file(&paths.previous_cert).map_err(|source| CaError::Io {
        path: paths.previous_cert.clone(),
        source,
    })?;
    Ok("the previous root is no longer trusted".into())
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), CaError> {
    std::fs::rename(from, to).map_err(|source| CaError::Io {
        path: from.to_owned(),
        source,
    })
}

type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(paths: &CaPaths) -> Fingerprint {
    paths
        .watched()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            (
                p.to_owned(),
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect()
}

/// Publishes a new CA after every valid change of the local CA files; also rewrites
/// `bundle_file` and the CA metrics. A change is loaded once it has been stable for one poll, so
/// the two renames of `activate` are seen together.
pub fn watch_dir(
    dir: &Path,
    initial: Arc<CertificateAuthority>,
    bundle_file: PathBuf,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Arc<CertificateAuthority>> {
    let paths = CaPaths::in_dir(dir);
    record(&initial, &metrics);
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        let mut loaded = fingerprint(&paths);
        let mut seen = loaded.clone();
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if tx.is_closed() {
                return;
            }
            let now = fingerprint(&paths);
            let settled = now == seen;
            seen = now.clone();
            if now == loaded || !settled {
                continue;
            }
            loaded = now;
            let current = tx.borrow().clone();
            let next = CaRoots::read(&paths).and_then(|roots| {
                CertificateAuthority::from_roots(
                    &roots,
                    current.trust_domain(),
                    current.leaf_lifetime(),
                )
            });
            let Some(ca) = publish_change(&tx, next, &metrics) else {
                continue;
            };
            let bundle = pqmesh_mtls::x509::certs_to_pem(ca.bundle().roots());
            if let Err(e) = write_atomic(&bundle_file, bundle.as_bytes(), 0o644) {
                tracing::error!(error = %e, "cannot rewrite the trust bundle file");
            }
        }
    });
    rx
}

/// One CA change, wherever the roots came from (local files, the Kubernetes Secret): a CA with
/// a new version becomes the CA in force and is returned; an unchanged one is ignored; one that
/// did not load is counted and logged, and the last good CA stays.
pub(crate) fn publish_change(
    tx: &watch::Sender<Arc<CertificateAuthority>>,
    next: Result<CertificateAuthority, impl std::fmt::Display>,
    metrics: &Metrics,
) -> Option<Arc<CertificateAuthority>> {
    match next {
        Ok(ca) if ca.version() == tx.borrow().version() => None,
        Ok(ca) => {
            tracing::info!(
                ca_version = %ca.version(),
                trusted_roots = ca.bundle().roots().len(),
                "CA roots changed; sidecars will re-certify"
            );
            metrics.ca_reloads.with_label_values(&["ok"]).inc();
            let ca = Arc::new(ca);
            record(&ca, metrics);
            let _ = tx.send(ca.clone());
            Some(ca)
        }
        Err(e) => {
            metrics.ca_reloads.with_label_values(&["invalid"]).inc();
            tracing::error!(error = %e, "CA change rejected; the last good roots stay in force");
            None
        }
    }
}

/// The CA as `/config_dump` shows it: version, signing root, trusted roots (no key material).
pub fn summary(ca: &CertificateAuthority) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    let root = |der: &rustls_pki_types::CertificateDer<'_>| {
        let s = pqmesh_mtls::x509::summary(der).ok();
        serde_json::json!({
            "sha256": hex::encode(Sha256::digest(der.as_ref())),
            "serial": s.as_ref().map(|s| s.serial_hex.clone()),
            "not_after": s.map(|s| pqmesh_mtls::x509::unix_seconds(s.not_after)),
            "signature_scheme": pqmesh_mtls::verify::signature_scheme_name(der),
        })
    };
    serde_json::json!({
        "version": ca.version(),
        "signing_root": root(ca.root_der()),
        "trusted_roots": ca.bundle().roots().iter().map(root).collect::<Vec<_>>(),
    })
}

pub(crate) fn record(ca: &CertificateAuthority, metrics: &Metrics) {
    metrics
        .root_expiry
        .set(pqmesh_mtls::x509::unix_seconds(ca.root_not_after()) as f64);
    metrics.trusted_roots.set(ca.bundle().roots().len() as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pqmesh-rot-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn load(dir: &Path) -> CertificateAuthority {
        CertificateAuthority::load_or_create(
            &CaPaths::in_dir(dir),
            "cluster.local",
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    #[test]
    fn three_steps_change_the_signing_root_and_the_bundle() {
        let dir = tempdir();
        let first = load(&dir);
        assert_eq!(first.bundle().roots().len(), 1);
        prepare(&dir, "cluster.local", KeyAlgorithm::MlDsa65).unwrap();
        let staged = load(&dir);
        assert_eq!(
            staged.root_der(),
            first.root_der(),
            "still signs with the old root"
        );
        assert_eq!(staged.bundle().roots().len(), 2);
        assert_ne!(staged.version(), first.version());
        activate(&dir, "cluster.local").unwrap();
        let active = load(&dir);
        assert_ne!(active.root_der(), first.root_der(), "the new root signs");
        assert!(active.bundle().roots().contains(first.root_der()));
        assert_eq!(active.bundle().roots().len(), 2);
        finish(&dir).unwrap();
        let done = load(&dir);
        assert_eq!(
            done.bundle().roots(),
            std::slice::from_ref(active.root_der())
        );
    }

    #[test]
    fn steps_out_of_order_are_refused_and_change_nothing() {
        let dir = tempdir();
        let first = load(&dir);
        let before = first.version();
        assert!(activate(&dir, "cluster.local").is_err(), "nothing staged");
        assert!(finish(&dir).is_err(), "nothing to finish");
        prepare(&dir, "cluster.local", KeyAlgorithm::EcdsaP256).unwrap();
        assert!(prepare(&dir, "cluster.local", KeyAlgorithm::EcdsaP256).is_err());
        assert!(finish(&dir).is_err(), "staged but not active");
        // A staged key that does not belong to the staged certificate is refused before any
        // file moves.
        let paths = CaPaths::in_dir(&dir);
        let (_, other_key) =
            crate::ca::generate_root("cluster.local", KeyAlgorithm::EcdsaP256).unwrap();
        write_atomic(&paths.next_key, other_key.as_bytes(), 0o600).unwrap();
        let err = activate(&dir, "cluster.local").unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
        assert!(!paths.previous_cert.exists());
        assert_eq!(load(&dir).root_der(), first.root_der());
        assert_ne!(load(&dir).version(), before, "the staged root is trusted");
    }

    #[test]
    fn a_key_of_another_root_is_refused() {
        let dir = tempdir();
        load(&dir);
        let paths = CaPaths::in_dir(&dir);
        let (_, other_key) =
            crate::ca::generate_root("cluster.local", KeyAlgorithm::EcdsaP256).unwrap();
        write_atomic(&paths.root_key, other_key.as_bytes(), 0o600).unwrap();
        let err = CertificateAuthority::load_or_create(
            &paths,
            "cluster.local",
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(3600),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn from_roots_refuses_bad_pem() {
        let (cert, key) =
            crate::ca::generate_root("cluster.local", KeyAlgorithm::EcdsaP256).unwrap();
        let cases = [
            (
                String::new(),
                key.clone(),
                vec![],
                "signing root certificate",
            ),
            (cert.clone(), "junk".to_owned(), vec![], "signing root key"),
            (format!("{cert}{cert}"), key.clone(), vec![], "expected one"),
            (
                cert.clone(),
                key.clone(),
                vec!["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned()],
                "trust",
            ),
        ];
        for (c, k, extra, want) in cases {
            let roots = CaRoots {
                signing_cert_pem: c,
                signing_key_pem: k,
                also_trusted_pem: extra,
            };
            let err = CertificateAuthority::from_roots(
                &roots,
                "cluster.local",
                Duration::from_secs(3600),
            )
            .err()
            .unwrap()
            .to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let ok = CaRoots {
            signing_cert_pem: cert,
            signing_key_pem: key,
            also_trusted_pem: vec![],
        };
        CertificateAuthority::from_roots(&ok, "cluster.local", Duration::from_secs(3600)).unwrap();
    }
}
