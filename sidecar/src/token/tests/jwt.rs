//! JWTs presented directly: accepted tokens, the table of bad tokens, JWKS refetch and refresh,
//! configuration checks.

use std::time::Duration;

use aws_lc_rs::signature::{self, KeyPair};
use serde_json::json;

use super::*;
use crate::token::{scopes, ConfigError, InvalidReason, TokenError, MAX_TOKEN_LEN};
use pqmesh_policy::ScopeClaim;

#[tokio::test]
async fn valid_tokens_of_every_supported_key_type_are_accepted() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(fake.issuer());
    let cases = [
        ("RS256", "rsa-1", rs256()),
        (
            "PS256",
            "rsa-1",
            Signer::Rsa(&KEYS.rsa, &signature::RSA_PSS_SHA256),
        ),
        ("ES256", "ec-1", Signer::Ec(&KEYS.ec)),
        ("EdDSA", "ed-1", Signer::Ed(&KEYS.ed)),
    ];
    for (alg, kid, signer) in cases {
        let token = sign(&json!({"alg": alg, "kid": kid}), &access_claims(), signer);
        let auth = validator
            .authenticate(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg} refused: {e}"));
        assert_eq!(auth.jwt, token, "{alg}: forwards the token as presented");
        assert_eq!(auth.issuer, "test-as");
        assert!(!auth.phantom);
        assert_eq!(auth.claims["sub"], "alice");
    }
    assert_eq!(fake.jwks_hits(), 1, "one JWKS fetch serves every token");
    assert_eq!(
        counter(
            &registry,
            "token_authentications_total",
            &[("outcome", "accepted")]
        ),
        4
    );
}

#[tokio::test]
async fn array_audience_and_skewed_times_are_accepted() {
    let fake = FakeAs::start().await;
    let (validator, _) = validator(fake.issuer());
    let claims = with(
        access_claims(),
        // Within the default 30 s skew on both ends.
        json!({"aud": ["other", "api"], "exp": now() - 10, "nbf": now() + 10}),
    );
    let token = sign(&json!({"alg": "RS256", "kid": "rsa-1"}), &claims, rs256());
    validator.authenticate(&token).await.expect("accepted");
}

/// One refused token: name, token, expected status and metric reason.
struct Bad {
    name: &'static str,
    token: String,
    status: u16,
    reason: &'static str,
}

fn bad(name: &'static str, token: String, reason: &'static str) -> Bad {
    Bad {
        name,
        token,
        status: 401,
        reason,
    }
}

