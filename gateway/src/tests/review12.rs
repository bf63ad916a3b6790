//! Review 12 (an outside attack on the gateway, black box): a header value that is a list or
//! has whitespace or control characters (F6a), and a query value with them (F6b), on a name a
//! route matches on, is refused as ambiguous; nothing is decoded when no route matches on
//! headers or query parameters. The deny list's claim names (F6c) are tested with the list in
//! `pqmesh_sidecar::revocation`; the fail-closed start (F5) end to end in
//! `tests/tests/e2e/gateway_review12.rs`.

use super::*;
use crate::routes::ambiguous;

fn view<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        host: "shop.example",
        method: "GET",
        path: "/q/1",
        query,
        headers,
    }
}

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            hyper::header::HeaderValue::from_bytes(v).unwrap(),
        );
    }
    h
}

/// `x-role: admin` (protected in the review) beside an open catch-all.
fn admin_model() -> Model {
    model(
        &(route("admin", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /q}, headers: [{name: x-role, value: admin}]}]\n      backendRefs: [{name: o, port: 80}]")
            + &route("open", "  rules:\n    - backendRefs: [{name: o, port: 80}]")),
    )
}

/// F6a: `x-role: admin, user` means what two `x-role` lines mean (RFC 9110 §5.3), which were
/// already refused; it went to the open route. So do values an app trims or cuts.
#[test]
fn a_matched_header_value_that_is_a_list_or_not_plain_is_ambiguous() {
    let m = admin_model();
    for v in [
        &b"admin, user"[..],
        b"admin,user",
        b"user,admin",
        b"admin,",
        b",",
        b" admin",
        b"admin ",
        b"admin\t",
        b"\tadmin",
        b"ad\tmin",
        b"admin\xa0",
        b"\xc2\xa0admin",
    ] {
        let h = headers(&[("x-role", v)]);
        let why = ambiguous(&m.routes, &m.listeners[0], &view(None, &h));
        assert!(why.is_some(), "{:?}", String::from_utf8_lossy(v));
        assert!(why.unwrap().contains("x-role"));
    }
    // Still refused as before: the header twice.
    let h = headers(&[("x-role", b"admin"), ("x-role", b"user")]);
    assert!(ambiguous(&m.routes, &m.listeners[0], &view(None, &h)).is_some());
    // One plain value: matched as written, or sent to the open route.
    for (v, want) in [
        ("admin", "shop/admin"),
        ("user", "shop/open"),
        ("Admin", "shop/open"),
        ("", "shop/open"),
    ] {
        let h = headers(&[("x-role", v.as_bytes())]);
        assert!(
            ambiguous(&m.routes, &m.listeners[0], &view(None, &h)).is_none(),
            "{v:?}"
        );
        let got = pick(&m, "GET", "/q/1", None, &[("x-role", v)]).map(|(n, _)| n);
        assert_eq!(got.as_deref(), Some(want), "{v:?}");
    }
    // Headers no route matches on may carry lists, whitespace and repeats.
    let h = headers(&[("accept", b"a, b"), ("x-other", b" x "), ("x-other", b"y")]);
    assert!(ambiguous(&m.routes, &m.listeners[0], &view(None, &h)).is_none());
}

/// F6b: `tier=gold` (protected) beside an open catch-all; `gold%00` and `%20gold` went to the
/// open route, where an app cutting at the NUL or trimming reads `gold`.
#[test]
fn a_matched_query_value_with_control_characters_or_edge_whitespace_is_ambiguous() {
    let m = model(
        &(route("gold", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: tier, value: gold}]}]\n      backendRefs: [{name: o, port: 80}]")
            + &route("open", "  rules:\n    - backendRefs: [{name: o, port: 80}]")),
    );
    let none = HeaderMap::new();
    for q in [
        "tier=gold%00",
        "tier=%00gold",
        "tier=go%00ld",
        "tier=%20gold",
        "tier=gold%20",
        "tier=+gold",
        "tier=gold+",
        "tier=%09gold",
        "tier=gold%0a",
        "tier=gold%0d%0a",
        "tier=gold%0b",
        "tier=gold%0c",
        "tier=gold%7f",
        "tier=gold%c2%85",
        "tier=gold%c2%a0",
        "tier=%e3%80%80gold",
        "a=1&tier=gold%00&b=2",
        "tier=silver%00",
    ] {
        let why = ambiguous(&m.routes, &m.listeners[0], &view(Some(q), &none));
        assert!(why.is_some(), "{q}");
        assert!(why.unwrap().contains("tier"), "{q}");
    }
    for (q, want) in [
        ("tier=gold", "shop/gold"),
        ("tier=go%6cd", "shop/gold"),
        ("tier=silver", "shop/open"),
        ("tier=gold+plus", "shop/open"),
        ("tier=", "shop/open"),
        ("tier", "shop/open"),
        // Other parameters are not the route's business.
        ("tier=gold&note=%20x%00", "shop/gold"),
    ] {
        assert!(
            ambiguous(&m.routes, &m.listeners[0], &view(Some(q), &none)).is_none(),
            "{q}"
        );
        let got = pick(&m, "GET", "/q/1", Some(q), &[]).map(|(n, _)| n);
        assert_eq!(got.as_deref(), Some(want), "{q}");
    }
}

/// Without a header or query match on the listener, nothing is judged (or decoded): repeats,
/// lists and odd values are the app's business, as before.
#[test]
fn without_header_or_query_matches_nothing_is_ambiguous() {
    let m = model(&route(
        "plain",
        "  rules:\n    - matches: [{path: {type: PathPrefix, value: /q}}]\n      backendRefs: [{name: o, port: 80}]",
    ));
    let h = headers(&[("x-role", b"admin, user"), ("x-role", b" x")]);
    for q in ["tier=gold%00&tier=%20gold", "TIER=1&tier[]=2", "%zz=%zz"] {
        assert!(
            ambiguous(&m.routes, &m.listeners[0], &view(Some(q), &h)).is_none(),
            "{q}"
        );
    }
}
