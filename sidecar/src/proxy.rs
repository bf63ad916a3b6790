//! The data plane. Inbound (15006): find where the connection was going (the app port), tell a
//! mesh client (TLS ClientHello with ALPN `pqmesh/1`) from plaintext, terminate mTLS and check the
//! peer's identity, then proxy HTTP per request or other bytes as opaque TCP to the app.
//! Outbound (15001) is [`crate::outbound`]; the relay and accept loop here serve both.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pqmesh_mtls::tls::{HandshakeInfo, ALPN_MESH};
use pqmesh_mtls::{PeerPattern, SpiffeId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::InboundMode;
use crate::delivery::Delivery;
use crate::drain::Drain;
use crate::http_proxy::{self, AppClients};
use crate::metrics::Metrics;
use crate::original_dst::{canonical, OriginalDst};
use crate::outbound_observe::Observed;
use crate::revocation::{until_revoked, RevokedState};
use crate::sniff::{self, AppProtocol, Transport};
use crate::tls::MeshTls;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an inbound connection may stay silent before it is judged (server-first protocols
/// send nothing first: after this they are treated as plaintext / opaque TCP).
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(2);

pub type TlsState = watch::Receiver<Option<Arc<MeshTls>>>;

/// A connection on its way to the app, whatever it arrived as (mTLS or plaintext).
pub trait AppIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AppIo for T {}
type AppStream = Box<dyn AppIo>;

/// Bytes already read from a stream, replayed before the rest of it.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = (self.prefix.len() - self.offset).min(buf.remaining());
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                // Replayed: give the sniffed bytes back (2 KiB or more per connection, for as
                // long as the connection stays open otherwise).
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    // Vectored writes pass through: without them hyper copies every body into one buffer first,
    // and rustls sends one TLS record per system call instead of a batch.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads until `classify` decides, the limit is reached, EOF, or the timeout passes.
/// Returns the verdict (`None` on timeout or EOF) and every byte read.
pub(crate) async fn sniff<S, T>(
    stream: &mut S,
    limit: usize,
    classify: impl Fn(&[u8]) -> Option<T>,
) -> (Option<T>, Vec<u8>)
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        if let Some(v) = classify(&buf) {
            return (Some(v), buf);
        }
        if buf.len() >= limit {
            return (None, buf);
        }
        let mut chunk = vec![0u8; (limit - buf.len()).min(16 * 1024)];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return (None, buf),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

pub struct Inbound {
    /// Where to send admitted traffic when the connection was not redirected (explicit mode);
    /// `None`: such connections are refused.
    pub app_addr: Option<SocketAddr>,
    /// Original destination ports that may be served; `None` = all.
    pub ports: Option<Vec<u16>>,
    pub allow: Vec<PeerPattern>,
    pub mode: InboundMode,
    /// The sidecar's own ports: an original destination among them would loop.
    pub own_ports: Vec<u16>,
    pub opaque_ports: Vec<u16>,
    /// HTTP/1.1 ports relayed as bytes while the port's policy is identity-only.
    pub http_relay_ports: Vec<u16>,
    pub tls: TlsState,
    pub original_dst: Arc<dyn OriginalDst>,
    /// Towards the configured app address (explicit mode).
    pub clients: Arc<AppClients>,
    /// Towards original destinations (redirected connections).
    pub redirected_clients: Arc<AppClients>,
    pub metrics: Arc<Metrics>,
    /// Pushed AccessPolicies; once one selects the workload it replaces `allow` and `mode`.
    pub policy: crate::policy::PolicyState,
    pub trust_domain: String,
    /// Revoked peers are refused after the handshake and their open connections closed.
    pub revoked: RevokedState,
    pub access_log: bool,
}

/// Accepts until shutdown begins; each connection is handled on its own task (tracked for the
/// drain) and a refusal is logged with `what`.
pub(crate) async fn accept_until<F, Fut, E>(
    listener: TcpListener,
    drain: Drain,
    what: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let mut shutdown = drain.shutdown();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => { tracing::warn!(error = %e, what, "accept failed"); continue; }
            },
        };
        let connection = tracing::Instrument::instrument(
            handle(tcp, remote),
            tracing::info_span!("connection", direction = what, %remote),
        );
        let guard = drain.track();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(reason) = connection.await {
                tracing::info!(%remote, %reason, "{what} connection refused or failed");
            }
        });
    }
}

