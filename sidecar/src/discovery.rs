//! Which mesh identity serves a destination the app dialled. Answers come from the control
//! plane's per-destination `Discovery/Watch` stream (mutual TLS with the workload certificate),
//! are cached, and are kept fresh by the same stream. When the control plane is unreachable the
//! last answers stay in use; a destination never answered cannot be resolved (fail closed).
//! A Service address resolves to its endpoints, each with its own identity (or unmeshed); the
//! outbound side picks among them ([`crate::balance`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pqmesh_mtls::SpiffeId;
use pqmesh_proto::discovery::v1::discovery_client::DiscoveryClient;
use pqmesh_proto::discovery::v1::{Destination, DestinationUpdate, DiscoveryRequest};
use tokio::sync::{mpsc, watch};

use crate::control_plane::{Link, Retry, Stream};
use crate::tls::MeshTls;

/// How long a new destination waits for its first answer before the connection is refused.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on cached destinations (oldest-subscribed are dropped first).
pub const MAX_CACHED: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Meshed(SpiffeId),
    NotMeshed,
    /// A Service: the client picks an endpoint and dials its address directly.
    Service(Arc<[Endpoint]>),
}

/// One endpoint of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `None`: no sidecar there (plaintext only, if this workload allows unmeshed destinations).
    pub identity: Option<SpiffeId>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error("no discovery answer for {0} (control plane unreachable or slow)")]
    Unavailable(SocketAddr),
    #[error("the control plane named an invalid identity {identity:?} for {addr}")]
    BadIdentity { addr: SocketAddr, identity: String },
    #[error("service {0} has no usable endpoint")]
    NoEndpoints(SocketAddr),
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
        let Some(dest) = update.destination.as_ref() else {
            return;
        };
        let Some(addr) = socket_addr(dest) else {
            return;
        };
        let answer = answer(addr, &update);
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

fn socket_addr(dest: &Destination) -> Option<SocketAddr> {
    let ip = dest.ip.parse().ok()?;
    let port = u16::try_from(dest.port).ok().filter(|p| *p != 0)?;
    Some(SocketAddr::new(ip, port))
}

