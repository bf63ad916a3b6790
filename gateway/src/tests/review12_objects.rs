//! Review 12 (outside attack, black box, local mode): a duplicate EdgePolicy or HTTPRoute must
//! never take over (F2c), an unrecognisable document must not drop the last good version of
//! what it replaced (F3), a refused namespace/name edit must not open the route, and names
//! Kubernetes would refuse are refused (F4). The owner's `secret.yaml` holds the protected
//! route (document 1) and its EdgePolicy (document 2); `app.yaml` a `/` catch-all with none.

use hyper::HeaderMap;

use super::{no_certs, NoSecrets, CLASS_AND_GATEWAY};
use crate::load::{judge_with, LastGood, Model};
use crate::routes::{choose, RequestView};

pub(super) const APP: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: app, port: 80}]
";

pub(super) const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: secret, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /secret}}]
      backendRefs: [{name: app, port: 80}]
";

pub(super) const POLICY: &str = "apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {name: secret-edge, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: secret}
  token: {issuer: corp, scopes: [admin]}
";

/// The attacker's duplicate EdgePolicy: same namespace/name, a rate limit only.
const TENANT_POLICY: &str = "apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {name: secret-edge, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: secret}
  rateLimit: {key: sourceIP, requests: 1000, periodSeconds: 1}
";

/// The attacker's duplicate HTTPRoute: same namespace/name, to its own backend.
const TENANT_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: secret, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /secret}}]
      backendRefs: [{name: tenant, port: 80}]
";

pub(super) fn secret(route: &str, policy: &str) -> String {
    format!("{route}---\n{policy}")
}

/// Judges `files` (read in this order, as a directory listing is), carrying `previous`'s
/// accepted state as the running gateway does (`None`: a restart).
pub(super) fn judge_files(files: &[(&str, &str)], previous: Option<&Model>) -> Model {
    let texts: Vec<(String, String)> = [("gw.yaml", CLASS_AND_GATEWAY)]
        .iter()
        .chain(files)
        .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
        .collect();
    let nothing = LastGood::default();
    let last = previous.map_or(&nothing, |m| &m.last_good);
    let issuers = previous.map(|m| m.issuers.clone()).unwrap_or_default();
    judge_with(&texts, &NoSecrets, &no_certs, &issuers, last)
}

/// How `/secret/x` is answered: by which route, and `503` (closed), `token:<scopes>` (the
/// owner's token check), `rate-limit only` or `open`.
pub(super) fn answer(m: &Model) -> (String, String) {
    let headers = HeaderMap::new();
    let req = RequestView {
        host: "shop.example",
        method: "GET",
        path: "/secret/x",
        query: None,
        headers: &headers,
    };
    let Some(c) = choose(&m.routes, &m.listeners[0], &req) else {
        return ("none".into(), "404".into());
    };
    let r = &m.routes[c.route];
    let what = match (&r.closed, &r.edge) {
        (Some(_), _) => "503".to_owned(),
        (None, Some(e)) => match &e.token {
            Some(t) => format!("token:{}", t.scopes.join(" ")),
            None => "rate-limit only".to_owned(),
        },
        (None, None) => "open".to_owned(),
    };
    (r.name.clone(), what)
}

pub(super) fn protected(m: &Model, scopes: &str, case: &str) {
    assert_eq!(
        answer(m),
        ("shop/secret".into(), format!("token:{scopes}")),
        "{case}: {:#?}",
        m.verdicts
    );
}

pub(super) fn verdict<'a>(m: &'a Model, source: &str) -> &'a crate::load::Verdict {
    m.verdicts
        .iter()
        .rev()
        .find(|v| v.source == source)
        .unwrap_or_else(|| panic!("no verdict for {source}: {:#?}", m.verdicts))
}

pub(super) fn owner() -> Model {
    let m = judge_files(
        &[("app.yaml", APP), ("secret.yaml", &secret(ROUTE, POLICY))],
        None,
    );
    protected(&m, "admin", "the owner's configuration");
    m
}

