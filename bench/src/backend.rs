//! The app behind every proxy pair: HTTP/1.1 with keep-alive. `GET /bulk/<n>` answers `n` bytes
//! (bulk throughput); any other request answers a fixed 1 KiB body (latency runs).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SMALL_BODY: usize = 1024;
const CHUNK: usize = 64 * 1024;

/// Binds 127.0.0.1:0 and serves until the runtime ends.
pub async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

async fn serve(mut tcp: TcpStream) {
    let small = {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {SMALL_BODY}\r\n\r\n"
        )
        .into_bytes();
        r.extend(std::iter::repeat_n(b'x', SMALL_BODY));
        r
    };
    let zeros = vec![0u8; CHUNK];
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        let result = match path
            .strip_prefix("/bulk/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(mut left) => {
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {left}\r\n\r\n"
                );
                let mut r = tcp.write_all(header.as_bytes()).await;
                while left > 0 && r.is_ok() {
                    let n = left.min(CHUNK as u64) as usize;
                    r = tcp.write_all(&zeros[..n]).await;
                    left -= n as u64;
                }
                r
            }
            None => tcp.write_all(&small).await,
        };
        if result.is_err() {
            return;
        }
    }
}
