//! Which admin endpoint a command talks to: `--admin-url`, or a pod's sidecar / the control-plane
//! replicas through `kubectl port-forward`.

use serde_json::Value;

use crate::admin::{AdminEndpoint, AdminError, CONTROL_PLANE_ADMIN_PORT, SIDECAR_ADMIN_PORT};
use crate::cli::{pod_name, ClusterArgs};
use crate::kubectl::{Kubectl, KubectlError};

/// The pod a sidecar command is about (known on the cluster path, or when named with --admin-url).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PodRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A sidecar's admin endpoint, plus the pod when known.
pub struct Sidecar {
    pub endpoint: AdminEndpoint,
    pub pod: Option<PodRef>,
    /// Why reaching the admin might fail, shown with any error (e.g. "pod has no sidecar").
    pub hint: Option<String>,
}

pub async fn sidecar(
    cluster: &ClusterArgs,
    pod: Option<&str>,
    admin_url: Option<&str>,
) -> anyhow::Result<Sidecar> {
    let pod_arg = pod.map(pod_name).transpose().map_err(anyhow::Error::msg)?;
    if let Some(url) = admin_url {
        let endpoint = AdminEndpoint::from_url("sidecar admin", url, cluster.timeout())?;
        return Ok(Sidecar {
            endpoint,
            pod: pod_arg.map(|name| PodRef {
                namespace: cluster.namespace.clone(),
                name,
            }),
            hint: None,
        });
    }
    let name = pod_arg.ok_or_else(|| anyhow::anyhow!("a pod name is required"))?;
    let kubectl = Kubectl::new(cluster);
    let pod_json = kubectl
        .get_json(cluster.namespace.as_deref(), &["get", "pod", &name])
        .await?;
    let namespace = pod_json["metadata"]["namespace"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| cluster.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let pod = PodRef {
        namespace: Some(namespace.clone()),
        name: name.clone(),
    };
    let phase = pod_json["status"]["phase"].as_str().unwrap_or("Unknown");
    if phase != "Running" {
        anyhow::bail!("pod {pod} is {phase}, not Running: its sidecar admin cannot be reached");
    }
    let hint = (!has_sidecar(&pod_json)).then(|| {
        format!(
            "pod {pod} shows no pqmesh sidecar container: is its namespace labelled \
             pqmesh.io/inject=enabled, and was the pod created after that?"
        )
    });
    let what = format!("sidecar admin of pod {pod}");
    let endpoint = match AdminEndpoint::port_forward(
        &what,
        &kubectl,
        &namespace,
        &format!("pod/{name}"),
        SIDECAR_ADMIN_PORT,
        cluster.timeout(),
    )
    .await
    {
        Ok(e) => e,
        Err(e) => return Err(with_hint(e.into(), hint.as_deref())),
    };
    Ok(Sidecar {
        endpoint,
        pod: Some(pod),
        hint,
    })
}

/// Adds `hint` to an error about reaching a sidecar.
pub fn with_hint(e: anyhow::Error, hint: Option<&str>) -> anyhow::Error {
    match hint {
        Some(h) => anyhow::anyhow!("{e:#}\n  hint: {h}"),
        None => e,
    }
}

/// Does the pod run a pqmesh sidecar? The injected sidecar is a native sidecar (init container
/// with restartPolicy Always) or, in older set-ups, a regular container; either serves port 15000.
pub fn has_sidecar(pod: &Value) -> bool {
    ["initContainers", "containers"].iter().any(|list| {
        pod["spec"][list].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                let name = c["name"].as_str().unwrap_or("");
                let image = c["image"].as_str().unwrap_or("");
                (name.starts_with("pqmesh") && name != "pqmesh-init")
                    || image.contains("pqmesh-sidecar")
                    || c["ports"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|p| p["containerPort"] == u64::from(SIDECAR_ADMIN_PORT))
                    })
            })
        })
    })
}

/// A control-plane replica: its name and admin endpoint (or why it can't be reached).
pub struct Replica {
    pub name: String,
    pub ready_in_kubernetes: bool,
    pub endpoint: Result<AdminEndpoint, AdminError>,
}

/// With `--admin-url`: that one endpoint. Otherwise: every control-plane pod, each
/// port-forwarded (policy-stream status is per replica, so all of them are asked).
pub async fn control_plane(
    cluster: &ClusterArgs,
    admin_url: Option<&str>,
) -> Result<Vec<Replica>, anyhow::Error> {
    if let Some(url) = admin_url {
        return Ok(vec![Replica {
            name: url.to_owned(),
            ready_in_kubernetes: true,
            endpoint: Ok(AdminEndpoint::from_url(
                "control-plane admin",
                url,
                cluster.timeout(),
            )?),
        }]);
    }
    let kubectl = Kubectl::new(cluster);
    let ns = &cluster.control_plane_namespace;
    let pods = kubectl
        .get_json(
            Some(ns),
            &["get", "pods", "-l", &cluster.control_plane_selector],
        )
        .await?;
    let mut replicas = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        let Some(name) = pod["metadata"]["name"].as_str() else {
            continue;
        };
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let endpoint = if pod["status"]["phase"] == "Running" {
            AdminEndpoint::port_forward(
                &format!("control-plane admin of pod {ns}/{name}"),
                &kubectl,
                ns,
                &format!("pod/{name}"),
                CONTROL_PLANE_ADMIN_PORT,
                cluster.timeout(),
            )
            .await
        } else {
            Err(AdminError::Kubectl(KubectlError::PortForward {
                target: format!("{ns}/pod/{name}"),
                detail: format!(
                    "pod is {}, not Running",
                    pod["status"]["phase"].as_str().unwrap_or("Unknown")
                ),
            }))
        };
        replicas.push(Replica {
            name: name.to_owned(),
            ready_in_kubernetes: ready,
            endpoint,
        });
    }
    if replicas.is_empty() {
        anyhow::bail!(
            "no control-plane pods in namespace {ns} match {:?} (is pqmesh installed there? see --control-plane-namespace / --control-plane-selector)",
            cluster.control_plane_selector
        );
    }
    Ok(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sidecar_detection() {
        let native = json!({"spec": {"initContainers": [{"name": "pqmesh-init"}, {"name": "pqmesh-sidecar", "restartPolicy": "Always"}], "containers": [{"name": "app"}]}});
        assert!(has_sidecar(&native));
        let by_port = json!({"spec": {"containers": [{"name": "proxy", "ports": [{"containerPort": 15000}]}]}});
        assert!(has_sidecar(&by_port));
        let plain = json!({"spec": {"initContainers": [{"name": "pqmesh-init"}], "containers": [{"name": "app", "image": "nginx"}]}});
        assert!(!has_sidecar(&plain));
        assert!(!has_sidecar(&json!("garbage")));
    }
}
