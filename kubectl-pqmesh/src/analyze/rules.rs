//! The findings about objects: refused or invalid objects, policies selecting nothing,
//! references to missing TokenIssuers, Secrets, service accounts and namespaces, and pods the
//! injection webhook selects that run without a sidecar. Pure functions of the inventory.

use std::collections::BTreeMap;

use pqmesh_control_plane::inject::{plan, InjectConfig, Plan};
use pqmesh_mtls::{PeerPattern, SpiffeId};
use pqmesh_policy::admit::{admit, Candidate, ObjectKey};
use pqmesh_policy::compile::PolicySet;
use serde_json::{json, Value};

use super::inventory::{pods, string_map, Inventory, Object, PodLike};
use super::Finding;
use crate::cli::Severity;
use crate::target::has_sidecar;

/// What the rules need besides the inventory.
pub struct Context<'a> {
    pub trust_domain: &'a str,
    pub control_plane_namespace: &'a str,
}

pub fn findings(inv: &Inventory, ctx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    duplicates(inv, &mut out);
    acceptance(inv, ctx, &mut out);
    dead_selectors(inv, ctx, &mut out);
    issuer_refs(inv, &mut out);
    secret_refs(inv, &mut out);
    peers(inv, ctx, &mut out);
    injection(inv, ctx, &mut out);
    out
}

fn finding(
    o: &Object,
    severity: Severity,
    code: &'static str,
    message: String,
    fix: String,
) -> Finding {
    Finding {
        severity,
        code,
        kind: o.kind.clone(),
        namespace: o.namespace.clone(),
        name: o.name.clone(),
        message,
        fix,
        source: (!o.in_cluster()).then(|| o.source.clone()),
    }
}

/// How to change the object: `kubectl edit` in the cluster, the file otherwise.
fn edit(o: &Object) -> String {
    if o.in_cluster() {
        format!(
            "kubectl edit {} {} -n {}",
            o.kind.to_ascii_lowercase(),
            o.name,
            o.namespace
        )
    } else {
        format!("edit {}", o.source.replacen(" document ", ", document ", 1))
    }
}

fn duplicates(inv: &Inventory, out: &mut Vec<Finding>) {
    for (o, earlier) in &inv.duplicates {
        out.push(finding(
            o,
            Severity::Error,
            "Duplicate",
            format!("also defined in {earlier}: applying both keeps only the last one"),
            format!("remove one of the two definitions: {}", edit(o)),
        ));
    }
}

/// Cluster objects: the control plane's `Accepted` condition. Files: the control plane's own
/// admission code, run here, says whether it would accept them.
fn acceptance(inv: &Inventory, ctx: &Context, out: &mut Vec<Finding>) {
    let mut candidates = Vec::new();
    let mut by_key = BTreeMap::new();
    for o in inv
        .objects
        .values()
        .filter(|o| matches!(o.kind.as_str(), "AccessPolicy" | "TokenIssuer"))
    {
        if o.in_cluster() {
            let refused = o.value["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Accepted" && c["status"] == "False");
            if let Some(c) = refused {
                out.push(finding(
                    o,
                    Severity::Error,
                    "NotAccepted",
                    format!(
                        "the control plane refused it ({}): {}",
                        c["reason"].as_str().unwrap_or("no reason"),
                        c["message"].as_str().unwrap_or("no message")
                    ),
                    format!("correct what the message names: {}", edit(o)),
                ));
            }
            continue;
        }
        let key = ObjectKey::new(&o.kind, &o.namespace, &o.name);
        by_key.insert(key.clone(), o);
        candidates.push(Candidate {
            key,
            source: o.source.clone(),
            generation: None,
            created: None,
            parsed: as_policy_resource(o),
            reach: (o.kind == "AccessPolicy").then(|| pqmesh_policy::admit::Reach::of(&o.value)),
        });
    }
    let admitted = admit(candidates, &PolicySet::default(), ctx.trust_domain);
    for verdict in admitted.verdicts.values() {
        if verdict.accepted.status {
            continue;
        }
        let Some(o) = by_key.get(&verdict.key) else {
            continue; // duplicates are reported from the inventory
        };
        let why = verdict
            .accepted
            .message
            .trim_end_matches("; it has no effect");
        out.push(finding(
            o,
            Severity::Error,
            "Invalid",
            format!("the control plane would refuse it: {why}"),
            format!("correct what the message names: {}", edit(o)),
        ));
    }
}

