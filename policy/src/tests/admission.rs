//! Per-object acceptance: each object judged on its own, conflicts and references.
use super::*;
use crate::admit::{admit, candidates_from_yaml, InForce, ObjectKey, PLACEHOLDER};

fn docs(text: &str) -> Vec<crate::admit::Candidate> {
    candidates_from_yaml(text, "p.yaml")
}

const OTHER_NS: &str = r#"
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: bogus, namespace: tenant-b}
spec:
  selector: {}
  mtls: BOGUS
  peers: ["*"]
"#;

#[test]
fn an_invalid_object_affects_only_itself() {
    let text = format!("{ISSUER}---{POLICY}---{OTHER_NS}");
    let a = admit(docs(&text), &PolicySet::default(), TD);
    let accepted: Vec<_> = a
        .set
        .policies
        .iter()
        .filter(|p| !p.metadata.annotations.contains_key(PLACEHOLDER))
        .map(|p| &p.metadata.name)
        .collect();
    assert_eq!(accepted, ["orders"], "the valid policy is in force");
    assert_eq!(a.set.issuers.len(), 1);
    // The invalid one holds only its own namespace (its selector reads as every workload).
    let tenant_b = Workload {
        namespace: "tenant-b".into(),
        labels: BTreeMap::new(),
    };
    assert_eq!(a.set.selecting(&tenant_b), ["tenant-b/bogus"]);
    assert_eq!(
        a.set
            .compile(&workload(&[("app", "orders")]), &TestSecrets)
            .unwrap()
            .policies
            .len(),
        1,
        "nothing of it reaches namespace shop"
    );
    let bogus = &a.verdicts[&ObjectKey::new("AccessPolicy", "tenant-b", "bogus")];
    assert!(!bogus.accepted.status);
    assert_eq!(bogus.accepted.reason, "Invalid");
    assert!(
        bogus.accepted.message.contains("STRICT or PERMISSIVE"),
        "{bogus:?}"
    );
    assert_eq!(bogus.in_force, InForce::None);
    assert_eq!(a.rejected(), 1);
    let orders = &a.verdicts[&ObjectKey::new("AccessPolicy", "shop", "orders")];
    assert!(orders.accepted.status && orders.resolved_refs.status);
}

#[test]
fn an_invalid_edit_keeps_the_last_good_version() {
    let first = admit(
        docs(&format!("{ISSUER}---{POLICY}")),
        &PolicySet::default(),
        TD,
    );
    let broken = POLICY.replace("peers: [\"shop/*\"]", "peer: [\"shop/*\"]");
    let second = admit(docs(&format!("{ISSUER}---{broken}")), &first.set, TD);
    let v = &second.verdicts[&ObjectKey::new("AccessPolicy", "shop", "orders")];
    assert!(
        !v.accepted.status && v.accepted.message.contains("unknown field `peer`"),
        "{v:?}"
    );
    assert_eq!(v.in_force, InForce::LastGood);
    assert_eq!(
        second.set.policies, first.set.policies,
        "the last accepted version"
    );
}

#[test]
fn a_missing_issuer_fails_closed_for_its_policy_only() {
    let a = admit(docs(POLICY), &PolicySet::default(), TD);
    let v = &a.verdicts[&ObjectKey::new("AccessPolicy", "shop", "orders")];
    assert!(v.accepted.status);
    assert!(
        !v.resolved_refs.status && v.resolved_refs.reason == "InvalidRef",
        "{v:?}"
    );
    // In force, but no token can satisfy it.
    let w = a
        .set
        .compile(&workload(&[("app", "orders")]), &TestSecrets)
        .unwrap();
    assert_eq!(w.policies[0].token_issuers, Some(vec![]));
    assert!(w.issuers.is_empty());
}

#[test]
fn unreadable_documents_and_duplicates_are_reported_on_their_own() {
    let text = format!("{POLICY}---\nkind: AccessPolicy\nmetadata: [oops]\n---{ISSUER}---{ISSUER}");
    let a = admit(docs(&text), &PolicySet::default(), TD);
    assert_eq!(a.set.policies.len(), 1);
    assert_eq!(a.set.issuers.len(), 1);
    let reasons: Vec<_> = a
        .verdicts
        .values()
        .filter(|v| !v.accepted.status)
        .map(|v| (v.source.clone(), v.accepted.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("p.yaml document 4".to_owned(), "Duplicate".to_owned()),
            ("p.yaml document 2".to_owned(), "Invalid".to_owned()),
        ]
    );
}

