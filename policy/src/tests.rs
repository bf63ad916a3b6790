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
fn a_workload_with_two_introspecting_issuers_does_not_compile() {
    // Two AccessPolicies selecting one workload, each naming a different introspecting issuer.
    let partner_policy = POLICY
        .replace("name: orders,", "name: partner-orders,")
        .replace("ports: [8080]", "ports: [9090]")
        .replace("issuers: [corp]", "issuers: [partner]");
    let s = set(&[ISSUER, OTHER_ISSUER, POLICY, &partner_policy]).unwrap();
    let e = s
        .compile(&workload(&[("app", "orders")]), &TestSecrets)
        .unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("shop/corp and shop/partner both configure introspection")
            && message.contains("shop/orders")
            && message.contains("shop/partner-orders"),
        "{message}"
    );
    // One policy naming both is the same problem.
    let both = POLICY.replace("issuers: [corp]", "issuers: [corp, partner]");
    let s = set(&[ISSUER, OTHER_ISSUER, &both]).unwrap();
    assert!(s
        .compile(&workload(&[("app", "orders")]), &TestSecrets)
        .is_err());
}

#[test]
fn bad_documents_are_refused_with_a_precise_reason() {
    let p = |spec: &str| {
        // Every case but the peers ones names peers, so the case's own problem is the one found.
        let peers = if spec.contains("peer") {
            ""
        } else {
            "  peers: [\"*\"]\n"
        };
        format!("apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{peers}{spec}")
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
        (p("  selector: {}\n  peers: [\"*\", shop/web]\n"), "must be the only entry"),
        (p("  selector: {}\n  peers: [\"shop/web/x\"]\n"), "spec.peers"),
        (p("  selector: {}\n  peer: [shop/web]\n"), "unknown field `peer`"),
        (p("  selector: {}\n  # peers: forgotten\n"), "missing field `peers`"),
        (p("  selector: {}\n  peers: []\n"), "spec.peers is empty"),
        (p("  selector: {}\n  ports: [0]\n"), "spec.ports"),
        (p("  selector: {}\n  rules: [{claims: [{name: tenant, values: []}]}]\n  token: {issuers: [i]}\n"), "lists no values"),
        (p("  selector: {}\n  rules: [{claims: [{name: groups, anyOf: []}]}]\n  token: {issuers: [i]}\n"), "lists no values"),
        (p("  selector: {}\n  rules: [{claims: [{name: tenant}]}]\n  token: {issuers: [i]}\n"), "needs one of values, anyOf or allOf"),
        (p("  selector: {}\n  rules: [{claims: [{name: g, values: [a], anyOf: [a]}]}]\n  token: {issuers: [i]}\n"), "more than one of values, anyOf and allOf"),
        (p("  selector: {}\n  rules: [{claims: [{name: g, anyof: [a]}]}]\n  token: {issuers: [i]}\n"), "unknown field `anyof`"),
        (i(&format!("{ok_issuer}  scopeClaim: scopes\n")), "unknown variant `scopes`"),
        (i(&format!("{ok_issuer}  scopeClaim: [scope, scp]\n")), "invalid type: sequence"),
        (i(&format!("{ok_issuer}  maxTokenLifetimeSeconds: 0\n")), "maxTokenLifetimeSeconds 0"),
        (i(&format!("{ok_issuer}  maxTokenLifetimeSeconds: 31536000\n")), "maxTokenLifetimeSeconds 31536000"),
        (i(&format!("{ok_issuer}  maxTokenLifetimeSeconds: -1\n")), "expected u32"),
        (i(&format!("{ok_issuer}  maxTokenLifetimeSeconds: 1e30\n")), "expected u32"),
        (i("  issuer: https://x\n  audiences: [a]\n  jwksUri: http://evil.example/jwks\n"), "must be an https:// URL"),
        (i("  issuer: https://x\n  audiences: [a]\n  jwksUri: https://u:hunter2@x/jwks\n"), "must not contain credentials"),
        (i("  issuer: https://x\n  audiences: [a]\n  jwksUri: https://x /jwks\n"), "is not a valid URL"),
        (i(&format!("{ok_issuer}  jwks: {{refreshSeconds: 10, minRefetchSeconds: 30}}\n")), "must not be shorter than spec.jwks.minRefetchSeconds"),
        (i(&format!("{ok_issuer}  allowedAlgorithms: [HS256]\n")), "HS256"),
        (i(&format!("{ok_issuer}  allowedAlgorithms: [none]\n")), "\"none\""),
        (i("  issuer: https://x\n  audiences: []\n  jwksUri: https://x/jwks\n"), "spec.audiences"),
        (i(&format!("{ok_issuer}  clockSkewSeconds: 3600\n")), "clockSkewSeconds"),
        (
            i(&format!("{ok_issuer}  introspection: {{endpoint: https://x/i, clientId: c, clientSecretRef: {{name: s, key: k}}, responseFormat: json}}\n")),
            "responseFormat",
        ),
        ("apiVersion: pqmesh.io/v1\nkind: AccessPolicy\nmetadata: {name: p}\nspec: {selector: {}, peers: [\"*\"]}\n".to_owned(), "apiVersion"),
        ("apiVersion: pqmesh.io/v1alpha1\nkind: Gateway\nmetadata: {name: p}\nspec: {}\n".to_owned(), "unknown variant `Gateway`"),
        ("apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {name: Bad_Name}\nspec: {selector: {}, peers: [\"*\"]}\n".to_owned(), "DNS-1123"),
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
        // A refusal is shown to whoever may read the object's status: never its credentials.
        assert!(!e.to_string().contains("hunter2"), "{e}");
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
    let write_acme = json!({"scope": "orders:write", "tenant": "acme"})
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
  peers: ["*"]
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
    assert!(
        !w.admits_peer(9090, Some(&web), TD),
        "no policy on this port"
    );
}

const SCP_ISSUER: &str = r#"
apiVersion: pqmesh.io/v1alpha1
kind: TokenIssuer
metadata: {name: okta, namespace: shop}
spec:
  issuer: https://okta.example
  audiences: [orders]
  jwksUri: https://okta.example/jwks
  scopeClaim: scp
  maxTokenLifetimeSeconds: 3600
"#;

const ARRAY_POLICY: &str = r#"
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: admin, namespace: shop}
spec:
  selector: {matchLabels: {app: admin}}
  peers: ["*"]
  token: {issuers: [corp, okta]}
  rules:
    - paths: ["/tenant"]
      claims: [{name: tenant, values: [acme]}]
    - paths: ["/any"]
      claims: [{name: groups, anyOf: [admins, ops]}]
    - paths: ["/all"]
      claims: [{name: realm_access.roles, allOf: [read, write]}]
    - paths: ["/write"]
      scopes: ["orders:write"]
