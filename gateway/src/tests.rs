//! Admission of the Gateway API subset (a table of bad objects, each refused on its own) and
//! route precedence.

use hyper::HeaderMap;

use crate::load::{judge, CertFiles, Model};
use crate::routes::{choose, pick_weighted, prefix_matches, replace_prefix, RequestView};

struct NoSecrets;
impl pqmesh_policy::Secrets for NoSecrets {
    fn get(&self, _: &str, _: &str, _: &str) -> Option<String> {
        None
    }
}

fn no_certs(_: &str, _: &str) -> Result<CertFiles, String> {
    Err("no certificate in tests".into())
}

const CLASS_AND_GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: pqmesh}
spec: {controllerName: pqmesh.io/gateway}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: pqmesh
  listeners:
    - {name: web, port: 8080, protocol: HTTP}
"#;

fn model(routes: &str) -> Model {
    judge(
        &[
            ("gw.yaml".into(), CLASS_AND_GATEWAY.into()),
            ("routes.yaml".into(), routes.into()),
        ],
        &NoSecrets,
        &no_certs,
    )
}

fn route(name: &str, body: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  parentRefs: [{{name: edge}}]\n{body}\n---\n"
    )
}

fn pick(
    m: &Model,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &[(&str, &str)],
) -> Option<(String, usize)> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let req = RequestView {
        host: "shop.example",
        method,
        path,
        query,
        headers: &h,
    };
    choose(&m.routes, &m.listeners[0], &req).map(|c| (m.routes[c.route].name.clone(), c.rule))
}

#[test]
fn a_valid_configuration_is_accepted() {
    let m = model(&route(
        "a",
        "  rules:\n    - backendRefs: [{name: orders, port: 80}]",
    ));
    assert!(
        m.verdicts
            .iter()
            .all(|v| v.accepted.is_ok() && v.resolved_refs.is_ok()),
        "{:?}",
        m.verdicts
    );
    assert_eq!(m.listeners.len(), 1);
    assert_eq!(m.routes.len(), 1);
}

#[test]
fn each_bad_object_is_refused_alone_with_a_message_naming_why() {
    let table: &[(&str, &str)] = &[
        ("  timeouts: {request: 10s}\n  rules: []", "unknown field `timeouts`"),
        ("  rules:\n    - matches: [{path: {type: RegularExpression, value: \"/a.*\"}}]", "RegularExpression"),
        ("  rules:\n    - matches: [{path: {type: Exact, value: nope}}]", "must start with /"),
        ("  rules:\n    - matches: [{method: FETCH}]", "not an HTTP method"),
        ("  rules:\n    - matches: [{headers: [{type: RegularExpression, name: a, value: b}]}]", "RegularExpression"),
        ("  rules:\n    - filters: [{type: RequestMirror, requestMirror: {}}]", "RequestMirror"),
        ("  rules:\n    - filters: [{type: URLRewrite, requestHeaderModifier: {}}]", "exactly its own field"),
        ("  rules:\n    - matches: [{path: {type: Exact, value: /a}}]\n      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]", "PathPrefix"),
        ("  rules:\n    - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]", "statusCode 307"),
        ("  rules:\n    - backendRefs: [{name: x, port: 80, kind: ServiceImport}]", "only core Services"),
        ("  rules:\n    - backendRefs: [{name: x, port: 80, weight: 2000000}]", "weight above"),
    ];
    for (body, why) in table {
        let text = route("bad", body)
            + &route(
                "good",
                "  rules:\n    - backendRefs: [{name: orders, port: 80}]",
            );
        let m = model(&text);
        let bad = m
            .verdicts
            .iter()
            .find(|v| v.name == "shop/bad")
            .unwrap_or_else(|| panic!("{body}: no verdict"));
        let message = bad.accepted.as_ref().expect_err(body);
        assert!(message.contains(why), "{body}: {message}");
        assert_eq!(
            m.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["shop/good"],
            "{body}"
        );
    }
}

