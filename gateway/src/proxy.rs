//! One request through the edge, as plain async fns over hyper: choose the route, apply its
//! EdgePolicy (rate limit, phantom-token exchange, coarse scopes), its filters, then forward it
//! over pqmesh mTLS (the gateway's own identity) to a backend's sidecar, which checks the
//! gateway's identity and the JWT again.
// A refusal is a finished response, built once per refused request: boxing it saves nothing.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use pqmesh_sidecar::tls::MeshTls;
use pqmesh_sidecar::token::{Authenticated, Validator};
use tokio::sync::watch;

use crate::api::{Accept, FilterType, RateLimitKey};
use crate::canonical::{canonical_request, has_access_token_param};
use crate::filters::{modified_path, modify_headers, strip_hop_by_hop};
use crate::load::{Endpoint, ListenerModel, RouteModel};
use crate::metrics::GatewayMetrics;
use crate::program::Programmed;
use crate::ratelimit::Limiter;
use crate::routes::{self, RequestView};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// A route's EdgePolicy, ready to run.
pub struct EdgeRuntime {
    pub validator: Option<Validator>,
    pub scope_claim: pqmesh_policy::ScopeClaim,
    pub limiter: Option<(Limiter, RateLimitKey, Option<String>)>,
}

/// What every connection shares: the configuration in force (replaced as a whole when the
/// objects change; each request reads the one current when it arrives), the gateway's mesh
/// certificate, the backend connections and where Services' endpoints come from.
pub struct Edge {
    pub config: watch::Receiver<Arc<Programmed>>,
    /// Failed token checks (401) per source IP: a client past its budget gets 429 before its
    /// token reaches the OAuth server (review 7, F5). Kept across configurations.
    pub token_failures: Limiter,
    pub tls: watch::Receiver<Option<Arc<MeshTls>>>,
    pub backends: crate::backend::BackendClient,
    pub endpoints: crate::backend::Endpoints,
    pub metrics: GatewayMetrics,
    /// The mesh state's deny list (clients and subjects), pushed by the control plane.
    pub revoked: pqmesh_sidecar::revocation::RevokedState,
    /// Abuse signals per client (kept across configurations).
    pub abuse: crate::abuse::Abuse,
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{body}\n")))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

fn with_header(mut r: Response<Body>, name: &'static str, value: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
    r
}

/// Which listeners a connection may be served by: every listener on its port (HTTP, told
/// apart by `Host`), or the one its TLS handshake chose by SNI.
#[derive(Clone)]
pub enum Bound {
    Port(u16),
    Listener { label: Arc<str>, port: u16 },
}

impl Bound {
    /// The candidate listeners in `config`.
    pub fn candidates(&self, config: &Programmed) -> Vec<usize> {
        match self {
            Bound::Port(port) => config.on_port(*port),
            Bound::Listener { label, port } => config.find(label, *port).into_iter().collect(),
        }
    }
}

/// Why every request is answered 503 (and `/ready` is 503) after a start or restart until the
/// control plane's first policy snapshot is applied: the deny list (denied clients and subjects,
/// revoked identities) is unknown until then, not empty (review 12, F5).
pub const AWAITING_POLICY: &str =
    "waiting for the control plane's first policy snapshot (deny list); not serving yet";

/// Budget of failed token checks per source IP: this many at once ...
pub const TOKEN_FAILURE_BURST: u32 = 20;
/// ... refilled at one per second.
pub const TOKEN_FAILURES_PER_MINUTE: u32 = 60;

/// Serves one request from an outside client on `listener`.
pub async fn handle(
    edge: Arc<Edge>,
    bound: Bound,
    client: SocketAddr,
    scheme: &'static str,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let ids = crate::abuse::ids(req.uri().path(), req.uri().query());
    let mut who = Who::default();
    let (route_name, response, decision) =
        match route_request(&edge, &bound, client, scheme, req, &mut who).await {
            Ok((name, r)) => (name, r, "forwarded"),
            Err((name, r, decision)) => (name, r, decision),
        };
    edge.metrics
        .requests
        .with_label_values(&[route_name.as_str(), response.status().as_str(), decision])
        .inc();
    // The access log: who, which route, what happened — never a token, nor the path (it may
    // carry identifiers; the route names what was asked for).
    tracing::info!(
        target: "pqmesh::access",
        %client,
        %method,
        route = %route_name,
        status = response.status().as_u16(),
        decision,
        client_id = who.client_id.as_deref().unwrap_or("-"),
        sub = who.sub.as_deref().unwrap_or("-"),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    let key = match &who.client_id {
        Some(c) => format!("client_id={c}"),
        None => format!("ip={}", client.ip()),
    };
    for signal in edge
        .abuse
        .observe(&key, response.status().as_u16(), decision, &ids)
    {
        edge.metrics
            .abuse_signals
            .with_label_values(&[signal.label()])
            .inc();
        tracing::warn!(
            target: "pqmesh::abuse",
            client = %key,
            sub = who.sub.as_deref().unwrap_or("-"),
            signal = signal.label(),
            count = edge.abuse.count(&key, signal),
            window_s = crate::abuse::WINDOW.as_secs(),
            "abuse signal"
        );
    }
    response
}

/// Whom a verified token named (for the access log).
#[derive(Default)]
struct Who {
    client_id: Option<String>,
    sub: Option<String>,
}

type Refusal = (String, Response<Body>, &'static str);

async fn route_request(
    edge: &Edge,
    bound: &Bound,
    client: SocketAddr,
    scheme: &'static str,
    mut req: Request<Incoming>,
    who: &mut Who,
) -> Result<(String, Response<Body>), Refusal> {
    // Fail closed until the first mesh state: a denied client's token would pass, and a revoked
    // backend identity would be dialled, on an empty list that only looks empty. Every request,
    // whatever its route: which routes check tokens may change with the next reload.
    if !edge.revoked.borrow().received() {
        return Err((
            "none".to_owned(),
            with_header(
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("pqmesh-gateway: {AWAITING_POLICY}"),
                ),
                "retry-after",
                "1",
            ),
            "awaiting_policy",
        ));
    }
    let target = canonical_request(&mut req).map_err(|b| {
        (
            "none".to_owned(),
            text(b.status, &format!("pqmesh-gateway: {}", b.text)),
            b.decision,
        )
    })?;
    let host = target.host.clone();
    let no_route = || {
        (
            "none".to_owned(),
            text(StatusCode::NOT_FOUND, "pqmesh-gateway: no route"),
            "no_route",
        )
    };
    let config = edge.config.borrow().clone();
    let listener_index =
        routes::listener_for(&config.model.listeners, &bound.candidates(&config), &host)
            .ok_or_else(no_route)?;
    if let Bound::Listener { port, .. } = bound {
        // The SNI chose this connection's listener (and its key-exchange policy); a Host that
        // another listener on the port would serve must not be served here: a classical client
        // with SNI for `*.example.com` asked for a `require-pq` listener's host (review 10, F3).
        let by_host = routes::listener_for(&config.model.listeners, &config.on_port(*port), &host);
        if by_host != Some(listener_index) {
            return Err((
                "none".to_owned(),
                text(
                    StatusCode::MISDIRECTED_REQUEST,
                    "pqmesh-gateway: this connection's TLS server name does not serve that host; connect with SNI for it",
                ),
                "misdirected",
            ));
        }
    }
    let listener: &ListenerModel = &config.model.listeners[listener_index];
    let path = target.path.clone();
    let query = target.query.clone();
    let chosen = {
        let view = RequestView {
            host: &host,
            method: req.method().as_str(),
            path: &path,
            query: query.as_deref(),
            headers: req.headers(),
        };
        if let Some(why) = routes::ambiguous(&config.model.routes, listener, &view) {
            return Err((
                "none".to_owned(),
                text(StatusCode::BAD_REQUEST, &format!("pqmesh-gateway: {why}")),
                "bad_request",
            ));
        }
        routes::choose(&config.model.routes, listener, &view).ok_or_else(|| {
            (
                "none".to_owned(),
                text(StatusCode::NOT_FOUND, "pqmesh-gateway: no route"),
                "no_route",
            )
        })?
    };
    let route: &RouteModel = &config.model.routes[chosen.route];
    let name = route.name.clone();
    let refuse = |r: Response<Body>, d: &'static str| (name.clone(), r, d);
    let rule = &route.spec.rules[chosen.rule];
    if route.closed.is_some() {
        return Err(refuse(
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "pqmesh-gateway: the route or its EdgePolicy is refused, conflicted or duplicated (see /verdicts)",
            ),
            "policy_refused",
        ));
    }

    // The EdgePolicy first: nothing of a refused request reaches a backend or a redirect.
    let mut jwt = None;
    let mut rate_headers: Option<RateHeaders> = None;
    if let Some(edge_model) = &route.edge {
        let Some(runtime) = config.policies[chosen.route].as_ref() else {
            return Err(refuse(
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "pqmesh-gateway: the route's EdgePolicy names an issuer that is not available",
                ),
                "policy_unresolved",
            ));
        };
        if let Some((limiter, RateLimitKey::SourceIp, _)) = &runtime.limiter {
            rate_headers = Some(
                rate_limit(edge, &name, limiter, "sourceIP", &client.ip().to_string())
                    .map_err(|r| refuse(r, "rate_limited"))?,
            );
        }
        if let Some(token) = &edge_model.token {
            if has_access_token_param(query.as_deref()) {
                return Err(refuse(
                    with_header(
                        text(
                            StatusCode::BAD_REQUEST,
                            "pqmesh-gateway: an access_token query parameter is refused on a token-protected route; send the token in Authorization only",
                        ),
                        "www-authenticate",
                        "Bearer error=\"invalid_request\"",
                    ),
                    "bad_request",
                ));
            }
            let ip = client.ip().to_string();
            let auth = authenticate(edge, &ip, runtime, token.accept, req.headers())
                .await
                .map_err(|(r, d)| refuse(r, d))?;
            who.client_id = claim_value(&auth.claims, "client_id");
            who.sub = claim_value(&auth.claims, "sub");
            let denied = edge.revoked.borrow().denies(&auth.claims);
            if let Some(what) = denied {
                // The control plane's deny list: a verified token of a listed client or subject.
                return Err(refuse(
                    text(
                        StatusCode::FORBIDDEN,
                        "pqmesh-gateway: this client is denied",
                    ),
                    if what == "client" {
                        "denied_client"
                    } else {
                        "denied_subject"
                    },
                ));
            }
            check_scopes(runtime, &token.scopes, &auth).map_err(|(r, d)| refuse(r, d))?;
            if let Some((limiter, key, claim)) = &runtime.limiter {
                let claim_name = match key {
                    RateLimitKey::ClientId => Some("client_id"),
                    RateLimitKey::Sub => Some("sub"),
                    RateLimitKey::Claim => claim.as_deref(),
                    RateLimitKey::SourceIp => None,
                };
                if let Some(c) = claim_name {
                    // A token without the claim shares one bucket with every other such token.
                    let value = claim_value(&auth.claims, c).unwrap_or_default();
                    rate_headers = Some(
                        rate_limit(edge, &name, limiter, c, &format!("{c}={value}"))
                            .map_err(|r| refuse(r, "rate_limited"))?,
                    );
                }
            }
            jwt = Some(auth.jwt.clone());
        }
    }