/// What an update means. An endpoint with an unreadable address or identity is left out (never
/// dialled in plaintext); a Service left with no endpoint is an error, not "unmeshed".
fn answer(addr: SocketAddr, update: &DestinationUpdate) -> Result<Resolved, DiscoveryError> {
    let identity = |text: &str| {
        text.parse::<SpiffeId>()
            .map_err(|_| DiscoveryError::BadIdentity {
                addr,
                identity: text.to_owned(),
            })
    };
    if update.endpoints.is_empty() {
        return if update.meshed {
            identity(&update.identity).map(Resolved::Meshed)
        } else {
            Ok(Resolved::NotMeshed)
        };
    }
    let mut endpoints = Vec::with_capacity(update.endpoints.len());
    let mut first_error = None;
    for e in &update.endpoints {
        let Some(ep_addr) = e.address.as_ref().and_then(socket_addr) else {
            tracing::warn!(service = %addr, "discovery sent an endpoint without a valid address; left out");
            continue;
        };
        let id = if e.meshed {
            match identity(&e.identity) {
                Ok(id) => Some(id),
                Err(err) => {
                    tracing::warn!(service = %addr, endpoint = %ep_addr, error = %err, "endpoint left out");
                    first_error.get_or_insert(err);
                    continue;
                }
            }
        } else {
            None
        };
        endpoints.push(Endpoint {
            addr: ep_addr,
            identity: id,
        });
    }
    match (endpoints.is_empty(), first_error) {
        (true, Some(err)) => Err(err),
        (true, None) => Err(DiscoveryError::NoEndpoints(addr)),
        (false, _) => Ok(Resolved::Service(endpoints.into())),
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
        let mut retry = Retry::default();
        loop {
            let Ok(current) = tls.wait_for(|t| t.is_some()).await.map(|t| t.clone()) else {
                return;
            };
            let Some(current) = current else { continue };
            let ended = self.stream_once(&addr, &server_id, &current, &link).await;
            let was_open = link.is_open(Stream::Discovery);
            link.down(
                Stream::Discovery,
                ended
                    .as_ref()
                    .err()
                    .map_or("stream closed by the control plane", |e| e),
            );
            tokio::time::sleep(retry.after(was_open, rand::random())).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use pqmesh_proto::discovery::v1::Endpoint as WireEndpoint;

    const SVC: &str = "10.96.0.10:80";
    const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
    const API2: &str = "spiffe://cluster.local/ns/shop/sa/api-v2";

    fn dest(addr: &str) -> Destination {
        destination(&addr.parse().unwrap())
    }

    fn wire(addr: &str, identity: Option<&str>) -> WireEndpoint {
        WireEndpoint {
            address: Some(dest(addr)),
            meshed: identity.is_some(),
            identity: identity.unwrap_or_default().into(),
        }
    }

    fn service(endpoints: Vec<WireEndpoint>) -> DestinationUpdate {
        DestinationUpdate {
            destination: Some(dest(SVC)),
            meshed: false,
            identity: String::new(),
            endpoints,
        }
    }

    fn ep(addr: &str, identity: Option<&str>) -> Endpoint {
        Endpoint {
            addr: addr.parse().unwrap(),
            identity: identity.map(|i| i.parse().unwrap()),
        }
    }

    #[test]
    fn a_service_resolves_to_its_endpoints_each_with_its_identity() {
        let got = answer(
            SVC.parse().unwrap(),
            &service(vec![
                wire("10.0.0.2:8080", Some(API)),
                wire("10.0.0.5:8080", Some(API2)),
                wire("10.0.0.7:8080", None),
            ]),
        );
        assert_eq!(
            got,
            Ok(Resolved::Service(
                vec![
                    ep("10.0.0.2:8080", Some(API)),
                    ep("10.0.0.5:8080", Some(API2)),
                    ep("10.0.0.7:8080", None),
                ]
                .into()
            ))
        );
    }

    #[test]
    fn bad_endpoints_are_left_out_never_turned_into_plaintext() {
        let svc: SocketAddr = SVC.parse().unwrap();
        let bad_id = WireEndpoint {
            identity: "not a spiffe id".into(),
            ..wire("10.0.0.3:8080", Some(API))
        };
        let no_addr = WireEndpoint {
            address: None,
            ..wire("10.0.0.4:8080", Some(API))
        };
        let port_0 = wire("10.0.0.6:0", Some(API));
        let bad_ip = WireEndpoint {
            address: Some(Destination {
                ip: "10.0.0.300".into(),
                port: 8080,
            }),
            ..wire("10.0.0.8:8080", Some(API))
        };
        let got = answer(
            svc,
            &service(vec![
                bad_id.clone(),
                no_addr.clone(),
                port_0,
                bad_ip,
                wire("10.0.0.2:8080", Some(API)),
            ]),
        );
        assert_eq!(
            got,
            Ok(Resolved::Service(
                vec![ep("10.0.0.2:8080", Some(API))].into()
            ))
        );
        // Nothing usable left: an error (fail closed), not "unmeshed".
        assert!(matches!(
            answer(svc, &service(vec![bad_id])),
            Err(DiscoveryError::BadIdentity { .. })
        ));
        assert_eq!(
            answer(svc, &service(vec![no_addr])),
            Err(DiscoveryError::NoEndpoints(svc))
        );
    }

    #[test]
    fn a_pod_address_answer_is_unchanged() {
        let addr: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let meshed = DestinationUpdate {
            destination: Some(dest("10.0.0.2:8080")),
            meshed: true,
            identity: API.into(),
            endpoints: vec![],
        };
        assert_eq!(
            answer(addr, &meshed),
            Ok(Resolved::Meshed(API.parse().unwrap()))
        );
        let unmeshed = DestinationUpdate {
            meshed: false,
            identity: String::new(),
            ..meshed
        };
        assert_eq!(answer(addr, &unmeshed), Ok(Resolved::NotMeshed));
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_updates_replace_the_cached_answer() {
        let (discovery, _task) = Discovery::new();
        let svc: SocketAddr = SVC.parse().unwrap();
        discovery.apply(service(vec![
            wire("10.0.0.2:8080", Some(API)),
            wire("10.0.0.5:8080", Some(API2)),
        ]));
        assert_eq!(
            discovery.resolve(svc).await,
            Ok(Resolved::Service(
                vec![
                    ep("10.0.0.2:8080", Some(API)),
                    ep("10.0.0.5:8080", Some(API2))
                ]
                .into()
            ))
        );
        // Scaled down and a pod replaced: the next resolve (the next connection) sees it.
        discovery.apply(service(vec![wire("10.0.0.9:8080", Some(API2))]));
        assert_eq!(
            discovery.resolve(svc).await,
            Ok(Resolved::Service(
                vec![ep("10.0.0.9:8080", Some(API2))].into()
            ))
        );
    }
}
