//! Hostile clients against a sidecar pair (A's outbound → hybrid-PQ mTLS → B's HTTP-aware
//! inbound → app): oversized heads (431) and bodies (413), slowloris and slow-read clients
//! (bounded by timeouts while other clients are served), a connection flood, and many concurrent
//! connections with file descriptors and open-connection gauges back to baseline after they
//! close. `PQMESH_SOAK_CONNECTIONS` scales the last one (tests/reliability/soak.sh: 10,000).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_sidecar::http_proxy::{
    HEADER_READ_TIMEOUT, MAX_HEADER_BYTES, MAX_IDLE_APP_CONNECTIONS, MAX_REQUEST_BODY_BYTES,
    WRITE_STALL_TIMEOUT,
};
use pqmesh_tests::report::Table;
use pqmesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::adversarial::raw;

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

pub(crate) struct Pair {
    pub cp: ControlPlane,
    pub a: pqmesh_sidecar::RunningSidecar,
    pub b: pqmesh_sidecar::RunningSidecar,
    pub app: Arc<http_app::AppStats>,
    pub app_addr: SocketAddr,
}

pub(crate) async fn pair(b_extra: &[(&str, &str)]) -> Pair {
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    let (app_addr, _tcp, app) = http_app::start("b").await;
    let b = sidecar(with(
        with(
            cp.sidecar_env("api", ECDSA),
            &[
                ("PQMESH_INBOUND_APP_ADDR", &app_addr.to_string()),
                ("PQMESH_INBOUND_ALLOW", "shop/web"),
            ],
        ),
        b_extra,
    ))
    .await;
    cp.set_endpoints(
        &format!("endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n", b.inbound_addr.port()),
        1,
    )
    .await;
    let a = sidecar_redirected(cp.sidecar_env("web", ECDSA), Some(b.inbound_addr)).await;
    Pair {
        cp,
        a,
        b,
        app,
        app_addr,
    }
}

