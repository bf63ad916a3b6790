//! Token policies end to end against a real OAuth server (oidc-provider 9, Node 24): policies are
//! pushed by the control plane, B's sidecar validates tokens, exchanges phantom tokens for the
//! signed JWT at the introspection endpoint and enforces scopes and claims per request.
//! Needs Node 24 and the oidc-provider package, which `./test.sh` installs; they are `#[ignore]`d
//! for a bare `cargo test` and always run by `./test.sh`.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::oauth::{self, OAuthServer};
use pqmesh_tests::*;
use tokio::net::TcpStream;

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

struct Setup {
    cp: ControlPlane,
    oauth: OAuthServer,
    a: pqmesh_sidecar::RunningSidecar,
    b: pqmesh_sidecar::RunningSidecar,
    app_stats: std::sync::Arc<http_app::AppStats>,
    app_port: u16,
}

fn policies(oauth: &OAuthServer, app_port: u16, extra_issuer: &str) -> String {
    let issuer = fixtures::corp_issuer(
        oauth,
        // oidc-provider: the space-delimited scope string; its access tokens live `ttl` (at
        // most 300 s here).
        "  scopeClaim: scope\n  maxTokenLifetimeSeconds: 3600\n  jwks: {minRefetchSeconds: 1}\n",
        "",
    );
    let rules = r#"    - methods: [GET]
      paths: ["/orders/**"]
      scopes: ["orders:read"]
    - methods: [POST]
      paths: ["/orders"]
      scopes: ["orders:write"]
    - methods: [GET]
      paths: ["/tenants/acme/**"]
      scopes: ["orders:read"]
      claims: [{name: tenant, values: [acme]}]
"#;
    format!(
        "{issuer}{extra_issuer}\n---\n{}",
        fixtures::orders_policy(&[app_port], r#"["shop/*"]"#, rules)
    )
}

async fn setup(ttl: u64) -> Setup {
    let oauth = OAuthServer::start(ttl).await;
    let cp = ControlPlane::start(ECDSA, &["web", "api"]).await;
    let (app, _tcp, app_stats) = http_app::start("orders").await;
    cp.write_secrets(&format!(
        "secrets:\n  - namespace: shop\n    name: gateway\n    data: {{client-secret: {}}}\n",
        oauth::GATEWAY_CLIENT_SECRET
    ));
    cp.write_policy("orders.yaml", &policies(&oauth, app.port(), ""), 2)
        .await;
    let b = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[("PQMESH_WORKLOAD_LABELS", "app=orders,tier=backend")],
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
    assert_eq!(
        b.policy().unwrap().policy.policies.len(),
        1,
        "B runs the pushed policy"
    );
    Setup {
        cp,
        oauth,
        a,
        b,
        app_stats,
        app_port: app.port(),
    }
}

struct Answer {
    status: u16,
    www: String,
    body: String,
}

async fn call(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "orders.shop");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Answer { status, www, body }
}

fn forwarded_jwt(body: &str) -> String {
    body.split_whitespace()
        .skip_while(|w| *w != "authorization=Bearer")
        .nth(1)
        .unwrap_or_else(|| panic!("no bearer in {body}"))
        .to_owned()
}

