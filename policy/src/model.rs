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
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.introspection) || (has(self.audiences) && size(self.audiences) > 0)",
     "message": "spec.audiences must list at least one audience (or configure introspection)"}
]))]
pub struct TokenIssuerSpec {
    /// Expected `iss` claim.
    #[schemars(length(min = 1))]
    pub issuer: String,
    /// Accepted `aud` values (an access token must carry at least one). May be empty only when
    /// `introspection` is set (then only phantom tokens are accepted).
    #[serde(default)]
    #[schemars(extend("items" = {"type": "string", "minLength": 1}))]
    pub audiences: Vec<String>,
    /// Where the issuer's signing keys are published (https, or http on loopback only).
    #[schemars(extend("pattern" = URL_PATTERN))]
    pub jwks_uri: String,
    /// Signature algorithms accepted; never `none` or HMAC.
    #[serde(default = "default_algs")]
    #[schemars(length(min = 1), extend("items" = {"type": "string", "enum": ALLOWED_ALGORITHMS}))]
    pub allowed_algorithms: Vec<String>,
    /// Tolerance for `exp`/`nbf`/`iat`, seconds (0..=300).
    #[serde(default = "default_skew")]
    #[schemars(range(max = 300))]
    pub clock_skew_seconds: u32,
    /// Which claim carries the token's scopes: `scope` (space-delimited string, RFC 6749 §3.3
    /// and RFC 9068; the default) or `scp` (an array of strings). A token carrying both is
    /// refused, never merged.
    #[serde(default, skip_serializing_if = "ScopeClaim::is_default")]
    pub scope_claim: ScopeClaim,
    /// Longest accepted token lifetime, seconds: `exp - iat` (or `exp - now` without `iat`).
    #[serde(
        default = "default_max_token_lifetime",
        skip_serializing_if = "is_default_max_token_lifetime"
    )]
    #[schemars(range(min = 60, max = 2_592_000))]
    pub max_token_lifetime_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionSpec>,
    #[serde(default)]
    pub jwks: JwksSpec,
}

/// Signature algorithms a TokenIssuer may accept (never `none` or HMAC).
pub const ALLOWED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// https URLs, or http on loopback only — the rule `compile::check_url` enforces, as a schema
/// pattern.
pub const URL_PATTERN: &str = r"^(https://[^/?#@\s]+([/?#]\S*)?|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?([/?#]\S*)?)$";

/// DNS-1123 subdomain names (what `compile::check_name` accepts).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$";

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

/// Default for `maxTokenLifetimeSeconds`: one day.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: u32 = 86_400;
/// Bounds of `maxTokenLifetimeSeconds`: one minute to 30 days.
pub const MAX_TOKEN_LIFETIME_RANGE: std::ops::RangeInclusive<u32> = 60..=2_592_000;

pub fn default_max_token_lifetime() -> u32 {
    DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
}

pub fn is_default_max_token_lifetime(v: &u32) -> bool {
    *v == DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
}

/// The one claim a TokenIssuer's scopes are read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ScopeClaim {
    // Plain comments on the variants: doc comments would turn the schema's `enum` into a `oneOf`
    // of typed branches, which a structural CRD schema does not allow.
    // `scope`: one string of space-delimited scopes (RFC 6749 §3.3, RFC 9068).
    #[default]
    #[serde(rename = "scope")]
    Scope,
    // `scp`: an array of strings (Okta and others).
    #[serde(rename = "scp")]
    Scp,
}

impl ScopeClaim {
    pub fn name(self) -> &'static str {
        match self {
            ScopeClaim::Scope => "scope",
            ScopeClaim::Scp => "scp",
        }
    }

    pub fn is_default(&self) -> bool {
        *self == ScopeClaim::Scope
    }
}

