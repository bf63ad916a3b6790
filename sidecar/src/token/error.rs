//! Why a bearer token was refused, how that maps to HTTP (401 / 503), and the bounded metric label.

/// What was wrong with a token that was well-formed but not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// `alg` is none, HMAC, unsupported, or not allowed for the issuer.
    Algorithm,
    /// A header we refuse (`crit`, `jku`, `x5u`, `jwk`, `x5c`) or a missing `kid`.
    Header,
    /// No key with this `kid` in the issuer's JWKS, even after a refetch.
    UnknownKey,
    /// The key's `kty`/`crv`/`alg` does not fit the header's `alg`.
    KeyMismatch,
    Signature,
    Issuer,
    Audience,
    Expired,
    NotYetValid,
    /// `exp` lies further from `iat` (or now) than the issuer's `maxTokenLifetimeSeconds`.
    Lifetime,
    /// A required claim is missing or has the wrong type.
    Claims,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::Algorithm => "invalid_alg",
            InvalidReason::Header => "invalid_header",
            InvalidReason::UnknownKey => "unknown_kid",
            InvalidReason::KeyMismatch => "key_mismatch",
            InvalidReason::Signature => "bad_signature",
            InvalidReason::Issuer => "wrong_issuer",
            InvalidReason::Audience => "wrong_audience",
            InvalidReason::Expired => "expired",
            InvalidReason::NotYetValid => "not_yet_valid",
            InvalidReason::Lifetime => "lifetime_too_long",
            InvalidReason::Claims => "invalid_claims",
        }
    }

    /// Fixed, header-safe text for `error_description` (details stay in logs).
    fn description(self) -> &'static str {
        match self {
            InvalidReason::Algorithm => "signature algorithm not accepted",
            InvalidReason::Header => "token header not accepted",
            InvalidReason::UnknownKey => "signing key not known",
            InvalidReason::KeyMismatch => "signing key does not match the algorithm",
            InvalidReason::Signature => "signature invalid",
            InvalidReason::Issuer => "issuer not accepted",
            InvalidReason::Audience => "audience not accepted",
            InvalidReason::Expired => "token expired",
            InvalidReason::NotYetValid => "token not yet valid",
            InvalidReason::Lifetime => "token lifetime too long",
            InvalidReason::Claims => "token claims invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token we can parse at all (too long, bad characters, bad base64/JSON).
    #[error("malformed token: {reason}")]
    Malformed { reason: String },
    #[error("invalid token ({}): {detail}", reason.as_str())]
    Invalid {
        reason: InvalidReason,
        detail: String,
    },
    /// The authorization server says the token is not active.
    #[error("token is not active")]
    Inactive,
    #[error("no configured issuer matches iss {iss:?}")]
    NoMatchingIssuer { iss: String },
    /// The introspection endpoint could not give a trustworthy answer; never treated as allow.
    #[error("introspection unavailable: {reason}")]
    IntrospectionUnavailable { reason: String },
    /// No keys for the issuer could be fetched yet, so nothing can be verified.
    #[error("JWKS for issuer {issuer} unavailable: {reason}")]
    KeysUnavailable { issuer: String, reason: String },
}

impl TokenError {
    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        TokenError::Malformed {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(reason: InvalidReason, detail: impl Into<String>) -> Self {
        TokenError::Invalid {
            reason,
            detail: detail.into(),
        }
    }

    /// HTTP status for the inbound request: 503 when the sidecar could not decide, 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::IntrospectionUnavailable { .. } | TokenError::KeysUnavailable { .. } => 503,
            _ => 401,
        }
    }

    /// `WWW-Authenticate` value for 401 responses (RFC 6750 §3); `None` for 503.
    pub fn www_authenticate(&self) -> Option<String> {
        let description = match self {
            TokenError::Malformed { .. } => "token malformed",
            TokenError::Invalid { reason, .. } => reason.description(),
            TokenError::Inactive => "token not active",
            TokenError::NoMatchingIssuer { .. } => "issuer not accepted",
            TokenError::IntrospectionUnavailable { .. } | TokenError::KeysUnavailable { .. } => {
                return None
            }
        };
        Some(format!(
            "Bearer error=\"invalid_token\", error_description=\"{description}\""
        ))
    }

    /// Bounded label for metrics.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            TokenError::Malformed { .. } => "malformed",
            TokenError::Invalid { reason, .. } => reason.as_str(),
            TokenError::Inactive => "inactive",
            TokenError::NoMatchingIssuer { .. } => "unknown_issuer",
            TokenError::IntrospectionUnavailable { .. } => "introspection_unavailable",
            TokenError::KeysUnavailable { .. } => "jwks_unavailable",
        }
    }
}
