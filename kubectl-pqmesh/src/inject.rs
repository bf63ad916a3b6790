//! `kubectl pqmesh inject -f file.yaml`: offline injection for GitOps. Every pod template in a
//! (multi-document) YAML file — Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
//! CronJob, and Lists of them — goes through the control plane's own injector, so the output is
//! what the webhook would have produced. Other documents pass through unchanged.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use pqmesh_control_plane::inject::{plan, InjectConfig, Plan};
use pqmesh_mtls::SpiffeId;
use serde::Deserialize;
use serde_json::Value;

use crate::cli::{ClusterArgs, InjectArgs};
use crate::kubectl::Kubectl;
use crate::Outcome;

/// The control plane's Deployment and ServiceAccount, as the chart names them.
const CONTROL_PLANE: &str = "pqmesh-control-plane";

/// The pod-template-bearing kinds, and where their template is.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// What the injector did to one pod (template).
#[derive(Debug, PartialEq)]
pub enum Injected {
    /// The pod (template) with the sidecar added.
    Pod(Value),
    /// Left unchanged, and why (opted out, host network, already injected).
    Skipped(String),
}

/// Injects one Pod or pod template (`metadata` + `spec`).
pub type InjectFn<'a> = dyn FnMut(&Value) -> Result<Injected, String> + 'a;

/// A line per object, printed on standard error.
#[derive(Debug, Default)]
pub struct Summary {
    pub lines: Vec<String>,
}

pub async fn run(cluster: &ClusterArgs, args: &InjectArgs) -> anyhow::Result<Outcome> {
    let source = read_input(&args.file)?;
    let cfg = inject_config(cluster, args).await?;
    let mut inject = |pod: &Value| -> Result<Injected, String> {
        // Offline injection is explicit: like the webhook, no namespace label is consulted.
        match plan(pod, None, &cfg).map_err(|e| e.to_string())? {
            Plan::Inject(p) => Ok(Injected::Pod(*p)),
            Plan::Skip(reason) => Ok(Injected::Skipped(reason.describe().to_owned())),
        }
    };
    let mut summary = Summary::default();
    let file = args.file.display().to_string();
    let yaml = inject_stream(&source, &file, &mut inject, &mut summary)?;
    for line in &summary.lines {
        eprintln!("{line}");
    }
    match &args.output {
        Some(path) if path.as_os_str() != "-" => {
            write_atomic(path, &yaml)?;
            eprintln!("wrote {}", path.display());
            Ok(Outcome {
                text: String::new(),
                exit: 0,
            })
        }
        _ => Ok(Outcome {
            text: yaml,
            exit: 0,
        }),
    }
}

/// Injector settings: defaults < the plugin's own `PQMESH_*` environment < the installed
/// control plane's (`--from-cluster`) < flags.
async fn inject_config(cluster: &ClusterArgs, args: &InjectArgs) -> anyhow::Result<InjectConfig> {
    let mut env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("PQMESH_"))
        .collect();
    let mut namespace = cluster.control_plane_namespace.clone();
    if args.from_cluster {
        let deployment = Kubectl::new(cluster)
            .get_json(Some(&namespace), &["get", "deployment", CONTROL_PLANE])
            .await?;
        let (cluster_env, ns) = deployment_env(&deployment)?;
        env.extend(cluster_env);
        namespace = ns.unwrap_or(namespace);
    }
    if let Some(image) = &args.image {
        env.insert("PQMESH_SIDECAR_IMAGE".into(), image.clone());
    }
    if let Some(td) = &args.trust_domain {
        env.insert("PQMESH_TRUST_DOMAIN".into(), td.clone());
    }
    let trust_domain = env
        .get("PQMESH_TRUST_DOMAIN")
        .cloned()
        .unwrap_or_else(|| "cluster.local".into());
    let service_account = env
        .get("PQMESH_SERVICE_ACCOUNT")
        .cloned()
        .unwrap_or_else(|| CONTROL_PLANE.into());
    let identity = SpiffeId::new(&trust_domain, &namespace, &service_account)
        .map_err(|e| anyhow::anyhow!("control-plane identity: {e}"))?;
    InjectConfig::from_env(&env, &identity).map_err(|e| anyhow::anyhow!("injector settings: {e}"))
}

