//! Load generation. `latency` is open loop (wrk2 style): request i on a connection is due at
//! start + i × period, and a request delayed by a slow answer is measured from its due time, so a
//! stall shows up as latency for every request it delayed instead of silently lowering the rate. `bulk` reads large
//! bodies as fast as it can; `saturation` is closed loop (each connection sends its next request as
//! soon as the answer is in, wrk style); `handshakes` opens a new TLS connection per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// The request a latency or saturation run sends on every connection: `GET /` by default, or
/// `GET /orders/1` with a bearer token (the JWT-policy scenario).
#[derive(Clone)]
pub struct Request(Arc<[u8]>);

impl Default for Request {
    fn default() -> Self {
        Request(REQUEST.into())
    }
}

impl Request {
    /// `GET /` with this `Host` (the edge scenario: the listener's hostname).
    pub fn with_host(host: &str) -> Self {
        Request(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
                .into_bytes()
                .into(),
        )
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn with_bearer(token: &str) -> Self {
        Request(
            format!(
                "GET /orders/1 HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n"
            )
            .into_bytes()
            .into(),
        )
    }
}

/// Where `latency` and `saturation` open their keep-alive connections: plain TCP to a proxy's
/// entry (a `SocketAddr`), or outside HTTPS to an edge proxy ([`TlsTarget`]).
pub trait Connect: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn connect(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Connect for SocketAddr {
    type Stream = TcpStream;
    async fn connect(&self) -> std::io::Result<TcpStream> {
        let tcp = TcpStream::connect(*self).await?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

/// TLS (no client certificate) to `addr` with SNI `server_name`.
#[derive(Clone)]
pub struct TlsTarget {
    pub addr: SocketAddr,
    pub connector: TlsConnector,
    pub server_name: &'static str,
}

impl Connect for TlsTarget {
    type Stream = tokio_rustls::client::TlsStream<TcpStream>;
    async fn connect(&self) -> std::io::Result<Self::Stream> {
        connect_tls(&self.connector, self.addr, self.server_name).await
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Reads one HTTP/1.1 response (Content-Length framed); returns the body length.
/// `buf` keeps bytes read past the response for the next one. Reads go straight into `buf`
/// (no scratch buffer to zero per response: at saturation the generator shares the cores with
/// the proxies it measures).
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<u64> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        let line = head.lines().next().unwrap_or("").to_owned();
        return Err(std::io::Error::other(format!("unexpected status: {line}")));
    }
    buf.drain(..head_end);
    if head.contains("transfer-encoding: chunked") {
        return read_chunked(stream, buf).await;
    }
    let len: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    let mut left = len;
    loop {
        let have = (buf.len() as u64).min(left);
        buf.drain(..have as usize);
        left -= have;
        if left == 0 {
            return Ok(len);
        }
        fill(stream, buf).await?;
    }
}

/// Appends what one read returns to `buf`; EOF is an error (a response was expected).
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.reserve(64 * 1024);
    if stream.read_buf(buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// A chunked body (a proxy may re-frame the backend's Content-Length body).
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Chunk-size line.
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = u64::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        buf.drain(..line_end + 2);
        // Data plus its CRLF (the last chunk is followed by an empty trailer line).
        let need = size as usize + 2;
        while buf.len() < need {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..need);
        total += size;
        if size == 0 {
            return Ok(total);
        }
    }
}

pub struct LatencyResult {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub achieved_rps: f64,
}

impl LatencyResult {
    /// Quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// `rate` requests per second spread over `conns` keep-alive connections for `duration`, after
/// `warmup` (not recorded).
pub async fn latency<C: Connect>(
    target: C,
    request: &Request,
    rate: u32,
    conns: u32,
    warmup: Duration,
    duration: Duration,
) -> LatencyResult {
    let period = Duration::from_secs_f64(conns as f64 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let record_from = start + warmup;
    let end = record_from + duration;
    let mut tasks = Vec::new();
    for c in 0..conns {
        // Stagger the connections evenly over one period.
        let offset = period.mul_f64(c as f64 / conns as f64);
        let (request, target) = (request.0.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors = 0u64;
            let mut done = 0u64;
            let Ok(mut tcp) = target.connect().await else {
                return (hist, 1, 0);
            };
            let mut buf = Vec::new();
            let mut prev_done = start;
            for i in 0u64.. {
                let due = start + offset + period.mul_f64(i as f64);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                // A request held back by the previous answer counts from its due time (no
                // coordinated omission); one only held back by the timer's 1 ms granularity
                // counts from when it was sent (that lateness is the generator's, not the proxy's).
                let from = if prev_done > due { due } else { Instant::now() };
                let ok = tcp.write_all(&request).await.is_ok()
                    && read_response(&mut tcp, &mut buf).await.is_ok();
                if !ok {
                    errors += 1;
                    // Reconnect so one failure does not fail the rest of the run.
                    match target.connect().await {
                        Ok(t) => {
                            tcp = t;
                            buf.clear();
                        }
                        Err(_) => break,
                    }
                    continue;
                }
                prev_done = Instant::now();
                if due >= record_from {
                    let us = prev_done.duration_since(from).as_micros() as u64;
                    let _ = hist.record(us.max(1));
                    done += 1;
                }
            }
            (hist, errors, done)
        }));
    }
    let mut hist = histogram();
    let mut errors = 0;
    let mut done = 0;
    for t in tasks {
        if let Ok((h, e, d)) = t.await {
            let _ = hist.add(&h);
            errors += e;
            done += d;
        }
    }
    LatencyResult {
        hist,
        errors,
        achieved_rps: done as f64 / duration.as_secs_f64(),
    }
}

pub struct SaturationResult {
    pub per_second: f64,
    pub errors: u64,
}

/// Closed loop: `conns` keep-alive connections, each sending its next request as soon as the
/// previous answer is complete, for `duration` after `warmup`; answers per second.
pub async fn saturation<C: Connect>(
    target: C,
    request: &Request,
    conns: u32,
    warmup: Duration,
    duration: Duration,
) -> SaturationResult {
    let start = Instant::now();
    let (from, end) = (start + warmup, start + warmup + duration);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (request, target) = (request.0.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let (mut done, mut errors) = (0u64, 0u64);
            let mut tcp = None;
            let mut buf = Vec::new();
            while Instant::now() < end {
                let conn = match &mut tcp {
                    Some(c) => c,
                    None => {
                        let Ok(t) = target.connect().await else {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        buf.clear();
                        tcp.insert(t)
                    }
                };
                let ok = conn.write_all(&request).await.is_ok()
                    && read_response(conn, &mut buf).await.is_ok();
                let now = Instant::now();
                if !ok {
                    errors += 1;
                    tcp = None;
                } else if now >= from && now < end {
                    done += 1;
                }
            }
            (done, errors)
        }));
    }
    let (mut done, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((d, e)) = t.await {
            done += d;
            errors += e;
        }
    }
    SaturationResult {
        per_second: done as f64 / duration.as_secs_f64(),
        errors,
    }
}

/// Bytes per second read through `target` with `conns` connections each fetching
/// `/bulk/16777216` repeatedly, measured for `duration` after `ramp`.
pub async fn bulk(target: SocketAddr, conns: u32, ramp: Duration, duration: Duration) -> f64 {
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (bytes, stop) = (bytes.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut tcp) = TcpStream::connect(target).await else {
                return;
            };
            let request = b"GET /bulk/16777216 HTTP/1.1\r\nHost: bench\r\n\r\n";
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if tcp.write_all(request).await.is_err() {
                    return;
                }
                // Count bytes as they arrive (not per response) so the cut-off is exact.
                let mut left: Option<u64> = None;
                loop {
                    let n = match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut body = &chunk[..n];
                    if left.is_none() {
                        buf.extend_from_slice(body);
                        let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                        let len: u64 = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let already = (buf.len() - p - 4) as u64;
                        bytes.fetch_add(already, Ordering::Relaxed);
                        left = Some(len - already.min(len));
                        buf.clear();
                        body = &[];
                    }
                    let l = left.as_mut().expect("header parsed");
                    *l -= (body.len() as u64).min(*l);
                    bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    if *l == 0 || stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        }));
    }
    // The first moments are connection set-up and slow start: count from `ramp` on.
    tokio::time::sleep(ramp).await;
    let b0 = bytes.load(Ordering::Relaxed);
    let m0 = Instant::now();
    tokio::time::sleep(duration).await;
    let b1 = bytes.load(Ordering::Relaxed);
    let secs = m0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    (b1 - b0) as f64 / secs
}

