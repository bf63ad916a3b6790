//! Kubernetes mode (`--kubernetes`): the same services as local mode, fed from the API server.
//! - CA root and key in a Secret (`ca_secret`), created once race-safely or provided by the
//!   operator. The mesh CA also signs the webhook's serving certificate, unless its root is
//!   ML-DSA: the API server (Go) cannot verify ML-DSA, so then a separate ECDSA CA Secret does
//!   (`webhook_tls`, which also keeps certificate and caBundle current through root rotation).
//! - Workloads authenticate with projected service-account tokens (audience `pqmesh-ca`),
//!   checked by TokenReview (`token_review`).
//! - Policies from AccessPolicy/TokenIssuer objects, discovery from Pods/Services/EndpointSlices,
//!   workload labels from Pods (`sources`).
//! - Writes: the trust-bundle ConfigMaps (`publish`), the webhook caBundle (`webhook_tls`),
//!   policy status (`status`).
//!
//! Several replicas run side by side: each serves Certify and the Watch streams on its own; the
//! writes are idempotent (server-side apply, at the resourceVersion read where the value is
//! computed from a read), and every write names its field manager.

pub mod ca_secret;
pub mod publish;
pub mod sources;
pub mod status;
pub mod webhook_tls;

use std::sync::Arc;
use std::time::Duration;

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
    #[error(transparent)]
    WebhookTls(#[from] webhook_tls::WebhookTlsError),
}

/// Everything the control plane's services need, read from the cluster.
pub struct Cluster {
    pub client: kube::Client,
    pub settings: KubernetesSettings,
    pub ca: Arc<CertificateAuthority>,
    /// The CA in force, following the CA Secret (root rotation).
    pub ca_updates: watch::Receiver<Arc<CertificateAuthority>>,
    /// The deny list, following the revocations ConfigMap.
    pub revoked: watch::Receiver<Arc<crate::revocation::RevocationList>>,
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
        let ca = ca_secret::CaSecret {
            client: client.clone(),
            namespace: &settings.namespace,
            name: &settings.ca_secret,
            user_provided: settings.ca_user_provided,
            trust_domain: &config.trust_domain,
            alg: config.ca_key_alg,
            leaf_lifetime: config.leaf_lifetime,
        }
        .load_or_create()
        .await?;
        let ca = Arc::new(ca);
        let ca_updates = ca_secret::watch_ca_secret(
            client.clone(),
            settings.namespace.clone(),
            settings.ca_secret.clone(),
            settings.ca_user_provided,
            ca.clone(),
            metrics.clone(),
        );
        let revoked = ca_secret::watch_revocations(
            client.clone(),
            settings.namespace.clone(),
            settings.revocations_configmap.clone(),
            config.trust_domain.clone(),
        );
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
            ca_updates,
            revoked,
            authenticator,
            policies,
            endpoints,
            policy_stores,
            workloads,
        })
    }

    /// The webhook's TLS, following `ca` (the CA in force): its certificate and, when a
    /// configuration is named, the caBundle there.
    pub fn webhook_tls(&self, config: &Config) -> webhook_tls::WebhookTls {
        webhook_tls::WebhookTls::new(
            self.client.clone(),
            self.settings.namespace.clone(),
            self.settings.ca_secret.clone(),
            self.settings.ca_user_provided,
            self.settings.webhook_ca_secret.clone(),
            self.settings.webhook_configuration.clone(),
            config.trust_domain.clone(),
            config.leaf_lifetime,
            config.identity.clone(),
            config.serving_names.clone(),
        )
    }

    /// Starts the writers: trust-bundle ConfigMaps and policy status (the webhook caBundle is
    /// written by [`webhook_tls`], with the certificate it vouches for).
    /// Returns the status writer, which ends after `stopping` once this replica's status
    /// entries are removed.
    pub fn spawn_writers(
        &self,
        trust_bundle_configmap: &str,
        bundle_pem: watch::Receiver<Arc<String>>,
        tracker: Arc<PushTracker>,
        stopping: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
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
        status::spawn_status_writer(
            self.client.clone(),
            self.settings.pod_name.clone(),
            self.policy_stores.clone(),
            self.policies.clone(),
            tracker,
            stopping,
        )
    }
}