impl Pair {
    pub fn out(&self) -> SocketAddr {
        self.a.outbound_addr.unwrap()
    }
    pub fn requests(&self) -> usize {
        self.app.requests.load(Ordering::SeqCst)
    }
    /// One ordinary request's latency (panics if it fails: other clients must be unaffected).
    pub async fn timed_get(&self) -> Duration {
        let start = Instant::now();
        let (status, _) = raw(self.out(), "GET", "/ok", &[]).await;
        assert_eq!(status, 200, "an ordinary client was not served");
        start.elapsed()
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The process's open descriptors split into sockets of the app pool (connected, one end on the
/// app's port: B's idle pooled connections to the app and the app's side of them) and everything else,
/// with the other ones named by kind (`tcp :local->:remote`, `socket`, `file`) for a failure
/// message. The kernel's socket tables are the oracle, not the sidecar's own counters.
fn fd_breakdown(app_port: u16) -> (usize, std::collections::BTreeMap<String, usize>) {
    let mut tcp = std::collections::HashMap::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port =
                |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).unwrap_or(0);
            if f.len() > 9 {
                tcp.insert(f[9].to_owned(), (port(f[1]), port(f[2])));
            }
        }
    }
    let (mut pool, mut other) = (0, std::collections::BTreeMap::new());
    for fd in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let link = std::fs::read_link(fd.path()).unwrap_or_default();
        let link = link.to_string_lossy();
        let kind = match link
            .strip_prefix("socket:[")
            .and_then(|i| i.strip_suffix(']'))
        {
            Some(inode) => match tcp.get(inode) {
                Some(&(l, r)) if r != 0 && (l == app_port || r == app_port) => {
                    pool += 1;
                    continue;
                }
                Some(&(l, 0)) => format!("tcp listener :{l}"),
                Some(&(l, r)) => format!("tcp :{l}->:{r}"),
                None => "socket (not tcp)".to_owned(),
            },
            None if link.starts_with("anon_inode:") => link.into_owned(),
            None => "file".to_owned(),
        };
        *other.entry(kind).or_insert(0) += 1;
    }
    (pool, other)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn oversized_heads_and_bodies_are_refused_before_the_app() {
    let p = pair(&[]).await;
    let mut t = Table::new("hostile-limits");
    let big = |n: usize| "x".repeat(n);
    // (case, headers, method, expected status)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, u16);
    let cases: Vec<Case> = vec![
        (
            "control: one 48 KiB header",
            vec![("x-big", big(48 * 1024))],
            "GET",
            200,
        ),
        (
            "one 100 KiB header",
            vec![("x-big", big(100 * 1024))],
            "GET",
            431,
        ),
        (
            "200 headers of 500 bytes (100 KiB)",
            (0..200).map(|_| ("x-many", big(500))).collect(),
            "GET",
            431,
        ),
        (
            "1 MiB header (431, or a reset while the client still writes)",
            vec![("x-big", big(1024 * 1024))],
            "GET",
            431,
        ),
        (
            "Content-Length: 100 MiB (body not sent)",
            vec![("content-length", (100 << 20).to_string())],
            "POST",
            413,
        ),
        (
            "Content-Length: u64::MAX (hyper: length overflow, 431)",
            vec![("content-length", u64::MAX.to_string())],
            "POST",
            431,
        ),
    ];
    for (name, headers, method, expected) in cases {
        let before = p.requests();
        let (status, _) = raw(p.out(), method, "/upload", &headers).await;
        // A server that refuses a huge head may reset the connection before the client reads.
        let status = if status == 0 && expected == 431 {
            431
        } else {
            status
        };
        let reached = p.requests() - before;
        if expected == 200 {
            t.allow(name, expected, status, reached, 1);
        } else {
            t.deny(name, expected, status, reached);
        }
    }
    let before = p.requests();
    let status = chunked_upload(p.out(), 4 << 20).await;
    t.allow(
        "control: chunked body of 4 MiB",
        200,
        status,
        p.requests() - before,
        1,
    );
    // A chunked body that goes over the limit: the app's request is cut off and the client gets
    // 413. The app saw the start of the request (the head was fine), never the whole body.
    let before = p.requests();
    let started = Instant::now();
    let status = chunked_upload(p.out(), MAX_REQUEST_BODY_BYTES + (1 << 20)).await;
    t.allow(
        &format!(
            "chunked body of {} MiB + 1 MiB (app saw an aborted request)",
            MAX_REQUEST_BODY_BYTES >> 20
        ),
        413,
        status,
        p.requests() - before,
        1,
    );
    println!(
        "chunked over-limit upload answered in {:?}",
        started.elapsed()
    );
    // The sidecars are still fine.
    p.timed_get().await;
    t.check();
    let _ = (&p.cp, &p.b, MAX_HEADER_BYTES);
}

