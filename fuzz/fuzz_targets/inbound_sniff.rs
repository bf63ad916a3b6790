//! The first bytes of an inbound connection: mesh ClientHello detection and HTTP detection.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pqmesh_sidecar::sniff::classify_transport(data);
    let _ = pqmesh_sidecar::sniff::classify_app(data);
    if data.len() > 5 {
        let _ = pqmesh_sidecar::sniff::client_hello_alpn(&data[5..]);
    }
});
