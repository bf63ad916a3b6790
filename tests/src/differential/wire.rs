//! The raw client: one connection per variant to the sidecar's inbound port (over PQ mTLS with
//! a mesh certificate, or plaintext), the variant's bytes written as they are, and the answer
//! summarised as the status codes it holds (HTTP/1 status lines, HTTP/2 frames).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;

use super::corpus::Part;
use super::RoutedOriginalDst;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An answer is complete when nothing more arrived for this long.
const QUIET: Duration = Duration::from_millis(250);
/// How long to wait for a first byte (the sidecar's sniff timeout is 2 s).
const FIRST_BYTE: Duration = Duration::from_millis(2600);

/// Connects to the sidecar as if the connection "was going" to `app_port`.
pub async fn connect(
    sidecar: SocketAddr,
    app_port: u16,
    routes: &RoutedOriginalDst,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Io>, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .map_err(|e| e.to_string())?;
    let port = socket.local_addr().map_err(|e| e.to_string())?.port();
    routes.route(port, app_port);
    let tcp = socket.connect(sidecar).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(Box::new(tcp)),
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from("pqmesh.mesh").expect("name");
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("mTLS handshake: {e}"))?;
            Ok(Box::new(tls))
        }
    }
}

/// Writes the parts (waiting for the answer to each before the next, as an upgrading client
/// does) and returns every byte the sidecar sent back.
pub async fn exchange(io: Box<dyn Io>, parts: &[Part]) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let got = Arc::new(Mutex::new((Vec::new(), Instant::now(), false)));
    let sink = got.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = rd.read(&mut buf).await.unwrap_or(0);
            let mut g = sink.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                g.2 = true;
                return;
            }
            g.0.extend_from_slice(&buf[..n]);
            g.1 = Instant::now();
        }
    });
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            settle(
                &got,
                Duration::from_millis(150),
                Duration::from_millis(1000),
            )
            .await;
        }
        if wr.write_all(&encode(part)).await.is_err() || wr.flush().await.is_err() {
            break;
        }
    }
    settle(&got, QUIET, FIRST_BYTE).await;
    reader.abort();
    let g = got.lock().unwrap_or_else(|e| e.into_inner());
    g.0.clone()
}

type Got = Arc<Mutex<(Vec<u8>, Instant, bool)>>;

/// Until the connection closed, or `quiet` passed since the last byte, or `first` passed
/// without a byte since the call.
async fn settle(got: &Got, quiet: Duration, first: Duration) {
    let start = Instant::now();
    let before = got.lock().unwrap_or_else(|e| e.into_inner()).0.len();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let g = got.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if g.2
            || (g.0.len() > before && now - g.1.max(start) >= quiet)
            || (g.0.len() == before && now - start >= first)
        {
            return;
        }
    }
}

