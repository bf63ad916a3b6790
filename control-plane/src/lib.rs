//! pqmesh control plane: the mesh CA (`pqmesh.identity.v1.Identity`) served over hybrid
//! post-quantum TLS, mesh discovery (`pqmesh.discovery.v1.Discovery`) and policy push
//! (`pqmesh.policy.v1.Policy`), in local mode (CA material, bootstrap tokens, endpoints and
//! policies from a directory) or Kubernetes mode (`kubernetes`).
#![forbid(unsafe_code)]

pub mod ca;
pub mod config;
pub mod csr;
pub mod discovery;
pub mod endpoints;
pub mod identity;
pub mod inject;
pub mod kubernetes;
pub mod metrics;
pub mod policies;
pub mod policy_push;
pub mod revocation;
pub mod rotation;
pub mod token_review;
pub mod tokens;
pub mod validate;
pub mod yaml_lines;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::{Method, StatusCode};
use pqmesh_mtls::admin::{self, Reply};
use pqmesh_mtls::tls::ALPN_H2;
use pqmesh_mtls::{Credentials, SpiffeId};
use pqmesh_proto::discovery::v1::discovery_server::DiscoveryServer;
use pqmesh_proto::identity::v1::identity_server::IdentityServer;
use pqmesh_proto::policy::v1::policy_server::PolicyServer;
use rustls::ServerConfig;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::ca::{write_atomic, CaPaths, CertificateAuthority};
use crate::config::{Config, Mode};
use crate::identity::{Authenticator, IdentityService};
use crate::metrics::Metrics;
use crate::tokens::BootstrapTokens;

/// Largest Certify request accepted (an ML-DSA-65 CSR plus a token is ~6 KB).
const MAX_REQUEST_BYTES: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";
pub const BOOTSTRAP_TOKENS_FILE: &str = "bootstrap-tokens.yaml";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("local directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Tokens(#[from] tokens::TokenFileError),
    #[error("serving certificate: {0}")]
    Serving(String),
    #[error("endpoints: {0}")]
    Endpoints(String),
    #[error("policies: {0}")]
    Policies(String),
    #[error("revocations: {0}")]
    Revocations(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Webhook(#[from] inject::SpawnError),
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::KubernetesError),
}

pub struct RunningControlPlane {
    pub grpc_addr: SocketAddr,
    /// Probes and metrics (everything, when it is a loopback address).
    pub admin_addr: SocketAddr,
    /// Every admin endpoint, loopback only (equal to `admin_addr` when that is loopback).
    pub admin_local_addr: SocketAddr,
    /// The injection webhook's address, when `Config::webhook_addr` is set.
    pub webhook_addr: Option<SocketAddr>,
    /// Local mode: `DIR/trust-bundle.pem`. Kubernetes mode: empty (the bundle is published as
    /// a ConfigMap in every meshed namespace).
    pub trust_bundle_path: PathBuf,
    pub identity: SpiffeId,
    pub metrics: Arc<Metrics>,
    pub policy_tracker: Arc<policy_push::PushTracker>,
    /// The CA in force (replaced on root rotation).
    pub ca: watch::Receiver<Arc<CertificateAuthority>>,
    shutdown_requested: watch::Sender<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    stopping: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    renewal: JoinHandle<()>,
    /// Kubernetes mode: writes policy status; on shutdown it removes this replica's entries.
    status_writer: Option<JoinHandle<()>>,
    /// The public trust bundle (PEM) the Kubernetes publisher follows.
    _bundle: watch::Sender<Arc<String>>,
}

impl RunningControlPlane {
    /// Runs until the server stops (it only stops on error or shutdown).
    pub async fn wait(mut self) -> Result<(), tonic::transport::Error> {
        let result = (&mut self.server).await;
        self.renewal.abort();
        result.unwrap_or(Ok(()))
    }

    /// Stops accepting, lets in-flight calls finish for up to `SHUTDOWN_GRACE`, then closes what
    /// is left (long-lived Watch streams would otherwise hold it open forever).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.stopping.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        self.renewal.abort();
        // This replica's sidecar counts leave the policies' status with it (bounded inside).
        if let Some(writer) = self.status_writer.take() {
            let _ = writer.await;
        }
    }

    /// Serves until `stop` resolves or an admin `POST /shutdown` arrives, then shuts down
    /// gracefully (`shutdown`).
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let mut requested = self.shutdown_requested.subscribe();
        tokio::select! {
            result = &mut self.server => {
                self.renewal.abort();
                return result.unwrap_or(Ok(()));
            }
            _ = stop => tracing::info!("signal received, shutting down"),
            _ = requested.wait_for(|r| *r) => tracing::info!("shutdown requested via admin API"),
        }
        self.shutdown().await;
        Ok(())
    }

    /// Stops at once, like a crash (outage tests).
    pub fn kill(self) {
        let _ = self.stopping.send(true);
        self.server.abort();
        self.renewal.abort();
        if let Some(writer) = &self.status_writer {
            writer.abort();
        }
    }
}

