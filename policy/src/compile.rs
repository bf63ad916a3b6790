//! Parsing and validating policy documents, and compiling them into what one workload needs:
//! the AccessPolicies that select it and the TokenIssuers those reference — with introspection
//! client secrets resolved only for those issuers (a sidecar never receives other workloads'
//! secrets). The compiled form is what the control plane pushes.

use std::collections::{BTreeMap, HashSet};

use pqmesh_mtls::PeerPattern;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{
    default_max_token_lifetime, is_default_max_token_lifetime, AccessPolicy, ClaimMatch, Resource,
    ScopeClaim, TokenIssuer, API_VERSION, MAX_TOKEN_LIFETIME_RANGE,
};
use crate::path::PathPattern;

/// A validated set of resources (the whole local directory or every CRD in the cluster).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub issuers: Vec<TokenIssuer>,
    pub policies: Vec<AccessPolicy>,
    /// Local mode: where each object in force was read from (`file document N`), so that the
    /// next judgement knows which of two definitions is the one in force, and which objects a
    /// refused document of their file may have hidden. Empty in Kubernetes mode.
    pub sources: BTreeMap<crate::admit::ObjectKey, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{location}: {reason}")]
pub struct PolicyError {
    /// File and document index, or `<kind> <ns>/<name>`.
    pub location: String,
    pub reason: String,
}

pub(crate) fn err(location: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        location: location.into(),
        reason: reason.into(),
    }
}

/// Parses a (multi-document) YAML text; `source` names it in errors.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Resource>, PolicyError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| err(format!("{source} document {}", i + 1), e.to_string()))?;
        if value.is_null() {
            continue; // an empty document between `---` separators
        }
        let resource: Resource = serde_yaml::from_value(value)
            .map_err(|e| err(format!("{source} document {}", i + 1), e.to_string()))?;
        out.push(resource);
    }
    Ok(out)
}

impl PolicySet {
    /// Validates every resource and every cross-reference; the first problem is the error and
    /// nothing of the set is usable. All or nothing: for tests, benchmarks and fuzzing; the
    /// control plane admits objects one by one ([`crate::admit`]).
    pub fn build(resources: Vec<Resource>, trust_domain: &str) -> Result<Self, PolicyError> {
        let mut set = PolicySet::default();
        let mut seen = HashSet::new();
        for r in resources {
            let (kind, meta) = match &r {
                Resource::TokenIssuer(t) => ("TokenIssuer", &t.metadata),
                Resource::AccessPolicy(p) => ("AccessPolicy", &p.metadata),
            };
            let location = format!("{kind} {}/{}", meta.namespace, meta.name);
            check_name(&location, "metadata.name", &meta.name)?;
            check_name(&location, "metadata.namespace", &meta.namespace)?;
            if !seen.insert((kind, meta.namespace.clone(), meta.name.clone())) {
                return Err(err(location, "defined twice"));
            }
            match r {
                Resource::TokenIssuer(t) => {
                    check_api_version(&location, &t.api_version)?;
                    validate_issuer(&location, &t)?;
                    set.issuers.push(t);
                }
                Resource::AccessPolicy(p) => {
                    check_api_version(&location, &p.api_version)?;
                    set.policies.push(p);
                }
            }
        }
        for p in &set.policies {
            let location = format!("AccessPolicy {}/{}", p.metadata.namespace, p.metadata.name);
            validate_policy(&location, p, trust_domain)?;
            if let Some(name) = unresolved_issuers(p, &set.issuers).first() {
                return Err(err(
                    location,
                    format!(
                        "spec.token.issuers: unknown TokenIssuer {name:?} in namespace {:?}",
                        p.metadata.namespace
                    ),
                ));
            }
        }
        Ok(set)
    }
}

