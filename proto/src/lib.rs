//! Generated tonic/prost code for pqmesh's gRPC APIs, and nothing else.

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("pqmesh.identity.v1");
    }
}

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("pqmesh.discovery.v1");
    }
}

pub mod policy {
    pub mod v1 {
        tonic::include_proto!("pqmesh.policy.v1");
    }
}