    let mut response_modifier = None;
    let mut forward_path = path.clone();
    for f in &rule.filters {
        match f.kind {
            FilterType::RequestRedirect => {
                let r = f.request_redirect.clone().unwrap_or_default();
                let to_path = match &r.path {
                    None => path.clone(),
                    Some(p) => modified_path(&path, chosen.matched_prefix.as_deref(), p),
                };
                let scheme = r.scheme.as_deref().unwrap_or(scheme);
                let host = r.hostname.as_deref().unwrap_or(&host);
                let port = r.port.map(|p| format!(":{p}")).unwrap_or_default();
                let q = query
                    .as_deref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                let status =
                    StatusCode::from_u16(r.status_code.unwrap_or(302)).unwrap_or(StatusCode::FOUND);
                let resp = with_header(
                    text(status, "redirect"),
                    "location",
                    &format!("{scheme}://{host}{port}{to_path}{q}"),
                );
                return Ok((name, resp));
            }
            FilterType::RequestHeaderModifier => {
                if let Some(m) = &f.request_header_modifier {
                    modify_headers(req.headers_mut(), m);
                }
            }
            FilterType::ResponseHeaderModifier => {
                response_modifier = f.response_header_modifier.clone()
            }
            FilterType::URLRewrite => {
                let u = f.url_rewrite.clone().unwrap_or_default();
                if let Some(h) = u
                    .hostname
                    .as_deref()
                    .and_then(|h| HeaderValue::from_str(h).ok())
                {
                    req.headers_mut().insert("host", h);
                }
                if let Some(p) = &u.path {
                    let new = modified_path(&path, chosen.matched_prefix.as_deref(), p);
                    // The rewrite must yield a path the sidecar leaves as it is: no `..` tricks.
                    if pqmesh_policy::path::normalize(&new).ok().as_deref() != Some(new.as_str()) {
                        return Err(refuse(
                            text(
                                StatusCode::BAD_REQUEST,
                                "pqmesh-gateway: the rewritten path is not canonical",
                            ),
                            "bad_rewrite",
                        ));
                    }
                    forward_path = new;
                }
            }
        }
    }

