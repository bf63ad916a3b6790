//! Opaque tokens through introspection: the exchange, caching and its TTL, failures that must be
//! 503, and the forwarded JWT re-validated at the next hop.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::token::introspect::form_encode;
use crate::token::{ResponseFormat, TokenError};

const OPAQUE: &str = "2YotnFZFEjr1zCsicMWpAA";

fn introspector(validator: &Validator) -> &crate::token::introspect::Introspector {
    validator.issuers[0]
        .introspection
        .as_ref()
        .expect("introspection configured")
}

#[tokio::test]
async fn an_active_opaque_token_becomes_the_signed_jwt_and_is_cached() {
    let fake = FakeAs::start().await;
    let signed = introspection_jwt(CLIENT_ID, active(300));
    let reply = signed.clone();
    fake.answer(move |token| {
        assert_eq!(token, OPAQUE);
        Reply::rfc9701(reply.clone())
    });
    let (validator, registry) = validator(fake.introspecting_issuer());

    let auth = validator.authenticate(OPAQUE).await.expect("active");
    assert_eq!(auth.jwt, signed, "forwards exactly what the server signed");
    assert!(auth.phantom);
    assert_eq!(auth.issuer, "test-as");
    assert_eq!(auth.claims["sub"], "alice");
    assert_eq!(auth.claims["active"], true);
    assert_eq!(
        crate::token::scopes(&auth.claims, pqmesh_policy::ScopeClaim::Scope),
        ["read", "write"]
    );

    let again = validator.authenticate(OPAQUE).await.expect("cached");
    assert_eq!(again.jwt, signed);
    assert_eq!(
        fake.introspection_hits(),
        1,
        "the second call is served from the cache"
    );
    let hits = |result| {
        counter(
            &registry,
            "token_introspection_cache_total",
            &[("result", result)],
        )
    };
    assert_eq!((hits("hit"), hits("miss")), (1, 1));
    assert_eq!(
        counter(
            &registry,
            "token_introspections_total",
            &[("outcome", "active")]
        ),
        1
    );
    assert_eq!(introspector(&validator).in_flight(), 0);
}

#[tokio::test]
async fn the_request_is_rfc7662_with_basic_client_credentials() {
    let fake = FakeAs::start().await;
    let mut config = fake.introspecting_issuer();
    if let Some(i) = config.introspection.as_mut() {
        i.client_id = "mesh client".into();
        i.client_secret = "p@ss:wörd".into();
    }
    let (validator, _) = validator(config);
    let token = "abc+/def==";
    validator
        .authenticate(token)
        .await
        .expect_err("aud is another client");
    let seen = fake.seen.lock().expect("lock")[0].clone();
    assert_eq!(
        seen.body,
        "token=abc%2B%2Fdef%3D%3D&token_type_hint=access_token"
    );
    assert_eq!(
        seen.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        seen.headers["accept"],
        "application/token-introspection+jwt"
    );
    let expected = STANDARD_B64.encode("mesh+client:p%40ss%3Aw%C3%B6rd");
    assert_eq!(
        seen.headers["authorization"],
        format!("Basic {expected}").as_str()
    );
    assert_eq!(form_encode("a b*-._~"), "a+b*-._%7E");
}

use base64::engine::general_purpose::STANDARD as STANDARD_B64;

#[tokio::test]
async fn an_inactive_token_is_401_and_not_cached() {
    let fake = FakeAs::start().await;
    fake.answer(|_| Reply::rfc9701(introspection_jwt(CLIENT_ID, json!({"active": false}))));
    let (validator, registry) = validator(fake.introspecting_issuer());
    for _ in 0..2 {
        let err = validator.authenticate(OPAQUE).await.expect_err("inactive");
        assert_eq!(err, TokenError::Inactive);
        assert_eq!(err.status(), 401);
        assert!(err
            .www_authenticate()
            .is_some_and(|h| h.contains("invalid_token")));
    }
    assert_eq!(fake.introspection_hits(), 2);
    assert_eq!(
        counter(
            &registry,
            "token_introspections_total",
            &[("outcome", "inactive")]
        ),
        2
    );
}

