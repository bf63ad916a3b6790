//! The inactive-answer budget: random opaque tokens cannot make the sidecar call the OAuth server
//! without bound; once the budget is spent misses get 503 (never allow), cached tokens still work.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::token::introspect::{InactiveBudget, INACTIVE_BURST, INACTIVE_PER_SECOND};
use crate::token::TokenError;

#[tokio::test]
async fn random_opaque_tokens_spend_the_budget_then_misses_are_503_and_cached_tokens_still_work() {
    let fake = FakeAs::start().await;
    let good = "the-one-active-token";
    let signed = introspection_jwt(CLIENT_ID, active(300));
    fake.answer(move |token| {
        if token == good {
            Reply::rfc9701(signed.clone())
        } else {
            Reply::rfc9701(introspection_jwt(CLIENT_ID, json!({"active": false})))
        }
    });
    let (validator, registry) = validator(fake.introspecting_issuer());
    validator.authenticate(good).await.expect("active, cached");

    let burst = INACTIVE_BURST as usize;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let started = std::time::Instant::now();
    for i in 0..burst + 50 {
        let err = validator
            .authenticate(&format!("random-{i}-{:x}", rand::random::<u64>()))
            .await
            .expect_err("never active");
        *statuses.entry(err.status()).or_default() += 1;
    }
    // The budget refills at 10 per second while the loop runs (longer on a loaded machine);
    // allow exactly that much.
    let refill = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize + 1;
    let sent = fake.introspection_hits() - 1;
    assert!(
        (burst..=burst + refill).contains(&sent),
        "introspections sent: {sent}, burst {burst}, refill allowed {refill}"
    );
    assert_eq!(statuses[&401], sent);
    assert_eq!(statuses[&503], burst + 50 - sent, "{statuses:?}");
    assert_eq!(
        counter(
            &registry,
            "token_introspections_total",
            &[("outcome", "throttled")]
        ),
        statuses[&503] as u64
    );
    let cached = validator.authenticate(good).await.expect("cache hit");
    assert!(cached.phantom);
    assert_eq!(fake.introspection_hits() - 1, sent, "no call for a hit");
    let throttled = validator
        .authenticate("another-random-token")
        .await
        .expect_err("throttled");
    assert!(
        matches!(throttled, TokenError::IntrospectionUnavailable { .. }),
        "{throttled:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_refills_at_its_rate_up_to_the_burst() {
    let mut budget = InactiveBudget::new();
    let spend_all = |budget: &mut InactiveBudget| {
        let mut n = 0;
        while budget.reserve() {
            n += 1;
        }
        n
    };
    assert_eq!(spend_all(&mut budget), INACTIVE_BURST as usize);
    assert!(!budget.reserve());
    budget.refund();
    assert!(budget.reserve(), "a refunded unit can be used again");
    assert!(!budget.reserve());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(spend_all(&mut budget), (2.0 * INACTIVE_PER_SECOND) as usize);
    tokio::time::advance(Duration::from_millis(50)).await;
    assert!(!budget.reserve(), "half a unit is not a call");
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(
        spend_all(&mut budget),
        INACTIVE_BURST as usize,
        "never more than the burst"
    );
}
