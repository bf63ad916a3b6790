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
    // The nameless AccessPolicy still fails closed over what it selects (its namespace).
    let placeholders: Vec<_> = a
        .set
        .policies
        .iter()
        .filter(|p| p.metadata.annotations.contains_key(PLACEHOLDER))
        .map(|p| p.metadata.namespace.as_str())
        .collect();
    assert_eq!((a.set.policies.len(), placeholders), (2, vec!["default"]));
    // Two definitions and no version in force (review 12 F2): neither is picked by read order.
    assert_eq!(a.set.issuers.len(), 0);
    let mut reasons: Vec<_> = a
        .verdicts
        .values()
        .filter(|v| !v.accepted.status)
        .map(|v| (v.source.clone(), v.accepted.reason.clone()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("p.yaml document 2".to_owned(), "Invalid".to_owned()),
            ("p.yaml document 3".to_owned(), "Duplicate".to_owned()),
            ("p.yaml document 4".to_owned(), "Duplicate".to_owned()),
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

/// Candidates of several local files, read in name order as the control plane does.
fn files(files: &[(&str, &str)]) -> Vec<crate::admit::Candidate> {
    let mut files = files.to_vec();
    files.sort();
    files
        .iter()
        .flat_map(|(name, text)| candidates_from_yaml(text, name))
        .collect()
}

fn denies_web(set: &PolicySet) -> bool {
    let w = set
        .compile(&workload(&[("app", "orders")]), &TestSecrets)
        .unwrap();
    let peer: pqmesh_mtls::SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let request = crate::Request {
        port: 8080,
        peer: Some(&peer),
        trust_domain: TD,
        http: None,
    };
    !w.is_empty() && matches!(w.evaluate(&request), crate::Decision::Deny(_))
}

/// Outside review 12 F1: an edit that made the AccessPolicy's kind unreadable (a typo, another
/// case, no `kind`, `{}`, a half-written file) dropped the policy, so its workload fell back to
/// its sidecar's `PQMESH_INBOUND_ALLOW` and the app got requests no policy checked. Each keeps
/// the last accepted version in force.
#[test]
fn an_edit_that_hides_the_kind_keeps_the_last_good_version() {
    let first = admit(
        files(&[("orders.yaml", &format!("{ISSUER}---{POLICY}"))]),
        &PolicySet::default(),
        TD,
    );
    assert_eq!(first.rejected(), 0);
    for (case, edit) in [
        (
            "kind typo",
            POLICY.replace("kind: AccessPolicy", "kind: AccessPolcy"),
        ),
        (
            "kind lower case",
            POLICY.replace("kind: AccessPolicy", "kind: accesspolicy"),
        ),
        ("no kind", POLICY.replace("kind: AccessPolicy", "")),
        (
            "no kind, no apiVersion",
            POLICY
                .replace("kind: AccessPolicy", "")
                .replace("apiVersion: pqmesh.io/v1alpha1", ""),
        ),
        ("empty object", "{}\n".to_owned()),
        ("a scalar", "garbage\n".to_owned()),
        (
            "half-written",
            POLICY[..POLICY.len() / 2].replace("spec:", "spec: ["),
        ),
    ] {
        let second = admit(
            files(&[("orders.yaml", &format!("{ISSUER}---{edit}"))]),
            &first.set,
            TD,
        );
        assert_eq!(
            second.set.policies, first.set.policies,
            "{case}: {:#?}",
            second.verdicts
        );
        assert!(second.rejected() >= 1, "{case}: the edit is refused");
        let v = &second.verdicts[&ObjectKey::new("AccessPolicy", "shop", "orders")];
        assert_eq!(v.in_force, InForce::LastGood, "{case}: {v:?}");
        // Judged again from its own result (the next poll): still in force.
        let third = admit(
            files(&[("orders.yaml", &format!("{ISSUER}---{edit}"))]),
            &second.set,
            TD,
        );
        assert_eq!(third.set.policies, first.set.policies, "{case} (again)");
    }
    // The file removed, or every document of it accepted: the removal takes effect.
    let removed = admit(files(&[("issuer.yaml", ISSUER)]), &first.set, TD);
    assert!(removed.set.policies.is_empty());
    let renamed = POLICY.replace("name: orders,", "name: orders-v2,");
    let clean = admit(
        files(&[("orders.yaml", &format!("{ISSUER}---{renamed}"))]),
        &first.set,
        TD,
    );
    let names: Vec<_> = clean
        .set
        .policies
        .iter()
        .map(|p| &p.metadata.name)
        .collect();
    assert_eq!(names, ["orders-v2"]);
}

/// The same with no version in force (a control-plane restart): a document whose kind does not
/// read but whose spec is an AccessPolicy's fails closed over what it selects.
#[test]
fn a_policy_with_a_broken_kind_fails_closed_after_a_restart() {
    for edit in [
        POLICY.replace("kind: AccessPolicy", "kind: AccessPolcy"),
        POLICY.replace("kind: AccessPolicy", ""),
        POLICY.replace("kind: AccessPolicy", "kind: ' accesspolicy'"),
    ] {
        let a = admit(
            files(&[("orders.yaml", &format!("{ISSUER}---{edit}"))]),
            &PolicySet::default(),
            TD,
        );
        assert!(denies_web(&a.set), "{edit}: {:#?}", a.verdicts);
    }
    // Another API's object is not mistaken for a policy.
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec: {rules: []}\n";
    let a = admit(files(&[("r.yaml", route)]), &PolicySet::default(), TD);
    assert!(a.set.policies.is_empty());
}

/// Outside review 12 F2: a copy of a TokenIssuer in a file that sorts first was refused as a
/// duplicate, until the owner made a valid edit: then nothing equalled the version in force and
/// the copy (pointing at the attacker's keys) took over. The definition in force is the one
/// read from where it was read; with none in force, neither definition is.
#[test]
fn a_duplicate_never_takes_over_after_the_owner_edits() {
    let evil = ISSUER.replace("127.0.0.1:9000", "127.0.0.1:9666");
    let owner = format!("{ISSUER}---{POLICY}");
    let first = admit(files(&[("orders.yaml", &owner)]), &PolicySet::default(), TD);
    let with_copy = admit(
        files(&[("aaa-evil.yaml", &evil), ("orders.yaml", &owner)]),
        &first.set,
        TD,
    );
    assert_eq!(with_copy.set.issuers, first.set.issuers);
    let edited_issuer = ISSUER.replace(
        "audiences: [orders]",
        "audiences: [orders]\n  clockSkewSeconds: 30",
    );
    let edited = format!("{edited_issuer}---{POLICY}");
    let after_edit = admit(
        files(&[("aaa-evil.yaml", &evil), ("orders.yaml", &edited)]),
        &with_copy.set,
        TD,
    );
    assert_eq!(after_edit.set.issuers.len(), 1);
    assert_eq!(
        after_edit.set.issuers[0].spec.issuer, "http://127.0.0.1:9000",
        "the owner's edit is in force"
    );
    assert_eq!(after_edit.set.issuers[0].spec.clock_skew_seconds, 30);
    let copy = after_edit
        .verdicts
        .values()
        .find(|v| v.source.starts_with("aaa-evil.yaml"))
        .unwrap();
    assert_eq!(
        (copy.accepted.reason.as_str(), copy.in_force),
        ("Duplicate", InForce::None)
    );
    // A refused edit of the owner's file keeps the owner's last good version, not the copy.
    let broken = edited.replace("clockSkewSeconds: 30", "clockSkewSeconds: 30\n  typo: 1");
    let after_broken = admit(
        files(&[("aaa-evil.yaml", &evil), ("orders.yaml", &broken)]),
        &after_edit.set,
        TD,
    );
    assert_eq!(after_broken.set.issuers, after_edit.set.issuers);
    // A restart with both files: neither is picked by read order; policies naming it fail
    // closed (no token satisfies them), nothing trusts the copy's keys.
    let restarted = admit(
        files(&[("aaa-evil.yaml", &evil), ("orders.yaml", &edited)]),
        &PolicySet::default(),
        TD,
    );
    assert!(
        restarted.set.issuers.is_empty(),
        "{:#?}",
        restarted.verdicts
    );
    let w = restarted
        .set
        .compile(&workload(&[("app", "orders")]), &TestSecrets)
        .unwrap();
    assert_eq!(w.policies[0].token_issuers, Some(vec![]));
    // The same for two definitions of an AccessPolicy: placeholders, which admit no caller.
    let loose = POLICY.replace("[\"shop/*\"]", "[\"*\"]");
    let restarted = admit(
        files(&[("aaa.yaml", &loose), ("orders.yaml", &owner)]),
        &PolicySet::default(),
        TD,
    );
    assert!(denies_web(&restarted.set), "{:#?}", restarted.verdicts);
}

/// Outside review 13 F1: a copy in a file read first took over when the owner's document moved
/// (a document inserted above it) or the owner's file was renamed — equality with the version
/// in force picked the copy — and the copy's next edit was then in force.
#[test]
fn a_copy_never_takes_over_when_the_owner_moves_or_renames() {
    let owner = format!("{ISSUER}---{POLICY}");
    let first = admit(files(&[("orders.yaml", &owner)]), &PolicySet::default(), TD);
    let copied = admit(
        files(&[("a.yaml", POLICY), ("orders.yaml", &owner)]),
        &first.set,
        TD,
    );
    assert_eq!(copied.set.policies, first.set.policies);
    let loose = POLICY.replace("[\"shop/*\"]", "[\"*\"]");
    // (a) a document inserted above the policy, with an edit that narrows it.
    let narrowed = POLICY.replace("[\"shop/*\"]", "[\"shop/web\"]");
    let moved = format!("{ISSUER}---{OTHER_ISSUER}---{narrowed}");
    let after_move = admit(
        files(&[("a.yaml", POLICY), ("orders.yaml", &moved)]),
        &copied.set,
        TD,
    );
    let peers = |set: &PolicySet| {
        set.policies
            .iter()
            .map(|p| p.spec.peers.join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        peers(&after_move.set),
        ["shop/web"],
        "the owner's edit is in force"
    );
    let then = admit(
        files(&[("a.yaml", &loose), ("orders.yaml", &moved)]),
        &after_move.set,
        TD,
    );
    assert_eq!(peers(&then.set), ["shop/web"], "{:#?}", then.verdicts);
    // (b) the owner's file renamed: neither definition is picked; the last good version stays,
    // and the copy's edit changes nothing.
    let renamed = admit(
        files(&[("a.yaml", POLICY), ("orders2.yaml", &owner)]),
        &copied.set,
        TD,
    );
    assert_eq!(
        renamed.set.policies, first.set.policies,
        "{:#?}",
        renamed.verdicts
    );
    let then = admit(
        files(&[("a.yaml", &loose), ("orders2.yaml", &owner)]),
        &renamed.set,
        TD,
    );
    assert_eq!(
        then.set.policies, first.set.policies,
        "{:#?}",
        then.verdicts
    );
    // The copy removed: the owner's renamed file is the one definition, in force.
    let alone = admit(files(&[("orders2.yaml", &owner)]), &then.set, TD);
    assert_eq!(alone.set.policies, first.set.policies);
    assert_eq!(alone.rejected(), 0);
}

/// Outside review 13 F2: after a restart, a policy file with a duplicate key or cut off half way
/// named nothing (the YAML stream ended), so its workload fell back to its sidecar's allow-list.
/// What the document declares up to the error is read, and it fails closed over that.
#[test]
fn an_unparsable_policy_file_fails_closed_after_a_restart() {
    let duplicate_key = POLICY.replace(
        "  peers: [\"shop/*\"]\n",
        "  peers: [\"shop/*\"]\n  peers: [\"shop/web\"]\n",
    );
    let cut = &POLICY[..POLICY.find("{app: orders}").unwrap() + "{app: ord".len()];
    for (case, text) in [
        ("duplicate key", format!("{ISSUER}---{duplicate_key}")),
        ("cut off", format!("{ISSUER}---{cut}")),
        (
            "duplicate key, first document",
            format!("{duplicate_key}---{ISSUER}"),
        ),
    ] {
        let a = admit(files(&[("orders.yaml", &text)]), &PolicySet::default(), TD);
        assert!(denies_web(&a.set), "{case}: {:#?}", a.verdicts);
        assert_eq!(
            a.set.issuers.len(),
            1,
            "{case}: the other document is judged on its own"
        );
    }
}

/// Outside review 13 F3: an edit that dropped `metadata.namespace` was accepted as a new object
/// in `default`, removing the policy from its workloads. It is refused; the last good stays.
#[test]
fn a_policy_without_a_namespace_is_refused() {
    let first = admit(files(&[("orders.yaml", POLICY)]), &PolicySet::default(), TD);
    let edit = POLICY.replace(
        "metadata: {name: orders, namespace: shop}",
        "metadata: {name: orders}",
    );
    let second = admit(files(&[("orders.yaml", &edit)]), &first.set, TD);
    let real: Vec<_> = second
        .set
        .policies
        .iter()
        .filter(|p| !p.metadata.annotations.contains_key(PLACEHOLDER))
        .cloned()
        .collect();
    assert_eq!(real, first.set.policies, "{:#?}", second.verdicts);
    let v = &second.verdicts[&ObjectKey::new("AccessPolicy", "default", "orders")];
    assert!(
        v.accepted
            .message
            .contains("metadata.namespace is required"),
        "{v:?}"
    );
    assert!(denies_web(&second.set));
}