pub(crate) fn check_api_version(location: &str, v: &str) -> Result<(), PolicyError> {
    if v != API_VERSION {
        return Err(err(
            location,
            format!("apiVersion {v:?} is not {API_VERSION:?}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_name(location: &str, field: &str, name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if !ok {
        return Err(err(
            location,
            format!("{field} {name:?} is not a DNS-1123 name"),
        ));
    }
    Ok(())
}

use crate::model::ALLOWED_ALGORITHMS as ALLOWED_ALGS;

/// An endpoint the sidecar will fetch: an absolute URL the sidecar's HTTP client parses, over
/// `https://`, or `http://` only to a loopback host (a local OAuth server in tests and the demo);
/// never with credentials in it (they would be sent to whoever the host is, and shown in every
/// message about the object). The sidecar re-checks with the same rules; checking here refuses
/// the object instead of having every selected sidecar refuse its policy.
pub(crate) fn check_url(location: &str, field: &str, url: &str) -> Result<(), PolicyError> {
    let refuse = |why: &str| {
        Err(err(
            location,
            format!("{field} {:?} {why}", crate::redact::url(url)),
        ))
    };
    let parsed: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return refuse(&format!("is not a valid URL ({e})")),
    };
    let Some(authority) = parsed.authority() else {
        return refuse("must be an absolute https:// URL");
    };
    if authority.as_str().contains('@') {
        return refuse("must not contain credentials (user:password@); the sidecar sends none");
    }
    let port = authority
        .as_str()
        .strip_prefix(authority.host())
        .unwrap_or_default();
    if !port.is_empty() && authority.port_u16().is_none() {
        return refuse("has a port that is not a number");
    }
    let loopback = matches!(authority.host(), "127.0.0.1" | "localhost" | "[::1]");
    match parsed.scheme_str() {
        Some("https") if !authority.host().is_empty() => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => refuse("must be an https:// URL (http:// only on loopback)"),
    }
}

/// Checks one TokenIssuer on its own.
pub(crate) fn validate_issuer(location: &str, t: &TokenIssuer) -> Result<(), PolicyError> {
    let s = &t.spec;
    if s.issuer.is_empty() {
        return Err(err(location, "spec.issuer is empty"));
    }
    if s.audiences.iter().any(String::is_empty) {
        return Err(err(location, "spec.audiences contains an empty audience"));
    }
    // Without audiences no access-token JWT is accepted; that only makes sense for an issuer
    // used through introspection (phantom tokens), whose JWT is checked against the client id.
    if s.audiences.is_empty() && s.introspection.is_none() {
        return Err(err(
            location,
            "spec.audiences must list at least one audience (or configure introspection)",
        ));
    }
    check_url(location, "spec.jwksUri", &s.jwks_uri)?;
    if s.allowed_algorithms.is_empty() {
        return Err(err(location, "spec.allowedAlgorithms is empty"));
    }
    for alg in &s.allowed_algorithms {
        if !ALLOWED_ALGS.contains(&alg.as_str()) {
            return Err(err(
                location,
                format!("spec.allowedAlgorithms: {alg:?} is not allowed (none and HMAC never are); use {ALLOWED_ALGS:?}"),
            ));
        }
    }
    if s.clock_skew_seconds > 300 {
        return Err(err(location, "spec.clockSkewSeconds must be at most 300"));
    }
    if !MAX_TOKEN_LIFETIME_RANGE.contains(&s.max_token_lifetime_seconds) {
        return Err(err(
            location,
            format!(
                "spec.maxTokenLifetimeSeconds {} must be within {}..={} (one minute to 30 days)",
                s.max_token_lifetime_seconds,
                MAX_TOKEN_LIFETIME_RANGE.start(),
                MAX_TOKEN_LIFETIME_RANGE.end()
            ),
        ));
    }
    if s.jwks.refresh_seconds == 0 || s.jwks.min_refetch_seconds == 0 {
        return Err(err(
            location,
            "spec.jwks intervals must be at least 1 second",
        ));
    }
    if s.jwks.refresh_seconds < s.jwks.min_refetch_seconds {
        return Err(err(
            location,
            format!(
                "spec.jwks.refreshSeconds {} must not be shorter than spec.jwks.minRefetchSeconds {}",
                s.jwks.refresh_seconds, s.jwks.min_refetch_seconds
            ),
        ));
    }
    if let Some(i) = &s.introspection {
        check_url(location, "spec.introspection.endpoint", &i.endpoint)?;
        if i.client_id.is_empty() {
            return Err(err(location, "spec.introspection.clientId is empty"));
        }
        check_name(
            location,
            "spec.introspection.clientSecretRef.name",
            &i.client_secret_ref.name,
        )?;
        if i.client_secret_ref.key.is_empty() {
            return Err(err(
                location,
                "spec.introspection.clientSecretRef.key is empty",
            ));
        }
        if !matches!(
            i.response_format.as_str(),
            "token-introspection+jwt" | "jwt"
        ) {
            return Err(err(
                location,
                format!(
                    "spec.introspection.responseFormat {:?}: use token-introspection+jwt or jwt",
                    i.response_format
                ),
            ));
        }
        if i.cache.max_entries == 0 || i.cache.max_ttl_seconds == 0 {
            return Err(err(
                location,
                "spec.introspection.cache bounds must be at least 1",
            ));
        }
    }
    Ok(())
}

/// Checks one AccessPolicy on its own (its references are [`unresolved_issuers`]'s).
pub(crate) fn validate_policy(
    location: &str,
    p: &AccessPolicy,
    trust_domain: &str,
) -> Result<(), PolicyError> {
    let s = &p.spec;
    if !matches!(s.mtls.as_str(), "STRICT" | "PERMISSIVE") {
        return Err(err(
            location,
            format!("spec.mtls {:?}: use STRICT or PERMISSIVE", s.mtls),
        ));
    }
    if let Some(ports) = &s.ports {
        if ports.is_empty() || ports.contains(&0) {
            return Err(err(
                location,
                "spec.ports must list ports 1-65535 (omit it to mean every port)",
            ));
        }
    }
    // An absent, empty or misspelt allow-list never means "anyone": `peers` is required and
    // "any caller" is the explicit `["*"]`.
    if s.peers.is_empty() {
        return Err(err(
            location,
            "spec.peers is empty: list the allowed peers, or [\"*\"] for any caller the mTLS mode admits",
        ));
    }
    if s.peers.iter().any(|p| p == ANY_PEER) {
        if s.peers.len() != 1 {
            return Err(err(
                location,
                "spec.peers: \"*\" (any caller) must be the only entry",
            ));
        }
    } else {
        for peer in &s.peers {
            PeerPattern::parse(peer, trust_domain)
                .map_err(|e| err(location, format!("spec.peers: {e}")))?;
        }
    }
    if let Some(token) = &s.token {
        if token.issuers.is_empty() {
            return Err(err(location, "spec.token.issuers is empty"));
        }
        for name in &token.issuers {
            check_name(location, "spec.token.issuers", name)?;
        }
    }
    for (i, rule) in s.rules.iter().enumerate() {
        let at = |field: &str| format!("spec.rules[{i}].{field}");
        for m in &rule.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(err(
                    location,
                    format!("{}: {m:?} is not an upper-case HTTP method", at("methods")),
                ));
            }
        }
        for path in &rule.paths {
            PathPattern::parse(path).map_err(|e| err(location, format!("{}: {e}", at("paths"))))?;
        }
        for scope in &rule.scopes {
            if scope.is_empty() || scope.contains(char::is_whitespace) {
                return Err(err(
                    location,
                    format!(
                        "{}: {scope:?} is empty or contains whitespace",
                        at("scopes")
                    ),
                ));
            }
        }
        if (!rule.scopes.is_empty() || !rule.claims.is_empty()) && s.token.is_none() {
            return Err(err(
                location,
                format!("spec.rules[{i}] requires scopes or claims but spec.token names no issuer"),
            ));
        }
        for c in &rule.claims {
            if c.name.is_empty() || c.name.split('.').any(str::is_empty) {
                return Err(err(
                    location,
                    format!("{}: claim name {:?} is empty", at("claims"), c.name),
                ));
            }
            let form = c.form().map_err(|why| {
                err(
                    location,
                    format!("{}: claim {:?} {why}", at("claims"), c.name),
                )
            })?;
            let (ClaimMatch::OneOf(values) | ClaimMatch::AnyOf(values) | ClaimMatch::AllOf(values)) =
                form;
            if values.is_empty() {
                return Err(err(
                    location,
                    format!("{}: claim {:?} lists no values", at("claims"), c.name),
                ));
            }
        }
    }
    Ok(())
}