/// Phantom tokens: opaque tokens are introspected (RFC 7662) for a signed JWT (RFC 9701).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntrospectionSpec {
    #[schemars(extend("pattern" = URL_PATTERN))]
    pub endpoint: String,
    #[schemars(length(min = 1))]
    pub client_id: String,
    /// The client secret, from a Secret in the issuer's namespace (local mode: `secrets.yaml`).
    pub client_secret_ref: SecretKeyRef,
    /// `token-introspection+jwt` (RFC 9701, default) or `jwt` (the access token itself as a JWT).
    #[serde(default = "default_response_format")]
    #[schemars(extend("enum" = ["token-introspection+jwt", "jwt"]))]
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
    #[schemars(extend("pattern" = NAME_PATTERN))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntrospectionCacheSpec {
    /// Bound on cached phantom tokens per sidecar.
    #[serde(default = "default_cache_entries")]
    #[schemars(range(min = 1))]
    pub max_entries: u32,
    /// Upper bound on how long an introspection result is reused, seconds.
    #[serde(default = "default_cache_ttl")]
    #[schemars(range(min = 1))]
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
    #[schemars(range(min = 1))]
    pub refresh_seconds: u32,
    /// Minimum interval between refetches triggered by an unknown `kid`, seconds.
    #[serde(default = "default_jwks_min_refetch")]
    #[schemars(range(min = 1))]
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
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.peers.exists(p, p == '*') || size(self.peers) == 1",
     "message": "spec.peers: \"*\" (any caller) must be the only entry"},
    {"rule": "has(self.token) || !has(self.rules) || self.rules.all(r, (!has(r.scopes) || size(r.scopes) == 0) && (!has(r.claims) || size(r.claims) == 0))",
     "message": "a rule requires scopes or claims but spec.token names no issuer"}
]))]
pub struct AccessPolicySpec {
    /// Workloads in the policy's namespace with all these labels.
    pub selector: Selector,
    /// Ports this policy applies to; absent = every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), extend("items" = {"type": "integer", "minimum": 1, "maximum": 65535}))]
    pub ports: Option<Vec<u16>>,
    /// STRICT (mesh mTLS only) or PERMISSIVE (plaintext also accepted).
    #[serde(default = "default_mtls")]
    #[schemars(extend("enum" = ["STRICT", "PERMISSIVE"]))]
    pub mtls: String,
    /// Allowed peer identities (required): SPIFFE IDs, `spiffe://<td>/ns/<ns>/sa/*`, `<ns>/<sa>`
    /// or `<ns>/*`; `["*"]` alone = any caller the mTLS mode admits (every mesh identity, and
    /// plaintext callers under PERMISSIVE). An absent or misspelt list is refused, never "anyone".
    #[schemars(length(min = 1))]
    pub peers: Vec<String>,
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
    #[schemars(length(min = 1), extend("items" = {"type": "string", "pattern": NAME_PATTERN}))]
    pub issuers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// HTTP methods; absent = any.
    #[serde(default)]
    #[schemars(extend("items" = {"type": "string", "pattern": "^[A-Z]+$"}))]
    pub methods: Vec<String>,
    /// `/exact`, `/prefix/**` (any depth) or `/a/*/b` (`*` = one segment); absent = any path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// All of these must be in the token's scopes (read from the issuer's `scopeClaim` only).
    #[serde(default)]
    #[schemars(extend("items" = {"type": "string", "pattern": "^\\S+$"}))]
    pub scopes: Vec<String>,
    /// All conditions must hold.
    #[serde(default)]
    pub claims: Vec<ClaimCondition>,
}

/// One claim condition; exactly one of `values`, `anyOf`, `allOf`:
/// - `{name: tenant, values: [acme]}`: the claim is a scalar (string, number, boolean) equal to
///   one of the values; an array (or object) claim never matches;
/// - `{name: groups, anyOf: [admins, ops]}`: the claim is an array holding at least one of them;
/// - `{name: roles, allOf: [read, write]}`: the claim is an array holding every one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["values"]},
    {"required": ["anyOf"]},
    {"required": ["allOf"]}
]))]
pub struct ClaimCondition {
    /// Claim name; a dotted path reaches into objects (`realm_access.roles`).
    pub name: String,
    /// A scalar claim (string, number or boolean) must equal one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub values: Option<Vec<String>>,
    /// An array claim must contain at least one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub any_of: Option<Vec<String>>,
    /// An array claim must contain every one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub all_of: Option<Vec<String>>,
}

/// What a claim condition asks of the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimMatch<'a> {
    /// Scalar equal to one of these.
    OneOf(&'a [String]),
    /// Array containing at least one of these.
    AnyOf(&'a [String]),
    /// Array containing all of these.
    AllOf(&'a [String]),
}

impl ClaimCondition {
    /// The condition's form, or why it has none or several.
    pub fn form(&self) -> Result<ClaimMatch<'_>, &'static str> {
        match (&self.values, &self.any_of, &self.all_of) {
            (Some(v), None, None) => Ok(ClaimMatch::OneOf(v)),
            (None, Some(v), None) => Ok(ClaimMatch::AnyOf(v)),
            (None, None, Some(v)) => Ok(ClaimMatch::AllOf(v)),
            (None, None, None) => Err("needs one of values, anyOf or allOf"),
            _ => Err("sets more than one of values, anyOf and allOf"),
        }
    }
}