/// The object as the control plane reads it: name, namespace, labels, annotations and spec
/// (status and server-set metadata are not policy).
fn as_policy_resource(o: &Object) -> Result<pqmesh_policy::model::Resource, String> {
    let meta = &o.value["metadata"];
    let value = json!({
        "kind": o.kind,
        "apiVersion": o.value["apiVersion"],
        "metadata": {
            "name": o.name,
            "namespace": o.namespace,
            "labels": meta["labels"].as_object().cloned().unwrap_or_default(),
            "annotations": meta["annotations"].as_object().cloned().unwrap_or_default(),
        },
        "spec": o.value["spec"],
    });
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn dead_selectors(inv: &Inventory, ctx: &Context, out: &mut Vec<Finding>) {
    let pods = pods(inv);
    let injector = Injector::new(inv, ctx);
    for p in inv.of_kind("AccessPolicy") {
        let Some(wanted) = p.value["spec"]["selector"]["matchLabels"].as_object() else {
            continue; // invalid: reported by acceptance
        };
        let wanted = string_map(&Value::Object(wanted.clone()));
        let selected: Vec<_> = pods
            .iter()
            .filter(|pod| {
                pod.owner.namespace == p.namespace
                    && wanted.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
            })
            .collect();
        let shown: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !selected.is_empty() {
            // A pod that is not (or will not be) meshed ignores the policy: no sidecar enforces it.
            let meshed = |pod: &&PodLike| {
                has_sidecar(&pod.pod)
                    || (!pod.owner.in_cluster() || pod.owner.kind != "Pod")
                        && injector.would_inject(inv, pod)
            };
            if !selected.iter().any(meshed) {
                let names: Vec<String> = selected
                    .iter()
                    .take(3)
                    .map(|pod| format!("{}/{}", pod.owner.kind, pod.owner.name))
                    .collect();
                out.push(finding(
                    p,
                    Severity::Warning,
                    "SelectsOnlyUnmeshedPods",
                    format!(
                        "spec.selector.matchLabels {{{}}} selects {} ({}{}), none of which runs or will get the pqmesh sidecar: nothing enforces the policy",
                        shown.join(","),
                        if selected.len() == 1 { "1 workload".to_owned() } else { format!("{} workloads", selected.len()) },
                        names.join(", "),
                        if selected.len() > 3 { ", …" } else { "" },
                    ),
                    format!(
                        "label the namespace for injection (kubectl label namespace {} pqmesh.io/inject=enabled) and restart the workloads, or inject them offline (kubectl pqmesh inject -f FILE)",
                        p.namespace
                    ),
                ));
            }
            continue;
        }
        out.push(finding(
            p,
            Severity::Warning,
            "SelectsNoPod",
            format!(
                "spec.selector.matchLabels {{{}}} selects no pod in namespace {}: the policy protects nothing",
                shown.join(","),
                p.namespace
            ),
            format!(
                "correct the labels to those of the workload it should protect (kubectl get pods -n {} --show-labels): {}; or delete it",
                p.namespace,
                edit(p)
            ),
        ));
    }
}

fn issuer_refs(inv: &Inventory, out: &mut Vec<Finding>) {
    for p in inv.of_kind("AccessPolicy") {
        let names = p.value["spec"]["token"]["issuers"].as_array();
        for name in names.into_iter().flatten().filter_map(Value::as_str) {
            if inv.get("TokenIssuer", &p.namespace, name).is_some() {
                continue;
            }
            let existing: Vec<&str> = inv
                .of_kind("TokenIssuer")
                .filter(|t| t.namespace == p.namespace)
                .map(|t| t.name.as_str())
                .collect();
            let fix = match closest(name, &existing) {
                Some(near) => format!(
                    "did you mean {near:?}? correct spec.token.issuers: {}",
                    edit(p)
                ),
                None => format!(
                    "create TokenIssuer {name} in namespace {}, or remove it from spec.token.issuers: {}",
                    p.namespace,
                    edit(p)
                ),
            };
            out.push(finding(
                p,
                Severity::Error,
                "TokenIssuerNotFound",
                format!(
                    "spec.token.issuers names TokenIssuer {name:?}, which does not exist in namespace {}: no token satisfies this policy, so it denies every request it governs",
                    p.namespace
                ),
                fix,
            ));
        }
    }
}

fn secret_refs(inv: &Inventory, out: &mut Vec<Finding>) {
    for t in inv.of_kind("TokenIssuer") {
        let r = &t.value["spec"]["introspection"]["clientSecretRef"];
        let (Some(name), Some(key)) = (r["name"].as_str(), r["key"].as_str()) else {
            continue;
        };
        let ns = &t.namespace;
        let effect = "workloads whose policies use this issuer keep their last policy (a new one gets none and is not ready)";
        match inv.get("Secret", ns, name) {
            None => {
                // Offline, a Secret is normally kept out of the manifests: a warning, not an error.
                let (severity, missing) = if inv.cluster {
                    (Severity::Error, "which does not exist".to_owned())
                } else {
                    (
                        Severity::Warning,
                        "which no analysed file defines (add --cluster to look in the cluster)"
                            .to_owned(),
                    )
                };
                out.push(finding(
                    t,
                    severity,
                    "SecretNotFound",
                    format!("spec.introspection.clientSecretRef names Secret {ns}/{name}, {missing}: {effect}"),
                    format!("kubectl create secret generic {name} -n {ns} --from-literal={key}=<client secret>"),
                ));
            }
            Some(s) => {
                let keys: Vec<&str> = s.value["data"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.as_str())
                    .collect();
                if keys.contains(&key) {
                    continue;
                }
                out.push(finding(
                    t,
                    Severity::Error,
                    "SecretKeyNotFound",
                    format!(
                        "spec.introspection.clientSecretRef names key {key:?} of Secret {ns}/{name}, which has keys [{}]: {effect}",
                        keys.join(", ")
                    ),
                    format!(
                        "kubectl patch secret {name} -n {ns} --type merge -p '{{\"stringData\":{{\"{key}\":\"<client secret>\"}}}}', or set clientSecretRef.key to an existing key: {}",
                        edit(t)
                    ),
                ));
            }
        }
    }
}

fn peers(inv: &Inventory, ctx: &Context, out: &mut Vec<Finding>) {
    for p in inv.of_kind("AccessPolicy") {
        let peers = p.value["spec"]["peers"].as_array();
        for peer in peers.into_iter().flatten().filter_map(Value::as_str) {
            if peer == "*" {
                continue;
            }
            // A malformed peer makes the whole object invalid: reported by acceptance.
            let Ok(pattern) = PeerPattern::parse(peer, ctx.trust_domain) else {
                continue;
            };
            let (td, ns, sa) = match &pattern {
                PeerPattern::Exact(id) => (
                    id.trust_domain().to_owned(),
                    id.namespace().to_owned(),
                    Some(id.service_account().to_owned()),
                ),
                PeerPattern::Namespace {
                    trust_domain,
                    namespace,
                } => (trust_domain.clone(), namespace.clone(), None),
            };
            if td != ctx.trust_domain {
                out.push(finding(
                    p,
                    Severity::Info,
                    "PeerOtherTrustDomain",
                    format!("spec.peers entry {peer:?} is in trust domain {td:?}, not this mesh's {:?}: only a federated peer can match it, and it cannot be checked here", ctx.trust_domain),
                    "nothing if the peer is federated; otherwise correct the trust domain (or pass --trust-domain if the mesh uses another)".to_owned(),
                ));
                continue;
            }
            if !inv.namespace_exists(&ns) {
                let all: Vec<&str> = inv.of_kind("Namespace").map(|n| n.name.as_str()).collect();
                out.push(finding(
                    p,
                    Severity::Warning,
                    "PeerNamespaceNotFound",
                    format!("spec.peers entry {peer:?} names namespace {ns:?}, which does not exist: the entry allows nobody"),
                    fix_name(&ns, &all, "namespace", p, &format!("kubectl create namespace {ns}")),
                ));
                continue;
            }
            let Some(sa) = sa else { continue };
            if inv.service_account_exists(&ns, &sa) {
                continue;
            }
            let mut all: Vec<&str> = inv
                .of_kind("ServiceAccount")
                .filter(|s| s.namespace == ns)
                .map(|s| s.name.as_str())
                .collect();
            all.push("default");
            out.push(finding(
                p,
                Severity::Warning,
                "PeerServiceAccountNotFound",
                format!("spec.peers entry {peer:?} names service account {sa:?} in namespace {ns}, which does not exist: no workload has that identity, so the entry allows nobody"),
                fix_name(&sa, &all, "service account", p, &format!("kubectl create serviceaccount {sa} -n {ns}")),
            ));
        }
    }
}

/// "did you mean …?" for a near miss, else create it or correct the entry.
fn fix_name(wrong: &str, existing: &[&str], what: &str, p: &Object, create: &str) -> String {
    match closest(wrong, existing) {
        Some(near) => format!(
            "did you mean {what} {near:?}? correct spec.peers: {}",
            edit(p)
        ),
        None => format!("create it ({create}), or correct spec.peers: {}", edit(p)),
    }
}

/// The injection webhook's namespace and object selectors: the installed configuration's, or
/// the chart's when it was not read.
fn webhook_selectors(inv: &Inventory, ctx: &Context) -> (Value, Value) {
    let hook = inv.webhook.as_ref().and_then(|w| {
        let hooks = w["webhooks"].as_array()?;
        hooks
            .iter()
            .find(|h| h["name"] == "inject.pqmesh.io")
            .or(hooks.first())
            .cloned()
    });
    match hook {
        Some(h) => (h["namespaceSelector"].clone(), h["objectSelector"].clone()),
        None => (
            json!({"matchLabels": {"pqmesh.io/inject": "enabled"},
                   "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                         "values": [ctx.control_plane_namespace]}]}),
            json!({"matchExpressions": [{"key": "pqmesh.io/inject", "operator": "NotIn", "values": ["false"]}]}),
        ),
    }
}

/// A Kubernetes label selector (matchLabels and matchExpressions); absent selects everything.
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let exact = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let value = e["key"].as_str().and_then(|k| labels.get(k));
            let listed = |v: &String| {
                e["values"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(|x| x.as_str() == Some(v)))
            };
            match e["operator"].as_str() {
                Some("In") => value.is_some_and(listed),
                Some("NotIn") => !value.is_some_and(listed),
                Some("Exists") => value.is_some(),
                Some("DoesNotExist") => value.is_none(),
                _ => false,
            }
        });
    exact && expressions
}

