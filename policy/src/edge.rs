//! The edge gateway's `EdgePolicy` (`pqmesh.io/v1alpha1`): attached to an HTTPRoute by
//! `targetRef` (Gateway API policy attachment), it says which token outside clients must
//! present on the route, the scopes it needs and a rate limit. The gateway judges and enforces
//! it (`pqmesh-gateway`); it lives here so its CRD comes from the same generator as the
//! AccessPolicy's and TokenIssuer's ([`crate::crd`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// pqmesh's policy for the edge, attached to an HTTPRoute by `targetRef`: the token an outside
/// client must present, the scopes it needs and a rate limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgePolicySpec {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<EdgeToken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    #[schemars(extend("enum" = ["gateway.networking.k8s.io"]))]
    pub group: String,
    #[schemars(extend("enum" = ["HTTPRoute"]))]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgeToken {
    /// A TokenIssuer in the policy's namespace.
    #[schemars(length(min = 1))]
    pub issuer: String,
    /// What outside clients may present: `opaque` (default: a JWT from outside is refused, so
    /// clients never depend on JWT contents), `jwt`, or `any`.
    #[serde(default)]
    pub accept: Accept,
    /// All required (coarse, per route); fine-grained claims stay with the service's sidecar.
    #[serde(default)]
    #[schemars(extend("items" = {"type": "string", "pattern": "^\\S+$"}))]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accept {
    #[default]
    Opaque,
    Jwt,
    Any,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// `clientId`, `sub`, `sourceIP`, or `claim` (with `claim: <name>`, `a.b` reaching into objects).
    pub key: RateLimitKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Requests admitted per `periodSeconds` (the refill rate) ...
    #[schemars(range(min = 1))]
    pub requests: u32,
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub period_seconds: u32,
    /// ... and at most this many at once (bucket size; default `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub enum RateLimitKey {
    #[serde(rename = "clientId")]
    ClientId,
    #[serde(rename = "sub")]
    Sub,
    #[serde(rename = "claim")]
    Claim,
    #[serde(rename = "sourceIP")]
    SourceIp,
}

fn one() -> u32 {
    1
}