/// Where the services' state comes from, per mode.
struct Sources {
    ca: Arc<CertificateAuthority>,
    /// The CA in force; local mode replaces it on root rotation (`rotation::watch_dir`).
    ca_updates: watch::Receiver<Arc<CertificateAuthority>>,
    revoked: watch::Receiver<Arc<revocation::RevocationList>>,
    trust_bundle_path: PathBuf,
    auth: Authenticator,
    endpoints: watch::Receiver<Arc<endpoints::EndpointTable>>,
    policies: watch::Receiver<Arc<policies::PolicyState>>,
    labels: Option<Arc<dyn policy_push::WorkloadLabels>>,
    cluster: Option<kubernetes::Cluster>,
}

fn local_sources(
    dir: &Path,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Sources, StartError> {
    create_private_dir(dir)?;
    let ca = Arc::new(CertificateAuthority::load_or_create(
        &CaPaths::in_dir(dir),
        &config.trust_domain,
        config.ca_key_alg,
        config.leaf_lifetime,
    )?);
    let trust_bundle_path = dir.join(TRUST_BUNDLE_FILE);
    write_atomic(
        &trust_bundle_path,
        pqmesh_mtls::x509::certs_to_pem(ca.bundle().roots()).as_bytes(),
        0o644,
    )?;
    let tokens_path = dir.join(BOOTSTRAP_TOKENS_FILE);
    if !tokens_path.exists() {
        write_atomic(
            &tokens_path,
            b"# token -> identity for local mode; see README.md (Local mode)\ntokens: []\n",
            0o600,
        )?;
    }
    let tokens = Arc::new(
        BootstrapTokens::load(&tokens_path, &config.trust_domain)?
            .with_reload_metrics(metrics.config_reloads.clone(), metrics.config_valid.clone()),
    );
    tokens::watch(tokens.clone());
    Ok(Sources {
        ca_updates: rotation::watch_dir(
            dir,
            ca.clone(),
            trust_bundle_path.clone(),
            metrics.clone(),
        ),
        revoked: revocation::watch_file(dir, &config.trust_domain, metrics.clone())
            .map_err(StartError::Revocations)?,
        ca,
        trust_bundle_path,
        auth: Authenticator::Bootstrap(tokens),
        endpoints: endpoints::watch_file(dir, &config.trust_domain, metrics.clone())
            .map_err(StartError::Endpoints)?,
        policies: policies::watch_dir(dir, &config.trust_domain, metrics.clone())
            .map_err(StartError::Policies)?,
        labels: None,
        cluster: None,
    })
}

async fn kubernetes_sources(
    settings: &config::KubernetesSettings,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Sources, StartError> {
    let cluster = kubernetes::Cluster::connect(config, settings, metrics.clone()).await?;
    Ok(cluster_sources(cluster))
}

fn cluster_sources(cluster: kubernetes::Cluster) -> Sources {
    Sources {
        ca_updates: cluster.ca_updates.clone(),
        revoked: cluster.revoked.clone(),
        ca: cluster.ca.clone(),
        trust_bundle_path: PathBuf::new(),
        auth: cluster.authenticator.clone(),
        endpoints: cluster.endpoints.clone(),
        policies: cluster.policies.clone(),
        labels: Some(cluster.labels.clone()),
        cluster: Some(cluster),
    }
}

pub async fn start(config: Config) -> Result<RunningControlPlane, StartError> {
    let metrics = Arc::new(Metrics::new());
    let sources = match &config.mode {
        Mode::Local(dir) => local_sources(dir, &config, &metrics)?,
        Mode::Kubernetes(settings) => kubernetes_sources(settings, &config, &metrics).await?,
    };
    start_with(config, sources, metrics).await
}

/// Kubernetes mode against a given API client (tests use a recorded API server).
pub async fn start_kubernetes_with_client(
    config: Config,
    client: kube::Client,
) -> Result<RunningControlPlane, StartError> {
    let Mode::Kubernetes(settings) = &config.mode else {
        return Err(StartError::Serving("not Kubernetes mode".into()));
    };
    let metrics = Arc::new(Metrics::new());
    let cluster =
        kubernetes::Cluster::with_client(client, &config, settings, metrics.clone()).await?;
    start_with(config, cluster_sources(cluster), metrics).await
}

async fn start_with(
    config: Config,
    sources: Sources,
    metrics: Arc<Metrics>,
) -> Result<RunningControlPlane, StartError> {
    let ca = sources.ca.clone();
    metrics
        .root_expiry
        .set(pqmesh_mtls::x509::unix_seconds(ca.root_not_after()) as f64);

    let serving = ServingCert {
        ca: ca.clone(),
        key_alg: config.ca_key_alg,
        identity: config.identity.clone(),
        names: config.serving_names.clone(),
        kx: config.kx,
        expiry: Some(metrics.serving_cert_expiry.clone()),
    };
    let (serving_config, serving_not_after) = serving.issue()?;
    let (serving_tx, serving_rx) = watch::channel(serving_config);
    // The CA in force (replaced on root rotation) and the deny list.
    let ca_updates = sources.ca_updates.clone();
    let revoked = sources.revoked.clone();
    let webhook_addr = match config.webhook_addr {
        Some(addr) => {
            // Local mode: the control plane's own serving certificate. Kubernetes: an ECDSA
            // certificate the API server can verify, following the CA in force on every
            // replica, with the caBundle that vouches for it.
            let tls = match &sources.cluster {
                None => inject::follow_serving_config(serving_rx.clone())
                    .map_err(inject::SpawnError::Tls)?,
                Some(cluster) => cluster
                    .webhook_tls(&config)
                    .start(ca_updates.clone())
                    .await
                    .map_err(kubernetes::KubernetesError::from)?,
            };
            Some(inject::spawn(addr, tls, config.inject.clone(), &metrics.registry).await?)
        }
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.grpc_addr,
        source,
    })?;

    let tracker = Arc::new(policy_push::PushTracker::default());
    let admin_metrics = metrics.clone();
    let admin_tracker = tracker.clone();
    let admin_ca = ca_updates.clone();
    let admin_revoked = revoked.clone();
    let admin_policies = sources.policies.clone();
    let shutdown_requested = watch::Sender::new(false);
    let admin_shutdown = shutdown_requested.clone();
    let dump_config = serde_json::json!({
        "trust_domain": config.trust_domain,
        "identity": config.identity.to_string(),
        "leaf_lifetime_seconds": config.leaf_lifetime.as_secs(),
        "grpc_addr": config.grpc_addr.to_string(),
        "mode": match &config.mode {
            Mode::Local(dir) => format!("local {}", dir.display()),
            Mode::Kubernetes(_) => "kubernetes".to_owned(),
        },
    });
    let route: admin::Route =
        Arc::new(
            move |method: &Method, path: &str, remote| match (method, path) {
                (&Method::GET, "/live") | (&Method::GET, "/ready") => {
                    Reply::text(StatusCode::OK, "ok\n")
                }
                (&Method::GET, "/metrics") => {
                    let ca_version = admin_ca.borrow().version();
                    admin_metrics
                        .sidecars_on_current_ca
                        .set(admin_tracker.on_ca_version(&ca_version) as i64);
                    admin_metrics
                        .sidecars_on_current_policy
                        .set(admin_tracker.acked_count().0 as i64);
                    admin::render_metrics(&admin_metrics.registry)
                }
                (&Method::GET, "/config_dump") if !remote.ip().is_loopback() => Reply::text(
                    StatusCode::FORBIDDEN,
                    "config_dump is allowed from localhost only\n",
                ),
                (&Method::GET, "/config_dump") => {
                    let body = serde_json::json!({
                        "config": dump_config,
                        "ca": rotation::summary(&admin_ca.borrow()),
                        "revocations": revocation::summary(&admin_revoked.borrow()),
                    });
                    Reply::json(serde_json::to_string_pretty(&body).unwrap_or_default())
                }
                (&Method::POST, "/shutdown") if remote.ip().is_loopback() => {
                    admin_shutdown.send_replace(true);
                    Reply::text(StatusCode::OK, "shutting down\n")
                }
                (&Method::POST, "/shutdown") => Reply::text(
                    StatusCode::FORBIDDEN,
                    "shutdown is allowed from localhost only\n",
                ),
                (&Method::GET, "/policy_status") => {
                    let (acked, connected) = admin_tracker.acked_count();
                    let ca_version = admin_ca.borrow().version();
                    let body = serde_json::json!({
                        "connected_sidecars": connected,
                        "sidecars_on_current_version": acked,
                        "ca_version": ca_version,
                        "sidecars_on_current_ca": admin_tracker.on_ca_version(&ca_version),
                        "policies": admin_tracker.policy_status(),
                        // Per object: Accepted / ResolvedRefs with reason and message, and
                        // which version is in force (current, last-good, none).
                        "objects": admin_policies.borrow().verdicts_json(),
                        "sidecars": admin_tracker.streams(),
                    });
                    Reply::json(serde_json::to_string_pretty(&body).unwrap_or_default())
                }
                _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
            },
        );
    let (admin_addr, admin_local_addr) = spawn_admin(&config, route)?;

    let renewal =
        tokio::spawn(serving.renew_following(ca_updates.clone(), serving_tx, serving_not_after));

    let failures = metrics.handshake_failures.clone();
    let incoming = pqmesh_mtls::grpc_tls::tls_incoming(
        listener,
        serving_rx,
        HANDSHAKE_TIMEOUT,
        Arc::new(move |reason: &str| failures.with_label_values(&[reason]).inc()),
    );
    let (stopping_tx, stopping) = watch::channel(false);
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(pqmesh_mtls::x509::certs_to_pem(
        ca.bundle().roots(),
    )));
    // The published bundle follows the CA (root rotation).
    let mut cas = ca_updates.clone();
    let follow = bundle_tx.clone();
    tokio::spawn(async move {
        while cas.changed().await.is_ok() {
            let pem = pqmesh_mtls::x509::certs_to_pem(cas.borrow_and_update().bundle().roots());
            if follow.send(Arc::new(pem)).is_err() {
                return;
            }
        }
    });
    let status_writer = sources.cluster.as_ref().map(|cluster| {
        cluster.spawn_writers(
            &config.inject.trust_bundle_configmap,
            bundle_rx,
            tracker.clone(),
            stopping.clone(),
        )
    });
    let policy = policy_push::PolicyService {
        state: sources.policies,
        labels: sources.labels,
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        stopping: stopping.clone(),
        ca: ca_updates.clone(),
        revoked: revoked.clone(),
    };
    let discovery = discovery::DiscoveryService {
        table: sources.endpoints,
        metrics: metrics.clone(),
        stopping,
        revoked: revoked.clone(),
    };
    let trust_bundle_path = sources.trust_bundle_path;
    let identity = IdentityService {
        ca: ca_updates.clone(),
        auth: sources.auth,
        metrics: metrics.clone(),
        revoked,
    };
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(identity).max_decoding_message_size(MAX_REQUEST_BYTES))
            .add_service(
                DiscoveryServer::new(discovery).max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(PolicyServer::new(policy).max_decoding_message_size(MAX_REQUEST_BYTES))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            }),
    );
    tracing::info!(%grpc_addr, %admin_addr, identity = %config.identity, trust_domain = %config.trust_domain,
        bundle = %trust_bundle_path.display(), "control plane serving");
    Ok(RunningControlPlane {
        grpc_addr,
        admin_addr,
        admin_local_addr,
        webhook_addr,
        trust_bundle_path,
        identity: config.identity.clone(),
        metrics,
        policy_tracker: tracker,
        ca: ca_updates,
        shutdown_requested,
        shutdown: Some(shutdown_tx),
        stopping: stopping_tx,
        server,
        renewal,
        status_writer,
        _bundle: bundle_tx,
    })
}

