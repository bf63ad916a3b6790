//! Review 7 (an outside attack on the gateway): the request made canonical before routing,
//! EdgePolicies that fail closed, cross-namespace references, path modifiers.

use super::*;

fn request(version: hyper::Version, uri: &str, headers: &[(&str, &str)]) -> hyper::Request<()> {
    let mut b = hyper::Request::builder().version(version).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// F1: the path routing and the EdgePolicy judge is the sidecar's normal form of it, and what the
/// sidecar refuses is refused before any route is chosen.
#[test]
fn requests_are_made_canonical_before_routing() {
    use crate::canonical::canonical_request;
    let h1 = hyper::Version::HTTP_11;
    let host = [("host", "shop.example")];
    for (uri, want) in [
        ("/orders/../admin/2", "/admin/2"),
        ("/orders/%2e%2e/admin/2", "/admin/2"),
        ("/orders/%2E%2e/admin/2", "/admin/2"),
        ("/orders/.%2e/admin/2", "/admin/2"),
        ("/orders//../admin/2", "/admin/2"),
        ("/orders/./../admin/2", "/admin/2"),
        ("/orders//x/./y/", "/orders/x/y/"),
        ("/orders/%7euser", "/orders/~user"),
        ("http://shop.example/orders/../admin/2", "/admin/2"),
    ] {
        let t = canonical_request(&mut request(h1, uri, &host)).unwrap();
        assert_eq!(t.path, want, "{uri}");
        assert_eq!(t.host, "shop.example", "{uri}");
    }
    // HTTP/2 `:path`.
    let mut r = request(
        hyper::Version::HTTP_2,
        "http://shop.example/orders/%2e%2e/admin/2?a=1",
        &[],
    );
    let t = canonical_request(&mut r).unwrap();
    assert_eq!(
        (t.path.as_str(), t.query.as_deref()),
        ("/admin/2", Some("a=1"))
    );
    for uri in [
        "/orders/%2fadmin",
        "/orders/..%2fadmin",
        "/orders/..;/admin",
        "/orders/%252e%252e/admin",
        "/../admin",
        "/orders/%5cadmin",
    ] {
        let e = canonical_request(&mut request(h1, uri, &host)).unwrap_err();
        assert_eq!((e.status.as_u16(), e.decision), (400, "bad_path"), "{uri}");
    }
}

/// F7-F9: one host, no URL overrides, one Authorization, hop-by-hop removed before the policy,
/// and the client's forwarding headers dropped.
#[test]
fn the_head_is_made_canonical_as_the_sidecar_does_and_edge_headers_are_the_edges() {
    use crate::canonical::canonical_request;
    let h1 = hyper::Version::HTTP_11;
    let h2 = hyper::Version::HTTP_2;
    type Case<'a> = (hyper::Version, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let refused: &[Case] = &[
        (
            h2,
            "http://shop.example/x",
            &[("host", "evil.example")],
            "differs",
        ),
        (
            h1,
            "http://shop.example/x",
            &[("host", "evil.example")],
            "differs",
        ),
        (
            h1,
            "/x",
            &[("host", "a"), ("x-original-url", "/admin/1")],
            "x-original-url",
        ),
        (
            h1,
            "/x",
            &[("host", "a"), ("x-rewrite-url", "/admin/1")],
            "x-rewrite-url",
        ),
        (
            h1,
            "/x",
            &[("host", "a"), ("x-http-method-override", "DELETE")],
            "method-override",
        ),
        (
            h1,
            "/x",
            &[
                ("host", "a"),
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b"),
            ],
            "more than one Authorization",
        ),
        (
            h1,
            "/x",
            &[("host", "a"), ("x_pqmesh_peer_identity", "spiffe://x")],
            "'_'",
        ),
    ];
    for (v, uri, headers, why) in refused {
        let e = canonical_request(&mut request(*v, uri, headers)).unwrap_err();
        assert_eq!(e.status.as_u16(), 400, "{uri} {headers:?}");
        assert!(e.text.contains(why), "{headers:?}: {}", e.text);
    }
    let t = canonical_request(&mut request(
        h2,
        "http://shop.example/x",
        &[("host", "shop.example")],
    ))
    .unwrap();
    assert_eq!(t.authority, "shop.example");
    let mut r = request(
        h1,
        "/x",
        &[
            ("host", "shop.example:8080"),
            ("connection", "close, authorization"),
            ("authorization", "Bearer t"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            (
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/shop/sa/admin",
            ),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-proto", "http"),
            ("x-pqmesh-peer-identity", "spoofed"),
            ("x-kept", "1"),
        ],
    );
    let t = canonical_request(&mut r).unwrap();
    assert_eq!(
        (t.host.as_str(), t.authority.as_str()),
        ("shop.example", "shop.example:8080")
    );
    let left: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        left,
        ["host", "x-kept"],
        "authorization was named hop-by-hop"
    );
}

