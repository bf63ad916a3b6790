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
        // The refused route is served only as its placeholder, closed (review 10, F1).
        assert_eq!(
            m.routes
                .iter()
                .filter(|r| r.closed.is_none())
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
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
    // A missing target is a missing reference (review 10): ResolvedRefs=False, saying so.
    let p = of("shop/p");
    assert!(p.accepted.is_ok());
    assert!(p
        .resolved_refs
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
    assert_eq!(
        c.source,
        crate::config::Source::Local(std::path::PathBuf::from("/gw"))
    );
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
    // --kubernetes: no directory, and a directory with it is refused.
    let k = crate::config::Config::from_settings(true, &env).unwrap();
    assert_eq!(k.source, crate::config::Source::Kubernetes);
    let e = crate::config::Config::from_settings(true, &base)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exclude each other"), "{e}");
    let parsed = crate::config::parse(["--kubernetes"], &env).unwrap();
    assert_eq!(parsed.source, crate::config::Source::Kubernetes);
}

fn verdict<'a>(m: &'a Model, kind: &str, name: &str) -> &'a crate::load::Verdict {
    m.verdicts
        .iter()
        .find(|v| v.kind == kind && v.name == name)
        .unwrap_or_else(|| panic!("no verdict for {kind} {name}: {:?}", m.verdicts))
}

#[test]
fn each_parent_ref_and_backend_ref_gets_its_gateway_api_reason() {
    let routes = [
        route("ok", "  rules:\n    - backendRefs: [{name: orders, port: 80}]"),
        route(
            "kind",
            "  rules:\n    - backendRefs: [{name: x, port: 80, kind: ServiceImport}]",
        ),
        route(
            "other-ns",
            "  rules:\n    - backendRefs: [{name: x, namespace: bank, port: 80}]",
        ),
        route("missing", "  rules:\n    - backendRefs: [{name: gone, port: 80}]"),
        route(
            "section",
            "  rules: []",
        )
        .replace("[{name: edge}]", "[{name: edge, sectionName: nope}]"),
        route("host", "  hostnames: [other.test]\n  rules: []"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: foreign, namespace: evil}\nspec:\n  parentRefs: [{name: edge, namespace: shop}]\n---\n".to_owned(),
    ]
    .concat();
    let gw = CLASS_AND_GATEWAY.replace(
        "    - {name: web, port: 8080, protocol: HTTP}",
        "    - {name: web, port: 8080, protocol: HTTP, hostname: shop.example}",
    );
    let mut m = judge(
        &[("gw.yaml".into(), gw), ("routes.yaml".into(), routes)],
        &NoSecrets,
        &no_certs,
    );
    crate::load::check_backends(&mut m, &|s, p| s == "shop/orders" && p == 80);
    let parent = |name: &str| verdict(&m, "HTTPRoute", &format!("shop/{name}")).parents[0].clone();
    assert_eq!(parent("ok").accepted, Ok(()));
    assert_eq!(parent("ok").resolved_refs, Ok(()));
    for (name, reason) in [
        ("kind", "InvalidKind"),
        ("other-ns", "RefNotPermitted"),
        ("missing", "BackendNotFound"),
    ] {
        let p = parent(name);
        assert_eq!(p.accepted, Ok(()), "{name}");
        assert_eq!(p.resolved_refs.unwrap_err().0, reason, "{name}");
        assert_eq!(
            verdict(&m, "HTTPRoute", &format!("shop/{name}")).refs_reason,
            reason
        );
    }
    for (name, reason) in [
        ("shop/section", "NoMatchingParent"),
        ("shop/host", "NoMatchingListenerHostname"),
        ("evil/foreign", "NotAllowedByListeners"),
    ] {
        let v = verdict(&m, "HTTPRoute", name);
        assert_eq!(
            v.parents[0].accepted.as_ref().unwrap_err().0,
            reason,
            "{name}"
        );
        assert!(v.accepted.is_err(), "{name}");
    }
    // Routes attach only through accepted parents: the foreign route serves nothing.
    // (A refused route's placeholder never reaches another namespace's Gateway.)
    assert!(!m.routes.iter().any(|r| r.name == "evil/foreign"));
    let gateway = verdict(&m, "Gateway", "shop/edge");
    assert_eq!(gateway.listeners.len(), 1);
    assert_eq!(
        gateway.listeners[0].attached_routes, 4,
        "ok, kind, other-ns and missing attach"
    );
    assert_eq!(gateway.generation, None);
}

#[test]
fn listener_reasons_and_allowed_routes() {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: more, namespace: shop, generation: 7}
spec:
  gatewayClassName: pqmesh
  listeners:
    - {name: cert, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}}
    - {name: foreign-cert, port: 8444, protocol: HTTPS, tls: {certificateRefs: [{name: c, namespace: bank}]}}
    - {name: all, port: 8081, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
    - {name: same, port: 8082, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}, kinds: [{kind: HTTPRoute}]}}
    - {name: grpc, port: 8083, protocol: HTTP, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}
"#;
    let m = judge(
        &[
            ("gw.yaml".into(), CLASS_AND_GATEWAY.into()),
            ("more.yaml".into(), text.into()),
        ],
        &NoSecrets,
        &no_certs,
    );
    let v = verdict(&m, "Gateway", "shop/more");
    assert_eq!(v.generation, Some(7));
    let l = |n: &str| v.listeners.iter().find(|l| l.name == n).unwrap().clone();
    assert_eq!(
        l("cert").resolved_refs.unwrap_err().0,
        "InvalidCertificateRef"
    );
    assert_eq!(l("cert").accepted, Ok(()));
    assert_eq!(
        l("foreign-cert").resolved_refs.unwrap_err().0,
        "RefNotPermitted"
    );
    assert_eq!(l("all").accepted.unwrap_err().0, "UnsupportedValue");
    assert_eq!(l("same").accepted, Ok(()));
    assert_eq!(l("grpc").accepted.unwrap_err().0, "InvalidRouteKinds");
    assert!(
        v.accepted.is_ok(),
        "a Gateway with one valid listener is accepted"
    );
    let names: Vec<_> = m.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["web", "same"]);
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

/// What outside review 7 found, one test per finding.
mod outside_review;
mod refused_objects;
mod review10;
mod review11;
mod review12;
mod review12_objects;
mod review13;
