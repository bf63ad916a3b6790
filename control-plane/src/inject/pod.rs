//! The injection rules: which pods get the mesh, and the injected pod itself. Pure functions
//! over `serde_json::Value` so they accept a Pod from an AdmissionReview or a pod template from
//! a manifest alike (only `metadata` and `spec` are read).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::patch::{diff, PatchOp};
use super::{syntax, InjectConfig, ProxyResources, ProxySettings};
use super::{
    ADMIN_PORT, EXCLUDE_INBOUND_PORTS_ANNOTATION, EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
    EXCLUDE_OUTBOUND_PORTS_ANNOTATION, INBOUND_PORT, INIT_CONTAINER, INJECTED_ANNOTATION,
    INJECT_KEY, OUTBOUND_PORT, PROXY_CONTAINER, SIDECAR_BINARY, TOKEN_DIR, TOKEN_PATH,
    TOKEN_VOLUME, TRUST_BUNDLE_PATH, TRUST_DIR, TRUST_VOLUME, XTABLES_LOCK_VOLUME,
};

/// Why a pod is left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Annotated `pqmesh.io/inject: "false"`.
    OptedOut,
    /// `hostNetwork: true`: iptables in pqmesh-init would rewrite the node's own rules.
    HostNetwork,
    /// pqmesh-init and pqmesh-proxy are already the first two init containers.
    AlreadyInjected,
    /// Offline only (namespace labels given): the namespace is not labelled
    /// `pqmesh.io/inject=enabled` and the pod is not annotated `pqmesh.io/inject: "true"`, or
    /// the namespace is labelled `pqmesh.io/inject=disabled`.
    NotSelected,
}

impl SkipReason {
    /// The `outcome` label of `pqmesh_injections_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            SkipReason::OptedOut => "skipped_opted_out",
            SkipReason::HostNetwork => "skipped_host_network",
            SkipReason::AlreadyInjected => "skipped_already_injected",
            SkipReason::NotSelected => "skipped_not_selected",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::OptedOut => "the pod is annotated pqmesh.io/inject: \"false\"",
            SkipReason::HostNetwork => {
                "the pod uses the host network, which the mesh cannot intercept; it runs unmeshed"
            }
            SkipReason::AlreadyInjected => "the pod already has the pqmesh sidecar",
            SkipReason::NotSelected => {
                "neither the namespace (label pqmesh.io/inject=enabled) nor the pod (annotation pqmesh.io/inject: \"true\") selects it"
            }
        }
    }
}

/// What happens to a pod: left alone, or replaced by the injected pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Skip(SkipReason),
    Inject(Box<Value>),
}

/// [`Plan`] as the webhook answers it: a reason, or the JSON Patch to the injected pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Skip(SkipReason),
    Patch(Vec<PatchOp>),
}

/// A pod that should be injected but cannot be. The webhook refuses such a pod rather than
/// letting it run without the mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("not a Pod: {0}")]
    NotAPod(String),
    #[error("{field}: {reason}")]
    Malformed { field: String, reason: String },
    #[error("annotation {key}={value:?}: {reason}")]
    BadAnnotation {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Conflict(String),
}