/// A serving certificate the control plane issues itself from a CA, for a key made in this
/// process, and keeps renewed.
#[derive(Clone)]
struct ServingCert {
    ca: Arc<CertificateAuthority>,
    key_alg: pqmesh_mtls::KeyAlgorithm,
    identity: SpiffeId,
    names: Vec<String>,
    kx: pqmesh_mtls::KeyExchangePolicy,
    expiry: Option<prometheus::Gauge>,
}

impl ServingCert {
    fn issue(&self) -> Result<(Arc<ServerConfig>, SystemTime), StartError> {
        let serving = |e: &dyn std::fmt::Display| StartError::Serving(e.to_string());
        let key = self.key_alg.generate().map_err(|e| serving(&e))?;
        let leaf = self
            .ca
            .issue_serving(&key, &self.identity, &self.names)
            .map_err(|e| serving(&e))?;
        let creds = Credentials::verified(
            leaf.chain,
            key.serialize_der(),
            self.ca.bundle().clone(),
            &self.identity,
        )
        .map_err(|e| serving(&e))?;
        if let Some(gauge) = &self.expiry {
            gauge.set(pqmesh_mtls::x509::unix_seconds(creds.not_after) as f64);
        }
        let server = creds
            .server_config(self.kx, &[ALPN_H2], true)
            .map_err(|e| serving(&e))?;
        Ok((server, creds.not_after))
    }

