//! The revocation list file (local mode) and the list as a sidecar receives it on the wire.
#![no_main]
use prost::Message;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(list) =
            pqmesh_control_plane::revocation::RevocationList::parse(text, "cluster.local")
        {
            let _ = list.version();
        }
    }
    if let Ok(mesh) = pqmesh_proto::policy::v1::MeshState::decode(data) {
        if let Ok(revoked) = pqmesh_sidecar::revocation::Revoked::from_mesh(&mesh) {
            let id = pqmesh_mtls::SpiffeId::new("cluster.local", "shop", "web").unwrap();
            let _ = revoked.covers(&id, Some("01"));
        }
    }
});
