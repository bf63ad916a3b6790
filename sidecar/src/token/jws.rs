//! Compact JWS decoding (RFC 7515) with our refusals applied to the header before any key lookup.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::error::{InvalidReason, TokenError};

/// Bearer tokens longer than this are refused before parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// `typ` of an RFC 9701 introspection response.
pub(crate) const TYP_INTROSPECTION: &str = "token-introspection+jwt";

/// The JWS algorithms we verify. HMAC and `none` are deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

impl Alg {
    /// JOSE names are case-sensitive (RFC 7518 §3.1).
    pub(crate) fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "ES512" => Alg::ES512,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
        }
    }
}

/// A decoded compact JWS whose header passed our checks; the signature is not verified yet.
#[derive(Debug)]
pub(crate) struct Jws<'a> {
    pub alg: Alg,
    pub kid: String,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

impl Jws<'_> {
    pub(crate) fn is_introspection_response(&self) -> bool {
        self.typ.as_deref().is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            // RFC 7515 §4.1.9 allows omitting the "application/" prefix.
            t == TYP_INTROSPECTION || t == "application/token-introspection+jwt"
        })
    }

    /// The unverified `iss`, used only to pick which issuer's keys to verify with.
    pub(crate) fn unverified_iss(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// Byte classes as tables: every request with a bearer token has each of its bytes checked
/// twice (b64token, then base64url), and a table look-up per byte is several times cheaper than
/// the comparisons (visible in the JWT-policy profile, docs/benchmarks.md).
const fn byte_table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}
const B64URL: [bool; 256] = byte_table(b"-_");
const B64TOKEN: [bool; 256] = byte_table(b"-._~+/");

fn is_b64url(s: &str) -> bool {
    s.bytes().all(|b| B64URL[b as usize])
}

/// Three dot-separated base64url segments (the last may be empty, as in `alg: none`).
pub(crate) fn looks_like_jws(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !h.is_empty() && !p.is_empty() && is_b64url(h) && is_b64url(p) && is_b64url(s)
}

/// RFC 6750 `b64token` syntax and our size limit; anything else is refused before parsing.
pub(crate) fn check_bearer(token: &str) -> Result<(), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::malformed(format!(
            "token is {} bytes, the limit is {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    let body = token.trim_end_matches('=');
    let ok = !body.is_empty() && body.bytes().all(|b| B64TOKEN[b as usize]);
    if ok {
        Ok(())
    } else {
        Err(TokenError::malformed(
            "token is empty or has characters outside RFC 6750 b64token",
        ))
    }
}

fn decode_json(segment: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|e| TokenError::malformed(format!("{what} is not base64url: {e}")))?;
    match serde_json::from_slice::<super::strict_json::StrictValue>(&bytes).map(|v| v.0) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TokenError::malformed(format!(
            "{what} is not a JSON object"
        ))),
        Err(e) => Err(TokenError::malformed(format!("{what} is not JSON: {e}"))),
    }
}

/// Decodes a compact JWS and applies the header refusals. Does not verify anything cryptographic.
pub(crate) fn decode(token: &str) -> Result<Jws<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::malformed("JWT over the size limit"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::malformed("JWT must have three segments"));
    };
    let header = decode_json(h, "JWT header")?;
    let alg = check_header(&header)?;
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
        Some(_) => {
            return Err(TokenError::invalid(
                InvalidReason::Header,
                "kid is not a string",
            ))
        }
        None => return Err(TokenError::invalid(InvalidReason::Header, "kid is missing")),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => {
            return Err(TokenError::invalid(
                InvalidReason::Header,
                "typ is not a string",
            ))
        }
    };
    let claims = decode_json(p, "JWT payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| TokenError::malformed(format!("JWT signature is not base64url: {e}")))?;
    Ok(Jws {
        alg,
        kid,
        typ,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

fn check_header(header: &Map<String, Value>) -> Result<Alg, TokenError> {
    let name = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => {
            return Err(TokenError::invalid(
                InvalidReason::Algorithm,
                "alg is missing",
            ))
        }
    };
    if name.eq_ignore_ascii_case("none") {
        return Err(TokenError::invalid(InvalidReason::Algorithm, "alg none"));
    }
    // `get` rather than slicing: the alg is attacker text and may start with a multi-byte char.
    if name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
        return Err(TokenError::invalid(
            InvalidReason::Algorithm,
            format!("HMAC alg {name} is never accepted"),
        ));
    }
    let alg = Alg::parse(name).ok_or_else(|| {
        TokenError::invalid(
            InvalidReason::Algorithm,
            format!("unsupported alg {}", truncate(name)),
        )
    })?;
    // We implement no JWS extensions, so any `crit` must be refused (RFC 7515 §4.1.11).
    if header.contains_key("crit") {
        return Err(TokenError::invalid(InvalidReason::Header, "crit header"));
    }
    // Keys come only from the issuer's configured JWKS, never from the token.
    for key_source in ["jku", "x5u", "jwk", "x5c"] {
        if header.contains_key(key_source) {
            return Err(TokenError::invalid(
                InvalidReason::Header,
                format!("{key_source} header"),
            ));
        }
    }
    Ok(alg)
}

/// Shortens attacker-controlled text before it goes into an error message or log.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod byte_class_tests {
    use super::{B64TOKEN, B64URL};

    /// The tables say exactly what the RFC 6750 b64token and base64url alphabets say.
    #[test]
    fn tables_match_the_alphabets() {
        for b in 0..=255u8 {
            let alnum = b.is_ascii_alphanumeric();
            assert_eq!(
                B64URL[b as usize],
                alnum || b == b'-' || b == b'_',
                "byte {b}"
            );
            assert_eq!(
                B64TOKEN[b as usize],
                alnum || b"-._~+/".contains(&b),
                "byte {b}"
            );
        }
    }
}
