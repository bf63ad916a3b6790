//! The mesh CA's root in a Kubernetes Secret. Generated mode: the first replica to start creates
//! the Secret (a 409 Conflict tells the others someone won the race, and they read the winner's);
//! the key never leaves the Secret and the process. User-provided mode (a cert-manager style
//! `tls.crt`/`tls.key` Secret): read only, never created or changed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use pqmesh_mtls::KeyAlgorithm;

use crate::ca::{create_root, CaError, CertificateAuthority};

/// Keys of a generated CA Secret.
pub const ROOT_CERT_KEY: &str = "ca.crt";
pub const ROOT_KEY_KEY: &str = "ca.key";
/// Optional, in either kind of Secret: more roots to trust (PEM), e.g. the next root.
pub const EXTRA_ROOTS_KEY: &str = "extra-trusted-roots.pem";
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
        match api.create(&PostParams::default(), &secret).await {
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
        let data = secret.data.clone().unwrap_or_default();
        let text = |key: &'static str| -> Result<Option<String>, CaSecretError> {
            data.get(key)
                .map(|b| {
                    String::from_utf8(b.0.clone()).map_err(|_| {
                        CaError::Invalid {
                            path: self.source(),
                            reason: format!("{key} is not UTF-8 PEM"),
                        }
                        .into()
                    })
                })
                .transpose()
        };
        let required = |key: &'static str| -> Result<String, CaSecretError> {
            text(key)?.ok_or_else(|| CaSecretError::MissingKey {
                namespace: self.namespace.to_owned(),
                name: self.name.to_owned(),
                key,
            })
        };
        let (cert, key, mut extra) = if self.user_provided {
            (
                required(TLS_CERT_KEY)?,
                required(TLS_KEY_KEY)?,
                text(ROOT_CERT_KEY)?,
            )
        } else {
            (required(ROOT_CERT_KEY)?, required(ROOT_KEY_KEY)?, None)
        };
        if let Some(more) = text(EXTRA_ROOTS_KEY)? {
            extra = Some(extra.map_or(more.clone(), |e| format!("{e}\n{more}")));
        }
        Ok(CertificateAuthority::from_pem(
            &cert,
            &key,
            extra.as_deref(),
            &self.source(),
            self.trust_domain,
            self.alg,
            self.leaf_lifetime,
        )?)
    }

    fn source(&self) -> PathBuf {
        PathBuf::from(format!("Secret {}/{}", self.namespace, self.name))
    }

    fn api(&self, source: kube::Error) -> CaSecretError {
        CaSecretError::Api {
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            source,
        }
    }
}