/// POSTs `n` bytes with chunked transfer encoding; the status (0 if none came).
async fn chunked_upload(addr: SocketAddr, n: usize) -> u16 {
    let run = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut rd, mut wr) = tcp.into_split();
        let writer = tokio::spawn(async move {
            wr.write_all(b"POST /upload HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").await?;
            let chunk = vec![b'y'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let len = left.min(chunk.len());
                wr.write_all(format!("{len:x}\r\n").as_bytes()).await?;
                wr.write_all(&chunk[..len]).await?;
                wr.write_all(b"\r\n").await?;
                left -= len;
            }
            wr.write_all(b"0\r\n\r\n").await?;
            // Keep the write side open: a half-close makes hyper drop the response.
            Ok::<_, std::io::Error>(wr)
        });
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        drop(writer.await);
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    if !out.starts_with(b"HTTP/1.1 ") {
        println!(
            "chunked upload of {n} bytes: no status line, got {:?}",
            String::from_utf8_lossy(&out[..out.len().min(200)])
        );
    }
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn slowloris_and_slow_readers_are_bounded_and_other_clients_are_served() {
    let p = pair(&[]).await;
    let mut t = Table::new("hostile-slow");
    let baseline = p.timed_get().await;

    // 50 slowloris connections: a request line and one header byte per second, never finished.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let out = p.out();
        slow.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(out).await.ok()?;
            tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: b\r\nx-drip: ")
                .await
                .ok()?;
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tcp.write_all(b"a").await.is_err() {
                    return Some(t0.elapsed());
                }
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_millis(10), tcp.read(&mut buf)).await {
                    Ok(Ok(_)) | Ok(Err(_)) => return Some(t0.elapsed()),
                    Err(_) if t0.elapsed() > Duration::from_secs(60) => return None,
                    Err(_) => {}
                }
            }
        }));
    }
    // Meanwhile ordinary clients are served as fast as before.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        worst = worst.max(p.timed_get().await);
    }
    let mut closed_after = Vec::new();
    for s in slow {
        closed_after.push(s.await.unwrap());
    }
    let max = closed_after.iter().flatten().max().copied();
    let all_closed = closed_after.iter().all(Option::is_some);
    let limit = HEADER_READ_TIMEOUT + Duration::from_secs(3);
    t.deny(
        &format!(
            "50 slowloris clients (1 header byte/s): closed within {}s",
            limit.as_secs()
        ),
        "closed",
        if all_closed && max.is_some_and(|m| m <= limit) {
            "closed".to_owned()
        } else {
            format!("{closed_after:?}")
        },
        0,
    );
    println!("slowloris: all closed after at most {max:?} (run {:?}); ordinary GET baseline {baseline:?}, worst during {worst:?}", started.elapsed());
    t.allow(
        "ordinary GETs during the slowloris: each under 1 s",
        "served",
        if worst < Duration::from_secs(1) {
            "served".to_owned()
        } else {
            format!("worst {worst:?}")
        },
        0,
        0,
    );

    // Slow readers: 4 clients ask for 1 GiB each and read nothing (the socket buffers along the
    // path hold ~80 MB per connection here, so B's writes stall); others are unaffected.
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(p.out()).await.unwrap();
        tcp.write_all(b"GET /bytes/1073741824 HTTP/1.1\r\nhost: b\r\n\r\n")
            .await
            .unwrap();
        readers.push(tcp);
    }
    // Until the socket buffers along the path are full the readers cost CPU (the app makes the
    // bodies, both sidecars encrypt); after that they only hold connections. Measure then, with
    // a generous bound: the 2-core CI machine runs other tests at the same time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut times = Vec::new();
    for _ in 0..10 {
        times.push(p.timed_get().await);
    }
    times.sort();
    let (median, worst) = (times[times.len() / 2], times[times.len() - 1]);
    println!("ordinary GETs with 4 slow readers holding: median {median:?}, worst {worst:?}");
    // The test process holds every socket of the path (client, A, B, app): B's side of each
    // stalled connection is two of them (the TLS connection from A and the one to the app) and
    // the app's is a third.
    let stalled_fds = open_fds();
    t.allow(
        "4 slow readers of 1 GiB each holding: ordinary GETs served (median < 250 ms, worst < 2 s)",
        "served",
        if median < Duration::from_millis(250) && worst < Duration::from_secs(2) {
            "served".to_owned()
        } else {
            format!("median {median:?}, worst {worst:?}")
        },
        0,
        0,
    );
    // Still connected, still not reading: B closes their connections once its writes have made
    // no progress for WRITE_STALL_TIMEOUT (A's outbound side belongs to the reader's own pod and
    // stays until the reader goes away).
    let stalled_at = Instant::now();
    let released = async {
        while open_fds() + 3 * 4 > stalled_fds {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let released = tokio::time::timeout(WRITE_STALL_TIMEOUT + Duration::from_secs(15), released)
        .await
        .is_ok();
    let took = stalled_at.elapsed() + Duration::from_secs(2);
    t.deny(
        &format!(
            "slow readers still connected: B closes their connections (and the app's) after {} s without progress (took ~{} s)",
            WRITE_STALL_TIMEOUT.as_secs(),
            took.as_secs()
        ),
        "closed by B",
        if released {
            "closed by B".to_owned()
        } else {
            format!("descriptors {stalled_fds} -> {}", open_fds())
        },
        0,
    );
    drop(readers);
    t.check();
}

/// One keep-alive request on `tcp`; whether a 200 came back (head and Content-Length body).
async fn request_on(tcp: &mut TcpStream) -> Option<()> {
    tcp.write_all(b"GET /held HTTP/1.1\r\nhost: b\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())?;
            if body.len() >= len {
                return head.starts_with("HTTP/1.1 200").then_some(());
            }
        }
    }
}