/// The TokenIssuers `p` names that are not among `issuers` (in its namespace).
pub fn unresolved_issuers(p: &AccessPolicy, issuers: &[TokenIssuer]) -> Vec<String> {
    p.spec
        .token
        .iter()
        .flat_map(|t| t.issuers.iter())
        .filter(|name| {
            !issuers
                .iter()
                .any(|i| i.metadata.name == **name && i.metadata.namespace == p.metadata.namespace)
        })
        .cloned()
        .collect()
}

/// An opaque token does not say who issued it: with two introspecting issuers a sidecar would
/// show one OAuth server's tokens to the other and let either vouch for them (a token revoked at
/// its own server could be accepted by the other). So one workload uses at most one.
fn check_one_introspector(
    needed: &[&TokenIssuer],
    policies: &[CompiledPolicy],
) -> Result<(), PolicyError> {
    let mut introspecting: Vec<String> = needed
        .iter()
        .filter(|i| i.spec.introspection.is_some())
        .map(|i| format!("{}/{}", i.metadata.namespace, i.metadata.name))
        .collect();
    introspecting.sort();
    if let [first, second, ..] = introspecting.as_slice() {
        let naming: Vec<&str> = policies
            .iter()
            .filter(|p| {
                p.token_issuers
                    .iter()
                    .flatten()
                    .any(|i| introspecting.contains(i))
            })
            .map(|p| p.name.as_str())
            .collect();
        return Err(err(
            format!("AccessPolicies {}", naming.join(", ")),
            format!(
                "TokenIssuers {first} and {second} both configure introspection; the policies \
                 of one workload may name at most one TokenIssuer with introspection (an opaque \
                 token is sent to that one only)"
            ),
        ));
    }
    Ok(())
}

