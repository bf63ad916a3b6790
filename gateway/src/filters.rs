//! What the gateway changes in a request before forwarding it: hop-by-hop and mesh headers
//! removed, and an HTTPRoute's RequestHeaderModifier and URLRewrite filters applied.

use hyper::header::{HeaderName, HeaderValue};

use crate::api::{HeaderModifier, PathModifierType};
use crate::routes;

/// Headers never forwarded: hop-by-hop, and mesh headers only the receiving sidecar may set.
pub(crate) fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for n in named {
        headers.remove(n.as_str());
    }
    for h in [
        "connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "http2-settings",
    ] {
        headers.remove(h);
    }
    let mesh: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-pqmesh-"))
        .cloned()
        .collect();
    for k in mesh {
        headers.remove(k);
    }
}

pub(crate) fn modify_headers(headers: &mut hyper::HeaderMap, m: &HeaderModifier) {
    let pair = |name: &str, value: &str| {
        Some((
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        ))
    };
    for h in &m.set {
        if let Some((n, v)) = pair(&h.name, &h.value) {
            headers.insert(n, v);
        }
    }
    for h in &m.add {
        if let Some((n, v)) = pair(&h.name, &h.value) {
            headers.append(n, v);
        }
    }
    for name in &m.remove {
        headers.remove(name.to_ascii_lowercase().as_str());
    }
}

pub(crate) fn modified_path(
    path: &str,
    matched_prefix: Option<&str>,
    m: &crate::api::PathModifier,
) -> String {
    match m.kind {
        PathModifierType::ReplaceFullPath => {
            m.replace_full_path.clone().unwrap_or_else(|| "/".into())
        }
        PathModifierType::ReplacePrefixMatch => routes::replace_prefix(
            path,
            matched_prefix.unwrap_or("/"),
            m.replace_prefix_match.as_deref().unwrap_or("/"),
        ),
    }
}
