//! The injection webhook's TLS in Kubernetes mode, kept right through root rotation on every
//! replica, whenever it started:
//! - **Signer**: the CA in force when its signing root is ECDSA; otherwise (ML-DSA, which the
//!   API server's Go TLS client cannot verify) a separate ECDSA CA in `<ca secret>-webhook`,
//!   created race-safely the first time a trusted root needs it.
//! - **caBundle**: for every root the CA Secret trusts *now* (read from the API server, not
//!   this replica's watch), the root that signs the webhook's certificate while that root
//!   signs. During a rotation that is old + new, so the API server accepts a replica on either
//!   root; after `finish` it is one root again. Every replica computes the same value from the
//!   same Secret, compares before writing, and writes it by server-side apply (field manager
//!   `pqmesh-control-plane`) at the resourceVersion it read: a concurrent write makes it 409,
//!   it reads again, finds the value in place and writes nothing. Nothing flaps.
//! - **Serving certificate**: re-issued from the signer of the CA in force when that changes
//!   and at half its lifetime, checked against the caBundle stored in the configuration (as the
//!   API server will check it), and only then swapped into the listener's [`SwappableCert`];
//!   until then the current certificate keeps serving.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use pqmesh_mtls::{Credentials, KeyAlgorithm, SpiffeId, TrustBundle};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;

use super::ca_secret::{CaSecret, CaSecretError};
use super::publish::FIELD_MANAGER;
use crate::ca::CertificateAuthority;
use crate::inject::{webhook_server_config, SwappableCert};

