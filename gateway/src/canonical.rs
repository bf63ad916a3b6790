//! The request made canonical before routing and the EdgePolicy (review 7, F1, F7-F10): the
//! head as the backend's sidecar will judge it, one host, the edge's own forwarding headers, and
//! the path in the sidecar's normal form, so the route, the EdgePolicy and the backend all see
//! the same request.

use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};

/// Forwarding headers the edge owns: every client copy is removed before routing, and the
/// gateway sets `x-forwarded-for`, `x-forwarded-proto` and `x-forwarded-host` itself. Beside
/// these, every header some framework, auth proxy or CDN treats as the edge's statement of the
/// client's address, scheme, certificate, authenticated user or original URL (outside review
/// 10, F7): the app behind the gateway must not read a client's forgery of them. A route's
/// `RequestHeaderModifier` can still set any of them: filters run after this.
const FORWARDING: &[&str] = &[
    "forwarded",
    "via",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "client-ip",
    "front-end-https",
    "ssl-client-cert",
    "ssl-client-verify",
    "remote-user",
    "remote-groups",
    "remote-email",
    "remote-name",
    "remote-addr",
    "proxy-client-ip",
    "wl-proxy-client-ip",
    "https",
    "gap-auth",
    "tailscale-user-login",
    "tailscale-user-name",
    "tailscale-user-profile-pic",
    "x-user",
    "x-user-id",
    "x-user-name",
    "x-user-email",
    "x-user-groups",
    "x-user-roles",
    "x-email",
    "x-groups",
    "x-roles",
];

/// Prefixes of edge-owned header families (see [`FORWARDING`]): `x-forwarded-*` (for, host,
/// proto, port, prefix, ssl, scheme, user, email, groups, uri, path, access-token, ...),
/// `x-original-*`, `x-real-*`, `x-client-*`, `x-cluster-client-*`, `x-remote-*`, the identity
/// headers of oauth2-proxy, AWS ALB, Azure App Service, Google IAP and Envoy, client
/// certificates, and host or scheme overrides.
const FORWARDING_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-original-",
    "x-real-",
    "x-client-",
    "x-cluster-client-",
    "x-remote-",
    "x-proxyuser-",
    "x-auth-request-",
    "x-authenticated-",
    "x-amzn-oidc-",
    "x-amzn-mtls-",
    "x-ms-client-principal",
    "x-goog-authenticated-",
    "x-goog-iap-",
    "x-envoy-",
    "x-ssl-",
    "x-spiffe-",
    "x-scheme",
    "x-url-scheme",
    "x-host",
    "x-http-host-override",
    "x-userinfo",
    "x-jwt-",
    // Review 11 F6: more auth proxies, platforms and servers.
    "x-forwarded",
    "x-webauth-",
    "x-consumer-",
    "x-credential-",
    "x-anonymous-consumer",
    "x-endpoint-api-",
    "x-apigateway-",
    "cf-access-",
    "x-appengine-",
    "x-pomerium-",
    "x-vouch-",
    "oidc-",
    "shib-",
    "x-ms-token-",
    "x-zumo-",
    "x-arr-",
    "x-originating-ip",
    "x-https",
    "x-sendfile",
    "x-accel-",
    "x-lighttpd-send-file",
];