#[test]
fn gateways_of_other_classes_listeners_and_policies_are_judged_alone() {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec: {gatewayClassName: istio, listeners: [{name: a, port: 81, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls, namespace: shop}
spec:
  gatewayClassName: pqmesh
  listeners:
    - {name: secure, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}}
    - {name: plain, port: 8081, protocol: HTTP}
    - {name: pq, port: 8444, protocol: HTTPS, tls: {certificateRefs: [{name: x}], options: {pqmesh.io/key-exchange: sometimes}}}
---
apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {name: p, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: nothing}
  rateLimit: {key: sourceIP, requests: 5}
---
apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {name: q, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: elsewhere}
  token: {issuer: corp, scopes: [orders:read]}
  rateLimit: {key: claim, requests: 5}
---
apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {name: r, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: a}
  token: {issuer: corp, scopes: [orders:read]}
"#;
    let m = model(&(text.to_owned() + "---\n" + &route("a", "  rules: []")));
    let of = |n: &str| m.verdicts.iter().find(|v| v.name == n).unwrap().clone();
    assert!(of("shop/other")
        .accepted
        .as_ref()
        .unwrap_err()
        .contains("gatewayClassName \"istio\""));
    let tls = of("shop/tls");
    assert!(tls.accepted.is_ok());
    let refs = tls.resolved_refs.unwrap_err();
    assert!(
        refs.contains("listener secure: Secret shop/missing")
            && refs.contains("listener pq: tls.options"),
        "{refs}"
    );
    assert_eq!(
        m.listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["web", "plain"]
    );
    assert!(of("shop/p")
        .accepted
        .unwrap_err()
        .contains("no HTTPRoute shop/nothing"));
    assert!(of("shop/q").accepted.unwrap_err().contains("needs `claim`"));
    let r = of("shop/r");
    assert!(r.accepted.is_ok());
    assert!(r
        .resolved_refs
        .unwrap_err()
        .contains("no accepted TokenIssuer shop/corp"));
    let edge = m.routes[0]
        .edge
        .as_ref()
        .expect("the policy is in force, failing closed");
    assert!(edge.issuer.is_none());
}

#[test]
fn precedence_follows_the_gateway_api() {
    let text = route("b-prefix", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /orders}}]\n      backendRefs: [{name: o, port: 80}]")
        + &route("a-long", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /orders/eu}}]\n      backendRefs: [{name: o, port: 80}]")
        + &route("exact", "  rules:\n    - matches: [{path: {type: Exact, value: /orders/eu}}]\n      backendRefs: [{name: o, port: 80}]")
        + &route("method", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /orders}, method: POST}]\n      backendRefs: [{name: o, port: 80}]")
        + &route("headers", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /orders}, headers: [{name: x-v, value: \"2\"}]}]\n    - matches: [{path: {type: PathPrefix, value: /orders}, queryParams: [{name: v, value: \"2\"}], headers: [{name: x-a, value: \"1\"}]}]\n      backendRefs: [{name: o, port: 80}]")
        + &route("query", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /orders}, queryParams: [{name: v, value: \"2\"}]}]\n      backendRefs: [{name: o, port: 80}]")
        + &route("twin", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /orders}}]\n      backendRefs: [{name: o, port: 80}]");
    let m = model(&text);
    let name = |method, path, q, h: &[(&str, &str)]| pick(&m, method, path, q, h).map(|(n, _)| n);
    assert_eq!(
        name("GET", "/orders/eu", None, &[]).as_deref(),
        Some("shop/exact")
    );
    assert_eq!(
        name("GET", "/orders/eu/1", None, &[]).as_deref(),
        Some("shop/a-long")
    );
    // Equal prefixes: alphabetical among routes without timestamps (b-prefix before twin).
    assert_eq!(
        name("GET", "/orders/1", None, &[]).as_deref(),
        Some("shop/b-prefix")
    );
    assert_eq!(
        name("POST", "/orders/1", None, &[]).as_deref(),
        Some("shop/method")
    );
    assert_eq!(
        name("GET", "/orders/1", None, &[("x-v", "2")]).as_deref(),
        Some("shop/headers")
    );
    assert_eq!(
        name("GET", "/orders/1", Some("v=2"), &[]).as_deref(),
        Some("shop/query")
    );
    // More header matches beat query matches.
    assert_eq!(
        pick(&m, "GET", "/orders/1", Some("v=2"), &[("x-a", "1")]),
        Some(("shop/headers".into(), 1))
    );
    assert_eq!(
        name("GET", "/ordersX", None, &[]),
        None,
        "prefixes match whole segments"
    );
    assert_eq!(name("GET", "/other", None, &[]), None);
}

#[test]
fn an_older_route_wins_a_tie() {
    let old = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: z-old, namespace: shop, creationTimestamp: \"2024-01-01T00:00:00Z\"}\nspec:\n  parentRefs: [{name: edge}]\n  rules: [{backendRefs: [{name: o, port: 80}]}]\n---\n";
    let m = model(&(route("a-new", "  rules: [{backendRefs: [{name: o, port: 80}]}]") + old));
    assert_eq!(pick(&m, "GET", "/", None, &[]).unwrap().0, "shop/z-old");
}

#[test]
fn hostnames_more_specific_first() {
    let text = route("any", "  rules: [{backendRefs: [{name: o, port: 80}]}]")
        + &route(
            "wild",
            "  hostnames: [\"*.example\"]\n  rules: [{backendRefs: [{name: o, port: 80}]}]",
        )
        + &route(
            "other",
            "  hostnames: [other.test]\n  rules: [{backendRefs: [{name: o, port: 80}]}]",
        );
    let m = model(&text);
    assert_eq!(pick(&m, "GET", "/", None, &[]).unwrap().0, "shop/wild");
}