/// F10.
#[test]
fn access_token_query_parameters_are_found_in_any_spelling() {
    use crate::canonical::has_access_token_param;
    for q in [
        "access_token=x",
        "a=1&access_token=x",
        "access%5Ftoken=x",
        "access_token",
        "%61ccess_token=1",
    ] {
        assert!(has_access_token_param(Some(q)), "{q}");
    }
    for q in ["access_tokens=x", "a=access_token", "token=x"] {
        assert!(!has_access_token_param(Some(q)), "{q}");
    }
    assert!(!has_access_token_param(None));
}

const TOKEN_ISSUER_REF: &str = "  token: {issuer: corp, scopes: [admin]}\n";

fn edge_policy(name: &str, target: &str, body: &str) -> String {
    format!(
        "apiVersion: pqmesh.io/v1alpha1\nkind: EdgePolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {target}}}\n{body}---\n"
    )
}

fn verdict_named(m: &Model, name: &str) -> crate::load::Verdict {
    m.verdicts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no verdict for {name}: {:?}", m.verdicts))
        .clone()
}

fn closed(m: &Model, route: &str) -> Option<String> {
    m.routes
        .iter()
        .find(|r| r.name == route)
        .unwrap()
        .closed
        .clone()
}

/// F2: a refused EdgePolicy closes the route it targets (503), with the reason in the verdicts.
#[test]
fn a_refused_edge_policy_closes_its_route() {
    let backend = "  rules:\n    - backendRefs: [{name: orders, port: 80}]";
    let text = route("typo", backend)
        + &edge_policy(
            "typo-edge",
            "typo",
            "  token: {issuer: corp, scope: [admin]}\n",
        )
        + &route("zero", backend)
        + &edge_policy(
            "zero-edge",
            "zero",
            &format!("{TOKEN_ISSUER_REF}  rateLimit: {{key: clientId, requests: 0}}\n"),
        )
        + &route("open", backend);
    let m = model(&text);
    assert!(verdict_named(&m, "shop/typo-edge")
        .accepted
        .unwrap_err()
        .contains("unknown field `scope`"));
    for (route, policy) in [
        ("shop/typo", "shop/typo-edge"),
        ("shop/zero", "shop/zero-edge"),
    ] {
        let why = closed(&m, route).unwrap_or_else(|| panic!("{route} is served unprotected"));
        assert!(why.contains(policy), "{why}");
        let v = verdict_named(&m, route);
        let refs = v.resolved_refs.unwrap_err();
        assert!(refs.contains(policy) && refs.contains("503"), "{refs}");
        // Kubernetes mode's status shows it on the route's parent entry.
        let (reason, message) = v.parents[0].resolved_refs.clone().unwrap_err();
        assert_eq!(reason, "EdgePolicyRefused");
        assert!(message.contains(policy), "{message}");
    }
    assert_eq!(
        closed(&m, "shop/open"),
        None,
        "a route no policy names is not affected"
    );
}

/// F3: two EdgePolicies on one route: both Conflicted (naming the other), the route closed, read
/// order irrelevant; an EdgePolicy that sets nothing is refused (and so closes its route).
#[test]
fn edge_policies_on_the_same_route_conflict_and_an_empty_one_is_refused() {
    let backend = "  rules:\n    - backendRefs: [{name: orders, port: 80}]";
    for order in [0, 1] {
        let real = edge_policy("orders-edge", "orders", TOKEN_ISSUER_REF);
        let empty = edge_policy("aaa-orders-edge2", "orders", "");
        let policies = if order == 0 {
            real + &empty
        } else {
            empty + &real
        };
        let m = model(&(route("orders", backend) + &policies));
        let a = verdict_named(&m, "shop/orders-edge").accepted.unwrap_err();
        assert!(
            a.contains("Conflicted") && a.contains("shop/aaa-orders-edge2"),
            "{a}"
        );
        let b = verdict_named(&m, "shop/aaa-orders-edge2")
            .accepted
            .unwrap_err();
        assert!(b.contains("sets neither token nor rateLimit"), "{b}");
        assert!(closed(&m, "shop/orders").unwrap().contains("Conflicted"));
    }
    let m = model(
        &(route("orders", backend)
            + &edge_policy("one", "orders", TOKEN_ISSUER_REF)
            + &edge_policy("two", "orders", TOKEN_ISSUER_REF)),
    );
    assert!(verdict_named(&m, "shop/one")
        .accepted
        .unwrap_err()
        .contains("shop/two"));
    assert!(verdict_named(&m, "shop/two")
        .accepted
        .unwrap_err()
        .contains("shop/one"));
    assert!(closed(&m, "shop/orders").is_some());
    assert_eq!(verdict_named(&m, "shop/one").accepted_reason, "Conflicted");
    let route_verdict = verdict_named(&m, "shop/orders");
    assert_eq!(route_verdict.refs_reason, "Conflicted");
    assert_eq!(
        route_verdict.parents[0]
            .resolved_refs
            .as_ref()
            .unwrap_err()
            .0,
        "Conflicted"
    );
    let m = model(&(route("orders", backend) + &edge_policy("empty", "orders", "")));
    assert!(closed(&m, "shop/orders").unwrap().contains("shop/empty"));
}

