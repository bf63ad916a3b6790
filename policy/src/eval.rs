//! Evaluating a workload's compiled policy for one inbound request or connection. Pure: token
//! validation happens before (in the sidecar) and its outcome is an input here.

use pqmesh_mtls::{PeerPattern, SpiffeId};
use serde_json::{Map, Value};

use crate::compile::{CompiledPolicy, WorkloadPolicy};
use crate::path::PathPattern;

/// The request as policy sees it.
pub struct Request<'a> {
    pub port: u16,
    /// The verified mTLS identity; `None` for plaintext (PERMISSIVE).
    pub peer: Option<&'a SpiffeId>,
    pub trust_domain: &'a str,
    /// `None` for opaque TCP (identity-only decisions).
    pub http: Option<HttpRequest<'a>>,
}

pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Normalised (see `path::normalize`).
    pub path: &'a str,
    pub token: TokenState<'a>,
}

/// The outcome of validating the request's bearer token.
pub enum TokenState<'a> {
    Absent,
    Valid {
        issuer: &'a str,
        claims: &'a Map<String, Value>,
    },
    /// 401 `invalid_token` (bad, expired, inactive, unknown issuer).
    Invalid(&'a str),
    /// 503: the issuer could not be asked (introspection down). Never allows.
    Unavailable(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { policy: String, rule: Option<usize> },
    Deny(Denial),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No policy covers this port.
    NoPolicyForPort,
    /// Plaintext where every applicable policy is STRICT.
    PlaintextRefused,
    PeerNotAllowed,
    /// 401, `WWW-Authenticate: Bearer` (no error code: the client simply sent no token).
    TokenMissing,
    /// 401 `invalid_token`.
    TokenInvalid(String),
    /// 503.
    TokenUnavailable(String),
    /// 403 `insufficient_scope` (missing: the scopes the matched rule wanted).
    InsufficientScope(Vec<String>),
    /// 403: a claim condition failed.
    ClaimMismatch(String),
    /// 403: no rule matched the method and path.
    NoRuleMatched,
    /// 403: a policy with HTTP rules or a token requirement cannot admit opaque TCP.
    NotHttp,
}

impl Denial {
    pub fn status(&self) -> u16 {
        match self {
            Denial::TokenMissing | Denial::TokenInvalid(_) => 401,
            Denial::TokenUnavailable(_) => 503,
            _ => 403,
        }
    }

    /// A bounded metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::NoPolicyForPort => "no_policy_for_port",
            Denial::PlaintextRefused => "plaintext_refused",
            Denial::PeerNotAllowed => "peer_not_allowed",
            Denial::TokenMissing => "token_missing",
            Denial::TokenInvalid(_) => "token_invalid",
            Denial::TokenUnavailable(_) => "token_unavailable",
            Denial::InsufficientScope(_) => "insufficient_scope",
            Denial::ClaimMismatch(_) => "claim_mismatch",
            Denial::NoRuleMatched => "no_rule_matched",
            Denial::NotHttp => "not_http",
        }
    }

    /// The `WWW-Authenticate` header for 401/403 answers (RFC 6750 §3).
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            Denial::TokenMissing => Some("Bearer".to_owned()),
            Denial::TokenInvalid(_) => Some("Bearer error=\"invalid_token\"".to_owned()),
            Denial::InsufficientScope(scopes) => Some(format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                scopes.join(" ").replace(['"', '\\'], "")
            )),
            _ => None,
        }
    }

    // When several policies deny for different reasons, report the most actionable one.
    fn rank(&self) -> u8 {
        match self {
            Denial::TokenUnavailable(_) => 9,
            Denial::InsufficientScope(_) => 8,
            Denial::ClaimMismatch(_) => 7,
            Denial::TokenInvalid(_) => 6,
            Denial::TokenMissing => 5,
            Denial::NoRuleMatched => 4,
            Denial::NotHttp => 3,
            Denial::PeerNotAllowed => 2,
            Denial::PlaintextRefused => 1,
            Denial::NoPolicyForPort => 0,
        }
    }
}

impl WorkloadPolicy {
    /// The policies that apply on `port`.
    pub fn for_port(&self, port: u16) -> impl Iterator<Item = &CompiledPolicy> {
        self.policies
            .iter()
            .filter(move |p| p.ports.as_ref().is_none_or(|ports| ports.contains(&port)))
    }

    /// Whether plaintext may be accepted on `port` (some applicable policy is PERMISSIVE).
    pub fn permissive_on(&self, port: u16) -> bool {
        self.for_port(port).any(|p| p.permissive)
    }

    /// Whether any policy on `port` wants a bearer token (so the sidecar validates one).
    pub fn wants_token(&self, port: u16) -> bool {
        self.for_port(port).any(|p| p.token_issuers.is_some())
    }

    /// Whether some policy on `port` admits this caller at all (mTLS mode and peers). Checked
    /// before any token work, so callers no policy admits cannot make the sidecar call the
    /// OAuth server.
    pub fn admits_peer(&self, port: u16, peer: Option<&SpiffeId>, trust_domain: &str) -> bool {
        self.check_peer(port, peer, trust_domain).is_ok()
    }