fn bad_tokens() -> Vec<Bad> {
    let rsa_header = json!({"alg": "RS256", "kid": "rsa-1"});
    let signed = |claims: serde_json::Value| sign(&rsa_header, &claims, rs256());
    let with_header = |extra: serde_json::Value| {
        sign(&with(rsa_header.clone(), extra), &access_claims(), rs256())
    };
    let public_key_der = KEYS.rsa.public_key().as_ref().to_vec();
    let good = access_token();
    let (head, rest) = good.split_once('.').expect("three segments");
    let (_, sig) = rest.split_once('.').expect("three segments");
    let tampered_payload = URL_SAFE_NO_PAD.encode(
        with(access_claims(), json!({"sub": "mallory"}))
            .to_string()
            .as_bytes(),
    );
    vec![
        bad(
            "alg none, empty signature",
            sign(
                &json!({"alg": "none", "kid": "rsa-1"}),
                &access_claims(),
                Signer::Unsigned,
            ),
            "invalid_alg",
        ),
        bad(
            "alg None (case variant)",
            sign(
                &json!({"alg": "None", "kid": "rsa-1"}),
                &access_claims(),
                Signer::Unsigned,
            ),
            "invalid_alg",
        ),
        bad(
            "HS256 with the RSA public key (DER) as HMAC secret",
            sign(
                &json!({"alg": "HS256", "kid": "rsa-1"}),
                &access_claims(),
                Signer::Hmac(&public_key_der),
            ),
            "invalid_alg",
        ),
        bad(
            "HS256 with the symmetric JWKS entry's kid",
            sign(
                &json!({"alg": "HS256", "kid": "hmac-1"}),
                &access_claims(),
                Signer::Hmac(b"shared secret"),
            ),
            "invalid_alg",
        ),
        bad(
            "alg starting with a multi-byte character",
            sign(
                &json!({"alg": "€S256", "kid": "rsa-1"}),
                &access_claims(),
                rs256(),
            ),
            "invalid_alg",
        ),
        bad(
            "alg not a string",
            sign(
                &json!({"alg": 256, "kid": "rsa-1"}),
                &access_claims(),
                rs256(),
            ),
            "invalid_alg",
        ),
        bad(
            "alg not allowed for the issuer (RS512)",
            sign(
                &json!({"alg": "RS512", "kid": "rsa-1"}),
                &access_claims(),
                Signer::Rsa(&KEYS.rsa, &signature::RSA_PKCS1_SHA512),
            ),
            "invalid_alg",
        ),
        bad(
            "wrong iss",
            signed(with(
                access_claims(),
                json!({"iss": "https://evil.example"}),
            )),
            "unknown_issuer",
        ),
        bad(
            "missing iss",
            signed(with(access_claims(), json!({"iss": null}))),
            "wrong_issuer",
        ),
        bad(
            "wrong aud",
            signed(with(access_claims(), json!({"aud": "other-api"}))),
            "wrong_audience",
        ),
        bad(
            "missing aud",
            signed(with(access_claims(), json!({"aud": null}))),
            "wrong_audience",
        ),
        bad(
            "expired",
            signed(with(access_claims(), json!({"exp": now() - 120}))),
            "expired",
        ),
        bad(
            "nbf in the future",
            signed(with(access_claims(), json!({"nbf": now() + 120}))),
            "not_yet_valid",
        ),
        bad(
            "missing exp",
            signed(with(access_claims(), json!({"exp": null}))),
            "invalid_claims",
        ),
        bad(
            "exp not a number",
            signed(with(access_claims(), json!({"exp": "tomorrow"}))),
            "invalid_claims",
        ),
        bad(
            "iat a year in the future",
            signed(with(access_claims(), json!({"iat": now() + 365 * 86_400}))),
            "not_yet_valid",
        ),
        bad(
            "iat beyond the skew",
            signed(with(access_claims(), json!({"iat": now() + 120}))),
            "not_yet_valid",
        ),
        bad(
            "exp 1e30 (saturates to 'never' in a float)",
            signed(with(access_claims(), json!({"exp": 1e30}))),
            "invalid_claims",
        ),
        bad(
            "exp beyond year 9999",
            signed(with(access_claims(), json!({"exp": 253_402_300_800_u64}))),
            "invalid_claims",
        ),
        bad(
            "exp u64::MAX",
            signed(with(access_claims(), json!({"exp": u64::MAX}))),
            "invalid_claims",
        ),
        bad(
            "exp negative",
            signed(with(access_claims(), json!({"exp": -1}))),
            "invalid_claims",
        ),
        bad(
            "exp fractional",
            signed(with(access_claims(), json!({"exp": now() as f64 + 60.5}))),
            "invalid_claims",
        ),
        bad(
            "exp \"NaN\"",
            signed(with(access_claims(), json!({"exp": "NaN"}))),
            "invalid_claims",
        ),
        bad(
            "exp \"Infinity\"",
            signed(with(access_claims(), json!({"exp": "Infinity"}))),
            "invalid_claims",
        ),
        bad(
            "exp as a numeric string",
            signed(with(
                access_claims(),
                json!({"exp": (now() + 60).to_string()}),
            )),
            "invalid_claims",
        ),
        bad(
            "exp true",
            signed(with(access_claims(), json!({"exp": true}))),
            "invalid_claims",
        ),
        bad(
            "exp an array",
            signed(with(access_claims(), json!({"exp": [now() + 60]}))),
            "invalid_claims",
        ),
        bad(
            "iat 1e30",
            signed(with(access_claims(), json!({"iat": 1e30}))),
            "invalid_claims",
        ),
        bad(
            "iat negative",
            signed(with(access_claims(), json!({"iat": -5}))),
            "invalid_claims",
        ),
        bad(
            "nbf \"NaN\"",
            signed(with(access_claims(), json!({"nbf": "NaN"}))),
            "invalid_claims",
        ),
        bad(
            "nbf fractional",
            signed(with(access_claims(), json!({"nbf": 1.5}))),
            "invalid_claims",
        ),
        bad(
            "exp - iat of two days (issuer allows one)",
            signed(with(
                access_claims(),
                json!({"iat": now() - 60, "exp": now() + 2 * 86_400}),
            )),
            "lifetime_too_long",
        ),
        bad(
            "exp in year 2286 with an old iat",
            signed(with(
                access_claims(),
                json!({"iat": now() - 60, "exp": 9_999_999_999_u64}),
            )),
            "lifetime_too_long",
        ),
        bad(
            "no iat and exp two days ahead",
            signed(with(
                access_claims(),
                json!({"iat": null, "exp": now() + 2 * 86_400}),
            )),
            "lifetime_too_long",
        ),
        bad(
            "scope and scp both (never merged)",
            signed(with(
                access_claims(),
                json!({"scope": "read", "scp": ["write"]}),
            )),
            "invalid_claims",
        ),
        bad(
            "scope is an array",
            signed(with(access_claims(), json!({"scope": ["read", "write"]}))),
            "invalid_claims",
        ),
        bad(
            "scope is a number",
            signed(with(access_claims(), json!({"scope": 7}))),
            "invalid_claims",
        ),
        bad(
            "missing kid",
            sign(&json!({"alg": "RS256"}), &access_claims(), rs256()),
            "invalid_header",
        ),
        bad(
            "unknown kid",
            sign(
                &json!({"alg": "RS256", "kid": "nobody"}),
                &access_claims(),
                rs256(),
            ),
            "unknown_kid",
        ),
        bad(
            "crit header",
            with_header(json!({"crit": ["exp"], "exp": 1})),
            "invalid_header",
        ),
        bad(
            "jku header",
            with_header(json!({"jku": "https://evil.example/jwks"})),
            "invalid_header",
        ),
        bad(
            "x5u header",
            with_header(json!({"x5u": "https://evil.example/cert"})),
            "invalid_header",
        ),
        bad(
            "embedded jwk header",
            with_header(json!({"jwk": rsa_jwk(&KEYS.rogue_rsa, "rsa-1")})),
            "invalid_header",
        ),
        bad(
            "signed by a key not in the JWKS, with a kid that is",
            sign(
                &rsa_header,
                &access_claims(),
                Signer::Rsa(&KEYS.rogue_rsa, &signature::RSA_PKCS1_SHA256),
            ),
            "bad_signature",
        ),
        bad(
            "payload changed after signing",
            format!("{head}.{tampered_payload}.{sig}"),
            "bad_signature",
        ),
        bad(
            "ES256 header naming the RSA key",
            sign(
                &json!({"alg": "ES256", "kid": "rsa-1"}),
                &access_claims(),
                Signer::Ec(&KEYS.ec),
            ),
            "key_mismatch",
        ),
        bad(
            "RS256 header naming the EC key",
            sign(
                &json!({"alg": "RS256", "kid": "ec-1"}),
                &access_claims(),
                rs256(),
            ),
            "key_mismatch",
        ),
        bad(
            "token introspection JWT from an issuer without introspection",
            introspection_jwt(CLIENT_ID, active(300)),
            "invalid_claims",
        ),
        bad("garbage", "this is not a token!".into(), "malformed"),
        bad("four segments", format!("{good}.AAAA"), "malformed"),
        bad("header is a JSON array", format!("W10.{rest}"), "malformed"),
        bad("empty", String::new(), "malformed"),
        bad(
            "three segments of non-JSON",
            "abc.def.ghi".into(),
            "malformed",
        ),
        bad("header not base64url", "e30=.e30.AAAA".into(), "malformed"),
        bad(
            "64 KiB token",
            format!("{head}.{}.{sig}", "A".repeat(64 * 1024)),
            "malformed",
        ),
        bad(
            "opaque token without an introspecting issuer",
            "2YotnFZFEjr1zCsicMWpAA".into(),
            "malformed",
        ),
    ]
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_right_status_and_reason() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(fake.issuer());
    // Prime the JWKS so "unknown kid" below is about the key, not the first fetch.
    validator
        .authenticate(&access_token())
        .await
        .expect("good token");
    let cases = bad_tokens();
    for case in &cases {
        let err = validator
            .authenticate(&case.token)
            .await
            .map(|_| ())
            .expect_err(case.name);
        assert_eq!(err.status(), case.status, "{}: {err}", case.name);
        assert_eq!(err.metric_reason(), case.reason, "{}: {err}", case.name);
        let header = err
            .www_authenticate()
            .expect("401 carries WWW-Authenticate");
        assert!(
            header.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{}: {header}",
            case.name
        );
    }
    let refused: u64 = cases
        .iter()
        .map(|c| c.reason)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|r| counter(&registry, "token_authentications_total", &[("outcome", r)]))
        .sum();
    assert_eq!(refused as usize, cases.len(), "every refusal is counted");
}

