//! Adversarial suite, HTTP layer: the JWT attack table (phantom-token abuse, header smuggling
//! and path tricks are in `adversarial_phantom`), each sent through a real mesh (A's
//! sidecar → hybrid-PQ mTLS → B's sidecar → app) with B's policy pushed by the control plane and
//! tokens issued or signed with the keys of a real OAuth server (oidc-provider on Node 24).
//! Every case records expected and actual status and how many requests reached B's app (0 for
//! every deny); the table is printed and saved for docs/reliability.md (`pqmesh_tests::report`).
//! Needs Node 24 + oidc-provider (`./test.sh` installs them), hence `#[ignore]` for a bare
//! `cargo test`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pqmesh_mtls::KeyAlgorithm;
use pqmesh_tests::forge::{self, Signing};
use pqmesh_tests::oauth::{self, OAuthServer};
use pqmesh_tests::report::Table;
use pqmesh_tests::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECDSA: KeyAlgorithm = KeyAlgorithm::EcdsaP256;
/// The phantom-token cache bound B's policy sets (`cache.maxTtlSeconds`).
pub(crate) const CACHE_TTL: u64 = 3;

pub(crate) struct Mesh {
    pub cp: ControlPlane,
    pub oauth: OAuthServer,
    pub a: pqmesh_sidecar::RunningSidecar,
    pub c: pqmesh_sidecar::RunningSidecar,
    pub b: pqmesh_sidecar::RunningSidecar,
    pub app: Arc<http_app::AppStats>,
}

fn policy(oauth: &OAuthServer, app_port: u16) -> String {
    let issuer = fixtures::corp_issuer(
        oauth,
        "  clockSkewSeconds: 30\n  jwks: {minRefetchSeconds: 1}\n",
        &format!("    cache: {{maxTtlSeconds: {CACHE_TTL}}}\n"),
    );
    let rules = concat!(
        "    - {methods: [GET], paths: [\"/orders/**\"], scopes: [\"orders:read\"]}\n",
        "    - {methods: [GET], paths: [\"/admin/**\"], scopes: [\"admin\"]}\n",
    );
    format!(
        "{issuer}---\n{}",
        fixtures::orders_policy(&[app_port], r#"["shop/web"]"#, rules)
    )
}

/// B (`shop/api`, the orders app behind a token policy that admits only `shop/web`), A
/// (`shop/web`) and C (`shop/intruder`), both dialling B.
pub(crate) async fn mesh(token_ttl: u64) -> Mesh {
    let oauth = OAuthServer::start(token_ttl).await;
    let cp = ControlPlane::start(ECDSA, &["web", "api", "intruder"]).await;
    let (app_addr, _tcp, app) = http_app::start("orders").await;
    cp.write_secrets(&format!(
        "secrets:\n  - namespace: shop\n    name: gateway\n    data: {{client-secret: {}}}\n",
        oauth::GATEWAY_CLIENT_SECRET
    ));
    cp.write_policy("orders.yaml", &policy(&oauth, app_addr.port()), 2)
        .await;
    let b = sidecar_redirected(
        with(
            cp.sidecar_env("api", ECDSA),
            &[("PQMESH_WORKLOAD_LABELS", "app=orders")],
        ),
        Some(app_addr),
    )
    .await;
    cp.set_endpoints(
        &format!("endpoints:\n  - ip: 127.0.0.1\n    ports: [{}]\n    namespace: shop\n    serviceAccount: api\n", b.inbound_addr.port()),
        1,
    )
    .await;
    let a = sidecar_redirected(cp.sidecar_env("web", ECDSA), Some(b.inbound_addr)).await;
    let c = sidecar_redirected(cp.sidecar_env("intruder", ECDSA), Some(b.inbound_addr)).await;
    eventually("B runs the pushed policy", || {
        b.policy().is_some_and(|p| p.policy.policies.len() == 1)
    })
    .await;
    Mesh {
        cp,
        oauth,
        a,
        c,
        b,
        app,
    }
}

/// One raw HTTP/1.1 request (`Connection: close`), written byte for byte so paths and headers
/// arrive exactly as an attacker wrote them. Returns the status (0 if the connection closed
/// without an answer) and the body.
pub(crate) async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
) -> (u16, String) {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // Write and read at once: a server that answers early (431, 413) and closes is still heard.
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut rd, mut wr) = tcp.into_split();
        let writer = tokio::spawn(async move { wr.write_all(head.as_bytes()).await.map(|_| wr) });
        let mut out = Vec::new();
        let read = rd.read_to_end(&mut out).await;
        drop(writer.await);
        if out.is_empty() {
            read?;
        }
        Ok::<_, std::io::Error>(out)
    };
    let out = match tokio::time::timeout(Duration::from_secs(15), exchange).await {
        Ok(Ok(out)) => out,
        _ => return (0, String::new()),
    };
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub(crate) fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Mesh {
    pub(crate) fn reached(&self) -> usize {
        self.app.requests.load(Ordering::SeqCst)
    }

    /// Sends a request from A and records it: `expected` status, allowed app requests `reach`.
    pub(crate) async fn case(
        &self,
        table: &mut Table,
        name: &str,
        path: &str,
        headers: Vec<(&'static str, String)>,
        expected: u16,
    ) -> String {
        let before = self.reached();
        let (status, body) = raw(self.a.outbound_addr.unwrap(), "GET", path, &headers).await;
        let reached = self.reached() - before;
        if expected < 300 {
            table.allow(name, expected, status, reached, 1);
        } else {
            table.deny(name, expected, status, reached);
        }
        body
    }

    fn jwt(&self, header: serde_json::Value, claims: serde_json::Value, how: Signing) -> String {
        forge::jwt(&self.oauth, &header.to_string(), &claims.to_string(), how)
    }

    fn header(&self) -> serde_json::Value {
        json!({"alg": "RS256", "typ": "at+jwt", "kid": self.oauth.kid()})
    }

    fn claims(&self) -> serde_json::Value {
        json!({"iss": self.oauth.issuer, "aud": "orders", "sub": "mallory", "iat": now(),
               "exp": now() + 300, "scope": "orders:read"})
    }
}

fn with_json(base: &serde_json::Value, changes: serde_json::Value) -> serde_json::Value {
    let mut out = base.clone();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            out.as_object_mut().unwrap().remove(k);
        } else {
            out[k] = v.clone();
        }
    }
    out
}

