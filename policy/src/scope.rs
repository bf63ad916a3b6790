//! Which claim carries a token's scopes. Each TokenIssuer names exactly one (`scopeClaim`): the
//! space-delimited `scope` string (default) or the `scp` array. A token that carries both is
//! refused rather than merged — merging let `scope="orders:read"` plus `scp=["orders:write"]`
//! satisfy a rule wanting `orders:write` although the two claims may come from different parties.

use serde_json::{Map, Value};

pub use crate::model::ScopeClaim;

/// Why a token's scopes cannot be read; the token is refused as invalid (401 `invalid_token`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "the token carries both scope and scp; one scope claim per token (the issuer reads {0})"
    )]
    Both(&'static str),
    #[error("{claim} must be {wanted}, not {found}")]
    WrongType {
        claim: &'static str,
        wanted: &'static str,
        found: &'static str,
    },
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The token's scopes from `source` only; absent claim → no scopes.
pub fn token_scopes(
    claims: &Map<String, Value>,
    source: ScopeClaim,
) -> Result<Vec<String>, ScopeError> {
    if claims.contains_key("scope") && claims.contains_key("scp") {
        return Err(ScopeError::Both(source.name()));
    }
    let wrong = |wanted, found: &Value| ScopeError::WrongType {
        claim: source.name(),
        wanted,
        found: kind(found),
    };
    match (source, claims.get(source.name())) {
        (_, None) => Ok(Vec::new()),
        (ScopeClaim::Scope, Some(Value::String(s))) => Ok(s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        (ScopeClaim::Scope, Some(other)) => Err(wrong("a space-delimited string", other)),
        (ScopeClaim::Scp, Some(Value::Array(items))) => items
            .iter()
            .map(|v| match v {
                Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => {
                    Ok(s.clone())
                }
                Value::String(_) => Err(ScopeError::WrongType {
                    claim: "scp",
                    wanted: "an array of non-empty scope strings without whitespace",
                    found: "a string with whitespace or an empty string",
                }),
                other => Err(ScopeError::WrongType {
                    claim: "scp",
                    wanted: "an array of strings",
                    found: kind(other),
                }),
            })
            .collect(),
        (ScopeClaim::Scp, Some(other)) => Err(wrong("an array of strings", other)),
    }
}
