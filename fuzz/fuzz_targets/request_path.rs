//! Request paths and path patterns: normalisation must be idempotent and never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(normal) = pqmesh_policy::path::normalize(text) {
        assert_eq!(pqmesh_policy::path::normalize(&normal).as_deref(), Ok(normal.as_str()), "idempotent");
        if let Ok(p) = pqmesh_policy::path::PathPattern::parse(&normal) {
            let _ = p.matches(&normal);
        }
    }
    let _ = pqmesh_policy::path::PathPattern::parse(text);
});
