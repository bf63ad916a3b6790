use std::collections::BTreeMap;

use serde_json::json;

use super::*;

const TD: &str = "cluster.local";

const ISSUER: &str = r#"
apiVersion: pqmesh.io/v1alpha1
kind: TokenIssuer
metadata: {name: corp, namespace: shop}
spec:
  issuer: http://127.0.0.1:9000
  audiences: [orders]
  jwksUri: http://127.0.0.1:9000/jwks
  introspection:
    endpoint: http://127.0.0.1:9000/token/introspection
    clientId: shop-gateway
    clientSecretRef: {name: gateway, key: client-secret}
"#;

const OTHER_ISSUER: &str = r#"
apiVersion: pqmesh.io/v1alpha1
kind: TokenIssuer
metadata: {name: partner, namespace: shop}
spec:
  issuer: https://partner.example
  audiences: [orders]
  jwksUri: https://partner.example/jwks
  introspection:
    endpoint: https://partner.example/introspect
    clientId: partner-gw
    clientSecretRef: {name: partner, key: client-secret}
"#;

const POLICY: &str = r#"
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  ports: [8080]
  peers: ["shop/*"]
  token: {issuers: [corp]}
  rules:
    - methods: [GET]
      paths: ["/orders/**"]
      scopes: ["orders:read"]
    - methods: [POST]
      paths: ["/orders"]
      scopes: ["orders:write"]
      claims: [{name: tenant, values: [acme]}]
"#;

struct TestSecrets;
impl Secrets for TestSecrets {
    fn get(&self, ns: &str, name: &str, key: &str) -> Option<String> {
        (ns == "shop" && key == "client-secret").then(|| format!("secret-of-{name}"))
    }
}

fn set(docs: &[&str]) -> Result<PolicySet, PolicyError> {
    let mut all = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        all.extend(parse_documents(d, &format!("doc{i}.yaml"))?);
    }
    PolicySet::build(all, TD)
}

