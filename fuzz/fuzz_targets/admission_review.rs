//! AdmissionReview bodies from the API server (the injection webhook).
#![no_main]
use std::sync::OnceLock;

use pqmesh_control_plane::inject::InjectConfig;

fn config() -> &'static InjectConfig {
    static CONFIG: OnceLock<InjectConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let id = "spiffe://cluster.local/ns/pqmesh-system/sa/pqmesh-control-plane".parse().expect("static id");
        InjectConfig::new(&id)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pqmesh_control_plane::inject::fuzz_review(data, config());
});
