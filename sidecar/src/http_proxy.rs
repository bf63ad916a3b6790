//! HTTP-aware inbound: after mTLS (or plaintext in PERMISSIVE mode) requests are proxied one by
//! one to the app (where `delivery` says: the original destination, else 127.0.0.1) over pooled
//! connections, HTTP/1.1 (WebSocket is the one upgrade) or HTTP/2 with prior knowledge. Each
//! request head is first made canonical ([`crate::canonical`]): the policy judges the form the
//! app receives. The app learns the caller's verified SPIFFE ID from `x-pqmesh-peer-identity`,
//! stamped last.
//! Hostile clients are bounded here: request heads over [`MAX_HEADER_BYTES`] get 431, a head not
//! complete within [`HEADER_READ_TIMEOUT`] closes the connection (slowloris), and request bodies
//! over [`MAX_REQUEST_BODY_BYTES`] get 413 without (Content-Length) or before the rest reaches
//! the app (chunked: the app's request is aborted); a client that reads nothing of its answer
//! for [`WRITE_STALL_TIMEOUT`] (a slow reader) is disconnected.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::{BoxBody, MapFrame};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pqmesh_mtls::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::canonical;
use crate::delivery::AppConnector;

pub const PEER_IDENTITY_HEADER: &str = "x-pqmesh-peer-identity";

/// Largest request head (request line + headers; HTTP/2: decoded header list) accepted: 431 above.
/// Envoy's default is 60 KiB, nginx's 32 KiB.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A request head must arrive within this time of the connection (or the previous request)
/// waiting for it; a slowloris client is disconnected after it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection whose client takes no bytes of a pending write for this long is closed.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body passed to the app: 413 above.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024 * 1024;
/// HTTP/2 streams one client may have open at once on a connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Idle pooled connections kept per app port: a burst of N concurrent requests must not leave N
/// idle connections (2 descriptors each) behind for the idle timeout.
pub const MAX_IDLE_APP_CONNECTIONS: usize = 32;

pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;
/// A request body on its way to the app, cut off at [`MAX_REQUEST_BODY_BYTES`].
type AppBody = MapFrame<Limited<Incoming>, fn(Frame<Bytes>) -> Frame<Bytes>>;

/// Request trailers never reach the app: nothing judged them, and HTTP/2 trailers can carry any
/// header (the identity header, `authorization`, method overrides). Found from outside.
fn drop_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    if frame.is_trailers() {
        Frame::data(Bytes::new())
    } else {
        frame
    }
}

/// Pooled clients towards the local app (one pool per app address, by URI authority).
pub struct AppClients {
    h1: Client<AppConnector, AppBody>,
    h2: Client<AppConnector, AppBody>,
}

impl Default for AppClients {
    /// Explicit mode: the configured app address.
    fn default() -> Self {
        Self::new(false)
    }
}

impl AppClients {
    /// `original_dst`: requests go to their original destination, else 127.0.0.1 (`delivery`).
    pub fn new(original_dst: bool) -> Self {
        let connector = AppConnector { original_dst };
        Self {
            h1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(MAX_IDLE_APP_CONNECTIONS)
                .build(connector),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(MAX_IDLE_APP_CONNECTIONS)
                .build(connector),
        }
    }
}

