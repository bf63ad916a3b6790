//! The webhook's HTTPS server: HTTP/1.1, `POST /inject` only, JSON bodies up to 1 MiB.
//!
//! TLS: local mode serves the control plane's own certificate (issued by the mesh CA, renewed
//! with it): [`follow_serving_config`] reuses the gRPC listener's certificate resolver under a
//! different protocol policy. Kubernetes mode serves an ECDSA certificate through a
//! [`SwappableCert`], which `kubernetes::webhook_tls` replaces whenever the CA in force changes
//! (root rotation), so no replica needs a restart to follow it. The caller is the kube-apiserver, a Go client that does not
//! offer X25519MLKEM768 in every supported version and may negotiate TLS 1.2, so this one
//! listener allows TLS 1.2 and 1.3 and classical key exchange (`KeyExchangePolicy::
//! AllowClassical`, hybrid still preferred). It carries no mesh traffic and no secrets: the
//! AdmissionReview content is what the API server already holds. No client certificate is
//! asked for (the API server does not present one unless configured to).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pqmesh_mtls::{crypto_provider, KeyExchangePolicy};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{review, InjectConfig, InjectMetrics};

/// Largest AdmissionReview accepted. A pod is far smaller; the API server's own request limit
/// is 3 MiB, so 1 MiB leaves room for any real pod and bounds memory per request.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// An oversized body is read and discarded up to this much before the 413 is sent, so the
/// client sees the answer instead of a connection reset; beyond it the connection is dropped.
const DRAIN_LIMIT: usize = 8 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers and body must arrive within this (the API server's webhook timeout is at most 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 512;
const PATH: &str = "/inject";

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot listen on {addr} for the injection webhook: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("injection webhook TLS config: {0}")]
    Tls(rustls::Error),
    #[error("injection webhook metrics: {0}")]
    Metrics(prometheus::Error),
}

/// The webhook's TLS config around a certificate resolver: TLS 1.2 and 1.3, hybrid key
/// exchange preferred and classical groups allowed, no client auth, ALPN `http/1.1`.
pub fn webhook_server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut provider = crypto_provider(KeyExchangePolicy::AllowClassical)
        .as_ref()
        .clone();
    // The mesh provider keeps TLS 1.3 suites only; put the TLS 1.2 ECDHE AEAD suites back here.
    provider.cipher_suites.extend(
        rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .into_iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_))),
    );
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate resolver whose certificate can be replaced while the server runs: every
/// handshake after [`SwappableCert::swap`] presents the new certificate, connections already
/// established keep theirs.
#[derive(Debug)]
pub struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl SwappableCert {
    pub fn new(initial: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self(RwLock::new(initial)))
    }

    pub fn swap(&self, next: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere while swapping; the value is still whole.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Follows the control plane's serving config (renewals included) with a webhook config for
/// the same certificate. The returned channel closes when `serving`'s sender goes away, which
/// stops [`serve`].
pub fn follow_serving_config(
    mut serving: watch::Receiver<Arc<ServerConfig>>,
) -> Result<watch::Receiver<Arc<ServerConfig>>, rustls::Error> {
    let initial = webhook_server_config(serving.borrow_and_update().cert_resolver.clone())?;
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                changed = serving.changed() => if changed.is_err() { return },
            }
            let resolver = serving.borrow_and_update().cert_resolver.clone();
            match webhook_server_config(resolver) {
                Ok(config) => {
                    let _ = tx.send(config);
                }
                Err(e) => tracing::error!(error = %e,
                    "cannot build the webhook TLS config for the renewed certificate; keeping the previous one"),
            }
        }
    });
    Ok(rx)
}

/// Binds `addr` and serves the webhook in the background with the TLS config `tls` holds (see
/// [`follow_serving_config`], [`SwappableCert`]); returns the bound address. The server stops
/// when `tls`'s sender is dropped.
pub async fn spawn(
    addr: SocketAddr,
    tls: watch::Receiver<Arc<ServerConfig>>,
    cfg: InjectConfig,
    registry: &prometheus::Registry,
) -> Result<SocketAddr, SpawnError> {
    let metrics = InjectMetrics::register(registry).map_err(SpawnError::Metrics)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SpawnError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| SpawnError::Bind { addr, source })?;
    tokio::spawn(serve(listener, tls, Arc::new(cfg), metrics));
    tracing::info!(addr = %bound, path = PATH, "injection webhook serving");
    Ok(bound)
}

/// Accepts connections until `tls`'s sender is dropped; each connection gets the TLS config
/// current when it arrives.
pub async fn serve(
    listener: TcpListener,
    mut tls: watch::Receiver<Arc<ServerConfig>>,
    cfg: Arc<InjectConfig>,
    metrics: InjectMetrics,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            changed = tls.changed() => {
                if changed.is_err() {
                    tracing::info!("injection webhook stopped");
                    return;
                }
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%remote, limit = MAX_CONNECTIONS, "webhook connection limit reached; closing");
            continue;
        };
        let acceptor = TlsAcceptor::from(tls.borrow().clone());
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "webhook TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "webhook TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let cfg = cfg.clone();
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(handle(req, &cfg, &metrics).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    cfg: &InjectConfig,
    metrics: &InjectMetrics,
) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the webhook serves POST /inject\n",
        );
    }
    if req.method() != Method::POST {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: /inject takes POST\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        metrics.record("error");
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Type {content_type:?}: an AdmissionReview is application/json\n"),
        );
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        metrics.record("error");
        drain(req.into_body()).await;
        return too_large();
    }
    let bytes = match tokio::time::timeout(REQUEST_TIMEOUT, read_body(req.into_body())).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyError::TooLarge)) => {
            metrics.record("error");
            return too_large();
        }
        Ok(Err(BodyError::Read(e))) => {
            metrics.record("error");
            return text(
                StatusCode::BAD_REQUEST,
                format!("reading the request body failed: {e}\n"),
            );
        }
        Err(_) => {
            metrics.record("error");
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time\n",
            );
        }
    };
    match review(&bytes, cfg) {
        Ok(reviewed) => {
            let label = reviewed.outcome.metric_label();
            metrics.record(label);
            match &reviewed.detail {
                Some(detail) if label == "refused" => {
                    tracing::warn!(pod = %reviewed.subject, reason = %detail, "refused a pod that cannot be injected")
                }
                _ => tracing::info!(pod = %reviewed.subject, outcome = label, "admission review"),
            }
            let mut resp = Response::new(Full::new(Bytes::from(reviewed.body)));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => {
            metrics.record("error");
            tracing::warn!(error = %e, "unreadable admission review");
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
    }
}

enum BodyError {
    TooLarge,
    Read(hyper::Error),
}

/// The whole body, or `TooLarge` as soon as it passes [`MAX_BODY_BYTES`] (the rest is drained).
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > MAX_BODY_BYTES {
                drain(body).await;
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// Reads and discards the rest of an oversized body (bounded by [`DRAIN_LIMIT`]), so the 413
/// reaches the client instead of a reset caused by unread data.
async fn drain(mut body: Incoming) {
    let mut seen = 0usize;
    let discard = async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, discard).await;
}

fn too_large() -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body too large: the limit is {MAX_BODY_BYTES} bytes\n"),
    );
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
