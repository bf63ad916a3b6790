//! The mesh CA's root in a Kubernetes Secret. Generated mode: the first replica to start creates
//! the Secret (a 409 Conflict tells the others someone won the race, and they read the winner's);
//! the key never leaves the Secret and the process. User-provided mode (a cert-manager style
//! `tls.crt`/`tls.key` Secret): read only, never created or changed.
//!
//! The Secret is watched: root rotation is an edit of it, with the same three steps as the local
//! files (`next-root-cert.pem` trusted → it signs as `ca.crt`/`ca.key` while the old root stays
//! as `previous-root-cert.pem` → that key is removed); every replica loads a change that is valid
//! as a whole and pushes the new CA version, and sidecars re-certify at once.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::metrics::Metrics;
use crate::revocation::RevocationList;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use pqmesh_mtls::KeyAlgorithm;

use crate::ca::{create_root, CaError, CaRoots, CertificateAuthority};

/// Keys of a generated CA Secret.
pub const ROOT_CERT_KEY: &str = "ca.crt";
pub const ROOT_KEY_KEY: &str = "ca.key";
/// Optional, in either kind of Secret: more roots to trust (PEM).
pub const EXTRA_ROOTS_KEY: &str = "extra-trusted-roots.pem";
/// Rotation, as in local mode: the staged next root (trusted) and the previous one (trusted).
pub const NEXT_CERT_KEY: &str = "next-root-cert.pem";
pub const PREVIOUS_CERT_KEY: &str = "previous-root-cert.pem";
/// Keys of a user-provided (cert-manager style) Secret; `ca.crt` there is trusted too.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} does not exist; with PQMESH_CA_USER_PROVIDED=true it must be created first (tls.crt, tls.key in PKCS#8)")]
    Missing { namespace: String, name: String },
    #[error("Secret {namespace}/{name} does not exist (deleted?); nothing is derived from it until it is back")]
    Gone { namespace: String, name: String },
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Where the CA Secret is and what to do if it is absent.
pub struct CaSecret<'a> {
    pub client: kube::Client,
    pub namespace: &'a str,
    pub name: &'a str,
    pub user_provided: bool,
    pub trust_domain: &'a str,
    /// Algorithm of a root this replica creates (an existing root is used as it is).
    pub alg: KeyAlgorithm,
    pub leaf_lifetime: Duration,
}

impl CaSecret<'_> {
    pub async fn load_or_create(&self) -> Result<CertificateAuthority, CaSecretError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
        let secret = match api.get_opt(self.name).await.map_err(|e| self.api(e))? {
            Some(secret) => secret,
            None if self.user_provided => {
                return Err(CaSecretError::Missing {
                    namespace: self.namespace.to_owned(),
                    name: self.name.to_owned(),
                })
            }
            None => self.create(&api).await?,
        };
        self.parse(&secret)
    }

    /// The CA as the Secret holds it now (a quorum read, not this replica's watch): what the
    /// webhook caBundle is computed from, so a replica whose watch lags never writes an older
    /// bundle.
    pub async fn load_current(&self) -> Result<CertificateAuthority, CaSecretError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
        match api.get_opt(self.name).await.map_err(|e| self.api(e))? {
            Some(secret) => self.parse(&secret),
            None => Err(CaSecretError::Gone {
                namespace: self.namespace.to_owned(),
                name: self.name.to_owned(),
            }),
        }
    }

    async fn create(&self, api: &Api<Secret>) -> Result<Secret, CaSecretError> {
        let (cert, key) = create_root(self.trust_domain, self.alg)?;
        let mut data = BTreeMap::new();
        data.insert(ROOT_CERT_KEY.to_owned(), ByteString(cert.into_bytes()));
        data.insert(ROOT_KEY_KEY.to_owned(), ByteString(key.into_bytes()));
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.to_owned()),
                namespace: Some(self.namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "pqmesh".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Default::default()
        };
        let params = PostParams {
            field_manager: Some(super::publish::FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        match api.create(&params, &secret).await {
            Ok(created) => {
                tracing::info!(namespace = self.namespace, name = self.name, alg = %self.alg, "created the mesh root CA Secret");
                Ok(created)
            }
            // Another replica created it between our get and create: use theirs.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::info!(
                    namespace = self.namespace,
                    name = self.name,
                    "another replica created the CA Secret first; using it"
                );
                api.get(self.name).await.map_err(|e| self.api(e))
            }
            Err(e) => Err(self.api(e)),
        }
    }

    fn parse(&self, secret: &Secret) -> Result<CertificateAuthority, CaSecretError> {
        let roots = roots_of(secret, self.user_provided, self.namespace, self.name)?;
        Ok(CertificateAuthority::from_roots(
            &roots,
            self.trust_domain,
            self.leaf_lifetime,
        )?)
    }

    fn api(&self, source: kube::Error) -> CaSecretError {
        CaSecretError::Api {
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            source,
        }
    }
}

