//! pqmesh's edge gateway: outside clients in through Gateway API listeners (outside TLS with
//! X25519MLKEM768 preferred), routed by HTTPRoutes, checked by an EdgePolicy (phantom-token
//! exchange, coarse scopes, rate limits), and forwarded into the mesh over PQ mTLS with the
//! gateway's own SPIFFE identity. Identity, mesh TLS, discovery and token validation are the
//! sidecar's code. Local mode reads its objects from a directory, Kubernetes mode from the API
//! server; both feed the same judgement ([`program`]), and a new configuration replaces the
//! one in force without a restart.
#![forbid(unsafe_code)]

pub mod abuse;
pub mod api;
pub mod backend;
pub mod canonical;
pub mod config;
pub mod filters;
pub mod judge;
pub mod kubernetes;
pub mod load;
pub mod metrics;
pub mod outside_tls;
pub mod ports;
pub mod program;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod status;
pub mod watchdog;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pqmesh_mtls::TrustBundle;
use pqmesh_sidecar::identity::GrpcCertifier;
use pqmesh_sidecar::metrics::Metrics;
use pqmesh_sidecar::tls::MeshTls;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, Source};
use crate::load::Verdict;
use crate::metrics::GatewayMetrics;
use crate::program::{program, Programmed};
use crate::proxy::Edge;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("trust bundle {path}: {reason}")]
    Bundle { path: String, reason: String },
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::KubernetesError),
    #[error("PQMESH_GATEWAY_ADMIN_ADDR={addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {listener}: {reason}")]
    Listener { listener: String, reason: String },
}

pub struct RunningGateway {
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    config: watch::Receiver<Arc<Programmed>>,
    ports: Arc<ports::Ports>,
    _renew: mpsc::Sender<()>,
    _policy: watch::Receiver<Option<Arc<pqmesh_sidecar::policy::ActivePolicy>>>,
    revoked: watch::Receiver<Arc<pqmesh_sidecar::revocation::Revoked>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Waits until `/ready` would answer 200: the gateway's first mesh certificate and the
    /// control plane's first policy snapshot (the deny list) applied.
    pub async fn ready(&self) {
        let mut rx = self.tls.clone();
        let _ = rx.wait_for(|t| t.is_some()).await;
        let mut rx = self.revoked.clone();
        let _ = rx.wait_for(|r| r.received()).await;
    }

    pub fn current(&self) -> Option<Arc<MeshTls>> {
        self.tls.borrow().clone()
    }

    /// The mesh deny list in force (pushed by the control plane).
    pub fn revoked(&self) -> Arc<pqmesh_sidecar::revocation::Revoked> {
        self.revoked.borrow().clone()
    }

    /// Every object's verdict in the configuration in force.
    pub fn verdicts(&self) -> Vec<Verdict> {
        self.config.borrow().model.verdicts.clone()
    }

    /// The configuration in force, following changes.
    pub fn config(&self) -> watch::Receiver<Arc<Programmed>> {
        self.config.clone()
    }

    /// `(<namespace>/<gateway>/<listener>, bound address)` per served listener.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let config = self.config.borrow().clone();
        config
            .model
            .listeners
            .iter()
            .filter_map(|l| Some((program::label_of(l), self.ports.addr(l.port)?)))
            .collect()
    }

    pub fn addr_of(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners()
            .into_iter()
            .find(|(n, _)| n.ends_with(&format!("/{listener}")))
            .map(|(_, a)| a)
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reads the configuration (the directory, or the API server with `--kubernetes`), certifies
/// with the control plane and serves every programmed listener.
pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
    match config.source {
        Source::Local(_) => start_with(config, None).await,
        Source::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| kubernetes::KubernetesError::Client(e.to_string()))?;
            start_with(config, Some(client)).await
        }
    }
}

/// Kubernetes mode with a given client (tests point it at a recorded API server).
pub async fn start_kubernetes_with_client(
    config: Config,
    client: kube::Client,
) -> Result<RunningGateway, StartError> {
    start_with(config, Some(client)).await
}

