//! `pqmesh.policy.v1.Policy/Watch`: per-workload snapshots pushed to sidecars, with ACK/NACK
//! tracking. A stream is authenticated by the sidecar's certificate: the namespace that selects
//! policies is the certificate's, never one the sidecar claims.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pqmesh_mtls::grpc_tls::{authenticated_peer, PeerInfo};
use pqmesh_mtls::SpiffeId;
use pqmesh_policy::Workload;
use pqmesh_proto::policy::v1::policy_server::Policy;
use pqmesh_proto::policy::v1::watch_request::Kind;
use pqmesh_proto::policy::v1::{MeshState, PolicySnapshot, WatchRequest};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::ca::CertificateAuthority;
use crate::metrics::Metrics;
use crate::policies::PolicyState;
use crate::revocation::RevocationList;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control plane knows about each connected sidecar (for metrics and policy status).
#[derive(Default)]
pub struct PushTracker {
    next_id: AtomicU64,
    streams: Mutex<HashMap<u64, StreamStatus>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub identity: String,
    pub pod: String,
    /// AccessPolicies selecting this workload.
    pub policies: Vec<String>,
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    pub nack: Option<(String, String)>,
    /// Why this workload's policy cannot be compiled now (it keeps its last snapshot).
    pub compile_error: Option<String>,
    /// The CA version of the sidecar's certificate, as it last reported it.
    pub ca_version: Option<String>,
    /// The revocation list version it last ACKed ("" = empty list).
    pub revocation_version: Option<String>,
    #[serde(skip)]
    sent_at: Option<Instant>,
}

/// Per AccessPolicy: how many connected sidecars it selects, and how many run the current version.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyStatus {
    pub selected: usize,
    pub acked: usize,
    pub rejected: usize,
}

impl PushTracker {
    fn update(&self, id: u64, f: impl FnOnce(&mut StreamStatus)) {
        if let Some(s) = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            f(s);
        }
    }

    pub fn streams(&self) -> Vec<StreamStatus> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// A sidecar counts as acked for a policy when it ACKed the snapshot last sent to it.
    pub fn policy_status(&self) -> BTreeMap<String, PolicyStatus> {
        let mut out: BTreeMap<String, PolicyStatus> = BTreeMap::new();
        for s in self.streams() {
            let current = s.sent_version.is_some() && s.sent_version == s.acked_version;
            let rejected = s.compile_error.is_some()
                || s.nack
                    .as_ref()
                    .is_some_and(|(v, _)| Some(v) == s.sent_version.as_ref());
            for p in &s.policies {
                let st = out.entry(p.clone()).or_default();
                st.selected += 1;
                st.acked += usize::from(current);
                st.rejected += usize::from(rejected);
            }
        }
        out
    }

    /// Connected sidecars whose certificate was issued under `ca_version`.
    pub fn on_ca_version(&self, ca_version: &str) -> usize {
        self.streams()
            .iter()
            .filter(|s| s.ca_version.as_deref() == Some(ca_version))
            .count()
    }

    /// Sidecars whose last snapshot is ACKed, and all connected sidecars.
    pub fn acked_count(&self) -> (usize, usize) {
        let streams = self.streams();
        let acked = streams
            .iter()
            .filter(|s| s.sent_version.is_some() && s.sent_version == s.acked_version)
            .count();
        (acked, streams.len())
    }
}

/// Where a workload's labels come from when the control plane can look them up itself.
pub trait WorkloadLabels: Send + Sync {
    /// The labels of `pod` in `namespace`; the pod must run as `service_account` (a sidecar may
    /// not borrow another workload's labels, and with them its policies).
    fn labels(
        &self,
        namespace: &str,
        pod: &str,
        service_account: &str,
    ) -> Result<BTreeMap<String, String>, Status>;
}