#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn phantom_token_is_exchanged_for_the_signed_jwt_and_scopes_and_claims_are_enforced() {
    let s = setup(300).await;
    let out = s.a.outbound_addr.unwrap();
    let read = s.oauth.token("orders:read").await;
    assert!(
        !read.contains('.'),
        "the outside client holds an opaque token"
    );

    let ok = call(out, "GET", "/orders/42", Some(&read)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let jwt = forwarded_jwt(&ok.body);
    let (header, payload) = oauth::decode_jwt(&jwt);
    assert_eq!(
        header["typ"], "token-introspection+jwt",
        "the app got the JWT the OAuth server signed"
    );
    assert_eq!(payload["aud"], oauth::GATEWAY_CLIENT_ID);
    assert_eq!(payload["token_introspection"]["scope"], "orders:read");
    assert_eq!(payload["token_introspection"]["tenant"], "acme");
    assert!(ok.body.contains(&format!("peer={}", spiffe("web"))));

    // The second request is served from the phantom-token cache.
    let before = introspections(&s.oauth);
    assert_eq!(
        call(out, "GET", "/orders/43", Some(&read)).await.status,
        200
    );
    assert_eq!(
        introspections(&s.oauth),
        before,
        "cache hit: no second introspection"
    );

    // Coarse: scopes. Fine: claims.
    let no_write = call(out, "POST", "/orders", Some(&read)).await;
    assert_eq!(no_write.status, 403);
    assert!(
        no_write.www.contains("error=\"insufficient_scope\""),
        "{}",
        no_write.www
    );
    assert_eq!(
        call(out, "GET", "/tenants/acme/orders", Some(&read))
            .await
            .status,
        200
    );
    let globex = s
        .oauth
        .token_as(
            oauth::PARTNER_CLIENT_ID,
            oauth::PARTNER_CLIENT_SECRET,
            "orders:read",
        )
        .await;
    assert_eq!(
        call(out, "GET", "/orders/1", Some(&globex)).await.status,
        200,
        "partner may read orders"
    );
    assert_eq!(
        call(out, "GET", "/tenants/acme/orders", Some(&globex))
            .await
            .status,
        403,
        "but not acme's tenant data"
    );
    let write = s.oauth.token("orders:write").await;
    assert_eq!(call(out, "POST", "/orders", Some(&write)).await.status, 200);

    // Missing, garbage and unknown tokens.
    let none = call(out, "GET", "/orders/1", None).await;
    assert_eq!((none.status, none.www.as_str()), (401, "Bearer"));
    let garbage = call(out, "GET", "/orders/1", Some("not-a-real-token-at-all")).await;
    assert_eq!(garbage.status, 401);
    assert!(garbage.www.contains("invalid_token"), "{}", garbage.www);
    // No rule for this path: default deny even with a good token.
    assert_eq!(
        call(out, "DELETE", "/orders/1", Some(&read)).await.status,
        403
    );
    // Path tricks do not reach the tenant rule with the wrong token.
    assert_eq!(
        call(out, "GET", "/orders/../tenants/acme/x", Some(&globex))
            .await
            .status,
        403
    );

    // Zero trust: the JWT the app received is accepted directly at the next hop, a tampered one is not.
    assert_eq!(call(out, "GET", "/orders/7", Some(&jwt)).await.status, 200);
    let mut tampered = jwt.clone();
    tampered.replace_range(jwt.len() - 6..jwt.len() - 2, "AAAA");
    assert_eq!(
        call(out, "GET", "/orders/7", Some(&tampered)).await.status,
        401
    );
    let counted = metric(
        &s.b.metrics.registry,
        "pqmesh_policy_decisions_total",
        &[("decision", "deny")],
    );
    assert!(counted >= 6.0, "denials are counted: {counted}");
    let _ = &s.app_stats;
}

fn introspections(oauth: &OAuthServer) -> usize {
    oauth
        .log()
        .lines()
        .filter(|l| l.contains("/token/introspection"))
        .count()
}

