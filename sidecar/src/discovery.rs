//! Which mesh identity serves a destination the app dialled. Answers come from the control
//! plane's per-destination `Discovery/Watch` stream (mutual TLS with the workload certificate),
//! are cached, and are kept fresh by the same stream. When the control plane is unreachable the
//! last answers stay in use; a destination never answered cannot be resolved (fail closed).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pqmesh_mtls::SpiffeId;
use pqmesh_proto::discovery::v1::discovery_client::DiscoveryClient;
use pqmesh_proto::discovery::v1::{Destination, DestinationUpdate, DiscoveryRequest};
use tokio::sync::{mpsc, watch};

use crate::control_plane::{Link, Stream};
use crate::identity::backoff;
use crate::tls::MeshTls;

/// How long a new destination waits for its first answer before the connection is refused.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on cached destinations (oldest-subscribed are dropped first).
pub const MAX_CACHED: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Meshed(SpiffeId),
    NotMeshed,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error("no discovery answer for {0} (control plane unreachable or slow)")]
    Unavailable(SocketAddr),
    #[error("the control plane named an invalid identity {identity:?} for {addr}")]
    BadIdentity { addr: SocketAddr, identity: String },
}

#[derive(Default)]
struct State {
    answers: HashMap<SocketAddr, Result<Resolved, DiscoveryError>>,
    order: std::collections::VecDeque<SocketAddr>,
    pending: HashSet<SocketAddr>,
}

/// Shared between connections (`resolve`) and the stream task.
#[derive(Clone)]
pub struct Discovery {
    state: Arc<Mutex<State>>,
    version: watch::Sender<u64>,
    subscribe: mpsc::UnboundedSender<SocketAddr>,
    /// True once a stream was established; never reset (an outage is not a readiness matter).
    ever_connected: watch::Sender<bool>,
}

pub struct DiscoveryTask {
    discovery: Discovery,
    subscribe_rx: mpsc::UnboundedReceiver<SocketAddr>,
}

impl Discovery {
    pub fn new() -> (Self, DiscoveryTask) {
        let (subscribe, subscribe_rx) = mpsc::unbounded_channel();
        let discovery = Discovery {
            state: Arc::default(),
            version: watch::channel(0).0,
            subscribe,
            ever_connected: watch::channel(false).0,
        };
        let task = DiscoveryTask {
            discovery: discovery.clone(),
            subscribe_rx,
        };
        (discovery, task)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once a stream to the control plane was established (readiness); it stays true
    /// through later outages, when cached answers keep serving.
    pub fn ever_connected(&self) -> watch::Receiver<bool> {
        self.ever_connected.subscribe()
    }

    pub async fn resolve(&self, addr: SocketAddr) -> Result<Resolved, DiscoveryError> {
        let mut version = self.version.subscribe();
        {
            let mut state = self.lock();
            if let Some(answer) = state.answers.get(&addr) {
                return answer.clone();
            }
            if state.pending.insert(addr) {
                let _ = self.subscribe.send(addr);
            }
        }
        let wait = async {
            loop {
                if version.changed().await.is_err() {
                    return Err(DiscoveryError::Unavailable(addr));
                }
                if let Some(answer) = self.lock().answers.get(&addr) {
                    return answer.clone();
                }
            }
        };
        tokio::time::timeout(RESOLVE_TIMEOUT, wait)
            .await
            .unwrap_or(Err(DiscoveryError::Unavailable(addr)))
    }

    fn apply(&self, update: DestinationUpdate) {
        let Some(dest) = update.destination else {
            return;
        };
        let Ok(ip) = dest.ip.parse() else { return };
        let Ok(port) = u16::try_from(dest.port) else {
            return;
        };
        let addr = SocketAddr::new(ip, port);
        let answer = if update.meshed {
            update
                .identity
                .parse::<SpiffeId>()
                .map(Resolved::Meshed)
                .map_err(|_| DiscoveryError::BadIdentity {
                    addr,
                    identity: update.identity.clone(),
                })
        } else {
            Ok(Resolved::NotMeshed)
        };
        let mut state = self.lock();
        state.pending.remove(&addr);
        if state.answers.insert(addr, answer).is_none() {
            state.order.push_back(addr);
        }
        while state.order.len() > MAX_CACHED {
            if let Some(old) = state.order.pop_front() {
                state.answers.remove(&old);
            }
        }
        drop(state);
        self.version.send_modify(|v| *v += 1);
    }

    fn subscribed(&self) -> Vec<SocketAddr> {
        let state = self.lock();
        state
            .answers
            .keys()
            .chain(state.pending.iter())
            .copied()
            .collect()
    }
}

fn destination(addr: &SocketAddr) -> Destination {
    Destination {
        ip: addr.ip().to_string(),
        port: addr.port().into(),
    }
}

impl DiscoveryTask {
    /// Keeps a Watch stream open for as long as the sidecar runs, reconnecting with back-off.
    pub async fn run(
        mut self,
        addr: String,
        server_id: SpiffeId,
        mut tls: watch::Receiver<Option<Arc<MeshTls>>>,
        link: Link,
    ) {
        let mut failures = 0u32;
        loop {
            let Ok(current) = tls.wait_for(|t| t.is_some()).await.map(|t| t.clone()) else {
                return;
            };
            let Some(current) = current else { continue };
            match self.stream_once(&addr, &server_id, &current, &link).await {
                Ok(()) => {
                    failures = 0;
                    link.down(Stream::Discovery, "stream closed by the control plane");
                }
                Err(e) => {
                    failures += 1;
                    link.down(Stream::Discovery, &e);
                }
            }
            tokio::time::sleep(
                backoff(failures.max(1), rand::random()).min(Duration::from_secs(30)),
            )
            .await;
        }
    }

    async fn stream_once(
        &mut self,
        addr: &str,
        server_id: &SpiffeId,
        tls: &MeshTls,
        link: &Link,
    ) -> Result<(), String> {
        let channel = tls.control_plane_channel(addr, server_id).await?;
        let (tx, rx) = mpsc::channel(256);
        let resubscribe: Vec<Destination> = self
            .discovery
            .subscribed()
            .iter()
            .map(destination)
            .collect();
        if !resubscribe.is_empty() {
            let _ = tx
                .send(DiscoveryRequest {
                    subscribe: resubscribe,
                    unsubscribe: vec![],
                })
                .await;
        }
        let mut updates = DiscoveryClient::new(channel)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("watch: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        self.discovery.ever_connected.send_replace(true);
        link.connected(Stream::Discovery);
        loop {
            tokio::select! {
                Some(first) = self.subscribe_rx.recv() => {
                    let mut batch = vec![destination(&first)];
                    while let Ok(more) = self.subscribe_rx.try_recv() {
                        batch.push(destination(&more));
                    }
                    if tx.send(DiscoveryRequest { subscribe: batch, unsubscribe: vec![] }).await.is_err() {
                        return Err("request stream closed".into());
                    }
                }
                update = updates.message() => match update {
                    Ok(Some(update)) => self.discovery.apply(update),
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
                },
            }
        }
    }
}