fn workload(labels: &[(&str, &str)]) -> Workload {
    Workload {
        namespace: "shop".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn a_valid_set_compiles_for_selected_workloads_only() {
    let s = set(&[ISSUER, OTHER_ISSUER, POLICY]).unwrap();
    let w = s
        .compile(&workload(&[("app", "orders"), ("v", "1")]), &TestSecrets)
        .unwrap();
    assert_eq!(w.policies.len(), 1);
    assert_eq!(w.issuers.len(), 1, "only the issuer its policy references");
    let i = w.issuers[0].introspection.as_ref().unwrap();
    assert_eq!(i.client_secret, "secret-of-gateway");
    assert!(
        !serde_json::to_string(&w)
            .unwrap()
            .contains("secret-of-partner"),
        "never another issuer's secret"
    );
    assert!(
        !format!("{i:?}").contains("secret-of"),
        "secrets are redacted in Debug"
    );
    let other = s
        .compile(&workload(&[("app", "billing")]), &TestSecrets)
        .unwrap();
    assert!(other.is_empty() && other.issuers.is_empty());
    let other_ns = Workload {
        namespace: "billing".into(),
        labels: workload(&[("app", "orders")]).labels,
    };
    assert!(
        s.compile(&other_ns, &TestSecrets).unwrap().is_empty(),
        "policies select in their own namespace only"
    );
    // Versions are content hashes: stable, and they change with the content.
    assert_eq!(
        w.version(),
        s.compile(&workload(&[("app", "orders")]), &TestSecrets)
            .unwrap()
            .version()
    );
    assert_ne!(w.version(), other.version());
}

#[test]
fn a_missing_secret_fails_compilation() {
    struct NoSecrets;
    impl Secrets for NoSecrets {
        fn get(&self, _: &str, _: &str, _: &str) -> Option<String> {
            None
        }
    }
    let s = set(&[ISSUER, POLICY]).unwrap();
    let e = s
        .compile(&workload(&[("app", "orders")]), &NoSecrets)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("Secret shop/gateway has no key \"client-secret\""),
        "{e}"
    );
}

#[test]
fn bad_documents_are_refused_with_a_precise_reason() {
    let p = |spec: &str| {
        format!("apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}")
    };
    let i = |spec: &str| {
        format!("apiVersion: pqmesh.io/v1alpha1\nkind: TokenIssuer\nmetadata: {{name: i, namespace: shop}}\nspec:\n{spec}")
    };
    let ok_issuer = "  issuer: https://x\n  audiences: [a]\n  jwksUri: https://x/jwks\n";
    let cases: Vec<(String, &str)> = vec![
        (p("  selector: {}\n  colour: blue\n"), "unknown field `colour`"),
        (p("  selector: {}\n  rules: [{paths: [\"/orders*\"]}]\n"), "'*' must be a whole segment"),
        (p("  selector: {}\n  rules: [{paths: [\"orders\"]}]\n"), "must start with '/'"),
        (p("  selector: {}\n  rules: [{paths: [\"/**/x\"]}]\n"), "'**' is only allowed as the last segment"),
        (p("  selector: {}\n  token: {issuers: [nope]}\n"), "unknown TokenIssuer \"nope\""),
        (p("  selector: {}\n  token: {issuers: [i]}\n  rules: [{scopes: [\"\"]}]\n"), "is empty or contains whitespace"),
        (p("  selector: {}\n  rules: [{scopes: [read]}]\n"), "spec.token names no issuer"),
        (p("  selector: {}\n  rules: [{methods: [get]}]\n"), "upper-case HTTP method"),
        (p("  selector: {}\n  mtls: LOOSE\n"), "STRICT or PERMISSIVE"),
        (p("  selector: {}\n  peers: [\"*\"]\n"), "spec.peers"),
        (p("  selector: {}\n  peers: []\n"), "spec.peers is empty"),
        (p("  selector: {}\n  ports: [0]\n"), "spec.ports"),
        (p("  selector: {}\n  rules: [{claims: [{name: tenant, values: []}]}]\n  token: {issuers: [i]}\n"), "lists no values"),
        (i("  issuer: https://x\n  audiences: [a]\n  jwksUri: http://evil.example/jwks\n"), "must be an https:// URL"),
        (i(&format!("{ok_issuer}  allowedAlgorithms: [HS256]\n")), "HS256"),
        (i(&format!("{ok_issuer}  allowedAlgorithms: [none]\n")), "\"none\""),
        (i("  issuer: https://x\n  audiences: []\n  jwksUri: https://x/jwks\n"), "spec.audiences"),
        (i(&format!("{ok_issuer}  clockSkewSeconds: 3600\n")), "clockSkewSeconds"),
        (
            i(&format!("{ok_issuer}  introspection: {{endpoint: https://x/i, clientId: c, clientSecretRef: {{name: s, key: k}}, responseFormat: json}}\n")),
            "responseFormat",
        ),
        ("apiVersion: pqmesh.io/v1\nkind: AccessPolicy\nmetadata: {name: p}\nspec: {selector: {}}\n".to_owned(), "apiVersion"),
        ("apiVersion: pqmesh.io/v1alpha1\nkind: Gateway\nmetadata: {name: p}\nspec: {}\n".to_owned(), "unknown variant `Gateway`"),
        ("apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {name: Bad_Name}\nspec: {selector: {}}\n".to_owned(), "DNS-1123"),
        ("{{{".to_owned(), "doc0.yaml document 1"),
    ];
    let issuer_i = i(ok_issuer);
    for (doc, want) in cases {
        let docs: Vec<&str> = if doc.contains("issuers: [i]") {
            vec![issuer_i.as_str(), &doc]
        } else {
            vec![&doc]
        };
        let e = set(&docs).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains(want), "{doc}\n=> {e}");
    }
    let dup = set(&[POLICY, POLICY, ISSUER]).map(|_| ()).unwrap_err();
    assert!(dup.to_string().contains("defined twice"), "{dup}");
}

fn compiled() -> WorkloadPolicy {
    set(&[ISSUER, POLICY])
        .unwrap()
        .compile(&workload(&[("app", "orders")]), &TestSecrets)
        .unwrap()
}

fn http<'a>(method: &'a str, path: &'a str, token: TokenState<'a>) -> Option<HttpRequest<'a>> {
    Some(HttpRequest {
        method,
        path,
        token,
    })
}

