//! Opaque relays on ports not declared opaque pass through [`FirstLineGate`]: detection may have
//! judged a first line before it was complete (`FOO`, then ` / HTTP/1.1`), or seen nothing at all
//! (a silent client, as when the app speaks first: SMTP, MySQL). The gate watches the client's
//! first line as it passes and ends the connection — without passing the bytes that did it — the
//! moment that line names an HTTP version; otherwise a client could write its own
//! `x-pqmesh-peer-identity` header straight to the app. Bytes before that are a partial line with
//! no line end, which no HTTP server acts on. Once the first line ends, or holds a byte no request
//! line can hold, the gate is transparent.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Empty lines before the first line (servers may skip them, RFC 9112 §2.2).
    LeadingEmptyLines,
    FirstLine,
    Open,
    Refused,
}

pub struct FirstLineGate<S> {
    inner: S,
    phase: Phase,
    /// The last five bytes of the first line, lower-cased (finds `http/` across reads).
    tail: [u8; 5],
}

impl<S> FirstLineGate<S> {
    pub fn new(inner: S) -> Self {
        FirstLineGate {
            inner,
            phase: Phase::LeadingEmptyLines,
            tail: [0; 5],
        }
    }

    /// Follows the first line through `bytes`; the phase says what became of it.
    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.phase {
                Phase::Open | Phase::Refused => return,
                Phase::LeadingEmptyLines if b == b'\r' || b == b'\n' => continue,
                Phase::LeadingEmptyLines | Phase::FirstLine => {
                    self.phase = Phase::FirstLine;
                    let printable =
                        b == b' ' || b == b'\t' || b == b'\r' || (0x21..0x7f).contains(&b);
                    if b == b'\n' || !printable {
                        self.phase = Phase::Open;
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
}

fn refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "an HTTP request line on an opaque relay is not passed to the app",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstLineGate<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Refused {
            return Poll::Ready(Err(refused()));
        }
        if this.phase == Phase::Open {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = buf.filled()[before..].to_vec();
        this.scan(&new);
        if this.phase == Phase::Refused {
            // Withhold the whole read: it holds the rest of the request line and what follows.
            buf.set_filled(before);
            return Poll::Ready(Err(refused()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstLineGate<S> {
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
        let (mut client, near) = tokio::io::duplex(64 * 1024);
        let writes: Vec<Vec<u8>> = writes.iter().map(|w| w.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for w in writes {
                client.write_all(&w).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let mut gate = FirstLineGate::new(near);
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
        ] {
            let (passed, result) = through_gate(writes).await;
            assert_eq!(
                result.unwrap_err().kind(),
                io::ErrorKind::PermissionDenied,
                "{writes:?}"
            );
            assert!(
                !passed.contains(&b'\n') || passed.iter().all(|&b| b == b'\r' || b == b'\n'),
                "no complete line passed: {:?}",
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
            &[&[b'a'; 20_000]],
        ] {
            let want: Vec<u8> = writes.concat();
            let (passed, result) = through_gate(writes).await;
            assert!(result.is_ok(), "{writes:?}");
            assert_eq!(passed, want, "{writes:?}");
        }
    }
}
