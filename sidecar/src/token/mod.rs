//! Bearer-token authentication for the inbound HTTP path: JWTs are verified against their issuer's
//! JWKS; opaque tokens are exchanged through the issuer's introspection endpoint for a signed JWT
//! (the phantom-token pattern). The result is the JWT to forward to the app and its claims.
//! Every failure refuses: 401 for a bad token, 503 when the sidecar cannot decide.

mod cache;
mod claims;
mod config;
mod error;
mod http;
mod introspect;
mod issuer;
mod jwk;
mod jwks;
mod jws;
mod metrics;
mod strict_json;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub use claims::scopes;
pub use config::{ConfigError, IntrospectionConfig, IssuerConfig, ResponseFormat};
pub use error::{InvalidReason, TokenError};
pub use jwks::KeysHealth;
pub use jws::MAX_TOKEN_LEN;
pub use metrics::TokenMetrics;

/// Whether `token` is an RFC 9701 introspection response (a JWS with `typ`
/// `token-introspection+jwt`), the form the phantom-token exchange forwards inside the mesh. The
/// edge refuses it from outside clients: it is not an access token, and it would outlive a
/// revocation of the opaque token it came from (review 11, F3).
pub fn is_introspection_response(token: &str) -> bool {
    jws::decode(token).is_ok_and(|j| j.is_introspection_response())
}

use cache::DigestCache;
use http::HttpClient;
use issuer::Issuer;

/// Verified JWTs kept (by digest) so a token seen again is not verified again; each holds about
/// one token and its claims, so this bounds the cache near 2 MB. (Envoy's `jwt_cache_config`
/// keeps 100 by default.)
pub(crate) const VERIFIED_JWT_CACHE_ENTRIES: usize = 1024;

/// A verified JWT, the issuer (index) that vouched for it and that issuer's key-set generation
/// at the time: an entry from before a key change is verified again.
#[derive(Clone)]
struct VerifiedJwt {
    auth: Arc<Authenticated>,
    issuer: usize,
    keys_generation: u64,
}

/// Runs every decoder of untrusted input in this module on `data`: the entry point for a fuzz
/// target. Never panics; the results are discarded.
#[doc(hidden)]
pub fn fuzz_decoders(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = jws::check_bearer(text);
        let _ = jws::looks_like_jws(text);
        if let Ok(decoded) = jws::decode(text) {
            let _ = decoded.is_introspection_response();
            let config = IssuerConfig::new("fuzz", "https://as.example", vec!["api".into()], "");
            let now = claims::unix_now();
            let _ = claims::check_access_token(&decoded.claims, &config, now);
            let _ = claims::check_introspection_response(decoded.claims.clone(), &config, "c", now);
            let _ = scopes(&decoded.claims, pqmesh_policy::ScopeClaim::Scope);
            let _ = scopes(&decoded.claims, pqmesh_policy::ScopeClaim::Scp);
        }
    }
    let _ = jwk::parse_jwks(data);
}

/// An accepted token.
#[derive(Clone)]
pub struct Authenticated {
    /// The JWT to forward as `Authorization: Bearer`, exactly as the issuer signed it.
    pub jwt: String,
    /// Effective claims: the access token's, or `token_introspection` of an RFC 9701 response.
    pub claims: Map<String, Value>,
    /// The name of the issuer (`IssuerConfig::name`) that vouched for the token.
    pub issuer: String,
    /// Whether the bearer was an opaque token exchanged by introspection.
    pub phantom: bool,
}

// The JWT is a bearer credential: keep it out of debug output.
impl fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticated")
            .field("jwt", &"<redacted>")
            .field("claims", &self.claims)
            .field("issuer", &self.issuer)
            .field("phantom", &self.phantom)
            .finish()
    }
}

/// Validates bearer tokens for a set of issuers (one port policy's `TokenIssuer`s).
pub struct Validator {
    issuers: Vec<Issuer>,
    http: HttpClient,
    metrics: TokenMetrics,
    verified: DigestCache<VerifiedJwt>,
}

impl Validator {
    pub fn new(issuers: Vec<IssuerConfig>, metrics: TokenMetrics) -> Result<Self, ConfigError> {
        let mut checked: Vec<Issuer> = Vec::with_capacity(issuers.len());
        for config in issuers {
            if let Some(other) = checked.iter().find(|i| i.config.issuer == config.issuer) {
                return Err(ConfigError::DuplicateIssuer {
                    first: other.config.name.clone(),
                    second: config.name,
                    iss: config.issuer,
                });
            }
            checked.push(Issuer::new(config)?);
        }
        let mut introspecting = checked.iter().filter(|i| i.introspection.is_some());
        if let (Some(first), Some(second)) = (introspecting.next(), introspecting.next()) {
            return Err(ConfigError::SeveralIntrospectors {
                first: first.config.name.clone(),
                second: second.config.name.clone(),
            });
        }
        // The gauge describes the issuers in force: a replaced policy's issuers leave it. Every
        // issuer's series exist at zero from the moment it is loaded, so a first failed
        // introspection or JWKS fetch shows in rate() and alerts.
        metrics.jwks_keys.reset();
        for issuer in &checked {
            let name = issuer.config.name.as_str();
            metrics.jwks_keys.with_label_values(&[name]).set(0);
            for result in ["hit", "miss"] {
                metrics.jwt_cache.with_label_values(&[name, result]);
            }
            for trigger in ["initial", "refresh", "unknown_kid"] {
                for outcome in ["ok", "error"] {
                    metrics
                        .jwks_fetches
                        .with_label_values(&[name, trigger, outcome]);
                }
            }
            if issuer.introspection.is_some() {
                for outcome in ["active", "inactive", "error", "throttled"] {
                    metrics.introspections.with_label_values(&[name, outcome]);
                }
                for result in ["hit", "miss"] {
                    metrics
                        .introspection_cache
                        .with_label_values(&[name, result]);
                }
            }
        }
        Ok(Validator {
            issuers: checked,
            http: HttpClient::new()?,
            metrics,
            verified: DigestCache::new(VERIFIED_JWT_CACHE_ENTRIES),
        })
    }