fn malformed(field: impl Into<String>, reason: impl Into<String>) -> InjectError {
    InjectError::Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The JSON type of a value, for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Pod-controlled text in an error message, cut to a readable length.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 120;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// Decides and, when injecting, returns the JSON Patch that turns `pod` into the injected pod.
/// `namespace_labels`: `None` in the webhook (the webhook configuration's selectors already
/// chose the namespace), the namespace's labels when injecting offline.
pub fn inject_pod(
    pod: &Value,
    namespace_labels: Option<&BTreeMap<String, String>>,
    cfg: &InjectConfig,
) -> Result<Decision, InjectError> {
    match plan(pod, namespace_labels, cfg)? {
        Plan::Skip(reason) => Ok(Decision::Skip(reason)),
        Plan::Inject(injected) => {
            let ops = diff(pod, &injected);
            if ops.is_empty() {
                Ok(Decision::Skip(SkipReason::AlreadyInjected))
            } else {
                Ok(Decision::Patch(ops))
            }
        }
    }
}

/// Decides and, when injecting, builds the injected pod (or pod template).
pub fn plan(
    pod: &Value,
    namespace_labels: Option<&BTreeMap<String, String>>,
    cfg: &InjectConfig,
) -> Result<Plan, InjectError> {
    let root = pod.as_object().ok_or_else(|| {
        InjectError::NotAPod(format!("expected an object, got {}", type_name(pod)))
    })?;
    match root.get("kind") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "Pod" => {}
        Some(other) => {
            return Err(InjectError::NotAPod(format!(
                "kind is {}, not \"Pod\"",
                clip(&other.to_string())
            )));
        }
    }
    let metadata = optional_object(root.get("metadata"), "metadata")?;
    let annotations = string_map(
        metadata.and_then(|m| m.get("annotations")),
        "metadata.annotations",
    )?;
    let labels = string_map(metadata.and_then(|m| m.get("labels")), "metadata.labels")?;
    let spec =
        optional_object(root.get("spec"), "spec")?.ok_or_else(|| malformed("spec", "missing"))?;

    let pod_choice = match annotations.get(INJECT_KEY) {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
        Some(v) => {
            return Err(InjectError::BadAnnotation {
                key: INJECT_KEY.into(),
                value: clip(v),
                reason: "expected \"true\" or \"false\"".into(),
            })
        }
    };
    if pod_choice == Some(false) {
        return Ok(Plan::Skip(SkipReason::OptedOut));
    }
    if let Some(ns) = namespace_labels {
        let selected = match ns.get(INJECT_KEY).map(String::as_str) {
            Some("disabled") => false,
            Some("enabled") => true,
            _ => pod_choice == Some(true),
        };
        if !selected {
            return Ok(Plan::Skip(SkipReason::NotSelected));
        }
    }
    match spec.get("hostNetwork") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => return Ok(Plan::Skip(SkipReason::HostNetwork)),
        Some(other) => {
            return Err(malformed(
                "spec.hostNetwork",
                format!("expected a boolean, got {}", type_name(other)),
            ))
        }
    }

    let containers = named_list(spec.get("containers"), "spec.containers")?
        .ok_or_else(|| malformed("spec.containers", "missing"))?;
    if containers.is_empty() {
        return Err(malformed(
            "spec.containers",
            "empty (a pod needs a container)",
        ));
    }
    let init_containers =
        named_list(spec.get("initContainers"), "spec.initContainers")?.unwrap_or_default();
    let volumes = named_list(spec.get("volumes"), "spec.volumes")?.unwrap_or_default();

    for (i, (name, _)) in containers.iter().enumerate() {
        if *name == INIT_CONTAINER || *name == PROXY_CONTAINER {
            return Err(InjectError::Conflict(format!(
                "spec.containers[{i}] is named {name:?}, a name pqmesh reserves for its init containers"
            )));
        }
    }
    let init_at = init_containers
        .iter()
        .position(|(n, _)| *n == INIT_CONTAINER);
    let proxy_at = init_containers
        .iter()
        .position(|(n, _)| *n == PROXY_CONTAINER);
    match (init_at, proxy_at) {
        (Some(0), Some(1)) => return Ok(Plan::Skip(SkipReason::AlreadyInjected)),
        // Another webhook put an init container in front of ours: move ours back to the front
        // (iptables must be in place before any other container opens a connection).
        (Some(i), Some(p)) => {
            return Ok(Plan::Inject(Box::new(reordered(
                root,
                spec,
                &init_containers,
                i,
                p,
            ))))
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(InjectError::Conflict(format!(
                "the pod has only one of the init containers {INIT_CONTAINER:?} and {PROXY_CONTAINER:?}: partially injected or a reserved name is in use"
            )))
        }
        (None, None) => {}
    }
    for (i, (name, _)) in volumes.iter().enumerate() {
        if [TOKEN_VOLUME, TRUST_VOLUME, XTABLES_LOCK_VOLUME].contains(name) {
            return Err(InjectError::Conflict(format!(
                "spec.volumes[{i}] is named {name:?}, a name pqmesh reserves for its own volumes"
            )));
        }
    }

    let exclusions = Exclusions::from_annotations(&annotations, cfg)?;
    let (proxy, resources) = super::overrides::apply(&annotations, cfg)?;
    let mut inbound_ports = declared_ports(&containers, "spec.containers")?;
    let sidecars: Vec<_> = init_containers
        .iter()
        .filter(|(_, c)| c.get("restartPolicy").and_then(Value::as_str) == Some("Always"))
        .cloned()
        .collect();
    // Native sidecars of the pod's own serve traffic too; their ports are part of the workload.
    inbound_ports.extend(declared_ports(&sidecars, "spec.initContainers")?);
    inbound_ports.sort_unstable();
    inbound_ports.dedup();
    inbound_ports.retain(|p| !exclusions.inbound_ports.contains(p));
    let workload_labels = render_labels(&labels)?;
    let (app_containers, app_probes) =
        super::probes::rewrite(&containers, &exclusions.inbound_ports);

    let mut inits = vec![
        init_container(cfg, &exclusions, &resources),
        proxy_container(
            cfg,
            &workload_labels,
            &inbound_ports,
            &app_probes,
            &proxy,
            &resources,
        ),
    ];
    inits.extend(
        init_containers
            .iter()
            .map(|(_, c)| Value::Object((*c).clone())),
    );
    let mut all_volumes: Vec<Value> = volumes
        .iter()
        .map(|(_, v)| Value::Object((*v).clone()))
        .collect();
    all_volumes.extend(cfg.volumes());

    let mut metadata = metadata.cloned().unwrap_or_default();
    let mut annotations = metadata
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    annotations.insert(
        INJECTED_ANNOTATION.into(),
        Value::String(cfg.version.clone()),
    );
    metadata.insert("annotations".into(), Value::Object(annotations));
    let mut spec = spec.clone();
    spec.insert("initContainers".into(), Value::Array(inits));
    spec.insert("containers".into(), Value::Array(app_containers));
    spec.insert("volumes".into(), Value::Array(all_volumes));
    let mut injected = root.clone();
    injected.insert("metadata".into(), Value::Object(metadata));
    injected.insert("spec".into(), Value::Object(spec));
    Ok(Plan::Inject(Box::new(Value::Object(injected))))
}