/// F2(c): the tenant's duplicate EdgePolicy is refused, and stays refused through a valid
/// scope edit of the owner's policy: the definition read from the in-force source wins.
#[test]
fn a_duplicate_edge_policy_never_takes_over_after_a_valid_owner_edit() {
    let before = owner();
    let with_dup = judge_files(
        &[
            ("aaa-tenant.yaml", TENANT_POLICY),
            ("app.yaml", APP),
            ("secret.yaml", &secret(ROUTE, POLICY)),
        ],
        Some(&before),
    );
    protected(&with_dup, "admin", "duplicate added");
    assert_eq!(
        verdict(&with_dup, "aaa-tenant.yaml document 1").accepted_reason,
        "Duplicate"
    );
    let edited = secret(ROUTE, &POLICY.replace("[admin]", "[admin, audit]"));
    let mut m = with_dup;
    for round in 0..3 {
        m = judge_files(
            &[
                ("aaa-tenant.yaml", TENANT_POLICY),
                ("app.yaml", APP),
                ("secret.yaml", &edited),
            ],
            Some(&m),
        );
        protected(
            &m,
            "admin audit",
            &format!("valid owner edit, round {round}"),
        );
        let dup = verdict(&m, "aaa-tenant.yaml document 1");
        assert_eq!(dup.accepted_reason, "Duplicate");
        assert!(dup
            .accepted
            .clone()
            .unwrap_err()
            .contains("secret.yaml document 2"));
    }
}

/// F2(c): a refused edit of the owner's policy (an unknown field, a failing check) keeps the
/// owner's last good version in force; it never hands control to the duplicate.
#[test]
fn a_refused_owner_edit_keeps_the_last_good_not_the_duplicate() {
    let before = owner();
    for (case, policy) in [
        (
            "unknown field",
            POLICY.replace("  token:", "  tokn: {issuer: corp}\n  token:"),
        ),
        ("empty scope", POLICY.replace("[admin]", "[\"\"]")),
        (
            "kind typo",
            POLICY.replace("kind: EdgePolicy", "kind: EdgePolcy"),
        ),
    ] {
        let files = [
            ("aaa-tenant.yaml", TENANT_POLICY),
            ("app.yaml", APP),
            ("secret.yaml", &secret(ROUTE, &policy)),
        ];
        let m = judge_files(&files, Some(&before));
        protected(&m, "admin", case);
        assert_eq!(
            verdict(&m, "aaa-tenant.yaml document 1").accepted_reason,
            "Duplicate",
            "{case}"
        );
        // And again from that state.
        let again = judge_files(&files, Some(&m));
        protected(&again, "admin", &format!("{case}, again"));
    }
}

/// F2(c): with no version in force (a restart, or two new definitions), no definition wins by
/// read order: every one is refused and the route they target answers 503.
#[test]
fn duplicate_edge_policies_with_no_version_in_force_all_refused_and_close() {
    let files = [
        ("aaa-tenant.yaml", TENANT_POLICY),
        ("app.yaml", APP),
        ("secret.yaml", &secret(ROUTE, POLICY)),
    ];
    let m = judge_files(&files, None);
    assert_eq!(answer(&m), ("shop/secret".into(), "503".into()));
    for source in ["aaa-tenant.yaml document 1", "secret.yaml document 2"] {
        let v = verdict(&m, source);
        assert_eq!(v.accepted_reason, "Duplicate", "{source}");
        assert!(v.accepted.clone().unwrap_err().contains("none of them"));
    }
    // The verdict of the route says why it is closed.
    let route = m
        .verdicts
        .iter()
        .find(|v| v.kind == "HTTPRoute" && v.name == "shop/secret")
        .unwrap();
    assert!(route.resolved_refs.clone().unwrap_err().contains("503"));
    // Two new definitions of a policy the running gateway never had: the same.
    let bare = judge_files(&[("app.yaml", APP), ("secret.yaml", ROUTE)], None);
    assert_eq!(answer(&bare).1, "open");
    let two = judge_files(
        &[
            ("aaa-tenant.yaml", TENANT_POLICY),
            ("app.yaml", APP),
            ("secret.yaml", &secret(ROUTE, POLICY)),
        ],
        Some(&bare),
    );
    assert_eq!(answer(&two), ("shop/secret".into(), "503".into()));
    // Once the tenant's file is gone, the owner's alone is in force.
    let fixed = judge_files(
        &[("app.yaml", APP), ("secret.yaml", &secret(ROUTE, POLICY))],
        Some(&two),
    );
    protected(&fixed, "admin", "duplicate removed");
}