pub async fn serve_inbound(listener: TcpListener, inbound: Arc<Inbound>, drain: Drain) {
    accept_until(listener, drain, "inbound", move |tcp, remote| {
        let inbound = inbound.clone();
        async move { inbound.handle(tcp, remote).await }
    })
    .await
}

impl Inbound {
    fn deny(&self, outcome: &str, reason: &'static str) -> Result<(), &'static str> {
        self.metrics
            .connections
            .with_label_values(&["inbound", outcome])
            .inc();
        Err(reason)
    }

    /// Where a connection's traffic goes: its original destination when iptables redirected it
    /// (see `delivery`), else the configured app address.
    fn app_target(&self, tcp: &TcpStream) -> Result<Delivery, (&'static str, &'static str)> {
        let local = tcp
            .local_addr()
            .map(canonical)
            .map_err(|_| ("denied_loop", "no local address"))?;
        match self.original_dst.original_dst(tcp).map(canonical) {
            Ok(orig) if orig != local => {
                if self.own_ports.contains(&orig.port()) {
                    return Err((
                        "denied_loop",
                        "original destination is one of the sidecar's own ports",
                    ));
                }
                if self
                    .ports
                    .as_ref()
                    .is_some_and(|p| !p.contains(&orig.port()))
                {
                    return Err((
                        "denied_port",
                        "original destination port is not a served port",
                    ));
                }
                Ok(Delivery::OriginalDst(orig))
            }
            _ => self.app_addr.map(Delivery::Configured).ok_or((
                "denied_not_redirected",
                "connection was not redirected and no app address is configured",
            )),
        }
    }

    async fn handle(&self, mut tcp: TcpStream, remote: SocketAddr) -> Result<(), &'static str> {
        let _ = tcp.set_nodelay(true);
        let target = match self.app_target(&tcp) {
            Ok(t) => t,
            Err((outcome, reason)) => return self.deny(outcome, reason),
        };
        // Until the first snapshot is applied, whether a policy selects this workload is not
        // known: the allow-list could admit what the policy refuses (review 8 F6), and the deny
        // list (revoked peers, denied clients) is unknown, not empty (review 12 F5). /ready is
        // false meanwhile, so endpoints send nothing here yet. The policy task applies a
        // snapshot's mesh state before its policy; both are checked all the same.
        if self.policy.borrow().is_none() || !self.revoked.borrow().received() {
            return self.deny("no_policy", "waiting for the first policy snapshot");
        }
        let (transport, hello) =
            sniff(&mut tcp, sniff::MAX_HELLO_BYTES, sniff::classify_transport).await;
        let stream = Prefixed::new(hello, tcp);
        let active = self.active_policy();
        let plaintext_ok = match &active {
            Some(a) => a.policy.permissive_on(target.addr().port()),
            None => self.mode == InboundMode::Permissive,
        };
        match transport {
            Some(Transport::MeshTls) => self.handle_mesh(stream, remote, target).await,
            _ if !plaintext_ok => {
                tracing::warn!(%remote, "plaintext or non-mesh TLS refused (STRICT)");
                self.deny("denied_plaintext", "not a mesh client (STRICT mode)")
            }
            _ => {
                self.metrics
                    .connections
                    .with_label_values(&["inbound", "plaintext_permitted"])
                    .inc();
                self.serve_app(Box::new(stream), None, target).await;
                Ok(())
            }
        }
    }

    /// The pushed policy, if one selects this workload.
    fn active_policy(&self) -> Option<Arc<crate::policy::ActivePolicy>> {
        self.policy
            .borrow()
            .clone()
            .filter(|a| !a.policy.is_empty())
    }