#[tokio::test]
async fn failures_of_the_endpoint_are_503_never_allow() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(fake.introspecting_issuer());
    let cases: Vec<(&str, Reply, &str)> = vec![
        ("HTTP 500", Reply::status(500), "HTTP status 500"),
        (
            "HTTP 401 (bad client credentials)",
            Reply::status(401),
            "HTTP status 401",
        ),
        (
            "unsigned JSON",
            Reply {
                content_type: Some("application/json".into()),
                body: json!({"active": true, "scope": "admin"}).to_string(),
                ..Reply::status(200)
            },
            "not a signed JWT response",
        ),
        (
            "no content type",
            Reply {
                body: introspection_jwt(CLIENT_ID, active(300)),
                ..Reply::status(200)
            },
            "not a signed JWT response",
        ),
        (
            "RFC 9701 content type, JWT without its typ",
            Reply {
                content_type: Some("application/token-introspection+jwt".into()),
                body: access_token(),
                ..Reply::status(200)
            },
            "typ",
        ),
        (
            "signed by a key the issuer does not publish",
            Reply::rfc9701(sign(
                &json!({"alg": "RS256", "kid": "rsa-1", "typ": "token-introspection+jwt"}),
                &json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": active(300)}),
                Signer::Rsa(&KEYS.rogue_rsa, &aws_lc_rs::signature::RSA_PKCS1_SHA256),
            )),
            "bad_signature",
        ),
        (
            "another issuer's response",
            Reply::rfc9701(sign(
                &json!({"alg": "RS256", "kid": "rsa-1", "typ": "token-introspection+jwt"}),
                &json!({"iss": "https://other.example", "aud": CLIENT_ID, "iat": now(), "token_introspection": active(300)}),
                rs256(),
            )),
            "iss",
        ),
        (
            "garbage body",
            Reply::rfc9701("not a jwt".into()),
            "response rejected",
        ),
    ];
    for (name, reply, reason) in cases {
        fake.answer(move |_| reply.clone());
        let err = validator.authenticate(OPAQUE).await.expect_err(name);
        assert_eq!(err.status(), 503, "{name}: {err}");
        assert_eq!(err.metric_reason(), "introspection_unavailable", "{name}");
        assert!(err.to_string().contains(reason), "{name}: {err}");
        assert_eq!(err.www_authenticate(), None);
    }
    assert_eq!(
        introspector(&validator).cached(),
        0,
        "failures are never cached"
    );
    assert_eq!(
        counter(
            &registry,
            "token_introspections_total",
            &[("outcome", "error")]
        ),
        8
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_503() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let fake = FakeAs::start().await;
    let mut config = fake.introspecting_issuer();
    if let Some(i) = config.introspection.as_mut() {
        i.endpoint = format!("http://127.0.0.1:{port}/introspect");
    }
    let (validator, _) = validator(config);
    let err = validator.authenticate(OPAQUE).await.expect_err("down");
    assert_eq!(err.status(), 503, "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_times_out_as_503() {
    let fake = FakeAs::start().await;
    fake.answer(|_| Reply {
        delay: Duration::from_secs(10),
        ..Reply::rfc9701(introspection_jwt(CLIENT_ID, active(300)))
    });
    let (validator, _) = validator(fake.introspecting_issuer());
    let err = validator.authenticate(OPAQUE).await.expect_err("timeout");
    assert_eq!(err.status(), 503);
    assert!(err.to_string().contains("no response within 5s"), "{err}");
}

#[tokio::test]
async fn curity_204_means_inactive() {
    let fake = FakeAs::start().await;
    fake.answer(|_| Reply::status(204));
    let (validator, _) = validator(fake.introspecting_issuer());
    assert_eq!(
        validator.authenticate(OPAQUE).await.expect_err("inactive"),
        TokenError::Inactive
    );
}

#[tokio::test]
async fn curity_style_application_jwt_returns_the_access_token() {
    let fake = FakeAs::start().await;
    let jwt = access_token();
    let reply = jwt.clone();
    fake.answer(move |_| Reply {
        content_type: Some("application/jwt".into()),
        body: reply.clone(),
        ..Reply::status(200)
    });
    let mut config = fake.introspecting_issuer();
    if let Some(i) = config.introspection.as_mut() {
        i.accept = ResponseFormat::Jwt;
    }
    let (validator, _) = validator(config);
    let auth = validator.authenticate(OPAQUE).await.expect("active");
    assert_eq!(auth.jwt, jwt);
    assert!(auth.phantom);
    assert_eq!(auth.claims["aud"], "api");
    let seen = fake.seen.lock().expect("lock")[0].clone();
    assert_eq!(seen.headers["accept"], "application/jwt");
}

#[tokio::test]
async fn claims_of_the_introspected_token_are_still_checked() {
    let fake = FakeAs::start().await;
    // The token is active but meant for another service: a 401 about the token, not a 503.
    fake.answer(|_| {
        Reply::rfc9701(introspection_jwt(
            CLIENT_ID,
            with(active(300), json!({"aud": "billing"})),
        ))
    });
    let (validator, _) = validator(fake.introspecting_issuer());
    let err = validator.authenticate(OPAQUE).await.expect_err("wrong aud");
    assert_eq!((err.status(), err.metric_reason()), (401, "wrong_audience"));

    fake.answer(|_| Reply::rfc9701(introspection_jwt(CLIENT_ID, active(-120))));
    let err = validator.authenticate(OPAQUE).await.expect_err("expired");
    assert_eq!((err.status(), err.metric_reason()), (401, "expired"));

    fake.answer(|_| Reply::rfc9701(introspection_jwt(CLIENT_ID, json!({"scope": "x"}))));
    let err = validator.authenticate(OPAQUE).await.expect_err("no active");
    assert_eq!(err.metric_reason(), "invalid_claims");
}

#[tokio::test]
async fn introspection_answers_without_exp_or_stale_are_401_not_cached() {
    let fake = FakeAs::start().await;
    let (validator, _) = validator(fake.introspecting_issuer());
    let cases = [
        (
            "no exp in token_introspection",
            introspection_jwt(CLIENT_ID, with(active(300), json!({"exp": null}))),
            "invalid_claims",
        ),
        (
            "a 30-day-old response",
            sign(
                &json!({"alg": "RS256", "kid": "rsa-1", "typ": "token-introspection+jwt"}),
                &json!({"iss": ISS, "aud": CLIENT_ID, "iat": now() - 30 * 86_400, "token_introspection": active(300)}),
                rs256(),
            ),
            "expired",
        ),
    ];
    for (name, jwt, reason) in cases {
        fake.answer(move |_| Reply::rfc9701(jwt.clone()));
        let err = validator.authenticate(OPAQUE).await.expect_err(name);
        assert_eq!(
            (err.status(), err.metric_reason()),
            (401, reason),
            "{name}: {err}"
        );
        assert_eq!(introspector(&validator).cached(), 0, "{name}");
    }
}

#[tokio::test]
async fn cache_ttl_is_bounded_by_the_response_age() {
    let fake = FakeAs::start().await;
    let (validator, _) = validator(fake.introspecting_issuer());
    let introspector = introspector(&validator);
    let claims = claims_map(active(3600));
    let now = unix_now();
    let ttl = |iat: f64| introspector.cache_ttl(&claims, Some(iat), &[], now);
    // Fresh: the 300 s cache bound and the 300 s response-age bound coincide.
    assert_eq!(ttl(now), Some(Duration::from_secs(300)));
    // Issued 250 s ago: cached 50 s at most, so the next hop still accepts what is forwarded.
    let aged = ttl(now - 250.0).expect("cacheable");
    assert!(
        aged <= Duration::from_secs(50) && aged > Duration::from_secs(49),
        "{aged:?}"
    );
    assert_eq!(ttl(now - 301.0), None, "too old to reuse at all");
    // The access token itself (responseFormat: jwt) has no response age.
    assert_eq!(
        introspector.cache_ttl(&claims, None, &[], now),
        Some(Duration::from_secs(300))
    );
}

#[tokio::test(start_paused = true)]
async fn cache_ttl_is_bounded_by_the_token_exp() {
    let fake = FakeAs::start().await;
    fake.answer(|_| Reply::rfc9701(introspection_jwt(CLIENT_ID, active(60))));
    let (validator, _) = validator(fake.introspecting_issuer());
    validator.authenticate(OPAQUE).await.expect("active");
    tokio::time::advance(Duration::from_secs(58)).await;
    validator.authenticate(OPAQUE).await.expect("cached");
    assert_eq!(fake.introspection_hits(), 1);
    tokio::time::advance(Duration::from_secs(3)).await;
    validator
        .authenticate(OPAQUE)
        .await
        .expect("introspected again");
    assert_eq!(
        fake.introspection_hits(),
        2,
        "the entry ended with the token's exp"
    );
}

#[tokio::test(start_paused = true)]
async fn cache_ttl_is_bounded_by_cache_max_ttl() {
    let fake = FakeAs::start().await;
    let mut config = fake.introspecting_issuer();
    if let Some(i) = config.introspection.as_mut() {
        i.cache_max_ttl = Duration::from_secs(30);
    }
    let (validator, _) = validator(config);
    validator.authenticate(OPAQUE).await.expect("active");
    tokio::time::advance(Duration::from_secs(29)).await;
    validator.authenticate(OPAQUE).await.expect("cached");
    assert_eq!(fake.introspection_hits(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    validator
        .authenticate(OPAQUE)
        .await
        .expect("introspected again");
    assert_eq!(fake.introspection_hits(), 2);
}

#[tokio::test(start_paused = true)]
async fn cache_control_max_age_lowers_the_ttl() {
    let fake = FakeAs::start().await;
    fake.answer(|_| Reply {
        cache_control: Some("no-store, max-age=10".into()),
        ..Reply::rfc9701(introspection_jwt(CLIENT_ID, active(300)))
    });
    let (validator, _) = validator(fake.introspecting_issuer());
    validator.authenticate(OPAQUE).await.expect("active");
    tokio::time::advance(Duration::from_secs(9)).await;
    validator.authenticate(OPAQUE).await.expect("cached");
    assert_eq!(
        fake.introspection_hits(),
        1,
        "no-store is ignored by default"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    validator
        .authenticate(OPAQUE)
        .await
        .expect("introspected again");
    assert_eq!(fake.introspection_hits(), 2);
}

#[tokio::test]
async fn no_store_disables_caching_only_when_honored() {
    let fake = FakeAs::start().await;
    let mut config = fake.introspecting_issuer();
    if let Some(i) = config.introspection.as_mut() {
        i.honor_no_store = true;
    }
    let (validator, _) = validator(config);
    validator.authenticate(OPAQUE).await.expect("active");
    validator.authenticate(OPAQUE).await.expect("active");
    assert_eq!(fake.introspection_hits(), 2);
    assert_eq!(introspector(&validator).cached(), 0);
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let fake = FakeAs::start().await;
    let mut config = fake.introspecting_issuer();
    if let Some(i) = config.introspection.as_mut() {
        i.cache_max_entries = 2;
    }
    let (validator, _) = validator(config);
    for token in ["tokenA", "tokenB", "tokenC"] {
        validator.authenticate(token).await.expect("active");
    }
    assert_eq!(introspector(&validator).cached(), 2);
    validator.authenticate("tokenC").await.expect("cached");
    assert_eq!(fake.introspection_hits(), 3);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_one_introspection() {
    let fake = FakeAs::start().await;
    fake.answer(|_| Reply {
        delay: Duration::from_millis(200),
        ..Reply::rfc9701(introspection_jwt(CLIENT_ID, active(300)))
    });
    let (validator, registry) = validator(fake.introspecting_issuer());
    let calls = (0..8).map(|_| validator.authenticate(OPAQUE));
    let results = futures_join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        counter(
            &registry,
            "token_introspection_cache_total",
            &[("result", "miss")]
        ),
        8,
        "all eight missed the cache at once"
    );
    assert_eq!(fake.introspection_hits(), 1);
    assert_eq!(
        introspector(&validator).in_flight(),
        0,
        "the in-flight entry is gone"
    );
}

/// Polls all futures concurrently on this task (no `futures` crate in the workspace).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[tokio::test]
async fn the_forwarded_jwt_is_revalidated_at_the_next_hop() {
    let fake = FakeAs::start().await;
    let (gateway, _) = validator(fake.introspecting_issuer());
    let forwarded = gateway.authenticate(OPAQUE).await.expect("active");

    // The app's sidecar has the same issuer settings: zero trust, it verifies again.
    let (next_hop, _) = validator(fake.introspecting_issuer());
    let auth = next_hop
        .authenticate(&forwarded.jwt)
        .await
        .expect("valid at the next hop");
    assert!(!auth.phantom);
    assert_eq!(auth.claims, forwarded.claims);
    assert_eq!(fake.introspection_hits(), 1, "no second introspection");

    // A sidecar whose introspection client is someone else must not accept it.
    let mut other = fake.introspecting_issuer();
    if let Some(i) = other.introspection.as_mut() {
        i.client_id = "another-client".into();
    }
    let (other_hop, _) = validator(other);
    let err = other_hop
        .authenticate(&forwarded.jwt)
        .await
        .expect_err("not addressed to us");
    assert_eq!((err.status(), err.metric_reason()), (401, "wrong_audience"));
}

#[tokio::test]
async fn forwarded_introspection_jwts_are_checked_like_responses() {
    let fake = FakeAs::start().await;
    let (validator, _) = validator(fake.introspecting_issuer());
    let header = json!({"alg": "RS256", "kid": "rsa-1", "typ": "token-introspection+jwt"});
    let cases = [
        (
            "inactive",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": {"active": false}}),
            "inactive",
        ),
        (
            "no iat",
            json!({"iss": ISS, "aud": CLIENT_ID, "token_introspection": active(300)}),
            "invalid_claims",
        ),
        (
            "inner exp passed",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": active(-120)}),
            "expired",
        ),
        (
            "no token_introspection",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "active": true}),
            "invalid_claims",
        ),
        (
            "inner iss differs",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": with(active(300), json!({"iss": "https://evil.example"}))}),
            "wrong_issuer",
        ),
        (
            "iat in the future",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now() + 600, "token_introspection": active(300)}),
            "not_yet_valid",
        ),
        (
            "no exp anywhere: replayable forever before",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": with(active(300), json!({"exp": null}))}),
            "invalid_claims",
        ),
        (
            "exp only on the envelope, not on the token",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "exp": now() + 60, "token_introspection": with(active(300), json!({"exp": null}))}),
            "invalid_claims",
        ),
        (
            "response issued 30 days ago",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now() - 30 * 86_400, "token_introspection": with(active(300), json!({"iat": now() - 30 * 86_400}))}),
            "expired",
        ),
        (
            "response older than 300 s + skew",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now() - 340, "token_introspection": active(300)}),
            "expired",
        ),
        (
            "response iat 1e30",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": 1e30, "token_introspection": active(300)}),
            "invalid_claims",
        ),
        (
            "response iat negative",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": -1, "token_introspection": active(300)}),
            "invalid_claims",
        ),
        (
            "response iat \"NaN\"",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": "NaN", "token_introspection": active(300)}),
            "invalid_claims",
        ),
        (
            "inner exp 1e30",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": with(active(300), json!({"exp": 1e30}))}),
            "invalid_claims",
        ),
        (
            "inner lifetime of a year",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": with(active(365 * 86_400), json!({}))}),
            "lifetime_too_long",
        ),
        (
            "inner iat a year ahead",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": with(active(300), json!({"iat": now() + 365 * 86_400}))}),
            "not_yet_valid",
        ),
        (
            "inner nbf in the future",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": with(active(300), json!({"nbf": now() + 120}))}),
            "not_yet_valid",
        ),
        (
            "inner scope and scp both",
            json!({"iss": ISS, "aud": CLIENT_ID, "iat": now(), "token_introspection": with(active(300), json!({"scp": ["admin"]}))}),
            "invalid_claims",
        ),
    ];
    for (name, claims, reason) in cases {
        let token = sign(&header, &claims, rs256());
        let err = validator.authenticate(&token).await.expect_err(name);
        assert_eq!(
            (err.status(), err.metric_reason()),
            (401, reason),
            "{name}: {err}"
        );
    }
}