/// F2(c) for HTTPRoutes: the same source rule.
#[test]
fn a_duplicate_route_never_takes_over() {
    let before = owner();
    let tenant = |owner_route: &str| {
        [
            ("aaa-tenant.yaml", TENANT_ROUTE.to_owned()),
            ("app.yaml", APP.to_owned()),
            ("secret.yaml", secret(owner_route, POLICY)),
        ]
    };
    let run = |files: [(&str, String); 3], prev: Option<&Model>| {
        let refs: Vec<(&str, &str)> = files.iter().map(|(f, t)| (*f, t.as_str())).collect();
        judge_files(&refs, prev)
    };
    // Added beside the owner's: Duplicate, the owner's stays.
    let m = run(tenant(ROUTE), Some(&before));
    protected(&m, "admin", "route duplicate added");
    let backend = |m: &Model| {
        m.routes
            .iter()
            .find(|r| r.name == "shop/secret" && r.closed.is_none())
            .map(|r| r.spec.rules[0].backend_refs[0].name.clone())
    };
    assert_eq!(backend(&m).as_deref(), Some("app"));
    // A valid owner edit (a new path) keeps the owner's the one in force.
    let edited = ROUTE.replace(
        "value: /secret}",
        "value: /secret}}, {path: {type: PathPrefix, value: /hidden}",
    );
    let m2 = run(tenant(&edited), Some(&m));
    protected(&m2, "admin", "valid owner route edit");
    assert_eq!(backend(&m2).as_deref(), Some("app"));
    // A refused owner edit keeps the owner's last good.
    let broken = ROUTE.replace(
        "      backendRefs",
        "      timeouts: {request: 1s}\n      backendRefs",
    );
    let m3 = run(tenant(&broken), Some(&m2));
    protected(&m3, "admin", "refused owner route edit");
    assert_eq!(backend(&m3).as_deref(), Some("app"));
    // A restart: both refused, what they declare closed.
    let fresh = run(tenant(ROUTE), None);
    assert_eq!(answer(&fresh), ("shop/secret".into(), "503".into()));
    assert_eq!(
        verdict(&fresh, "aaa-tenant.yaml document 1").accepted_reason,
        "Duplicate"
    );
}

