//! The one place that decides what an inbound request head looks like when the policy judges it
//! and when the app receives it — the same form for both, or a refusal (400/405).
//!
//! - Header names: a name with `_` is refused. CGI/WSGI/PHP-style servers map `_` and `-` to one
//!   variable, so `x_pqmesh_peer_identity` would shadow the identity header (case is already folded
//!   by the HTTP parser).
//! - Hop-by-hop headers, and every header the client names in `Connection`, are removed *before*
//!   the policy looks at the request, so the policy never judges a header the app will not get.
//! - The `x-pqmesh-` prefix belongs to the sidecar: every client copy is removed; the identity
//!   header is added last ([`stamp_identity`]), after all of the above, so no client can remove,
//!   duplicate or shadow it.
//! - Upgrades: only a WebSocket handshake (`Upgrade: websocket`, one `Sec-WebSocket-Key`, an
//!   HTTP/1.1 GET without a body) is forwarded (its handshake request is the request the policy
//!   judged), and the connection switches only if the app's 101 carries the matching
//!   `Sec-WebSocket-Accept` ([`websocket_accepted`]). `h2c` and any other protocol are dropped with
//!   `HTTP2-Settings`, so the request goes on as plain HTTP/1.1 and the connection stays checked
//!   per request. `CONNECT` is refused.
//! - Method-override headers (`X-HTTP-Method-Override` and kin) are refused: frameworks honour them,
//!   so the app would run another method than the policy allowed. So are URL overrides
//!   (`X-Original-URL`, `X-Rewrite-URL`, `X-Original-Method`: Symfony, Laminas and IIS honour
//!   them), or the app would serve another path than the policy judged.

use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{HeaderMap, Method};

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1, plus `HTTP2-Settings`
/// of an h2c upgrade, RFC 7540 §3.2.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Headers that ask a framework to run another method than the request line's.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers that name another URL (or method) than the request line (Symfony, Laminas, IIS).
const URL_OVERRIDES: &[&str] = &["x-original-url", "x-rewrite-url", "x-original-method"];

/// Prefix of the headers only the sidecar may send to the app.
pub const RESERVED_PREFIX: &str = "x-pqmesh-";

/// Why a request head is refused; the text goes back to the client in the 400/405 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("header name {0:?} contains '_' (refused: servers that map '_' to '-' would read it as another header)")]
    Underscore(String),
    #[error("method-override header {0:?} is refused (the app would run another method than the policy allowed)")]
    MethodOverride(String),
    #[error("header {0:?} is refused (the app would serve another URL than the policy judged)")]
    UrlOverride(String),
    #[error("CONNECT is not proxied to the app")]
    Connect,
    #[error("method {0:?} is refused: methods are upper case (frameworks that upper-case them would run another method than the policy matched)")]
    Method(String),
}

impl Refusal {
    pub fn status(&self) -> hyper::StatusCode {
        match self {
            Refusal::Connect => hyper::StatusCode::METHOD_NOT_ALLOWED,
            _ => hyper::StatusCode::BAD_REQUEST,
        }
    }

    /// Label of the `pqmesh_requests_total` outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refusal::Underscore(_) => "bad_header",
            Refusal::MethodOverride(_) | Refusal::UrlOverride(_) => "bad_header",
            Refusal::Connect | Refusal::Method(_) => "bad_method",
        }
    }
}

/// What [`canonicalize`] decided about a protocol upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    None,
    WebSocket,
}

/// Brings a request head into the form both the policy and the app see, in place; `Err` when it
/// cannot be made unambiguous. `h2`: an HTTP/2 request (no upgrades there).
pub fn canonicalize(
    method: &Method,
    headers: &mut HeaderMap,
    h2: bool,
) -> Result<Upgrade, Refusal> {
    if method == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    if !method_is_canonical(method.as_str()) {
        return Err(Refusal::Method(method.as_str().to_owned()));
    }
    if let Some(name) = headers.keys().find(|n| n.as_str().contains('_')) {
        return Err(Refusal::Underscore(name.as_str().to_owned()));
    }
    if let Some(name) = METHOD_OVERRIDES.iter().find(|n| headers.contains_key(**n)) {
        return Err(Refusal::MethodOverride((*name).to_owned()));
    }
    if let Some(name) = URL_OVERRIDES.iter().find(|n| headers.contains_key(**n)) {
        return Err(Refusal::UrlOverride((*name).to_owned()));
    }
    let upgrade = if !h2 && method == Method::GET && asks_websocket(headers) {
        Upgrade::WebSocket
    } else {
        Upgrade::None
    };
    strip_hop_by_hop(headers);
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(name);
    }
    if upgrade == Upgrade::WebSocket {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
    Ok(upgrade)
}

/// Whether a method is in the one spelling every framework agrees on: upper-case letters, digits,
/// `-` and `_` (every registered method is). Methods are case-sensitive (RFC 9110 §9.1), so a
/// rule for `DELETE` does not match `delete`, yet Werkzeug, Django and others upper-case the
/// method before dispatch and would run their DELETE handler (outside review 10, F5).
pub fn method_is_canonical(method: &str) -> bool {
    !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The sidecar's statement of the caller: always the last change to the head, replacing anything.
pub fn stamp_identity(headers: &mut HeaderMap, identity: Option<&HeaderValue>) {
    headers.remove(crate::http_proxy::PEER_IDENTITY_HEADER);
    if let Some(v) = identity {
        headers.insert(crate::http_proxy::PEER_IDENTITY_HEADER, v.clone());
    }
}

/// `Connection: upgrade` (among other tokens) and `websocket` among the `Upgrade` protocols.
fn asks_websocket(headers: &HeaderMap) -> bool {
    let has_token = |name: HeaderName, want: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',').any(|t| {
                    // `websocket/13` is not a thing, but a version suffix must not match either.
                    t.trim().eq_ignore_ascii_case(want)
                })
            })
        })
    };
    has_token(CONNECTION, "upgrade")
        && has_token(UPGRADE, "websocket")
        && headers.get_all(SEC_WEBSOCKET_KEY).iter().count() == 1
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Whether a 101 answer completes the WebSocket handshake of `key` (RFC 6455 §4.2.2): the app
/// speaks WebSocket, not merely answered 101.
pub fn websocket_accepted(key: Option<&HeaderValue>, response: &HeaderMap) -> bool {
    let Some(key) = key else { return false };
    let want = websocket_accept(key.as_bytes());
    let upgrade_ok = response
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let accept = response
        .get_all(SEC_WEBSOCKET_ACCEPT)
        .iter()
        .collect::<Vec<_>>();
    upgrade_ok && accept.len() == 1 && accept[0].as_bytes() == want.as_bytes()
}

/// Removes hop-by-hop headers and every header `Connection` names (any case; unparsable names
/// cannot be in the map anyway).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

#[cfg(test)]
mod tests;