/// The roots a CA Secret holds: the signing root and key (`ca.crt`/`ca.key`, or `tls.crt`/
/// `tls.key` when user-provided, whose `ca.crt` is then trusted too) and the trusted extras.
pub fn roots_of(
    secret: &Secret,
    user_provided: bool,
    namespace: &str,
    name: &str,
) -> Result<CaRoots, CaSecretError> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &'static str| -> Result<Option<String>, CaSecretError> {
        data.get(key)
            .map(|b| {
                String::from_utf8(b.0.clone()).map_err(|_| {
                    CaError::Roots(format!("Secret {namespace}/{name}: {key} is not UTF-8 PEM"))
                        .into()
                })
            })
            .transpose()
    };
    let required = |key: &'static str| -> Result<String, CaSecretError> {
        text(key)?.ok_or_else(|| CaSecretError::MissingKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key,
        })
    };
    let (signing_cert_pem, signing_key_pem) = if user_provided {
        (required(TLS_CERT_KEY)?, required(TLS_KEY_KEY)?)
    } else {
        (required(ROOT_CERT_KEY)?, required(ROOT_KEY_KEY)?)
    };
    let mut also_trusted_pem = Vec::new();
    let extras: &[&'static str] = if user_provided {
        &[
            ROOT_CERT_KEY,
            NEXT_CERT_KEY,
            PREVIOUS_CERT_KEY,
            EXTRA_ROOTS_KEY,
        ]
    } else {
        &[NEXT_CERT_KEY, PREVIOUS_CERT_KEY, EXTRA_ROOTS_KEY]
    };
    for key in extras {
        also_trusted_pem.extend(text(key)?);
    }
    Ok(CaRoots {
        signing_cert_pem,
        signing_key_pem,
        also_trusted_pem,
    })
}

/// Follows the CA Secret: every change that loads as a whole becomes the CA in force (new
/// leaves, new bundle, new CA version pushed); anything else is logged and the last good CA
/// stays. A deleted Secret changes nothing (the CA in memory keeps serving).
pub fn watch_ca_secret(
    client: kube::Client,
    namespace: String,
    name: String,
    user_provided: bool,
    initial: Arc<CertificateAuthority>,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Arc<CertificateAuthority>> {
    crate::rotation::record(&initial, &metrics);
    let (tx, rx) = watch::channel(initial);
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    tokio::spawn(watch_one(api, name.clone(), move |secret| {
        // A deleted Secret changes nothing: the CA in memory keeps serving.
        let Some(secret) = secret else {
            tracing::error!(%namespace, %name, "the CA Secret was deleted; the CA in memory keeps serving");
            return true;
        };
        let current = tx.borrow().clone();
        let next = roots_of(&secret, user_provided, &namespace, &name).and_then(|roots| {
            Ok(CertificateAuthority::from_roots(
                &roots,
                current.trust_domain(),
                current.leaf_lifetime(),
            )?)
        });
        crate::rotation::publish_change(&tx, next, &metrics);
        !tx.is_closed()
    }));
    rx
}

/// Key of the revocations ConfigMap: the same YAML as local mode's `revocations.yaml`.
pub const REVOCATIONS_KEY: &str = "revocations.yaml";

/// Follows the revocations ConfigMap (absent = nothing revoked); an invalid edit is logged and
/// the last good list stays.
pub fn watch_revocations(
    client: kube::Client,
    namespace: String,
    name: String,
    trust_domain: String,
) -> watch::Receiver<Arc<RevocationList>> {
    let (tx, rx) = watch::channel(Arc::new(RevocationList::default()));
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    tokio::spawn(watch_one(api, name, move |cm| {
        let text = cm
            .and_then(|cm| cm.data)
            .and_then(|d| d.get(REVOCATIONS_KEY).cloned())
            .unwrap_or_default();
        match RevocationList::parse(&text, &trust_domain) {
            Ok(list) if list == **tx.borrow() => {}
            Ok(list) => {
                tracing::info!(
                    identities = list.identities.len(),
                    serials = list.serials.len(),
                    "revocations changed"
                );
                return tx.send(Arc::new(list)).is_ok();
            }
            Err(e) => {
                tracing::error!(error = %e, "revocations change rejected; the last good list stays in force")
            }
        }
        true
    }));
    rx
}

/// Follows one named object (RBAC grants list/watch on one name, which needs the field
/// selector): `apply` gets the object after every change, or `None` once it is deleted, until
/// it returns false. Watch errors are logged and retried with back-off.
async fn watch_one<K>(api: Api<K>, name: String, mut apply: impl FnMut(Option<K>) -> bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).into_owned();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let (object, deleted) = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
            Ok(watcher::Event::Delete(o)) => (o, true),
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(%kind, %name, error = %e, "watch failed; retrying");
                continue;
            }
        };
        if object.meta().name.as_deref() != Some(name.as_str()) {
            continue;
        }
        if !apply((!deleted).then_some(object)) {
            return;
        }
    }
}
