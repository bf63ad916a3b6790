//! Which HTTPRoute rule serves a request, with the Gateway API's precedence: the most specific
//! hostname, then an Exact path over a prefix, the longest prefix, a method match, the most
//! header matches, the most query matches; then the oldest route (`creationTimestamp`), then
//! `<namespace>/<name>` alphabetically, then the first rule and match in the route.

use std::cmp::Reverse;

use crate::api::{PathMatchType, RouteMatch};
use crate::canonical;
use crate::load::{ListenerModel, RouteModel};

/// What a request looks like to matching.
pub struct RequestView<'a> {
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a hyper::HeaderMap,
}

/// The chosen rule: route index, rule index and the path match that matched (for
/// `ReplacePrefixMatch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub route: usize,
    pub rule: usize,
    pub matched_prefix: Option<String>,
}

/// Sort key: larger is more specific (compared first to last).
type Specificity = (u8, usize, u8, usize, bool, usize, usize);

/// Tie-break key: larger wins, so older timestamp, name, rule and match come reversed.
type Tie<'a> = Reverse<(Option<&'a str>, &'a str, usize, usize)>;

/// Whether `route` attaches to `listener`: a parentRef naming its Gateway (and its section, if
/// any), from the Gateway's own namespace (`allowedRoutes.namespaces.from: Same`, the only value
/// served). The judgement already drops other parentRefs; this does not rely on it alone.
pub fn attaches(route: &RouteModel, listener: &ListenerModel) -> bool {
    let gateway_ns = listener.gateway.split('/').next().unwrap_or("");
    route.namespace == gateway_ns
        && route.spec.parent_refs.iter().any(|p| {
            let gw = format!(
                "{}/{}",
                p.namespace.as_deref().unwrap_or(&route.namespace),
                p.name
            );
            gw == listener.gateway
                && p.section_name.as_ref().is_none_or(|s| *s == listener.name)
                && p.port.is_none_or(|port| port == listener.port)
        })
}

/// Whether a route hostname and a listener hostname can both match some request host (exact or
/// `*.suffix` on either side).
pub fn hostnames_intersect(route: &str, listener: &str) -> bool {
    let (r, l) = (route.to_ascii_lowercase(), listener.to_ascii_lowercase());
    match (r.strip_prefix('*'), l.strip_prefix('*')) {
        (None, None) => r == l,
        (None, Some(_)) => host_rank(std::slice::from_ref(&l), &r).is_some(),
        (Some(_), None) => host_rank(std::slice::from_ref(&r), &l).is_some(),
        (Some(rs), Some(ls)) => rs.ends_with(ls) || ls.ends_with(rs),
    }
}

/// How specifically `hostnames` match `host`: 2 exact, 1 wildcard, 0 no hostnames (any);
/// `None` when they do not match.
fn host_rank(hostnames: &[String], host: &str) -> Option<(u8, usize)> {
    if hostnames.is_empty() {
        return Some((0, 0));
    }
    let mut best = None;
    for h in hostnames {
        let h = h.to_ascii_lowercase();
        if h == host {
            return Some((2, h.len()));
        }
        if let Some(suffix) = h.strip_prefix('*') {
            // `*.example.com` matches one or more labels before `.example.com`.
            if host.len() > suffix.len() && host.ends_with(suffix) {
                best = best.max(Some((1, suffix.len())));
            }
        }
    }
    best
}

/// Of the listeners sharing a port, the one for `host` (SNI or Host): an exact hostname, then the
/// longest wildcard, then one without a hostname.
pub fn listener_for(
    listeners: &[ListenerModel],
    candidates: &[usize],
    host: &str,
) -> Option<usize> {
    let host = host.to_ascii_lowercase();
    candidates
        .iter()
        .filter_map(|i| {
            let l = &listeners[*i];
            let rank = match &l.hostname {
                None => Some((0, 0)),
                Some(h) => host_rank(std::slice::from_ref(h), &host),
            };
            rank.map(|r| (r, Reverse(*i)))
        })
        .max()
        .map(|(_, Reverse(i))| i)
}

fn listener_allows(listener: &ListenerModel, host: &str) -> bool {
    match &listener.hostname {
        None => true,
        Some(h) => host_rank(std::slice::from_ref(h), host).is_some(),
    }
}

