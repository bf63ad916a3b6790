//! Fault injection under steady traffic: the control plane killed (certificates stay valid, 0
//! failed requests; renewal fails during the outage and resumes on its own when it returns),
//! the OAuth server down (cached phantom tokens keep working, new ones 503, recovery without a
//! restart) and its JWKS gone with a key rotation, sidecar restarts (the app's connections
//! fail fast and recover), and certificate clock skew within and beyond the CA's 60 s backdate.
//! `PQMESH_SOAK_CP_DOWN_SECS` lengthens the control-plane outage (tests/reliability/soak.sh:
//! 600 s); the fast suite uses 20 s. A network partition between pods needs real links:
//! tests/netns/reliability.sh.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::report::Table;
use pqmesh_tests::*;

use crate::adversarial::{mesh, raw};
use crate::hostile_clients::pair;

/// Requests from a steady client, one every `every`, each on a new connection (so each needs a
/// fresh mTLS handshake with the current certificates), until `stop`.
struct Traffic {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(out: SocketAddr, bearer: Option<String>, every: Duration) -> Traffic {
        let (ok, failed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (o, f, s) = (ok.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let headers: Vec<(&str, String)> = bearer
                .map(|b| vec![("authorization", format!("Bearer {b}"))])
                .unwrap_or_default();
            let mut failures = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let started = Instant::now();
                let (status, body) = raw(out, "GET", "/orders/steady", &headers).await;
                if status == 200 {
                    o.fetch_add(1, Ordering::SeqCst);
                } else {
                    f.fetch_add(1, Ordering::SeqCst);
                    failures.push(format!("{status} {}", body.trim()));
                }
                tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
            }
            failures
        });
        Traffic {
            ok,
            failed,
            stop,
            task,
        }
    }

    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.task.await.unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            failures,
        )
    }
}

/// 1 if the app wrote this answer, 0 if the sidecar did.
fn answered_by_app(body: &str) -> usize {
    usize::from(!body.starts_with("pqmesh:"))
}

fn renewals(s: &pqmesh_sidecar::RunningSidecar, outcome: &str) -> usize {
    metric(
        &s.metrics.registry,
        "pqmesh_certificate_renewals_total",
        &[("outcome", outcome)],
    ) as usize
}

