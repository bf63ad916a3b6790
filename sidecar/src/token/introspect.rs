//! Phantom tokens: an opaque bearer token is exchanged at the issuer's introspection endpoint
//! (RFC 7662) for a signed JWT (RFC 9701, or Curity's `application/jwt`), which is verified like
//! any other token, cached by the token's digest and forwarded as it was signed.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hyper::header::HeaderValue;
use hyper::{StatusCode, Uri};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::cache::{InFlight, PhantomCache, TokenKey};
use super::claims::{numeric, unix_now, MAX_INTROSPECTION_RESPONSE_AGE};
use super::config::{endpoint, ConfigError, IntrospectionConfig};
use super::error::{InvalidReason, TokenError};
use super::http::HttpClient;
use super::issuer::Issuer;
use super::jws::{self, check_bearer};
use super::metrics::TokenMetrics;
use super::Authenticated;

/// Introspection responses larger than this are refused (the JWT itself is capped at 16 KiB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Inactive answers an issuer may give in a burst before cache misses are throttled, and how many
/// per second refill that budget. Random opaque tokens are never cached, so without this budget a
/// client could make the sidecar call the OAuth server once per request; with it, each sidecar
/// sends at most `BURST + RATE × seconds` introspections that come back inactive. Once it is
/// spent, cache misses get 503 (fail closed) until it refills; cached tokens are unaffected.
pub(crate) const INACTIVE_BURST: f64 = 100.0;
pub(crate) const INACTIVE_PER_SECOND: f64 = 10.0;

/// A token bucket for inactive introspection answers (tokio's clock, so tests can pause it).
pub(crate) struct InactiveBudget {
    available: f64,
    updated: Instant,
}