/// F4: a route from another namespace does not attach (`allowedRoutes` is served only as its
/// default, `Same`: a listener asking for `All` or `Selector` is left out, failing closed), and a
/// backendRef into another namespace is RefNotPermitted.
#[test]
fn cross_namespace_routes_and_backends_need_permission() {
    let steal = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: steal, namespace: other}\nspec:\n  parentRefs: [{name: edge, namespace: shop}]\n  rules:\n    - matches: [{path: {type: Exact, value: /admin/1}}]\n      backendRefs: [{name: api, port: 80}]\n---\n";
    let admin = route("admin", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /admin}}]\n      backendRefs: [{name: api, port: 80}]");
    let m = model(&(steal.to_owned() + &admin));
    let v = verdict_named(&m, "other/steal");
    assert!(v.accepted.unwrap_err().contains("NotAllowedByListeners"));
    assert_eq!(
        v.parents[0].accepted.as_ref().unwrap_err().0,
        "NotAllowedByListeners"
    );
    assert_eq!(
        pick(&m, "GET", "/admin/1", None, &[]).unwrap().0,
        "shop/admin"
    );

    for from in [
        "{from: All}",
        "{from: Selector, selector: {matchLabels: {a: b}}}",
    ] {
        let gw = CLASS_AND_GATEWAY.replace(
            "{name: web, port: 8080, protocol: HTTP}",
            &format!(
                "{{name: web, port: 8080, protocol: HTTP, allowedRoutes: {{namespaces: {from}}}}}"
            ),
        );
        let m = judge(
            &[
                ("gw.yaml".into(), gw),
                ("r.yaml".into(), steal.to_owned() + &admin),
            ],
            &NoSecrets,
            &no_certs,
        );
        let g = verdict_named(&m, "shop/edge");
        assert_eq!(
            g.listeners[0].accepted.as_ref().unwrap_err().0,
            "UnsupportedValue",
            "{from}"
        );
        assert!(g.resolved_refs.unwrap_err().contains("only Same"), "{from}");
        assert!(m.listeners.is_empty(), "{from}");
        assert!(verdict_named(&m, "other/steal").accepted.is_err(), "{from}");
    }

    let cross = route(
        "cross",
        "  rules:\n    - backendRefs: [{name: api, namespace: other, port: 80}]",
    );
    let m = model(&cross);
    let v = verdict_named(&m, "shop/cross");
    assert!(v.accepted.is_ok());
    assert_eq!(v.refs_reason, "RefNotPermitted");
    assert_eq!(
        v.parents[0].resolved_refs.as_ref().unwrap_err().0,
        "RefNotPermitted"
    );
    let refs = v.resolved_refs.unwrap_err();
    assert!(
        refs.contains("RefNotPermitted") && refs.contains("other/api") && refs.contains("500"),
        "{refs}"
    );
}

/// F1 (rewrites): a URLRewrite or redirect value the sidecar would resolve differently is refused.
#[test]
fn path_modifier_values_must_be_normal_paths() {
    for v in ["/orders/..", "/a//b", "/a/./b", "/%2e%2e/admin"] {
        let body = format!("  rules:\n    - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]\n      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: \"{v}\"}}}}}}]\n      backendRefs: [{{name: o, port: 80}}]");
        let m = model(&route("rw", &body));
        assert!(
            verdict_named(&m, "shop/rw")
                .accepted
                .unwrap_err()
                .contains("not a normal path"),
            "{v}"
        );
    }
}
