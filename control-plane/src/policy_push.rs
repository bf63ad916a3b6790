//! `pqmesh.policy.v1.Policy/Watch`: per-workload snapshots pushed to sidecars, with ACK/NACK
//! tracking. A stream is authenticated by the sidecar's certificate: the namespace that selects
//! policies is the certificate's, never one the sidecar claims.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pqmesh_mtls::grpc_tls::authenticated_peer;
use pqmesh_policy::Workload;
use pqmesh_proto::policy::v1::policy_server::Policy;
use pqmesh_proto::policy::v1::watch_request::Kind;
use pqmesh_proto::policy::v1::{PolicySnapshot, WatchRequest};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::policies::PolicyState;

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
            let rejected = s
                .nack
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
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PolicySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Policy for PolicyService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let peer = authenticated_peer(&request, "Policy/Watch")?;
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
                    sent_at: None,
                },
            );
        self.metrics.policy_streams.inc();
        tracing::info!(peer = %peer, pod = %hello.pod_name, "policy stream opened");

        let (tx, rx) = mpsc::channel(4);
        let mut state = self.state.clone();
        let mut stopping = self.stopping.clone();
        let tracker = self.tracker.clone();
        let metrics = self.metrics.clone();
        let mut last_sent = Some(hello.current_version).filter(|v| !v.is_empty());
        let already_running = last_sent.clone();
        tokio::spawn(async move {
            let mut first = true;
            let result: Result<(), Status> = async {
                loop {
                    // (Re)compile for this workload and push if it changed.
                    let current = state.borrow_and_update().clone();
                    match current.set.compile(&workload, &current.secrets) {
                        Ok(compiled) => {
                            let version = compiled.version();
                            let selected = current.set.selecting(&workload);
                            tracker.update(id, |s| s.policies = selected);
                            if first && already_running.as_deref() == Some(version.as_str()) {
                                // Reconnected with what it already runs: nothing to resend.
                                tracker.update(id, |s| {
                                    s.sent_version = Some(version.clone());
                                    s.acked_version = Some(version.clone());
                                });
                            } else if last_sent.as_deref() != Some(version.as_str()) || first {
                                let json = serde_json::to_vec(&compiled).map_err(|e| Status::internal(e.to_string()))?;
                                tx.send(Ok(PolicySnapshot { version: version.clone(), policy_json: json }))
                                    .await
                                    .map_err(|_| Status::cancelled("gone"))?;
                                metrics.policy_snapshots_sent.inc();
                                tracker.update(id, |s| {
                                    s.sent_version = Some(version.clone());
                                    s.sent_at = Some(Instant::now());
                                });
                                last_sent = Some(version);
                            }
                        }
                        Err(e) => {
                            metrics.policy_compile_errors.inc();
                            tracing::error!(peer = %peer, error = %e, "cannot compile this workload's policy; it keeps its last snapshot");
                        }
                    }
                    first = false;
                    // Wait for a policy change, an ACK/NACK, or shutdown.
                    loop {
                        tokio::select! {
                            changed = state.changed() => {
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