/// The caBundle is re-checked this often even without a CA change (a `helm upgrade` or a
/// person may reset it).
const RESYNC: Duration = Duration::from_secs(30);
/// After a failed re-issue, or while the stored caBundle lacks the new root, try again after this.
const RETRY: Duration = Duration::from_secs(1);
/// Read-compare-write attempts per pass when other replicas write concurrently (409).
const CONFLICT_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum WebhookTlsError {
    #[error(transparent)]
    CaSecret(#[from] CaSecretError),
    #[error("webhook serving certificate: {0}")]
    Issue(String),
    #[error("MutatingWebhookConfiguration {configuration}: {source}")]
    Api {
        configuration: String,
        source: kube::Error,
    },
}

/// Where the CAs are, and what the webhook's certificate names.
pub struct WebhookTls {
    pub client: kube::Client,
    pub namespace: String,
    /// The mesh CA Secret (the caBundle is computed from its current state).
    pub ca_secret: String,
    pub ca_user_provided: bool,
    /// The separate ECDSA CA for the webhook while an ML-DSA root is trusted.
    pub webhook_ca_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle is kept current (none: not managed).
    pub configuration: Option<String>,
    pub trust_domain: String,
    pub leaf_lifetime: Duration,
    pub identity: SpiffeId,
    /// DNS names the API server dials (`<service>.<namespace>.svc`).
    pub names: Vec<String>,
    separate: OnceCell<Arc<CertificateAuthority>>,
}

impl WebhookTls {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        namespace: String,
        ca_secret: String,
        ca_user_provided: bool,
        webhook_ca_secret: String,
        configuration: Option<String>,
        trust_domain: String,
        leaf_lifetime: Duration,
        identity: SpiffeId,
        names: Vec<String>,
    ) -> Self {
        Self {
            client,
            namespace,
            ca_secret,
            ca_user_provided,
            webhook_ca_secret,
            configuration,
            trust_domain,
            leaf_lifetime,
            identity,
            names,
            separate: OnceCell::new(),
        }
    }

    /// Issues the first certificate (start-up fails if it cannot) and serves it through a
    /// [`SwappableCert`]; a background task keeps the certificate and the caBundle current
    /// while `ca` (the CA in force) has a sender. The returned channel closes with that task.
    pub async fn start(
        self,
        mut ca: watch::Receiver<Arc<CertificateAuthority>>,
    ) -> Result<watch::Receiver<Arc<ServerConfig>>, WebhookTlsError> {
        let in_force = ca.borrow_and_update().clone();
        let signer = self.signer(&in_force).await?;
        let (key, not_after) = self.issue(&signer, signer.bundle())?;
        let resolver = SwappableCert::new(key);
        let config = webhook_server_config(resolver.clone())
            .map_err(|e| WebhookTlsError::Issue(e.to_string()))?;
        let (tx, rx) = watch::channel(config);
        tokio::spawn(self.follow(ca, resolver, not_after, tx));
        Ok(rx)
    }

    async fn follow(
        self,
        mut ca: watch::Receiver<Arc<CertificateAuthority>>,
        resolver: Arc<SwappableCert>,
        not_after: SystemTime,
        // Held so the webhook server runs as long as this task.
        _server: watch::Sender<Arc<ServerConfig>>,
    ) {
        let mut resync = tokio::time::interval(RESYNC);
        let mut reissue_at = Instant::now() + half_left(not_after);
        let mut pending = false;
        let mut stored: Option<Vec<CertificateDer<'static>>> = None;
        loop {
            tokio::select! {
                changed = ca.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    pending = true;
                }
                _ = resync.tick() => {}
                _ = tokio::time::sleep_until(reissue_at) => pending = true,
            }
            let in_force = ca.borrow_and_update().clone();
            if let Some(configuration) = &self.configuration {
                match self.sync_ca_bundle(configuration).await {
                    Ok(now) => stored = now,
                    Err(e) => {
                        tracing::warn!(%configuration, error = %e, "cannot bring the webhook caBundle up to date; retrying")
                    }
                }
            }
            if !pending {
                continue;
            }
            match self.reissue(&in_force, stored.as_deref()).await {
                Ok((key, not_after)) => {
                    resolver.swap(key);
                    pending = false;
                    reissue_at = Instant::now() + half_left(not_after);
                    tracing::info!(ca_version = %in_force.version(), "webhook serving certificate re-issued");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook serving certificate not replaced; the current one keeps serving");
                    reissue_at = Instant::now() + RETRY;
                }
            }
        }
    }

    /// A certificate from the signer of `in_force`, verified against what the API server
    /// trusts: the stored caBundle when this replica manages one.
    async fn reissue(
        &self,
        in_force: &Arc<CertificateAuthority>,
        stored: Option<&[CertificateDer<'static>]>,
    ) -> Result<(Arc<CertifiedKey>, SystemTime), WebhookTlsError> {
        let signer = self.signer(in_force).await?;
        let trusted = match (stored, &self.configuration) {
            (Some(roots), _) => TrustBundle::new(roots.to_vec()).map_err(|e| {
                WebhookTlsError::Issue(format!("the stored caBundle is unusable: {e}"))
            })?,
            (None, None) => signer.bundle().clone(),
            (None, Some(configuration)) => {
                return Err(WebhookTlsError::Issue(format!(
                    "the caBundle of {configuration} has not been read yet"
                )))
            }
        };
        self.issue(&signer, &trusted)
    }

    fn issue(
        &self,
        signer: &CertificateAuthority,
        trusted: &TrustBundle,
    ) -> Result<(Arc<CertifiedKey>, SystemTime), WebhookTlsError> {
        let fail = |e: &dyn std::fmt::Display| WebhookTlsError::Issue(e.to_string());
        // Always ECDSA: the API server verifies this certificate.
        let key = KeyAlgorithm::EcdsaP256.generate().map_err(|e| fail(&e))?;
        let leaf = signer
            .issue_serving(&key, &self.identity, &self.names)
            .map_err(|e| fail(&e))?;
        // Refuses a chain the API server would refuse (the root is not in the caBundle).
        let creds = Credentials::verified(
            leaf.chain.clone(),
            key.serialize_der(),
            trusted.clone(),
            &self.identity,
        )
        .map_err(|e| fail(&format!("does not verify against the caBundle: {e}")))?;
        let certified = CertifiedKey::from_der(
            leaf.chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            &rustls::crypto::aws_lc_rs::default_provider(),
        )
        .map_err(|e| fail(&e))?;
        Ok((Arc::new(certified), creds.not_after))
    }

    /// The CA that signs the webhook's certificate while `ca` is in force.
    async fn signer(
        &self,
        ca: &Arc<CertificateAuthority>,
    ) -> Result<Arc<CertificateAuthority>, CaSecretError> {
        if root_is_ecdsa(ca.root_der()) {
            Ok(ca.clone())
        } else {
            self.separate().await
        }
    }

    async fn separate(&self) -> Result<Arc<CertificateAuthority>, CaSecretError> {
        self.separate
            .get_or_try_init(|| async {
                self.secret(&self.webhook_ca_secret, false)
                    .load_or_create()
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned()
    }

    fn secret<'a>(&'a self, name: &'a str, user_provided: bool) -> CaSecret<'a> {
        CaSecret {
            client: self.client.clone(),
            namespace: &self.namespace,
            name,
            user_provided,
            trust_domain: &self.trust_domain,
            alg: KeyAlgorithm::EcdsaP256,
            leaf_lifetime: self.leaf_lifetime,
        }
    }

    /// The caBundle for the CA Secret's current state.
    async fn wanted_ca_bundle(&self) -> Result<Vec<CertificateDer<'static>>, CaSecretError> {
        let current = self
            .secret(&self.ca_secret, self.ca_user_provided)
            .load_current()
            .await?;
        let roots = current.bundle().roots();
        let separate = if roots.iter().all(|r| root_is_ecdsa(r)) {
            None
        } else {
            Some(self.separate().await?.root_der().clone())
        };
        Ok(ca_bundle_for(roots, separate.as_ref()))
    }

    /// Brings every webhook's caBundle to the value the CA Secret calls for now; returns that
    /// value (what the configuration holds afterwards), or `None` when the configuration
    /// does not exist. A CA Secret that does not load as a whole leaves the caBundle alone.
    async fn sync_ca_bundle(
        &self,
        configuration: &str,
    ) -> Result<Option<Vec<CertificateDer<'static>>>, WebhookTlsError> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let api_error = |source| WebhookTlsError::Api {
            configuration: configuration.to_owned(),
            source,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let wanted = self.wanted_ca_bundle().await?;
            let Some(current) = api.get_opt(configuration).await.map_err(api_error)? else {
                return Ok(None);
            };
            let Some(patch) = ca_bundle_apply(&current, &wanted) else {
                return Ok(Some(wanted));
            };
            match api
                .patch(
                    configuration,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(patch),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(%configuration, roots = wanted.len(), "webhook caBundle updated");
                    return Ok(Some(wanted));
                }
                // Another replica (or helm) wrote since our read: read both again.
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < CONFLICT_ATTEMPTS => {
                    tracing::debug!(%configuration, "webhook configuration changed concurrently; reading it again");
                }
                Err(e) => return Err(api_error(e)),
            }
        }
    }
}

