//! Golden request metrics for HTTP/1.1 on the outbound byte relay. Outbound relays bytes per
//! connection (it never rewrites what the app sends), so requests are *observed*, not proxied:
//! response heads coming back from the upstream are parsed and their bodies skipped by their
//! framing (Content-Length, chunked), giving status class and latency per request. Anything that
//! is not HTTP/1.x — a server-first protocol, TLS from the app, a body delimited by close — ends
//! the observation for that connection; the bytes flow unchanged either way.
//! Latency is measured from the first request byte written after the previous response ended to
//! the response head (pipelined requests count from the first of the batch).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::{Metrics, RequestSeries};

/// Longest response head observed; a longer one ends the observation (the app still gets it).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// One response seen in the stream.
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub status: u16,
}

#[derive(Debug)]
enum Body {
    Length(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers(Vec<u8>),
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(Body),
    /// Not HTTP/1.x, upgraded, or delimited by close: nothing more to observe.
    Done,
}

/// The response side of one HTTP/1.1 connection, fed the bytes as they arrive.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    /// Whether the request being answered is a HEAD (its response has no body).
    pub head_request: bool,
}

impl Default for ResponseParser {
    fn default() -> Self {
        ResponseParser {
            state: State::Head(Vec::new()),
            head_request: false,
        }
    }
}

impl ResponseParser {
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether the parser waits for a new response (the previous one is complete).
    pub fn between_responses(&self) -> bool {
        matches!(&self.state, State::Head(b) if b.is_empty())
    }

    /// Consumes `bytes`; returns the final (non-1xx) responses whose heads completed in them.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Seen> {
        let mut seen = Vec::new();
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => break,
                State::Head(buf) => {
                    buf.extend_from_slice(bytes);
                    bytes = &[];
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut headers);
                    match resp.parse(buf) {
                        Ok(httparse::Status::Complete(len)) => {
                            let status = resp.code.unwrap_or(0);
                            let framing = body_framing(status, self.head_request, resp.headers);
                            let rest = buf.split_off(len);
                            if !(100..200).contains(&status) || status == 101 {
                                seen.push(Seen { status });
                            }
                            self.state = match framing {
                                Some(Body::Length(0)) => State::Head(Vec::new()),
                                Some(body) => State::Body(body),
                                None => State::Done,
                            };
                            if (100..200).contains(&status) && status != 101 {
                                // Interim (100 Continue): the final response follows.
                                self.state = State::Head(Vec::new());
                            }
                            // The rest of the read continues the loop on the new state.
                            return_rest(&mut seen, self, rest);
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {}
                        _ => self.state = State::Done,
                    }
                }
                State::Body(body) => {
                    let (used, finished, broken) = skip_body(body, bytes);
                    bytes = &bytes[used..];
                    if broken {
                        self.state = State::Done;
                    } else if finished {
                        self.state = State::Head(Vec::new());
                    }
                }
            }
        }
        seen
    }
}

/// Continues parsing the bytes that followed a completed head (a recursive call keeps `feed`'s
/// borrow of `buf` short).
fn return_rest(seen: &mut Vec<Seen>, parser: &mut ResponseParser, rest: Vec<u8>) {
    if !rest.is_empty() {
        let more = parser.feed(&rest);
        seen.extend(more);
    }
}

/// How a response's body is delimited (RFC 9112 §6.3); `None`: by close, or the connection
/// stops being HTTP (101).
fn body_framing(status: u16, head_request: bool, headers: &[httparse::Header]) -> Option<Body> {
    if status == 101 {
        return None;
    }
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(Body::Length(0));
    }
    let value = |name: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    if let Some(te) = value("transfer-encoding").last() {
        return te
            .trim()
            .ends_with("chunked")
            .then(|| Body::ChunkSize(Vec::new()));
    }
    let lengths = value("content-length");
    match lengths.first().map(|l| l.trim().parse::<u64>()) {
        Some(Ok(n)) if lengths.iter().all(|l| l.trim() == n.to_string()) => Some(Body::Length(n)),
        Some(_) => None,
        None => None,
    }
}