#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn revoked_expired_rotated_and_outage() {
    let mut s = setup(4).await;
    let out = s.a.outbound_addr.unwrap();
    // Revoked before first use: 401. Revoked after use: served from cache until it expires (the
    // documented bound: min(token exp, cache max TTL)).
    let revoked = s.oauth.token("orders:read").await;
    s.oauth.revoke(&revoked).await;
    let r = call(out, "GET", "/orders/1", Some(&revoked)).await;
    assert_eq!(r.status, 401);
    assert!(r.www.contains("invalid_token"));

    // Expired: with a 4 s token lifetime the cache never outlives the token.
    let short = s.oauth.token("orders:read").await;
    assert_eq!(
        call(out, "GET", "/orders/1", Some(&short)).await.status,
        200
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        call(out, "GET", "/orders/1", Some(&short)).await.status,
        401,
        "expired"
    );

    // Key rotation at the OAuth server: new tokens are accepted without restarting anything.
    let old_kid = s.oauth.kid();
    s.oauth.rotate_keys().await;
    assert_ne!(s.oauth.kid(), old_kid);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past minRefetchSeconds
    let after = s.oauth.token("orders:read").await;
    assert_eq!(
        call(out, "GET", "/orders/1", Some(&after)).await.status,
        200,
        "unknown kid → JWKS refetched"
    );

    // OAuth server down: cached tokens keep working, new ones get 503, never allowed.
    let fresh = s.oauth.token("orders:read").await;
    let never_seen = s.oauth.token("orders:read").await;
    assert_eq!(
        call(out, "GET", "/orders/1", Some(&fresh)).await.status,
        200
    );
    s.oauth.stop().await;
    assert_eq!(
        call(out, "GET", "/orders/2", Some(&fresh)).await.status,
        200,
        "cached"
    );
    assert_eq!(
        call(out, "GET", "/orders/2", Some(&never_seen))
            .await
            .status,
        503,
        "cannot decide: 503"
    );
    s.oauth.restart().await;
    assert_eq!(
        call(out, "GET", "/orders/2", Some(&never_seen))
            .await
            .status,
        200,
        "recovered without restarts"
    );
    let _ = &s.cp;
}

#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn policy_push_is_versioned_acked_and_a_bad_snapshot_is_nacked() {
    let s = setup(300).await;
    let tracker = &s.cp.running.policy_tracker;
    let v1 = s.b.policy().unwrap().version.clone();
    eventually("B ACKed its policy", || {
        tracker
            .policy_status()
            .get("shop/orders")
            .is_some_and(|p| p.acked == 1)
    })
    .await;

    // An invalid edit at the control plane changes nothing anywhere.
    let dir = s.cp.dir.path().join("policies");
    std::fs::write(dir.join("broken.yaml"), "apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {name: x, namespace: shop}\nspec: {selector: {}, colour: blue}\n").unwrap();
    eventually("the control plane rejected the edit", || {
        metric(
            &s.cp.running.metrics.registry,
            "pqmesh_policy_reloads_total",
            &[("outcome", "invalid")],
        ) >= 1.0
    })
    .await;
    assert_eq!(s.b.policy().unwrap().version, v1);
    std::fs::remove_file(dir.join("broken.yaml")).unwrap();

    // Two issuers claiming the same `iss` used to reach the sidecar, which NACKed the snapshot
    // (freezing the workload's policy). The control plane now refuses the second one on its own
    // (reason Conflicted, outside review F4): nothing the sidecar would refuse is pushed.
    let dup = format!(
        "---\napiVersion: pqmesh.io/v1alpha1\nkind: TokenIssuer\nmetadata: {{name: corp2, namespace: shop}}\nspec:\n  issuer: {}\n  audiences: [orders]\n  jwksUri: {}\n",
        s.oauth.issuer, s.oauth.jwks_uri
    );
    let with_dup = policies(&s.oauth, 0, &dup).replace(
        "token: {issuers: [corp]}",
        "token: {issuers: [corp, corp2]}",
    );
    let app_port = s.b.policy().unwrap().policy.policies[0]
        .ports
        .clone()
        .unwrap()[0];
    let with_dup = with_dup.replace("ports: [0]", &format!("ports: [{app_port}]"));
    s.cp.write_policy("orders.yaml", &with_dup, 2).await;
    eventually("the control plane refused the conflicting issuer", || {
        metric(
            &s.cp.running.metrics.registry,
            "pqmesh_policy_objects_rejected",
            &[],
        ) == 1.0
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        metric(
            &s.b.metrics.registry,
            "pqmesh_policy_updates_total",
            &[("outcome", "rejected")],
        ),
        0.0,
        "B was never sent a snapshot it would refuse"
    );
    let read = s.oauth.token("orders:read").await;
    assert_eq!(
        call(s.a.outbound_addr.unwrap(), "GET", "/orders/1", Some(&read))
            .await
            .status,
        200,
        "still enforcing v1"
    );

    // A good change is applied and ACKed.
    s.cp.write_policy(
        "orders.yaml",
        &policies(&s.oauth, app_port, "").replace("orders:read", "orders:list"),
        2,
    )
    .await;
    eventually("B applied the new version", || {
        s.b.policy().unwrap().version != v1
    })
    .await;
    eventually("and ACKed it", || {
        tracker
            .policy_status()
            .get("shop/orders")
            .is_some_and(|p| p.acked == 1 && p.rejected == 0)
    })
    .await;
    assert_eq!(
        call(s.a.outbound_addr.unwrap(), "GET", "/orders/1", Some(&read))
            .await
            .status,
        403,
        "orders:read no longer suffices"
    );
}

