//! Claim checks after the signature is verified: access tokens (RFC 9068 style claims) and
//! RFC 9701 introspection responses, whose effective claims are the `token_introspection` object.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

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

/// A NumericDate claim: absent → `None`; present but not a number → invalid.
pub(crate) fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| claims_error(format!("{name} is not a number"))),
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

/// `exp` (when present) not passed and `nbf` (when present) reached, both with `skew`.
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
    Ok(())
}

fn intersects(claims: &Map<String, Value>, accepted: &[String]) -> Result<bool, TokenError> {
    let aud = audiences(claims)?;
    Ok(aud.iter().any(|a| accepted.iter().any(|x| x == a)))
}

/// An access token: `iss`, required `exp`, optional `nbf`, and `aud` ∩ the issuer's audiences.
pub(crate) fn check_access_token(
    claims: &Map<String, Value>,
    issuer: &IssuerConfig,
    now: f64,
) -> Result<(), TokenError> {
    check_iss(claims, &issuer.issuer)?;
    if numeric(claims, "exp")?.is_none() {
        return Err(claims_error("exp is missing"));
    }
    check_times(claims, now, issuer.clock_skew)?;
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

/// An RFC 9701 introspection response addressed to `client_id`; returns the introspected token's
/// claims (`token_introspection`), which must say `active: true`.
pub(crate) fn check_introspection_response(
    mut claims: Map<String, Value>,
    issuer: &IssuerConfig,
    client_id: &str,
    now: f64,
) -> Result<Map<String, Value>, TokenError> {
    check_iss(&claims, &issuer.issuer)?;
    if !audiences(&claims)?.contains(&client_id) {
        return Err(TokenError::invalid(
            InvalidReason::Audience,
            format!("introspection response is not addressed to client {client_id:?}"),
        ));
    }
    let iat = numeric(&claims, "iat")?.ok_or_else(|| claims_error("iat is missing"))?;
    if iat > now + issuer.clock_skew.as_secs_f64() {
        return Err(TokenError::invalid(
            InvalidReason::NotYetValid,
            "iat is in the future",
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
    check_times(&token, now, issuer.clock_skew)?;
    if token.contains_key("aud")
        && !issuer.audiences.is_empty()
        && !intersects(&token, &issuer.audiences)?
    {
        return Err(TokenError::invalid(
            InvalidReason::Audience,
            "introspected aud matches none of the configured audiences",
        ));
    }
    Ok(token)
}

/// The token's scopes: the space-delimited `scope` string, else `scp` (an array, or a string).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let split = |s: &str| s.split_whitespace().map(str::to_string).collect();
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => split(s),
        (_, Some(Value::Array(items))) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        (_, Some(Value::String(s))) => split(s),
        _ => Vec::new(),
    }
}