"#;

fn decide(
    w: &WorkloadPolicy,
    issuer: &str,
    path: &str,
    claims: serde_json::Value,
) -> Result<(), String> {
    let web: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let claims = claims.as_object().unwrap().clone();
    let r = Request {
        port: 8080,
        peer: Some(&web),
        trust_domain: TD,
        http: http(
            "GET",
            path,
            TokenState::Valid {
                issuer,
                claims: &claims,
            },
        ),
    };
    match w.evaluate(&r) {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny(d) => Err(d.reason().to_owned()),
    }
}

#[test]
fn scopes_come_from_the_issuers_one_scope_claim_never_merged() {
    let w = set(&[ISSUER, SCP_ISSUER, ARRAY_POLICY])
        .unwrap()
        .compile(&workload(&[("app", "admin")]), &TestSecrets)
        .unwrap();
    let cases: Vec<(&str, &str, serde_json::Value, Result<(), &str>)> = vec![
        (
            "scope string",
            "shop/corp",
            json!({"scope": "orders:read orders:write"}),
            Ok(()),
        ),
        (
            "the reported attack: scope + scp merged used to pass",
            "shop/corp",
            json!({"scope": "orders:read", "scp": ["orders:write"]}),
            Err("token_invalid"),
        ),
        (
            "both claims, also at an scp issuer",
            "shop/okta",
            json!({"scope": "orders:write", "scp": ["orders:write"]}),
            Err("token_invalid"),
        ),
        (
            "scp array at a scope issuer is not read",
            "shop/corp",
            json!({"scp": ["orders:write"]}),
            Err("insufficient_scope"),
        ),
        (
            "scope string at an scp issuer is not read",
            "shop/okta",
            json!({"scope": "orders:write"}),
            Err("insufficient_scope"),
        ),
        (
            "scp array",
            "shop/okta",
            json!({"scp": ["orders:read", "orders:write"]}),
            Ok(()),
        ),
        (
            "scp as a string",
            "shop/okta",
            json!({"scp": "orders:write"}),
            Err("token_invalid"),
        ),
        (
            "scope as an array",
            "shop/corp",
            json!({"scope": ["orders:write"]}),
            Err("token_invalid"),
        ),
        (
            "scp with a number",
            "shop/okta",
            json!({"scp": ["orders:write", 7]}),
            Err("token_invalid"),
        ),
        (
            "scp item with a space",
            "shop/okta",
            json!({"scp": ["orders:read orders:write"]}),
            Err("token_invalid"),
        ),
        (
            "tab is not a scope separator",
            "shop/corp",
            json!({"scope": "x\torders:write"}),
            Err("insufficient_scope"),
        ),
    ];
    for (name, issuer, claims, want) in cases {
        assert_eq!(
            decide(&w, issuer, "/write", claims),
            want.map_err(str::to_owned),
            "{name}"
        );
    }
}