/// Opens `n` connections through the pair (200 at a time), each doing one request and then one
/// more every 5 s (an idle keep-alive connection is closed by B after 10 s), until all are open;
/// then one last request on every one of them, all at once. Returns how many were served at the
/// end, i.e. how many were really open concurrently, and the descriptors and RSS (KiB) of the
/// process while they were.
async fn hold_connections(p: &Pair, n: usize) -> (usize, usize, u64) {
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let (all_open, _) = tokio::sync::watch::channel(false);
    let all_open = Arc::new(all_open);
    let opened = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let out = p.out();
        let (sem, opened) = (sem.clone(), opened.clone());
        let mut go = all_open.subscribe();
        tasks.push(tokio::spawn(async move {
            let first = async {
                let _permit = sem.acquire().await.ok()?;
                let mut tcp = TcpStream::connect(out).await.ok()?;
                request_on(&mut tcp).await?;
                Some(tcp)
            }
            .await;
            opened.add_permits(1);
            let mut tcp = first?;
            loop {
                tokio::select! {
                    _ = go.changed() => break,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => request_on(&mut tcp).await?,
                }
            }
            request_on(&mut tcp).await?;
            Some(tcp)
        }));
    }
    let _ = opened.acquire_many(n as u32).await;
    let _ = all_open.send(true);
    let mut held = Vec::with_capacity(n);
    for task in tasks {
        if let Some(tcp) = task.await.unwrap() {
            held.push(tcp);
        }
    }
    (held.len(), open_fds(), rss_kib())
}