/// Element-wise prefix match: `/abc` matches `/abc`, `/abc/` and `/abc/x`, not `/abcd`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The decoded value of the parameter named `name` (decoded), the first one; [`ambiguous`]
/// has already refused a request that names a matched parameter twice or in another spelling.
fn query_value(query: Option<&str>, name: &str) -> Option<Vec<u8>> {
    canonical::query_params(query?)
        .find(|(_, k, _)| k == name.as_bytes())
        .map(|(_, _, v)| v)
}

/// A query parameter: raw name, lenient name ([`canonical::lenient_name`]), decoded value.
type Param<'a> = (&'a str, Vec<u8>, Vec<u8>);

/// Why a request cannot be matched unambiguously on `listener`, if it cannot: it carries a
/// header or query parameter that a route there matches on more than once, or a parameter in
/// another spelling than the match's (encoded, another case, PHP-mangled). Apps read such
/// requests differently (the first, the last or every value; names decoded and folded), so the
/// route matched on one reading would serve another (outside review 10, F6).
///
/// The single value of such a header or parameter must also have one reading (review 12, F6):
/// a header value with a comma is a list (RFC 9110 §5.3: `x-role: admin, user` means what two
/// `x-role` lines mean), and a value with leading or trailing whitespace, a control character
/// (a NUL, a tab) or, for headers, a byte outside visible ASCII is read as the matched value by
/// apps that trim or cut it (`gold%00`, `%20gold`), while the exact match refuses it and the
/// request would go to a broader, perhaps open, route.
///
/// Nothing is decoded unless a route on the listener matches on headers or query parameters.
pub fn ambiguous(
    routes: &[RouteModel],
    listener: &ListenerModel,
    req: &RequestView<'_>,
) -> Option<String> {
    let matches: Vec<&RouteMatch> = routes
        .iter()
        .filter(|r| attaches(r, listener))
        .flat_map(|r| &r.spec.rules)
        .flat_map(|rule| &rule.matches)
        .filter(|m| !m.headers.is_empty() || !m.query_params.is_empty())
        .collect();
    if matches.is_empty() {
        return None;
    }
    let mut params: Option<Vec<Param<'_>>> = None;
    for m in matches {
        for h in &m.headers {
            let mut values = req.headers.get_all(h.name.as_str()).iter();
            let (Some(value), more) = (values.next(), values.next()) else {
                continue;
            };
            if more.is_some() {
                return Some(format!("header {:?} is sent more than once", h.name));
            }
            if let Some(why) = header_value_ambiguity(value.as_bytes()) {
                return Some(format!("header {:?} {why}", h.name));
            }
        }
        if m.query_params.is_empty() {
            continue;
        }
        let params = params.get_or_insert_with(|| {
            req.query
                .map(|q| {
                    canonical::query_params(q)
                        .map(|(raw, k, v)| (raw, canonical::lenient_name(&k), v))
                        .collect()
                })
                .unwrap_or_default()
        });
        for q in &m.query_params {
            let lenient = canonical::lenient_name(q.name.as_bytes());
            let same: Vec<(&str, &[u8])> = params
                .iter()
                .filter(|(_, k, _)| *k == lenient)
                .map(|(raw, _, v)| (*raw, v.as_slice()))
                .collect();
            if same.len() > 1 {
                return Some(format!(
                    "query parameter {:?} is sent more than once",
                    q.name
                ));
            }
            let Some((raw, value)) = same.first() else {
                continue;
            };
            if *raw != q.name {
                return Some(format!("query parameter {:?} is sent as {raw:?}", q.name));
            }
            if let Some(why) = query_value_ambiguity(value) {
                return Some(format!("query parameter {:?} {why}", q.name));
            }
        }
    }
    None
}

/// Why a header value that a route matches on has more than one reading, if it has.
fn header_value_ambiguity(value: &[u8]) -> Option<&'static str> {
    if value.contains(&b',') {
        return Some("carries a list (a comma): send one value");
    }
    if value.first().is_some_and(|b| *b == b' ' || *b == b'\t')
        || value.last().is_some_and(|b| *b == b' ' || *b == b'\t')
    {
        return Some("has leading or trailing whitespace");
    }
    if value.iter().any(|b| b.is_ascii_control() || !b.is_ascii()) {
        return Some("carries a control character or a byte outside visible ASCII");
    }
    None
}

