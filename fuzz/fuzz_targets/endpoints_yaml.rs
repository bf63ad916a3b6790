//! The discovery table file (local mode).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = pqmesh_control_plane::endpoints::EndpointTable::parse(text, "cluster.local") {
            let _ = t.lookup("10.0.0.1".parse().unwrap(), 8080);
        }
    }
});