#[test]
fn the_cache_evicts_the_soonest_expiring_entry() {
    use crate::token::cache::PhantomCache;
    use tokio::time::Instant;
    let cache = PhantomCache::new(2);
    let auth = |name: &str| crate::token::Authenticated {
        jwt: name.into(),
        claims: Map::new(),
        issuer: "as".into(),
        phantom: true,
    };
    let now = Instant::now();
    cache.insert([1; 32], auth("long"), now + Duration::from_secs(300));
    cache.insert([2; 32], auth("short"), now + Duration::from_secs(10));
    cache.insert([3; 32], auth("new"), now + Duration::from_secs(100));
    assert!(
        cache.get(&[2; 32]).is_none(),
        "the soonest-expiring entry went first"
    );
    assert_eq!(cache.get(&[1; 32]).map(|a| a.jwt).as_deref(), Some("long"));
    assert_eq!(cache.get(&[3; 32]).map(|a| a.jwt).as_deref(), Some("new"));
    // Re-inserting a key replaces it rather than growing the cache.
    cache.insert([3; 32], auth("newer"), now + Duration::from_secs(100));
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.get(&[3; 32]).map(|a| a.jwt).as_deref(), Some("newer"));
}

#[test]
fn cache_keys_are_digests_not_tokens() {
    let key = crate::token::introspect::token_key(OPAQUE);
    assert_eq!(key.len(), 32);
    assert!(!key.windows(OPAQUE.len()).any(|w| w == OPAQUE.as_bytes()));
}