#[test]
fn path_helpers() {
    assert!(prefix_matches("/", "/x"));
    assert!(prefix_matches("/a/", "/a"));
    assert!(!prefix_matches("/a", "/ab"));
    assert_eq!(
        replace_prefix("/api/v1/orders", "/api/v1", "/v2"),
        "/v2/orders"
    );
    assert_eq!(replace_prefix("/api/orders", "/api", "/"), "/orders");
    assert_eq!(replace_prefix("/api", "/api", "/"), "/");
    assert_eq!(pick_weighted(&[0, 0], 0.5), None);
    assert_eq!(pick_weighted(&[1, 3], 0.0), Some(0));
    assert_eq!(pick_weighted(&[1, 3], 0.3), Some(1));
    assert_eq!(pick_weighted(&[0, 5], 0.99), Some(1));
}

#[test]
fn settings_are_parsed_once_and_errors_name_the_variable() {
    use std::collections::HashMap;
    let base: HashMap<String, String> = [
        ("PQMESH_GATEWAY_DIR", "/gw"),
        ("PQMESH_CONTROL_PLANE_ADDR", "127.0.0.1:15012"),
        ("PQMESH_TRUST_BUNDLE", "/b.pem"),
        ("PQMESH_BOOTSTRAP_TOKEN", "tok"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let c = crate::config::Config::from_env(&base).unwrap();
    assert_eq!(c.dir, std::path::PathBuf::from("/gw"));
    assert_eq!(c.listen_host.to_string(), "0.0.0.0");
    assert_eq!(
        c.kx,
        pqmesh_mtls::KeyExchangePolicy::HybridOnly,
        "the mesh side is hybrid-only by default"
    );
    let bad: &[(&str, &str, &str)] = &[
        (
            "PQMESH_GATEWAY_LISTEN_HOST",
            "nowhere",
            "PQMESH_GATEWAY_LISTEN_HOST=\"nowhere\"",
        ),
        ("PQMESH_KEY_ALG", "rsa", "PQMESH_KEY_ALG=\"rsa\""),
        (
            "PQMESH_ALLOW_CLASSICAL_KX",
            "maybe",
            "PQMESH_ALLOW_CLASSICAL_KX=\"maybe\"",
        ),
        ("PQMESH_BOOTSTRAP_TOKEN_FILE", "/t", "not both"),
    ];
    for (k, v, want) in bad {
        let mut env = base.clone();
        env.insert(k.to_string(), v.to_string());
        let e = crate::config::Config::from_env(&env)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{k}={v}: {e}");
    }
    let mut env = base.clone();
    env.remove("PQMESH_GATEWAY_DIR");
    assert!(crate::config::Config::from_env(&env)
        .unwrap_err()
        .to_string()
        .starts_with("PQMESH_GATEWAY_DIR"));
}

#[test]
fn listeners_share_a_port_only_with_one_protocol_and_distinct_hostnames() {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: more, namespace: shop}
spec:
  gatewayClassName: pqmesh
  listeners:
    - {name: a, port: 8080, protocol: HTTP, hostname: a.example}
    - {name: same, port: 8080, protocol: HTTP}
    - {name: b, port: 9090, protocol: HTTP, hostname: b.example}
    - {name: c, port: 9090, protocol: HTTP, hostname: "*.example"}
"#;
    let m = judge(
        &[
            ("gw.yaml".into(), CLASS_AND_GATEWAY.into()),
            ("more.yaml".into(), text.into()),
        ],
        &NoSecrets,
        &no_certs,
    );
    let names: Vec<_> = m.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["web", "a", "b", "c"]);
    let refs = m
        .verdicts
        .iter()
        .find(|v| v.name == "shop/more")
        .unwrap()
        .resolved_refs
        .clone()
        .unwrap_err();
    assert!(
        refs.contains("listener same: port 8080 is already served by shop/edge listener web"),
        "{refs}"
    );
    let pick = |host: &str| {
        crate::routes::listener_for(&m.listeners, &[2, 3], host)
            .map(|i| m.listeners[i].name.clone())
    };
    assert_eq!(pick("b.example").as_deref(), Some("b"));
    assert_eq!(pick("x.example").as_deref(), Some("c"));
    assert_eq!(pick("other.test"), None);
}

// ---- Review 7 (outside attack on the gateway) ----

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
    use crate::proxy::canonical_request;
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
    use crate::proxy::canonical_request;
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
    use crate::proxy::has_access_token_param;
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

