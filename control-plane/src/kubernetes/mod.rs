//! Kubernetes mode (`--kubernetes`): the same services as local mode, fed from the API server.
//! - CA root and key in a Secret (`ca_secret`), created once race-safely or provided by the
//!   operator. The mesh CA also signs the webhook's serving certificate, unless its root is
//!   ML-DSA: the API server (Go) cannot verify ML-DSA, so then a separate ECDSA CA Secret does.
//! - Workloads authenticate with projected service-account tokens (audience `pqmesh-ca`),
//!   checked by TokenReview (`token_review`).
//! - Policies from AccessPolicy/TokenIssuer objects, discovery from Pods/Services/EndpointSlices,
//!   workload labels from Pods (`sources`).
//! - Writes: the trust-bundle ConfigMaps and the webhook caBundle (`publish`), policy status
//!   (`status`).
//!
//! Several replicas run side by side: each serves Certify and the Watch streams on its own; the
//! writes are idempotent (server-side apply, or read-modify-replace with resourceVersion).

pub mod ca_secret;
pub mod publish;
pub mod sources;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use pqmesh_mtls::KeyAlgorithm;
use tokio::sync::watch;

use crate::ca::CertificateAuthority;
use crate::config::{Config, KubernetesSettings};
use crate::endpoints::EndpointTable;
use crate::identity::Authenticator;
use crate::metrics::Metrics;
use crate::policies::PolicyState;
use crate::policy_push::{PushTracker, WorkloadLabels};
use crate::token_review::TokenReviewer;

/// How long the first list of every watched kind may take before start-up fails (the pod then
/// restarts, and stays unready meanwhile).
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("cannot reach the Kubernetes API server: {0}")]
    Client(String),
    #[error(transparent)]
    CaSecret(#[from] ca_secret::CaSecretError),
    #[error(transparent)]
    Source(#[from] sources::SourceError),
}

/// Everything the control plane's services need, read from the cluster.
pub struct Cluster {
    pub client: kube::Client,
    pub settings: KubernetesSettings,
    pub ca: Arc<CertificateAuthority>,
    /// Signs the webhook's serving certificate (the mesh CA itself unless its root is ML-DSA);
    /// its root is the webhook's caBundle.
    pub webhook_ca: Arc<CertificateAuthority>,
    pub authenticator: Authenticator,
    pub policies: watch::Receiver<Arc<PolicyState>>,
    pub endpoints: watch::Receiver<Arc<EndpointTable>>,
    pub labels: Arc<dyn WorkloadLabels>,
    policy_stores: sources::PolicyStores,
    workloads: sources::WorkloadStores,
}

impl Cluster {
    /// Connects with the in-cluster service account (or `KUBECONFIG` outside a cluster).
    pub async fn connect(
        config: &Config,
        settings: &KubernetesSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KubernetesError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| KubernetesError::Client(e.to_string()))?;
        Self::with_client(client, config, settings, metrics).await
    }

    /// The same with a given client (tests point it at a recorded API server).
    pub async fn with_client(
        client: kube::Client,
        config: &Config,
        settings: &KubernetesSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KubernetesError> {
        let secret = |name, user_provided, alg| ca_secret::CaSecret {
            client: client.clone(),
            namespace: &settings.namespace,
            name,
            user_provided,
            trust_domain: &config.trust_domain,
            alg,
            leaf_lifetime: config.leaf_lifetime,
        };
        let ca = secret(
            &settings.ca_secret,
            settings.ca_user_provided,
            config.ca_key_alg,
        )
        .load_or_create()
        .await?;
        let ca = Arc::new(ca);
        let webhook_ca = if root_is_ecdsa(ca.root_der()) {
            ca.clone()
        } else {
            Arc::new(
                secret(&settings.webhook_ca_secret, false, KeyAlgorithm::EcdsaP256)
                    .load_or_create()
                    .await?,
            )
        };
        let authenticator = Authenticator::TokenReview(Arc::new(TokenReviewer::new(
            client.clone(),
            &settings.token_audience,
            &config.trust_domain,
        )));
        let (policies, policy_stores) = sources::watch_policies(
            &client,
            &config.trust_domain,
            metrics.clone(),
            FIRST_LIST_TIMEOUT,
        )
        .await?;
        let (endpoints, workloads) =
            sources::watch_workloads(&client, &config.trust_domain, metrics, FIRST_LIST_TIMEOUT)
                .await?;
        tracing::info!(namespace = %settings.namespace, ca_secret = %settings.ca_secret,
            user_provided = settings.ca_user_provided, "Kubernetes sources ready");
        Ok(Self {
            labels: Arc::new(sources::PodLabels(workloads.pods.clone())),
            client,
            settings: settings.clone(),
            ca,
            webhook_ca,
            authenticator,
            policies,
            endpoints,
            policy_stores,
            workloads,
        })
    }

    /// Starts the writers: trust-bundle ConfigMaps, the webhook caBundle, policy status.
    pub fn spawn_writers(
        &self,
        trust_bundle_configmap: &str,
        bundle_pem: watch::Receiver<Arc<String>>,
        tracker: Arc<PushTracker>,
    ) {
        let (changes, changed) = watch::channel(0u64);
        let namespaces = publish::watch_namespaces(&self.client, changes.clone());
        // Meshed pods appearing in new namespaces also call for the bundle.
        let mut pods_changed = self.endpoints.clone();
        tokio::spawn(async move {
            while pods_changed.changed().await.is_ok() {
                changes.send_modify(|n| *n += 1);
            }
        });
        publish::spawn_trust_bundle_publisher(
            self.client.clone(),
            trust_bundle_configmap.to_owned(),
            self.settings.namespace.clone(),
            bundle_pem,
            namespaces,
            self.workloads.clone(),
            changed,
        );
        if let Some(configuration) = &self.settings.webhook_configuration {
            publish::spawn_webhook_ca_sync(
                self.client.clone(),
                configuration.clone(),
                pqmesh_mtls::x509::certs_to_pem(&[self.webhook_ca.root_der().clone()]),
            );
        }
        status::spawn_status_writer(
            self.client.clone(),
            self.settings.pod_name.clone(),
            self.policy_stores.clone(),
            tracker,
        );
    }
}

/// Whether a root's key is ECDSA (which the API server can verify), from its SPKI algorithm.
fn root_is_ecdsa(root_der: &[u8]) -> bool {
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
