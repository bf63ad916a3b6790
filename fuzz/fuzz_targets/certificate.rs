//! A peer certificate: the SPIFFE ID and summary readers, and the signature-scheme classifier.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pqmesh_mtls::x509::spiffe_id(data);
    let _ = pqmesh_mtls::x509::summary(data);
    let _ = pqmesh_mtls::verify::signature_scheme_name(data);
});
