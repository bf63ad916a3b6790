//! Token-authentication counters, registered on the sidecar's one registry.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct TokenMetrics {
    /// `token_authentications_total{outcome}`: `accepted` or a `TokenError::metric_reason`.
    pub authentications: IntCounterVec,
    /// `token_introspection_cache_total{issuer, result=hit|miss}`.
    pub introspection_cache: IntCounterVec,
    /// `token_introspections_total{issuer, outcome=active|inactive|error|throttled}`:
    /// calls to the endpoint (`throttled`: not sent, the inactive-answer budget is spent).
    pub introspections: IntCounterVec,
    /// `token_jwks_fetches_total{issuer, trigger=initial|refresh|unknown_kid, outcome=ok|error}`.
    pub jwks_fetches: IntCounterVec,
    /// `token_jwt_cache_total{issuer, result=hit|miss}`: JWTs answered from the verified-token
    /// cache, or verified.
    pub jwt_cache: IntCounterVec,
    /// `token_jwks_keys{issuer}`: keys held per issuer of the policy in force (0: none usable).
    pub jwks_keys: IntGaugeVec,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl TokenMetrics {
    /// Registers the counters; fails only if they are already registered on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(TokenMetrics {
            authentications: counter(
                registry,
                "token_authentications_total",
                "Bearer-token authentications, by outcome (accepted or the refusal reason)",
                &["outcome"],
            )?,
            introspection_cache: counter(
                registry,
                "token_introspection_cache_total",
                "Phantom-token cache look-ups, by issuer and result (hit or miss)",
                &["issuer", "result"],
            )?,
            introspections: counter(
                registry,
                "token_introspections_total",
                "Introspection calls, by issuer and outcome (active, inactive, error, or throttled: not sent)",
                &["issuer", "outcome"],
            )?,
            jwks_fetches: counter(
                registry,
                "token_jwks_fetches_total",
                "JWKS fetches, by issuer, trigger (initial, refresh, unknown_kid) and outcome",
                &["issuer", "trigger", "outcome"],
            )?,
            jwt_cache: counter(
                registry,
                "token_jwt_cache_total",
                "JWT bearer look-ups in the verified-token cache, by issuer and result (hit, or miss: verified)",
                &["issuer", "result"],
            )?,
            jwks_keys: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "token_jwks_keys",
                        "Verification keys held, by issuer of the policy in force (0: its tokens cannot be verified)",
                    ),
                    &["issuer"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
        })
    }
}