#[test]
fn the_oversized_token_is_refused_before_parsing() {
    let err =
        crate::token::jws::check_bearer(&"A".repeat(MAX_TOKEN_LEN + 1)).expect_err("too long");
    assert!(matches!(err, TokenError::Malformed { .. }));
    assert!(crate::token::jws::check_bearer(&"A".repeat(MAX_TOKEN_LEN)).is_ok());
}

#[tokio::test(start_paused = true)]
async fn unknown_kid_refetches_the_jwks_at_most_once_per_min_refetch() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(fake.issuer());
    let unknown = sign(
        &json!({"alg": "RS256", "kid": "nobody"}),
        &access_claims(),
        rs256(),
    );
    validator.authenticate(&access_token()).await.expect("good");
    assert_eq!(fake.jwks_hits(), 1);

    // Within jwks_min_refetch (30 s) of the first fetch: no refetch.
    let err = validator
        .authenticate(&unknown)
        .await
        .expect_err("unknown kid");
    assert_eq!(err.metric_reason(), "unknown_kid");
    assert_eq!(fake.jwks_hits(), 1);

    tokio::time::advance(Duration::from_secs(31)).await;
    let err = validator
        .authenticate(&unknown)
        .await
        .expect_err("unknown kid");
    assert_eq!(err.metric_reason(), "unknown_kid");
    assert_eq!(fake.jwks_hits(), 2, "one refetch for the unknown kid");
    for _ in 0..5 {
        validator
            .authenticate(&unknown)
            .await
            .expect_err("unknown kid");
    }
    assert_eq!(fake.jwks_hits(), 2, "refetches are rate-limited");
    tokio::time::advance(Duration::from_secs(31)).await;
    validator
        .authenticate(&unknown)
        .await
        .expect_err("unknown kid");
    assert_eq!(fake.jwks_hits(), 3);
    assert_eq!(
        counter(
            &registry,
            "token_jwks_fetches_total",
            &[("trigger", "unknown_kid"), ("outcome", "ok")]
        ),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_rotated_in_key_is_found_by_the_unknown_kid_refetch() {
    let fake = FakeAs::start().await;
    let (validator, _) = validator(fake.issuer());
    validator.authenticate(&access_token()).await.expect("good");
    let mut rotated = jwks();
    rotated["keys"]
        .as_array_mut()
        .expect("keys")
        .push(ec_jwk(&KEYS.next_ec, "ec-2"));
    fake.set_jwks(Some(rotated));
    tokio::time::advance(Duration::from_secs(31)).await;
    let token = sign(
        &json!({"alg": "ES256", "kid": "ec-2"}),
        &access_claims(),
        Signer::Ec(&KEYS.next_ec),
    );
    validator
        .authenticate(&token)
        .await
        .expect("new key accepted");
    assert_eq!(fake.jwks_hits(), 2);
}

#[tokio::test(start_paused = true)]
async fn jwks_server_down_keeps_the_last_good_keys() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(fake.issuer());
    validator.authenticate(&access_token()).await.expect("good");
    fake.set_jwks(None);
    // Past jwks_refresh (5 min): the refresh fails, the keys we have keep working.
    tokio::time::advance(Duration::from_secs(301)).await;
    validator
        .authenticate(&access_token())
        .await
        .expect("still accepted");
    wait_for_jwks_hits(&fake, 2).await;
    validator
        .authenticate(&access_token())
        .await
        .expect("still accepted");
    assert_eq!(
        fake.jwks_hits(),
        2,
        "a failed refresh is not retried before min_refetch"
    );
    assert_eq!(
        counter(
            &registry,
            "token_jwks_fetches_total",
            &[("trigger", "refresh"), ("outcome", "error")]
        ),
        1
    );
    // An unparsable JWKS is as good as none.
    fake.set_jwks(Some(json!({"keys": "nope"})));
    tokio::time::advance(Duration::from_secs(301)).await;
    validator
        .authenticate(&access_token())
        .await
        .expect("still accepted");
    wait_for_jwks_hits(&fake, 3).await;
}

