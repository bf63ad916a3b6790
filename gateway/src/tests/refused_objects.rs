//! Review 10 (outside attack): a refused HTTPRoute or EdgePolicy never opens anything. A victim
//! route protected by an EdgePolicy sits beside a `/` catch-all with no policy; each refused
//! form of the route or the policy, with and without an accepted version before it, must leave
//! `/victim/x` closed (503) or protected, never served by the catch-all.

use hyper::HeaderMap;

use super::{no_certs, NoSecrets, CLASS_AND_GATEWAY};
use crate::load::{judge_with, LastGood, Model};
use crate::routes::{choose, RequestView};

const FALLBACK: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: fallback, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: admin, port: 80}]
";

const VICTIM: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: victim, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: web}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /victim}}]
      backendRefs: [{name: admin, port: 80}]
";

const POLICY: &str = "apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {name: v, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: victim}
  token: {issuer: corp, scopes: [\"admin:all\"]}
";

/// Judges the files, carrying `previous`'s accepted state as the running gateway does.
fn judge_files(files: &[(&str, &str)], previous: Option<&Model>) -> Model {
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

/// Which route answers `path`, and whether it is closed (503) or checks a token.
fn answer(m: &Model, path: &str) -> (String, &'static str) {
    let headers = HeaderMap::new();
    let req = RequestView {
        host: "shop.example",
        method: "GET",
        path,
        query: None,
        headers: &headers,
    };
    let Some(c) = choose(&m.routes, &m.listeners[0], &req) else {
        return ("none".into(), "404");
    };
    let r = &m.routes[c.route];
    let what = if r.closed.is_some() {
        "503"
    } else if r.edge.is_some() {
        "401"
    } else {
        "open"
    };
    (r.name.clone(), what)
}

fn assert_not_open(m: &Model, case: &str) {
    let (route, what) = answer(m, "/victim/x");
    assert!(
        route == "shop/victim" && what != "open",
        "{case}: /victim/x answered by {route} ({what}); verdicts: {:#?}",
        m.verdicts
    );
    assert_eq!(answer(m, "/other").0, "shop/fallback", "{case}");
}

fn routes_yaml(victim: &str) -> String {
    format!("{FALLBACK}---\n{victim}")
}

/// The refused forms of the victim route the review found (F1).
fn refused_routes() -> Vec<(&'static str, String)> {
    vec![
        (
            "timeouts",
            VICTIM.replace(
                "      backendRefs",
                "      timeouts: {request: 10s}\n      backendRefs",
            ),
        ),
        (
            "RegularExpression",
            VICTIM.replace(
                "PathPrefix, value: /victim",
                "RegularExpression, value: /victim/.*",
            ),
        ),
        (
            "sectionName typo",
            VICTIM.replace("sectionName: web", "sectionName: htp"),
        ),
        (
            "YAML syntax error",
            VICTIM.replace("[{name: edge,", "[{name: edge,,]"),
        ),
        (
            "kind case",
            VICTIM.replace("kind: HTTPRoute", "kind: HttpRoute"),
        ),
    ]
}

/// F1: a refused edit of a protected route keeps its last accepted version (and so its
/// EdgePolicy) in force; it never falls through to the catch-all.
#[test]
fn a_refused_route_edit_keeps_its_last_accepted_version() {
    let before = judge_files(
        &[
            ("routes.yaml", &routes_yaml(VICTIM)),
            ("policy.yaml", POLICY),
        ],
        None,
    );
    assert_eq!(answer(&before, "/victim/x"), ("shop/victim".into(), "401"));
    for (case, victim) in refused_routes() {
        let after = judge_files(
            &[
                ("routes.yaml", &routes_yaml(&victim)),
                ("policy.yaml", POLICY),
            ],
            Some(&before),
        );
        assert_eq!(
            answer(&after, "/victim/x"),
            ("shop/victim".into(), "401"),
            "{case}: {:#?}",
            after.verdicts
        );
        assert_not_open(&after, case);
        let refused = after
            .verdicts
            .iter()
            .find(|v| v.accepted.is_err())
            .unwrap_or_else(|| panic!("{case}: nothing refused"));
        let message = refused.accepted.clone().unwrap_err();
        assert!(message.contains("last"), "{case}: {message}");
        // And again, from the state that judgement left (the edit stays refused).
        let again = judge_files(
            &[
                ("routes.yaml", &routes_yaml(&victim)),
                ("policy.yaml", POLICY),
            ],
            Some(&after),
        );
        assert_eq!(
            answer(&again, "/victim/x"),
            ("shop/victim".into(), "401"),
            "{case}"
        );
    }
}

/// F1: with no accepted version (a new route, or after a restart), a refused route is held by
/// a placeholder that answers 503 for what it declares; its EdgePolicy says the route is
/// refused (ResolvedRefs=False) instead of "no HTTPRoute".
#[test]
fn a_refused_route_with_no_accepted_version_is_held_by_a_closed_placeholder() {
    for (case, victim) in refused_routes() {
        if case == "YAML syntax error" {
            continue; // that one's route never reads: see the EdgePolicy tests for the file
        }
        let m = judge_files(
            &[
                ("routes.yaml", &routes_yaml(&victim)),
                ("policy.yaml", POLICY),
            ],
            None,
        );
        assert_eq!(
            answer(&m, "/victim/x"),
            ("shop/victim".into(), "503"),
            "{case}: {:#?}",
            m.verdicts
        );
        let policy = m.verdicts.iter().find(|v| v.name == "shop/v").unwrap();
        assert!(policy.accepted.is_ok(), "{case}: {policy:?}");
        let refs = policy.resolved_refs.clone().unwrap_err();
        assert!(refs.contains("is refused"), "{case}: {refs}");
        let route = m.verdicts.iter().find(|v| v.name == "shop/victim").unwrap();
        let message = route.accepted.clone().unwrap_err();
        assert!(message.contains("503"), "{case}: {message}");
    }
    // A pattern closes its literal start: `/victim.*` could match `/victimx`, so `/` is closed.
    let wide = VICTIM.replace(
        "PathPrefix, value: /victim",
        "RegularExpression, value: /victim.*",
    );
    let m = judge_files(&[("routes.yaml", &routes_yaml(&wide))], None);
    assert_eq!(answer(&m, "/victimx").1, "503");
    // A policy naming a route that does not exist at all: ResolvedRefs=False, saying so.
    let m = judge_files(&[("routes.yaml", FALLBACK), ("policy.yaml", POLICY)], None);
    let policy = m.verdicts.iter().find(|v| v.name == "shop/v").unwrap();
    assert!(policy
        .resolved_refs
        .clone()
        .unwrap_err()
        .contains("no HTTPRoute shop/victim"));
}

/// The edits of the EdgePolicy the review found (F2), each refused.
fn refused_policies() -> Vec<(&'static str, String)> {
    vec![
        (
            "bracket typo",
            POLICY.replace("\"admin:all\"]}", "\"admin:all\"}"),
        ),
        ("tab", POLICY.replace("  token:", "\ttoken:")),
        (
            "duplicate key",
            POLICY.replace("  token:", "  token: {issuer: x}\n  token:"),
        ),
        (
            "name as a list",
            POLICY.replace("name: victim}", "name: [victim]}"),
        ),
        (
            "kind case",
            POLICY.replace("kind: EdgePolicy", "kind: Edgepolicy"),
        ),
        (
            "targetRefs",
            POLICY.replace(
                "targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: victim}",
                "targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: victim}]",
            ),
        ),
        ("missing namespace", POLICY.replace(", namespace: shop", "")),
    ]
}

/// F2: an EdgePolicy edit that does not parse never re-opens its route: its last accepted
/// version stays in force (or its file's last readable version), and with none the refused
/// document closes every route it may name, with the closure on the route's verdict.
#[test]
fn an_edge_policy_edit_that_does_not_parse_never_reopens_its_route() {
    let routes = routes_yaml(VICTIM);
    let before = judge_files(&[("routes.yaml", &routes), ("policy.yaml", POLICY)], None);
    assert_eq!(answer(&before, "/victim/x"), ("shop/victim".into(), "401"));
    let mut cases = refused_policies();
    cases.push(("empty file", String::new()));
    for (case, policy) in cases {
        let after = judge_files(
            &[("routes.yaml", &routes), ("policy.yaml", &policy)],
            Some(&before),
        );
        assert_eq!(
            answer(&after, "/victim/x"),
            ("shop/victim".into(), "401"),
            "{case} (with a version in force): {:#?}",
            after.verdicts
        );
        if case == "empty file" {
            continue;
        }
        // No version in force (a restart): the route is closed, and its verdict says why.
        let fresh = judge_files(&[("routes.yaml", &routes), ("policy.yaml", &policy)], None);
        assert_eq!(
            answer(&fresh, "/victim/x"),
            ("shop/victim".into(), "503"),
            "{case} (no version in force): {:#?}",
            fresh.verdicts
        );
        assert_not_open(&fresh, case);
        let route = fresh
            .verdicts
            .iter()
            .find(|v| v.kind == "HTTPRoute" && v.name == "shop/victim")
            .unwrap();
        let refs = route.resolved_refs.clone().unwrap_err();
        assert!(refs.contains("503"), "{case}: {refs}");
        assert_eq!(
            route.parents[0].resolved_refs.clone().unwrap_err().0,
            "EdgePolicyRefused"
        );
    }
}

/// F10 (with review 12's source rule): a second definition of an object is refused as
/// `Duplicate`; the one read from where the version in force was read wins, what the loser
/// would govern is closed, and each route's verdict names the real cause. With no version in
/// force, no definition wins (see `review12`).
#[test]
fn duplicates_are_refused_and_close_what_they_would_govern() {
    let dupe = VICTIM.replace("value: /victim", "value: /dupe");
    let first = judge_files(
        &[("a.yaml", &routes_yaml(VICTIM)), ("policy.yaml", POLICY)],
        None,
    );
    let m = judge_files(
        &[
            ("a.yaml", &routes_yaml(VICTIM)),
            ("b.yaml", &dupe),
            ("policy.yaml", POLICY),
        ],
        Some(&first),
    );
    assert_eq!(answer(&m, "/victim/x"), ("shop/victim".into(), "401"));
    assert_eq!(answer(&m, "/dupe/x"), ("shop/victim".into(), "503"));
    let loser = m
        .verdicts
        .iter()
        .find(|v| v.source.starts_with("b.yaml"))
        .unwrap();
    assert_eq!(loser.accepted_reason, "Duplicate");
    assert!(m
        .verdicts
        .iter()
        .filter(|v| v.name == "shop/victim" && v.accepted.is_ok())
        .all(|v| v.resolved_refs.is_ok()));
    // The definition read from the in-force source wins whatever its content (an edit there
    // is the owner's): b.yaml, though equal to the old version, stays a duplicate and closed.
    let m2 = judge_files(
        &[
            ("a.yaml", &routes_yaml(&dupe)),
            ("b.yaml", VICTIM),
            ("policy.yaml", POLICY),
        ],
        Some(&m),
    );
    assert_eq!(answer(&m2, "/dupe/x"), ("shop/victim".into(), "401"));
    assert_eq!(answer(&m2, "/victim/x").1, "503");
    // Two EdgePolicies shop/v: the second is Duplicate, and the route it names is closed with
    // that cause (not "refused" for a policy that shows Accepted=True).
    let other = VICTIM
        .replace("name: victim", "name: other")
        .replace("value: /victim", "value: /other2");
    let second = POLICY.replace("name: victim}", "name: other}");
    let routes = routes_yaml(VICTIM) + "---\n" + &other;
    let first = judge_files(&[("routes.yaml", &routes), ("policy.yaml", POLICY)], None);
    let m = judge_files(
        &[
            ("routes.yaml", &routes),
            ("policy.yaml", &format!("{POLICY}---\n{second}")),
        ],
        Some(&first),
    );
    assert_eq!(answer(&m, "/victim/x"), ("shop/victim".into(), "401"));
    assert_eq!(answer(&m, "/other2/x"), ("shop/other".into(), "503"));
    let dup = m
        .verdicts
        .iter()
        .find(|v| v.source == "policy.yaml document 2")
        .unwrap();
    assert_eq!(dup.accepted_reason, "Duplicate");
    let route = m.verdicts.iter().find(|v| v.name == "shop/other").unwrap();
    assert!(route
        .resolved_refs
        .clone()
        .unwrap_err()
        .contains("Duplicate"));
}
