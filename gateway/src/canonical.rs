//! The request made canonical before routing and the EdgePolicy (review 7, F1, F7-F10): the
//! head as the backend's sidecar will judge it, one host, the edge's own forwarding headers, and
//! the path in the sidecar's normal form, so the route, the EdgePolicy and the backend all see
//! the same request.

use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};

/// Forwarding headers the edge owns: every client copy is removed before routing, and the
/// gateway sets `x-forwarded-for`, `x-forwarded-proto` and `x-forwarded-host` itself.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-client-cert",
    "x-real-ip",
    "x-client-ip",
];

/// A request in the form routing, the EdgePolicy and the backend all see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host for matching (no port, as sent).
    pub host: String,
    /// The authority to forward as `Host` (with its port, if any).
    pub authority: String,
    /// Normalised as the sidecar normalises it (`pqmesh_policy::path::normalize`).
    pub path: String,
    pub query: Option<String>,
}

/// Why a request cannot be made canonical: status, text and the metric's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub status: StatusCode,
    pub text: String,
    pub decision: &'static str,
}

fn bad(text: impl Into<String>, decision: &'static str) -> BadRequest {
    BadRequest {
        status: StatusCode::BAD_REQUEST,
        text: text.into(),
        decision,
    }
}

/// Makes the request canonical in place, before routing and the EdgePolicy (review 7, F1, F7-F9):
/// the sidecar's own head rules (`pqmesh_sidecar::canonical`: hop-by-hop and `Connection`-named
/// headers removed, `_` names, method and URL overrides and CONNECT refused, `x-pqmesh-*`
/// dropped), one `Authorization` at most, forwarding headers dropped, one host (a `host`
/// header that differs from `:authority` or an absolute-form authority is refused), and the path
/// normalised exactly as the backend sidecar will (what it refuses is refused here).
pub fn canonical_request<B>(req: &mut Request<B>) -> Result<Target, BadRequest> {
    let h2 = req.version() == hyper::Version::HTTP_2;
    let method = req.method().clone();
    pqmesh_sidecar::canonical::canonicalize(&method, req.headers_mut(), h2).map_err(|r| {
        BadRequest {
            status: r.status(),
            text: r.to_string(),
            decision: r.outcome(),
        }
    })?;
    if req.headers().get_all("authorization").iter().count() > 1 {
        return Err(bad("more than one Authorization header", "bad_header"));
    }
    for h in FORWARDING {
        req.headers_mut().remove(*h);
    }
    let hosts: Vec<&HeaderValue> = req.headers().get_all("host").iter().collect();
    if hosts.len() > 1 {
        return Err(bad("more than one Host header", "bad_header"));
    }
    let header_host = match hosts.first() {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| bad("Host is not ASCII", "bad_header"))?
                .to_owned(),
        ),
        None => None,
    };
    let authority = match (req.uri().authority().map(|a| a.as_str()), header_host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(&h) => {
            return Err(bad(
                "the Host header differs from the request's authority",
                "bad_header",
            ))
        }
        (Some(a), _) => a.to_owned(),
        (None, Some(h)) => h,
        (None, None) => String::new(),
    };
    let host = match req.uri().host() {
        Some(h) => h.to_owned(),
        None => authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority.as_str(), |(h, _)| h)
            .to_owned(),
    };
    let path = pqmesh_policy::path::normalize(req.uri().path())
        .map_err(|e| bad(e.to_string(), "bad_path"))?;
    Ok(Target {
        host,
        authority,
        path,
        query: req.uri().query().map(str::to_owned),
    })
}

/// Whether the query carries an RFC 6750 §2.3 `access_token` parameter (its name percent-decoded).
pub fn has_access_token_param(query: Option<&str>) -> bool {
    let decode = |s: &str| -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let hex = (b[i] == b'%')
                .then(|| s.get(i + 1..i + 3))
                .flatten()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(v) => {
                    out.push(v);
                    i += 3;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
        out
    };
    query.is_some_and(|q| {
        q.split('&')
            .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
            .any(|k| decode(k) == b"access_token")
    })
}
