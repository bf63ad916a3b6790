//! Review 13 (outside attack, black box, local mode): a file that does not parse, at start-up,
//! is read document by document and as far as each reads, so an escaped target name still
//! closes its route (F4); an EdgePolicy edit whose targetRef names no route keeps the last
//! accepted version on the route it protected (F3). Set-up of `review12_objects.rs`.

use hyper::HeaderMap;

use super::review12_objects::{
    answer, judge_files, owner, protected, secret, verdict, APP, POLICY, ROUTE,
};
use crate::load::Model;
use crate::routes::{choose, RequestView};

/// How `path` is answered: the route and `503`, `token:<scopes>` or `open`.
fn at(m: &Model, path: &str) -> (String, String) {
    let headers = HeaderMap::new();
    let req = RequestView {
        host: "shop.example",
        method: "GET",
        path,
        query: None,
        headers: &headers,
    };
    let Some(c) = choose(&m.routes, &m.listeners[0], &req) else {
        return ("none".into(), "404".into());
    };
    let r = &m.routes[c.route];
    let what = match (&r.closed, &r.edge) {
        (Some(_), _) => "503".to_owned(),
        (None, Some(e)) => format!("token:{:?}", e.token.as_ref().map(|t| t.scopes.join(" "))),
        (None, None) => "open".to_owned(),
    };
    (r.name.clone(), what)
}

/// The attacker's file: an EdgePolicy `shop/p1` naming `secret` with a YAML escape, then a
/// duplicate `token:` key, so that the file does not parse.
const ESCAPED: &str = r#"apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {name: p1, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: "secr\u0065t"}
  token: {issuer: corp, scopes: ["x:read"]}
  token: {issuer: corp}
"#;

fn restart(policy: &str) -> Model {
    judge_files(
        &[
            ("app.yaml", APP),
            ("policy.yaml", policy),
            ("secret.yaml", ROUTE),
        ],
        None,
    )
}

/// F4: at start-up, the escaped target name is decoded (the document read as far as it
/// parses), so the route is closed; the catch-all beside it is not.
#[test]
fn an_escaped_target_name_in_a_file_that_does_not_parse_closes_its_route() {
    let m = restart(ESCAPED);
    assert_eq!(
        answer(&m),
        ("shop/secret".into(), "503".into()),
        "{:#?}",
        m.verdicts
    );
    assert_eq!(at(&m, "/other"), ("shop/app".into(), "open".into()));
    let v = verdict(&m, "policy.yaml document 1");
    assert_eq!(v.kind, "EdgePolicy");
    assert!(
        v.accepted.clone().unwrap_err().contains("targetRef names"),
        "{v:?}"
    );
    // Block style, the error (a tab) after the target; and a list of targets.
    for (case, text) in [
        (
            "block style, tab",
            ESCAPED
                .replace(
                    "  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: \"secr\\u0065t\"}",
                    "  targetRef:\n    group: gateway.networking.k8s.io\n    kind: HTTPRoute\n    name: \"secr\\u0065t\"",
                )
                .replace("  token: {issuer: corp}\n", "\ttoken: {issuer: corp}\n"),
        ),
        (
            "targetRefs",
            ESCAPED
                .replace("targetRef: {", "targetRefs: [{")
                .replace("\"secr\\u0065t\"}", "\"secr\\u0065t\"}]"),
        ),
        (
            "hex escape",
            ESCAPED.replace("\"secr\\u0065t\"", "\"\\x73ecret\""),
        ),
    ] {
        let m = restart(&text);
        assert_eq!(answer(&m).1, "503", "{case}: {:#?}", m.verdicts);
        assert_eq!(at(&m, "/other").1, "open", "{case}");
    }
}