/// The literal `env` of the control-plane container, with the values the chart takes from the
/// pod (`PQMESH_NAMESPACE`, `PQMESH_SERVICE_ACCOUNT`) filled in from the Deployment.
fn deployment_env(deployment: &Value) -> anyhow::Result<(HashMap<String, String>, Option<String>)> {
    let spec = &deployment["spec"]["template"]["spec"];
    let container = spec["containers"]
        .as_array()
        .and_then(|cs| {
            cs.iter().find(|c| {
                c["env"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|v| v["name"].as_str().is_some_and(|n| n.starts_with("PQMESH_")))
                })
            })
        })
        .ok_or_else(|| {
            anyhow::anyhow!("deployment {CONTROL_PLANE} has no container with PQMESH_* settings")
        })?;
    let mut env: HashMap<String, String> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_owned(),
                v["value"].as_str()?.to_owned(),
            ))
        })
        .filter(|(k, _)| k.starts_with("PQMESH_"))
        .collect();
    if let Some(sa) = spec["serviceAccountName"].as_str() {
        env.entry("PQMESH_SERVICE_ACCOUNT".into())
            .or_insert_with(|| sa.to_owned());
    }
    let ns = env.remove("PQMESH_NAMESPACE").or_else(|| {
        deployment["metadata"]["namespace"]
            .as_str()
            .map(str::to_owned)
    });
    Ok((env, ns))
}

/// Writes `path` through a temporary file in the same directory, so a failed run leaves the
/// previous content.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("writing {}: {e}", path.display())
    })
}

/// Reads `path` (`-` = standard input).
pub fn read_input(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

/// Injects every pod template of every document; returns the resulting YAML stream.
pub fn inject_stream(
    source: &str,
    file: &str,
    inject: &mut InjectFn<'_>,
    summary: &mut Summary,
) -> anyhow::Result<String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(source).enumerate() {
        let where_ = format!("{file} document {}", i + 1);
        let bad = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!("{where_}: not valid YAML for a Kubernetes object: {e}")
        };
        let original = serde_yaml::Value::deserialize(doc).map_err(|e| bad(&e))?;
        if original.is_null() {
            continue; // empty document (`---` at the end, comments only)
        }
        let mut value: Value = serde_json::to_value(&original).map_err(|e| bad(&e))?;
        inject_object(&mut value, &where_, inject, summary)?;
        let mut result = serde_yaml::to_value(&value)
            .map_err(|e| anyhow::anyhow!("{where_}: cannot write YAML: {e}"))?;
        // Keep the author's key order, so a GitOps diff shows only what the injector added.
        keep_order(&mut result, &original);
        out.push(
            serde_yaml::to_string(&result)
                .map_err(|e| anyhow::anyhow!("{where_}: cannot write YAML: {e}"))?,
        );
    }
    if out.is_empty() {
        anyhow::bail!("{file}: no Kubernetes objects found");
    }
    Ok(out.join("---\n"))
}

/// Reorders the mappings of `new` to follow `original`: keys it had first, in its order, then
/// the injector's additions. List items are paired by `name`, else by position.
fn keep_order(new: &mut serde_yaml::Value, original: &serde_yaml::Value) {
    use serde_yaml::Value as Y;
    match (new, original) {
        (Y::Mapping(n), Y::Mapping(o)) => {
            let mut rest = std::mem::take(n);
            for (key, o_value) in o {
                if let Some(mut v) = rest.shift_remove(key) {
                    keep_order(&mut v, o_value);
                    n.insert(key.clone(), v);
                }
            }
            for (key, v) in rest {
                n.insert(key, v);
            }
        }
        (Y::Sequence(n), Y::Sequence(o)) => {
            for (i, item) in n.iter_mut().enumerate() {
                let name = item.get("name").and_then(Y::as_str).map(str::to_owned);
                let counterpart = match name {
                    Some(name) => o
                        .iter()
                        .find(|x| x.get("name").and_then(Y::as_str) == Some(&name)),
                    None => o.get(i),
                };
                if let Some(c) = counterpart {
                    keep_order(item, c);
                }
            }
        }
        _ => {}
    }
}

