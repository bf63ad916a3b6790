//! Public keys from a JWKS document (RFC 7517) and signature verification with aws-lc-rs.
//! Only asymmetric signing keys are kept: `oct` (symmetric) keys are dropped on parse, so no
//! token can ever be checked against shared-secret material.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use super::jws::Alg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    /// Big-endian modulus and exponent, leading zeros stripped.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (0x04 || x || y).
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Jwk {
    pub kid: String,
    /// The JWK's own `alg`, when it pins one.
    alg: Option<String>,
    key: PublicKey,
}

fn b64(jwk: &serde_json::Map<String, Value>, field: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing {field}"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| format!("{field} is not base64url: {e}"))
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

impl Jwk {
    /// Parses one JWKS entry. `Ok(None)` for entries we skip on purpose (no kid, encryption keys,
    /// symmetric or unknown key types); `Err` for entries that claim a supported type but are broken.
    fn parse(value: &Value) -> Result<Option<Jwk>, String> {
        let Value::Object(jwk) = value else {
            return Err("key is not a JSON object".into());
        };
        let Some(kid) = jwk.get("kid").and_then(Value::as_str) else {
            return Ok(None);
        };
        if jwk
            .get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            return Ok(None);
        }
        let alg = jwk.get("alg").and_then(Value::as_str).map(str::to_string);
        let field = |f: &str| jwk.get(f).and_then(Value::as_str);
        let key = match field("kty") {
            Some("RSA") => {
                let n = strip_leading_zeros(b64(jwk, "n")?);
                let e = strip_leading_zeros(b64(jwk, "e")?);
                if n.len() < 256 {
                    return Err(format!("RSA key {kid} is under 2048 bits"));
                }
                if e.is_empty() {
                    return Err(format!("RSA key {kid} has a zero exponent"));
                }
                PublicKey::Rsa { n, e }
            }
            Some("EC") => {
                let curve = match field("crv") {
                    Some("P-256") => Curve::P256,
                    Some("P-384") => Curve::P384,
                    Some("P-521") => Curve::P521,
                    _ => return Ok(None),
                };
                let (x, y) = (b64(jwk, "x")?, b64(jwk, "y")?);
                let len = curve.coordinate_len();
                if x.len() != len || y.len() != len {
                    return Err(format!("EC key {kid}: coordinates must be {len} bytes"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                PublicKey::Ec { curve, point }
            }
            Some("OKP") if field("crv") == Some("Ed25519") => {
                let x = b64(jwk, "x")?;
                if x.len() != 32 {
                    return Err(format!("Ed25519 key {kid}: x must be 32 bytes"));
                }
                PublicKey::Ed25519 { x }
            }
            _ => return Ok(None),
        };
        Ok(Some(Jwk {
            kid: kid.to_string(),
            alg,
            key,
        }))
    }

    /// Whether this key may verify a signature made with `alg`: the key type (and curve) must be
    /// the one `alg` implies, and a key that pins its own `alg` must pin this one.
    pub(crate) fn fits(&self, alg: Alg) -> bool {
        if self.alg.as_deref().is_some_and(|a| a != alg.name()) {
            return false;
        }
        match (&self.key, alg) {
            (
                PublicKey::Rsa { .. },
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
            ) => true,
            (PublicKey::Ec { curve, .. }, Alg::ES256) => *curve == Curve::P256,
            (PublicKey::Ec { curve, .. }, Alg::ES384) => *curve == Curve::P384,
            (PublicKey::Ec { curve, .. }, Alg::ES512) => *curve == Curve::P521,
            (PublicKey::Ed25519 { .. }, Alg::EdDSA) => true,
            _ => false,
        }
    }

    /// Verifies `signature` over `message`; false when the key does not fit `alg` or it fails.
    pub(crate) fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        match &self.key {
            PublicKey::Rsa { n, e } => {
                let params = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            PublicKey::Ec { point, .. } => {
                // JWS ECDSA signatures are fixed-width r || s (RFC 7518 §3.4), not DER.
                let algorithm = match alg {
                    Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Alg::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                    Alg::ES512 => &signature::ECDSA_P521_SHA512_FIXED,
                    _ => return false,
                };
                UnparsedPublicKey::new(algorithm, point)
                    .verify(message, sig)
                    .is_ok()
            }
            PublicKey::Ed25519 { x } => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
        }
    }
}

/// Parses a JWKS document. Broken entries are skipped (and reported) so one bad key does not
/// take the issuer's good keys down; a document with no usable key at all is an error.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<(Vec<Jwk>, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no keys array")?;
    let mut parsed = Vec::new();
    let mut skipped = Vec::new();
    for key in keys {
        match Jwk::parse(key) {
            Ok(Some(jwk)) => parsed.push(jwk),
            Ok(None) => {}
            Err(e) => skipped.push(e),
        }
    }
    // A well-formed set without a usable key is the issuer withdrawing every key (what it does
    // after a compromise), not an outage: adopted, so every token from it is refused.
    Ok((parsed, skipped))
}
