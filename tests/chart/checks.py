#!/usr/bin/env python3
"""Assertions over `helm template` output for tests/chart/run.sh (no yq needed).

Each subcommand prints what it found wrong, one line each, and exits 1 if anything was; it exits
0 silently otherwise. Needs PyYAML and jsonschema (both come with kubernetes-validate).

  security RENDERED          every container/initContainer locked down; no host namespaces
  rbac RENDERED              no wildcards, no escalation verbs, Secrets only as intended
  labels RENDERED            standard app.kubernetes.io/* + helm.sh/chart on every object
  defaults RENDERED NS       the default install is what the design says
  custom RENDERED NS         tests/chart/values-custom.yaml took effect
  single-replica RENDERED    replicaCount 1: no PodDisruptionBudget
  crs CRDS FILE...           custom resources validate against the CRDs' schemas (strict)
  crs-invalid CRDS FILE...   every document in these files is REJECTED by the CRDs' schemas
"""

import copy
import json
import sys

import jsonschema
import yaml

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
STANDARD_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
]


CUSTOM_CA_SECRET = "corp-mesh-ca"  # ca.secretName in values-custom.yaml


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(doc):
    meta = doc.get("metadata", {})
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def find(docs, kind, name):
    hits = [d for d in docs if d.get("kind") == kind and d["metadata"].get("name") == name]
    return hits[0] if len(hits) == 1 else None