    async fn handle_mesh(
        &self,
        stream: Prefixed<TcpStream>,
        remote: SocketAddr,
        target: Delivery,
    ) -> Result<(), &'static str> {
        let Some(tls) = self.tls.borrow().clone() else {
            return self.deny("no_certificate", "no workload certificate yet");
        };
        let acceptor = TlsAcceptor::from(tls.server.clone());
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = pqmesh_mtls::handshake_failure_reason(&e);
                tracing::info!(%remote, error = %e, "inbound handshake failed");
                self.metrics
                    .handshake_failures
                    .with_label_values(&["inbound", reason])
                    .inc();
                return Err("TLS handshake failed");
            }
            Err(_) => {
                self.metrics
                    .handshake_failures
                    .with_label_values(&["inbound", "timeout"])
                    .inc();
                return Err("TLS handshake timed out");
            }
        };
        let hs = HandshakeInfo::of(stream.get_ref().1);
        self.metrics
            .handshakes
            .with_label_values(&["inbound", &hs.group, hs.peer_scheme])
            .inc();
        if hs.alpn.as_deref() != Some(ALPN_MESH) {
            return self.deny("denied_alpn", "peer did not negotiate ALPN pqmesh/1");
        }
        let Some(peer) = hs.peer_id else {
            return self.deny("denied_identity", "peer certificate has no SPIFFE ID");
        };
        // With a pushed policy, its `peers` decide (per request); otherwise the local allow-list.
        if self.active_policy().is_none() && !self.allow.iter().any(|p| p.matches(&peer)) {
            tracing::warn!(%remote, peer = %peer, "peer identity not allowed");
            return self.deny("denied_identity", "peer identity not on the allow-list");
        }
        if self
            .revoked
            .borrow()
            .covers(&peer, hs.peer_serial.as_deref())
        {
            tracing::warn!(%remote, peer = %peer, serial = hs.peer_serial.as_deref().unwrap_or("unknown"), "revoked peer refused");
            return self.deny("denied_revoked", "peer identity or certificate is revoked");
        }
        tracing::debug!(%remote, peer = %peer, group = %hs.group, target = %target.addr(), "inbound connection allowed");
        self.metrics
            .connections
            .with_label_values(&["inbound", "allowed"])
            .inc();
        let revoked = until_revoked(self.revoked.clone(), peer.clone(), hs.peer_serial);
        tokio::select! {
            _ = self.serve_app(Box::new(stream), Some(peer.clone()), target) => {}
            _ = revoked => {
                self.metrics.revoked_connections_closed.with_label_values(&["inbound"]).inc();
                tracing::warn!(%remote, peer = %peer, "closed a connection: the peer was revoked");
            }
        }
        Ok(())
    }
}

impl Inbound {
    /// Hands a connection to the app: HTTP per request (policy per request), anything else as
    /// opaque bytes (policy on the peer identity only).
    ///
    /// The stream is boxed: one copy of the HTTP/1, HTTP/2 and relay code serves mTLS and
    /// plaintext connections alike, instead of one per stream type (smaller code, fewer resident
    /// pages per sidecar; a virtual call per read or write costs nothing measurable).
    async fn serve_app(&self, mut stream: AppStream, peer: Option<SpiffeId>, delivery: Delivery) {
        let target = delivery.addr();
        let declared_opaque = self.opaque_ports.contains(&target.port());
        let (protocol, prefix) = if declared_opaque {
            (Some(AppProtocol::Opaque), Vec::new())
        } else {
            sniff(&mut stream, 8192, sniff::classify_app).await
        };
        // Undecided: a client that said nothing may face a server that speaks first (relayed
        // opaque); bytes that may still become an HTTP head go to the HTTP path (fail closed).
        let protocol = match protocol {
            None if prefix.is_empty() => Some(AppProtocol::Opaque),
            None => Some(AppProtocol::Http1),
            known => known,
        };
        let stream = Prefixed::new(prefix, stream);
        let ctx = http_proxy::Ctx::new(
            peer,
            target,
            match delivery {
                Delivery::OriginalDst(_) => self.redirected_clients.clone(),
                Delivery::Configured(_) => self.clients.clone(),
            },
            "inbound",
            self.metrics.clone(),
            Some(self.policy.clone()),
            self.trust_domain.clone(),
            self.access_log,
        )
        .with_revoked(self.revoked.clone());
        match protocol {
            Some(AppProtocol::Http1)
                if self.http_relay_ports.contains(&target.port())
                    && self
                        .admits_unparsed(target.port(), ctx.peer.as_ref())
                        .is_ok() =>
            {
                // Every request from this peer would be allowed unread: relay the bytes. The
                // guard keeps the identity header and protocol switches out.
                let guarded = crate::opaque_guard::OpaqueGuard::http_relay(stream);
                self.relay_judged(guarded, ctx.peer, delivery, true).await;
            }
            Some(AppProtocol::Http1) => {
                self.metrics
                    .http_connections
                    .with_label_values(&["inbound", "http1"])
                    .inc();
                if let Err(e) = http_proxy::serve_http1(stream, ctx).await {
                    tracing::debug!(error = %e, "HTTP/1 connection ended with an error");
                }
            }
            Some(AppProtocol::Http2) => {
                self.metrics
                    .http_connections
                    .with_label_values(&["inbound", "http2"])
                    .inc();
                if let Err(e) = http_proxy::serve_http2(stream, ctx).await {
                    tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                }
            }
            Some(AppProtocol::Opaque) | None => {
                let guarded = crate::opaque_guard::OpaqueGuard::new(stream);
                self.relay_judged(guarded, ctx.peer, delivery, false).await;
            }
        }
    }

