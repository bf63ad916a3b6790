//! One configured issuer: its allowed algorithms, its JWKS cache and (optionally) its
//! introspection client; verifies a decoded JWS and returns the effective claims.

use serde_json::{Map, Value};

use super::claims::{check_access_token, check_introspection_response, unix_now};
use super::config::{endpoint, ConfigError, IssuerConfig};
use super::error::{InvalidReason, TokenError};
use super::http::HttpClient;
use super::introspect::Introspector;
use super::jwks::{KeyCache, KeysHealth};
use super::jws::{Alg, Jws};
use super::metrics::TokenMetrics;

/// What a verified JWT vouches for.
pub(crate) struct Verified {
    /// The effective claims (the access token's, or `token_introspection`).
    pub claims: Map<String, Value>,
    /// For an RFC 9701 response: its `iat` (its freshness bounds how long it may be reused).
    pub response_iat: Option<f64>,
    /// The generation of the key set the signature was verified with.
    pub keys_generation: u64,
}

pub(crate) struct Issuer {
    pub config: IssuerConfig,
    algs: Vec<Alg>,
    keys: std::sync::Arc<KeyCache>,
    pub introspection: Option<Introspector>,
}

impl Issuer {
    pub(crate) fn new(config: IssuerConfig) -> Result<Self, ConfigError> {
        let algs = config.check()?;
        let jwks_uri = endpoint(&config.name, "jwks_uri", &config.jwks_uri)?;
        let keys = std::sync::Arc::new(KeyCache::new(
            config.name.clone(),
            jwks_uri,
            config.jwks_refresh,
            config.jwks_min_refetch,
        ));
        let introspection = match &config.introspection {
            Some(i) => Some(Introspector::new(&config.name, i.clone())?),
            None => None,
        };
        if config.audiences.is_empty() {
            tracing::warn!(issuer = %config.name,
                "no audiences configured: access-token JWTs from this issuer will all be refused");
        }
        Ok(Issuer {
            config,
            algs,
            keys,
            introspection,
        })
    }

    pub(crate) fn prefetch_keys(&self, http: &HttpClient, metrics: &TokenMetrics) {
        self.keys.prefetch(http.clone(), metrics.clone());
    }

    pub(crate) fn keys_health(&self) -> KeysHealth {
        self.keys.health()
    }

    /// Starts the periodic key refresh when it is due (a cached JWT does not reach `verify`, and
    /// a withdrawn key must still end its tokens' cached verdicts within `jwks_refresh`).
    pub(crate) async fn refresh_keys_if_due(&self, http: &HttpClient, metrics: &TokenMetrics) {
        let _ = self.keys.ensure_fresh(http, metrics).await;
    }

    /// See `KeyCache::generation`.
    pub(crate) fn keys_generation(&self) -> u64 {
        self.keys.generation()
    }

    /// Verifies the signature with this issuer's keys, then the claims; returns the effective
    /// claims (the access token's, or `token_introspection` of an RFC 9701 response).
    pub(crate) async fn verify(
        &self,
        jws: Jws<'_>,
        http: &HttpClient,
        metrics: &TokenMetrics,
    ) -> Result<Verified, TokenError> {
        if !self.algs.contains(&jws.alg) {
            return Err(TokenError::invalid(
                InvalidReason::Algorithm,
                format!(
                    "alg {} is not allowed for issuer {}",
                    jws.alg.name(),
                    self.config.name
                ),
            ));
        }
        let client_id = match (&self.introspection, jws.is_introspection_response()) {
            (Some(i), true) => Some(i.config.client_id.as_str()),
            (None, true) => {
                return Err(TokenError::invalid(
                    InvalidReason::Claims,
                    format!(
                    "token introspection JWT from issuer {}, which has no introspection configured",
                    self.config.name
                ),
                ))
            }
            (_, false) => None,
        };
        let (key, keys_generation) = self.keys.key_for(&jws.kid, jws.alg, http, metrics).await?;
        if !key.verify(jws.alg, jws.signing_input.as_bytes(), &jws.signature) {
            return Err(TokenError::invalid(
                InvalidReason::Signature,
                format!("signature does not verify with key {:?}", key.kid),
            ));
        }
        let now = unix_now();
        match client_id {
            Some(client_id) => {
                let (claims, iat) =
                    check_introspection_response(jws.claims, &self.config, client_id, now)?;
                Ok(Verified {
                    claims,
                    response_iat: Some(iat),
                    keys_generation,
                })
            }
            None => {
                check_access_token(&jws.claims, &self.config, now)?;
                Ok(Verified {
                    claims: jws.claims,
                    response_iat: None,
                    keys_generation,
                })
            }
        }
    }
}