/// The webhook's selection and the injector's own decision, for "will this pod be meshed?".
struct Injector {
    namespace_selector: Value,
    object_selector: Value,
    config: Option<InjectConfig>,
}

impl Injector {
    fn new(inv: &Inventory, ctx: &Context) -> Self {
        let (namespace_selector, object_selector) = webhook_selectors(inv, ctx);
        let cp = SpiffeId::new(
            ctx.trust_domain,
            ctx.control_plane_namespace,
            "pqmesh-control-plane",
        );
        Self {
            namespace_selector,
            object_selector,
            config: cp.ok().map(|cp| InjectConfig::new(&cp)),
        }
    }

    fn namespace_selected(&self, inv: &Inventory, ns: &str) -> bool {
        selects(&self.namespace_selector, &inv.namespace_labels(ns))
    }

    /// What the injector decides for a pod (None: the webhook does not see it).
    fn decide(
        &self,
        inv: &Inventory,
        ns: &str,
        pod: &Value,
        labels: &BTreeMap<String, String>,
    ) -> Option<Result<Plan, String>> {
        if !self.namespace_selected(inv, ns) || !selects(&self.object_selector, labels) {
            return None;
        }
        let cfg = self.config.as_ref()?;
        Some(plan(pod, None, cfg).map_err(|e| e.to_string()))
    }