/// Skips body bytes; returns (bytes used, body finished, framing broken).
fn skip_body(body: &mut Body, bytes: &[u8]) -> (usize, bool, bool) {
    let mut used = 0;
    while used < bytes.len() {
        let rest = &bytes[used..];
        match body {
            Body::Length(n) => {
                let take = (*n).min(rest.len() as u64);
                *n -= take;
                used += take as usize;
                if *n == 0 {
                    return (used, true, false);
                }
            }
            Body::ChunkSize(line) => {
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    line.extend_from_slice(rest);
                    used = bytes.len();
                    if line.len() > 1024 {
                        return (used, false, true);
                    }
                    break;
                };
                line.extend_from_slice(&rest[..nl]);
                used += nl + 1;
                let text = String::from_utf8_lossy(line);
                let size = text.split(';').next().unwrap_or("").trim();
                match u64::from_str_radix(size, 16) {
                    Ok(0) => *body = Body::Trailers(Vec::new()),
                    Ok(n) => *body = Body::ChunkData(n),
                    Err(_) => return (used, false, true),
                }
            }
            Body::ChunkData(n) => {
                let take = (*n).min(rest.len() as u64);
                *n -= take;
                used += take as usize;
                if *n == 0 {
                    *body = Body::ChunkDataEnd(0);
                }
            }
            Body::ChunkDataEnd(seen) => {
                // The CRLF after a chunk's data.
                if rest[0] == b'\n' {
                    *body = Body::ChunkSize(Vec::new());
                } else if rest[0] != b'\r' || *seen > 0 {
                    return (used, false, true);
                } else {
                    *seen += 1;
                }
                used += 1;
            }
            Body::Trailers(line) => {
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    line.extend_from_slice(rest);
                    used = bytes.len();
                    if line.len() > MAX_HEAD_BYTES {
                        return (used, false, true);
                    }
                    break;
                };
                line.extend_from_slice(&rest[..nl]);
                used += nl + 1;
                let empty = line.iter().all(|&b| b == b'\r');
                line.clear();
                if empty {
                    return (used, true, false);
                }
            }
        }
    }
    (used, false, false)
}

/// The upstream side of an outbound relay, observed: writes are the app's requests, reads the
/// server's responses.
pub struct Observed<IO> {
    inner: IO,
    parser: ResponseParser,
    series: RequestSeries,
    metrics: Arc<Metrics>,
    /// When the request being answered started (its first byte was written); with pipelining,
    /// the first request of the batch.
    started: Option<Instant>,
    /// Request bytes were written since the last response head.
    pending: bool,
    counted_connection: bool,
}

impl<IO> Observed<IO> {
    pub fn new(inner: IO, metrics: Arc<Metrics>, peer_label: String) -> Self {
        Observed {
            inner,
            parser: ResponseParser::default(),
            series: metrics.request_series("outbound", peer_label),
            metrics,
            started: None,
            pending: false,
            counted_connection: false,
        }
    }

    fn on_request_bytes(&mut self, written: &[u8]) {
        if self.parser.is_done() || written.is_empty() {
            return;
        }
        if !self.pending {
            self.pending = true;
            self.started = Some(Instant::now());
            self.parser.head_request = written.starts_with(b"HEAD ");
        }
    }

