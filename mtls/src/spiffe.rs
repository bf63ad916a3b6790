//! SPIFFE IDs of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, and the
//! allow-list patterns (`exact ID`, `ns/<namespace>/*`) that inbound listeners match peers against.

use std::fmt;
use std::str::FromStr;

/// A workload identity. Only ever built from an authenticated credential or a verified certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID {0:?} does not start with spiffe://")]
    Scheme(String),
    #[error("SPIFFE ID {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    Shape(String),
    #[error("SPIFFE ID {id:?} has an invalid {part} {value:?}: {reason}")]
    Part {
        id: String,
        part: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let id = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        check_trust_domain(&id, trust_domain)?;
        check_segment(&id, "namespace", namespace)?;
        check_segment(&id, "service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                let id = SpiffeId::new(td, ns, sa)?;
                Ok(id)
            }
            _ => Err(SpiffeIdError::Shape(s.to_owned())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

// Trust domains are DNS-like names: lowercase letters, digits, '.', '-', '_' (SPIFFE ID spec §2.1).
fn check_trust_domain(id: &str, td: &str) -> Result<(), SpiffeIdError> {
    let bad = |reason| SpiffeIdError::Part {
        id: id.to_owned(),
        part: "trust domain",
        value: td.to_owned(),
        reason,
    };
    if td.is_empty() {
        return Err(bad("empty"));
    }
    if td.len() > 255 {
        return Err(bad("longer than 255 bytes"));
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad(
            "only lowercase letters, digits, '.', '-' and '_' are allowed",
        ));
    }
    Ok(())
}

// Namespaces and service accounts are Kubernetes DNS-1123 subdomains; we accept that alphabet.
fn check_segment(id: &str, part: &'static str, value: &str) -> Result<(), SpiffeIdError> {
    let bad = |reason| SpiffeIdError::Part {
        id: id.to_owned(),
        part,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("empty"));
    }
    if value.len() > 253 {
        return Err(bad("longer than 253 bytes"));
    }
    if value == "." || value == ".." {
        return Err(bad("dot segments are not allowed"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
    {
        return Err(bad(
            "only lowercase letters, digits, '.' and '-' are allowed",
        ));
    }
    Ok(())
}

/// One entry of a peer allow-list: an exact ID, or every service account of a namespace
/// (`spiffe://<td>/ns/<ns>/sa/*`, or the short form `<ns>/*` within the local trust domain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPattern {
    Exact(SpiffeId),
    Namespace {
        trust_domain: String,
        namespace: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerPatternError {
    #[error("peer pattern {pattern:?}: {source}")]
    Id {
        pattern: String,
        source: SpiffeIdError,
    },
    #[error(
        "peer pattern {0:?} must be a SPIFFE ID, spiffe://<td>/ns/<ns>/sa/*, <ns>/<sa> or <ns>/*"
    )]
    Shape(String),
}

impl PeerPattern {
    /// Parses a pattern; `<ns>/*` is resolved against `trust_domain`.
    pub fn parse(pattern: &str, trust_domain: &str) -> Result<Self, PeerPatternError> {
        let pattern = pattern.trim();
        if let Some(prefix) = pattern.strip_suffix("/sa/*") {
            // Validate by building a full ID with a placeholder service account.
            let probe: SpiffeId =
                format!("{prefix}/sa/x")
                    .parse()
                    .map_err(|source| PeerPatternError::Id {
                        pattern: pattern.to_owned(),
                        source,
                    })?;
            return Ok(PeerPattern::Namespace {
                trust_domain: probe.trust_domain,
                namespace: probe.namespace,
            });
        }
        if pattern.starts_with("spiffe://") {
            let id = pattern.parse().map_err(|source| PeerPatternError::Id {
                pattern: pattern.to_owned(),
                source,
            })?;
            return Ok(PeerPattern::Exact(id));
        }
        match pattern.split_once('/') {
            Some((ns, sa)) if sa != "*" => {
                let id =
                    SpiffeId::new(trust_domain, ns, sa).map_err(|source| PeerPatternError::Id {
                        pattern: pattern.to_owned(),
                        source,
                    })?;
                Ok(PeerPattern::Exact(id))
            }
            Some((ns, "*")) => {
                let probe = SpiffeId::new(trust_domain, ns, "x").map_err(|source| {
                    PeerPatternError::Id {
                        pattern: pattern.to_owned(),
                        source,
                    }
                })?;
                Ok(PeerPattern::Namespace {
                    trust_domain: probe.trust_domain,
                    namespace: probe.namespace,
                })
            }
            _ => Err(PeerPatternError::Shape(pattern.to_owned())),
        }
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            PeerPattern::Exact(want) => want == id,
            PeerPattern::Namespace {
                trust_domain,
                namespace,
            } => id.trust_domain == *trust_domain && id.namespace == *namespace,
        }
    }
}

impl fmt::Display for PeerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerPattern::Exact(id) => id.fmt(f),
            PeerPattern::Namespace {
                trust_domain,
                namespace,
            } => write!(f, "spiffe://{trust_domain}/ns/{namespace}/sa/*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    }

    #[test]
    fn rejects_bad_ids() {
        let bad = [
            "",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#frag",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/NS/a/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://cluster.local:443/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b%2f",
            "spiffe://cluster.local/ns/a/sa/b\0",
        ];
        for s in bad {
            assert!(s.parse::<SpiffeId>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn error_names_the_offending_part() {
        let err = "spiffe://cluster.local/ns/Bad/sa/b"
            .parse::<SpiffeId>()
            .unwrap_err();
        assert!(err.to_string().contains("namespace \"Bad\""), "{err}");
    }

    #[test]
    fn short_exact_patterns_name_one_service_account() {
        let web: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let api: SpiffeId = "spiffe://cluster.local/ns/shop/sa/api".parse().unwrap();
        let short = PeerPattern::parse("shop/web", "cluster.local").unwrap();
        assert!(short.matches(&web) && !short.matches(&api));
    }

    #[test]
    fn patterns_match_exact_and_namespace() {
        let a: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let b: SpiffeId = "spiffe://cluster.local/ns/shop/sa/api".parse().unwrap();
        let c: SpiffeId = "spiffe://other.domain/ns/shop/sa/web".parse().unwrap();
        let exact =
            PeerPattern::parse("spiffe://cluster.local/ns/shop/sa/web", "cluster.local").unwrap();
        assert!(exact.matches(&a) && !exact.matches(&b) && !exact.matches(&c));
        let ns = PeerPattern::parse("shop/*", "cluster.local").unwrap();
        assert!(ns.matches(&a) && ns.matches(&b) && !ns.matches(&c));
        let full =
            PeerPattern::parse("spiffe://other.domain/ns/shop/sa/*", "cluster.local").unwrap();
        assert!(full.matches(&c) && !full.matches(&a));
        for bad in [
            "*",
            "shop",
            "shop/web/x",
            "shop/Web",
            "/*",
            "spiffe://cluster.local/ns/*/sa/*",
            "Shop/*",
        ] {
            assert!(PeerPattern::parse(bad, "cluster.local").is_err(), "{bad:?}");
        }
    }
}