/// Why a decoded query value that a route matches on has more than one reading, if it has:
/// control characters anywhere (a NUL cuts the value in C-based parsers), whitespace at either
/// end (ASCII or Unicode: Python's `strip()` removes `U+00A0` too).
fn query_value_ambiguity(value: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(value);
    if value.iter().any(|b| b.is_ascii_control()) || text.chars().any(char::is_control) {
        return Some("carries a control character");
    }
    if text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
        return Some("has leading or trailing whitespace");
    }
    None
}

/// `Some((exact, prefix length))` when `m` matches the request.
fn match_request(m: &RouteMatch, req: &RequestView<'_>) -> Option<(bool, usize)> {
    let (exact, len) = match &m.path {
        None => (false, 1),
        Some(p) => match p.kind {
            PathMatchType::Exact if req.path == p.value => (true, p.value.len()),
            PathMatchType::PathPrefix if prefix_matches(&p.value, req.path) => {
                (false, p.value.len())
            }
            _ => return None,
        },
    };
    if m.method.as_deref().is_some_and(|x| x != req.method) {
        return None;
    }
    for h in &m.headers {
        let got = req
            .headers
            .get(h.name.as_str())
            .and_then(|v| v.to_str().ok());
        if got != Some(h.value.as_str()) {
            return None;
        }
    }
    for q in &m.query_params {
        if query_value(req.query, &q.name).as_deref() != Some(q.value.as_bytes()) {
            return None;
        }
    }
    Some((exact, len))
}

/// The rule that serves `req` on `listener`, if any.
pub fn choose(
    routes: &[RouteModel],
    listener: &ListenerModel,
    req: &RequestView<'_>,
) -> Option<Chosen> {
    let host = req.host.to_ascii_lowercase();
    if !listener_allows(listener, &host) {
        return None;
    }
    let mut best: Option<(Specificity, Tie<'_>, Chosen)> = None;
    for (ri, route) in routes.iter().enumerate() {
        if !attaches(route, listener) {
            continue;
        }
        let Some((host_kind, host_len)) = host_rank(&route.spec.hostnames, &host) else {
            continue;
        };
        for (rule_i, rule) in route.spec.rules.iter().enumerate() {
            let default_match = [RouteMatch::default()];
            let matches: &[RouteMatch] = if rule.matches.is_empty() {
                &default_match
            } else {
                &rule.matches
            };
            for (mi, m) in matches.iter().enumerate() {
                let Some((exact, len)) = match_request(m, req) else {
                    continue;
                };
                let key: Specificity = (
                    host_kind,
                    host_len,
                    u8::from(exact),
                    len,
                    m.method.is_some(),
                    m.headers.len(),
                    m.query_params.len(),
                );
                // Ties: older first (a missing timestamp sorts after any), then name, rule, match.
                let created = route.created.as_deref();
                let tie = Reverse((created.or(Some("~")), route.name.as_str(), rule_i, mi));
                let prefix = m
                    .path
                    .as_ref()
                    .filter(|p| p.kind == PathMatchType::PathPrefix)
                    .map(|p| p.value.clone())
                    .or_else(|| m.path.is_none().then(|| "/".to_owned()));
                let chosen = Chosen {
                    route: ri,
                    rule: rule_i,
                    matched_prefix: prefix,
                };
                if best.as_ref().is_none_or(|(k, t, _)| (key, tie) > (*k, *t)) {
                    best = Some((key, tie, chosen));
                }
            }
        }
    }
    best.map(|(_, _, c)| c)
}

/// `ReplacePrefixMatch`: the matched prefix of `path` replaced by `replacement`.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    let rest = &path[prefix.len().min(path.len())..];
    let base = replacement.trim_end_matches('/');
    match (base.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_owned(),
        (true, false) => rest.to_owned(),
        (false, _) => format!("{base}{rest}"),
    }
}

/// Picks a backend index by weight (`None`: every weight is 0).
pub fn pick_weighted(weights: &[u32], roll: f64) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut target = (roll.clamp(0.0, 0.999_999_999) * total as f64) as u64;
    for (i, w) in weights.iter().enumerate() {
        let w = u64::from(*w);
        if target < w {
            return Some(i);
        }
        target -= w;
    }
    weights.iter().rposition(|w| *w > 0)
}