#[test]
fn claim_conditions_have_explicit_array_semantics() {
    let w = set(&[ISSUER, SCP_ISSUER, ARRAY_POLICY])
        .unwrap()
        .compile(&workload(&[("app", "admin")]), &TestSecrets)
        .unwrap();
    let cases: Vec<(&str, &str, serde_json::Value, bool)> = vec![
        (
            "values: scalar equal",
            "/tenant",
            json!({"tenant": "acme"}),
            true,
        ),
        (
            "values: scalar other",
            "/tenant",
            json!({"tenant": "globex"}),
            false,
        ),
        (
            "values: the reported attack, an array holding the value",
            "/tenant",
            json!({"tenant": ["evil", "acme"]}),
            false,
        ),
        (
            "values: a one-element array is still an array",
            "/tenant",
            json!({"tenant": ["acme"]}),
            false,
        ),
        (
            "values: object",
            "/tenant",
            json!({"tenant": {"acme": true}}),
            false,
        ),
        ("values: null", "/tenant", json!({"tenant": null}), false),
        ("values: absent", "/tenant", json!({}), false),
        (
            "anyOf: one present",
            "/any",
            json!({"groups": ["dev", "ops"]}),
            true,
        ),
        (
            "anyOf: none present",
            "/any",
            json!({"groups": ["dev"]}),
            false,
        ),
        ("anyOf: empty array", "/any", json!({"groups": []}), false),
        (
            "anyOf: a scalar is not an array",
            "/any",
            json!({"groups": "admins"}),
            false,
        ),
        (
            "anyOf: nested arrays do not count",
            "/any",
            json!({"groups": [["admins"]]}),
            false,
        ),
        (
            "allOf: all present",
            "/all",
            json!({"realm_access": {"roles": ["write", "x", "read"]}}),
            true,
        ),
        (
            "allOf: one missing",
            "/all",
            json!({"realm_access": {"roles": ["read"]}}),
            false,
        ),
        (
            "allOf: scalar",
            "/all",
            json!({"realm_access": {"roles": "read"}}),
            false,
        ),
        (
            "allOf: path missing",
            "/all",
            json!({"realm_access": "read write"}),
            false,
        ),
    ];
    for (name, path, claims, allowed) in cases {
        let got = decide(&w, "shop/corp", path, claims);
        if allowed {
            assert_eq!(got, Ok(()), "{name}");
        } else {
            assert_eq!(got, Err("claim_mismatch".to_owned()), "{name}");
        }
    }
}

#[test]
fn scope_sources_refuse_bad_shapes() {
    use crate::scope::{token_scopes, ScopeError};
    let c = |v: serde_json::Value| v.as_object().unwrap().clone();
    assert_eq!(
        token_scopes(&c(json!({"scope": " a  b "})), ScopeClaim::Scope).unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        token_scopes(&c(json!({})), ScopeClaim::Scp).unwrap(),
        Vec::<String>::new()
    );
    let bad: Vec<(serde_json::Value, ScopeClaim)> = vec![
        (json!({"scope": "a", "scp": ["b"]}), ScopeClaim::Scope),
        (json!({"scope": "a", "scp": ["b"]}), ScopeClaim::Scp),
        (json!({"scope": null, "scp": ["b"]}), ScopeClaim::Scp),
        (json!({"scope": 5}), ScopeClaim::Scope),
        (json!({"scope": null}), ScopeClaim::Scope),
        (json!({"scope": ["a"]}), ScopeClaim::Scope),
        (json!({"scope": {"a": 1}}), ScopeClaim::Scope),
        (json!({"scp": "a b"}), ScopeClaim::Scp),
        (json!({"scp": [true]}), ScopeClaim::Scp),
        (json!({"scp": [""]}), ScopeClaim::Scp),
        (json!({"scp": [["a"]]}), ScopeClaim::Scp),
        (json!({"scp": null}), ScopeClaim::Scp),
    ];
    for (claims, source) in bad {
        let e = token_scopes(&c(claims.clone()), source).expect_err(&claims.to_string());
        assert!(matches!(
            e,
            ScopeError::Both(_) | ScopeError::WrongType { .. }
        ));
    }
}

#[test]
fn new_fields_reach_the_snapshot_and_defaults_keep_old_versions() {
    let s = set(&[ISSUER, SCP_ISSUER, ARRAY_POLICY]).unwrap();
    let w = s
        .compile(&workload(&[("app", "admin")]), &TestSecrets)
        .unwrap();
    let okta = w.issuers.iter().find(|i| i.name == "shop/okta").unwrap();
    assert_eq!(okta.scope_claim, ScopeClaim::Scp);
    assert_eq!(okta.max_token_lifetime_seconds, 3600);
    let corp = w.issuers.iter().find(|i| i.name == "shop/corp").unwrap();
    assert_eq!(corp.scope_claim, ScopeClaim::Scope);
    assert_eq!(corp.max_token_lifetime_seconds, 86_400);
    // The snapshot travels as JSON: the sidecar decodes exactly what was compiled.
    let json = serde_json::to_string(&w).unwrap();
    let back: WorkloadPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, w);
    // Defaults are not serialised: a snapshot using none of the new fields has the bytes (and
    // so the version) it had before they existed, and older sidecars can still decode it.
    let old = compiled();
    let old_json = serde_json::to_string(&old).unwrap();
    for field in [
        "scope_claim",
        "max_token_lifetime_seconds",
        "any_of",
        "all_of",
    ] {
        assert!(!old_json.contains(field), "{field} in {old_json}");
    }
    assert!(
        old_json.contains(r#""claims":[{"name":"tenant","values":["acme"]}]"#),
        "{old_json}"
    );
}

mod admission;