fn verdict(m: &Model, name: &str) -> crate::load::Verdict {
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
    assert!(verdict(&m, "shop/typo-edge")
        .accepted
        .unwrap_err()
        .contains("unknown field `scope`"));
    for (route, policy) in [
        ("shop/typo", "shop/typo-edge"),
        ("shop/zero", "shop/zero-edge"),
    ] {
        let why = closed(&m, route).unwrap_or_else(|| panic!("{route} is served unprotected"));
        assert!(why.contains(policy), "{why}");
        let refs = verdict(&m, route).resolved_refs.unwrap_err();
        assert!(refs.contains(policy) && refs.contains("503"), "{refs}");
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
        let a = verdict(&m, "shop/orders-edge").accepted.unwrap_err();
        assert!(
            a.contains("Conflicted") && a.contains("shop/aaa-orders-edge2"),
            "{a}"
        );
        let b = verdict(&m, "shop/aaa-orders-edge2").accepted.unwrap_err();
        assert!(b.contains("sets neither token nor rateLimit"), "{b}");
        assert!(closed(&m, "shop/orders").unwrap().contains("Conflicted"));
    }
    let m = model(
        &(route("orders", backend)
            + &edge_policy("one", "orders", TOKEN_ISSUER_REF)
            + &edge_policy("two", "orders", TOKEN_ISSUER_REF)),
    );
    assert!(verdict(&m, "shop/one")
        .accepted
        .unwrap_err()
        .contains("shop/two"));
    assert!(verdict(&m, "shop/two")
        .accepted
        .unwrap_err()
        .contains("shop/one"));
    assert!(closed(&m, "shop/orders").is_some());
    let m = model(&(route("orders", backend) + &edge_policy("empty", "orders", "")));
    assert!(closed(&m, "shop/orders").unwrap().contains("shop/empty"));
}

/// F4: routes from another namespace attach only where `allowedRoutes` admits them, and a
/// backendRef into another namespace is RefNotPermitted.
#[test]
fn cross_namespace_routes_and_backends_need_permission() {
    let steal = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: steal, namespace: other}\nspec:\n  parentRefs: [{name: edge, namespace: shop}]\n  rules:\n    - matches: [{path: {type: Exact, value: /admin/1}}]\n      backendRefs: [{name: api, port: 80}]\n---\n";
    let admin = route("admin", "  rules:\n    - matches: [{path: {type: PathPrefix, value: /admin}}]\n      backendRefs: [{name: api, port: 80}]");
    let m = model(&(steal.to_owned() + &admin));
    let v = verdict(&m, "other/steal");
    assert!(v.accepted.unwrap_err().contains("NotAllowedByListeners"));
    assert_eq!(
        pick(&m, "GET", "/admin/1", None, &[]).unwrap().0,
        "shop/admin"
    );

    let all = CLASS_AND_GATEWAY.replace(
        "{name: web, port: 8080, protocol: HTTP}",
        "{name: web, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
    );
    let m = judge(
        &[
            ("gw.yaml".into(), all),
            ("r.yaml".into(), steal.to_owned() + &admin),
        ],
        &NoSecrets,
        &no_certs,
    );
    assert!(verdict(&m, "other/steal").accepted.is_ok());
    assert_eq!(
        pick(&m, "GET", "/admin/1", None, &[]).unwrap().0,
        "other/steal"
    );

    let selector = CLASS_AND_GATEWAY.replace(
        "{name: web, port: 8080, protocol: HTTP}",
        "{name: web, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {a: b}}}}}",
    );
    let m = judge(&[("gw.yaml".into(), selector)], &NoSecrets, &no_certs);
    assert!(verdict(&m, "shop/edge")
        .resolved_refs
        .unwrap_err()
        .contains("Selector is not supported"));
    assert!(m.listeners.is_empty());

    let cross = route(
        "cross",
        "  rules:\n    - backendRefs: [{name: api, namespace: other, port: 80}]",
    );
    let m = model(&cross);
    let v = verdict(&m, "shop/cross");
    assert!(v.accepted.is_ok());
    assert!(v.resolved_refs.unwrap_err().contains("RefNotPermitted"));
}

/// F1 (rewrites): a URLRewrite or redirect value the sidecar would resolve differently is refused.
#[test]
fn path_modifier_values_must_be_normal_paths() {
    for v in ["/orders/..", "/a//b", "/a/./b", "/%2e%2e/admin"] {
        let body = format!("  rules:\n    - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]\n      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: \"{v}\"}}}}}}]\n      backendRefs: [{{name: o, port: 80}}]");
        let m = model(&route("rw", &body));
        assert!(
            verdict(&m, "shop/rw")
                .accepted
                .unwrap_err()
                .contains("not a normal path"),
            "{v}"
        );
    }
}