    /// Re-issues at half the lifetime; on failure retries every 10 s while the current one
    /// stays in use.
    async fn renew(self, tx: watch::Sender<Arc<ServerConfig>>, mut not_after: SystemTime) {
        loop {
            let remaining = not_after
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(remaining / 2).await;
            match self.issue() {
                Ok((server, next)) => {
                    if tx.send(server).is_err() {
                        return;
                    }
                    not_after = next;
                    tracing::info!(names = %self.names.join(","), "renewed a serving certificate");
                }
                Err(e) => {
                    tracing::error!(error = %e, "serving certificate renewal failed; retrying in 10s");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    }

    /// As `renew`, and at once when the CA changes (root rotation: a new signing root or trust
    /// bundle, which the serving config also uses to verify clients).
    async fn renew_following(
        mut self,
        mut ca: watch::Receiver<Arc<CertificateAuthority>>,
        tx: watch::Sender<Arc<ServerConfig>>,
        mut not_after: SystemTime,
    ) {
        loop {
            let remaining = not_after
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(remaining / 2) => {}
                changed = ca.changed() => if changed.is_err() {
                    return self.renew(tx, not_after).await;
                },
            }
            self.ca = ca.borrow_and_update().clone();
            match self.issue() {
                Ok((server, next)) => {
                    if tx.send(server).is_err() {
                        return;
                    }
                    not_after = next;
                    tracing::info!("renewed the control plane's serving certificate");
                }
                Err(e) => {
                    tracing::error!(error = %e, "serving certificate renewal failed; retrying in 10s");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    }
}

/// What the admin address serves to the network: the kubelet's probes and Prometheus' scrape.
const PUBLIC_ADMIN_PATHS: &[&str] = &["/live", "/ready", "/metrics"];

/// Starts the admin listeners; returns (admin address, local admin address). A non-loopback
/// `admin_addr` serves only `PUBLIC_ADMIN_PATHS` (anything else, `/logging` included, is 404
/// there) and every endpoint is served on `admin_local_addr`; a loopback `admin_addr` is
/// already private and serves everything itself, with no second listener.
fn spawn_admin(
    config: &Config,
    route: admin::Route,
) -> Result<(SocketAddr, SocketAddr), StartError> {
    let bind = |addr: SocketAddr| move |source| StartError::Bind { addr, source };
    if config.admin_addr.ip().is_loopback() {
        let addr = admin::spawn(config.admin_addr, route).map_err(bind(config.admin_addr))?;
        return Ok((addr, addr));
    }
    let local = admin::spawn(config.admin_local_addr, route.clone())
        .map_err(bind(config.admin_local_addr))?;
    let public: admin::Route = Arc::new(move |method: &Method, path: &str, remote| {
        if PUBLIC_ADMIN_PATHS.contains(&path) {
            route(method, path, remote)
        } else {
            Reply::text(
                StatusCode::NOT_FOUND,
                format!(
                    "not found: the admin address serves /live, /ready and /metrics only; \
                     everything else is served on the loopback admin address {local} \
                     (PQMESH_ADMIN_LOCAL_ADDR; kubectl port-forward reaches it)\n"
                ),
            )
        }
    });
    let addr = admin::spawn_public(config.admin_addr, public).map_err(bind(config.admin_addr))?;
    Ok((addr, local))
}

fn create_private_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StartError::Dir {
            path: dir.to_owned(),
            source,
        })
}
