//! Transparent mode in one process: the outbound sidecar learns where a connection was going (as
//! iptables + SO_ORIGINAL_DST would tell it; injected here), asks discovery which identity serves
//! that address, and the inbound sidecar proxies HTTP per request to an unmodified app.
//! The same behaviour with real iptables in network namespaces is `tests/netns/run.sh`.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

struct Mesh {
    cp: ControlPlane,
    b: pqmesh_sidecar::RunningSidecar,
    app: SocketAddr,
    app_stats: std::sync::Arc<http_app::AppStats>,
}

/// B (shop/api) serves the HTTP test app; discovery says B's inbound address is shop/api.
async fn mesh(b_extra: &[(&str, &str)]) -> Mesh {
    let cp = ControlPlane::start(ECDSA, &["web", "api", "other"]).await;
    let (app, _tcp, app_stats) = http_app::start("b").await;
    let b = sidecar(with(
        with(
            cp.sidecar_env("api", ECDSA),
            &[
                ("PQMESH_INBOUND_APP_ADDR", &app.to_string()),
                ("PQMESH_INBOUND_ALLOW", "shop/*"),
            ],
        ),
        b_extra,
    ))
    .await;
    cp.set_endpoints(&format!(
        "endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n",
        b.inbound_addr.port()
    ), 1).await;
    Mesh {
        cp,
        b,
        app,
        app_stats,
    }
}