    /// As `admits_peer`, with the denial `evaluate` would give when no policy admits the caller.
    pub fn check_peer(
        &self,
        port: u16,
        peer: Option<&SpiffeId>,
        trust_domain: &str,
    ) -> Result<(), Denial> {
        first_allowed(self.for_port(port), |p| peer_ok(p, peer, trust_domain)).map(|_| ())
    }

    /// Allow if any applicable policy allows (policies are alternatives); otherwise the most
    /// actionable denial. Default deny: no applicable policy → deny.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        match first_allowed(self.for_port(req.port), |p| evaluate_one(p, req)) {
            Ok((policy, rule)) => Decision::Allow {
                policy: policy.name.clone(),
                rule,
            },
            Err(d) => Decision::Deny(d),
        }
    }
}

/// The first policy `check` allows (policies are alternatives), or the most actionable of their
/// denials; `NoPolicyForPort` when there are none.
fn first_allowed<'p, T>(
    policies: impl Iterator<Item = &'p CompiledPolicy>,
    check: impl Fn(&CompiledPolicy) -> Result<T, Denial>,
) -> Result<(&'p CompiledPolicy, T), Denial> {
    let mut best: Option<Denial> = None;
    for policy in policies {
        match check(policy) {
            Ok(t) => return Ok((policy, t)),
            Err(d) => {
                if best.as_ref().is_none_or(|b| d.rank() > b.rank()) {
                    best = Some(d);
                }
            }
        }
    }
    Err(best.unwrap_or(Denial::NoPolicyForPort))
}

fn peer_ok(p: &CompiledPolicy, peer: Option<&SpiffeId>, trust_domain: &str) -> Result<(), Denial> {
    match peer {
        None if !p.permissive => Err(Denial::PlaintextRefused),
        None if p.peers.is_some() => Err(Denial::PeerNotAllowed),
        None => Ok(()),
        Some(id) => match &p.peers {
            Some(peers)
                if !peers
                    .iter()
                    .filter_map(|s| PeerPattern::parse(s, trust_domain).ok())
                    .any(|pat| pat.matches(id)) =>
            {
                Err(Denial::PeerNotAllowed)
            }
            _ => Ok(()),
        },
    }
}

fn evaluate_one(p: &CompiledPolicy, req: &Request<'_>) -> Result<Option<usize>, Denial> {
    peer_ok(p, req.peer, req.trust_domain)?;
    let Some(http) = &req.http else {
        // Opaque TCP: identity is all we can check.
        return if p.token_issuers.is_none() && p.rules.is_empty() {
            Ok(None)
        } else {
            Err(Denial::NotHttp)
        };
    };
    let claims = match (&p.token_issuers, &http.token) {
        (None, _) => None,
        (Some(_), TokenState::Absent) => return Err(Denial::TokenMissing),
        (Some(_), TokenState::Invalid(why)) => return Err(Denial::TokenInvalid((*why).to_owned())),
        (Some(_), TokenState::Unavailable(why)) => {
            return Err(Denial::TokenUnavailable((*why).to_owned()))
        }
        (Some(issuers), TokenState::Valid { issuer, claims }) => {
            if !issuers.iter().any(|i| i == issuer) {
                return Err(Denial::TokenInvalid(format!(
                    "issuer {issuer} is not accepted by {}",
                    p.name
                )));
            }
            Some(*claims)
        }
    };
    if p.rules.is_empty() {
        return Ok(None);
    }
    for (i, rule) in p.rules.iter().enumerate() {
        let method_ok = rule.methods.is_empty()
            || rule
                .methods
                .iter()
                // Methods are case-sensitive (RFC 9110 §9.1): `get` is not `GET`, and servers
                // disagree on what they do with it.
                .any(|m| m == http.method);
        let path_ok = rule.paths.is_empty()
            || rule
                .paths
                .iter()
                .filter_map(|s| PathPattern::parse(s).ok())
                .any(|pat| pat.matches(http.path));
        if !(method_ok && path_ok) {
            continue;
        }
        // The first matching rule decides.
        if !rule.scopes.is_empty() || !rule.claims.is_empty() {
            let claims = claims.ok_or(Denial::TokenMissing)?;
            let have = scopes(claims);
            let missing: Vec<String> = rule
                .scopes
                .iter()
                .filter(|s| !have.contains(s))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(Denial::InsufficientScope(rule.scopes.clone()));
            }
            for c in &rule.claims {
                if !claim_matches(claims, &c.name, &c.values) {
                    return Err(Denial::ClaimMismatch(c.name.clone()));
                }
            }
        }
        return Ok(Some(i));
    }
    Err(Denial::NoRuleMatched)
}

/// Scopes of a token: the space-delimited `scope` claim, or the `scp` array (or string).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["scope", "scp"] {
        match claims.get(key) {
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_owned)),
            Some(Value::Array(a)) => {
                out.extend(a.iter().filter_map(Value::as_str).map(str::to_owned))
            }
            _ => {}
        }
    }
    out
}

fn claim_matches(claims: &Map<String, Value>, name: &str, wanted: &[String]) -> bool {
    let mut parts = name.split('.');
    let Some(first) = parts.next() else {
        return false;
    };
    let mut value = claims.get(first);
    for part in parts {
        value = value.and_then(|v| v.get(part));
    }
    let as_text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(as_text)
            .any(|t| wanted.contains(&t)),
        Some(v) => as_text(v).is_some_and(|t| wanted.contains(&t)),
        None => false,
    }
}
