//! The policy resources, as operators write them (Kubernetes CRDs in group `pqmesh.io`, version
//! `v1alpha1`; the same YAML in local mode). Unknown fields are errors, never ignored.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "pqmesh.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "pqmesh.io/v1alpha1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// One YAML document: any pqmesh resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum Resource {
    TokenIssuer(TokenIssuer),
    AccessPolicy(AccessPolicy),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenIssuer {
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: TokenIssuerSpec,
}

/// An OAuth/OIDC issuer whose JWTs are accepted, optionally with introspection for phantom tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenIssuerSpec {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values (an access token must carry at least one). May be empty only when
    /// `introspection` is set (then only phantom tokens are accepted).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the issuer's signing keys are published (https, or http on loopback only).
    pub jwks_uri: String,
    /// Signature algorithms accepted; never `none` or HMAC.
    #[serde(default = "default_algs")]
    pub allowed_algorithms: Vec<String>,
    /// Tolerance for `exp`/`nbf`, seconds (0..=300).
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionSpec>,
    #[serde(default)]
    pub jwks: JwksSpec,
}

fn default_algs() -> Vec<String> {
    vec![
        "RS256".into(),
        "PS256".into(),
        "ES256".into(),
        "EdDSA".into(),
    ]
}

fn default_skew() -> u32 {
    60
}

/// Phantom tokens: opaque tokens are introspected (RFC 7662) for a signed JWT (RFC 9701).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntrospectionSpec {
    pub endpoint: String,
    pub client_id: String,
    /// The client secret, from a Secret in the issuer's namespace (local mode: `secrets.yaml`).
    pub client_secret_ref: SecretKeyRef,
    /// `token-introspection+jwt` (RFC 9701, default) or `jwt` (the access token itself as a JWT).
    #[serde(default = "default_response_format")]
    pub response_format: String,
    #[serde(default)]
    pub cache: IntrospectionCacheSpec,
}

fn default_response_format() -> String {
    "token-introspection+jwt".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntrospectionCacheSpec {
    /// Bound on cached phantom tokens per sidecar.
    #[serde(default = "default_cache_entries")]
    pub max_entries: u32,
    /// Upper bound on how long an introspection result is reused, seconds.
    #[serde(default = "default_cache_ttl")]
    pub max_ttl_seconds: u32,
    /// Treat `Cache-Control: no-store` as "do not cache" (OAuth servers send it on everything).
    #[serde(default)]
    pub honor_no_store: bool,
}

impl Default for IntrospectionCacheSpec {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
            max_ttl_seconds: default_cache_ttl(),
            honor_no_store: false,
        }
    }
}

fn default_cache_entries() -> u32 {
    10_000
}

fn default_cache_ttl() -> u32 {
    300
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwksSpec {
    /// Periodic refresh, seconds.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_seconds: u32,
    /// Minimum interval between refetches triggered by an unknown `kid`, seconds.
    #[serde(default = "default_jwks_min_refetch")]
    pub min_refetch_seconds: u32,
}

impl Default for JwksSpec {
    fn default() -> Self {
        Self {
            refresh_seconds: default_jwks_refresh(),
            min_refetch_seconds: default_jwks_min_refetch(),
        }
    }
}

fn default_jwks_refresh() -> u32 {
    300
}

fn default_jwks_min_refetch() -> u32 {
    30
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicy {
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: AccessPolicySpec,
}

/// Who may call a workload, and with which token, scopes and claims. Once any AccessPolicy
/// selects a workload, everything it does not allow is denied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicySpec {
    /// Workloads in the policy's namespace with all these labels.
    pub selector: Selector,
    /// Ports this policy applies to; absent = every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// STRICT (mesh mTLS only) or PERMISSIVE (plaintext also accepted).
    #[serde(default = "default_mtls")]
    pub mtls: String,
    /// Allowed peer identities: SPIFFE IDs, `spiffe://<td>/ns/<ns>/sa/*` or `<ns>/*`; absent = any caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenRequirement>,
    /// Ordered; the first rule whose methods and paths match decides. Empty = allow every request
    /// that passes the peer and token checks.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

fn default_mtls() -> String {
    "STRICT".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequirement {
    /// TokenIssuer names in the policy's namespace.
    pub issuers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// HTTP methods; absent = any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// `/exact`, `/prefix/**` (any depth) or `/a/*/b` (`*` = one segment); absent = any path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// All of these must be in the token's `scope` (space-delimited) or `scp`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// All conditions must hold.
    #[serde(default)]
    pub claims: Vec<ClaimCondition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimCondition {
    /// Claim name; a dotted path reaches into objects (`realm_access.roles`).
    pub name: String,
    /// The claim (a string, number, boolean, or array of them) must equal / contain one of these.
    pub values: Vec<String>,
}