/// The pod with its init containers `first` and `second` moved to the front, in that order.
fn reordered(
    root: &Map<String, Value>,
    spec: &Map<String, Value>,
    init_containers: &[Named<'_>],
    first: usize,
    second: usize,
) -> Value {
    let pick = |i: usize| {
        init_containers
            .get(i)
            .map(|(_, c)| Value::Object((*c).clone()))
    };
    let mut list: Vec<Value> = pick(first).into_iter().chain(pick(second)).collect();
    list.extend(
        init_containers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first && *i != second)
            .map(|(_, (_, c))| Value::Object((*c).clone())),
    );
    let mut spec = spec.clone();
    spec.insert("initContainers".into(), Value::Array(list));
    let mut out = root.clone();
    out.insert("spec".into(), Value::Object(spec));
    Value::Object(out)
}

fn optional_object<'a>(
    v: Option<&'a Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, InjectError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(malformed(
            field,
            format!("expected an object, got {}", type_name(other)),
        )),
    }
}

fn string_map(v: Option<&Value>, field: &str) -> Result<BTreeMap<String, String>, InjectError> {
    let Some(map) = optional_object(v, field)? else {
        return Ok(BTreeMap::new());
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(malformed(
                format!("{field}[{:?}]", clip(k)),
                format!("expected a string, got {}", type_name(other)),
            )),
        })
        .collect()
}

type Named<'a> = (&'a str, &'a Map<String, Value>);

