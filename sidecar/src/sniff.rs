//! Protocol detection on inbound bytes (untrusted): is this a mesh client (a TLS ClientHello
//! offering ALPN `pqmesh/1`), and after mTLS, is the application protocol HTTP/1.x, HTTP/2 with
//! prior knowledge, or something else (proxied as opaque TCP)?

/// What the first bytes of an inbound connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TLS ClientHello that offers ALPN `pqmesh/1`.
    MeshTls,
    /// TLS, but not from a mesh sidecar (no `pqmesh/1`).
    OtherTls,
    Plaintext,
}

/// Largest TLS record (2^14) plus its 5-byte header.
pub const MAX_HELLO_BYTES: usize = 16384 + 5;

/// Classifies the bytes peeked so far; `None` = need more bytes.
pub fn classify_transport(buf: &[u8]) -> Option<Transport> {
    let &first = buf.first()?;
    if first != 0x16 {
        return Some(Transport::Plaintext);
    }
    if buf.len() < 5 {
        return None;
    }
    if buf[1] != 0x03 {
        return Some(Transport::Plaintext);
    }
    let record_len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if record_len == 0 || record_len > 16384 {
        return Some(Transport::OtherTls);
    }
    if buf.len() < 5 + record_len {
        return None;
    }
    Some(match client_hello_alpn(&buf[5..5 + record_len]) {
        Some(protocols) if protocols.contains(&crate::ALPN_MESH) => Transport::MeshTls,
        _ => Transport::OtherTls,
    })
}

/// The ALPN protocol names of a ClientHello handshake message (the record's payload). `None` if it
/// is not a complete, well-formed ClientHello or carries no ALPN extension.
pub fn client_hello_alpn(msg: &[u8]) -> Option<Vec<&[u8]>> {
    let mut r = Reader(msg);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let body_len = r.u24()?;
    let mut body = Reader(r.take(body_len)?);
    body.take(2 + 32)?; // legacy_version, random
    let sid = body.u8()? as usize;
    body.take(sid)?;
    let suites = body.u16()? as usize;
    body.take(suites)?;
    let compression = body.u8()? as usize;
    body.take(compression)?;
    let ext_len = body.u16()? as usize;
    let mut exts = Reader(body.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()? as usize;
        let data = exts.take(len)?;
        if kind == 16 {
            let mut alpn = Reader(data);
            let list_len = alpn.u16()? as usize;
            let mut list = Reader(alpn.take(list_len)?);
            let mut names = Vec::new();
            while !list.0.is_empty() {
                let n = list.u8()? as usize;
                names.push(list.take(n)?);
            }
            return Some(names);
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| ((b[0] as usize) << 16) | ((b[1] as usize) << 8) | b[2] as usize)
    }
}

/// The application protocol inside a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    Http1,
    /// HTTP/2 with prior knowledge (the connection preface).
    Http2,
    Opaque,
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// Classifies the first application bytes of an inbound connection; `None` = need more bytes.
///
/// Anything an HTTP server would read as a request line is HTTP (served by the HTTP path, which
/// applies the policy and stamps the identity, or answers 400), never relayed raw: a raw relay
/// lets the client write its own `x-pqmesh-peer-identity` to the app. That includes empty lines
/// before the request line (RFC 9112 §2.2 lets servers skip them) and a first line that names an
/// HTTP version anywhere, in any case. The rest is opaque and is relayed through
/// [`crate::opaque_guard::OpaqueGuard`], which ends the connection if its first line turns out
/// to name an HTTP version after all, or the identity header's name appears.
pub fn classify_app(buf: &[u8]) -> Option<AppProtocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Some(AppProtocol::Http2)
        } else {
            None
        };
    }
    let Some(start) = buf.iter().position(|&b| b != b'\r' && b != b'\n') else {
        return None; // only empty lines so far
    };
    let body = &buf[start..];
    let line = &body[..body.iter().position(|&b| b == b'\n').unwrap_or(body.len())];
    if names_http_version(line) {
        return Some(AppProtocol::Http1);
    }
    for method in METHODS {
        let n = line.len().min(method.len());
        if line[..n] == method[..n] {
            // `GET /x` with no version is HTTP/0.9 to some servers: the HTTP path refuses it.
            return if line.len() >= method.len() {
                Some(AppProtocol::Http1)
            } else {
                None
            };
        }
    }
    Some(AppProtocol::Opaque)
}