#[tokio::test]
async fn control_plane_down_under_steady_traffic() {
    let down = Duration::from_secs(
        std::env::var("PQMESH_SOAK_CP_DOWN_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let p = pair(&[]).await;
    let mut t = Table::new(if down.as_secs() > 60 {
        "soak-control-plane"
    } else {
        "faults-control-plane"
    });
    let traffic = Traffic::start(p.out(), None, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok_a, ok_b) = (renewals(&p.a, "ok"), renewals(&p.b, "ok"));
    let serial_a = p.a.current().unwrap().creds.serial_hex.clone();
    let cp = p.cp;
    let outage = tokio::spawn(async move { cp.restart_after(down).await });
    // During the outage both sidecars try to renew (as a bundle change would make them): it fails
    // and they keep their still-valid certificates.
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.a.renew_now();
    p.b.renew_now();
    tokio::time::sleep(down.saturating_sub(Duration::from_secs(2))).await;
    let failed_renewals = renewals(&p.a, "error") + renewals(&p.b, "error");
    let kept = p.a.current().unwrap().creds.serial_hex == serial_a;
    let cp = outage.await.unwrap();
    let back = Instant::now();
    // Renewal resumes on its own (exponential back-off, at most 60 s between attempts).
    let resumed = async {
        while renewals(&p.a, "ok") == ok_a || renewals(&p.b, "ok") == ok_b {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let resumed = tokio::time::timeout(Duration::from_secs(75), resumed)
        .await
        .is_ok();
    let resumed_after = back.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failed, failures) = traffic.finish().await;
    println!("control plane down {down:?}: {ok} ok, {failed} failed {failures:?}; renewal resumed {resumed_after:?} after it returned");
    t.allow(
        &format!(
            "{ok} requests (new connection each, 10/s) across a {} s control-plane outage",
            down.as_secs()
        ),
        "0 failed",
        format!("{failed} failed"),
        0,
        0,
    );
    t.allow(
        "renewal during the outage fails, the valid certificate is kept",
        "failed, kept",
        format!(
            "{}, {}",
            if failed_renewals >= 2 {
                "failed"
            } else {
                "not attempted"
            },
            if kept { "kept" } else { "replaced" }
        ),
        0,
        0,
    );
    t.allow(
        &format!(
            "renewal resumes on its own after the control plane returns (≤ 75 s; took {:.1} s)",
            resumed_after.as_secs_f64()
        ),
        "resumed",
        if resumed { "resumed" } else { "not resumed" },
        0,
        0,
    );
    println!(
        "renewal resumed {:.1} s after the control plane returned",
        resumed_after.as_secs_f64()
    );
    let serial_now = p.a.current().unwrap().creds.serial_hex.clone();
    t.allow(
        "A has a new certificate afterwards",
        "new",
        if serial_now != serial_a { "new" } else { "old" },
        0,
        0,
    );
    t.check();
    let _ = cp;
}

#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn oauth_server_and_jwks_down_under_steady_traffic() {
    let mut m = mesh(300).await;
    let mut t = Table::new("faults-oauth");
    let out = m.a.outbound_addr.unwrap();
    let cached = m.oauth.token("orders:read").await;
    let never_seen = m.oauth.token("orders:read").await;
    let (status, body) = raw(
        out,
        "GET",
        "/orders/1",
        &[("authorization", format!("Bearer {cached}"))],
    )
    .await;
    let cached_at = Instant::now();
    assert_eq!(status, 200, "{body}");
    let jwt = body
        .split("authorization=Bearer ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    // Two steady clients: the opaque token (from the phantom cache, which expires every 3 s and
    // then needs the OAuth server) and the JWT the first hop forwarded (needs only the JWKS).
    let opaque = Traffic::start(out, Some(cached.clone()), Duration::from_millis(100));
    let direct = Traffic::start(out, Some(jwt.clone()), Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(1)).await;
    m.oauth.stop().await;
    let down_at = Instant::now();
    let (s_new, body_new) = raw(
        out,
        "GET",
        "/orders/1",
        &[("authorization", format!("Bearer {never_seen}"))],
    )
    .await;
    // Steady traffic runs meanwhile, so the app's counter cannot single this request out; the
    // body says who answered: the sidecar ("pqmesh: ...") or the app.
    t.deny(
        "OAuth server down: a token never seen before",
        503,
        s_new,
        answered_by_app(&body_new),
    );
    // The cache entry made by the first request lives 3 s (maxTtlSeconds); look just before.
    tokio::time::sleep(
        (cached_at + Duration::from_millis(2700)).saturating_duration_since(Instant::now()),
    )
    .await;
    let failed_in_window = opaque.failed.load(Ordering::SeqCst);
    // Past the cache bound the opaque token cannot be re-introspected: 503, never allowed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (s_stale, body_stale) = raw(
        out,
        "GET",
        "/orders/1",
        &[("authorization", format!("Bearer {cached}"))],
    )
    .await;
    m.oauth.restart().await;
    let down_for = down_at.elapsed();
    let (s_back, _) = raw(
        out,
        "GET",
        "/orders/1",
        &[("authorization", format!("Bearer {never_seen}"))],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok_o, failed_o, fails_o) = opaque.finish().await;
    let (ok_d, failed_d, fails_d) = direct.finish().await;
    println!("OAuth down {down_for:?}: opaque {ok_o} ok / {failed_o} failed {fails_o:?}; JWT {ok_d} ok / {failed_d} failed {fails_d:?}");
    t.allow(
        "cached opaque token while its cache entry lasts (≤ 3 s)",
        "0 failed",
        format!("{failed_in_window} failed"),
        0,
        0,
    );
    t.deny(
        &format!(
            "cached opaque token after the cache bound, server still down ({:.0} s)",
            down_for.as_secs_f64()
        ),
        503,
        s_stale,
        answered_by_app(&body_stale),
    );
    let not_503 = fails_o.iter().filter(|f| !f.starts_with("503")).count();
    t.allow(
        "opaque-token failures during the outage are all 503 (never allowed, never 5xx other)",
        "all 503",
        if not_503 == 0 {
            "all 503".to_owned()
        } else {
            format!("{fails_o:?}")
        },
        0,
        0,
    );
    t.allow(
        &format!(
            "{ok_d} requests with the forwarded JWT throughout (JWKS unreachable, keys cached)"
        ),
        "0 failed",
        format!("{failed_d} failed"),
        0,
        0,
    );
    t.allow(
        "OAuth server back: the new token, no restart of anything",
        200,
        s_back,
        0,
        0,
    );

    // JWKS endpoint down and the signing key rotated meanwhile: old JWTs keep validating with
    // the cached key; after recovery a token signed with the new key is accepted (unknown kid →
    // one refetch).
    m.oauth.rotate_keys().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = m.oauth.token("orders:read").await;
    let (s_rot, _) = raw(
        out,
        "GET",
        "/orders/1",
        &[("authorization", format!("Bearer {fresh}"))],
    )
    .await;
    t.allow(
        "after a key rotation: a new token (new kid)",
        200,
        s_rot,
        0,
        0,
    );
    let before_old = m.reached();
    let (s_old, _) = raw(
        out,
        "GET",
        "/orders/1",
        &[("authorization", format!("Bearer {jwt}"))],
    )
    .await;
    // The OAuth server dropped the old key from its JWKS; the refetch above replaced the
    // sidecar's key set, so JWTs signed with the old key are refused from then on.
    t.deny(
        "JWT signed with the old key, which the issuer no longer publishes",
        401,
        s_old,
        m.reached() - before_old,
    );
    t.check();
    let _ = (&m.cp, &m.b, &m.c);
}

#[tokio::test]
async fn sidecar_restarts_fail_fast_and_recover() {
    let p = pair(&[]).await;
    let out = p.out();
    let mut t = Table::new("faults-sidecar-restart");
    let (status, _) = raw(out, "GET", "/ok", &[]).await;
    assert_eq!(status, 200);
    // B's sidecar goes away: A's app gets an answer (502) or a closed connection at once.
    let b_env = with(
        p.cp.sidecar_env("api", KeyAlgorithm::EcdsaP256),
        &[
            ("PQMESH_INBOUND_APP_ADDR", &p.app_addr.to_string()),
            ("PQMESH_INBOUND_ALLOW", "shop/web"),
            ("PQMESH_INBOUND_ADDR", &p.b.inbound_addr.to_string()),
        ],
    );
    let b_addr = p.b.inbound_addr;
    let app = p.app.clone();
    let served = move || app.requests.load(Ordering::SeqCst);
    p.b.shutdown().await;
    let before = served();
    let started = Instant::now();
    let (status, _) = raw(out, "GET", "/ok", &[]).await;
    let took = started.elapsed();
    t.deny(
        "B's sidecar down: A's app fails fast (< 1 s)",
        "failed fast",
        if status != 200 && took < Duration::from_secs(1) {
            "failed fast".to_owned()
        } else {
            format!("{status} after {took:?}")
        },
        served() - before,
    );
    println!("B down: A's app got {status} after {took:?}");
    // B's sidecar restarts on the same address: traffic recovers without touching A.
    let b = start_on(b_env).await;
    assert_eq!(b.inbound_addr, b_addr);
    let before = served();
    let (status, _) = raw(out, "GET", "/ok", &[]).await;
    t.allow(
        "B's sidecar restarted: A's app served again",
        200,
        status,
        served() - before,
        1,
    );

    // A's sidecar goes away: its app's connects are refused at once, and work after a restart.
    let a_out = out;
    let a_env = with(
        p.cp.sidecar_env("web", KeyAlgorithm::EcdsaP256),
        &[("PQMESH_OUTBOUND_ADDR", &a_out.to_string())],
    );
    p.a.shutdown().await;
    let before = served();
    let started = Instant::now();
    let refused = tokio::net::TcpStream::connect(a_out).await.is_err();
    t.deny(
        "A's sidecar down: its app's connect refused at once",
        "refused",
        if refused && started.elapsed() < Duration::from_secs(1) {
            "refused"
        } else {
            "hung or accepted"
        },
        served() - before,
    );
    let a = start_redirected_on(a_env, b_addr).await;
    let before = served();
    let (status, _) = raw(a.outbound_addr.unwrap(), "GET", "/ok", &[]).await;
    t.allow(
        "A's sidecar restarted: served again",
        200,
        status,
        served() - before,
        1,
    );
    t.check();
}

/// Starts a sidecar whose listener address was just released (retries while the port frees).
async fn start_on(
    env: std::collections::HashMap<String, String>,
) -> pqmesh_sidecar::RunningSidecar {
    for _ in 0..50 {
        let config = pqmesh_sidecar::config::Config::from_env(&env).expect("config");
        if let Ok(s) = pqmesh_sidecar::start(config).await {
            tokio::time::timeout(Duration::from_secs(20), s.ready())
                .await
                .expect("ready");
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sidecar did not restart on its address");
}

async fn start_redirected_on(
    env: std::collections::HashMap<String, String>,
    dst: SocketAddr,
) -> pqmesh_sidecar::RunningSidecar {
    for _ in 0..50 {
        let config = pqmesh_sidecar::config::Config::from_env(&env).expect("config");
        let fixed = Arc::new(pqmesh_sidecar::original_dst::FixedOriginalDst(dst));
        if let Ok(s) = pqmesh_sidecar::start_with(config, fixed).await {
            tokio::time::timeout(Duration::from_secs(20), s.ready())
                .await
                .expect("ready");
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sidecar did not restart on its address");
}

/// A clock `offset` away from the real one (rustls asks its time provider when it verifies).
#[derive(Debug)]
struct SkewedClock(i64);

impl rustls::time_provider::TimeProvider for SkewedClock {
    fn current_time(&self) -> Option<rustls_pki_types::UnixTime> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs() as i64;
        Some(rustls_pki_types::UnixTime::since_unix_epoch(
            Duration::from_secs((now + self.0).max(0) as u64),
        ))
    }
}

/// Certificates and clock skew: leaves are backdated 60 s by the CA, so a peer whose clock is
/// up to a minute behind accepts a fresh certificate; further behind (or past the leaf's
/// expiry) the handshake fails closed. Token skew is in the JWT table (`clockSkewSeconds`).
#[tokio::test]
async fn certificate_clock_skew_within_and_beyond_tolerance() {
    use crate::handshake_policy::{probe, target, web_credentials, TLS13};
    use rustls::crypto::aws_lc_rs::kx_group;
    let b = target(&[]).await;
    let creds = web_credentials(&b.cp).await;
    let mut t = Table::new("faults-clock-skew");
    for (name, offset, expected) in [
        (
            "client clock 30 s behind (B's fresh certificate backdated 60 s)",
            -30,
            "echo",
        ),
        (
            "client clock 5 min behind (B's certificate not yet valid)",
            -300,
            "refused",
        ),
        (
            "client clock 2 h ahead (B's 1 h certificate expired)",
            7200,
            "refused",
        ),
    ] {
        let mut provider = rustls_post_quantum::provider();
        provider.kx_groups = vec![kx_group::X25519MLKEM768];
        let provider = Arc::new(provider);
        let verifier = pqmesh_mtls::verify::SpiffeServerVerifier::new(
            creds.creds.bundle.store(),
            spiffe("api").parse().unwrap(),
            provider.clone(),
        );
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(creds.creds.key_pkcs8_for_tests().clone_key());
        let mut config =
            rustls::ClientConfig::builder_with_details(provider, Arc::new(SkewedClock(offset)))
                .with_protocol_versions(TLS13)
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_client_auth_cert(creds.creds.chain.clone(), key)
                .unwrap();
        config.alpn_protocols = vec![b"pqmesh/1".to_vec()];
        let before = b.app.connections();
        let got = probe(b.b.inbound_addr, Arc::new(config)).await;
        let reached = b.app.connections() - before;
        let actual = if got.is_ok() { "echo" } else { "refused" };
        if expected == "echo" {
            t.allow(name, expected, actual, reached, 1);
        } else {
            t.deny(name, expected, actual, reached);
        }
    }
    t.check();
}