#[test]
fn any_peer_is_explicit_and_compiles_to_no_restriction() {
    let text = POLICY.replace("[\"shop/*\"]", "[\"*\"]");
    let a = admit(
        docs(&format!("{ISSUER}---{text}")),
        &PolicySet::default(),
        TD,
    );
    let w = a
        .set
        .compile(&workload(&[("app", "orders")]), &TestSecrets)
        .unwrap();
    assert_eq!(w.policies[0].peers, None);
}

/// A TokenIssuer in `ns` named `name` for issuer `iss`.
fn issuer(ns: &str, name: &str, iss: &str) -> String {
    format!(
        "apiVersion: pqmesh.io/v1alpha1\nkind: TokenIssuer\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{issuer: \"{iss}\", audiences: [{name}], jwksUri: \"{iss}/jwks\"}}\n"
    )
}

/// An AccessPolicy in `shop` for `app: {app}` naming issuer `uses`.
fn policy_using(app: &str, uses: &str) -> String {
    format!(
        "apiVersion: pqmesh.io/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: {app}, namespace: shop}}\n\
         spec: {{selector: {{matchLabels: {{app: {app}}}}}, peers: [\"*\"], token: {{issuers: [{uses}]}}}}\n"
    )
}

/// Two TokenIssuers of one namespace with the same `spec.issuer` (outside review F4: the control
/// plane pushed both and every selected sidecar refused the snapshot, freezing the workload's
/// policy). Now the later one is refused on its own and the sidecar never sees both.
#[test]
fn a_second_issuer_for_the_same_iss_is_refused_and_affects_only_itself() {
    let text = [
        issuer("shop", "web", "https://idp.example"),
        issuer("shop", "api", "https://idp.example"),
        issuer("other", "api", "https://idp.example"),
        policy_using("front", "web"),
        policy_using("back", "api"),
    ]
    .join("---\n");
    let a = admit(docs(&text), &PolicySet::default(), TD);
    let verdict =
        |kind: &str, ns: &str, name: &str| a.verdicts[&ObjectKey::new(kind, ns, name)].clone();
    let api = verdict("TokenIssuer", "shop", "api");
    assert!(!api.accepted.status, "{api:?}");
    assert_eq!(api.accepted.reason, "Conflicted");
    assert!(
        api.accepted.message.contains("TokenIssuer shop/web"),
        "{api:?}"
    );
    assert_eq!(api.in_force, InForce::None);
    // Another namespace may trust the same issuer.
    assert!(verdict("TokenIssuer", "other", "api").accepted.status);
    assert!(verdict("TokenIssuer", "shop", "web").accepted.status);
    assert_eq!(a.set.issuers.len(), 2);
    // The policy naming the refused one fails closed; the other is untouched.
    let back = verdict("AccessPolicy", "shop", "back");
    assert!(
        back.accepted.status && !back.resolved_refs.status,
        "{back:?}"
    );
    assert!(
        verdict("AccessPolicy", "shop", "front")
            .resolved_refs
            .status
    );
    let w = a
        .set
        .compile(&workload(&[("app", "back")]), &TestSecrets)
        .unwrap();
    assert_eq!(w.policies[0].token_issuers, Some(vec![]));
    let w = a
        .set
        .compile(&workload(&[("app", "front")]), &TestSecrets)
        .unwrap();
    assert_eq!(w.issuers.len(), 1);
}

/// The one in force wins over a newcomer whatever the names; without history the older
/// (`creationTimestamp`) wins, then the one read first.
#[test]
fn the_issuer_in_force_or_the_older_one_wins_a_conflict() {
    let first = admit(
        docs(&issuer("shop", "zeta", "https://idp.example")),
        &PolicySet::default(),
        TD,
    );
    let both = format!(
        "{}---\n{}",
        issuer("shop", "alpha", "https://idp.example"),
        issuer("shop", "zeta", "https://idp.example")
    );
    let second = admit(docs(&both), &first.set, TD);
    assert!(
        second.verdicts[&ObjectKey::new("TokenIssuer", "shop", "zeta")]
            .accepted
            .status
    );
    let alpha = &second.verdicts[&ObjectKey::new("TokenIssuer", "shop", "alpha")];
    assert_eq!(alpha.accepted.reason, "Conflicted", "{alpha:?}");

    let mut c = docs(&both);
    c[0].created = Some("2026-12-05T10:00:00Z".into());
    c[1].created = Some("2026-12-01T10:00:00Z".into());
    let by_age = admit(c, &PolicySet::default(), TD);
    assert!(
        by_age.verdicts[&ObjectKey::new("TokenIssuer", "shop", "zeta")]
            .accepted
            .status
    );
    assert!(
        !by_age.verdicts[&ObjectKey::new("TokenIssuer", "shop", "alpha")]
            .accepted
            .status
    );

    let by_arrival = admit(docs(&both), &PolicySet::default(), TD);
    assert!(
        by_arrival.verdicts[&ObjectKey::new("TokenIssuer", "shop", "alpha")]
            .accepted
            .status
    );
}

