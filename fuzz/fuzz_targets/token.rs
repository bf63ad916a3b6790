//! Bearer tokens, JWT headers/payloads, JWKS documents and introspection responses.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pqmesh_sidecar::token::fuzz_decoders(data);
});
