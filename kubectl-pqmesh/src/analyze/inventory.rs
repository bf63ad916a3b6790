//! What `analyze` judges: the objects it needs (namespaces, service accounts, Secrets' key
//! names, pods and pod templates, AccessPolicies, TokenIssuers, the injection webhook) read
//! from the cluster through kubectl and/or from manifest files, keyed by kind, namespace and
//! name. Files take the place of cluster objects with the same key, as `kubectl apply` would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::inject::{read_input, template_path};
use crate::kubectl::{Kubectl, KubectlError};

/// Kind, namespace ("" for namespaces), name.
pub type Key = (String, String, String);

/// One object as `analyze` keeps it.
#[derive(Debug, Clone)]
pub struct Object {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The object; a Secret keeps its key names only (values are dropped on reading).
    pub value: Value,
    /// `FILE document N`, or `cluster`.
    pub source: String,
}

impl Object {
    pub fn in_cluster(&self) -> bool {
        self.source == CLUSTER
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        string_map(&self.value["metadata"]["labels"])
    }
}

pub const CLUSTER: &str = "cluster";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{at}: {reason}")]
    Document { at: String, reason: String },
    #[error(transparent)]
    Kubectl(#[from] KubectlError),
}

/// Everything read, and what was read from where.
#[derive(Debug, Default)]
pub struct Inventory {
    pub objects: BTreeMap<Key, Object>,
    /// The same object defined twice in the files: (later, earlier source).
    pub duplicates: Vec<(Object, String)>,
    /// The injection webhook configuration, when read from the cluster.
    pub webhook: Option<Value>,
    /// Whether the cluster was read (namespaces then exist only if listed).
    pub cluster: bool,
    /// Documents of kinds analyze does not judge (ConfigMaps, Services, …).
    pub ignored: usize,
}

/// Kinds kept; pod templates are kept under their owner's kind.
fn kept(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace" | "ServiceAccount" | "Secret" | "Pod" | "AccessPolicy" | "TokenIssuer"
    ) || template_path(kind).is_some()
}

impl Inventory {
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects.values().filter(move |o| o.kind == kind)
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<&Object> {
        self.objects
            .get(&(kind.to_owned(), namespace.to_owned(), name.to_owned()))
    }