fn inject_object(
    obj: &mut Value,
    where_: &str,
    inject: &mut InjectFn<'_>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let Some(kind) = obj["kind"].as_str().map(str::to_owned) else {
        anyhow::bail!("{where_}: not a Kubernetes object (no `kind`)");
    };
    let name = obj["metadata"]["name"]
        .as_str()
        .or_else(|| obj["metadata"]["generateName"].as_str())
        .unwrap_or("<unnamed>")
        .to_owned();
    let label = format!("{kind}/{name}");
    if kind == "List" || kind.ends_with("List") {
        let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        for (j, item) in items.iter_mut().enumerate() {
            inject_object(item, &format!("{where_} item {}", j + 1), inject, summary)?;
        }
        return Ok(());
    }
    if kind == "Pod" {
        if obj["apiVersion"] != "v1" {
            anyhow::bail!(
                "{where_}: {label} has apiVersion {}, expected v1",
                obj["apiVersion"]
            );
        }
        match inject(obj).map_err(|e| anyhow::anyhow!("{where_}: {label}: {e}"))? {
            Injected::Pod(pod) => {
                *obj = pod;
                summary.lines.push(format!("{label}: injected"));
            }
            Injected::Skipped(why) => summary.lines.push(format!("{label}: unchanged ({why})")),
        }
        return Ok(());
    }
    let Some(path) = template_path(&kind) else {
        summary
            .lines
            .push(format!("{label}: passed through (no pod template)"));
        return Ok(());
    };
    let mut template = obj;
    for key in path {
        template = template
            .get_mut(*key)
            .filter(|v| v.is_object())
            .ok_or_else(|| anyhow::anyhow!("{where_}: {label} has no {}", path.join(".")))?;
    }
    match inject(template).map_err(|e| anyhow::anyhow!("{where_}: {label}: {e}"))? {
        Injected::Pod(injected) => {
            *template = injected;
            summary.lines.push(format!("{label}: injected"));
        }
        Injected::Skipped(why) => summary.lines.push(format!("{label}: unchanged ({why})")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(pod: &Value) -> Result<Injected, String> {
        if pod["spec"]["hostNetwork"] == true {
            return Ok(Injected::Skipped("host network".into()));
        }
        if pod["spec"]["containers"].is_null() {
            return Err("spec.containers is required".into());
        }
        let mut p = pod.clone();
        p["metadata"]["annotations"] = serde_json::json!({"pqmesh.io/injected": "test"});
        p["spec"]["initContainers"] = serde_json::json!([{"name": "pqmesh-proxy"}]);
        Ok(Injected::Pod(p))
    }

    const DOCS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: nginx}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          hostNetwork: true
          containers: [{name: job, image: busybox}]
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: solo}
    spec: {containers: [{name: app, image: x}]}
---
"#;

    #[test]
    fn every_template_is_injected_and_the_rest_passes_through() {
        let mut summary = Summary::default();
        let out = inject_stream(DOCS, "in.yaml", &mut fake, &mut summary).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 4);
        assert!(out.starts_with("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  template:\n    metadata:\n      labels:"), "the author's key order is kept:\n{out}");
        let tpl = &docs[0]["spec"]["template"];
        assert_eq!(tpl["spec"]["initContainers"][0]["name"], "pqmesh-proxy");
        assert_eq!(tpl["metadata"]["labels"]["app"], "web");
        assert!(
            tpl["metadata"]["namespace"].is_null(),
            "no namespace added to the template"
        );
        assert_eq!(docs[1]["kind"], "Service");
        assert!(
            docs[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"].is_null()
        );
        assert_eq!(
            docs[3]["items"][0]["metadata"]["annotations"]["pqmesh.io/injected"],
            "test"
        );
        assert_eq!(
            summary.lines,
            [
                "Deployment/web: injected",
                "Service/web: passed through (no pod template)",
                "CronJob/nightly: unchanged (host network)",
                "Pod/solo: injected"
            ]
        );
    }

    #[test]
    fn settings_from_the_control_plane_deployment() {
        let d = serde_json::json!({
            "metadata": {"namespace": "mesh"},
            "spec": {"template": {"spec": {"serviceAccountName": "cp", "containers": [
                {"name": "helper", "env": [{"name": "OTHER", "value": "x"}]},
                {"name": "control-plane", "env": [
                    {"name": "PQMESH_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "PQMESH_SIDECAR_IMAGE", "value": "r/pqmesh:1"},
                    {"name": "PQMESH_LOG", "value": "debug"}
                ]}
            ]}}}
        });
        let (env, ns) = deployment_env(&d).unwrap();
        assert_eq!(ns.as_deref(), Some("mesh"));
        assert_eq!(env["PQMESH_SIDECAR_IMAGE"], "r/pqmesh:1");
        assert_eq!(env["PQMESH_SERVICE_ACCOUNT"], "cp");
        assert!(!env.contains_key("OTHER"));
        assert!(deployment_env(&serde_json::json!({"spec": {}})).is_err());
    }

    #[test]
    fn bad_input_is_a_precise_error() {
        for (doc, want) in [
            ("{{{", "in.yaml document 1"),
            ("a: 1\n", "no `kind`"),
            (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n",
                "Deployment/d has no spec.template",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n",
                "Pod/p: spec.containers is required",
            ),
            (
                "apiVersion: v2\nkind: Pod\nmetadata: {name: p}\n",
                "expected v1",
            ),
            ("# only a comment\n", "no Kubernetes objects"),
        ] {
            let e = inject_stream(doc, "in.yaml", &mut fake, &mut Summary::default()).unwrap_err();
            assert!(e.to_string().contains(want), "{doc}: {e}");
        }
    }
}