/// F4: the target sits in the part that does not read: the escaped name on the failing lines
/// is still decoded when the line parses alone; when no target reads, every route of the
/// namespace closes; when not even that reads, every route.
#[test]
fn what_does_not_read_closes_more_widely() {
    // The target's flow mapping is not closed: no targetRef reads, the namespace does.
    let unclosed = ESCAPED.replace("\"secr\\u0065t\"}", "\"secr\\u0065t\"");
    let m = restart(&unclosed);
    assert_eq!(answer(&m).1, "503", "{:#?}", m.verdicts);
    assert_eq!(at(&m, "/other").1, "503", "every route of shop");
    assert!(verdict(&m, "policy.yaml document 1")
        .accepted
        .clone()
        .unwrap_err()
        .contains("every HTTPRoute of namespace shop"));
    // The metadata does not read either: every route of every namespace.
    let bare = unclosed.replace("namespace: shop}", "namespace: shop");
    let m = restart(&bare);
    assert_eq!(answer(&m).1, "503");
    assert_eq!(at(&m, "/other").1, "503");
    assert!(verdict(&m, "policy.yaml document 1")
        .accepted
        .clone()
        .unwrap_err()
        .contains("every HTTPRoute of every namespace"));
    // Nothing reads at all: the same.
    let m = restart("{{{\n");
    assert_eq!(answer(&m).1, "503", "{:#?}", m.verdicts);
    // A kind far from ours that reads is left alone.
    let m = restart("kind: Ingress\nmetadata: {name: x, namespace: shop}\nspec: [\n");
    assert_eq!(answer(&m).1, "open", "{:#?}", m.verdicts);
}

/// F4: the other documents of the file are judged on their own, each as a file that parses
/// would be; a route that does not parse is held by a placeholder.
#[test]
fn the_documents_of_a_file_that_does_not_parse_are_judged_one_by_one() {
    // The protected route after the broken policy, in the same file: served, and closed.
    let file = format!("{ESCAPED}---\n{ROUTE}");
    let m = judge_files(&[("app.yaml", APP), ("secret.yaml", &file)], None);
    assert_eq!(
        answer(&m),
        ("shop/secret".into(), "503".into()),
        "{:#?}",
        m.verdicts
    );
    assert!(verdict(&m, "secret.yaml document 2").accepted.is_ok());
    // The owner's file with the route's document broken: a placeholder closes its paths, and
    // its EdgePolicy (document 2) is judged.
    let broken = ROUTE.replace(
        "  parentRefs: [{name: edge}]",
        "  parentRefs: [{name: edge}]\n\tx: 1",
    );
    let m = judge_files(
        &[("app.yaml", APP), ("secret.yaml", &secret(&broken, POLICY))],
        None,
    );
    assert_eq!(answer(&m).1, "503", "{:#?}", m.verdicts);
    assert!(m
        .verdicts
        .iter()
        .any(|v| v.source == "secret.yaml document 2"
            && v.kind == "EdgePolicy"
            && v.accepted.is_ok()));
    // A leading `---` is not a document.
    let m = restart(&format!("---\n{ESCAPED}"));
    assert!(m
        .verdicts
        .iter()
        .any(|v| v.source == "policy.yaml document 1"));
}

/// F3: an EdgePolicy edit whose targetRef names no route (another namespace, a typo) keeps the
/// last accepted version on the route it protected, and says so.
#[test]
fn an_edge_policy_retargeted_to_nothing_keeps_the_last_accepted_version() {
    let before = owner();
    for (case, policy) in [
        (
            "namespace default",
            POLICY.replace("namespace: shop}", "namespace: default}"),
        ),
        (
            "name typo",
            POLICY.replace("name: secret}", "name: secrte}"),
        ),
        (
            "renamed and retargeted",
            POLICY
                .replace("name: secret-edge", "name: other")
                .replace("name: secret}", "name: nothing}"),
        ),
    ] {
        let files = [("app.yaml", APP), ("secret.yaml", &secret(ROUTE, &policy))];
        let m = judge_files(&files, Some(&before));
        protected(&m, "admin", case);
        let v = verdict(&m, "secret.yaml document 2");
        assert!(v.accepted.is_ok(), "{case}: {v:?}");
        let refs = v.resolved_refs.clone().unwrap_err();
        assert!(
            refs.contains("the last accepted version (targeting HTTPRoute shop/secret) stays in force until the targetRef names a route"),
            "{case}: {refs}"
        );
        let again = judge_files(&files, Some(&m));
        protected(&again, "admin", &format!("{case}, again"));
        // A restart has no last accepted version: the edit protects nothing (a documented
        // limitation: the route it meant to name cannot be known).
        let fresh = judge_files(&files, None);
        assert_eq!(answer(&fresh).1, "open", "{case}, restart");
    }
    // A retarget to a route that exists is a valid edit: the protection moves.
    let moved = POLICY.replace("name: secret}", "name: app}");
    let files = [("app.yaml", APP), ("secret.yaml", &secret(ROUTE, &moved))];
    let m = judge_files(&files, Some(&before));
    assert_eq!(answer(&m).1, "open");
    assert_eq!(at(&m, "/other").1, "token:Some(\"admin\")");
}