#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn a_second_introspecting_issuer_is_refused_and_inactive_is_final() {
    let s = setup(300).await;
    let tracker = &s.cp.running.policy_tracker;
    let out = s.a.outbound_addr.unwrap();
    let v1 = s.b.policy().unwrap().version.clone();
    let app_port = s.b.policy().unwrap().policy.policies[0]
        .ports
        .clone()
        .unwrap()[0];
    // Another OAuth server that would call every token active: it must never be asked.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let other_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = other_hits.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = other.accept().await {
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let second = format!(
        "---\napiVersion: pqmesh.io/v1alpha1\nkind: TokenIssuer\nmetadata: {{name: partner, namespace: shop}}\nspec:\n  issuer: http://{other_addr}\n  audiences: [orders]\n  jwksUri: http://{other_addr}/jwks\n  introspection:\n    endpoint: http://{other_addr}/introspect\n    clientId: partner-gw\n    clientSecretRef: {{name: gateway, key: client-secret}}\n"
    );
    let with_second = policies(&s.oauth, app_port, &second).replace(
        "token: {issuers: [corp]}",
        "token: {issuers: [corp, partner]}",
    );
    s.cp.write_policy("orders.yaml", &with_second, 3).await;
    eventually("the control plane flagged the workload", || {
        tracker.streams().iter().any(|st| {
            st.compile_error.as_deref().is_some_and(|e| {
                e.contains("shop/corp and shop/partner both configure introspection")
            })
        }) && tracker
            .policy_status()
            .get("shop/orders")
            .is_some_and(|p| p.rejected == 1)
    })
    .await;
    assert_eq!(s.b.policy().unwrap().version, v1, "last good policy kept");

    // A token revoked at its own server: "inactive" is final.
    let revoked = s.oauth.token("orders:read").await;
    s.oauth.revoke(&revoked).await;
    let before = introspections(&s.oauth);
    let r = call(out, "POST", "/orders", Some(&revoked)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(introspections(&s.oauth), before + 1);
    assert_eq!(
        other_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no other server saw the token"
    );

    // Fixing the configuration clears the flag.
    s.cp.write_policy("orders.yaml", &policies(&s.oauth, app_port, ""), 2)
        .await;
    eventually("the flag is cleared", || {
        tracker
            .streams()
            .iter()
            .all(|st| st.compile_error.is_none())
    })
    .await;
}