impl InactiveBudget {
    pub(crate) fn new() -> Self {
        InactiveBudget {
            available: INACTIVE_BURST,
            updated: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.available = (self.available + elapsed * INACTIVE_PER_SECOND).min(INACTIVE_BURST);
        self.updated = now;
    }

    /// Reserves one unit for an introspection about to be sent; `false` when the budget is spent.
    /// Reserving before the call keeps concurrent misses from all passing an empty-budget check.
    pub(crate) fn reserve(&mut self) -> bool {
        self.refill();
        if self.available < 1.0 {
            return false;
        }
        self.available -= 1.0;
        true
    }

    /// Gives a reserved unit back: the answer was not "inactive" (active, or the server failed).
    pub(crate) fn refund(&mut self) {
        self.refill();
        self.available = (self.available + 1.0).min(INACTIVE_BURST);
    }
}

pub(crate) struct Introspector {
    pub config: IntrospectionConfig,
    endpoint: Uri,
    authorization: HeaderValue,
    cache: PhantomCache,
    in_flight: InFlight,
    inactive_budget: std::sync::Mutex<InactiveBudget>,
}

impl Introspector {
    pub(crate) fn new(issuer: &str, config: IntrospectionConfig) -> Result<Self, ConfigError> {
        let endpoint = endpoint(issuer, "introspection.endpoint", &config.endpoint)?;
        // RFC 6749 §2.3.1: form-urlencode the id and secret before Basic-encoding them.
        let credentials = format!(
            "{}:{}",
            form_encode(&config.client_id),
            form_encode(&config.client_secret)
        );
        let mut authorization =
            HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials))).map_err(
                |e| ConfigError::Invalid {
                    issuer: issuer.to_string(),
                    field: "introspection.client_id",
                    value: config.client_id.clone(),
                    reason: e.to_string(),
                },
            )?;
        authorization.set_sensitive(true);
        Ok(Introspector {
            cache: PhantomCache::new(config.cache_max_entries),
            in_flight: InFlight::default(),
            inactive_budget: std::sync::Mutex::new(InactiveBudget::new()),
            config,
            endpoint,
            authorization,
        })
    }

    /// How long an answer may be cached: min(token exp − now, cache_max_ttl, max-age, and for an
    /// RFC 9701 response the time until it is `MAX_INTROSPECTION_RESPONSE_AGE` old, so a
    /// forwarded cached response is still accepted by the next hop); `None` for not at all.
    pub(crate) fn cache_ttl(
        &self,
        claims: &Map<String, Value>,
        response_iat: Option<f64>,
        cache_control: &[String],
        now: f64,
    ) -> Option<Duration> {
        let directive = |name: &str| cache_control.iter().any(|d| d == name);
        if self.config.honor_no_store && (directive("no-store") || directive("no-cache")) {
            return None;
        }
        let mut ttl = self.config.cache_max_ttl;
        if let Ok(Some(exp)) = numeric(claims, "exp") {
            let left = Duration::try_from_secs_f64(exp - now).ok()?;
            ttl = ttl.min(left);
        }
        if let Some(iat) = response_iat {
            let fresh_for = iat + MAX_INTROSPECTION_RESPONSE_AGE.as_secs_f64() - now;
            ttl = ttl.min(Duration::try_from_secs_f64(fresh_for).ok()?);
        }
        for d in cache_control {
            if let Some(value) = d.strip_prefix("max-age=") {
                // An unparsable max-age is treated as 0 (RFC 9111 §4.2.1: stale).
                let secs = value.trim_matches('"').parse::<u64>().unwrap_or(0);
                ttl = ttl.min(Duration::from_secs(secs));
            }
        }
        (!ttl.is_zero()).then_some(ttl)
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, InactiveBudget> {
        self.inactive_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

fn unavailable(reason: impl Into<String>) -> TokenError {
    TokenError::IntrospectionUnavailable {
        reason: reason.into(),
    }
}

impl Issuer {
    /// Authenticates an opaque token through this issuer's introspection endpoint (cached).
    pub(crate) async fn introspect(
        &self,
        introspector: &Introspector,
        token: &str,
        http: &HttpClient,
        metrics: &TokenMetrics,
    ) -> Result<Authenticated, TokenError> {
        let key = token_key(token);
        let issuer = self.config.name.as_str();
        if let Some(hit) = introspector.cache.get(&key) {
            metrics
                .introspection_cache
                .with_label_values(&[issuer, "hit"])
                .inc();
            return Ok(hit);
        }
        metrics
            .introspection_cache
            .with_label_values(&[issuer, "miss"])
            .inc();
        let joined = introspector.in_flight.join(key);
        joined
            .cell
            .get_or_init(|| async {
                if !introspector.budget().reserve() {
                    metrics
                        .introspections
                        .with_label_values(&[issuer, "throttled"])
                        .inc();
                    return Err(unavailable(
                        "introspection throttled: too many inactive tokens recently",
                    ));
                }
                let result = self.call(introspector, token, http, metrics).await;
                let outcome = match &result {
                    Ok(_) => "active",
                    Err(TokenError::Inactive) => "inactive",
                    Err(_) => "error",
                };
                if outcome != "inactive" {
                    introspector.budget().refund();
                }
                metrics
                    .introspections
                    .with_label_values(&[issuer, outcome])
                    .inc();
                let (auth, ttl) = result?;
                if let Some(deadline) = ttl.and_then(|ttl| Instant::now().checked_add(ttl)) {
                    introspector.cache.insert(key, auth.clone(), deadline);
                }
                Ok(auth)
            })
            .await
            .clone()
    }

    /// One RFC 7662 call; returns the verified token and how long it may be cached.
    async fn call(
        &self,
        introspector: &Introspector,
        token: &str,
        http: &HttpClient,
        metrics: &TokenMetrics,
    ) -> Result<(Authenticated, Option<Duration>), TokenError> {
        let config = &introspector.config;
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let response = http
            .post_form(
                &introspector.endpoint,
                introspector.authorization.clone(),
                config.accept.accept(),
                body,
                MAX_RESPONSE_BYTES,
                config.timeout,
            )
            .await
            .map_err(unavailable)?;
        match response.status {
            StatusCode::OK => {}
            // Curity answers an inactive token with 204 when asked for application/jwt.
            StatusCode::NO_CONTENT => return Err(TokenError::Inactive),
            status => return Err(unavailable(format!("HTTP status {status}"))),
        }
        let rfc9701 = match response.media_type().as_deref() {
            Some("application/token-introspection+jwt") => true,
            Some("application/jwt") => false,
            other => {
                return Err(unavailable(format!(
                    "not a signed JWT response (Content-Type {})",
                    other.unwrap_or("missing")
                )))
            }
        };
        let jwt = std::str::from_utf8(&response.body)
            .map_err(|_| unavailable("response body is not UTF-8"))?
            .trim();
        let rejected = |e: TokenError| unavailable(format!("response rejected: {e}"));
        check_bearer(jwt).map_err(rejected)?;
        let decoded = jws::decode(jwt).map_err(rejected)?;
        if rfc9701 && !decoded.is_introspection_response() {
            return Err(unavailable("response typ is not token-introspection+jwt"));
        }
        if decoded.unverified_iss() != Some(self.config.issuer.as_str()) {
            return Err(unavailable("response iss is not the introspecting issuer"));
        }
        let verified = self
            .verify(decoded, http, metrics)
            .await
            .map_err(|e| match e {
                // Until the signature is verified nothing in the response can be trusted; after
                // that, a refusal is about the token itself and stays a 401.
                TokenError::Malformed { .. }
                | TokenError::Invalid {
                    reason:
                        InvalidReason::Algorithm
                        | InvalidReason::Header
                        | InvalidReason::UnknownKey
                        | InvalidReason::KeyMismatch
                        | InvalidReason::Signature,
                    ..
                } => rejected(e),
                other => other,
            })?;
        let ttl = introspector.cache_ttl(
            &verified.claims,
            verified.response_iat,
            &response.cache_control(),
            unix_now(),
        );
        Ok((
            Authenticated {
                jwt: jwt.to_string(),
                claims: verified.claims,
                issuer: self.config.name.clone(),
                phantom: true,
            },
            ttl,
        ))
    }
}