/// A list of objects that each carry a non-empty `name` (containers, volumes).
fn named_list<'a>(
    v: Option<&'a Value>,
    field: &str,
) -> Result<Option<Vec<Named<'a>>>, InjectError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(malformed(
                field,
                format!("expected an array, got {}", type_name(other)),
            ))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let object = item.as_object().ok_or_else(|| {
            malformed(
                format!("{field}[{i}]"),
                format!("expected an object, got {}", type_name(item)),
            )
        })?;
        let name = match object.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.as_str(),
            _ => {
                return Err(malformed(
                    format!("{field}[{i}].name"),
                    "missing or not a string",
                ))
            }
        };
        out.push((name, object));
    }
    Ok(Some(out))
}

/// TCP `containerPort`s declared by these containers.
fn declared_ports(containers: &[Named<'_>], field: &str) -> Result<Vec<u16>, InjectError> {
    let mut out = Vec::new();
    for (i, (_, c)) in containers.iter().enumerate() {
        let ports = match c.get("ports") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(p)) => p,
            Some(other) => {
                return Err(malformed(
                    format!("{field}[{i}].ports"),
                    format!("expected an array, got {}", type_name(other)),
                ))
            }
        };
        for (j, port) in ports.iter().enumerate() {
            let at = format!("{field}[{i}].ports[{j}]");
            let number = port
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
                .ok_or_else(|| {
                    malformed(
                        format!("{at}.containerPort"),
                        "missing or not a port number (1-65535)",
                    )
                })?;
            let protocol = match port.get("protocol") {
                None | Some(Value::Null) => "TCP",
                Some(Value::String(p)) => p.as_str(),
                Some(other) => {
                    return Err(malformed(
                        format!("{at}.protocol"),
                        format!("expected a string, got {}", type_name(other)),
                    ))
                }
            };
            if protocol != "TCP" {
                continue;
            }
            if [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT].contains(&number) {
                return Err(InjectError::Conflict(format!(
                    "{at}.containerPort {number} is a port the pqmesh sidecar listens on (15000, 15001, 15006)"
                )));
            }
            out.push(number);
        }
    }
    Ok(out)
}

/// `PQMESH_WORKLOAD_LABELS`: `k=v,k=v` in key order. Characters outside Kubernetes' label
/// syntax are refused, so the rendering can never be ambiguous.
fn render_labels(labels: &BTreeMap<String, String>) -> Result<String, InjectError> {
    let valid = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    let mut parts = Vec::with_capacity(labels.len());
    for (k, v) in labels {
        if k.is_empty() || !valid(k) || !valid(v) {
            return Err(malformed(
                format!("metadata.labels[{:?}]", clip(k)),
                format!("{:?} is not a valid Kubernetes label value", clip(v)),
            ));
        }
        parts.push(format!("{k}={v}"));
    }
    Ok(parts.join(","))
}

struct Exclusions {
    outbound_cidrs: Vec<String>,
    inbound_ports: Vec<u16>,
    outbound_ports: Vec<u16>,
}