    fn would_inject(&self, inv: &Inventory, pod: &PodLike) -> bool {
        matches!(
            self.decide(inv, &pod.owner.namespace, &pod.pod, &pod.labels),
            Some(Ok(Plan::Inject(_)))
        )
    }
}

/// Running pods the webhook selects but that have no sidecar (created before the namespace
/// was labelled, or while the webhook was down with failurePolicy Ignore), and the reverse.
fn injection(inv: &Inventory, ctx: &Context, out: &mut Vec<Finding>) {
    let injector = Injector::new(inv, ctx);
    for pod in inv.of_kind("Pod").filter(|p| p.in_cluster()) {
        if pod.value["status"]["phase"] != "Running" {
            continue;
        }
        if !injector.namespace_selected(inv, &pod.namespace) {
            if has_sidecar(&pod.value) {
                out.push(finding(
                    pod,
                    Severity::Info,
                    "SidecarWithoutInjection",
                    format!("the pod runs a pqmesh sidecar but namespace {} is not selected for injection: if the webhook injected it (the label was removed since), the pod's next incarnation starts without the mesh", pod.namespace),
                    format!("nothing if it was injected offline (kubectl pqmesh inject); otherwise label the namespace again: kubectl label namespace {} pqmesh.io/inject=enabled", pod.namespace),
                ));
            }
            continue;
        }
        // The injector's own decision: opted out, host network and already injected are fine.
        let why = match injector.decide(inv, &pod.namespace, &pod.value, &pod.labels()) {
            None | Some(Ok(Plan::Skip(_))) => continue,
            Some(Ok(Plan::Inject(_))) => "it was created before the namespace was labelled for injection, or while the webhook was unavailable".to_owned(),
            Some(Err(e)) => format!("the injector would refuse it as it is ({e})"),
        };
        out.push(finding(
            pod,
            Severity::Warning,
            "PodWithoutSidecar",
            format!(
                "namespace {} is selected for injection but this running pod has no sidecar: {why}; it is outside the mesh (no mTLS, no policy)",
                pod.namespace
            ),
            restart(pod),
        ));
    }
}