pub struct HandshakeResult {
    pub per_second: f64,
    pub resumed_fraction: f64,
    pub errors: u64,
    pub hist: Histogram<u64>,
}

/// One TLS connection per request (handshake, `GET /`, 1 KiB answer, close), `concurrency` at a
/// time, for `duration`. With `config.resumption` enabled the client offers a ticket/session.
pub async fn handshakes(
    target: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &'static str,
    concurrency: u32,
    duration: Duration,
) -> HandshakeResult {
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let connector = TlsConnector::from(config.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut resumed, mut errors) = (0u64, 0u64, 0u64);
            let mut hist = histogram();
            while Instant::now() < end {
                let t = Instant::now();
                match one_request(&connector, target, server_name).await {
                    Ok(r) => {
                        ok += 1;
                        resumed += r as u64;
                        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Err(_) => errors += 1,
                }
            }
            (ok, resumed, errors, hist)
        }));
    }
    let (mut ok, mut resumed, mut errors) = (0, 0, 0);
    let mut hist = histogram();
    for t in tasks {
        if let Ok((o, r, e, h)) = t.await {
            ok += o;
            resumed += r;
            errors += e;
            let _ = hist.add(&h);
        }
    }
    HandshakeResult {
        per_second: ok as f64 / duration.as_secs_f64(),
        resumed_fraction: if ok > 0 {
            resumed as f64 / ok as f64
        } else {
            0.0
        },
        errors,
        hist,
    }
}