/// An edit that makes an issuer collide keeps its last accepted version in force.
#[test]
fn an_edit_into_a_conflict_keeps_the_last_good_version() {
    let before = format!(
        "{}---\n{}",
        issuer("shop", "web", "https://idp.example"),
        issuer("shop", "api", "https://api-idp.example")
    );
    let first = admit(docs(&before), &PolicySet::default(), TD);
    assert_eq!(first.rejected(), 0);
    let after = before.replace("https://api-idp.example", "https://idp.example");
    let second = admit(docs(&after), &first.set, TD);
    let api = &second.verdicts[&ObjectKey::new("TokenIssuer", "shop", "api")];
    assert_eq!(api.accepted.reason, "Conflicted", "{api:?}");
    assert_eq!(api.in_force, InForce::LastGood);
    let mut kept: Vec<_> = second
        .set
        .issuers
        .iter()
        .map(|t| t.spec.issuer.clone())
        .collect();
    kept.sort();
    assert_eq!(kept, ["https://api-idp.example", "https://idp.example"]);
}

/// Outside review 9 F1: an invalid AccessPolicy with no accepted version (new, or after a
/// control-plane restart) used to be left out, so the workloads it selects fell back to their
/// sidecars' allow-list. Now a placeholder holds its selector and ports and admits no caller;
/// accepted policies still allow what they allow.
#[test]
fn an_invalid_policy_without_an_accepted_version_fails_closed_for_what_it_selects() {
    let broken = POLICY.replace("peers: [\"shop/*\"]", "peers: [\"shop/*\"]\n  mtls_typo: 1");
    let restarted = admit(
        docs(&format!("{ISSUER}---{broken}")),
        &PolicySet::default(),
        TD,
    );
    let v = &restarted.verdicts[&ObjectKey::new("AccessPolicy", "shop", "orders")];
    assert!(!v.accepted.status && v.in_force == InForce::None, "{v:?}");
    assert!(v.accepted.message.contains("fails closed"), "{v:?}");
    let selected = restarted
        .set
        .compile(&workload(&[("app", "orders")]), &TestSecrets)
        .unwrap();
    assert!(!selected.is_empty(), "the workload is governed by policy");
    let peer: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let request = crate::Request {
        port: 8080,
        peer: Some(&peer),
        trust_domain: TD,
        http: None,
    };
    assert!(matches!(
        selected.evaluate(&request),
        crate::Decision::Deny(_)
    ));
    // Others are untouched.
    let other = restarted
        .set
        .compile(&workload(&[("app", "billing")]), &TestSecrets)
        .unwrap();
    assert!(other.is_empty());
    // Judged again with the placeholder in the set: still no accepted version, same verdict.
    let again = admit(docs(&format!("{ISSUER}---{broken}")), &restarted.set, TD);
    assert_eq!(
        again.verdicts[&ObjectKey::new("AccessPolicy", "shop", "orders")],
        *v
    );
    // Fixed: the real policy replaces the placeholder.
    let fixed = admit(docs(&format!("{ISSUER}---{POLICY}")), &again.set, TD);
    assert_eq!(fixed.set.policies.len(), 1);
    assert!(fixed.set.policies[0].metadata.annotations.is_empty());
}

/// Outside review 9 F2: a second definition of an object read before the one in force (a copy
/// in a file that sorts first) replaced it. The version in force stays; the newcomer is refused.
#[test]
fn a_duplicate_never_displaces_the_version_in_force() {
    let first = admit(
        docs(&format!("{ISSUER}---{POLICY}")),
        &PolicySet::default(),
        TD,
    );
    let copy = POLICY.replace("[\"shop/*\"]", "[\"*\"]");
    let mut candidates = candidates_from_yaml(&copy, "a-dup.yaml");
    candidates.extend(docs(&format!("{ISSUER}---{POLICY}")));
    let second = admit(candidates, &first.set, TD);
    assert_eq!(
        second.set.policies, first.set.policies,
        "the version in force"
    );
    let refused: Vec<_> = second
        .verdicts
        .values()
        .filter(|v| !v.accepted.status)
        .map(|v| (v.source.as_str(), v.accepted.reason.as_str()))
        .collect();
    assert_eq!(refused, [("a-dup.yaml document 1", "Duplicate")]);
}