/// Whether `name` (lower case, as `http` stores it) is a header only the edge may set.
pub fn edge_owned(name: &str) -> bool {
    FORWARDING.contains(&name) || FORWARDING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Methods that echo or expose the request as the backend received it.
const ECHO_METHODS: &[&str] = &["TRACE", "TRACK", "DEBUG"];

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
    if ECHO_METHODS.contains(&method.as_str()) {
        // TRACE (and IIS's TRACK, ASP.NET's DEBUG) echo or expose the request the backend
        // received, and that carries the JWT the phantom token was exchanged for: outside
        // clients must not read it (review 10; review 11 F9 for TRACK and DEBUG).
        return Err(BadRequest {
            status: StatusCode::METHOD_NOT_ALLOWED,
            text: format!("{method} is not proxied"),
            decision: "bad_method",
        });
    }
    if h2 && req.headers().get_all("cookie").iter().count() > 1 {
        // RFC 9113 §8.2.3: HTTP/2 splits cookies over fields; to HTTP/1.1 they are one header,
        // else apps read one of them (review 11, F9).
        let joined: Vec<u8> = req
            .headers()
            .get_all("cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        let value = HeaderValue::from_bytes(&joined)
            .map_err(|_| bad("cookie fields cannot be joined", "bad_header"))?;
        req.headers_mut().insert("cookie", value);
    }
    if let Some(q) = req.uri().query() {
        if query_params(q).any(|(_, k, _)| lenient_name(&k) == b"_method") {
            // Rails, Laravel and Symfony run the method a `_method` parameter names (review 11,
            // F2): the route and policy judged another. (A form body's `_method` is not read.)
            return Err(bad(
                "a _method parameter is refused (the app would run another method than the route judged)",
                "bad_request",
            ));
        }
    }
    if req.headers().get_all("authorization").iter().count() > 1 {
        return Err(bad("more than one Authorization header", "bad_header"));
    }
    let owned: Vec<hyper::header::HeaderName> = req
        .headers()
        .keys()
        .filter(|n| edge_owned(n.as_str()))
        .cloned()
        .collect();
    for name in owned {
        req.headers_mut().remove(name);
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
    // One spelling of the authority for routing, `Host`, and `X-Forwarded-Host` (review 10, F9).
    let (host, authority) = canonical_authority(&authority)?;
    if !authority.is_empty() {
        let value = HeaderValue::from_str(&authority)
            .map_err(|_| bad("the request's authority is not a valid Host", "bad_header"))?;
        req.headers_mut().insert("host", value);
    }
    let path = pqmesh_policy::path::normalize(req.uri().path())
        .map_err(|e| bad(e.to_string(), "bad_path"))?;
    Ok(Target {
        host,
        authority,
        path,
        query: req.uri().query().map(str::to_owned),
    })
}

/// `host[:port]` checked with the `Host` grammar (RFC 9110 §7.2, RFC 3986 §3.2.2) and lower-cased:
/// no userinfo, a port that is a number up to 65535 when there is a `:`, only the characters of
/// a DNS name or an address. Returns (host without port, authority). An HTTP/2 `:authority` and
/// an absolute-form authority used to reach the app verbatim, `evil.com:443@shop.example.com`
/// included (outside review 10, F9).
pub fn canonical_authority(raw: &str) -> Result<(String, String), BadRequest> {
    if raw.is_empty() {
        return Ok((String::new(), String::new()));
    }
    let refuse = || {
        bad(
            "the request's authority is not a valid host[:port]",
            "bad_header",
        )
    };
    let lower = raw.to_ascii_lowercase();
    let (host, port) = if let Some(rest) = lower.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(refuse)?;
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(refuse());
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(refuse)?),
        };
        (format!("[{inner}]"), port)
    } else {
        let (host, port) = match lower.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (lower.as_str(), None),
        };
        let dns = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        if host.is_empty() || !host.bytes().all(dns) {
            return Err(refuse());
        }
        (host.to_owned(), port)
    };
    let authority = match port {
        None => host.clone(),
        Some(p) => {
            let digits = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
            let n: u32 = if digits {
                p.parse().map_err(|_| refuse())?
            } else {
                return Err(refuse());
            };
            if n > 65535 {
                return Err(refuse());
            }
            format!("{host}:{n}")
        }
    };
    Ok((host, authority))
}

/// Percent-decodes a query component; `+` is a space, as in the form encoding apps decode
/// queries with. Invalid escapes stay as they are.
pub fn decode_component(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // `%uXXXX`: IIS and classic ASP.NET decode it (review 11, F1).
        let wide = (b[i] == b'%' && matches!(b.get(i + 1), Some(b'u' | b'U')))
            .then(|| s.get(i + 2..i + 6))
            .flatten()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32);
        if let Some(c) = wide {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            i += 6;
            continue;
        }
        let hex = (b[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The query's parameters as `(raw name, decoded name, decoded value)`, split at `&` and at `;`
/// (older Go, Python and Java parsers split at both).
pub fn query_params(query: &str) -> impl Iterator<Item = (&str, Vec<u8>, Vec<u8>)> {
    query
        .split(['&', ';'])
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k, decode_component(k), decode_component(v))
        })
}

/// A decoded parameter name as the most lenient parsers read it, for comparisons meant to
/// catch every spelling of a name: lower case (ASP.NET), cut at a NUL, and PHP's mangling (`.`,
/// space and `[` become `_`; an array suffix `[...]` is dropped).
pub fn lenient_name(decoded: &[u8]) -> Vec<u8> {
    let name = decoded.split(|b| *b == 0).next().unwrap_or_default();
    // PHP drops leading spaces; other parsers trim either end (review 11, F1).
    let junk = |b: &u8| b.is_ascii_whitespace() || b.is_ascii_control() || *b == 0x0b;
    let start = name.iter().position(|b| !junk(b)).unwrap_or(name.len());
    let end = name.iter().rposition(|b| !junk(b)).map_or(start, |i| i + 1);
    let name = &name[start..end.max(start)];
    let name = match name.iter().position(|b| *b == b'[') {
        Some(i) if i > 0 && name.ends_with(b"]") => &name[..i],
        _ => name,
    };
    name.iter()
        .map(|b| match b.to_ascii_lowercase() {
            b'.' | b' ' | b'[' => b'_',
            c => c,
        })
        .collect()
}

/// Whether the query carries an RFC 6750 §2.3 `access_token` parameter in any spelling an app
/// might read as one (outside review 10, F8: `ACCESS_TOKEN`, `access_token[]`, `access.token`,
/// `access+token`, `a=1;access_token=`, `access_token%00`).
pub fn has_access_token_param(query: Option<&str>) -> bool {
    query.is_some_and(|q| query_params(q).any(|(_, k, _)| lenient_name(&k) == b"access_token"))
}