/// Returns whether the session was resumed.
async fn one_request(
    connector: &TlsConnector,
    target: SocketAddr,
    server_name: &'static str,
) -> std::io::Result<bool> {
    let mut tls = connect_tls(connector, target, server_name).await?;
    tls.write_all(REQUEST).await?;
    let mut buf = Vec::new();
    read_response(&mut tls, &mut buf).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let _ = tls.shutdown().await;
    Ok(resumed)
}

pub async fn connect_tls(
    connector: &TlsConnector,
    target: SocketAddr,
    server_name: &'static str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(target).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(server_name).map_err(std::io::Error::other)?;
    tokio::time::timeout(Duration::from_secs(20), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// Opens `n` TLS connections, sends one request on each and keeps them open (idle keep-alive
/// connections, as a mesh holds them). `parallel` handshakes run at a time.
pub async fn idle_connections<S>(
    n: usize,
    parallel: usize,
    open: impl Fn() -> S,
) -> Vec<Box<dyn Idle>>
where
    S: std::future::Future<Output = std::io::Result<Box<dyn Idle>>> + Send + 'static,
{
    let mut out = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..n {
        if pending.len() >= parallel {
            if let Some(Ok(Ok(c))) = pending.join_next().await {
                out.push(c);
            }
        }
        pending.spawn(open());
    }
    while let Some(r) = pending.join_next().await {
        if let Ok(Ok(c)) = r {
            out.push(c);
        }
    }
    out
}

/// A connection held open only to be counted.
pub trait Idle: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Idle for T {}

/// `open` for `idle_connections`: TLS, one request, then idle.
pub async fn open_idle(
    connector: TlsConnector,
    target: SocketAddr,
    server_name: &'static str,
) -> std::io::Result<Box<dyn Idle>> {
    let mut tls = connect_tls(&connector, target, server_name).await?;
    tls.write_all(REQUEST).await?;
    let mut buf = Vec::new();
    read_response(&mut tls, &mut buf).await?;
    Ok(Box::new(tls))
}