pub fn encode(part: &Part) -> Vec<u8> {
    match part {
        Part::Raw(b) => b.clone(),
        Part::H2Preface => [H2_PREFACE, &frame(4, 0, 0, &[])].concat(),
        Part::H2Headers { stream, headers } => {
            let mut block = Vec::new();
            for (name, value) in headers {
                block.push(0x00); // literal without indexing, new name
                for s in [name.as_bytes(), value.as_bytes()] {
                    int7(&mut block, s.len());
                    block.extend_from_slice(s);
                }
            }
            frame(1, 0x5, *stream, &block) // END_STREAM | END_HEADERS
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with a 7-bit prefix (string lengths, H bit clear).
fn int7(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// The statuses in an answer: `200`, `101>h2:200`, `h2:GOAWAY`, `-` for none, `+` between.
pub fn statuses(bytes: &[u8]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    let mut h2_from = if bytes.starts_with(b"\0") {
        Some(0)
    } else {
        None
    };
    while let Some(at) = find(&bytes[i..], b"HTTP/1.") {
        let at = i + at;
        let line_start = at == 0 || bytes[at - 1] == b'\n';
        let code = bytes
            .get(at + 9..at + 12)
            .filter(|c| line_start && c.iter().all(u8::is_ascii_digit));
        if let Some(code) = code {
            out.push(String::from_utf8_lossy(code).into_owned());
            if code == b"101" {
                h2_from = find(&bytes[at..], b"\r\n\r\n").map(|e| at + e + 4);
                break;
            }
        }
        i = at + 7;
    }
    if let Some(from) = h2_from {
        out.extend(h2_frames(&bytes[from..]));
    }
    if out.is_empty() {
        "-".to_owned()
    } else {
        out.join("+")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn h2_frames(mut b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while b.len() >= 9 {
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
        let (kind, flags) = (b[3], b[4]);
        let Some(payload) = b.get(9..9 + len) else {
            break;
        };
        match kind {
            1 => out.push(format!("h2:{}", h2_status(payload, flags))),
            3 => out.push("h2:RST".to_owned()),
            7 => out.push("h2:GOAWAY".to_owned()),
            _ => {}
        }
        b = &b[9 + len..];
    }
    out
}

/// `:status` from the first field of a response header block (static index or indexed name 8).
fn h2_status(p: &[u8], flags: u8) -> String {
    let mut p = p;
    if flags & 0x8 != 0 {
        p = p.get(1..).unwrap_or(&[]);
    }
    if flags & 0x20 != 0 {
        p = p.get(5..).unwrap_or(&[]);
    }
    const STATIC: [&str; 7] = ["200", "204", "206", "304", "400", "404", "500"];
    match p {
        [b @ 0x88..=0x8e, ..] => STATIC[(b - 0x88) as usize].to_owned(),
        [0x48 | 0x08 | 0x18, len, rest @ ..] => {
            let n = (len & 0x7f) as usize;
            let value = rest.get(..n).unwrap_or(&[]);
            if len & 0x80 == 0 {
                String::from_utf8_lossy(value).into_owned()
            } else {
                huffman_digits(value)
            }
        }
        _ => "HEADERS".to_owned(),
    }
}

/// Decodes a Huffman-coded string of digits (RFC 7541 Appendix B: 0-2 are 5 bits, 3-9 six).
fn huffman_digits(v: &[u8]) -> String {
    let bits: Vec<u8> = v
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i + 5 <= bits.len() && out.len() < 3 {
        let five = bits[i..i + 5].iter().fold(0, |a, b| a * 2 + b);
        if five <= 2 {
            out.push((b'0' + five) as char);
            i += 5;
        } else if i + 6 <= bits.len() {
            let six = bits[i..i + 6].iter().fold(0, |a, b| a * 2 + b);
            match six {
                0b011001..=0b011111 => out.push((b'3' + six - 0b011001) as char),
                _ => return "HEADERS".to_owned(),
            }
            i += 6;
        } else {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_summarised() {
        assert_eq!(statuses(b""), "-");
        assert_eq!(
            statuses(b"HTTP/1.1 200 OK\r\n\r\n{\"proto\":\"HTTP/1.1\"}\nHTTP/1.1 403 F\r\n\r\n"),
            "200+403"
        );
        let mut up = b"HTTP/1.1 101 Switching\r\n\r\n".to_vec();
        up.extend(frame(4, 0, 0, &[]));
        up.extend(frame(1, 4, 3, &[0x88]));
        up.extend(frame(1, 4, 5, &[0x48, 0x83, 0x68, 0x0c, 0xff])); // "403", Huffman
        up.extend(frame(7, 0, 0, &[0; 8]));
        assert_eq!(statuses(&up), "101+h2:200+h2:403+h2:GOAWAY");
        let h = encode(&Part::H2Headers {
            stream: 1,
            headers: vec![(":path".into(), "x".repeat(200))],
        });
        assert_eq!(&h[3..9], &[1, 5, 0, 0, 0, 1]);
        assert_eq!(&h[9..10 + 5 + 1], &[0, 5, b':', b'p', b'a', b't', b'h']);
        assert_eq!(&h[16..18], &[127, 73]);
    }
}
