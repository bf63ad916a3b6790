//! Claim checks after the signature is verified: access tokens (RFC 9068 style claims) and
//! RFC 9701 introspection responses, whose effective claims are the `token_introspection` object.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use pqmesh_policy::{token_scopes, ScopeClaim};

use super::config::IssuerConfig;
use super::error::{InvalidReason, TokenError};
use super::jws::truncate;

/// Wall-clock now in seconds since the epoch (token times are wall-clock, unlike cache deadlines).
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn claims_error(detail: impl Into<String>) -> TokenError {
    TokenError::invalid(InvalidReason::Claims, detail)
}

/// The largest NumericDate accepted: 9999-12-31T23:59:59Z. Anything larger (`1e30`) is refused
/// rather than saturated into "never expires".
pub(crate) const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// How old an RFC 9701 introspection response (its own `iat`) may be, beyond the clock skew.
/// Equal to the default phantom-token cache bound: a gateway never forwards a cached response
/// older than this (the cache TTL is capped by it), and the next hop accepts it for as long.
pub(crate) const MAX_INTROSPECTION_RESPONSE_AGE: Duration = Duration::from_secs(300);

/// A NumericDate claim: absent → `None`; present, it must be a non-negative integer no larger
/// than `MAX_NUMERIC_DATE` (fractions, negatives, exponents and strings are refused).
pub(crate) fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= MAX_NUMERIC_DATE => Ok(Some(v as f64)),
            _ => Err(claims_error(format!(
                "{name} {} is not a NumericDate (an integer from 0 to {MAX_NUMERIC_DATE})",
                truncate(&n.to_string())
            ))),
        },
        Some(_) => Err(claims_error(format!("{name} is not a number"))),
    }
}

/// `aud` as a list: a string or an array of strings; absent → empty.
fn audiences(claims: &Map<String, Value>) -> Result<Vec<&str>, TokenError> {
    match claims.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(a)) => Ok(vec![a.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| claims_error("aud array holds a non-string"))
            })
            .collect(),
        Some(_) => Err(claims_error("aud is neither a string nor an array")),
    }
}

fn check_iss(claims: &Map<String, Value>, expected: &str) -> Result<(), TokenError> {
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if iss == expected => Ok(()),
        Some(iss) => Err(TokenError::invalid(
            InvalidReason::Issuer,
            format!("iss {:?}, expected {expected:?}", truncate(iss)),
        )),
        None => Err(TokenError::invalid(InvalidReason::Issuer, "iss is missing")),
    }
}

/// `exp` (when present) not passed, `nbf` (when present) reached and `iat` (when present) not in
/// the future, each with `skew`.
fn check_times(claims: &Map<String, Value>, now: f64, skew: Duration) -> Result<(), TokenError> {
    let skew = skew.as_secs_f64();
    if let Some(exp) = numeric(claims, "exp")? {
        if now > exp + skew {
            return Err(TokenError::invalid(
                InvalidReason::Expired,
                format!("expired {:.0} s ago", now - exp),
            ));
        }
    }
    if let Some(nbf) = numeric(claims, "nbf")? {
        if nbf > now + skew {
            return Err(TokenError::invalid(
                InvalidReason::NotYetValid,
                format!("not valid for another {:.0} s", nbf - now),
            ));
        }
    }
    if let Some(iat) = numeric(claims, "iat")? {
        if iat > now + skew {
            return Err(TokenError::invalid(
                InvalidReason::NotYetValid,
                format!("iat is {:.0} s in the future", iat - now),
            ));
        }
    }
    Ok(())
}

/// The effective token: `exp` required, times checked, lifetime (`exp - iat`, or `exp - now`
/// without `iat`) within the issuer's bound, and scopes readable from the issuer's scope claim.
fn check_effective_token(
    claims: &Map<String, Value>,
    issuer: &IssuerConfig,
    now: f64,
) -> Result<(), TokenError> {
    let exp = numeric(claims, "exp")?.ok_or_else(|| claims_error("exp is missing"))?;
    check_times(claims, now, issuer.clock_skew)?;
    let max = issuer.max_token_lifetime.as_secs_f64();
    let lifetime = match numeric(claims, "iat")? {
        Some(iat) => exp - iat,
        // Without iat only the remaining lifetime is known; our clock may lag by the skew.
        None => exp - now - issuer.clock_skew.as_secs_f64(),
    };
    if lifetime > max {
        return Err(TokenError::invalid(
            InvalidReason::Lifetime,
            format!("lifetime {lifetime:.0} s exceeds the issuer's maximum {max:.0} s"),
        ));
    }
    token_scopes(claims, issuer.scope_claim).map_err(|e| claims_error(e.to_string()))?;
    Ok(())
}

