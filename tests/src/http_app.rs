//! A small, unmodified-app stand-in for the end-to-end tests (also the `pqmesh-test-app`
//! binary used in the network-namespace suite). HTTP/1.1 and HTTP/2 with prior knowledge on one
//! port: every response says which protocol arrived, which connection it came on (and how many
//! requests the app has served, this one included) and what
//! `x-pqmesh-peer-identity` said; `Upgrade: websocket` switches the connection to a raw echo
//! (no WebSocket framing: the sidecar sees only bytes after the handshake); `GET /bytes/N`
//! answers N bytes.
//! A second port echoes raw TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Default)]
pub struct AppStats {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
}

/// Serves HTTP on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, name: String, stats: Arc<AppStats>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let conn_id = stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let stats = stats.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let req_id = stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
                let name = name.clone();
                async move { Ok::<_, Infallible>(respond(req, &name, conn_id, req_id).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn respond(
    mut req: Request<Incoming>,
    name: &str,
    conn_id: usize,
    req_id: usize,
) -> Response<AppBody> {
    let peer = req
        .headers()
        .get_all("x-pqmesh-peer-identity")
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .collect::<Vec<_>>();
    let peer = if peer.is_empty() {
        "none".to_owned()
    } else {
        peer.join(",")
    };
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "websocket")
    {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let accept = req
            .headers()
            .get("sec-websocket-key")
            .map(|k| pqmesh_sidecar::canonical::websocket_accept(k.as_bytes()))
            .unwrap_or_default();
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Either::Left(Full::new(Bytes::new())))
            .unwrap_or_else(|_| Response::new(Either::Left(Full::new(Bytes::new()))));
    }
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let version = format!("{:?}", req.version());
    let path = req.uri().path().to_owned();
    // `/bytes/N`: a body of N bytes (for slow-read clients).
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return Response::new(Either::Right(Repeat { left: n }));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    Response::new(Either::Left(Full::new(Bytes::from(format!(
        "app={name} proto={version} conn={conn_id} req={req_id} peer={peer} path={path} body={body} authorization={auth}\n"
    )))))
}

type AppBody = Either<Full<Bytes>, Repeat>;

/// A body of `left` bytes made on the fly, 1 MiB at a time (`/bytes/N` may be gigabytes).
pub struct Repeat {
    left: usize,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 1 << 20] = [b'x'; 1 << 20];
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len());
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &CHUNK[..n],
        )))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left as u64)
    }
}

/// Echoes raw TCP on `listener`.
pub async fn serve_tcp_echo(listener: TcpListener) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = tcp.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Starts both servers on ephemeral loopback ports (for in-process tests).
pub async fn start(name: &str) -> (SocketAddr, SocketAddr, Arc<AppStats>) {
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addrs = (
        http.local_addr().expect("addr"),
        tcp.local_addr().expect("addr"),
    );
    let stats = Arc::new(AppStats::default());
    tokio::spawn(serve_http(http, name.to_owned(), stats.clone()));
    tokio::spawn(serve_tcp_echo(tcp));
    (addrs.0, addrs.1, stats)
}
