//! Keys are fetched when an issuer is loaded, not on the first request: a broken JWKS endpoint
//! shows in `token_jwks_keys`, the fetch counter and `keys_health` before any user is refused,
//! and the prefetch keeps retrying until it succeeds.

use std::time::Duration;

use super::jwt::wait_for;
use super::*;

fn gauge(registry: &prometheus::Registry, name: &str, issuer: &str) -> Option<i64> {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "issuer" && l.value() == issuer)
        })
        .map(|m| m.get_gauge().get_value() as i64)
}

fn quick_retry(mut config: IssuerConfig) -> IssuerConfig {
    config.jwks_min_refetch = Duration::from_millis(200);
    config
}

#[tokio::test]
async fn keys_are_loaded_when_the_issuer_is_loaded() {
    let fake = FakeAs::start().await;
    let (validator, registry) = validator(quick_retry(fake.issuer()));
    assert_eq!(
        gauge(&registry, "token_jwks_keys", "test-as"),
        Some(0),
        "the gauge exists, at 0, before any fetch"
    );
    assert_eq!(fake.jwks_hits(), 0, "building a validator fetches nothing");
    validator.prefetch_keys();
    wait_for(|| gauge(&registry, "token_jwks_keys", "test-as") == Some(3)).await;
    assert_eq!(fake.jwks_hits(), 1);
    let health = &validator.keys_health()[0];
    assert_eq!(health.0, "test-as");
    assert_eq!(
        health.1.keys, 3,
        "rsa-1, ec-1, ed-1; the symmetric key is skipped"
    );
    assert_eq!(health.1.last_error, None);
    assert!(health.1.fetched_secs_ago.is_some());
    validator.authenticate(&access_token()).await.expect("good");
    assert_eq!(
        fake.jwks_hits(),
        1,
        "the first request uses the prefetched keys"
    );
}

#[tokio::test]
async fn a_broken_jwks_is_visible_before_any_request_and_retried_until_it_works() {
    let fake = FakeAs::start().await;
    fake.set_jwks(None);
    let (validator, registry) = validator(quick_retry(fake.issuer()));
    validator.prefetch_keys();
    wait_for(|| fake.jwks_hits() >= 2).await;
    let health = &validator.keys_health()[0].1;
    assert_eq!(health.keys, 0);
    assert_eq!(health.fetched_secs_ago, None);
    assert!(
        health
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("500")),
        "the reason is kept: {health:?}"
    );
    assert_eq!(gauge(&registry, "token_jwks_keys", "test-as"), Some(0));
    assert!(
        counter(
            &registry,
            "token_jwks_fetches_total",
            &[("trigger", "initial"), ("outcome", "error")]
        ) >= 2
    );
    // The issuer comes back: the next retry loads the keys, and retries stop.
    fake.set_jwks(Some(jwks()));
    wait_for(|| gauge(&registry, "token_jwks_keys", "test-as") == Some(3)).await;
    assert_eq!(validator.keys_health()[0].1.last_error, None);
    let hits = fake.jwks_hits();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        fake.jwks_hits(),
        hits,
        "no fetches once the keys are loaded"
    );
    validator.authenticate(&access_token()).await.expect("good");
}

#[tokio::test]
async fn a_replaced_issuer_stops_retrying() {
    let fake = FakeAs::start().await;
    fake.set_jwks(None);
    let (validator, _registry) = validator(quick_retry(fake.issuer()));
    validator.prefetch_keys();
    wait_for(|| fake.jwks_hits() >= 1).await;
    drop(validator);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = fake.jwks_hits();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        fake.jwks_hits(),
        hits,
        "a dropped validator's prefetch ends"
    );
}

#[tokio::test]
async fn a_new_validator_replaces_the_previous_issuers_in_the_gauge() {
    let fake = FakeAs::start().await;
    let registry = prometheus::Registry::new();
    let metrics = TokenMetrics::new(&registry).expect("metrics");
    let first = Validator::new(vec![fake.issuer()], metrics.clone()).expect("valid");
    first.prefetch_keys();
    wait_for(|| gauge(&registry, "token_jwks_keys", "test-as") == Some(3)).await;
    let mut renamed = fake.issuer();
    renamed.name = "renamed-as".into();
    let _second = Validator::new(vec![renamed], metrics).expect("valid");
    assert_eq!(gauge(&registry, "token_jwks_keys", "test-as"), None);
    assert_eq!(gauge(&registry, "token_jwks_keys", "renamed-as"), Some(0));
}

/// The demo found this: the OAuth server starts after the policy is applied. A failed prefetch
/// must not make the first request wait `minRefetchSeconds` (30 s) before fetching itself.
#[tokio::test]
async fn a_failed_prefetch_does_not_hold_back_the_first_requests_fetch() {
    let fake = FakeAs::start().await;
    fake.set_jwks(None);
    let (validator, _registry) = validator(fake.issuer());
    validator.prefetch_keys();
    wait_for(|| fake.jwks_hits() >= 1).await;
    fake.set_jwks(Some(jwks()));
    validator
        .authenticate(&access_token())
        .await
        .expect("the request fetches the keys now that the server answers");
}

/// Found by the outside review (F1, F2): an issuer that withdraws every key (a 200 with an empty
/// set) is obeyed, not treated as an outage; and the refresh runs without requests, so an idle
/// sidecar holding a cached verdict refuses the token within `refresh`.
#[tokio::test]
async fn withdrawing_every_key_is_obeyed_and_refreshes_run_without_requests() {
    let fake = FakeAs::start().await;
    let mut config = quick_retry(fake.issuer());
    config.jwks_refresh = Duration::from_millis(400);
    let (validator, registry) = validator(config);
    validator.prefetch_keys();
    let token = access_token();
    validator.authenticate(&token).await.expect("good");
    validator.authenticate(&token).await.expect("cached");
    fake.set_jwks(Some(json!({"keys": []})));
    // No request in between: the background refresh alone must adopt the empty set.
    wait_for(|| gauge(&registry, "token_jwks_keys", "test-as") == Some(0)).await;
    let refused = validator
        .authenticate(&token)
        .await
        .expect_err("every key was withdrawn");
    assert_eq!(refused.status(), 401, "{refused}");
}