/// The unrecognisable forms of a document the review found (F3).
fn unrecognisable(doc: &str, typo_kind: &str, typo_api: &str) -> Vec<(&'static str, String)> {
    let no_kind: String = doc
        .lines()
        .filter(|l| !l.starts_with("kind:") && !l.starts_with("apiVersion:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (kind_line, api_line) = {
        let mut lines = doc.lines();
        let api = lines.next().unwrap().to_owned();
        let kind = lines.next().unwrap().to_owned();
        (kind, api)
    };
    vec![
        ("no kind, no apiVersion", no_kind),
        ("{}", "{}\n".to_owned()),
        (
            "kind and apiVersion typoed",
            doc.replace(&kind_line, typo_kind)
                .replace(&api_line, typo_api),
        ),
        ("scalar", "garbage\n".to_owned()),
        ("list", "- a\n".to_owned()),
    ]
}

fn route_forms() -> Vec<(&'static str, String)> {
    unrecognisable(
        ROUTE,
        "kind: HTTPRoutes",
        "apiVersion: gateway.networking.k8s.oi/v1",
    )
}

fn policy_forms() -> Vec<(&'static str, String)> {
    unrecognisable(POLICY, "kind: EdgePolcy", "apiVersion: pqmesh.oi/v1alpha1")
}

/// F3: an unrecognisable edit of the route or of its policy keeps the last accepted version
/// in force while the file has that refused document; the verdict says why.
#[test]
fn an_unrecognisable_document_keeps_the_last_good_of_what_it_replaced() {
    let before = owner();
    let mut cases: Vec<(String, String)> = Vec::new();
    for (case, doc) in route_forms() {
        cases.push((format!("route: {case}"), secret(&doc, POLICY)));
    }
    for (case, doc) in policy_forms() {
        cases.push((format!("policy: {case}"), secret(ROUTE, &doc)));
    }
    cases.push(("whole file {} {}".into(), "{}\n---\n{}\n".into()));
    cases.push(("whole file scalar".into(), "garbage\n".into()));
    cases.push(("whole file list".into(), "- a\n".into()));
    for (case, text) in &cases {
        let files = [("app.yaml", APP), ("secret.yaml", text.as_str())];
        let m = judge_files(&files, Some(&before));
        protected(&m, "admin", case);
        let refused: Vec<String> = m
            .verdicts
            .iter()
            .filter(|v| v.source.starts_with("secret.yaml"))
            .filter_map(|v| v.accepted.clone().err())
            .collect();
        assert!(
            refused
                .iter()
                .any(|e| e.contains("is not found in secret.yaml")
                    || e.contains("last accepted version")),
            "{case}: {refused:#?}"
        );
        let again = judge_files(&files, Some(&m));
        protected(&again, "admin", &format!("{case}, again"));
        // Fixed: the file reads cleanly again, and the owner's version is simply in force.
        let fixed = judge_files(
            &[("app.yaml", APP), ("secret.yaml", &secret(ROUTE, POLICY))],
            Some(&again),
        );
        protected(&fixed, "admin", &format!("{case}, fixed"));
    }
    // Documents that shift position: a new document first, the route replaced by `{}`.
    let shifted = format!("{APP}---\n{{}}\n---\n{POLICY}").replace("name: app,", "name: app2,");
    let m = judge_files(
        &[("app.yaml", APP), ("secret.yaml", &shifted)],
        Some(&before),
    );
    protected(&m, "admin", "shifted documents");
}

/// F3: the removal of an object takes effect only when its file is deleted or reads cleanly.
#[test]
fn removal_takes_effect_when_the_file_is_deleted_or_reads_cleanly() {
    let before = owner();
    let broken = judge_files(
        &[("app.yaml", APP), ("secret.yaml", "{}\n---\n{}\n")],
        Some(&before),
    );
    protected(&broken, "admin", "file of {}");
    // Deleted: its objects are gone (the owner's choice), and nothing is held any more.
    let deleted = judge_files(&[("app.yaml", APP)], Some(&broken));
    assert_eq!(answer(&deleted), ("shop/app".into(), "open".into()));
    assert!(deleted.last_good.edge_policies.is_empty());
    // Every document accepted, the policy left out: its removal takes effect.
    let clean = judge_files(&[("app.yaml", APP), ("secret.yaml", ROUTE)], Some(&before));
    assert_eq!(answer(&clean), ("shop/secret".into(), "open".into()));
}

/// F3, no history (a restart): a typoed or kind-less document shaped like a route or a policy
/// is read as one and closes what it declares; it never vanishes.
#[test]
fn with_no_history_a_document_shaped_like_a_route_or_policy_is_closed() {
    for (case, doc) in route_forms() {
        if !case.contains("kind") {
            continue; // `{}` and scalars declare nothing to close
        }
        let m = judge_files(
            &[("app.yaml", APP), ("secret.yaml", &secret(&doc, POLICY))],
            None,
        );
        assert_eq!(
            answer(&m),
            ("shop/secret".into(), "503".into()),
            "route: {case}: {:#?}",
            m.verdicts
        );
    }
    for (case, doc) in policy_forms() {
        if !case.contains("kind") {
            continue;
        }
        let m = judge_files(
            &[("app.yaml", APP), ("secret.yaml", &secret(ROUTE, &doc))],
            None,
        );
        assert_eq!(
            answer(&m),
            ("shop/secret".into(), "503".into()),
            "policy: {case}: {:#?}",
            m.verdicts
        );
    }
    // A kind far from ours (an Ingress) is not read as one of ours.
    let ingress = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: shop}\nspec:\n  rules: [{host: shop.example}]\n";
    let m = judge_files(&[("app.yaml", APP), ("ingress.yaml", ingress)], None);
    assert_eq!(answer(&m), ("shop/app".into(), "open".into()));
    let v = verdict(&m, "ingress.yaml document 1");
    assert!(v
        .accepted
        .clone()
        .unwrap_err()
        .contains("not supported here"));
}

