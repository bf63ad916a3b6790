//! pqmesh's policy model: `TokenIssuer` and `AccessPolicy` resources (group `pqmesh.io`, version
//! `v1alpha1`), their validation, compilation into one workload's snapshot, and the decision for
//! a request. Shared by the control plane (validate, compile, push) and the sidecar (evaluate).
#![forbid(unsafe_code)]

pub mod admit;
pub mod compile;
pub mod crd;
pub mod edge;
pub mod eval;
pub mod model;
pub mod path;
pub mod redact;
pub mod scope;

pub use compile::{
    parse_documents, CompiledIssuer, CompiledPolicy, PolicyError, PolicySet, Secrets, Workload,
    WorkloadPolicy,
};
pub use eval::{Decision, Denial, HttpRequest, Request, TokenState};
pub use model::ScopeClaim;
pub use scope::{token_scopes, ScopeError};

#[cfg(test)]
mod tests;