/// The explicit "any caller" entry of `spec.peers`.
pub const ANY_PEER: &str = "*";

/// What the control plane knows about a workload asking for its policy.
#[derive(Debug, Clone)]
pub struct Workload {
    /// From the authenticated identity, never from the request.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Everything one sidecar needs, serialised as the snapshot it receives.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPolicy {
    pub policies: Vec<CompiledPolicy>,
    pub issuers: Vec<CompiledIssuer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompiledPolicy {
    /// `<namespace>/<name>`.
    pub name: String,
    pub ports: Option<Vec<u16>>,
    pub permissive: bool,
    /// `None`: any caller the mTLS mode admits (`peers: ["*"]`).
    pub peers: Option<Vec<String>>,
    /// Issuer names (`<namespace>/<name>`) whose tokens satisfy this policy; `None` = no token needed.
    pub token_issuers: Option<Vec<String>>,
    pub rules: Vec<crate::model::RuleSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompiledIssuer {
    /// `<namespace>/<name>`.
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: String,
    pub allowed_algorithms: Vec<String>,
    pub clock_skew_seconds: u32,
    /// Defaults are left out of the snapshot, so versions (content hashes) of snapshots that do
    /// not use these fields stay what they were before the fields existed.
    #[serde(default, skip_serializing_if = "ScopeClaim::is_default")]
    pub scope_claim: ScopeClaim,
    #[serde(
        default = "default_max_token_lifetime",
        skip_serializing_if = "is_default_max_token_lifetime"
    )]
    pub max_token_lifetime_seconds: u32,
    pub jwks_refresh_seconds: u32,
    pub jwks_min_refetch_seconds: u32,
    pub introspection: Option<CompiledIntrospection>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompiledIntrospection {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    pub response_format: String,
    pub cache_max_entries: u32,
    pub cache_max_ttl_seconds: u32,
    pub honor_no_store: bool,
}

impl std::fmt::Debug for CompiledIntrospection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledIntrospection")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Looks up `key` of Secret `name` in `namespace`.
pub trait Secrets {
    fn get(&self, namespace: &str, name: &str, key: &str) -> Option<String>;
}

impl WorkloadPolicy {
    /// A content hash: the same policy always has the same version, across control-plane
    /// restarts and replicas (secrets included, so a rotated secret is a new version).
    pub fn version(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&bytes)[..8])
    }

    /// True when no AccessPolicy selects the workload (then the sidecar's local settings apply).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// One TokenIssuer as a workload (or the edge gateway) receives it: the introspection client
