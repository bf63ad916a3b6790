//! Protobuf messages from the wire (both directions) and the policy snapshot payload.
#![no_main]
use prost::Message;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pqmesh_proto::identity::v1::CertifyRequest::decode(data);
    let _ = pqmesh_proto::identity::v1::CertifyResponse::decode(data);
    let _ = pqmesh_proto::discovery::v1::DiscoveryRequest::decode(data);
    let _ = pqmesh_proto::discovery::v1::DestinationUpdate::decode(data);
    let _ = pqmesh_proto::policy::v1::WatchRequest::decode(data);
    if let Ok(snapshot) = pqmesh_proto::policy::v1::PolicySnapshot::decode(data) {
        let _ = serde_json::from_slice::<pqmesh_policy::WorkloadPolicy>(&snapshot.policy_json);
    }
    let _ = serde_json::from_slice::<pqmesh_policy::WorkloadPolicy>(data);
});