#[tokio::test]
#[ignore = "needs Node 24 + oidc-provider; run by ./test.sh"]
async fn jwt_attack_table() {
    let m = mesh(300).await;
    let mut t = Table::new("adversarial-jwt");
    let h = m.header();
    let c = m.claims();
    let sign = |header: &serde_json::Value, claims: &serde_json::Value, how| {
        m.jwt(header.clone(), claims.clone(), how)
    };

    let good = sign(&h, &c, Signing::IssuerKey);
    m.case(
        &mut t,
        "control: JWT signed with the issuer's key",
        "/orders/1",
        bearer(&good),
        200,
    )
    .await;
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "alg none, no signature",
            sign(
                &with_json(&h, json!({"alg": "none"})),
                &c,
                Signing::Unsigned,
            ),
            401,
        ),
        (
            "alg NoNe, no signature",
            sign(
                &with_json(&h, json!({"alg": "NoNe"})),
                &c,
                Signing::Unsigned,
            ),
            401,
        ),
        (
            "alg confusion: HS256 keyed with the issuer's public key",
            sign(
                &with_json(&h, json!({"alg": "HS256"})),
                &c,
                Signing::HmacWithPublicKey,
            ),
            401,
        ),
        (
            "RS256 signed by another key under the issuer's kid",
            sign(&h, &c, Signing::OtherKey),
            401,
        ),
        (
            "alg ES256 on the issuer's RSA key",
            sign(
                &with_json(&h, json!({"alg": "ES256"})),
                &c,
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "kid missing",
            sign(&with_json(&h, json!({"kid": null})), &c, Signing::IssuerKey),
            401,
        ),
        (
            "kid injection ../../../dev/null",
            sign(
                &with_json(&h, json!({"kid": "../../../dev/null"})),
                &c,
                Signing::OtherKey,
            ),
            401,
        ),
        (
            "kid injection ' OR '1'='1",
            sign(
                &with_json(&h, json!({"kid": "' OR '1'='1"})),
                &c,
                Signing::OtherKey,
            ),
            401,
        ),
        (
            "jku pointing at an attacker JWKS",
            sign(
                &with_json(&h, json!({"jku": "https://evil.example/jwks"})),
                &c,
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "x5u pointing at an attacker certificate",
            sign(
                &with_json(&h, json!({"x5u": "https://evil.example/cert.pem"})),
                &c,
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "embedded jwk header",
            sign(
                &with_json(&h, json!({"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}})),
                &c,
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "x5c header",
            sign(
                &with_json(&h, json!({"x5c": ["MIIB"]})),
                &c,
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "crit: [exp]",
            sign(
                &with_json(&h, json!({"crit": ["exp"]})),
                &c,
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "expired 120 s ago (skew 30 s)",
            sign(
                &h,
                &with_json(&c, json!({"exp": now() - 120})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "not yet valid: nbf in 120 s (skew 30 s)",
            sign(
                &h,
                &with_json(&c, json!({"nbf": now() + 120})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "exp missing",
            sign(&h, &with_json(&c, json!({"exp": null})), Signing::IssuerKey),
            401,
        ),
        (
            "exp as a string",
            sign(
                &h,
                &with_json(&c, json!({"exp": "9999999999"})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "wrong aud (payments)",
            sign(
                &h,
                &with_json(&c, json!({"aud": "payments"})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "aud missing",
            sign(&h, &with_json(&c, json!({"aud": null})), Signing::IssuerKey),
            401,
        ),
        (
            "wrong iss (another server)",
            sign(
                &h,
                &with_json(&c, json!({"iss": "https://evil.example"})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "iss with a trailing slash",
            sign(
                &h,
                &with_json(&c, json!({"iss": format!("{}/", m.oauth.issuer)})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "oversized: 17 KiB claim",
            sign(
                &h,
                &with_json(&c, json!({"pad": "x".repeat(17 * 1024)})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "nested JWT (cty JWT, payload is a JWT)",
            {
                let header = with_json(&h, json!({"cty": "JWT"})).to_string();
                forge::jwt(
                    &m.oauth,
                    &header,
                    &serde_json::Value::String(good.clone()).to_string(),
                    Signing::IssuerKey,
                )
            },
            401,
        ),
        (
            "RFC 9701 response addressed to another client",
            sign(
                &with_json(&h, json!({"typ": "token-introspection+jwt"})),
                &json!({"iss": m.oauth.issuer, "aud": oauth::PARTNER_CLIENT_ID, "iat": now(),
                    "token_introspection": {"active": true, "scope": "orders:read admin", "aud": "orders", "exp": now() + 300}}),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "iat a year in the future",
            sign(
                &h,
                &with_json(&c, json!({"iat": now() + 365 * 86_400})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "exp 1e30 (a float that never expires)",
            sign(&h, &with_json(&c, json!({"exp": 1e30})), Signing::IssuerKey),
            401,
        ),
        (
            "exp negative",
            sign(&h, &with_json(&c, json!({"exp": -1})), Signing::IssuerKey),
            401,
        ),
        (
            "lifetime of two days (maxTokenLifetimeSeconds: one day)",
            sign(
                &h,
                &with_json(&c, json!({"exp": now() + 2 * 86_400})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "no iat and exp in year 2286",
            sign(
                &h,
                &with_json(&c, json!({"iat": null, "exp": 9_999_999_999_u64})),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "RFC 9701 response with no exp anywhere (replayable forever)",
            sign(
                &with_json(&h, json!({"typ": "token-introspection+jwt"})),
                &json!({"iss": m.oauth.issuer, "aud": oauth::GATEWAY_CLIENT_ID, "iat": now(),
                    "token_introspection": {"active": true, "scope": "orders:read", "aud": "orders", "client_id": "shop-client"}}),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "RFC 9701 response issued 30 days ago",
            sign(
                &with_json(&h, json!({"typ": "token-introspection+jwt"})),
                &json!({"iss": m.oauth.issuer, "aud": oauth::GATEWAY_CLIENT_ID, "iat": now() - 30 * 86_400,
                    "token_introspection": {"active": true, "scope": "orders:read", "aud": "orders",
                        "iat": now() - 30 * 86_400, "exp": now() + 300}}),
                Signing::IssuerKey,
            ),
            401,
        ),
        (
            "RFC 9701 response saying active: false",
            sign(
                &with_json(&h, json!({"typ": "token-introspection+jwt"})),
                &json!({"iss": m.oauth.issuer, "aud": oauth::GATEWAY_CLIENT_ID, "iat": now(),
                    "token_introspection": {"active": false}}),
                Signing::IssuerKey,
            ),
            401,
        ),
    ];
    for (name, token, expected) in cases {
        m.case(&mut t, name, "/orders/1", bearer(&token), expected)
            .await;
    }
    // scope and scp in one token: once merged, so scp: [admin] passed the admin rule.
    let merged = sign(
        &h,
        &with_json(&c, json!({"scp": ["admin"]})),
        Signing::IssuerKey,
    );
    m.case(
        &mut t,
        "scope (orders:read) + scp ([admin]) on /admin/x: never merged",
        "/admin/x",
        bearer(&merged),
        401,
    )
    .await;
    // Duplicate members: serde_json keeps the last, an app's parser may keep the first.
    let dup = |claims: &str| forge::jwt(&m.oauth, &h.to_string(), claims, Signing::IssuerKey);
    let base = c.to_string();
    let dup_aud = dup(&base.replacen('{', r#"{"aud":"payments","#, 1));
    m.case(
        &mut t,
        "duplicate aud (payments, then orders)",
        "/orders/1",
        bearer(&dup_aud),
        401,
    )
    .await;
    let dup_scope = dup(&format!(
        "{},\"scope\":\"admin\"}}",
        &base[..base.len() - 1]
    ));
    m.case(
        &mut t,
        "duplicate scope (orders:read, then admin) on /admin/x",
        "/admin/x",
        bearer(&dup_scope),
        401,
    )
    .await;
    let dup_header = forge::jwt(
        &m.oauth,
        &h.to_string().replacen('{', r#"{"alg":"none","#, 1),
        &base,
        Signing::IssuerKey,
    );
    m.case(
        &mut t,
        "duplicate alg in the header (none, then RS256)",
        "/orders/1",
        bearer(&dup_header),
        401,
    )
    .await;

    // Accepted within the configured skew: the documented tolerance, not a hole.
    let skew_exp = sign(
        &h,
        &with_json(&c, json!({"exp": now() - 10})),
        Signing::IssuerKey,
    );
    m.case(
        &mut t,
        "expired 10 s ago, within the 30 s skew (tolerance)",
        "/orders/1",
        bearer(&skew_exp),
        200,
    )
    .await;
    let skew_nbf = sign(
        &h,
        &with_json(&c, json!({"nbf": now() + 10})),
        Signing::IssuerKey,
    );
    m.case(
        &mut t,
        "nbf in 10 s, within the 30 s skew (tolerance)",
        "/orders/1",
        bearer(&skew_nbf),
        200,
    )
    .await;
    // A valid token still only buys its scopes; malformed Authorization headers are refused.
    m.case(
        &mut t,
        "scope escalation: orders:read token on /admin/x",
        "/admin/x",
        bearer(&good),
        403,
    )
    .await;
    let two = vec![
        ("authorization", format!("Bearer {good}")),
        ("authorization", "Bearer x".to_owned()),
    ];
    m.case(&mut t, "two Authorization headers", "/orders/1", two, 401)
        .await;
    m.case(
        &mut t,
        "Basic scheme",
        "/orders/1",
        vec![("authorization", "Basic bWFsbG9yeTpwdw==".to_owned())],
        401,
    )
    .await;
    m.case(&mut t, "no token", "/orders/1", vec![], 401).await;
    t.check();
}
