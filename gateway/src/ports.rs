//! The sockets the listeners are served on: one per port (listeners sharing a port are told
//! apart by SNI for HTTPS and `Host` for HTTP), bound and closed as the configuration in force
//! gains and loses ports. Each connection reads the configuration current when it arrives.
//! Connections are capped per port and per client address, and a request head must arrive
//! within [`HEADER_READ_TIMEOUT`] (review 7, F6).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::program::{label_of, Programmed};
use crate::proxy::{self, Bound, Edge};
use crate::watchdog::{Activity, Tracked, Watched};
use crate::{outside_tls, routes, StartError};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1 request head must arrive within this (the sidecar's value): slowloris clients are
/// closed (review 7, F6).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of file descriptors): no busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Open outside connections allowed at once (`PQMESH_GATEWAY_MAX_CONNECTIONS`, `..._PER_IP`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per listener port.
    pub per_port: usize,
    /// Per client IP address, all ports together.
    pub per_ip: usize,
}

enum PortState {
    Serving(SocketAddr, JoinHandle<()>),
    /// Binding failed (the message): the port's listeners are not programmed.
    Failed(String),
}

/// The bound ports.
pub struct Ports {
    host: IpAddr,
    ports: Mutex<BTreeMap<u16, PortState>>,
    per_port: usize,
    per_ip: Arc<PerIp>,
}