/// For every trusted root, the root that signs the webhook's certificate while it signs:
/// itself when ECDSA, else `separate` (the ECDSA webhook CA). Order kept, duplicates dropped.
pub fn ca_bundle_for(
    trusted: &[CertificateDer<'static>],
    separate: Option<&CertificateDer<'static>>,
) -> Vec<CertificateDer<'static>> {
    let mut out: Vec<CertificateDer<'static>> = Vec::new();
    for root in trusted {
        let signer = if root_is_ecdsa(root) {
            Some(root)
        } else {
            separate
        };
        if let Some(signer) = signer {
            if !out.contains(signer) {
                out.push(signer.clone());
            }
        }
    }
    out
}

/// The server-side apply body that sets every webhook's caBundle to `wanted`, at the
/// resourceVersion `current` was read at; `None` when every webhook holds `wanted` already
/// (the same certificates, in any order).
pub fn ca_bundle_apply(
    current: &MutatingWebhookConfiguration,
    wanted: &[CertificateDer<'static>],
) -> Option<serde_json::Value> {
    let webhooks = current.webhooks.as_deref().unwrap_or_default();
    let in_place = webhooks.iter().all(|w| {
        w.client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| same_roots(&b.0, wanted))
    });
    if in_place {
        return None;
    }
    let pem = pqmesh_mtls::x509::certs_to_pem(wanted);
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(pem);
    // Every webhook, every time: with server-side apply, a field this manager stops applying
    // is removed.
    let items: Vec<serde_json::Value> = webhooks
        .iter()
        .map(|w| serde_json::json!({"name": w.name, "clientConfig": {"caBundle": ca_bundle}}))
        .collect();
    Some(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": current.metadata.name,
            "resourceVersion": current.metadata.resource_version,
        },
        "webhooks": items,
    }))
}

/// Whether a stored caBundle (PEM bytes) holds exactly `wanted`'s certificates.
fn same_roots(stored_pem: &[u8], wanted: &[CertificateDer<'static>]) -> bool {
    let Ok(text) = std::str::from_utf8(stored_pem) else {
        return false;
    };
    let Ok(stored) = pqmesh_mtls::x509::certs_from_pem(text) else {
        return false;
    };
    let mut stored: Vec<&[u8]> = stored.iter().map(|c| c.as_ref()).collect();
    let mut wanted: Vec<&[u8]> = wanted.iter().map(|c| c.as_ref()).collect();
    stored.sort();
    stored.dedup();
    wanted.sort();
    wanted.dedup();
    stored == wanted
}

fn half_left(not_after: SystemTime) -> Duration {
    not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        / 2
}

/// Whether a root's key is ECDSA (which the API server can verify), from its SPKI algorithm.
pub fn root_is_ecdsa(root_der: &[u8]) -> bool {
    const ID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    <x509_cert::Certificate as der::Decode>::from_der(root_der).is_ok_and(|c| {
        c.tbs_certificate
            .subject_public_key_info
            .algorithm
            .oid
            .to_string()
            == ID_EC_PUBLIC_KEY
    })
}

#[cfg(test)]
#[path = "webhook_tls_tests.rs"]
mod tests;
