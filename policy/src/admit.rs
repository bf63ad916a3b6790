//! Per-object acceptance (the Gateway API way): every TokenIssuer and AccessPolicy is judged on
//! its own. An invalid edit leaves the object's last accepted version in force; only that
//! object is affected, and its verdict says why (what Kubernetes mode writes as
//! `status.conditions` and local mode shows in `/policy_status`).
//!
//! An invalid AccessPolicy with no accepted version — new, or after a control-plane restart,
//! which forgets what was accepted — is not simply left out: leaving it out could hand the
//! workloads it selects to their sidecars' local allow-list, which may admit callers the policy
//! meant to refuse (outside review 9). Its [`Reach`] (selector and ports, read from the raw
//! object as far as they read) is held by a placeholder that admits no caller, so those
//! workloads are governed by policy and what no accepted policy allows is refused. Policies are
//! alternatives, so the placeholder takes nothing from what accepted policies allow. Of two
//! definitions of one object (local mode), the one read from where the version in force was
//! read wins; with no version in force, neither does (both refused, failing closed as above).
//! An object in force that disappears while a document of its file is refused is kept.
//! References are judged after every object: an AccessPolicy naming a TokenIssuer that is not in
//! force stays in force *failing closed* (no token satisfies that requirement), so a broken
//! reference can only take access away from the workloads that depend on it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::compile::Secrets;
use crate::compile::{
    check_api_version, check_name, unresolved_issuers, validate_issuer, validate_policy, PolicySet,
};
use crate::model::{AccessPolicy, Resource, TokenIssuer};

mod local;
pub use local::candidates_from_yaml;

/// Which object: kind (`AccessPolicy` or `TokenIssuer`), namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl ObjectKey {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn of(resource: &Resource) -> Self {
        match resource {
            Resource::TokenIssuer(t) => {
                Self::new("TokenIssuer", &t.metadata.namespace, &t.metadata.name)
            }
            Resource::AccessPolicy(p) => {
                Self::new("AccessPolicy", &p.metadata.namespace, &p.metadata.name)
            }
        }
    }
}

