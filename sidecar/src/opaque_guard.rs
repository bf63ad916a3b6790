//! Every opaque relay (TCP the sidecar does not parse as HTTP) passes through [`OpaqueGuard`],
//! because some HTTP server behind it may parse the bytes anyway: Java's `HttpServer` takes
//! `get /admin x` as a request line, Python's `http.server` takes `GET\t/admin` (HTTP/0.9 with
//! headers), and detection may have judged a first line before it was complete or seen nothing
//! at all (a client silent through detection, as when the app speaks first). Two rules:
//! - The client's first line must not name an HTTP version (`HTTP/`, any case; the HTTP/2 preface
//!   names one too): HTTP belongs on the HTTP path. A port declared opaque must not carry HTTP.
//! - The client's bytes must never contain the identity header's name, in any case and with `-`,
//!   `_` or `.` between its words (`pqmesh-peer-identity`, however a server folds it): on a raw
//!   relay the sidecar cannot stamp the identity, so nobody may write one.
//!
//! Either ends the connection without passing the read that completed the match; what passed
//! before is a partial line or a partial name, which no server acts on. The policy on an opaque
//! connection judges only the peer, so an HTTP request that gets through carries no identity.
//!
//! On an HTTP relay port (`PQMESH_HTTP_RELAY_PORTS`: HTTP/1.1 relayed as bytes while the port's
//! policy is identity-only) HTTP is expected, so [`OpaqueGuard::http_relay`] drops the first rule
//! and adds these, because after a protocol switch (h2c above all) header names travel
//! HPACK-encoded, where the identity name could hide from the scan:
//! - no line may start with `upgrade` (any case), and the HTTP/2 preface (`PRI * HTTP/2`) may not
//!   appear anywhere;
//! - every request must be plain HTTP/1.x that [`RequestParser`] frames unambiguously (no
//!   CONNECT, no obsolete line folding, no head over 64 KiB, no Content-Length beside
//!   Transfer-Encoding, ...): where servers could read the stream differently, it ends;
//! - a request head must arrive whole within [`HEAD_TIMEOUT`] of its first byte (slowloris).
//!
//! The scans see the stream, not reads: a name split over any number of reads is found.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::outbound_observe::RequestParser;

/// How long a request head may take on an HTTP relay port, from its first byte (the HTTP path's
/// `HEADER_READ_TIMEOUT`).
pub const HEAD_TIMEOUT: std::time::Duration = crate::http_proxy::HEADER_READ_TIMEOUT;

/// The identity header's name as folded by [`fold`] (without `x-`: servers also strip prefixes).
const IDENTITY_NAME: &[u8] = b"pqmesh-peer-identity";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Empty lines before the first line (servers may skip them, RFC 9112 §2.2).
    LeadingEmptyLines,
    FirstLine,
    /// The first line is over: only the identity-name scan runs.
    Scanning,
    Refused,
}

