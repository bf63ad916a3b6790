//! Per-object acceptance: each object judged on its own, conflicts and references.
use super::*;
use crate::admit::{admit, candidates_from_yaml, InForce, ObjectKey};

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
    assert_eq!(a.set.policies.len(), 1, "the valid policy is in force");
    assert_eq!(a.set.issuers.len(), 1);
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