    fn on_response_bytes(&mut self, read: &[u8]) {
        if self.parser.is_done() {
            return;
        }
        for seen in self.parser.feed(read) {
            let elapsed = self.started.take().map_or(Duration::ZERO, |s| s.elapsed());
            self.series.observe(seen.status, elapsed);
            let outcome = if seen.status == 101 {
                "upgraded"
            } else {
                "forwarded"
            };
            self.metrics
                .requests
                .with_label_values(&["outbound", outcome])
                .inc();
            if !self.counted_connection {
                self.counted_connection = true;
                self.metrics
                    .http_connections
                    .with_label_values(&["outbound", "http1"])
                    .inc();
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Observed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                self.on_response_bytes(fresh);
            }
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Observed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.on_request_bytes(&buf[..n]);
        }
        result
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

    fn statuses(parser: &mut ResponseParser, chunks: &[&[u8]]) -> Vec<u16> {
        chunks
            .iter()
            .flat_map(|c| parser.feed(c))
            .map(|s| s.status)
            .collect()
    }

    #[test]
    fn keep_alive_responses_are_counted_one_by_one_across_any_split() {
        let stream: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n";
        for split in 1..stream.len() {
            let mut p = ResponseParser::default();
            let got = statuses(&mut p, &[&stream[..split], &stream[split..]]);
            assert_eq!(got, [200, 404, 204, 503], "split at {split}");
            assert!(p.between_responses(), "split at {split}");
        }
        let mut p = ResponseParser::default();
        let one_byte_at_a_time: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(statuses(&mut p, &one_byte_at_a_time), [200, 404, 204, 503]);
    }

    #[test]
    fn a_head_response_has_no_body_even_with_a_content_length() {
        let mut p = ResponseParser {
            head_request: true,
            ..Default::default()
        };
        let got = statuses(&mut p, &[b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"]);
        assert_eq!(got, [200]);
        assert!(p.between_responses());
    }

    #[test]
    fn what_is_not_plain_http1_ends_the_observation() {
        let cases: &[&[u8]] = &[
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"\x16\x03\x03\x00\x10garbage",
            b"HTTP/1.1 200 OK\r\n\r\nbody until close",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        ];
        for case in cases {
            let mut p = ResponseParser::default();
            let got = statuses(
                &mut p,
                &[case, b"HTTP/1.1 500 x\r\ncontent-length: 0\r\n\r\n"],
            );
            assert!(p.is_done(), "{:?}", String::from_utf8_lossy(case));
            assert!(
                !got.contains(&500),
                "nothing after the end is counted: {:?}",
                String::from_utf8_lossy(case)
            );
        }
        let mut p = ResponseParser::default();
        assert_eq!(
            statuses(&mut p, &[&[b'x'; MAX_HEAD_BYTES + 10]]),
            Vec::<u16>::new()
        );
        assert!(p.is_done(), "an endless head is given up on");
    }

    #[tokio::test]
    async fn relayed_requests_land_in_the_outbound_series() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let metrics = Arc::new(Metrics::new());
        let (near, mut far) = tokio::io::duplex(4096);
        let mut observed = Observed::new(near, metrics.clone(), "spiffe://t/ns/a/sa/b".into());
        for (status, body) in [(200, "ok"), (403, "no")] {
            observed
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut req = [0u8; 27];
            far.read_exact(&mut req).await.unwrap();
            far.write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\n{body}").as_bytes(),
            )
            .await
            .unwrap();
            let mut resp = vec![0u8; 40];
            let n = observed.read(&mut resp).await.unwrap();
            assert!(n > 0);
        }
        let count = |class: &str| {
            metrics
                .peer_requests
                .with_label_values(&["outbound", "spiffe://t/ns/a/sa/b", class])
                .get()
        };
        assert_eq!((count("2xx"), count("4xx")), (1, 1));
        assert_eq!(
            metrics
                .request_duration
                .with_label_values(&["outbound", "2xx"])
                .get_sample_count(),
            1
        );
        assert_eq!(
            metrics
                .http_connections
                .with_label_values(&["outbound", "http1"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn pipelined_requests_are_each_counted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let metrics = Arc::new(Metrics::new());
        let (near, mut far) = tokio::io::duplex(4096);
        let mut observed = Observed::new(near, metrics.clone(), "none".into());
        let two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        observed.write_all(two).await.unwrap();
        let mut req = vec![0u8; two.len()];
        far.read_exact(&mut req).await.unwrap();
        let answers = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\n";
        far.write_all(answers).await.unwrap();
        let mut got = vec![0u8; answers.len()];
        observed.read_exact(&mut got).await.unwrap();
        let count = |class: &str| {
            metrics
                .request_duration
                .with_label_values(&["outbound", class])
                .get_sample_count()
        };
        assert_eq!((count("2xx"), count("5xx")), (1, 1));
    }
}