    /// Does the namespace exist? Offline, a namespace that any file puts an object in counts
    /// (the files are applied into it), as does one with a Namespace manifest.
    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.get("Namespace", "", ns).is_some()
            || (!self.cluster && self.objects.values().any(|o| o.namespace == ns))
    }

    /// Does the service account exist? Kubernetes gives every namespace a `default` one.
    pub fn service_account_exists(&self, ns: &str, sa: &str) -> bool {
        self.get("ServiceAccount", ns, sa).is_some()
            || (sa == "default" && self.namespace_exists(ns))
    }

    /// A namespace's labels, with the `kubernetes.io/metadata.name` label the API server sets.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .get("Namespace", "", ns)
            .map(Object::labels)
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), ns.to_owned());
        labels
    }

    fn insert(&mut self, object: Object) {
        let key = (
            object.kind.clone(),
            object.namespace.clone(),
            object.name.clone(),
        );
        if let Some(earlier) = self.objects.get(&key) {
            if !earlier.in_cluster() && !object.in_cluster() {
                self.duplicates
                    .push((object.clone(), earlier.source.clone()));
            }
        }
        self.objects.insert(key, object);
    }

    /// Adds one (multi-document) YAML or JSON text; `default_ns` is where namespaced objects
    /// without `metadata.namespace` go.
    pub fn add_text(&mut self, text: &str, path: &str, default_ns: &str) -> Result<(), LoadError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = format!("{path} document {}", i + 1);
            let value = Value::deserialize(doc).map_err(|e| LoadError::Document {
                at: at.clone(),
                reason: e.to_string(),
            })?;
            if value.is_null() {
                continue; // an empty document between `---` separators
            }
            self.add_document(value, &at, default_ns)?;
        }
        Ok(())
    }

    fn add_document(&mut self, value: Value, at: &str, default_ns: &str) -> Result<(), LoadError> {
        let bad = |reason: String| LoadError::Document {
            at: at.to_owned(),
            reason,
        };
        let Some(kind) = value["kind"].as_str().map(str::to_owned) else {
            return Err(bad("not a Kubernetes object: it has no `kind`".into()));
        };
        if kind == "List" || kind.ends_with("List") && value["items"].is_array() {
            let items = value["items"].as_array().cloned().unwrap_or_default();
            for (j, item) in items.into_iter().enumerate() {
                self.add_document(item, &format!("{at} item {}", j + 1), default_ns)?;
            }
            return Ok(());
        }
        if !kept(&kind) {
            self.ignored += 1;
            return Ok(());
        }
        let Some(name) = value["metadata"]["name"].as_str().filter(|n| !n.is_empty()) else {
            return Err(bad(format!("{kind} without metadata.name")));
        };
        let namespace = if kind == "Namespace" {
            String::new()
        } else {
            match &value["metadata"]["namespace"] {
                Value::Null => default_ns.to_owned(),
                Value::String(ns) if !ns.is_empty() => ns.clone(),
                other => return Err(bad(format!("metadata.namespace is {other}, not a name"))),
            }
        };
        let name = name.to_owned();
        let value = if kind == "Secret" {
            secret_keys_only(&value)
        } else {
            value
        };
        self.insert(Object {
            kind,
            namespace,
            name,
            value,
            source: at.to_owned(),
        });
        Ok(())
    }

    /// Reads every file (directories: their *.yaml, *.yml and *.json files, sorted).
    pub fn add_files(
        &mut self,
        paths: &[PathBuf],
        recursive: bool,
        default_ns: &str,
    ) -> Result<(), LoadError> {
        let mut files = Vec::new();
        for p in paths {
            expand(p, recursive, true, &mut files)?;
        }
        for file in files {
            let shown = if file.as_os_str() == "-" {
                "standard input".to_owned()
            } else {
                file.display().to_string()
            };
            let text = read_input(&file).map_err(|e| LoadError::Read {
                path: shown.clone(),
                reason: format!("{e:#}"),
            })?;
            self.add_text(&text, &shown, default_ns)?;
        }
        Ok(())
    }

    /// Lists namespaces, service accounts, pods, AccessPolicies and TokenIssuers, and the
    /// webhook configuration.
    pub async fn add_cluster(&mut self, kubectl: &Kubectl, webhook: &str) -> Result<(), LoadError> {
        self.cluster = true;
        for (kind, resource) in [
            ("Namespace", "namespaces"),
            ("ServiceAccount", "serviceaccounts"),
            ("Pod", "pods"),
            ("AccessPolicy", "accesspolicies.pqmesh.io"),
            ("TokenIssuer", "tokenissuers.pqmesh.io"),
        ] {
            let list = kubectl
                .get_json(None, &["get", resource, "--all-namespaces"])
                .await?;
            for item in list["items"].as_array().into_iter().flatten() {
                let (Some(name), namespace) = (
                    item["metadata"]["name"].as_str(),
                    item["metadata"]["namespace"].as_str().unwrap_or(""),
                ) else {
                    continue;
                };
                self.insert_from_cluster(kind, namespace, name, item.clone());
            }
        }
        match kubectl
            .get_json(None, &["get", "mutatingwebhookconfiguration", webhook])
            .await
        {
            Ok(v) => self.webhook = Some(v),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Reads the Secrets the TokenIssuers refer to that no file defines (one `get` each, so
    /// only referenced Secrets are read; their values are dropped at once).
    pub async fn add_referenced_secrets(&mut self, kubectl: &Kubectl) -> Result<(), LoadError> {
        let wanted: Vec<(String, String)> = self
            .of_kind("TokenIssuer")
            .filter_map(|t| {
                let name = t.value["spec"]["introspection"]["clientSecretRef"]["name"].as_str()?;
                Some((t.namespace.clone(), name.to_owned()))
            })
            .filter(|(ns, name)| self.get("Secret", ns, name).is_none())
            .collect();
        for (ns, name) in wanted {
            if self.get("Secret", &ns, &name).is_some() {
                continue; // two issuers share it
            }
            match kubectl.get_json(Some(&ns), &["get", "secret", &name]).await {
                Ok(v) => self.insert_from_cluster("Secret", &ns, &name, secret_keys_only(&v)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn insert_from_cluster(&mut self, kind: &str, namespace: &str, name: &str, value: Value) {
        let key = (kind.to_owned(), namespace.to_owned(), name.to_owned());
        // A file takes the place of the cluster's object, as `kubectl apply` would.
        if self.objects.contains_key(&key) {
            return;
        }
        self.insert(Object {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            value,
            source: CLUSTER.to_owned(),
        });
    }

    /// Counts by kind, for the summary.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for o in self.objects.values() {
            *out.entry(o.kind.clone()).or_insert(0) += 1;
        }
        out
    }
}

/// A pod, or a workload's pod template, as analyze sees it.
#[derive(Debug, Clone)]
pub struct PodLike<'a> {
    pub owner: &'a Object,
    /// A Pod object shaped for the injector (`metadata` + `spec`).
    pub pod: Value,
    pub labels: BTreeMap<String, String>,
}

/// Every Pod and every workload's pod template, except pods that have finished.
pub fn pods(inv: &Inventory) -> Vec<PodLike<'_>> {
    let mut out = Vec::new();
    for o in inv.objects.values() {
        let pod = if o.kind == "Pod" {
            if matches!(
                o.value["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            ) {
                continue;
            }
            o.value.clone()
        } else if let Some(path) = template_path(&o.kind) {
            let mut t = &o.value;
            for step in path {
                t = &t[step];
            }
            json!({"kind": "Pod", "metadata": t["metadata"], "spec": t["spec"]})
        } else {
            continue;
        };
        let labels = string_map(&pod["metadata"]["labels"]);
        out.push(PodLike {
            owner: o,
            pod,
            labels,
        });
    }
    out
}

/// A Secret with its data and stringData values replaced by null: analyze only needs to know
/// which keys exist, and a value never needs to sit in this process.
fn secret_keys_only(secret: &Value) -> Value {
    let mut keys = Map::new();
    for field in ["data", "stringData"] {
        if let Some(m) = secret[field].as_object() {
            for k in m.keys() {
                keys.insert(k.clone(), Value::Null);
            }
        }
    }
    json!({"kind": "Secret", "metadata": secret["metadata"], "data": keys})
}

/// String-to-string map from a JSON object (non-string values skipped).
pub fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

fn expand(
    path: &Path,
    recursive: bool,
    top: bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), LoadError> {
    if path.as_os_str() == "-" {
        out.push(path.to_owned());
        return Ok(());
    }
    let meta = std::fs::metadata(path).map_err(|e| LoadError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        out.push(path.to_owned());
        return Ok(());
    }
    if !top && !recursive {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| LoadError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            expand(&entry, recursive, false, out)?;
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_secrets() {
        let mut inv = Inventory::default();
        inv.add_text(
            "kind: ServiceAccount\nmetadata: {name: web, namespace: shop}\n---\n---\n\
             kind: List\nitems:\n- {kind: Secret, metadata: {name: s}, data: {k: c2VjcmV0}, stringData: {j: x}}\n\
             - {kind: ConfigMap, metadata: {name: c}}\n",
            "a.yaml",
            "dev",
        )
        .unwrap();
        assert!(inv.service_account_exists("shop", "web"));
        assert!(
            inv.service_account_exists("dev", "default"),
            "offline: used namespaces exist"
        );
        assert!(!inv.namespace_exists("prod"));
        let secret = inv.get("Secret", "dev", "s").unwrap();
        assert_eq!(secret.value["data"], json!({"k": null, "j": null}));
        assert_eq!(secret.source, "a.yaml document 3 item 1");
        assert_eq!(inv.ignored, 1);
    }

    #[test]
    fn bad_documents_are_named() {
        let mut inv = Inventory::default();
        let e = inv
            .add_text(
                "kind: Pod\nmetadata: {name: a}\n---\n: : :\n",
                "x.yaml",
                "default",
            )
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.yaml document 2: "), "{e}");
        let e = inv
            .add_text("just: values\n", "v.yaml", "default")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "v.yaml document 1: not a Kubernetes object: it has no `kind`"
        );
        let e = inv
            .add_text("kind: Pod\nmetadata: {}\n", "p.yaml", "default")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.yaml document 1: Pod without metadata.name"
        );
    }

    #[test]
    fn duplicates_in_files_are_kept_for_a_finding() {
        let mut inv = Inventory::default();
        let doc = "kind: ServiceAccount\nmetadata: {name: web}\n";
        inv.add_text(doc, "a.yaml", "shop").unwrap();
        inv.add_text(doc, "b.yaml", "shop").unwrap();
        assert_eq!(inv.duplicates.len(), 1);
        assert_eq!(inv.duplicates[0].1, "a.yaml document 1");
    }

    #[test]
    fn templates_are_pods() {
        let mut inv = Inventory::default();
        inv.add_text(
            "kind: Deployment\nmetadata: {name: api, namespace: shop}\nspec:\n  template:\n    metadata: {labels: {app: api}}\n    spec: {containers: [{name: app}]}\n---\n\
             kind: Pod\nmetadata: {name: done, namespace: shop}\nstatus: {phase: Succeeded}\n",
            "d.yaml",
            "default",
        )
        .unwrap();
        let pods = pods(&inv);
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].owner.name, "api");
        assert_eq!(pods[0].labels.get("app").map(String::as_str), Some("api"));
    }
}