#[tokio::test(start_paused = true)]
async fn jwks_is_refreshed_periodically() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(fake.issuer());
    validator.authenticate(&access_token()).await.expect("good");
    tokio::time::advance(Duration::from_secs(299)).await;
    validator.authenticate(&access_token()).await.expect("good");
    assert_eq!(fake.jwks_hits(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    validator.authenticate(&access_token()).await.expect("good");
    wait_for_jwks_hits(&fake, 2).await;
    wait_for(|| {
        counter(
            &registry,
            "token_jwks_fetches_total",
            &[("trigger", "refresh"), ("outcome", "ok")],
        ) == 1
    })
    .await;
}

/// The periodic refresh runs in the background, after the request that noticed it was due.
async fn wait_for_jwks_hits(fake: &FakeAs, n: usize) {
    wait_for(|| fake.jwks_hits() == n).await;
    assert_eq!(fake.jwks_hits(), n);
}

pub(super) async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn a_hung_jwks_server_does_not_delay_requests_when_a_refresh_is_due() {
    let fake = FakeAs::start().await;
    let mut config = fake.issuer();
    config.jwks_refresh = Duration::from_millis(300);
    config.jwks_min_refetch = Duration::from_millis(100);
    let (validator, _) = validator(config);
    validator
        .authenticate(&access_token())
        .await
        .expect("keys fetched");
    // The JWKS server now hangs: the refresh that falls due waits for its 5 s timeout.
    fake.jwks_hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        validator
            .authenticate(&access_token())
            .await
            .expect("still accepted");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a request waited {:?} for the JWKS refresh",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fake.jwks_hits() >= 2, "the refresh was attempted");
}

#[tokio::test(start_paused = true)]
async fn no_keys_at_all_is_503_and_the_fetch_is_rate_limited() {
    let fake = FakeAs::start().await;
    fake.set_jwks(None);
    let (validator, _) = validator(fake.issuer());
    let err = validator
        .authenticate(&access_token())
        .await
        .expect_err("no keys");
    assert_eq!(err.status(), 503);
    assert_eq!(err.metric_reason(), "jwks_unavailable");
    assert_eq!(err.www_authenticate(), None);
    validator
        .authenticate(&access_token())
        .await
        .expect_err("no keys");
    assert_eq!(fake.jwks_hits(), 1);
    fake.set_jwks(Some(jwks()));
    tokio::time::advance(Duration::from_secs(31)).await;
    validator
        .authenticate(&access_token())
        .await
        .expect("keys arrived");
    assert_eq!(fake.jwks_hits(), 2);
}

#[test]
fn scopes_come_from_the_issuers_one_scope_claim() {
    let scope = claims_map(json!({"scope": "read  write admin"}));
    assert_eq!(
        scopes(&scope, ScopeClaim::Scope),
        ["read", "write", "admin"]
    );
    assert!(
        scopes(&scope, ScopeClaim::Scp).is_empty(),
        "scp issuer ignores scope"
    );
    let scp = claims_map(json!({"scp": ["read", "write"]}));
    assert_eq!(scopes(&scp, ScopeClaim::Scp), ["read", "write"]);
    assert!(
        scopes(&scp, ScopeClaim::Scope).is_empty(),
        "scope issuer ignores scp"
    );
    // Never merged, never partly read: such tokens are refused when validated.
    let both = claims_map(json!({"scope": "a", "scp": ["b"]}));
    assert!(scopes(&both, ScopeClaim::Scope).is_empty());
    assert!(scopes(&both, ScopeClaim::Scp).is_empty());
    let mixed = claims_map(json!({"scp": ["read", 7]}));
    assert!(scopes(&mixed, ScopeClaim::Scp).is_empty());
    assert!(scopes(&claims_map(json!({"scp": "read write"})), ScopeClaim::Scp).is_empty());
    assert!(scopes(&Map::new(), ScopeClaim::Scope).is_empty());
}

#[tokio::test]
async fn an_scp_issuer_refuses_wrong_shapes_and_both_claims() {
    let fake = FakeAs::start().await;
    let mut config = fake.issuer();
    config.scope_claim = ScopeClaim::Scp;
    let (validator, _) = validator(config);
    let sign_claims = |changes| {
        sign(
            &json!({"alg": "RS256", "kid": "rsa-1"}),
            &with(access_claims(), changes),
            rs256(),
        )
    };
    let ok = sign_claims(json!({"scope": null, "scp": ["read"]}));
    validator.authenticate(&ok).await.expect("scp array");
    let no_scopes = sign_claims(json!({"scope": null}));
    validator
        .authenticate(&no_scopes)
        .await
        .expect("no scopes at all is a valid token");
    for (name, changes) in [
        ("both", json!({"scp": ["read"]})),
        (
            "scp as a string",
            json!({"scope": null, "scp": "read write"}),
        ),
        (
            "scp with a non-string",
            json!({"scope": null, "scp": ["read", {}]}),
        ),
        (
            "scp with an empty string",
            json!({"scope": null, "scp": [""]}),
        ),
    ] {
        let err = validator
            .authenticate(&sign_claims(changes))
            .await
            .expect_err(name);
        assert_eq!(
            (err.status(), err.metric_reason()),
            (401, "invalid_claims"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn token_lifetime_is_bounded_per_issuer() {
    let fake = FakeAs::start().await;
    let mut config = fake.issuer();
    config.max_token_lifetime = Duration::from_secs(600);
    let (validator, _) = validator(config);
    let token = |changes| {
        sign(
            &json!({"alg": "RS256", "kid": "rsa-1"}),
            &with(access_claims(), changes),
            rs256(),
        )
    };
    let exact = token(json!({"iat": now() - 100, "exp": now() + 500}));
    validator
        .authenticate(&exact)
        .await
        .expect("exactly the bound");
    let over = token(json!({"iat": now() - 100, "exp": now() + 501}));
    let err = validator
        .authenticate(&over)
        .await
        .expect_err("one second over");
    assert_eq!(err.metric_reason(), "lifetime_too_long");
    assert_eq!(
        err.www_authenticate().as_deref(),
        Some("Bearer error=\"invalid_token\", error_description=\"token lifetime too long\"")
    );
    // Without iat the remaining lifetime counts (with the clock skew in the token's favour).
    let no_iat = token(json!({"iat": null, "exp": now() + 620}));
    validator
        .authenticate(&no_iat)
        .await
        .expect("within bound + skew");
    let no_iat_over = token(json!({"iat": null, "exp": now() + 700}));
    let err = validator
        .authenticate(&no_iat_over)
        .await
        .expect_err("over");
    assert_eq!(err.metric_reason(), "lifetime_too_long");
}

#[tokio::test]
async fn scopes_of_an_accepted_token() {
    let fake = FakeAs::start().await;
    let (validator, _) = validator(fake.issuer());
    let claims = with(
        access_claims(),
        json!({"scope": null, "scp": ["orders.read"]}),
    );
    let token = sign(
        &json!({"alg": "ES256", "kid": "ec-1"}),
        &claims,
        Signer::Ec(&KEYS.ec),
    );
    let auth = validator.authenticate(&token).await.expect("good");
    assert!(
        scopes(&auth.claims, ScopeClaim::Scope).is_empty(),
        "this issuer reads scope, not scp"
    );
    let auth = validator.authenticate(&access_token()).await.expect("good");
    assert_eq!(scopes(&auth.claims, ScopeClaim::Scope), ["read", "write"]);
}

#[tokio::test]
async fn no_audiences_configured_refuses_every_access_token() {
    let fake = FakeAs::start().await;
    let mut config = fake.issuer();
    config.audiences.clear();
    let (validator, _) = validator(config);
    let err = validator
        .authenticate(&access_token())
        .await
        .expect_err("refused");
    assert_eq!(err.metric_reason(), "wrong_audience");
}

fn config_error(edit: impl FnOnce(&mut IssuerConfig)) -> ConfigError {
    let mut config = IssuerConfig::new("as", ISS, vec!["api".into()], "https://as.example/jwks");
    edit(&mut config);
    let metrics = TokenMetrics::new(&prometheus::Registry::new()).expect("metrics");
    match Validator::new(vec![config], metrics) {
        Ok(_) => panic!("config accepted"),
        Err(e) => e,
    }
}

#[test]
fn bad_configuration_is_refused_at_new() {
    type Edit = Box<dyn FnOnce(&mut IssuerConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "plain http to a remote host",
            Box::new(|c| c.jwks_uri = "http://as.example/jwks".into()),
        ),
        (
            "plain http to a private address",
            Box::new(|c| c.jwks_uri = "http://10.0.0.1/jwks".into()),
        ),
        ("not a URL", Box::new(|c| c.jwks_uri = "jwks".into())),
        (
            "ftp",
            Box::new(|c| c.jwks_uri = "ftp://as.example/jwks".into()),
        ),
        (
            "credentials in the URL",
            Box::new(|c| c.jwks_uri = "https://u:p@as.example/jwks".into()),
        ),
        (
            "alg none",
            Box::new(|c| c.allowed_algs = vec!["none".into()]),
        ),
        (
            "alg HS256",
            Box::new(|c| c.allowed_algs = vec!["RS256".into(), "HS256".into()]),
        ),
        ("no algs", Box::new(|c| c.allowed_algs.clear())),
        ("empty issuer", Box::new(|c| c.issuer.clear())),
        (
            "zero max token lifetime",
            Box::new(|c| c.max_token_lifetime = Duration::ZERO),
        ),
        (
            "zero min refetch",
            Box::new(|c| c.jwks_min_refetch = Duration::ZERO),
        ),
        (
            "introspection over plain http to a remote host",
            Box::new(|c| {
                c.introspection = Some(IntrospectionConfig::new(
                    "http://as.example/introspect",
                    "id",
                    "secret",
                ))
            }),
        ),
        (
            "introspection without client id",
            Box::new(|c| {
                c.introspection = Some(IntrospectionConfig::new(
                    "https://as.example/i",
                    "",
                    "secret",
                ))
            }),
        ),
    ];
    for (name, edit) in cases {
        let err = config_error(edit);
        assert!(matches!(err, ConfigError::Invalid { .. }), "{name}: {err}");
        // The message reaches the control plane, logs and /policy_status (outside review F3).
        assert!(!err.to_string().contains("u:p"), "{name}: {err}");
    }
}

#[test]
fn loopback_http_and_any_https_are_accepted() {
    for uri in [
        "http://127.0.0.1:8080/jwks",
        "http://[::1]:8080/jwks",
        "http://localhost/jwks",
        "https://as.example/jwks",
    ] {
        let config = IssuerConfig::new("as", ISS, vec!["api".into()], uri);
        let metrics = TokenMetrics::new(&prometheus::Registry::new()).expect("metrics");
        assert!(Validator::new(vec![config], metrics).is_ok(), "{uri}");
    }
}

#[test]
fn two_issuers_with_the_same_iss_are_refused() {
    let a = IssuerConfig::new("a", ISS, vec!["api".into()], "https://as.example/jwks");
    let b = IssuerConfig::new("b", ISS, vec!["api".into()], "https://as.example/jwks");
    let metrics = TokenMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let Err(err) = Validator::new(vec![a, b], metrics) else {
        panic!("accepted")
    };
    assert!(matches!(err, ConfigError::DuplicateIssuer { .. }), "{err}");
}

#[test]
fn error_statuses_and_challenges() {
    let invalid = TokenError::invalid(InvalidReason::Expired, "expired 5 s ago");
    assert_eq!(invalid.status(), 401);
    assert_eq!(
        invalid.www_authenticate().as_deref(),
        Some("Bearer error=\"invalid_token\", error_description=\"token expired\"")
    );
    assert_eq!(TokenError::Inactive.status(), 401);
    assert_eq!(
        TokenError::NoMatchingIssuer { iss: "x\"y".into() }
            .www_authenticate()
            .as_deref(),
        Some("Bearer error=\"invalid_token\", error_description=\"issuer not accepted\""),
        "attacker text never reaches the header"
    );
    let unavailable = TokenError::IntrospectionUnavailable {
        reason: "down".into(),
    };
    assert_eq!(unavailable.status(), 503);
    assert_eq!(unavailable.www_authenticate(), None);
}

#[test]
fn debug_output_hides_secrets() {
    let config = IntrospectionConfig::new("https://as.example/i", "id", "hunter2");
    assert!(!format!("{config:?}").contains("hunter2"));
    let auth = crate::token::Authenticated {
        jwt: "eyJ.secret.jwt".into(),
        claims: Map::new(),
        issuer: "as".into(),
        phantom: true,
    };
    assert!(!format!("{auth:?}").contains("secret"));
}
