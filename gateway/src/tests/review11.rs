//! Review 11 (an outside attack on the gateway, black box, with a PHP app behind the sidecar):
//! query names in every spelling PHP and IIS read (F1), `_method` (F2), more edge-owned header
//! families (F6), TRACK/DEBUG and HTTP/2 cookie fields (F9). The end-to-end cases are in
//! `tests/tests/e2e/gateway_review10.rs` and `gateway_abuse.rs`.

use super::*;
use crate::canonical::{canonical_request, edge_owned, has_access_token_param};
use crate::routes::ambiguous;

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> hyper::Request<()> {
    let mut b = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri)
        .header("host", "shop.example");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// F1: PHP drops leading spaces of names (`%20tier` is `tier`), IIS decodes `%u0065`.
#[test]
fn query_names_with_whitespace_or_wide_escapes_are_the_same_name() {
    let text = route("premium", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: tier, value: premium}]}]\n      backendRefs: [{name: o, port: 80}]");
    let m = model(&text);
    let none = HeaderMap::new();
    for q in [
        "tier=free&%20tier=premium",
        "%20tier=premium",
        "+tier=premium",
        "%09tier=premium",
        "%0atier=premium",
        "tier%20=premium",
        "ti%u0065r=premium",
    ] {
        let view = RequestView {
            host: "shop.example",
            method: "GET",
            path: "/q/1",
            query: Some(q),
            headers: &none,
        };
        assert!(
            ambiguous(&m.routes, &m.listeners[0], &view).is_some(),
            "{q}"
        );
    }
    for q in [
        "+access_token=x",
        "%20access_token=x",
        "%09access_token=x",
        "access_token%20=x",
        "access%u005ftoken=x",
    ] {
        assert!(has_access_token_param(Some(q)), "{q}");
    }
}

/// F2: Rails, Laravel and Symfony run the method `_method` names.
#[test]
fn a_method_override_parameter_is_refused() {
    for uri in [
        "/orders/1?_method=DELETE",
        "/orders/1?a=1&_METHOD=put",
        "/o?%5fmethod=x",
    ] {
        let e = canonical_request(&mut request("POST", uri, &[])).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.decision),
            (400, "bad_request"),
            "{uri}"
        );
    }
    assert!(canonical_request(&mut request("GET", "/orders/1?method=x", &[])).is_ok());
}

/// F6: identity, address, scheme and file-serving headers of more proxies and platforms.
#[test]
fn more_edge_owned_header_families_are_removed() {
    let forged = [
        "x-webauth-user",
        "remote-user",
        "remote-groups",
        "remote-email",
        "x-consumer-username",
        "x-consumer-id",
        "x-credential-identifier",
        "x-endpoint-api-userinfo",
        "x-apigateway-api-userinfo",
        "cf-access-authenticated-user-email",
        "cf-access-jwt-assertion",
        "x-appengine-user-email",
        "tailscale-user-login",
        "x-pomerium-claim-email",
        "gap-auth",
        "x-vouch-user",
        "oidc-claim-sub",
        "shib-remote-user",
        "x-ms-token-aad-id-token",
        "x-zumo-auth",
        "x-arr-ssl",
        "x-arr-clientcert",
        "proxy-client-ip",
        "wl-proxy-client-ip",
        "x-originating-ip",
        "https",
        "x-https",
        "x-forwarded",
        "x-sendfile-type",
        "x-accel-mapping",
        "x-user",
        "x-email",
    ];
    let headers: Vec<(&str, &str)> = forged.iter().map(|n| (*n, "forged")).collect();
    let mut req = request("GET", "/orders/1", &headers);
    canonical_request(&mut req).unwrap();
    for name in forged {
        assert!(edge_owned(name), "{name}");
        assert!(
            !req.headers().contains_key(name),
            "{name} reached the backend"
        );
    }
    for kept in [
        "x-user-agent-hint",
        "x-request-id",
        "user-agent",
        "x-auth-token",
    ] {
        assert!(!edge_owned(kept), "{kept}");
    }
}

/// F9: TRACK and DEBUG expose the request like TRACE; HTTP/2 cookie fields become one header.
#[test]
fn echoing_methods_are_refused_and_h2_cookies_are_joined() {
    for m in ["TRACE", "TRACK", "DEBUG"] {
        let e = canonical_request(&mut request(m, "/orders/1", &[])).unwrap_err();
        assert_eq!(e.status.as_u16(), 405, "{m}");
    }
    let mut req = hyper::Request::builder()
        .version(hyper::Version::HTTP_2)
        .uri("http://shop.example/orders/1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    canonical_request(&mut req).unwrap();
    let cookies: Vec<_> = req.headers().get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
}
