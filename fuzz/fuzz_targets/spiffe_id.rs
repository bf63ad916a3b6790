//! SPIFFE IDs and allow-list patterns (from certificates, config and policies).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = text.parse::<pqmesh_mtls::SpiffeId>() {
            // Round trip: what we print parses back to the same ID.
            assert_eq!(id.to_string().parse::<pqmesh_mtls::SpiffeId>().ok(), Some(id));
        }
        let _ = pqmesh_mtls::PeerPattern::parse(text, "cluster.local");
    }
});