def pod_specs(docs):
    for d in docs:
        kind = d.get("kind")
        if kind == "Pod":
            yield name_of(d), d["spec"]
        elif kind in POD_TEMPLATE_KINDS:
            yield name_of(d), d["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield name_of(d), d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def check_security(docs):
    errors = []
    seen = 0
    for where, spec in pod_specs(docs):
        pod_sc = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                errors.append(f"{where}: {flag} is set")
        containers = [("container", c) for c in spec.get("containers", [])]
        containers += [("initContainer", c) for c in spec.get("initContainers", [])]
        containers += [("ephemeralContainer", c) for c in spec.get("ephemeralContainers", [])]
        for role, c in containers:
            seen += 1
            at = f"{where} {role} {c.get('name')}"
            sc = c.get("securityContext")
            if not sc:
                errors.append(f"{at}: no securityContext")
                continue
            if sc.get("runAsNonRoot") is not True:
                errors.append(f"{at}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                errors.append(f"{at}: runAsUser is 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{at}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                errors.append(f"{at}: privileged")
            caps = sc.get("capabilities") or {}
            if caps.get("drop") != ["ALL"]:
                errors.append(f"{at}: capabilities.drop is {caps.get('drop')!r}, not ['ALL']")
            if caps.get("add"):
                errors.append(f"{at}: capabilities.add is {caps['add']!r}")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                errors.append(f"{at}: seccompProfile is {seccomp!r}")
    if seen == 0:
        errors.append("no containers found: the check would prove nothing")
    return errors


def check_rbac(docs):
    errors = []
    roles = [d for d in docs if d.get("kind") in ("Role", "ClusterRole")]
    if not roles:
        errors.append("no Role or ClusterRole rendered")
    for d in roles:
        where = name_of(d)
        if d.get("aggregationRule"):
            errors.append(f"{where}: aggregationRule (grants whatever matches)")
        for i, rule in enumerate(d.get("rules") or []):
            at = f"{where} rule {i}"
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                if any("*" in v for v in rule.get(field) or []):
                    errors.append(f"{at}: '*' in {field}")
            if rule.get("nonResourceURLs"):
                errors.append(f"{at}: nonResourceURLs")
            verbs = set(rule.get("verbs") or [])
            for bad in ("escalate", "bind", "impersonate", "deletecollection"):
                if bad in verbs:
                    errors.append(f"{at}: verb {bad}")
            resources = set(rule.get("resources") or [])
            if "" in (rule.get("apiGroups") or []) and "secrets" in resources:
                named = bool(rule.get("resourceNames"))
                if d["kind"] == "ClusterRole" and verbs - {"get"}:
                    errors.append(f"{at}: cluster-wide Secret verbs beyond get: {sorted(verbs)}")
                if not named and verbs & {"list", "watch", "update", "patch", "delete"}:
                    errors.append(f"{at}: Secrets {sorted(verbs)} not limited by resourceNames")
            if "create" in verbs and rule.get("resourceNames"):
                errors.append(f"{at}: create with resourceNames never matches (documented limit)")
    for d in docs:
        if d.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
            for s in d.get("subjects") or []:
                if s.get("kind") != "ServiceAccount":
                    errors.append(f"{name_of(d)}: binds {s.get('kind')} {s.get('name')}")
            if d["roleRef"]["name"] in ("cluster-admin", "admin", "edit"):
                errors.append(f"{name_of(d)}: binds built-in role {d['roleRef']['name']}")
    return errors


def check_labels(docs):
    errors = []
    for d in docs:
        labels = d.get("metadata", {}).get("labels") or {}
        missing = [k for k in STANDARD_LABELS if k not in labels]
        if missing:
            errors.append(f"{name_of(d)}: missing labels {missing}")
        for k, v in labels.items():
            if not isinstance(v, str):
                errors.append(f"{name_of(d)}: label {k} is {type(v).__name__}, not a string")
    for d in docs:
        if d.get("kind") in POD_TEMPLATE_KINDS:
            labels = d["spec"]["template"]["metadata"].get("labels") or {}
            missing = [k for k in STANDARD_LABELS if k not in labels]
            if missing:
                errors.append(f"{name_of(d)} pod template: missing labels {missing}")
    return errors


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def common_expectations(docs, ns, errors):
    """What holds for every values file: names, ports, probes, webhook shape."""
    dep = find(docs, "Deployment", "pqmesh-control-plane")
    if not dep:
        errors.append("no Deployment pqmesh-control-plane")
        return None, None
    spec = dep["spec"]["template"]["spec"]
    cps = [c for c in spec["containers"] if c["name"] == "control-plane"]
    if len(cps) != 1:
        errors.append("no container named control-plane")
        return dep, None
    c = cps[0]
    if c.get("args") != ["--kubernetes"]:
        errors.append(f"control-plane args {c.get('args')!r}")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports != {"grpc": 15012, "http-admin": 15014, "https-webhook": 15017}:
        errors.append(f"control-plane ports {ports!r}")
    for probe, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
        got = (c.get(probe) or {}).get("httpGet") or {}
        if got.get("path") != path or ports.get(got.get("port"), got.get("port")) != 15014:
            errors.append(f"{probe} is {got!r}, expected {path} on 15014")
    env = env_of(c)
    for k, v in {
        "PQMESH_WEBHOOK_ADDR": "0.0.0.0:15017",
        "PQMESH_GRPC_ADDR": "0.0.0.0:15012",
        "PQMESH_ADMIN_ADDR": "0.0.0.0:15014",
        "PQMESH_ADMIN_LOCAL_ADDR": "127.0.0.1:15015",
    }.items():
        if env.get(k) != v:
            errors.append(f"env {k}={env.get(k)!r}, expected {v!r}")
    # Injected sidecars log JSON for kubectl logs unless the values say otherwise.
    if env.get("PQMESH_SIDECAR_LOG_FORMAT") not in ("json", "text") or env.get("PQMESH_SIDECAR_WORKER_THREADS") is None:
        errors.append(f"sidecar log format / worker threads not passed to the injector: {env.get('PQMESH_SIDECAR_LOG_FORMAT')!r}")
    if env.get("POD_NAMESPACE") != {"fieldRef": {"fieldPath": "metadata.namespace"}}:
        errors.append(f"POD_NAMESPACE is {env.get('POD_NAMESPACE')!r}")
    if env.get("PQMESH_SIDECAR_CONTROL_PLANE_ADDR") != f"pqmesh-control-plane.{ns}.svc:15012":
        errors.append(f"PQMESH_SIDECAR_CONTROL_PLANE_ADDR is {env.get('PQMESH_SIDECAR_CONTROL_PLANE_ADDR')!r}")
    if f"pqmesh-webhook.{ns}.svc" not in env.get("PQMESH_SERVING_NAMES", "").split(","):
        errors.append("PQMESH_SERVING_NAMES lacks the webhook Service's DNS name")
    if spec.get("serviceAccountName") != "pqmesh-control-plane":
        errors.append(f"serviceAccountName {spec.get('serviceAccountName')!r}")
    if (dep["spec"]["template"]["metadata"]["labels"] or {}).get("pqmesh.io/inject") != "false":
        errors.append("control-plane pods are not labelled pqmesh.io/inject=false")

    svc = find(docs, "Service", "pqmesh-control-plane")
    if not svc or {p["port"] for p in svc["spec"]["ports"]} != {15012, 15014}:
        errors.append("Service pqmesh-control-plane must expose 15012 and 15014")
    wsvc = find(docs, "Service", "pqmesh-webhook")
    if not wsvc or [(p["port"], p["targetPort"]) for p in wsvc["spec"]["ports"]] != [(443, "https-webhook")]:
        errors.append("Service pqmesh-webhook must map 443 to https-webhook (15017)")
    for s in (svc, wsvc):
        if s and s["spec"]["selector"] != dep["spec"]["selector"]["matchLabels"]:
            errors.append(f"{name_of(s)} selector does not match the Deployment's")

    mwc = find(docs, "MutatingWebhookConfiguration", "pqmesh")
    if not mwc or len(mwc["webhooks"]) != 1:
        errors.append("MutatingWebhookConfiguration pqmesh with one webhook is missing")
        return dep, None
    wh = mwc["webhooks"][0]
    want = {
        "name": "inject.pqmesh.io",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "reinvocationPolicy": "Never",
    }
    for k, v in want.items():
        if wh.get(k) != v:
            errors.append(f"webhook {k}={wh.get(k)!r}, expected {v!r}")
    cc = wh["clientConfig"]
    if cc.get("service") != {"name": "pqmesh-webhook", "namespace": ns, "path": "/inject", "port": 443}:
        errors.append(f"webhook clientConfig.service {cc.get('service')!r}")
    if "caBundle" in cc:
        errors.append("webhook caBundle is rendered: the control plane owns it")
    if wh.get("rules") != [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                            "resources": ["pods"], "scope": "Namespaced"}]:
        errors.append(f"webhook rules {wh.get('rules')!r}")
    nsel = wh.get("namespaceSelector") or {}
    if nsel.get("matchLabels") != {"pqmesh.io/inject": "enabled"}:
        errors.append(f"namespaceSelector matchLabels {nsel.get('matchLabels')!r}")
    excluded = [e for e in nsel.get("matchExpressions", [])
                if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"]
    if not excluded or ns not in excluded[0]["values"]:
        errors.append("namespaceSelector does not exclude the release namespace")
    osel = (wh.get("objectSelector") or {}).get("matchExpressions", [])
    if {"key": "pqmesh.io/inject", "operator": "NotIn", "values": ["false"]} not in osel:
        errors.append("objectSelector does not exclude pods labelled pqmesh.io/inject=false")
    return dep, wh


def rules_of(docs, kind, name):
    d = find(docs, kind, name)
    return d.get("rules", []) if d else None


def check_defaults(docs, ns):
    errors = []
    dep, wh = common_expectations(docs, ns, errors)
    if dep:
        if dep["spec"]["replicas"] != 2:
            errors.append(f"replicas {dep['spec']['replicas']}, expected 2")
        aff = dep["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
        pref = aff.get("preferredDuringSchedulingIgnoredDuringExecution") or []
        if not pref or pref[0]["podAffinityTerm"]["topologyKey"] != "kubernetes.io/hostname":
            errors.append("no preferred pod anti-affinity by hostname")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        if c["image"] != "pqmesh:0.1.0":
            errors.append(f"image {c['image']!r}, expected pqmesh:<appVersion>")
        env = env_of(c)
        if env.get("PQMESH_LOG_FORMAT") != "json":
            errors.append("PQMESH_LOG_FORMAT is not json")
    if wh:
        if wh.get("failurePolicy") != "Fail" or wh.get("timeoutSeconds") != 10:
            errors.append(f"webhook failurePolicy/timeout {wh.get('failurePolicy')}/{wh.get('timeoutSeconds')}")
    pdb = find(docs, "PodDisruptionBudget", "pqmesh-control-plane")
    if not pdb or pdb["spec"].get("minAvailable") != 1:
        errors.append("PodDisruptionBudget with minAvailable 1 is missing")
    if not find(docs, "ClusterRoleBinding", "pqmesh-tokenissuer-secrets"):
        errors.append("the TokenIssuer-secrets ClusterRoleBinding should be on by default")
    role = rules_of(docs, "Role", "pqmesh-control-plane") or []
    if not any("secrets" in r["resources"] and r["verbs"] == ["create"] for r in role):
        errors.append("default Role cannot create the CA Secret")
    if any("leases" in r["resources"] for r in role):
        errors.append("the Role grants Leases, but there is no leader election")
    if not any("secrets" in r["resources"] and "pqmesh-ca-webhook" in r.get("resourceNames", []) for r in role):
        errors.append("default Role cannot read the webhook CA Secret")
    cr = rules_of(docs, "ClusterRole", "pqmesh-control-plane") or []
    needs = [
        ("", "pods", "watch"), ("", "namespaces", "watch"), ("discovery.k8s.io", "endpointslices", "watch"),
        ("authentication.k8s.io", "tokenreviews", "create"), ("pqmesh.io", "accesspolicies", "watch"),
        ("pqmesh.io", "tokenissuers", "watch"), ("pqmesh.io", "accesspolicies/status", "patch"),
        ("pqmesh.io", "tokenissuers/status", "update"), ("", "configmaps", "create"),
        ("", "configmaps", "update"), ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"),
    ]
    for group, res, verb in needs:
        if not any(group in r["apiGroups"] and res in r["resources"] and verb in r["verbs"] for r in cr):
            errors.append(f"ClusterRole pqmesh-control-plane cannot {verb} {res}.{group or 'core'}")
    return errors


def check_custom(docs, ns):
    """Expectations for tests/chart/values-custom.yaml."""
    errors = []
    dep, wh = common_expectations(docs, ns, errors)
    if dep:
        spec = dep["spec"]["template"]["spec"]
        c = spec["containers"][0]
        if dep["spec"]["replicas"] != 3:
            errors.append(f"replicas {dep['spec']['replicas']}, expected 3")
        if c["image"] != "registry.example/team/pqmesh:1.2.3" or c["imagePullPolicy"] != "Always":
            errors.append(f"image {c['image']!r} {c['imagePullPolicy']!r}")
        req = spec.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
        if not req:
            errors.append("antiAffinity=required did not render a required anti-affinity")
        env = env_of(c)
        for k, v in {
            "PQMESH_TRUST_DOMAIN": "mesh.example",
            "PQMESH_LEAF_LIFETIME": "30m",
            "PQMESH_CA_KEY_ALG": "ml-dsa-65",
            "PQMESH_CA_USER_PROVIDED": "true",
            "PQMESH_LOG": "debug",
            "PQMESH_SIDECAR_IMAGE": "registry.example/team/pqmesh-sidecar:1.2.3",
            "PQMESH_SIDECAR_TOKEN_EXPIRY": "20m",
            "PQMESH_SIDECAR_EXCLUDE_OUTBOUND_CIDRS": "169.254.169.254/32,10.96.0.10",
            "PQMESH_SIDECAR_EXCLUDE_INBOUND_PORTS": "9090",
            "PQMESH_SIDECAR_EXCLUDE_OUTBOUND_PORTS": "5432,6379",
            "PQMESH_SIDECAR_RESOURCES": '{"limits":{"memory":"128Mi"},"requests":{"cpu":"20m","memory":"32Mi"}}',
            "PQMESH_SIDECAR_LOG": "info,pqmesh_sidecar=debug",
            "PQMESH_SIDECAR_LOG_FORMAT": "text",
            "PQMESH_SIDECAR_ACCESS_LOG": "true",
            "PQMESH_SIDECAR_WORKER_THREADS": "2",
            "EXTRA_THING": "yes",
        }.items():
            if env.get(k) != v:
                errors.append(f"env {k}={env.get(k)!r}, expected {v!r}")
        if spec.get("priorityClassName") != "system-cluster-critical":
            errors.append("priorityClassName not applied")
        if spec.get("tolerations", [{}])[0].get("key") != "dedicated":
            errors.append("tolerations not applied")
        if spec.get("imagePullSecrets") != [{"name": "regcred"}]:
            errors.append("imagePullSecrets not applied")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        if labels.get("team") != "platform" or labels.get("app.kubernetes.io/name") != "pqmesh":
            errors.append(f"podLabels merge wrong: {labels!r}")
    if wh:
        if wh.get("failurePolicy") != "Ignore" or wh.get("timeoutSeconds") != 5:
            errors.append(f"webhook failurePolicy/timeout {wh.get('failurePolicy')}/{wh.get('timeoutSeconds')}")
        vals = wh["namespaceSelector"]["matchExpressions"][0]["values"]
        if vals != [ns, "kube-system", "legacy"]:
            errors.append(f"excluded namespaces {vals!r}")
    pdb = find(docs, "PodDisruptionBudget", "pqmesh-control-plane")
    if not pdb or pdb["spec"].get("minAvailable") != 2:
        errors.append("PodDisruptionBudget minAvailable 2 missing")
    svc = find(docs, "Service", "pqmesh-control-plane")
    if svc and (svc["metadata"].get("annotations") or {}).get("prometheus.io/scrape"):
        errors.append("prometheus annotations rendered although metrics.prometheusAnnotations=false")
    if find(docs, "ClusterRoleBinding", "pqmesh-tokenissuer-secrets"):
        errors.append("cluster-wide TokenIssuer-secrets binding rendered although clusterWide=false")
    for team in ("team-a", "team-b"):
        rb = [d for d in docs if d.get("kind") == "RoleBinding"
              and d["metadata"]["name"] == "pqmesh-tokenissuer-secrets" and d["metadata"]["namespace"] == team]
        if len(rb) != 1:
            errors.append(f"no TokenIssuer-secrets RoleBinding in {team}")
    role = rules_of(docs, "Role", "pqmesh-control-plane") or []
    for r in role:
        writes = set(r["verbs"]) - {"get", "list", "watch"}
        # Only the generated webhook CA Secret may be created or updated; the user's CA never.
        webhook_ca_only = r.get("resourceNames") == [f"{CUSTOM_CA_SECRET}-webhook"] or (
            r["verbs"] == ["create"] and "resourceNames" not in r)
        if "secrets" in r["resources"] and writes and not webhook_ca_only:
            errors.append(f"user-provided CA but the Role may {r['verbs']} Secrets {r.get('resourceNames')}")
        if "secrets" in r["resources"] and CUSTOM_CA_SECRET in r.get("resourceNames", []) and writes:
            errors.append(f"the user-provided CA Secret may be written: {r}")
        if "leases" in r["resources"]:
            errors.append("the Role grants Leases, but there is no leader election")
    return errors


def check_single_replica(docs):
    if find(docs, "PodDisruptionBudget", "pqmesh-control-plane"):
        return ["replicaCount 1 rendered a PodDisruptionBudget (it would block every drain)"]
    return []


def check_no_gateway(docs):
    return [f"{name_of(d)} rendered with gateway.enabled=false" for d in docs
            if d["metadata"].get("name") == "pqmesh-gateway"]


def check_gateway(docs, ns, variant):
    """gateway.enabled=true: the gateway runs `pqmesh-gateway --kubernetes` as its own mesh
    identity (projected token, audience pqmesh-ca), probes its admin /live and /ready, is
    reached through its Service, may read what it serves and patch only status; variant `hpa`
    also sets autoscaling and a NodePort Service."""
    errors = []
    dep = find(docs, "Deployment", "pqmesh-gateway")
    svc = find(docs, "Service", "pqmesh-gateway")
    if not dep or not svc:
        return ["no Deployment or Service pqmesh-gateway"]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = spec["containers"][0]
    if c.get("command") != ["/usr/local/bin/pqmesh-gateway"] or c.get("args") != ["--kubernetes"]:
        errors.append(f"gateway runs {c.get('command')} {c.get('args')}")
    if pod["metadata"]["labels"].get("pqmesh.io/inject") != "false":
        errors.append("gateway pods are not excluded from injection")
    if spec.get("serviceAccountName") != "pqmesh-gateway":
        errors.append("gateway does not run as ServiceAccount pqmesh-gateway")
    env = env_of(c)
    if env.get("PQMESH_CONTROL_PLANE_ADDR") != f"pqmesh-control-plane.{ns}.svc:15012":
        errors.append(f"PQMESH_CONTROL_PLANE_ADDR {env.get('PQMESH_CONTROL_PLANE_ADDR')}")
    token = env.get("PQMESH_BOOTSTRAP_TOKEN_FILE", "")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    projected = [v for v in spec.get("volumes", []) if "projected" in v]
    sources = [s["serviceAccountToken"] for v in projected for s in v["projected"]["sources"] if "serviceAccountToken" in s]
    if not sources or sources[0].get("audience") != "pqmesh-ca":
        errors.append("no projected service-account token with audience pqmesh-ca")
    elif f"{mounts.get(projected[0]['name'])}/{sources[0]['path']}" != token:
        errors.append(f"PQMESH_BOOTSTRAP_TOKEN_FILE {token!r} is not the projected token's path")
    admin = env.get("PQMESH_GATEWAY_ADMIN_ADDR", "")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if not admin.endswith(f":{ports.get('http-admin')}"):
        errors.append(f"admin address {admin!r} is not the http-admin port {ports.get('http-admin')}")
    for probe, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "http-admin":
            errors.append(f"{probe} is not GET {path} on http-admin: {get}")
    if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
        errors.append("gateway pod is not runAsNonRoot")
    want_type = "NodePort" if variant == "hpa" else "LoadBalancer"
    if svc["spec"].get("type") != want_type:
        errors.append(f"Service type {svc['spec'].get('type')}, expected {want_type}")
    for p in svc["spec"]["ports"]:
        if p["targetPort"] != p["port"] or p["port"] not in ports.values():
            errors.append(f"Service port {p} does not reach the same container port")
    if svc["spec"]["selector"] != dep["spec"]["selector"]["matchLabels"]:
        errors.append("the Service does not select the gateway's pods")
    hpa = find(docs, "HorizontalPodAutoscaler", "pqmesh-gateway")
    if variant == "hpa":
        if not hpa or hpa["spec"]["scaleTargetRef"]["name"] != "pqmesh-gateway":
            errors.append("no HorizontalPodAutoscaler on the gateway Deployment")
        if "replicas" in dep["spec"]:
            errors.append("the Deployment sets replicas under an HPA")
        if svc["spec"]["ports"][0].get("nodePort") != 30443:
            errors.append(f"nodePort not passed through: {svc['spec']['ports'][0]}")
    else:
        if hpa:
            errors.append("an HPA rendered with autoscaling off")
        if dep["spec"].get("replicas") != 2:
            errors.append(f"gateway replicas {dep['spec'].get('replicas')}, expected 2")
    pdb = find(docs, "PodDisruptionBudget", "pqmesh-gateway")
    if not pdb or pdb["spec"]["selector"]["matchLabels"] != dep["spec"]["selector"]["matchLabels"]:
        errors.append("no PodDisruptionBudget selecting the gateway's pods")
    cr = rules_of(docs, "ClusterRole", "pqmesh-gateway") or []
    needs = [
        ("gateway.networking.k8s.io", "gatewayclasses", "watch"), ("gateway.networking.k8s.io", "gateways", "watch"),
        ("gateway.networking.k8s.io", "httproutes", "watch"), ("pqmesh.io", "edgepolicies", "watch"),
        ("pqmesh.io", "tokenissuers", "watch"), ("", "services", "watch"), ("", "secrets", "get"),
        ("gateway.networking.k8s.io", "gatewayclasses/status", "patch"),
        ("gateway.networking.k8s.io", "gateways/status", "patch"),
        ("gateway.networking.k8s.io", "httproutes/status", "patch"),
    ]
    for group, res, verb in needs:
        if not any(group in r["apiGroups"] and res in r["resources"] and verb in r["verbs"] for r in cr):
            errors.append(f"ClusterRole pqmesh-gateway cannot {verb} {res}.{group or 'core'}")
    for r in cr:
        writes = set(r["verbs"]) & {"create", "update", "patch", "delete"}
        if writes and not all(res.endswith("/status") for res in r["resources"]):
            errors.append(f"ClusterRole pqmesh-gateway writes more than status: {r}")
    crb = find(docs, "ClusterRoleBinding", "pqmesh-gateway")
    if not crb or crb["subjects"] != [{"kind": "ServiceAccount", "name": "pqmesh-gateway", "namespace": ns}]:
        errors.append("ClusterRoleBinding pqmesh-gateway does not bind the gateway's ServiceAccount")
    return errors


# ---- custom resources against the CRDs' structural schemas ----

def to_json_schema(node):
    """OpenAPI v3 (Kubernetes structural schema) -> JSON schema, strict like kubectl's
    server-side field validation: unknown fields are errors unless preserved."""
    node = copy.deepcopy(node)

    def walk(s):
        if not isinstance(s, dict):
            return s
        if s.pop("nullable", False) and "type" in s:
            s["type"] = [s["type"], "null"]
        if s.get("type") == "object" or (isinstance(s.get("type"), list) and "object" in s["type"]):
            preserve = s.get("x-kubernetes-preserve-unknown-fields")
            if "properties" in s and "additionalProperties" not in s and not preserve:
                s["additionalProperties"] = False
        for key in ("properties",):
            for k, v in (s.get(key) or {}).items():
                s[key][k] = walk(v)
        for key in ("items", "additionalProperties"):
            if isinstance(s.get(key), dict):
                s[key] = walk(s[key])
        for key in ("allOf", "anyOf", "oneOf"):
            if key in s:
                s[key] = [walk(x) for x in s[key]]
        return s

    return walk(node)


def crd_validators(crd_path):
    validators = {}
    for crd in load(crd_path):
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = to_json_schema(v["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {}).update({
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}},
                },
            })
            schema["additionalProperties"] = False
            validators[(f"{group}/{v['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def crs(crd_path, files, expect_valid):
    validators = crd_validators(crd_path)
    errors = []
    count = 0
    for path in files:
        for doc in load(path):
            count += 1
            key = (doc.get("apiVersion"), doc.get("kind"))
            where = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if key not in validators:
                errors.append(f"{where}: no CRD for {key}")
                continue
            problems = sorted(validators[key].iter_errors(doc), key=lambda e: list(e.path))
            if expect_valid:
                for e in problems:
                    errors.append(f"{where}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
            elif not problems:
                errors.append(f"{where}: was accepted but must be rejected")
            else:
                print(f"  rejected as expected: {where}: {problems[0].message}")
    if count == 0:
        errors.append("no custom resources found")
    return errors


MONITORING_KINDS = ("PrometheusRule", "ServiceMonitor", "PodMonitor")


def check_monitoring(docs, chart, out_dir):
    """Render with every monitoring.* toggle on: one ConfigMap per dashboard file, its JSON
    unchanged and labelled for the Grafana sidecar; the PrometheusRule holding exactly
    files/alerts.yaml (written to OUT_DIR/rules.yaml for promtool); the ServiceMonitor selecting
    the control-plane Service by its labels and a port it has; the PodMonitor on the port the
    injector gives sidecars."""
    import glob
    import os
    errors = []
    files = sorted(glob.glob(os.path.join(chart, "files/dashboards/*.json")))
    if not files:
        errors.append("no dashboards in files/dashboards")
    for f in files:
        base = os.path.basename(f)
        cm = find(docs, "ConfigMap", base[: -len(".json")] + "-dashboard")
        if cm is None:
            errors.append(f"no ConfigMap for {base}")
            continue
        if cm["metadata"]["labels"].get("grafana_dashboard") != "1":
            errors.append(f"{name_of(cm)}: not labelled grafana_dashboard: \"1\"")
        shipped = json.loads(cm["data"][base])
        if shipped != json.load(open(f)):
            errors.append(f"{name_of(cm)}: the dashboard JSON differs from {f}")
        panels = shipped.get("panels", [])
        if not panels or not all(p.get("targets") for p in panels):
            errors.append(f"{base}: a dashboard without panels, or a panel without a query")
    rule = find(docs, "PrometheusRule", "pqmesh")
    alerts = yaml.safe_load(open(os.path.join(chart, "files/alerts.yaml")))
    if rule is None:
        errors.append("no PrometheusRule pqmesh")
    else:
        if rule["spec"]["groups"] != alerts["groups"]:
            errors.append("the PrometheusRule's groups differ from files/alerts.yaml")
        with open(os.path.join(out_dir, "rules.yaml"), "w") as out:
            yaml.safe_dump({"groups": rule["spec"]["groups"]}, out, sort_keys=False)
    sm = find(docs, "ServiceMonitor", "pqmesh-control-plane")
    svc = find(docs, "Service", "pqmesh-control-plane")
    if sm is None or svc is None:
        errors.append("no ServiceMonitor or Service pqmesh-control-plane")
    else:
        want = sm["spec"]["selector"]["matchLabels"]
        have = svc["metadata"]["labels"]
        if any(have.get(k) != v for k, v in want.items()):
            errors.append(f"ServiceMonitor selector {want} does not select the Service {have}")
        ports = {p["name"] for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            if ep["port"] not in ports:
                errors.append(f"ServiceMonitor port {ep['port']} is not a Service port {ports}")
    pm = find(docs, "PodMonitor", "pqmesh-sidecars")
    if pm is None:
        errors.append("no PodMonitor pqmesh-sidecars")
    else:
        inject = open("control-plane/src/inject/pod.rs").read()
        for ep in pm["spec"]["podMetricsEndpoints"]:
            if f'"name": "{ep["port"]}"' not in inject:
                errors.append(f"PodMonitor port {ep['port']} is not a port the injector declares")
    return errors


def check_no_monitoring(docs):
    return [f"{name_of(d)}: rendered with monitoring off" for d in docs
            if d.get("kind") in MONITORING_KINDS
            or "grafana_dashboard" in (d.get("metadata", {}).get("labels") or {})]


def without_monitoring_kinds(src, dst):
    """kubernetes-validate has no schemas for the Prometheus Operator's kinds (it would WARN):
    they are checked by check_monitoring and promtool instead."""
    docs = [d for d in load(src) if d.get("kind") not in MONITORING_KINDS]
    yaml.safe_dump_all(docs, open(dst, "w"), sort_keys=False)
    return []


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    cmd, path = argv[1], argv[2]
    if cmd == "security":
        errors = check_security(load(path))
    elif cmd == "rbac":
        errors = check_rbac(load(path))
    elif cmd == "labels":
        errors = check_labels(load(path))
    elif cmd == "defaults":
        errors = check_defaults(load(path), argv[3])
    elif cmd == "custom":
        errors = check_custom(load(path), argv[3])
    elif cmd == "monitoring":
        errors = check_monitoring(load(path), argv[3], argv[4])
    elif cmd == "no-monitoring":
        errors = check_no_monitoring(load(path))
    elif cmd == "without-monitoring-kinds":
        errors = without_monitoring_kinds(path, argv[3])
    elif cmd == "gateway":
        errors = check_gateway(load(path), argv[3], argv[4])
    elif cmd == "no-gateway":
        errors = check_no_gateway(load(path))
    elif cmd == "single-replica":
        errors = check_single_replica(load(path))
    elif cmd in ("crs", "crs-invalid"):
        errors = crs(path, argv[3:], expect_valid=(cmd == "crs"))
    else:
        print(f"unknown check {cmd!r}\n{__doc__}")
        return 2
    for e in errors:
        print(f"  {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