/// One object as read: its key (known even when its content does not parse), where it came
/// from, its `metadata.generation` (Kubernetes) and the parsed resource or why it did not parse.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: ObjectKey,
    /// `file document N` in local mode; empty in Kubernetes mode.
    pub source: String,
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp` (RFC 3339, Kubernetes); `None` in local mode. The older of
    /// two conflicting objects wins.
    pub created: Option<String>,
    pub parsed: Result<Resource, String>,
    /// For an AccessPolicy: what it selects, read from the raw object (see [`Reach`]).
    pub reach: Option<Reach>,
}

/// Which workloads and ports an AccessPolicy selects, read from its raw object even when the
/// object as a whole does not parse: `spec.selector.matchLabels` (every workload of the
/// namespace when that does not read as a map of strings) and `spec.ports` (every port when
/// absent or unreadable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub match_labels: BTreeMap<String, String>,
    pub ports: Option<Vec<u16>>,
}

impl Reach {
    /// From a raw object (JSON; YAML converts with `serde_json::to_value`).
    pub fn of(object: &serde_json::Value) -> Reach {
        let spec = &object["spec"];
        let match_labels = spec["selector"]["matchLabels"]
            .as_object()
            .and_then(|m| {
                m.iter()
                    .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect::<Option<BTreeMap<_, _>>>()
            })
            .unwrap_or_default();
        let ports = spec["ports"].as_array().and_then(|a| {
            a.iter()
                .map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                .collect::<Option<Vec<u16>>>()
                .filter(|p| !p.is_empty())
        });
        Reach {
            match_labels,
            ports,
        }
    }

    /// From a raw YAML object.
    pub fn of_yaml(object: &serde_yaml::Value) -> Reach {
        Reach::of(&serde_json::to_value(object).unwrap_or_default())
    }

    /// The placeholder that holds a refused policy's reach: it admits no caller.
    fn placeholder(&self, key: &ObjectKey) -> AccessPolicy {
        AccessPolicy {
            api_version: crate::model::API_VERSION.to_owned(),
            metadata: crate::model::ObjectMeta {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                labels: BTreeMap::new(),
                annotations: [(PLACEHOLDER.to_owned(), "refused".to_owned())].into(),
            },
            spec: crate::model::AccessPolicySpec {
                selector: crate::model::Selector {
                    match_labels: self.match_labels.clone(),
                },
                ports: self.ports.clone(),
                mtls: "STRICT".to_owned(),
                peers: Vec::new(),
                token: None,
                rules: Vec::new(),
            },
        }
    }
}

/// Annotation marking a placeholder in the policy set (never a version of the object).
pub const PLACEHOLDER: &str = "pqmesh.io/placeholder";

/// Reasons of `Accepted=False` and `ResolvedRefs=False` conditions.
pub mod reason {
    /// The object itself is invalid (schema, values, apiVersion, name).
    pub const INVALID: &str = "Invalid";
    /// Another object of the same kind, namespace and name came first (local mode).
    pub const DUPLICATE: &str = "Duplicate";
    /// It names a TokenIssuer that is missing or not accepted.
    pub const INVALID_REF: &str = "InvalidRef";
    /// Its introspection client Secret (or the key in it) is missing.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// Another TokenIssuer of the namespace already has its `spec.issuer`.
    pub const CONFLICTED: &str = "Conflicted";
    pub const ACCEPTED: &str = "Accepted";
    pub const RESOLVED: &str = "ResolvedRefs";
}

/// Which version of an object is in force after a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InForce {
    /// The version just read.
    Current,
    /// The last accepted version (the new one was refused).
    LastGood,
    /// Nothing: a new object that was refused.
    None,
}

/// A condition-shaped judgement: `status` true or false, with a reason and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Judgement {
    fn ok(reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: true,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    fn refused(reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: false,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The verdict on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub key: ObjectKey,
    pub source: String,
    pub generation: Option<i64>,
    pub accepted: Judgement,
    pub resolved_refs: Judgement,
    pub in_force: InForce,
}

/// The policy set in force and a verdict for every candidate.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    pub set: PolicySet,
    pub verdicts: BTreeMap<ObjectKey, Verdict>,
}

impl Admitted {
    /// Objects whose current version was refused.
    pub fn rejected(&self) -> usize {
        self.verdicts
            .values()
            .filter(|v| !v.accepted.status)
            .count()
    }

    /// Marks every TokenIssuer in force whose introspection client Secret (or key) is missing:
    /// `ResolvedRefs=False, reason SecretNotFound`. The workloads that use it keep their last
    /// snapshot (compilation fails for them only).
    pub fn resolve_secrets(&mut self, secrets: &dyn Secrets) {
        for t in &self.set.issuers {
            let Some(i) = &t.spec.introspection else {
                continue;
            };
            let r = &i.client_secret_ref;
            if secrets
                .get(&t.metadata.namespace, &r.name, &r.key)
                .is_some()
            {
                continue;
            }
            let key = ObjectKey::new("TokenIssuer", &t.metadata.namespace, &t.metadata.name);
            if let Some(v) = self.verdicts.get_mut(&key) {
                v.resolved_refs = Judgement::refused(
                    reason::SECRET_NOT_FOUND,
                    format!(
                        "spec.introspection.clientSecretRef: Secret {}/{} has no key {:?}; \
                         workloads whose policies use this issuer keep their last policy \
                         (a new workload gets none and is not ready)",
                        t.metadata.namespace, r.name, r.key
                    ),
                );
            }
        }
    }
}

/// Judges each candidate on its own; `last_good` is the set in force before (an invalid edit
/// keeps its object's version from there).
pub fn admit(candidates: Vec<Candidate>, last_good: &PolicySet, trust_domain: &str) -> Admitted {
    let mut out = Admitted::default();
    let mut created = BTreeMap::new();
    let (primaries, duplicates, undecided) = one_per_key(candidates, last_good);
    for (arrival, c) in primaries.into_iter().enumerate() {
        let location = c.key.to_string();
        let checked = c.parsed.and_then(|r| {
            check_name(&location, "metadata.name", &c.key.name).map_err(|e| e.reason)?;
            check_name(&location, "metadata.namespace", &c.key.namespace).map_err(|e| e.reason)?;
            match &r {
                Resource::TokenIssuer(t) => check_api_version(&location, &t.api_version)
                    .and_then(|()| validate_issuer(&location, t)),
                Resource::AccessPolicy(p) => check_api_version(&location, &p.api_version)
                    .and_then(|()| validate_policy(&location, p, trust_domain)),
            }
            .map_err(|e| e.reason)?;
            Ok(r)
        });
        let (accepted, in_force, resources) = match checked {
            Ok(r) => (
                Judgement::ok(reason::ACCEPTED, "valid; in force"),
                InForce::Current,
                vec![r],
            ),
            Err(why) => {
                refused_leaves(reason::INVALID, &why, &c.key, last_good, c.reach.as_slice())
            }
        };
        created.insert(c.key.clone(), (c.created.clone(), arrival));
        let source = match in_force {
            InForce::LastGood => last_good.sources.get(&c.key).unwrap_or(&c.source),
            _ => &c.source,
        };
        out.hold(&c.key, source, resources);
        out.verdicts.insert(
            c.key.clone(),
            Verdict {
                key: c.key,
                source: c.source,
                generation: c.generation,
                accepted,
                resolved_refs: Judgement::ok(reason::RESOLVED, "every reference resolves"),
                in_force,
            },
        );
    }
    for (key, definitions) in undecided {
        // Two definitions and neither is the version in force (a restart, two new files, or the
        // file in force gone): read order must not pick one, since the first file read may be
        // anyone's. Both are refused; the last accepted version stays, or it fails closed.
        let sources: Vec<&str> = definitions.iter().map(|c| c.source.as_str()).collect();
        let why = format!(
            "{key} is defined {} times ({}) and none of them is the version in force; \
             one definition per object",
            sources.len(),
            sources.join(", ")
        );
        let reaches: Vec<Reach> = definitions.iter().filter_map(|c| c.reach.clone()).collect();
        let (accepted, in_force, resources) =
            refused_leaves(reason::DUPLICATE, &why, &key, last_good, &reaches);
        let source = last_good.sources.get(&key).cloned();
        out.hold(&key, source.as_deref().unwrap_or(sources[0]), resources);
        for c in definitions {
            out.verdicts.insert(
                duplicate_key(&c),
                Verdict {
                    key: c.key,
                    source: c.source,
                    generation: c.generation,
                    accepted: accepted.clone(),
                    resolved_refs: Judgement::ok(reason::RESOLVED, ""),
                    in_force,
                },
            );
        }
    }
    for (c, first) in duplicates {
        // Local mode only: Kubernetes keys are unique. The definition in force stays.
        let message = format!(
            "{} is already defined in {first}, and that definition is the one in force; one \
             definition per object",
            c.key
        );
        out.verdicts.insert(
            duplicate_key(&c),
            Verdict {
                key: c.key,
                source: c.source,
                generation: c.generation,
                accepted: Judgement::refused(reason::DUPLICATE, message),
                resolved_refs: Judgement::ok(reason::RESOLVED, ""),
                in_force: InForce::None,
            },
        );
    }
    keep_hidden(&mut out, last_good);
    refuse_conflicting_issuers(&mut out, last_good, &created);
    // References, against the issuers in force.
    for p in &out.set.policies {
        let missing = unresolved_issuers(p, &out.set.issuers);
        if missing.is_empty() {
            continue;
        }
        let key = ObjectKey::new("AccessPolicy", &p.metadata.namespace, &p.metadata.name);
        if let Some(v) = out.verdicts.get_mut(&key) {
            v.resolved_refs = Judgement::refused(
                reason::INVALID_REF,
                format!(
                    "spec.token.issuers: no accepted TokenIssuer {missing:?} in namespace {:?}; \
                     until there is, no token satisfies this policy (it fails closed)",
                    p.metadata.namespace
                ),
            );
        }
    }
    out
}

impl Admitted {
    /// Puts `resources` in force for `key`, read from `source`.
    fn hold(&mut self, key: &ObjectKey, source: &str, resources: Vec<Resource>) {
        if resources.is_empty() {
            return;
        }
        self.set.sources.insert(key.clone(), source.to_owned());
        for r in resources {
            match r {
                Resource::TokenIssuer(t) => self.set.issuers.push(t),
                Resource::AccessPolicy(p) => self.set.policies.push(p),
            }
        }
    }
}

/// What a refused object leaves in force: its last accepted version; with none, for an
/// AccessPolicy, placeholders that admit no caller over what it would have selected (fails
/// closed); otherwise nothing.
fn refused_leaves(
    why_reason: &str,
    why: &str,
    key: &ObjectKey,
    last_good: &PolicySet,
    reaches: &[Reach],
) -> (Judgement, InForce, Vec<Resource>) {
    if let Some(r) = previous(last_good, key) {
        return (
            Judgement::refused(
                why_reason,
                format!("{why}; the last accepted version stays in force"),
            ),
            InForce::LastGood,
            vec![r],
        );
    }
    if reaches.is_empty() {
        return (
            Judgement::refused(why_reason, format!("{why}; it has no effect")),
            InForce::None,
            Vec::new(),
        );
    }
    let selects: Vec<String> = reaches
        .iter()
        .map(|reach| {
            format!(
                "{}{}",
                selector_text(&reach.match_labels),
                reach
                    .ports
                    .as_ref()
                    .map(|p| format!(" on ports {p:?}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    (
        Judgement::refused(
            why_reason,
            format!(
                "{why}; no version of it is in force, so until it is fixed the workloads it \
                 selects ({}) refuse every caller no accepted policy allows (fails closed)",
                selects.join("; ")
            ),
        ),
        InForce::None,
        reaches
            .iter()
            .map(|reach| Resource::AccessPolicy(reach.placeholder(key)))
            .collect(),
    )
}

/// A refused second definition is reported under its own key (name and source).
fn duplicate_key(c: &Candidate) -> ObjectKey {
    ObjectKey::new(
        &c.key.kind,
        &c.key.namespace,
        &format!("{}#{}", c.key.name, c.source),
    )
}

/// The file a local source names (`file document N` → `file`); in Kubernetes mode, the object.
pub fn file_of(source: &str) -> &str {
    source
        .rsplit_once(" document ")
        .map_or(source, |(file, _)| file)
}

/// Outside review 12 F1: an object in force that no candidate defines any more, while the file
/// it was read from has a document refused as invalid (a `kind` typo, `{}`, a half-written
/// file), may be that very document: dropping it would hand its workloads to their sidecars'
/// local allow-list. It keeps its last accepted version (or its placeholder) until every
/// document of the file is accepted or the file is removed. Kubernetes mode has no sources.
fn keep_hidden(out: &mut Admitted, last_good: &PolicySet) {
    let mut refused_docs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for v in out.verdicts.values() {
        if !v.accepted.status && v.accepted.reason == reason::INVALID && !v.source.is_empty() {
            refused_docs
                .entry(file_of(&v.source))
                .or_default()
                .push(&v.source);
        }
    }
    let defined = |key: &ObjectKey| {
        out.verdicts
            .values()
            .any(|v| v.key == *key && !v.source.is_empty())
    };
    let mut kept = Vec::new();
    for (key, source) in &last_good.sources {
        let Some(refused) = refused_docs.get(file_of(source)) else {
            continue;
        };
        if defined(key) {
            continue;
        }
        let resources: Vec<Resource> = match key.kind.as_str() {
            "TokenIssuer" => last_good
                .issuers
                .iter()
                .filter(|t| t.metadata.namespace == key.namespace && t.metadata.name == key.name)
                .cloned()
                .map(Resource::TokenIssuer)
                .collect(),
            _ => last_good
                .policies
                .iter()
                .filter(|p| p.metadata.namespace == key.namespace && p.metadata.name == key.name)
                .cloned()
                .map(Resource::AccessPolicy)
                .collect(),
        };
        let message = format!(
            "no longer defined, but {} of {} (where it was read from) is refused and may be \
             it; the last accepted version stays in force until every document of that file \
             is accepted or the file is removed",
            refused.join(", "),
            file_of(source)
        );
        kept.push((key.clone(), source.clone(), resources, message));
    }
    for (key, source, resources, message) in kept {
        out.hold(&key, &source, resources);
        out.verdicts.insert(
            key.clone(),
            Verdict {
                key,
                source,
                generation: None,
                accepted: Judgement::refused(reason::INVALID, message),
                resolved_refs: Judgement::ok(reason::RESOLVED, "every reference resolves"),
                in_force: InForce::LastGood,
            },
        );
    }
}

/// Two TokenIssuers of one namespace with the same `spec.issuer`: a token names its issuer only
/// by `iss`, so a sidecar could not tell which one's audiences and keys apply. The one already in
/// force wins, then the older (`creationTimestamp`), then the one read first; the others are
/// refused (`Accepted=False, reason Conflicted`) and only they lose: their last accepted
/// version stays in force if it named another issuer, and policies naming them fail closed.
fn refuse_conflicting_issuers(
    out: &mut Admitted,
    last_good: &PolicySet,
    created: &BTreeMap<ObjectKey, (Option<String>, usize)>,
) {
    let key =
        |t: &TokenIssuer| ObjectKey::new("TokenIssuer", &t.metadata.namespace, &t.metadata.name);
    let was_in_force = |t: &TokenIssuer| {
        last_good.issuers.iter().any(|g| {
            g.metadata.namespace == t.metadata.namespace
                && g.metadata.name == t.metadata.name
                && g.spec.issuer == t.spec.issuer
        })
    };
    let rank = |t: &TokenIssuer| {
        let (when, arrival) = created.get(&key(t)).cloned().unwrap_or((None, usize::MAX));
        (!was_in_force(t), when.is_none(), when, arrival)
    };
    let mut order: Vec<usize> = (0..out.set.issuers.len()).collect();
    order.sort_by_key(|&i| rank(&out.set.issuers[i]));
    let mut winners: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut losers = Vec::new();
    for i in order {
        let t = &out.set.issuers[i];
        let slot = (t.metadata.namespace.clone(), t.spec.issuer.clone());
        match winners.get(&slot) {
            Some(winner) => losers.push((i, winner.clone())),
            None => {
                winners.insert(slot, t.metadata.name.clone());
            }
        }
    }
    losers.sort_by_key(|l| std::cmp::Reverse(l.0));
    for (i, winner) in losers {
        let t = out.set.issuers.remove(i);
        let k = key(&t);
        let earlier = previous(last_good, &k).and_then(|r| match r {
            Resource::TokenIssuer(p) if p.spec.issuer != t.spec.issuer => Some(p),
            _ => None,
        });
        let why = format!(
            "spec.issuer {:?} is already the issuer of TokenIssuer {}/{winner}; a namespace has \
             one TokenIssuer per issuer (list every audience in that one)",
            t.spec.issuer, t.metadata.namespace
        );
        let (message, in_force) = match earlier {
            Some(p) => {
                out.set.issuers.push(p);
                (
                    format!("{why}; the last accepted version stays in force"),
                    InForce::LastGood,
                )
            }
            None => (format!("{why}; it has no effect"), InForce::None),
        };
        if let Some(v) = out.verdicts.get_mut(&k) {
            v.accepted = Judgement::refused(reason::CONFLICTED, message);
            v.in_force = in_force;
        }
    }
}

/// `matchLabels` as `k=v,...` (or "every workload of the namespace").
fn selector_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "every workload of the namespace".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Candidates judged on their own, duplicates refused (each with the source of the definition
/// that stays), and objects defined several times of which none is in force.
type OnePerKey = (
    Vec<Candidate>,
    Vec<(Candidate, String)>,
    BTreeMap<ObjectKey, Vec<Candidate>>,
);

/// Of several definitions of one object (local mode), the one read from where the version in
/// force was read stays, whatever it now says (a valid edit replaces the version in force, an
/// invalid one keeps it); if that document moved within its file, the file's only definition;
/// otherwise none of them (outside reviews 12 F2 and 13 F1: read order, or equality with the
/// version in force, let a copy in a file that sorts first take over once the owner edited,
/// moved or renamed their file; then the copy's next edit was in force).
fn one_per_key(candidates: Vec<Candidate>, last_good: &PolicySet) -> OnePerKey {
    let mut by_key: BTreeMap<ObjectKey, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        by_key.entry(c.key.clone()).or_default().push(i);
    }
    let mut stays: BTreeMap<usize, Option<usize>> = BTreeMap::new();
    for (key, at) in &by_key {
        if at.len() == 1 {
            stays.insert(at[0], None);
            continue;
        }
        let from = last_good.sources.get(key).map(String::as_str);
        let same_file: Vec<usize> = at
            .iter()
            .copied()
            .filter(|&i| from.is_some_and(|f| file_of(f) == file_of(&candidates[i].source)))
            .collect();
        let winner = at
            .iter()
            .copied()
            .find(|&i| from == Some(candidates[i].source.as_str()))
            .or_else(|| (same_file.len() == 1).then(|| same_file[0]));
        for &i in at {
            let stay = match winner {
                Some(w) if w == i => None,
                Some(w) => Some(w),
                None => Some(usize::MAX),
            };
            stays.insert(i, stay);
        }
    }
    let sources: Vec<String> = candidates.iter().map(|c| c.source.clone()).collect();
    let (mut primaries, mut duplicates, mut undecided) = (
        Vec::new(),
        Vec::new(),
        BTreeMap::<ObjectKey, Vec<Candidate>>::new(),
    );
    for (i, c) in candidates.into_iter().enumerate() {
        match stays.get(&i).copied().flatten() {
            None => primaries.push(c),
            Some(usize::MAX) => undecided.entry(c.key.clone()).or_default().push(c),
            Some(w) => duplicates.push((c, sources[w].clone())),
        }
    }
    (primaries, duplicates, undecided)
}

fn previous(last_good: &PolicySet, key: &ObjectKey) -> Option<Resource> {
    let same = |ns: &str, name: &str| ns == key.namespace && name == key.name;
    match key.kind.as_str() {
        "TokenIssuer" => last_good
            .issuers
            .iter()
            .find(|t: &&TokenIssuer| same(&t.metadata.namespace, &t.metadata.name))
            .cloned()
            .map(Resource::TokenIssuer),
        _ => last_good
            .policies
            .iter()
            .filter(|p| !p.metadata.annotations.contains_key(PLACEHOLDER))
            .find(|p: &&AccessPolicy| same(&p.metadata.namespace, &p.metadata.name))
            .cloned()
            .map(Resource::AccessPolicy),
    }
}