/// `n` concurrent connections, three rounds: every one served while all are open; after each
/// round the open-connection gauges are back to 0 and descriptors back to baseline (plus at
/// most the idle pool to the app); the third round adds little memory over the second (the
/// allocator keeps pages of earlier rounds, which is not a leak; growth per round would be).
async fn concurrent_connections(n: usize) {
    let p = pair(&[]).await;
    let mut t = Table::new(if n > 2000 {
        "soak-connections"
    } else {
        "hostile-connections"
    });
    p.timed_get().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds0, rss0) = (open_fds(), rss_kib());
    let app_port = p.app_addr.port();
    let others = |b: &std::collections::BTreeMap<String, usize>| b.values().sum::<usize>();
    let (_, other0) = fd_breakdown(app_port);
    let gauge = |s: &pqmesh_sidecar::RunningSidecar| {
        metric(&s.metrics.registry, "pqmesh_connections_open", &[])
    };
    // B keeps at most this many idle connections to the app; each is two descriptors here (B's
    // end and the app's), and both ends are this process's.
    let pool_fds = 2 * MAX_IDLE_APP_CONNECTIONS;
    let mut rss_after = Vec::new();
    for round in 1..=3 {
        let started = Instant::now();
        let (served, peak_fds, peak_rss) = hold_connections(&p, n).await;
        println!("round {round}: {served}/{n} served in {:?}; fds {fds0} -> {peak_fds}; RSS {rss0} -> {peak_rss} KiB", started.elapsed());
        t.allow(
            &format!(
                "round {round}: {n} connections through the pair, all open at once ({peak_fds} descriptors), each served"
            ),
            n,
            served,
            0,
            0,
        );
        let back = async {
            loop {
                let (pool, other) = fd_breakdown(app_port);
                if gauge(&p.a) == 0.0
                    && gauge(&p.b) == 0.0
                    && pool <= pool_fds
                    && others(&other) <= others(&other0)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let back = tokio::time::timeout(Duration::from_secs(30), back)
            .await
            .is_ok();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (fds1, rss1) = (open_fds(), rss_kib());
        let (pool, other) = fd_breakdown(app_port);
        println!(
            "round {round} closed: fds {fds1} (baseline {fds0}; app pool {pool}); RSS {rss1} KiB"
        );
        t.allow(
            &format!("round {round} closed: gauges 0, app pool ≤ {pool_fds} descriptors, the {} others back to baseline", others(&other0)),
            "baseline",
            if back {
                "baseline".to_owned()
            } else {
                format!("A {} B {}, app pool {pool}, others {other:?} (baseline {other0:?})", gauge(&p.a), gauge(&p.b))
            },
            0,
            0,
        );
        rss_after.push(rss1);
    }
    let growth: Vec<u64> = [rss0, rss_after[0], rss_after[1], rss_after[2]]
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    t.allow(
        &format!(
            "RSS growth per round: +{} / +{} / +{} KiB",
            growth[0], growth[1], growth[2]
        ),
        "round 3 adds < 25 % of round 1",
        if growth[2] * 4 <= growth[0].max(4096) {
            "round 3 adds < 25 % of round 1".to_owned()
        } else {
            format!("+{} KiB", growth[2])
        },
        0,
        0,
    );
    p.timed_get().await;
    t.check();
}

#[tokio::test]
async fn many_concurrent_connections_leave_no_leak() {
    let n = std::env::var("PQMESH_SOAK_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    concurrent_connections(n).await;
}

#[tokio::test]
async fn a_connection_flood_does_not_crash_the_sidecars() {
    let p = pair(&[]).await;
    let mut t = Table::new("hostile-flood");
    // 2,000 connects straight at B's inbound that never send a byte, plus 2,000 at A's outbound
    // that close at once: the handshake and sniff timeouts reclaim the first, and ordinary
    // clients are served throughout.
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        match TcpStream::connect(p.b.inbound_addr).await {
            Ok(s) => idle.push(s),
            Err(_) => refused += 1,
        }
    }
    for _ in 0..2000 {
        if let Ok(s) = TcpStream::connect(p.out()).await {
            drop(s);
        }
    }
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        worst = worst.max(p.timed_get().await);
    }
    let before = p.requests();
    t.allow(
        "4,000 connects (2,000 idle at B's inbound): ordinary GETs served",
        "served",
        if worst < Duration::from_secs(2) {
            "served".to_owned()
        } else {
            format!("worst {worst:?}")
        },
        0,
        0,
    );
    println!(
        "flood: {} idle held, {refused} refused by the kernel, worst GET {worst:?}",
        idle.len()
    );
    // The idle ones are closed by the sidecar after its handshake timeout (10 s).
    let closed = async {
        for s in &mut idle {
            let mut buf = [0u8; 1];
            let _ = s.read(&mut buf).await;
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .is_ok();
    t.allow(
        "idle connects closed by B within 20 s",
        "closed",
        if closed { "closed" } else { "open" },
        0,
        0,
    );
    t.deny(
        "requests from the flood that reached the app",
        0,
        p.requests() - before,
        0,
    );
    t.check();
    let _ = &p.cp;
}

/// A request line longer than the inbound sniffer's 8 KiB window must still be handled as HTTP
/// (identity header replaced, limits applied), not relayed as opaque bytes.
#[tokio::test]
async fn a_long_request_line_cannot_smuggle_the_identity_header() {
    let p = pair(&[]).await;
    let mut t = Table::new("hostile-long-request-line");
    let forged = format!("spiffe://{TRUST_DOMAIN}/ns/kube-system/sa/admin");
    for len in [4 * 1024, 9 * 1024, 60 * 1024] {
        let path = format!("/{}", "a".repeat(len));
        let before = p.requests();
        let (status, body) = raw(
            p.out(),
            "GET",
            &path,
            &[("x-pqmesh-peer-identity", forged.clone())],
        )
        .await;
        let peer = body
            .split_whitespace()
            .find(|w| w.starts_with("peer="))
            .unwrap_or("peer=none")
            .to_owned();
        let reached = p.requests() - before;
        t.allow(
            &format!(
                "{} KiB request line with a forged identity header",
                len / 1024
            ),
            format!("200 peer={}", spiffe("web")),
            format!("{status} {peer}"),
            reached,
            1,
        );
    }
    t.check();
}
