//! No input panics the decoders: seeded random mutations of good tokens and JWKS documents
//! (a quick stand-in for the fuzz target, which calls the same `fuzz_decoders`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::token::fuzz_decoders;

fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let len = out.len();
        match rng.random_range(0..5) {
            0 if len > 0 => out[rng.random_range(0..len)] = rng.random(),
            1 if len > 0 => {
                out.remove(rng.random_range(0..len));
            }
            2 => out.insert(rng.random_range(0..=len), rng.random()),
            3 if len > 0 => out.truncate(rng.random_range(0..len)),
            _ => {
                // Splice in fragments that matter to the parsers, multi-byte characters included.
                let pick: [&[u8]; 12] = [
                    b".",
                    b"\"",
                    b"{}",
                    b"[]",
                    b"-",
                    b"_",
                    b"=",
                    b"null",
                    b"1e999",
                    b"-0",
                    "\u{20ac}".as_bytes(),
                    "\u{e9}".as_bytes(),
                ];
                let fragment = pick[rng.random_range(0..pick.len())];
                let at = rng.random_range(0..=len);
                out.splice(at..at, fragment.iter().copied());
            }
        }
    }
    out
}

#[test]
fn mutated_tokens_and_jwks_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x7095);
    let seeds: Vec<Vec<u8>> = vec![
        access_token().into_bytes(),
        introspection_jwt(CLIENT_ID, active(300)).into_bytes(),
        jwks().to_string().into_bytes(),
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"ec-1"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"iss":"https://as.example","exp":1e308,"aud":[1,{}]}"#)
        )
        .into_bytes(),
    ];
    for _ in 0..3000 {
        for seed in &seeds {
            fuzz_decoders(&mutate(&mut rng, seed));
        }
    }
    // Decoded JSON mutations too (the base64 layer hides most byte flips from serde).
    for _ in 0..3000 {
        let header = mutate(
            &mut rng,
            br#"{"alg":"RS256","kid":"rsa-1","typ":"token-introspection+jwt"}"#,
        );
        let payload = mutate(
            &mut rng,
            br#"{"iss":"https://as.example","aud":"c","iat":1,"token_introspection":{"active":true,"exp":2e9,"aud":["api"]},"scope":"a b","scp":["x"]}"#,
        );
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(b"sig")
        );
        fuzz_decoders(token.as_bytes());
    }
}