/// F4: a refused edit of the route's namespace (or name) keeps the last good version; a
/// namespace or name Kubernetes would refuse is refused.
#[test]
fn a_namespace_or_name_edit_never_opens_the_route() {
    let before = owner();
    for (case, route) in [
        (
            "namespace shpo",
            ROUTE.replace("namespace: shop", "namespace: shpo"),
        ),
        (
            "namespace Shop",
            ROUTE.replace("namespace: shop", "namespace: Shop"),
        ),
        (
            "namespace default",
            ROUTE.replace("namespace: shop", "namespace: default"),
        ),
        (
            "name Secret",
            ROUTE.replace("name: secret,", "name: Secret,"),
        ),
        ("namespace omitted", ROUTE.replace(", namespace: shop", "")),
    ] {
        let files = [("app.yaml", APP), ("secret.yaml", &secret(&route, POLICY))];
        let m = judge_files(&files, Some(&before));
        protected(&m, "admin", case);
        let again = judge_files(&files, Some(&m));
        protected(&again, "admin", &format!("{case}, again"));
        // A restart: an invalid name or namespace does not read, so its placeholder closes
        // the paths it declares on every Gateway (`shpo`/`default` are valid namespaces of
        // other objects: see docs/limitations.md).
        if matches!(case, "namespace Shop" | "name Secret" | "namespace omitted") {
            let fresh = judge_files(&files, None);
            assert_eq!(
                answer(&fresh).1,
                "503",
                "{case}, restart: {:#?}",
                fresh.verdicts
            );
        }
    }
    // The EdgePolicy's namespace `Shop` is refused, and keeps the last good (or closes).
    let policy = POLICY.replace("namespace: shop}", "namespace: Shop}");
    let files = [("app.yaml", APP), ("secret.yaml", &secret(ROUTE, &policy))];
    let m = judge_files(&files, Some(&before));
    protected(&m, "admin", "policy namespace Shop");
    let v = verdict(&m, "secret.yaml document 2");
    assert!(
        v.accepted.clone().unwrap_err().contains("DNS label"),
        "{v:?}"
    );
    let fresh = judge_files(&files, None);
    assert_eq!(answer(&fresh), ("shop/secret".into(), "503".into()));
}