impl Exclusions {
    /// The mesh-wide exclusions plus the pod's own, each checked as pqmesh-init will parse it.
    fn from_annotations(
        annotations: &BTreeMap<String, String>,
        cfg: &InjectConfig,
    ) -> Result<Self, InjectError> {
        let bad = |key: &str, value: &str, reason: String| InjectError::BadAnnotation {
            key: key.into(),
            value: clip(value),
            reason,
        };
        let mut outbound_cidrs = cfg.exclude_outbound_cidrs.clone();
        if let Some(v) = annotations.get(EXCLUDE_OUTBOUND_CIDRS_ANNOTATION) {
            for c in syntax::cidrs(v).map_err(|e| bad(EXCLUDE_OUTBOUND_CIDRS_ANNOTATION, v, e))? {
                if !outbound_cidrs.contains(&c) {
                    outbound_cidrs.push(c);
                }
            }
        }
        let ports = |key: &str, base: &[u16]| -> Result<Vec<u16>, InjectError> {
            let mut out = base.to_vec();
            if let Some(v) = annotations.get(key) {
                out.extend(syntax::ports(v).map_err(|e| bad(key, v, e))?);
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        };
        Ok(Self {
            outbound_cidrs,
            inbound_ports: ports(EXCLUDE_INBOUND_PORTS_ANNOTATION, &cfg.exclude_inbound_ports)?,
            outbound_ports: ports(
                EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
                &cfg.exclude_outbound_ports,
            )?,
        })
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `pqmesh-init`: installs the interception rules, then exits. Root with NET_ADMIN and NET_RAW
/// only (iptables needs both), everything else dropped.
fn init_container(cfg: &InjectConfig, ex: &Exclusions, resources: &ProxyResources) -> Value {
    let mut args = vec![
        "init".to_owned(),
        "--proxy-uid".to_owned(),
        cfg.proxy_uid.to_string(),
        "--outbound-port".to_owned(),
        OUTBOUND_PORT.to_string(),
        "--inbound-port".to_owned(),
        INBOUND_PORT.to_string(),
    ];
    for (flag, value) in [
        ("--exclude-inbound-ports", join(&ex.inbound_ports)),
        ("--exclude-outbound-ports", join(&ex.outbound_ports)),
        ("--exclude-outbound-cidrs", join(&ex.outbound_cidrs)),
    ] {
        if !value.is_empty() {
            args.push(flag.to_owned());
            args.push(value);
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.pull_policy,
        "command": [SIDECAR_BINARY],
        "args": args,
        "resources": resources.to_json(),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": XTABLES_LOCK_VOLUME, "mountPath": "/run"}],
    })
}

/// `pqmesh-proxy`: the native sidecar (an init container with `restartPolicy: Always`), so it
/// is up before the app's containers start and does not keep a Job's pod alive.
fn proxy_container(
    cfg: &InjectConfig,
    workload_labels: &str,
    inbound_ports: &[u16],
    app_probes: &BTreeMap<String, Value>,
    proxy: &ProxySettings,
    resources: &ProxyResources,
) -> Value {
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ADMIN_PORT, "scheme": "HTTP"},
            "periodSeconds": period,
            "timeoutSeconds": 1,
            "failureThreshold": failures,
        })
    };
    let mut env = vec![
        json!({"name": "PQMESH_CONTROL_PLANE_ADDR", "value": cfg.control_plane_addr}),
        json!({"name": "PQMESH_CONTROL_PLANE_ID", "value": cfg.control_plane_id}),
        json!({"name": "PQMESH_TRUST_DOMAIN", "value": cfg.trust_domain}),
        json!({"name": "PQMESH_TRUST_BUNDLE", "value": TRUST_BUNDLE_PATH}),
        json!({"name": "PQMESH_BOOTSTRAP_TOKEN_FILE", "value": TOKEN_PATH}),
        json!({"name": "PQMESH_POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
        json!({"name": "PQMESH_WORKLOAD_LABELS", "value": workload_labels}),
        // The kubelet probes the pod IP; POST /shutdown stays loopback-only in the sidecar.
        json!({"name": "PQMESH_ADMIN_ADDR", "value": format!("0.0.0.0:{ADMIN_PORT}")}),
    ];
    env.extend(proxy.env());
    if !inbound_ports.is_empty() {
        env.push(json!({"name": "PQMESH_INBOUND_PORTS", "value": join(inbound_ports)}));
    }
    if !app_probes.is_empty() {
        let table = serde_json::to_string(app_probes).unwrap_or_default();
        env.push(json!({"name": "PQMESH_APP_PROBES", "value": table}));
    }
    json!({
        "name": PROXY_CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.pull_policy,
        "command": [SIDECAR_BINARY],
        "restartPolicy": "Always",
        "env": env,
        "ports": [
            {"name": "pqmesh-outbound", "containerPort": OUTBOUND_PORT, "protocol": "TCP"},
            {"name": "pqmesh-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "pqmesh-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        // The app's containers start only once the sidecar has its certificate (startup
        // probe passed); up to 5 minutes for a control plane that is still coming up.
        "startupProbe": probe("/ready", 1, 300),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "resources": resources.to_json(),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": cfg.proxy_uid,
            "runAsNonRoot": true,
            "runAsUser": cfg.proxy_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": true},
        ],
    })
}