#[test]
fn decisions() {
    let w = compiled();
    let web: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let evil: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/other/sa/web".parse().unwrap();
    let read = json!({"scope": "orders:read"}).as_object().unwrap().clone();
    let write_acme = json!({"scp": ["orders:write"], "tenant": "acme"})
        .as_object()
        .unwrap()
        .clone();
    let write_other = json!({"scope": "orders:write", "tenant": "globex"})
        .as_object()
        .unwrap()
        .clone();
    let valid = |c| TokenState::Valid {
        issuer: "shop/corp",
        claims: c,
    };
    let req = |peer, http| Request {
        port: 8080,
        peer,
        trust_domain: TD,
        http,
    };
    let cases: Vec<(&str, Request<'_>, Result<(), &str>)> = vec![
        (
            "read allowed",
            req(Some(&web), http("GET", "/orders/42", valid(&read))),
            Ok(()),
        ),
        (
            "write with tenant",
            req(Some(&web), http("POST", "/orders", valid(&write_acme))),
            Ok(()),
        ),
        (
            "wrong tenant",
            req(Some(&web), http("POST", "/orders", valid(&write_other))),
            Err("claim_mismatch"),
        ),
        (
            "read scope cannot write",
            req(Some(&web), http("POST", "/orders", valid(&read))),
            Err("insufficient_scope"),
        ),
        (
            "no rule for DELETE",
            req(Some(&web), http("DELETE", "/orders/1", valid(&read))),
            Err("no_rule_matched"),
        ),
        (
            "no token",
            req(Some(&web), http("GET", "/orders/1", TokenState::Absent)),
            Err("token_missing"),
        ),
        (
            "bad token",
            req(
                Some(&web),
                http("GET", "/orders/1", TokenState::Invalid("expired")),
            ),
            Err("token_invalid"),
        ),
        (
            "issuer down",
            req(
                Some(&web),
                http("GET", "/orders/1", TokenState::Unavailable("down")),
            ),
            Err("token_unavailable"),
        ),
        (
            "token from an issuer the policy does not name",
            req(
                Some(&web),
                http(
                    "GET",
                    "/orders/1",
                    TokenState::Valid {
                        issuer: "shop/partner",
                        claims: &read,
                    },
                ),
            ),
            Err("token_invalid"),
        ),
        (
            "peer from another namespace",
            req(Some(&evil), http("GET", "/orders/1", valid(&read))),
            Err("peer_not_allowed"),
        ),
        (
            "plaintext on a STRICT policy",
            req(None, http("GET", "/orders/1", valid(&read))),
            Err("plaintext_refused"),
        ),
        (
            "opaque TCP needs HTTP here",
            req(Some(&web), None),
            Err("not_http"),
        ),
    ];
    for (name, r, want) in cases {
        match (w.evaluate(&r), want) {
            (Decision::Allow { .. }, Ok(())) => {}
            (Decision::Deny(d), Err(reason)) => assert_eq!(d.reason(), reason, "{name}: {d:?}"),
            (got, want) => panic!("{name}: got {got:?}, wanted {want:?}"),
        }
    }
    let other_port = Request {
        port: 9090,
        peer: Some(&web),
        trust_domain: TD,
        http: http("GET", "/orders/1", valid(&read)),
    };
    assert_eq!(
        w.evaluate(&other_port),
        Decision::Deny(Denial::NoPolicyForPort),
        "default deny on ports no policy covers"
    );
    let d = Denial::InsufficientScope(vec!["orders:write".into()]);
    assert_eq!(d.status(), 403);
    assert_eq!(
        d.www_authenticate().unwrap(),
        "Bearer error=\"insufficient_scope\", scope=\"orders:write\""
    );
    assert_eq!(
        Denial::TokenInvalid("x".into()).www_authenticate().unwrap(),
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(Denial::TokenUnavailable("x".into()).status(), 503);
}

#[test]
fn permissive_and_identity_only_policies() {
    let doc = r#"
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: tcp, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  mtls: PERMISSIVE
"#;
    let w = set(&[doc])
        .unwrap()
        .compile(&workload(&[("app", "db")]), &TestSecrets)
        .unwrap();
    assert!(w.permissive_on(5432) && !w.wants_token(5432));
    let web: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    for peer in [None, Some(&web)] {
        let r = Request {
            port: 5432,
            peer,
            trust_domain: TD,
            http: None,
        };
        assert!(matches!(w.evaluate(&r), Decision::Allow { .. }));
    }
}

#[test]
fn callers_no_policy_admits_are_known_before_any_token_work() {
    let w = compiled();
    let web: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let other: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/billing/sa/web".parse().unwrap();
    assert!(w.admits_peer(8080, Some(&web), TD));
    assert!(!w.admits_peer(8080, Some(&other), TD), "peers: shop/* only");
    assert!(!w.admits_peer(8080, None, TD), "STRICT: no plaintext");
    assert!(!w.admits_peer(9090, Some(&web), TD), "no policy on this port");
}