/// Per-connection context of every request on it.
pub struct Ctx {
    pub peer: Option<SpiffeId>,
    pub target: SocketAddr,
    pub clients: Arc<AppClients>,
    pub direction: &'static str,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The workload's policy, read at every request (a change applies to open connections too).
    pub policy: Option<crate::policy::PolicyState>,
    pub trust_domain: String,
    /// Log one line per request (`PQMESH_ACCESS_LOG`).
    pub access_log: bool,
    /// What every request carries in [`PEER_IDENTITY_HEADER`] (the peer's SPIFFE ID).
    peer_header: Option<HeaderValue>,
    /// This connection's golden request series (latency and per-peer counts).
    series: crate::metrics::RequestSeries,
    /// `target` as a URI authority, parsed once per connection rather than per request.
    authority: Option<hyper::http::uri::Authority>,
    /// The mesh deny list: verified tokens of listed OAuth clients and subjects are refused.
    revoked: Option<crate::revocation::RevokedState>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        peer: Option<SpiffeId>,
        target: SocketAddr,
        clients: Arc<AppClients>,
        direction: &'static str,
        metrics: Arc<crate::metrics::Metrics>,
        policy: Option<crate::policy::PolicyState>,
        trust_domain: String,
        access_log: bool,
    ) -> Self {
        let peer_header = peer
            .as_ref()
            .and_then(|p| HeaderValue::from_str(&p.to_string()).ok());
        let series = metrics.request_series(direction, metrics.peer_label(peer.as_ref()));
        let authority = target.to_string().parse().ok();
        Ctx {
            peer,
            target,
            clients,
            direction,
            metrics,
            policy,
            trust_domain,
            access_log,
            peer_header,
            series,
            authority,
            revoked: None,
        }
    }

    /// Refuses verified tokens of the clients and subjects the control plane denies.
    pub fn with_revoked(mut self, revoked: crate::revocation::RevokedState) -> Self {
        self.revoked = Some(revoked);
        self
    }

    /// Records one finished request in the latency histogram and the per-peer counter.
    fn observe(&self, status: u16, elapsed: Duration) {
        self.series.observe(status, elapsed);
    }
}

/// Marks a response the sidecar produced because the policy denied the request.
#[derive(Clone, Copy)]
struct Denied;