/// secret resolved from `secrets`. Fails if that secret is missing.
pub fn compile_issuer(
    i: &TokenIssuer,
    secrets: &dyn Secrets,
) -> Result<CompiledIssuer, PolicyError> {
    let location = format!("TokenIssuer {}/{}", i.metadata.namespace, i.metadata.name);
    let introspection = match &i.spec.introspection {
        None => None,
        Some(spec) => {
            let r = &spec.client_secret_ref;
            let secret = secrets
                .get(&i.metadata.namespace, &r.name, &r.key)
                .ok_or_else(|| {
                    err(
                        &location,
                        format!(
                            "Secret {}/{} has no key {:?}",
                            i.metadata.namespace, r.name, r.key
                        ),
                    )
                })?;
            Some(CompiledIntrospection {
                endpoint: spec.endpoint.clone(),
                client_id: spec.client_id.clone(),
                client_secret: secret,
                response_format: spec.response_format.clone(),
                cache_max_entries: spec.cache.max_entries,
                cache_max_ttl_seconds: spec.cache.max_ttl_seconds,
                honor_no_store: spec.cache.honor_no_store,
            })
        }
    };
    Ok(CompiledIssuer {
        name: format!("{}/{}", i.metadata.namespace, i.metadata.name),
        issuer: i.spec.issuer.clone(),
        audiences: i.spec.audiences.clone(),
        jwks_uri: i.spec.jwks_uri.clone(),
        allowed_algorithms: i.spec.allowed_algorithms.clone(),
        clock_skew_seconds: i.spec.clock_skew_seconds,
        scope_claim: i.spec.scope_claim,
        max_token_lifetime_seconds: i.spec.max_token_lifetime_seconds,
        jwks_refresh_seconds: i.spec.jwks.refresh_seconds,
        jwks_min_refetch_seconds: i.spec.jwks.min_refetch_seconds,
        introspection,
    })
}

impl PolicySet {
    /// The policy of one workload. Fails if a referenced secret is missing (the workload then
    /// keeps its previous snapshot; nothing half-configured is pushed).
    pub fn compile(
        &self,
        workload: &Workload,
        secrets: &dyn Secrets,
    ) -> Result<WorkloadPolicy, PolicyError> {
        let mut out = WorkloadPolicy::default();
        let mut needed: Vec<&TokenIssuer> = Vec::new();
        let selected: Vec<&AccessPolicy> = self
            .policies
            .iter()
            .filter(|p| {
                p.metadata.namespace == workload.namespace
                    && p.spec
                        .selector
                        .match_labels
                        .iter()
                        .all(|(k, v)| workload.labels.get(k) == Some(v))
            })
            .collect();
        // A refused policy's placeholder admits no one; beside an accepted policy it changes no
        // decision (policies are alternatives, and ports no policy covers are refused anyway),
        // so it is left out and the workload's snapshot stays as it was.
        let placeholder = |p: &AccessPolicy| {
            p.metadata
                .annotations
                .contains_key(crate::admit::PLACEHOLDER)
        };
        let accepted = selected.iter().any(|p| !placeholder(p));
        for p in selected
            .into_iter()
            .filter(|p| !(accepted && placeholder(p)))
        {
            let ns = &p.metadata.namespace;
            let token_issuers = p.spec.token.as_ref().map(|t| {
                t.issuers
                    .iter()
                    .filter_map(|name| {
                        self.issuers
                            .iter()
                            .find(|i| i.metadata.name == *name && i.metadata.namespace == *ns)
                    })
                    .inspect(|i| {
                        if !needed.iter().any(|n| n.metadata == i.metadata) {
                            needed.push(i);
                        }
                    })
                    .map(|i| format!("{}/{}", i.metadata.namespace, i.metadata.name))
                    .collect()
            });
            out.policies.push(CompiledPolicy {
                name: format!("{ns}/{}", p.metadata.name),
                ports: p.spec.ports.clone(),
                permissive: p.spec.mtls == "PERMISSIVE",
                // `["*"]` compiles to "no peer restriction", the snapshot form sidecars know.
                peers: (p.spec.peers.iter().all(|p| p != ANY_PEER)).then(|| p.spec.peers.clone()),
                token_issuers,
                rules: p.spec.rules.clone(),
            });
        }
        out.policies.sort_by(|a, b| a.name.cmp(&b.name));
        check_one_introspector(&needed, &out.policies)?;
        for i in needed {
            out.issuers.push(compile_issuer(i, secrets)?);
        }
        out.issuers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Names (`<ns>/<name>`) of the AccessPolicies that select `workload`.
    pub fn selecting(&self, workload: &Workload) -> Vec<String> {
        self.policies
            .iter()
            .filter(|p| {
                p.metadata.namespace == workload.namespace
                    && p.spec
                        .selector
                        .match_labels
                        .iter()
                        .all(|(k, v)| workload.labels.get(k) == Some(v))
            })
            .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
            .collect()
    }
}