async fn start_with(
    config: Config,
    client: Option<kube::Client>,
) -> Result<RunningGateway, StartError> {
    let bundle_err = |reason: String| StartError::Bundle {
        path: config.trust_bundle_path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(&config.trust_bundle_path)
        .map_err(|e| bundle_err(e.to_string()))?;
    let bundle = TrustBundle::from_pem(&text).map_err(bundle_err)?;
    let metrics = Arc::new(Metrics::new());
    let gateway_metrics = GatewayMetrics::new(&metrics.registry);

    let (tls_tx, tls_rx) = watch::channel(None);
    let (renew_tx, renew_rx) = mpsc::channel(1);
    let certifier = Arc::new(GrpcCertifier {
        addr: config.control_plane_addr.clone(),
        server_id: config.control_plane_id.clone(),
        kx: config.kx,
        token: config.token.clone(),
        bundle: std::sync::Mutex::new(bundle),
    });
    let mut tasks = vec![tokio::spawn(pqmesh_sidecar::identity::maintain(
        certifier.clone(),
        config.key_alg,
        config.kx,
        tls_tx,
        renew_rx,
        metrics.clone(),
    ))];
    // The policy stream, as a sidecar's: it brings the mesh state (the client and subject deny
    // list, revocations, CA changes that call for re-certifying now). The gateway serves no
    // inbound mesh traffic, so the workload policy it also brings is not used. Until its first
    // mesh state is applied the deny list is unknown, and every request is answered 503
    // (`proxy::route_request`, review 12 F5); a later outage changes nothing served: the last
    // deny list stays in force.
    use pqmesh_sidecar::control_plane::{Link, Stream};
    let link = Link::new(
        match config.source {
            Source::Local(_) => &[Stream::Policy],
            Source::Kubernetes => &[Stream::Policy, Stream::Discovery],
        },
        metrics.clone(),
    );
    let (revoked_tx, revoked_rx) =
        watch::channel(Arc::new(pqmesh_sidecar::revocation::Revoked::default()));
    let (policy_tx, policy_rx) = watch::channel(None);
    tasks.push(tokio::spawn(
        pqmesh_sidecar::policy::PolicyClientTask {
            labels: Default::default(),
            pod_name: config.pod_name.clone(),
            state: policy_tx,
            metrics: metrics.clone(),
            revoked: revoked_tx,
            renew: renew_tx.clone(),
            certifier,
            link: link.clone(),
            inbound_allow_empty: false,
        }
        .run(
            config.control_plane_addr.clone(),
            config.control_plane_id.clone(),
            tls_rx.clone(),
        ),
    ));

    let identities = backend::Identities::default();
    let (first, discovered, updates): (Programmed, _, Updates) = match (&config.source, client) {
        (Source::Kubernetes, None) => {
            return Err(kubernetes::KubernetesError::Client("no client".into()).into())
        }
        (Source::Local(dir), _) => {
            let dir = dir.clone();
            let docs = load::local_documents(&dir)?;
            let known = |s: &str, port: u16| docs.backends.contains_key(&(s.to_owned(), port));
            let first = program(&docs, None, &known, &metrics, &gateway_metrics);
            (first, None, Updates::Local(dir))
        }
        (Source::Kubernetes, Some(client)) => {
            let (sources, changed) =
                kubernetes::watch_sources(&client, kubernetes::FIRST_LIST_TIMEOUT).await?;
            let (discovery, task) = pqmesh_sidecar::discovery::Discovery::new();
            tasks.push(tokio::spawn(task.run(
                config.control_plane_addr.clone(),
                config.control_plane_id.clone(),
                tls_rx.clone(),
                link.clone(),
            )));
            let endpoints = kubernetes::ServiceEndpoints {
                services: sources.services.clone(),
                discovery,
            };
            let secrets =
                kubernetes::read_secrets(&client, &kubernetes::named_secrets(&sources)).await;
            let docs = kubernetes::documents(&sources, secrets);
            let first = program(
                &docs,
                None,
                &|s, p| endpoints.knows(s, p),
                &metrics,
                &gateway_metrics,
            );
            (
                first,
                Some(endpoints),
                Updates::Kubernetes {
                    client,
                    sources,
                    changed,
                    docs: Box::new(docs),
                },
            )
        }
    };
    let (config_tx, config_rx) = watch::channel(Arc::new(first));
    let backends = backend::client(identities.clone(), tls_rx.clone(), metrics.clone());
    let edge = Arc::new(Edge {
        config: config_rx.clone(),
        token_failures: ratelimit::Limiter::new(
            proxy::TOKEN_FAILURES_PER_MINUTE,
            Duration::from_secs(60),
            proxy::TOKEN_FAILURE_BURST,
        ),
        tls: tls_rx.clone(),
        backends,
        endpoints: backend::Endpoints {
            identities,
            discovered: discovered.clone(),
        },
        metrics: gateway_metrics.clone(),
        revoked: revoked_rx.clone(),
        abuse: Default::default(),
    });

    // Local mode stops at a port it cannot bind (a start-up error, as before); in Kubernetes
    // mode nothing a user creates stops the gateway: the listener's status says so.
    let local_mode = matches!(updates, Updates::Local(_));
    let ports = Arc::new(ports::Ports::new(
        config.listen_host,
        ports::Limits {
            per_port: config.max_connections,
            per_ip: config.max_connections_per_ip,
        },
    ));
    ports
        .reconcile(&edge, &config_rx.borrow().clone(), local_mode)
        .await?;
    tasks.push(tokio::spawn(ports::follow(
        ports.clone(),
        edge.clone(),
        config_rx.clone(),
    )));
    match updates {
        Updates::Local(dir) => tasks.push(tokio::spawn(follow_directory(
            dir,
            config_tx,
            metrics.clone(),
            gateway_metrics,
        ))),
        Updates::Kubernetes {
            client,
            sources,
            changed,
            docs,
        } => {
            tasks.push(tokio::spawn(status::write_status(
                client.clone(),
                sources.clone(),
                config_rx.clone(),
                ports.clone(),
            )));
            tasks.push(tokio::spawn(follow_cluster(
                client,
                sources,
                changed,
                *docs,
                discovered,
                config_tx,
                metrics.clone(),
                gateway_metrics,
            )));
        }
    }
    // `pqmesh_ready` says what `/ready` says (review 7, F12); `pqmesh_control_plane_connected`
    // follows the policy stream (and discovery in Kubernetes mode).
    tasks.push(tokio::spawn({
        let (mut tls, mut revoked, ready) =
            (tls_rx.clone(), revoked_rx.clone(), metrics.ready.clone());
        async move {
            let mut said = false;
            loop {
                let received = revoked.borrow_and_update().received();
                ready.set(i64::from(
                    tls.borrow_and_update().is_some() && received,
                ));
                if received && !said {
                    said = true;
                    tracing::info!(
                        entries = revoked.borrow().len(),
                        "the control plane's first policy snapshot is applied (deny list in force); serving requests"
                    );
                }
                tokio::select! {
                    c = tls.changed() => if c.is_err() { return },
                    c = revoked.changed() => if c.is_err() { return },
                }
            }
        }
    }));
    tracing::info!(
        "until the control plane's first policy snapshot (deny list) is applied, every request is answered 503 and /ready is 503"
    );
    let admin_addr = spawn_admin(
        config.admin_addr,
        &metrics,
        tls_rx.clone(),
        revoked_rx.clone(),
        config_rx.clone(),
    )
    .map_err(|source| StartError::Admin {
        addr: config.admin_addr,
        source,
    })?;
    let running = RunningGateway {
        admin_addr,
        metrics,
        tls: tls_rx,
        config: config_rx,
        ports,
        _renew: renew_tx,
        _policy: policy_rx,
        revoked: revoked_rx,
        tasks,
    };
    tracing::info!(listeners = ?running.listeners(), %admin_addr, control_plane = %config.control_plane_addr, "gateway started");
    Ok(running)
}

/// Where the next configurations come from.
enum Updates {
    Local(std::path::PathBuf),
    Kubernetes {
        client: kube::Client,
        sources: kubernetes::Sources,
        changed: watch::Receiver<u64>,
        docs: Box<load::Documents>,
    },
}

/// How often local mode's files are checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);

/// Every file local mode reads, with its modification time and size.
fn directory_stamp(
    dir: &std::path::Path,
) -> Vec<(std::path::PathBuf, Option<std::time::SystemTime>, u64)> {
    let mut paths = vec![dir.join("secrets.yaml"), dir.join("backends.yaml")];
    let list = |d: std::path::PathBuf| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(d)
            .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    paths.extend(list(dir.join("config")));
    for ns in list(dir.join("certs")) {
        for secret in list(ns) {
            paths.push(secret.join("tls.crt"));
            paths.push(secret.join("tls.key"));
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let stamp = (
                m.as_ref().and_then(|m| m.modified().ok()),
                m.map_or(0, |m| m.len()),
            );
            (p, stamp.0, stamp.1)
        })
        .collect()
}

/// Local mode: a change to any file of the directory is judged again; a directory that does not
/// read (say a `secrets.yaml` made world-readable) keeps the configuration in force.
async fn follow_directory(
    dir: std::path::PathBuf,
    tx: watch::Sender<Arc<Programmed>>,
    metrics: Arc<Metrics>,
    gateway_metrics: GatewayMetrics,
) {
    let mut last = directory_stamp(&dir);
    loop {
        tokio::time::sleep(FILE_POLL).await;
        let now = directory_stamp(&dir);
        if now == last {
            continue;
        }
        last = now;
        match load::local_documents(&dir) {
            Err(e) => {
                tracing::warn!(error = %e, "gateway directory not reloaded; the configuration in force stays")
            }
            Ok(docs) => {
                let previous = tx.borrow().clone();
                let known = |s: &str, port: u16| docs.backends.contains_key(&(s.to_owned(), port));
                let next = program(&docs, Some(&previous), &known, &metrics, &gateway_metrics);
                tracing::info!("gateway directory changed; new configuration in force");
                let _ = tx.send(Arc::new(next));
            }
        }
    }
}

/// Kubernetes mode: every change of a watched object (debounced), and every
/// [`kubernetes::SECRET_RECHECK`] the named Secrets, are judged again when the documents
/// differ from the ones in force (status writes alone change nothing).
#[allow(clippy::too_many_arguments)]
async fn follow_cluster(
    client: kube::Client,
    sources: kubernetes::Sources,
    mut changed: watch::Receiver<u64>,
    mut docs: load::Documents,
    endpoints: Option<kubernetes::ServiceEndpoints>,
    tx: watch::Sender<Arc<Programmed>>,
    metrics: Arc<Metrics>,
    gateway_metrics: GatewayMetrics,
) {
    let mut recheck = tokio::time::interval(kubernetes::SECRET_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.tick().await;
    let mut services = services_fingerprint(&sources);
    loop {
        tokio::select! {
            c = changed.changed() => {
                if c.is_err() {
                    return;
                }
                tokio::time::sleep(kubernetes::DEBOUNCE).await;
                changed.borrow_and_update();
            }
            _ = recheck.tick() => {}
        }
        let secrets = kubernetes::read_secrets(&client, &kubernetes::named_secrets(&sources)).await;
        let next = kubernetes::documents(&sources, secrets);
        let next_services = services_fingerprint(&sources);
        if next.texts == docs.texts && next.secrets == docs.secrets && next_services == services {
            continue;
        }
        docs = next;
        services = next_services;
        let previous = tx.borrow().clone();
        let known = |s: &str, p: u16| endpoints.as_ref().is_some_and(|e| e.knows(s, p));
        let programmed = program(&docs, Some(&previous), &known, &metrics, &gateway_metrics);
        tracing::info!(
            routes = programmed.model.routes.len(),
            listeners = programmed.model.listeners.len(),
            "gateway objects changed; new configuration in force"
        );
        if tx.send(Arc::new(programmed)).is_err() {
            return;
        }
    }
}

/// Which Services exist with which ports (what `BackendNotFound` depends on).
fn services_fingerprint(sources: &kubernetes::Sources) -> Vec<(String, Vec<i32>)> {
    let mut out: Vec<_> = sources
        .services
        .state()
        .iter()
        .map(|s| {
            let name = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            );
            let ports = s
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .map(|p| p.iter().map(|p| p.port).collect())
                .unwrap_or_default();
            (name, ports)
        })
        .collect();
    out.sort();
    out
}

/// The admin port, on its own thread (the shared admin server of both daemons).
fn spawn_admin(
    addr: SocketAddr,
    metrics: &Metrics,
    tls: watch::Receiver<Option<Arc<MeshTls>>>,
    revoked: pqmesh_sidecar::revocation::RevokedState,
    config: watch::Receiver<Arc<Programmed>>,
) -> std::io::Result<SocketAddr> {
    use hyper::StatusCode;
    use pqmesh_mtls::admin::{render_metrics, Reply};
    let registry = metrics.registry.clone();
    let verdicts = move || -> String {
        let state = |r: &Result<(), String>| match r {
            Ok(()) => "True".to_owned(),
            Err(e) => format!("False: {e}"),
        };
        config
            .borrow()
            .model
            .verdicts
            .iter()
            .map(|v| {
                format!(
                    "{} {} ({}): Accepted={}; ResolvedRefs={}\n",
                    v.kind,
                    v.name,
                    v.source,
                    state(&v.accepted),
                    state(&v.resolved_refs)
                )
            })
            .collect()
    };
    let route: pqmesh_mtls::admin::Route = Arc::new(move |_method, path, _peer| match path {
        "/live" => Reply::text(StatusCode::OK, "live"),
        "/ready" if tls.borrow().is_none() => {
            Reply::text(StatusCode::SERVICE_UNAVAILABLE, "no mesh certificate yet")
        }
        "/ready" if !revoked.borrow().received() => {
            Reply::text(StatusCode::SERVICE_UNAVAILABLE, proxy::AWAITING_POLICY)
        }
        "/ready" => Reply::text(StatusCode::OK, "ready"),
        "/metrics" => render_metrics(&registry),
        "/verdicts" => Reply::text(StatusCode::OK, verdicts()),
        _ => Reply::text(StatusCode::NOT_FOUND, "not found"),
    });
    pqmesh_mtls::admin::spawn(addr, route)
}

#[cfg(test)]
mod tests;