/// `forward` plus the latency histogram and the access log line (never headers or the query,
/// where credentials travel).
async fn forward_observed(req: Request<Incoming>, ctx: &Ctx, h2: bool) -> Response<ProxyBody> {
    let started = std::time::Instant::now();
    // Debug level: a span per request costs more than the rest of the observation at 1,000 rps;
    // `POST /logging` with a debug filter turns it on for a running sidecar.
    let span = tracing::debug_span!("request", method = %req.method());
    let forward = |req| tracing::Instrument::instrument(forward(req, ctx, h2), span);
    if !ctx.access_log {
        let resp = forward(req).await;
        ctx.observe(resp.status().as_u16(), started.elapsed());
        return resp;
    }
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(256).collect();
    let resp = forward(req).await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    ctx.observe(status, elapsed);
    let decision = if resp.extensions().get::<Denied>().is_some() {
        "deny"
    } else {
        "allow"
    };
    tracing::info!(
        target: "pqmesh::access",
        direction = ctx.direction,
        peer = %ctx.peer.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        %method,
        %path,
        status,
        decision,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// Fails writes that make no progress for `limit`: a client that stops reading its answer
/// would otherwise hold the connection (and what hyper buffered for it) for as long as it likes.
struct WriteStallGuard<IO> {
    inner: IO,
    limit: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> WriteStallGuard<IO> {
    fn new(inner: IO, limit: Duration) -> Self {
        WriteStallGuard {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// After the inner write returned `Pending`: pending too, unless the stall lasted `limit`.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        result: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match result {
            Poll::Ready(r) => {
                self.stalled_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteStallGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteStallGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progressed(result, cx)
    }
}

pub async fn serve_http1<IO>(io: IO, ctx: Ctx) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ctx);
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(forward_observed(req, &ctx, false).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(
            TokioIo::new(WriteStallGuard::new(io, WRITE_STALL_TIMEOUT)),
            service,
        )
        .with_upgrades()
        .await
}

pub async fn serve_http2<IO>(io: IO, ctx: Ctx) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ctx);
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(forward_observed(req, &ctx, true).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .serve_connection(
            TokioIo::new(WriteStallGuard::new(io, WRITE_STALL_TIMEOUT)),
            service,
        )
        .await
}

pub(crate) fn error_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("pqmesh: {text}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp
}

/// Whether `req` declares a body larger than [`MAX_REQUEST_BODY_BYTES`] (an unparsable
/// Content-Length never gets this far: hyper answers it with 400).
fn declares_oversized_body(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > MAX_REQUEST_BODY_BYTES as u64)
}

/// Whether a failed app request failed because the client's body went over the limit.
fn body_over_limit(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

async fn forward(mut req: Request<Incoming>, ctx: &Ctx, h2: bool) -> Response<ProxyBody> {
    // The head is made canonical before the policy sees it: the policy judges what the app gets.
    let upgrade = match canonical::canonicalize(&req.method().clone(), req.headers_mut(), h2) {
        Ok(upgrade) => upgrade,
        Err(refusal) => {
            ctx.metrics
                .requests
                .with_label_values(&[ctx.direction, refusal.outcome()])
                .inc();
            let mut resp = error_response(refusal.status(), &refusal.to_string());
            resp.extensions_mut().insert(Denied);
            return resp;
        }
    };
    if let Err(mut denied) = authorize(&mut req, ctx).await {
        denied.extensions_mut().insert(Denied);
        return denied;
    }
    if declares_oversized_body(&req) {
        ctx.metrics
            .requests
            .with_label_values(&[ctx.direction, "body_too_large"])
            .inc();
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    // The identity header is the sidecar's statement, added after everything a client controls.
    canonical::stamp_identity(req.headers_mut(), ctx.peer_header.as_ref());
    if h2 {
        if let Some(authority) = req.uri().authority().map(|a| a.to_string()) {
            if let Ok(v) = HeaderValue::from_str(&authority) {
                req.headers_mut().insert("x-forwarded-host", v);
            }
        }
    }
    match app_uri(req.uri(), ctx) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => {
            ctx.metrics
                .requests
                .with_label_values(&[ctx.direction, "bad_request"])
                .inc();
            return error_response(StatusCode::BAD_REQUEST, "unparseable request target");
        }
    }
    if !h2 && !req.body().is_end_stream() {
        // A request with a body gets its own app connection: an app that does not read a body
        // (many ignore one on GET) would read it as the next request on a pooled connection —
        // one nobody judged. Found from outside.
        if upgrade == canonical::Upgrade::WebSocket {
            return error_response(StatusCode::BAD_REQUEST, "a WebSocket handshake has no body");
        }
        req.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let websocket_key = req.headers().get(hyper::header::SEC_WEBSOCKET_KEY).cloned();
    let server_upgrade =
        (upgrade == canonical::Upgrade::WebSocket).then(|| hyper::upgrade::on(&mut req));
    let mut req = req.map(|body| {
        Limited::new(body, MAX_REQUEST_BODY_BYTES)
            .map_frame(drop_trailers as fn(Frame<Bytes>) -> Frame<Bytes>)
    });
    let result = if h2 {
        ctx.clients.h2.request(req).await
    } else {
        *req.version_mut() = Version::HTTP_11;
        ctx.clients.h1.request(req).await
    };
    match result {
        Ok(resp)
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                && (server_upgrade.is_none()
                    || !canonical::websocket_accepted(websocket_key.as_ref(), resp.headers())) =>
        {
            // Only a forwarded WebSocket handshake that the app really accepted (a correct
            // Sec-WebSocket-Accept) may switch: anything else would turn this checked connection
            // into a pipe nobody checks (an app that speaks h2c, or answers 101 from a handler).
            tracing::warn!(target = %ctx.target, "the app switched protocols on a request that asked for no upgrade");
            ctx.metrics
                .requests
                .with_label_values(&[ctx.direction, "unrequested_upgrade"])
                .inc();
            error_response(
                StatusCode::BAD_GATEWAY,
                "the application switched protocols without an upgrade the mesh forwarded",
            )
        }
        Ok(mut resp) => {
            let outcome = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                "upgraded"
            } else {
                "forwarded"
            };
            ctx.metrics
                .requests
                .with_label_values(&[ctx.direction, outcome])
                .inc();
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(server_upgrade) = server_upgrade {
                    let client_upgrade = hyper::upgrade::on(&mut resp);
                    tokio::spawn(async move {
                        match tokio::try_join!(server_upgrade, client_upgrade) {
                            Ok((downstream, upstream)) => {
                                let mut downstream = TokioIo::new(downstream);
                                let mut upstream = TokioIo::new(upstream);
                                let _ =
                                    tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
                                        .await;
                            }
                            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                        }
                    });
                }
            } else if !h2 {
                canonical::strip_hop_by_hop(resp.headers_mut());
            }
            resp.map(|b| b.boxed())
        }
        Err(e) if body_over_limit(&e) => {
            ctx.metrics
                .requests
                .with_label_values(&[ctx.direction, "body_too_large"])
                .inc();
            error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        }
        Err(e) => {
            let why = crate::delivery::unreachable_in(&e).map(|u| u.to_string());
            tracing::info!(target = %ctx.target, error = %e, unreachable = why.as_deref().unwrap_or("no"), "app request failed");
            ctx.metrics
                .requests
                .with_label_values(&[ctx.direction, "app_unreachable"])
                .inc();
            let why = why.unwrap_or_else(|| "the application is unreachable".to_owned());
            error_response(StatusCode::BAD_GATEWAY, &why)
        }
    }
}

/// The request's URI towards the app: `http://<target><path and query>`. An origin-form target
/// (the usual case) reuses the already-parsed path and query and the authority parsed once per
/// connection; any other form is written out and parsed as before (same answer, same refusals).
fn app_uri(uri: &hyper::Uri, ctx: &Ctx) -> Result<hyper::Uri, ()> {
    let pq = uri.path_and_query();
    if let (Some(pq), Some(authority)) =
        (pq.filter(|p| p.as_str().starts_with('/')), &ctx.authority)
    {
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(pq.clone());
        return hyper::Uri::from_parts(parts).map_err(|_| ());
    }
    let path = pq.map(|p| p.as_str()).unwrap_or("/");
    format!("http://{}{}", ctx.target, path)
        .parse()
        .map_err(|_| ())
}

/// Applies the workload's policy to a request: path normalisation, bearer token (JWT or phantom
/// token), peer, scopes and claims. On allow the request is rewritten in place (normalised path;
/// a phantom token replaced by the JWT the issuer signed); on deny the answer is returned.
async fn authorize(req: &mut Request<Incoming>, ctx: &Ctx) -> Result<(), Response<ProxyBody>> {
    use pqmesh_policy::{Decision, HttpRequest, Request as PolicyRequest, TokenState};
    let Some(active) = ctx.policy.as_ref().and_then(|p| p.borrow().clone()) else {
        return Ok(());
    };
    if active.policy.is_empty() {
        return Ok(());
    }
    let deny = |status: StatusCode, reason: &'static str, text: &str, www: Option<String>| {
        ctx.metrics
            .policy_decisions
            .with_label_values(&[ctx.direction, "deny", reason])
            .inc();
        let mut resp = error_response(status, text);
        if let Some(v) = www.and_then(|w| HeaderValue::from_str(&w).ok()) {
            resp.headers_mut()
                .insert(hyper::header::WWW_AUTHENTICATE, v);
        }
        resp
    };
    let path = match pqmesh_policy::path::normalize(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            return Err(deny(
                StatusCode::BAD_REQUEST,
                "bad_path",
                &e.to_string(),
                None,
            ))
        }
    };
    let port = ctx.target.port();
    // Peers first: a caller no policy admits never makes this sidecar call the OAuth server.
    if let Err(d) = active
        .policy
        .check_peer(port, ctx.peer.as_ref(), &ctx.trust_domain)
    {
        tracing::info!(peer = %ctx.peer.as_ref().map_or_else(|| "none".to_owned(), |p| p.to_string()), reason = d.reason(), "request denied by policy");
        let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::FORBIDDEN);
        return Err(deny(
            status,
            d.reason(),
            &format!("denied: {}", d.reason()),
            None,
        ));
    }
    let bearer = match bearer_token(req.headers()) {
        Ok(b) => b,
        Err(why) => {
            return Err(deny(
                StatusCode::UNAUTHORIZED,
                "token_invalid",
                why,
                Some("Bearer error=\"invalid_request\"".to_owned()),
            ))
        }
    };
    let authenticated = match (bearer, &active.validator) {
        (Some(token), Some(validator)) if active.policy.wants_token(port) => {
            Some(validator.authenticate(&token).await)
        }
        _ => None,
    };
    let token_state = match (&bearer_present(req.headers()), &authenticated) {
        (_, Some(Ok(a))) => TokenState::Valid {
            issuer: &a.issuer,
            claims: &a.claims,
        },
        (_, Some(Err(e))) if e.status() == 503 => TokenState::Unavailable(e.metric_reason()),
        (_, Some(Err(e))) => TokenState::Invalid(e.metric_reason()),
        (true, None) if active.policy.wants_token(port) => {
            TokenState::Invalid("no issuer can validate this token")
        }
        _ => TokenState::Absent,
    };
    let decision = active.policy.evaluate(&PolicyRequest {
        port,
        peer: ctx.peer.as_ref(),
        trust_domain: &ctx.trust_domain,
        http: Some(HttpRequest {
            method: req.method().as_str(),
            path: &path,
            token: token_state,
        }),
    });
    // The control plane's deny list of OAuth clients and subjects (pushed in the mesh state),
    // checked on the verified token before the policy's decision takes effect.
    let denied = match (&authenticated, &ctx.revoked) {
        (Some(Ok(a)), Some(r)) => r.borrow().denies(&a.claims),
        _ => None,
    };
    if let Some(what) = denied {
        let reason = if what == "client" {
            "denied_client"
        } else {
            "denied_subject"
        };
        tracing::info!(peer = %ctx.peer.as_ref().map_or_else(|| "none".to_owned(), |p| p.to_string()), reason, "request denied: the token's client or subject is on the deny list");
        return Err(deny(
            StatusCode::FORBIDDEN,
            reason,
            &format!("denied: {reason}"),
            None,
        ));
    }
    match decision {
        Decision::Allow { policy, rule } => {
            ctx.metrics
                .policy_decisions
                .with_label_values(&[ctx.direction, "allow", "allowed"])
                .inc();
            let rule = rule.map_or_else(|| "none".to_owned(), |r| r.to_string());
            ctx.metrics
                .policy_allows
                .with_label_values(&[&policy, &rule])
                .inc();
            if let Some(Ok(a)) = &authenticated {
                if a.phantom {
                    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", a.jwt)) {
                        req.headers_mut().insert(hyper::header::AUTHORIZATION, v);
                    }
                }
            }
            let query = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            if let Ok(pq) = format!("{path}{query}").parse::<hyper::http::uri::PathAndQuery>() {
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = Some(pq);
                if let Ok(uri) = hyper::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            Ok(())
        }
        Decision::Deny(d) => {
            let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::FORBIDDEN);
            let www = match (&d, &authenticated) {
                (pqmesh_policy::Denial::TokenInvalid(_), Some(Err(e))) => {
                    e.www_authenticate().or_else(|| d.www_authenticate())
                }
                _ => d.www_authenticate(),
            };
            tracing::info!(peer = %ctx.peer.as_ref().map_or_else(|| "none".to_owned(), |p| p.to_string()), reason = d.reason(), status = d.status(), "request denied by policy");
            Err(deny(
                status,
                d.reason(),
                &format!("denied: {}", d.reason()),
                www,
            ))
        }
    }
}