/// `HTTP/` in any case anywhere in the line (`GET / HTTP/1.1`, `FOO\t/\thttp/1.0`).
pub fn names_http_version(line: &[u8]) -> bool {
    line.windows(5).any(|w| w.eq_ignore_ascii_case(b"HTTP/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls with the given ALPN list.
    fn hello(alpn: &[&[u8]]) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls_post_quantum::provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls_pki_types::ServerName::try_from("x.test").unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    /// A minimal TLS record holding a ClientHello with the given extensions block contents.
    fn raw_hello(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([0u8; 32]); // random
        body.push(0); // session id
        body.extend([0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend([0x01, 0x00]); // null compression
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(extensions);
        let mut msg = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
        msg.extend(body);
        let mut record = vec![0x16, 0x03, 0x01, (msg.len() >> 8) as u8, msg.len() as u8];
        record.extend(msg);
        record
    }

    #[test]
    fn recognises_mesh_and_other_tls() {
        assert_eq!(
            classify_transport(&hello(&[b"pqmesh/1"])),
            Some(Transport::MeshTls)
        );
        assert_eq!(
            classify_transport(&hello(&[b"h2", b"pqmesh/1"])),
            Some(Transport::MeshTls)
        );
        assert_eq!(
            classify_transport(&hello(&[b"h2"])),
            Some(Transport::OtherTls)
        );
        assert_eq!(classify_transport(&hello(&[])), Some(Transport::OtherTls));
        let full = hello(&[b"pqmesh/1"]);
        for cut in [1, 4, 5, 100, full.len() - 1] {
            assert_eq!(classify_transport(&full[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn bad_and_hostile_bytes_never_count_as_mesh() {
        let mut wrong_type = hello(&[b"pqmesh/1"]);
        wrong_type[5] = 2; // ServerHello
        let cases: Vec<(&str, Vec<u8>, Option<Transport>)> = vec![
            (
                "http",
                b"GET / HTTP/1.1\r\n".to_vec(),
                Some(Transport::Plaintext),
            ),
            ("ssh", b"SSH-2.0-x\r\n".to_vec(), Some(Transport::Plaintext)),
            (
                "bad record version",
                vec![0x16, 0x02, 0x00, 0x00, 0x05],
                Some(Transport::Plaintext),
            ),
            (
                "zero-length record",
                vec![0x16, 0x03, 0x01, 0x00, 0x00],
                Some(Transport::OtherTls),
            ),
            (
                "record too long",
                vec![0x16, 0x03, 0x01, 0x48, 0x01],
                Some(Transport::OtherTls),
            ),
            ("not a client hello", wrong_type, Some(Transport::OtherTls)),
            (
                "truncated body",
                vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x09],
                Some(Transport::OtherTls),
            ),
            ("empty", vec![], None),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(classify_transport(&bytes), want, "{name}");
        }
        // Hand-built ClientHellos whose ALPN extension is malformed.
        let alpn_ok = [
            0x00, 0x10, 0x00, 0x0b, 0x00, 0x09, 0x08, b'p', b'q', b'm', b'e', b's', b'h', b'/',
            b'1',
        ];
        assert_eq!(
            classify_transport(&raw_hello(&alpn_ok)),
            Some(Transport::MeshTls),
            "control"
        );
        let malformed: [&[u8]; 4] = [
            &[
                0x00, 0x10, 0x00, 0x0b, 0x00, 0x0a, 0x08, b'p', b'q', b'm', b'e', b's', b'h', b'/',
                b'1',
            ], // list overruns
            &[
                0x00, 0x10, 0x00, 0x0b, 0x00, 0x09, 0x09, b'p', b'q', b'm', b'e', b's', b'h', b'/',
                b'1',
            ], // name overruns
            &[
                0x00, 0x10, 0x00, 0x20, 0x00, 0x09, 0x08, b'p', b'q', b'm', b'e', b's', b'h', b'/',
                b'1',
            ], // ext overruns
            &[
                0x00, 0x10, 0x00, 0x0b, 0x00, 0x09, 0x08, b'p', b'q', b'm', b'e', b's', b'h', b'/',
                b'2',
            ], // other name
        ];
        for (i, ext) in malformed.iter().enumerate() {
            assert_eq!(
                classify_transport(&raw_hello(ext)),
                Some(Transport::OtherTls),
                "malformed ALPN {i}"
            );
        }
        // Every prefix of garbage is handled without panicking.
        let noise: Vec<u8> = (0..600u32).map(|i| (i * 7919 % 251) as u8).collect();
        for cut in 0..noise.len() {
            let mut b = vec![0x16, 0x03, 0x03, 0x02, 0x00];
            b.extend_from_slice(&noise[..cut]);
            let _ = classify_transport(&b);
        }
    }

    #[test]
    fn application_protocols() {
        assert_eq!(
            classify_app(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Some(AppProtocol::Http1)
        );
        assert_eq!(
            classify_app(b"POST /api HTTP/1.0\r\n"),
            Some(AppProtocol::Http1)
        );
        assert_eq!(classify_app(H2_PREFACE), Some(AppProtocol::Http2));
        assert_eq!(classify_app(&H2_PREFACE[..10]), None);
        assert_eq!(classify_app(b"GE"), None);
        assert_eq!(
            classify_app(b"GET /no-version-yet"),
            Some(AppProtocol::Http1)
        );
        // Begins like a request line: the HTTP parser judges it (it answers 400), never raw.
        assert_eq!(classify_app(b"GET / SMTP\r\n"), Some(AppProtocol::Http1));
        for could_be_read_as_http in [
            &b"\r\nGET / HTTP/1.1\r\n"[..],
            b"\n\n\nGET / HTTP/1.1\r\n",
            b"get / HTTP/1.1\r\n",
            b"PROPFIND / HTTP/1.1\r\n",
            b"FOO / http/1.0\r\n",
            b"X\t/\tHTTP/1.1\r\n",
            b"GET /\r\n",
        ] {
            assert_eq!(
                classify_app(could_be_read_as_http),
                Some(AppProtocol::Http1),
                "{:?}",
                String::from_utf8_lossy(could_be_read_as_http)
            );
        }
        assert_eq!(classify_app(b"\r\n"), None);
        assert_eq!(classify_app(b"\r\nGE"), None);
        // Opaque, relayed through the first-line gate.
        assert_eq!(classify_app(b"ping"), Some(AppProtocol::Opaque));
        assert_eq!(classify_app(b"let me in"), Some(AppProtocol::Opaque));
        assert_eq!(
            classify_app(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Some(AppProtocol::Opaque)
        );
        assert_eq!(
            classify_app(b"*1\r\n$4\r\nPING\r\n"),
            Some(AppProtocol::Opaque)
        );
        assert_eq!(classify_app(b"\x00\x01binary"), Some(AppProtocol::Opaque));
        assert_eq!(classify_app(b"HELO mail\r\n"), Some(AppProtocol::Opaque));
        // A request line longer than the window is still HTTP: as opaque bytes it would carry a
        // client's own x-pqmesh-peer-identity to the app.
        assert_eq!(
            classify_app(&[b"GET /".as_slice(), &[b'a'; 9000]].concat()),
            Some(AppProtocol::Http1)
        );
    }
}