pub struct OpaqueGuard<S> {
    inner: S,
    phase: Phase,
    /// The last five bytes of the first line, lower-cased (finds `http/` across reads).
    tail: [u8; 5],
    /// The last bytes read, folded, so a name split across reads is found.
    carry: Vec<u8>,
    /// HTTP relay: lines starting with `upgrade` and the HTTP/2 preface are refused too.
    refuse_upgrade: bool,
    /// HTTP relay: the client's requests, which must all frame unambiguously.
    requests: Option<RequestParser>,
    /// HTTP relay: when the request head now arriving must be complete.
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// `upgrade` at the start of a line, folded, after either line-ending byte (servers split lines
/// at `\n`, and some at a bare `\r`).
const UPGRADE_LINES: [&[u8]; 3] = [b"\nupgrade", b"\rupgrade", b"pri * http/2"];

/// Lower case, and `_` `.` as `-`: the spellings servers treat as the same header name.
fn fold(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

impl<S> OpaqueGuard<S> {
    pub fn new(inner: S) -> Self {
        OpaqueGuard {
            inner,
            phase: Phase::LeadingEmptyLines,
            tail: [0; 5],
            carry: Vec::with_capacity(2 * IDENTITY_NAME.len()),
            refuse_upgrade: false,
            requests: None,
            head_deadline: None,
        }
    }

    /// The guard of an HTTP relay port: HTTP passes, the identity name and `upgrade` lines do not.
    pub fn http_relay(inner: S) -> Self {
        OpaqueGuard {
            phase: Phase::Scanning,
            refuse_upgrade: true,
            requests: Some(RequestParser::default()),
            ..Self::new(inner)
        }
    }

    /// Follows the first line through `bytes`.
    fn scan_first_line(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.phase {
                Phase::Scanning | Phase::Refused => return,
                Phase::LeadingEmptyLines if b == b'\r' || b == b'\n' => continue,
                Phase::LeadingEmptyLines | Phase::FirstLine => {
                    self.phase = Phase::FirstLine;
                    // A byte no request line can hold ends the check (binary protocols); the
                    // whitespace Python's `str.split` accepts as a separator does not.
                    let line_byte =
                        matches!(b, b'\t' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f | 0x85 | 0xa0)
                            || (0x20..0x7f).contains(&b);
                    if b == b'\n' || !line_byte {
                        self.phase = Phase::Scanning;
                        return;
                    }
                    self.tail.rotate_left(1);
                    self.tail[4] = b.to_ascii_lowercase();
                    if &self.tail == b"http/" {
                        self.phase = Phase::Refused;
                    }
                }
            }
        }
    }

    /// Whether the identity name (or, on an HTTP relay, an `upgrade` line) appears in `bytes`
    /// or across the previous read and `bytes`.
    fn names_identity(&mut self, bytes: &[u8]) -> bool {
        // The identity name is the longest needle: its length bounds what must be carried.
        let n = IDENTITY_NAME.len();
        let folded_at = |i: usize, needle: &[u8]| {
            bytes.len() >= i + needle.len()
                && bytes[i..i + needle.len()]
                    .iter()
                    .zip(needle)
                    .all(|(&b, &want)| fold(b) == want)
        };
        // Across the boundary: the previous read's tail and this read's head.
        self.carry
            .extend(bytes.iter().take(n - 1).map(|&b| fold(b)));
        let mut across = self.carry.windows(n).any(|w| w == IDENTITY_NAME);
        // Within this read: candidates at each 'q' (the name's second byte, rare in data).
        let mut within = memchr::memchr2_iter(b'q', b'Q', bytes)
            .any(|i| i >= 1 && folded_at(i - 1, IDENTITY_NAME));
        if self.refuse_upgrade {
            across |= UPGRADE_LINES
                .iter()
                .any(|line| self.carry.windows(line.len()).any(|w| w == *line));
            within |= memchr::memchr2_iter(b'\n', b'\r', bytes)
                .any(|i| UPGRADE_LINES.iter().any(|line| folded_at(i, line)));
        }
        // The window carried on: the last n - 1 bytes of the stream, however short this read was
        // (a name split over three or more reads must still meet in it).
        if bytes.len() >= n - 1 {
            self.carry.clear();
            self.carry
                .extend(bytes[bytes.len() - (n - 1)..].iter().map(|&b| fold(b)));
        } else {
            let excess = self.carry.len().saturating_sub(n - 1);
            self.carry.drain(..excess);
        }
        across || within
    }
}

fn refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "an HTTP request line (opaque ports), an upgrade (HTTP relay ports) or the identity header is not relayed to the app",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for OpaqueGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Refused {
            return Poll::Ready(Err(refused()));
        }
        if let Some(deadline) = &mut this.head_deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                this.phase = Phase::Refused;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("a request head took longer than {HEAD_TIMEOUT:?}"),
                )));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if this.phase != Phase::Scanning {
            this.scan_first_line(new);
        }
        let unframed = this.requests.as_mut().is_some_and(|requests| {
            requests.feed(new);
            requests.is_done()
        });
        if this.phase == Phase::Refused || this.names_identity(new) || unframed {
            this.phase = Phase::Refused;
            // Withhold the whole read: it completed the request line, the name, or a request
            // that cannot be framed.
            buf.set_filled(before);
            return Poll::Ready(Err(refused()));
        }
        if let Some(requests) = &this.requests {
            if !requests.in_partial_head() {
                this.head_deadline = None;
            } else if this.head_deadline.is_none() {
                let mut deadline = Box::pin(tokio::time::sleep(HEAD_TIMEOUT));
                // Registers the timer with this task, so the deadline wakes a read that waits.
                let _ = deadline.as_mut().poll(cx);
                this.head_deadline = Some(deadline);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OpaqueGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the app would get: everything the gate passed before it ended the stream, and how.
    async fn through_gate(writes: &[&[u8]]) -> (Vec<u8>, io::Result<()>) {
        through(writes, OpaqueGuard::new).await
    }

    async fn through<G>(
        writes: &[&[u8]],
        guard: impl FnOnce(tokio::io::DuplexStream) -> OpaqueGuard<G>,
    ) -> (Vec<u8>, io::Result<()>)
    where
        OpaqueGuard<G>: AsyncRead + Unpin,
    {
        let (mut client, near) = tokio::io::duplex(64 * 1024);
        let writes: Vec<Vec<u8>> = writes.iter().map(|w| w.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for w in writes {
                client.write_all(&w).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let mut gate = guard(near);
        let mut out = Vec::new();
        let mut chunk = [0u8; 1024];
        let result = loop {
            match gate.read(&mut chunk).await {
                Ok(0) => break Ok(()),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) => break Err(e),
            }
        };
        writer.await.unwrap();
        (out, result)
    }

    #[tokio::test]
    async fn a_request_line_never_passes_whole() {
        for writes in [
            &[&b"GET / HTTP/1.1\r\nx-pqmesh-peer-identity: spiffe://x/ns/a/sa/b\r\n\r\n"[..]][..],
            &[
                b"FOO",
                b" / HT",
                b"TP/1.1\r\nx-pqmesh-peer-identity: forged\r\n\r\n",
            ],
            &[b"\r\n", b"\r\nget /admin http/1.0\r\n\r\n"],
            &[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
            // Found from outside: request lines Java's HttpServer or Python's http.server accept.
            &[b"get /admin x\r\nHost: b\r\nX-Pqmesh-Peer-Identity: spiffe://x/ns/a/sa/b\r\n\r\n"],
            &[b"GET\t/admin\r\nX-Pqmesh-Peer-Identity: spiffe://x/ns/a/sa/b\r\n\r\n"],
            &[
                b"x\nGET /admin",
                b" x\r\nx_pqmesh_peer_id",
                b"entity: forged\r\n\r\n",
            ],
            &[
                b"hello\n",
                b"binary\x00\x01 then X.PQMESH.PEER.IDENTITY: forged",
            ],
        ] {
            let (passed, result) = through_gate(writes).await;
            assert_eq!(
                result.unwrap_err().kind(),
                io::ErrorKind::PermissionDenied,
                "{writes:?}"
            );
            let folded: Vec<u8> = passed.iter().map(|&b| fold(b)).collect();
            assert!(
                !folded
                    .windows(IDENTITY_NAME.len())
                    .any(|w| w == IDENTITY_NAME)
                    && !folded.windows(5).any(|w| w == b"http/"),
                "no identity name and no HTTP version passed: {:?}",
                String::from_utf8_lossy(&passed)
            );
        }
    }

    #[tokio::test]
    async fn other_protocols_pass_unchanged() {
        for writes in [
            &[&b"EHLO client.example\r\nMAIL FROM:<a@b>\r\n"[..]][..],
            &[b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"more binary HTTP/1.1"],
            &[b"*1\r\n$4\r\n", b"PING\r\n"],
            &[b"ping"],
            &[b"hello\n", b"GET / HTTP/1.1\r\n"],
            &[b"pqmesh-peer is not the whole name; peer-identity alone neither"],
            &[&[b'a'; 20_000]],
        ] {
            let want: Vec<u8> = writes.concat();
            let (passed, result) = through_gate(writes).await;
            assert!(result.is_ok(), "{writes:?}");
            assert_eq!(passed, want, "{writes:?}");
        }
    }

    #[tokio::test]
    async fn an_http_relay_passes_http_but_no_identity_and_no_upgrade() {
        let keep_alive: &[&[u8]] = &[
            b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n",
            // (A body line starting with `upgrade` would be refused: the scan does not parse.)
            b"POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 9\r\n\r\nx upgrade",
            b"GET /c HTTP/1.1\r\nHost: b\r\nx-upgrade: no\r\nConnection: close\r\n\r\n",
        ];
        let (passed, result) = through(keep_alive, OpaqueGuard::http_relay).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(passed, keep_alive.concat());

        for writes in [
            &[&b"GET / HTTP/1.1\r\nx-pqmesh-peer-identity: forged\r\n\r\n"[..]][..],
            &[
                b"GET / HTTP/1.1\r\nX_PQMESH_PEER_ID",
                b"ENTITY: forged\r\n\r\n",
            ],
            &[b"GET / HTTP/1.1\r\nHost: b\r\nUpgrade: h2c\r\n\r\n"],
            &[
                b"GET / HTTP/1.1\r\nHost: b\r",
                b"\nUPGRADE : websocket\r\n\r\n",
            ],
            &[b"GET / HTTP/1.1\r\nHost: b\r\nUpg", b"rade: h2c\r\n\r\n"],
            // A bare CR as the line end (servers that split lines there).
            &[b"GET / HTTP/1.1\rupgrade: h2c\r\r"],
        ] {
            let (passed, result) = through(writes, OpaqueGuard::http_relay).await;
            assert_eq!(
                result.unwrap_err().kind(),
                io::ErrorKind::PermissionDenied,
                "{writes:?}"
            );
            let folded: Vec<u8> = passed.iter().map(|&b| fold(b)).collect();
            assert!(
                !folded
                    .windows(IDENTITY_NAME.len())
                    .any(|w| w == IDENTITY_NAME)
                    && !UPGRADE_LINES
                        .iter()
                        .any(|l| folded.windows(l.len()).any(|w| w == *l)),
                "neither passed whole: {:?}",
                String::from_utf8_lossy(&passed)
            );
        }
    }

    /// Found from outside (review 8): the window carried between reads must be the stream's
    /// last bytes, not the last read's: a name split over three or more reads got through.
    #[tokio::test]
    async fn a_name_split_over_many_reads_is_still_found() {
        let name = b"x-pqmesh-peer-identity";
        let line = b"GET / HTTP/1.1\r\nHost: b\r\n";
        let splits: Vec<Vec<usize>> = vec![
            vec![5, 5, 12],
            vec![10, 1, 11],
            vec![20, 1, 1],
            vec![3, 3, 3, 13],
            vec![1; 22],
        ];
        for split in splits {
            let mut parts: Vec<Vec<u8>> = vec![line.to_vec()];
            let mut at = 0;
            for len in &split {
                parts.push(name[at..at + len].to_vec());
                at += len;
            }
            parts.push(b": spiffe://x/ns/a/sa/admin\r\n\r\n".to_vec());
            let writes: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
            for relay in [false, true] {
                let (passed, result) = if relay {
                    through(&writes, OpaqueGuard::http_relay).await
                } else {
                    through(&writes[1..], OpaqueGuard::new).await
                };
                assert!(result.is_err(), "{split:?} (relay {relay})");
                let folded: Vec<u8> = passed.iter().map(|&b| fold(b)).collect();
                assert!(
                    !folded
                        .windows(IDENTITY_NAME.len())
                        .any(|w| w == IDENTITY_NAME),
                    "{split:?} (relay {relay}): {:?}",
                    String::from_utf8_lossy(&passed)
                );
            }
        }
        // Split upgrade lines, the HTTP/2 preface after a first request, and requests servers
        // could frame differently end an HTTP relay too.
        for writes in [
            &[&b"GET / HTTP/1.1\r\nHost: b\r\n"[..], b"Upg", b"rade: h2c\r\n\r\n"][..],
            &[b"GET / HTTP/1.1\r\nHost: b\r\n", b"\r", b"u", b"pgrade: h2c\r\n\r\n"],
            &[b"GET / HTTP/1.1\r\nHost: b\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
            &[b"POST / HTTP/1.1\r\nHost: b\r\ncontent-length: 1\r\n\r\nxPRI * HTTP/2.0\r\n\r\n"],
            &[b"POST / HTTP/1.1\r\nHost: b\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"],
            &[b"POST / HTTP/1.1\r\nHost: b\r\ntransfer-encoding: xchunked\r\n\r\n"],
            &[b"GET / HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n folded\r\n\r\n"],
            &[b"CONNECT b:443 HTTP/1.1\r\nHost: b:443\r\n\r\n"],
        ] {
            let (_, result) = through(writes, OpaqueGuard::http_relay).await;
            assert_eq!(
                result.unwrap_err().kind(),
                io::ErrorKind::PermissionDenied,
                "{writes:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_head_must_arrive_whole_within_the_head_timeout() {
        let (mut client, near) = tokio::io::duplex(1024);
        let mut gate = OpaqueGuard::http_relay(near);
        let mut chunk = [0u8; 1024];
        // A whole head, then a body-less pause: no deadline between requests.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
            .await
            .unwrap();
        assert!(gate.read(&mut chunk).await.unwrap() > 0);
        let idle = tokio::time::timeout(HEAD_TIMEOUT * 3, gate.read(&mut chunk)).await;
        assert!(
            idle.is_err(),
            "still waiting after {:?}: {idle:?}",
            HEAD_TIMEOUT * 3
        );
        // A head begun and never finished: refused once the head timeout passes.
        client.write_all(b"GET / HTTP/1.1\r\nX-Slow").await.unwrap();
        assert!(gate.read(&mut chunk).await.unwrap() > 0);
        let started = tokio::time::Instant::now();
        let err = gate.read(&mut chunk).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= HEAD_TIMEOUT, "{:?}", started.elapsed());
    }
}