fn bearer_present(headers: &hyper::HeaderMap) -> bool {
    headers.contains_key(hyper::header::AUTHORIZATION)
}

/// The bearer token of `Authorization: Bearer <token>`; `Err` for a malformed header (several
/// Authorization headers, another scheme, non-ASCII, empty token).
fn bearer_token(headers: &hyper::HeaderMap) -> Result<Option<String>, &'static str> {
    let mut values = headers.get_all(hyper::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let text = value
        .to_str()
        .map_err(|_| "Authorization header is not ASCII")?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or("Authorization header is not 'Bearer <token>'")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("Authorization scheme is not Bearer");
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err("empty or malformed bearer token");
    }
    Ok(Some(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_with_no_progress_fails_after_the_limit_and_progress_resets_it() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut guarded = WriteStallGuard::new(near, Duration::from_secs(30));
        // Fill the pipe: nobody reads `far`.
        guarded.write_all(&[0u8; 1024]).await.unwrap();
        let stuck = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let err = guarded.write_all(&[1u8; 4096]).await.unwrap_err();
            (err.kind(), started.elapsed())
        });
        // Reading a little in time resets the clock once; then the reader stops again.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let mut buf = [0u8; 512];
        far.read_exact(&mut buf).await.unwrap();
        let (kind, after) = stuck.await.unwrap();
        assert_eq!(kind, std::io::ErrorKind::TimedOut);
        assert!(
            after >= Duration::from_secs(50) && after < Duration::from_secs(51),
            "30 s measured from the last progress (at 20 s): {after:?}"
        );
        drop(far);
    }
}