/// The command that recreates a pod through its controller.
fn restart(pod: &Object) -> String {
    let ns = &pod.namespace;
    let owners = pod.value["metadata"]["ownerReferences"].as_array();
    let owner = owners.and_then(|o| o.iter().find(|r| r["controller"] == true).or(o.first()));
    let (kind, name) = match owner {
        Some(o) => (
            o["kind"].as_str().unwrap_or(""),
            o["name"].as_str().unwrap_or(""),
        ),
        None => ("", ""),
    };
    let hash = pod.labels().get("pod-template-hash").cloned();
    match kind {
        "ReplicaSet" => match hash
            .and_then(|h| name.strip_suffix(&format!("-{h}")).map(str::to_owned))
        {
            Some(deployment) => format!("kubectl rollout restart deployment/{deployment} -n {ns}"),
            None => format!(
                "kubectl delete pod {} -n {ns} (ReplicaSet {name} recreates it)",
                pod.name
            ),
        },
        "StatefulSet" | "DaemonSet" => {
            format!(
                "kubectl rollout restart {}/{name} -n {ns}",
                kind.to_ascii_lowercase()
            )
        }
        "" => format!(
            "recreate the pod: kubectl get pod {p} -n {ns} -o yaml | kubectl replace --force -f -",
            p = pod.name
        ),
        _ => format!(
            "kubectl delete pod {} -n {ns} ({kind} {name} recreates it)",
            pod.name
        ),
    }
}

/// The existing name closest to `wrong` within a typo's distance, if any.
fn closest<'a>(wrong: &str, existing: &[&'a str]) -> Option<&'a str> {
    existing
        .iter()
        .map(|e| (distance(wrong, e), *e))
        .filter(|(d, e)| *d <= 2.max(wrong.len().min(e.len()) / 4))
        .min()
        .map(|(_, e)| e)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let sel = json!({"matchLabels": {"pqmesh.io/inject": "enabled"},
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["pqmesh-system"]}]});
        assert!(selects(
            &sel,
            &labels(&[
                ("pqmesh.io/inject", "enabled"),
                ("kubernetes.io/metadata.name", "shop")
            ])
        ));
        assert!(!selects(
            &sel,
            &labels(&[
                ("pqmesh.io/inject", "enabled"),
                ("kubernetes.io/metadata.name", "pqmesh-system")
            ])
        ));
        assert!(!selects(&sel, &labels(&[("pqmesh.io/inject", "disabled")])));
        assert!(selects(&Value::Null, &labels(&[])));
        let ops = json!({"matchExpressions": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "DoesNotExist"}, {"key": "c", "operator": "In", "values": ["1"]}]});
        assert!(selects(&ops, &labels(&[("a", ""), ("c", "1")])));
        assert!(!selects(&ops, &labels(&[("a", ""), ("b", ""), ("c", "1")])));
        assert!(!selects(
            &json!({"matchExpressions": [{"key": "a", "operator": "Gt"}]}),
            &labels(&[("a", "1")])
        ));
    }

    #[test]
    fn near_misses() {
        assert_eq!(closest("corp2", &["corp", "partner"]), Some("corp"));
        assert_eq!(closest("ordrs", &["orders", "web"]), Some("orders"));
        assert_eq!(closest("billing", &["orders", "web"]), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn restart_commands_follow_the_owner() {
        let pod = |meta: Value| Object {
            kind: "Pod".into(),
            namespace: "shop".into(),
            name: "api-7d9f-abcde".into(),
            value: json!({"metadata": meta}),
            source: super::super::inventory::CLUSTER.into(),
        };
        let deployed = pod(json!({"labels": {"pod-template-hash": "7d9f"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "api-7d9f", "controller": true}]}));
        assert_eq!(
            restart(&deployed),
            "kubectl rollout restart deployment/api -n shop"
        );
        let stateful = pod(json!({"ownerReferences": [{"kind": "StatefulSet", "name": "db"}]}));
        assert_eq!(
            restart(&stateful),
            "kubectl rollout restart statefulset/db -n shop"
        );
        let job = pod(json!({"ownerReferences": [{"kind": "Job", "name": "migrate"}]}));
        assert!(restart(&job).starts_with("kubectl delete pod api-7d9f-abcde -n shop (Job migrate"));
        assert!(restart(&pod(json!({}))).contains("kubectl replace --force"));
    }
}
