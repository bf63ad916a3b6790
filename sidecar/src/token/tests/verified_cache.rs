//! The verified-JWT cache: a token seen again is not verified again, but never answers
//! differently from a fresh verification — refused tokens are not kept, an entry ends a second
//! before `exp` + skew, and a change of the issuer's keys (noticed by the periodic refresh, which
//! cache hits still trigger) sends every entry back to verification.

use std::time::Duration;

use super::*;
use crate::token::VERIFIED_JWT_CACHE_ENTRIES;

fn cache_count(registry: &prometheus::Registry, result: &str) -> u64 {
    counter(
        registry,
        "token_jwt_cache_total",
        &[("issuer", "test-as"), ("result", result)],
    )
}

#[tokio::test]
async fn a_token_seen_again_is_answered_from_the_cache() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(fake.issuer());
    let token = access_token();
    let first = validator.authenticate(&token).await.expect("good");
    let second = validator.authenticate(&token).await.expect("good");
    assert_eq!(
        (
            cache_count(&registry, "miss"),
            cache_count(&registry, "hit")
        ),
        (1, 1)
    );
    assert_eq!(second.jwt, token);
    assert_eq!(second.claims, first.claims);
    assert_eq!(second.issuer, "test-as");
    // Another token (other claims) is verified on its own.
    let other = sign(
        &json!({"alg": "ES256", "kid": "ec-1"}),
        &with(access_claims(), json!({"sub": "bob"})),
        Signer::Ec(&KEYS.ec),
    );
    let bob = validator.authenticate(&other).await.expect("good");
    assert_eq!(bob.claims["sub"], "bob");
    assert_eq!(cache_count(&registry, "miss"), 2);
    assert_eq!(
        counter(
            &registry,
            "token_authentications_total",
            &[("outcome", "accepted")]
        ),
        3,
        "hits are counted as accepted authentications"
    );
}

#[tokio::test]
async fn refused_tokens_are_never_cached() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(fake.issuer());
    let forged = sign(
        &json!({"alg": "RS256", "kid": "rsa-1"}),
        &access_claims(),
        Signer::Rsa(&KEYS.rogue_rsa, &aws_lc_rs::signature::RSA_PKCS1_SHA256),
    );
    for _ in 0..3 {
        validator.authenticate(&forged).await.expect_err("forged");
    }
    assert_eq!(cache_count(&registry, "hit"), 0);
    assert_eq!(cache_count(&registry, "miss"), 3);
    assert_eq!(validator.verified.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_entry_ends_a_second_before_exp_plus_skew() {
    let fake = FakeAs::start().await;
    let mut config = fake.issuer();
    config.clock_skew = Duration::from_secs(5);
    let (validator, registry) = validator(config);
    let token = sign(
        &json!({"alg": "ES256", "kid": "ec-1"}),
        &with(access_claims(), json!({"exp": now() + 20})),
        Signer::Ec(&KEYS.ec),
    );
    validator.authenticate(&token).await.expect("good");
    tokio::time::advance(Duration::from_secs(22)).await;
    validator.authenticate(&token).await.expect("good");
    assert_eq!(cache_count(&registry, "hit"), 1, "22 s < 20 + 5 - 1");
    tokio::time::advance(Duration::from_secs(3)).await;
    // The wall clock (which the claims checks read) does not move under the paused tokio
    // clock, so verification accepts again; what matters is that the cache did not answer.
    validator.authenticate(&token).await.expect("good");
    assert_eq!(
        cache_count(&registry, "hit"),
        1,
        "25 s > 24 s: verified again"
    );
    assert_eq!(cache_count(&registry, "miss"), 2);
}

#[tokio::test]
async fn a_token_about_to_expire_is_not_cached() {
    let fake = FakeAs::start().await;
    let mut config = fake.issuer();
    config.clock_skew = Duration::ZERO;
    let (validator, registry) = validator(config);
    let token = sign(
        &json!({"alg": "ES256", "kid": "ec-1"}),
        &with(access_claims(), json!({"exp": now() + 1})),
        Signer::Ec(&KEYS.ec),
    );
    validator.authenticate(&token).await.expect("good");
    validator.authenticate(&token).await.expect("good");
    assert_eq!(cache_count(&registry, "hit"), 0);
    assert_eq!(validator.verified.len(), 0);
}

/// The issuer withdraws the key: within `jwks_refresh` the cached verdict ends and the token is
/// refused, although the client keeps presenting the very same bytes (every request a hit).
#[tokio::test(start_paused = true)]
async fn a_withdrawn_key_ends_its_tokens_cached_verdicts() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(fake.issuer());
    let token = access_token();
    validator.authenticate(&token).await.expect("good");
    validator.authenticate(&token).await.expect("good");
    assert_eq!(cache_count(&registry, "hit"), 1);
    fake.set_jwks(Some(json!({"keys": [ec_jwk(&KEYS.ec, "ec-1")]})));
    tokio::time::advance(Duration::from_secs(301)).await;
    // This hit notices the refresh is due and starts it in the background.
    validator
        .authenticate(&token)
        .await
        .expect("still the old keys");
    super::jwt::wait_for(|| {
        counter(
            &registry,
            "token_jwks_fetches_total",
            &[("trigger", "refresh"), ("outcome", "ok")],
        ) == 1
    })
    .await;
    let refused = validator
        .authenticate(&token)
        .await
        .expect_err("rsa-1 was withdrawn");
    assert_eq!(refused.metric_reason(), "unknown_kid", "{refused}");
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let fake = FakeAs::start().await;
    let (validator, _registry) = validator(fake.issuer());
    for i in 0..VERIFIED_JWT_CACHE_ENTRIES + 50 {
        let token = sign(
            &json!({"alg": "ES256", "kid": "ec-1"}),
            &with(access_claims(), json!({"jti": format!("t{i}")})),
            Signer::Ec(&KEYS.ec),
        );
        validator.authenticate(&token).await.expect("good");
    }
    assert_eq!(validator.verified.len(), VERIFIED_JWT_CACHE_ENTRIES);
}
