//! The small HTTP/1 server both binaries use for their admin endpoints (health, metrics, dumps).
//! It runs on its own single-threaded runtime so a slow scrape never competes with the data plane.
//! `/logging` is served here for both: `GET` shows the log filter, `POST /logging?level=<filter>`
//! (loopback callers only) replaces it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A plain response: status, content type, body.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
    pub fn json(body: String) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/json",
            body,
        }
    }
}

pub type Route = Arc<dyn Fn(&Method, &str, SocketAddr) -> Reply + Send + Sync>;

/// Starts the admin server on a dedicated thread; returns the bound address.
pub fn spawn(addr: SocketAddr, route: Route) -> std::io::Result<SocketAddr> {
    spawn_listener(addr, route, true)
}

/// As `spawn`, but without the built-in `/logging`: for a listener reachable from the network,
/// which serves only what `route` serves (the control plane's probe and metrics port).
pub fn spawn_public(addr: SocketAddr, route: Route) -> std::io::Result<SocketAddr> {
    spawn_listener(addr, route, false)
}

fn spawn_listener(
    addr: SocketAddr,
    route: Route,
    logging_endpoint: bool,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name("pqmesh-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "admin runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                loop {
                    let Ok((tcp, remote)) = listener.accept().await else {
                        continue;
                    };
                    let route = route.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let reply = if logging_endpoint && req.uri().path() == "/logging" {
                                logging(req.method(), req.uri().query(), remote)
                            } else {
                                route(req.method(), req.uri().path(), remote)
                            };
                            let resp = Response::builder()
                                .status(reply.status)
                                .header("content-type", reply.content_type)
                                .body(Full::new(Bytes::from(reply.body)))
                                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                            async move { Ok::<_, Infallible>(resp) }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            });
        })?;
    Ok(bound)
}

/// Renders a prometheus registry in the text exposition format.
pub fn render_metrics(registry: &prometheus::Registry) -> Reply {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    let mut families = registry.gather();
    families.extend(crate::process_metrics::gather());
    match encoder.encode(&families, &mut buf) {
        Ok(()) => Reply {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4",
            body: String::from_utf8_lossy(&buf).into_owned(),
        },
        Err(e) => Reply::text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /logging`, `POST /logging?level=<EnvFilter directive>` (loopback only).
fn logging(method: &Method, query: Option<&str>, remote: SocketAddr) -> Reply {
    match *method {
        Method::GET => match crate::logging::current_filter() {
            Some(f) => Reply::text(StatusCode::OK, format!("{f}\n")),
            None => Reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "logging was not initialised by this process\n",
            ),
        },
        Method::POST if !remote.ip().is_loopback() => Reply::text(
            StatusCode::FORBIDDEN,
            "changing the log level is allowed from localhost only\n",
        ),
        Method::POST => {
            let level = query
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("level="))
                .map(|v| v.replace("%2C", ",").replace("%3D", "="));
            let Some(level) = level.filter(|l| !l.is_empty()) else {
                return Reply::text(
                    StatusCode::BAD_REQUEST,
                    "use POST /logging?level=<filter>, e.g. level=debug or level=info,pqmesh_sidecar=debug\n",
                );
            };
            match crate::logging::set_filter(&level) {
                Ok(()) => Reply::text(StatusCode::OK, format!("{level}\n")),
                Err(e @ crate::logging::LogLevelError::Invalid { .. }) => {
                    Reply::text(StatusCode::BAD_REQUEST, format!("{e}\n"))
                }
                Err(e) => Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }
        _ => Reply::text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n"),
    }
}
