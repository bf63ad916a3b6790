//! `pqmesh.discovery.v1.Discovery/Watch`: per-destination answers to "which mesh identity serves
//! IP:port?" — or, for a Service address, "which endpoints, each with which identity?". Each stream keeps its own subscriptions and is re-evaluated when the endpoint table
//! changes; only changed answers are sent. Callers must present a mesh certificate.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use pqmesh_mtls::grpc_tls::authenticated_peer;
use pqmesh_proto::discovery::v1::discovery_server::Discovery;
use pqmesh_proto::discovery::v1::{Destination, DestinationUpdate, DiscoveryRequest, Endpoint};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::endpoints::{Answer, EndpointTable};
use crate::metrics::Metrics;

/// Bound on one sidecar's subscriptions (its app's distinct destinations).
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

pub struct DiscoveryService {
    pub table: watch::Receiver<Arc<EndpointTable>>,
    pub metrics: Arc<Metrics>,
    /// Flips to true when the control plane stops: every stream ends so sidecars reconnect.
    pub stopping: watch::Receiver<bool>,
    /// A revoked sidecar gets no answers.
    pub revoked: watch::Receiver<Arc<crate::revocation::RevocationList>>,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<DestinationUpdate, Status>> + Send>>;

fn parse(dest: &Destination) -> Result<(IpAddr, u16), Status> {
    let ip = dest.ip.parse().map_err(|_| {
        Status::invalid_argument(format!("destination ip {:?} is not an IP address", dest.ip))
    })?;
    let port = u16::try_from(dest.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            Status::invalid_argument(format!("destination port {} is not a TCP port", dest.port))
        })?;
    Ok((ip, port))
}

fn destination(addr: SocketAddr) -> Destination {
    Destination {
        ip: addr.ip().to_string(),
        port: addr.port().into(),
    }
}

fn update(ip: IpAddr, port: u16, answer: &Answer) -> DestinationUpdate {
    let (meshed, identity, endpoints) = match answer {
        Answer::Meshed(id) => (true, id.to_string(), vec![]),
        Answer::NotMeshed => (false, String::new(), vec![]),
        Answer::Service(backends) => {
            // Clients that do not read `endpoints` dial the Service address (kube-proxy picks
            // the backend): give them an identity only when every backend has that one.
            let first = backends.first().and_then(|b| b.identity.as_ref());
            let single =
                first.filter(|id| backends.iter().all(|b| b.identity.as_ref() == Some(*id)));
            let endpoints = backends
                .iter()
                .map(|b| Endpoint {
                    address: Some(destination(b.addr)),
                    meshed: b.identity.is_some(),
                    identity: b
                        .identity
                        .as_ref()
                        .map(|i| i.to_string())
                        .unwrap_or_default(),
                })
                .collect();
            (
                single.is_some(),
                single.map(|i| i.to_string()).unwrap_or_default(),
                endpoints,
            )
        }
    };
    DestinationUpdate {
        destination: Some(destination(SocketAddr::new(ip, port))),
        meshed,
        identity,
        endpoints,
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = UpdateStream;

    async fn watch(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let peer = authenticated_peer(&request, "Discovery")?;
        let serial = request
            .extensions()
            .get::<pqmesh_mtls::grpc_tls::PeerInfo>()
            .and_then(|p| p.peer_serial.clone());
        if self.revoked.borrow().covers(&peer, serial.as_deref()) {
            self.metrics.revoked_streams_closed.inc();
            return Err(Status::permission_denied(format!("{peer} is revoked")));
        }
        let mut requests = request.into_inner();
        let mut table = self.table.clone();
        let mut stopping = self.stopping.clone();
        let mut revoked = self.revoked.clone();
        let metrics = self.metrics.clone();
        let (tx, rx) = mpsc::channel(256);
        metrics.discovery_streams.inc();
        tracing::info!(peer = %peer, "discovery stream opened");
        tokio::spawn(async move {
            let mut subscriptions: HashMap<(IpAddr, u16), Answer> = HashMap::new();
            let result: Result<(), Status> = async {
                loop {
                    tokio::select! {
                        message = requests.message() => {
                            let Some(message) = message? else { return Ok(()) };
                            for dest in &message.unsubscribe {
                                subscriptions.remove(&parse(dest)?);
                            }
                            let current = table.borrow().clone();
                            for dest in &message.subscribe {
                                let key = parse(dest)?;
                                if !subscriptions.contains_key(&key) && subscriptions.len() >= MAX_SUBSCRIPTIONS {
                                    return Err(Status::resource_exhausted(format!(
                                        "more than {MAX_SUBSCRIPTIONS} subscribed destinations")));
                                }
                                let answer = current.lookup(key.0, key.1);
                                tx.send(Ok(update(key.0, key.1, &answer))).await.map_err(|_| Status::cancelled("gone"))?;
                                subscriptions.insert(key, answer);
                            }
                        }
                        changed = table.changed() => {
                            if changed.is_err() {
                                return Ok(());
                            }
                            let current = table.borrow_and_update().clone();
                            for (key, answer) in subscriptions.iter_mut() {
                                let fresh = current.lookup(key.0, key.1);
                                if fresh != *answer {
                                    tx.send(Ok(update(key.0, key.1, &fresh))).await.map_err(|_| Status::cancelled("gone"))?;
                                    *answer = fresh;
                                }
                            }
                        }
                        _ = tx.closed() => return Ok(()),
                        _ = async {
                            if revoked.wait_for(|r| r.covers(&peer, serial.as_deref())).await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        } => {
                            metrics.revoked_streams_closed.inc();
                            return Err(Status::permission_denied(format!("{peer} is revoked")));
                        }
                        _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                            return Err(Status::unavailable("control plane is shutting down"));
                        }
                    }
                }
            }
            .await;
            if let Err(status) = result {
                tracing::warn!(peer = %peer, error = %status.message(), "discovery stream ended with an error");
                let _ = tx.send(Err(status)).await;
            }
            metrics.discovery_streams.dec();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