/// A second OAuth server's issuer settings (its own `iss`), optionally introspecting.
fn other_issuer(fake: &FakeAs, introspecting: bool) -> IssuerConfig {
    let mut config = IssuerConfig::new(
        "other-as",
        "https://other-as.example",
        vec!["api".into()],
        fake.url("/jwks"),
    );
    if introspecting {
        config.introspection = Some(IntrospectionConfig::new(
            fake.url("/introspect"),
            CLIENT_ID,
            "other-s3cret",
        ));
    }
    config
}

#[tokio::test]
async fn two_introspecting_issuers_are_refused_naming_both() {
    let (ours, other) = (FakeAs::start().await, FakeAs::start().await);
    let metrics = TokenMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let Err(err) = Validator::new(
        vec![ours.introspecting_issuer(), other_issuer(&other, true)],
        metrics,
    ) else {
        panic!("two introspecting issuers were accepted")
    };
    assert_eq!(
        err,
        crate::token::ConfigError::SeveralIntrospectors {
            first: "test-as".into(),
            second: "other-as".into(),
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("test-as") && message.contains("other-as"),
        "{message}"
    );
    // One introspecting issuer next to JWT-only issuers is fine.
    let metrics = TokenMetrics::new(&prometheus::Registry::new()).expect("metrics");
    assert!(Validator::new(
        vec![ours.introspecting_issuer(), other_issuer(&other, false)],
        metrics
    )
    .is_ok());
}

#[tokio::test]
async fn the_introspecting_issuers_answer_is_final() {
    // The token's own server says "inactive" (revoked) or cannot answer; no other server is
    // asked, even one that would say "active" and serves the same endpoint path.
    let (ours, other) = (FakeAs::start().await, FakeAs::start().await);
    other.answer(|_| Reply::rfc9701(introspection_jwt(CLIENT_ID, active(300))));
    let cases = [
        (
            "inactive",
            Reply::rfc9701(introspection_jwt(CLIENT_ID, json!({"active": false}))),
            401,
        ),
        ("HTTP 500", Reply::status(500), 503),
    ];
    for (name, reply, status) in cases {
        ours.answer(move |_| reply.clone());
        let registry = prometheus::Registry::new();
        let metrics = TokenMetrics::new(&registry).expect("metrics");
        let validator = Validator::new(
            vec![ours.introspecting_issuer(), other_issuer(&other, false)],
            metrics,
        )
        .expect("one introspecting issuer");
        let before = ours.introspection_hits();
        let err = validator.authenticate(OPAQUE).await.expect_err(name);
        assert_eq!(err.status(), status, "{name}: {err}");
        assert_eq!(ours.introspection_hits() - before, 1, "{name}");
        assert_eq!(
            other.introspection_hits(),
            0,
            "{name}: asked another server"
        );
    }
}