/// The JWKS of the real OAuth server is fetched when the policy is applied, before any request:
/// `/config_dump` and `token_jwks_keys` show the keys held, and an issuer whose JWKS cannot be
/// fetched shows 0 keys and the reason, while no user request has been made.
#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn keys_are_fetched_at_policy_load_and_their_health_is_visible() {
    let s = setup(300).await;
    let keys = |issuer: &str| {
        metric(
            &s.b.metrics.registry,
            "pqmesh_token_jwks_keys",
            &[("issuer", issuer)],
        )
    };
    eventually("corp's keys are loaded without any request", || {
        keys("shop/corp") > 0.0
    })
    .await;
    assert_eq!(
        s.app_stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request was made"
    );
    let dump = config_dump(s.b.admin_addr).await;
    let corp = &dump["policy"]["token_issuers"][0];
    assert_eq!(corp["name"], "shop/corp");
    assert!(corp["jwks"]["keys"].as_u64().unwrap() > 0, "{corp}");
    assert!(corp["jwks"]["last_error"].is_null(), "{corp}");

    // A second issuer whose JWKS endpoint answers 404: visible at once, with the reason.
    let broken = format!(
        "---\napiVersion: pqmesh.io/v1alpha1\nkind: TokenIssuer\nmetadata: {{name: broken, namespace: shop}}\nspec:\n  issuer: https://broken.example\n  audiences: [orders]\n  jwksUri: {}/no-such-jwks\n",
        s.oauth.issuer
    );
    s.cp.write_policy(
        "orders.yaml",
        &policies(&s.oauth, s.app_port, &broken)
            .replace("issuers: [corp]", "issuers: [corp, broken]"),
        3,
    )
    .await;
    eventually("broken's failed fetch is recorded", || {
        metric(
            &s.b.metrics.registry,
            "pqmesh_token_jwks_fetches_total",
            &[("issuer", "shop/broken"), ("outcome", "error")],
        ) > 0.0
    })
    .await;
    assert_eq!(keys("shop/broken"), 0.0);
    let dump = config_dump(s.b.admin_addr).await;
    let broken = dump["policy"]["token_issuers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "shop/broken")
        .cloned()
        .unwrap_or_else(|| panic!("no issuer named broken: {dump}"));
    assert_eq!(broken["jwks"]["keys"], 0);
    assert!(
        broken["jwks"]["last_error"]
            .as_str()
            .unwrap()
            .contains("404"),
        "{broken}"
    );
    assert_eq!(
        s.app_stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "still no request was made"
    );
}

async fn config_dump(admin: SocketAddr) -> serde_json::Value {
    let tcp = TcpStream::connect(admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/config_dump")
        .header("host", "admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// The control plane's deny list of OAuth clients and subjects (`revocations.yaml` `clients`,
/// `subjects`) reaches B's sidecar in the mesh state: a verified token of a listed client gets
/// 403 and the app sees nothing, a token of another client of the same OAuth server is served,
/// and the client is back when its entry goes — no restart.
#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn a_denied_client_is_refused_by_the_service_sidecar_live() {
    let s = setup(300).await;
    let out = s.a.outbound_addr.unwrap();
    let shop = s.oauth.token("orders:read").await;
    let partner = s
        .oauth
        .token_as(
            oauth::PARTNER_CLIENT_ID,
            oauth::PARTNER_CLIENT_SECRET,
            "orders:read",
        )
        .await;
    assert_eq!(call(out, "GET", "/orders/1", Some(&shop)).await.status, 200);
    let write = |yaml: &str| s.cp.write_revocations(yaml);
    let until = async |want: u16| {
        for _ in 0..100 {
            if call(out, "GET", "/orders/1", Some(&shop)).await.status == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    write(&format!("clients: [{}]\n", oauth::SHOP_CLIENT_ID));
    assert!(
        until(403).await,
        "B's sidecar never refused the denied client"
    );
    let before = s
        .app_stats
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let r = call(out, "GET", "/orders/2", Some(&shop)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        s.app_stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        before,
        "the app got nothing"
    );
    assert_eq!(
        call(out, "GET", "/orders/3", Some(&partner)).await.status,
        200
    );
    write("clients: []\n");
    assert!(until(200).await, "the client was not let back in");
}