fn intersects(claims: &Map<String, Value>, accepted: &[String]) -> Result<bool, TokenError> {
    let aud = audiences(claims)?;
    Ok(aud.iter().any(|a| accepted.iter().any(|x| x == a)))
}

/// An access token: `iss`, required `exp`, optional `nbf`/`iat`, bounded lifetime, one scope
/// claim, and `aud` ∩ the issuer's audiences.
pub(crate) fn check_access_token(
    claims: &Map<String, Value>,
    issuer: &IssuerConfig,
    now: f64,
) -> Result<(), TokenError> {
    check_iss(claims, &issuer.issuer)?;
    check_effective_token(claims, issuer, now)?;
    if issuer.audiences.is_empty() {
        return Err(TokenError::invalid(
            InvalidReason::Audience,
            format!("issuer {} has no audiences configured", issuer.name),
        ));
    }
    if !intersects(claims, &issuer.audiences)? {
        return Err(TokenError::invalid(
            InvalidReason::Audience,
            "aud matches none of the configured audiences",
        ));
    }
    Ok(())
}

/// An RFC 9701 introspection response addressed to `client_id` and issued (`iat`) at most
/// `MAX_INTROSPECTION_RESPONSE_AGE` + skew ago; returns the introspected token's claims
/// (`token_introspection`), which must say `active: true` and are checked like an access
/// token's (`exp` required, lifetime bound, one scope claim), and the response's `iat`.
pub(crate) fn check_introspection_response(
    mut claims: Map<String, Value>,
    issuer: &IssuerConfig,
    client_id: &str,
    now: f64,
) -> Result<(Map<String, Value>, f64), TokenError> {
    check_iss(&claims, &issuer.issuer)?;
    if !audiences(&claims)?.contains(&client_id) {
        return Err(TokenError::invalid(
            InvalidReason::Audience,
            format!("introspection response is not addressed to client {client_id:?}"),
        ));
    }
    let iat = numeric(&claims, "iat")?.ok_or_else(|| claims_error("iat is missing"))?;
    // Without this bound a captured response with an `exp`-less token was valid forever.
    let oldest =
        now - issuer.clock_skew.as_secs_f64() - MAX_INTROSPECTION_RESPONSE_AGE.as_secs_f64();
    if iat < oldest {
        return Err(TokenError::invalid(
            InvalidReason::Expired,
            format!(
                "introspection response issued {:.0} s ago (at most {} s + clock skew)",
                now - iat,
                MAX_INTROSPECTION_RESPONSE_AGE.as_secs()
            ),
        ));
    }
    check_times(&claims, now, issuer.clock_skew)?;
    let token = match claims.remove("token_introspection") {
        Some(Value::Object(token)) => token,
        Some(_) => return Err(claims_error("token_introspection is not an object")),
        None => return Err(claims_error("token_introspection is missing")),
    };
    match token.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Err(TokenError::Inactive),
        _ => return Err(claims_error("token_introspection.active is not a boolean")),
    }
    if token.contains_key("iss") {
        check_iss(&token, &issuer.issuer)?;
    }
    check_effective_token(&token, issuer, now)?;
    if token.contains_key("aud")
        && !issuer.audiences.is_empty()
        && !intersects(&token, &issuer.audiences)?
    {
        return Err(TokenError::invalid(
            InvalidReason::Audience,
            "introspected aud matches none of the configured audiences",
        ));
    }
    Ok((token, iat))
}

/// The token's scopes, from `source` only (a token carrying both `scope` and `scp` has none:
/// it is refused when it is validated).
pub fn scopes(claims: &Map<String, Value>, source: ScopeClaim) -> Vec<String> {
    token_scopes(claims, source).unwrap_or_default()
}