/// F4: names Kubernetes would refuse are refused, for every kind the gateway judges itself.
#[test]
fn names_kubernetes_would_refuse_are_refused() {
    for (kind_doc, bad) in [
        (ROUTE, "name: Secret,"),
        (ROUTE, "name: secret_1,"),
        (ROUTE, "name: -secret,"),
        (POLICY, "name: Secret-Edge,"),
    ] {
        let good = if kind_doc == ROUTE {
            "name: secret,"
        } else {
            "name: secret-edge,"
        };
        let doc = kind_doc.replace(good, bad);
        let m = judge_files(&[("x.yaml", &doc)], None);
        let v = verdict(&m, "x.yaml document 1");
        assert!(
            v.accepted.clone().unwrap_err().contains("DNS-1123"),
            "{bad}: {v:?}"
        );
    }
    let long = "a".repeat(64);
    for ns in ["Shop", "sh.op", &long, "-shop"] {
        let doc = ROUTE.replace("namespace: shop", &format!("namespace: {ns:?}"));
        let m = judge_files(&[("x.yaml", &doc)], None);
        let v = verdict(&m, "x.yaml document 1");
        assert!(
            v.accepted.clone().unwrap_err().contains("DNS label"),
            "{ns}: {v:?}"
        );
    }
    // Gateway and GatewayClass names too.
    let gw = CLASS_AND_GATEWAY.replace("name: edge,", "name: Edge,");
    let texts = vec![("gw.yaml".to_owned(), gw)];
    let m = crate::load::judge(&texts, &NoSecrets, &no_certs);
    assert!(m
        .verdicts
        .iter()
        .any(|v| v.kind == "Gateway" && v.accepted.clone().is_err_and(|e| e.contains("DNS-1123"))));
    let class = CLASS_AND_GATEWAY.replace("name: pqmesh}", "name: PQmesh}");
    let m = crate::load::judge(&[("gw.yaml".to_owned(), class)], &NoSecrets, &no_certs);
    assert!(m
        .verdicts
        .iter()
        .any(|v| v.kind == "GatewayClass"
            && v.accepted.clone().is_err_and(|e| e.contains("DNS-1123"))));
    // Valid names stay accepted.
    let m = owner();
    assert!(
        m.verdicts.iter().all(|v| v.accepted.is_ok()),
        "{:#?}",
        m.verdicts
    );
}

/// F2(a): a copy of the gateway's TokenIssuer in a file read first, pointing at the attacker's
/// keys, was refused until the owner made a valid edit; then the copy became the issuer in force
/// and the attacker's tokens opened `/secret`. The definition in force is the one read from
/// where it was read (`pqmesh_policy::admit`); with none in force (a restart), neither is.
#[test]
fn a_copied_token_issuer_never_takes_over() {
    let issuer = |iss: &str, skew: &str| {
        format!(
            "apiVersion: pqmesh.io/v1alpha1\nkind: TokenIssuer\nmetadata: {{name: corp, namespace: shop}}\n\
             spec:\n  issuer: {iss}\n  audiences: [shop]\n  jwksUri: {iss}/jwks\n{skew}"
        )
    };
    let owner = issuer("https://idp.example", "");
    let evil = issuer("https://evil.example", "");
    let edited = issuer("https://idp.example", "  clockSkewSeconds: 30\n");
    let secret_yaml = secret(ROUTE, POLICY);
    let in_force = |m: &Model| {
        m.issuers
            .issuers
            .iter()
            .map(|t| t.spec.issuer.clone())
            .collect::<Vec<_>>()
    };
    let first = judge_files(
        &[
            ("app.yaml", APP),
            ("issuer.yaml", &owner),
            ("secret.yaml", &secret_yaml),
        ],
        None,
    );
    assert_eq!(in_force(&first), ["https://idp.example"]);
    let copied = judge_files(
        &[
            ("aaa-evil.yaml", &evil),
            ("app.yaml", APP),
            ("issuer.yaml", &owner),
            ("secret.yaml", &secret_yaml),
        ],
        Some(&first),
    );
    assert_eq!(in_force(&copied), ["https://idp.example"]);
    let after_edit = judge_files(
        &[
            ("aaa-evil.yaml", &evil),
            ("app.yaml", APP),
            ("issuer.yaml", &edited),
            ("secret.yaml", &secret_yaml),
        ],
        Some(&copied),
    );
    assert_eq!(
        in_force(&after_edit),
        ["https://idp.example"],
        "{:#?}",
        after_edit.verdicts
    );
    assert_eq!(
        after_edit.issuers.issuers[0].spec.clock_skew_seconds, 30,
        "the owner's edit"
    );
    let restarted = judge_files(
        &[
            ("aaa-evil.yaml", &evil),
            ("app.yaml", APP),
            ("issuer.yaml", &edited),
            ("secret.yaml", &secret_yaml),
        ],
        None,
    );
    assert!(in_force(&restarted).is_empty(), "{:#?}", restarted.verdicts);
}
