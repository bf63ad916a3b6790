//! Golden request metrics for HTTP/1.1 on the outbound byte relay. Outbound relays bytes per
//! connection (it never rewrites what the app sends), so requests are *observed*, not proxied:
//! the app's request heads are parsed on the way out (bodies skipped by their framing) and the
//! upstream's response heads on the way back, giving status class and latency per request.
//! A response counts only against a request the app sent: an upstream that answers more than was
//! asked (or anything unparseable on either side) ends the observation for that connection, so
//! a hostile server cannot inflate the caller's metrics. Anything that is not HTTP/1.x — a
//! server-first protocol, TLS from the app, a body delimited by close, CONNECT — ends it too; the
//! bytes flow unchanged either way. Latency is measured from the first byte of a request's head
//! written to its response's head read.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::{Metrics, RequestSeries};

/// Longest response head observed; a longer one ends the observation (the app still gets it).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// Most requests sent and not yet answered (pipelining); more ends the observation.
const MAX_OUTSTANDING: usize = 1024;

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

/// The response side of one HTTP/1.1 connection, fed the bytes as they arrive. It expects one
/// final response per request the app sent ([`ResponseParser::expect`]); a response nobody asked
/// for ends the observation and is not reported.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    /// The requests sent and not yet answered, oldest first: whether each is a HEAD (its
    /// response has no body).
    expected: VecDeque<bool>,
}

impl Default for ResponseParser {
    fn default() -> Self {
        ResponseParser {
            state: State::Head(Vec::new()),
            expected: VecDeque::new(),
        }
    }
}

impl ResponseParser {
    /// A parser awaiting the answers to these requests (`true` for a HEAD).
    pub fn expecting(heads: &[bool]) -> Self {
        let mut p = Self::default();
        for &head in heads {
            p.expect(head);
        }
        p
    }

    /// One more request was sent (`head`: its method is HEAD).
    pub fn expect(&mut self, head: bool) {
        if self.expected.len() >= MAX_OUTSTANDING {
            self.stop();
        } else {
            self.expected.push_back(head);
        }
    }

    /// Ends the observation: nothing more is reported.
    pub fn stop(&mut self) {
        self.state = State::Done;
        self.expected.clear();
    }

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
                    let head_request = self.expected.front().copied().unwrap_or(false);
                    let step = head_step(buf, bytes, |b| {
                        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        let mut resp = httparse::Response::new(&mut headers);
                        Ok(match resp.parse(b).map_err(|_| ())? {
                            httparse::Status::Complete(len) => {
                                let status = resp.code.unwrap_or(0);
                                Some((
                                    len,
                                    (status, body_framing(status, head_request, resp.headers)),
                                ))
                            }
                            httparse::Status::Partial => None,
                        })
                    });
                    let (used, (status, framing)) = match step {
                        Step::Complete(used, value) => (used, value),
                        Step::Partial => break,
                        Step::Bad => {
                            self.stop();
                            break;
                        }
                    };
                    bytes = &bytes[used..];
                    if self.expected.is_empty() {
                        // Unsolicited: no request is waiting for it.
                        self.stop();
                        break;
                    }
                    self.state = match framing {
                        Some(Body::Length(0)) => State::Head(Vec::new()),
                        Some(body) => State::Body(body),
                        None => State::Done,
                    };
                    if (100..200).contains(&status) && status != 101 {
                        // 100 Continue: the final response to the same request follows.
                        self.state = State::Head(Vec::new());
                    } else {
                        self.expected.pop_front();
                        seen.push(Seen { status });
                    }
                }
                State::Body(body) => {
                    let (used, finished, broken) = skip_body(body, bytes);
                    bytes = &bytes[used..];
                    if broken {
                        self.stop();
                    } else if finished {
                        self.state = State::Head(Vec::new());
                    }
                }
            }
        }
        seen
    }
}

/// The request side of one HTTP/1.1 connection: finds where each request the app writes
/// begins, so that responses can be matched to requests.
#[derive(Debug)]
pub struct RequestParser {
    state: State,
}

impl Default for RequestParser {
    fn default() -> Self {
        RequestParser {
            state: State::Head(Vec::new()),
        }
    }
}

impl RequestParser {
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether the next byte written starts a new request.
    pub fn between_requests(&self) -> bool {
        matches!(&self.state, State::Head(b) if b.is_empty())
    }

    /// Whether part of a request head has arrived and the rest has not.
    pub fn in_partial_head(&self) -> bool {
        matches!(&self.state, State::Head(b) if !b.is_empty())
    }