    /// Starts fetching every issuer's keys now (see `KeyCache::prefetch`), so a broken JWKS
    /// endpoint is visible at policy load rather than on a user's request.
    pub fn prefetch_keys(&self) {
        for issuer in &self.issuers {
            issuer.prefetch_keys(&self.http, &self.metrics);
        }
    }

    /// Per issuer name: the state of its keys.
    pub fn keys_health(&self) -> Vec<(String, KeysHealth)> {
        self.issuers
            .iter()
            .map(|i| (i.config.name.clone(), i.keys_health()))
            .collect()
    }

    /// `bearer` is the token from `Authorization: Bearer <token>`. Returns the JWT to forward and
    /// its effective claims.
    pub async fn authenticate(&self, bearer: &str) -> Result<Arc<Authenticated>, TokenError> {
        let result = self.decide(bearer).await;
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(e) => {
                tracing::debug!(reason = e.metric_reason(), error = %e, "bearer token refused");
                e.metric_reason()
            }
        };
        self.metrics
            .authentications
            .with_label_values(&[outcome])
            .inc();
        result
    }

    async fn decide(&self, bearer: &str) -> Result<Arc<Authenticated>, TokenError> {
        jws::check_bearer(bearer)?;
        if jws::looks_like_jws(bearer) {
            return self.verify_jwt(bearer).await;
        }
        self.introspect(bearer).await.map(Arc::new)
    }

    /// A JWT verified before (same bytes, its issuer's keys unchanged, not yet past `exp` +
    /// skew) is answered from the cache: every check it passed gives the same answer until
    /// then (the time checks only ever pass later, except `exp`).
    async fn verify_jwt(&self, bearer: &str) -> Result<Arc<Authenticated>, TokenError> {
        let key = introspect::token_key(bearer);
        if let Some(hit) = self.verified.get(&key) {
            let issuer = &self.issuers[hit.issuer];
            issuer.refresh_keys_if_due(&self.http, &self.metrics).await;
            if issuer.keys_generation() == hit.keys_generation {
                self.count_cache(issuer, "hit");
                return Ok(hit.auth);
            }
            self.verified.remove(&key);
        }
        let decoded = jws::decode(bearer)?;
        let iss = decoded
            .unverified_iss()
            .ok_or_else(|| TokenError::invalid(InvalidReason::Issuer, "iss is missing"))?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.config.issuer == iss)
            .ok_or_else(|| TokenError::NoMatchingIssuer {
                iss: jws::truncate(iss),
            })?;
        self.count_cache(issuer, "miss");
        let verified = issuer.verify(decoded, &self.http, &self.metrics).await?;
        let remaining = claims::numeric(&verified.claims, "exp")
            .ok()
            .flatten()
            .map(|exp| exp + issuer.config.clock_skew.as_secs_f64() - claims::unix_now());
        let auth = Arc::new(Authenticated {
            jwt: bearer.to_string(),
            claims: verified.claims,
            issuer: issuer.config.name.clone(),
            phantom: false,
        });
        // An RFC 9701 response presented as a bearer also ages out by its `iat`: not cached.
        if let (None, Some(secs)) = (verified.response_iat, remaining) {
            // A second's margin: a cached answer never outlives the one verification would give.
            if secs > 1.0 {
                let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs - 1.0);
                let entry = VerifiedJwt {
                    auth: auth.clone(),
                    issuer: index,
                    keys_generation: verified.keys_generation,
                };
                self.verified.insert(key, entry, deadline);
            }
        }
        Ok(auth)
    }

    fn count_cache(&self, issuer: &Issuer, result: &str) {
        self.metrics
            .jwt_cache
            .with_label_values(&[issuer.config.name.as_str(), result])
            .inc();
    }

    /// Opaque token: asked of the one introspecting issuer (`Validator::new` refuses several).
    /// Its answer is final: "inactive" or "cannot tell" never goes on to another server, which
    /// would see this server's token and could vouch for a token revoked here.
    async fn introspect(&self, bearer: &str) -> Result<Authenticated, TokenError> {
        let Some((issuer, introspector)) = self
            .issuers
            .iter()
            .find_map(|i| i.introspection.as_ref().map(|x| (i, x)))
        else {
            return Err(TokenError::malformed(
                "not a JWT, and no issuer introspects opaque tokens",
            ));
        };
        issuer
            .introspect(introspector, bearer, &self.http, &self.metrics)
            .await
    }
}