impl Ports {
    pub fn new(host: IpAddr, limits: Limits) -> Self {
        Ports {
            host,
            ports: Mutex::default(),
            per_port: limits.per_port,
            per_ip: Arc::new(PerIp {
                limit: limits.per_ip,
                open: Mutex::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, PortState>> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address `port` is served on.
    pub fn addr(&self, port: u16) -> Option<SocketAddr> {
        match self.lock().get(&port) {
            Some(PortState::Serving(a, _)) => Some(*a),
            _ => None,
        }
    }

    /// Why `port` is not served, if binding it failed.
    pub fn failure(&self, port: u16) -> Option<String> {
        match self.lock().get(&port) {
            Some(PortState::Failed(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Binds the ports `config` needs and closes the others. With `strict`, a port that does
    /// not bind is an error; otherwise it is remembered (and retried at the next change).
    pub async fn reconcile(
        &self,
        edge: &Arc<Edge>,
        config: &Programmed,
        strict: bool,
    ) -> Result<(), StartError> {
        let wanted: std::collections::BTreeSet<u16> =
            config.model.listeners.iter().map(|l| l.port).collect();
        self.lock().retain(|port, state| {
            let keep = wanted.contains(port) && matches!(state, PortState::Serving(..));
            if let (false, PortState::Serving(_, task)) = (keep, &state) {
                task.abort();
            }
            keep
        });
        for port in wanted {
            if self.addr(port).is_some() {
                continue;
            }
            let addr = SocketAddr::new(self.host, port);
            let state = match TcpListener::bind(addr).await {
                Ok(socket) => {
                    let local = socket.local_addr().unwrap_or(addr);
                    tracing::info!(port, %local, "listening");
                    let caps = Caps {
                        port: Arc::new(tokio::sync::Semaphore::new(self.per_port)),
                        per_ip: self.per_ip.clone(),
                    };
                    let task = tokio::spawn(serve_port(edge.clone(), port, socket, caps));
                    PortState::Serving(local, task)
                }
                Err(e) if strict => {
                    return Err(StartError::Listener {
                        listener: format!("port {port}"),
                        reason: format!("bind {addr}: {e}"),
                    })
                }
                Err(e) => {
                    tracing::warn!(port, error = %e, "cannot bind a listener port; its listeners are not programmed");
                    PortState::Failed(format!("bind {addr}: {e}"))
                }
            };
            self.lock().insert(port, state);
        }
        Ok(())
    }
}

impl Drop for Ports {
    fn drop(&mut self) {
        for state in self.lock().values() {
            if let PortState::Serving(_, task) = state {
                task.abort();
            }
        }
    }
}

/// Follows the configuration in force: ports come and go with it.
pub async fn follow(
    ports: Arc<Ports>,
    edge: Arc<Edge>,
    mut config: watch::Receiver<Arc<Programmed>>,
) {
    while config.changed().await.is_ok() {
        let current = config.borrow_and_update().clone();
        let _ = ports.reconcile(&edge, &current, false).await;
    }
}

/// Open connections per client IP (all ports), capped (review 7, F6).
struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection counted against its IP; uncounted when dropped.
struct IpSlot(Arc<PerIp>, IpAddr);

impl PerIp {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A port's connection caps: its own, and the per-address one all ports share.
struct Caps {
    port: Arc<tokio::sync::Semaphore>,
    per_ip: Arc<PerIp>,
}

async fn serve_port(edge: Arc<Edge>, port: u16, socket: TcpListener, caps: Caps) {
    let refused = |reason: &str| {
        edge.metrics
            .connections_refused
            .with_label_values(&[&port.to_string(), reason])
            .inc();
    };
    loop {
        let (tcp, client) = match socket.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and kin: say so and back off instead of spinning.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = caps.port.clone().try_acquire_owned() else {
            tracing::debug!(port, %client, "connection refused: the listener's connection limit is reached");
            refused("listener_limit");
            continue;
        };
        let Some(slot) = caps.per_ip.admit(client.ip()) else {
            tracing::debug!(port, %client, "connection refused: the client's connection limit is reached");
            refused("per_ip_limit");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let edge = edge.clone();
        tokio::spawn(async move {
            serve_connection(edge, port, tcp, client).await;
            drop((permit, slot));
        });
    }
}

/// Drives a connection until it ends or its [`Activity`] passes its deadline (then the
/// connection is dropped, which closes it). A macro, not a generic async fn: through one, rustc
/// cannot prove the connection future `Send` for every lifetime its service borrows.
macro_rules! watched {
    ($conn:ident, $activity:ident, $edge:ident, $port:ident, $client:ident) => {
        tokio::pin!($conn);
        loop {
            tokio::select! {
                _ = &mut $conn => break,
                _ = tokio::time::sleep_until($activity.deadline()) => {
                    if $activity.expired() {
                        timed_out(&$edge, $port, $client);
                        break;
                    }
                }
            }
        }
    };
}

fn timed_out(edge: &Edge, port: u16, client: SocketAddr) {
    tracing::debug!(port, %client, "connection closed: no request in time, or idle");
    edge.metrics
        .connections_timed_out
        .with_label_values(&[&port.to_string()])
        .inc();
}

async fn serve_connection(
    edge: Arc<Edge>,
    port: u16,
    tcp: tokio::net::TcpStream,
    client: SocketAddr,
) {
    let config = edge.config.borrow().clone();
    let candidates = config.on_port(port);
    let Some(first) = candidates.first() else {
        return; // the port's listeners are gone
    };
    let https = config.tls[*first].is_some();
    let scheme = if https { "https" } else { "http" };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let service = |bound: Bound, activity: Arc<Activity>| {
        let edge = edge.clone();
        hyper::service::service_fn(move |req| {
            let (edge, bound) = (edge.clone(), bound.clone());
            let in_flight = activity.request();
            async move {
                let response = proxy::handle(edge, bound, client, scheme, req).await;
                // In flight until the body is sent: a long download is not idle.
                let response = response.map(|b| {
                    use http_body_util::BodyExt;
                    Tracked::new(b, in_flight).boxed()
                });
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    if !https {
        let activity = Activity::new();
        let io = TokioIo::new(Watched::new(tcp, activity.clone()));
        let conn = builder.serve_connection(io, service(Bound::Port(port), activity.clone()));
        watched!(conn, activity, edge, port, client);
        return;
    }
    let fail = |label: &str, reason: &str| {
        edge.metrics
            .outside_handshake_failures
            .with_label_values(&[label, reason])
            .inc();
    };
    let port_label = format!("port {port}");
    let handshake = async {
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = acceptor.await.map_err(|e| (port_label.clone(), e))?;
        let sni = start.client_hello().server_name().unwrap_or("").to_owned();
        let Some(index) = routes::listener_for(&config.model.listeners, &candidates, &sni) else {
            return Err((
                port_label.clone(),
                std::io::Error::other(format!("no listener for SNI {sni:?}")),
            ));
        };
        let label = label_of(&config.model.listeners[index]);
        let tls = config.tls[index]
            .clone()
            .ok_or_else(|| (label.clone(), std::io::Error::other("not TLS")))?;
        let stream = start
            .into_stream(tls)
            .await
            .map_err(|e| (label.clone(), e))?;
        Ok((label, stream))
    };
    let (label, stream) = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err((label, e))) => {
            tracing::debug!(listener = %label, %client, error = %e, "outside TLS handshake failed");
            fail(&label, pqmesh_mtls::handshake_failure_reason(&e));
            return;
        }
        Err(_) => {
            fail(&port_label, "timeout");
            return;
        }
    };
    let conn = stream.get_ref().1;
    let group = conn
        .negotiated_key_exchange_group()
        .map(|g| pqmesh_mtls::provider::group_name(g.name()))
        .unwrap_or_else(|| "none".to_owned());
    let version = outside_tls::version_name(conn.protocol_version());
    edge.metrics
        .outside_handshakes
        .with_label_values(&[label.as_str(), version, group.as_str()])
        .inc();
    // The listener the SNI chose serves every request on this connection.
    let bound = Bound::Listener {
        label: Arc::from(label.as_str()),
        port,
    };
    // The first request's deadline starts after the handshake (which has its own).
    let activity = Activity::new();
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let conn = builder.serve_connection(io, service(bound, activity.clone()));
    watched!(conn, activity, edge, port, client);
}