    let weights: Vec<u32> = rule.backend_refs.iter().map(|b| b.weight).collect();
    let Some(pick) = routes::pick_weighted(&weights, rand::random()) else {
        return Err(refuse(
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "pqmesh-gateway: the rule has no backend with weight",
            ),
            "no_backend",
        ));
    };
    let backend = &rule.backend_refs[pick];
    let service = format!(
        "{}/{}",
        backend.namespace.as_deref().unwrap_or(&route.namespace),
        backend.name
    );
    // A backendRef that is not a core Service of the route's namespace is never forwarded to
    // (its route's ResolvedRefs says why: InvalidKind, or RefNotPermitted as there is no
    // ReferenceGrant); the Gateway API answers 500 for it.
    let permitted =
        crate::load::is_service(backend) && service.starts_with(&format!("{}/", route.namespace));
    let resolved = match permitted {
        false => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backend {service}:{} is not permitted", backend.port),
        )),
        true => {
            edge.endpoints
                .resolve(&config.model.backends, &service, backend.port)
                .await
        }
    };
    // Revoked identities (the control plane's push) are never sent a request: a compromised
    // backend's sidecar keeps its certificate until it expires, so the gateway checks too.
    let resolved = resolved.map(|mut e| {
        let revoked = edge.revoked.borrow();
        e.retain(|e| !revoked.covers(&e.identity, None));
        e
    });
    let endpoints = match resolved {
        Ok(e) if !e.is_empty() => e,
        Ok(_) => {
            return Err(refuse(
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "pqmesh-gateway: backend {service}:{} has no mesh endpoint",
                        backend.port
                    ),
                ),
                "backend_unresolved",
            ))
        }
        Err((status, why)) => {
            return Err(refuse(
                text(status, &format!("pqmesh-gateway: {why}")),
                "backend_unresolved",
            ))
        }
    };
    let endpoint = &endpoints[rand::random_range(0..endpoints.len())];

    strip_hop_by_hop(req.headers_mut());
    if let Some(jwt) = jwt {
        let value = HeaderValue::from_str(&format!("Bearer {jwt}")).map_err(|_| {
            refuse(
                text(StatusCode::BAD_GATEWAY, "pqmesh-gateway: unusable JWT"),
                "bad_jwt",
            )
        })?;
        req.headers_mut().insert("authorization", value);
    }
    if !req.headers().contains_key("host") {
        let h = if target.authority.is_empty() {
            &host
        } else {
            &target.authority
        };
        if let Ok(h) = HeaderValue::from_str(h) {
            req.headers_mut().insert("host", h);
        }
    }
    // The edge's own forwarding headers (every client copy was removed in canonical_request).
    req.headers_mut().insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if scheme == "https" { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
        req.headers_mut().insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_str(&target.authority) {
        if !target.authority.is_empty() {
            req.headers_mut().insert("x-forwarded-host", v);
        }
    }
    // HTTP/1.1 to the sidecar, origin-form, with the canonical (or rewritten) path: the backend
    // sidecar gets exactly the path the route and the EdgePolicy were chosen on.
    let pq = match &query {
        Some(q) => format!("{forward_path}?{q}"),
        None => forward_path,
    };
    *req.uri_mut() = pq.parse().map_err(|_| {
        refuse(
            text(
                StatusCode::BAD_REQUEST,
                "pqmesh-gateway: unusable request target",
            ),
            "bad_path",
        )
    })?;
    *req.version_mut() = hyper::Version::HTTP_11;

    // A request body that fails to decode (malformed chunking) is the client's error, not the
    // backend's (review 7, F11).
    let body_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = body_failed.clone();
    let req = req.map(move |b| {
        b.map_err(move |e| {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            e
        })
        .boxed()
    });
    let mut response = forward(edge, endpoint, req).await.map_err(|e| {
        if body_failed.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!(route = %name, error = %e, "request body malformed");
            return refuse(
                text(
                    StatusCode::BAD_REQUEST,
                    "pqmesh-gateway: malformed request body",
                ),
                "bad_request",
            );
        }
        tracing::warn!(route = %name, endpoint = %endpoint.addr, error = %e, "backend failed");
        refuse(
            text(
                StatusCode::BAD_GATEWAY,
                "pqmesh-gateway: the backend is unreachable",
            ),
            "backend_failed",
        )
    })?;
    strip_hop_by_hop(response.headers_mut());
    if let Some(m) = response_modifier {
        modify_headers(response.headers_mut(), &m);
    }
    if let Some((policy, state)) = rate_headers {
        for (h, v) in [("ratelimit-policy", policy), ("ratelimit", state)] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                response.headers_mut().insert(h, v);
            }
        }
    }
    Ok((name, response))
}