    /// Consumes `bytes`; returns one entry per request head completed in them (`true` for HEAD).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<bool> {
        let mut heads = Vec::new();
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => break,
                State::Head(buf) => {
                    let step = head_step(buf, bytes, |b| {
                        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        let mut req = httparse::Request::new(&mut headers);
                        Ok(match req.parse(b).map_err(|_| ())? {
                            httparse::Status::Complete(len) => {
                                let method = req.method.unwrap_or_default();
                                let framing = if method == "CONNECT" {
                                    None // a tunnel follows
                                } else {
                                    request_body_framing(req.headers)
                                };
                                Some((len, (method == "HEAD", framing)))
                            }
                            httparse::Status::Partial => None,
                        })
                    });
                    let (used, (head, framing)) = match step {
                        Step::Complete(used, value) => (used, value),
                        Step::Partial => break,
                        Step::Bad => {
                            self.state = State::Done;
                            break;
                        }
                    };
                    bytes = &bytes[used..];
                    heads.push(head);
                    self.state = match framing {
                        Some(Body::Length(0)) => State::Head(Vec::new()),
                        Some(body) => State::Body(body),
                        None => State::Done,
                    };
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
        heads
    }
}

/// A request's body framing (RFC 9112 §6.3: chunked, Content-Length, or none); `None` when it
/// cannot be told for certain, because servers would disagree: both Transfer-Encoding and
/// Content-Length, a last transfer coding that is not exactly `chunked` (`xchunked` is not),
/// lengths that are not digits or differ.
fn request_body_framing(headers: &[httparse::Header]) -> Option<Body> {
    let values = |name: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(|v| v.trim_ascii())
            .collect::<Vec<_>>()
    };
    let (te, cl) = (values("transfer-encoding"), values("content-length"));
    match (te.last(), cl.first()) {
        (None, None) => Some(Body::Length(0)),
        (Some(_), Some(_)) => None,
        (Some(last), None) => last
            .eq_ignore_ascii_case(b"chunked")
            .then(|| Body::ChunkSize(Vec::new())),
        (None, Some(first)) => {
            let length = |v: &[u8]| {
                let digits = !v.is_empty() && v.iter().all(u8::is_ascii_digit);
                digits
                    .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .flatten()
            };
            let n = length(first)?;
            cl.iter()
                .all(|v| length(v) == Some(n))
                .then_some(Body::Length(n))
        }
    }
}

/// One attempt at a message head.
enum Step<T> {
    /// Complete: how many of the new bytes it used, and what `parse` made of it.
    Complete(usize, T),
    /// Not complete yet: every new byte is kept in the buffer.
    Partial,
    /// Not HTTP/1.x, or longer than [`MAX_HEAD_BYTES`].
    Bad,
}

