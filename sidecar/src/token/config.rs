//! Typed settings for one token issuer (a `TokenIssuer`), checked once by `Validator::new`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use hyper::Uri;
use pqmesh_policy::ScopeClaim;

use super::jws::Alg;

/// Which signed introspection response to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseFormat {
    /// RFC 9701: `application/token-introspection+jwt` (oidc-provider and most servers).
    #[default]
    TokenIntrospectionJwt,
    /// Curity style: `application/jwt`, the body is the access token itself as a JWT.
    Jwt,
}

impl ResponseFormat {
    pub(crate) fn accept(self) -> &'static str {
        match self {
            ResponseFormat::TokenIntrospectionJwt => "application/token-introspection+jwt",
            ResponseFormat::Jwt => "application/jwt",
        }
    }
}

#[derive(Clone)]
pub struct IntrospectionConfig {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    pub accept: ResponseFormat,
    pub cache_max_entries: usize,
    pub cache_max_ttl: Duration,
    /// OAuth servers send `Cache-Control: no-store` on everything, so by default it is ignored.
    pub honor_no_store: bool,
    pub timeout: Duration,
}

impl IntrospectionConfig {
    /// Defaults: RFC 9701 responses, 10 000 cached tokens for at most 5 min, 5 s timeout.
    pub fn new(
        endpoint: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        IntrospectionConfig {
            endpoint: endpoint.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            accept: ResponseFormat::default(),
            cache_max_entries: 10_000,
            cache_max_ttl: Duration::from_secs(300),
            honor_no_store: false,
            timeout: Duration::from_secs(5),
        }
    }
}

// The secret must not end up in logs or config dumps.
impl fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("accept", &self.accept)
            .field("cache_max_entries", &self.cache_max_entries)
            .field("cache_max_ttl", &self.cache_max_ttl)
            .field("honor_no_store", &self.honor_no_store)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The TokenIssuer's name (logs, metrics, `Authenticated::issuer`).
    pub name: String,
    /// Expected `iss`, compared exactly.
    pub issuer: String,
    /// An access token's `aud` must contain one of these; empty means no access-token JWT is accepted.
    pub audiences: Vec<String>,
    pub jwks_uri: String,
    pub allowed_algs: Vec<String>,
    pub clock_skew: Duration,
    /// The one claim scopes are read from; a token carrying both `scope` and `scp` is refused.
    pub scope_claim: ScopeClaim,
    /// Longest accepted `exp - iat` (or `exp - now` without `iat`).
    pub max_token_lifetime: Duration,
    pub jwks_refresh: Duration,
    pub jwks_min_refetch: Duration,
    pub introspection: Option<IntrospectionConfig>,
}

impl IssuerConfig {
    /// Defaults: RS256/PS256/ES256/EdDSA, 30 s skew, scopes from `scope`, tokens living at most
    /// one day, JWKS refreshed every 5 min, refetched on an unknown `kid` at most every 30 s, no
    /// introspection.
    pub fn new(
        name: impl Into<String>,
        issuer: impl Into<String>,
        audiences: Vec<String>,
        jwks_uri: impl Into<String>,
    ) -> Self {
        IssuerConfig {
            name: name.into(),
            issuer: issuer.into(),
            audiences,
            jwks_uri: jwks_uri.into(),
            allowed_algs: ["RS256", "PS256", "ES256", "EdDSA"]
                .map(String::from)
                .to_vec(),
            clock_skew: Duration::from_secs(30),
            scope_claim: ScopeClaim::Scope,
            max_token_lifetime: Duration::from_secs(u64::from(
                pqmesh_policy::model::DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
            )),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(30),
            introspection: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("issuer {issuer}: {field} {value:?}: {reason}")]
    Invalid {
        issuer: String,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("issuers {first} and {second} both expect iss {iss:?}")]
    DuplicateIssuer {
        first: String,
        second: String,
        iss: String,
    },
    /// An opaque token says nothing about who issued it, so with two introspecting issuers the
    /// sidecar would have to show one server's tokens to the other (and let either vouch for them).
    #[error(
        "issuers {first} and {second} both introspect opaque tokens: a workload's policies may name \
         at most one TokenIssuer with introspection (an opaque token is sent to that one only)"
    )]
    SeveralIntrospectors { first: String, second: String },
    #[error("cannot build the HTTPS client: {0}")]
    Client(String),
}

impl IssuerConfig {
    /// Checks the settings other than URLs (parsed where they are used); returns the parsed algs.
    pub(crate) fn check(&self) -> Result<Vec<Alg>, ConfigError> {
        let invalid = |field: &'static str, value: &str, reason: &str| ConfigError::Invalid {
            issuer: self.name.clone(),
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if self.issuer.is_empty() {
            return Err(invalid("issuer", &self.issuer, "must not be empty"));
        }
        if self.allowed_algs.is_empty() {
            return Err(invalid(
                "allowed_algs",
                "",
                "must list at least one algorithm",
            ));
        }
        let mut algs = Vec::new();
        for name in &self.allowed_algs {
            let alg = Alg::parse(name).ok_or_else(|| {
                invalid(
                    "allowed_algs",
                    name,
                    "not an accepted signature algorithm (RS/PS/ES 256/384/512 or EdDSA; never none or HS*)",
                )
            })?;
            algs.push(alg);
        }
        if self.max_token_lifetime.is_zero() {
            return Err(invalid("max_token_lifetime", "0s", "must be positive"));
        }
        if self.jwks_min_refetch.is_zero() {
            return Err(invalid("jwks_min_refetch", "0s", "must be positive"));
        }
        if self.jwks_refresh < self.jwks_min_refetch {
            return Err(invalid(
                "jwks_refresh",
                &format!("{:?}", self.jwks_refresh),
                "must not be shorter than jwks_min_refetch",
            ));
        }
        if let Some(i) = &self.introspection {
            if i.client_id.is_empty() {
                return Err(invalid("introspection.client_id", "", "must not be empty"));
            }
            if i.timeout.is_zero() {
                return Err(invalid("introspection.timeout", "0s", "must be positive"));
            }
        }
        Ok(algs)
    }
}

/// Parses an endpoint URL: `https://`, or `http://` only to a loopback host (a local test or demo
/// server); no user-info.
pub(crate) fn endpoint(issuer: &str, field: &'static str, value: &str) -> Result<Uri, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        issuer: issuer.to_string(),
        field,
        // The message reaches the control plane (NACK), logs and /policy_status.
        value: pqmesh_policy::redact::url(value),
        reason: reason.to_string(),
    };
    let uri: Uri = value
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| invalid("must be an absolute URL"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("must not contain credentials"));
    }
    let host = authority.host();
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(invalid(
            "plain http is allowed only to loopback hosts (127.0.0.1, ::1, localhost); use https",
        )),
        _ => Err(invalid("scheme must be https")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
