//! A CSR from the network: decode, verify proof of possession, never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pqmesh_control_plane::csr::verify_csr(data);
});