/// Parses a head that began in earlier reads (`buf`) and continues in `bytes`. A head that
/// arrives whole is parsed in place, without copying; a split one is gathered in `buf`, at most
/// [`MAX_HEAD_BYTES`]. `parse` returns the head's length and its value, or `None` if partial.
fn head_step<T>(
    buf: &mut Vec<u8>,
    bytes: &[u8],
    parse: impl Fn(&[u8]) -> Result<Option<(usize, T)>, ()>,
) -> Step<T> {
    let had = buf.len();
    if had == 0 {
        return match parse(bytes) {
            Ok(Some((len, value))) => Step::Complete(len, value),
            Ok(None) if bytes.len() <= MAX_HEAD_BYTES => {
                buf.extend_from_slice(bytes);
                Step::Partial
            }
            _ => Step::Bad,
        };
    }
    let take = bytes.len().min((MAX_HEAD_BYTES + 1).saturating_sub(had));
    buf.extend_from_slice(&bytes[..take]);
    match parse(buf) {
        // The part before `had` was incomplete on its own, so the head ends in the new bytes.
        Ok(Some((len, value))) if len > had => {
            buf.clear();
            Step::Complete(len - had, value)
        }
        Ok(None) if buf.len() <= MAX_HEAD_BYTES => Step::Partial,
        _ => Step::Bad,
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

/// The upstream side of a relay, observed: writes are the requests, reads the server's
/// responses. Outbound the server is the upstream; inbound on an HTTP relay port, the app.
pub struct Observed<IO> {
    inner: IO,
    direction: &'static str,
    requests: RequestParser,
    responses: ResponseParser,
    /// When each request sent and not yet answered started, oldest first.
    started: VecDeque<Instant>,
    /// When the request head being written began (it may take several writes).
    head_started: Option<Instant>,
    series: RequestSeries,
    metrics: Arc<Metrics>,
    counted_connection: bool,
    /// Inbound HTTP relay: close the connection after this long with every request answered and
    /// no new one begun (the HTTP path's keep-alive limit).
    idle: Option<Duration>,
    idle_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Observed<IO> {
    pub fn new(
        inner: IO,
        direction: &'static str,
        metrics: Arc<Metrics>,
        peer_label: String,
    ) -> Self {
        Observed {
            inner,
            direction,
            requests: RequestParser::default(),
            responses: ResponseParser::default(),
            started: VecDeque::new(),
            head_started: None,
            series: metrics.request_series(direction, peer_label),
            metrics,
            counted_connection: false,
            idle: None,
            idle_deadline: None,
        }
    }

    /// Ends the stream (reads fail with `TimedOut`) once it has been quiet for `idle` between
    /// requests: every request answered, no new one begun.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// Between requests with nothing outstanding (and still observed: an upgraded or unframed
    /// connection is never timed out here).
    fn quiescent(&self) -> bool {
        !self.responses.is_done()
            && self.started.is_empty()
            && self.requests.between_requests()
            && self.responses.between_responses()
    }

    fn on_request_bytes(&mut self, written: &[u8]) {
        if self.responses.is_done() || written.is_empty() {
            return;
        }
        self.idle_deadline = None;
        let now = Instant::now();
        if self.requests.between_requests() {
            self.head_started = Some(now);
        }
        for head in self.requests.feed(written) {
            self.started
                .push_back(self.head_started.take().unwrap_or(now));
            self.responses.expect(head);
        }
        if self.requests.is_done() {
            // What the app sends is no longer HTTP/1.x as far as we can tell: responses can no
            // longer be matched to requests.
            self.responses.stop();
        }
    }

    fn on_response_bytes(&mut self, read: &[u8]) {
        if self.responses.is_done() {
            return;
        }
        for seen in self.responses.feed(read) {
            let elapsed = self
                .started
                .pop_front()
                .map_or(Duration::ZERO, |s| s.elapsed());
            self.series.observe(seen.status, elapsed);
            let outcome = if seen.status == 101 {
                "upgraded"
            } else {
                "forwarded"
            };
            self.metrics
                .requests
                .with_label_values(&[self.direction, outcome])
                .inc();
            if !self.counted_connection {
                self.counted_connection = true;
                self.metrics
                    .http_connections
                    .with_label_values(&[self.direction, "http1"])
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
        if let Some(idle) = self.idle {
            if !self.quiescent() {
                self.idle_deadline = None;
            } else {
                let deadline = self
                    .idle_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("idle between requests for {idle:?}"),
                    )));
                }
            }
        }
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
        // Four requests (the 100 Continue is interim, not an answer).
        let four = [false; 4];
        for split in 1..stream.len() {
            let mut p = ResponseParser::expecting(&four);
            let got = statuses(&mut p, &[&stream[..split], &stream[split..]]);
            assert_eq!(got, [200, 404, 204, 503], "split at {split}");
            assert!(p.between_responses(), "split at {split}");
        }
        let mut p = ResponseParser::expecting(&four);
        let one_byte_at_a_time: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(statuses(&mut p, &one_byte_at_a_time), [200, 404, 204, 503]);
    }

    #[test]
    fn a_head_response_has_no_body_even_with_a_content_length() {
        let mut p = ResponseParser::expecting(&[true]);
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
            let mut p = ResponseParser::expecting(&[false, false]);
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
        let mut p = ResponseParser::expecting(&[false]);
        assert_eq!(
            statuses(&mut p, &[&[b'x'; MAX_HEAD_BYTES + 10]]),
            Vec::<u16>::new()
        );
        assert!(p.is_done(), "an endless head is given up on");
    }

    /// Outside review F5: one request and 20,000 responses counted 20,000 outbound 2xx. A
    /// response only counts against a request the app sent; the first unsolicited one ends the
    /// observation.
    #[test]
    fn responses_nobody_asked_for_are_not_counted() {
        let one = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let flood: Vec<u8> = one.repeat(20_000);
        let mut p = ResponseParser::expecting(&[false]);
        assert_eq!(statuses(&mut p, &[&flood]), [200]);
        assert!(p.is_done());
        let mut p = ResponseParser::default();
        assert_eq!(statuses(&mut p, &[one]), Vec::<u16>::new());
        // An interim response does not answer the request; the final one does.
        let mut p = ResponseParser::expecting(&[false]);
        let got = statuses(
            &mut p,
            &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 C\r\nContent-Length: 0\r\n\r\n"],
        );
        assert_eq!(got, [201]);
    }

    #[test]
    fn request_heads_are_found_across_bodies_and_any_split() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 21\r\n\r\nGET /b HTTP/1.1\r\n\r\nxxHEAD /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n0\r\n\r\nGET /d HTTP/1.1\r\n\r\n";
        for split in 1..stream.len() {
            let mut p = RequestParser::default();
            let mut heads = p.feed(&stream[..split]);
            heads.extend(p.feed(&stream[split..]));
            assert_eq!(heads, [false, true, false], "split at {split}");
            assert!(p.between_requests(), "split at {split}");
        }
        for not_http in [
            &b"\x16\x03\x01\x00\xa5\x01"[..],
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ] {
            let mut p = RequestParser::default();
            assert!(p.feed(not_http).len() <= 1);
            assert!(p.is_done(), "{:?}", String::from_utf8_lossy(not_http));
        }
    }

    /// Through `Observed`: what the upstream says beyond the app's requests, or while the app
    /// speaks something else, changes no metric; a status outside 100..=599 is `other`.
    #[tokio::test]
    async fn an_upstream_cannot_forge_the_callers_metrics() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let total = |metrics: &Metrics| {
            crate::metrics::STATUS_CLASSES
                .iter()
                .map(|c| {
                    metrics
                        .request_duration
                        .with_label_values(&["outbound", c])
                        .get_sample_count()
                })
                .sum::<u64>()
        };
        let exchange = |request: &'static [u8], answer: Vec<u8>| async move {
            let metrics = Arc::new(Metrics::new());
            let (near, mut far) = tokio::io::duplex(1 << 20);
            let mut observed = Observed::new(near, "outbound", metrics.clone(), "none".into());
            observed.write_all(request).await.unwrap();
            let mut req = vec![0u8; request.len()];
            far.read_exact(&mut req).await.unwrap();
            far.write_all(&answer).await.unwrap();
            drop(far);
            let mut got = Vec::new();
            observed.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, answer, "the bytes flow unchanged");
            metrics
        };
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".repeat(20_000);
        let m = exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ok.clone()).await;
        assert_eq!(total(&m), 1, "one request, one response counted");
        let m = exchange(b"\x16\x03\x01\x00\x05hello", ok).await;
        assert_eq!(total(&m), 0, "the app did not speak HTTP/1.1");
        let m = exchange(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n".to_vec(),
        )
        .await;
        let class = |c: &str| {
            m.request_duration
                .with_label_values(&["outbound", c])
                .get_sample_count()
        };
        assert_eq!((class("other"), class("5xx")), (1, 0));
    }

    #[tokio::test]
    async fn relayed_requests_land_in_the_outbound_series() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let metrics = Arc::new(Metrics::new());
        let (near, mut far) = tokio::io::duplex(4096);
        let mut observed = Observed::new(
            near,
            "outbound",
            metrics.clone(),
            "spiffe://t/ns/a/sa/b".into(),
        );
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
        let mut observed = Observed::new(near, "outbound", metrics.clone(), "none".into());
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

    /// Inbound HTTP relay: a connection idle between requests ends after the keep-alive limit;
    /// one whose request the app is still answering does not.
    #[tokio::test(start_paused = true)]
    async fn an_idle_relay_ends_between_requests_but_not_while_the_app_answers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let idle = Duration::from_secs(10);
        let (near, mut app) = tokio::io::duplex(1 << 16);
        let mut observed = Observed::new(near, "inbound", Arc::new(Metrics::new()), "none".into())
            .with_idle_timeout(idle);
        let mut buf = [0u8; 1024];
        const REQUEST: &[u8] = b"GET /slow HTTP/1.1\r\nHost: b\r\n\r\n";
        observed.write_all(REQUEST).await.unwrap();
        // The app takes three idle periods to answer: no timeout meanwhile.
        let answer = async {
            tokio::time::sleep(idle * 3).await;
            let mut req = [0u8; REQUEST.len()];
            app.read_exact(&mut req).await.unwrap();
            assert_eq!(req, REQUEST);
            app.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            app
        };
        let (read, app) = tokio::join!(observed.read(&mut buf), answer);
        assert!(read.unwrap() > 0, "the answer arrived");
        let started = tokio::time::Instant::now();
        let err = observed.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), idle);
        drop(app);
    }
}
