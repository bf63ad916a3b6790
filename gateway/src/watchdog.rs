//! Deadlines for outside connections that hyper's own timers do not cover (outside review 10,
//! F4). hyper's HTTP/1 head timer starts with the first byte of a head, and the protocol
//! detection before it (HTTP/1 or the h2c preface) and HTTP/2 have none, so a client that
//! connected, or finished its TLS handshake, and then sent nothing held a connection slot (per
//! port and per address) for ever: 40 silent connections filled a port. Here every connection
//! must bring its first request within [`FIRST_REQUEST`] of its start (accept, or the end of
//! the TLS handshake); it is closed [`IDLE`] after its last request ended (its response body
//! sent) while no request is in flight, or after [`STALLED`] without a byte either way while one
//! is. Bytes alone do not keep an idle connection open: an HTTP/2 client sending a PING or a
//! WINDOW_UPDATE every 20 s held its slot for good (review 11, F7).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// From the connection's start to its first request (the sidecar's head timeout).
pub const FIRST_REQUEST: Duration = Duration::from_secs(10);
/// No request in flight and no byte either way.
pub const IDLE: Duration = Duration::from_secs(60);
/// A request in flight and no byte either way (a stalled upload or a backend that never answers
/// has its own timeouts; this is the bound on what is left).
pub const STALLED: Duration = Duration::from_secs(300);

/// What a connection did, shared by its stream wrapper, its requests and its watchdog.
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last byte read or written.
    last: AtomicU64,
    /// Milliseconds after `start` of the last request's start or end.
    last_request: AtomicU64,
    requests: AtomicBool,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            last_request: AtomicU64::new(0),
            requests: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    fn touch_request(&self) {
        let ms = self.now_ms();
        self.last_request.fetch_max(ms, Ordering::Relaxed);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// Marks a request as in flight until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.requests.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch_request();
        InFlight(self.clone())
    }

    /// Whether the connection is past its deadline.
    pub fn expired(&self) -> bool {
        self.deadline() <= Instant::now()
    }

    /// When the connection must be closed if nothing happens before.
    pub fn deadline(&self) -> Instant {
        if !self.requests.load(Ordering::Relaxed) {
            return self.start + FIRST_REQUEST;
        }
        let at = |t: &AtomicU64| self.start + Duration::from_millis(t.load(Ordering::Relaxed));
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            at(&self.last) + STALLED
        } else {
            at(&self.last_request) + IDLE
        }
    }
}

/// A request in flight on a connection: held until its response body is sent ([`Tracked`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch_request();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until hyper has sent it (or dropped it).
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Drives `conn` until it ends or `activity` passes its deadline; then `conn` is dropped, which
/// closes the connection. Returns whether the deadline closed it. (`ports` inlines the same
/// loop: see its `watched!`.)
pub async fn serve<F: Future>(conn: F, activity: &Activity) -> bool {
    tokio::pin!(conn);
    loop {
        let deadline = activity.deadline();
        tokio::select! {
            _ = &mut conn => return false,
            _ = tokio::time::sleep_until(deadline) => {
                if activity.expired() {
                    return true;
                }
            }
        }
    }
}

/// A stream that records each read and write that moved bytes in its [`Activity`].
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_ends_at_the_first_request_deadline() {
        let activity = Activity::new();
        let started = Instant::now();
        assert!(serve(std::future::pending::<()>(), &activity).await);
        assert_eq!(started.elapsed(), FIRST_REQUEST);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_a_request_ends_after_idle_and_a_request_in_flight_after_stalled() {
        let activity = Activity::new();
        drop(activity.request());
        let started = Instant::now();
        assert!(serve(std::future::pending::<()>(), &activity).await);
        assert_eq!(started.elapsed(), IDLE);

        let activity = Activity::new();
        let _in_flight = activity.request();
        let started = Instant::now();
        assert!(serve(std::future::pending::<()>(), &activity).await);
        assert_eq!(started.elapsed(), STALLED);
    }

    /// Review 11 F7: an HTTP/2 PING every 20 s moved bytes and kept an idle connection open.
    #[tokio::test(start_paused = true)]
    async fn bytes_without_a_request_in_flight_do_not_extend_idle() {
        let activity = Activity::new();
        drop(activity.request());
        let (mut client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, activity.clone());
        let pings = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut byte = [0u8; 1];
            loop {
                tokio::time::sleep(Duration::from_secs(20)).await;
                client.write_all(b"p").await.unwrap();
                watched.read_exact(&mut byte).await.unwrap();
            }
        };
        let started = Instant::now();
        assert!(serve(pings, &activity).await);
        assert_eq!(started.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_moving_keep_a_connection_open_and_an_ending_connection_is_not_cut() {
        let activity = Activity::new();
        let _in_flight = activity.request();
        let (client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, activity.clone());
        let mut client = client;
        let conn = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut byte = [0u8; 1];
            for _ in 0..5 {
                tokio::time::sleep(IDLE / 2).await;
                client.write_all(b"x").await.unwrap();
                watched.read_exact(&mut byte).await.unwrap();
            }
        };
        let started = Instant::now();
        assert!(
            !serve(conn, &activity).await,
            "closed while bytes were moving"
        );
        assert_eq!(started.elapsed(), IDLE / 2 * 5);
    }
}
