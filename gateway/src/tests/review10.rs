//! Review 10 (an outside attack on the gateway, black box): query matches read as apps read
//! them (F6), the edge owns every forwarding and identity header family (F7), every spelling
//! of `access_token` (F8), the authority checked with the Host grammar (F9). The end-to-end
//! cases, judged by the app, are in `tests/tests/e2e/gateway_review10.rs`.

use super::*;
use crate::canonical::{
    canonical_authority, canonical_request, edge_owned, has_access_token_param,
};
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

/// F6: `tier=premium` (protected) and `tier=free` (open). The route used to read the first raw
/// occurrence while Werkzeug read the decoded first, PHP the last and ASP.NET any case.
#[test]
fn a_matched_query_parameter_has_one_reading_or_the_request_is_refused() {
    let text = route("premium", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: tier, value: premium}]}]\n      backendRefs: [{name: o, port: 80}]")
        + &route("free", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: tier, value: free}], headers: [{name: x-plan, value: basic}]}]\n      backendRefs: [{name: o, port: 80}]");
    let m = model(&text);
    let none = HeaderMap::new();
    for q in [
        "ti%65r=premium&tier=free",
        "tier=free&tier=premium",
        "tier=free&TIER=premium",
        "TIER=premium",
        "tier=free;tier=premium",
        "tier[]=premium",
        "tier%00=premium&tier=free",
    ] {
        assert!(
            ambiguous(&m.routes, &m.listeners[0], &view(Some(q), &none)).is_some(),
            "{q}"
        );
    }
    let mut twice = HeaderMap::new();
    twice.append("x-plan", "basic".parse().unwrap());
    twice.append("x-plan", "gold".parse().unwrap());
    assert!(ambiguous(&m.routes, &m.listeners[0], &view(None, &twice)).is_some());
    // One plain reading: matched on the decoded value.
    for (q, want) in [
        ("tier=premium", Some("shop/premium")),
        ("tier=prem%69um", Some("shop/premium")),
        ("a=1&tier=premium&b=2", Some("shop/premium")),
        ("tier=gold", None),
    ] {
        assert!(
            ambiguous(&m.routes, &m.listeners[0], &view(Some(q), &none)).is_none(),
            "{q}"
        );
        let got = pick(&m, "GET", "/q/1", Some(q), &[]).map(|(n, _)| n);
        assert_eq!(got.as_deref(), want, "{q}");
    }
    // Names no route matches on may repeat.
    assert!(ambiguous(&m.routes, &m.listeners[0], &view(Some("a=1&a=2"), &none)).is_none());
}

/// F7: each header the reviewer forged reached the app; the edge now removes them all.
#[test]
fn the_edge_owns_forwarding_identity_and_original_url_headers() {
    let forged = [
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-forwarded-protocol",
        "x-scheme",
        "x-url-scheme",
        "front-end-https",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "client-ip",
        "x-original-forwarded-for",
        "x-envoy-external-address",
        "x-proxyuser-ip",
        "x-remote-addr",
        "x-remote-ip",
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-remote-user",
        "x-authenticated-user",
        "x-amzn-oidc-identity",
        "x-amzn-oidc-data",
        "x-ms-client-principal-name",
        "x-goog-authenticated-user-email",
        "x-userinfo",
        "x-jwt-payload",
        "x-ssl-client-cert",
        "ssl-client-cert",
        "x-client-cert",
        "x-spiffe-id",
        "x-original-uri",
        "x-forwarded-uri",
        "x-forwarded-path",
        "x-envoy-original-path",
        "x-original-host",
        "x-host",
        "x-http-host-override",
        "x-forwarded-server",
        "via",
    ];
    let mut headers: Vec<(&str, &str)> = forged.iter().map(|n| (*n, "forged")).collect();
    headers.push(("host", "shop.example"));
    headers.push(("x-request-id", "kept"));
    let mut b = hyper::Request::builder().uri("/orders/1");
    for (k, v) in &headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).unwrap();
    canonical_request(&mut req).unwrap();
    for name in forged {
        assert!(edge_owned(name), "{name}");
        assert!(
            !req.headers().contains_key(name),
            "{name} reached the backend"
        );
    }
    assert_eq!(req.headers()["x-request-id"], "kept");
    for kept in [
        "accept",
        "x-request-id",
        "x-version",
        "authorization",
        "cookie",
    ] {
        assert!(!edge_owned(kept), "{kept}");
    }
}

/// F8: spellings of `access_token` that some app framework reads as one.
#[test]
fn every_spelling_of_an_access_token_parameter_is_found() {
    for q in [
        "ACCESS_TOKEN=x",
        "Access_Token=x",
        "access_token[]=x",
        "access_token[0]=x",
        "access.token=x",
        "access+token=x",
        "access%20token=x",
        "a=1;access_token=x",
        "access_token%00=x",
        "access%5Ftoken=x",
        "access_token",
    ] {
        assert!(has_access_token_param(Some(q)), "{q}");
    }
    for q in [
        "access_tokens=x",
        "token=x",
        "a=access_token",
        "xaccess_token=1",
    ] {
        assert!(!has_access_token_param(Some(q)), "{q}");
    }
}

/// F9: the authority as the Host grammar allows it, lower-cased, or refused.
#[test]
fn the_authority_is_checked_with_the_host_grammar() {
    for (raw, host, authority) in [
        ("shop.example", "shop.example", "shop.example"),
        ("SHOP.Example:8443", "shop.example", "shop.example:8443"),
        ("[::1]:443", "[::1]", "[::1]:443"),
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("shop.example:0080", "shop.example", "shop.example:80"),
    ] {
        assert_eq!(
            canonical_authority(raw).unwrap(),
            (host.to_owned(), authority.to_owned()),
            "{raw}"
        );
    }
    for raw in [
        "evil.com:443@shop.example",
        "evil@shop.example",
        "shop.example:abc",
        "shop.example:99999",
        "shop.example:",
        "shop.example:1:2",
        "[::1",
        "[zz]:1",
        "shop example",
        ":443",
    ] {
        assert!(canonical_authority(raw).is_err(), "{raw}");
    }
    // HTTP/2 `:authority` with userinfo.
    let mut req = hyper::Request::builder()
        .version(hyper::Version::HTTP_2)
        .uri("http://evil.com:443@shop.example/x")
        .body(())
        .unwrap();
    assert_eq!(
        canonical_request(&mut req).unwrap_err().status.as_u16(),
        400
    );
    // The forwarded Host is the canonical authority.
    let mut req = hyper::Request::builder()
        .uri("http://SHOP.example/x")
        .header("host", "shop.EXAMPLE")
        .body(())
        .unwrap();
    let t = canonical_request(&mut req).unwrap();
    assert_eq!(
        (t.host.as_str(), t.authority.as_str()),
        ("shop.example", "shop.example")
    );
    assert_eq!(req.headers()["host"], "shop.example");
}

/// F5: methods in another case never reach routing; TRACE would echo the exchanged JWT.
#[test]
fn lower_case_methods_and_trace_are_refused() {
    for (m, want) in [("delete", 400), ("Delete", 400), ("TRACE", 405)] {
        let mut req = hyper::Request::builder()
            .method(hyper::Method::from_bytes(m.as_bytes()).unwrap())
            .uri("/orders/1")
            .header("host", "shop.example")
            .body(())
            .unwrap();
        let e = canonical_request(&mut req).unwrap_err();
        assert_eq!((e.status.as_u16(), e.decision), (want, "bad_method"), "{m}");
    }
}