    /// Whether the policy admits `peer` on `port` with no request to judge (opaque TCP, an HTTP
    /// relay): only an identity-only policy can. Without a pushed policy, the allow-list
    /// judged the peer at the handshake.
    fn admits_unparsed(&self, port: u16, peer: Option<&SpiffeId>) -> Result<(), &'static str> {
        let Some(active) = self.active_policy() else {
            return Ok(());
        };
        match active.policy.evaluate(&pqmesh_policy::Request {
            port,
            peer,
            trust_domain: &self.trust_domain,
            http: None,
        }) {
            pqmesh_policy::Decision::Allow { .. } => Ok(()),
            pqmesh_policy::Decision::Deny(d) => Err(d.reason()),
        }
    }

    /// Resolves when a policy change means `peer` may no longer send unparsed bytes to `port`
    /// (a relayed connection then ends: HTTP comes back on the per-request path).
    async fn until_unparsed_refused(&self, port: u16, peer: Option<&SpiffeId>) {
        let mut changes = self.policy.clone();
        loop {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            if self.admits_unparsed(port, peer).is_err() {
                return;
            }
        }
    }

    /// Relays a connection the policy judges by its peer alone: opaque TCP, or HTTP/1.1 on an
    /// HTTP relay port (`http`: its requests observed for the golden metrics). The policy is
    /// checked now and at every change; a connection it stops admitting is closed.
    async fn relay_judged<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        peer: Option<SpiffeId>,
        delivery: Delivery,
        http: bool,
    ) {
        let target = delivery.addr();
        let has_policy = self.active_policy().is_some();
        if let Err(reason) = self.admits_unparsed(target.port(), peer.as_ref()) {
            self.metrics
                .policy_decisions
                .with_label_values(&["inbound", "deny", reason])
                .inc();
            self.metrics
                .connections
                .with_label_values(&["inbound", "denied_policy"])
                .inc();
            tracing::info!(peer = %peer.as_ref().map_or_else(|| "none".to_owned(), |p| p.to_string()), reason, "TCP connection denied by policy");
            return;
        }
        if has_policy {
            self.metrics
                .policy_decisions
                .with_label_values(&["inbound", "allow", "allowed"])
                .inc();
        }
        let app = match crate::delivery::connect(delivery, CONNECT_TIMEOUT).await {
            Ok(app) => app,
            Err(e) => {
                self.metrics
                    .connections
                    .with_label_values(&["inbound", "app_unreachable"])
                    .inc();
                tracing::info!(%target, error = %e, "local app unreachable");
                return;
            }
        };
        let relayed = async {
            if http {
                let label = self.metrics.peer_label(peer.as_ref());
                let app = Observed::new(app, "inbound", self.metrics.clone(), label)
                    .with_idle_timeout(http_proxy::HEADER_READ_TIMEOUT);
                relay(stream, app, "inbound", &self.metrics).await
            } else {
                relay(stream, app, "inbound", &self.metrics).await
            }
        };
        tokio::select! {
            _ = relayed => {}
            _ = self.until_unparsed_refused(target.port(), peer.as_ref()) => {
                self.metrics
                    .connections
                    .with_label_values(&["inbound", "closed_policy"])
                    .inc();
                tracing::info!(peer = %peer.as_ref().map_or_else(|| "none".to_owned(), |p| p.to_string()), "closed a relayed connection: the policy no longer admits it unparsed");
            }
        }
    }
}

/// Copies both ways until both sides are done; an EOF on one side is passed on as a half-close.
pub(crate) async fn relay<A, B>(mut mesh: A, mut app: B, direction: &'static str, metrics: &Metrics)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // A guard, so a connection cut short (revoked peer, drain deadline) is uncounted too.
    struct Open<'a>(&'a prometheus::IntGauge);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    metrics.connections_open.inc();
    let _open = Open(&metrics.connections_open);
    match crate::copy::bidirectional(&mut mesh, &mut app).await {
        Ok((to_app, from_app)) => {
            metrics
                .bytes
                .with_label_values(&[direction, "to_app"])
                .inc_by(to_app);
            metrics
                .bytes
                .with_label_values(&[direction, "from_app"])
                .inc_by(from_app);
        }
        Err(e) => tracing::debug!(error = %e, direction, "connection ended with an error"),
    }
}