fn claim_value(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<String> {
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    Some(match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers) of
/// a route's limit, for every answer that spent or was refused a token.
type RateHeaders = (String, String);

fn rate_limit(
    edge: &Edge,
    route: &str,
    limiter: &Limiter,
    policy: &str,
    key: &str,
) -> Result<RateHeaders, Response<Body>> {
    let name = policy.to_owned();
    match limiter.take(key) {
        Ok(q) => Ok((
            limiter.policy_header(&name),
            format!("\"{name}\";r={};t={}", q.remaining, q.full_in),
        )),
        Err(wait) => {
            edge.metrics.rate_limited.with_label_values(&[route]).inc();
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let r = with_header(
                text(StatusCode::TOO_MANY_REQUESTS, "pqmesh-gateway: rate limit"),
                "retry-after",
                &secs.to_string(),
            );
            let r = with_header(r, "ratelimit-policy", &limiter.policy_header(&name));
            Err(with_header(
                r,
                "ratelimit",
                &format!("\"{name}\";r=0;t={secs}"),
            ))
        }
    }
}

fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

type Denied = (Response<Body>, &'static str);

/// The phantom-token exchange and the coarse scope check; returns the JWT to forward.
async fn authenticate(
    edge: &Edge,
    ip: &str,
    runtime: &EdgeRuntime,
    accept: Accept,
    headers: &hyper::HeaderMap,
) -> Result<Arc<Authenticated>, Denied> {
    let unauthorized = |www: &str, d: &'static str| {
        (
            with_header(
                text(StatusCode::UNAUTHORIZED, "pqmesh-gateway: unauthorized"),
                "www-authenticate",
                www,
            ),
            d,
        )
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(bearer) = bearer.filter(|t| !t.is_empty() && !t.contains(char::is_whitespace)) else {
        return Err(unauthorized("Bearer", "no_token"));
    };
    let refused_form = match accept {
        Accept::Opaque if looks_like_jwt(bearer) => {
            Some("JWTs are not accepted on this route; present the opaque access token")
        }
        Accept::Jwt if !looks_like_jwt(bearer) => Some("this route takes JWTs only"),
        _ => None,
    };
    let refused_form = refused_form.or_else(|| {
        (looks_like_jwt(bearer) && pqmesh_sidecar::token::is_introspection_response(bearer))
            .then_some("an introspection response is not an access token")
    });
    if let Some(why) = refused_form {
        return Err(unauthorized(
            &format!("Bearer error=\"invalid_token\", error_description=\"{why}\""),
            "token_form",
        ));
    }
    let Some(validator) = &runtime.validator else {
        return Err((
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "pqmesh-gateway: no token issuer",
            ),
            "policy_unresolved",
        ));
    };
    if let Err(wait) = edge.token_failures.check(ip) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        return Err((
            with_header(
                text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "pqmesh-gateway: too many refused tokens from this address",
                ),
                "retry-after",
                &secs.to_string(),
            ),
            "token_failures",
        ));
    }
    let auth = match validator.authenticate(bearer).await {
        Ok(a) => a,
        Err(e) => {
            if e.status() == 401 {
                let _ = edge.token_failures.take(ip);
            }
            let mut r = text(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
                "pqmesh-gateway: token refused",
            );
            if let Some(www) = e.www_authenticate() {
                r = with_header(r, "www-authenticate", &www);
            }
            return Err((r, "invalid_token"));
        }
    };
    Ok(auth)
}

/// The route's coarse scope check (the claims stay with the service).
fn check_scopes(
    runtime: &EdgeRuntime,
    required: &[String],
    auth: &Authenticated,
) -> Result<(), Denied> {
    let held = pqmesh_sidecar::token::scopes(&auth.claims, runtime.scope_claim);
    if required.iter().all(|s| held.contains(s)) {
        return Ok(());
    }
    let scope = required.join(" ");
    let r = with_header(
        text(StatusCode::FORBIDDEN, "pqmesh-gateway: insufficient scope"),
        "www-authenticate",
        &format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""),
    );
    Err((r, "insufficient_scope"))
}

/// Sends `req` to the endpoint's sidecar over a pooled pqmesh mTLS connection
/// ([`crate::backend`]).
async fn forward(
    edge: &Edge,
    endpoint: &Endpoint,
    mut req: Request<Body>,
) -> Result<Response<Body>, String> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = format!("http://{}{pq}", endpoint.addr)
        .parse()
        .map_err(|e| format!("backend URI: {e}"))?;
    let resp = edge.backends.request(req).await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    })?;
    Ok(resp.map(|b| b.boxed()))
}