pub struct PolicyService {
    pub state: watch::Receiver<Arc<PolicyState>>,
    /// `None` (local mode): the labels the sidecar reports in its hello.
    pub labels: Option<Arc<dyn WorkloadLabels>>,
    pub tracker: Arc<PushTracker>,
    pub metrics: Arc<Metrics>,
    pub stopping: watch::Receiver<bool>,
    /// The current CA: its version is pushed so sidecars re-certify after a root change.
    pub ca: watch::Receiver<Arc<CertificateAuthority>>,
    /// The deny list, pushed to every sidecar; a revoked sidecar's own stream is closed.
    pub revoked: watch::Receiver<Arc<RevocationList>>,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PolicySnapshot, Status>> + Send>>;

fn mesh_state(ca: &CertificateAuthority, revoked: &RevocationList) -> MeshState {
    MeshState {
        ca_version: ca.version(),
        revocation_version: revoked.version(),
        revoked_identities: revoked.identities.iter().cloned().collect(),
        revoked_serials: revoked.serials.iter().cloned().collect(),
        denied_clients: revoked.clients.iter().cloned().collect(),
        denied_subjects: revoked.subjects.iter().cloned().collect(),
        trust_bundle_der: ca.bundle().roots().iter().map(|c| c.to_vec()).collect(),
    }
}

fn is_revoked(revoked: &RevocationList, peer: &SpiffeId, serial: Option<&String>) -> bool {
    revoked.covers(peer, serial.map(String::as_str))
}

#[tonic::async_trait]
impl Policy for PolicyService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let peer = authenticated_peer(&request, "Policy/Watch")?;
        let serial = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.peer_serial.clone());
        if is_revoked(&self.revoked.borrow(), &peer, serial.as_ref()) {
            self.metrics.revoked_streams_closed.inc();
            return Err(Status::permission_denied(format!(
                "{peer} (certificate {}) is revoked",
                serial.as_deref().unwrap_or("?")
            )));
        }
        let mut requests = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, requests.message()).await {
            Ok(Ok(Some(WatchRequest {
                kind: Some(Kind::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of Policy/Watch must be hello",
                ))
            }
            Ok(Err(s)) => return Err(s),
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10 s")),
        };
        if hello.labels.len() > 64
            || hello
                .labels
                .iter()
                .any(|(k, v)| k.len() > 317 || v.len() > 63)
        {
            return Err(Status::invalid_argument(
                "workload labels exceed Kubernetes label limits",
            ));
        }
        let labels = match &self.labels {
            Some(source) => {
                source.labels(peer.namespace(), &hello.pod_name, peer.service_account())?
            }
            None => hello.labels.clone().into_iter().collect(),
        };
        let workload = Workload {
            namespace: peer.namespace().to_owned(),
            labels,
        };
        let id = self.tracker.next_id.fetch_add(1, Ordering::Relaxed);
        self.tracker
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                StreamStatus {
                    identity: peer.to_string(),
                    pod: hello.pod_name.clone(),
                    policies: vec![],
                    sent_version: None,
                    acked_version: None,
                    nack: None,
                    compile_error: None,
                    ca_version: Some(hello.ca_version.clone()).filter(|v| !v.is_empty()),
                    revocation_version: Some(hello.revocation_version.clone()),
                    sent_at: None,
                },
            );
        self.metrics.policy_streams.inc();
        tracing::info!(peer = %peer, pod = %hello.pod_name, "policy stream opened");

        let (tx, rx) = mpsc::channel(4);
        let mut state = self.state.clone();
        let mut ca = self.ca.clone();
        let mut revoked = self.revoked.clone();
        let mut stopping = self.stopping.clone();
        let tracker = self.tracker.clone();
        let metrics = self.metrics.clone();
        let mut last_sent = Some(hello.current_version).filter(|v| !v.is_empty());
        // What the sidecar holds, by version; the lists themselves are resent on any change.
        let mut last_mesh = (hello.ca_version, hello.revocation_version);
        tokio::spawn(async move {
            let mut first = true;
            // The last policy sent, so mesh changes still reach a workload whose policy cannot
            // be compiled right now.
            let mut last_compiled: Option<(String, Vec<u8>)> = None;
            let result: Result<(), Status> = async {
                loop {
                    let current = state.borrow_and_update().clone();
                    let mesh = mesh_state(&ca.borrow_and_update(), &revoked.borrow_and_update());
                    if is_revoked(&revoked.borrow(), &peer, serial.as_ref()) {
                        metrics.revoked_streams_closed.inc();
                        tracing::warn!(peer = %peer, "closing the policy stream of a revoked sidecar");
                        return Err(Status::permission_denied(format!("{peer} is revoked")));
                    }
                    let mesh_changed = (mesh.ca_version.as_str(), mesh.revocation_version.as_str())
                        != (last_mesh.0.as_str(), last_mesh.1.as_str());
                    // (Re)compile for this workload and push if it or the mesh state changed.
                    let compiled = match current.set.compile(&workload, &current.secrets) {
                        Ok(compiled) => {
                            let version = compiled.version();
                            tracker.update(id, |s| {
                                s.policies = current.set.selecting(&workload);
                                s.compile_error = None;
                            });
                            let json = serde_json::to_vec(&compiled).map_err(|e| Status::internal(e.to_string()))?;
                            Some((version, json))
                        }
                        Err(e) => {
                            metrics.policy_compile_errors.inc();
                            tracing::error!(peer = %peer, error = %e, "cannot compile this workload's policy; it keeps its last snapshot");
                            tracker.update(id, |s| {
                                s.policies = current.set.selecting(&workload);
                                s.compile_error = Some(e.to_string().chars().take(512).collect());
                            });
                            if mesh_changed { last_compiled.clone() } else { None }
                        }
                    };
                    if let Some((version, json)) = compiled {
                        let policy_changed = last_sent.as_deref() != Some(version.as_str());
                        if first && !policy_changed && !mesh_changed {
                            // Reconnected with what it already runs: nothing to resend.
                            tracker.update(id, |s| {
                                s.sent_version = Some(version.clone());
                                s.acked_version = Some(version.clone());
                            });
                        } else if policy_changed || mesh_changed {
                            last_mesh = (mesh.ca_version.clone(), mesh.revocation_version.clone());
                            tx.send(Ok(PolicySnapshot { version: version.clone(), policy_json: json.clone(), mesh: Some(mesh) }))
                                .await
                                .map_err(|_| Status::cancelled("gone"))?;
                            metrics.policy_snapshots_sent.inc();
                            tracker.update(id, |s| {
                                s.sent_version = Some(version.clone());
                                s.sent_at = Some(Instant::now());
                            });
                            last_sent = Some(version.clone());
                        }
                        last_compiled = Some((version, json));
                    }
                    first = false;
                    // Wait for a policy, CA or revocation change, an ACK/NACK, or shutdown.
                    loop {
                        tokio::select! {
                            changed = state.changed() => {
                                if changed.is_err() { return Ok(()); }
                                break;
                            }
                            changed = ca.changed() => {
                                if changed.is_err() { return Ok(()); }
                                break;
                            }
                            changed = revoked.changed() => {
                                if changed.is_err() { return Ok(()); }
                                break;
                            }
                            msg = requests.message() => match msg? {
                                None => return Ok(()),
                                Some(WatchRequest { kind: Some(Kind::Ack(ack)) }) => {
                                    let mut latency = None;
                                    tracker.update(id, |s| {
                                        if s.sent_version.as_deref() == Some(ack.version.as_str()) {
                                            latency = s.sent_at.take().map(|t| t.elapsed());
                                        }
                                        s.acked_version = Some(ack.version.clone());
                                        s.nack = None;
                                        if !ack.ca_version.is_empty() {
                                            s.ca_version = Some(ack.ca_version.clone());
                                        }
                                        s.revocation_version = Some(ack.revocation_version.clone());
                                    });
                                    metrics.policy_acks.inc();
                                    if let Some(l) = latency {
                                        metrics.policy_push_seconds.observe(l.as_secs_f64());
                                    }
                                }
                                Some(WatchRequest { kind: Some(Kind::Nack(nack)) }) => {
                                    metrics.policy_nacks.inc();
                                    tracing::warn!(peer = %peer, version = %nack.version, reason = %nack.reason, "sidecar rejected a policy snapshot");
                                    tracker.update(id, |s| s.nack = Some((nack.version.clone(), nack.reason.chars().take(512).collect())));
                                }
                                Some(_) => return Err(Status::invalid_argument("hello may only be sent once")),
                            },
                            _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                                return Err(Status::unavailable("control plane is shutting down"));
                            }
                        }
                    }
                }
            }
            .await;
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
            tracker
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            metrics.policy_streams.dec();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