/// A (shop/web) in transparent mode whose app "dialled" `dest`.
async fn client_sidecar(
    m: &Mesh,
    dest: SocketAddr,
    extra: &[(&str, &str)],
) -> pqmesh_sidecar::RunningSidecar {
    sidecar_redirected(with(m.cp.sidecar_env("web", ECDSA), extra), Some(dest)).await
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "b.shop");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_app_dials_b_and_b_sees_a_verified_identity() {
    let m = mesh(&[]).await;
    let a = client_sidecar(&m, m.b.inbound_addr, &[]).await;
    let out = get(a.outbound_addr.unwrap(), "/hello", &[]).await.unwrap();
    assert!(
        out.contains("app=b") && out.contains("proto=HTTP/1.1"),
        "{out}"
    );
    assert!(out.contains(&format!("peer={}", spiffe("web"))), "{out}");
    // A forged identity header from the app is replaced by the verified one.
    let out = get(
        a.outbound_addr.unwrap(),
        "/forged",
        &[(
            "x-pqmesh-peer-identity",
            "spiffe://cluster.local/ns/kube-system/sa/admin",
        )],
    )
    .await
    .unwrap();
    assert!(out.contains(&format!("peer={} ", spiffe("web"))), "{out}");
    assert!(!out.contains("kube-system"), "{out}");
    assert_eq!(
        metric(
            &a.metrics.registry,
            "pqmesh_connections_total",
            &[("direction", "outbound"), ("outcome", "established")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m.b.metrics.registry,
            "pqmesh_http_connections_total",
            &[("protocol", "http1")]
        ),
        2.0
    );
}

#[tokio::test]
async fn keep_alive_requests_share_connections_to_the_app() {
    let m = mesh(&[]).await;
    let a = client_sidecar(&m, m.b.inbound_addr, &[]).await;
    let tcp = TcpStream::connect(a.outbound_addr.unwrap()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut seen = Vec::new();
    for i in 0..5 {
        let req = Request::get(format!("/ka/{i}"))
            .header("host", "b")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = send
            .send_request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        seen.push(String::from_utf8_lossy(&body).into_owned());
    }
    assert!(seen.iter().all(|s| s.contains("conn=1 ")), "{seen:?}");
    // A second client connection through the mesh reuses B's pooled connection to the app.
    let out = get(a.outbound_addr.unwrap(), "/again", &[]).await.unwrap();
    assert!(out.contains("conn=1 "), "{out}");
    assert_eq!(
        m.app_stats
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn http2_with_prior_knowledge_passes_through() {
    let m = mesh(&[]).await;
    let a = client_sidecar(&m, m.b.inbound_addr, &[]).await;
    let tcp = TcpStream::connect(a.outbound_addr.unwrap()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for i in 0..3 {
        let req = Request::get(format!("http://b.shop/h2/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = send
            .send_request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        answers.push(String::from_utf8_lossy(&body).into_owned());
    }
    assert!(
        answers
            .iter()
            .all(|s| s.contains("proto=HTTP/2.0") && s.contains(&spiffe("web"))),
        "{answers:?}"
    );
    assert_eq!(
        metric(
            &m.b.metrics.registry,
            "pqmesh_http_connections_total",
            &[("protocol", "http2")]
        ),
        1.0
    );
}

#[tokio::test]
async fn an_upgraded_connection_carries_raw_bytes_both_ways() {
    let m = mesh(&[]).await;
    let a = client_sidecar(&m, m.b.inbound_addr, &[]).await;
    let mut tcp = TcpStream::connect(a.outbound_addr.unwrap()).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [&b"frame one"[..], &[0u8, 255, 1, 254], &[42u8; 3000]] {
        tcp.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tcp.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn unmeshed_destinations_pass_through_or_are_refused_per_setting() {
    let m = mesh(&[]).await;
    let (plain_app, _, plain_stats) = http_app::start("c").await;
    let pass = client_sidecar(&m, plain_app, &[]).await;
    let out = get(pass.outbound_addr.unwrap(), "/plain", &[])
        .await
        .unwrap();
    assert!(out.contains("app=c") && out.contains("peer=none"), "{out}");
    assert_eq!(
        metric(
            &pass.metrics.registry,
            "pqmesh_connections_total",
            &[("outcome", "passthrough")]
        ),
        1.0
    );

    let refuse = client_sidecar(&m, plain_app, &[("PQMESH_OUTBOUND_UNMESHED", "refuse")]).await;
    assert!(get(refuse.outbound_addr.unwrap(), "/plain", &[])
        .await
        .is_err());
    assert_eq!(
        metric(
            &refuse.metrics.registry,
            "pqmesh_connections_total",
            &[("outcome", "denied_unmeshed")]
        ),
        1.0
    );
    assert_eq!(
        plain_stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the passthrough request arrived"
    );
}

#[tokio::test]
async fn discovery_updates_reach_connected_sidecars() {
    let m = mesh(&[]).await;
    let a = client_sidecar(&m, m.b.inbound_addr, &[]).await;
    assert!(get(a.outbound_addr.unwrap(), "/1", &[]).await.is_ok());
    // The operator now says that address is served by shop/other: B (shop/api) no longer matches.
    m.cp.set_endpoints(&format!(
        "endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: other\n",
        m.b.inbound_addr.port()
    ), 1).await;
    let discovery = a.discovery().unwrap().clone();
    let dest = m.b.inbound_addr;
    eventually_async("A's cache follows the control plane", || {
        let d = discovery.clone();
        async move {
            d.resolve(dest).await
                == Ok(pqmesh_sidecar::discovery::Resolved::Meshed(
                    spiffe("other").parse().unwrap(),
                ))
        }
    })
    .await;
    assert!(
        get(a.outbound_addr.unwrap(), "/2", &[]).await.is_err(),
        "B's identity no longer matches"
    );
    eventually("A counted the wrong identity", || {
        metric(
            &a.metrics.registry,
            "pqmesh_tls_handshake_failures_total",
            &[("reason", "wrong_identity")],
        ) == 1.0
    })
    .await;
}

#[tokio::test]
async fn with_the_control_plane_down_known_destinations_work_and_unknown_ones_fail_closed() {
    let m = mesh(&[]).await;
    let (other_app, _, _) = http_app::start("d").await;
    let a = client_sidecar(&m, m.b.inbound_addr, &[]).await;
    assert!(get(a.outbound_addr.unwrap(), "/warm", &[]).await.is_ok());
    let Mesh { cp, b, .. } = m;
    let ControlPlane {
        running, dir: _dir, ..
    } = cp;
    running.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The cached answer keeps traffic flowing while the control plane is away.
    let out = get(a.outbound_addr.unwrap(), "/still", &[]).await.unwrap();
    assert!(out.contains("app=b"), "{out}");
    // A destination never resolved cannot be decided: refused, not sent in plaintext.
    let discovery = a.discovery().unwrap().clone();
    let started = std::time::Instant::now();
    assert_eq!(
        discovery.resolve(other_app).await,
        Err(pqmesh_sidecar::discovery::DiscoveryError::Unavailable(
            other_app
        ))
    );
    assert!(started.elapsed() >= Duration::from_secs(4));
    drop(b);
}

#[tokio::test]
async fn strict_refuses_plaintext_and_permissive_serves_it_without_identity() {
    let strict = mesh(&[]).await;
    let err = get(strict.b.inbound_addr, "/plain", &[]).await;
    assert!(err.is_err(), "{err:?}");
    assert_eq!(
        strict
            .app_stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    eventually("B counted the plaintext refusal", || {
        metric(
            &strict.b.metrics.registry,
            "pqmesh_connections_total",
            &[("outcome", "denied_plaintext")],
        ) == 1.0
    })
    .await;

    let permissive = mesh(&[("PQMESH_INBOUND_MODE", "PERMISSIVE")]).await;
    let out = get(
        permissive.b.inbound_addr,
        "/plain",
        &[("x-pqmesh-peer-identity", spiffe("web").as_str())],
    )
    .await
    .unwrap();
    assert!(
        out.contains("app=b") && out.contains("peer=none"),
        "a plaintext client cannot claim an identity: {out}"
    );
}

#[tokio::test]
async fn a_connection_that_was_not_redirected_is_not_looped_back() {
    let m = mesh(&[]).await;
    // Discovery is never asked: the "original destination" is the outbound listener itself.
    let env = with(
        m.cp.sidecar_env("web", ECDSA),
        &[("PQMESH_OUTBOUND_ADDR", "127.0.0.1:0")],
    );
    let config = pqmesh_sidecar::config::Config::from_env(&env).unwrap();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let own = probe.local_addr().unwrap();
    drop(probe);
    let mut config = config;
    if let pqmesh_sidecar::config::Outbound::Transparent { listen, .. } = &mut config.outbound {
        *listen = own;
    }
    let a = pqmesh_sidecar::start_with(
        config,
        std::sync::Arc::new(pqmesh_sidecar::original_dst::FixedOriginalDst(own)),
    )
    .await
    .unwrap();
    a.ready().await;
    assert!(get(own, "/loop", &[]).await.is_err());
    assert_eq!(
        metric(
            &a.metrics.registry,
            "pqmesh_connections_total",
            &[("outcome", "denied_loop")]
        ),
        1.0
    );
    let _ = m.app;
}

#[tokio::test]
async fn inbound_serves_only_declared_ports_and_refuses_unredirected_connections() {
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    let (app, _tcp, stats) = http_app::start("b").await;
    // B's connections "were going to" the app's port (as after iptables REDIRECT).
    let b = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[
                ("PQMESH_INBOUND_ALLOW", "shop/*"),
                ("PQMESH_INBOUND_PORTS", &app.port().to_string()),
            ],
        ),
        Some(app),
    )
    .await;
    cp.set_endpoints(
        &format!("endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n", b.inbound_addr.port()),
        1,
    )
    .await;
    let a = sidecar_redirected(cp.sidecar_env("web", ECDSA), Some(b.inbound_addr)).await;
    let out = get(a.outbound_addr.unwrap(), "/declared", &[])
        .await
        .unwrap();
    assert!(
        out.contains("app=b") && out.contains(&spiffe("web")),
        "{out}"
    );

    // The same B, but its connections were going to an undeclared port: refused.
    let b2 = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[
                ("PQMESH_INBOUND_ALLOW", "shop/*"),
                ("PQMESH_INBOUND_PORTS", "1"),
            ],
        ),
        Some(app),
    )
    .await;
    let mut tcp = TcpStream::connect(b2.inbound_addr).await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(tcp.read(&mut buf).await.unwrap_or(0), 0, "closed at once");
    assert_eq!(
        metric(
            &b2.metrics.registry,
            "pqmesh_connections_total",
            &[("outcome", "denied_port")]
        ),
        1.0
    );

    // Without iptables and without PQMESH_INBOUND_APP_ADDR there is nowhere safe to send it.
    let b3 = sidecar(with(
        cp.sidecar_env("api", ECDSA),
        &[("PQMESH_INBOUND_ALLOW", "shop/*")],
    ))
    .await;
    let mut tcp = TcpStream::connect(b3.inbound_addr).await.unwrap();
    assert_eq!(tcp.read(&mut buf).await.unwrap_or(0), 0, "closed at once");
    assert_eq!(
        metric(
            &b3.metrics.registry,
            "pqmesh_connections_total",
            &[("outcome", "denied_not_redirected")]
        ),
        1.0
    );
    assert_eq!(stats.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_app_gives_502_and_is_counted() {
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let b = sidecar(with(
        cp.sidecar_env("api", ECDSA),
        &[
            ("PQMESH_INBOUND_ALLOW", "shop/*"),
            ("PQMESH_INBOUND_APP_ADDR", &closed.to_string()),
        ],
    ))
    .await;
    cp.set_endpoints(
        &format!("endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n", b.inbound_addr.port()),
        1,
    )
    .await;
    let a = sidecar_redirected(cp.sidecar_env("web", ECDSA), Some(b.inbound_addr)).await;
    let out = get(a.outbound_addr.unwrap(), "/x", &[]).await.unwrap();
    assert!(out.contains("the application is unreachable"), "{out}");
    assert_eq!(
        metric(
            &b.metrics.registry,
            "pqmesh_http_requests_total",
            &[("outcome", "app_unreachable")]
        ),
        1.0
    );
}

/// IPv6 end to end: A's app "dialled" B's IPv6 address (as `IP6T_SO_ORIGINAL_DST` says after
/// ip6tables), discovery knows B by it, B's inbound on `[::1]` delivers to the app over IPv6
/// (`[::1]:<original port>`), and an IPv6 destination discovery does not know is refused under
/// `refuse`, never bypassed.
#[tokio::test]
async fn ipv6_destinations_are_meshed_and_unknown_ones_are_not_bypassed() {
    let Ok(app6) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("SKIPPED: this machine has no IPv6 loopback");
        return;
    };
    let app6_addr = app6.local_addr().unwrap();
    let stats = std::sync::Arc::new(http_app::AppStats::default());
    tokio::spawn(http_app::serve_http(app6, "b6".into(), stats.clone()));
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    let b = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[
                ("PQMESH_INBOUND_ADDR", "[::1]:0"),
                ("PQMESH_INBOUND_ALLOW", "shop/*"),
            ],
        ),
        Some(app6_addr),
    )
    .await;
    assert!(b.inbound_addr.is_ipv6());
    cp.set_endpoints(&format!(
        "endpoints:\n  - ip: \"::1\"\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n",
        b.inbound_addr.port()
    ), 1).await;
    let a = sidecar_redirected(cp.sidecar_env("web", ECDSA), Some(b.inbound_addr)).await;
    let out = get(a.outbound_addr.unwrap(), "/v6", &[]).await.unwrap();
    assert!(
        out.contains("app=b6"),
        "delivered to the app on [::1]: {out}"
    );
    assert!(out.contains(&format!("peer={} ", spiffe("web"))), "{out}");

    let unknown: SocketAddr = "[fd00:213:77::99]:8080".parse().unwrap();
    let refuse = sidecar_redirected(
        with(
            cp.sidecar_env("web", ECDSA),
            &[("PQMESH_OUTBOUND_UNMESHED", "refuse")],
        ),
        Some(unknown),
    )
    .await;
    assert!(get(refuse.outbound_addr.unwrap(), "/", &[]).await.is_err());
    assert_eq!(
        metric(
            &refuse.metrics.registry,
            "pqmesh_connections_total",
            &[("outcome", "denied_unmeshed")]
        ),
        1.0
    );
}
